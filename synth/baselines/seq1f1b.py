"""Seq1F1B (Sun et al., arXiv 2406.03488): 1F1B over sequence slices, plain and interleaved.

Sources: the paper, and the authors' Megatron fork (github.com/thunlp/Seq1F1B,
``megatron/core/pipeline_parallel/schedules.py`` and ``sequence_split.py``); the
zero-bubble repository's re-implementation (sail-sg/zero-bubble-pipeline-parallelism,
``megatron/core/pipeline_parallel/zerobubble/scheduler/seq1f1b.py``) gives the same order.

Each microbatch is cut into ``k`` sequence slices and 1F1B runs over the ``m*k`` slice units
(``Schedule(..., k=k)``). Forwards go in (microbatch, slice) order; backwards take the
microbatches first-in first-out but each microbatch's slices last-in first-out (the
``sequence_1f1b_queue``), because slice j's backward needs slice j+1's (causal attention).
Fused backward (BW) throughout.

``seq1f1b`` (standard placement): rank r warms up with ``min(p - r - 2 + k, m*k)`` slice
forwards (counted in slices, as the issue says: ``num_warmup = p - rank + splits - 2``), then
alternates one forward and one backward, then drains. The k-1 extra warm-up slices let the
last stage run all k slices of a microbatch before its first backward, which is of slice k-1.

``seq1f1b-i`` (``Placement.interleaved(p, v)``): Megatron's interleaved 1F1B over the slice
units, chunk-major in groups of p units; rank r warms up with
``min(2(p - r - 1) + (v - 1) p + k - 1, v m k)`` (chunk, slice) forwards. The backward of the
n-th backward step in chunk c is slice ``k-1 - n%k`` of microbatch ``n//k``. We ask only that
``m*k`` be a multiple of p (the group table needs it); the reference code additionally asserts
``m % p == 0`` and ``m >= p`` (Megatron's check on m, made before m is multiplied by k).
We also ask ``k <= p``: for k > p the reference's warm-up count puts the last rank's first
backward (slice k-1 of microbatch 0, last chunk) before that slice's forward (the reference's
queue would then pop a slice whose later slices have not run; the IR rejects the order).

Formulas, with uniform per-slice costs (F = f/k, BW = b/k per stage, no comm; equal slice
costs are what the paper's computation-wise partition aims for, since with even token splits
later slices cost more under causal attention). The paper's own text was not retrievable
here; the counts below follow the reference code's warm-up and were checked in the IR:
- seq1f1b bubble: (p-1)(f+b)/k per rank, a fraction (p-1)/(k m + p - 1) of the makespan.
- seq1f1b peak activations on rank r: min(p - r + k - 1, m k) slices, i.e. (p + k - 1)/k
  stage-microbatches on rank 0 when m k >= p + k - 1 (1F1B holds p; slicing keeps k-1 extra
  slices of 1/k each, hence "less memory" for k > 1). This is the issue's formula; it follows
  from the warm-up count above (warm-up + the first steady forward, before the first free).
- seq1f1b-i bubble (m k a multiple of p, k <= p): (p-1)(f+b)/(v k) per rank, a fraction
  (p-1)/(v k m + p - 1).
- seq1f1b-i peak on rank r: min(2(p - r - 1) + (v - 1) p + k, v m k) chunk-slices of 1/(v k)
  each, i.e. (v p + p + k - 2)/(v k) stage-microbatches on rank 0 (k = 1 gives Megatron's
  p + (p-1)/v).
"""

from __future__ import annotations

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["BASELINE", "INTERLEAVED", "seq1f1b", "seq1f1b_interleaved"]


def _forward_unit(n: int, k: int) -> tuple[int, int]:
    """The n-th forward slice unit: microbatches in order, slices in order."""
    return n // k, n % k


def _backward_unit(n: int, k: int) -> tuple[int, int]:
    """The n-th backward slice unit: microbatches first-in first-out, slices last-in first-out."""
    return n // k, k - 1 - n % k


