"""The executor on one CUDA GPU against ir.simulate: step time on profiled CUDA costs, the saved-activation
peak, torch.cuda.max_memory_allocated, and the pinned-memory copy bandwidth that prices OFFLOAD/RELOAD.

Writes ``benchmarks/results/gpu.md``. Without a CUDA device it says so and leaves that file as it is
(the table records the last run on a GPU). One GPU is one rank: NCCL refuses two ranks on one GPU
("Duplicate GPU detected"), so every schedule runs with p = 1 in an NCCL world of one, its stages all on
that rank (two for the V schedules, whose stage-to-stage transfer stays on the rank). A step is then the
passes, recomputes and copies of one device, OFFLOAD/RELOAD on a side stream into pinned host memory
(``Costs.copy_stream`` is true on CUDA, so the simulator overlaps them with compute as the executor does).

Each run of a row profiles twice (``profile_costs`` on the GPU, means of ``PROFILE_REPEATS``: ``fed=True``,
each pass's GPU time with the host ahead of the GPU, and ``fed=False``, each pass between two
``torch.cuda.synchronize``) and then runs ``WARMUP + STEPS`` steps in the same process; measured is the
mean of the timed steps (barrier to the end of the program, synchronized), simulated is ``ir.simulate`` of
the lowered schedule the executor runs on each profile. The activation
peak is the executor's MemoryTracker (saved tensors' bytes, in the host's order) against the simulated
one; ``cuda max`` is ``torch.cuda.max_memory_allocated`` over the last step, which also holds the
weights, the gradients and each pass's temporaries.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from backends.torch_exec.executor import prepare_schedule
from backends.torch_exec.launch import WorkerGroup
from backends.torch_exec.model import tiny_gpt
from backends.torch_exec.profile import profile_costs
from backends.torch_exec.worker import RunConfig, run_rank
from ir import Costs, Op, simulate
from ir.files import write_new
from synth.baselines import build

OUT = Path(__file__).resolve().parent / "results" / "gpu.md"
# big enough that a pass is milliseconds of kernels, not their launches (a block's forward is about
# 0.24 TFLOP at microbatch 8 x 1024 tokens, hidden 1024)
MODEL = {"hidden": 1024, "heads": 16, "seq_len": 1024, "vocab": 8192}
MICROBATCH, M = 8, 8
SCHEDULES = ("gpipe", "1f1b", "1f1b-recompute", "zb-h1", "zb-v", "po-h", "chronos-recomp", "chronos-offload")
RUNS, WARMUP, STEPS, PROFILE_REPEATS, PROFILE_WARMUP = 3, 2, 5, 3, 1
TARGET = 0.10
TIMEOUT = 300.0
MIB = 1 << 20


def profile_task(spec, schedule, fed: bool, *, rank: int, world_size: int, device: torch.device) -> Costs:
    return profile_costs(spec, schedule.num_stages, microbatch_size=MICROBATCH, m=M, k=schedule.k,
                         repeats=PROFILE_REPEATS, warmup=PROFILE_WARMUP, device="cuda",
                         placement=schedule.placement, estimate="mean", fed=fed)


def one_row(group: WorkerGroup, name: str, runs: int) -> dict:
    schedule = build(name, 1, M)
    spec = tiny_gpt(layers=schedule.num_stages, **MODEL)
    lowered = prepare_schedule(schedule, spec, world_size=1, batch_size=MICROBATCH * M, early_recvs=False)
    cfg = RunConfig(schedule, spec, MICROBATCH * M, steps=WARMUP + STEPS, timeout=TIMEOUT, device="cuda")
    row = {"name": name, "stages": schedule.num_stages, "sim": [], "sim_synced": [], "measured": [],
           "copies": sum(a.op in (Op.OFFLOAD, Op.RELOAD) for a in lowered.ranks[0])}
    for _ in range(runs):
        synced = group.run(profile_task, spec, schedule, False)[0]
        costs = group.run(profile_task, spec, schedule, True)[0]
        result = group.run(run_rank, cfg)[0]
        timeline = simulate(lowered, costs)
        row["sim"].append(timeline.makespan)
        row["sim_synced"].append(simulate(lowered, synced).makespan)
        row["measured"].append(statistics.fmean(s.seconds for s in result.steps[WARMUP:]) * 1e3)
    last = result.steps[-1]
    u = costs.units[0][0]
    row.update(f=u.f, b=u.b, w=u.w, r=u.r, bandwidth=costs.copy_bandwidth,
               act_sim=timeline.peak[0] - costs.static[0],  # the simulated level is static + activations
               act=last.peak_bytes, cuda=last.cuda_peak_bytes, weights=costs.static[0] / 2)
    row["err"], row["err_synced"] = (_worst(row["measured"], row[key]) for key in ("sim", "sim_synced"))
    print(f"{name}: measured {_ms(row['measured'])} ms, simulated {_ms(row['sim'])} ms, worst error "
          f"{row['err']:+.1%} (synchronized profile: {_ms(row['sim_synced'])} ms, {row['err_synced']:+.1%}); "
          f"activations {row['act'] / MIB:.1f} MiB measured, {row['act_sim'] / MIB:.1f} "
          f"simulated; cuda max {row['cuda'] / MIB:.1f} MiB", flush=True)
    return row


def _worst(measured: list[float], simulated: list[float]) -> float:
    """The largest (measured - simulated) / simulated by size, sign kept (as benchmarks/step_time.py)."""
    return max(((t - s) / s for t, s in zip(measured, simulated, strict=True)), key=abs)


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _gbs(bandwidth: float) -> str:
    """Bytes per ms as GB/s ('-' where nothing was copied)."""
    return "-" if bandwidth == float("inf") else f"{bandwidth / 1e6:.1f}"


def render(rows: list[dict], seconds: float, runs: int) -> str:
    props = torch.cuda.get_device_properties(0)
    lines = [
        "# The executor on one GPU against `ir.simulate`",
        "",
        f"Machine: {props.name} ({props.total_memory / 2**30:.0f} GiB), {platform.machine()} host, torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}, NCCL world of one rank. Model: tiny-gpt, hidden "
        f"{MODEL['hidden']}, {MODEL['heads']} heads, seq {MODEL['seq_len']}, vocab {MODEL['vocab']}, one block per "
        f"stage, fp32 (TF32 off, torch's default); p = 1, m = {M} microbatches of {MICROBATCH} sequences. Written by "
        f"`python benchmarks/gpu.py` in {seconds:.0f} s.",
        "",
        f"Each of {runs} runs per row profiles twice (`profile_costs` on the GPU, means of {PROFILE_REPEATS} "
        f"after {PROFILE_WARMUP} warm-up: `fed=True`, the default, each pass's GPU time with the host ahead of "
        "the GPU as in a pipeline, and `fed=False`, each pass between two synchronizations) and then runs "
        f"{WARMUP} warm-up and {STEPS} timed steps; measured is the timed steps' mean; simulated is `ir.simulate` "
        "of the lowered schedule on that run's profile (copies on a side stream, `Costs.copy_stream`). `worst "
        "error`: the worst run's (measured - simulated) / "
        f"simulated; target within {TARGET:.0%}. F, B, W, R: stage 0's pass times (the last run's fed profile); copy "
        "GB/s: the profiled OFFLOAD/RELOAD bandwidth (pinned host memory). Activations: the executor's "
        "saved-tensor peak (MemoryTracker) against the simulated one; cuda max: "
        "`torch.cuda.max_memory_allocated` over the last step; weights: the rank's parameter bytes.",
        "",
        "| schedule | stages | copies | F ms | B ms | W ms | R ms | copy GB/s | measured ms | simulated ms | "
        "worst error | within 10% | simulated ms (synchronized profile) | worst error | activations MiB "
        "(simulated) | activations MiB (measured) | cuda max MiB | weights MiB |",
        "| --- " * 18 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['stages']} | {r['copies']} | {r['f']:.2f} | {r['b']:.2f} | {r['w']:.2f} | "
            f"{r['r']:.2f} | {_gbs(r['bandwidth'])} | {_ms(r['measured'])} | {_ms(r['sim'])} | {r['err']:+.1%} | "
            f"{'yes' if abs(r['err']) <= TARGET else 'no'} | {_ms(r['sim_synced'])} | {r['err_synced']:+.1%} | "
            f"{r['act_sim'] / MIB:.1f} | {r['act'] / MIB:.1f} | "
            f"{r['cuda'] / MIB:.1f} | {r['weights'] / MIB:.1f} |")
    within = sum(abs(r["err"]) <= TARGET for r in rows)
    within_synced = sum(abs(r["err_synced"]) <= TARGET for r in rows)
    exact = sum(r["act"] == r["act_sim"] for r in rows)
    lines += ["", f"{within} of {len(rows)} schedules within {TARGET:.0%} of the simulated step on fed profiles, "
              f"{within_synced} of {len(rows)} on synchronized ones; the measured activation peak equals the "
              f"simulated one in {exact} of {len(rows)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated schedule names (default: {', '.join(SCHEDULES)})")
    parser.add_argument("--runs", type=int, default=RUNS,
                        help=f"runs per schedule, the worst reported (default {RUNS})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the table (default {OUT})")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"no CUDA device: benchmarks/gpu.py skipped, {args.out} left as it is")
        return 0
    names = args.only.split(",") if args.only else list(SCHEDULES)
    start = time.perf_counter()
    with WorkerGroup(1, device="cuda", timeout=TIMEOUT) as group:
        rows = [one_row(group, name, args.runs) for name in names]
    text = render(rows, time.perf_counter() - start, args.runs)
    write_new(args.out, text, overwrite=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
