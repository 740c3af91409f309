"""The ``synth`` command.

``synth [options]`` synthesizes the fastest schedule that fits a memory cap (``synth.cli.commands``);
``synth compare`` lists every candidate; ``synth frontier`` sweeps the memory cap
(``synth.cli.frontier``); ``synth max-model`` finds the largest model at a throughput floor
(``synth.cli.max_model``); ``synth baselines`` lists the schedule library;
``synth show FILE`` (or ``--baseline NAME -p P -m M``) verifies and simulates a schedule with
uniform per-full-stage costs (``--f --b --w --comm``) or a user's ``--costs FILE``
(``synth.costs.user``), prints its summary, and optionally draws it; ``synth costs`` prints the
cost model's table, or the costs file's; ``synth run`` executes a schedule with torch.distributed;
``synth export torchtitan FILE`` writes the torch CSV torchtitan loads and prints the torchtitan
settings that run it (``synth.cli.export``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ir import ScheduleError, simulate
from synth.baselines.common import even_split_costs
from synth.costs.args import add_problem_arguments


def _load(args: argparse.Namespace):
    if args.baseline and args.file is not None:
        raise ValueError(f"give a schedule FILE or --baseline NAME, not both ({args.file} and --baseline "
                         f"{args.baseline})")
    if args.baseline:
        from synth.baselines import build

        return build(args.baseline, args.ranks, args.microbatches)
    if args.file is None:
        raise ValueError("give a schedule FILE (.json or torch .csv) or --baseline NAME")
    from ir.jsonio import load
    from ir.torch_csv import read_torch_csv

    return read_torch_csv(args.file) if args.file.suffix.lower() == ".csv" else load(args.file)


_SHOW_COSTS = {"f": 1.0, "b": 1.0, "w": 1.0, "comm": 0.0}


def _show_costs(args: argparse.Namespace, schedule):
    """The costs ``synth show`` simulates with, and the line that says what they are."""
    if args.costs is None:
        costs = even_split_costs(schedule, f=args.f, b=args.b, w=args.w, comm=args.comm)
        return costs, (f"costs per full stage: F={args.f:g} B={args.b:g} W={args.w:g} comm={args.comm:g}; "
                       "memory in full-stage activations")
    given = [f"--{name}" for name, default in _SHOW_COSTS.items() if getattr(args, name) != default]
    if given:
        raise ValueError(f"--costs {args.costs} gives the costs; drop {', '.join(given)}")
    from synth.costs.user import costs_for, read_user_costs

    user = read_user_costs(args.costs, schedule.p)
    return costs_for(user, schedule.placement, schedule.k), user.describe()


def _show(args: argparse.Namespace) -> int:
    from ir.files import check_outputs

    check_outputs([path for path in (args.plot, args.trace) if path is not None], args.force)
    schedule = _load(args)  # simulate runs verify's structural rules itself
    costs, described = _show_costs(args, schedule)
    timeline = simulate(schedule, costs)
    label = args.baseline or args.file
    print(f"{label}: p={schedule.p} stages={schedule.num_stages} m={schedule.m} k={schedule.k} "
          f"placement={schedule.placement.kind.value}")
    print(described)
    print(timeline.summary())
    if args.plot:
        from ir.plot import plot_timeline

        plot_timeline(timeline, args.plot, title=str(label), mem_unit="units", overwrite=args.force)
        print(f"wrote {args.plot}")
    if args.trace:
        from ir.trace import write_chrome_trace

        write_chrome_trace(timeline, args.trace, overwrite=args.force)
        print(f"wrote {args.trace}")
    return 0


def _costs(args: argparse.Namespace) -> int:
    from synth.costs.args import placement_for, problem_from_args, user_costs_from_args

    if args.costs is not None:
        from synth.costs.user import user_costs_report

        placement = placement_for(args.placement, args.stages, v=args.chunks, waves=args.chunks)
        m = args.microbatches or 4 * args.stages
        print(user_costs_report(user_costs_from_args(args), placement, args.slices, m))
        return 0
    from synth.costs.report import costs_report

    print(costs_report(problem_from_args(args)))
    return 0


def _list_baselines() -> int:
    from synth.baselines import BASELINES

    width = max(len(name) for name in BASELINES)
    for b in BASELINES.values():
        options = ", ".join(f"{k}={v}" for k, v in b.options.items())
        print(f"{b.name:<{width}}  {b.summary}" + (f" [{options}]" if options else "") + f"  ({b.source})")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``synth run``'s arguments; the command itself lives in ``backends.torch_exec.cli`` (imports torch)."""
    from backends.torch_exec.cli import add_run_arguments

    add_run_arguments(parser)