def seq1f1b(p: int, m: int, *, costs=None, k: int = 4) -> Schedule:
    """Seq1F1B on the standard placement (one stage per rank), k slices per microbatch."""
    check_positive(p=p, m=m, k=k)
    total = m * k
    programs = []
    for r in range(p):
        warmup = min(p - r - 2 + k, total)
        prog = [Action(Op.F, r, *_forward_unit(n, k)) for n in range(warmup)]
        for n in range(total - warmup):
            prog.append(Action(Op.F, r, *_forward_unit(warmup + n, k)))
            prog.append(Action(Op.BW, r, *_backward_unit(n, k)))
        prog += [Action(Op.BW, r, *_backward_unit(n, k)) for n in range(total - warmup, total)]
        programs.append(prog)
    return Schedule(Placement.standard(p), m, programs, k, {"made_by": "synth.baselines.seq1f1b", "k": k})


def _group_table(units: int, p: int, v: int) -> list[tuple[int, int]]:
    """Megatron's schedule table: ``(unit, chunk)`` per virtual step, chunk-major in groups of p units."""
    table = []
    for start in range(0, units, p):
        stop = min(start + p, units)
        table += [(u, c) for c in range(v) for u in range(start, stop)]
    return table


def _interleaved_program(r: int, p: int, m: int, k: int, v: int) -> list[Action]:
    table = _group_table(m * k, p, v)
    total = len(table)
    warmup = min(2 * (p - r - 1) + (v - 1) * p + k - 1, total)
    pops = [0] * v  # backward steps taken so far in each chunk

    def forward(t: int) -> Action:
        unit, chunk = table[t]
        return Action(Op.F, chunk * p + r, *_forward_unit(unit, k))

    def backward(t: int) -> Action:
        chunk = v - 1 - table[t][1]
        n = pops[chunk]
        pops[chunk] += 1
        return Action(Op.BW, chunk * p + r, *_backward_unit(n, k))

    prog = [forward(t) for t in range(warmup)]
    for t in range(total - warmup):
        prog += [forward(warmup + t), backward(t)]
    prog += [backward(t) for t in range(total - warmup, total)]
    return prog


def seq1f1b_interleaved(p: int, m: int, *, costs=None, k: int = 4, v: int = 2) -> Schedule:
    """Seq1F1B-I: interleaved 1F1B (v chunks per rank) over k slices per microbatch."""
    check_positive(p=p, m=m, k=k, v=v)
    if k > p:
        raise ValueError(
            f"seq1f1b-i needs k <= p (got k={k}, p={p}): with groups of p slice units per chunk, the "
            "reference warm-up (k-1 extra slices) reaches the last stage's first backward (slice k-1) "
            "before that slice's forward when k > p; use k <= p, or the non-interleaved 'seq1f1b'"
        )
    if (m * k) % p:
        raise ValueError(
            f"seq1f1b-i needs m*k ({m}*{k} = {m * k}) to be a multiple of p ({p}): its forwards go in "
            "groups of p slice units per chunk; pick m or k so that p divides m*k"
        )
    programs = [_interleaved_program(r, p, m, k, v) for r in range(p)]
    meta = {"made_by": "synth.baselines.seq1f1b (interleaved)", "k": k, "v": v}
    return Schedule(Placement.interleaved(p, v), m, programs, k, meta)


BASELINE = Baseline(
    "seq1f1b", seq1f1b, "1F1B over k sequence slices per microbatch",
    "Seq1F1B, arXiv 2406.03488; github.com/thunlp/Seq1F1B schedules.py", options={"k": 4},
)
INTERLEAVED = Baseline(
    "seq1f1b-i", seq1f1b_interleaved, "interleaved 1F1B (v chunks per rank) over k sequence slices",
    "Seq1F1B-I, arXiv 2406.03488; github.com/thunlp/Seq1F1B schedules.py", options={"k": 4, "v": 2},
)
