"""The one problem object every synthesis method reads: costs per placement and slicing, the
shape (p, m, k), the memory cap, the variants allowed and the time budget.

``synth.search`` builds one `SynthProblem` per run and hands it to each method (``synth.construct``,
``synth.block``, ``synth.horizon``); a method is a function from it (a placement kind, and hints)
to candidate schedules. The costs themselves come from ``costs_for(placement, k) -> ir.Costs``
(the cost model, a user's ``--costs`` file, or unit costs in tests), cached here so every method
and every candidate on one placement sees the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ir import Costs, Op, Placement, Schedule

__all__ = ["Budget", "CostsFor", "Pace", "SynthProblem", "Variants"]

CostsFor = Callable[[Placement, int], Costs]


@dataclass(frozen=True, slots=True)
class Variants:
    """What a schedule may do beyond forward and backward.

    Attributes:
        split_backward: B and W as separate passes (else one BW per unit).
        recompute: a unit may keep only its input and recompute (R) before its backward.
        offload: a unit's activations may go to host (OFFLOAD) and come back (RELOAD).
    """

    split_backward: bool = True
    recompute: bool = True
    offload: bool = True

    @property
    def keep_only(self) -> Variants:
        """The restricted problem: neither recompute nor offload (solved first, hinting the larger one)."""
        return Variants(self.split_backward, False, False)

    @property
    def extended(self) -> bool:
        """Whether recompute or offload is allowed (so a restricted problem exists)."""
        return self.recompute or self.offload

    def allows(self, schedule: Schedule) -> str | None:
        """None if ``schedule`` uses only allowed ops, else why not (for the skipped list)."""
        ops = schedule.ops_used()
        if Op.R in ops and not self.recompute:
            return "recomputes (--no-recompute)"
        if Op.OFFLOAD in ops and not self.offload:
            return "offloads (--no-offload)"
        if not self.split_backward and (Op.B in ops or Op.W in ops):
            return "splits the backward (--no-split-backward)"
        return None


class Budget:
    """One time limit for the whole search: ``left()`` seconds remain until ``deadline``."""

    def __init__(self, seconds: float) -> None:
        self.began = time.perf_counter()
        self.seconds = seconds
        self.deadline = self.began + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def until(self, fraction: float) -> float:
        """The instant ``fraction`` of the whole budget after the start (a phase's deadline)."""
        return self.began + fraction * self.seconds


# Seconds per action of the steps whose work grows with the schedule (p, m, k and chunks), measured
# on the 2-core reference machine at p = 8, m = 1000 (llama2-13b, every placement): one list-
# scheduler variant (run and timeline), verifying and simulating a schedule, a squeeze (a
# simulation, then up to three list schedules each timed), and the full horizon's set-up
# around its solve (hints, model, squeeze). A run measures its own and predicts with the slowest
# rate it has seen; a step it has not timed yet is scaled by how much slower than these the steps
# it has timed ran.
REFERENCE_RATES = {"list": 3e-5, "evaluate": 3.5e-5, "squeeze": 1.5e-4, "refine": 2.5e-4}
# A step predicted to take less than this always runs: the time-limit rules are for work that grows
# with the problem, not for the small problems whose steps the budget's shares already pace.
SMALL_STEP = 0.25


class Pace:
    """Predicts how long a step that is linear in the actions will take, from this run's own
    timings (`record`), so the search can skip what would overrun its time limit."""

    def __init__(self) -> None:
        self.rates: dict[str, float] = {}

    def predict(self, step: str, actions: int) -> float:
        """Seconds ``step`` should take on a schedule of ``actions`` actions."""
        if step in self.rates:
            return self.rates[step] * actions
        slower = max((rate / REFERENCE_RATES[name] for name, rate in self.rates.items()), default=1.0)
        return REFERENCE_RATES[step] * max(1.0, slower) * actions

    def record(self, step: str, actions: int, seconds: float) -> None:
        if actions > 0:
            self.rates[step] = max(self.rates.get(step, 0.0), seconds / actions)

    def timed(self, step: str, actions: int):
        """A context manager that records the step's time on exit."""
        return _Timed(self, step, actions)


class _Timed:
    def __init__(self, pace: Pace, step: str, actions: int) -> None:
        self.pace, self.step, self.actions = pace, step, actions

    def __enter__(self) -> _Timed:
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.pace.record(self.step, self.actions, time.perf_counter() - self.began)


@dataclass
class SynthProblem:
    """One synthesis run's problem.

    Attributes:
        costs_for: ``costs_for(placement, k)`` gives the costs of that placement and slicing.
        p: ranks.
        m: microbatches.
        k: sequence slices of the synthesized schedules.
        mem_cap: bytes per rank (None: no cap).
        variants: what schedules may do (recompute and offload only when k = 1).
        budget: the time limit of the whole search.
    """

    costs_for: CostsFor
    p: int
    m: int
    k: int
    mem_cap: float | None
    variants: Variants
    budget: Budget
    pace: Pace = field(default_factory=Pace, repr=False)
    phase: Callable[[str], None] = field(default=lambda what: None, repr=False)  # told as each step starts
    _cache: dict = field(default_factory=dict, repr=False)

    def actions(self, placement: Placement, k: int | None = None) -> int:
        """Actions in a schedule of ``placement`` (F, B and W per unit; BW fused counts as two):
        the size the linear steps scale with."""
        return len(placement.stage_to_rank) * self.m * (self.k if k is None else k) * 3

    def fits_in_time(self, step: str, actions: int, deadline: float) -> bool:
        """Whether ``step`` on ``actions`` actions is predicted to end by ``deadline`` (or is too
        small to matter: under ``SMALL_STEP`` seconds)."""
        seconds = self.pace.predict(step, actions)
        return seconds < SMALL_STEP or time.perf_counter() + seconds <= deadline

    def costs(self, placement: Placement, k: int | None = None) -> Costs:
        """The costs of ``placement`` with ``k`` slices (default: the problem's), computed once.

        Raises:
            ValueError: the costs cannot be built for it (e.g. a model too short for its stages).
        """
        key = (placement.stage_to_rank, self.k if k is None else k)
        if key not in self._cache:
            try:
                self._cache[key] = self.costs_for(placement, key[1])
            except ValueError as err:
                self._cache[key] = err
        value = self._cache[key]
        if isinstance(value, ValueError):
            raise value
        return value
