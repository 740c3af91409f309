"""The torch.distributed executor against PyTorch's own pipeline runtime and against ir.simulate.

Writes ``benchmarks/results/executor.md``:

(a) Speed. Every library schedule that torch's runtime can express (no R, OFFLOAD/RELOAD or
    slices) is exported to torch CSV (``ir.torch_csv``) and run by
    ``torch.distributed.pipelining._PipelineScheduleRuntime`` (``_load_csv``: torch validates and
    lowers it; one ``PipelineStage`` per stage, wrapping the same ``StageModule``s) and by ours,
    in the same processes, same model, same batch, no optimizer. A run is ``WARMUP`` untimed steps
    then ``STEPS`` timed ones; a step's time is the slowest rank's, from a barrier to the end of
    its program; a run's time is its mean step; the table gives the median over ``RUNS`` runs,
    the two runtimes taking turns to go first. Both runtimes' first-step gradients are compared.
(b) Memory. Every library schedule (recompute, offload and slices included) runs on our
    executor; its measured saved-activation peak per rank (``MemoryTracker``, the bytes of the
    storages autograd saved, by the executor's saved-tensor hooks) is set against
    ``ir.simulate``'s peak for the same schedule with costs from ``backends.torch_exec.profile``
    (act, wact and inp measured on one microbatch per stage, in one process).
(c) Step time against ``ir.simulate`` is ``benchmarks/step_time.py`` (same model, batch, processes).

Fixed: model tiny-gpt with the sizes in ``MODEL`` (one block per stage), ``MICROBATCH`` sequences
per microbatch, p = 2 ranks (this machine has 2 cores; torch uses one thread per rank), m = 8,
gloo on CPU, seed 0.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime

from backends.torch_exec.launch import WorkerGroup
from backends.torch_exec.model import tiny_gpt
from backends.torch_exec.profile import profile_costs
from backends.torch_exec.stages import build_stages
from backends.torch_exec.worker import RunConfig, run_rank
from ir import Op, simulate
from ir.files import write_new
from ir.torch_csv import from_torch_csv, to_torch_csv
from synth.baselines import BASELINES, build

OUT = Path(__file__).resolve().parent / "results" / "executor.md"
MODEL = {"hidden": 128, "heads": 4, "seq_len": 64, "vocab": 256}
MICROBATCH, P, M = 4, 2, 8
WARMUP, STEPS, RUNS = 1, 5, 6
TIMEOUT = 120.0
_TORCH_LESS = {Op.R, Op.OFFLOAD, Op.RELOAD}


def torch_runtime_task(schedule_csv: str, p: int, m: int, num_stages: int, batch: int, steps: int, *,
                       rank: int, world_size: int, device: torch.device) -> dict:
    """One run of torch's runtime on this rank: step times and the first step's gradients."""
    spec = tiny_gpt(layers=num_stages, **MODEL)
    mine = [s for s, line in enumerate(_placement(schedule_csv, num_stages)) if line == rank]
    modules = build_stages(spec, num_stages, mine, device=device)
    stages = [PipelineStage(modules[s], s, num_stages, device) for s in mine]
    runtime = _PipelineScheduleRuntime(stages, n_microbatches=m, loss_fn=spec.loss_fn, scale_grads=True)
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write(schedule_csv)
    try:
        runtime._load_csv(f.name)
    finally:
        os.unlink(f.name)
    inputs, targets = spec.make_batch(batch, 0)
    times, grads = [], None
    for step in range(steps):
        for mod in modules.values():
            mod.zero_grad(set_to_none=True)
        _barrier()
        start = time.perf_counter()
        args = (inputs,) if 0 in mine else ()
        runtime.step(*args, target=targets if num_stages - 1 in mine else None, losses=[])
        times.append(time.perf_counter() - start)
        if step == 0:
            grads = {n: t.grad.detach().clone() for mod in modules.values()
                     for n, t in mod.global_named_parameters()}
    return {"times": times, "grads": grads}


def _placement(csv_text: str, num_stages: int) -> list[int]:
    return list(from_torch_csv(csv_text).placement.stage_to_rank)


def _barrier() -> None:
    dist.barrier(async_op=True).wait(datetime.timedelta(seconds=TIMEOUT))


def _build(name: str):
    """The library schedule at p = P, m = M (seq1f1b-i needs k <= p: k = 2)."""
    return build(name, P, M, **({"k": 2} if name == "seq1f1b-i" else {}))


def speed(group: WorkerGroup, names: list[str], runs: int) -> list[dict]:
    rows = []
    for name in names:
        schedule = _build(name)
        if schedule.k != 1 or schedule.ops_used() & _TORCH_LESS:
            continue
        spec = tiny_gpt(layers=schedule.num_stages, **MODEL)
        batch = MICROBATCH * M
        cfg = RunConfig(schedule, spec, batch, steps=WARMUP + STEPS, keep_grads=True, timeout=TIMEOUT)
        csv = to_torch_csv(schedule)
        variants = {"ours": (run_rank, (cfg,))}  # name -> (task, args)
        variants["torch"] = (torch_runtime_task, (csv, P, M, schedule.num_stages, batch, WARMUP + STEPS))
        times: dict[str, list[float]] = {key: [] for key in variants}
        diff, ticks = 0.0, _cpu_ticks()
        for run in range(runs):
            n = run % len(variants)
            order = list(variants)[n:] + list(variants)[:n]  # each variant takes turns going first
            got = {key: group.run(variants[key][0], *variants[key][1]) for key in order}
            for key in set(variants) - {"torch"}:
                times[key].append(_mean_step([[s.seconds for s in r.steps] for r in got[key]]))
            times["torch"].append(_mean_step([r["times"] for r in got["torch"]]))
            ours_grads = {k: v for r in got["ours"] for k, v in r.grads.items()}
            torch_grads = {k: v for r in got["torch"] for k, v in r["grads"].items()}
            diff = max(diff, max((ours_grads[k] - torch_grads[k]).abs().max().item() for k in ours_grads))
        row = {"name": name, "stages": schedule.num_stages, "diff": diff,
               "spread": max(max(v) / min(v) - 1 for v in times.values()), "others": _others_cores(ticks),
               **{key: statistics.median(values) for key, values in times.items()}}
        print(f"speed {name}: ours {row['ours'] * 1e3:.1f} ms/step, torch {row['torch'] * 1e3:.1f} ms/step, "
              f"grad diff {diff:.1e}", flush=True)
        rows.append(row)
    return rows


def _mean_step(times: list[list[float]]) -> float:
    """Mean over the timed steps of the slowest rank's step time (``times[rank][step]``)."""
    return statistics.mean(max(rank[n] for rank in times) for n in range(WARMUP, WARMUP + STEPS))


