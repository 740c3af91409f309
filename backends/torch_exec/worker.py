"""One rank's whole run: check, build its stages, learn the W plans, run the steps, report.

`RunConfig` says what to run (schedule, model, batch, steps); `run_rank` is what every process
calls once torch.distributed is up (``backends.torch_exec.launch`` starts the processes, or
torchrun does). Every rank checks the schedule itself before any compute, so a bad schedule is
refused identically everywhere and no rank waits on a peer that gave up.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils import _pytree as pytree

from backends.torch_exec.boundary import Boundary, stand_in
from backends.torch_exec.comms import CommError, Mailbox
from backends.torch_exec.executor import (
    ExecutorError,
    RankExecutor,
    StepRecord,
    TiedGrads,
    prepare_schedule,
    split_batch,
)
from backends.torch_exec.memory import Copier, MemoryTracker
from backends.torch_exec.model import ModelSpec
from backends.torch_exec.optim import OPTIMIZERS, make_optimizer
from backends.torch_exec.passes import KVChain, StageRunner, WeightPlan
from backends.torch_exec.stages import StageCountError, boundary_shapes, fingerprint, partition, stage_modules
from ir import Schedule

__all__ = ["RankResult", "RunConfig", "check_same_weights", "learn_weight_plans", "make_runners", "run_rank"]


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What a run does; the same object goes to every rank.

    Attributes:
        schedule: any schedule ``ir.verify`` accepts (lowered here if it is not).
        model: the model to split into the schedule's stages.
        batch_size: sequences per step (a multiple of ``schedule.m``).
        steps: training steps (each runs the whole program once, then an SGD update).
        lr: SGD learning rate; 0 keeps the weights (gradients are still computed).
        seed: base of the per-unit dropout seeds.
        data_seed: seed of the batch (``model.make_batch``); the same batch every step.
        timeout: seconds any single wait (p2p, barrier) may take before the run fails.
        stage_layers: body layers per stage; None splits evenly.
        record_spans: record each action's start and end (for ``--trace``).
        keep_grads: return the gradients of the first step (before its update).
        keep_params: return the parameters after the last step.
        device: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL, one GPU per process).
        optimizer: "sgd", "adam", or "host-adam" (Adam's state and fp32 master weights on the host,
            ``backends.torch_exec.optim``), applied after every step at ``lr``.
        slice_lengths: tokens of each sequence slice (k values summing to the model's sequence
            length; e.g. ``executor.slice_lengths(schedule, seq_len)``, the cost model's cut); None
            cuts equal slices.
    """

    schedule: Schedule
    model: ModelSpec
    batch_size: int
    steps: int = 1
    lr: float = 0.0
    seed: int = 0
    data_seed: int = 0
    timeout: float = 60.0
    stage_layers: tuple[int, ...] | None = None
    record_spans: bool = False
    keep_grads: bool = False
    keep_params: bool = False
    device: str = "cpu"
    slice_lengths: tuple[int, ...] | None = None
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RunConfig.{name} must be a positive int, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"RunConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.timeout > 0:
            raise ValueError(f"RunConfig.timeout must be > 0 seconds, got {self.timeout!r}")


@dataclass(slots=True)
class RankResult:
    """What one rank reports.

    Attributes:
        rank: the rank.
        stages: the stages it held.
        steps: one `StepRecord` per step (the loss is set on the rank of the last stage).
        grads: the first step's gradients by model-wide parameter name, if asked for.
        params: the parameters after the last step, if asked for.
    """

    rank: int
    stages: tuple[int, ...]
    steps: list[StepRecord] = field(default_factory=list)
    grads: dict[str, Tensor] | None = None
    params: dict[str, Tensor] | None = None


