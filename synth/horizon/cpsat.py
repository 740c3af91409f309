"""The full-horizon schedule as a CP-SAT model: every pass of every microbatch, makespan objective.

The block model (``synth.block.cpsat``) is exact for the stable phase; warm-up, cool-down and per-
microbatch recompute/offload need the whole horizon. This file reads like an OR-Tools sample:
data, variables, one helper per constraint family, objective, hints, solve, decode.

- Data: a ``synth.horizon.spec.Horizon`` (jobs = passes x microbatches in ticks, precedences with
  comm latency, lifespans in memory units, budgets), the same data the MILP twin reads.
- Variables: one interval per job (optional, with its group's variant literal as presence, for
  R, OFFLOAD and RELOAD); exactly one variant literal per (stage, microbatch) group that may
  recompute or offload; one optional interval per lifespan; the makespan.
- Constraints: NoOverlap per rank for the compute stream and for the copy stream; precedences
  ``start[later] >= end[earlier] + gap`` when both jobs exist; per rank a cumulative over the
  lifespan intervals (F start to B end for ``act - wact``, F start to W end for ``wact``, and
  the recompute/offload variants' spans) within the budget; the makespan at least every job's
  end and at least the analytic bound (``synth.horizon.bounds``, on the model's own integers).
- Objective: makespan first, then the fewest recompute/offload decisions (so none is made for
  nothing): ``makespan * weight + decisions`` with ``weight`` above any decision count; the
  makespan bound is ``floor(objective bound / weight)``.
- Hints: the given solutions (the tiled block's schedule, the best fitting baseline); the best
  one that satisfies the model (``fits_model``) also caps the makespan, so the search can only improve on it,
  and stands as the answer if the solver returns none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from ir import Op
from synth.block.spec import Pass
from synth.horizon.bounds import horizon_bound
from synth.horizon.rows import load_terms, paths
from synth.horizon.spec import KEEP, Horizon, Solution, exists, fits_model, realize

__all__ = ["HorizonResult", "Progress", "rank_relaxation_bound", "solve_horizon"]

Progress = Callable[[float, int | None, int], None]  # (seconds, makespan or None, bound), ticks


@dataclass
class HorizonResult:
    """What a full-horizon solve found.

    Attributes:
        solution: the best solution (None if there is none: no hint fits and the solver found none).
        makespan: its makespan in ticks (None without a solution).
        bound: the proven lower bound on the makespan in ticks (the solver's or the analytic one).
        proven: the solution is optimal (``makespan == bound``).
        status: "optimal", "feasible", "hint" (the solver found nothing better than the hint it was
            given, which stands), "infeasible" (proven) or "unknown".
        seconds: wall time of the solve.
        solver: "cpsat", "highs" or "cbc".
        history: ``(seconds, makespan or None, bound)`` at every improvement, in ticks.
    """

    solution: Solution | None
    makespan: int | None
    bound: int
    proven: bool
    status: str
    seconds: float
    solver: str
    history: list[tuple[float, int | None, int]] = field(default_factory=list)

    @property
    def gap(self) -> float | None:
        """``(makespan - bound) / makespan``, or None without a solution."""
        if self.makespan is None:
            return None
        return 0.0 if self.makespan <= 0 else max(0.0, (self.makespan - self.bound) / self.makespan)


@dataclass
class _Vars:
    start: dict[int, cp_model.IntVar]
    present: dict[int, cp_model.IntVar | bool]
    variant: dict[tuple[int, str], cp_model.IntVar]
    interval: dict[int, cp_model.IntervalVar]
    makespan: cp_model.IntVar
    size: dict[int, cp_model.IntVar] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- variables
def _variables(model: cp_model.CpModel, h: Horizon, upper: int, windows: tuple[list[int], list[int]] | None) -> _Vars:
    variant = {}
    for g, options in enumerate(h.variants):
        lits = {v: model.NewBoolVar(f"g{g}_{v}") for v in options}
        model.AddExactlyOne(lits.values())
        variant.update({(g, v): lit for v, lit in lits.items()})
    start, present, interval = {}, {}, {}
    for j, ((x, i), d) in enumerate(zip(h.jobs, h.dur, strict=True)):
        lo, hi = 0, max(0, upper - d)
        if windows is not None and h.presence[j] is None:
            lo, hi = windows[0][j], max(windows[0][j], upper - d - windows[1][j])
        start[j] = model.NewIntVar(lo, hi, f"{x.name}_m{i}")
        when = h.presence[j]
        if when is None:
            present[j] = True
            interval[j] = model.NewFixedSizeIntervalVar(start[j], d, f"i_{x.name}_m{i}")
        else:
            present[j] = variant[when]
            interval[j] = model.NewOptionalFixedSizeIntervalVar(start[j], d, present[j], f"i_{x.name}_m{i}")
    return _Vars(start, present, variant, interval, model.NewIntVar(0, upper, "makespan"))


def _literals(v: _Vars, jobs) -> list:
    return [v.present[j] for j in jobs if v.present[j] is not True]


# -------------------------------------------------------------------------------- constraints
def add_no_overlap(model: cp_model.CpModel, v: _Vars, h: Horizon) -> None:
    """One job at a time per rank on the compute stream, and on the copy stream."""
    for r in range(h.spec.p):
        for on_copy in (False, True):
            jobs = [j for j in range(len(h.jobs)) if h.rank[j] == r and h.copy[j] == on_copy and h.dur[j] > 0]
            if len(jobs) > 1:
                model.AddNoOverlap([v.interval[j] for j in jobs])


def add_precedences(model: cp_model.CpModel, v: _Vars, h: Horizon) -> None:
    """``start[later] >= end[earlier] + gap`` whenever both jobs exist: the dependencies and the cuts
    (the microbatch order or stage 0's, the cap as precedences)."""
    for later, earlier, gap in h.links:
        ct = model.Add(v.start[later] >= v.start[earlier] + h.dur[earlier] + gap)
        lits = _literals(v, (later, earlier))
        if lits:
            ct.OnlyEnforceIf(lits)


def add_either(model: cp_model.CpModel, v: _Vars, h: Horizon) -> None:
    """The cap's ``either`` rows (``Horizon.either``): a job starts after one of two jobs ends."""
    for n, (later, first, second) in enumerate(h.either):
        lit = model.NewBoolVar(f"either{n}")
        model.Add(v.start[later] >= v.start[first] + h.dur[first]).OnlyEnforceIf(lit)
        model.Add(v.start[later] >= v.start[second] + h.dur[second]).OnlyEnforceIf(lit.Not())


def add_reload_timing(model: cp_model.CpModel, v: _Vars, h: Horizon, upper: int) -> None:
    """A RELOAD starts where ``ir.simulate`` can start one: at its OFFLOAD's end, when a compute job
    of its rank starts (not its own unit's B or R, which wait for it), or when another copy of its
    rank ends.

    The simulator runs each rank's program as soon as possible in program order: a copy starts at
    the latest of its OFFLOAD's end (its only dependency), the start of the action before it in
    the program (a compute job, or a copy, which starts no later than it ends) and the end of the
    copy before it on the copy stream. So every simulated program meets this rule and the model
    stays a relaxation of them (its bound holds with offload too), while a RELOAD may not float to
    an instant no program gives it. The decoded program (``to_schedule``) puts each copy right
    after the jobs that start no later than it; where the simulation shifts compute jobs earlier
    than the model's ticks, a copy can follow them, which ``synth.horizon.refine`` catches by simulating."""
    reloads = [j for j, (x, _) in enumerate(h.jobs) if x.op is Op.RELOAD]
    if not reloads:
        return
    index = h.index()
    offers: dict[int, list] = {}  # a compute job's start, a copy's end; -1 when the job is absent
    ranks = {h.rank[q] for q in reloads}
    for j, (x, i) in enumerate(h.jobs):
        if h.rank[j] not in ranks:
            continue
        time_ = v.start[j] + h.dur[j] if h.copy[j] else v.start[j]
        offer = time_
        if v.present[j] is not True:
            offer = model.NewIntVar(-1, upper, f"offer_{x.name}_m{i}")
            model.Add(offer == time_).OnlyEnforceIf(v.present[j])
            model.Add(offer == -1).OnlyEnforceIf(v.present[j].Not())
        offers[j] = offer
    for j in reloads:
        x, i = h.jobs[j]
        own = {index.get((Pass(x.stage, x.slice, op), i)) for op in (Op.B, Op.BW, Op.R)} | {j}
        choices = [t for q, t in offers.items() if h.rank[q] == h.rank[j] and q not in own]
        at = model.NewIntVar(0, len(choices) - 1, f"at_{x.name}_m{i}")
        model.AddElement(at, choices, v.start[j])


def add_memory(model: cp_model.CpModel, v: _Vars, h: Horizon, upper: int) -> None:
    """Per rank, the lifespans held at any instant fit the budget (a cumulative constraint), except
    on the ranks where the cap's precedences (`Horizon.cuts`) already say exactly that."""
    if h.budget is None:
        return
    per_rank: list[tuple[list, list]] = [([], []) for _ in range(h.spec.p)]
    for n, (r, b, e, units, when) in enumerate(h.spans):
        if units <= 0 or (h.exact_cap and h.exact_cap[r]):
            continue
        size = v.size[n] = model.NewIntVar(0, upper, f"span{n}")
        end = v.start[e] + h.dur[e]
        if when is None:
            iv = model.NewIntervalVar(v.start[b], size, end, f"m{n}")
        else:
            iv = model.NewOptionalIntervalVar(v.start[b], size, end, v.variant[when], f"m{n}")
        per_rank[r][0].append(iv)
        per_rank[r][1].append(units)
    for r, (intervals, demands) in enumerate(per_rank):
        if intervals:
            model.AddCumulative(intervals, demands, h.budget[r])


def add_makespan(model: cp_model.CpModel, v: _Vars, h: Horizon, floor: int) -> None:
    """The makespan is at least every existing job's end, and at least ``floor``."""
    for j in range(len(h.jobs)):
        ct = model.Add(v.makespan >= v.start[j] + h.dur[j])
        lits = _literals(v, (j,))
        if lits:
            ct.OnlyEnforceIf(lits)
    model.Add(v.makespan >= floor)


def add_load_cuts(model: cp_model.CpModel, v: _Vars, h: Horizon, tails: list[int]) -> None:
    """Under the microbatch order, the makespan is at least the start of a rank's first pass of
    microbatch i plus the rank's work of microbatches i..m-1 plus their least tail
    (``synth.horizon.rows.load_terms``)."""
    for anchor, _, work in load_terms(h, tails):
        model.Add(v.makespan >= v.start[anchor] + work)


def _weight(h: Horizon) -> int:
    return 1 + len(h.groups)


def _decisions(v: _Vars) -> list:
    return [lit for (g, variant), lit in v.variant.items() if variant != KEEP]


# ---------------------------------------------------------------------------------------- solve
class _Watch(cp_model.CpSolverSolutionCallback):
    """Keeps the best solution that the simulator reproduces (`realize`), starting from the hint,
    and records (seconds, its makespan, bound) at every change, passing them to ``progress``."""

    def __init__(self, h: Horizon, v: _Vars, weight: int, history: list, progress: Progress | None, floor: int,
                 hint: Solution | None) -> None:
        super().__init__()
        self.h, self.v, self.weight, self.history, self.progress, self.floor = h, v, weight, history, progress, floor
        self.began = time.perf_counter()
        self.best = hint
        self.makespan: int | None = None if hint is None else hint.makespan(h)
        self.bound = floor

    def on_solution_callback(self) -> None:
        self.offer(_decode(self.h, self, self.v))
        self.on_bound(self.BestObjectiveBound())

    def offer(self, solution: Solution) -> None:
        real = realize(self.h, solution)
        if real is not None and (self.best is None or real.makespan(self.h) < self.makespan):
            self.best, self.makespan = real, real.makespan(self.h)

    def on_bound(self, objective_bound: float) -> None:
        self.bound = max(self.bound, int(math.floor(objective_bound + 1e-9)) // self.weight)
        self.record(self.makespan, self.bound)

    def record(self, makespan: int | None, bound: int) -> None:
        seconds = time.perf_counter() - self.began
        self.history.append((round(seconds, 3), makespan, bound))
        if self.progress is not None:
            self.progress(seconds, makespan, bound)


def solve_horizon(h: Horizon, *, time_limit: float, workers: int = 2, hints: list[Solution] = (),
                  progress: Progress | None = None) -> HorizonResult:
    """Minimize the makespan of ``h`` with CP-SAT within ``time_limit`` seconds.

    The best hint that fits the model (by makespan) caps the makespan and warm-starts the search;
    the answer is never worse than it.
    """
    began = time.perf_counter()
    fitting = sorted((s for s in hints if fits_model(h, s)), key=lambda s: s.makespan(h))
    best_hint = fitting[0] if fitting else None
    upper = h.upper if best_hint is None else min(h.upper, best_hint.makespan(h))
    heads, tails = paths(h)
    floor = int(math.ceil(horizon_bound(h, (heads, tails)).value - 1e-9))
    if floor > upper:
        return HorizonResult(None, None, floor, False, "infeasible", time.perf_counter() - began, "cpsat")
    if best_hint is not None and upper <= floor:  # the hint meets the analytic bound: nothing to search
        seconds = time.perf_counter() - began
        return HorizonResult(best_hint, upper, upper, True, "optimal", seconds, "cpsat",
                             [(round(seconds, 3), upper, upper)])

    model = cp_model.CpModel()
    v = _variables(model, h, upper, (heads, tails) if h.tighten.windows else None)
    add_no_overlap(model, v, h)
    add_precedences(model, v, h)
    add_either(model, v, h)
    add_memory(model, v, h, upper)
    add_reload_timing(model, v, h, upper)
    add_makespan(model, v, h, floor)
    if h.tighten.load_cuts:
        add_load_cuts(model, v, h, tails)
    weight = _weight(h)
    model.Minimize(v.makespan * weight + sum(_decisions(v)))
    if best_hint is not None or hints:
        _add_hint(model, v, h, best_hint or hints[0])

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.05, time_limit - (time.perf_counter() - began))
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = 0
    history: list = []
    watch = _Watch(h, v, weight, history, progress, floor, best_hint)
    solver.best_bound_callback = watch.on_bound
    status = solver.Solve(model, watch)
    seconds = time.perf_counter() - began
    if status == cp_model.INFEASIBLE and best_hint is None:
        return HorizonResult(None, None, floor, False, "infeasible", seconds, "cpsat", history)
    bound = floor
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        bound = max(floor, int(math.floor(solver.BestObjectiveBound() + 1e-9)) // weight)
        watch.offer(_decode(h, solver, v))
    solution, makespan = watch.best, watch.makespan
    if solution is None:
        return HorizonResult(None, None, bound, False, "unknown", seconds, "cpsat", history)
    proven = makespan <= bound
    found = solution is not best_hint
    status_name = "optimal" if proven else "feasible" if found else "hint"
    watch.record(makespan, makespan if proven else bound)
    return HorizonResult(solution, makespan, makespan if proven else bound, proven, status_name, seconds, "cpsat",
                         history)


# ------------------------------------------------------------------------------ rank relaxation
def rank_relaxation_bound(h: Horizon, rank: int, time_limit: float, heads_tails: tuple[list, list] | None = None,
                          hint: Solution | None = None, workers: int = 2) -> int | None:
    """A lower bound on the makespan from one rank alone, solved by CP-SAT: the rank's jobs with
    their heads and tails (``synth.horizon.rows.paths``), one at a time, each microbatch's passes on
    the rank apart by at least the longest precedence path between them through the other ranks,
    the model's order and cap rows between the rank's own jobs, and its memory (the cumulative
    unless the rows are exact). Every solution of the model restricted to the rank is a solution
    of this one, with ``end + tail`` at most its makespan, so the solver's bound holds for the model.
    Where Jackson's bound (`synth.horizon.bounds.jackson`) lets the rank preempt and ignores memory,
    this sees both. None where the model is not ordered (units have variants)."""
    if not h.ordered:
        return None
    head, tail = heads_tails if heads_tails is not None else paths(h)
    spec, index = h.spec, h.index()
    mine = [x for x in sorted(spec.dur) if spec.rank[x] == rank and x not in spec.copy]
    jobs = [index[(x, i)] for i in range(h.m) for x in mine]
    if not jobs:
        return None
    own = set(jobs)
    upper = h.upper if hint is None else hint.makespan(h)
    model = cp_model.CpModel()
    start = {j: model.NewIntVar(head[j], max(head[j], upper - h.dur[j] - tail[j]), f"s{j}") for j in jobs}
    model.AddNoOverlap([model.NewFixedSizeIntervalVar(start[j], h.dur[j], f"i{j}") for j in jobs if h.dur[j] > 0])
    makespan = model.NewIntVar(0, upper, "makespan")
    for j in jobs:
        model.Add(makespan >= start[j] + h.dur[j] + tail[j])
    for (x, y), lag in _lags(spec, mine).items():
        for i in range(h.m):
            a, b = index[(x, i)], index[(y, i)]
            model.Add(start[b] >= start[a] + h.dur[a] + lag)
    for later, earlier, gap in h.cuts:
        if later in own and earlier in own:
            model.Add(start[later] >= start[earlier] + h.dur[earlier] + gap)
    for later, first, second in h.either:
        if later in own:
            lit = model.NewBoolVar("")
            model.Add(start[later] >= start[first] + h.dur[first]).OnlyEnforceIf(lit)
            model.Add(start[later] >= start[second] + h.dur[second]).OnlyEnforceIf(lit.Not())
    if h.budget is not None and not h.exact_cap[rank]:
        intervals, demands = [], []
        for r, b, e, units, _ in h.spans:
            if r == rank and units > 0:
                size = model.NewIntVar(0, upper, "")
                intervals.append(model.NewIntervalVar(start[b], size, start[e] + h.dur[e], ""))
                demands.append(units)
        model.AddCumulative(intervals, demands, h.budget[rank])
    if hint is not None:
        for j in jobs:
            model.AddHint(start[j], hint.starts[j])
    model.Minimize(makespan)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.05, time_limit)
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = 0
    status = solver.Solve(model)
    if status == cp_model.INFEASIBLE:
        return upper + 1 if hint is None else upper  # no schedule below `upper` (the hint's, if any)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return int(math.ceil(solver.BestObjectiveBound() - 1e-9))


def _lags(spec, mine: list[Pass]) -> dict[tuple[Pass, Pass], int]:
    """``(x, y) -> lag``: within one microbatch, ``y`` starts at least ``lag`` after ``x`` ends (the
    longest path of precedences between them), for the passes ``mine`` of one rank."""
    succs: dict[Pass, list[tuple[Pass, int]]] = {x: [] for x in spec.dur}
    for later, earlier, gap in spec.edges:
        succs[earlier].append((later, gap))
    out = {}
    for x in mine:
        dist = {y: gap for y, gap in succs[x]}  # from x's end to y's start
        frontier = list(dist)
        while frontier:  # the block's DAG is small: relax until nothing changes
            nxt = []
            for a in frontier:
                for y, gap in succs[a]:
                    value = dist[a] + spec.dur[a] + gap
                    if value > dist.get(y, -math.inf):
                        dist[y] = value
                        nxt.append(y)
            frontier = nxt
        out.update({(x, y): d for y, d in dist.items() if y in mine and y != x})
    return out


def _add_hint(model: cp_model.CpModel, v: _Vars, h: Horizon, hint: Solution) -> None:
    for j, var in v.start.items():
        if j in hint.starts:
            model.AddHint(var, hint.starts[j])
    for (g, variant), lit in v.variant.items():
        model.AddHint(lit, hint.variants.get(g, KEEP) == variant)
    for n, var in v.size.items():
        _, b, e, _, when = h.spans[n]
        if exists(h, when, hint.variants):
            model.AddHint(var, hint.starts[e] + h.dur[e] - hint.starts[b])
    model.AddHint(v.makespan, hint.makespan(h))


def _decode(h: Horizon, solver, v: _Vars) -> Solution:
    variants = {g: variant for (g, variant), lit in v.variant.items() if solver.BooleanValue(lit)}
    starts = {j: solver.Value(var) for j, var in v.start.items() if exists(h, h.presence[j], variants)}
    return Solution(starts, variants)
