"""Tile a building block into a complete `Schedule` for m microbatches, then squeeze it.

Microbatch ``i = q u + r`` runs copy r's pass x at ``offset[x] + q T`` (u = ``block.group``; when m is
not a multiple of u the last round simply lacks its missing microbatches: dependencies stay within
a microbatch, so the order stays valid and memory only drops). `tile` gives each rank its passes
of all microbatches sorted by that time; ``ir.simulate`` runs them as soon as possible in that order,
which already pulls the warm-up together (a rank idle at the start runs its forwards earlier).
Sorting by block time respects every dependency (the block's times do), so the program is valid
for any m >= 1; ``ir.verify`` checks it anyway.

`squeeze` then fixes the cool-down, where the block's order makes a rank wait for a gradient
while work it could do sits later in its program (the paper's squeeze, and the reason ZB-H1
defers W). It list-schedules each rank's program with one rule that keeps memory: only the
actions that free memory (B, W, BW) may be reordered, and only among those between two
allocating actions (F, R) in the tiled order. Every allocation therefore happens after exactly
the same frees as in the tiled schedule, so no rank's peak can rise, while idle gaps fill with
ready work. Among ready actions it prefers input gradients (B, BW: they unblock upstream ranks),
then the tiled order. The squeezed schedule is kept only if its simulated makespan is shorter.
"""

from __future__ import annotations

import time

from ir import Action, Costs, Op, Placement, Schedule, Timeline, simulate
from ir.deps import ProgramIndex, memory_effects, ready_time
from ir.simulate import run_timeline
from ir.verify import MEMORY_RTOL
from synth.block.cpsat import Block
from synth.block.objective import ORDER as _ORDER

__all__ = ["squeeze", "squeeze_timed", "tile"]

_ALLOCATES = frozenset({Op.F, Op.R, Op.RELOAD})


