"""Peer check helper: let torch's own pipelining runtime load and lower a torch CSV.

Run as a script (``python3 tests/ir/torch_peer.py CSV --p 4 --m 8 --num-stages 8
--stages 0,7``) so that torch.distributed's process group lives in its own process,
not in pytest's. It joins a fake process group as rank 0 of ``p``, builds real
``PipelineStage``s for rank 0's stages, has ``_PipelineScheduleRuntime._load_csv``
read and lower the file, runs torch's ``_simulate_comms_compute`` on the lowered
order, and prints one JSON object to stdout:

    {"stage_to_rank": {...}, "pipeline_order": {rank: [cells]},
     "with_comms": {rank: [cells]}, "simulate_error": null or text,
     "simulated_steps": int or null,
     "lowered": {"simulate_error": ..., "simulated_steps": ...}}

``lowered`` is there when ``--lowered CSV`` names an already lowered schedule
(pipesynth's ``ir.lower``, written in torch's "compute_comms" format): torch loads it
as such and simulates it as it stands (without its REDUCE_GRAD cells, which the
dry-run simulator does not know). ``tests/ir/torch_runtime_peer.py`` runs CSVs for real.

With ``--batch FILE`` (a JSON list of objects with the keys csv, m, num_stages, stages
and name, all for the same ``--p``) it checks every case in one process and prints
``{name: report}``; ``tests/synth/baselines/test_baselines_torch.py`` uses it for the library.

``with_comms`` leaves out torch's FSDP/DP ops (UNSHARD, RESHARD, REDUCE_GRAD),
which pipesynth does not model. It imports nothing from pipesynth, so the answer is
torch's alone. Used by ``tests/ir/test_torch_csv.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime, _simulate_comms_compute
from torch.testing._internal.distributed.fake_pg import FakeStore

_FSDP_OPS = {"UNSHARD", "RESHARD", "REDUCE_GRAD"}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=args.p)
    try:
        if args.batch:
            with open(args.batch) as f:
                cases = json.load(f)
            report = {c["name"]: _load_and_lower(_case_args(args, c)) for c in cases}
        else:
            report = _load_and_lower(args)
    finally:
        dist.destroy_process_group()
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", help="torch CSV (compute-only) to load")
    parser.add_argument("--p", type=int, required=True, help="number of ranks")
    parser.add_argument("--m", type=int, help="number of microbatches")
    parser.add_argument("--num-stages", type=int, help="total number of stages")
    parser.add_argument("--stages", help="rank 0's stage indices, comma-separated, e.g. 0,7")
    parser.add_argument("--lowered", help="the same schedule with comms, to load as compute_comms and simulate")
    parser.add_argument("--batch", help="JSON list of cases {name, csv, m, num_stages, stages} to check at once")
    args = parser.parse_args(argv)
    if not args.batch and None in (args.csv, args.m, args.num_stages, args.stages):
        parser.error("give CSV, --m, --num-stages and --stages, or --batch FILE")
    return args


def _case_args(args: argparse.Namespace, case: dict) -> argparse.Namespace:
    return argparse.Namespace(p=args.p, csv=case["csv"], m=case["m"], num_stages=case["num_stages"],
                              stages=case["stages"], lowered=case.get("lowered"))


def _runtime(args: argparse.Namespace) -> _PipelineScheduleRuntime:
    stages = [
        PipelineStage(torch.nn.Linear(4, 4), int(s), args.num_stages, torch.device("cpu"))
        for s in args.stages.split(",")
    ]
    return _PipelineScheduleRuntime(stages, n_microbatches=args.m)


def _load_and_lower(args: argparse.Namespace) -> dict:
    runtime = _runtime(args)
    runtime._load_csv(args.csv)  # reads, validates (_validate_schedule) and lowers (_add_send_recv)
    with_comms = _without_fsdp(runtime.pipeline_order_with_comms)
    report = {
        "stage_to_rank": {str(s): r for s, r in runtime.stage_index_to_group_rank.items()},
        "pipeline_order": _cells(runtime.pipeline_order),
        "with_comms": _cells(with_comms),
        **_simulate(with_comms, runtime),
    }
    if args.lowered:
        ours = _runtime(args)
        ours._load_csv(args.lowered, format="compute_comms")  # taken as given, no lowering
        report["lowered"] = _simulate(_without_fsdp(ours.pipeline_order_with_comms), ours)
    return report


def _without_fsdp(order: dict) -> dict:
    """The order without UNSHARD/RESHARD/REDUCE_GRAD, which torch's dry-run simulator does not know."""
    return {rank: [a for a in actions if a.computation_type.value not in _FSDP_OPS] for rank, actions in order.items()}


def _simulate(with_comms: dict, runtime: _PipelineScheduleRuntime) -> dict:
    """torch's dry-run deadlock check: its step count, or the error when a rank gets stuck."""
    mapping = runtime.stage_index_to_group_rank
    chatter = io.StringIO()  # it prints the stuck schedule before raising
    try:
        with contextlib.redirect_stdout(chatter):
            steps = _simulate_comms_compute(
                {r: list(a) for r, a in with_comms.items()}, lambda s: mapping[s], len(mapping)
            )
    except (AssertionError, KeyError, ValueError) as exc:  # report, do not crash: the caller asserts on it
        return {"simulate_error": f"{type(exc).__name__}: {exc}\n{chatter.getvalue()}", "simulated_steps": None}
    return {"simulate_error": None, "simulated_steps": max(len(v) for v in steps.values())}


def _cells(order: dict) -> dict[str, list[str]]:
    return {str(rank): [str(a) for a in actions if a is not None] for rank, actions in sorted(order.items())}


if __name__ == "__main__":
    sys.exit(main())
