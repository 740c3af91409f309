"""Where a command's costs come from, and its memory cap.

`ModelSource`: the cost model (``--model``, ``--gpu``): a `synth.costs.Problem` per placement,
memory in bytes, throughput and MFU. `FileSource`: ``--costs FILE`` (``synth.costs.user``):
memory in the file's own unit, no tokens/s or MFU. Both give ``costs_for(placement, k)``, what
``synth.search.synthesize`` asks for.

``--mem-cap`` (`parse_mem_cap`, `resolve_cap`): a size (``40GB``, ``40GiB``, ``4e10`` bytes, as
``synth.sizes.parse_size`` reads them), a plain number (the only form with ``--costs``: the
file's unit), or ``1f1b*X``: X times the largest per-rank peak of the library's 1F1B (standard
placement, whole microbatches) simulated on these costs.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

from ir import Costs, Placement, Schedule, simulate
from synth.costs.args import hardware_from_args, resolve_model, training_from_args, user_costs_from_args
from synth.costs.hardware import Hardware
from synth.costs.problem import Problem, Throughput, Training, build_problem
from synth.costs.spec import CostModelError, TransformerSpec
from synth.costs.user import UserCosts, costs_for
from synth.sizes import format_size, parse_size

__all__ = ["CapArg", "FileSource", "ModelSource", "one_f_one_b_peak", "parse_mem_cap", "resolve_cap",
           "source_from_args"]

GiB = 2**30
_FRACTION = re.compile(r"^\s*1f1b\s*\*\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CapArg:
    """``--mem-cap`` as given.

    Attributes:
        text: what was typed.
        amount: the cap (bytes, or the costs file's unit), or None for a fraction of 1F1B's peak.
        fraction: the fraction of 1F1B's peak, for the ``1f1b*X`` form.
        has_unit: the amount carried a size unit (GB, GiB, ...), so it is bytes.
    """

    text: str
    amount: float | None = None
    fraction: float | None = None
    has_unit: bool = False


def parse_mem_cap(text: str) -> CapArg:
    """``--mem-cap``'s argparse type (see the module docstring for the forms)."""
    match = _FRACTION.match(text)
    if match:
        fraction = float(match.group(1))
        if not (math.isfinite(fraction) and fraction > 0):
            raise argparse.ArgumentTypeError(f"the fraction of 1F1B's peak must be > 0, got {text!r}")
        return CapArg(text, fraction=fraction)
    try:
        plain = float(text)
    except ValueError:
        plain = None
    try:
        amount = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read --mem-cap {text!r}: give a size (40GB = 40e9 bytes, 40GiB = 40 * 2**30, 4e10), a plain "
            "number in the --costs file's unit, or a fraction of 1F1B's simulated peak (1f1b*0.5)") from None
    return CapArg(text, amount=amount, has_unit=plain is None)


def one_f_one_b_peak(costs_for_, p: int, m: int) -> float:
    """The largest per-rank peak of the library's 1F1B (standard placement, k = 1), simulated."""
    from synth.baselines import BASELINES

    costs = costs_for_(Placement.standard(p), 1)
    return max(simulate(BASELINES["1f1b"](p, m, costs=costs), costs).peak)


def resolve_cap(cap: CapArg | None, source, p: int, m: int) -> float | None:
    """The cap in the source's memory unit: ``--mem-cap``, or the source's default when absent.

    Raises:
        CostModelError: a size with a unit beside ``--costs`` (the file's unit is unknown).
    """
    if cap is None:
        return source.default_cap
    if cap.fraction is not None:
        return cap.fraction * one_f_one_b_peak(source.costs_for, p, m)
    if cap.has_unit and isinstance(source, FileSource):
        raise CostModelError(f"--mem-cap {cap.text}: with --costs, memory is in {source.user.source}'s own unit, "
                             "so give the cap as a plain number in that unit (e.g. --mem-cap 40) or as 1f1b*X")
    return cap.amount


