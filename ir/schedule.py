"""`Schedule`: a placement plus one ordered program of actions per rank.

Order is the program; times come only from ``ir.simulate``. Structural checks
(types, one program per rank) happen here; the rules of a valid schedule
(completeness, dependency order, deadlock freedom, memory) live in ``ir.verify``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ir.actions import Action, Op, parse_action
from ir.placement import Placement

__all__ = ["Schedule"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A pipeline schedule.

    Attributes:
        placement: stage -> rank map; ``placement.p`` programs are expected.
        m: number of microbatches (``0..m-1``).
        ranks: ``ranks[r]`` is rank r's program, in execution order. Actions may be
            given as `Action`s or their text form (``"0F1"``).
        k: number of sequence slices per microbatch (1 = no slicing).
        meta: free-form, JSON-serialisable notes (how it was made, solver status).
    """

    placement: Placement
    m: int
    ranks: tuple[tuple[Action, ...], ...]
    k: int = 1
    meta: Mapping[str, Any] = field(default_factory=dict)

    __hash__ = None  # meta is a mutable mapping; compare schedules with ==

    def __post_init__(self) -> None:
        if not isinstance(self.placement, Placement):
            raise TypeError(f"placement must be an ir.Placement, got {type(self.placement).__name__}")
        for name in ("m", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Schedule.{name} must be a positive int, got {value!r}")
        programs = tuple(tuple(_as_action(a) for a in prog) for prog in self.ranks)
        if len(programs) != self.placement.p:
            raise ValueError(
                f"schedule has {len(programs)} rank programs but its placement has "
                f"{self.placement.p} ranks; give one (possibly empty) program per rank"
            )
        object.__setattr__(self, "ranks", programs)
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def p(self) -> int:
        return self.placement.p

    @property
    def num_stages(self) -> int:
        return self.placement.num_stages

    @property
    def is_lowered(self) -> bool:
        """True when the programs carry explicit SEND/RECV actions (see ``ir.lower``)."""
        return any(a.op.is_comm for prog in self.ranks for a in prog)

    def actions(self) -> Iterator[tuple[int, int, Action]]:
        """Every ``(rank, position, action)`` in rank then program order."""
        for rank, prog in enumerate(self.ranks):
            for pos, action in enumerate(prog):
                yield rank, pos, action

    def units(self) -> Iterator[tuple[int, int, int]]:
        """Every unit ``(stage, microbatch, slice)`` the schedule must cover."""
        for s in range(self.num_stages):
            for i in range(self.m):
                for j in range(self.k):
                    yield (s, i, j)

    def ops_used(self) -> frozenset[Op]:
        return frozenset(a.op for prog in self.ranks for a in prog)

    def with_programs(self, ranks: list[list[Action]] | tuple[tuple[Action, ...], ...], **meta: Any) -> Schedule:
        """A copy with other programs and extra meta entries."""
        return Schedule(self.placement, self.m, tuple(tuple(p) for p in ranks), self.k, {**self.meta, **meta})

    def __str__(self) -> str:
        return "\n".join(f"rank {r}: " + " ".join(str(a) for a in prog) for r, prog in enumerate(self.ranks))


def _as_action(item: Action | str) -> Action:
    if isinstance(item, Action):
        return item
    if isinstance(item, str):
        return parse_action(item)
    raise TypeError(f"program entries must be ir.Action or text like '0F1', got {item!r}")
