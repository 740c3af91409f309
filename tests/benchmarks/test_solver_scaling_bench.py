"""Smoke test of benchmarks/solver_scaling.py on one small cell (CP-SAT and the block only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "solver_scaling.py"
_SPEC = importlib.util.spec_from_file_location("solver_scaling", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_one_cell_full_horizon_is_never_worse_than_the_block_and_within_its_bound():
    rows = bench.run_cell(4, 6, 0.5, ("block", "cpsat", "highs"), 10.0, milp_max_jobs=10)
    by = {row["solver"]: row for row in rows}
    assert by["cpsat"]["makespan"] <= by["block"]["makespan"]
    assert by["cpsat"]["bound"] <= by["cpsat"]["makespan"]
    assert by["block"]["bound"] == by["cpsat"]["analytic"] <= by["cpsat"]["bound"]
    assert by["highs"]["status"] == "not run (72 jobs > 10)"  # 4 stages x 6 microbatches x 3 passes
    lines = bench.summarize(rows)
    assert any("worse than the block: 0 of 1" in line for line in lines)


def test_cap_is_a_fraction_of_one_f_one_b_peak():
    # 1F1B holds p microbatches on rank 0 (act 1 each).
    assert bench.one_f_one_b_peak(4, 8) == 4.0
