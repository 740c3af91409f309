"""Small schedules for demos and tests: hand-written 1F1B and a greedy list scheduler.

These are reference programs for the IR, not the schedule library: every
hand-designed family of the field lives in ``synth/baselines/``.
"""

from __future__ import annotations

from ir.actions import Action, Op
from ir.costs import Costs
from ir.deps import ProgramIndex, dependencies, ready_time
from ir.placement import Placement
from ir.schedule import Schedule

__all__ = ["one_f_one_b", "greedy"]


def one_f_one_b(p: int, m: int, *, split_backward: bool = False) -> Schedule:
    """PipeDream-flush / Megatron 1F1B: rank r warms up with ``min(p-r-1, m)`` forwards,
    then alternates one forward and one backward, then drains the backwards.

    With ``split_backward`` every BW becomes B immediately followed by W (same memory).
    """
    programs = []
    for r in range(p):
        warmup = min(p - r - 1, m)
        prog = [Action(Op.F, r, i) for i in range(warmup)]
        for i in range(m):
            if warmup + i < m:
                prog.append(Action(Op.F, r, warmup + i))
            prog += [Action(Op.B, r, i), Action(Op.W, r, i)] if split_backward else [Action(Op.BW, r, i)]
        programs.append(prog)
    return Schedule(Placement.standard(p), m, programs, meta={"made_by": "ir.examples.one_f_one_b"})


def greedy(
    placement: Placement,
    m: int,
    *,
    k: int = 1,
    split_backward: bool = False,
    costs: Costs | None = None,
    max_in_flight: int | None = None,
) -> Schedule:
    """List-schedule every unit greedily, simulating ``costs`` (unit costs by default).

    Each step starts the action that can start earliest on any rank; ties go to
    backward before forward before W, older microbatches and later stages first.
    A rank admits a new microbatch (F of its first stage) only while fewer than
    ``max_in_flight`` units hold activations on it (default ``p * stages on the rank``).
    """
    costs = costs or Costs.uniform(placement.num_stages, k)
    universe = _all_actions(placement, m, k, split_backward)
    ix = ProgramIndex(Schedule(placement, m, _by_rank(placement, universe), k))
    deps = {a: dependencies(a, ix) for a in universe}
    first_stage = {r: min(placement.stages_of(r)) for r in range(placement.p)}
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1 (one unit must fit to make progress), got {max_in_flight}")
    cap = {r: max_in_flight or placement.p * len(placement.stages_of(r)) for r in range(placement.p)}
    end: dict[Action, float] = {}
    free = [0.0] * placement.p
    live = [0] * placement.p
    pending = set(universe)
    programs: list[list[Action]] = [[] for _ in range(placement.p)]
    while pending:
        best = None
        for a in pending:
            r = placement.rank_of(a.stage)
            if a.op is Op.F and a.stage == first_stage[r] and live[r] >= cap[r]:
                continue
            ready = ready_time(deps[a], end, costs)
            if ready is None:
                continue
            ready = max(ready, free[r])
            key = (ready, _PRIORITY[a.op], a.microbatch, -a.stage, -a.slice if a.op.is_backward_input else a.slice)
            if best is None or key < best[0]:
                best = (key, a, r)
        if best is None:
            raise RuntimeError(f"greedy scheduling stalled with {len(pending)} actions left; raise max_in_flight")
        (start, *_), a, r = best
        end[a] = free[r] = start + costs.duration(a)
        live[r] += 1 if a.op is Op.F else -1 if a.op.is_backward_input else 0
        programs[r].append(a)
        pending.remove(a)
    meta = {"made_by": "ir.examples.greedy", "split_backward": split_backward}
    return Schedule(placement, m, programs, k, meta)


_PRIORITY = {Op.B: 0, Op.BW: 0, Op.F: 1, Op.W: 2}


def _all_actions(placement: Placement, m: int, k: int, split_backward: bool) -> list[Action]:
    ops = (Op.F, Op.B, Op.W) if split_backward else (Op.F, Op.BW)
    return [Action(op, s, i, j) for s in range(placement.num_stages) for i in range(m) for j in range(k) for op in ops]


def _by_rank(placement: Placement, actions: list[Action]) -> list[list[Action]]:
    programs: list[list[Action]] = [[] for _ in range(placement.p)]
    for a in actions:
        programs[placement.rank_of(a.stage)].append(a)
    return programs
