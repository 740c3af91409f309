"""Synthesis end to end: solve a block per placement, tile and squeeze it, and keep the best
schedule that fits, never worse than the best hand-designed schedule that fits.

The costs come from a function ``costs_for(placement, k) -> ir.Costs`` so the same search runs
on the cost model (``synth.costs``), on unit costs, or on profiled numbers. Every candidate,
synthesized or from the library, is verified and simulated with the costs of its own placement
and slicing, and judged by its simulated makespan and its simulated peak against the cap.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ir import Costs, Placement, Schedule, ScheduleError, Timeline, simulate
from ir.verify import MEMORY_RTOL
from synth.block.cpsat import Block, BlockError, BlockOptions, block_from_answer, solve_block
from synth.block.period import Answer, sequential_block
from synth.block.spec import block_spec
from synth.block.tile import squeeze_timed, tile
from synth.horizon.refine import AUTO_JOBS_PER_SECOND, Bound, full_horizon, gap, horizon_jobs, lower_bound, raise_bound

__all__ = ["PLACEMENTS", "Candidate", "NoScheduleFits", "SynthOptions", "Synthesis", "make_placement",
           "synthesize"]

PLACEMENTS = ("standard", "interleaved", "v", "waves")

CostsFor = Callable[[Placement, int], Costs]


class NoScheduleFits(ValueError):
    """The cap is below every schedule pipesynth can build; ``smallest`` is the least cap that works."""

    def __init__(self, message: str, smallest: float) -> None:
        super().__init__(message)
        self.smallest = smallest


@dataclass(frozen=True, slots=True)
class SynthOptions:
    """What the synthesizer may try.

    Attributes:
        placements: placement kinds to solve a block for ("standard", "interleaved", "v", "waves").
        chunks: stages per rank for interleaved, waves for waves.
        split_backward: B and W as separate passes.
        recompute: the solver may recompute stages (k = 1 only).
        offload: the solver may offload stages (k = 1 only).
        solver: "cpsat", "highs" or "cbc".
        time_limit: seconds per block search (all its probes and the final solve).
        ticks: time resolution of the block model (ticks for the longest pass).
        baselines: evaluate the library too (the safety net).
        memory: the block's memory model, "exact" or "ceil" (see `synth.block.cpsat`).
        optimize: "block" (blocks only), "full" (then the full-horizon model on the best
            placement, hinted with what the blocks and the baselines found), or "auto" (full when
            the model is small enough to help within ``time_limit``: see ``synth.horizon.refine``).
        progress: ``progress(seconds, makespan_ms or None, bound_ms)`` during the full-horizon solve.
    """

    placements: tuple[str, ...] = ("standard",)
    chunks: int = 2
    split_backward: bool = True
    recompute: bool = True
    offload: bool = True
    solver: str = "cpsat"
    time_limit: float = 1.5
    ticks: int = 60
    baselines: bool = True
    memory: str = "exact"
    optimize: str = "block"
    progress: Callable | None = None


@dataclass(frozen=True)
class Candidate:
    """One evaluated schedule.

    Attributes:
        name: "synth/<placement>" or the baseline's name.
        schedule: the schedule.
        costs: the costs it was simulated with.
        timeline: the simulation.
        fits: simulated peak <= cap on every rank.
        block: the solved block, for synthesized candidates.
        seconds: time to build it (solve + tile + squeeze), for synthesized candidates.
        horizon: the full-horizon solve's result, for the refined candidate.
    """

    name: str
    schedule: Schedule
    costs: Costs
    timeline: Timeline
    fits: bool
    block: Block | None = None
    seconds: float = 0.0
    horizon: Any = None

    @property
    def synthesized(self) -> bool:
        return self.block is not None or self.horizon is not None

    @property
    def makespan(self) -> float:
        return self.timeline.makespan

    @property
    def peak(self) -> float:
        return max(self.timeline.peak)

    @property
    def placement(self) -> str:
        return self.schedule.placement.kind.value

    def decisions(self) -> str:
        """Recompute/offload per stage, e.g. ``recompute 0-3, offload 5`` or ``none``."""
        if self.block is not None:
            rec = [s for s, on in enumerate(self.block.recompute) if on]
            off = [s for s, on in enumerate(self.block.offload) if on]
        else:
            from ir import Op

            ops = {(a.op, a.stage) for _, _, a in self.schedule.actions()}
            rec = sorted({s for op, s in ops if op is Op.R})
            off = sorted({s for op, s in ops if op is Op.OFFLOAD})
        parts = [f"{label} {_ranges(stages)}" for label, stages in (("recompute", rec), ("offload", off)) if stages]
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Synthesis:
    """The search's outcome.

    Attributes:
        chosen: the fastest fitting candidate (synthesized or baseline; ties go to lower peak).
        synthesized: the synthesized candidates, one per placement that gave a block.
        baselines: every library schedule that could be built for this shape and slicing.
        skipped: ``(name, reason)`` for placements and baselines that gave nothing.
        mem_cap: the cap, bytes per rank (None: no cap).
        seconds: wall time of the whole search.
        bound: a lower bound on the makespan of any schedule on the chosen one's placement.
        refined: the full-horizon candidate (``optimize`` full or auto), if the solve ran.
        not_refined: why the full-horizon solve did not run (auto: the model is too large).
    """

    chosen: Candidate
    synthesized: tuple[Candidate, ...]
    baselines: tuple[Candidate, ...]
    skipped: tuple[tuple[str, str], ...]
    mem_cap: float | None
    seconds: float
    bound: Bound | None = None
    refined: Candidate | None = None
    not_refined: str = ""

    @property
    def gap(self) -> float | None:
        """The chosen schedule's distance from the bound, ``(makespan - bound) / makespan``."""
        return gap(self.chosen.makespan, self.bound)

    @property
    def best_synthesized(self) -> Candidate | None:
        return _best(self.synthesized)

    @property
    def best_baseline(self) -> Candidate | None:
        return _best(self.baselines)

    def ranked(self) -> list[Candidate]:
        """Every candidate, fitting ones first, then by makespan and peak."""
        refined = () if self.refined is None else (self.refined,)
        return sorted((*refined, *self.synthesized, *self.baselines), key=_rank_key)


