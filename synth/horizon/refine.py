"""Full-horizon refinement and lower bounds for the search (``synth --optimize full|auto``).

`full_horizon` builds the full-horizon model for one placement (``synth.horizon.spec``, tightened),
hints it with the schedules found so far (the list schedulers', the tiled block, the fitting
baselines), solves it with CP-SAT (``synth.horizon.cpsat``), with large-neighbourhood search from
the best hint (``synth.horizon.lns``) where the whole model is too large for the time left, or with
the MILP twin (``synth.horizon.milp``: HiGHS or CBC in a child process), and decodes the answer to
a schedule, which the search then squeezes, simulates and verifies like any other candidate.

`lower_bound` says how far from optimal a schedule may be: the analytic bound on the real costs
(``synth.horizon.bounds`` on the unrounded data), raised to the solver's proven bound when the solver's
model is exact for these costs (every duration a whole number of ticks and every byte count a
whole number of memory units; else the model rounds up and its bound holds only for the model)
and covers the schedule's operations. The model is a relaxation of what programs can do (see
``synth.horizon.cpsat.add_reload_timing``), and the solvers hand back only solutions that the simulator
reproduces (``synth.horizon.spec.realize``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ir import Costs, Op, Placement, Schedule
from synth.block.spec import BlockError, BlockOptions, block_spec
from synth.horizon.bounds import analytic_bound, horizon_bound
from synth.horizon.spec import Horizon, expand, hint_from_schedule, to_schedule

__all__ = ["WHOLE_JOBS_PER_SECOND", "Bound", "full_horizon", "gap", "horizon_jobs", "lower_bound", "raise_bound"]

# CP-SAT solves the whole tightened model when it has at most this many jobs per second of the time
# it gets; larger models go to the large-neighbourhood search from the best hint. Measured on the
# 2-core CI machine (benchmarks/results/solver_scaling.md): p=16, m=64 (3,072 jobs) is proven in
# about 25 s, while at p=32, m=256 (24,576 jobs) a 60 s solve took 268 s, most of it before the search.
WHOLE_JOBS_PER_SECOND = 100
# "auto" runs the neighbourhood search only from a hint at most this much slower (in the model's ticks)
# than the best schedule's: where rounding makes the best schedule break the model, a far worse start
# cannot catch up within the time left.
LNS_START_SLACK = 1.05
# `lower_bound` expands the model for its order and rank bounds up to this many jobs (about 1 s).
HORIZON_BOUND_JOBS = 20_000


@dataclass(frozen=True)
class Bound:
    """A lower bound on the makespan (ms) of every schedule on ``placement`` with the options.

    Attributes:
        value: the bound in cost units (ms).
        source: "analytic (work|pass|memory)" or "<solver> proven".
        placement: the placement kind it is for.
        analytic: the analytic bound alone.
    """

    value: float
    source: str
    placement: str
    analytic: float


def horizon_jobs(placement: Placement, m: int, k: int, options: BlockOptions) -> int:
    """Jobs (passes x microbatches) of the full-horizon model: what "auto" sizes the solve by."""
    per_unit = (3 if options.split_backward else 2) + int(options.recompute) + 2 * int(options.offload)
    return placement.num_stages * k * m * per_unit


def full_horizon(costs: Costs, placement: Placement, m: int, options: BlockOptions, hints: list[Schedule],
                 solver: str = "cpsat", progress: Callable | None = None, method: str = "auto"):
    """Solve the full-horizon model of ``placement`` within ``options.time_limit`` seconds.

    ``method`` (CP-SAT only): "whole" (one model), "lns" (large-neighbourhood search from the best
    hint that fits the model) or "auto" (whole when the model has at most `WHOLE_JOBS_PER_SECOND`
    jobs per second of the limit or no hint fits, else lns).

    Returns ``(schedule or None, result, horizon)``: the decoded schedule (None if the solver found
    nothing and no hint fits the model), the solver's `HorizonResult`, and the model's data.
    ``progress(seconds, makespan_ms or None, bound_ms)`` follows the solve, in cost units.

    Raises:
        BlockError: the options do not fit the costs, or the solver is unknown or failed.
    """
    began = time.perf_counter()
    spec = block_spec(costs, placement, options)
    h = expand(spec, m)
    converted = [hint_from_schedule(h, x) for x in hints]
    solutions = [s for s in converted if s is not None]
    first = converted[0] if converted else None  # the best schedule's, fitting the model or not
    if progress is not None:
        in_ms = progress

        def progress(seconds: float, makespan: int | None, bound: int) -> None:  # ticks to cost units
            in_ms(seconds, None if makespan is None else makespan * spec.tick, bound * spec.tick)
    if method not in ("auto", "whole", "lns"):
        raise BlockError(f"unknown full-horizon method {method!r}; choose auto, whole or lns")
    seconds = max(0.05, options.time_limit - (time.perf_counter() - began))  # the model's build counts
    if solver == "cpsat":
        from synth.horizon.spec import fits_model

        fitting = sorted((s for s in solutions if fits_model(h, s)), key=lambda s: s.makespan(h))
        whole = method == "whole" or (method == "auto" and len(h.jobs) <= WHOLE_JOBS_PER_SECOND * seconds)
        if whole or not fitting:
            from synth.horizon.cpsat import solve_horizon

            result = solve_horizon(h, time_limit=seconds, workers=options.workers, hints=solutions,
                                   progress=progress)
        else:
            start = fitting[0].makespan(h)
            if method == "auto" and first is not None and start > LNS_START_SLACK * first.makespan(h):
                raise BlockError(
                    f"the best schedule does not fit the model's rounded units (ticks of {spec.tick:.3g}, memory "
                    f"units of {spec.mem_unit:,.0f} bytes) and the best that does is "
                    f"{start * spec.tick:,.1f} against {first.makespan(h) * spec.tick:,.1f} in the model's ticks: "
                    "too far for the neighbourhood search to start from (--optimize lns runs it anyway)")
            from synth.horizon.lns import solve_lns

            result = solve_lns(h, fitting[0], time_limit=seconds, workers=options.workers, progress=progress)
    elif solver in ("highs", "cbc"):
        from synth.horizon.milp import solve_horizon_milp

        result = solve_horizon_milp(h, solver=solver, time_limit=seconds, workers=options.workers,
                                    hints=solutions, progress=progress)
    else:
        raise BlockError(f"unknown solver {solver!r}; choose cpsat, highs or cbc")
    schedule = None
    if result.solution is not None:
        schedule = to_schedule(h, result.solution, placement, solver=solver, status=result.status, exact=spec.exact,
                               makespan_ticks=result.makespan, bound_ticks=result.bound,
                               solve_seconds=round(result.seconds, 3))
    return schedule, result, h


def lower_bound(costs: Costs, placement: Placement, kind: str, m: int, mem_cap: float | None,
                k: int = 1, recompute: bool = True, offload: bool = True, deadline: float | None = None) -> Bound:
    """A bound for every schedule on ``placement`` that does only what is allowed, backward split or
    fused, whichever bounds lower (so it holds for the library's schedules too).

    With recompute or offload allowed (k = 1) it is the analytic bound. With neither, it is
    ``synth.horizon.bounds.horizon_bound`` on the unrounded costs (the order and rank bounds see the
    cap's slots) where the model has at most `HORIZON_BOUND_JOBS` jobs, else the analytic one
    (its memory part cut short at ``deadline``, still a bound)."""
    values = []
    variants = recompute or offload
    for split in (True, False):
        options = BlockOptions(split_backward=split, recompute=variants and recompute,
                               offload=variants and offload, mem_cap=mem_cap)
        spec = block_spec(costs, placement, options, rounded=False)
        if not variants and horizon_jobs(placement, m, k, options) <= HORIZON_BOUND_JOBS:
            values.append(horizon_bound(expand(spec, m)))
        else:
            values.append(analytic_bound(spec, m, deadline))
    best = min(values, key=lambda b: b.value)
    return Bound(best.value, f"analytic ({best.kind})", kind, best.value)


def raise_bound(bound: Bound, h: Horizon, result, schedule: Schedule) -> Bound:
    """``bound`` raised to the solver's proven bound, where that bound holds for ``schedule``: the
    model is exact for the costs and allows every operation ``schedule`` uses."""
    spec = h.spec
    if not spec.exact or result.bound is None:
        return bound  # rounded data: the solver's bound holds for the model only
    ops = {a.op for _, _, a in schedule.actions() if not a.op.is_comm}
    allowed = {Op.F, Op.B, Op.W} if spec.split_backward else {Op.F, Op.BW}
    allowed |= {x.op for x in spec.optional}
    if not ops <= allowed or schedule.placement.stage_to_rank != tuple(
            spec.rank[x] for x in sorted(spec.dur) if x.op is Op.F and x.slice == 0):
        return bound
    solver_ms = result.bound * spec.tick
    if solver_ms <= bound.value * (1 + 1e-12):
        return bound
    return dataclasses.replace(bound, value=solver_ms, source=f"{result.solver} proven")


def gap(makespan: float, bound: Bound | None) -> float | None:
    """``(makespan - bound) / makespan``, or None without a bound."""
    if bound is None or not math.isfinite(bound.value) or makespan <= 0:
        return None
    return max(0.0, (makespan - bound.value) / makespan)
