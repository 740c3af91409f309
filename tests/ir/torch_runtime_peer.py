"""Peer check helper: run torch CSVs on torch's own ``_PipelineScheduleRuntime``, for real.

``python3 tests/ir/torch_runtime_peer.py CASES.json --p 4`` imports torch once and forks ``p``
worker processes into one gloo process group on this machine. Every case of CASES.json (a list
of objects with the keys name, csv, format ("compute_only" or "compute_comms"), m and
stage_to_rank, all for the same ``--p``) is run in turn by all ranks, one process group for the
whole batch: each rank builds real ``PipelineStage``s of a tiny model for its stages, has
``_PipelineScheduleRuntime(stages, m, loss_fn)._load_csv(csv, format=...)`` read the file, runs
one ``step`` and compares its weight gradients and losses with a single-process run of the same
model on the same batch (float64, ``torch.testing.assert_close`` at rtol 1e-5). It prints one
JSON object to stdout:

    {name: {"error": null or text, "fatal": bool, "rank": the rank whose error is shown or null,
     "steps": [cells of pipeline_order_with_comms on that rank] or null, "seconds": ...}}

Gradients that differ are reported and the batch goes on. When torch's runtime raises (``fatal``)
the other ranks may wait on the failing one forever, so that process group ends there and a fresh
one is forked for the cases after it (a fraction of a second: torch is imported once, before the
forks). Every wait is bounded: the process group times out after ``--timeout`` seconds, and the
parent kills a group's workers two seconds after one fails, and every worker at ``--deadline``.

The model: stage ``s`` is ``Linear(D, D)`` then ``tanh`` (the last stage without ``tanh``),
weights seeded by ``s``; the loss is the mean squared error per microbatch, so torch's
``scale_grads`` (dividing by ``m`` in REDUCE_GRAD) makes the gradients those of the whole
batch's mean squared error. It imports nothing from pipesynth, so the answer is torch's
alone. Used by ``tests/ir/test_torch_runtime.py``, ``tests/synth/baselines/test_baselines_torch.py``
and ``tests/synth/test_torch_export.py`` (through `run_on_torch`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

D = 8  # width of every stage
MICROBATCH = 2  # rows per microbatch
_PEER_GONE = "Connection closed by peer"  # gloo's words on a rank whose peer has died


def run_on_torch(cases: list[dict], p: int, folder: Path, *, timeout: float = 30.0, deadline: float = 150.0) -> dict:
    """Run ``cases`` (see the module docstring) with this script in a child process; its report.

    For the tests: the child, not pytest's process, imports torch and forks the ranks, and the
    whole batch is bounded by ``deadline`` (plus a minute for start-up: within pytest's 300 s).
    """
    spec = Path(folder) / f"cases-p{p}-{len(cases)}.json"
    spec.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, __file__, str(spec), "--p", str(p), "--timeout", str(timeout),
                           "--deadline", str(deadline)], capture_output=True, text=True, timeout=deadline + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"torch_runtime_peer.py failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    json.dump(_launch(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", help="JSON list of {name, csv, format, m, stage_to_rank}")
    parser.add_argument("--p", type=int, required=True, help="number of ranks")
    parser.add_argument("--timeout", type=float, default=30.0, help="process-group timeout, seconds")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds for the whole batch")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: argparse.Namespace) -> dict:
    """Fork a process group of workers (torch imported once, here, before the fork) for the cases,
    wait for it (bounded) and merge the reports; after a case torch's runtime raised on, fork a
    fresh group for the cases after it."""
    import torch
    import torch.distributed  # noqa: F401 - imported before the fork, so that no worker pays for it
    from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime  # noqa: F401

    torch.set_num_threads(1)  # no intra-op thread pool exists yet, so the forked workers start clean
    cases = json.loads(Path(args.cases).read_text())
    give_up = time.monotonic() + args.deadline
    merged: dict[str, dict] = {}
    start = 0
    while start < len(cases) and time.monotonic() < give_up:
        batch = cases[start:]
        got = _run_group(batch, args.p, args.timeout, give_up - time.monotonic())
        fatal = next((i for i, case in enumerate(batch) if got[case["name"]]["fatal"]), len(batch) - 1)
        merged.update({case["name"]: got[case["name"]] for case in batch[:fatal + 1]})
        start += fatal + 1
    for case in cases[start:]:
        merged[case["name"]] = {"error": f"not run within --deadline {args.deadline:g} s", "fatal": False,
                                "rank": None, "steps": None}
    return merged


def _run_group(cases: list[dict], p: int, timeout: float, deadline: float) -> dict:
    """One process group of ``p`` forked workers running ``cases`` in turn; the merged reports."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        outs = [Path(folder) / f"rank{r}.json" for r in range(p)]
        logs = [Path(folder) / f"rank{r}.log" for r in range(p)]
        pids = [_fork_worker(cases, p, r, port, outs[r], logs[r], timeout) for r in range(p)]
        codes = _wait(pids, deadline)
        reports = [json.loads(out.read_text()) if out.exists() else None for out in outs]
        stderr = [log.read_text(errors="replace") if log.exists() else "" for log in logs]
    return _merge(cases, reports, stderr, codes)


def _fork_worker(cases: list[dict], p: int, rank: int, port: int, out: Path, log: Path, timeout: float) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: its stderr to its log, and it ends with its parent
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)  # stdout too: the parent's stdout carries only the JSON report
        os.dup2(fd, 2)
        _watch_parent(os.getppid())
        code = _worker(cases, p, rank, port, str(out), timeout)
    except BaseException:  # noqa: BLE001 - the parent reads the log
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # never back into the parent's code


