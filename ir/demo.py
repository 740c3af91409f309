"""The IR demo: build, verify, simulate, lower and draw two hand-made schedules.

1F1B (p ranks, standard placement, fused backward) and a V-shape schedule with
split backward made by ``ir.examples.greedy``, both costed with the Zero Bubble
paper's profiled 1.5B-model pass times (arXiv 2401.10241, Table: F 18.522, B 18.086,
W 9.337, comm 0.601 ms per stage; halved per stage for the V-shape's 2p half-size
stages) and one unit of activation memory per full stage and microbatch. Writes
JSON, torch CSV, Gantt PNG and Chrome trace files to an output folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ir.costs import Costs
from ir.examples import greedy, one_f_one_b
from ir.lower import lower
from ir.placement import Placement
from ir.schedule import Schedule
from ir.simulate import simulate
from ir.verify import verify

# Zero Bubble PP (Qi et al., arXiv 2401.10241), profiled 1.5B model: ms per stage pass.
ZB_1P5B = {"f": 18.522, "b": 18.086, "w": 9.337, "comm": 0.601}


def demo_schedules(p: int, m: int) -> list[tuple[str, Schedule, Costs]]:
    full = Costs.uniform(p, act=1.0, wact=0.5, **ZB_1P5B)
    half = Costs.uniform(2 * p, act=0.5, wact=0.25, **{k: v / 2 if k != "comm" else v for k, v in ZB_1P5B.items()})
    return [
        ("1f1b", one_f_one_b(p, m), full),
        ("v-greedy", greedy(Placement.v_shape(p), m, split_backward=True, costs=half), half),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ir", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", "-p", type=int, default=4, help="pipeline ranks (default 4)")
    parser.add_argument("--microbatches", "-m", type=int, default=8, help="microbatches (default 8)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    parser.add_argument("--force", action="store_true", help="overwrite files already in the output folder")
    args = parser.parse_args(argv)
    if args.ranks < 1 or args.microbatches < 1:
        parser.error("--ranks and --microbatches must be >= 1")
    from ir.jsonio import save
    from ir.plot import plot_timeline
    from ir.torch_csv import write_torch_csv
    from ir.trace import write_chrome_trace

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'schedule':<10} {'makespan ms':>12} {'bubble':>7} {'peak act (per rank)':<28} sends+recvs")
    try:
        for name, schedule, costs in demo_schedules(args.ranks, args.microbatches):
            timeline = simulate(schedule, costs)  # runs verify's structural rules first
            lowered = lower(schedule, costs)
            verify(lowered)
            comms = sum(a.op.is_comm for _, _, a in lowered.actions())
            peaks = " ".join(f"{x:g}" for x in timeline.peak)
            print(f"{name:<10} {timeline.makespan:>12.3f} {timeline.bubble_ratio:>7.3f} {peaks:<28} {comms}")
            stem = args.out / name
            save(schedule, stem.with_suffix(".json"), overwrite=args.force)
            write_torch_csv(schedule, stem.with_suffix(".csv"), overwrite=args.force)
            plot_timeline(timeline, stem.with_suffix(".png"), title=f"{name}, p={args.ranks}, m={args.microbatches}",
                          mem_unit="units", overwrite=args.force)
            write_chrome_trace(timeline, stem.with_suffix(".trace.json"), overwrite=args.force)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote JSON, torch CSV, Gantt PNG and Chrome trace per schedule to {args.out}/")
    return 0
