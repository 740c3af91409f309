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
(c) Time. The schedules in ``TIMED`` (``--timed``; those of ``--only`` when given) run on our
    executor (timed as in (a)) and are simulated by ``ir.simulate`` with costs from
    ``backends.torch_exec.profile.profile_costs`` (F, B, W, BW and R times measured in one worker
    process, one torch thread, the other rank idle) and, as ``comm``, the one-way time of one
    boundary message between the two ranks, measured by a gloo ping-pong (``profile.p2p_latency``,
    the model's boundary tensor at the schedule's slice size). A run of a row measures comm,
    profiles and runs the schedule (``RunConfig``'s default receive posting and, while
    ``recv_lookahead`` exists, also 0); ``TIMING_RUNS`` runs, the worst error reported. One more run
    with spans recorded splits the gap between measured and simulated into slower passes, time
    inside comm posts, offload copies and waits (`_in_run`).

Fixed: model tiny-gpt with the sizes in ``MODEL`` (one block per stage), ``MICROBATCH`` sequences
per microbatch, p = 2 ranks (this machine has 2 cores; torch uses one thread per rank), m = 8,
gloo on CPU, seed 0.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from backends.torch_exec.profile import p2p_latency, profile_costs
from backends.torch_exec.stages import boundary_shapes, build_stages
from backends.torch_exec.worker import RunConfig, first_microbatch, run_rank
from ir import Op, Schedule, parse_action, simulate
from ir.files import write_new
from ir.torch_csv import from_torch_csv, to_torch_csv
from synth.baselines import BASELINES, build