SUBCOMMANDS = ("baselines", "show", "costs", "compare", "frontier", "max-model", "run", "export")


def _synth_parser() -> argparse.ArgumentParser:
    from synth.cli.commands import add_synth_arguments

    parser = argparse.ArgumentParser(
        prog="synth",
        description="pipesynth: the fastest pipeline schedule that fits a memory cap, synthesized by an "
                    "integer program and checked against every hand-designed schedule. Other commands: "
                    + ", ".join(f"'synth {c}'" for c in SUBCOMMANDS) + " (each has --help).",
        epilog="example: synth --mem-cap 40GB --stages 8 (llama2-13b, A100-40GB, seq 4096, 32 microbatches)")
    add_synth_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``synth`` command; Ctrl-C anywhere ends it with one line and exit status 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("synth: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        args = _synth_parser().parse_args(argv)
        from synth.cli.commands import synth_command

        return _guarded("synth", lambda: synth_command(args))
    parser = argparse.ArgumentParser(prog="synth", description="pipesynth: pipeline schedules, checked and simulated.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("baselines", help="list the hand-designed schedules in the library")
    show = sub.add_parser("show", help="verify, simulate and summarise a schedule (.json, torch .csv or a baseline)")
    show.add_argument("file", type=Path, nargs="?", help="a saved schedule (.json or torch .csv)")
    show.add_argument("--baseline", help="build this library schedule instead of reading a file")
    show.add_argument("-p", "--ranks", type=int, default=4, help="ranks, with --baseline (default 4)")
    show.add_argument("-m", "--microbatches", type=int, default=8, help="microbatches, with --baseline (default 8)")
    for name, default in _SHOW_COSTS.items():
        show.add_argument(f"--{name}", type=float, default=default,
                          help=f"{name} time per full stage (default {default:g})")
    show.add_argument("--costs", type=Path, metavar="COSTS",
                      help="per-full-stage costs from a JSON file (as for 'synth --costs') instead of --f --b --w "
                           "--comm; memory then in the file's unit")
    show.add_argument("--plot", type=Path, help="write a Gantt PNG here")
    show.add_argument("--trace", type=Path, help="write a Chrome trace JSON here")
    show.add_argument("--force", action="store_true", help="overwrite existing output files")
    costs = sub.add_parser("costs", help="per-stage times and memory of a model on a GPU (the cost model), or of a "
                                         "--costs FILE split over the placement")
    add_problem_arguments(costs)
    compare = sub.add_parser("compare", help="every baseline and the synthesized schedules on one problem, best first")
    from synth.cli.commands import add_synth_arguments

    add_synth_arguments(compare, outputs=False)
    from synth.cli.frontier import add_frontier_arguments

    add_frontier_arguments(sub.add_parser(
        "frontier", help="the memory/throughput frontier: synthesize at caps from the least any schedule needs to "
                         "where more memory stops helping; a table (md, csv) and a figure, library schedules placed "
                         "against it"))
    from synth.cli.max_model import add_max_model_arguments

    add_max_model_arguments(sub.add_parser(
        "max-model", help="the largest model of a family (layers or width scaled) that trains at a throughput floor "
                          "(--mfu, --tokens-per-s, --at-least 1f1b), beside 1F1B, 1F1B with recompute and the library"))
    run = sub.add_parser("run", help="run a schedule on a real model with torch.distributed (one process per rank)")
    _add_run_arguments(run)
    from synth.cli.export import add_export_arguments

    add_export_arguments(sub.add_parser(
        "export", help="export a schedule for another runtime: 'torchtitan' writes the torch CSV that torchtitan's "
                       "pipeline_parallel_schedule_csv loads and prints the torchtitan settings that run it"))
    args = parser.parse_args(argv)
    if args.command == "baselines":
        return _list_baselines()
    if args.command == "export":
        from synth.cli.export import export_command

        return _guarded("synth export", lambda: export_command(args))
    if args.command == "run":
        from backends.torch_exec.cli import run_command

        return run_command(args)
    if args.command == "compare":
        from synth.cli.commands import compare_command

        return _guarded("synth compare", lambda: compare_command(args))
    if args.command == "max-model":
        from synth.cli.max_model import max_model_command

        return max_model_command(args)
    if args.command == "frontier":
        from synth.cli.frontier import frontier_command

        return _guarded("synth frontier", lambda: frontier_command(args))
    return _guarded(f"synth {args.command}", lambda: _show(args) if args.command == "show" else _costs(args))


def _guarded(name: str, command) -> int:
    """Run ``command``; bad input and refused files become one line on stderr and exit status 1."""
    try:
        return command()
    except (ScheduleError, ValueError, OSError) as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 1

