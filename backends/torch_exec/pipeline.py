"""The executor inside the user's own training loop, in the shape of ``torch.distributed.pipelining``.

Every rank builds the same model (same seed, or the same checkpoint), joins the process group
(``torchrun`` and ``dist.init_process_group``) and hands the model to `PipelineSchedule` with a
schedule; the object keeps this rank's stages and runs the schedule's program on them::

    pipe = PipelineSchedule(schedule, layers, loss_fn=loss_fn)      # layers: split_model(...) etc.
    optimizer = torch.optim.AdamW(pipe.parameters(), lr=3e-4)
    for inputs, targets in batches:
        optimizer.zero_grad()
        loss = pipe.step(inputs, target=targets)     # the batch's mean loss on the last stage's rank
        pipe.clip_grad_norm_(1.0)                      # global norm over every rank
        optimizer.step()

Gradients land in ``param.grad`` of the user's own parameters (this rank's stages only), so any
optimizer, LR scheduler or gradient accumulation works unchanged. Inputs are needed only on the
rank holding stage 0, targets only on the rank holding the last stage (with a V placement both
are rank 0); other ranks may pass them or not. What differs from torch's runtime: the schedule is
any ``ir.Schedule`` (synthesized, with recompute and offload), `step` returns the loss rather
than the last stage's output (use `forward` for outputs), and tied parameters may sit on
different ranks: their gradients are summed over the ranks that hold them after every step, as
Megatron's embedding group does.

Boundary shapes are inferred, not exchanged per message: the rank holding stage 0 tells the
others the microbatch's shapes (one small all-gather per step, which also lets every rank refuse
a batch that one rank is missing), each stage's owner runs it on
fake tensors (``FakeTensorMode``, no compute) the first time a shape is seen and broadcasts the
result. Every p2p wait is bounded by ``timeout``; the broadcasts by the process group's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from backends.torch_exec.boundary import Boundary, describe, rebuild, stand_in, tensor_leaves
from backends.torch_exec.comms import Mailbox
from backends.torch_exec.executor import (
    ExecutorError,
    RankExecutor,
    TiedGrads,
    indivisible,
    prepare_schedule,
    split_batch,
)
from backends.torch_exec.memory import Copier, MemoryTracker
from backends.torch_exec.model import ModelSpec
from backends.torch_exec.passes import StageRunner
from backends.torch_exec.stages import StageModule, autocast_context, partition
from backends.torch_exec.worker import check_boundaries, first_microbatch, learn_weight_plans, to_device
from ir import Action, Op, Schedule

__all__ = ["PipelineSchedule", "as_layers", "clip_grad_norm_"]


def as_layers(model: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """The model as the list of layers the stages are cut from: an ``nn.Sequential``'s or
    ``nn.ModuleList``'s children, or a list of modules (``split_model``, ``hf_layers``)."""
    if isinstance(model, nn.Sequential | nn.ModuleList):
        return list(model.children())
    if isinstance(model, Sequence) and not isinstance(model, str) and all(isinstance(m, nn.Module) for m in model):
        return list(model)
    raise TypeError(f"cannot split a {type(model).__name__} into stages: pass an nn.Sequential, a list of modules, "
                    "backends.torch_exec.split_model(model, fqns_per_stage) or, for a Hugging Face *ForCausalLM, "
                    "backends.torch_exec.hf_layers(model)")