OUT = Path(__file__).resolve().parent / "results" / "executor.md"
MODEL = {"hidden": 128, "heads": 4, "seq_len": 64, "vocab": 256}
MICROBATCH, P, M = 4, 2, 8
WARMUP, STEPS, RUNS = 1, 5, 6
TIMEOUT = 120.0
# (c): a cell a target depends on runs 3 times and the worst is reported; the step-time target is 10%
TIMING_RUNS, PROFILE_REPEATS, PROFILE_WARMUP, PING_REPEATS = 3, 10, 2, 50
TIME_TARGET = 0.10
# the schedules (c) times by default (a row takes 10-40 s): one of each family, recompute and offload included
TIMED = ("gpipe", "1f1b", "1f1b-recompute", "interleaved", "zb-h1", "zb-v", "seq1f1b", "po-h", "chronos-recomp")
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
        if "lookahead0" in _variants():  # receives where ir.lower puts them
            variants["ours_lowered"] = (run_rank, (dataclasses.replace(cfg, **_variants()["lookahead0"]),))
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
        lowered = f" (receives as lowered: {row['ours_lowered'] * 1e3:.1f})" if "ours_lowered" in row else ""
        print(f"speed {name}: ours {row['ours'] * 1e3:.1f} ms/step{lowered}, torch {row['torch'] * 1e3:.1f} ms/step, "
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



def ping_task(metas: list, *, rank: int, world_size: int, device: torch.device) -> float:
    """One boundary message's one-way time (ms) between the two ranks (gloo ping-pong)."""
    return p2p_latency(metas, rank=rank, peer=1 - rank, repeats=PING_REPEATS, device=device)


def profile_task(spec, num_stages: int, k: int, comm: float, *, rank: int, world_size: int,
                 device: torch.device):
    """`profile_costs` on rank 0 (one process, one torch thread, as the ranks run); None on the other."""
    if rank != 0:
        return None
    return profile_costs(spec, num_stages, microbatch_size=MICROBATCH, m=M, k=k, repeats=PROFILE_REPEATS,
                         warmup=PROFILE_WARMUP, comm=comm)


def _boundary_metas(spec, schedule: Schedule) -> list:
    """The tensors of one boundary message of ``schedule`` (slice 0 of stage 0's output)."""
    inputs, _ = spec.make_batch(MICROBATCH * M, 0)
    return boundary_shapes(spec, schedule.num_stages, first_microbatch(inputs, M), k=schedule.k)[0][0].tensors


def _variants() -> dict[str, dict]:
    """RunConfig's default, and receives where ``ir.lower`` puts them while ``recv_lookahead`` exists."""
    out = {"default": {}}
    if "recv_lookahead" in {f.name for f in dataclasses.fields(RunConfig)}:
        out["lookahead0"] = {"recv_lookahead": 0}
    return out


def timing(group: WorkerGroup, names: list[str], runs: int = TIMING_RUNS) -> list[dict]:
    rows = []
    variants = _variants()
    for name in names:
        schedule = _build(name)
        spec = tiny_gpt(layers=schedule.num_stages, **MODEL)
        cfg = RunConfig(schedule, spec, MICROBATCH * M, steps=WARMUP + STEPS, timeout=TIMEOUT)
        metas = _boundary_metas(spec, schedule)
        row = {"name": name, "k": schedule.k, "comm": [], "sim": [], **{key: [] for key in variants}}
        ticks = _cpu_ticks()
        for run in range(runs):
            comm = group.run(ping_task, metas)[0]
            costs = group.run(profile_task, spec, schedule.num_stages, schedule.k, comm)[0]
            row["comm"].append(comm)
            row["sim"].append(simulate(schedule, costs).makespan)  # ms, as profile_costs measures
            keys = list(variants)
            for key in keys[run % len(keys):] + keys[:run % len(keys)]:  # the variants take turns going first
                got = group.run(run_rank, dataclasses.replace(cfg, **variants[key]))
                row[key].append(_mean_step([[s.seconds for s in r.steps] for r in got]) * 1e3)
        for key in variants:
            errors = [(t - sim) / sim for t, sim in zip(row[key], row["sim"], strict=True)]
            row[f"err_{key}"] = max(errors, key=abs)
        spans = group.run(run_rank, dataclasses.replace(cfg, record_spans=True))
        row["others"] = _others_cores(ticks)
        row.update(_in_run(schedule, spans, costs, row["sim"][-1]))
        zero = (f", lookahead 0: {_ms(row['lookahead0'])} ms ({row['err_lookahead0']:+.1%})"
                if "lookahead0" in row else "")
        print(f"time {name}: measured {_ms(row['default'])} ms, simulated {_ms(row['sim'])} ms, worst error "
              f"{row['err_default']:+.1%}{zero}, comm {_ms(row['comm'], 3)} ms; spans run: {_gap(row)}, pass "
              f"slowdown {row['slowdown']:.2f}; others {row['others']:.2f} cores", flush=True)
        rows.append(row)
    return rows


def _in_run(schedule: Schedule, results: list, costs, sim: float) -> dict[str, float]:
    """Where a spans run's step went, against the simulated makespan ``sim`` (ms, means over the
    timed steps, on the rank with the longest step).

    Passes that never wait for a message (F whose input is made on its rank, B/BW whose output
    gradient is, W) give ``slowdown``, measured over profiled time on both ranks. The gap
    (measured step - ``sim``) splits into ``passes`` (those passes' excess, and the others' profiled
    time times ``slowdown - 1``), ``posts`` (inside ``batch_isend_irecv``, zero-time in the
    simulator), ``copies`` (OFFLOAD/RELOAD, plain copies on CPU's compute thread, free in the
    simulator) and ``waits``, the rest: time waiting for messages beyond the simulated idle time.
    """
    rank_of = schedule.placement.rank_of
    last = schedule.num_stages - 1
    per_rank = []
    for r in results:
        acc = dict.fromkeys(("step", "posts", "n_posts", "copies", "free", "free_prof", "bound_prof"), 0.0)
        for step in r.steps[WARMUP:]:
            acc["step"] += step.seconds * 1e3 / STEPS
            batches = set()  # the actions of one batch of comm posts share one span
            for span in step.spans:
                a, took = parse_action(span.action), (span.end - span.start) * 1e3 / STEPS
                if a.op.is_comm:
                    if (span.start, span.end) not in batches:
                        batches.add((span.start, span.end))
                        acc["posts"] += took
                        acc["n_posts"] += 1 / STEPS
                elif a.op in (Op.OFFLOAD, Op.RELOAD):
                    acc["copies"] += took
                elif (a.op is Op.W or (a.op is Op.F and (a.stage == 0 or rank_of(a.stage - 1) == rank_of(a.stage)))
                      or (a.op in (Op.B, Op.BW) and (a.stage == last or rank_of(a.stage + 1) == rank_of(a.stage)))):
                    acc["free"] += took
                    acc["free_prof"] += costs.duration(a) / STEPS
                else:
                    acc["bound_prof"] += costs.duration(a) / STEPS
        per_rank.append(acc)
    slowdown = sum(x["free"] for x in per_rank) / sum(x["free_prof"] for x in per_rank)
    slow = max(per_rank, key=lambda x: x["step"])
    passes = slow["free"] - slow["free_prof"] + slow["bound_prof"] * (slowdown - 1)
    gap = slow["step"] - sim
    return {"slowdown": slowdown, "gap": gap, "passes": passes, "posts": slow["posts"], "copies": slow["copies"],
            "waits": gap - passes - slow["posts"] - slow["copies"], "per_post": slow["posts"] / max(slow["n_posts"], 1)}


def _cpu_ticks() -> tuple[float, int, int]:
    """(now, busy CPU ticks of the whole machine including steal, ticks of this benchmark's processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    ours = 0
    for pid in [os.getpid()] + [p.pid for p in mp.active_children()]:
        try:
            ours += sum(int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
        except (OSError, IndexError, ValueError):
            pass
    return time.monotonic(), busy, ours


def _others_cores(before: tuple[float, int, int]) -> float:
    """Cores that other processes (and the hypervisor's steal) used on average since ``before``."""
    now = _cpu_ticks()
    return max(0.0, (now[1] - before[1]) - (now[2] - before[2])) / os.sysconf("SC_CLK_TCK") / (now[0] - before[0])


def _gap(row: dict, sep: str = " = ", between: str = " ") -> str:
    """The spans run's gap and its parts (`_in_run`), in ms."""
    parts = (f"{row[key]:+.1f}" for key in ("passes", "posts", "copies", "waits"))
    return f"{row['gap']:+.1f}{sep}" + between.join(parts)


def _posting() -> str:
    """RunConfig's default receive posting, in words."""
    field = RunConfig.__dataclass_fields__.get("recv_lookahead")
    if field is None:
        return ("no `recv_lookahead`: each receive posted where `ir.lower` puts it, on gloo "
                "(`early_recvs`) as early as the per-peer message order allows")
    ahead = {None: "all at the step's start", 0: "where `ir.lower` puts them"}.get(
        field.default, f"each {field.default} compute actions before `ir.lower` puts it, gloo only")
    return f"`recv_lookahead={field.default!r}`: receives {ahead}"


def _ms(values: list[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(speed_rows: list[dict], memory_rows: list[dict], time_rows: list[dict], seconds: float, runs: int,
           timing_runs: int) -> str:
    cpu = _cpu_name()
    lowered = any("ours_lowered" in r for r in speed_rows)
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
        + ("; the `as lowered` column posts them where `ir.lower` does (`recv_lookahead=0`). " if lowered else ". ")
        + "`grad diff`: largest difference between the two runtimes' first-step gradients. `spread`: how far "
        "apart the runs of one runtime on one schedule came out (slowest over fastest, the larger of the two "
        "runtimes); a ratio closer to 1 than that is parity. `others`: as in (c), cores other processes used "
        "while the row ran.",
        "",
        "| schedule | stages | ours ms/step | " + ("as lowered ms/step | " if lowered else "") + "torch ms/step "
        "| ours steps/s | torch steps/s | ratio (ours/torch) | grad diff | spread | others |",
        "| --- " * (10 + lowered) + "|",
    ]
    for r in speed_rows:
        as_lowered = f"{r['ours_lowered'] * 1e3:.1f} | " if lowered else ""
        lines.append(f"| {r['name']} | {r['stages']} | {r['ours'] * 1e3:.1f} | {as_lowered}"
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
        "recomputed unit in flight counts its input once. Offload: `ir.simulate` may start a RELOAD on the copy "
        "stream as soon as the action before it in the program starts (a CUDA side stream can overlap it); on CPU "
        "the executor copies on the compute thread once that action has ended. Where that action frees "
        "activations (chronos-offload: `2BW0` then `1RELOAD0` on rank 1, `3BW7` then `0RELOAD6` on rank 0) the "
        "simulated peak holds both and is higher than the CPU run's by what the action frees.",
    ]
    return "\n".join(lines + render_time(time_rows, timing_runs)) + "\n"


def render_time(rows: list[dict], runs: int) -> list[str]:
    lookahead = any("lookahead0" in r for r in rows)
    lines = [
        "",
        "## (c) Step time: measured against `ir.simulate` on profiled costs",
        "",
        f"Measured: our executor's step ({_posting()}), timed as in (a): slowest rank, mean of {STEPS} steps after "
        f"{WARMUP} warm-up. Simulated: `ir.simulate(schedule, costs).makespan`, `costs = profile_costs(..., "
        f"repeats={PROFILE_REPEATS}, warmup={PROFILE_WARMUP}, comm=...)`: every pass (F, B, W, BW, R) timed in one "
        "worker process with one torch thread while the other rank idles; `comm` is the one-way time of one "
        f"boundary message, half the median round trip of {PING_REPEATS} gloo ping-pongs between the two ranks "
        "(`profile.p2p_latency`, the tensor the model sends, at the schedule's slice size), which `ir.simulate` adds "
        "to every cross-rank boundary edge. `profile_costs` leaves `copy_bandwidth` infinite, so OFFLOAD/RELOAD "
        f"simulate as free. Each of {runs} runs of a row measures comm, profiles and runs the schedule afresh; "
        "values are listed run by run and the error is the worst run's (measured - simulated) / simulated. Target: "
        f"within {TIME_TARGET:.0%}. "
        + ("`lookahead 0`: the same runs with `recv_lookahead=0`, taking turns with the default to go first. "
           if lookahead else "")
        + "`gap`: one more run with spans recorded, its step minus the last run's simulated makespan (rank with "
        "the longest step), split as passes + posts + copies + waits: `passes`, the compute passes' time over "
        "their profiled time; `posts`, time inside `batch_isend_irecv` (zero-time in `ir.simulate`); `copies`, "
        "OFFLOAD/RELOAD (plain copies on the compute thread on CPU); `waits`, the rest, time spent waiting for "
        "messages beyond the simulated idle time. `slowdown`: the passes that never wait for a message (F whose "
        "input, B/BW whose output gradient is made on the same rank, W) against their profiled time, both ranks: "
        "how much slower a pass runs in the pipeline than alone. `others`: cores that other processes on the "
        "machine (and hypervisor steal) used on average while the row ran (`/proc/stat` less this benchmark's "
        "processes).",
        "",
        "| schedule | k | comm ms | simulated ms | measured ms | worst error | within 10% | "
        + ("lookahead 0 ms | lookahead 0 worst error | " if lookahead else "")
        + "gap ms | passes | posts | copies | waits | slowdown | others |",
        "| --- " * (14 + 2 * lookahead) + "|",
    ]
    for r in rows:
        ok = "yes" if abs(r["err_default"]) <= TIME_TARGET else "no"
        extra = f"{_ms(r['lookahead0'])} | {r['err_lookahead0']:+.1%} | " if lookahead else ""
        lines.append(f"| {r['name']} | {r['k']} | {_ms(r['comm'], 3)} | {_ms(r['sim'])} | {_ms(r['default'])} | "
                     f"{r['err_default']:+.1%} | {ok} | {extra}{_gap(r, ' | ', ' | ')} | {r['slowdown']:.2f} | "
                     f"{r['others']:.2f} |")
    return lines + (_time_summary(rows) if rows else [])


def _time_summary(rows: list[dict]) -> list[str]:
    """What the rows above say, in numbers from them, and the mechanisms behind each part of the gap."""
    gap = sum(r["gap"] for r in rows)
    parts = {key: sum(r[key] for r in rows) / gap for key in ("passes", "posts", "copies", "waits")}
    within = sum(abs(r["err_default"]) <= TIME_TARGET for r in rows)
    comm = statistics.median(c for r in rows for c in r["comm"])
    per_post = statistics.median(r["per_post"] for r in rows)
    spread = max((max(r["sim"]) - min(r["sim"])) / min(r["sim"]) for r in rows)
    return [
        "",
        f"{within} of {len(rows)} schedules within {TIME_TARGET:.0%}. Of the gaps summed over the rows: passes "
        f"{parts['passes']:.0%}, posts {parts['posts']:.0%}, copies {parts['copies']:.0%}, waits "
        f"{parts['waits']:.0%}. What `ir.simulate` on these costs leaves out, as measured here: (1) posting costs "
        f"the compute thread time: a batch of posts took {per_post:.2f} ms (median over the rows) inside the "
        f"pipeline, against a whole one-way message of {comm:.3f} ms (median ping-pong) between two idle ranks; the "
        "simulator counts a post as zero-time and the message as latency only. (2) Passes run slower in the "
        "pipeline than alone (`slowdown`), although two profiles run at once on the two cores are no slower than "
        "one (checked by hand): likely gloo's I/O threads taking the core mid-pass, and activations gone cold by "
        "the time a unit's backward runs (the profile runs a unit's passes back to back). (3) Waits: messages "
        "land later than the idle ping-pong says (the sender's post comes late by (1), and the gloo threads that "
        "move the data need a core that both ranks' compute holds). (4) OFFLOAD/RELOAD "
        "are synchronous copies on CPU but free in the profiled costs. Besides, the profiled costs themselves "
        f"move between runs (the simulated column: up to {spread:.0%} apart within a row), so one profile alone "
        "can put a row outside the target; rows whose `others` is well above 0 ran while other work shared the two "
        "cores, which inflates passes, posts and waits alike.",
    ]


def _block_params() -> int:
    one = sum(p.numel() for layer in tiny_gpt(layers=1, **MODEL).build_layers() for p in layer.parameters())
    two = sum(p.numel() for layer in tiny_gpt(layers=2, **MODEL).build_layers() for p in layer.parameters())
    return two - one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per schedule and runtime (default {RUNS})")
    parser.add_argument("--only", help="comma-separated schedule names (default: the whole library)")
    parser.add_argument("--timing-runs", type=int, default=TIMING_RUNS,
                        help=f"runs per schedule of (c), the worst reported (default {TIMING_RUNS})")
    parser.add_argument("--timed", help="comma-separated schedules for (c), or 'all' (default: those of --only, "
                        f"else {', '.join(TIMED)})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the table (default {OUT})")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BASELINES)
    if args.timed:
        timed = names if args.timed == "all" else args.timed.split(",")
    else:
        timed = names if args.only else list(TIMED)
    start = time.perf_counter()
    with WorkerGroup(P, timeout=TIMEOUT, threads=1) as group:
        speed_rows = speed(group, names, args.runs)
        memory_rows = memory(group, names)
        time_rows = timing(group, timed, args.timing_runs)
    text = render(speed_rows, memory_rows, time_rows, time.perf_counter() - start, args.runs, args.timing_runs)
    write_new(args.out, text, overwrite=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
