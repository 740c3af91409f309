"""What the search produces: evaluated candidates (`Candidate`), the search's outcome
(`Synthesis`), the smallest-cap error (`NoScheduleFits`) and how candidates are ranked.

Every candidate is judged the same way, whichever method made it: simulated (``ir.simulate``,
which runs ``ir.verify``'s structural rules first) with the costs of its own placement and slicing,
fitting when its simulated peak is within the cap on every rank, ranked by simulated makespan and
then peak. ``synth.search`` runs the methods; this module holds no search logic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ir import Costs, Op, Schedule, Timeline, simulate
from ir.verify import MEMORY_RTOL

__all__ = ["METHODS", "Candidate", "NoScheduleFits", "Synthesis", "best", "cap_argument", "evaluate", "rank_key",
           "show_bytes"]

# How a candidate was made: the library, a list scheduler, a tiled block, the full horizon.
METHODS = ("library", "list", "block", "full")


class NoScheduleFits(ValueError):
    """The cap is below every schedule pipesynth can build; ``smallest`` is the least cap that works."""

    def __init__(self, message: str, smallest: float) -> None:
        super().__init__(message)
        self.smallest = smallest


@dataclass(frozen=True)
class Candidate:
    """One evaluated schedule.

    Attributes:
        name: "synth-list/<placement>", "synth/<placement>" (block), "synth-full/<placement>" or
            the baseline's name.
        schedule: the schedule.
        costs: the costs it was simulated with.
        timeline: the simulation.
        fits: simulated peak <= cap on every rank.
        block: the solved block, for block candidates.
        seconds: time to build it, for synthesized candidates.
        horizon: the full-horizon solve's result, for the refined candidate.
        method: one of ``METHODS``.
    """

    name: str
    schedule: Schedule
    costs: Costs
    timeline: Timeline
    fits: bool
    block: Any = None
    seconds: float = 0.0
    horizon: Any = None
    method: str = "library"

    @property
    def synthesized(self) -> bool:
        return self.method != "library"

    @property
    def makespan(self) -> float:
        return self.timeline.makespan

    @property
    def peak(self) -> float:
        return max(self.timeline.peak)

    @property
    def placement(self) -> str:
        return self.schedule.placement.kind.value

    def decisions(self) -> str:
        """Recompute/offload per stage, e.g. ``recompute 0-3, offload 5`` or ``none``."""
        ops = {(a.op, a.stage) for _, _, a in self.schedule.actions()}
        rec = sorted({s for op, s in ops if op is Op.R})
        off = sorted({s for op, s in ops if op is Op.OFFLOAD})
        parts = [f"{label} {_ranges(stages)}" for label, stages in (("recompute", rec), ("offload", off)) if stages]
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Synthesis:
    """The search's outcome.

    Attributes:
        chosen: the fastest fitting candidate (synthesized or baseline; ties go to lower peak, then
            to a synthesized one).
        synthesized: the synthesized candidates (list schedulers and blocks), each placement's best
            of each method.
        baselines: every library schedule that was evaluated (none with ``--no-library``).
        skipped: ``(name, reason)`` for placements and baselines that gave nothing.
        mem_cap: the cap, bytes per rank (None: no cap).
        seconds: wall time of the whole search.
        bound: a lower bound on the makespan of any schedule on the chosen one's placement.
        refined: the full-horizon candidate (``optimize`` full or auto), if the solve ran.
        not_refined: why the full-horizon solve did not run (auto: the model is too large).
        time_limit: the search's time limit, seconds.
    """

    chosen: Candidate
    synthesized: tuple[Candidate, ...]
    baselines: tuple[Candidate, ...]
    skipped: tuple[tuple[str, str], ...]
    mem_cap: float | None
    seconds: float
    bound: Any = None
    refined: Candidate | None = None
    not_refined: str = ""
    time_limit: float = 0.0

    @property
    def gap(self) -> float | None:
        """The chosen schedule's distance from the bound, ``(makespan - bound) / makespan``."""
        from synth.horizon.refine import gap

        return gap(self.chosen.makespan, self.bound)

    @property
    def best_synthesized(self) -> Candidate | None:
        """The best fitting schedule that synthesis made alone (the library excluded)."""
        refined = () if self.refined is None else (self.refined,)
        return best((*self.synthesized, *refined))

    @property
    def best_baseline(self) -> Candidate | None:
        return best(self.baselines)

    def ranked(self) -> list[Candidate]:
        """Every candidate, fitting ones first, then by makespan and peak."""
        refined = () if self.refined is None else (self.refined,)
        return sorted((*refined, *self.synthesized, *self.baselines), key=rank_key)


def evaluate(name: str, schedule: Schedule, costs: Costs, mem_cap: float | None, *, method: str = "library",
             block: Any = None, seconds: float = 0.0, timeline: Timeline | None = None) -> Candidate:
    """``schedule`` simulated with ``costs`` (verify's structural rules, deadlock included, run
    first) and judged against ``mem_cap``."""
    if timeline is None:
        timeline = simulate(schedule, costs)
    fits = mem_cap is None or max(timeline.peak) <= mem_cap * (1 + MEMORY_RTOL)
    return Candidate(name, schedule, costs, timeline, fits, block, seconds, method=method)


def rank_key(c: Candidate) -> tuple:
    """Fitting first, then the shorter makespan, then the lower peak."""
    return (not c.fits, round(c.makespan, 9), round(c.peak, 3))


def best(candidates) -> Candidate | None:
    """The best fitting candidate (ties: lower peak, then synthesized), or None."""
    fitting = [c for c in candidates if c.fits]
    return min(fitting, key=lambda c: (*rank_key(c), not c.synthesized)) if fitting else None


def show_bytes(nbytes: float) -> str:
    """Bytes as GiB, or as a plain number for unit-cost problems (below 1 MB)."""
    from synth.sizes import format_size

    return format_size(nbytes) if nbytes >= 1e6 else f"{nbytes:g}"


def cap_argument(nbytes: float) -> str:
    """A ``--mem-cap`` value of at least ``nbytes``: GB rounded up to 0.01 GB (plain below 1 MB)."""
    return f"{math.ceil(nbytes / 1e7 - 1e-9) / 100:.2f}GB" if nbytes >= 1e6 else f"{_up(nbytes)}"


def _up(x: float) -> str:
    """``x`` in the fewest significant digits (6, 10 or all) whose value is not below ``x``, so the
    cap the error names always fits."""
    for text in (f"{x:.6g}", f"{x:.10g}"):
        if float(text) >= x:
            return text
    return repr(x)


def _ranges(stages: list[int]) -> str:
    parts, i = [], 0
    while i < len(stages):
        j = i
        while j + 1 < len(stages) and stages[j + 1] == stages[j] + 1:
            j += 1
        parts.append(str(stages[i]) if i == j else f"{stages[i]}-{stages[j]}")
        i = j + 1
    return ",".join(parts)
