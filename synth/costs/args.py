"""The command-line options that describe a problem (model, GPU, shape, placement), shared by every
``synth`` subcommand that builds one."""

from __future__ import annotations

import argparse
from pathlib import Path

from ir import Placement
from synth.costs.hardware import HARDWARE, hardware
from synth.costs.problem import Partition, Problem, Slicing, Training, build_problem
from synth.costs.spec import PRESETS, CostModelError, TransformerSpec, preset, spec_from_hf_config
from synth.sizes import parse_size

__all__ = ["add_problem_arguments", "placement_for", "problem_from_args", "resolve_model"]


def resolve_model(model: str, **changes) -> TransformerSpec:
    """A preset name, or a path to a Hugging Face ``config.json``; ``changes`` override fields
    (``None`` values are ignored; a config's own sequence length is the default).

    Raises:
        CostModelError: neither a preset nor a readable config (the message lists the presets).
    """
    changes = {key: value for key, value in changes.items() if value is not None}
    if model in PRESETS:
        return preset(model, **changes)
    path = Path(model)
    if path.suffix.lower() == ".json" or path.exists():
        seq_len = changes.pop("seq_len", None)
        micro_batch = changes.pop("micro_batch", 1)
        spec = spec_from_hf_config(path, seq_len=seq_len, micro_batch=micro_batch)
        return spec.with_(**changes) if changes else spec
    raise CostModelError(f"unknown model {model!r}: give a preset ({', '.join(PRESETS)}) "
                         "or a path to a Hugging Face config.json")


def placement_for(kind: str, p: int, *, v: int = 2, waves: int = 2) -> Placement:
    """The placement named on the command line: standard, interleaved (v chunks), v, waves."""
    if kind == "standard":
        return Placement.standard(p)
    if kind == "interleaved":
        return Placement.interleaved(p, v)
    if kind == "v":
        return Placement.v_shape(p)
    if kind == "waves":
        return Placement.waves(p, waves)
    raise CostModelError(f"unknown placement {kind!r}; use standard, interleaved, v or waves")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text: str) -> float:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_problem_arguments(parser: argparse.ArgumentParser, *, stages_default: int = 8,
                          microbatches_default: int | None = None) -> None:
    """Add --model, --gpu, --stages, --placement, --seq-len, --micro-batch-size, --microbatches,
    --slices, --partition, --slicing, --efficiency, --dp, --zero1 and --reserved."""
    group = parser.add_argument_group("problem")
    group.add_argument("--model", default="llama2-13b",
                       help=f"a preset ({', '.join(PRESETS)}) or a Hugging Face config.json (default llama2-13b)")
    group.add_argument("--gpu", default="a100-40gb", choices=sorted(HARDWARE), help="GPU preset (default a100-40gb)")
    group.add_argument("--stages", "-p", type=_positive_int, default=stages_default,
                       help=f"pipeline ranks (GPUs) (default {stages_default})")
    group.add_argument("--placement", default="standard", choices=["standard", "interleaved", "v", "waves"],
                       help="stage placement (default standard)")
    group.add_argument("--chunks", type=_positive_int, default=2,
                       help="stages per rank for --placement interleaved, waves for waves (default 2)")
    group.add_argument("--seq-len", type=_positive_int, help="tokens per sequence (default: the model's)")
    group.add_argument("--micro-batch-size", type=_positive_int, help="sequences per microbatch (default 1)")
    group.add_argument("--microbatches", "-m", type=_positive_int, default=microbatches_default,
                       help="microbatches per iteration" + (f" (default {microbatches_default})"
                                                            if microbatches_default else " (default 4 x stages)"))
    group.add_argument("--slices", "-k", type=_positive_int, default=1, help="sequence slices (default 1)")
    group.add_argument("--partition", default="balanced", choices=[p.value for p in Partition],
                       help="layers to stages: balanced by time or even (default balanced)")
    group.add_argument("--slicing", default="balanced", choices=[s.value for s in Slicing],
                       help="slice boundaries: equal forward FLOPs or equal tokens (default balanced)")
    group.add_argument("--efficiency", type=float, help="fraction of peak FLOP/s reached (default: the GPU's)")
    group.add_argument("--dp", type=_positive_int, default=1, help="data-parallel degree (default 1)")
    group.add_argument("--zero1", action="store_true", help="shard optimizer state over --dp replicas")
    group.add_argument("--reserved", type=_size, default=0.0, help="bytes per rank kept for the framework (e.g. 2GiB)")


def problem_from_args(args: argparse.Namespace, mem_cap: float | None = None) -> Problem:
    """The `Problem` the parsed options describe.

    Raises:
        CostModelError: any bad value, with what to change.
    """
    spec = resolve_model(args.model, seq_len=args.seq_len, micro_batch=args.micro_batch_size)
    hw = hardware(args.gpu) if args.efficiency is None else hardware(args.gpu, efficiency=args.efficiency)
    placement = placement_for(args.placement, args.stages, v=args.chunks, waves=args.chunks)
    m = args.microbatches or 4 * args.stages
    training = Training(dp=args.dp, zero1=args.zero1, reserved=args.reserved)
    return build_problem(spec, hw, placement, m, k=args.slices, mem_cap=mem_cap, partition=args.partition,
                         slicing=args.slicing, training=training)
