"""The block objective that sees m: the tiled makespan, searched over periods above the smallest.

A block of u microbatches with period T, tiled over m microbatches, runs microbatch ``i = q u + r``
as copy r shifted by ``q T`` (``synth.block.tile``), so in block time it ends at `tiled_length`:
``max over copies r < min(u, m) of floor((m - 1 - r) / u) T + end_r``, about ``(ceil(m / u) - 1) T
+ length``. The smallest T is not always best: a longer period may let memory slack shorten the
block (warm-up and cool-down) by more than the ``ceil(m / u) - 1`` extra periods cost.

Block time over-states what the tiled schedule takes: ``ir.simulate`` runs each rank's program as
soon as possible, which pulls the warm-up of a long block together (measured: p = 6, cap 6, m = 2,
unit costs; the T = 3 block ends at 21 ticks in block time but 16 simulated, the T = 4 block at
18 and 17). So blocks are compared by `tiled_asap`, the tiled programs run as soon as possible in
ticks (``ir.simulate``'s rules: program order per rank, one pass per stream, edges with comm gaps).

`widen` starts from ``synth.block.period.search_period``'s answer (the smallest feasible T*, and
the shortest block there) and solves the periods T with ``(ceil(m / u) - 1) (T - T*) < L(T*) -
lower`` for their shortest blocks (``lower``: one microbatch's critical path, `length_bound`; in
block time no other period can end sooner), keeping the one whose `tiled_asap` is smallest (T* on
ties, so it is never worse than T*'s block) among those whose as-soon-as-possible tiling stays
within the cap (`asap_fits`: with offload, running early can pull a RELOAD ahead of the frees it
waited for; measured on test_cpsat's V-shape offload case at T = 7). Too many periods are sampled evenly, then refined
around the best by halving the step. Both solvers run it (``synth.block.cpsat`` in process,
``synth.block.milp`` in its child); it imports no solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from graphlib import TopologicalSorter

from ir import Action, Op
from synth.block.period import Answer
from synth.block.spec import BlockSpec, Pass

__all__ = ["ORDER", "asap_fits", "asap_starts", "length_bound", "tiled_asap", "tiled_length", "widen"]

# A tiled rank's program lists passes by block time; at equal times (possible only across a
# rank's two streams) a copy op goes after compute.
ORDER = {Op.F: 0, Op.R: 1, Op.B: 2, Op.BW: 2, Op.W: 3, Op.OFFLOAD: 4, Op.RELOAD: 5}


def tiled_length(period: int, offsets: dict[Pass, int], durations: dict[Pass, int], group: int, m: int) -> int:
    """Ticks from the first start to the last end of ``m`` microbatches of the block in block time
    (before the tiled schedule runs as soon as possible, which only shortens it)."""
    begin = min(offsets.values())
    end = {}
    for x, t in offsets.items():
        end[x.micro] = max(end.get(x.micro, t), t + durations[x])
    return max((m - 1 - r) // group * period + e for r, e in end.items() if r < m) - begin


def tiled_asap(spec: BlockSpec, period: int, offsets: dict[Pass, int], m: int) -> int:
    """Ticks the tiled schedule of ``m`` microbatches takes when each rank runs its program (passes
    in block-time order, as ``synth.block.tile`` writes it) as soon as possible."""
    starts = asap_starts(spec, period, offsets, m)
    return max(t + spec.dur[x] for (x, _), t in starts.items())


def asap_fits(spec: BlockSpec, period: int, offsets: dict[Pass, int], variants: dict[int, str], m: int) -> bool:
    """Whether the tiled schedule run as soon as possible keeps every rank within its budget. The
    block's memory holds at block times; running earlier can break it only through the copy
    stream (a RELOAD pulled ahead of the frees it waited for in block time)."""
    if spec.budget is None:
        return True
    starts = asap_starts(spec, period, offsets, m)
    events: dict[int, list[tuple[int, int]]] = {}
    for span in spec.lifespans:
        if variants.get(span.stage, "keep") != span.variant:
            continue
        for i in range(span.begin.micro, m, spec.group):
            begin, end = starts[(span.begin, i)], starts[(span.end, i)] + spec.dur[span.end]
            events.setdefault(span.rank, []).extend([(begin, span.units), (end, -span.units)])
    for r, evs in events.items():
        level = 0
        for _, delta in sorted(evs):  # frees at an instant before allocations there
            level += delta
            if level > spec.budget[r]:
                return False
    return True


def asap_starts(spec: BlockSpec, period: int, offsets: dict[Pass, int], m: int) -> dict[tuple[Pass, int], int]:
    """``(pass, microbatch) -> start tick`` of the tiled programs run as ``ir.simulate`` runs them:
    a pass starts once its predecessors' ends (plus comm) allow, no earlier than the pass before it
    in its rank's program, when its stream is free."""
    u, rounds = spec.group, -(-m // spec.group)
    programs: dict[int, list] = {}
    for x, t in offsets.items():
        for q in range(rounds):
            i = q * u + x.micro
            if i < m:
                programs.setdefault(spec.rank[x], []).append(
                    (t + q * period, ORDER[x.op], Action(x.op, x.stage, i, x.slice), (x, i)))
    preds: dict[tuple[Pass, int], list] = {}
    for later, earlier, gap in spec.edges:
        if later in offsets and earlier in offsets:
            for i in range(later.micro, m, u):
                preds.setdefault((later, i), []).append(((earlier, i), gap))
    order = [[job for *_, job in sorted(items)] for items in programs.values()]
    start: dict[tuple[Pass, int], int] = {}
    pos, issued = [0] * len(order), [0] * len(order)
    free = [{False: 0, True: 0} for _ in order]
    progressed = True
    while progressed:
        progressed = False
        for n, prog in enumerate(order):
            while pos[n] < len(prog):
                x, i = job = prog[pos[n]]
                if any(e not in start for e, _ in preds.get(job, ())):
                    break
                stream = x in spec.copy
                at = max([issued[n], free[n][stream], *(start[e] + spec.dur[e[0]] + g for e, g in preds.get(job, ()))])
                start[job] = issued[n] = at
                free[n][stream] = at + spec.dur[x]
                pos[n] += 1
                progressed = True
    if any(p < len(prog) for p, prog in zip(pos, order, strict=True)):
        raise ValueError("the tiled programs deadlock: the block's times break a dependency")
    return start


def length_bound(spec: BlockSpec) -> int:
    """A lower bound on any block's length: the longest path through one microbatch's mandatory
    passes (durations and comm gaps), from its first forward."""
    mandatory = {x for x in spec.dur if x.micro == 0 and x not in spec.optional}
    preds: dict[Pass, list[tuple[Pass, int]]] = {x: [] for x in mandatory}
    for later, earlier, gap in spec.edges:
        if later in mandatory and earlier in mandatory:
            preds[later].append((earlier, gap))
    end: dict[Pass, int] = {}
    for x in TopologicalSorter({x: [e for e, _ in ps] for x, ps in preds.items()}).static_order():
        end[x] = max((end[e] + gap for e, gap in preds[x]), default=0) + spec.dur[x]
    return max(end.values(), default=0)


def widen(spec: BlockSpec, answer: Answer, final: Callable, m: int, has_time: Callable[[], bool],
          samples: int = 8) -> Answer:
    """The block with the smallest `tiled_asap` for ``m`` microbatches among ``answer`` (the
    smallest period's shortest block) and the shortest blocks of the larger periods that may end
    sooner in block time (see the module docstring).

    Args:
        spec: the block data.
        answer: ``search_period``'s answer.
        final: ``final(period)`` as for ``search_period``: ``(optimal, offsets, variants)``, False
            (proven infeasible) or None (nothing found in time).
        m: microbatches the block will be tiled over.
        has_time: whether another solve may start.
        samples: the most periods tried before refining around the best.

    Returns:
        The best answer, its probes extended by the periods tried; proven when ``answer`` was and
        every period in the range was solved to optimality (or proven infeasible).
    """
    lower, n = length_bound(spec), math.ceil(m / spec.group)
    # (n - 1) T + lower < the smallest period's tiled length: the periods that may end sooner
    reach = tiled_length(answer.period, answer.offsets, spec.dur, spec.group, m) - lower
    top = spec.max_period if n == 1 else min(spec.max_period, (reach - 1) // (n - 1))
    best = (tiled_asap(spec, answer.period, answer.offsets, m), answer.period, answer)
    probes, proven, tried = list(answer.probes), answer.proven, {answer.period}

    def attempt(period: int) -> None:
        nonlocal best, proven
        tried.add(period)
        result = final(period)
        probes.append((period, bool(result)))
        if not result:
            proven = proven and result is False
            return
        optimal, offsets, variants = result
        proven = proven and optimal
        key = (tiled_asap(spec, period, offsets, m), period)
        if key < best[:2] and asap_fits(spec, period, offsets, variants, m):
            best = (*key, Answer(period, offsets, variants, False, ()))

    step = max(1, math.ceil((top - answer.period) / samples))
    for period in range(answer.period + step, top + 1, step):
        if not has_time():
            proven = False
            break
        attempt(period)
    proven = proven and step == 1
    while step > 1 and has_time():  # refine around the best by halving the step
        step //= 2
        for period in (best[1] - step, best[1] + step):
            if answer.period < period <= top and period not in tried and has_time():
                attempt(period)
    chosen = best[2]
    return Answer(chosen.period, chosen.offsets, chosen.variants, proven, tuple(probes))
