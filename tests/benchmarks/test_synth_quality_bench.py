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


def test_ratio_and_the_more_options_check():
    scratch = {"fits": True, "makespan": 9.0, "seconds": 1.0}
    row = {"scratch": scratch, "baseline": ("zb-v", 10.0, 1.0), "keep_only": {"fits": True, "makespan": 9.5}}
    assert bench.ratio(row) == pytest.approx(0.9) and bench.monotone(row) is True
    row = {**row, "keep_only": {"fits": True, "makespan": 8.0}}
    assert bench.monotone(row) is False  # the keep-only search was faster: more options lost
    row = {**row, "baseline": None, "keep_only": {"fits": False}}
    assert bench.ratio(row) is None and bench.monotone(row) is None
    assert len(bench.cells(bench.PS, bench.COSTS, quick=False)) == 108
    assert len(bench.cells((4,), bench.COSTS, quick=True)) == 12


def test_library_is_the_best_fitting_k1_family():
    # unit costs p = 4, m = 8, cap 4 = 1F1B's peak: zb-v fits (peak = 1F1B's) with makespan
    # 3m + (p - 1)/2 = 25.5 (README's closed form), the best of the k = 1 families at that cap
    name, makespan, _ = bench.library(bench.costs_function("unit", 8), 4, 8, 4.0)
    assert makespan == pytest.approx(25.5) and name in {"zb-v", "dualpipev"}