@dataclass(frozen=True)
class ModelSource:
    """Costs from the cost model: one `Problem` per (placement, k) the search asks for, kept so
    the report can give each candidate's throughput. Memory in bytes, printed in GiB."""

    spec: TransformerSpec
    hardware: Hardware
    training: Training
    m: int
    partition: str
    slicing: str
    problems: dict = field(default_factory=dict, repr=False, compare=False)

    plot_unit: ClassVar[str] = "GiB"
    has_throughput: ClassVar[bool] = True
    memory_label: ClassVar[str] = "GiB"

    @property
    def label(self) -> str:
        return self.spec.name

    @property
    def default_cap(self) -> float:
        return self.hardware.memory

    def costs_for(self, placement: Placement, k: int) -> Costs:
        return self.problem(placement, k).costs

    def problem(self, placement: Placement, k: int) -> Problem:
        key = (placement.stage_to_rank, k)
        if key not in self.problems:
            self.problems[key] = build_problem(self.spec, self.hardware, placement, self.m, k=k,
                                               partition=self.partition, slicing=self.slicing, training=self.training)
        return self.problems[key]

    def throughput(self, placement: Placement, k: int, makespan: float) -> Throughput | None:
        return self.problem(placement, k).throughput(makespan)

    def header(self, p: int, m: int, k: int, cap: float | None) -> str:
        spec, hw = self.spec, self.hardware
        return (f"{spec.name} on {p} x {hw.name}, seq {spec.seq_len}, micro-batch {spec.micro_batch}, "
                f"{m} microbatches, {k} slice(s); memory cap {self.cap_text(cap)} per GPU")

    def memory(self, x: float) -> str:
        return f"{x / GiB:.2f}"

    def cap_text(self, cap: float | None) -> str:
        return "none" if cap is None else format_size(cap)

    def meta(self, peak: tuple[float, ...], cap: float | None, schedule: Schedule | None = None) -> dict:
        """What a written schedule records of its costs; with slices, the cost model's cut in tokens
        (``slice_bounds``), which ``synth run`` scales to the model it runs."""
        out = {"peak_bytes": [round(x) for x in peak], "mem_cap_bytes": round(cap) if cap else None,
               "model": self.spec.name, "gpu": self.hardware.name,
               # the shape, for 'synth export torchtitan' (layers per stage, tokens per microbatch)
               "layers": self.spec.layers, "micro_batch": self.spec.micro_batch, "seq_len": self.spec.seq_len}
        if schedule is not None and schedule.k > 1:
            out["slice_bounds"] = list(self.problem(schedule.placement, schedule.k).bounds)
        return out


@dataclass(frozen=True)
class FileSource:
    """Costs from ``--costs FILE``: memory in the file's unit, no throughput (no model FLOPs)."""

    user: UserCosts

    plot_unit: ClassVar[str] = "units"
    has_throughput: ClassVar[bool] = False
    memory_label: ClassVar[str] = ""
    default_cap: ClassVar[None] = None  # no GPU to take it from: no cap unless --mem-cap

    @property
    def label(self) -> str:
        return f"costs from {self.user.source}"

    def costs_for(self, placement: Placement, k: int) -> Costs:
        return costs_for(self.user, placement, k)

    def throughput(self, placement: Placement, k: int, makespan: float) -> Throughput | None:
        return None

    def header(self, p: int, m: int, k: int, cap: float | None) -> str:
        offload = "" if self.user.offload_offered else "; offload not offered (no 'offload' in the file)"
        return (f"costs from {self.user.source} (times in ms, memory in the file's unit), {p} ranks, "
                f"{m} microbatches, {k} slice(s); memory cap {self.cap_text(cap)} per rank{offload}")

    def memory(self, x: float) -> str:
        return f"{x:.4g}"

    def cap_text(self, cap: float | None) -> str:
        return "none" if cap is None else f"{cap:.4g}"

    def meta(self, peak: tuple[float, ...], cap: float | None, schedule: Schedule | None = None) -> dict:
        return {"peak": [round(x, 6) for x in peak], "mem_cap": cap, "costs": self.user.source}


def source_from_args(args: argparse.Namespace, m: int) -> ModelSource | FileSource:
    """The costs the options describe: ``--costs FILE`` or the cost model.

    Raises:
        CostModelError: a bad file, model option or combination, with the fix.
    """
    if args.costs is not None:
        return FileSource(user_costs_from_args(args))
    spec = resolve_model(args.model, seq_len=args.seq_len, micro_batch=args.micro_batch_size)
    return ModelSource(spec, hardware_from_args(args), training_from_args(args), m, args.partition, args.slicing)
