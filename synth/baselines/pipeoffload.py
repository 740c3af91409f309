"""PipeOffload (Wan et al., arXiv 2503.01328, ICML 2025): PO-H and PO-F.

Sources: the paper, and its implementation in sail-sg/zero-bubble-pipeline-parallelism,
``megatron/core/pipeline_parallel/zerobubble/scheduler/group_interleaved_1f1b.py`` (the
schedule: ``GroupBuildingBlockScheduler``; ``should_offload = chunk < offload_chunk_num``) and
``.../scheduler/offloading.py`` (when copies run).

Schedule: the paper's generalized interleaved schedule on ``Placement.interleaved(p, v)``
(stage ``c*p + d`` is chunk c of rank d), with split backward (B, then W right after it, as in
the reference). One building block holds F, B, W of ``g`` microbatches for every chunk, 3gv
unit slots per rank; with ``G = g * ceil(ceil(p/2) / g)`` (the reference's minimum group
``ceil(p/2)`` for F = B = W) rank d places
  F(chunk c, member i) at ``3Gc + 3i + d``, and
  B(chunk v-1-c, member i) at ``3G(v-1) + d + 3(p-1-d) + 1 + 3Gc + 3i``, W one slot later
(plus ``3g * (c // (v / gcd(v, G/g)))`` on both when that gcd exceeds 1). Block b repeats it
``3gv`` slots later for microbatches ``b*g + i``; a rank runs its passes in slot order. The
reference then shifts and squeezes the slots to meet dependencies, which keeps that order.

Offload: PO-H offloads the first half of every rank's chunks (``c < v/2``, the ones with the
longest lifespans), PO-F all chunks. An offloaded unit's OFFLOAD follows its F on the copy
stream; its RELOAD is issued with the compute pass just before its B, so the copy overlaps
that pass (the reference times the reload to end just before B). As in the reference, which
drops offload pairs whose B comes too soon after F to gain anything, a unit is offloaded only
if at least two compute passes lie between its F and its B.

Formulas, with f = b = w = 1/v and act = 1/v per chunk (a rank's whole model slice costs
F = B = W = 1 and holds act 1 per microbatch):
- PO-F peak activations: with copies hidden (copy time at most one chunk pass, or free), a
  rank holds at most two chunk-units at any instant: the unit in F, and the unit reloaded
  during that pass for the B that follows it (every other unit is on the host, or is one
  whose B comes within two passes of its F). Peak = 2/v for every p and every m >= 2 (1/v for
  m = 1). The paper reports PO-F's activation memory as constant in p, about 4 transformer
  layers in its runs (one layer per chunk; figure as given in summaries of the paper, whose
  full text we could not retrieve); there real copies take about a pass each, so the unit
  still being offloaded and the one in backward also stay resident, which the IR's hidden
  copies do not count.
- PO-H peak: no closed form in the paper. Measured in the IR: about half the peak of the same
  order without offload (p = 8: 3, 2.5, 2.25 stage-microbatches for v = 2, 4, 8, against 6,
  5, 4.5), i.e. about a quarter of Megatron interleaved 1F1B's p + (p-1)/v, which is the
  comparison the paper makes (PO-H below a quarter of interleaved 1F1B). Its better-than-linear
  claim (half the stages offloaded saves about 3/4) shows against interleaved 1F1B, not
  against this order without offload, where the IR measures a saving of about half.
- bubble: offload costs no time while copies are hidden, so PO-H and PO-F have the makespan
  of the order without offload, which equals the reference scheduler's own squeezed length
  (checked against a transcription of it for p <= 8, v <= 4, all g). The paper gives no
  closed form; measured, for m a multiple of G and g = G, a rank idles
  2(p-1) + (v-1) * floor(p/2) chunk passes beyond its 3vm of work.
Slow copies (copy time above a pass) delay the B that waits for a RELOAD: the makespan grows.
"""

from __future__ import annotations

import math

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["PO_F", "PO_H", "gis_programs", "pipeoffload", "with_offload"]


