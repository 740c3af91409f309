"""Stage -> rank placements: 1F1B, interleaved, V-shape, Hanayo waves, or explicit.

Stages are numbered ``0..S-1`` in model order (DESIGN.md, "Vocabulary").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Placement", "PlacementKind"]


class PlacementKind(StrEnum):
    STANDARD = "standard"  # S = p, stage s on rank s (1F1B, GPipe, ZB-H1/H2)
    INTERLEAVED = "interleaved"  # S = v*p, stage s on rank s % p
    V_SHAPE = "v"  # S = 2p, down then back up (ZB-V, V-Half, V-Min)
    WAVES = "waves"  # S = 2*W*p, zig-zag (Hanayo)
    EXPLICIT = "explicit"  # any stage -> rank list


@dataclass(frozen=True, slots=True)
class Placement:
    """Which rank holds each stage.

    Attributes:
        stage_to_rank: ``stage_to_rank[s]`` is the rank that holds stage ``s``.
            Every rank ``0..p-1`` must hold at least one stage.
        kind: the family it belongs to; a non-explicit kind must match its formula.
    """

    stage_to_rank: tuple[int, ...]
    kind: PlacementKind = PlacementKind.EXPLICIT

    def __post_init__(self) -> None:
        ranks = tuple(self.stage_to_rank)
        object.__setattr__(self, "stage_to_rank", ranks)
        object.__setattr__(self, "kind", PlacementKind(self.kind))
        if not ranks:
            raise ValueError("placement needs at least one stage")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in ranks):
            raise ValueError(f"stage_to_rank must hold non-negative ints, got {list(ranks)}")
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        if missing:
            raise ValueError(
                f"stage_to_rank {list(ranks)} leaves rank(s) {missing} without a stage; "
                "every rank 0..p-1 must hold at least one stage"
            )
        if self.kind is not PlacementKind.EXPLICIT:
            expected = _by_kind(self.kind, self.p, len(ranks))
            if expected != ranks:
                raise ValueError(
                    f"stage_to_rank {list(ranks)} is not a {self.kind.value!r} placement "
                    f"(expected {list(expected) if expected else 'a stage count it allows'}); "
                    "use kind='explicit' for a custom placement"
                )

    @property
    def p(self) -> int:
        """Number of ranks."""
        return max(self.stage_to_rank) + 1

    @property
    def num_stages(self) -> int:
        return len(self.stage_to_rank)

    def rank_of(self, stage: int) -> int:
        return self.stage_to_rank[stage]

    def stages_of(self, rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.stage_to_rank) if r == rank)

    @classmethod
    def standard(cls, p: int) -> Placement:
        return cls(_standard(p, p), PlacementKind.STANDARD)

    @classmethod
    def interleaved(cls, p: int, v: int) -> Placement:
        return cls(_interleaved(p, v * p), PlacementKind.INTERLEAVED)

    @classmethod
    def v_shape(cls, p: int) -> Placement:
        return cls(_waves(p, 2 * p), PlacementKind.V_SHAPE)

    @classmethod
    def waves(cls, p: int, w: int) -> Placement:
        return cls(_waves(p, 2 * w * p), PlacementKind.WAVES)

    @classmethod
    def explicit(cls, stage_to_rank: list[int] | tuple[int, ...]) -> Placement:
        return cls(tuple(stage_to_rank), PlacementKind.EXPLICIT)


def _check_p(p: int) -> None:
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"number of ranks must be a positive int, got {p!r}")


def _standard(p: int, num_stages: int) -> tuple[int, ...] | None:
    _check_p(p)
    return tuple(range(p)) if num_stages == p else None


def _interleaved(p: int, num_stages: int) -> tuple[int, ...] | None:
    _check_p(p)
    if num_stages < p or num_stages % p:
        return None
    return tuple(s % p for s in range(num_stages))


def _waves(p: int, num_stages: int) -> tuple[int, ...] | None:
    """Zig-zag: rank s % p on even passes over the ranks, p-1 - s % p on odd ones."""
    _check_p(p)
    if num_stages < 2 * p or num_stages % (2 * p):
        return None
    return tuple(s % p if (s // p) % 2 == 0 else p - 1 - s % p for s in range(num_stages))


def _by_kind(kind: PlacementKind, p: int, num_stages: int) -> tuple[int, ...] | None:
    if kind is PlacementKind.STANDARD:
        return _standard(p, num_stages)
    if kind is PlacementKind.INTERLEAVED:
        return _interleaved(p, num_stages)
    if kind is PlacementKind.V_SHAPE:
        return _waves(p, num_stages) if num_stages == 2 * p else None
    return _waves(p, num_stages)
