"""The command-line options that describe a problem (model, GPU, shape, placement), shared by every
``synth`` subcommand that builds one.

The costs come from the cost model (``--model``, ``--gpu`` and the model's options) or, with
``--costs FILE``, from per-stage numbers a user measured (``synth.costs.user``); the two exclude
each other, and `check_costs_options` says which options to drop.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ir import Placement
from synth.costs.hardware import HARDWARE, Hardware, hardware
from synth.costs.problem import Partition, Problem, Slicing, Training, build_problem
from synth.costs.spec import PRESETS, CostModelError, TransformerSpec, preset, spec_from_hf_config
from synth.costs.states import OptimizerOffload
from synth.costs.user import UserCosts, read_user_costs
from synth.sizes import parse_size

__all__ = ["AUTO", "KNOBS", "PLACEMENT_KINDS", "add_problem_arguments", "batch_from_args", "check_costs_options",
           "fixed_batch", "fixed_knobs", "hardware_from_args", "int_at_least", "knobs_searched", "placement_for",
           "placements_from_args", "problem_from_args", "resolve_model", "training_from_args", "user_costs_from_args"]

PLACEMENT_KINDS = ("standard", "interleaved", "v", "waves")
# ``-m``, ``-k`` and ``--chunks`` take a number or AUTO; only ``synth`` and ``synth compare`` search the
# AUTO ones (``synth.research.knobs``), every other command refuses it (`fixed_knobs`).
AUTO = "auto"
KNOBS = {"microbatches": "-m/--microbatches", "slices": "-k/--slices", "chunks": "--chunks"}
# The options that describe a model for the cost model, with their defaults: with --costs FILE
# none of them means anything, so any that differs from its default is refused.
MODEL_OPTIONS = {"model": "llama2-13b", "gpu": "a100-40gb", "seq_len": None, "micro_batch_size": None,
                 "partition": Partition.BALANCED.value, "slicing": Slicing.BALANCED.value, "efficiency": None,
                 "dp": 1, "zero1": False, "reserved": 0.0, "offload_optimizer": OptimizerOffload.NONE.value,
                 "offload_overlap": True, "host_bandwidth": None, "host_adam_rate": None, "global_batch": None}


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
    """The placement named on the command line: standard, interleaved (v chunks), v, waves.

    Raises:
        CostModelError: an unknown kind, or chunks (``v`` or ``waves``) that are not a positive integer
            (``--chunks auto`` reaches here from a command that does not search it).
    """
    chunks = v if kind == "interleaved" else waves if kind == "waves" else 1
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise CostModelError(f"--chunks {chunks}: this command needs a positive integer (only synth and synth "
                             "compare search --chunks auto)")
    if kind == "standard":
        return Placement.standard(p)
    if kind == "interleaved":
        return Placement.interleaved(p, v)
    if kind == "v":
        return Placement.v_shape(p)
    if kind == "waves":
        return Placement.waves(p, waves)
    raise CostModelError(f"unknown placement {kind!r}; use standard, interleaved, v or waves")


def int_at_least(minimum: int, what: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``; ``what`` says why in the refusal."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            expected = "a positive integer" if minimum == 1 else f"a whole number >= {minimum}"
            raise argparse.ArgumentTypeError(f"expected {expected}{f' ({what})' if what else ''}, got {text!r}")
        return value

    return parse


_positive_int = int_at_least(1)


def _count_or_auto(text: str) -> int | str:
    """A positive integer, or ``auto`` (searched by ``synth`` and ``synth compare``)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None


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
    group.add_argument("--chunks", type=_count_or_auto, default=2,
                       help="stages per rank for --placement interleaved, waves for waves; auto (synth and synth "
                            "compare only): try 2, 3 and 4 (default 2)")
    group.add_argument("--seq-len", type=_positive_int, help="tokens per sequence (default: the model's)")
    group.add_argument("--micro-batch-size", type=_positive_int,
                       help="sequences per microbatch (default 1, or --global-batch / -m)")
    group.add_argument("--microbatches", "-m", type=_count_or_auto, default=microbatches_default,
                       help="microbatches per iteration; auto (synth and synth compare only, needs --global-batch): "
                            "try each micro-batch size up to 16 dividing the global batch that leaves at least --stages"
                            " microbatches" + (f" (default {microbatches_default})" if microbatches_default
                                              else " (default 4 x stages, or --global-batch / --micro-batch-size)"))
    group.add_argument("--global-batch", type=_positive_int, metavar="G",
                       help="sequences per iteration, microbatches x micro-batch size: with -m M the micro-batch size "
                            "is G/M, with --micro-batch-size B there are G/B microbatches, with -m auto the split is "
                            "searched (cost model only, not with --costs)")
    group.add_argument("--slices", "-k", type=_count_or_auto, default=1,
                       help="sequence slices; auto (synth and synth compare only): try 1, 2, 4 and 8 (default 1)")
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


