"""Tile a building block into a complete `Schedule` for m microbatches.

Microbatch i runs pass x at ``offset[x] + i T``. Each rank's program is its passes of all
microbatches sorted by that time; ``ir.simulate`` then runs them as soon as possible in that
order, which squeezes the warm-up and cool-down (ranks idle at the ends start their passes
earlier) without reordering the stable phase. Sorting by block time respects every dependency
(the block's times do), so the program is valid for any m >= 1; ``ir.verify`` checks it anyway.
"""

from __future__ import annotations

from ir import Action, Op, Placement, Schedule
from synth.blocks import Block

__all__ = ["tile"]

# At equal times (possible only across a rank's two streams) a copy op goes after compute.
_ORDER = {Op.F: 0, Op.R: 1, Op.B: 2, Op.BW: 2, Op.W: 3, Op.OFFLOAD: 4, Op.RELOAD: 5}


def tile(block: Block, placement: Placement, m: int, k: int = 1, **meta) -> Schedule:
    """The schedule of ``m`` microbatches repeating ``block`` every ``block.period`` ticks."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"microbatches must be a positive integer, got {m!r}")
    timed: list[list[tuple[int, int, Action]]] = [[] for _ in range(placement.p)]
    for x, offset in block.offsets.items():
        rank = placement.rank_of(x.stage)
        for i in range(m):
            timed[rank].append((offset + i * block.period, _ORDER[x.op], Action(x.op, x.stage, i, x.slice)))
    ranks = [[action for _, _, action in sorted(items)] for items in timed]
    return Schedule(placement, m, ranks, k=k, meta={"made_by": "synth.blocks", "period_ticks": block.period,
                                                     "tick": block.tick, **meta})
