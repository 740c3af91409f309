"""pipesynth's schedule IR: ops, actions, placements and schedules, with their
checker (`verify`), simulator (`simulate`), comm lowering (`lower`), text forms
(JSON, torch CSV) and pictures (Gantt PNG, Chrome trace).

Depends on nothing else in this repository; ``synth`` and ``backends`` build on it.
"""

from ir.actions import Action, Op, Stream, parse_action
from ir.costs import Costs, UnitCost
from ir.errors import ScheduleError, Violation
from ir.lower import lower
from ir.placement import Placement, PlacementKind
from ir.schedule import Schedule
from ir.simulate import Span, Timeline, simulate
from ir.verify import find_violations, verify

__all__ = [
    "Action",
    "Costs",
    "Op",
    "Placement",
    "PlacementKind",
    "Schedule",
    "ScheduleError",
    "Span",
    "Stream",
    "Timeline",
    "UnitCost",
    "Violation",
    "find_violations",
    "lower",
    "parse_action",
    "simulate",
    "verify",
]
