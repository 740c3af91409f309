"""The memory/throughput frontier (``synth.research.frontier``) in two settings, every library
schedule placed against it. Writes benchmarks/results/frontier.md and a PNG per setting.

1. llama2-13b on 8 x A100-40GB (the default ``synth`` problem: seq 4096, micro-batch 1, m = 32,
   static memory counted, recompute and offload allowed), from scratch (``--no-library``: the
   library only as points) three times, the worst value at each library schedule's peak
   reported; and once with the library taking part (the safety net, as ``synth`` runs by default).
2. Unit costs at p = 8, m = 32 (F = B = W = 1 and one activation unit per full stage, no comm),
   recompute allowed, offload off (free with unlimited copy bandwidth, which would flatten the
   frontier), from scratch.

Every point's solve gets ``SOLVE_SECONDS`` (the default ``synth`` time limit); runs one at a time.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ir import Costs, UnitCost  # noqa: E402
from synth.cli.frontier import rate_columns, summary_lines, tokens_per_s  # noqa: E402
from synth.cli.source import ModelSource  # noqa: E402
from synth.costs.hardware import hardware  # noqa: E402
from synth.costs.problem import Training  # noqa: E402
from synth.costs.spec import preset  # noqa: E402
from synth.research.frontier import frontier, frontier_table, plot_frontier  # noqa: E402
from synth.search import DEFAULT_TIME_LIMIT, PLACEMENTS, SynthOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SOLVE_SECONDS = DEFAULT_TIME_LIMIT
POINTS = 12
REPEATS = 3
P, M = 8, 32


def unit_costs(placement, k):
    share = placement.p / (placement.num_stages * k)
    unit = UnitCost(f=share, b=share, w=share, act=share)
    return Costs(tuple((unit,) * k for _ in range(placement.num_stages)))


class UnitSource:
    """Unit costs as the report helpers read a source: memory in activation units, no tokens/s."""

    memory_label = ""
    label = "unit costs"

    @staticmethod
    def memory(x: float) -> str:
        return f"{x:.4g}"


def run(costs_for, options: SynthOptions, label: str):
    began = time.time()
    result = frontier(costs_for, P, M, options=options, points=POINTS,
                      progress=lambda i, n, pt: print(f"  {label} [{i}/{n}] {pt.solved.makespan:,.1f} ms "
                                                      f"({pt.solved.name}) {pt.seconds:.1f} s", flush=True))
    print(f"  {label}: {time.time() - began:.0f} s", flush=True)
    return result


def worst_at_library(runs) -> list[str]:
    """Per library schedule, the worst (slowest) frontier value at its peak over the repeats."""
    lines = ["| library schedule | peak GiB | its makespan ms | frontier at its peak, worst of "
             f"{len(runs)} ms | all repeats ms | frontier's gain (worst) |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    won = 0
    for c in sorted(runs[0].library, key=lambda c: (c.peak, c.makespan)):
        values = [r.at(c.peak) for r in runs]
        if any(v is None for v in values):
            lines.append(f"| {c.name} | {c.peak / 2**30:.2f} | {c.makespan:,.0f} | below the least cap | | |")
            continue
        worst = max(v.makespan for v in values)
        won += worst <= c.makespan * (1 + 1e-9)
        lines.append(f"| {c.name} | {c.peak / 2**30:.2f} | {c.makespan:,.0f} | {worst:,.0f} | "
                     f"{', '.join(f'{v.makespan:,.0f}' for v in values)} | {100 * (c.makespan / worst - 1):+.1f}% |")
    lines += ["", f"From scratch, the frontier (worst repeat) is at least as fast as {won} of {len(runs[0].library)} "
                  "library schedules at their own peak."]
    return lines


def main() -> None:
    began = time.time()
    lines = ["# Memory/throughput frontier", "",
             f"Made by `benchmarks/frontier.py` (Python {platform.python_version()}, {platform.machine()}, "
             f"{os.cpu_count()} cores). Each point is one `synthesize` call with a {SOLVE_SECONDS:g} s time limit "
             f"(construct, blocks, full horizon or LNS), at most {POINTS} points per frontier; makespans and peaks "
             "are `ir.simulate`'s. 'proven' = the point's makespan meets the lower bound over the placements "
             f"searched ({', '.join(PLACEMENTS)}); the gap column is to that bound.", ""]
    spec, hw = preset("llama2-13b"), hardware("a100-40gb")
    source = ModelSource(spec, hw, Training(), M, "balanced", "balanced")
    rate, columns = rate_columns(source)
    scratch = SynthOptions(placements=PLACEMENTS, time_limit=SOLVE_SECONDS, baselines=False, optimize="auto")
    runs = [run(source.costs_for, scratch, f"llama2-13b scratch #{i + 1}") for i in range(REPEATS)]
    with_library = run(source.costs_for, SynthOptions(placements=PLACEMENTS, time_limit=SOLVE_SECONDS,
                                                      optimize="auto"), "llama2-13b with library")
    worst = max(runs, key=lambda r: sum(pt.chosen.makespan for pt in r.points))
    title = f"llama2-13b on {P} x A100-40GB, seq 4096, m = {M}"
    plot_frontier(worst, RESULTS / "frontier_llama2-13b.png", scale=2**30, unit="GiB",
                  title=title + ", from scratch", throughput=tokens_per_s(source), throughput_label="tokens/s",
                  overwrite=True)
    lines += [f"## {title}", "", "![frontier](frontier_llama2-13b.png)", "",
              "### From scratch (`--no-library`): the library only as points", "",
              *summary_lines(worst, source), f" (The slowest of {REPEATS} repeats by summed makespan.)", "",
              *frontier_table(worst, source.memory, "GiB", rate, columns), "",
              f"### From scratch, {REPEATS} repeats at each library schedule's peak", "", *worst_at_library(runs), "",
              "### With the library taking part (the default `synth`)", "",
              *summary_lines(with_library, source), "", *frontier_table(with_library, source.memory, "GiB", rate,
                                                                          columns), ""]
    unit_options = SynthOptions(placements=PLACEMENTS, time_limit=SOLVE_SECONDS, baselines=False, offload=False,
                                optimize="auto")
    unit = run(unit_costs, unit_options, "unit costs")
    plot_frontier(unit, RESULTS / "frontier_unit.png", unit="full-stage activations",
                  title=f"unit costs (F = B = W = 1), p = {P}, m = {M}, from scratch, offload off", overwrite=True)
    lines += [f"## Unit costs, p = {P}, m = {M} (F = B = W = 1 per full stage, no comm, offload off)", "",
              "![frontier](frontier_unit.png)", "", *summary_lines(unit, UnitSource), "",
              *frontier_table(unit, UnitSource.memory, "activations"), "",
              f"Total wall time {time.time() - began:.0f} s."]
    (RESULTS / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
