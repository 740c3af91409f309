"""Smoke test of benchmarks/solver_scaling.py on small cells (CP-SAT, LNS, the block, the list
schedulers), and of its tightening table."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "solver_scaling.py"
_SPEC = importlib.util.spec_from_file_location("solver_scaling", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

ARGS = argparse.Namespace(milp_max_jobs=10, cpsat_max_jobs=12_000, lns_min_jobs=50)


def test_one_cell_full_horizon_is_never_worse_than_the_block_and_within_its_bound():
    rows = bench.run_cell(4, 6, 0.5, ("block", "construct", "cpsat", "lns", "highs"), 10.0, ARGS)
    by = {row["solver"]: row for row in rows}
    assert by["cpsat"]["makespan"] <= min(by["block"]["makespan"], by["construct"]["makespan"])
    assert by["lns"]["makespan"] <= by["construct"]["makespan"]
    assert by["cpsat"]["bound"] <= by["cpsat"]["makespan"] and by["lns"]["bound"] <= by["cpsat"]["makespan"]
    assert by["block"]["bound"] == by["cpsat"]["analytic"] <= by["cpsat"]["bound"]
    assert by["highs"]["status"] == "not run (72 jobs > 10)"  # 4 stages x 6 microbatches x 3 passes
    lines = bench.summarize(rows)
    assert any("worse than the best of the block and the list schedulers: 0 of 1" in line for line in lines)


def test_cap_is_a_fraction_of_one_f_one_b_peak():
    # 1F1B holds p microbatches on rank 0 (act 1 each).
    assert bench.one_f_one_b_peak(4, 8) == 4.0
