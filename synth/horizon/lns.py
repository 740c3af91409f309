"""Large-neighbourhood search on the full horizon: re-solve one time window of an incumbent at a time.

The whole-horizon CP-SAT model (``synth.horizon.cpsat``) stalls on long horizons; this search
keeps an incumbent `Solution` that satisfies the model and repeatedly frees the jobs of one time
window, solving the small CP-SAT model that is left (the same conventions: intervals, NoOverlap
per rank and stream, precedence rows, a cumulative per rank, a makespan to minimize).

**The neighbourhood.** Given the incumbent's starts ``s_j`` and a window ``[t0, t1)``:

- the *prefix* (``s_j < t0``) stays where it is;
- the *window* (``t0 <= s_j < t1``) is free: one start variable per job, in ``[t0, T - dur]``
  where ``T = t1 + L - Delta`` and ``L`` is the longest duration plus the largest gap of a
  precedence row (so the incumbent, whose window jobs end before ``t1 + max dur``, is a solution
  with ``Delta = 0``);
- the *suffix* (``s_j >= t1``) moves left rigidly by one variable ``Delta >= 0``: its jobs start at
  ``s_j - Delta``, so their own precedences, one-at-a-time and memory stay as in the incumbent.
  ``Delta`` is at most ``min(first suffix start - t0, t1 + L - last prefix end)``: the suffix never
  moves before ``t0``, and ``T`` never comes before a prefix job's end.

The sub-model holds:

- every precedence row of ``h.links`` (dependencies and cuts) between jobs of different parts,
  and every ``either`` row of the cap (a job starts after one of two jobs ends, one literal each)
  that touches the window or spans two parts; rows inside the prefix or inside the suffix hold
  already, shifted or not;
- per rank and stream a NoOverlap over the window jobs, the prefix jobs that end after ``t0``
  (fixed intervals) and the suffix jobs with ``s_j < t1 + L`` (intervals that start at
  ``s_j - Delta``). Other pairs cannot meet: a prefix job ending by ``t0`` is done before any
  window or suffix job starts; a suffix job with ``s_j >= t1 + L`` starts at or after ``T``, when
  every window job and (by the bound on ``Delta``) every prefix job has ended;
- per rank with a budget a cumulative over the lifespans that can be alive before ``T``: those
  whose begin is in the prefix and whose end ends after ``t0``, those whose begin is in the window,
  and those whose begin is in the suffix with ``s_begin < t1 + L``; each interval runs from its
  begin's start expression to its end's end expression. Ranks whose cap the precedence rows say
  exactly (``h.exact_cap``) get none, as in the whole model.

**Why it is exact.** Every solution of the sub-model, put together with the fixed prefix and the
shifted suffix, satisfies the full model, and the incumbent is one of them. Precedences and
one-at-a-time are argued above. For memory, split the instants ``tau``: before ``t0`` nothing of
the window or the suffix has started, and every lifespan alive there is alive in the incumbent at
the same instant; in ``[t0, T)`` a lifespan left out of the cumulative is not alive (it ended by
``t0`` or begins at ``s_begin - Delta >= T``), so the cumulative counts all that is held. At
``tau >= T`` the memory equals the incumbent's at ``tau + Delta``: ``tau + Delta >= t1 + L``,
after every job of the prefix and the window has ended in both solutions (window jobs end by ``T``
here and before ``t1 + L`` in the incumbent, prefix jobs by ``T`` as ``Delta`` is bounded), so a
lifespan is alive in either solution exactly when it has begun and its end job is a suffix job
that has not ended, and suffix jobs are the incumbent's shifted by ``Delta``; the incumbent fits
the budget at ``tau + Delta``. Each sub-solution is still checked (`fits_model`) and taken as the
simulator runs it (`realize`) before it replaces the incumbent, so nothing that fails the model
is ever kept or returned.

**What is not covered.** The incumbent's variants (keep, recompute, offload per unit) are fixed:
the search moves jobs, it never re-decides recompute or offload. Copy jobs (OFFLOAD, RELOAD) are
never freed: a window that holds one is skipped, since a RELOAD may only start where a compute
job starts or a copy ends; windows are also skipped where a suffix RELOAD would lose the only
instant it may start at (a prefix copy's end). So with offload the search only improves the
placement of compute jobs between copies.

**The schedule of windows.** Sweeps over the horizon, each with windows of a time length that
frees about ``window_jobs`` jobs at the incumbent's average density (jobs / makespan), a stride of
half a window, a random offset after the first sweep (seeded), and a last window that covers the
cool-down to the end (empty suffix), visited first (it needs no shift, so it improves most
readily), then the others from the start. After a sweep with no strict improvement the window doubles,
up to the whole horizon (solved once; if that is not proven optimal for the fixed variants the
windows start over at their first size with a new offset). Equal-makespan moves are accepted too
(the sub-solution reshuffles a plateau), counted as non-improving. Each sub-solve gets
``max(0.5, remaining / windows left in the sweep)`` seconds, at most 5 and at most what is left.
Windows whose fixed parts already force the incumbent's makespan (longest paths to the end from
the prefix, or from the suffix moved as far as it may) are not solved.

**The bound** is the analytic one (`synth.horizon.bounds.horizon_bound`), raised first by the
rank relaxations (``synth.horizon.cpsat.rank_relaxation_bound``: `RELAX_SHARE` of the time limit,
on the `RELAX_RANKS` ranks whose Jackson bound is largest; ordered models only), and by the solver's
bound where a window spans the whole horizon and no unit has a variant: that sub-model is then the
full model capped at the incumbent's makespan, so a solve to optimality proves the answer.
"""

