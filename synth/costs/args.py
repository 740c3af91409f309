"""The command-line options that describe a problem (model, GPU, shape, placement), shared by every
``synth`` subcommand that builds one.

The costs come from the cost model (``--model``, ``--gpu`` and the model's options) or, with
``--costs FILE``, from per-stage numbers a user measured (``synth.costs.user``); the two exclude
each other, and `check_costs_options` says which options to drop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ir import Placement
from synth.costs.hardware import HARDWARE, Hardware, hardware
from synth.costs.problem import Partition, Problem, Slicing, Training, build_problem
from synth.costs.spec import PRESETS, CostModelError, TransformerSpec, preset, spec_from_hf_config
from synth.costs.states import OptimizerOffload
from synth.costs.user import UserCosts, read_user_costs
from synth.sizes import parse_size

__all__ = ["PLACEMENT_KINDS", "add_problem_arguments", "check_costs_options", "hardware_from_args", "placement_for",
           "placements_from_args", "problem_from_args", "resolve_model", "training_from_args", "user_costs_from_args"]

PLACEMENT_KINDS = ("standard", "interleaved", "v", "waves")
# The options that describe a model for the cost model, with their defaults: with --costs FILE
# none of them means anything, so any that differs from its default is refused.
MODEL_OPTIONS = {"model": "llama2-13b", "gpu": "a100-40gb", "seq_len": None, "micro_batch_size": None,
                 "partition": Partition.BALANCED.value, "slicing": Slicing.BALANCED.value, "efficiency": None,
                 "dp": 1, "zero1": False, "reserved": 0.0, "offload_optimizer": OptimizerOffload.NONE.value,
                 "offload_overlap": True, "host_bandwidth": None, "host_adam_rate": None}


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _placement_list(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    bad = [kind for kind in kinds if kind not in ("auto", *PLACEMENT_KINDS)]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown placement {', '.join(bad) or repr(text)}; use auto or "
                                         f"{', '.join(PLACEMENT_KINDS)}, comma-separated for several")
    return kinds


def add_problem_arguments(parser: argparse.ArgumentParser, *, stages_default: int = 8,
                          microbatches_default: int | None = None, several_placements: bool = False) -> None:
    """Add --costs, --model, --gpu, --stages, --placement, --chunks, --seq-len, --micro-batch-size,
    --microbatches, --slices, --partition, --slicing, --efficiency, --dp, --zero1, --reserved,
    --offload-optimizer, --no-offload-overlap, --host-bandwidth and --host-adam-rate.
    With ``several_placements``, --placement takes auto (the default) or a list of kinds: read it
    with `placements_from_args`."""
    group = parser.add_argument_group("problem")
    group.add_argument("--costs", type=Path, metavar="FILE",
                       help="per-full-stage costs you measured, a JSON object with f, b, w, act, wact, comm and "
                            "optionally inp, static, offload (each a number or one per rank), instead of --model "
                            "and --gpu; times in ms, memory in the file's own unit (then --mem-cap is a plain "
                            "number in that unit); no 'offload' field: offload is not offered")
    group.add_argument("--model", default=MODEL_OPTIONS["model"],
                       help=f"a preset ({', '.join(PRESETS)}) or a Hugging Face config.json (default llama2-13b)")
    group.add_argument("--gpu", default=MODEL_OPTIONS["gpu"], choices=sorted(HARDWARE),
                       help="GPU preset (default a100-40gb)")
    group.add_argument("--stages", "-p", type=_positive_int, default=stages_default,
                       help=f"pipeline ranks (GPUs) (default {stages_default})")
    if several_placements:
        group.add_argument("--placement", type=_placement_list, action="extend", metavar="KIND[,KIND...]",
                           help="stage placements to search: auto (each of " + ", ".join(PLACEMENT_KINDS)
                                + ") or one or more kinds, repeated or comma-separated (e.g. --placement standard,v); "
                                "the fastest schedule that fits is kept (default auto)")
    else:
        group.add_argument("--placement", default="standard", choices=PLACEMENT_KINDS,
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
    group.add_argument("--offload-optimizer", default=OptimizerOffload.NONE.value,
                       choices=[o.value for o in OptimizerOffload],
                       help="optimizer state kept in host memory: none; states (Adam m and v, 8 bytes/param; the "
                            "fp32 master stays on the GPU: 10 bytes/param left); states+master (m, v and the fp32 "
                            "master, 12 bytes/param, as ZeRO-Offload: 6 bytes/param left). Each step then copies the "
                            "fp32 gradients to the host and the update back and runs Adam on the host; that time is "
                            "added to every iteration (default none)")
    group.add_argument("--no-offload-overlap", dest="offload_overlap", action="store_false",
                       help="with --offload-optimizer, run the gradient copy, host Adam and weight copy one after "
                            "another instead of overlapped over buckets")
    group.add_argument("--host-bandwidth", type=_size, metavar="BYTES_PER_S",
                       help="bytes per second each way between a GPU and pinned host memory, for offload (e.g. 12GB "
                            "when two GPUs share a PCIe uplink; default: the GPU's, 80%% of its PCIe link)")
    group.add_argument("--host-adam-rate", type=_positive_float, metavar="PARAMS_PER_S",
                       help="parameters per second the host's Adam updates for one GPU, for --offload-optimizer "
                            "(default: the GPU preset's assumption, 1e9 for A100, 2e9 for H100/H200)")


def placements_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The placement kinds asked for with ``several_placements``: every kind for auto (or none
    given), else the kinds named, each once, in order."""
    named = args.placement or ["auto"]
    if "auto" in named:
        return PLACEMENT_KINDS
    return tuple(dict.fromkeys(named))


