"""The block model's resolution: cost units per tick, bytes per memory unit, and what rounding costs.

``synth.block.spec`` turns costs into integers with these helpers. The tick is exact whenever
it can be: the greatest common divisor of every pass duration and every comm latency the model
pays (ranks differ), as long as the longest then stays within ``4 * target`` ticks. Otherwise the
durations alone keep an exact divisor, refined to about ``target`` ticks for the longest so the
latencies round up by less than a tick; with no such divisor, ``longest / target``. Everything
rounds up, so the model's times never undercut the real ones; `rounding` says by how much.
"""

from __future__ import annotations

import math

__all__ = ["mem_unit", "round_up", "rounding", "tick", "whole"]


def round_up(x: float) -> int:
    """``ceil(x)``, forgiving float noise just above a whole number."""
    return math.ceil(x - 1e-9)


def whole(x: float) -> bool:
    return abs(x - round(x)) <= 1e-9 * max(1.0, abs(x))


def _divisor(values: list[float]) -> float | None:
    """The gcd of ``values`` if all are whole multiples of 1e-6 cost units, else None."""
    micro = [round(v * 1e6) for v in values]
    if not all(abs(m - v * 1e6) < 1e-3 for m, v in zip(micro, values, strict=True)):
        return None
    return math.gcd(*micro) / 1e6


def tick(durations: list[float], latencies: list[float], target: int) -> float:
    """Cost units per tick for these positive durations and latencies (see the module docstring).

    Raises:
        ValueError: no positive duration (the caller words the error).
    """
    if not durations:
        raise ValueError("every pass takes zero time")
    longest = max(durations)
    every = _divisor(durations + latencies)
    if every is not None and max(durations + latencies) / every <= 4 * target:
        return every
    base = _divisor(durations)
    if base is not None and longest / base <= 4 * target:
        # durations stay exact; a finer multiple of their divisor rounds the latencies less
        return base / max(1, math.floor(target * base / longest))
    return longest / target


def rounding(values: list[float], size: float, at_least_one: bool = False) -> float:
    """The largest ``rounded - real`` (cost units) over ``values`` in units of ``size``; with
    ``at_least_one`` a positive value takes at least one unit (as pass durations do)."""
    worst = 0.0
    for v in values:
        units = round_up(v / size)
        if at_least_one and v > 0:
            units = max(1, units)
        worst = max(worst, units * size - v)
    return 0.0 if worst < 1e-9 * max([1.0, *values]) else worst


def mem_unit(sizes: list[float], target: int = 1000) -> float:
    """Bytes per memory unit: the exact divisor of ``sizes`` if one keeps the largest within
    ``4 * target`` units, else ``largest / target`` (bytes then round up)."""
    if not sizes:
        return 1.0
    base = _divisor(sizes)
    if base is not None and max(sizes) / base <= 4 * target:
        return base
    return max(sizes) / target