from __future__ import annotations

import math
import random
import time

from ortools.sat.python import cp_model

from ir import Op
from synth.horizon import bounds as _bounds
from synth.horizon.cpsat import HorizonResult, Progress, rank_relaxation_bound
from synth.horizon.rows import paths
from synth.horizon.spec import Horizon, Solution, exists, fits_model, realize, reload_offers, violations

__all__ = ["solve_lns"]

RELAX_SHARE = 0.2  # of the time limit for the rank relaxations' bound, before the windows
RELAX_RANKS = 2  # the ranks with the largest Jackson bound get one each
MAX_SLICE = 5.0  # seconds for one sub-solve, at most
MIN_SLICE = 0.5  # and at least (unless less time is left)


def solve_lns(h: Horizon, incumbent: Solution, *, time_limit: float, workers: int = 2, window_jobs: int = 400,
              progress: Progress | None = None, seed: int = 0) -> HorizonResult:
    """Improve ``incumbent`` (which must satisfy the model) by re-solving time windows for ``time_limit`` seconds.

    See the module docstring for the neighbourhood and the schedule of windows. Returns a
    `HorizonResult` with ``solver="cpsat-lns"``: status "optimal" where the makespan meets the
    bound (the analytic one, or the solver's on a whole-horizon window without variants), else
    "feasible" if the search improved on the incumbent, else "hint" (the incumbent stands). The
    solution always satisfies the model.

    Raises:
        ValueError: if ``incumbent`` does not satisfy the model (`fits_model`).
    """
    began = time.perf_counter()
    if not fits_model(h, incumbent):
        raise ValueError("the incumbent does not satisfy the model: " + "; ".join(violations(h, incumbent)[:3]))
    if window_jobs < 1:
        raise ValueError(f"window_jobs must be positive, got {window_jobs!r}")
    heads_tails = paths(h)
    bound = int(math.ceil(_bounds.horizon_bound(h, heads_tails).value - 1e-9))
    if incumbent.makespan(h) > bound:
        bound = max(bound, _relaxed(h, incumbent, RELAX_SHARE * time_limit, workers, heads_tails))
    search = _Search(h, incumbent, bound, workers, seed, progress, began, heads_tails)
    search.record()
    if search.makespan > bound:
        search.run(time_limit, window_jobs)
    seconds = time.perf_counter() - began
    best, makespan = search.best, search.makespan
    proven = makespan <= search.bound
    status = "optimal" if proven else "feasible" if makespan < incumbent.makespan(h) else "hint"
    final = makespan if proven else search.bound
    search.history.append((round(seconds, 3), makespan, final))
    return HorizonResult(best, makespan, final, proven, status, seconds, "cpsat-lns", search.history)