def make_runners(cfg: RunConfig, stages: tuple[int, ...], device: torch.device, tracker: MemoryTracker, *,
                 rank: int = 0, world_size: int = 1) -> tuple[dict[int, StageRunner], str, TiedGrads]:
    """A `StageRunner` per stage of ``stages`` (one rank's), the `fingerprint` of the whole
    model's weights as this rank built them, and the parameters tied across ranks (`TiedGrads`,
    made collectively: every rank calls this)."""
    schedule = cfg.schedule
    layers = cfg.model.build_layers()
    try:
        modules = stage_modules(layers, cfg.model, schedule.num_stages, stages, stage_layers=cfg.stage_layers,
                                device=device)
    except StageCountError as exc:
        raise ExecutorError(f"refusing to run: {exc}") from None
    copier = Copier(device)
    scale = 1.0 / (schedule.m * schedule.k)
    runners = {s: StageRunner(mod, cfg.model.loss_fn, scale, schedule.k, tracker, copier, cfg.model.seq_dim,
                              cfg.slice_lengths) for s, mod in modules.items()}
    ranges = partition(len(layers), schedule.num_stages, pre=cfg.model.pre, post=cfg.model.post,
                       stage_layers=cfg.stage_layers)
    tied = TiedGrads(layers, ranges, schedule.placement.stage_to_rank, rank, world_size)
    return runners, fingerprint(layers), tied


def check_same_weights(digest: str, world_size: int) -> None:
    """Refuse to run (on every rank alike) if the ranks built different weights."""
    digests: list[str | None] = [None] * world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise ExecutorError(
            "refusing to run: the ranks built different weights (model fingerprints "
            f"{', '.join(f'rank {r}: {d[:8]}' for r, d in enumerate(digests))}); the model's build_layers must "
            "give the same weights on every call, so seed its initialisation"
        )


def learn_weight_plans(runner: StageRunner, inputs: list[Any], targets: list[Any],
                       out_meta: list[Boundary] | None) -> None:
    """Run one microbatch (all its slices) through F, B and W on ``runner`` and record which saved
    tensors W reads; later B passes free the others. Leaves the gradients as they were, no saved
    bytes and no change to the buffers (BatchNorm's statistics) behind.

    Args:
        inputs: one microbatch's input of this stage, per slice.
        targets: the loss targets per slice (used on the last stage).
        out_meta: the stage's output per slice (None on the last stage), for a stand-in output gradient.
    """
    buffers = [(b, b.detach().clone()) for b in runner.module.buffers()]  # BatchNorm's running statistics
    grads = [(p, p.grad) for p in runner.module.parameters()]  # what the caller accumulated so far
    for param, _ in grads:
        param.grad = None
    chain = KVChain() if runner.k > 1 else None
    units = [runner.new_unit(0, j, x, t, 0, chain=chain) for j, (x, t) in enumerate(zip(inputs, targets, strict=True))]
    for unit in units:
        runner.forward(unit)
    device = runner.copier.device
    for unit in reversed(units):
        grad = None if out_meta is None else ones_grads(out_meta[unit.slice], device)
        runner.backward_input(unit, grad)
    for unit in units:
        unit.memory.recording = set()
        runner.backward_weight(unit)
        runner.plans[unit.slice] = WeightPlan(unit.memory.count, frozenset(unit.memory.recording))
        unit.memory.recording = None
    for param, grad in grads:
        param.grad = grad
    with torch.no_grad():
        for buffer, before in buffers:
            buffer.copy_(before)


def ones_grads(boundary: Boundary, device: torch.device) -> list[Tensor]:
    """A stand-in output gradient (ones) for each floating-point tensor of ``boundary``."""
    return [torch.ones(meta.shape, dtype=meta.dtype, device=device) for meta in boundary.grads]


def probe_inputs(stage: int, shapes: list[list[Boundary]], batch: list[list[Any]], device: torch.device
                 ) -> list[Any]:
    """One microbatch's input of ``stage``, per slice: the batch's first on stage 0, else stand-ins."""
    if stage == 0:
        return batch[0]
    return [stand_in(meta, device, seed=stage) for meta in shapes[stage - 1]]


def first_microbatch(inputs: Any, m: int) -> Any:
    """Microbatch 0 of a batch (a tensor or a pytree of them, cut along dim 0)."""
    return pytree.tree_map_only(Tensor, lambda t: t.chunk(m)[0] if t.dim() else t, inputs)


