"""The executor: one rank walks its lowered program, one handler per op.

`prepare_schedule` checks a schedule before any compute (``ir.lower``, which applies
``ir.verify``'s structural rules and adds comm actions when there are none yet, and the stage
count against the model). `RankExecutor` then runs one training step at a time: each action goes
to the handler of its op (F, R, B, W, BW, OFFLOAD, RELOAD; runs of SEND/RECV go to the `Mailbox`
as one batch) and nothing else decides the order; there is no schedule-specific loop. Boundary
tensors between two stages on the same rank are handed over in memory.

Per step it records each action's start and end (``backends.torch_exec.trace`` turns them into a
Chrome trace), the loss (on the rank holding the last stage: the sum of the units' scaled losses,
i.e. the batch mean), and the saved-activation bytes over time (``MemoryTracker``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from backends.torch_exec.comms import Mailbox
from backends.torch_exec.memory import MemoryTracker
from backends.torch_exec.model import ModelSpec
from backends.torch_exec.passes import KVChain, StageRunner, Unit, unit_seed
from backends.torch_exec.stages import StageCountError, check_stage_count, partition
from ir import Action, Op, Schedule, ScheduleError, lower

__all__ = ["ExecutorError", "RankExecutor", "SpanRecord", "StepRecord", "prepare_schedule", "slice_lengths",
           "split_batch"]


class ExecutorError(ValueError):
    """A run refused before any compute: the schedule, the model or the batch does not fit."""


def prepare_schedule(schedule: Schedule, spec: ModelSpec, *, world_size: int | None = None,
                     batch_size: int | None = None, stage_layers: Sequence[int] | None = None,
                     lengths: Sequence[int] | None = None) -> Schedule:
    """``schedule`` verified and lowered, or `ExecutorError` saying why it cannot run.

    Checks, in order: ``ir.verify`` (completeness, order, deadlock), the number of ranks, the
    stage count against the model's layers, parameters tied across ranks (`check_tied`), sequence
    slices against the model (``lengths``: the tokens of each slice, None for equal ones), the
    batch against ``m``.
    """
    try:
        lowered = lower(schedule)  # runs verify's structural rules (deadlock included) and raises on them
    except ScheduleError as exc:
        raise ExecutorError(f"refusing to run the schedule: {exc}") from None
    if world_size is not None and world_size != schedule.p:
        raise ExecutorError(f"the schedule has {schedule.p} ranks but {world_size} processes run it; "
                            f"start {schedule.p} processes (--nproc {schedule.p})")
    try:
        check_stage_count(spec, schedule.num_stages, stage_layers)
    except StageCountError as exc:
        raise ExecutorError(f"refusing to run: {exc}") from None
    check_tied(spec, schedule, stage_layers)
    if schedule.k > 1:
        if spec.seq_dim is None or spec.seq_len is None:
            raise ExecutorError(f"the schedule cuts microbatches into k={schedule.k} sequence slices, but model "
                                f"{spec.name!r} has no slice-aware layers; use a schedule with k=1")
        if lengths is not None:
            check_lengths(lengths, schedule.k, spec.seq_len)
        elif spec.seq_len % schedule.k:
            raise ExecutorError(f"k={schedule.k} equal sequence slices must divide the sequence length "
                                f"{spec.seq_len}; give the slice lengths (--slice-lengths) or pick a k that divides it")
    if batch_size is not None and batch_size % schedule.m:
        raise ExecutorError(f"batch size {batch_size} is not a multiple of the schedule's m={schedule.m} "
                            "microbatches; use a batch size that m divides")
    return lowered


def check_tied(spec: ModelSpec, schedule: Schedule, stage_layers: Sequence[int] | None = None) -> None:
    """Refuse a model whose tied parameter (one tensor in two layers, as GPT-2's embedding and head
    by default) lands on two ranks: each rank would update its own copy with only its own part of
    the gradient (off by 5e-2 on GPT-2, silently). Tied layers on one rank share the tensor there,
    so their gradients sum as in one process. The model is built on the meta device (no memory)."""
    with torch.device("meta"):
        layers = spec.build_layers()
    ranges = partition(len(layers), schedule.num_stages, pre=spec.pre, post=spec.post, stage_layers=stage_layers)
    ranks = schedule.placement.stage_to_rank
    first: dict[int, tuple[str, int]] = {}  # id of the tensor -> (its first name, stage)
    for s in range(schedule.num_stages):
        for n in ranges[s]:
            for name, param in layers[n].named_parameters(prefix=str(n), remove_duplicate=False):
                seen = first.setdefault(id(param), (name, s))
                if ranks[seen[1]] != ranks[s]:
                    raise ExecutorError(
                        f"refusing to run: parameter {name!r} (stage {s}, rank {ranks[s]}) is the same tensor as "
                        f"{seen[0]!r} (stage {seen[1]}, rank {ranks[seen[1]]}): tied weights on two ranks would each "
                        "get only part of their gradient; put the stages that share it on one rank (a V placement "
                        "puts the first and the last stage together) or untie it")


def check_lengths(lengths: Sequence[int], k: int, seq_len: int) -> None:
    """Refuse slice lengths that are not k positive ints summing to the sequence length."""
    if len(lengths) != k or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths) \
            or sum(lengths) != seq_len:
        raise ExecutorError(f"slice lengths {list(lengths)} must be k={k} positive token counts summing to the "
                            f"model's sequence length {seq_len}")


def slice_lengths(schedule: Schedule, seq_len: int) -> tuple[int, ...] | None:
    """The tokens of each slice for a model of ``seq_len`` tokens: the schedule's own cut
    (``meta["slice_bounds"]``, token boundaries the cost model chose, e.g. its compute-balanced
    split) scaled to ``seq_len`` and rounded, every slice at least one token; None (equal slices)
    when the schedule has one slice or records no cut."""
    bounds = schedule.meta.get("slice_bounds")
    if schedule.k == 1 or not bounds:
        return None
    if len(bounds) != schedule.k + 1 or seq_len < schedule.k:
        raise ExecutorError(f"the schedule's slice_bounds {list(bounds)} do not describe k={schedule.k} slices "
                            f"of a {seq_len}-token sequence")
    total = bounds[-1] - bounds[0]
    cuts = [0]
    for j, b in enumerate(bounds[1:-1], start=1):
        cut = round((b - bounds[0]) * seq_len / total)
        cuts.append(min(max(cut, cuts[-1] + 1), seq_len - (schedule.k - j)))
    cuts.append(seq_len)
    return tuple(b - a for a, b in zip(cuts, cuts[1:], strict=False))


def split_batch(tensor: Tensor, m: int, k: int, seq_dim: int | None,
                lengths: Sequence[int] | None = None) -> list[list[Tensor]]:
    """``out[i][j]``: microbatch i (along dim 0), slice j (along ``seq_dim``; ``lengths`` tokens
    each, or equal), each its own tensor (a copy, so that what a unit holds is its own data, not a
    view keeping the whole batch)."""
    out = []
    for mb in tensor.chunk(m, dim=0):
        if k == 1:
            out.append([mb.clone()])
            continue
        parts = mb.chunk(k, dim=seq_dim) if lengths is None else mb.split(list(lengths), dim=seq_dim)
        out.append([c.clone(memory_format=torch.contiguous_format) for c in parts])
    return out


def comm_batches(program: Sequence[Action], recv_lookahead: int | None = 0) -> list[Action | list[Action]]:
    """The program as compute actions and batches of consecutive SEND/RECV (posted together).

    With ``recv_lookahead`` > 0 every receive moves that many compute actions earlier (None: to
    the start), so that the sender's data can land while this rank still computes. Posting a
    receive early never blocks and the consumer still waits for it where it is used, so this is
    safe when messages are matched by tag (gloo); NCCL matches by order, so it keeps 0.
    """
    items: list[Action | list[Action]] = []
    for action in program:
        if action.op.is_comm and items and isinstance(items[-1], list):
            items[-1].append(action)
        else:
            items.append([action] if action.op.is_comm else action)
    if recv_lookahead == 0:
        return items
    out: list[Action | list[Action]] = []
    computes = 0  # compute actions placed so far
    bins: dict[int, list[Action]] = {}  # compute count -> receives to post before that compute
    for item in items:
        if isinstance(item, list):
            for action in item:
                if action.op in (Op.RECV_F, Op.RECV_B):
                    at = 0 if recv_lookahead is None else max(0, computes - recv_lookahead)
                    bins.setdefault(at, []).append(action)
                else:
                    bins.setdefault(computes, []).append(action)
            continue
        computes += 1
    # second pass: emit each compute after the batch posted before it
    computes = 0
    for item in items:
        if isinstance(item, list):
            continue
        if computes in bins:
            out.append(bins.pop(computes))
        out.append(item)
        computes += 1
    if computes in bins:
        out.append(bins.pop(computes))
    return out


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """When one action ran on this rank, in seconds since the step started."""

    action: str
    start: float
    end: float


@dataclass(slots=True)
class StepRecord:
    """What one step measured on one rank."""

    loss: float | None
    seconds: float
    peak_bytes: int
    spans: list[SpanRecord] = field(default_factory=list)
    memory: list[tuple[float, int]] = field(default_factory=list)
    cuda_peak_bytes: int | None = None


class RankExecutor:
    """Runs a lowered schedule's program for one rank, step by step.

    Args:
        schedule: verified and lowered (`prepare_schedule`).
        rank: this rank.
        runners: a `StageRunner` for each stage this rank holds.
        mailbox: this rank's p2p traffic.
        tracker: the rank's saved-activation bytes.
        seed: base of the per-unit RNG seeds (`unit_seed`).
        sync: waits for the device (CUDA): at the end of a step, and after every action when
            spans are recorded (so a traced step is serialised); None on CPU.
        recv_lookahead: post each receive this many compute actions before the program does
            (None: all at the step's start); see `comm_batches`.
    """

    def __init__(self, schedule: Schedule, rank: int, runners: dict[int, StageRunner], mailbox: Mailbox,
                 tracker: MemoryTracker, seed: int = 0, sync: Callable[[], None] | None = None,
                 recv_lookahead: int | None = 0) -> None:
        self.schedule = schedule
        self.rank = rank
        self.program = schedule.ranks[rank]
        self.runners = runners
        self.mailbox = mailbox
        self.tracker = tracker
        self.seed = seed
        self.sync = sync
        self.last = schedule.num_stages - 1
        self._recomputed = {a.unit for a in self.program if a.op is Op.R}
        self._split = {a.unit for a in self.program if a.op is Op.B}
        self._plan = comm_batches(self.program, recv_lookahead)
        self._handlers: dict[Op, Callable[[Action], None]] = {
            Op.F: self._forward, Op.R: self._recompute, Op.B: self._backward_input, Op.W: self._backward_weight,
            Op.BW: self._backward_full, Op.OFFLOAD: self._offload, Op.RELOAD: self._reload,
        }

    # ------------------------------------------------------------------ the step

    def step(self, step: int, inputs: list[list[Tensor]], targets: list[list[Tensor]],
             record_spans: bool = False) -> StepRecord:
        """Run the program once over a batch already split into ``inputs[i][j]`` / ``targets[i][j]``."""
        self._step, self._inputs, self._targets = step, inputs, targets
        self._units: dict[tuple[int, int, int], Unit] = {}
        self._chains: dict[tuple[int, int], KVChain] = {}
        self._fwd: dict[tuple[int, int, int], Tensor] = {}  # stage input handed over on this rank
        self._bwd: dict[tuple[int, int, int], Tensor] = {}  # output gradient handed over on this rank
        self._loss = None
        spans: list[SpanRecord] = []
        self.tracker.reset()
        clock = time.perf_counter
        t0 = clock()
        for item in self._plan:
            start = clock()
            if isinstance(item, list):
                self.mailbox.post(item)
                batch = item
            else:
                self._handlers[item.op](item)
                if record_spans and self.sync is not None:
                    self.sync()
                batch = [item]
            if record_spans:
                end = clock()
                spans += [SpanRecord(str(a), start - t0, end - t0) for a in batch]
        self.mailbox.drain()
        if self.sync is not None:
            self.sync()
        seconds = clock() - t0
        if self._units:
            left = ", ".join(f"unit {u}" for u in self._units)
            raise RuntimeError(f"rank {self.rank}: step ended with unfinished units: {left}")
        loss = None if self._loss is None else float(self._loss)
        return StepRecord(loss, seconds, self.tracker.peak, spans, list(self.tracker.curve))

    # ------------------------------------------------------------------ handlers

    def _forward(self, a: Action) -> None:
        s, i, j = a.unit
        runner = self.runners[s]
        unit = runner.new_unit(
            i, j, self._stage_input(a), self._targets[i][j] if s == self.last else None,
            unit_seed(self.seed, self._step, s, i, j), recompute=a.unit in self._recomputed,
            chain=self._chains.setdefault((s, i), KVChain()) if self.schedule.k > 1 else None,
            split=a.unit in self._split,
        )
        self._units[a.unit] = unit
        out = runner.forward(unit)
        if s == self.last:
            self._loss = out.detach() if self._loss is None else self._loss + out.detach()
        elif self._local(s + 1):
            self._fwd[(s + 1, i, j)] = out
        else:
            self.mailbox.outbox[a.with_op(Op.SEND_F)] = out

    def _recompute(self, a: Action) -> None:
        # "R waits for the unit's incoming gradient" (ir.deps): have it before re-making activations
        self._output_grad(a, keep=True)
        self.runners[a.stage].recompute(self._units[a.unit])

    def _backward_input(self, a: Action) -> None:
        unit = self._units[a.unit]
        grad = self.runners[a.stage].backward_input(unit, self._output_grad(a))
        self._emit_grad(a, grad)

    def _backward_weight(self, a: Action) -> None:
        self.runners[a.stage].backward_weight(self._units.pop(a.unit))

    def _backward_full(self, a: Action) -> None:
        unit = self._units.pop(a.unit)
        grad = self.runners[a.stage].backward_full(unit, self._output_grad(a))
        self._emit_grad(a, grad)

    def _offload(self, a: Action) -> None:
        self.runners[a.stage].offload(self._units[a.unit])

    def _reload(self, a: Action) -> None:
        self.runners[a.stage].reload(self._units[a.unit])

    # ------------------------------------------------------------------ boundary tensors

    def _local(self, stage: int) -> bool:
        return self.schedule.placement.rank_of(stage) == self.rank

    def _stage_input(self, a: Action) -> Tensor:
        s, i, j = a.unit
        if s == 0:
            return self._inputs[i][j]
        if self._local(s - 1):
            return self._fwd.pop((s, i, j))
        return self.mailbox.take(a.with_op(Op.RECV_F))

    def _output_grad(self, a: Action, keep: bool = False) -> Tensor | None:
        """The gradient of the unit's output (None on the last stage); ``keep`` leaves it for B."""
        s, i, j = a.unit
        if s == self.last:
            return None
        key = (s, i, j)
        if key not in self._bwd:
            if self._local(s + 1):
                raise RuntimeError(f"rank {self.rank}: {a} needs the gradient of stage {s + 1}, not made yet")
            self._bwd[key] = self.mailbox.take(a.with_op(Op.RECV_B))
        return self._bwd[key] if keep else self._bwd.pop(key)

    def _emit_grad(self, a: Action, grad: Tensor | None) -> None:
        s, i, j = a.unit
        if s == 0:
            return
        if self._local(s - 1):
            self._bwd[(s - 1, i, j)] = grad
        else:
            self.mailbox.outbox[Action(Op.SEND_B, s, i, j)] = grad