class PipelineSchedule:
    """This rank's part of ``schedule`` over ``model``, run one batch at a time by `step`.

    Args:
        schedule: any ``ir.Schedule`` (verified and lowered here); ``schedule.p`` ranks.
        model: the whole model as layers (`as_layers`); every rank passes the same one.
        loss_fn: ``loss_fn(output, target) -> scalar``, the mean loss of one microbatch.
        group: the process group (default: the world); its size must be ``schedule.p``.
        device: where this rank's stages run (default: this process's CUDA device under NCCL,
            else the CPU); the stages' modules are moved there.
        stage_layers: body layers per stage (None: split evenly); ``pre``/``post`` layers always
            join the first/last stage.
        seq_dim, seq_len: the sequence dim and length (only for schedules with slices, k > 1).
        seed: base of the per-unit RNG seeds (dropout is reproducible across F and R).
        timeout: seconds any p2p wait may take before the step fails with ``CommError``.
        autocast: run forward passes under ``torch.autocast`` with this dtype (``torch.bfloat16``).
    """

    def __init__(self, schedule: Schedule, model: nn.Module | Sequence[nn.Module], *,
                 loss_fn: Callable[[Any, Any], Tensor], group: dist.ProcessGroup | None = None,
                 device: torch.device | str | None = None, stage_layers: Sequence[int] | None = None,
                 pre: int = 0, post: int = 0, seq_dim: int | None = None, seq_len: int | None = None,
                 seed: int = 0, timeout: float = 60.0, autocast: torch.dtype | None = None) -> None:
        if not dist.is_initialized():
            raise ExecutorError("PipelineSchedule needs torch.distributed: call dist.init_process_group first "
                                "(torchrun sets up its environment)")
        layers = as_layers(model)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._global = [dist.get_global_rank(group, r) if group is not None else r for r in range(self.world_size)]
        spec = ModelSpec("model", lambda: layers, loss_fn, _no_batch, pre=pre, post=post, seq_dim=seq_dim,
                         seq_len=seq_len)
        self.device = torch.device(device) if device is not None else _default_device(group)
        self.schedule = prepare_schedule(schedule, spec, world_size=self.world_size, stage_layers=stage_layers,
                                         early_recvs=self.device.type != "cuda")
        self.timeout = timeout
        self.seed = seed
        self.seq_dim = seq_dim
        self.autocast = autocast
        self.num_stages = self.schedule.num_stages
        self.stages_held = self.schedule.placement.stages_of(self.rank)
        ranges = partition(len(layers), self.num_stages, pre=pre, post=post, stage_layers=stage_layers)
        self.stages = {s: StageModule(s, self.num_stages, [layers[n] for n in ranges[s]], list(ranges[s]))
                       .to(self.device) for s in self.stages_held}
        self.tracker = MemoryTracker(keep_curve=False)
        copier = Copier(self.device)
        scale = 1.0 / (self.schedule.m * self.schedule.k)
        self.runners = {s: StageRunner(mod, loss_fn, scale, self.schedule.k, self.tracker, copier, seq_dim,
                                       autocast=autocast) for s, mod in self.stages.items()}
        self._tied = TiedGrads(layers, ranges, self.schedule.placement.stage_to_rank, self.rank, self.world_size,
                               group, self._global)
        self._cache: dict[tuple[str, int], tuple[list[list[Boundary]], Mailbox, RankExecutor | None]] = {}
        self._step = 0
        self.last_record = None

    # ------------------------------------------------------------------ what the user calls

    def parameters(self) -> Iterator[nn.Parameter]:
        """This rank's parameters (each once, tied ones included), for the optimizer."""
        seen: set[int] = set()
        for stage in self.stages.values():
            for p in stage.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """This rank's parameters named as in the whole model: ``"<layer index>.<name in the layer>"``."""
        for stage in self.stages.values():
            yield from stage.global_named_parameters()

    def step(self, *inputs: Any, target: Any = None, losses: list[Tensor] | None = None) -> Tensor | None:
        """Run the schedule once over one batch: forward, backward, gradients into ``param.grad``
        (added to what is there, as ``loss.backward()`` does), tied ones summed over their ranks.

        Args:
            inputs: the batch's model inputs (one tensor, or several: the first layer gets them
                as positional arguments), split into the schedule's m microbatches along dim 0.
                Needed on the rank holding stage 0.
            target: what ``loss_fn`` compares the last stage's output with, split the same way.
                Needed on the rank holding the last stage.
            losses: if a list, the loss of each microbatch is appended to it (last stage's rank).

        Returns:
            The batch's mean loss (the mean of the microbatch losses) on the rank holding the
            last stage, None on the others.
        """
        x, y = self._arguments(inputs, target, need_target=True)
        shapes, mailbox, executor = self._prepare(x, y, training=True)
        m, k = self.schedule.m, self.schedule.k
        xs = split_batch(x, m, k, self.seq_dim) if x is not None else [[None] * k for _ in range(m)]
        ys = split_batch(y, m, k, self.seq_dim) if y is not None else [[None] * k for _ in range(m)]
        record = executor.step(self._step, xs, ys)
        self._step += 1
        self.last_record = record
        self._tied.all_reduce()
        if self.num_stages - 1 not in self.stages:
            return None
        per_microbatch = [m * sum(executor.unit_losses[(i, j)] for j in range(k)) for i in range(m)]
        if losses is not None:
            losses.extend(per_microbatch)
        return sum(executor.unit_losses.values()).detach()

    def forward(self, *inputs: Any) -> Any:
        """The model's output for a batch, without gradients (evaluation, generation): the last
        stage's outputs of the m microbatches joined along dim 0 on the rank holding the last
        stage, None on the others. Put the model in eval mode first if it has dropout."""
        x, _ = self._arguments(inputs, None, need_target=False)
        outs = self._forward_only(x)
        if outs is None:
            return None
        return pytree.tree_map(lambda *parts: torch.cat(parts) if isinstance(parts[0], Tensor) else parts[0], *outs)

    def evaluate(self, *inputs: Any, target: Any = None) -> Tensor | None:
        """The batch's mean loss without gradients (the microbatches' mean, as `step` returns)."""
        x, y = self._arguments(inputs, target, need_target=True)
        outs = self._forward_only(x)
        if outs is None:
            return None
        ys = split_batch(y, self.schedule.m, 1, None)
        loss_fn = self.runners[self.num_stages - 1].loss_fn
        with torch.no_grad(), autocast_context(self.device.type, self.autocast):
            return sum(loss_fn(out, ys[i][0]) for i, out in enumerate(outs)) / self.schedule.m

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> Tensor:
        """Scale every rank's gradients so that their global norm is at most ``max_norm``, as
        ``torch.nn.utils.clip_grad_norm_`` does for one process (tied parameters counted once);
        every rank returns the same total norm (before clipping)."""
        counted = [p for p in self.parameters() if id(p) not in self._tied.not_counted]
        return clip_grad_norm_(counted, max_norm, norm_type, group=self.group, scale=list(self.parameters()),
                               device=self.device)

    # ------------------------------------------------------------------ set-up per input shape

    def _arguments(self, inputs: tuple, target: Any, need_target: bool) -> tuple[Any, Any]:
        """This rank's inputs and targets on the device, after every rank has checked its own:
        a rank missing what it needs makes every rank raise the same ValueError (one small
        all-gather, which also carries the microbatch's shapes), instead of leaving its peers
        waiting for it."""
        holds_first, holds_last = 0 in self.stages, self.num_stages - 1 in self.stages
        x = (inputs[0] if len(inputs) == 1 else tuple(inputs)) if inputs else None
        x = to_device(x, self.device) if holds_first and x is not None else None
        y = to_device(target, self.device) if holds_last and target is not None else None
        error = None
        if holds_first and x is None:
            error = f"rank {self.rank} holds stage 0: pass the batch's inputs to step()/forward()/evaluate()"
        elif need_target and holds_last and y is None:
            error = (f"rank {self.rank} holds the last stage ({self.num_stages - 1}): pass target= "
                     "(what loss_fn compares the output with)")
        else:
            error = (indivisible(x, self.schedule.m, "the batch's inputs") if holds_first else None) or \
                (indivisible(y, self.schedule.m, "the batch's target") if y is not None else None)
        sig = describe(first_microbatch(x, self.schedule.m)) if holds_first and error is None else None
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, (error, sig), group=self.group)
        errors = [e for e, _ in gathered if e is not None]
        if errors:
            raise ValueError("; ".join(errors))
        self._signature = gathered[self.schedule.placement.rank_of(0)][1]
        return x, y

    def _prepare(self, x: Any, y: Any, *, training: bool, k: int | None = None
                 ) -> tuple[list[list[Boundary]], Mailbox, RankExecutor | None]:
        """Boundary shapes, mailbox and executor for this batch's shapes (made the first time)."""
        k = self.schedule.k if k is None else k
        key = (repr(self._signature), k)
        if key in self._cache and (not training or self._cache[key][2] is not None):
            return self._cache[key]
        shapes = self._infer(self._signature, x, k)
        check_boundaries(shapes, k)
        mailbox = Mailbox(self.rank, self.schedule, shapes, self.device, self.timeout, group=self.group,
                          global_ranks=self._global)
        executor = None
        if training:
            self._learn_plans(shapes, x, y)
            sync = torch.cuda.synchronize if self.device.type == "cuda" else None
            executor = RankExecutor(self.schedule, self.rank, self.runners, mailbox, self.tracker, self.seed,
                                    sync=sync)
        self._cache[key] = (shapes, mailbox, executor)
        return self._cache[key]

    def _infer(self, first: Boundary, x: Any, k: int) -> list[list[Boundary]]:
        """``shapes[s][j]``: stage s's output boundary for slice j, each found by its owner on fake
        tensors and broadcast to every rank."""
        if k > 1:
            if not first.single or self.seq_dim is None:
                raise ExecutorError("sequence slices (k > 1) need one input tensor and seq_dim")
            n = first.shape[self.seq_dim]
            if n % k:
                raise ExecutorError(f"k={k} equal sequence slices must divide the sequence length {n}")
            meta = first.tensors[0]
            shape = list(meta.shape)
            shape[self.seq_dim] = n // k
            first = describe(torch.empty(shape, dtype=meta.dtype, device="meta"))
        shapes: list[list[Boundary]] = []
        current = first
        for s in range(self.num_stages - 1):
            owner = self.schedule.placement.rank_of(s)
            out = [None]
            if owner == self.rank:
                out[0] = _stage_output(self.stages[s], current, self.device, self.autocast, k,
                                       real=x if s == 0 and k == 1 else None, m=self.schedule.m)
            dist.broadcast_object_list(out, src=self._global[owner], group=self.group)
            current = out[0]
            shapes.append([current] * k)
        return shapes

    def _learn_plans(self, shapes: list[list[Boundary]], x: Any, y: Any) -> None:
        m, k = self.schedule.m, self.schedule.k
        for s, runner in self.runners.items():
            if s == 0:
                ins = split_batch(first_microbatch(x, m), 1, k, self.seq_dim)[0]
            else:
                ins = [stand_in(b, self.device, seed=s) for b in shapes[s - 1]]
            last = s == self.num_stages - 1
            targets = split_batch(first_microbatch(y, m), 1, k, self.seq_dim)[0] if last else [None] * k
            learn_weight_plans(runner, ins, targets, None if last else shapes[s])

    # ------------------------------------------------------------------ forward only

    def _forward_only(self, x: Any) -> list[Any] | None:
        """Every microbatch through this rank's stages without a graph, microbatch by microbatch
        and stage by stage (each rank waits only for lower (microbatch, stage) pairs: no cycle)."""
        shapes, mailbox, _ = self._prepare(x, None, training=False, k=1)
        m, last = self.schedule.m, self.num_stages - 1
        xs = split_batch(x, m, 1, None) if x is not None else None
        local: dict[tuple[int, int], Any] = {}
        outs: list[Any] = []
        with torch.no_grad(), autocast_context(self.device.type, self.autocast):
            for i in range(m):
                for s in sorted(self.stages):
                    if s == 0:
                        value = xs[i][0]
                    elif (s, i) in local:
                        value = local.pop((s, i))
                    else:
                        recv = Action(Op.RECV_F, s, i)
                        mailbox.post([recv])
                        value = rebuild(shapes[s - 1][0], mailbox.take(recv))
                    out, _, _ = self.stages[s].run(value)
                    if s == last:
                        outs.append(out)
                    elif s + 1 in self.stages:
                        local[(s + 1, i)] = out
                    else:
                        send = Action(Op.SEND_F, s, i)
                        mailbox.outbox[send] = tensor_leaves(out)
                        mailbox.post([send])
        mailbox.drain()
        return outs if last in self.stages else None