def check_boundaries(shapes: list[list[Boundary]], k: int) -> None:
    """Refuse sequence slices of a model whose stages pass more than one tensor on."""
    for s, row in enumerate(shapes):
        if k > 1 and not row[0].single:
            raise ExecutorError(f"stage {s} passes {len(row[0].tensors)} tensors on, but sequence slices (k={k}) "
                                "cut one tensor per boundary; use a schedule with k=1")


def run_rank(cfg: RunConfig, rank: int, world_size: int, device: torch.device | None = None) -> RankResult:
    """Run ``cfg`` as ``rank`` of ``world_size`` (torch.distributed must be initialised).

    Raises:
        ExecutorError: before any compute, when the schedule, model or batch do not fit.
        CommError: a peer failed or a wait timed out.
    """
    device = device or torch.device("cpu")
    schedule = prepare_schedule(cfg.schedule, cfg.model, world_size=world_size, batch_size=cfg.batch_size,
                                stage_layers=cfg.stage_layers, lengths=cfg.slice_lengths,
                                early_recvs=device.type != "cuda")
    stages = schedule.placement.stages_of(rank)
    tracker = MemoryTracker(keep_curve=cfg.record_spans)
    runners, digest, tied = make_runners(cfg, stages, device, tracker, rank=rank, world_size=world_size)
    check_same_weights(digest, world_size)
    inputs, targets = (to_device(t, device) for t in cfg.model.make_batch(cfg.batch_size, cfg.data_seed))
    seq_dim = cfg.model.seq_dim
    xs, ys = (split_batch(t, schedule.m, schedule.k, seq_dim, cfg.slice_lengths) for t in (inputs, targets))
    try:
        shapes = boundary_shapes(cfg.model, schedule.num_stages, first_microbatch(inputs, schedule.m), k=schedule.k,
                                 stage_layers=cfg.stage_layers, lengths=cfg.slice_lengths)
    except (TypeError, ValueError) as exc:
        raise ExecutorError(f"refusing to run: {exc}") from None
    check_boundaries(shapes, schedule.k)
    for s, runner in runners.items():
        learn_weight_plans(runner, probe_inputs(s, shapes, xs, device), ys[0],
                           shapes[s] if s < schedule.num_stages - 1 else None)
    mailbox = Mailbox(rank, schedule, shapes, device, cfg.timeout)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    executor = RankExecutor(schedule, rank, runners, mailbox, tracker, cfg.seed, sync=sync)
    params = list({id(p): p for r in runners.values() for p in r.module.parameters()}.values())  # tied: once
    optimizer = make_optimizer(cfg.optimizer, params, cfg.lr)
    result = RankResult(rank, stages)
    for step in range(cfg.steps):
        for p in params:
            p.grad = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _barrier(cfg.timeout)
        record = executor.step(step, xs, ys, record_spans=cfg.record_spans)
        tied.all_reduce()
        if device.type == "cuda":
            record.cuda_peak_bytes = torch.cuda.max_memory_allocated(device)
        result.steps.append(record)
        if step == 0 and cfg.keep_grads:
            result.grads = _named(runners, grads=True)
        if optimizer is not None:
            optimizer.step()
    if cfg.keep_params:
        result.params = _named(runners, grads=False)
    _barrier(cfg.timeout)
    return result


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor or a pytree of them) on ``device``."""
    return pytree.tree_map_only(Tensor, lambda t: t.to(device), value)


def _named(runners: dict[int, StageRunner], grads: bool) -> dict[str, Tensor]:
    out = {}
    for runner in runners.values():
        for name, p in runner.module.global_named_parameters():
            t = p.grad if grads else p
            out[name] = None if t is None else t.detach().to("cpu", copy=True)
    return out


def _barrier(timeout: float) -> None:
    """A barrier that fails after ``timeout`` seconds instead of waiting for ever."""
    work = dist.barrier(async_op=True)
    try:
        work.wait(datetime.timedelta(seconds=timeout))
    except RuntimeError as exc:
        raise CommError(f"rank {dist.get_rank()}: barrier did not complete within {timeout:g} s "
                        f"(a peer may have failed: see its error): {str(exc).splitlines()[0]}") from None
