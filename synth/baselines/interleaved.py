"""Interleaved 1F1B (Narayanan et al. 2021, arXiv 2104.04473, sec. 2.2; Megatron-LM,
``megatron/core/pipeline_parallel/schedules.py``, ``forward_backward_pipelining_with_interleaving``,
``get_pp_rank_microbatches`` and ``get_schedule_table``).

Placement ``Placement.interleaved(p, v)``: every rank holds ``v`` model chunks, chunk ``c`` of
rank ``r`` is stage ``c*p + r``. Fused backward (BW), as Megatron runs it.

Order, as in Megatron with its default ``microbatch_group_size_per_vp_stage = p``. Each rank
walks ``v*m`` "virtual microbatches" k. Forwards go through the microbatches in groups of p:
group g = k // (p*v) covers microbatches ``g*p .. g*p+p-1``, first all on chunk 0, then all on
chunk 1, ...; virtual k is microbatch ``g*p + k % p`` on chunk ``(k // p) % v``. The k-th
backward takes the same microbatch on the mirrored chunk ``v-1 - (k // p) % v``. Rank r runs
``warmup(r) = min((v-1)*p + 2*(p-r-1), v*m)`` forwards, then ``v*m - warmup(r)`` steps of one
forward (k + warmup) followed by one backward (k), then the remaining backwards.
With groups of p, Megatron requires ``m % p == 0`` (older releases raise "number of microbatches
is not divisible by pipeline-model-parallel-size"; newer ones reject a last group smaller than p,
the same rule for the default group size, and only accept other m with a larger
``microbatch_group_size_per_vp_stage``, which this module does not model).
Older Megatron releases also ran every forward first when ``m == p`` (``all_warmup_microbatches``);
the current source only caps the warm-up at ``v*m``, and this module follows the current source
(at m == p both give the same makespan and rank-0 peak; later ranks peak lower here).

Closed forms, per-chunk costs F/v and BW/v (a rank's work per microbatch is F + BW), no comm:

- bubble: (p-1)(F+BW)/v per rank, i.e. (p-1)/(v*m + p-1) of the makespan (the paper's
  sec. 2.2.2: bubble time (p-1)(t_f+t_b)/v).
- peak activations on rank r: ``min(warmup(r) + 1, v*m)`` chunk-microbatches of 1/v stage
  each (the forward that opens the first 1F1B step is issued before the first backward frees
  anything). On rank 0 that is ``((v+1)*p - 1)/v = p + (p-1)/v`` stage-microbatches
  when ``m >= 2p``, i.e. p*(1 + (p-1)/(p*v)) as in Narayanan et al.; ``m`` when ``m == p`` and
  the cap binds.
"""

from __future__ import annotations

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["BASELINE", "interleaved", "warmup_forwards"]


def warmup_forwards(p: int, m: int, v: int, rank: int) -> int:
    """Forwards rank ``rank`` runs before its first backward (Megatron's ``num_warmup_microbatches``)."""
    return min((v - 1) * p + 2 * (p - rank - 1), v * m)


def interleaved(p: int, m: int, *, costs=None, v: int = 2) -> Schedule:
    """Megatron's interleaved 1F1B for ``p`` ranks, ``m`` microbatches and ``v`` chunks per rank.

    Raises:
        ValueError: p < 2, v < 2, or m not a multiple of p.
    """
    check_positive(p=p, m=m, v=v)
    if p < 2:
        raise ValueError(f"interleaved 1F1B needs p >= 2 ranks, got p={p}; use '1f1b' for a single rank")
    if v < 2:
        raise ValueError(f"interleaved 1F1B needs v >= 2 chunks per rank, got v={v}; use '1f1b' for one chunk")
    if m % p:
        raise ValueError(
            f"interleaved 1F1B sends microbatches through the chunks in groups of p, so m must be a multiple "
            f"of p={p}; got m={m} (use m={m + p - m % p} or m={max(p, m - m % p)})"
        )
    programs = [_rank_program(p, m, v, r) for r in range(p)]
    meta = {"made_by": "synth.baselines.interleaved", "v": v}
    return Schedule(Placement.interleaved(p, v), m, programs, meta=meta)


def _rank_program(p: int, m: int, v: int, rank: int) -> list[Action]:
    total = v * m
    warmup = warmup_forwards(p, m, v, rank)
    prog = [_forward(p, v, rank, k) for k in range(warmup)]
    for k in range(total - warmup):
        prog.append(_forward(p, v, rank, warmup + k))
        prog.append(_backward(p, v, rank, k))
    prog += [_backward(p, v, rank, k) for k in range(total - warmup, total)]
    return prog


def _microbatch(p: int, v: int, k: int) -> int:
    return (k // (p * v)) * p + k % p


def _forward(p: int, v: int, rank: int, k: int) -> Action:
    chunk = (k // p) % v
    return Action(Op.F, chunk * p + rank, _microbatch(p, v, k))


def _backward(p: int, v: int, rank: int, k: int) -> Action:
    chunk = v - 1 - (k // p) % v
    return Action(Op.BW, chunk * p + rank, _microbatch(p, v, k))


BASELINE = Baseline(
    "interleaved",
    interleaved,
    "Megatron interleaved 1F1B: v model chunks per rank, microbatches in groups of p",
    "arXiv 2104.04473 sec. 2.2; Megatron-LM schedules.py forward_backward_pipelining_with_interleaving",
    options={"v": 2},
)
