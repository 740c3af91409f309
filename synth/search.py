"""Synthesis end to end: run every method on one problem within one time budget, feed each
one's best answers to the next, and keep the fastest schedule that fits.

The methods, in the order they run (DESIGN.md, "The synthesizer"):

1. **construct** (``synth.construct``): memory-aware list schedulers, on every placement; linear
   in the actions, so they run first and cost a fraction of a second.
2. **block** (``synth.block``): the building block per placement (a share of the budget each),
   tiled and squeezed; and the sequential block as the last resort that always fits.
3. **full horizon** (``synth.horizon``): CP-SAT (or the MILP twin) on the best placement with
   what is left of the budget, hinted with every candidate on that placement: the whole tightened
   model where it is small enough for the time left, else large-neighbourhood search from the
   best candidate (``synth.horizon.refine.full_horizon``), so "auto" always refines.

The library (``synth.baselines``) is evaluated too unless ``baselines=False`` (``--no-library``,
the from-scratch search): then no library schedule is a candidate or a hint. Library schedules
that use what the options forbid (recompute, offload, split backward) are skipped.

Where recompute or offload is allowed, each method solves the restricted problem (keep only)
first and keeps its answers as candidates, so allowing more never loses what the restricted
search finds (up to the time-limited solver's own noise, which the benchmarks measure).

The costs come from ``costs_for(placement, k) -> ir.Costs`` so the same search runs on the cost
model (``synth.costs``), a user's ``--costs`` file, unit costs, or profiled numbers. Every
candidate, synthesized or from the library, is verified and simulated with the costs of its own
placement and slicing, and judged by its simulated makespan and its simulated peak against the cap.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ir import Placement, ScheduleError, simulate
from ir.simulate import program_order_peak
from ir.verify import MEMORY_RTOL
from synth.block.cpsat import BlockError, BlockOptions, block_from_answer
from synth.block.groups import solve_groups
from synth.block.period import Answer, sequential_block
from synth.block.spec import block_spec
from synth.block.tile import squeeze_timed, tile
from synth.candidates import (
    Candidate,
    NoScheduleFits,
    Synthesis,
    best,
    cap_argument,
    evaluate,
    rank_key,
    show_bytes,
)
from synth.horizon.refine import (
    full_horizon,
    lower_bound,
    raise_bound,
)
from synth.problem import SMALL_STEP, Budget, CostsFor, SynthProblem, Variants

__all__ = ["PLACEMENTS", "Candidate", "NoScheduleFits", "SynthOptions", "Synthesis", "cap_argument", "least_memory",
           "library", "make_placement", "show_bytes", "synthesize"]

PLACEMENTS = ("standard", "interleaved", "v", "waves")


# The whole search's default time limit, seconds (the default command in under 10 s on 2 cores).
DEFAULT_TIME_LIMIT = 8.0
# Shares of the time limit: the blocks get BLOCK_SHARE of it when the full horizon will run after
# them (it gets the rest), and all of it otherwise.
BLOCK_SHARE = 0.5
# Within a placement's share, the restricted (keep-only) block's part when recompute or offload is
# allowed: keep-only blocks solve fast, and the larger model needs the time more.
RESTRICTED_SHARE = 0.3
# A block solve shorter than this is not worth its model building (skipped when the placement
# has a schedule already).
MIN_SOLVE = 0.1
# A block whose tiled estimate is this many times the placement's best so far is not squeezed.
HOPELESS = 1.25
# The list schedulers may use at most this share of the time limit (they need far less: about a
# second at p = 16, m = 128; the deadline only cuts in at tiny time limits or huge problems).
CONSTRUCT_SHARE = 0.6
# The library's schedules are evaluated until this share of the time limit has passed (and for at
# least MIN_LIBRARY seconds): at p = 8, m = 32 all of them take about 1.5 s, at m = 5000 each takes
# seconds.
LIBRARY_SHARE = 0.75
MIN_LIBRARY = 2.0
# Seconds kept for what follows the blocks when no full horizon runs (the chosen schedule's
# re-simulation, the bound).
FINISH = 0.3
# A problem whose one list schedule and its re-simulation are predicted to take more than
# TOO_LONG * --time-limit + TOO_LONG_SLACK seconds is refused before any work (the search would
# otherwise have to run that one schedule, however long it takes, to answer at all).
TOO_LONG, TOO_LONG_SLACK = 2.0, 10.0


@dataclass(frozen=True, slots=True)
class SynthOptions:
    """What the synthesizer may try.

    Attributes:
        placements: placement kinds to synthesize for ("standard", "interleaved", "v", "waves").
        chunks: stages per rank for interleaved, waves for waves.
        split_backward: B and W as separate passes.
        recompute: schedules may recompute units; library schedules that do are
            skipped when False.
        offload: schedules may offload units; likewise.
        solver: "cpsat", "highs" or "cbc".
        time_limit: seconds for the whole search (every method; see ``BLOCK_SHARE``).
        ticks: time resolution of the block model (ticks for the longest pass).
        baselines: evaluate the library too (the safety net, and hints for the full horizon);
            False is the from-scratch search (``--no-library``).
        memory: the block's memory model, "exact" or "ceil" (see `synth.block.cpsat`).
        optimize: "block" (list schedulers and blocks only), "full" (then the whole full-horizon
            model on the best placement, hinted with every candidate on it), "lns" (large-
            neighbourhood search on that model from the best candidate) or "auto" (full when the
            model is small enough for what is left of ``time_limit``, else lns).
        construct: run the list schedulers (``synth.construct``).
        groups: microbatches per block period tried by the block method.
        progress: ``progress(seconds, makespan_ms or None, bound_ms)`` during the full-horizon solve.
        phase: ``phase(what)`` as each step of the search starts (for a progress line), on problems
            large enough that its steps take a noticeable time (simulating one schedule ``SMALL_STEP``
            seconds or more).
        seeds: candidates from earlier searches of the same problem under other caps (``synth.research``:
            a tighter cap's answers fit every looser one). Each that this problem's options allow is
            judged under this cap on this problem's costs, joins the synthesized candidates with the
            method that made it, and hints the full horizon; library candidates are left out (the
            library is evaluated afresh when ``baselines`` is on).
    """

    placements: tuple[str, ...] = ("standard",)
    chunks: int = 2
    split_backward: bool = True
    recompute: bool = True
    offload: bool = True
    solver: str = "cpsat"
    time_limit: float = DEFAULT_TIME_LIMIT
    ticks: int = 60
    baselines: bool = True
    memory: str = "exact"
    optimize: str = "block"
    construct: bool = True
    groups: tuple[int, ...] = (1, 2, 3, 4)
    progress: Callable | None = None
    seeds: tuple[Candidate, ...] = ()
    phase: Callable[[str], None] | None = None

    @property
    def variants(self) -> Variants:
        return Variants(self.split_backward, self.recompute, self.offload)


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
        ValueError: the problem is so large that even one schedule would take far longer than
            the time limit (``TOO_LONG``); the message names the time limit that would do.
    """
    options = options or SynthOptions()
    problem = SynthProblem(costs_for, p, m, k, mem_cap, options.variants, Budget(options.time_limit))
    skipped: list[tuple[str, str]] = []
    kinds = _buildable(problem, options, skipped)
    refine = options.optimize != "block" and bool(kinds)
    synthesized, sequential = [], []
    smallest = min((problem.actions(pl) for pl in kinds.values()), default=0)
    least = problem.pace.predict("list", smallest) + problem.pace.predict("evaluate", smallest)
    if least > TOO_LONG * options.time_limit + TOO_LONG_SLACK:  # even one schedule would overrun far
        raise ValueError(f"{m} microbatches on {p} ranks ({smallest:,} actions) need about {least:,.0f} s for even "
                         f"one schedule, far past the time limit of {options.time_limit:g} s; use --time-limit "
                         f"{math.ceil(least)} or more, or fewer microbatches (-m)")
    if options.phase is not None and problem.pace.predict("evaluate", smallest) >= SMALL_STEP:
        problem.phase = options.phase  # a large problem: its steps take seconds each
    phase = problem.phase

    def finish_by(placement: Placement | None = None) -> float:
        """When a step must end to leave time for re-simulating the chosen schedule (`_confirm`)
        and the bound, at this run's own pace (`Pace`): the chosen one may be the largest fitting
        synthesized schedule so far or what this step makes on ``placement``."""
        sizes = [sum(len(prog) for prog in c.schedule.ranks) for c in synthesized if c.fits]
        sizes.append(problem.actions(placement) if placement is not None else 0)
        return problem.budget.deadline - problem.pace.predict("evaluate", max(sizes)) - FINISH

    if options.construct:
        for index, (kind, placement) in enumerate(kinds.items()):
            construct_end = min(problem.budget.until(CONSTRUCT_SHARE), finish_by(placement))
            share = max(0.0, construct_end - time.perf_counter()) / (len(kinds) - index)
            synthesized += _construct(problem, kind, placement, time.perf_counter() + share, skipped,
                                      must=not any(c.fits for c in synthesized), last=construct_end)
    synthesized += _seeded(problem, options.seeds)
    library_end = max(problem.budget.until(LIBRARY_SHARE), time.perf_counter() + MIN_LIBRARY)
    if any(c.fits for c in synthesized):  # a schedule is in hand: keep the time the finish needs
        library_end = min(library_end, max(finish_by(), time.perf_counter() + MIN_LIBRARY))
    over: list[tuple[float, str]] = []  # library schedules found over the cap without simulating them
    baselines = _baselines(problem, skipped, library_end, over) if options.baselines else []
    post = [0.0]  # the longest tile + squeeze so far: each later solve leaves room for its own
    for index, (kind, placement) in enumerate(kinds.items()):
        block_end = min(problem.budget.until(BLOCK_SHARE if refine else 1.0) - FINISH, finish_by(placement))
        rungs = len(_ladder(problem.variants))
        share = (block_end - time.perf_counter()) / (len(kinds) - index) - rungs * post[0]
        on_it = [c for c in synthesized if c.schedule.placement == placement]
        found = _blocks(problem, options, kind, placement, share, post, on_it,
                        any(c.fits for c in (*synthesized, *baselines)), skipped)
        synthesized += found
        if not any(c.fits for c in synthesized if c.schedule.placement == placement):
            anything = any(c.fits for c in (*synthesized, *baselines))
            end = finish_by(placement)
            if anything and not problem.fits_in_time("squeeze", problem.actions(placement), end):
                skipped.append((f"synth/{kind}", _no_time("its sequential fallback", problem, "squeeze",
                                                          problem.actions(placement))))
                continue
            sequential.append(_sequential(problem, options, kind, placement, end))  # the last resort
            synthesized.append(sequential[-1])
    fitting = [c for c in (*synthesized, *baselines) if c.fits]
    if not fitting:
        raise _no_fit(mem_cap, baselines, sequential, over)
    phase("re-simulating the chosen schedule")
    chosen = _confirm(fitting, problem)
    if chosen is None:
        raise _no_fit(mem_cap, baselines, sequential, over)
    refined, not_refined, solved = None, "", None
    base = _refine_base(chosen, synthesized, kinds)
    if options.optimize != "block" and base is not None:
        kind = next(kd for kd, pl in kinds.items() if pl == base.schedule.placement)
        refined, not_refined, solved = _refine(problem, options, kind, (*synthesized, *baselines))
        if refined is not None and refined.fits:
            chosen = best([chosen, refined])
    placement_kind = {pl.stage_to_rank: kd for kd, pl in kinds.items()}
    bound = lower_bound(chosen.costs, chosen.schedule.placement,
                        placement_kind.get(chosen.schedule.placement.stage_to_rank, chosen.placement), m, mem_cap,
                        chosen.schedule.k, problem.variants.recompute, problem.variants.offload,
                        deadline=max(problem.budget.deadline, time.perf_counter() + SMALL_STEP))
    if solved is not None and chosen.schedule.placement.stage_to_rank in placement_kind:
        bound = raise_bound(bound, *solved, chosen.schedule)
    return Synthesis(chosen, tuple(synthesized), tuple(baselines), tuple(skipped), mem_cap,
                     problem.budget.elapsed(), bound, refined, not_refined, options.time_limit)


def library(costs_for: CostsFor, p: int, m: int, *, k: int = 1,
            options: SynthOptions | None = None) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Every library schedule the options allow, simulated on ``costs_for`` with no cap (so each
    is judged as fitting), and ``(name, reason)`` for the ones not built: what ``synthesize``
    evaluates, without a search."""
    options = options or SynthOptions()
    problem = SynthProblem(costs_for, p, m, k, None, options.variants, Budget(options.time_limit))
    skipped: list[tuple[str, str]] = []
    return _baselines(problem, skipped), skipped


def least_memory(costs_for: CostsFor, p: int, m: int, *, k: int = 1,
                 options: SynthOptions | None = None) -> Candidate:
    """The lowest-peak schedule ``synthesize`` can fall back on under these options: each
    placement's sequential schedule (one microbatch at a time) and, with the library, every
    library schedule. At its peak or above the search always finds a schedule (the smallest cap
    `NoScheduleFits` names); below it the list schedulers may still find one, but need not."""
    options = options or SynthOptions()
    problem = SynthProblem(costs_for, p, m, k, None, options.variants, Budget(options.time_limit))
    skipped: list[tuple[str, str]] = []
    found = [_sequential(problem, options, kind, placement)
             for kind, placement in _buildable(problem, options, skipped).items()]
    if options.baselines:
        found += _baselines(problem, skipped)
    if not found:
        raise NoScheduleFits("no schedule could be built: " + "; ".join(f"{n}: {why}" for n, why in skipped), math.inf)
    return min(found, key=lambda c: (round(c.peak, 9), c.makespan))


def _buildable(problem: SynthProblem, options: SynthOptions, skipped: list) -> dict[str, Placement]:
    """The placements asked for whose costs can be built; the others go to ``skipped`` with why."""
    kinds = {}
    for kind in dict.fromkeys(options.placements):
        try:
            placement = make_placement(kind, problem.p, options.chunks)
            problem.costs(placement)
        except ValueError as err:
            skipped.append((f"synth/{kind}", str(err).splitlines()[0]))
            continue
        kinds[kind] = placement
    return kinds


def _refine_base(chosen: Candidate, synthesized: list[Candidate], kinds: dict[str, Placement]) -> Candidate | None:
    """The candidate whose placement the full horizon refines: the chosen one's, or the best
    synthesized one's when the chosen schedule is a baseline on a placement the search did not try."""
    if any(pl == chosen.schedule.placement for pl in kinds.values()):
        return chosen
    return best(synthesized)


# ------------------------------------------------------------------------------------- methods
def _ladder(variants: Variants) -> list[Variants]:
    """The restricted problem first, then the full one (when recompute or offload is allowed)."""
    return [variants.keep_only, variants] if variants.extended else [variants]


def _no_time(what: str, problem: SynthProblem, step: str, actions: int) -> str:
    return (f"{what} not run: about {problem.pace.predict(step, actions):.1f} s at this size, past the time limit "
            f"(--time-limit {problem.budget.seconds:g})")


def _construct(problem: SynthProblem, kind: str, placement: Placement, deadline: float, skipped: list,
               must: bool = True, last: float | None = None) -> list[Candidate]:
    """The list schedulers' best schedule for each rung of the variant ladder (restricted first).

    Not squeezed: they are list schedules already (squeezing them gained nothing in any case
    measured, at five times their cost). Their timelines are the scheduler's own, built by the
    simulator's rules (``synth.construct.timeline_matches``); the chosen schedule is simulated
    again by ``ir.simulate`` before it is reported (`_confirm`). A rung whose first variant would
    end past ``last`` (default ``deadline``; the construct phase's end, where one variant takes
    longer than the placement's share) is skipped (noted in ``skipped``) unless ``must`` (nothing
    fits yet)."""
    from synth.construct import construct

    costs, out = problem.costs(placement), []
    ladder = _ladder(problem.variants)
    actions = problem.actions(placement)
    for index, variants in enumerate(ladder):
        began = time.perf_counter()
        rung_end = deadline if index == len(ladder) - 1 else began + max(0.0, deadline - began) / 2
        if not (must and not out) and not problem.fits_in_time("list", actions, max(rung_end, last or rung_end)):
            what = "the list schedulers" + (" with recompute/offload" if variants.extended else "")
            skipped.append((f"synth/{kind}", _no_time(what, problem, "list", actions)))
            break
        problem.phase(f"list schedulers on the {kind} placement"
                      + (" with recompute/offload" if variants.extended and index else ""))
        timings: list[float] = []
        found = construct(costs, placement, problem.m, problem.mem_cap, split_backward=variants.split_backward,
                          recompute=variants.recompute, offload=variants.offload, deadline=rung_end,
                          timings=timings)
        if timings:
            problem.pace.record("list", actions, max(timings))
        if found:
            out.append(evaluate(f"synth-list/{kind}", found[0].schedule, costs, problem.mem_cap, method="list",
                                seconds=time.perf_counter() - began, timeline=found[0].timeline))
    return out


def _seeded(problem: SynthProblem, seeds) -> list[Candidate]:
    """The seeds (``SynthOptions.seeds``) judged under this problem's cap: a seed simulated on the
    same costs keeps its timeline; one whose costs differ is simulated again on this problem's."""
    out = []
    for seed in seeds:
        schedule = seed.schedule
        if seed.method == "library" or schedule.p != problem.p or schedule.m != problem.m:
            continue
        if problem.variants.allows(schedule) is not None:
            continue
        try:
            costs = problem.costs(schedule.placement, schedule.k)
        except ValueError:
            continue
        timeline = seed.timeline if costs == seed.costs else None
        judged = evaluate(seed.name, schedule, costs, problem.mem_cap, method=seed.method, block=seed.block,
                          seconds=seed.seconds, timeline=timeline)
        out.append(dataclasses.replace(judged, horizon=seed.horizon))
    return out


def _confirm(candidates: list[Candidate], problem: SynthProblem | None = None) -> Candidate | None:
    """The best fitting candidate after ``ir.simulate`` (``ir.verify``'s structural rules first) has
    run it again: the methods hand over timelines of their own (the list schedulers' is built by
    the simulator's rules, the squeeze's by its timing pass alone), and nothing downstream trusts
    them. A candidate that no longer fits, or that the simulator finds slower, is dropped and the
    next one tried."""
    pool = [c for c in candidates if c.fits]
    while pool:
        chosen = best(pool)
        if chosen.method == "library":
            return chosen  # simulated by ir.simulate already
        began = time.perf_counter()
        again = simulate(chosen.schedule, chosen.costs)
        if problem is not None:
            problem.pace.record("evaluate", len(again.spans), time.perf_counter() - began)
        same = (max(again.peak) <= max(chosen.timeline.peak) * (1 + 1e-9)
                and again.makespan <= chosen.makespan * (1 + 1e-9))
        if same:
            return dataclasses.replace(chosen, timeline=again)
        pool.remove(chosen)
    return None


def _blocks(problem: SynthProblem, options: SynthOptions, kind: str, placement: Placement,
            seconds: float, post: list[float], covered_by: list[Candidate], anything: bool = False,
            skipped: list | None = None) -> list[Candidate]:
    """The placement's blocks (the variant ladder splitting ``seconds``), tiled and squeezed;
    ``post[0]`` keeps the longest tile + squeeze seen, so later solves leave room for theirs. A
    solve that would get less than ``MIN_SOLVE`` seconds is skipped when ``covered_by`` (the
    placement's candidates so far) already holds a fitting schedule. When ``anything`` (some
    schedule fits already), the blocks are skipped if even simulating their tiled schedule would
    end past the time given, and the squeeze is cut to what the time allows."""
    costs, out = problem.costs(placement), []
    ladder = _ladder(problem.variants)
    deadline = time.perf_counter() + seconds
    covered = any(c.fits for c in covered_by)
    actions = problem.actions(placement)
    if anything and not problem.fits_in_time("evaluate", actions, deadline):
        if skipped is not None:
            skipped.append((f"synth/{kind}", _no_time("the building blocks", problem, "evaluate", actions)))
        return out
    problem.phase(f"building blocks on the {kind} placement")
    if len(ladder) > 1 and seconds * RESTRICTED_SHARE - post[0] < MIN_SOLVE:
        ladder = ladder[-1:]  # too little time for both rungs: the whole problem alone
    for index, variants in enumerate(ladder):
        left = deadline - time.perf_counter()
        share = (left * RESTRICTED_SHARE if index < len(ladder) - 1 else left) - post[0]
        if covered and share < MIN_SOLVE:
            continue  # out of time, and the placement has a schedule already: keep within the limit
        share = max(MIN_SOLVE, share)
        began = time.perf_counter()
        block_options = _block_options(problem, options, share, variants)
        try:
            blocks = solve_groups(costs, placement, block_options, groups=options.groups, solver=options.solver)
        except BlockError:
            continue
        # the best by its tiled estimate is squeezed (squeezing costs a few simulations), unless
        # that estimate is far behind what the placement has already (squeezing gains less)
        for block in sorted(blocks.values(), key=lambda b: (b.estimate is None, b.estimate or 0, b.group))[:1]:
            known = [c.makespan for c in (*covered_by, *out) if c.fits]
            if known and block.estimate is not None and block.estimate * block.tick > HOPELESS * min(known):
                continue
            solved = time.perf_counter()
            schedule = tile(block, placement, problem.m, k=problem.k, solver=options.solver, proven=block.proven,
                            solve_seconds=round(block.solve_seconds, 3))
            with problem.pace.timed("squeeze", actions):
                schedule, timeline = squeeze_timed(schedule, costs, problem.mem_cap,
                                                   deadline if anything else None)
            post[0] = max(post[0], time.perf_counter() - solved)
            out.append(evaluate(f"synth/{kind}", schedule, costs, problem.mem_cap, method="block", block=block,
                                seconds=time.perf_counter() - began, timeline=timeline))
    return out


def _sequential(problem: SynthProblem, options: SynthOptions, kind: str, placement: Placement,
                deadline: float | None = None) -> Candidate:
    """The placement's least-memory schedule: the sequential block (one microbatch at a time,
    freeing as soon as it can), tiled; what the smallest-cap error promises is its simulated peak."""
    began = time.perf_counter()
    costs = problem.costs(placement)
    spec = block_spec(costs, placement, dataclasses.replace(_block_options(problem, options, 1.0), mem_cap=None))
    offsets, variants = sequential_block(spec)
    block = block_from_answer(spec, Answer(spec.max_period, offsets, variants, False, ()), 0.0, "sequential")
    schedule = tile(block, placement, problem.m, k=problem.k, solver="sequential")
    with problem.pace.timed("squeeze", problem.actions(placement)):
        schedule, timeline = squeeze_timed(schedule, costs, problem.mem_cap, deadline)
    return evaluate(f"synth/{kind}", schedule, costs, problem.mem_cap, method="block", block=block,
                    seconds=time.perf_counter() - began, timeline=timeline)


def _block_options(problem: SynthProblem, options: SynthOptions, seconds: float,
                   variants: Variants | None = None) -> BlockOptions:
    variants = variants or problem.variants
    return BlockOptions(split_backward=variants.split_backward, recompute=variants.recompute,
                        offload=variants.offload, mem_cap=problem.mem_cap, ticks=options.ticks,
                        time_limit=seconds, memory=options.memory, m=problem.m)


def _refine(problem: SynthProblem, options: SynthOptions, kind: str,
            candidates) -> tuple[Candidate | None, str, tuple | None]:
    """The full-horizon solve on ``kind``'s placement with what is left of the budget, hinted with
    every candidate on it (best first). Returns the refined candidate (None if none), why it did
    not run, and ``(horizon, result)`` for the bound."""
    placement = make_placement(kind, problem.p, options.chunks)
    costs = problem.costs(placement)
    actions = problem.actions(placement)
    setup = problem.pace.predict("refine", actions)  # hints, model, and the squeeze after the solve
    if setup >= SMALL_STEP and setup > problem.budget.left():
        return None, _no_time("the full horizon", problem, "refine", actions), None
    seconds = max(0.1, problem.budget.left() - setup)
    problem.phase(f"full horizon on the {kind} placement")
    block_options = _block_options(problem, options, seconds)
    began = time.perf_counter()
    hints = [c.schedule for c in sorted(candidates, key=rank_key)
             if c.schedule.placement == placement and c.schedule.k == problem.k]
    try:
        method = {"full": "whole", "lns": "lns"}.get(options.optimize, "auto")
        schedule, result, h = full_horizon(costs, placement, problem.m, block_options, hints, options.solver,
                                           options.progress, method)
    except BlockError as err:
        return None, f"full-horizon model not solved: {err}", None
    if schedule is None:
        return None, f"full-horizon model: no schedule found ({result.status})", (h, result)
    schedule, timeline = squeeze_timed(schedule, costs, problem.mem_cap, problem.budget.deadline)
    problem.pace.record("refine", actions, time.perf_counter() - began - result.seconds)
    candidate = evaluate(f"synth-full/{kind}", schedule, costs, problem.mem_cap, method="full",
                         seconds=time.perf_counter() - began, timeline=timeline)
    return dataclasses.replace(candidate, horizon=result), "", (h, result)


def _baselines(problem: SynthProblem, skipped: list, deadline: float = math.inf,
               over: list | None = None) -> list[Candidate]:
    """Every library schedule for the same slicing (the sequence-slice families with ``k`` slices
    when k > 1, the others when k = 1) that uses only what the options allow; those not started
    by ``deadline`` (verifying and simulating each grows with m: seconds each at m = 5000) go to
    ``skipped`` as not evaluated. Where simulating one would take long (``SMALL_STEP``), one over
    the cap by its program-order peak (`program_order_peak`) is not simulated: it goes to
    ``skipped``, and ``(peak, name)`` to ``over``."""
    from synth.baselines import BASELINES

    out, p, m, k = [], problem.p, problem.m, problem.k
    for name, baseline in BASELINES.items():
        if time.perf_counter() > deadline:
            skipped.append((name, "not evaluated: the search's time limit (--time-limit) was reached"))
            continue
        sliced = "k" in baseline.options
        if sliced != (k > 1):
            skipped.append((name, "slices sequences" if sliced else "works on whole microbatches (k = 1)"))
            continue
        least = 2 * p * m * k  # every family runs a forward and a backward of each unit at least
        if not problem.fits_in_time("evaluate", least, deadline):  # before building it (seconds at m = 5000)
            skipped.append((name, f"not evaluated: at least {problem.pace.predict('evaluate', least):.1f} s at this "
                                  f"size, past the search's time limit (--time-limit)"))
            continue
        extra = {"k": k} if sliced else {}
        try:
            shape = baseline(p, m, **extra)
            why = problem.variants.allows(shape)
            if why is not None:
                skipped.append((name, why))
                continue
            actions = sum(len(prog) for prog in shape.ranks)
            if not problem.fits_in_time("evaluate", actions, deadline):
                skipped.append((name, f"not evaluated: about {problem.pace.predict('evaluate', actions):.1f} s "
                                      f"at this size, past the search's time limit (--time-limit)"))
                continue
            costs = problem.costs(shape.placement, shape.k)
            problem.phase(f"the library's {name}")
            schedule = baseline(p, m, costs=costs, **extra)
            if problem.mem_cap is not None and problem.pace.predict("evaluate", actions) >= SMALL_STEP:
                peak = program_order_peak(schedule, costs)
                if peak is not None and peak > problem.mem_cap * (1 + MEMORY_RTOL):
                    skipped.append((name, f"needs {show_bytes(peak)} per GPU, over the cap (not simulated)"))
                    if over is not None:
                        over.append((peak, name))
                    continue
            with problem.pace.timed("evaluate", actions):
                out.append(evaluate(name, schedule, costs, problem.mem_cap))
        except (ValueError, ScheduleError) as err:
            skipped.append((name, str(err).splitlines()[0]))
    return out


def _no_fit(mem_cap: float, baselines: list[Candidate], sequential: list[Candidate],
            over: list | None = None) -> NoScheduleFits:
    options = [(c.peak, c.name) for c in baselines] + [(c.peak, c.name) for c in sequential] + list(over or ())
    if not options:
        return NoScheduleFits(f"no schedule fits a cap of {show_bytes(mem_cap)} and none could be built", math.inf)
    smallest, how = min(options)
    return NoScheduleFits(
        f"no schedule fits a memory cap of {show_bytes(mem_cap)} per GPU: the least any schedule pipesynth "
        f"builds with the options given needs is {show_bytes(smallest)} ({how}"
        + (", one microbatch in flight" if how.startswith("synth/") else "")
        + f"); use --mem-cap {cap_argument(smallest)} or more, or more stages", smallest)