def clip_grad_norm_(parameters: Sequence[Tensor] | Iterator[Tensor], max_norm: float, norm_type: float = 2.0, *,
                    group: dist.ProcessGroup | None = None, scale: Sequence[Tensor] | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over the parameters of every rank of ``group``: each
    rank passes its own (a tensor shared by several ranks on one of them only), the norm is
    reduced over the group, and every rank scales its gradients (``scale``, default the same
    parameters) by ``min(1, max_norm / (norm + 1e-6))``. Returns the total norm, on every rank."""
    params = [p for p in parameters if p.grad is not None]
    scaled = params if scale is None else [p for p in scale if p.grad is not None]
    dev = torch.device(device) if device is not None else (params[0].grad.device if params else torch.device("cpu"))
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        local = max((p.grad.detach().abs().max().float() for p in params), default=torch.zeros(()))
        total = local.to(dev).reshape(()).clone()
        dist.all_reduce(total, op=dist.ReduceOp.MAX, group=group)
    else:
        local = sum((torch.linalg.vector_norm(p.grad.detach(), norm_type).float() ** norm_type for p in params),
                    torch.zeros((), device=dev))
        total = local.to(dev).reshape(()).clone()
        dist.all_reduce(total, group=group)
        total = total ** (1.0 / norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in scaled:
        p.grad.detach().mul_(coef.to(p.grad.device, p.grad.dtype))
    return total


# ---------------------------------------------------------------------- helpers


def _stage_output(stage: StageModule, boundary: Boundary, device: torch.device, autocast: torch.dtype | None,
                  k: int, real: Any = None, m: int = 1) -> Boundary:
    """The output boundary of ``stage`` for an input of ``boundary``, on fake tensors (no
    compute); if the stage cannot run on fake tensors, on real stand-ins (one forward)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from backends.torch_exec.model import SliceIO

    slices = [SliceIO(0) for _ in range(stage.num_slice_layers)] if k > 1 else None
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            x = rebuild(boundary, [torch.empty(t.shape, dtype=t.dtype, device=device) for t in boundary.tensors])
            with torch.no_grad(), autocast_context(device.type, autocast):
                out, _, _ = stage.run(x, slices)
            return describe(out)
    except Exception:  # noqa: BLE001 - an op fake tensors do not support: run it for real once
        x = first_microbatch(real, m) if real is not None else stand_in(boundary, device, seed=0)
        slices = [SliceIO(0) for _ in range(stage.num_slice_layers)] if k > 1 else None
        with torch.no_grad(), autocast_context(device.type, autocast):
            out, _, _ = stage.run(x, slices)
        return describe(out)


def _default_device(group: dist.ProcessGroup | None) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _no_batch(batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    raise ExecutorError("a PipelineSchedule takes its batches from step(); it makes none")
