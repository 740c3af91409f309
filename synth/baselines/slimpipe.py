"""SlimPipe (Li et al., arXiv 2504.14519): 1F1B over uniform sequence slices, plain and interleaved.

What the paper says (its abstract; the TL;DR on sciencestack.ai/paper/2504.14519; the
introduction as chatpaper.com/paper/131152 summarises it; the full text was not in our corpora,
and no code of it was found): each microbatch is cut by *uniform* sequence slicing into
several slices, run under a one-forward-one-backward (1F1B) schedule, so the activations held
shrink "from several microbatches to just one, which is split into several slices"; slices of
equal length cost unequal amounts under causal attention, and a "workload redistribution"
("attention context exchange" between devices) balances them; the claim is near-zero memory
overhead and minimal bubbles at once, for contexts up to 2048K tokens (Llama 70B).

What is ours: the exact order below, its warm-up counts, the grouping for k < p, the option
``lean``, and every formula. The redistribution is a cost-model option
(``synth.costs.redistribute``); it changes slice costs, not this order.

Order. Each rank holds v chunks (``Placement.interleaved(p, v)``; ``Placement.standard(p)``
for v = 1). Forwards go group by group, a group being G = ceil(p / k) microbatches (one
microbatch when k >= p): within a group chunk 0 runs all its (microbatch, slice) units in
order, then chunk 1 the same units, and so on. Backwards mirror that: per chunk, microbatches
first-in first-out and each microbatch's slices last-in first-out (slice j's backward needs
slice j+1's, causal attention). Fused backward (BW) throughout. Rank r warms up with

    w_r = d (p - 1 - r) + (v - 1) g + k - 1,   g = G k units per group,

then alternates one forward and one backward, then drains; d = 1 for v = 1 (1F1B's
``p - 1 - r``: this is exactly Seq1F1B's order, uniform slices being the difference) and for
``lean``, d = 2 otherwise (Megatron's interleaved warm-up).

Why these counts. The last rank's first backward is slice k-1 of microbatch 0 in chunk v-1;
its forward comes after ``(v - 1) g + k - 1`` others in that rank's list, so that is the
smallest warm-up it can have. A unit leaves rank 0 for chunk c+1 g positions after it entered
chunk c there; in the warm-up, one unit per forward time, it has crossed all p ranks by then iff
``g >= p``, hence G = ceil(p / k) (one microbatch for k >= p). Upstream ranks add d each:
d = 1 is 1F1B's diagonal (rank r-1 one forward ahead of rank r); d = 2, Megatron's interleaved
warm-up, holds p - 1 - r units more as slack against comm latency, which the lean order lacks
(with latency every hop then lands on the critical path). With d = 2 a last group shorter than
p units can deadlock (``ir.verify`` finds it), so for k < p we then ask G to divide m.

Closed forms (uniform per-unit costs F = f/(v k), BW = b/(v k) per stage, no comm; ranks
busy ``m (f + b)`` each; checked in tests/synth/baselines/test_slimpipe.py):
- bubble, when G divides m (always for k >= p): rank p-1 cannot start before a unit has
  crossed p - 1 ranks, ``(p - 1) F``, is then busy ``m (f + b)``, and its last backward (stage
  p-1) still has to cross ranks p-2..0, ``(p - 1) BW``; so the makespan is at least
  ``m (f + b) + (p - 1)(f + b)/(v k)``, and the simulator shows this order attains it: the bubble
  fraction is ``(p - 1)/(v k m + p - 1)``, Seq1F1B's with k replaced by v k.
- peak activations on rank r: F allocates at its start and BW frees at its end on one stream, so
  the level follows the program: warm-up plus the first steady forward before the first free,
  then one free per allocation: ``min(w_r + 1, v m k)`` units of 1/(v k) stage-microbatches.
  For k >= p and m >= 2, rank 0 peaks at ``1 + d (p - 1)/(v k)``; Seq1F1B holds
  ``1 + (p - 1)/k``, so SlimPipe equals it at v = 1 (and at v = 2 without lean) and holds less
  with lean or v >= 3. This is the paper's "about one microbatch": the overhead over one
  microbatch shrinks as ``1/(v k)``.
"""

