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
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from backends.torch_exec.boundary import rebuild, tensor_leaves
from backends.torch_exec.comms import Mailbox
from backends.torch_exec.memory import MemoryTracker
from backends.torch_exec.model import ModelSpec
from backends.torch_exec.passes import KVChain, StageRunner, Unit, unit_seed
from backends.torch_exec.stages import StageCountError, check_stage_count
from ir import Action, Op, Schedule, ScheduleError, lower

__all__ = ["ExecutorError", "RankExecutor", "SpanRecord", "StepRecord", "TiedGrads", "TiedGroup", "prepare_schedule",
           "slice_lengths", "split_batch", "tied_groups"]


class ExecutorError(ValueError):
    """A run refused before any compute: the schedule, the model or the batch does not fit."""


def prepare_schedule(schedule: Schedule, spec: ModelSpec, *, world_size: int | None = None,
                     batch_size: int | None = None, stage_layers: Sequence[int] | None = None,
                     lengths: Sequence[int] | None = None, early_recvs: bool = True) -> Schedule:
    """``schedule`` verified and lowered, or `ExecutorError` saying why it cannot run.

    Checks, in order: ``ir.verify`` (completeness, order, deadlock), the number of ranks, the
    stage count against the model's layers, sequence slices against the model (``lengths``: the
    tokens of each slice, None for equal ones), the batch against ``m``. Parameters tied across
    ranks are fine: their gradients are summed over the ranks (`TiedGrads`). ``early_recvs``:
    ``ir.lower`` posts each receive as early as the per-peer order allows (gloo, which moves each
    message on its own); False for NCCL, whose batched p2p runs in order on one stream, where an
    early receive would hold up the rank's later sends (``ir.lower``'s docstring).
    """
    try:
        # runs verify's structural rules (deadlock included) and raises on them
        lowered = lower(schedule, early_recvs=early_recvs)
    except ScheduleError as exc:
        raise ExecutorError(f"refusing to run the schedule: {exc}") from None
    if world_size is not None and world_size != schedule.p:
        raise ExecutorError(f"the schedule has {schedule.p} ranks but {world_size} processes run it; "
                            f"start {schedule.p} processes (--nproc {schedule.p})")
    try:
        check_stage_count(spec, schedule.num_stages, stage_layers)
    except StageCountError as exc:
        raise ExecutorError(f"refusing to run: {exc}") from None
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


@dataclass(frozen=True, slots=True)
class TiedGroup:
    """One tensor that several layers share (a tied parameter).

    Attributes:
        names: its model-wide names (``"<layer>.<name>"``), the first one first.
        stages: the stage of each name.
        ranks: the ranks holding those stages, sorted, each once.
    """

    names: tuple[str, ...]
    stages: tuple[int, ...]
    ranks: tuple[int, ...]


def tied_groups(layers: Sequence[torch.nn.Module], ranges: Sequence[range], stage_to_rank: Sequence[int]
                ) -> list[TiedGroup]:
    """Every parameter that two or more layers share, with where its copies land."""
    seen: dict[int, list[tuple[str, int]]] = {}  # id of the tensor -> (name, stage) of each use
    for s, run in enumerate(ranges):
        for n in run:
            for name, param in layers[n].named_parameters(prefix=str(n), remove_duplicate=False):
                seen.setdefault(id(param), []).append((name, s))
    return [TiedGroup(tuple(n for n, _ in uses), tuple(s for _, s in uses),
                      tuple(sorted({stage_to_rank[s] for _, s in uses})))
            for uses in seen.values() if len(uses) > 1]


