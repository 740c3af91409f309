"""Hanayo wave-like pipeline (Liu, Cheng, Zhou, You, SC'23, arXiv 2308.15762).

Placement ``Placement.waves(p, W)``: the model is cut into ``S = 2*W*p`` stages that zig-zag over
the ranks (stage s on rank ``s % p`` on even passes, ``p-1 - s % p`` on odd ones), so a microbatch
goes down the ranks and back up W times ("waves", ``W = S / (2p)``); the turns at rank p-1 and
rank 0 cost no communication. Every rank holds 2W stages and no weights are duplicated (the
paper's point against Chimera). Fused backward (BW), as the reimplementation below runs it (its
backward takes two forward slots, the ``T_B = 2 T_F`` of the course note's formula).

Sources, and how much of each we could read:

- the paper itself: only its abstract (arXiv 2308.15762; huggingface.co/papers/2308.15762).
  Its body, figures and runtime code were not reachable from here.
- a third-party reimplementation, C-TC/Megatron-LM,
  ``megatron/core/pipeline_parallel/cdc_scheduler/pp_generator/pipeline.py``, class
  ``Hanayo1F1BPipeline``: a slot grid (forward 1 slot, fused backward 2), microbatches in groups
  of p, the group's first microbatch placed first, then "the restricted zone as in the paper",
  then the group's other microbatches; each pass goes to the first free slot(s) after the pass
  it depends on. This module follows that reading (``order="paper"``, the default).
- a course note that summarises the paper (AI-Infra docs, "PP interleaved" chapter; the same text
  sits in the code corpus): ``W = S / (2P)``, an action-list runtime with asynchronous prefetch,
  and, for ``T_B = 2 T_F`` and no communication, a bubble ratio whose printed form is garbled
  (``(2P-2)/(3PW+P-1)``); the construction below gives ``(2P-2)/(3PW+2P-2)`` at ``m = P``,
  which has the same numerator and W term, so we read the note's formula as that.

Construction (``order="paper"``), on a grid of slots with F = 1 and BW = 2 slots, per rank:
microbatch i's chain is F on stages 0..S-1, then BW on S-1..0; each pass takes the first free
slot (two for BW) on its rank after the pass before it ends. Groups of p microbatches: the
group's first microbatch is placed, then on rank r the ``p-1-r`` free slots before that
microbatch's forward on stage ``2p-1-r`` (its second pass) and the ``r`` free slots before its
backward on stage ``S-1-r`` (the last pass) are closed for good (the restricted zones), then the
group's other microbatches are placed; the next group searches from the end of this group's
first microbatch. A rank runs its passes in slot order. The order does not depend on ``costs``.

Closed forms, slots (F = 1, BW = 2, no comm; one stage-microbatch of activations is 2W chunks):

- ``m <= p``: makespan ``3S + 4(m-1)``. Microbatch 0 meets nothing (S forwards, S backwards);
  each later one queues behind the one before at the backward turn on rank p-1 (two backwards,
  4 slots, on the same rank); a sketch, checked by the tests for p <= 8, W <= 3. At ``m = p``
  every rank idles ``4(p-1)`` slots: bubble ratio ``2(p-1) / (3pW + 2(p-1))``, the paper's
  formula as read above. There interleaved (``v = 2W``) also holds all m microbatches and idles
  ``3(p-1)``: at ``m = p`` it dominates this order.
- any schedule holding at most p stage-microbatches on rank p-1 idles at least ``4(p-1)`` slots
  (rank p-1 can run only S forwards before its first backward arrives at slot ``S + 2(p-1)``;
  idle from the start ``(p-1)``, before that backward ``(p-1)``, at the end ``2(p-1)``), so at
  ``m = p`` this order is optimal for its memory. The bound without memory limit is
  ``3(p-1)`` slots, bubble ratio ``(p-1)/(2Wm + p-1)``, what Megatron interleaved with
  ``v = 2W`` reaches when ``m % p == 0``.
- peak activations: ``min(m, p)`` stage-microbatches on the busiest rank (1F1B's), against
  interleaved's ``p + (p-1)/(2W)`` for ``m >= 2p``. For ``m > p`` each further group adds
  ``3S + 2p - 3`` slots: observed for p <= 8, W <= 3, not derived; so for large m the bubble is
  above interleaved's while the memory stays below it. The concatenation is not the best one at
  that memory: CP-SAT finds p=4, W=2, m=12 at peak p with the ``4(p-1)``-slot bound (156 slots
  against this order's 166), so a better steady state exists; we kept the reading of the paper.

``order="virtual-1f1b"`` (our own, not the paper's): run 1F1B over the S stages as if each had
its own device (F = 1, BW = 2), and let each rank run its stages' passes in that timeline's order
(ties: forwards first, deeper stage first). Bubble ``4(p-1)`` slots for ``m >= S`` (and W = 1,
m = p), but stage s keeps ``min(S-s, m)`` chunks, ``Wp + 1/2`` stage-microbatches per rank for
``m >= S``: good for W = 1 (``p + 1/2``), dominated by interleaved for W >= 2.
"""

