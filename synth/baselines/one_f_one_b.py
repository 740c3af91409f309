"""1F1B (PipeDream-flush, Narayanan et al. 2021, arXiv 2104.04473; Megatron-LM), and
1F1B with full recompute (Megatron's activation checkpointing of whole stages).

Rank r warms up with min(p-r-1, m) forwards, alternates one forward and one backward,
then drains. Bubble: (p-1)(F+BW) per rank, (p-1)/(m+p-1) of the makespan.
Peak activations on rank r: min(p-r, m) stage-microbatches, so p on rank 0.
With recompute every F keeps only its stage input (``inp``) and an R re-runs it once the
gradient arrives, just before BW: peak = (min(p-r, m) - 1) inputs + one unit's activations
(the recomputing unit's own input is part of its ``act``, DESIGN.md's memory table), at the
cost of one extra F per unit on the critical path.
"""

from __future__ import annotations

from ir import Op, Schedule
from ir.examples import one_f_one_b as _plain_1f1b
from synth.baselines.common import Baseline, check_positive


def one_f_one_b(p: int, m: int, *, costs=None, recompute: bool = False) -> Schedule:
    """1F1B as written in ``ir.examples``; with ``recompute``, an R right before every BW."""
    check_positive(p=p, m=m)
    plain = _plain_1f1b(p, m)
    if not recompute:
        return plain.with_programs(plain.ranks, made_by="synth.baselines.one_f_one_b")
    programs = [[x for a in prog for x in ((a.with_op(Op.R), a) if a.op is Op.BW else (a,))] for prog in plain.ranks]
    return plain.with_programs(programs, made_by="synth.baselines.one_f_one_b (recompute)")


def _recompute(p: int, m: int, *, costs=None) -> Schedule:
    return one_f_one_b(p, m, costs=costs, recompute=True)


BASELINE = Baseline("1f1b", one_f_one_b, "one forward one backward (PipeDream-flush)", "arXiv 2104.04473")
RECOMPUTE = Baseline("1f1b-recompute", _recompute, "1F1B, every unit recomputed before its backward",
                     "Megatron-LM full activation recompute")
