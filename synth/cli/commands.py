"""``synth [options]`` (the best schedule within a memory cap) and ``synth compare`` (every
candidate side by side).

Both build the problem from the cost model (``synth.costs``: model, GPU, shape), run
``synth.search.synthesize`` over the placements asked for, and print a table. ``synth`` writes
the chosen schedule (JSON, and on request a plot, a Chrome trace and PyTorch's pipelining CSV);
nothing existing is overwritten without ``--force``, and every output path is checked before the
solver runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ir.files import check_writable
from synth.costs.args import add_problem_arguments, placement_for, resolve_model
from synth.costs.hardware import hardware
from synth.costs.problem import Problem, Training, build_problem
from synth.search import PLACEMENTS, Candidate, NoScheduleFits, Synthesis, SynthOptions, show_bytes, synthesize
from synth.sizes import parse_size

__all__ = ["add_synth_arguments", "compare_command", "synth_command"]

DEFAULT_MICROBATCHES_PER_STAGE = 4
GiB = 2**30


def _size(text: str) -> float:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the time limit must be > 0 seconds, got {text!r}")
    return value


def add_synth_arguments(parser: argparse.ArgumentParser, *, outputs: bool = True) -> None:
    """The problem's options (with ``--placement auto``), the cap, what the solver may do, and
    (for ``synth``) where to write the result."""
    add_problem_arguments(parser)
    for action in parser._actions:  # the synthesizer also accepts --placement auto, its default
        if action.dest == "placement":
            action.choices = ["auto", *PLACEMENTS]
            action.default = "auto"
            action.help = "stage placement, or auto: try each and keep the fastest that fits (default auto)"
    group = parser.add_argument_group("synthesis")
    group.add_argument("--mem-cap", type=_size,
                       help="memory per GPU, e.g. 40GB (1e9 bytes) or 40GiB (default: the GPU's memory)")
    group.add_argument("--split-backward", action=argparse.BooleanOptionalAction, default=True,
                       help="separate B (input grads) and W (weight grads) passes (default on)")
    group.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=True,
                       help="let the solver recompute stages' activations (default on; k = 1 only)")
    group.add_argument("--offload", action=argparse.BooleanOptionalAction, default=True,
                       help="let the solver offload stages' activations to host memory (default on; k = 1 only)")
    group.add_argument("--solver", default="cpsat", choices=["cpsat", "highs", "cbc"],
                       help="cpsat (OR-Tools), or the MILP twin through PuLP: highs or cbc (default cpsat)")
    group.add_argument("--time-limit", type=_seconds, default=1.25,
                       help="seconds per building block (per placement) for CP-SAT, per solve for the MILP "
                            "(default 1.25: four placements and the baselines in under 10 s on 2 cores)")
    group.add_argument("--optimize", default="auto", choices=["auto", "block", "full"],
                       help="block: building blocks only; full: then the full-horizon model on the best "
                            "placement, improving it within --time-limit and proving a bound; auto: full when "
                            "that model is small enough to help within --time-limit (default auto)")
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
def _run(args: argparse.Namespace) -> tuple[Synthesis, dict, float]:
    spec = resolve_model(args.model, seq_len=args.seq_len, micro_batch=args.micro_batch_size)
    hw = hardware(args.gpu) if args.efficiency is None else hardware(args.gpu, efficiency=args.efficiency)
    cap = args.mem_cap if args.mem_cap is not None else hw.memory
    m = args.microbatches or DEFAULT_MICROBATCHES_PER_STAGE * args.stages
    training = Training(dp=args.dp, zero1=args.zero1, reserved=args.reserved)
    problems: dict[tuple, Problem] = {}
    placement_for(PLACEMENTS[0], args.stages)  # checks p

    def costs_for(placement, k):
        problem = build_problem(spec, hw, placement, m, k=k, mem_cap=cap, partition=args.partition,
                                slicing=args.slicing, training=training)
        problems[(placement.stage_to_rank, k)] = problem
        return problem.costs

    kinds = PLACEMENTS if args.placement == "auto" else (args.placement,)
    options = SynthOptions(placements=kinds, chunks=args.chunks, split_backward=args.split_backward,
                           recompute=args.recompute, offload=args.offload, solver=args.solver,
                           time_limit=args.time_limit, memory=args.memory_model,
                           optimize=getattr(args, "optimize", "block"), progress=ProgressLine())
    return synthesize(costs_for, args.stages, m, cap, k=args.slices, options=options), problems, cap


def _problem_of(c: Candidate, problems: dict) -> Problem:
    return problems[(c.schedule.placement.stage_to_rank, c.schedule.k)]


def _header(problem: Problem, cap: float, args: argparse.Namespace) -> str:
    spec, hw = problem.spec, problem.hardware
    return (f"{spec.name} on {problem.p} x {hw.name}, seq {spec.seq_len}, micro-batch {spec.micro_batch}, "
            f"{problem.m} microbatches, {problem.k} slice(s); memory cap {show_bytes(cap)} per GPU")


def _row(c: Candidate, problems: dict, cap: float, mark: str = "") -> list[str]:
    t = _problem_of(c, problems).throughput(c.makespan)
    solver = ""
    if c.horizon is not None:
        solver = f"{c.horizon.solver} {c.horizon.status} {c.horizon.seconds:.2f}s full horizon"
    elif c.block is not None:
        status = "optimal" if c.block.proven else "time limit"
        solver = (f"{c.block.solver} {status} {c.block.solve_seconds:.2f}s" if c.block.solver != "sequential"
                  else "one microbatch at a time")
    return [c.name + mark, c.placement, f"{c.makespan:,.0f}", f"{c.timeline.bubble_ratio:.3f}",
            f"{t.tokens_per_s:,.0f}", f"{100 * t.mfu:.1f}%", f"{c.peak / GiB:.2f}", "yes" if c.fits else "no",
            c.decisions(), solver]


_COLUMNS = ["schedule", "placement", "makespan ms", "bubble", "tokens/s", "MFU", "peak GiB", "fits",
            "recompute/offload", "solver"]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*_COLUMNS).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


# --------------------------------------------------------------------------------------- commands
def synth_command(args: argparse.Namespace) -> int:
    """``synth``: the best schedule that fits, beside the best fitting baseline; writes it out."""
    outputs = [path for path in (args.output, args.plot, args.trace, args.torch_csv) if path is not None]
    for path in outputs:  # before the solver runs, so a refusal costs nothing
        check_writable(path, args.force)
    try:
        result, problems, cap = _run(args)
    except NoScheduleFits as err:
        raise ValueError(str(err)) from None
    chosen, baseline = result.chosen, result.best_baseline
    problem = _problem_of(chosen, problems)
    print(_header(problem, cap, args))
    print(f"placements tried: {', '.join(c.name.split('/')[1] for c in result.synthesized) or 'none'}"
          + (f"; not built: {', '.join(n for n, _ in result.skipped if n.startswith('synth/'))}"
             if any(n.startswith("synth/") for n, _ in result.skipped) else ""))
    print()
    rows = [_row(chosen, problems, cap, " (chosen)")]
    best_synth = result.best_synthesized
    if best_synth is not None and best_synth is not chosen:
        rows.append(_row(best_synth, problems, cap, " (best synthesized)"))
    if baseline is not None and baseline is not chosen:
        rows.append(_row(baseline, problems, cap, " (best baseline)"))
    print("\n".join(_table(rows)))
    print()
    print("peak per GPU (GiB) vs cap " + f"{cap / GiB:.2f}: "
          + ", ".join(f"r{r} {x / GiB:.2f}" for r, x in enumerate(chosen.timeline.peak)))
    if baseline is None:
        print("no baseline fits this cap")
    else:
        gain = baseline.makespan / chosen.makespan - 1
        print(f"vs best fitting baseline ({baseline.name}): {100 * gain:+.1f}% throughput")
    print(_bound_line(result))
    if result.refined is not None:
        print(_refined_line(result.refined))
    elif result.not_refined:
        print(result.not_refined)
    if chosen.block is not None:
        b = chosen.block
        print(f"block: period {b.period * b.tick:.2f} ms ({b.period} ticks of {b.tick:.3f} ms), "
              f"length {b.length * b.tick:.2f} ms, {'proven optimal' if b.proven else 'not proven (time limit)'}")
    unfit = [c.name for c in result.baselines if not c.fits]
    if unfit:
        print(f"baselines over the cap: {', '.join(unfit)}")
    print(f"searched {len(result.synthesized)} placement(s) and {len(result.baselines)} baselines "
          f"in {result.seconds:.1f} s")
    _write(chosen, problem, args)
    return 0


class ProgressLine:
    """Prints the full-horizon solve's progress to stderr: objective, bound and gap over time, at
    every improvement of the schedule and at most once a second for the bound alone."""

    def __init__(self, stream=None) -> None:
        self.stream = stream
        self.last: tuple | None = None
        self.printed_at = -math.inf

    def __call__(self, seconds: float, makespan: float | None, bound: float) -> None:
        if self.last == (makespan, bound):
            return
        improved = self.last is None or makespan != self.last[0]
        if not improved and seconds - self.printed_at < 1:
            return
        self.last, self.printed_at = (makespan, bound), seconds
        gap = "" if makespan is None or makespan <= 0 else f", gap {100 * max(0.0, 1 - bound / makespan):.1f}%"
        found = "none yet" if makespan is None else f"{makespan:,.1f} ms"
        print(f"  full horizon {seconds:6.1f} s: makespan {found}, bound {bound:,.1f} ms{gap}",
              file=self.stream or sys.stderr, flush=True)


def _bound_line(result: Synthesis) -> str:
    bound = result.bound
    if bound is None or not math.isfinite(bound.value):
        return "lower bound: none"
    extra = "" if bound.source.startswith("analytic") else f"; analytic {bound.analytic:,.1f} ms"
    return (f"lower bound: {bound.value:,.1f} ms ({bound.source}, any {bound.placement}-placement schedule{extra}); "
            f"gap {100 * result.gap:.1f}%")


def _refined_line(c: Candidate) -> str:
    r = c.horizon
    tick = c.schedule.meta.get("tick", 1.0)
    exact = c.schedule.meta.get("exact", False)
    what = ("proven optimal" + ("" if exact else " for the model (durations rounded up to ticks)") if r.proven
            else f"{r.status}, model bound {r.bound * tick:,.1f} ms")
    return (f"full horizon ({r.solver}, {r.seconds:.1f} s): {c.makespan:,.1f} ms simulated "
            f"({r.makespan * tick:,.1f} ms in the model's ticks), {what}"
            + ("" if c.fits else "; over the cap in simulation, not used"))


def compare_command(args: argparse.Namespace) -> int:
    """``synth compare``: every baseline and every synthesized schedule, best first."""
    try:
        result, problems, cap = _run(args)
    except NoScheduleFits as err:
        raise ValueError(str(err)) from None
    print(_header(_problem_of(result.chosen, problems), cap, args))
    print()
    print("\n".join(_table([_row(c, problems, cap) for c in result.ranked()])))
    skipped = [f"{name} ({why})" for name, why in result.skipped]
    if skipped:
        print()
        print("not built: " + "; ".join(skipped))
    return 0


def _write(chosen: Candidate, problem: Problem, args: argparse.Namespace) -> None:
    from ir.jsonio import save

    schedule = chosen.schedule.with_programs(chosen.schedule.ranks, chosen=chosen.name,
                                             makespan_ms=round(chosen.makespan, 3),
                                             peak_bytes=[round(x) for x in chosen.timeline.peak],
                                             mem_cap_bytes=round(problem.mem_cap) if problem.mem_cap else None,
                                             model=problem.spec.name, gpu=problem.hardware.name)
    print(f"wrote {save(schedule, args.output, overwrite=args.force)}")
    if args.plot:
        from ir.plot import plot_timeline

        plot_timeline(chosen.timeline, args.plot, title=f"{chosen.name}: {problem.spec.name}, p={problem.p}",
                      mem_unit="GiB", overwrite=args.force)
        print(f"wrote {args.plot}")
    if args.trace:
        from ir.trace import write_chrome_trace

        write_chrome_trace(chosen.timeline, args.trace, overwrite=args.force)
        print(f"wrote {args.trace}")
    if args.torch_csv:
        from ir.lower import lower
        from ir.torch_csv import write_torch_csv

        write_torch_csv(lower(schedule, problem.costs), args.torch_csv, overwrite=args.force)
        print(f"wrote {args.torch_csv}")
