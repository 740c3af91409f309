"""The ``synth`` command.

Today it has one subcommand, ``synth show FILE``: verify and simulate a saved schedule
(JSON or torch CSV) with uniform per-stage costs, print its summary, and optionally draw
it. Synthesis itself (``synth --mem-cap 40GB --stages 8``) arrives with the
building-block synthesizer; until then the command says so instead of guessing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ir import Costs, ScheduleError, simulate, verify


def _load(path: Path):
    from ir.jsonio import load
    from ir.torch_csv import read_torch_csv

    return read_torch_csv(path) if path.suffix.lower() == ".csv" else load(path)


def _show(args: argparse.Namespace) -> int:
    schedule = _load(args.file)
    verify(schedule)
    costs = Costs.uniform(schedule.num_stages, schedule.k, f=args.f, b=args.b, w=args.w, comm=args.comm)
    timeline = simulate(schedule, costs)
    print(f"{args.file}: p={schedule.p} stages={schedule.num_stages} m={schedule.m} k={schedule.k} "
          f"placement={schedule.placement.kind.value}")
    print(f"costs per stage: F={args.f:g} B={args.b:g} W={args.w:g} comm={args.comm:g}; activations in units")
    print(timeline.summary())
    if args.plot:
        from ir.plot import plot_timeline

        plot_timeline(timeline, args.plot, title=str(args.file), mem_unit="units", overwrite=args.force)
        print(f"wrote {args.plot}")
    if args.trace:
        from ir.trace import write_chrome_trace

        write_chrome_trace(timeline, args.trace, overwrite=args.force)
        print(f"wrote {args.trace}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synth", description="pipesynth: pipeline schedules, checked and simulated.")
    sub = parser.add_subparsers(dest="command")
    show = sub.add_parser("show", help="verify, simulate and summarise a saved schedule (.json or torch .csv)")
    show.add_argument("file", type=Path)
    for name, default in (("f", 1.0), ("b", 1.0), ("w", 1.0), ("comm", 0.0)):
        show.add_argument(f"--{name}", type=float, default=default, help=f"{name} time per stage (default {default:g})")
    show.add_argument("--plot", type=Path, help="write a Gantt PNG here")
    show.add_argument("--trace", type=Path, help="write a Chrome trace JSON here")
    show.add_argument("--force", action="store_true", help="overwrite existing output files")
    args = parser.parse_args(argv)
    if args.command != "show":
        print("synth: schedule synthesis (synth --mem-cap ... --stages ...) is not built yet; "
              "available now: 'synth show FILE'. The IR demo is 'python -m ir'.", file=sys.stderr)
        return 2
    try:
        return _show(args)
    except (ScheduleError, ValueError, OSError) as err:
        print(f"synth show: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