def knobs_searched(args: argparse.Namespace) -> tuple[str, ...]:
    """The knobs given as ``auto`` (names from `KNOBS`: microbatches, slices, chunks), in that order."""
    return tuple(name for name in KNOBS if getattr(args, name, None) == AUTO)


def fixed_knobs(args: argparse.Namespace, command: str | None = None) -> None:
    """Refuse ``auto`` for ``-m``, ``-k`` or ``--chunks`` in a command that needs fixed values (every
    command but ``synth`` and ``synth compare``, which search them with ``synth.research.knobs``).

    Raises:
        CostModelError: naming the option(s) and the fix.
    """
    searched = knobs_searched(args)
    if searched:
        flags = ", ".join(f"{KNOBS[name]} auto" for name in searched)
        who = f"{command} takes" if command else "this command takes"
        raise CostModelError(f"{flags}: {who} fixed values (only synth and synth compare search auto); give a "
                             "positive integer")


def fixed_batch(m: int | None, global_batch: int | None, micro_batch: int | None) -> tuple[int | None, int | None]:
    """``(microbatches, micro-batch size)`` from two of ``m``, ``global_batch`` and ``micro_batch``
    (global batch = microbatches x micro-batch size). Without a global batch both pass through
    (None: the caller's default); with one alone, the micro-batch size is 1.

    Raises:
        CostModelError: the three disagree, or the global batch does not divide.
    """
    if global_batch is None:
        return m, micro_batch
    if m is not None:
        if global_batch % m:
            raise CostModelError(f"--global-batch {global_batch} does not split into {m} microbatches (-m {m}): "
                                 f"the micro-batch size would be {global_batch}/{m}; use an -m that divides "
                                 f"{global_batch}, or -m auto")
        if micro_batch is not None and micro_batch * m != global_batch:
            raise CostModelError(f"--global-batch {global_batch} is not -m {m} x --micro-batch-size {micro_batch}; "
                                 "drop one of the three")
        return m, global_batch // m
    micro_batch = micro_batch or 1
    if global_batch % micro_batch:
        raise CostModelError(f"--global-batch {global_batch} is not a multiple of --micro-batch-size {micro_batch}; "
                             f"use a micro-batch size that divides {global_batch}")
    return global_batch // micro_batch, micro_batch


def batch_from_args(args: argparse.Namespace, default_m: int) -> tuple[int, int | None]:
    """``(microbatches, micro-batch size or None for the model's)`` from ``-m``, ``--global-batch`` and
    ``--micro-batch-size`` (`fixed_batch`), ``default_m`` when none decides it; after `fixed_knobs`.

    Raises:
        CostModelError: ``auto`` given, or the three disagree.
    """
    fixed_knobs(args)
    m, micro_batch = fixed_batch(args.microbatches, getattr(args, "global_batch", None), args.micro_batch_size)
    return m or default_m, micro_batch


def user_costs_from_args(args: argparse.Namespace, p: int | None = None, *, searched: bool = False) -> UserCosts:
    """The ``--costs`` file's costs for ``p`` ranks (default ``--stages``), after `check_costs_options`
    and (unless ``searched``: the caller runs the knob search) `fixed_knobs`.

    Raises:
        CostModelError: a bad file or option, with the fix.
    """
    if not searched:
        fixed_knobs(args)
    check_costs_options(args)
    return read_user_costs(args.costs, args.stages if p is None else p)


def problem_from_args(args: argparse.Namespace, mem_cap: float | None = None) -> Problem:
    """The `Problem` the parsed options describe (fixed knobs only: `batch_from_args`).

    Raises:
        CostModelError: any bad value, with what to change.
    """
    m, micro_batch = batch_from_args(args, 4 * args.stages)
    spec = resolve_model(args.model, seq_len=args.seq_len, micro_batch=micro_batch)
    placement = placement_for(args.placement, args.stages, v=args.chunks, waves=args.chunks)
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
