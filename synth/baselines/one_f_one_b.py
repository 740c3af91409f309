"""1F1B (PipeDream-flush, Narayanan et al. 2021, arXiv 2104.04473; Megatron-LM), and
1F1B with full recompute (Megatron's activation checkpointing of whole stages).

Rank r warms up with min(p-r-1, m) forwards, alternates one forward and one backward,
then drains. Bubble: (p-1)(F+BW) per rank, (p-1)/(m+p-1) of the makespan.
Peak activations on rank r: min(p-r, m) stage-microbatches, so p on rank 0.
With recompute every F keeps only its stage input (``inp``) and an R re-runs it once the
gradient arrives, just before BW: peak = min(p-r, m) inputs + one unit's activations, at
the cost of one extra F per unit on the critical path.
"""

from __future__ import annotations

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive


def one_f_one_b(p: int, m: int, *, costs=None, recompute: bool = False) -> Schedule:
    check_positive(p=p, m=m)
    programs = []
    for r in range(p):
        warmup = min(p - r - 1, m)
        prog = [Action(Op.F, r, i) for i in range(warmup)]
        for i in range(m):
            if warmup + i < m:
                prog.append(Action(Op.F, r, warmup + i))
            if recompute:
                prog.append(Action(Op.R, r, i))
            prog.append(Action(Op.BW, r, i))
        programs.append(prog)
    made_by = "synth.baselines.one_f_one_b" + (" (recompute)" if recompute else "")
    return Schedule(Placement.standard(p), m, programs, meta={"made_by": made_by})


def _recompute(p: int, m: int, *, costs=None) -> Schedule:
    return one_f_one_b(p, m, costs=costs, recompute=True)


BASELINE = Baseline("1f1b", one_f_one_b, "one forward one backward (PipeDream-flush)", "arXiv 2104.04473")
RECOMPUTE = Baseline("1f1b-recompute", _recompute, "1F1B, every unit recomputed before its backward",
                     "Megatron-LM full activation recompute")