def memory(group: WorkerGroup, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        schedule = _build(name)
        spec = tiny_gpt(layers=schedule.num_stages, **MODEL)
        results = group.run(run_rank, RunConfig(schedule, spec, MICROBATCH * M, steps=2, timeout=TIMEOUT))
        measured = [r.steps[-1].peak_bytes for r in results]
        costs = profile_costs(spec, schedule.num_stages, microbatch_size=MICROBATCH, m=M, k=schedule.k, repeats=1)
        predicted = simulate(schedule, costs).peak
        err = max(abs(a - b) / b for a, b in zip(measured, predicted, strict=True))
        rows.append({"name": name, "k": schedule.k, "measured": measured, "predicted": predicted, "err": err})
        print(f"memory {name}: measured {measured}, predicted {predicted}, max error {err:.1%}", flush=True)
    return rows



def _cpu_ticks() -> tuple[float, int, int, int]:
    """(now, busy CPU ticks of the whole machine including steal, ticks of this benchmark's
    processes, steal ticks: time the hypervisor ran something else on our cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    ours = 0
    for pid in [os.getpid()] + [p.pid for p in mp.active_children()]:
        try:
            ours += sum(int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
        except (OSError, IndexError, ValueError):
            pass
    return time.monotonic(), busy, ours, fields[7]


def _stolen(before: tuple, after: tuple) -> tuple[float, float]:
    """(seconds of cores the hypervisor took, seconds elapsed) between two `_cpu_ticks`."""
    return (after[3] - before[3]) / os.sysconf("SC_CLK_TCK"), after[0] - before[0]


def _others_cores(before: tuple[float, int, int, int]) -> float:
    """Cores that other processes (and the hypervisor's steal) used on average since ``before``."""
    now = _cpu_ticks()
    return max(0.0, (now[1] - before[1]) - (now[2] - before[2])) / os.sysconf("SC_CLK_TCK") / (now[0] - before[0])


def _posting() -> str:
    """The executor's receive posting, in words."""
    return ("each receive posted where `ir.lower` puts it, on gloo (`early_recvs`) as early as the per-peer "
            "message order allows")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(speed_rows: list[dict], memory_rows: list[dict], seconds: float, runs: int) -> str:
    cpu = _cpu_name()
    params = sum(p.numel() for layer in tiny_gpt(layers=1, **MODEL).build_layers() for p in layer.parameters())
    lines = [
        "# Executor: against torch's pipeline runtime and against ir.simulate",
        "",
        f"Machine: {os.cpu_count()}-core {platform.machine()} CPU ({cpu}), torch {torch.__version__}, gloo, "
        f"one process and one torch thread per rank. Model: tiny-gpt, hidden {MODEL['hidden']}, {MODEL['heads']} "
        f"heads, seq {MODEL['seq_len']}, vocab {MODEL['vocab']}, one block per stage ({params} parameters with one "
        f"block; each block adds {_block_params()}), fp32. p = {P} ranks, m = {M} microbatches of {MICROBATCH} "
        f"sequences. Written by `python benchmarks/executor.py` in {seconds:.0f} s.",
        "",
        "## (a) Steps per second: ours against `torch.distributed.pipelining`",
        "",
        f"Same schedule (exported with `ir.torch_csv`, loaded by `_PipelineScheduleRuntime._load_csv`), same "
        f"model, batch and processes. Step time: slowest rank, barrier to end of program; mean of {STEPS} steps "
        f"after {WARMUP} warm-up step; median of {runs} runs, the runtimes taking turns to go first. Target: ours "
        f"no slower (ratio >= 1). Ours runs `RunConfig`'s default receive posting ({_posting()})"
        + ". "
        + "`grad diff`: largest difference between the two runtimes' first-step gradients. `spread`: how far "
        "apart the runs of one runtime on one schedule came out (slowest over fastest, the larger of the two "
        "runtimes); a ratio closer to 1 than that is parity. `others`: cores other processes (and hypervisor "
        "steal) used "
        "while the row ran.",
        "",
        "| schedule | stages | ours ms/step | torch ms/step "
        "| ours steps/s | torch steps/s | ratio (ours/torch) | grad diff | spread | others |",
        "| --- " * 10 + "|",
    ]
    for r in speed_rows:
        lines.append(f"| {r['name']} | {r['stages']} | {r['ours'] * 1e3:.1f} | "
                     f"{r['torch'] * 1e3:.1f} | {1 / r['ours']:.2f} | {1 / r['torch']:.2f} | "
                     f"{r['torch'] / r['ours']:.2f} | {r['diff']:.1e} | {r['spread']:.0%} | {r['others']:.2f} |")
    lines += [
        "",
        "## (b) Saved-activation peak per rank: measured against `ir.simulate`",
        "",
        "Measured: the executor's `MemoryTracker` peak in the second step (bytes of the distinct storages "
        "autograd saved, held through the saved-tensor hooks; offloaded units count from OFFLOAD to RELOAD as "
        "off the device). Predicted: `ir.simulate(schedule, profile_costs(...))`. Target: within 10%.",
        "",
        "| schedule | k | measured KiB (rank 0, 1) | predicted KiB (rank 0, 1) | max error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in memory_rows:
        meas = ", ".join(f"{b / 1024:.1f}" for b in r["measured"])
        pred = ", ".join(f"{b / 1024:.1f}" for b in r["predicted"])
        lines.append(f"| {r['name']} | {r['k']} | {meas} | {pred} | {r['err']:.1%} |")
    lines += [
        "",
        "Recompute: `ir.simulate` follows DESIGN.md's memory table, F holds `inp` and R adds `act - inp`, since "
        "`act` already contains the stage input (the stage's first op saves it); the executor holds the same, so a "
        "recomputed unit in flight counts its input once. Offload: on CPU the executor copies on the compute "
        "thread, so a RELOAD starts once the action before it has ended; `profile_costs` says so on CPU "
        "(`Costs.copy_stream` False: copies hold the compute stream in `ir.simulate`), where a copy stream (a "
        "CUDA side stream) may start it as that action starts. Where that action frees activations "
        "(chronos-offload: `2BW0` then `1RELOAD0` on rank 1, `3BW7` then `0RELOAD6` on rank 0) a copy-stream "
        "peak would hold both and exceed the CPU run's by what the action frees.",
    ]
    return "\n".join(lines) + "\n"


def _block_params() -> int:
    one = sum(p.numel() for layer in tiny_gpt(layers=1, **MODEL).build_layers() for p in layer.parameters())
    two = sum(p.numel() for layer in tiny_gpt(layers=2, **MODEL).build_layers() for p in layer.parameters())
    return two - one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per schedule and runtime (default {RUNS})")
    parser.add_argument("--only", help="comma-separated schedule names (default: the whole library)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the table (default {OUT})")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BASELINES)
    start = time.perf_counter()
    with WorkerGroup(P, timeout=TIMEOUT, threads=1) as group:
        speed_rows = speed(group, names, args.runs)
        memory_rows = memory(group, names)
    text = render(speed_rows, memory_rows, time.perf_counter() - start, args.runs)
    write_new(args.out, text, overwrite=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
