"""``synth export torchtitan SCHEDULE``: a schedule as torchtitan runs it.

Writes the torch CSV (compute-only, what torchtitan's ``pipeline_parallel_schedule_csv`` has
``_PipelineScheduleRuntime._load_csv`` read; ``ir.torch_csv``) and prints the torchtitan
settings that run it. The option names are torchtitan's ``ParallelismConfig`` / ``TrainingConfig``
fields (``torchtitan/config/configs.py``), read at pytorch/torchtitan b5bcd76 (Aug 2026):

- ``parallelism.pipeline_parallel_schedule_csv``: the CSV. With it torchtitan builds a
  ``_PipelineScheduleRuntime`` (``_build_pipeline_schedule``), so the CSV alone decides the order.
- ``parallelism.pipeline_parallel_schedule``: still read, to place the stages
  (``_get_pp_rank_to_stage_indices_mapping``): "v" style (rank r holds stages r and S-1-r) for
  ``ScheduleZBVZeroBubble`` and ``ScheduleDualPipeV``, "loop" (stage s on rank s % p) for every
  other name; and single-stage names (``1F1B``, ``GPipe``) mean one stage per rank, multi-stage
  ones two unless ``pipeline_parallel_layers_per_stage`` says otherwise (``_get_pipeline_metadata``).
  So the name printed is ``1F1B`` (standard), ``Interleaved1F1B`` (interleaved) or ``ZBVZeroBubble``
  (V); torchtitan has no placement for waves (W > 1) or other explicit placements.
- ``parallelism.pipeline_parallel_layers_per_stage``: torchtitan makes ceil((layers + 2) / it)
  stages (``pipeline_parallel_first_stage_less_layers`` and ``..._last_stage_less_layers``, 1 each,
  count the embedding and the head as layers); printed when the layer count is known.
- ``parallelism.num_pp_microbatches``: the number of microbatches m (since pytorch/torchtitan#4121,
  Aug 2026; before it ``parallelism.pipeline_parallel_microbatch_size`` with m =
  ``training.local_batch_size`` / that size), and ``training.num_tokens_per_microbatch_per_dp_rank``.
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from ir import Placement, Schedule, verify
from ir.files import check_outputs, write_new
from ir.torch_csv import to_torch_csv, torch_order

__all__ = ["TorchtitanPlan", "add_export_arguments", "export_command", "torchtitan_plan"]

TARGETS = ("torchtitan",)
# Layers torchtitan counts for the embedding and for the head (pipeline_parallel_first_stage_less_layers,
# pipeline_parallel_last_stage_less_layers, default 1 each).
_EDGE_LAYERS = 2


@dataclass(frozen=True, slots=True)
class TorchtitanPlan:
    """The torchtitan settings that run a schedule from its CSV.

    Attributes:
        settings: ``(option, value)`` pairs, in torchtitan's dotted names.
        notes: lines that say why (placement, stages per rank, older option names).
    """

    settings: tuple[tuple[str, object], ...]
    notes: tuple[str, ...]

    def lines(self) -> list[str]:
        width = max(len(name) for name, _ in self.settings)
        out = ["torchtitan settings (ParallelismConfig / TrainingConfig fields, torchtitan/config/configs.py):"]
        out += [f"  {name:<{width}} = {value!r}" for name, value in self.settings]
        flags = " ".join(f"--{name} {shlex.quote(str(value))}" for name, value in self.settings)
        out += ["as command-line flags:", f"  {flags}"]
        return out + list(self.notes)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=TARGETS, help="what to export for: torchtitan")
    parser.add_argument("schedule", type=Path, help="a saved schedule (.json, as synth writes it, or torch .csv)")
    parser.add_argument("--csv", type=Path,
                        help="write the torch CSV here (default: SCHEDULE with the suffix .csv, or "
                             "SCHEDULE.torchtitan.csv for a .csv input)")
    parser.add_argument("--layers", type=int,
                        help="the model's transformer layers, for pipeline_parallel_layers_per_stage (default: the "
                             "count synth recorded in the schedule, if any)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing CSV")


def export_command(args: argparse.Namespace) -> int:
    """Write the CSV torchtitan loads and print the settings that run it."""
    csv_path = args.csv or _default_csv(args.schedule)
    if csv_path.resolve() == args.schedule.resolve():
        raise ValueError(f"--csv {csv_path} is the schedule being exported; give another file")
    check_outputs([csv_path], args.force)  # before any work
    if args.layers is not None and args.layers < 1:
        raise ValueError(f"--layers must be a positive number of transformer layers, got {args.layers}")
    schedule = _load(args.schedule)
    verify(schedule)
    ready = torch_order(schedule)
    plan = torchtitan_plan(ready.schedule, csv_path.resolve(), layers=args.layers)  # refuses before writing
    write_new(csv_path, to_torch_csv(ready.schedule), overwrite=args.force)
    print(f"wrote {csv_path} (torch compute_only CSV: torch adds the sends, receives and REDUCE_GRAD itself)")
    if ready.note:
        print(ready.note)
    print("\n".join(plan.lines()))
    return 0


def _default_csv(schedule: Path) -> Path:
    if schedule.suffix.lower() == ".csv":
        return schedule.with_name(f"{schedule.stem}.torchtitan.csv")
    return schedule.with_suffix(".csv")


def _load(path: Path) -> Schedule:
    from ir.jsonio import load
    from ir.torch_csv import read_torch_csv

    return read_torch_csv(path) if path.suffix.lower() == ".csv" else load(path)


def torchtitan_plan(schedule: Schedule, csv_path: Path, *, layers: int | None = None) -> TorchtitanPlan:
    """The torchtitan settings that run ``schedule`` from ``csv_path``.

    Args:
        schedule: a schedule torch can run (`ir.torch_csv.check_torch_runnable`).
        csv_path: where the CSV is (torchtitan opens it from its own working folder: give it absolute).
        layers: the model's transformer layers; by default ``schedule.meta["layers"]`` if synth recorded it.

    Raises:
        ValueError: one rank (torchtitan has no pipeline then), or a placement torchtitan cannot make.
    """
    p, num_stages = schedule.p, schedule.num_stages
    if p < 2:
        raise ValueError("torchtitan runs no pipeline at pipeline_parallel_degree = 1; export a schedule for 2 or "
                         "more ranks")
    name, style = _schedule_name(schedule.placement)
    per_rank = num_stages // p
    settings: list[tuple[str, object]] = [
        ("parallelism.pipeline_parallel_degree", p),
        ("parallelism.pipeline_parallel_schedule", name),
        ("parallelism.pipeline_parallel_schedule_csv", str(csv_path)),
        ("parallelism.num_pp_microbatches", schedule.m),
    ]
    notes = [f"placement: {style}; torchtitan places stages this way for the schedule name {name!r} (V style "
             "only for ZBVZeroBubble and DualPipeV, looped for every other name); with the CSV, "
             "_PipelineScheduleRuntime runs the CSV's order and the name only places the stages",
             f"stages per rank: {per_rank} (" + "; ".join(
                 f"rank {r}: {', '.join(map(str, schedule.placement.stages_of(r)))}" for r in range(p)) + ")"]
    layers = layers if layers is not None else schedule.meta.get("layers")
    settings_lps, note = _layers_per_stage(layers, num_stages, per_rank, name)
    settings += settings_lps
    notes.append(note)
    micro_batch, seq_len = schedule.meta.get("micro_batch"), schedule.meta.get("seq_len")
    if isinstance(micro_batch, int) and isinstance(seq_len, int):
        settings.append(("training.num_tokens_per_microbatch_per_dp_rank", micro_batch * seq_len))
    size = micro_batch if isinstance(micro_batch, int) else "B"
    notes.append(f"torchtitan before pytorch/torchtitan#4121 (Aug 2026) has no num_pp_microbatches: set "
                 f"parallelism.pipeline_parallel_microbatch_size = {size} and training.local_batch_size = "
                 f"{schedule.m} * {size} instead (m = local_batch_size / microbatch_size)")
    return TorchtitanPlan(tuple(settings), tuple(notes))


def _schedule_name(placement: Placement) -> tuple[str, str]:
    """The torch schedule name that makes torchtitan place the stages as ``placement`` does."""
    p, num_stages = placement.p, placement.num_stages
    if placement.stage_to_rank == Placement.standard(p).stage_to_rank:
        return "1F1B", "standard, one stage per rank (stage s on rank s)"
    if num_stages == 2 * p and placement.stage_to_rank == Placement.v_shape(p).stage_to_rank:
        return "ZBVZeroBubble", f"V (rank r holds stages r and {num_stages - 1}-r)"
    if num_stages % p == 0 and placement.stage_to_rank == Placement.interleaved(p, num_stages // p).stage_to_rank:
        return "Interleaved1F1B", f"looped / interleaved (stage s on rank s % {p})"
    raise ValueError(
        f"torchtitan cannot place this schedule's stages (stage -> rank {list(placement.stage_to_rank)}, "
        f"{placement.kind.value}): it knows only the looped placement (stage s on rank s % p) and the V placement "
        "(rank r holds stages r and 2p-1-r); synthesize with --placement standard, interleaved or v, or run the "
        "torch CSV (synth --torch-csv) with your own PipelineStages and _PipelineScheduleRuntime._load_csv"
    )


def _layers_per_stage(layers, num_stages: int, per_rank: int, name: str) -> tuple[list[tuple[str, int]], str]:
    """``pipeline_parallel_layers_per_stage`` making torchtitan cut ``num_stages`` stages, and a note."""
    default = 1 if name == "1F1B" else 2  # torchtitan's stages per rank without the option
    unset = (f"leave it unset: torchtitan's default for {name!r}, {default} stage(s) per rank, makes the "
             f"{num_stages} stages") if per_rank == default else None
    if not isinstance(layers, int) or layers < 1:
        return [], "pipeline_parallel_layers_per_stage: " + (unset or (
            f"needed: choose L with ceil((layers + {_EDGE_LAYERS}) / L) = {num_stages}, or list the stages' "
            "modules in parallelism.module_fqns_per_model_part; give --layers N to have it computed"))
    effective = layers + _EDGE_LAYERS
    fits = [lps for lps in range(1, effective + 1) if math.ceil(effective / lps) == num_stages]
    if not fits:
        return [], f"pipeline_parallel_layers_per_stage: no value makes {num_stages} stages of {layers} layers " + (
            f"(torchtitan makes ceil(({layers} + {_EDGE_LAYERS}) / L)); " + (
                unset or "list the stages' modules in parallelism.module_fqns_per_model_part instead"))
    return [("parallelism.pipeline_parallel_layers_per_stage", fits[0])], (
        f"pipeline_parallel_layers_per_stage = {fits[0]}: torchtitan cuts {layers} layers plus embedding and head "
        f"into ceil({effective} / {fits[0]}) = {num_stages} stages, spread evenly (its own split, which may differ "
        "from the cost model's partition; module_fqns_per_model_part sets it exactly)")