class TiedGrads:
    """Parameters tied across ranks (one tensor in layers of stages on two or more ranks, as GPT-2's
    embedding and head by default): every rank holds a copy, updated from its own part of the
    gradient unless the parts are summed. `all_reduce` sums them over the ranks that hold each
    one (Megatron's embedding group), so every copy gets the whole gradient and stays equal.

    Made on every rank of the group, in the same order (``dist.new_group`` is collective).

    Attributes:
        pairs: this rank's copy of each tied parameter it holds, and the group of its holders.
        not_counted: ids of this rank's copies another (lower) rank counts in a global norm.
    """

    def __init__(self, layers: Sequence[torch.nn.Module], ranges: Sequence[range], stage_to_rank: Sequence[int],
                 rank: int, world_size: int, group: Any = None, global_ranks: Sequence[int] | None = None) -> None:
        import torch.distributed as dist

        self.pairs: list[tuple[torch.nn.Parameter, Any]] = []
        self.not_counted: set[int] = set()
        for tied in tied_groups(layers, ranges, stage_to_rank):
            if len(tied.ranks) < 2:
                continue  # tied on one rank: autograd sums both uses into the one tensor there
            members = [r if global_ranks is None else global_ranks[r] for r in tied.ranks]
            pg = group if len(tied.ranks) == world_size else dist.new_group(members)
            if rank not in tied.ranks:
                continue
            use = next(n for n, s in enumerate(tied.stages) if stage_to_rank[s] == rank)
            layer, name = tied.names[use].split(".", 1)
            param = layers[int(layer)].get_parameter(name)
            if rank != tied.ranks[0]:
                self.not_counted.add(id(param))
            self.pairs.append((param, pg))

    def all_reduce(self) -> None:
        """Sum each tied parameter's gradient over the ranks holding it (a missing one counts as 0)."""
        import torch.distributed as dist

        for param, pg in self.pairs:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, group=pg)


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


def indivisible(value: Any, m: int, what: str = "a batch tensor") -> str | None:
    """Why ``value`` (a tensor or a pytree of them) cannot be cut into m equal microbatches along
    dim 0, or None if it can."""
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, Tensor) and leaf.dim() and leaf.shape[0] % m:
            return (f"{what} of {leaf.shape[0]} rows cannot be cut into the schedule's m={m} equal microbatches; "
                    "use a batch size that m divides")
    return None


def split_batch(tensor: Any, m: int, k: int, seq_dim: int | None,
                lengths: Sequence[int] | None = None) -> list[list[Any]]:
    """``out[i][j]``: microbatch i (along dim 0), slice j (along ``seq_dim``; ``lengths`` tokens
    each, or equal), each its own tensor (a copy, so that what a unit holds is its own data, not a
    view keeping the whole batch). A pytree of tensors (a tuple or dict of inputs) is split leaf
    by leaf, each leaf along its dim 0 (k = 1 only)."""
    if not isinstance(tensor, Tensor):
        if k > 1:
            raise ExecutorError("sequence slices (k > 1) need the batch as one tensor, not a "
                                f"{type(tensor).__name__}; use a schedule with k=1")
        problem = indivisible(tensor, m)
        if problem:
            raise ExecutorError(problem)
        flat, spec = pytree.tree_flatten(tensor)
        parts = [split_batch(leaf, m, 1, None) if isinstance(leaf, Tensor) and leaf.dim() else None for leaf in flat]
        return [[pytree.tree_unflatten([leaf if part is None else part[i][0] for leaf, part in zip(flat, parts,
                                        strict=True)], spec)] for i in range(m)]
    out = []
    for mb in tensor.chunk(m, dim=0):
        if k == 1:
            out.append([mb.clone()])
            continue
        parts = mb.chunk(k, dim=seq_dim) if lengths is None else mb.split(list(lengths), dim=seq_dim)
        out.append([c.clone(memory_format=torch.contiguous_format) for c in parts])
    return out


def comm_batches(program: Sequence[Action]) -> list[Action | list[Action]]:
    """The program as compute actions and batches of consecutive SEND/RECV (posted together).
    Where each receive goes is ``ir.lower``'s choice (as early as the per-peer order allows on
    gloo, `prepare_schedule`'s ``early_recvs``); the executor keeps the program's order."""
    items: list[Action | list[Action]] = []
    for action in program:
        if action.op.is_comm and items and isinstance(items[-1], list):
            items[-1].append(action)
        else:
            items.append([action] if action.op.is_comm else action)
    return items


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """When one action ran on this rank, in seconds since the step started; ``wait``: the part of
    it spent waiting for a message to arrive (inside `Mailbox.take`), so ``end - start - wait`` is
    the pass itself; ``cpu``: the CPU time the rank's thread used meanwhile (``time.thread_time``),
    so ``end - start - wait - cpu`` is the time the thread was ready but not running (other threads
    or processes held the core, or the hypervisor did)."""

    action: str
    start: float
    end: float
    wait: float = 0.0
    cpu: float = 0.0


