"""Hanayo wave-like pipeline (Liu, Cheng, Zhou, You, SC'23, arXiv 2308.15762).

Placement ``Placement.waves(p, W)``: the model is cut into ``S = 2*W*p`` stages that zig-zag
over the ranks (stage s on rank ``s % p`` on even passes, ``p-1 - s % p`` on odd ones), so a
microbatch goes down the ranks and back up W times ("waves"), the turns at rank p-1 and rank 0
costing no communication. Every rank holds 2W stages; no weights are duplicated (unlike Chimera).
Fused backward (BW).

Order: a 1F1B schedule over the waves. Read the wave as a pipeline of S stages and give each
stage PipeDream-flush 1F1B's program (stage s warms up with ``min(S-s-1, m)`` forwards, then
alternates one forward and one backward, then drains). With every stage on its own virtual
device, unit forwards and backwards twice as long, that virtual 1F1B has a fixed timeline;
rank r runs the passes of its 2W stages in the order of that timeline (ties: forwards first,
then the deeper stage first, so that a microbatch turns at a wave's end without waiting).

Source caveat: the paper's text could not be retrieved while writing this module, so the order
above is our reading of "1F1B over the waves", not a transcription of the authors' schedule
figures or runtime, and the formulas below are this module's, checked by hand-computed
timelines (tests/synth/test_hanayo.py), not quoted from the paper. Check both against the paper
before quoting benchmark numbers as Hanayo's.

Closed forms under per-stage costs f = F/(2W) and b = BW/(2W) with BW = 2F (a rank's work per
microbatch is 3F), no comm; S = 2Wp:

- any schedule on this placement: rank p-1 starts no earlier than (p-1)f and must end its last
  backward (p-1)b before the makespan, so every rank idles at least (p-1)(f+b): bubble ratio
  >= (p-1)/(2Wm + p-1), the interleaved bound with v = 2W.
- this order, for m >= S (and for W = 1, m = p): one more forward per rank hop, bubble
  (p-1)(2f+b) per rank, i.e. 2(p-1)/(3Wm + 2(p-1)) of the makespan. For m < S the virtual 1F1B
  never reaches its steady state and the extra bubble is not monotone in m (W = 2, p = 8: m = 24
  meets the lower bound, m = 8 pays 22 forwards above it); only the lower bound holds there.
- peak activations on rank r: sum over its stages s of min(S - s, m) chunk-microbatches of
  1/(2W) stage-microbatch each, i.e. what 1F1B keeps on each stage of the S-stage pipeline. For
  m >= S that is 2W^2 p + W chunks = Wp + 1/2 stage-microbatches on every rank: balanced across
  ranks, p + 1/2 for W = 1, but growing with W (interleaved with v = 2W keeps p + (p-1)/(2W)).
"""

from __future__ import annotations

from ir import Costs, Op, Placement, Schedule, simulate
from synth.baselines.common import Baseline, check_positive
from synth.baselines.one_f_one_b import one_f_one_b

__all__ = ["BASELINE", "hanayo"]


def hanayo(p: int, m: int, *, costs=None, waves: int = 2) -> Schedule:
    """Hanayo's wave pipeline for ``p`` ranks, ``m`` microbatches and ``waves`` waves.

    Raises:
        ValueError: p < 2 or waves < 1.
    """
    check_positive(p=p, m=m, waves=waves)
    if p < 2:
        raise ValueError(f"hanayo needs p >= 2 ranks for a wave to turn, got p={p}; use '1f1b' for a single rank")
    placement = Placement.waves(p, waves)
    programs: list[list[tuple]] = [[] for _ in range(p)]  # (virtual order key, action) per rank
    for span in _virtual_timeline(placement.num_stages, m):
        action = span.action
        order = (span.start, 0 if action.op is Op.F else 1, -action.stage)
        programs[placement.rank_of(action.stage)].append((order, action))
    ranks = [[action for _, action in sorted(prog)] for prog in programs]
    return Schedule(placement, m, ranks, meta={"made_by": "synth.baselines.hanayo", "waves": waves})


def _virtual_timeline(num_stages: int, m: int):
    """Spans of 1F1B over ``num_stages`` stages, one virtual device each, F = 1 and BW = 2."""
    virtual = one_f_one_b(num_stages, m)
    unit = Costs.uniform(num_stages, f=1.0, b=1.0, w=1.0)
    return simulate(virtual, unit).spans


BASELINE = Baseline(
    "hanayo",
    hanayo,
    "Hanayo wave-like pipeline: 2W stages per rank in a zig-zag, 1F1B over the waves",
    "Hanayo, SC'23, arXiv 2308.15762",
    options={"waves": 2},
)