def _relaxed(h: Horizon, incumbent: Solution, seconds: float, workers: int, heads_tails: tuple[list, list]) -> int:
    """The best rank-relaxation bound (``synth.horizon.cpsat.rank_relaxation_bound``) of the
    `RELAX_RANKS` ranks with the largest Jackson bound, ``seconds`` shared among them; 0 if none."""
    if not h.ordered or seconds < 0.1:
        return 0
    heads, tails = heads_tails
    per_rank: dict[int, list[tuple[int, int, int]]] = {}
    for j in range(len(h.jobs)):
        if not h.copy[j] and h.dur[j] > 0:
            per_rank.setdefault(h.rank[j], []).append((heads[j], h.dur[j], tails[j]))
    ranks = sorted(per_rank, key=lambda r: -_bounds.jackson(per_rank[r]))[:RELAX_RANKS]
    out = 0
    for r in ranks:
        value = rank_relaxation_bound(h, r, seconds / len(ranks), heads_tails, incumbent, workers)
        out = max(out, value or 0)
    return min(out, incumbent.makespan(h))


class _Search:
    """The incumbent, the history and the loop over windows."""

    def __init__(self, h: Horizon, incumbent: Solution, bound: int, workers: int, seed: int,
                 progress: Progress | None, began: float, heads_tails: tuple[list, list]) -> None:
        self.h, self.bound, self.workers, self.seed = h, bound, workers, seed
        self.progress, self.began = progress, began
        self.best = incumbent
        self.makespan = incumbent.makespan(h)
        self.history: list[tuple[float, int | None, int]] = []
        self.rng = random.Random(seed)
        self.heads, self.tails = heads_tails
        self.max_gap = max([0, *(gap for _, _, gap in h.links)])
        self.max_dur = max(h.dur, default=0)
        self.solves = 0  # sub-solves run (each gets its own seed)
        self.stale = 0  # consecutive solved windows without a strict improvement

    def record(self) -> None:
        seconds = time.perf_counter() - self.began
        self.history.append((round(seconds, 3), self.makespan, self.bound))
        if self.progress is not None:
            self.progress(seconds, self.makespan, self.bound)

    def left(self, time_limit: float) -> float:
        return time_limit - (time.perf_counter() - self.began)

    def run(self, time_limit: float, window_jobs: int) -> None:
        n = len(self.best.starts)
        factor, offset_fraction = 1, 0.0
        while self.left(time_limit) > 0.05 and self.makespan > self.bound:
            size = min(n, window_jobs * factor)
            improved, solved, whole_optimal = self.sweep(time_limit, size, offset_fraction)
            if self.makespan <= self.bound:
                return
            if whole_optimal:
                return  # the whole horizon solved to optimality for these variants: nothing left to find
            if not improved:
                if size >= n:
                    if not solved:
                        return  # every window skipped, even the whole horizon: nothing to search
                    factor = 1  # the whole horizon did not close: start over with small windows
                else:
                    factor *= 2
            offset_fraction = self.rng.random()

    def sweep(self, time_limit: float, size: int, offset_fraction: float) -> tuple[bool, bool, bool]:
        """One pass over the horizon with windows of about ``size`` jobs, the first shortened by the
        offset: the cool-down window (to the end) first, then the others from the start. Returns
        (strictly improved, some window was solved, the whole horizon was one window solved to
        optimality)."""
        n = len(self.best.starts)
        whole = size >= n
        grid = [(0, None)] if whole else _grid(self.makespan, max(2, math.ceil(size * self.makespan / n)),
                                              offset_fraction)
        order = [grid[-1], *grid[:-1]]
        improved = solved = False
        for count, (t0, t1) in enumerate(order):
            left = self.left(time_limit)
            if left <= 0.05 or self.makespan <= self.bound:
                break
            end = t1 is None or t1 > self.makespan
            if t0 >= self.makespan:
                continue  # the horizon shrank below this window
            before = self.makespan
            seconds = min(MAX_SLICE, max(MIN_SLICE, left / (len(order) - count)), left)
            outcome = self.window(t0, self.makespan + 1 if end else t1, seconds)
            if outcome is not None:
                solved = True
                self.stale = 0 if self.makespan < before else self.stale + 1
                if self.makespan < before:
                    improved = True
                    self.record()
                if t0 == 0 and end and outcome == "optimal":
                    return improved, solved, True
        return improved, solved, False

    def window(self, t0: int, t1: int, seconds: float) -> str | None:
        """Re-solve window ``[t0, t1)`` of the incumbent within ``seconds``; keep what the simulator
        reproduces if no worse. Returns the sub-solve's status name, or None if the window was skipped."""
        sub = _window_model(self.h, self.best, t0, t1, self.max_dur + self.max_gap, self.heads, self.tails,
                            self.bound, self.makespan)
        if sub is None:
            return None
        model, starts, delta, makespan, parts = sub
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.05, seconds)
        solver.parameters.num_workers = self.workers
        solver.parameters.random_seed = self.seed + self.solves
        self.solves += 1
        status = solver.Solve(model)
        if t0 <= 0 and not parts[0] and not parts[2] and not self.h.groups and status != cp_model.UNKNOWN:
            # the whole horizon, and no variant to fix: the sub-model is the full model capped at the
            # incumbent's makespan, so its bound holds for every solution (infeasible: the incumbent
            # is optimal)
            objective_bound = self.makespan if status == cp_model.INFEASIBLE else solver.BestObjectiveBound()
            better = min(self.makespan, int(math.ceil(objective_bound - 1e-9)))
            if better > self.bound:
                self.bound = better
                self.record()
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return "unknown"
        prefix, window, suffix = parts
        d = solver.Value(delta)
        new = {j: self.best.starts[j] for j in prefix}
        new.update({j: solver.Value(starts[j]) for j in window})
        new.update({j: self.best.starts[j] - d for j in suffix})
        candidate = Solution(new, dict(self.best.variants))
        if fits_model(self.h, candidate):
            real = realize(self.h, candidate)
            if real is not None and real.makespan(self.h) <= self.makespan:
                self.best, self.makespan = real, real.makespan(self.h)
        return "optimal" if status == cp_model.OPTIMAL else "feasible"