from __future__ import annotations

from ir import Action, Costs, Op, Placement, Schedule, simulate
from synth.baselines.common import Baseline, check_positive
from synth.baselines.one_f_one_b import one_f_one_b

__all__ = ["BASELINE", "ORDERS", "hanayo"]

ORDERS = ("paper", "virtual-1f1b")

_F_SLOTS, _BW_SLOTS = 1, 2
_CLOSED = "closed"  # a slot no pass starts in: a backward's second slot, or a restricted zone


def hanayo(p: int, m: int, *, costs=None, waves: int = 2, order: str = "paper") -> Schedule:
    """Hanayo's wave pipeline for ``p`` ranks, ``m`` microbatches and ``waves`` waves.

    Args:
        order: ``"paper"`` (the group construction read from the paper, see the module
            docstring) or ``"virtual-1f1b"`` (1F1B over the S stages, more memory).

    Raises:
        ValueError: p < 2, waves < 1, or an unknown order.
    """
    check_positive(p=p, m=m, waves=waves)
    if p < 2:
        raise ValueError(f"hanayo needs p >= 2 ranks for a wave to turn, got p={p}; use '1f1b' for a single rank")
    if order not in ORDERS:
        raise ValueError(f"hanayo order must be one of {list(ORDERS)}, got {order!r}")
    placement = Placement.waves(p, waves)
    ranks = _paper_programs(placement, m) if order == "paper" else _virtual_programs(placement, m)
    meta = {"made_by": "synth.baselines.hanayo", "waves": waves, "order": order}
    return Schedule(placement, m, ranks, meta=meta)


# -- order="paper": the slot-grid group construction ------------------------------------------


def _paper_programs(placement: Placement, m: int) -> list[list[Action]]:
    grid: list[dict[int, Action | str]] = [{} for _ in range(placement.p)]  # slot -> pass or _CLOSED
    start = -1  # the current group's passes go strictly after this slot
    for first in range(0, m, placement.p):
        slots = _place_chain(placement, grid, first, start)
        _close_restricted_zones(placement, grid, slots)
        for i in range(first + 1, min(first + placement.p, m)):
            _place_chain(placement, grid, i, start)
        start = slots[(Op.BW, 0)] + _BW_SLOTS - 1  # the next group starts after this group's first
    return [[a for _, a in sorted(g.items()) if isinstance(a, Action)] for g in grid]


def _place_chain(placement: Placement, grid: list[dict], i: int, after: int) -> dict[tuple[Op, int], int]:
    """Put microbatch i's passes, in dependency order, each in the first free slot(s) of its rank
    after the previous pass ends; return ``(op, stage) -> first slot``."""
    stages = placement.num_stages
    chain = [(Op.F, s) for s in range(stages)] + [(Op.BW, s) for s in reversed(range(stages))]
    slots = {}
    for op, s in chain:
        rank_grid = grid[placement.rank_of(s)]
        length = _F_SLOTS if op is Op.F else _BW_SLOTS
        t = after + 1
        while any(t + k in rank_grid for k in range(length)):
            t += 1
        rank_grid[t] = Action(op, s, i)
        for k in range(1, length):
            rank_grid[t + k] = _CLOSED  # the backward's second slot
        slots[(op, s)] = t
        after = t + length - 1
    return slots


def _close_restricted_zones(placement: Placement, grid: list[dict], slots: dict[tuple[Op, int], int]) -> None:
    """Close, on rank r, the ``p-1-r`` slots before the group's first microbatch reaches r on its
    second pass (stage ``2p-1-r``) and the ``r`` slots before its backward on the last pass (stage
    ``S-1-r``), where still free (C-TC's ``Hanayo1F1BPipeline``, "the restricted zone as in the
    paper"): the group's later microbatches must not take them."""
    p, stages = placement.p, placement.num_stages
    for r in range(p):
        zones = ((slots[(Op.F, 2 * p - 1 - r)], p - 1 - r), (slots[(Op.BW, stages - 1 - r)], r))
        for at, width in zones:
            for t in range(at - width, at):
                grid[r].setdefault(t, _CLOSED)


# -- order="virtual-1f1b" ---------------------------------------------------------------------


def _virtual_programs(placement: Placement, m: int) -> list[list[Action]]:
    stages = placement.num_stages
    timeline = simulate(one_f_one_b(stages, m), Costs.uniform(stages, f=1.0, b=1.0, w=1.0))
    programs: list[list[tuple]] = [[] for _ in range(placement.p)]
    for span in timeline.spans:
        action = span.action
        key = (span.start, 0 if action.op is Op.F else 1, -action.stage)
        programs[placement.rank_of(action.stage)].append((key, action))
    return [[action for _, action in sorted(prog)] for prog in programs]


BASELINE = Baseline(
    "hanayo",
    hanayo,
    "Hanayo wave-like pipeline: 2W stages per rank in a zig-zag, groups of p microbatches on a slot grid",
    "Hanayo, SC'23, arXiv 2308.15762; construction as read by C-TC/Megatron-LM Hanayo1F1BPipeline",
    options={"waves": 2, "order": "paper"},
)