def tile(block: Block, placement: Placement, m: int, k: int = 1, **meta) -> Schedule:
    """The schedule of ``m`` microbatches repeating ``block`` (``block.group`` of them) every
    ``block.period`` ticks."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"microbatches must be a positive integer, got {m!r}")
    u = block.group
    timed: list[list[tuple[int, int, Action]]] = [[] for _ in range(placement.p)]
    for x, offset in block.offsets.items():
        rank = placement.rank_of(x.stage)
        for q in range(-(-m // u)):
            i = q * u + x.micro
            if i < m:
                timed[rank].append((offset + q * block.period, _ORDER[x.op], Action(x.op, x.stage, i, x.slice)))
    ranks = [[action for _, _, action in sorted(items)] for items in timed]
    return Schedule(placement, m, ranks, k=k, meta={"made_by": "synth.block.cpsat", "period_ticks": block.period,
                                                     "group": u, "tick": block.tick, **meta})


def squeeze(schedule: Schedule, costs: Costs, mem_cap: float | None = None) -> Schedule:
    """The fastest in simulation of ``schedule`` and its list-scheduled variants (see the module
    docstring). Without ``mem_cap`` no rank's peak may rise; with it, forwards may also run ahead
    of their tiled place while the rank stays within the cap (as ZB-H1 defers W and ZB-V front-
    loads forwards in their warm-ups). Without a cap, schedules with copy-stream actions come back
    as they are (their memory depends on timing, not only on order); with one, every variant is
    judged by its simulated peak."""
    return squeeze_timed(schedule, costs, mem_cap)[0]


def squeeze_timed(schedule: Schedule, costs: Costs, mem_cap: float | None = None,
                  deadline: float | None = None) -> tuple[Schedule, Timeline]:
    """`squeeze`, with the simulation of the schedule it returns (so callers need not run it again).
    With ``deadline`` (a ``time.perf_counter()`` value), a rule starts only if it would end by then
    at the pace of the slowest one so far (the schedule's own simulation always runs)."""
    began = time.perf_counter()
    timeline = simulate(schedule, costs)
    if mem_cap is None and any(a.op.stream.value != "compute" for _, _, a in schedule.actions()):
        return schedule, timeline  # with copies, memory depends on timing: only a cap can say what is safe
    best, peak = (schedule, timeline), timeline.peak
    rules = [(peak, False)]
    if mem_cap is not None:  # forwards may run ahead into part or all of the headroom
        rules = [(tuple(mem_cap for _ in peak), False)] + [
            (tuple(x + share * (mem_cap - x) for x in peak), True) for share in (0.5, 1.0)]
    slowest = time.perf_counter() - began  # a rule costs about a simulation, or more
    prepared = _prepare(schedule, costs)  # shared by every rule: the program's dependencies and memory
    for limit, ahead in rules:
        started = time.perf_counter()
        if deadline is not None and started + slowest > deadline:
            break
        try:
            ranks = _list_schedule(schedule, costs, limit, ahead, prepared)
        except RuntimeError:
            slowest = max(slowest, time.perf_counter() - started)
            continue
        candidate = Schedule(schedule.placement, schedule.m, ranks, k=schedule.k,
                             meta={**schedule.meta, "squeezed": True})
        # The list scheduler ran this order with the program's own dependencies, so it is complete
        # and deadlock-free: only the timing pass runs (the search re-verifies what it reports).
        timeline = run_timeline(candidate, costs, ProgramIndex(candidate))
        within = all(a <= (b if mem_cap is None else mem_cap) * (1 + MEMORY_RTOL)
                     for a, b in zip(timeline.peak, peak, strict=True))
        if within and timeline.makespan < best[1].makespan - 1e-9:
            best = (candidate, timeline)
        slowest = max(slowest, time.perf_counter() - started)
    return best


def _prepare(schedule: Schedule, costs: Costs) -> tuple[dict, dict, dict, dict, dict]:
    """Per action of ``schedule``: its dependency edges, the bytes it allocates, its net memory
    delta and its duration; and per action, the ranks with an action that depends on it."""
    ix = ProgramIndex(schedule)
    actions = [a for _, _, a in schedule.actions()]
    deps = {a: ix.deps(a) for a in actions}
    effects = {a: memory_effects(a, ix, costs) for a in actions}
    grows = {a: sum(d for _, d in effects[a] if d > 0) for a in actions}
    delta = {a: sum(d for _, d in effects[a]) for a in actions}
    duration = {a: costs.duration(a) for a in actions}
    waiting: dict[Action, set[int]] = {}  # an action -> the ranks with an action that depends on it
    for r, prog in enumerate(schedule.ranks):
        for action in prog:
            for edge in deps[action]:
                waiting.setdefault(edge.pred, set()).add(r)
    return deps, grows, delta, duration, waiting


def _list_schedule(schedule: Schedule, costs: Costs, limit: tuple[float, ...], ahead: bool,
                   prepared: tuple | None = None) -> list[list[Action]]:
    deps, grows, delta, duration, waiting = prepared or _prepare(schedule, costs)
    todo = [list(prog) for prog in schedule.ranks]
    out: list[list[Action]] = [[] for _ in schedule.ranks]
    free_at = [{stream: 0.0 for stream in ("compute", "copy")} for _ in range(schedule.p)]
    held = [float(costs.static_of(r)) for r in range(schedule.p)]
    span = [3 * len(schedule.placement.stages_of(r)) * schedule.k * (schedule.p + 1) for r in range(schedule.p)]
    end: dict[Action, float] = {}
    picks: list = [None] * schedule.p
    dirty = set(range(schedule.p))
    while any(todo):
        for r in dirty:  # a rank's choice changes only when it runs something or a pred of its ends
            window = _window(todo[r], grows, limit[r] - held[r], ahead, span[r])
            picks[r] = _earliest(todo[r], window, deps, end, costs, free_at[r])
        best = min(((pick[0], r, pick[1]) for r, pick in enumerate(picks) if pick is not None), default=None)
        if best is None:
            raise RuntimeError("squeeze: no action can start")
        start, r, i = best
        action = todo[r].pop(i)
        dirty = {r} | waiting.get(action, set())
        end[action] = start + duration[action]
        free_at[r][action.op.stream.value] = end[action]
        held[r] += delta[action]
        out[r].append(action)
    return out


def _window(prog: list[Action], grows: dict[Action, float], room: float, ahead: bool, span: int) -> list[int]:
    """Positions the rank may run next: the free-only actions before its next allocating one, and
    that one once they are done or if it fits in ``room``; with ``ahead``, also later forwards
    that fit in ``room`` (and free-only actions between them), up to ``span`` positions."""
    window: list[int] = []
    blocked = False
    for i, action in enumerate(prog[:span]):
        if action.op not in _ALLOCATES:
            if not blocked:
                window.append(i)
            continue
        first = not blocked
        if (first and not window) or grows[action] <= room + 1e-9 and (first or (ahead and action.op is Op.F)):
            window.append(i)
        if not ahead:
            break
        blocked = True
    return window


def _earliest(prog: list[Action], window: list[int], deps, end: dict[Action, float], costs: Costs,
              free: dict[str, float]):
    """The position in ``window`` that can start first, and when; ties prefer B/BW, then
    allocations, then W, then program order. None if none of them is ready yet."""
    best = None
    for i in window:
        ready = ready_time(deps[prog[i]], end, costs)
        if ready is None:
            continue
        op = prog[i].op
        key = (max(ready, free[op.stream.value]), 0 if op.is_backward_input else 1 if op in _ALLOCATES else 2, i)
        if best is None or key < best:
            best = key
    return None if best is None else (best[0], best[2])
