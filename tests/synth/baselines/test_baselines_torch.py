"""Peer check for the whole library: every registered baseline that torch's runtime can
express (no R, OFFLOAD/RELOAD or slices) exports to torch CSV, and torch's own
``_PipelineScheduleRuntime`` loads, validates and lowers it, and its dry-run simulator
finds no deadlock; run for real (4 gloo processes, ``tests/ir/torch_runtime_peer.py``), both
its compute-only and its compute_comms CSV give the gradients of a single-process run; the
others are refused by the export with a reason."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ir import Op, lower, verify
from ir.torch_csv import FORMATS, TorchCsvError, to_torch_csv, write_torch_csv
from synth.baselines import BASELINES, build
from tests.ir.torch_runtime_peer import run_on_torch

PEER = Path(__file__).resolve().parents[2] / "ir" / "torch_peer.py"
P, M = 4, 8
_TORCH_LESS = {Op.R, Op.OFFLOAD, Op.RELOAD}


def _expressible(schedule):
    return schedule.k == 1 and not (schedule.ops_used() & _TORCH_LESS)


@pytest.fixture(scope="module")
def peer_reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("library")
    cases, schedules = [], {}
    for name in BASELINES:
        schedule = build(name, P, M)
        if not _expressible(schedule):
            continue
        csv = write_torch_csv(schedule, folder / f"{name}.csv")
        lowered = write_torch_csv(schedule, folder / f"{name}.lowered.csv", format="compute_comms")
        stages = ",".join(str(s) for s in schedule.placement.stages_of(0))
        cases.append({"name": name, "csv": str(csv), "lowered": str(lowered), "m": M,
                      "num_stages": schedule.num_stages, "stages": stages})
        schedules[name] = schedule
    spec = folder / "cases.json"
    spec.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(PEER), "--p", str(P), "--batch", str(spec)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return schedules, json.loads(proc.stdout)


@pytest.mark.parametrize("name", list(BASELINES))
def test_torch_runtime_accepts_or_export_refuses(name, peer_reports):
    schedules, reports = peer_reports
    if name not in schedules:
        schedule = build(name, P, M)
        verify(schedule)
        with pytest.raises(TorchCsvError):
            to_torch_csv(schedule)
        return
    schedule, report = schedules[name], reports[name]
    assert report["stage_to_rank"] == {str(s): r for s, r in enumerate(schedule.placement.stage_to_rank)}
    assert report["simulate_error"] is None, report["simulate_error"]
    assert report["lowered"]["simulate_error"] is None, report["lowered"]["simulate_error"]
    # torch's lowering and ours send the same number of messages of each kind
    ours = lower(schedule)
    for rank in range(P):
        torch_comms = sorted(c for c in report["with_comms"][str(rank)] if "SEND" in c or "RECV" in c)
        assert torch_comms == sorted(str(a) for a in ours.ranks[rank] if a.op.is_comm)


@pytest.fixture(scope="module")
def runtime_reports(peer_reports, tmp_path_factory):
    """Every expressible baseline in both formats on torch's real runtime, one process group."""
    schedules, _ = peer_reports
    folder = tmp_path_factory.mktemp("library-run")
    cases = []
    for name, schedule in schedules.items():
        for fmt in FORMATS:
            csv = write_torch_csv(schedule, folder / f"{name}.{fmt}.csv", format=fmt)
            cases.append({"name": f"{name} {fmt}", "csv": str(csv), "format": fmt, "m": M,
                          "stage_to_rank": list(schedule.placement.stage_to_rank)})
    return schedules, run_on_torch(cases, P, folder)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(BASELINES))
def test_torch_runtime_gives_single_process_gradients_or_export_refuses(name, fmt, runtime_reports):
    schedules, _ = runtime_reports
    if name not in schedules:  # refused, with the reason
        with pytest.raises(TorchCsvError, match="no recompute/offload op|no sequence slices"):
            to_torch_csv(build(name, P, M), format=fmt)
        return
    report = runtime_reports[1][f"{name} {fmt}"]
    assert report["error"] is None, report["error"]