from __future__ import annotations

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["BASELINE", "LEAN", "group_microbatches", "slimpipe", "warmup"]


def group_microbatches(p: int, k: int) -> int:
    """G = ceil(p / k): microbatches per forward group, so that a group holds at least p units."""
    return -(-p // k)


def warmup(p: int, r: int, k: int, v: int, *, lean: bool = False) -> int:
    """Rank r's warm-up forwards before the first backward (uncapped; see the module docstring)."""
    lag = 1 if (v == 1 or lean) else 2
    return lag * (p - 1 - r) + (v - 1) * group_microbatches(p, k) * k + k - 1


def _forward_table(p: int, m: int, k: int, v: int) -> list[tuple[int, int, int]]:
    """``(chunk, microbatch, slice)`` of each forward, in a rank's order."""
    size = group_microbatches(p, k)
    table = []
    for first in range(0, m, size):
        group = range(first, min(first + size, m))
        table += [(c, i, j) for c in range(v) for i in group for j in range(k)]
    return table


def _program(r: int, p: int, m: int, k: int, v: int, lean: bool) -> list[Action]:
    table = _forward_table(p, m, k, v)
    total = len(table)
    w = min(warmup(p, r, k, v, lean=lean), total)
    taken = [0] * v  # backwards done so far per chunk

    def forward(t: int) -> Action:
        c, i, j = table[t]
        return Action(Op.F, c * p + r, i, j)

    def backward(t: int) -> Action:
        c = v - 1 - table[t][0]  # chunks in reverse; the n-th backward of a chunk is its n-th unit, slices reversed
        n = taken[c]
        taken[c] += 1
        return Action(Op.BW, c * p + r, n // k, k - 1 - n % k)

    program = [forward(t) for t in range(w)]
    for t in range(total - w):
        program += [forward(w + t), backward(t)]
    program += [backward(t) for t in range(total - w, total)]
    return program


def slimpipe(p: int, m: int, *, costs=None, k: int = 8, v: int = 2, lean: bool = False) -> Schedule:
    """SlimPipe: 1F1B over k uniform slices per microbatch, v chunks per rank (v = 1: plain).

    ``costs`` is unused (the order does not depend on pass times). ``lean`` takes the smaller
    interleaved warm-up (less memory, no slack for comm latency).

    Raises:
        ValueError: a non-positive size, or (v > 1, not lean, k < p) m not a multiple of
            ceil(p / k).
    """
    check_positive(p=p, m=m, k=k, v=v)
    if not isinstance(lean, bool):
        raise ValueError(f"lean must be True or False, got {lean!r}")
    size = group_microbatches(p, k)
    if v > 1 and not lean and m % size:
        raise ValueError(
            f"slimpipe with v={v} and k={k} < p={p} groups ceil(p/k) = {size} microbatches per chunk "
            f"pass and needs m ({m}) to be a multiple of {size}: a shorter last group can deadlock under "
            f"the interleaved warm-up; use k >= p, m a multiple of {size}, or lean=True"
        )
    placement = Placement.standard(p) if v == 1 else Placement.interleaved(p, v)
    programs = [_program(r, p, m, k, v, lean) for r in range(p)]
    meta = {"made_by": "synth.baselines.slimpipe", "k": k, "v": v, "lean": lean, "group": size}
    return Schedule(placement, m, programs, k, meta)


BASELINE = Baseline(
    "slimpipe", slimpipe,
    "1F1B over k uniform sequence slices, v chunks per rank (interleaved), about one microbatch in flight",
    "SlimPipe, Li et al., arXiv 2504.14519 (order and warm-up ours; redistribution in synth.costs.redistribute)",
    options={"k": 8, "v": 2, "lean": False},
)
LEAN = Baseline(
    "slimpipe-lean", slimpipe,
    "SlimPipe with the lean interleaved warm-up: 1 + (p-1)/(v k) microbatches held, no slack for comm latency",
    "SlimPipe, Li et al., arXiv 2504.14519 (lean warm-up ours)",
    options={"k": 8, "v": 2, "lean": True},
)
