"""The torch CSV form of a `Schedule`: what ``torch.distributed.pipelining`` reads.

``_PipelineScheduleRuntime._load_csv`` reads one CSV row per rank, one action per
cell, in torch's notation: ``F`` forward, ``I`` input-grad backward (our ``B``),
``W`` weight-grad backward, ``B`` fused backward (our ``BW``); a lowered schedule
also has ``SEND_F``/``RECV_F``/``SEND_B``/``RECV_B`` cells (torch's "compute_comms"
format), which keep their names and stage convention here. Torch has no recompute,
offload or sequence slices, so such schedules are refused on export.

Import infers the placement from which row (rank) runs which stage, as torch does,
expands ``OVERLAP_F_B`` cells into their sub-actions, and refuses torch's FSDP/DP ops
(``UNSHARD``, ``RESHARD``, ``REDUCE_GRAD``). The JSON form lives in ``ir.jsonio``.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ir.actions import Action, Op
from ir.files import read_input, write_new
from ir.placement import Placement, PlacementKind
from ir.schedule import Schedule

__all__ = ["TorchCsvError", "from_torch_csv", "read_torch_csv", "to_torch_csv", "write_torch_csv"]

_TO_TORCH = {
    Op.F: "F",
    Op.B: "I",
    Op.W: "W",
    Op.BW: "B",
    Op.SEND_F: "SEND_F",
    Op.RECV_F: "RECV_F",
    Op.SEND_B: "SEND_B",
    Op.RECV_B: "RECV_B",
}
_FROM_TORCH = {text: op for op, text in _TO_TORCH.items()}
_FSDP_OPS = ("UNSHARD", "RESHARD", "REDUCE_GRAD")
_NO_TORCH_OP = (Op.R, Op.OFFLOAD, Op.RELOAD)
# Longest names first so that "SEND_F" is not read as an "F" cell.
_TORCH_OPS = sorted([*_FROM_TORCH, *_FSDP_OPS], key=len, reverse=True)
_CELL_RE = re.compile(rf"(\d+)({'|'.join(_TORCH_OPS)})(\d*)")
_OVERLAP_RE = re.compile(r"\((.*)\)OVERLAP_F_B")


class TorchCsvError(ValueError):
    """A schedule cannot be written as torch CSV, or a torch CSV cannot be read as a schedule."""


# --------------------------------------------------------------------------- export


def to_torch_csv(schedule: Schedule) -> str:
    """The torch CSV text of ``schedule``: one row per rank, ``"\\n"`` line ends.

    Raises:
        TorchCsvError: the schedule uses R/OFFLOAD/RELOAD or sequence slices.
    """
    _check_exportable(schedule)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for prog in schedule.ranks:
        writer.writerow([_torch_cell(a) for a in prog])
    return out.getvalue()


def write_torch_csv(schedule: Schedule, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``schedule`` as torch CSV to ``path``; returns the path.

    Raises:
        TorchCsvError: as `to_torch_csv`.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return write_new(path, to_torch_csv(schedule), overwrite=overwrite)


def _torch_cell(action: Action) -> str:
    return f"{action.stage}{_TO_TORCH[action.op]}{action.microbatch}"


def _check_exportable(schedule: Schedule) -> None:
    if schedule.k != 1:
        raise TorchCsvError(
            f"cannot export to torch CSV: the schedule cuts each microbatch into k={schedule.k} sequence "
            "slices, and torch's runtime has no sequence slices (its actions have no slice field); "
            "export a schedule with k=1"
        )
    for rank, pos, action in schedule.actions():
        if action.op in _NO_TORCH_OP:
            raise TorchCsvError(
                f"cannot export to torch CSV: rank {rank}, position {pos}: {action} is {action.op.value}; "
                "torch's runtime has no recompute/offload op; export a schedule without R/OFFLOAD/RELOAD "
                "(synthesize it with recompute and offload turned off)"
            )
        if action.slice != 0:
            raise TorchCsvError(
                f"cannot export to torch CSV: rank {rank}, position {pos}: {action} is sequence slice "
                f"{action.slice}, and torch's runtime has no sequence slices; export a schedule without slices"
            )


# --------------------------------------------------------------------------- import


def from_torch_csv(text: str, *, m: int | None = None, drop_fsdp_ops: bool = False) -> Schedule:
    """The `Schedule` a torch CSV (compute-only or compute_comms) describes.

    Args:
        text: the CSV text, one row per rank.
        m: number of microbatches; by default the number of F actions per stage.
        drop_fsdp_ops: skip UNSHARD/RESHARD/REDUCE_GRAD cells (torch's own lowering, and
            so its default ``_dump_csv``, adds them) instead of refusing them.

    Raises:
        TorchCsvError: naming the rank and column of a cell that cannot be read, or the
            stage whose placement or microbatch count is inconsistent.
    """
    rows = list(csv.reader(io.StringIO(text)))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()  # trailing blank lines are not ranks
    if not rows:
        raise TorchCsvError("torch CSV has no rows; expected one row of actions per rank")
    programs = [_read_row(rank, row, drop_fsdp_ops) for rank, row in enumerate(rows)]
    placement = _infer_placement(programs)
    count = _count_microbatches(programs, placement.num_stages) if m is None else m
    try:
        return Schedule(placement, count, programs, 1, {"source": "torch-csv"})
    except ValueError as exc:
        raise TorchCsvError(f"torch CSV does not make a schedule: {exc}") from None


def read_torch_csv(path: str | Path, *, m: int | None = None, drop_fsdp_ops: bool = False) -> Schedule:
    """Read a torch CSV file (see `from_torch_csv`); errors carry the path."""
    path = Path(path)
    text = read_input(path, "torch CSV schedule")
    try:
        return from_torch_csv(text, m=m, drop_fsdp_ops=drop_fsdp_ops)
    except TorchCsvError as exc:
        raise TorchCsvError(f"{path}: {exc}") from None


def _read_row(rank: int, row: list[str], drop_fsdp_ops: bool) -> list[Action]:
    actions: list[Action] = []
    for col, cell in enumerate(row):
        cell = cell.strip()
        overlap = _OVERLAP_RE.fullmatch(cell)
        parts = overlap.group(1).split(";") if overlap else [cell]
        for part in filter(None, (p.strip() for p in parts)):
            action = _read_action(rank, col, cell, part, drop_fsdp_ops)
            if action is not None:
                actions.append(action)
    return actions


def _read_action(rank: int, col: int, cell: str, text: str, drop_fsdp_ops: bool) -> Action | None:
    """The action of one cell (or one OVERLAP_F_B sub-action); None for a dropped FSDP op."""
    where = f"torch CSV rank {rank} (row {rank + 1}), column {col + 1}: {cell!r}"
    match = _CELL_RE.fullmatch(text)
    if match is None:
        raise TorchCsvError(
            f"{where} is not a torch action; expected <stage><op><microbatch> such as '0F3', '1I2', "
            f"'1SEND_F0', or '(0F1;1B0)OVERLAP_F_B', with op one of {', '.join(sorted(_FROM_TORCH))}"
        )
    stage, name, microbatch = match.groups()
    if name in _FSDP_OPS:
        if drop_fsdp_ops:
            return None
        raise TorchCsvError(
            f"{where} is torch's {name}, an FSDP/DP op that pipesynth's IR does not model; remove the "
            "UNSHARD/RESHARD/REDUCE_GRAD cells or pass drop_fsdp_ops=True (torch's runtime adds them "
            "again itself when it lowers)"
        )
    if not microbatch:
        raise TorchCsvError(f"{where} has no microbatch index; write it as e.g. '{stage}{name}0'")
    return Action(_FROM_TORCH[name], int(stage), int(microbatch))


def _infer_placement(programs: list[list[Action]]) -> Placement:
    """Which rank holds each stage, from the rows that act on it; a named kind when one matches."""
    owner: dict[int, int] = {}
    for rank, prog in enumerate(programs):
        for action in prog:
            first = owner.setdefault(action.stage, rank)
            if first != rank:
                raise TorchCsvError(
                    f"torch CSV puts stage {action.stage} on both rank {first} and rank {rank} "
                    f"(cell {_torch_cell(action)!r}); a stage runs on one rank"
                )
    num_stages = max(owner) + 1
    missing = [s for s in range(num_stages) if s not in owner]
    if missing:
        raise TorchCsvError(
            f"torch CSV has no action for stage(s) {missing}; every stage 0..S-1 must appear in some row"
        )
    stage_to_rank = tuple(owner[s] for s in range(num_stages))
    idle = [r for r in range(len(programs)) if r not in stage_to_rank]
    if idle:
        raise TorchCsvError(f"torch CSV rank(s) {idle} run no stage; every row must hold at least one action")
    return _named_placement(stage_to_rank, len(programs))


def _named_placement(stage_to_rank: tuple[int, ...], p: int) -> Placement:
    """The first of standard, V-shape, interleaved, waves that gives ``stage_to_rank``; else explicit."""
    num_stages = len(stage_to_rank)
    candidates = [Placement.standard(p), Placement.v_shape(p)]
    if num_stages % p == 0:
        candidates.append(Placement.interleaved(p, num_stages // p))
    if num_stages % (2 * p) == 0:
        candidates.append(Placement.waves(p, num_stages // (2 * p)))
    for placement in candidates:
        if placement.stage_to_rank == stage_to_rank:
            return placement
    return Placement(stage_to_rank, PlacementKind.EXPLICIT)


def _count_microbatches(programs: list[list[Action]], num_stages: int) -> int:
    forwards = [0] * num_stages
    for prog in programs:
        for action in prog:
            if action.op is Op.F:
                forwards[action.stage] += 1
    if len(set(forwards)) != 1 or forwards[0] == 0:
        raise TorchCsvError(
            f"torch CSV has {forwards} forward (F) actions per stage; every stage needs the same number "
            "m >= 1, or pass m= explicitly"
        )
    return forwards[0]
