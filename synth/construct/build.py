"""`construct`: run the list-scheduler variants and keep what fits, fastest first.

Each `synth.construct.engine.Run` becomes an ``ir.Schedule`` (its actions in start order per
rank) and the ``ir.Timeline`` of that schedule. The engine starts every action at the time
``ir.simulate`` gives it in that program, so the timeline is built from the run's own times
(spans, memory curve and peaks in the simulator's conventions) instead of simulating again,
which would cost more than all the variants together; `timeline_matches` is the check, used
by the tests, that ``ir.simulate`` agrees.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ir import Action, Costs, Placement, Schedule, Span, Stream, Timeline, simulate
from ir.deps import paused_gc
from ir.simulate import one_point_per_instant
from ir.verify import MEMORY_RTOL
from synth.construct.engine import Run, run
from synth.construct.tables import BW, OFFLOAD, OPS, RELOAD, B, F, Policy, R, Tables, W, tables
from synth.construct.variants import policies

__all__ = ["Construction", "construct", "lower_bound", "timeline_matches"]


@dataclass(frozen=True, slots=True)
class Construction:
    """One constructed schedule.

    Attributes:
        name: the variant that made it, e.g. ``"list/b-first/depth=base+1"``.
        schedule: the schedule (meta: ``made_by="synth.construct"``, ``rule``, ``depth``).
        timeline: its simulation with the costs it was built for.
    """

    name: str
    schedule: Schedule
    timeline: Timeline


def construct(costs: Costs, placement: Placement, m: int, mem_cap: float | None, *,
              split_backward: bool = True, recompute: bool = False, offload: bool = False,
              deadline: float | None = None, timings: list[float] | None = None) -> list[Construction]:
    """Every distinct schedule the variants make that fits ``mem_cap`` on every rank, sorted by
    makespan (ties: lower max peak), except those of runs abandoned once sure not to beat the fastest
    so far. Possibly empty when the cap is too tight. Variants stop early once one meets `lower_bound`.

    Args:
        costs, placement, m: the problem; ``costs.k > 1`` slices each microbatch (recompute and
            offload are then not used).
        mem_cap: bytes per rank, static included; None for no cap.
        split_backward: B and W (True) or a fused BW.
        recompute, offload: also try variants that recompute (any k) or offload (k = 1) units.
        deadline: a ``time.perf_counter()`` value by which the variants should end: a variant
            starts only if it would, at the pace of the slowest one so far (the first always runs).
        timings: if given, each variant's seconds (its run and its timeline) are appended to it.
    """
    with paused_gc():
        return _variants(costs, placement, m, mem_cap, split_backward, recompute, offload, deadline, timings)


def _variants(costs: Costs, placement: Placement, m: int, mem_cap: float | None, split_backward: bool,
              recompute: bool, offload: bool, deadline: float | None,
              timings: list[float] | None) -> list[Construction]:
    tb = tables(costs, placement, m, mem_cap, split_backward)
    limit = None if mem_cap is None else mem_cap * (1 + MEMORY_RTOL)
    bound = lower_bound(tb)
    actions: dict[tuple[int, int], Action] = {}
    found: dict[tuple, Construction] = {}
    seen: set[tuple] = set()  # every program made, fitting or not
    beat = math.inf  # the fastest fitting makespan so far: a run sure not to beat it is abandoned
    slowest = 0.0
    for n, policy in enumerate(policies(tb, recompute=recompute, offload=offload)):
        began = time.perf_counter()
        if n and deadline is not None and began + slowest > deadline:
            break
        result = run(tb, policy, beat)
        if result is None:
            slowest = _took(began, slowest, timings)
            continue  # deadlocked (not an error, the next variant may do), or no faster than one found
        key = tuple((code, u) for prog in result.programs for code, u, _, _ in prog)
        if key in seen:
            slowest = _took(began, slowest, timings)
            continue
        seen.add(key)
        made = _construction(tb, costs, placement, policy, result, actions)
        slowest = _took(began, slowest, timings)
        if limit is None or max(made.timeline.peak) <= limit:
            found[key] = made
            beat = min(beat, made.timeline.makespan)
            if made.timeline.makespan <= bound * (1 + 1e-12):
                break  # optimal: no later variant can be faster
    return sorted(found.values(), key=lambda c: (c.timeline.makespan, max(c.timeline.peak)))


def _took(began: float, slowest: float, timings: list[float] | None) -> float:
    seconds = time.perf_counter() - began
    if timings is not None:
        timings.append(seconds)
    return max(slowest, seconds)


def lower_bound(tb: Tables) -> float:
    """No schedule is shorter than a rank's own work plus the forwards (and comms) before its first stage
    can start (the bound ZB-H1 meets under unit costs: 3m + p - 1)."""
    k, m = tb.k, tb.m
    best = 0.0
    for stages in tb.stages:
        work = sum(tb.f[c] + tb.b[c] + (tb.w[c] if tb.split else 0.0)
                   for s in stages for c in range(s * k, s * k + k)) * m
        head = sum(tb.f[s * k] + tb.lat[s * k] for s in range(stages[0]))
        best = max(best, head + work)
    return best


def _construction(tb: Tables, costs: Costs, placement: Placement, policy: Policy, result: Run,
                  actions: dict[tuple[int, int], Action]) -> Construction:
    programs = [[_action(tb, code, u, actions) for code, u, _, _ in prog] for prog in result.programs]
    depth = [d if d != float("inf") else None for d in policy.depth]
    schedule = Schedule(placement, tb.m, programs, k=tb.k,
                        meta={"made_by": "synth.construct", "variant": policy.name, "rule": policy.rule,
                              "depth": depth})
    return Construction(policy.name, schedule, _timeline(tb, costs, result, programs))


def _action(tb: Tables, code: int, u: int, cache: dict[tuple[int, int], Action]) -> Action:
    action = cache.get((code, u))
    if action is None:
        s, rest = divmod(u, tb.m * tb.k)
        action = cache[code, u] = Action(OPS[code], s, *divmod(rest, tb.k))
    return action


def _timeline(tb: Tables, costs: Costs, result: Run, programs: list[list[Action]]) -> Timeline:
    """The timeline ``ir.simulate`` gives, from the run's own times (same conventions: memory
    events in span order, frees before allocations at one instant)."""
    spans: list[Span] = []
    busy, copy_busy, memory, peak, peak_action = [], [], [], [], []
    k, mk = tb.k, tb.m * tb.k
    compute, copy = Stream.COMPUTE, Stream.COPY
    for r, prog in enumerate(result.programs):
        events = []
        busy_r = copy_r = 0.0
        for (code, u, start, end), action in zip(prog, programs[r], strict=True):
            on_copy = code >= OFFLOAD
            spans.append(Span(r, action, start, end, copy if on_copy else compute))
            if on_copy:
                copy_r += end - start
            else:
                busy_r += end - start
            at_end, delta = _effect(tb, code, u // mk * k + u % k, u in result.recomputed)
            if delta:
                events.append((end if at_end else start, 0 if delta < 0 else 1, delta, action))
        level = costs.static_of(r)
        curve, top, top_action = [(0.0, level)], level, None
        events.sort(key=lambda e: (e[0], e[1]))
        for t, _, delta, action in events:
            level += delta
            curve.append((t, level))
            if level > top:
                top, top_action = level, action
        busy.append(busy_r)
        copy_busy.append(copy_r)
        memory.append(one_point_per_instant(curve))
        peak.append(top)
        peak_action.append(top_action)
    makespan = max((s.end for s in spans), default=0.0)
    return Timeline(tuple(spans), makespan, tuple(busy), tuple(copy_busy), tuple(memory), tuple(peak),
                    tuple(peak_action))


def _effect(tb: Tables, code: int, c: int, recomputed: bool) -> tuple[bool, float]:
    """``ir.deps.memory_effects`` for the table's unit ``c``: one ``(at_end, delta)`` per op.
    Zero deltas are dropped by the caller: they move no level and reach no new peak."""
    act = tb.act[c]
    if code == F:
        return False, tb.inp[c] if recomputed else act
    if code == R:
        return False, act - tb.inp[c]
    if code == RELOAD:
        return False, act
    if code == B:
        return True, -(act - tb.wact[c])
    if code == BW:
        return True, -act
    if code == W:
        return True, -tb.wact[c]
    return True, -act  # OFFLOAD


def timeline_matches(made: Construction, costs: Costs) -> bool:
    """True when ``ir.simulate`` gives ``made.schedule`` the same spans, makespan and peaks."""
    sim = simulate(made.schedule, costs)
    return (sim.spans == made.timeline.spans and sim.makespan == made.timeline.makespan
            and sim.peak == made.timeline.peak and sim.memory == made.timeline.memory)
