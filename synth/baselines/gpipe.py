"""GPipe (Huang et al., 2019, arXiv 1811.06965): every forward, then every backward.

Standard placement, fused backward. Rank r runs F0..F(m-1), then BW in reverse order
of arrival (BW(m-1)..BW0 is GPipe's order; the last microbatch's gradient is ready first).
Bubble with per-stage F and BW: (p-1)(F+BW) per rank, i.e. (p-1)/(m+p-1) of the makespan.
Peak activations: m on every rank (all microbatches are live when the first backward starts).
"""

from __future__ import annotations

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive


def gpipe(p: int, m: int, *, costs=None) -> Schedule:
    check_positive(p=p, m=m)
    programs = [
        [Action(Op.F, r, i) for i in range(m)] + [Action(Op.BW, r, i) for i in reversed(range(m))]
        for r in range(p)
    ]
    return Schedule(Placement.standard(p), m, programs, meta={"made_by": "synth.baselines.gpipe"})


BASELINE = Baseline("gpipe", gpipe, "all forwards, then all backwards", "GPipe, arXiv 1811.06965")