def make_placement(kind: str, p: int, chunks: int = 2) -> Placement:
    """The placement ``kind`` ("standard", "interleaved", "v", "waves") on p ranks; ``chunks`` is
    the stages per rank of interleaved and the waves of waves."""
    from synth.costs.args import placement_for

    return placement_for(kind, p, v=chunks, waves=chunks)


def synthesize(costs_for: CostsFor, p: int, m: int, mem_cap: float | None, *, k: int = 1,
               options: SynthOptions | None = None) -> Synthesis:
    """The best schedule for ``p`` ranks and ``m`` microbatches within ``mem_cap`` bytes per rank.

    Args:
        costs_for: ``costs_for(placement, k)`` gives the costs of that placement and slicing.
        p: ranks.
        m: microbatches.
        mem_cap: bytes per rank, or None.
        k: sequence slices of the synthesized schedules (baselines use their own).
        options: what to try.

    Raises:
        NoScheduleFits: nothing fits the cap; the message names the smallest cap that works.
    """
    options = options or SynthOptions()
    began = time.perf_counter()
    cached: dict[tuple[tuple[int, ...], int], Costs] = {}

    def costs_of(placement: Placement, slices: int) -> Costs:
        key = (placement.stage_to_rank, slices)
        if key not in cached:
            cached[key] = costs_for(placement, slices)
        return cached[key]

    skipped: list[tuple[str, str]] = []
    synthesized, sequential = [], []
    for kind in options.placements:
        try:
            placement = make_placement(kind, p, options.chunks)
        except ValueError as err:
            skipped.append((f"synth/{kind}", str(err)))
            continue
        costs = costs_of(placement, k)
        try:
            found = _synthesize_one(kind, costs, placement, m, k, mem_cap, _block_options(options, k, mem_cap),
                                    options)
        except BlockError:
            found = None
        if found is None or not found.fits:  # one microbatch at a time is the last resort
            sequential.append(_sequential_one(kind, costs, placement, m, k, mem_cap, options))
            if sequential[-1].fits or found is None:
                found = sequential[-1]
        synthesized.append(found)
    baselines = _baselines(p, m, k, costs_of, mem_cap, skipped) if options.baselines else []
    fitting = [c for c in (*synthesized, *baselines) if c.fits]
    if not fitting:
        raise _no_fit(mem_cap, baselines, sequential)
    chosen = _choose(fitting)
    kinds = {make_placement(kind, p, options.chunks).stage_to_rank: kind for kind in options.placements
             if f"synth/{kind}" in {c.name for c in synthesized}}
    refined, not_refined, solved = None, "", None
    # The full horizon refines the chosen schedule's placement, or the best synthesized one's when
    # the chosen schedule is a baseline on a placement the search did not solve.
    base = chosen if chosen.schedule.placement.stage_to_rank in kinds else _best(synthesized)
    if options.optimize != "block" and base is not None:
        kind = kinds[base.schedule.placement.stage_to_rank]
        refined, not_refined, solved = _refine(kind, base, (*synthesized, *baselines), m, k, mem_cap, options)
        if refined is not None and refined.fits:
            chosen = _choose([chosen, refined])
    bound = lower_bound(chosen.costs, chosen.schedule.placement,
                        kinds.get(chosen.schedule.placement.stage_to_rank, chosen.placement), m, mem_cap,
                        chosen.schedule.k)
    if solved is not None and chosen.schedule.placement.stage_to_rank in kinds:
        bound = raise_bound(bound, *solved, chosen.schedule)
    return Synthesis(chosen, tuple(synthesized), tuple(baselines), tuple(skipped), mem_cap,
                     time.perf_counter() - began, bound, refined, not_refined)


