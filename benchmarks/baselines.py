"""Every baseline at p=8, m=32: makespan, bubble and peak activation memory, with unit
costs and with the Zero Bubble paper's profiled 1.5B costs. Writes
benchmarks/results/baselines.md.

Cost model (stated so the numbers can be checked by hand):
- One "full stage" is 1/p of the model. A family with c stages per rank (interleaved v,
  V-shape 2, waves 2W) and k slices splits each full stage's pass times and activations
  evenly: per unit f = F / (c k), act = 1 / (c k), and so on.
- unit costs: F = B = W = 1 per full stage, no comm latency.
- ZB 1.5B (Qi et al., arXiv 2401.10241, profiled 1.5B model): F 18.522, B 18.086,
  W 9.337, comm 0.601 ms per full stage.
- Memory in units of one full stage's activations for one microbatch (act = 1):
  W keeps wact = 14/34 of it after B (inputs of the linear layers, 14sbh of the 34sbh per
  layer in Korthikanti et al. 2022); a recomputed unit keeps its input, inp = 1/16.
- Offload: copying one full stage's activations takes as long as its forward pass.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ir import simulate, verify  # noqa: E402
from synth.baselines import BASELINES, build  # noqa: E402
from synth.baselines.common import even_split_costs  # noqa: E402

P, M = 8, 32
WACT, INP = 14 / 34, 1 / 16
COSTS = {
    "unit": {"f": 1.0, "b": 1.0, "w": 1.0, "comm": 0.0},
    "zb-1.5b": {"f": 18.522, "b": 18.086, "w": 9.337, "comm": 0.601},
}
RESULTS = Path(__file__).resolve().parent / "results" / "baselines.md"


def costs_for(schedule, f: float, b: float, w: float, comm: float):
    """The docstring's cost model; copying one full stage's activations takes one forward time."""
    return even_split_costs(schedule, f=f, b=b, w=w, comm=comm, act=1.0, wact=WACT, inp=INP, copy_bandwidth=1.0 / f)


def rows() -> list[tuple]:
    out = []
    for name in BASELINES:
        schedule = build(name, P, M)
        verify(schedule)
        for label, c in COSTS.items():
            timeline = simulate(schedule, costs_for(schedule, **c))
            out.append((name, label, schedule.placement.kind.value, schedule.num_stages, schedule.k,
                        timeline.makespan, timeline.bubble_ratio, max(timeline.peak), timeline.peak[0]))
    return out


def main() -> None:
    lines = [
        "# Baselines at p=8, m=32",
        "",
        f"Made by `benchmarks/baselines.py` (Python {platform.python_version()}, {platform.machine()}); "
        "simulated with `ir.simulate`, so every number is exact for the stated cost model (see the script's "
        "docstring). No solver is involved: nothing here is optimized or time-limited.",
        "Memory is in units of one full stage's activations for one microbatch; 1F1B's peak is p = 8.",
        "",
        "| baseline | costs | placement | stages | slices | makespan | bubble | peak (max rank) | peak rank 0 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, label, kind, stages, k, makespan, bubble, peak, peak0 in rows():
        lines.append(f"| {name} | {label} | {kind} | {stages} | {k} | {makespan:.3f} | {bubble:.4f} | "
                     f"{peak:.3f} | {peak0:.3f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