def _watch_parent(parent: int) -> None:
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _wait(pids: list[int], deadline: float) -> list[int | None]:
    """Exit codes by rank; once one rank fails, or at the deadline, the others are killed."""
    codes: list[int | None] = [None] * len(pids)
    give_up = time.monotonic() + deadline
    failed_at = None
    while None in codes:
        for r, pid in enumerate(pids):
            if codes[r] is None:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[r] = os.waitstatus_to_exitcode(status)
                    if codes[r] != 0 and failed_at is None:
                        failed_at = time.monotonic()
        late = failed_at is not None and time.monotonic() > failed_at + 2.0  # the others' reports land first
        if None in codes and (late or time.monotonic() > give_up):
            for r, pid in enumerate(pids):
                if codes[r] is None:
                    os.kill(pid, signal.SIGKILL)
                    codes[r] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.02)
    return codes


def _merge(cases: list[dict], reports: list, stderr: list[str], codes: list) -> dict:
    merged: dict[str, dict] = {}
    stopped = False  # torch's runtime raised in an earlier case: the later ones did not run
    for case in cases:
        name = case["name"]
        failures = [(r, rep[name]) for r, rep in enumerate(reports) if rep and rep.get(name, {}).get("error")]
        if failures:  # the root cause first: the others fail because a peer stopped
            rank, failure = min(failures, key=lambda f: (_PEER_GONE in f[1]["error"], f[0]))
            merged[name] = {**failure, "rank": rank}
            stopped = stopped or any(f["fatal"] for _, f in failures)
        elif all(rep is not None and name in rep for rep in reports):
            seconds = max(rep[name]["seconds"] for rep in reports)
            merged[name] = {"error": None, "fatal": False, "rank": None, "steps": None, "seconds": seconds}
        elif stopped:
            merged[name] = {"error": "not run", "fatal": False, "rank": None, "steps": None}
        else:  # a rank died or hung without a report: say which, with its last words
            stuck = [r for r, rep in enumerate(reports) if rep is None or name not in rep]
            tail = "\n".join(f"rank {r} (exit {codes[r]}): {stderr[r][-1500:]}" for r in stuck)
            merged[name] = {"error": f"no report from rank(s) {stuck}:\n{tail}", "fatal": True, "rank": stuck[0],
                            "steps": None}
            stopped = True
    return merged


# --------------------------------------------------------------------------- workers


def _worker(cases: list[dict], p: int, rank: int, port: int, out: str, timeout: float) -> int:
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=p,
                            timeout=datetime.timedelta(seconds=timeout))
    report: dict[str, dict] = {}
    for case in cases:
        began = time.monotonic()
        result = _run_case(case, rank)
        report[case["name"]] = {**result, "seconds": round(time.monotonic() - began, 3)}
        _write(out, report)
        if result.get("fatal"):
            return 1  # the other ranks are stuck in this case's messages: no orderly shutdown
        dist.barrier()
    dist.destroy_process_group()
    return 0


def _write(path: str, report: dict) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(path)


def _stage_module(stage: int, num_stages: int):
    import torch

    torch.manual_seed(1000 + stage)
    linear = torch.nn.Linear(D, D, dtype=torch.float64)
    return linear if stage == num_stages - 1 else torch.nn.Sequential(linear, torch.nn.Tanh())


def _batch(m: int):
    import torch

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(m * MICROBATCH, D, generator=gen, dtype=torch.float64)
    y = torch.randn(m * MICROBATCH, D, generator=gen, dtype=torch.float64)
    return x, y


def _reference(num_stages: int, m: int):
    """Single-process gradients (per stage) and loss of the whole model on the whole batch."""
    import torch

    modules = [_stage_module(s, num_stages) for s in range(num_stages)]
    x, y = _batch(m)
    out = x
    for module in modules:
        out = module(out)
    loss = torch.nn.functional.mse_loss(out, y)
    loss.backward()
    return [[p.grad for p in module.parameters()] for module in modules], loss.detach()


def _run_case(case: dict, rank: int) -> dict:
    """One case on this rank: ``error`` None when the gradients and losses match the reference;
    ``fatal`` when torch's runtime raised (the other ranks may be stuck waiting on this one)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime

    stage_to_rank = case["stage_to_rank"]
    num_stages, m = len(stage_to_rank), case["m"]
    mine = [s for s, r in enumerate(stage_to_rank) if r == rank]
    stages = [PipelineStage(_stage_module(s, num_stages), s, num_stages, torch.device("cpu"), group=dist.group.WORLD)
              for s in mine]
    runtime = _PipelineScheduleRuntime(stages, n_microbatches=m, loss_fn=torch.nn.functional.mse_loss)
    first, last = 0 in mine, num_stages - 1 in mine
    losses: list = []
    try:
        runtime._load_csv(case["csv"], format=case["format"])
        x, y = _batch(m)
        runtime.step(*((x,) if first else ()), target=y if last else None, losses=losses if last else None)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        steps = getattr(runtime, "pipeline_order_with_comms", {}).get(rank)
        return {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}", "fatal": True,
                "steps": [str(a) for a in steps] if steps else None}
    grads, loss = _reference(num_stages, m)
    try:
        for stage, module in zip(mine, (s.submod for s in stages), strict=True):
            for (name, param), expected in zip(module.named_parameters(), grads[stage], strict=True):
                torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-12,
                                           msg=lambda text, s=stage, n=name: f"stage {s} {n}.grad: {text}")
        if last:
            torch.testing.assert_close(torch.stack(losses).mean(), loss, rtol=1e-5, atol=1e-12,
                                       msg=lambda text: f"mean loss: {text}")
    except AssertionError as exc:
        return {"error": f"gradients differ from a single-process run: {exc}", "fatal": False, "steps": None}
    return {"error": None, "fatal": False, "steps": None}


if __name__ == "__main__":
    sys.exit(main())