def _choose(fitting: list[Candidate]) -> Candidate:
    return min(fitting, key=lambda c: (*_rank_key(c)[1:], 0 if c.synthesized else 1))


def _refine(kind: str, chosen: Candidate, candidates, m: int, k: int, mem_cap: float | None,
            options: SynthOptions) -> tuple[Candidate | None, str, tuple | None]:
    """The full-horizon solve on the chosen schedule's placement, hinted with every candidate on it.
    Returns the refined candidate (None if none), why it did not run (auto), and ``(horizon,
    result)`` for the bound."""
    placement, costs = chosen.schedule.placement, chosen.costs
    block_options = _block_options(options, k, mem_cap)
    jobs = horizon_jobs(placement, m, k, block_options)
    if options.optimize == "auto" and jobs > AUTO_JOBS_PER_SECOND * options.time_limit:
        return None, (f"full-horizon model not solved: {jobs} jobs need about "
                      f"{math.ceil(jobs / AUTO_JOBS_PER_SECOND)} s or more; use --optimize full with a larger "
                      f"--time-limit"), None
    began = time.perf_counter()
    hints = [c.schedule for c in sorted(candidates, key=_rank_key)
             if c.schedule.placement == placement and c.schedule.k == k]
    try:
        schedule, result, h = full_horizon(costs, placement, m, block_options, hints, options.solver,
                                           options.progress)
    except BlockError as err:
        return None, f"full-horizon model not solved: {err}", None
    if schedule is None:
        return None, f"full-horizon model: no schedule found ({result.status})", (h, result)
    schedule, timeline = squeeze_timed(schedule, costs, mem_cap)
    candidate = _evaluate(f"synth-full/{kind}", schedule, costs, mem_cap, None, time.perf_counter() - began,
                          timeline)
    return dataclasses.replace(candidate, horizon=result), "", (h, result)


def _block_options(options: SynthOptions, k: int, mem_cap: float | None) -> BlockOptions:
    return BlockOptions(split_backward=options.split_backward, recompute=options.recompute and k == 1,
                        offload=options.offload and k == 1, mem_cap=mem_cap, ticks=options.ticks,
                        time_limit=options.time_limit, memory=options.memory)


def _synthesize_one(kind: str, costs: Costs, placement: Placement, m: int, k: int, mem_cap: float | None,
                    block_options: BlockOptions, options: SynthOptions) -> Candidate:
    began = time.perf_counter()
    block = solve_block(costs, placement, block_options, solver=options.solver)
    schedule = tile(block, placement, m, k=k, solver=options.solver, proven=block.proven,
                    solve_seconds=round(block.solve_seconds, 3))
    schedule, timeline = squeeze_timed(schedule, costs, mem_cap)
    return _evaluate(f"synth/{kind}", schedule, costs, mem_cap, block, time.perf_counter() - began, timeline)


