"""What every baseline module shares: the `Baseline` entry and argument checks.

Each schedule family is one small module under ``synth/baselines/`` that defines
``BASELINE = Baseline(...)``; ``synth.baselines`` collects them into the registry.
A builder takes ``(p, m, *, costs=None, **options)`` and returns an ``ir.Schedule``;
``costs`` (an ``ir.Costs``) is used only by families whose order depends on pass times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ir import Costs, Schedule, UnitCost

__all__ = ["Baseline", "check_positive", "even_split_costs"]


@dataclass(frozen=True, slots=True)
class Baseline:
    """One hand-designed schedule family.

    Attributes:
        name: registry key, as the CLI and benchmarks spell it (``"zb-h1"``).
        build: ``build(p, m, *, costs=None, **options) -> Schedule``.
        summary: one line for listings.
        source: the paper or code it follows.
        options: option name -> default value (e.g. ``{"v": 2}`` for interleaved).
    """

    name: str
    build: Callable[..., Schedule]
    summary: str
    source: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, p: int, m: int, **kwargs: Any) -> Schedule:
        unknown = set(kwargs) - set(self.options) - {"costs"}
        if unknown:
            allowed = ", ".join(sorted({"costs", *self.options})) or "none"
            raise ValueError(f"baseline {self.name!r} takes no option(s) {sorted(unknown)}; allowed: {allowed}")
        schedule = self.build(p, m, **{**self.options, **kwargs})
        return schedule.with_programs(schedule.ranks, baseline=self.name)


def check_positive(**values: int) -> None:
    """Raise ValueError naming any value that is not a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def even_split_costs(
    schedule: Schedule,
    *,
    f: float,
    b: float,
    w: float,
    comm: float = 0.0,
    act: float = 1.0,
    wact: float = 0.0,
    inp: float = 0.0,
    copy_bandwidth: float = math.inf,
) -> Costs:
    """Costs given per full stage (1/p of the model), split evenly over each rank's stages and
    the slices: a family with c stages per rank and k slices gets ``f / (c k)`` per unit, and so
    on for b, w, act, wact and inp; comm latency and copy bandwidth are kept as given."""
    share = schedule.p / (schedule.num_stages * schedule.k)
    unit = UnitCost(f=f * share, b=b * share, w=w * share, act=act * share, wact=wact * share,
                    inp=inp * share, comm=comm)
    return Costs(tuple((unit,) * schedule.k for _ in range(schedule.num_stages)), copy_bandwidth=copy_bandwidth)
