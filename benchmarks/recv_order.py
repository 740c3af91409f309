"""Where ``ir.lower`` posts receives, measured on the torch.distributed executor (gloo, CPU).

Writes ``benchmarks/results/recv_order.md``. Three ways to run the same schedules:

- ``new, lookahead 0``: this ``ir.lower`` (each RECV as early as the per-peer message order allows)
  and the program run as lowered (``RunConfig(recv_lookahead=0)``, what NCCL always does);
- ``old, lookahead 0``: the previous lowering (RECVs merged in at the simulated moment their data
  exists) run as lowered;
- ``old, lookahead 2``: the previous lowering with the executor's run-time patch that moves every
  receive two compute actions earlier (``RunConfig.recv_lookahead=2``, gloo only: it ignores the
  per-peer order, which gloo's tag matching does not need);
- ``new, lookahead 2``: both, to see whether the run-time patch still buys anything.

The previous lowering is read from ``--old-lower`` (a copy of the old ``ir/lower.py``); without
that file, from the reference copy in ``tests/ir/test_lower.py`` (``time_ordered_lowering``),
which makes the same programs (checked whenever both are there). Both lowerings use unit costs,
as the executor does.

A run is ``WARMUP`` untimed steps and ``STEPS`` timed ones (lr 0, so every step does the same
work); a step's time is the slowest rank's (``StepRecord.seconds``, barrier to end of program);
a run's figure is the median of its steps; each configuration runs ``REPEATS`` times, the variants
taking turns to go first, and the table gives the worst of those medians. The machine is shared,
so its load drifts between repeats; the paired columns divide the new lowering's median by the
other variant's in the same repeat (seconds apart) and give the median of those ratios. Every
variant's losses must agree (same batch, same weights). Also reported: how many compute actions ahead of its
consumer a RECV is posted, on average (``lead``), for each lowering.

Fixed: tiny-gpt (``MODEL``, one block per stage), ``MICROBATCH`` sequences per microbatch,
m = ``M``, one torch thread per rank, seed 0. Run: ``python benchmarks/recv_order.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backends.torch_exec.launch import WorkerGroup  # noqa: E402
from backends.torch_exec.model import tiny_gpt  # noqa: E402
from backends.torch_exec.worker import RunConfig, run_rank  # noqa: E402
from ir import Costs, Schedule, lower  # noqa: E402
from ir.deps import ProgramIndex, messages  # noqa: E402
from synth.baselines import build  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "recv_order.md"
OLD_LOWER = Path("/tmp/recv_order/old_lower.py")
MODEL = {"hidden": 128, "heads": 4, "seq_len": 64, "vocab": 256}
MICROBATCH, M = 4, 8
WARMUP, STEPS, REPEATS = 2, 12, 3
TIMEOUT = 120.0
CASES = [(name, p) for p in (2, 4) for name in ("1f1b", "interleaved", "zb-h1", "zb-v")]
VARIANTS = [("new, lookahead 0", "new", 0), ("old, lookahead 0", "old", 0), ("old, lookahead 2", "old", 2),
            ("new, lookahead 2", "new", 2)]


def old_lowering(path: Path):
    """The previous ``lower``: from ``path`` if it exists, else the reference copy in the tests."""
    from tests.ir.test_lower import time_ordered_lowering

    def reference(schedule: Schedule) -> Schedule:
        lowered = time_ordered_lowering(schedule, Costs.uniform(schedule.num_stages, schedule.k))
        if lowered != lower(schedule, early_recvs=False):
            raise RuntimeError("lower(early_recvs=False) no longer makes the previous lowering's programs")
        return lowered

    if not path.exists():
        return reference, "the reference copy in tests/ir/test_lower.py"
    spec = importlib.util.spec_from_file_location("old_ir_lower", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def old(schedule: Schedule) -> Schedule:
        lowered = module.lower(schedule)
        if lowered.ranks != reference(schedule).ranks:
            raise RuntimeError(f"{path} and tests/ir/test_lower.py lower {schedule.meta.get('baseline')} differently")
        return lowered

    return old, f"`{path}` (same programs as the reference copy in tests/ir/test_lower.py)"


def lead(lowered: Schedule) -> float:
    """Mean number of compute actions between a RECV and its (first) consumer on its rank."""
    ix = ProgramIndex(lowered)
    total, msgs = 0, messages(ix)
    for msg in msgs:
        rank, at = ix.where[msg.recv]
        _, use = ix.where[msg.consumers[0]]
        total += sum(1 for a in lowered.ranks[rank][at:use] if not a.op.is_comm)
    return total / max(1, len(msgs))


def measure(group: WorkerGroup, schedules: dict[str, Schedule], repeats: int) -> dict[str, dict]:
    """Per variant: the median step of each repeat (seconds) and the runs' losses (one tuple per run, by step)."""
    spec = tiny_gpt(layers=next(iter(schedules.values())).num_stages, **MODEL)
    out = {label: {"medians": [], "losses": set()} for label, _, _ in VARIANTS}
    for rep in range(repeats):
        order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
        for label, which, lookahead in order:
            cfg = RunConfig(schedules[which], spec, MICROBATCH * M, steps=WARMUP + STEPS, timeout=TIMEOUT,
                            recv_lookahead=lookahead)
            results = group.run(run_rank, cfg)
            steps = [max(r.steps[n].seconds for r in results) for n in range(WARMUP, WARMUP + STEPS)]
            out[label]["medians"].append(statistics.median(steps))
            last = next(r for r in results if schedules[which].num_stages - 1 in r.stages)
            out[label]["losses"].add(tuple(round(s.loss, 4) for s in last.steps))
    return out


