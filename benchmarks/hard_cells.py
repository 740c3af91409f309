"""The three unit-cost cells where the cap binds hardest (issue 13), run from scratch through the
CLI as a user would, three times each; writes benchmarks/results/hard_cells.md.

Problem (stated so it can be checked by hand): F = B = W = 1 per stage, act = wact = 1 (a unit's
memory is held from its F's start to its W's end), no comm, standard placement, split backward,
no recompute or offload, the library excluded (``--no-library``), memory cap p/2 activations:

    synth --costs unit.json --stages P --microbatches M --mem-cap P/2 --placement standard \\
          --no-recompute --no-offload --no-library --time-limit 60 -o cell.json

Cells and the best schedules known (from the issue, found by independent CP-SAT runs): p=8, m=64:
295; p=16, m=32: 155; p=16, m=64: 291. Targets: at most 296, 156 and 292. Each written schedule
is loaded again, verified under the cap (``ir.verify``) and re-simulated; the table reports the
worst of the three runs, the lower bound ``synth`` printed, and the wall time.

Usage: ``python benchmarks/hard_cells.py [--time-limit 60] [--runs 3] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ir import Costs, simulate, verify  # noqa: E402
from ir.jsonio import load  # noqa: E402

CELLS = ((8, 64, 296), (16, 32, 156), (16, 64, 292))
UNIT = {"f": 1, "b": 1, "w": 1, "act": 1, "wact": 1, "comm": 0}
RESULTS = ROOT / "benchmarks" / "results" / "hard_cells.md"


def run_once(p: int, m: int, time_limit: float, tmp: Path) -> dict:
    """One CLI run of the cell; the written schedule re-verified and re-simulated."""
    costs_file, out = tmp / "unit.json", tmp / f"cell_p{p}_m{m}.json"
    costs_file.write_text(json.dumps(UNIT), encoding="utf-8")
    cap = p // 2
    cmd = [sys.executable, "-m", "synth.cli", "--costs", str(costs_file), "--stages", str(p), "--microbatches",
           str(m), "--mem-cap", str(cap), "--placement", "standard", "--no-recompute", "--no-offload",
           "--no-library", "--time-limit", str(time_limit), "-o", str(out), "--force"]
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10 * time_limit + 300)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    schedule = load(out)
    costs = Costs.uniform(p, f=1, b=1, w=1, act=1, wact=1)
    verify(schedule, costs, mem_cap=float(cap))
    timeline = simulate(schedule, costs)
    bound = re.search(r"lower bound: ([0-9,.]+)", proc.stdout)
    chosen = re.search(r"^(\S+) \(chosen\)", proc.stdout, re.MULTILINE)
    return {"makespan": timeline.makespan, "peak": max(timeline.peak), "seconds": seconds,
            "bound": float(bound.group(1).replace(",", "")) if bound else None,
            "chosen": chosen.group(1) if chosen else "?"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p, m, target in CELLS:
            runs = [run_once(p, m, args.time_limit, Path(tmp)) for _ in range(args.runs)]
            for r in runs:
                print(f"p={p} m={m}: {r['chosen']} {r['makespan']:g} (bound {r['bound']}), {r['seconds']:.1f} s",
                      flush=True)
            rows.append((p, m, target, runs))
    lines = [
        "# The hard unit-cost cells, from scratch",
        "",
        "Made by `benchmarks/hard_cells.py` (the problem and the command are in its docstring): F = B = W = 1, "
        "act = wact = 1, no comm, standard placement, cap p/2, no recompute/offload, `--no-library`, "
        f"`--time-limit {args.time_limit:g}`, {args.runs} runs per cell, one at a time. Each written schedule was "
        "re-verified under the cap and re-simulated; the worst run is reported.",
        "",
        "| p | m | cap | target | worst makespan | all runs | lower bound | gap (worst) | chosen | seconds (max) |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for p, m, target, runs in rows:
        worst = max(r["makespan"] for r in runs)
        bound = max((r["bound"] for r in runs if r["bound"] is not None), default=None)
        gap = "-" if bound is None else f"{100 * (worst - bound) / worst:.1f}%"
        every = ", ".join(f"{r['makespan']:g}" for r in runs)
        lines.append(f"| {p} | {m} | {p // 2} | {target} | {worst:g} | {every} "
                     f"| {bound if bound is not None else '-'} | {gap} | {runs[0]['chosen']} | "
                     f"{max(r['seconds'] for r in runs):.1f} |")
    lines += ["", f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
