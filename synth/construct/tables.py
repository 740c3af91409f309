"""Flat per-stage cost tables and the per-variant `Policy` the constructive schedulers read.

`Tables` turns an ``ir.Costs`` and an ``ir.Placement`` into plain tuples indexed by
``c = stage * k + slice`` (so the event loop in ``synth.construct.engine`` does no attribute
lookups), plus the per-rank activation budget (the cap less the rank's static bytes).
`Policy` is one variant of the list scheduler: its priority rule and warm-up depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ir import Costs, Op, Placement

__all__ = ["Policy", "Tables", "tables"]


@dataclass(frozen=True, slots=True)
class Tables:
    """What the event loop needs, as flat tuples.

    Attributes:
        p, num_stages, m, k: ranks, stages, microbatches, slices.
        split: True for B and W, False for a fused BW.
        rank_of: stage -> rank.
        stages: rank -> its stages, in model order.
        f, b, w, bw, r, copy: durations per ``c = stage * k + slice`` (``b`` is BW's when fused).
        act, wact, inp: bytes per ``c``.
        lat: per ``c``, the comm latency from stage s to s+1 (and the gradient back), 0 on one rank.
        cap: per rank, the bytes activations may use (cap minus static; inf without a cap).
    """

    p: int
    num_stages: int
    m: int
    k: int
    split: bool
    rank_of: tuple[int, ...]
    stages: tuple[tuple[int, ...], ...]
    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    r: tuple[float, ...]
    copy: tuple[float, ...]
    act: tuple[float, ...]
    wact: tuple[float, ...]
    inp: tuple[float, ...]
    lat: tuple[float, ...]
    cap: tuple[float, ...]


RULES = ("b-first", "alternate", "w-early")


@dataclass(frozen=True, slots=True)
class Policy:
    """One variant of the list scheduler.

    Attributes:
        name: shown in `Construction.name`, e.g. ``"list/b-first/depth=p-r+1"``.
        rule: ``"b-first"`` (B > F > W, W only when nothing else may run), ``"alternate"``
            (after a B the next forward goes first, as 1F1B and ZB-H1 alternate) or ``"w-early"``
            (B > W > F once activations pass ``w_early_at`` of the budget).
        depth: per rank, the most microbatches in flight (forwarded, last W or BW not ended);
            ``inf`` leaves it to memory.
        w_early_at: the share of the budget above which ``"w-early"`` puts W before F.
        recompute: may keep only a unit's input when memory would stall a forward.
        offload: may move a unit's activations to host when memory is short.
        eager: recompute (or offload) every unit it may (not the last stage's), as 1F1B with full
            recompute and PipeOffload's full offload do, instead of only when memory is short.
        jit: offload a unit when its backward is estimated ``gap`` copy times away or more, and reload
            just in time for that backward (``synth.construct.copies``), instead of offloading when
            memory is short and reloading as soon as there is room.
        gap: see ``jit``; 2 is the least for which the round trip fits before the backward.
    """

    name: str
    rule: str
    depth: tuple[float, ...]
    w_early_at: float = 1.0
    recompute: bool = False
    offload: bool = False
    eager: bool = False
    jit: bool = False
    gap: float = 2.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"Policy.rule must be one of {RULES}, got {self.rule!r}")


def tables(costs: Costs, placement: Placement, m: int, mem_cap: float | None, split: bool) -> Tables:
    """The flat tables of ``costs`` on ``placement`` for ``m`` microbatches."""
    if costs.num_stages != placement.num_stages:
        raise ValueError(f"costs cover {costs.num_stages} stages but the placement has {placement.num_stages}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"microbatches must be a positive int, got {m!r}")
    num_stages, k, p = costs.num_stages, costs.k, placement.p
    units = [costs.unit(s, j) for s in range(num_stages) for j in range(k)]
    fused = [u.b + u.w if u.bw is None else u.bw for u in units]
    copy = [0.0 if math.isinf(costs.copy_bandwidth) else u.act / costs.copy_bandwidth for u in units]
    lat = []
    for s in range(num_stages):
        crosses = s + 1 < num_stages and placement.rank_of(s) != placement.rank_of(s + 1)
        lat += [costs.unit(s, j).comm if crosses else 0.0 for j in range(k)]
    cap = tuple(math.inf if mem_cap is None else mem_cap - costs.static_of(rank) for rank in range(p))
    return Tables(
        p=p, num_stages=num_stages, m=m, k=k, split=split,
        rank_of=placement.stage_to_rank,
        stages=tuple(placement.stages_of(rank) for rank in range(p)),
        f=tuple(u.f for u in units),
        b=tuple(u.b for u in units) if split else tuple(fused),
        w=tuple(u.w for u in units),
        r=tuple(u.f if u.r is None else u.r for u in units),
        copy=tuple(copy),
        act=tuple(u.act for u in units),
        wact=tuple(u.wact for u in units),
        inp=tuple(u.inp for u in units),
        lat=tuple(lat),
        cap=cap,
    )


# Codes the event loop writes into programs; `OPS[code]` is the IR op.
F, B, W, BW, R, OFFLOAD, RELOAD = range(7)
OPS = (Op.F, Op.B, Op.W, Op.BW, Op.R, Op.OFFLOAD, Op.RELOAD)
