"""ZB-V: the V-shape zero-bubble schedule of Qi et al., "Zero Bubble (Almost) Pipeline
Parallelism", ICLR 2024, arXiv 2401.10241, sec. 6 and Fig. 8; the same order as
torch.distributed.pipelining's ``ScheduleZBVZeroBubble`` (torch 2.x, ``schedules.py``).

Placement ``Placement.v_shape(p)``: the model is cut into 2p chunks; rank r holds chunk
``r`` (on the way down) and chunk ``2p-1-r`` (on the way back), so every microbatch starts and
ends its forward and backward on rank 0. Backward split into B and W. Rank r (0-based) runs:

1. warm-up: 2(p-r)-1 forwards of its first chunk, then r pairs (F second chunk, F first
   chunk): 2p-1 forwards in all (2p-i and i-1 for worker i = r+1, as sec. 6 states);
2. p-r groups F-B-W of the second chunk;
3. steady: groups F-B-W alternating first chunk and second chunk (the first chunk's F
   left out once its forwards are used up) until every forward is done;
4. cool-down: r pairs (B first chunk, B second chunk), then p-r pairs (B first chunk,
   W first chunk), then the left-over W's of the second chunk, then of the first chunk.

With m < 2p-1 the order for 2p-1 microbatches is built and the missing microbatches' actions
dropped (as torch does); the claims below need m >= 2p-1. Fig. 8 (p = 4, m = 8) reads the same
as this order except the last five passes of ranks 1-3 (cool-down B's and W's in another
order); ours is gap-free there too under T_F = T_B = T_W.

Claims under T_F = T_B = T_W (sec. 6), in units of one full stage (a chunk costs half:
f = b = w = 1/2, act = 1/2 per chunk), for m >= 2p-1: zero bubble, i.e. every rank is busy
without a gap from its first pass to its last (the next iteration fills the stagger, as for
ZB-H2), the global makespan being 3m + (p-1)/2 (rank r starts r chunk forwards late). Peak
activations p M_B (2p half-size chunk activations) on every rank, 1F1B's rank-0 peak, counting
a microbatch's activations as live until its W (wact = act). The paper gives no closed form for
other pass times (its ZB-V runs use a greedy search, sec. 6; not this fixed order).
"""

from __future__ import annotations

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["BASELINE", "zb_v"]


def zb_v(p: int, m: int, *, costs=None) -> Schedule:
    """ZB-V for p ranks (2p chunks) and m microbatches."""
    check_positive(p=p, m=m)
    n = max(m, 2 * p - 1)  # the order needs 2p-1 microbatches; drop the extra ones below
    programs = [[a for a in _v_program(r, p, n) if a.microbatch < m] for r in range(p)]
    return Schedule(Placement.v_shape(p), m, programs, meta={"made_by": "synth.baselines.zb_v"})


def _v_program(r: int, p: int, n: int) -> list[Action]:
    """Rank r's program for n >= 2p-1 microbatches."""
    down, up = r, 2 * p - 1 - r  # its first (model order) and second chunk
    prog: list[Action] = []
    taken = {(op, s): 0 for op in (Op.F, Op.B, Op.W) for s in (down, up)}

    def take(*steps: tuple[Op, int]) -> None:
        """Append the next microbatch of each (op, stage), in order."""
        for op, stage in steps:
            prog.append(Action(op, stage, taken[op, stage]))
            taken[op, stage] += 1

    for _ in range(2 * (p - r) - 1):
        take((Op.F, down))
    for _ in range(r):
        take((Op.F, up), (Op.F, down))
    for _ in range(p - r):
        take((Op.F, up), (Op.B, up), (Op.W, up))
    while taken[Op.F, up] < n:
        if taken[Op.F, down] < n:
            take((Op.F, down))
        take((Op.B, down), (Op.W, down), (Op.F, up), (Op.B, up), (Op.W, up))
    for _ in range(r):
        take((Op.B, down), (Op.B, up))
    for _ in range(p - r):
        take((Op.B, down), (Op.W, down))
    for stage in (up, down):
        while taken[Op.W, stage] < n:
            take((Op.W, stage))
    return prog


BASELINE = Baseline(
    "zb-v",
    zb_v,
    "zero bubble V: 2 chunks per rank in a V, F-B-W groups; no bubble when F=B=W at 1F1B's peak memory",
    "Qi et al., Zero Bubble Pipeline Parallelism, arXiv 2401.10241, sec. 6",
)