def check_costs_options(args: argparse.Namespace) -> None:
    """Refuse model options beside ``--costs`` (the file gives the costs; they would be ignored).

    Raises:
        CostModelError: naming the options to drop.
    """
    if getattr(args, "costs", None) is None:
        return
    given = [name for name, default in MODEL_OPTIONS.items() if getattr(args, name, default) != default]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CostModelError(f"--costs {args.costs} gives the per-stage costs itself; drop {flags} "
                             "(they describe a model and GPU for the cost model)")


def user_costs_from_args(args: argparse.Namespace, p: int | None = None) -> UserCosts:
    """The ``--costs`` file's costs for ``p`` ranks (default ``--stages``), after `check_costs_options`.

    Raises:
        CostModelError: a bad file or option, with the fix.
    """
    check_costs_options(args)
    return read_user_costs(args.costs, args.stages if p is None else p)


def problem_from_args(args: argparse.Namespace, mem_cap: float | None = None) -> Problem:
    """The `Problem` the parsed options describe.

    Raises:
        CostModelError: any bad value, with what to change.
    """
    spec = resolve_model(args.model, seq_len=args.seq_len, micro_batch=args.micro_batch_size)
    placement = placement_for(args.placement, args.stages, v=args.chunks, waves=args.chunks)
    m = args.microbatches or 4 * args.stages
    return build_problem(spec, hardware_from_args(args), placement, m, k=args.slices, mem_cap=mem_cap,
                         partition=args.partition, slicing=args.slicing, training=training_from_args(args))


def hardware_from_args(args: argparse.Namespace) -> Hardware:
    """The ``--gpu`` preset with ``--efficiency``, ``--host-bandwidth`` and ``--host-adam-rate`` applied."""
    changes = {name: getattr(args, name, None) for name in ("efficiency", "host_bandwidth", "host_adam_rate")}
    return hardware(args.gpu, **{name: value for name, value in changes.items() if value is not None})


def training_from_args(args: argparse.Namespace) -> Training:
    """``--dp``, ``--zero1``, ``--reserved``, ``--offload-optimizer`` and ``--no-offload-overlap``."""
    return Training(dp=args.dp, zero1=args.zero1, reserved=args.reserved,
                    offload_optimizer=getattr(args, "offload_optimizer", OptimizerOffload.NONE.value),
                    offload_overlap=getattr(args, "offload_overlap", True))
