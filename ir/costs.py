"""The minimal cost container the IR simulates against.

`Costs` holds, per stage and sequence slice, the duration of every pass and the
bytes it keeps alive, plus per-rank static bytes and the host copy bandwidth (and whether
copies overlap compute on a stream of their own).
``synth.costs`` (the full cost model) produces one from a model and hardware;
tests build them by hand. Times are in one unit throughout (ms by convention)
and memory in bytes; nothing here converts.

Memory effects (DESIGN.md, "Ops"): F keeps ``act`` (only ``inp`` if the unit is
recomputed); B frees ``act - wact``; W frees ``wact``; BW frees ``act``; R adds
``act - inp`` (the kept input is part of ``act``, never counted twice), so a recomputed
unit's backwards free exactly what they free without recompute; OFFLOAD frees ``act``,
RELOAD brings it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ir.actions import Action, Op

__all__ = ["UnitCost", "Costs", "message_stage"]


@dataclass(frozen=True, slots=True)
class UnitCost:
    """Costs of one unit ``(stage, microbatch, slice)``; all microbatches share them.

    Attributes:
        f: forward time.
        b: input-gradient backward time.
        w: weight-gradient backward time.
        bw: fused backward time; ``None`` means ``b + w``.
        r: recompute time; ``None`` means ``f``.
        act: bytes the forward keeps for backward.
        wact: the part of ``act`` that W still needs after B (``0 <= wact <= act``).
        inp: bytes of the stage input, all a recomputed unit keeps from F to R; part of ``act``
            (``0 <= inp <= act``), so R adds ``act - inp``.
        comm: latency to send this unit's output to the next stage's rank (and the
            matching gradient back); paid only when the two stages sit on different ranks.
        post: host time to post one message of this boundary (the send or the receive of this
            unit's output, or of its gradient), LogP's overhead ``o``: in a lowered schedule each
            SEND/RECV of the boundary keeps its rank's compute stream busy this long, since the
            thread that posts is the one that launches the passes (gloo on CPU). 0 (the default)
            makes posts free; a schedule without SEND/RECV never pays it.
    """

    f: float
    b: float
    w: float
    bw: float | None = None
    r: float | None = None
    act: float = 0.0
    wact: float = 0.0
    inp: float = 0.0
    comm: float = 0.0
    post: float = 0.0

    def __post_init__(self) -> None:
        for name in ("f", "b", "w", "bw", "r", "act", "wact", "inp", "comm", "post"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_amount(value):
                raise ValueError(f"UnitCost.{name} must be a finite number >= 0, got {value!r}")
        if self.wact > self.act:
            raise ValueError(f"UnitCost.wact ({self.wact}) cannot exceed act ({self.act})")
        if self.inp > self.act:
            raise ValueError(f"UnitCost.inp ({self.inp}) cannot exceed act ({self.act}): the kept stage input is "
                             "part of the activations act counts, so make it at most act")


@dataclass(frozen=True, slots=True)
class Costs:
    """Per-stage, per-slice costs plus per-rank constants.

    Attributes:
        units: ``units[stage][slice]``; one row per stage, ``k`` entries per row.
        static: bytes per rank that never move (weights, grads, optimizer state);
            empty means zero on every rank.
        copy_bandwidth: bytes per time unit between device and host (OFFLOAD/RELOAD).
        copy_stream: whether OFFLOAD/RELOAD run on the rank's copy stream, overlapping compute (a
            GPU's copy engine; the default), or hold the compute stream, as plain copies by the
            thread that runs the passes do (the executor on CPU): then a copy starts only after
            the pass before it has ended, and the pass after it waits for it.
    """

    units: tuple[tuple[UnitCost, ...], ...]
    static: tuple[float, ...] = ()
    copy_bandwidth: float = math.inf
    copy_stream: bool = True

    def __post_init__(self) -> None:
        units = tuple(tuple(row) for row in self.units)
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "static", tuple(self.static))
        if not units or any(len(row) != len(units[0]) or not row for row in units):
            raise ValueError("Costs.units must be a non-empty [stage][slice] table with the same k in every row")
        if any(not isinstance(u, UnitCost) for row in units for u in row):
            raise TypeError("Costs.units entries must be ir.UnitCost")
        if any(not _is_amount(x) for x in self.static):
            raise ValueError(f"Costs.static must hold bytes >= 0 per rank, got {self.static}")
        if not self.copy_bandwidth > 0:
            raise ValueError(f"Costs.copy_bandwidth must be > 0, got {self.copy_bandwidth}")
        if not isinstance(self.copy_stream, bool):
            raise TypeError(f"Costs.copy_stream must be True or False, got {self.copy_stream!r}")

    @property
    def num_stages(self) -> int:
        return len(self.units)

    @property
    def k(self) -> int:
        return len(self.units[0])

    def unit(self, stage: int, slice_: int = 0) -> UnitCost:
        return self.units[stage][slice_]

    def static_of(self, rank: int) -> float:
        return self.static[rank] if self.static else 0.0

    def duration(self, action: Action) -> float:
        """Time the action occupies its stream; a comm op (SEND/RECV) takes its boundary's ``post``
        (zero by default), see `message_stage`."""
        op = action.op
        u = self.units[action.stage][action.slice]
        if op is Op.F:
            return u.f
        if op is Op.B:
            return u.b
        if op is Op.W:
            return u.w
        if op is Op.BW:
            return u.b + u.w if u.bw is None else u.bw
        if op is Op.R:
            return u.f if u.r is None else u.r
        if op in (Op.OFFLOAD, Op.RELOAD):
            return 0.0 if math.isinf(self.copy_bandwidth) else u.act / self.copy_bandwidth
        return self.units[message_stage(action)][action.slice].post  # SEND/RECV

    @classmethod
    def uniform(
        cls,
        num_stages: int,
        k: int = 1,
        *,
        f: float = 1.0,
        b: float = 1.0,
        w: float = 1.0,
        bw: float | None = None,
        r: float | None = None,
        act: float = 1.0,
        wact: float = 0.0,
        inp: float = 0.0,
        comm: float = 0.0,
        post: float = 0.0,
        static: tuple[float, ...] = (),
        copy_bandwidth: float = math.inf,
        copy_stream: bool = True,
    ) -> Costs:
        """The same `UnitCost` for every stage and slice (unit-cost analyses)."""
        unit = UnitCost(f=f, b=b, w=w, bw=bw, r=r, act=act, wact=wact, inp=inp, comm=comm, post=post)
        return cls(tuple((unit,) * k for _ in range(num_stages)), static, copy_bandwidth, copy_stream)


def message_stage(action: Action) -> int:
    """The stage whose output boundary a SEND/RECV moves: stage ``s``'s output for SEND_F(s) and
    RECV_B(s) (its gradient comes back), stage ``s - 1``'s for RECV_F(s) and SEND_B(s); the same
    unit whose ``comm`` the message pays."""
    if action.op in (Op.SEND_F, Op.RECV_B):
        return action.stage
    if action.op in (Op.RECV_F, Op.SEND_B):
        return action.stage - 1
    raise ValueError(f"{action} is not a SEND/RECV")


def _is_amount(value: object) -> bool:
    """A finite, non-negative int or float (bools are not amounts)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value >= 0
