"""``synth max-model``: the largest model of a family that trains at a throughput floor on the
GPUs given, for synthesis beside 1F1B, 1F1B with recompute and the best library schedule.

The search is ``synth.research.max_model`` (its docstring states the method and its assumptions);
this module reads the options, prints one progress line per evaluated size on stderr and the
report (`report_lines`) on stdout. The floor is exactly one of ``--mfu``, ``--tokens-per-s`` and
``--at-least NAME`` (default ``--at-least 1f1b``). Bad input is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import math
import sys

from ir import ScheduleError
from synth.baselines import BASELINES
from synth.costs.args import (
    batch_from_args,
    fixed_knobs,
    hardware_from_args,
    int_at_least,
    resolve_model,
    training_from_args,
)
from synth.costs.spec import CostModelError
from synth.research.max_model import (
    DEFAULT_MAX_SCALE,
    Answer,
    Floor,
    MaxModel,
    Scale,
    max_model,
    params_text,
)
from synth.search import show_bytes

__all__ = ["add_max_model_arguments", "max_model_command", "parse_mfu", "report_lines"]

GiB = 2**30


def parse_mfu(text: str) -> float:
    """``--mfu``'s type: a fraction (``0.45``) or a percentage (``45%``), in (0, 1]."""
    body = text.strip()
    percent = body.endswith("%")
    try:
        value = float(body.removesuffix("%")) / (100 if percent else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an MFU such as 0.45 or 45%, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise argparse.ArgumentTypeError(f"the MFU floor is a fraction in (0, 1] (0.45) or a percentage (45%), "
                                         f"got {text!r}")
    return value


def _tokens(text: str) -> float:
    try:
        value = float(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected tokens per second, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the tokens/s floor must be > 0, got {text!r}")
    return value


def add_max_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The problem's options (``--model`` is the family's base), the floor, the scaling and the search per size."""
    from synth.cli.commands import add_synth_arguments

    add_synth_arguments(parser, outputs=False)  # the problem, the cap (default the GPU's) and the search per size
    group = parser.add_argument_group("max-model")
    group.add_argument("--mfu", type=parse_mfu, metavar="FRACTION",
                       help="the floor: MFU as a fraction or a percentage (0.45 or 45%%)")
    group.add_argument("--tokens-per-s", type=_tokens, metavar="RATE", help="the floor: tokens per second")
    group.add_argument("--at-least", choices=list(BASELINES), metavar="NAME",
                       help="the floor: NAME's MFU on the largest size NAME itself fits (library alone, no solver); "
                            "default 1f1b when no floor is given")
    group.add_argument("--scale", default=Scale.LAYERS.value, choices=[s.value for s in Scale],
                       help="what grows: layers (the layer count) or hidden (heads with head_dim fixed, kv heads "
                            "and ffn in proportion, ffn rounded to a multiple of 128) (default layers)")
    group.add_argument("--max-scale", type=int_at_least(2, "--max-scale"), default=DEFAULT_MAX_SCALE,
                       help=f"try sizes up to this many times the model's own (default {DEFAULT_MAX_SCALE})")


def max_model_command(args: argparse.Namespace) -> int:
    """``synth max-model``: progress on stderr, the report on stdout; bad input one line on stderr, exit 1."""
    try:
        result = _run(args)
    except (ValueError, ScheduleError, OSError) as err:
        print(f"synth max-model: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(result)))
    return 0


def _run(args: argparse.Namespace) -> MaxModel:
    if args.costs is not None:
        raise CostModelError(f"max-model scales a model, so it needs --model (a preset or a config.json); --costs "
                             f"{args.costs} gives per-stage costs with no size to scale: drop it")
    given = [flag for flag, value in (("--mfu", args.mfu), ("--tokens-per-s", args.tokens_per_s),
                                      ("--at-least", args.at_least)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one floor, not {' and '.join(given)}")
    cap = args.mem_cap
    if cap is not None and cap.fraction is not None:
        raise ValueError(f"--mem-cap {cap.text}: a fraction of 1F1B's peak changes with the model's size; give a "
                         "size (e.g. 40GiB)")
    from synth.cli.commands import DEFAULT_MICROBATCHES_PER_STAGE, synth_options

    fixed_knobs(args, "synth max-model")
    m, micro_batch = batch_from_args(args, DEFAULT_MICROBATCHES_PER_STAGE * args.stages)
    spec = resolve_model(args.model, seq_len=args.seq_len, micro_batch=micro_batch)
    return max_model(spec, hardware_from_args(args), args.stages, m=m,
                     floor=Floor(args.mfu, args.tokens_per_s, args.at_least), scale=args.scale,
                     mem_cap=None if cap is None else cap.amount, training=training_from_args(args), k=args.slices,
                     partition=args.partition, slicing=args.slicing, options=synth_options(args, args.offload),
                     max_scale=args.max_scale,
                     progress=lambda probe: print(probe.line(), file=sys.stderr, flush=True))


# ----------------------------------------------------------------------------------------- report
def report_lines(result: MaxModel) -> list[str]:
    """The header, the floor, a row per contender, the ratio to 1F1B and the synthesis's schedule."""
    family, spec = result.family, result.family.base
    library = "library included" if result.library else "from scratch (--no-library)"
    lines = [f"{spec.name}'s family scaled by {family.scale.value} on {result.p} x {result.hardware.name}: seq "
             f"{spec.seq_len}, micro-batch {spec.micro_batch}, {result.m} microbatches, {result.k} slice(s); memory "
             f"cap {show_bytes(result.mem_cap)} per GPU; synthesis {library}, {result.time_limit:g} s per solve",
             f"floor: {result.floor.show(result.floor_value)} ({result.floor_from})", ""]
    size = "layers" if family.scale is Scale.LAYERS else "hidden"
    columns = ["contender", size, "params", "schedule", "MFU", "tokens/s", "peak GiB", "iteration ms"]
    rows = [_row(a, family.scale, result.library) for a in result.answers]
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines += [fmt.format(*columns).rstrip(), *(fmt.format(*r).rstrip() for r in rows), ""]
    lines += [f"{a.contender}: {a.note}" for a in result.answers if a.note]
    ours, theirs = result.answer("synthesis"), result.answer("1f1b")
    if theirs.size is None:
        lines.append("synthesis: 1F1B trains no size at this floor, so there is no ratio to it")
    else:
        lines.append(f"synthesis: {result.ratio:.2f}x 1F1B's parameters ({ours.label}, {params_text(ours.params)} "
                     f"vs {theirs.label}, {params_text(theirs.params)})")
    lines.append(_schedule_line(ours))
    solves = sum(p.kind == "solve" for p in result.probes)
    lib = sum(p.kind == "library" for p in result.probes)
    static = sum(p.kind == "static" for p in result.probes)
    sized = len({p.size for p in result.probes})
    lines.append(f"evaluated {sized} sizes ({lib} library evaluations, {solves} solves"
                 + (f", {static} not solved: static memory over the cap" if static else "")
                 + f") in {result.seconds:.1f} s")
    return lines


def _row(a: Answer, scale: Scale, library: bool) -> list[str]:
    name = a.contender + (" (from scratch)" if a.contender == "synthesis" and not library else "")
    if a.size is None:
        return [name, "none", "", "", "", "", "", ""]
    c, t = a.candidate, a.throughput
    shown = c.name + (" (library)" if a.contender == "synthesis" and not c.synthesized else "")
    return [name, str(a.spec.layers if scale is Scale.LAYERS else a.spec.hidden), params_text(a.params), shown,
            f"{100 * t.mfu:.1f}%", f"{t.tokens_per_s:,.0f}", f"{c.peak / GiB:.2f}", _ms(a.iteration_ms)]


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def _schedule_line(a: Answer) -> str:
    c = a.candidate
    what = "a library schedule" if not c.synthesized else f"synthesized ({c.method})"
    gap = "no bound" if a.gap is None else f"gap {100 * a.gap:.1f}% to its placement's bound"
    proven = "proven optimal on its placement" if a.proven else "not proven optimal"
    overhead = a.throughput.step_overhead_ms
    host = f"; host optimizer step {overhead:,.0f} ms per iteration" if overhead else ""
    return (f"synthesis's schedule at {a.label}: {c.name}, {what}, {c.placement} placement, recompute/offload "
            f"{c.decisions()}; {gap}, {proven}{host}")
