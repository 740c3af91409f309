"""Ops and actions: the two node types of the schedule IR.

An `Action` is one pass of one unit ``(stage, microbatch, slice)``; a `Schedule`
(``ir.schedule``) orders actions per rank. The text form follows
``torch.distributed.pipelining``'s notation (``"2F0"``, ``"5B3"``, ``"1W7"``), with
``".j"`` for sequence slice j > 0 (``"2F0.1"``). Note that our ``B`` is the
input-gradient backward (torch's ``I``) and ``BW`` the fused backward (torch's
``B``); ``ir.torch_csv`` maps between the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Op", "Action", "Stream", "parse_action"]


class Stream(StrEnum):
    """Where an op runs on its rank: compute kernels, host copies, or p2p posts."""

    COMPUTE = "compute"
    COPY = "copy"
    COMM = "comm"


class Op(StrEnum):
    """The passes a schedule is made of (see DESIGN.md, "Ops")."""

    # Members are their names, so hashing as the plain string is the same hash, in C.
    __hash__ = str.__hash__

    F = "F"  # forward
    B = "B"  # backward for inputs (activation grad)
    W = "W"  # backward for weights
    BW = "BW"  # fused backward: B then W
    R = "R"  # recompute the forward from the kept stage input, just before B
    OFFLOAD = "OFFLOAD"  # activations to host, on the copy stream
    RELOAD = "RELOAD"  # activations back from host, on the copy stream
    SEND_F = "SEND_F"  # boundary activation to the next stage (inserted by ir.lower)
    RECV_F = "RECV_F"
    SEND_B = "SEND_B"  # boundary gradient to the previous stage (inserted by ir.lower)
    RECV_B = "RECV_B"

    @property
    def stream(self) -> Stream:
        if self in (Op.OFFLOAD, Op.RELOAD):
            return Stream.COPY
        if self in _COMM_OPS:
            return Stream.COMM
        return Stream.COMPUTE

    @property
    def is_comm(self) -> bool:
        return self in _COMM_OPS

    @property
    def is_backward_input(self) -> bool:
        """True for the ops that produce the stage-input gradient (B or BW)."""
        return self in (Op.B, Op.BW)


_COMM_OPS = frozenset({Op.SEND_F, Op.RECV_F, Op.SEND_B, Op.RECV_B})

# Longest names first so that "BW" is not read as "B", nor "RECV_F" as "R".
_OP_ALTERNATION = "|".join(sorted((re.escape(o.value) for o in Op), key=len, reverse=True))
# Canonical numbers only (no leading zeros), so that text -> Action -> text is exact.
_NUM = r"(0|[1-9]\d*)"
_ACTION_RE = re.compile(rf"{_NUM}({_OP_ALTERNATION}){_NUM}(?:\.{_NUM})?")


@dataclass(frozen=True, slots=True, order=True)
class Action:
    """One pass of unit ``(stage, microbatch, slice)``; frozen and hashable.

    For comm ops, ``stage`` is the stage on the rank doing the action, as in torch:
    ``SEND_F(s)`` pairs with ``RECV_F(s+1)`` and ``SEND_B(s)`` with ``RECV_B(s-1)``.
    """

    op: Op
    stage: int
    microbatch: int
    slice: int = 0
    # The hash, computed once: actions are dict keys everywhere in verify and simulate.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Fast path: the common, already-valid case costs four type checks (hot in simulate and verify).
        if not (type(self.op) is Op and type(self.stage) is int and type(self.microbatch) is int
                and type(self.slice) is int and self.stage >= 0 and self.microbatch >= 0 and self.slice >= 0):
            self._validate()
        object.__setattr__(self, "_hash", hash((self.op, self.stage, self.microbatch, self.slice)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:
        # String hashes differ between processes, so an unpickled action recomputes its own.
        return (Action, (self.op, self.stage, self.microbatch, self.slice))

    def _validate(self) -> None:
        if not isinstance(self.op, Op):
            try:
                object.__setattr__(self, "op", Op(self.op))
            except ValueError:
                raise ValueError(f"unknown op {self.op!r}; expected one of {[o.value for o in Op]}") from None
        for name in ("stage", "microbatch", "slice"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Action.{name} must be a non-negative int, got {value!r}")

    @property
    def unit(self) -> tuple[int, int, int]:
        return (self.stage, self.microbatch, self.slice)

    def with_op(self, op: Op, stage: int | None = None) -> Action:
        """The same unit's ``op`` action (optionally on another stage)."""
        return Action(op, self.stage if stage is None else stage, self.microbatch, self.slice)

    def __str__(self) -> str:
        tail = f".{self.slice}" if self.slice else ""
        return f"{self.stage}{self.op.value}{self.microbatch}{tail}"


def parse_action(text: str) -> Action:
    """Parse the text form (``"2F0"``, ``"5BW3"``, ``"1W7.2"``) into an `Action`.

    Raises:
        ValueError: naming the text and the expected form.
    """
    match = _ACTION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{text!r} is not an action; expected <stage><op><microbatch>[.<slice>] such as "
            f"'2F0', '5B3', '1W7.1', with op one of {', '.join(o.value for o in Op)}"
        )
    stage, op, mb, sl = match.groups()
    return Action(Op(op), int(stage), int(mb), int(sl) if sl is not None else 0)
