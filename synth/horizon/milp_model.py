"""The rows of the full-horizon MILP (``synth.horizon.milp``): forced orders from the transitive
closure of the precedences, then the PuLP problem, one method per constraint family, the MIP
start and the decode. The formulation is written out in ``synth.horizon.milp``'s docstring.

Imported only in the MILP child (it imports pulp, which imports highspy; see ``synth.horizon.milp``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ir import Op
from synth.block.spec import BlockError, Pass
from synth.horizon.rows import load_terms, paths, topological
from synth.horizon.spec import KEEP, Horizon, Solution, exists

__all__ = ["Model", "closure"]


# ---------------------------------------------------------------------------------- forced orders
def closure(h: Horizon) -> tuple[list[int], list[int], list[int], int]:
    """``(S, E, T, mandatory)``: per job, bitsets of the jobs whose start is forced to be at least its
    start (``S``), at least its end (``E``) or strictly after its start (``T``) by a path of
    precedences whose inner jobs are mandatory, and the bitset of mandatory jobs."""
    n = len(h.jobs)
    succs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for later, earlier, gap in h.links:
        if h.dur[earlier] + gap >= 0:
            succs[earlier].append((later, gap))
    try:
        order = topological(succs)
    except ValueError as err:
        raise BlockError(str(err)) from None
    mandatory = sum(1 << j for j in range(n) if h.presence[j] is None)
    after_start, after_end, strictly = [0] * n, [0] * n, [0] * n
    for j in reversed(order):
        s = e = t = 0
        for c, gap in succs[j]:
            inner = h.presence[c] is None  # only a mandatory job may be a path's inner job
            reach = (1 << c) | (after_start[c] if inner else 0)
            s |= reach
            if gap >= 0:
                e |= reach
            if h.dur[j] + gap >= 1:  # this step gains a tick: all the rest is strictly later
                t |= reach
            elif inner:
                t |= strictly[c]
        after_start[j], after_end[j], strictly[j] = s, e, t
    return after_start, after_end, strictly, mandatory


def _coexist(h: Horizon, p: tuple[int, str] | None, q: tuple[int, str] | None) -> bool:
    """Whether things with presences ``p`` and ``q`` can both exist (not two variants of one group)."""
    return p is None or q is None or p[0] != q[0] or p[1] == q[1]


# ------------------------------------------------------------------------------------------ model
@dataclass
class Model:
    """The PuLP problem for ``h`` with makespan in ``[floor, upper]``, and its variables."""

    h: Horizon
    upper: int
    floor: int
    heads_tails: tuple[list, list] | None = None  # ``paths(h)``, if the caller has it
    prob: Any = None
    start: dict[int, Any] = field(default_factory=dict)
    x: dict[tuple[int, str], Any] = field(default_factory=dict)
    makespan: Any = None
    order: list[tuple[Any, int, int]] = field(default_factory=list)  # (o, a, b): o = 1 iff a first
    begun: list[tuple[Any, int, int]] = field(default_factory=list)  # (z, begin, a)
    ended: list[tuple[Any, int, int]] = field(default_factory=list)  # (y, end, a)
    alive: list[tuple[Any, Any, Any, Any]] = field(default_factory=list)  # (w, z, y, x_L): w = max(0, z - y - absent)
    # (RELOAD, [(a, job, shift)]): a = 1 => start[RELOAD] == start[job] + shift; a is 1 (or x) if it is the only one
    reload_at: list[tuple[int, list[tuple[Any, int, int]]]] = field(default_factory=list)
    eithers: list[tuple[Any, int, int]] = field(default_factory=list)  # (e, later, first): e = 1 iff after first
    rows: int = 0
    binaries: int = 0

    def __post_init__(self) -> None:
        import pulp

        self.weight = 1 + len(self.h.groups)
        self.prob = pulp.LpProblem("horizon", pulp.LpMinimize)
        self.after_start, self.after_end, self.strictly, self.mandatory = closure(self.h)
        self.heads, self.tails = self.heads_tails or paths(self.h)
        self._variables()
        self._precedences()
        self._either()
        self._no_overlap()
        self._makespan()
        if self.h.tighten.load_cuts:
            self._load_cuts()
        self._memory()
        self._reload_timing()
        decisions = [var for (g, v), var in self.x.items() if v != KEEP]
        self.prob.setObjective(self.weight * self.makespan + pulp.lpSum(decisions))

    # ------------------------------------------------------------------------------- variables
    def _variables(self) -> None:
        import pulp

        h = self.h
        for g, options in enumerate(h.variants):
            for v in options:
                self.x[(g, v)] = self._binary(f"x{g}_{v}")
            self._row(pulp.lpSum(self.x[(g, v)] for v in options) == 1)
        for j in range(len(h.jobs)):
            self.start[j] = self.prob.add_variable(f"s{j}", self.lb(j), self.ub(j), cat=pulp.LpInteger)
        self.makespan = self.prob.add_variable("makespan", self.floor, self.upper, cat=pulp.LpInteger)

    def ub(self, j: int) -> int:
        """The largest start of job ``j`` (its start window's end under `Tighten.windows`)."""
        h = self.h
        if h.tighten.windows and h.presence[j] is None:
            return max(self.lb(j), self.upper - h.dur[j] - self.tails[j])
        return max(0, self.upper - h.dur[j])

    def lb(self, j: int) -> int:
        """The smallest start of job ``j``: its head under `Tighten.windows`, else 0."""
        return self.heads[j] if self.h.tighten.windows and self.h.presence[j] is None else 0

    def present(self, when: tuple[int, str] | None):
        """1 for a mandatory job or span, else its variant's binary."""
        return 1 if when is None else self.x[when]

    def absent(self, *whens: tuple[int, str] | None):
        """How many of the given presences are off (0 when all are mandatory)."""
        return sum(1 - self.x[w] for w in whens if w is not None)

    def _binary(self, name: str):
        import pulp

        self.binaries += 1
        return self.prob.add_variable(name, 0, 1, cat=pulp.LpBinary)

    def _row(self, constraint) -> None:
        self.rows += 1
        self.prob.addConstraint(constraint, f"r{self.rows}")

    def _at_least(self, later: int, earlier: int, plus: int, relax) -> None:
        """``start[later] >= start[earlier] + plus``, switched off when ``relax`` (>= 0) is at least 1."""
        big_m = max(0, self.ub(earlier) + plus)
        if isinstance(relax, int) and relax == 0:
            self._row(self.start[later] >= self.start[earlier] + plus)
        else:
            self._row(self.start[later] >= self.start[earlier] + plus - big_m * relax)

    # ----------------------------------------------------------------------------- constraints
    def _precedences(self) -> None:
        """The dependencies and the cuts (``Horizon.links``): the order and the cap's precedences."""
        h = self.h
        for later, earlier, gap in h.links:
            self._at_least(later, earlier, h.dur[earlier] + gap, self.absent(h.presence[later], h.presence[earlier]))

    def _either(self) -> None:
        """The cap's ``either`` rows (``Horizon.either``), one binary each: ``e = 1`` => ``later``
        starts after ``first`` ends, ``e = 0`` => after ``second`` ends."""
        h = self.h
        for later, first, second in h.either:
            e = self._binary(f"e{later}_{first}")
            self.eithers.append((e, later, first))
            self._at_least(later, first, h.dur[first], 1 - e)
            self._at_least(later, second, h.dur[second], e)

    def _no_overlap(self) -> None:
        h = self.h
        streams: dict[tuple[int, bool], list[int]] = {}
        for j, d in enumerate(h.dur):
            if d > 0:
                streams.setdefault((h.rank[j], h.copy[j]), []).append(j)
        for jobs in streams.values():
            for n, a in enumerate(jobs):
                for b in jobs[n + 1:]:
                    pa, pb = h.presence[a], h.presence[b]
                    if not _coexist(h, pa, pb):
                        continue
                    off = self.absent(pa, pb)
                    if self.after_start[a] >> b & 1:
                        if not self.after_end[a] >> b & 1:
                            self._at_least(b, a, h.dur[a], off)
                    elif self.after_start[b] >> a & 1:
                        if not self.after_end[b] >> a & 1:
                            self._at_least(a, b, h.dur[b], off)
                    else:
                        o = self._binary(f"o{a}_{b}")
                        self.order.append((o, a, b))
                        self._at_least(b, a, h.dur[a], off + 1 - o)
                        self._at_least(a, b, h.dur[b], off + o)

    def _makespan(self) -> None:
        h = self.h
        for j, d in enumerate(h.dur):
            if self.after_end[j] & self.mandatory:
                continue  # a mandatory job starts after this one ends: its row covers this one
            big_m = max(0, self.ub(j) + d - self.floor)
            self._row(self.makespan >= self.start[j] + d - big_m * self.absent(h.presence[j]))

    def _load_cuts(self) -> None:
        """As ``synth.horizon.cpsat.add_load_cuts``: the makespan is at least the start of a rank's
        first pass of microbatch i plus the rank's work of microbatches i..m-1 plus their least tail."""
        for anchor, _, work in load_terms(self.h, self.tails):
            self._row(self.makespan >= self.start[anchor] + work)

    def _memory(self) -> None:
        import pulp

        h = self.h
        if h.budget is None:
            return
        # ranks whose cap the precedence rows state exactly need no memory rows (``Horizon.exact_cap``)
        spans = [(n, span) for n, span in enumerate(h.spans) if span[3] > 0
                 and not (h.exact_cap and h.exact_cap[span[0]])]
        for r in range(h.spec.p):
            mine = [(n, span) for n, span in spans if span[0] == r]
            total = sum(span[3] for _, span in mine)
            for a in sorted({span[1] for _, span in mine}):
                terms = []
                for n, (_, b, e, units, when) in mine:
                    if not _coexist(h, when, h.presence[a]):
                        continue
                    # z: L has begun by start[a]; y: L has ended by start[a] (0/1 when forced, else a binary)
                    z: Any = 1 if b == a or self.after_start[b] >> a & 1 else None
                    if z is None and self.after_end[a] >> b & 1 and h.dur[a] >= 1:
                        continue  # begins after a ends: never alive at start[a]
                    if self.after_end[e] >> a & 1:
                        continue  # ended before a starts
                    y: Any = 0 if (e == a or self.after_start[a] >> e & 1) and h.dur[e] >= 1 else None
                    if z is None:
                        z = self._binary(f"z{n}_{a}")
                        self.begun.append((z, b, a))
                        self._at_least(b, a, 1, z)  # z = 0 => start[b] >= start[a] + 1
                    if y is None:
                        y = self._binary(f"y{n}_{a}")
                        self.ended.append((y, e, a))
                        self._at_least(a, e, h.dur[e], 1 - y)  # y = 1 => start[a] >= end of e
                        if not isinstance(z, int):
                            self._row(y <= z)
                    if when is None:
                        terms.append(units * (z - y))
                    else:
                        w = self.prob.add_variable(f"w{n}_{a}", 0, 1, cat=pulp.LpContinuous)
                        self.alive.append((w, z, y, self.x[when]))
                        self._row(w >= z - y - (1 - self.x[when]))
                        terms.append(units * w)
                fixed = sum(t for t in terms if isinstance(t, int))
                terms = [t for t in terms if not isinstance(t, int)]
                if terms:
                    relax = max(0, total - h.budget[r]) * self.absent(h.presence[a])
                    self._row(pulp.lpSum(terms) <= h.budget[r] - fixed + relax)
                elif fixed > h.budget[r]:  # the spans that begin at a alone are over the budget
                    if h.presence[a] is None:
                        self._row(self.makespan <= self.floor - 1)  # infeasible, said with a variable
                    else:
                        self._row(self.x[h.presence[a]] == 0)


    def _reload_timing(self) -> None:
        """As ``synth.horizon.cpsat.add_reload_timing``: a RELOAD that exists starts at its OFFLOAD's end,
        when a compute job of its rank that exists starts (not its own unit's B, BW or R), or when
        another copy of its rank that exists ends."""
        import pulp

        h = self.h
        index = h.index()
        for rho, (x, i) in enumerate(h.jobs):
            if x.op is not Op.RELOAD:
                continue
            when = h.presence[rho]
            own = {index.get((Pass(x.stage, x.slice, op), i)) for op in (Op.B, Op.BW, Op.R)}
            off = index[(Pass(x.stage, x.slice, Op.OFFLOAD), i)]
            candidates = [(off, h.dur[off])]  # (job, shift): start[rho] == start[job] + shift
            for q in range(len(h.jobs)):
                if h.rank[q] != h.rank[rho] or q in own or q in (rho, off) or not _coexist(h, when, h.presence[q]):
                    continue
                if h.copy[q]:  # another copy's end
                    candidates.append((q, h.dur[q]))
                    continue
                # Sound pruning: the candidate's binary can be 1 only when rho and q exist, and then
                # start[q] != start[rho] in every schedule when a forced path of precedences that
                # gains at least one tick (``T``) leads from rho to q or from q to rho, or from q to
                # rho's OFFLOAD (which exists with rho and ends no later than rho starts; the
                # closures stop at an optional job, so a path into rho itself passes no OFFLOAD).
                if self.strictly[rho] >> q & 1 or self.strictly[q] >> rho & 1 or self.strictly[q] >> off & 1 or (
                        h.dur[off] >= 1 and self.after_start[q] >> off & 1):
                    continue
                candidates.append((q, 0))
            if len(candidates) == 1:
                picks: list[Any] = [self.present(when)]
            else:
                picks = [self._binary(f"a{rho}_{q}") for q, _ in candidates]
                self._row(pulp.lpSum(picks) == self.present(when))
                for a, (q, _) in zip(picks, candidates, strict=True):
                    if h.presence[q] is not None and h.presence[q] != when:
                        self._row(a <= self.x[h.presence[q]])  # an absent job offers no start
            self.reload_at.append((rho, list(zip(picks, (q for q, _ in candidates), (d for _, d in candidates),
                                                 strict=True))))
            for a, (q, shift) in zip(picks, candidates, strict=True):
                # a = 1 (so rho and q exist) => start[rho] == start[q] + shift; each side is left out
                # where a forced order already says it for jobs that exist.
                ge = self.after_start[q] if shift == 0 else self.after_end[q] if shift == h.dur[q] else 0
                if not ge >> rho & 1:
                    self._at_least(rho, q, shift, 1 - a)
                if not (shift == 0 and self.after_start[rho] >> q & 1):
                    self._at_least(q, rho, -shift, 1 - a)

    # ------------------------------------------------------------------------------ start, decode
    def set_start(self, hint: Solution) -> None:
        """Every variable's initial value from ``hint`` (absent jobs at 0; binaries of pairs with an
        absent job at their loosest)."""
        h = self.h
        starts = {j: hint.starts.get(j, 0) for j in range(len(h.jobs))}
        on = {j: j in hint.starts for j in range(len(h.jobs))}
        for (g, v), var in self.x.items():
            var.setInitialValue(1 if hint.variants.get(g, KEEP) == v else 0)
        for j, var in self.start.items():
            var.setInitialValue(starts[j])
        self.makespan.setInitialValue(max(self.floor, hint.makespan(h)))
        for e, later, first in self.eithers:
            e.setInitialValue(1 if starts[later] >= starts[first] + h.dur[first] else 0)
        for o, a, b in self.order:
            o.setInitialValue(1 if (starts[a], a) < (starts[b], b) else 0)
        for z, b, a in self.begun:
            z.setInitialValue(1 if not (on[a] and on[b]) or starts[b] <= starts[a] else 0)
        for y, e, a in self.ended:
            y.setInitialValue(1 if on[a] and on[e] and starts[e] + h.dur[e] <= starts[a] else 0)
        for w, z, y, x_l in self.alive:
            value = _value_of(z) - _value_of(y) - (1 - _value_of(x_l))
            w.setInitialValue(max(0, value))
        for rho, picks in self.reload_at:
            if len(picks) == 1:
                continue  # its binary is the RELOAD's variant, set above
            chosen = next((n for n, (_, q, shift) in enumerate(picks)
                           if on[rho] and on[q] and starts[q] + shift == starts[rho]), None)
            for n, (a, _, _) in enumerate(picks):
                a.setInitialValue(1 if n == chosen else 0)

    def decode(self) -> Solution:
        variants = {g: v for (g, v), var in self.x.items() if (var.varValue or 0) > 0.5}
        starts = {j: int(round(var.varValue)) for j, var in self.start.items()
                  if exists(self.h, self.h.presence[j], variants)}
        return Solution(starts, variants)

    def size(self) -> dict[str, int]:
        variables = self.prob.variables()
        integers = sum(1 for v in variables if v.cat == "Integer") - self.binaries
        return {"columns": len(variables), "binaries": self.binaries, "integers": integers,
                "rows": len(self.prob.constraints)}


def _value_of(term) -> float:
    return term if isinstance(term, int) else (term.varValue or 0)
