"""Smoke tests of benchmarks/synth_quality.py's helpers (no solver runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ir import Placement

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "synth_quality.py"
_SPEC = importlib.util.spec_from_file_location("synth_quality", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_even_costs_split_a_full_stage_over_the_placement():
    costs = bench.even_costs(Placement.v_shape(4), 1, **bench.PER_STAGE["zb-1.5b"])
    unit = costs.unit(0)
    assert costs.num_stages == 8 and not costs.static
    assert unit.f == pytest.approx(18.522 / 2) and unit.act == pytest.approx(0.5)
    assert unit.wact == pytest.approx(0.5 * 14 / 34) and unit.inp == pytest.approx(0.5 / 16)
    assert unit.act / costs.copy_bandwidth == pytest.approx(unit.f)  # copying takes one forward time


def test_unit_cap_is_a_fraction_of_one_f_one_b_peak():
    assert bench.one_f_one_b_peak(bench.costs_function("unit", 8), 4, 8) == pytest.approx(4.0)


def test_llama_costs_have_no_static_memory_and_skip_unfillable_placements():
    costs_for = bench.costs_function("llama2-13b", 32)
    assert not costs_for(Placement.standard(16), 1).static
    placements, skipped = bench.usable_placements(costs_for, 16)
    assert placements == ("standard", "interleaved", "v") and skipped[0].startswith("waves:")


def test_ratios_and_flags():
    row = {"synth": ("v", 9.0, True, 1.0), "baseline": ("zb-v", 10.0, 1.0), "chosen": ("synth/v", 9.0)}
    assert bench.ratios(row) == pytest.approx((0.9, 0.9)) and not bench.only_synth(row)
    row = {"synth": ("v", 9.0, True, 1.0), "baseline": None, "chosen": ("synth/v", 9.0)}
    assert bench.ratios(row) == (None, None) and bench.only_synth(row)
    assert len(bench.cells(bench.PS, bench.COSTS, quick=False)) == 108
    assert len(bench.cells((4,), bench.COSTS, quick=True)) == 12
