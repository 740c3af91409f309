"""``synth frontier``: the memory/throughput frontier of one problem (``synth.research.frontier``).

Takes ``synth``'s problem and synthesis options (``--time-limit`` is per point; ``--mem-cap``, if
given, is the top of the sweep), prints a progress line per solved point on stderr and the table
on stdout, and writes ``PREFIX.md``, ``PREFIX.csv`` and ``PREFIX.png`` (checked before any solve;
nothing existing is overwritten without ``--force``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ir.files import check_outputs, write_new
from synth.cli.source import ModelSource, resolve_cap
from synth.costs.args import fixed_knobs, int_at_least
from synth.research.frontier import Frontier, FrontierPoint, frontier, frontier_csv, frontier_table, plot_frontier

__all__ = ["ProgressBar", "add_frontier_arguments", "frontier_command", "rate_columns", "summary_lines", "tokens_per_s"]

DEFAULT_POINTS = 10


def add_frontier_arguments(parser: argparse.ArgumentParser) -> None:
    from synth.cli.commands import add_synth_arguments

    add_synth_arguments(parser, outputs=False)
    group = parser.add_argument_group("frontier")
    group.add_argument("--points", type=int_at_least(2, "a frontier needs at least 2 points, its two ends"),
                       default=DEFAULT_POINTS,
                       help=f"solves in all, both ends included; each gets --time-limit (default {DEFAULT_POINTS})")
    group.add_argument("--no-anchors", dest="anchors", action="store_false",
                       help="do not solve at the library schedules' peaks (default: solve there too)")
    group.add_argument("--out", type=Path, default=Path("frontier"), metavar="PREFIX",
                       help="write PREFIX.md, PREFIX.csv and PREFIX.png (default frontier)")
    group.add_argument("--force", action="store_true", help="overwrite existing output files")


class ProgressBar:
    """One line per solved point on stderr: ``frontier [3/10] cap 31.20 GiB: 12,345 ms (synth/v), 8.1 s``."""

    def __init__(self, memory, unit: str, stream=None) -> None:
        self.memory, self.unit, self.stream = memory, unit, stream

    def __call__(self, done: int, total: int, point: FrontierPoint) -> None:
        width = len(str(total))
        cap = "none" if point.cap is None else f"{self.memory(point.cap)} {self.unit}".rstrip()
        bar = "#" * done + "." * max(0, total - done)
        print(f"frontier [{bar}] {done:>{width}}/{total} cap {cap}: {point.solved.makespan:,.1f} ms "
              f"({point.solved.name}), {point.seconds:.1f} s", file=self.stream or sys.stderr, flush=True)


def frontier_command(args: argparse.Namespace) -> int:
    from synth.cli.commands import problem_source, synth_options

    outputs = [args.out.with_name(args.out.name + suffix) for suffix in (".md", ".csv", ".png")]
    check_outputs(outputs, args.force)  # before any solve, so a refusal costs nothing
    fixed_knobs(args, "synth frontier")
    p, m, source, offload = problem_source(args)
    top = resolve_cap(args.mem_cap, source, p, m) if args.mem_cap is not None else None
    options = synth_options(args, offload)
    unit = source.memory_label
    result = frontier(source.costs_for, p, m, k=args.slices, options=options, points=args.points,
                      anchors=args.anchors, max_cap=top, progress=ProgressBar(source.memory, unit))
    rate, columns = rate_columns(source)
    table = frontier_table(result, source.memory, unit, rate, columns)
    lines = [f"# Frontier: {source.header(p, m, args.slices, None).rsplit(';', 1)[0]}", "",
             *summary_lines(result, source), "", *table]
    print("\n".join(lines))
    write_new(outputs[0], "\n".join(lines) + "\n", overwrite=args.force)
    scale = 2**30 if isinstance(source, ModelSource) else 1.0
    write_new(outputs[1], frontier_csv(result, scale, rate, columns), overwrite=args.force)
    throughput = tokens_per_s(source)
    plot_frontier(result, outputs[2], scale=scale, unit=unit or "the costs' unit",
                  title=f"{source.label}, p={p}, m={m}, k={args.slices}", throughput=throughput,
                  throughput_label="tokens/s" if throughput else "", overwrite=args.force)
    print(f"wrote {', '.join(str(path) for path in outputs)}")
    return 0


def tokens_per_s(source):
    """The figure's throughput: tokens/s from the cost model (None for a costs file: microbatches/s)."""
    if not isinstance(source, ModelSource):
        return None
    return lambda c: source.throughput(c.schedule.placement, c.schedule.k, c.makespan).tokens_per_s


def rate_columns(source):
    """The table's throughput columns: tokens/s and MFU from the cost model; none for a costs file."""
    if not isinstance(source, ModelSource):
        return None, ()

    def rate(c):
        t = source.throughput(c.schedule.placement, c.schedule.k, c.makespan)
        return (f"{t.tokens_per_s:,.0f}", f"{100 * t.mfu:.1f}%")

    return rate, ("tokens/s", "MFU")


def summary_lines(result: Frontier, source) -> list[str]:
    unit = f" {source.memory_label}" if source.memory_label else ""
    proven = sum(pt.proven for pt in result.points)
    library = "library searched too" if result.options.baselines else "from scratch (--no-library)"
    return [f"From {source.memory(result.least)}{unit} (the least cap the search is sure to fit) to "
            f"{source.memory(result.top)}{unit} (where the frontier stops improving): {len(result.points)} solves of "
            f"{result.options.time_limit:g} s each, {library}, {proven} proven optimal over the placements searched "
            f"({', '.join(result.options.placements)}); {result.seconds:.0f} s in all."]
