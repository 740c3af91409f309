"""Errors of the IR: a `Violation` names the rank, the action and the broken rule."""

from __future__ import annotations

from dataclasses import dataclass

from ir.actions import Action

__all__ = ["Violation", "ScheduleError"]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: ``rank`` and ``action`` locate it (None where no single one does)."""

    rule: str
    rank: int | None
    action: Action | None
    detail: str

    def __str__(self) -> str:
        where = []
        if self.rank is not None:
            where.append(f"rank {self.rank}")
        if self.action is not None:
            where.append(f"action {self.action}")
        prefix = ", ".join(where)
        return f"{prefix}: [{self.rule}] {self.detail}" if prefix else f"[{self.rule}] {self.detail}"


class ScheduleError(ValueError):
    """A schedule broke one or more rules; ``violations`` lists them all."""

    def __init__(self, violations: list[Violation], limit: int = 12) -> None:
        self.violations = list(violations)
        shown = [str(v) for v in self.violations[:limit]]
        more = len(self.violations) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more")
        noun = "violation" if len(self.violations) == 1 else "violations"
        super().__init__(f"invalid schedule ({len(self.violations)} {noun}):\n  " + "\n  ".join(shown))

    @property
    def rules(self) -> set[str]:
        return {v.rule for v in self.violations}
