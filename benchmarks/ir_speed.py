"""How fast the IR passes are: verify, simulate and lower on 1F1B and a greedy V-shape
schedule, p in {4, 8, 16}, m in {4p}. Writes benchmarks/results/ir_speed.md.

Each figure is the median of 5 runs (wall clock, time.perf_counter) on this machine;
the synthesizer calls these passes on every candidate, so they must stay cheap.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ir import Costs, Placement, lower, simulate, verify  # noqa: E402
from ir.examples import greedy, one_f_one_b  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ir_speed.md"


def _median_ms(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    rows = []
    for p in (4, 8, 16):
        m = 4 * p
        cases = [("1f1b", one_f_one_b(p, m)), ("v-greedy", greedy(Placement.v_shape(p), m, split_backward=True))]
        for name, schedule in cases:
            costs = Costs.uniform(schedule.num_stages, comm=0.1)
            actions = sum(len(prog) for prog in schedule.ranks)
            lowered = lower(schedule, costs)
            rows.append((name, p, m, actions, _median_ms(lambda s=schedule: verify(s)),
                         _median_ms(lambda s=schedule, c=costs: simulate(s, c)),
                         _median_ms(lambda s=schedule, c=costs: lower(s, c)),
                         _median_ms(lambda s=lowered: verify(s))))
    lines = [
        "# IR pass speed",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}; "
        "median of 5 runs, milliseconds. Made by `benchmarks/ir_speed.py`.",
        "",
        "| schedule | p | m | actions | verify | simulate | lower | verify lowered |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join([name, str(p), str(m), str(a)] + [f"{t:.1f}" for t in times]) + " |"
              for name, p, m, a, *times in rows]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