@dataclass(slots=True)
class StepRecord:
    """What one step measured on one rank."""

    loss: float | None
    seconds: float
    peak_bytes: int
    spans: list[SpanRecord] = field(default_factory=list)
    memory: list[tuple[float, int]] = field(default_factory=list)
    cuda_peak_bytes: int | None = None
    started: float = 0.0  # when the step began on ``time.perf_counter``'s clock (one clock per machine on Linux)


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
    """

    def __init__(self, schedule: Schedule, rank: int, runners: dict[int, StageRunner], mailbox: Mailbox,
                 tracker: MemoryTracker, seed: int = 0, sync: Callable[[], None] | None = None) -> None:
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
        self._plan = comm_batches(self.program)
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
        self.unit_losses: dict[tuple[int, int], Tensor] = {}  # (microbatch, slice) -> scaled loss
        spans: list[SpanRecord] = []
        self.tracker.reset()
        clock, cpu_clock = time.perf_counter, time.thread_time
        t0 = clock()
        for item in self._plan:
            start, waited, cpu = clock(), self.mailbox.waited, cpu_clock() if record_spans else 0.0
            if isinstance(item, list):
                self.mailbox.post(item)
                batch = item
            else:
                self._handlers[item.op](item)
                if record_spans and self.sync is not None:
                    self.sync()
                batch = [item]
            if record_spans:
                end, used = clock(), cpu_clock() - cpu
                spans += [SpanRecord(str(a), start - t0, end - t0, self.mailbox.waited - waited, used) for a in batch]
        self.mailbox.drain()
        if self.sync is not None:
            self.sync()
        seconds = clock() - t0
        if self._units:
            left = ", ".join(f"unit {u}" for u in self._units)
            raise RuntimeError(f"rank {self.rank}: step ended with unfinished units: {left}")
        loss = None if self._loss is None else float(self._loss)
        return StepRecord(loss, seconds, self.tracker.peak, spans, list(self.tracker.curve), started=t0)

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
            self.unit_losses[(i, j)] = out.detach()
        elif self._local(s + 1):
            self._fwd[(s + 1, i, j)] = out
        else:
            self.mailbox.outbox[a.with_op(Op.SEND_F)] = tensor_leaves(out)

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

    def _stage_input(self, a: Action) -> Any:
        s, i, j = a.unit
        if s == 0:
            return self._inputs[i][j]
        if self._local(s - 1):
            return self._fwd.pop((s, i, j))
        return rebuild(self.mailbox.shapes[s - 1][j], self.mailbox.take(a.with_op(Op.RECV_F)))

    def _output_grad(self, a: Action, keep: bool = False) -> list[Tensor] | None:
        """The gradients of the unit's output tensors (None on the last stage); ``keep`` leaves
        them for B."""
        s, i, j = a.unit
        if s == self.last:
            return None
        key = (s, i, j)
        if key not in self._bwd:
            if self._local(s + 1):
                raise RuntimeError(f"rank {self.rank}: {a} needs the gradient of stage {s + 1}, not made yet")
            self._bwd[key] = self.mailbox.take(a.with_op(Op.RECV_B))
        return self._bwd[key] if keep else self._bwd.pop(key)

    def _emit_grad(self, a: Action, grad: list[Tensor] | None) -> None:
        s, i, j = a.unit
        if s == 0:
            return
        if self._local(s - 1):
            self._bwd[(s - 1, i, j)] = grad
        else:
            self.mailbox.outbox[Action(Op.SEND_B, s, i, j)] = grad