def _grid(makespan: int, length: int, offset_fraction: float) -> list[tuple[int, int | None]]:
    """Windows ``(t0, t1)`` of ``length`` ticks at a stride of half that, the first shortened by the
    offset, the last (``t1`` None) running to the end."""
    stride = max(1, length // 2)
    off = int(offset_fraction * stride)
    out: list[tuple[int, int | None]] = []
    k = 0
    while True:
        t0, t1 = max(0, k * stride - off), k * stride - off + length
        k += 1
        if t1 >= makespan:
            out.append((t0, None))
            return out
        out.append((t0, t1))


def _window_model(h: Horizon, inc: Solution, t0: int, t1: int, reach: int, heads: list[int], tails: list[int],
                  floor: int, upper: int):
    """The sub-model of window ``[t0, t1)`` (module docstring): ``(model, window start variables,
    Delta, makespan, (prefix, window, suffix))``, or None where the window holds a copy job, holds
    no job, would strand a suffix RELOAD, or cannot beat ``upper``."""
    s = inc.starts
    prefix = [j for j, t in s.items() if t < t0]
    window = [j for j, t in s.items() if t0 <= t < t1]
    suffix = [j for j, t in s.items() if t >= t1]
    if not window or any(h.copy[j] for j in window):
        return None
    horizon = t1 + reach  # T = horizon - Delta
    in_suffix = set(suffix)
    for j in suffix:  # a suffix RELOAD keeps an instant to start at if a suffix job offers it
        if h.jobs[j][0].op is Op.RELOAD:
            offers = reload_offers(h, j, {q: s[q] for q in suffix})
            if s[j] not in offers:
                return None
    prefix_end = max((s[j] + h.dur[j] for j in prefix), default=t0)
    fixed_floor = max([floor, prefix_end, *(s[j] + h.dur[j] + tails[j] for j in prefix)])
    if fixed_floor >= upper:
        return None  # the prefix alone forces the incumbent's makespan
    delta_max = 0
    if suffix:
        delta_max = max(0, min(min(s[j] for j in suffix) - t0, horizon - prefix_end,
                               *(s[j] - heads[j] for j in suffix)))
        if max(s[j] + h.dur[j] + tails[j] for j in suffix) - delta_max >= upper:
            return None  # the suffix, moved as far as it may, still ends no earlier

    model = cp_model.CpModel()
    delta = model.NewIntVar(0, delta_max, "delta")
    starts = {}
    for j in window:
        x, i = h.jobs[j]
        lo = max(t0, heads[j])
        starts[j] = model.NewIntVar(lo, max(lo, horizon - h.dur[j]), f"{x.name}_m{i}")
        model.Add(starts[j] + h.dur[j] <= horizon - delta)
    in_window = set(window)

    def expr(j: int):
        if j in in_window:
            return starts[j]
        if j in in_suffix:
            return s[j] - delta
        return s[j]

    for later, earlier, gap in h.links:
        if later not in s or earlier not in s:
            continue  # a job of a variant the incumbent does not pick
        a, b = later in in_suffix, earlier in in_suffix
        if a and b:
            continue
        if not (a or b) and later not in in_window and earlier not in in_window:
            continue  # both in the prefix
        model.Add(expr(later) >= expr(earlier) + h.dur[earlier] + gap)

    for n, (later, first, second) in enumerate(h.either):
        _add_either(model, s, (later, first, second), expr, h.dur, (in_window, in_suffix), n)

    lanes: dict[tuple[int, bool], list] = {}
    for j in (*window, *(q for q in prefix if s[q] + h.dur[q] > t0), *(q for q in suffix if s[q] < horizon)):
        if h.dur[j] > 0:
            lanes.setdefault((h.rank[j], h.copy[j]), []).append(model.NewFixedSizeIntervalVar(expr(j), h.dur[j],
                                                                                             f"i{j}"))
    for lane in lanes.values():
        if len(lane) > 1:
            model.AddNoOverlap(lane)

    if h.budget is not None:
        per_rank: dict[int, tuple[list, list]] = {}
        for n, (r, b, e, units, when) in enumerate(h.spans):
            if units <= 0 or not exists(h, when, inc.variants) or (h.exact_cap and h.exact_cap[r]):
                continue
            if b in in_suffix and s[b] >= horizon:
                continue
            if b not in in_suffix and b not in in_window and e not in in_suffix and e not in in_window \
                    and s[e] + h.dur[e] <= t0:
                continue  # held and freed before t0
            lo = s[e] + h.dur[e] - s[b]
            size = model.NewIntVar(0, max(0, upper), f"span{n}")
            model.AddHint(size, max(0, lo))
            iv = model.NewIntervalVar(expr(b), size, expr(e) + h.dur[e], f"m{n}")
            per_rank.setdefault(r, ([], []))[0].append(iv)
            per_rank[r][1].append(units)
        for r, (intervals, demands) in per_rank.items():
            model.AddCumulative(intervals, demands, h.budget[r])

    makespan = model.NewIntVar(fixed_floor, upper, "makespan")
    for j in window:
        model.Add(makespan >= starts[j] + h.dur[j] + tails[j])
    if suffix:
        model.Add(makespan >= max(s[j] + h.dur[j] + tails[j] for j in suffix) - delta)
    model.Minimize(makespan)
    for j in window:
        model.AddHint(starts[j], s[j])
    model.AddHint(delta, 0)
    model.AddHint(makespan, upper)
    return model, starts, delta, makespan, (prefix, window, suffix)


def _add_either(model: cp_model.CpModel, s: dict[int, int], row: tuple[int, int, int], expr, dur, parts,
                n: int) -> None:
    """One of the cap's ``either`` rows: ``later`` starts after ``first`` ends or after ``second``
    ends. Skipped where all three jobs are in the prefix or all in the suffix (the incumbent meets
    it, shifted or not); a disjunct between two fixed jobs is decided at once."""
    later, first, second = row
    if any(j not in s for j in row):
        return
    in_window, in_suffix = parts
    where = [2 if j in in_suffix else 1 if j in in_window else 0 for j in row]
    if where in ([0, 0, 0], [2, 2, 2]):
        return
    disjuncts = []
    for other, w in ((first, where[1]), (second, where[2])):
        if w == where[0] and w != 1:  # both fixed, or both shifted: as in the incumbent
            if s[later] >= s[other] + dur[other]:
                return  # this disjunct holds whatever the window does
            continue
        disjuncts.append(other)
    if not disjuncts:  # cannot happen for a row the incumbent meets
        model.AddBoolOr([])
        return
    if len(disjuncts) == 1:
        model.Add(expr(later) >= expr(disjuncts[0]) + dur[disjuncts[0]])
        return
    lit = model.NewBoolVar(f"either{n}")
    model.Add(expr(later) >= expr(first) + dur[first]).OnlyEnforceIf(lit)
    model.Add(expr(later) >= expr(second) + dur[second]).OnlyEnforceIf(lit.Not())
    model.AddHint(lit, s[later] >= s[first] + dur[first])
