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

__all__ = ["Budget", "CostsFor", "SynthProblem", "Variants"]

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
    _cache: dict = field(default_factory=dict, repr=False)

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