def _sequential_one(kind: str, costs: Costs, placement: Placement, m: int, k: int, mem_cap: float | None,
                    options: SynthOptions) -> Candidate:
    """The placement's least-memory schedule: the sequential block (one microbatch at a time,
    freeing as soon as it can), tiled; what the smallest-cap error promises is its simulated peak."""
    began = time.perf_counter()
    spec = block_spec(costs, placement, _block_options(options, k, None))
    offsets, variants = sequential_block(spec)
    block = block_from_answer(spec, Answer(spec.max_period, offsets, variants, False, ()), 0.0, "sequential")
    schedule, timeline = squeeze_timed(tile(block, placement, m, k=k, solver="sequential"), costs, mem_cap)
    return _evaluate(f"synth/{kind}", schedule, costs, mem_cap, block, time.perf_counter() - began, timeline)


def _baselines(p: int, m: int, k: int, costs_of, mem_cap: float | None, skipped: list) -> list[Candidate]:
    """Every library schedule for the same slicing: the sequence-slice families with ``k`` slices
    when k > 1, the others when k = 1."""
    from synth.baselines import BASELINES

    out = []
    for name, baseline in BASELINES.items():
        sliced = "k" in baseline.options
        if sliced != (k > 1):
            skipped.append((name, "slices sequences" if sliced else "works on whole microbatches (k = 1)"))
            continue
        extra = {"k": k} if sliced else {}
        try:
            shape = baseline(p, m, **extra)
            costs = costs_of(shape.placement, shape.k)
            schedule = baseline(p, m, costs=costs, **extra)
            out.append(_evaluate(name, schedule, costs, mem_cap))
        except (ValueError, ScheduleError) as err:
            skipped.append((name, str(err).splitlines()[0]))
    return out


def _evaluate(name: str, schedule: Schedule, costs: Costs, mem_cap: float | None, block: Block | None = None,
              seconds: float = 0.0, timeline: Timeline | None = None) -> Candidate:
    if timeline is None:
        timeline = simulate(schedule, costs)  # runs verify's structural rules (deadlock included) first
    fits = mem_cap is None or max(timeline.peak) <= mem_cap * (1 + MEMORY_RTOL)
    return Candidate(name, schedule, costs, timeline, fits, block, seconds)


def _rank_key(c: Candidate) -> tuple:
    return (not c.fits, round(c.makespan, 9), round(c.peak, 3))


def _best(candidates) -> Candidate | None:
    fitting = [c for c in candidates if c.fits]
    return min(fitting, key=_rank_key) if fitting else None


def _no_fit(mem_cap: float, baselines: list[Candidate], sequential: list[Candidate]) -> NoScheduleFits:
    options = [(c.peak, c.name) for c in baselines] + [(c.peak, c.name) for c in sequential]
    if not options:
        return NoScheduleFits(f"no schedule fits a cap of {show_bytes(mem_cap)} and none could be built", math.inf)
    smallest, how = min(options)
    return NoScheduleFits(
        f"no schedule fits a memory cap of {show_bytes(mem_cap)} per GPU: even with recompute and offload "
        f"allowed, the least any schedule pipesynth builds needs is {show_bytes(smallest)} ({how}"
        + (", one microbatch in flight" if how.startswith("synth/") else "")
        + f"); use --mem-cap {cap_argument(smallest)} or more, or more stages", smallest)


def show_bytes(nbytes: float) -> str:
    """Bytes as GiB, or as a plain number for unit-cost problems (below 1 MB)."""
    from synth.sizes import format_size

    return format_size(nbytes) if nbytes >= 1e6 else f"{nbytes:g}"


def cap_argument(nbytes: float) -> str:
    """A ``--mem-cap`` value of at least ``nbytes``: GB rounded up to 0.01 GB (plain below 1 MB)."""
    return f"{math.ceil(nbytes / 1e7 - 1e-9) / 100:.2f}GB" if nbytes >= 1e6 else f"{nbytes:g}"


def _ranges(stages: list[int]) -> str:
    parts, i = [], 0
    while i < len(stages):
        j = i
        while j + 1 < len(stages) and stages[j + 1] == stages[j] + 1:
            j += 1
        parts.append(str(stages[i]) if i == j else f"{stages[i]}-{stages[j]}")
        i = j + 1
    return ",".join(parts)

