"""Our torch CSVs on torch's real ``_PipelineScheduleRuntime`` (2 gloo processes, a tiny model;
``tests/ir/torch_runtime_peer.py``): both formats give the gradients of a single-process run;
without REDUCE_GRAD a compute_comms file gives them ``m`` times too large; and a last stage that
runs its forwards out of microbatch order breaks torch's runtime (what `check_torch_runnable`
refuses and `torch_order` renumbers)."""

from __future__ import annotations

import re

import pytest

from ir import Op, Placement, Schedule, verify
from ir.examples import greedy, one_f_one_b
from ir.torch_csv import to_torch_csv, torch_order
from tests.ir.test_torch_csv import _out_of_order_waves
from tests.ir.torch_runtime_peer import run_on_torch

P = 2
_CELLS = {Op.F: "F", Op.B: "I", Op.W: "W", Op.BW: "B"}
# Both forwards before either backward, so torch has both losses, but in the order 1, 0: the
# backward of microbatch 0 gets microbatch 1's loss.
SWAPPED = Schedule(Placement.standard(P), 2, [["0F0", "0F1", "0BW0", "0BW1"], ["1F1", "1F0", "1BW0", "1BW1"]])
RUNNABLE = {
    "1f1b": lambda: one_f_one_b(P, 4),
    "1f1b split": lambda: one_f_one_b(P, 3, split_backward=True),
    "greedy v split": lambda: greedy(Placement.v_shape(P), 4, split_backward=True),
    "greedy interleaved": lambda: greedy(Placement.interleaved(P, 2), 4),
    "greedy waves renumbered": lambda: torch_order(_out_of_order_waves()[1]).schedule,
    "swapped renumbered": lambda: torch_order(SWAPPED).schedule,
}


def _raw_cells(schedule) -> str:
    """Compute-only text written by hand, past the export's refusal (for the orders it refuses)."""
    return "".join(",".join(f"{a.stage}{_CELLS[a.op]}{a.microbatch}" for a in prog) + "\n" for prog in schedule.ranks)


def _case(folder, name, text, fmt, schedule):
    path = folder / f"{re.sub(r'[^a-z0-9]+', '-', name)}.csv"
    path.write_text(text)
    return {"name": name, "csv": str(path), "format": fmt, "m": schedule.m,
            "stage_to_rank": list(schedule.placement.stage_to_rank)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case in one batch (a fresh process group after each case torch's runtime raises on)."""
    folder = tmp_path_factory.mktemp("torch-runtime")
    cases = []
    for name, make in RUNNABLE.items():
        schedule = make()
        for fmt in ("compute_only", "compute_comms"):
            cases.append(_case(folder, f"{name} {fmt}", to_torch_csv(schedule, format=fmt), fmt, schedule))
    one = one_f_one_b(P, 4)
    stripped = re.sub(r",\d+REDUCE_GRAD", "", to_torch_csv(one, format="compute_comms"))
    cases.append(_case(folder, "no reduce_grad", stripped, "compute_comms", one))
    _, shuffled = _out_of_order_waves()  # last stage runs microbatches 0, 2, 3, 1
    cases.append(_case(folder, "out of order", _raw_cells(shuffled), "compute_only", shuffled))
    verify(SWAPPED)
    cases.append(_case(folder, "swapped", _raw_cells(SWAPPED), "compute_only", SWAPPED))
    return run_on_torch(cases, P, folder)


@pytest.mark.parametrize("fmt", ["compute_only", "compute_comms"])
@pytest.mark.parametrize("name", list(RUNNABLE))
def test_torch_runtime_gives_single_process_gradients(runs, name, fmt):
    report = runs[f"{name} {fmt}"]
    assert report["error"] is None, report["error"]


def test_compute_comms_without_reduce_grad_gives_m_times_the_gradients(runs):
    report = runs["no reduce_grad"]
    assert not report["fatal"] and "gradients differ from a single-process run" in report["error"]
    assert "Greatest relative difference: 3.0" in report["error"]  # m - 1 = 3: every gradient m = 4 times too large


def test_torch_runtime_fails_when_the_last_stage_runs_microbatches_out_of_order(runs):
    # The i-th loss torch's last stage computed is microbatch order[i]'s, but it is used for microbatch i.
    report = runs["out of order"]  # last stage's forwards 0, 2, 3, 1; its backward of 2 comes after two forwards
    assert report["fatal"] and report["rank"] == 0, report  # rank 0 holds the last stage of waves
    assert "RuntimeError: Loss for microbatch 2 is not available" in report["error"], report["error"]


def test_torch_runtime_fails_when_the_last_stage_has_every_loss_in_another_order(runs):
    report = runs["swapped"]  # losses [L1, L0]: microbatch 0's backward runs through microbatch 1's graph
    assert report["fatal"] and report["rank"] == 1, report
    assert "Failed to run stage backward" in report["error"], report["error"]
