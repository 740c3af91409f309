"""``synth [options]`` (the best schedule within a memory cap) and ``synth compare`` (every
candidate side by side).

Both take their costs from the cost model (``synth.costs``: model, GPU, shape) or from a user's
``--costs FILE`` (``synth.cli.source``), run ``synth.search.synthesize`` over the placements asked
for, and print a table (``synth.cli.report``). ``synth`` writes the chosen schedule (JSON, and on
request a plot, a Chrome trace and PyTorch's pipelining CSV); nothing existing is overwritten
without ``--force``, and every output path is checked before the solver runs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ir.files import check_writable
from synth.cli.report import Outcome, ProgressLine, compare_lines, synth_lines
from synth.cli.source import FileSource, parse_mem_cap, resolve_cap, source_from_args
from synth.costs.args import add_problem_arguments, placement_for, placements_from_args
from synth.search import DEFAULT_TIME_LIMIT, PLACEMENTS, NoScheduleFits, SynthOptions, synthesize

__all__ = ["ProgressLine", "add_synth_arguments", "compare_command", "synth_command"]

DEFAULT_MICROBATCHES_PER_STAGE = 4


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the time limit must be > 0 seconds, got {text!r}")
    return value


def add_synth_arguments(parser: argparse.ArgumentParser, *, outputs: bool = True) -> None:
    """The problem's options (``--placement auto`` or several kinds), the cap, what the solver
    may do, and (for ``synth``) where to write the result."""
    add_problem_arguments(parser, several_placements=True)
    group = parser.add_argument_group("synthesis")
    group.add_argument("--mem-cap", type=parse_mem_cap, metavar="CAP",
                       help="memory per rank: a size, 40GB (1e9 bytes), 40GiB (2**30) or 4e10 bytes; with --costs a "
                            "plain number in the file's unit; or 1f1b*X: X times the peak of the library's 1F1B "
                            "simulated on these costs (e.g. 1f1b*0.5) (default: the GPU's memory; with --costs "
                            "no cap)")
    group.add_argument("--library", action=argparse.BooleanOptionalAction, default=True,
                       help="--no-library: synthesize from scratch: no library schedule is a candidate or a hint "
                            "(default: the library takes part)")
    group.add_argument("--split-backward", action=argparse.BooleanOptionalAction, default=True,
                       help="separate B (input grads) and W (weight grads) passes (default on)")
    group.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=True,
                       help="let schedules recompute stages' activations; off also skips library schedules that "
                            "recompute (default on; k = 1 only)")
    group.add_argument("--offload", action=argparse.BooleanOptionalAction, default=True,
                       help="let schedules offload stages' activations to host memory; off also skips library "
                            "schedules that offload; always off with a --costs file without 'offload' "
                            "(default on; k = 1 only)")
    group.add_argument("--solver", default="cpsat", choices=["cpsat", "highs", "cbc"],
                       help="cpsat (OR-Tools), or the MILP twin through PuLP: highs or cbc (default cpsat)")
    group.add_argument("--time-limit", type=_seconds, default=DEFAULT_TIME_LIMIT,
                       help="seconds for the whole search: the list schedulers, the blocks (shared among the "
                            f"placements) and the full horizon (default {DEFAULT_TIME_LIMIT:g})")
    group.add_argument("--optimize", default="auto", choices=["auto", "block", "full", "lns"],
                       help="block: list schedulers and building blocks only; full: then the whole full-horizon "
                            "model on the best placement, improving it and proving a bound within --time-limit; "
                            "lns: large-neighbourhood search on that model from the best schedule; auto: full "
                            "when the model is small enough for the time left, else lns (default auto)")
    group.add_argument("--memory-model", default="exact", choices=["exact", "ceil"],
                       help="the block's memory: exact (the periodic curve at every allocation) or ceil "
                            "(Controllable Memory's ceil(lifespan / T) per lifespan) (default exact)")
    if outputs:
        out = parser.add_argument_group("output")
        out.add_argument("-o", "--output", type=Path, default=Path("schedule.json"),
                         help="write the chosen schedule here (default schedule.json)")
        out.add_argument("--plot", type=Path, help="write a Gantt chart with memory curves (PNG) here")
        out.add_argument("--trace", type=Path, help="write a Chrome trace (JSON) here")
        out.add_argument("--torch-csv", type=Path, help="write PyTorch pipelining's CSV schedule here")
        out.add_argument("--force", action="store_true", help="overwrite existing output files")


# ----------------------------------------------------------------------------------------- search
def _run(args: argparse.Namespace) -> Outcome:
    p = args.stages
    m = args.microbatches or DEFAULT_MICROBATCHES_PER_STAGE * p
    placement_for(PLACEMENTS[0], p)  # checks p
    source = source_from_args(args, m)
    cap = resolve_cap(args.mem_cap, source, p, m)
    offload = args.offload and (not isinstance(source, FileSource) or source.user.offload_offered)
    options = SynthOptions(placements=placements_from_args(args), chunks=args.chunks,
                           split_backward=args.split_backward, recompute=args.recompute, offload=offload,
                           solver=args.solver, time_limit=args.time_limit, baselines=args.library,
                           memory=args.memory_model, optimize=getattr(args, "optimize", "block"),
                           progress=ProgressLine())
    try:
        result = synthesize(source.costs_for, p, m, cap, k=args.slices, options=options)
    except NoScheduleFits as err:
        raise ValueError(str(err)) from None
    return Outcome(result, source, cap, p, m, args.slices, library=args.library)


# --------------------------------------------------------------------------------------- commands
def synth_command(args: argparse.Namespace) -> int:
    """``synth``: the best schedule that fits, beside the best fitting baseline; writes it out."""
    outputs = [path for path in (args.output, args.plot, args.trace, args.torch_csv) if path is not None]
    for path in outputs:  # before the solver runs, so a refusal costs nothing
        check_writable(path, args.force)
    outcome = _run(args)
    print("\n".join(synth_lines(outcome)))
    _write(outcome, args)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """``synth compare``: every baseline and every synthesized schedule, best first."""
    print("\n".join(compare_lines(_run(args))))
    return 0


def _write(outcome: Outcome, args: argparse.Namespace) -> None:
    from ir.jsonio import save

    chosen, source = outcome.result.chosen, outcome.source
    schedule = chosen.schedule.with_programs(chosen.schedule.ranks, chosen=chosen.name,
                                             makespan_ms=round(chosen.makespan, 3),
                                             **source.meta(chosen.timeline.peak, outcome.cap, chosen.schedule))
    print(f"wrote {save(schedule, args.output, overwrite=args.force)}")
    if args.plot:
        from ir.plot import plot_timeline

        plot_timeline(chosen.timeline, args.plot, title=f"{chosen.name}: {source.label}, p={outcome.p}",
                      mem_unit=source.plot_unit, overwrite=args.force)
        print(f"wrote {args.plot}")
    if args.trace:
        from ir.trace import write_chrome_trace

        write_chrome_trace(chosen.timeline, args.trace, overwrite=args.force)
        print(f"wrote {args.trace}")
    if args.torch_csv:
        from ir.lower import lower
        from ir.torch_csv import write_torch_csv

        write_torch_csv(lower(schedule, chosen.costs), args.torch_csv, overwrite=args.force)
        print(f"wrote {args.torch_csv}")
