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

The rows are derived in ``synth.horizon.rows`` (with the longest paths the windows, the load cuts
and the bounds read). Hints from existing schedules are relabelled the same way (each pass's runs in order, or stage
0's first forwards in order).

This module also holds what both solvers and the search need around the model: the hint of an
existing schedule (its per-rank, per-stream orders run as soon as possible in ticks), a check of
a hint against the model's memory budgets, and the schedule a solution decodes to. It imports
no solver.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ir import Action, Op, Placement, Schedule
from synth.block.spec import BlockSpec, Pass
from synth.horizon.rows import cap_rows, ends_of

__all__ = ["NO_TIGHTEN", "Horizon", "Solution", "Tighten", "expand", "fits_model", "hint_from_schedule",
           "memory_fits", "programs", "realize", "reload_offers", "to_schedule", "violations"]

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
        rows, pairs = cap_rows(spec, exact_cap)
        for later, earlier, lag in rows:
            cuts += [(index[(later, i)], index[(earlier, i - lag)], 0) for i in range(lag, m)]
        for b, e1, k1, e2, k2 in pairs:
            either += [(index[(b, i)], index[(e1, i - k1)], index[(e2, i - k2)]) for i in range(max(k1, k2), m)]
        if len(either) > EITHER_PER_JOB * len(jobs):  # too many literals: the cumulative is cheaper
            either = []
            exact_cap = [exact and len(ends_of(spec, r)) == 1 for r, exact in enumerate(exact_cap)]
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