def _cpu_name() -> str:
    """The CPU's model name, as benchmarks/executor.py writes it (its function, loaded from the file)."""
    spec = importlib.util.spec_from_file_location("executor_bench", Path(__file__).with_name("executor.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._cpu_name()


def render(rows: list[dict], seconds: float, source: str, repeats: int) -> str:
    labels = [label for label, _, _ in VARIANTS]
    lines = [
        "# Receive placement: `ir.lower` posting early against the executor's run-time lookahead",
        "",
        f"Machine: {os.cpu_count()}-core {platform.machine()} CPU ({_cpu_name()}), shared with other jobs; "
        f"torch {torch.__version__}, gloo, one process and one torch thread per rank (p = 4 runs 4 processes "
        f"on {os.cpu_count()} cores). Model tiny-gpt, hidden {MODEL['hidden']}, {MODEL['heads']} heads, seq "
        f"{MODEL['seq_len']}, vocab {MODEL['vocab']}, one block per stage, fp32; m = {M} microbatches of "
        f"{MICROBATCH} sequences. Old lowering: {source}. Written by `python benchmarks/recv_order.py` in "
        f"{seconds:.0f} s.",
        "",
        f"Step time: slowest rank, barrier to end of program; median of {STEPS} steps after {WARMUP} warm-up "
        f"steps; worst of {repeats} repeats (the variants taking turns to go first), in ms. `lead`: compute "
        "actions between a RECV and its consumer, mean over messages (old / new lowering). Ratios below 1 mean "
        "the new lowering is faster.",
        "",
        "| schedule | p | stages | lead old / new | " + " | ".join(f"{label} ms" for label in labels)
        + " | new 0 / old 0 | new 0 / old 2 | paired new 0 / old 0 | paired new 0 / old 2 |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in labels) + " | --- | --- | --- | --- |",
    ]
    for r in rows:
        runs = [r["runs"][label]["medians"] for label in labels]
        worst = [max(m) * 1e3 for m in runs]
        paired = [statistics.median(a / b for a, b in zip(runs[0], runs[i], strict=True)) for i in (1, 2)]
        lines.append(f"| {r['name']} | {r['p']} | {r['stages']} | {r['lead_old']:.2f} / {r['lead_new']:.2f} | "
                     + " | ".join(f"{w:.1f}" for w in worst)
                     + f" | {worst[0] / worst[1]:.3f} | {worst[0] / worst[2]:.3f} | {paired[0]:.3f} "
                     f"| {paired[1]:.3f} |")
    lines += ["", "All repeats' medians (ms), per variant in the column order above:", ""]
    for r in rows:
        per = "; ".join(", ".join(f"{t * 1e3:.1f}" for t in r["runs"][label]["medians"]) for label in labels)
        lines.append(f"- {r['name']} p={r['p']}: {per}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-lower", type=Path, default=OLD_LOWER, help="a copy of the previous ir/lower.py")
    parser.add_argument("--only", nargs="*", help="schedule names to run (default: all)")
    parser.add_argument("--p", type=int, nargs="*", help="pipeline sizes to run (default: 2 and 4)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs per configuration (worst one reported)")
    args = parser.parse_args(argv)
    old, source = old_lowering(args.old_lower)
    began = time.perf_counter()
    rows = []
    for p in sorted({p for _, p in CASES if not args.p or p in args.p}):
        with WorkerGroup(p, timeout=TIMEOUT, threads=1) as group:
            for name, q in CASES:
                if q != p or (args.only and name not in args.only):
                    continue
                schedule = build(name, p, M)
                schedules = {"new": lower(schedule), "old": old(schedule)}
                assert schedules["new"].ranks != schedules["old"].ranks
                runs = measure(group, schedules, args.repeats)
                losses = set().union(*(v["losses"] for v in runs.values()))
                if len(losses) != 1:
                    raise RuntimeError(f"{name} p={p}: the runs' losses differ: {sorted(losses)}")
                rows.append({"name": name, "p": p, "stages": schedule.num_stages, "runs": runs,
                             "lead_old": lead(schedules["old"]), "lead_new": lead(schedules["new"])})
                print(f"{name} p={p}: " + ", ".join(f"{label} {max(v['medians']) * 1e3:.1f} ms"
                                                    for label, v in runs.items()), flush=True)
    text = render(rows, time.perf_counter() - began, source, args.repeats)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