def _slots(p: int, v: int, g: int, d: int) -> list[tuple[int, Op, int, int]]:
    """One building block on rank d: ``(slot, op, chunk, member)`` for every F, B and W."""
    min_group = (p + 1) // 2
    min_k = -(-min_group // g)
    period = v // math.gcd(v, min_k)
    big = 3 * min_k * g

    def shift(c: int) -> int:
        return 3 * g * (c // period)

    first_b = big * (v - 1) + d + shift(v - 1) + 3 * (p - 1 - d) + 1
    out = []
    for c in range(v):
        for i in range(g):
            f_slot = big * c + 3 * i + d + shift(c)
            b_slot = first_b + big * c + 3 * i + shift(c)
            out += [(f_slot, Op.F, c, i), (b_slot, Op.B, v - 1 - c, i), (b_slot + 1, Op.W, v - 1 - c, i)]
    return out


def gis_programs(p: int, m: int, v: int, g: int) -> list[list[Action]]:
    """The compute order of the generalized interleaved schedule, one program per rank."""
    block_len = 3 * g * v
    programs = []
    for d in range(p):
        block = _slots(p, v, g, d)
        if len({slot % block_len for slot, *_ in block}) != len(block):
            raise ValueError(f"group size g={g} gives clashing slots for p={p}, v={v}; use 1 <= g <= p")
        timed = [
            (slot + block_len * rep, Action(op, c * p + d, rep * g + i))
            for rep in range(-(-m // g))
            for slot, op, c, i in block
            if rep * g + i < m
        ]
        programs.append([a for _, a in sorted(timed, key=lambda t: t[0])])
    return programs


def with_offload(prog: list[Action], offloaded: set[int], backward: Op = Op.B) -> list[Action]:
    """Insert OFFLOAD after F and RELOAD with the compute pass before the unit's ``backward`` (B,
    or BW for fused schedules; the reload overlaps that pass), for the units of ``offloaded``
    stages worth it: at least two compute passes between F and the backward."""
    where = {a: n for n, a in enumerate(prog)}
    chosen = {
        a.unit for a in prog
        if a.op is Op.F and a.stage in offloaded and where[a.with_op(backward)] - where[a] >= 3
    }
    out = []
    for n, a in enumerate(prog):
        out.append(a)
        nxt = prog[n + 1] if n + 1 < len(prog) else None
        if nxt is not None and nxt.op is backward and nxt.unit in chosen:
            out.append(nxt.with_op(Op.RELOAD))
        if a.op is Op.F and a.unit in chosen:
            out.append(a.with_op(Op.OFFLOAD))
    return out


def pipeoffload(p: int, m: int, *, costs=None, v: int = 2, g: int | None = None, offload: str = "full") -> Schedule:
    """PipeOffload on v chunks per rank with group size g (default ceil(p/2)).

    ``offload`` is ``"half"`` (PO-H: chunks ``c < v/2``) or ``"full"`` (PO-F: every chunk).
    """
    check_positive(p=p, m=m, v=v)
    g = (p + 1) // 2 if g is None else g
    check_positive(g=g)
    if g > p:
        raise ValueError(f"group size g={g} exceeds p={p}; the reference caps it at p, so pick 1 <= g <= p")
    if offload not in ("half", "full"):
        raise ValueError(f"offload must be 'half' (PO-H) or 'full' (PO-F), got {offload!r}")
    if offload == "half" and v % 2:
        raise ValueError(f"PO-H offloads half of each rank's chunks, so v must be even, got v={v}; try v=2 or v=4")
    chunks = v // 2 if offload == "half" else v
    offloaded = {c * p + d for c in range(chunks) for d in range(p)}
    programs = [with_offload(prog, offloaded) for prog in gis_programs(p, m, v, g)]
    meta = {"made_by": "synth.baselines.pipeoffload", "offload": offload, "v": v, "g": g}
    return Schedule(Placement.interleaved(p, v), m, programs, meta=meta)


def _po_h(p: int, m: int, *, costs=None, v: int = 2, g: int | None = None) -> Schedule:
    return pipeoffload(p, m, costs=costs, v=v, g=g, offload="half")


def _po_f(p: int, m: int, *, costs=None, v: int = 2, g: int | None = None) -> Schedule:
    return pipeoffload(p, m, costs=costs, v=v, g=g, offload="full")


_SOURCE = "PipeOffload, arXiv 2503.01328; sail-sg/zero-bubble-pipeline-parallelism group_interleaved_1f1b.py"
PO_H = Baseline("po-h", _po_h, "generalized interleaved 1F1B, first half of each rank's chunks offloaded",
                _SOURCE, options={"v": 2, "g": None})
PO_F = Baseline("po-f", _po_f, "generalized interleaved 1F1B, every chunk offloaded to host",
                _SOURCE, options={"v": 2, "g": None})
