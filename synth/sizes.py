"""The one way pipesynth reads and prints byte sizes.

``parse_size`` accepts a plain number of bytes (``"4e10"``, ``40000000000``) or a number with a
unit: SI units are powers of 1000 (``kB``, ``MB``, ``GB``, ``TB``) and IEC units powers of 1024
(``KiB``, ``MiB``, ``GiB``, ``TiB``), as NIST and ``numfmt`` define them. So ``40GB`` is
40e9 bytes and ``40GiB`` is 42,949,672,960 bytes; an A100 "40GB" card holds 40 GiB, which is
why the hardware presets state their memory in GiB. Units are case-insensitive except that a
lone ``b`` means bytes (there is no bit unit here).
"""

from __future__ import annotations

import math
import re

__all__ = ["format_size", "parse_size"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int | float) -> float:
    """Bytes in ``text`` (``"40GB"`` -> 4e10, ``"40GiB"`` -> 42949672960.0, ``"4e10"`` -> 4e10).

    Raises:
        ValueError: not a number with an optional known unit, or not finite and > 0.
    """
    if isinstance(text, bool):
        raise ValueError(f"a size must be a number of bytes or a string like '40GB', got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _PATTERN.match(str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"cannot read size {text!r}: write a number of bytes with an optional unit, e.g. 40GB "
                "(1e9 bytes per GB) or 40GiB (2**30 bytes per GiB)"
            )
        value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a size must be a finite number of bytes > 0, got {text!r}")
    return value


def format_size(nbytes: float, unit: str = "GiB", digits: int = 2) -> str:
    """``nbytes`` in ``unit`` (any unit `parse_size` knows), e.g. ``format_size(2**31) == '2.00 GiB'``."""
    scale = _UNITS.get(unit.lower())
    if scale is None:
        raise ValueError(f"unknown size unit {unit!r}; use one of B, kB, MB, GB, TB, KiB, MiB, GiB, TiB")
    return f"{nbytes / scale:.{digits}f} {unit}"
