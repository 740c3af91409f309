"""``synth [options]`` (the best schedule within a memory cap) and ``synth compare`` (every
candidate side by side).

Both take their costs from the cost model (``synth.costs``: model, GPU, shape) or from a user's
``--costs FILE`` (``synth.cli.source``), run ``synth.search.synthesize`` over the placements asked
for, and print a table (``synth.cli.report``). ``synth`` writes the chosen schedule (JSON, and on
request a plot, a Chrome trace and PyTorch's pipelining CSV); nothing existing is overwritten
without ``--force``, and every output path is checked before the solver runs.

With ``-m``, ``-k`` or ``--chunks`` given as ``auto`` both run the knob search instead
(``synth.research.knobs``: one synthesize per combination, the whole search within
``--time-limit``), print its table of trials, then the usual report of the best trial, and
``synth`` writes that trial's schedule. Without ``auto`` nothing changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from ir.files import check_outputs, write_new
from ir.torch_csv import FORMATS as TORCH_CSV_FORMATS
from synth.cli.report import Outcome, PhaseLine, ProgressLine, TrialLine, compare_lines, knob_lines, synth_lines
from synth.cli.source import FileSource, ModelSource, parse_mem_cap, resolve_cap, source_from_args
from synth.costs.args import (
    AUTO,
    add_problem_arguments,
    batch_from_args,
    check_costs_options,
    hardware_from_args,
    knobs_searched,
    placement_for,
    placements_from_args,
    resolve_model,
    training_from_args,
    user_costs_from_args,
)
from synth.research.knobs import MIN_TRIAL_SECONDS, KnobError, KnobSearch, microbatches_need_model, search_knobs
from synth.search import DEFAULT_TIME_LIMIT, PLACEMENTS, NoScheduleFits, SynthOptions, synthesize

__all__ = ["ProgressLine", "add_synth_arguments", "compare_command", "problem_source", "synth_command", "synth_options"]

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
                            "placements) and the full horizon; with -m, -k or --chunks auto, shared among the trials "
                            "in proportion to the placements each searches, at least "
                            f"{MIN_TRIAL_SECONDS:g} s each, so many trials can take longer (the report says how "
                            f"long) (default {DEFAULT_TIME_LIMIT:g})")
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
        out.add_argument("--torch-csv", type=Path,
                         help="write the schedule as PyTorch pipelining's CSV here, what "
                              "_PipelineScheduleRuntime._load_csv reads (needs -k 1 and a schedule without recompute "
                              "or offload: --no-recompute --no-offload); microbatches are renumbered if torch's "
                              "runtime needs the last stage's forwards in order")
        out.add_argument("--torch-csv-format", choices=TORCH_CSV_FORMATS,
                         help="compute_only: compute cells only, torch adds the sends, receives and REDUCE_GRAD "
                              "itself (_load_csv(path), as torchtitan loads it); compute_comms: pipesynth's lowering, "
                              "SEND/RECV and REDUCE_GRAD cells included, run as written "
                              "(_load_csv(path, format='compute_comms')) (default compute_only)")
        out.add_argument("--force", action="store_true", help="overwrite existing output files")


# ----------------------------------------------------------------------------------------- search
def problem_source(args: argparse.Namespace) -> tuple[int, int, ModelSource | FileSource, bool]:
    """``(p, m, source, offload)`` of fixed knobs: ranks, microbatches (``--global-batch`` sets the
    micro-batch size), where the costs come from, and whether offload is on offer."""
    p = args.stages
    check_costs_options(args)  # before --global-batch sets the micro-batch size (which --costs refuses)
    m, micro_batch = batch_from_args(args, DEFAULT_MICROBATCHES_PER_STAGE * p)
    placement_for(PLACEMENTS[0], p)  # checks p
    if micro_batch != args.micro_batch_size:  # set by --global-batch
        args = argparse.Namespace(**{**vars(args), "micro_batch_size": micro_batch})
    source = source_from_args(args, m)
    offload = args.offload and (not isinstance(source, FileSource) or source.user.offload_offered)
    return p, m, source, offload


def synth_options(args: argparse.Namespace, offload: bool, progress=None, phase=None) -> SynthOptions:
    """The search's options from ``add_synth_arguments``'s (``--chunks auto`` as 2: the knob search sets it)."""
    return SynthOptions(placements=placements_from_args(args), chunks=args.chunks if args.chunks != AUTO else 2,
                        split_backward=args.split_backward, recompute=args.recompute, offload=offload,
                        solver=args.solver, time_limit=args.time_limit, baselines=args.library,
                        memory=args.memory_model, optimize=getattr(args, "optimize", "block"), progress=progress,
                        phase=phase)


def _run(args: argparse.Namespace) -> Outcome:
    p, m, source, offload = problem_source(args)
    cap = resolve_cap(args.mem_cap, source, p, m)
    try:
        result = synthesize(source.costs_for, p, m, cap, k=args.slices,
                            options=synth_options(args, offload, ProgressLine(), PhaseLine()))
    except NoScheduleFits as err:
        raise ValueError(str(err)) from None
    return Outcome(result, source, cap, p, m, args.slices, library=args.library)


def _knob_search(args: argparse.Namespace) -> tuple[KnobSearch, Outcome]:
    """The knob search the options ask for, and the best trial as an `Outcome` for the usual report.

    Raises:
        ValueError: knobs that cannot be searched, or no trial found a schedule (the table is
            printed first, so the user sees what was tried).
    """
    p = args.stages
    placement_for(PLACEMENTS[0], p)  # checks p
    if args.costs is not None and args.microbatches == AUTO:
        raise KnobError(microbatches_need_model(args.costs))  # before check_costs_options names --global-batch
    check_costs_options(args)
    if args.costs is not None:
        user = user_costs_from_args(args, searched=True)

        def make_source(micro_batch: int | None, m: int) -> FileSource:
            return FileSource(user)

        offload = args.offload and user.offload_offered
    else:
        hardware, training = hardware_from_args(args), training_from_args(args)

        def make_source(micro_batch: int | None, m: int) -> ModelSource:
            spec = resolve_model(args.model, seq_len=args.seq_len, micro_batch=micro_batch or args.micro_batch_size)
            return ModelSource(spec, hardware, training, m, args.partition, args.slicing)

        offload = args.offload

    def cap(source, m: int) -> float | None:
        return resolve_cap(args.mem_cap, source, p, m)

    search = search_knobs(make_source, p, cap, microbatches=args.microbatches, slices=args.slices, chunks=args.chunks,
                          global_batch=getattr(args, "global_batch", None), micro_batch=args.micro_batch_size,
                          options=synth_options(args, offload), progress=TrialLine())
    fraction = args.mem_cap is not None and args.mem_cap.fraction is not None
    if fraction and "microbatches" in search.searched and search.trials:  # 1F1B's peak grows with the micro-batch
        search = dataclasses.replace(search, notes=(*search.notes, (
            f"--mem-cap {args.mem_cap.text}: resolved once, on the first trial's 1F1B peak, so every trial has the "
            f"same cap ({search.trials[0].source.cap_text(search.cap)})")))
    if search.best is None:
        print("\n".join(knob_lines(search)))
        raise ValueError(search.failure())
    b = search.best
    return search, Outcome(b.result, b.source, search.cap, p, b.knobs.m, b.knobs.k, library=args.library)


# --------------------------------------------------------------------------------------- commands
def synth_command(args: argparse.Namespace) -> int:
    """``synth``: the best schedule that fits, beside the best fitting baseline; writes it out."""
    outputs = [path for path in (args.output, args.plot, args.trace, args.torch_csv) if path is not None]
    check_outputs(outputs, args.force)  # before the solver runs, so a refusal costs nothing
    _check_torch_csv_options(args)
    if knobs_searched(args):
        search, outcome = _knob_search(args)
        print("\n".join([*knob_lines(search), "", *synth_lines(outcome)]))
        _write(outcome, args, _knob_meta(search, outcome))
        return 0
    outcome = _run(args)
    print("\n".join(synth_lines(outcome)))
    _write(outcome, args, _batch_meta(args, outcome))
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """``synth compare``: every baseline and every synthesized schedule, best first (of the best
    trial, after the knob search's table, with knobs given as ``auto``)."""
    if knobs_searched(args):
        search, outcome = _knob_search(args)
        print("\n".join([*knob_lines(search), "", *compare_lines(outcome)]))
        return 0
    print("\n".join(compare_lines(_run(args))))
    return 0


def _batch_meta(args: argparse.Namespace, outcome: Outcome) -> dict:
    """The micro-batch size a --global-batch set, for the written schedule (nothing without one)."""
    if getattr(args, "global_batch", None) is None:
        return {}
    return {"micro_batch": outcome.source.spec.micro_batch, "global_batch": args.global_batch}


def _knob_meta(search: KnobSearch, outcome: Outcome) -> dict:
    """What the written schedule records of the knob search: the values it chose."""
    best = search.best
    chosen = {"m": best.knobs.m, "k": best.knobs.k, "chunks": best.knobs.chunks, "micro_batch": best.micro_batch}
    out = {"knob_search": {"searched": list(search.searched), "trials": len(search.trials), "chosen": chosen}}
    if best.micro_batch is not None:
        out["micro_batch"] = best.micro_batch
    if search.global_batch is not None:
        out["global_batch"] = search.global_batch
    return out


def _check_torch_csv_options(args: argparse.Namespace) -> None:
    """What torch's runtime can never run, refused before the solver runs."""
    if args.torch_csv_format is not None and args.torch_csv is None:
        raise ValueError(f"--torch-csv-format {args.torch_csv_format} needs --torch-csv PATH")
    if args.torch_csv is not None and args.slices != AUTO and args.slices != 1:
        raise ValueError(f"--torch-csv {args.torch_csv}: torch's runtime has no sequence slices, so a schedule with "
                         f"-k {args.slices} cannot be written as torch CSV; use -k 1 or drop --torch-csv")


def _torch_csv_text(schedule, costs, args: argparse.Namespace) -> str:
    """The torch CSV of the chosen schedule, made before anything is written: a schedule torch cannot
    run is refused with nothing written. Prints the renumbering when the order needed one."""
    from ir.torch_csv import TorchCsvError, to_torch_csv, torch_order

    try:
        ready = torch_order(schedule)
        text = to_torch_csv(ready.schedule, format=args.torch_csv_format or "compute_only", costs=costs)
    except TorchCsvError as err:
        raise ValueError(f"--torch-csv {args.torch_csv}: the chosen schedule {schedule.meta.get('chosen')}: {err}; "
                         "nothing was written: rerun with --no-recompute --no-offload -k 1 to choose among the "
                         "schedules torch can run, or drop --torch-csv") from None
    if ready.note:
        print(ready.note)
    return text


def _write(outcome: Outcome, args: argparse.Namespace, extra: dict | None = None) -> None:
    from ir.jsonio import save

    chosen, source = outcome.result.chosen, outcome.source
    # the batch search's figures (extra) replace the problem's own where both name one (micro_batch)
    meta = {**source.meta(chosen.timeline.peak, outcome.cap, chosen.schedule), **(extra or {})}
    schedule = chosen.schedule.with_programs(chosen.schedule.ranks, chosen=chosen.name,
                                             makespan_ms=round(chosen.makespan, 3), **meta)
    torch_csv = _torch_csv_text(schedule, chosen.costs, args) if args.torch_csv else None
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
    if torch_csv is not None:
        write_new(args.torch_csv, torch_csv, overwrite=args.force)
        print(f"wrote {args.torch_csv} (torch {args.torch_csv_format or 'compute_only'} CSV)")
