"""The schedule library: every hand-designed schedule family as an IR generator.

``BASELINES`` maps a name to its `Baseline`; ``build(name, p, m, **options)`` makes
the schedule. One module per family; each docstring cites its source and states its
bubble and peak-memory formulas.
"""

from __future__ import annotations

from typing import Any

from ir import Schedule
from synth.baselines.chronospipe import CHRONOS_OFFLOAD as _CHRONOS_OFFLOAD
from synth.baselines.chronospipe import CHRONOS_PIPE as _CHRONOS_PIPE
from synth.baselines.chronospipe import CHRONOS_RECOMP as _CHRONOS_RECOMP
from synth.baselines.common import Baseline
from synth.baselines.controllable_memory import V_HALF as _V_HALF
from synth.baselines.controllable_memory import V_MIN as _V_MIN
from synth.baselines.dualpipev import BASELINE as _DUALPIPEV
from synth.baselines.gpipe import BASELINE as _GPIPE
from synth.baselines.hanayo import BASELINE as _HANAYO
from synth.baselines.interleaved import BASELINE as _INTERLEAVED
from synth.baselines.one_f_one_b import BASELINE as _ONE_F_ONE_B
from synth.baselines.one_f_one_b import RECOMPUTE as _ONE_F_ONE_B_RECOMPUTE
from synth.baselines.pipeoffload import PO_F as _PO_F
from synth.baselines.pipeoffload import PO_H as _PO_H
from synth.baselines.seq1f1b import BASELINE as _SEQ1F1B
from synth.baselines.seq1f1b import INTERLEAVED as _SEQ1F1B_I
from synth.baselines.slimpipe import BASELINE as _SLIMPIPE
from synth.baselines.slimpipe import LEAN as _SLIMPIPE_LEAN
from synth.baselines.v_zb import BASELINE as _V_ZB
from synth.baselines.zb_v import BASELINE as _ZB_V
from synth.baselines.zero_bubble import BASELINE as _ZB_H1
from synth.baselines.zero_bubble import BASELINE_H2 as _ZB_H2

__all__ = ["BASELINES", "Baseline", "build", "names"]

BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        _GPIPE,
        _ONE_F_ONE_B,
        _ONE_F_ONE_B_RECOMPUTE,
        _INTERLEAVED,
        _ZB_H1,
        _ZB_H2,
        _ZB_V,
        _V_ZB,
        _V_HALF,
        _V_MIN,
        _HANAYO,
        _SEQ1F1B,
        _SEQ1F1B_I,
        _SLIMPIPE,
        _SLIMPIPE_LEAN,
        _DUALPIPEV,
        _PO_H,
        _PO_F,
        _CHRONOS_PIPE,
        _CHRONOS_RECOMP,
        _CHRONOS_OFFLOAD,
    )
}


def names() -> list[str]:
    return list(BASELINES)


def build(name: str, p: int, m: int, **options: Any) -> Schedule:
    """The ``name`` schedule for ``p`` ranks and ``m`` microbatches.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad options.
    """
    try:
        baseline = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None
    return baseline(p, m, **options)
