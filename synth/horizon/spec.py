"""The full-horizon problem as data: every pass of every microbatch, shared by CP-SAT and the MILP.

``Horizon`` expands a ``BlockSpec`` (one microbatch's passes, precedences with comm latency,
lifespans, budgets: DESIGN.md's dependency list and memory table in integer ticks and memory
units) to ``m`` microbatches. A *job* is one pass of one microbatch. Jobs of optional passes
(R for recompute; OFFLOAD and RELOAD for offload) exist only if their unit's *group*, one per
(stage, microbatch), picks that variant; a group picks exactly one of "keep" and the variants the
options allow, so recompute and offload are decided per (stage, microbatch).

The model is tightened (`Tighten`, each part switchable) by rows that cut off no optimum:

- **Microbatch order.** Where no unit has a variant (no recompute or offload to choose), every
  pass runs its microbatches in order: ``start[x, i+1] >= end[x, i]`` for each pass ``x``. Exact:
  relabel each pass's runs so its k-th run is microbatch k. A precedence ``later >= end(earlier) +
  gap`` survives, since the first k runs of ``later`` belong to k microbatches whose ``earlier``
  ended ``gap`` before, so the k-th run of ``earlier`` did too; and a rank's memory at any instant
  is ``units x (runs of begin started - runs of end ended)`` per lifespan, which no relabelling
  changes. Where units have variants it does not hold (a recomputed microbatch holds less than a
  kept one, so which microbatch runs k-th matters) and only stage 0's first forwards are ordered
  (any schedule can be relabelled so), as start-to-start precedences.
- **The cap as precedences** (needs the order): at the start of the i-th run of a lifespan's
  begin pass ``b`` on rank r, every microbatch j <= i whose end pass ``e`` has not ended holds at
  least ``U`` (the units of the rank's lifespans that begin no later than ``b`` and end no earlier
  than ``e``), so at most ``K = floor(budget / U)`` of them are alive: ``start[b, i] >= end[e, i -
  K]``. Exact where the rank's lifespans all begin at one pass and end at one pass (memory then
  frees with one pass): the cumulative is then left out for that rank; elsewhere the rows are cuts.
- **Start windows** (solver side, `windows`): every job starts within ``[head, upper - dur - tail]``,
  the longest paths of precedences (the rows above included) to it and from it.
- **Load cuts** (solver side, `load_cuts`): under the order, the jobs of microbatches ``i..m-1`` on
  a rank start after microbatch i's first pass on the rank, so the makespan is at least that start
  plus their work plus the least tail.

Hints from existing schedules are relabelled the same way (each pass's runs in order, or stage
0's first forwards in order).

This module also holds what both solvers and the search need around the model: the hint of an
existing schedule (its per-rank, per-stream orders run as soon as possible in ticks), a check of
a hint against the model's memory budgets, and the schedule a solution decodes to. It imports
no solver.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ir import Action, Op, Placement, Schedule
from synth.block.spec import BlockSpec, Pass

__all__ = ["NO_TIGHTEN", "Horizon", "Solution", "Tighten", "expand", "fits_model", "hint_from_schedule",
           "load_terms", "memory_fits", "paths", "programs", "realize", "reload_offers", "to_schedule", "topological",
           "violations"]

# A rank's program lists its jobs by start, then end (a zero-time copy that feeds a job starting at
# the same instant comes first), then in the order the dependencies run.
ORDER = {Op.F: 0, Op.OFFLOAD: 1, Op.RELOAD: 2, Op.R: 3, Op.B: 4, Op.BW: 4, Op.W: 5}
KEEP = "keep"
# The cap's either rows are kept while there are at most this many per job (a cap of K microbatches
# gives about K per forward on each rank); beyond, the cumulative states the cap more cheaply.
EITHER_PER_JOB = 2


@dataclass(frozen=True)
class Tighten:
    """Which strengthenings the model gets (see the module docstring); all on by default.

    Attributes:
        order: each pass runs its microbatches in order (where no unit has a variant).
        cap: the memory cap as precedences (needs ``order``); the cumulative is left out where they
            are exact.
        windows: start windows from the precedences' longest paths and the incumbent's makespan.
        load_cuts: per-rank load cuts on the makespan (need ``order``).
    """

    order: bool = True
    cap: bool = True
    windows: bool = True
    load_cuts: bool = True

    def to_json(self) -> dict[str, bool]:
        return dataclasses.asdict(self)


NO_TIGHTEN = Tighten(order=False, cap=False, windows=False, load_cuts=False)


@dataclass(frozen=True)
class Horizon:
    """The full-horizon model's data.

    Attributes:
        spec: the per-microbatch data (ticks, memory units, budgets).
        m: microbatches.
        jobs: job index -> (pass, microbatch).
        dur, rank, copy: per job: ticks, rank, whether it runs on the copy stream.
        groups: group index -> (stage, microbatch), for the units that may pick a variant.
        variants: group index -> its variants, "keep" first.
        presence: per job, ``(group, variant)`` if the job exists only in that variant, else None.
        edges: ``(later, earlier, gap)``: job ``later`` starts ``gap`` ticks after ``earlier``
            ends, when both exist: the passes' dependencies, what a program must wait for.
        cuts: more rows of the same form that every relabelled solution meets (a negative gap makes
            one start-to-start): the microbatch order, or stage 0's first forwards in order, and
            the cap as precedences.
        spans: ``(rank, begin, end, units, presence)``: memory held from the start of job
            ``begin`` to the end of job ``end``; presence as for jobs.
        upper: ticks by which some schedule surely ends (microbatches one after another).
        ordered: every pass runs its microbatches in order (`Tighten.order` applied).
        exact_cap: per rank, whether the cap's precedences (with ``either``) say all the cumulative would.
        either: ``(later, first, second)``: job ``later`` starts after ``first`` ends or after
            ``second`` ends (the cap's exact rows where memory frees at two passes).
        tighten: the strengthenings asked for.
    """

    spec: BlockSpec
    m: int
    jobs: tuple[tuple[Pass, int], ...]
    dur: tuple[int, ...]
    rank: tuple[int, ...]
    copy: tuple[bool, ...]
    groups: tuple[tuple[int, int], ...]
    variants: tuple[tuple[str, ...], ...]
    presence: tuple[tuple[int, str] | None, ...]
    edges: tuple[tuple[int, int, int], ...]
    spans: tuple[tuple[int, int, int, int, tuple[int, str] | None], ...]
    upper: int
    cuts: tuple[tuple[int, int, int], ...] = ()
    ordered: bool = False
    exact_cap: tuple[bool, ...] = ()
    tighten: Tighten = NO_TIGHTEN
    either: tuple[tuple[int, int, int], ...] = ()

    @property
    def links(self) -> tuple[tuple[int, int, int], ...]:
        """Every precedence row of the model: the dependencies and the cuts."""
        return self.edges + self.cuts

    @property
    def budget(self) -> tuple[int, ...] | None:
        return self.spec.budget

    def index(self) -> dict[tuple[Pass, int], int]:
        """(pass, microbatch) -> job; built once (`realize` checks every solution CP-SAT finds)."""
        return self._index

    def group_index(self) -> dict[tuple[int, int], int]:
        return self._group_index

    @cached_property
    def _index(self) -> dict[tuple[Pass, int], int]:
        return {job: n for n, job in enumerate(self.jobs)}

    @cached_property
    def _group_index(self) -> dict[tuple[int, int], int]:
        return {g: n for n, g in enumerate(self.groups)}


@dataclass(frozen=True)
class Solution:
    """Start ticks of the jobs that exist, and each group's variant."""

    starts: dict[int, int]
    variants: dict[int, str]

    def makespan(self, h: Horizon) -> int:
        return max((s + h.dur[j] for j, s in self.starts.items()), default=0)

    def to_json(self) -> dict[str, Any]:
        return {"starts": [[j, s] for j, s in sorted(self.starts.items())],
                "variants": [[g, v] for g, v in sorted(self.variants.items())]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Solution:
        return cls({int(j): int(s) for j, s in obj["starts"]}, {int(g): str(v) for g, v in obj["variants"]})


def expand(spec: BlockSpec, m: int, tighten: Tighten = Tighten()) -> Horizon:
    """``spec``'s passes, precedences and lifespans for microbatches 0..m-1, tightened by ``tighten``."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"microbatches must be a positive integer, got {m!r}")
    if spec.group != 1:
        raise ValueError(f"expand takes a one-microbatch BlockSpec (group 1), got group {spec.group}")
    passes = sorted(spec.dur)
    jobs = tuple((x, i) for i in range(m) for x in passes)
    index = {job: n for n, job in enumerate(jobs)}
    groups = tuple((s, i) for i in range(m) for s in range(spec.num_stages) if spec.choices.get(s))
    gindex = {g: n for n, g in enumerate(groups)}
    variants = tuple((KEEP, *spec.choices[s]) for s, _ in groups)

    def presence(x: Pass, i: int) -> tuple[int, str] | None:
        kind = spec.optional.get(x)
        return None if kind is None else (gindex[(x.stage, i)], kind)

    edges = [(index[(a, i)], index[(b, i)], gap) for i in range(m) for a, b, gap in spec.edges]
    ordered = tighten.order and not groups
    cuts: list[tuple[int, int, int]] = []
    if ordered:
        cuts += [(index[(x, i + 1)], index[(x, i)], 0) for x in passes for i in range(m - 1)]
    else:
        first = spec.first
        cuts += [(index[(first, i + 1)], index[(first, i)], -spec.dur[first]) for i in range(m - 1)]
    exact_cap = [False] * spec.p
    either: list[tuple[int, int, int]] = []
    if ordered and tighten.cap and spec.budget is not None:
        rows, pairs = _cap_rows(spec, exact_cap)
        for later, earlier, lag in rows:
            cuts += [(index[(later, i)], index[(earlier, i - lag)], 0) for i in range(lag, m)]
        for b, e1, k1, e2, k2 in pairs:
            either += [(index[(b, i)], index[(e1, i - k1)], index[(e2, i - k2)]) for i in range(max(k1, k2), m)]
        if len(either) > EITHER_PER_JOB * len(jobs):  # too many literals: the cumulative is cheaper
            either = []
            exact_cap = [exact and len(_ends(spec, r)) == 1 for r, exact in enumerate(exact_cap)]
    spans = []
    for i in range(m):
        for span in spec.lifespans:
            if span.variant == KEEP:
                when = None if not spec.choices.get(span.stage) else (gindex[(span.stage, i)], KEEP)
            else:
                when = (gindex[(span.stage, i)], span.variant)
            spans.append((span.rank, index[(span.begin, i)], index[(span.end, i)], span.units, when))
    return Horizon(spec, m, jobs, tuple(spec.dur[x] for x, _ in jobs), tuple(spec.rank[x] for x, _ in jobs),
                   tuple(x in spec.copy for x, _ in jobs), groups, variants,
                   tuple(presence(x, i) for x, i in jobs), tuple(edges), tuple(spans), m * spec.max_period,
                   tuple(cuts), ordered, tuple(exact_cap), tighten, tuple(either))


def _cap_rows(spec: BlockSpec, exact: list[bool]) -> tuple[list[tuple[Pass, Pass, int]], list[tuple]]:
    """The cap as precedences (the module docstring; no unit has a variant), and where exact.

    Returns ``(rows, either)``: a row ``(b, e, K)`` says the i-th run of ``b`` starts no earlier than
    the (i - K)-th run of ``e`` ends; an ``either`` row ``(b, e1, k1, e2, k2)`` says it starts after
    the (i - k1)-th run of ``e1`` ends or after the (i - k2)-th run of ``e2`` does. Sets ``exact[r]``
    where rank r's rows say all its cumulative would: its lifespans begin at one pass and end at one
    pass, or at two passes ``e1`` and a later ``e2`` (B and W: with ``a`` microbatches before their
    ``e1`` at the i-th start of ``b``, at most ``(budget - u1 a) // u2`` may be before their ``e2``).
    """
    before = _reach(spec)  # x -> passes that start no earlier than x starts
    rows: list[tuple[Pass, Pass, int]] = []
    either: list[tuple] = []
    for r in range(spec.p):
        mine = [span for span in spec.lifespans if span.rank == r and span.units > 0]
        if not mine:
            continue
        budget = spec.budget[r]
        begins, ends = {span.begin for span in mine}, {span.end for span in mine}
        feasible = True
        for b in sorted(begins):
            earlier = [span for span in mine if span.begin == b or b in before[span.begin]]
            # the units b's own microbatch surely holds at b's start
            own = sum(span.units for span in earlier if span.end in before[b] and spec.dur[span.end] > 0)
            for e in sorted(ends):
                if e not in before[b] or spec.dur[e] <= 0:
                    continue  # e may end before b starts: no microbatch is sure to hold both
                later = {e} | _after_end(spec, e, before)
                units = sum(span.units for span in earlier if span.end in later)
                held = max(own, units)
                if units <= 0:
                    continue
                if budget < held:  # not even one microbatch fits: the cumulative says so
                    feasible = False
                    continue
                # i itself holds `held`, each other microbatch alive before its e at least `units`
                rows.append((b, e, 1 + _floor_div(budget - held, units)))
        exact[r] = feasible and len(begins) == 1 and spec.dur[min(begins)] > 0 and (
            len(ends) == 1 or _two_ends(spec, mine, before, budget, either))
    return rows, either


def _two_ends(spec: BlockSpec, mine: list, before: dict, budget: int, either: list) -> bool:
    """For a rank whose lifespans begin at one pass ``b`` and end at two, ``e1`` and ``e2`` (which
    ends no earlier), add the ``either`` rows that make its cap exact and return True; False if
    the ends are not so nested. With ``a`` microbatches (the i-th included) before their ``e1`` at
    the i-th start of ``b``, memory is ``u1 a + u2 w`` with ``w`` those before their ``e2``, so
    ``w <= c_a = (budget - u1 a) // u2``: if the (i + 1 - a)-th ``e1`` has not ended, the (i - c_a)-th
    ``e2`` has. a = 1 is a plain row (`_cap_rows` makes it); a = 2..K1 are ``either`` rows."""
    ends = sorted({span.end for span in mine})
    b = mine[0].begin
    for e1, e2 in (ends, ends[::-1]):
        if e2 in _after_end(spec, e1, before) and e1 in before[b] and spec.dur[e1] > 0 and spec.dur[e2] > 0:
            break
    else:
        return False
    u1 = sum(span.units for span in mine if span.end == e1)
    u2 = sum(span.units for span in mine if span.end == e2)
    c1 = _floor_div(budget - u1, u2)
    for a in range(2, _floor_div(budget, u1 + u2) + 1):
        ca = _floor_div(budget - u1 * a, u2)
        if ca < c1:
            either.append((b, e1, a - 1, e2, ca))
    return True


def _ends(spec: BlockSpec, r: int) -> set[Pass]:
    return {span.end for span in spec.lifespans if span.rank == r and span.units > 0}


def _floor_div(a: float, b: float) -> int:
    """``floor(a / b)`` for memory in units (ints) or in bytes (floats, within rounding)."""
    return math.floor(a / b + 1e-9)


def _reach(spec: BlockSpec) -> dict[Pass, set[Pass]]:
    """Per pass, the passes a path of precedences makes start no earlier than it starts."""
    succs: dict[Pass, list[Pass]] = {x: [] for x in spec.dur}
    for later, earlier, gap in spec.edges:
        if spec.dur[earlier] + gap >= 0:
            succs[earlier].append(later)
    out: dict[Pass, set[Pass]] = {}
    for x in spec.dur:
        seen, stack = set(), [x]
        while stack:
            for y in succs[stack.pop()]:
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
        out[x] = seen
    return out


def _after_end(spec: BlockSpec, e: Pass, before: dict[Pass, set[Pass]]) -> set[Pass]:
    """The passes that end no earlier than ``e`` ends: those a precedence with a gap >= 0 out of
    ``e`` leads to, and all that start after them."""
    out: set[Pass] = set()
    for later, earlier, gap in spec.edges:
        if earlier == e and gap >= 0:
            out |= {later} | before[later]
    return out


def load_terms(h: Horizon, tails: list[int]) -> list[tuple[int, int, int]]:
    """``(job, i, c)``: the makespan is at least ``start[job] + c``, where ``job`` is a rank's first
    pass of microbatch i (`BlockSpec.anchor`) and ``c`` the rank's compute work of microbatches
    i..m-1 plus the least tail (`paths`) among those jobs. Holds under the microbatch order: every
    such job starts after its own microbatch's anchor (a path of precedences leads there), which
    starts no earlier than microbatch i's, and they run one at a time. Empty if not ordered."""
    if not h.ordered:
        return []
    spec, index, out = h.spec, h.index(), []
    after = _reach(spec)
    for r in range(spec.p):
        anchor = spec.anchors.get(r)
        if anchor is None:
            continue
        mine = [x for x in after[anchor] | {anchor} if spec.rank[x] == r and x not in spec.copy]
        work = sum(spec.dur[x] for x in mine)
        least = 0
        for i in reversed(range(h.m)):  # least: the smallest tail among microbatches i..m-1
            here = min(tails[index[(x, i)]] for x in mine)
            least = here if i == h.m - 1 else min(least, here)
            out.append((index[(anchor, i)], i, (h.m - i) * work + least))
    return out


def topological(succs: list[list[tuple[int, int]]]) -> list[int]:
    """Jobs in an order where every job comes after its predecessors (Kahn's algorithm) over
    ``succs[j] = [(successor, gap), ...]``; ValueError on a cycle."""
    n = len(succs)
    indegree = [0] * n
    for out in succs:
        for c, _ in out:
            indegree[c] += 1
    order = [j for j in range(n) if indegree[j] == 0]
    for j in order:  # appending while iterating walks the whole DAG
        for c, _ in succs[j]:
            indegree[c] -= 1
            if indegree[c] == 0:
                order.append(c)
    if len(order) != n:
        raise ValueError("the full-horizon precedences have a cycle")
    return order


def paths(h: Horizon) -> tuple[list[int], list[int]]:
    """Per job, the longest path of precedence rows (`Horizon.links`, between jobs that exist in
    every variant) to its start (head) and from its end to the makespan (tail); optional jobs get
    0 and 0. Every solution starts job j in ``[head[j], makespan - dur[j] - tail[j]]``."""
    n = len(h.jobs)
    succs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for later, earlier, gap in h.links:
        if h.presence[later] is None and h.presence[earlier] is None:
            succs[earlier].append((later, gap))
    order = topological(succs)
    head, tail = [0] * n, [0] * n
    for j in order:
        for c, gap in succs[j]:
            head[c] = max(head[c], head[j] + h.dur[j] + gap)
    for j in reversed(order):
        tail[j] = max([0, *(gap + h.dur[c] + tail[c] for c, gap in succs[j])])
    return head, tail


def exists(h: Horizon, when: tuple[int, str] | None, variants: dict[int, str]) -> bool:
    """Whether a job or span with presence ``when`` exists under the groups' ``variants``."""
    return when is None or variants.get(when[0], KEEP) == when[1]


# ------------------------------------------------------------------------------------------ hints
def hint_from_schedule(h: Horizon, schedule: Schedule) -> Solution | None:
    """The schedule as a solution of the model: its programs run as ``ir.simulate`` runs them (as
    soon as possible in program order, one job per stream at a time), in the model's ticks.

    Microbatches are relabelled so stage 0's first forwards start in order (the model's symmetry
    break). None if the schedule does not fit the model: another placement, m or slicing, fused
    backward where the model splits it (or the reverse), or a recompute/offload the options do
    not allow.
    """
    spec = h.spec
    if (schedule.placement.stage_to_rank != tuple(spec.rank[Pass(s, 0, Op.F)] for s in range(spec.num_stages))
            or schedule.m != h.m or schedule.k != 1 + max(x.slice for x in spec.dur)):
        return None
    groups = h.group_index()
    variants: dict[int, str] = {}
    for a in (a for prog in schedule.ranks for a in prog):
        kind = {Op.R: "recompute", Op.OFFLOAD: "offload", Op.RELOAD: "offload"}.get(a.op)
        if kind is not None:
            g = groups.get((a.stage, a.microbatch))
            if g is None or kind not in h.variants[g]:
                return None
            variants[g] = kind
    index = h.index()
    try:
        order = [[index[(Pass(a.stage, a.slice, a.op), a.microbatch)] for a in prog if not a.op.is_comm]
                 for prog in schedule.ranks]
    except KeyError:
        return None
    starts = _asap(h, order, variants)
    return None if starts is None else _relabel(h, Solution(starts, variants))


def reload_offers(h: Horizon, j: int, starts: dict[int, int]) -> set[int]:
    """The ticks at which RELOAD job ``j`` may start (``synth.horizon.cpsat.add_reload_timing``): the
    starts of its rank's existing compute jobs other than its own unit's B, BW and R, and the ends
    of its rank's other copies (its OFFLOAD's among them)."""
    x, i = h.jobs[j]
    index = h.index()
    own = {index.get((Pass(x.stage, x.slice, op), i)) for op in (Op.B, Op.BW, Op.R)} | {j}
    return {t + (h.dur[q] if h.copy[q] else 0) for q, t in starts.items() if h.rank[q] == h.rank[j] and q not in own}


def fits_model(h: Horizon, sol: Solution) -> bool:
    """Whether ``sol`` satisfies every constraint of the model (see `violations`)."""
    return not violations(h, sol)


def violations(h: Horizon, sol: Solution, upper: int | None = None) -> list[str]:
    """What ``sol`` breaks of the model (empty if nothing): its jobs, starts within [0, upper],
    precedences (the symmetry break included), one job at a time per rank and stream, the RELOAD
    timing and the memory budgets."""
    out = []
    present = [j for j in range(len(h.jobs)) if exists(h, h.presence[j], sol.variants)]
    if sorted(sol.starts) != present:
        return ["the solution's jobs are not those of its variants"]
    for j, t in sol.starts.items():
        if t < 0 or (upper is not None and t + h.dur[j] > upper):
            out.append(f"job {j} at {t} outside [0, {upper}]")
    for later, earlier, gap in h.links:
        if later in sol.starts and earlier in sol.starts:
            if sol.starts[later] < sol.starts[earlier] + h.dur[earlier] + gap:
                out.append(f"edge {later} after {earlier} + {gap}")
    streams: dict[tuple[int, bool], list[tuple[int, int]]] = {}
    for j, t in sol.starts.items():
        if h.dur[j] > 0:
            streams.setdefault((h.rank[j], h.copy[j]), []).append((t, j))
    for items in streams.values():
        items.sort()
        for (t, j), (u, k) in zip(items, items[1:], strict=False):
            if t + h.dur[j] > u:
                out.append(f"jobs {j} and {k} overlap")
    for j, t in sol.starts.items():
        if h.jobs[j][0].op is Op.RELOAD and t not in reload_offers(h, j, sol.starts):
            out.append(f"RELOAD {j} at {t}: not a compute job's start nor a copy's end on its rank")
    for later, first, second in h.either:
        t = sol.starts[later]
        if t < sol.starts[first] + h.dur[first] and t < sol.starts[second] + h.dur[second]:
            out.append(f"job {later} before both {first} and {second} end")
    if not memory_fits(h, sol):
        out.append("over the memory budget")
    return out


def _asap(h: Horizon, order: list[list[int]], variants: dict[int, str]) -> dict[int, int] | None:
    """Start ticks of each rank's program run as ``ir.simulate`` runs it: a job starts once its
    predecessors allow, no earlier than the job before it in the program, when its stream is free.
    None on a deadlock or when the programs miss a job the variants need. The symmetry break's
    cuts are left out: the hint is relabelled afterwards."""
    present = [j for j in range(len(h.jobs)) if exists(h, h.presence[j], variants)]
    if sorted(j for prog in order for j in prog) != present:
        return None
    preds: dict[int, list[tuple[int, int]]] = {}
    for later, earlier, gap in h.edges:
        if gap >= 0 and exists(h, h.presence[later], variants) and exists(h, h.presence[earlier], variants):
            preds.setdefault(later, []).append((earlier, gap))
    starts: dict[int, int] = {}
    pos = [0] * len(order)
    issued = [0] * len(order)
    free = [{False: 0, True: 0} for _ in order]
    progressed = True
    while progressed:
        progressed = False
        for r, prog in enumerate(order):
            while pos[r] < len(prog):
                j = prog[pos[r]]
                if any(e not in starts for e, _ in preds.get(j, ())):
                    break
                at = max([issued[r], free[r][h.copy[j]], *(starts[e] + h.dur[e] + g for e, g in preds.get(j, ()))])
                starts[j] = issued[r] = at
                free[r][h.copy[j]] = at + h.dur[j]
                pos[r] += 1
                progressed = True
    return starts if len(starts) == len(present) else None


def _relabel(h: Horizon, sol: Solution) -> Solution:
    """The same schedule with microbatches renamed as the model orders them: each pass's runs in
    order where the model is ordered, else stage 0's first forwards in order."""
    index = h.index()
    if h.ordered:  # no variants: the k-th run of each pass becomes microbatch k
        runs: dict[Pass, list[tuple[int, int]]] = {}
        for j, t in sol.starts.items():
            x, i = h.jobs[j]
            runs.setdefault(x, []).append((t, i))
        starts = {index[(x, k)]: t for x, items in runs.items() for k, (t, _) in enumerate(sorted(items))}
        return Solution(starts, {})
    first = h.spec.first
    order = sorted(range(h.m), key=lambda i: (sol.starts[index[(first, i)]], i))
    new_of = {old: new for new, old in enumerate(order)}
    groups = h.group_index()
    starts = {index[(x, new_of[i])]: t for j, t in sol.starts.items() for x, i in [h.jobs[j]]}
    variants = {groups[(s, new_of[i])]: v for g, v in sol.variants.items() for s, i in [h.groups[g]]}
    return Solution(starts, variants)


def _depends_on(h: Horizon, later: int, copy: int) -> bool:
    """Whether job ``later`` waits for job ``copy``: a unit's RELOAD waits for its OFFLOAD, and its
    B, BW and R for its RELOAD."""
    (x, i), (c, k) = h.jobs[later], h.jobs[copy]
    if (x.stage, x.slice, i) != (c.stage, c.slice, k):
        return False
    return (c.op is Op.OFFLOAD and x.op is Op.RELOAD) or (c.op is Op.RELOAD and x.op in (Op.B, Op.BW, Op.R))


def memory_fits(h: Horizon, sol: Solution) -> bool:
    """Whether the solution keeps every rank within its budget in the model's memory units (frees
    at an instant count before allocations there, as in CP-SAT's cumulative)."""
    if h.budget is None:
        return True
    events: list[list[tuple[int, int]]] = [[] for _ in range(h.spec.p)]
    for r, b, e, units, when in h.spans:
        if exists(h, when, sol.variants):
            events[r] += [(sol.starts[b], units), (sol.starts[e] + h.dur[e], -units)]
    for r, evs in enumerate(events):
        level = 0
        for _, delta in sorted(evs):
            level += delta
            if level > h.budget[r]:
                return False
    return True


# ----------------------------------------------------------------------------------------- decode
def programs(h: Horizon, sol: Solution) -> list[list[int]]:
    """Per rank, the solution's jobs in program order: by start tick, and each copy right after
    every job that starts no later than it, except the jobs that depend on it (``ir.simulate``
    starts an action no earlier than the one before it in the program, so a copy then starts at
    its own tick whenever a job starts at that tick)."""
    timed: list[list[tuple]] = [[] for _ in range(h.spec.p)]
    for j, t in sol.starts.items():
        x, i = h.jobs[j]
        timed[h.rank[j]].append((t, t + h.dur[j], ORDER[x.op], x.stage, i, x.slice, j))
    out = []
    for items in timed:
        items.sort()
        for copy in [item for item in items if h.copy[item[-1]]]:
            items.remove(copy)
            at, first_dependent = 0, len(items)
            for n, item in enumerate(items):
                if _depends_on(h, item[-1], copy[-1]):
                    first_dependent = min(first_dependent, n)
                elif item[0] <= copy[0]:
                    at = n + 1
            items.insert(min(at, first_dependent), copy)
        out.append([item[-1] for item in items])
    return out


def realize(h: Horizon, sol: Solution) -> Solution | None:
    """The solution as the simulator runs its programs (`programs`), in ticks; None if that breaks
    the model (the simulation started some job earlier than the solution, and a RELOAD followed it
    into memory the solution kept free). A realized solution satisfies the model exactly as the
    simulator times it."""
    starts = _asap(h, programs(h, sol), sol.variants)
    if starts is None:
        return None
    real = Solution(starts, dict(sol.variants))
    return real if fits_model(h, real) else None


def to_schedule(h: Horizon, sol: Solution, placement: Placement, **meta) -> Schedule:
    """The schedule whose per-rank programs are `programs` of the solution."""
    ranks = [[Action(h.jobs[j][0].op, h.jobs[j][0].stage, h.jobs[j][1], h.jobs[j][0].slice) for j in prog]
             for prog in programs(h, sol)]
    return Schedule(placement, h.m, ranks, k=1 + max(x.slice for x in h.spec.dur),
                    meta={"made_by": "synth.horizon.cpsat", "tick": h.spec.tick, **meta})
