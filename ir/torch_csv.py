"""The torch CSV form of a `Schedule`: what ``torch.distributed.pipelining`` reads.

``_PipelineScheduleRuntime._load_csv(path, format)`` reads one CSV row per rank, one action
per cell, in torch's notation: ``F`` forward, ``I`` input-grad backward (our ``B``), ``W``
weight-grad backward, ``B`` fused backward (our ``BW``). Two formats:

- ``compute_only`` (torch's default, and what torchtitan's ``pipeline_parallel_schedule_csv``
  loads): compute cells only; torch lowers them itself (``_add_send_recv``, plus its
  ``REDUCE_GRAD`` after each stage's last backward). A lowered schedule is written without its
  SEND/RECV actions: lowering never reorders compute.
- ``compute_comms``: the schedule lowered by ``ir.lower`` (``SEND_F``/``RECV_F``/``SEND_B``/
  ``RECV_B`` cells, same stage convention as torch) plus one ``REDUCE_GRAD`` cell right after
  each stage's last ``W``/``BW``, where torch's own lowering (``_add_reduce_grad``) puts it:
  torch runs that file as written, and without REDUCE_GRAD it never divides the gradients by
  ``m`` (``stage.perform_reduce_grad(n_microbatches)``), so they would be ``m`` times too large.

Torch's runtime takes the loss of microbatch ``i`` to be the ``i``-th loss its last stage
computed (``_maybe_compute_loss`` appends in forward order, ``_maybe_get_loss`` indexes by
microbatch), so it runs a schedule correctly only when the last stage's forwards come in
microbatch order 0, 1, ..., m-1; otherwise a backward gets another microbatch's loss or fails
with "Loss for microbatch i is not available". Export refuses such a schedule; `torch_order`
renumbers its microbatches (every rank's order, and so the timing, unchanged) so that it can be
exported. Torch has no recompute, offload or sequence slices, so such schedules are refused.

Import infers the placement from which row (rank) runs which stage, as torch does, expands
``OVERLAP_F_B`` cells into their sub-actions, drops ``REDUCE_GRAD`` cells (pipesynth reduces
after each stage's last backward anyway) and refuses torch's FSDP ops (``UNSHARD``,
``RESHARD``) unless asked to drop them. The JSON form lives in ``ir.jsonio``.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from ir.actions import Action, Op
from ir.costs import Costs
from ir.files import read_input, write_new
from ir.placement import Placement, PlacementKind
from ir.schedule import Schedule

__all__ = [
    "FORMATS",
    "TorchCsvError",
    "TorchOrder",
    "check_torch_runnable",
    "from_torch_csv",
    "read_torch_csv",
    "to_torch_csv",
    "torch_order",
    "write_torch_csv",
]

FORMATS = ("compute_only", "compute_comms")

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
_REDUCE_GRAD = "REDUCE_GRAD"
_FSDP_OPS = ("UNSHARD", "RESHARD")
_NO_TORCH_OP = (Op.R, Op.OFFLOAD, Op.RELOAD)
# Longest names first so that "SEND_F" is not read as an "F" cell.
_TORCH_OPS = sorted([*_FROM_TORCH, *_FSDP_OPS, _REDUCE_GRAD], key=len, reverse=True)
_CELL_RE = re.compile(rf"(\d+)({'|'.join(_TORCH_OPS)})(\d*)")
_OVERLAP_RE = re.compile(r"\((.*)\)OVERLAP_F_B")


class TorchCsvError(ValueError):
    """A schedule cannot be written as torch CSV, or a torch CSV cannot be read as a schedule."""


# --------------------------------------------------------------------------- what torch can run


@dataclass(frozen=True, slots=True)
class TorchOrder:
    """A schedule as torch's runtime can run it (see `torch_order`).

    Attributes:
        schedule: the schedule to export; ``schedule`` itself when nothing had to change.
        renumbered: ``renumbered[i]`` is the new number of the old microbatch ``i``; None when
            the last stage already ran its forwards in microbatch order.
    """

    schedule: Schedule
    renumbered: tuple[int, ...] | None = None

    @property
    def note(self) -> str | None:
        """One line for the user saying what was renumbered and why; None when nothing was."""
        if self.renumbered is None:
            return None
        moved = ", ".join(f"{old}->{new}" for old, new in enumerate(self.renumbered) if old != new)
        return (f"torch CSV: microbatches renumbered ({moved}) so that the last stage runs its forwards in order "
                "0..m-1, as torch's runtime needs (it indexes the losses by the order the last stage computed them); "
                "every rank's order and the timing are unchanged")


def torch_order(schedule: Schedule) -> TorchOrder:
    """``schedule`` with its microbatches renumbered so that torch's runtime can run it.

    The last stage's ``i``-th forward becomes microbatch ``i`` everywhere. Microbatches are
    interchangeable (same data path, same costs), so the result is the same schedule with
    other names: every rank runs the same passes in the same order.

    Raises:
        TorchCsvError: the schedule uses what torch has no cell for (see `check_torch_runnable`).
    """
    _check_exportable(schedule)
    order = _last_stage_order(schedule)
    if order == list(range(schedule.m)) or sorted(order) != list(range(schedule.m)):
        return TorchOrder(schedule)  # in order already, or malformed (verify names what is wrong)
    new = [0] * schedule.m
    for position, old in enumerate(order):
        new[old] = position
    programs = [[Action(a.op, a.stage, new[a.microbatch], a.slice) for a in prog] for prog in schedule.ranks]
    return TorchOrder(schedule.with_programs(programs, torch_renumbered=new), tuple(new))


def check_torch_runnable(schedule: Schedule) -> None:
    """Refuse, with the reason and what to do, a schedule torch's runtime cannot run as ordered.

    Raises:
        TorchCsvError: sequence slices (k > 1), R/OFFLOAD/RELOAD, or a last stage whose
            forwards are not in microbatch order 0..m-1.
    """
    _check_exportable(schedule)
    order = _last_stage_order(schedule)
    if order != list(range(schedule.m)) and sorted(order) == list(range(schedule.m)):
        last = schedule.num_stages - 1
        first_wrong = next(i for i, mb in enumerate(order) if mb != i)
        raise TorchCsvError(
            f"torch's runtime cannot run this order: the last stage (stage {last}, rank "
            f"{schedule.placement.stage_to_rank[last]}) runs its forwards in microbatch order "
            f"{', '.join(map(str, order))}, and _PipelineScheduleRuntime takes the loss of microbatch i to be the "
            f"i-th loss the last stage computed, so the backward of microbatch {first_wrong} would get the loss of "
            f"microbatch {order[first_wrong]} (or stop with 'Loss for microbatch ... is not available'); renumber "
            "the microbatches first with ir.torch_csv.torch_order(schedule) (synth's --torch-csv and 'synth export' "
            "do), which keeps every rank's order and the timing"
        )


def _last_stage_order(schedule: Schedule) -> list[int]:
    last = schedule.num_stages - 1
    prog = schedule.ranks[schedule.placement.stage_to_rank[last]]
    return [a.microbatch for a in prog if a.op is Op.F and a.stage == last]


def _check_exportable(schedule: Schedule) -> None:
    if schedule.k != 1:
        raise TorchCsvError(
            f"cannot export to torch CSV: the schedule cuts each microbatch into k={schedule.k} sequence "
            "slices, and torch's runtime has no sequence slices (its actions have no slice field); "
            "export a schedule with k=1 (synth -k 1)"
        )
    for rank, pos, action in schedule.actions():
        if action.op in _NO_TORCH_OP:
            raise TorchCsvError(
                f"cannot export to torch CSV: rank {rank}, position {pos}: {action} is {action.op.value}; "
                "torch's runtime has no recompute/offload op; export a schedule without R/OFFLOAD/RELOAD "
                "(synthesize it with --no-recompute --no-offload)"
            )
        if action.slice != 0:
            raise TorchCsvError(
                f"cannot export to torch CSV: rank {rank}, position {pos}: {action} is sequence slice "
                f"{action.slice}, and torch's runtime has no sequence slices; export a schedule without slices"
            )


# --------------------------------------------------------------------------- export


def to_torch_csv(schedule: Schedule, *, format: str = "compute_only", costs: Costs | None = None) -> str:
    """The torch CSV text of ``schedule`` in torch's ``format``: one row per rank, ``"\\n"`` line ends.

    Args:
        schedule: a compute-only or lowered schedule torch can run (see `check_torch_runnable`;
            `torch_order` renumbers one whose last stage runs microbatches out of order).
        format: "compute_only" (compute cells; torch lowers them) or "compute_comms" (lowered
            by ``ir.lower`` unless it is already, with torch's REDUCE_GRAD cells).
        costs: the times ``ir.lower`` orders sends and receives by (compute_comms only).

    Raises:
        TorchCsvError: as `check_torch_runnable`, or an unknown format.
        ScheduleError: compute_comms of a schedule ``ir.lower`` refuses (invalid, deadlocked).
    """
    if format not in FORMATS:
        raise TorchCsvError(f"unknown torch CSV format {format!r}; expected one of {', '.join(FORMATS)}")
    check_torch_runnable(schedule)
    if format == "compute_only":
        rows = [[_torch_cell(a) for a in prog if not a.op.is_comm] for prog in schedule.ranks]
    else:
        from ir.lower import lower

        rows = _with_reduce_grad(lower(schedule, costs), schedule.m)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(rows)
    return out.getvalue()


def write_torch_csv(schedule: Schedule, path: str | Path, *, format: str = "compute_only",
                    costs: Costs | None = None, overwrite: bool = False) -> Path:
    """Write ``schedule`` as torch CSV (see `to_torch_csv`) to ``path``; returns the path.

    Raises:
        TorchCsvError, ScheduleError: as `to_torch_csv`.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return write_new(path, to_torch_csv(schedule, format=format, costs=costs), overwrite=overwrite)


def _torch_cell(action: Action) -> str:
    return f"{action.stage}{_TO_TORCH[action.op]}{action.microbatch}"


def _with_reduce_grad(lowered: Schedule, m: int) -> list[list[str]]:
    """Each rank's cells with ``<stage>REDUCE_GRAD`` right after the stage's m-th W or BW, as
    torch's ``_add_reduce_grad`` counts them (its B and W; I does not count)."""
    rows = []
    for prog in lowered.ranks:
        done: dict[int, int] = {}
        row = []
        for action in prog:
            row.append(_torch_cell(action))
            if action.op in (Op.W, Op.BW):
                done[action.stage] = done.get(action.stage, 0) + 1
                if done[action.stage] == m:
                    row.append(f"{action.stage}{_REDUCE_GRAD}")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- import


def from_torch_csv(text: str, *, m: int | None = None, drop_fsdp_ops: bool = False) -> Schedule:
    """The `Schedule` a torch CSV (compute-only or compute_comms) describes.

    Args:
        text: the CSV text, one row per rank.
        m: number of microbatches; by default the number of F actions per stage.
        drop_fsdp_ops: skip UNSHARD/RESHARD cells (torch's own lowering, and so its default
            ``_dump_csv``, adds them) instead of refusing them. REDUCE_GRAD cells are always
            skipped: pipesynth reduces each stage's gradients after its last backward anyway.

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
    """The action of one cell (or one OVERLAP_F_B sub-action); None for REDUCE_GRAD or a dropped FSDP op."""
    where = f"torch CSV rank {rank} (row {rank + 1}), column {col + 1}: {cell!r}"
    match = _CELL_RE.fullmatch(text)
    if match is None:
        raise TorchCsvError(
            f"{where} is not a torch action; expected <stage><op><microbatch> such as '0F3', '1I2', "
            f"'1SEND_F0', or '(0F1;1B0)OVERLAP_F_B', with op one of {', '.join(sorted(_FROM_TORCH))}"
        )
    stage, name, microbatch = match.groups()
    if name == _REDUCE_GRAD:
        return None
    if name in _FSDP_OPS:
        if drop_fsdp_ops:
            return None
        raise TorchCsvError(
            f"{where} is torch's {name}, an FSDP op that pipesynth's IR does not model; remove the "
            "UNSHARD/RESHARD cells or pass drop_fsdp_ops=True (torch's runtime adds them again itself "
            "when it lowers)"
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
