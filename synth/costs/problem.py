"""From a model, a GPU and a placement to the IR's `Costs` and a `Problem`.

The model is a chain: embedding, ``layers`` blocks, head (final norm, LM head, loss). A stage is a
contiguous run of blocks; the first stage also holds the embedding and the last the head. The
per-part FLOPs and bytes come from ``synth.costs.formulas``; times are FLOPs over the GPU's
achieved rate, in milliseconds (the IR's time unit by convention); memory is in bytes.

Choices (documented here once):
- **Layers to stages.** ``balanced`` (the default) gives each stage a contiguous run of blocks so
  that the slowest stage's F + B + W time is as small as it can be, counting the head on the last
  stage and the embedding on the first (Megatron's ``--account-for-loss-in-pipeline-split`` does
  the same by hand): a 128k-vocabulary head costs as much as a few blocks, so the last stage gets
  fewer. Middle stages get at least one block; the first and last may get none. ``even`` gives
  every stage ``layers / stages`` blocks and refuses when that does not divide.
- **Sequence slices** (Seq1F1B, k > 1). ``balanced`` (the default) cuts the sequence so every
  slice has the same forward FLOPs of the whole model, causal attention included (Seq1F1B's
  computation-wise partition): earlier slices attend to fewer keys, so they are longer.
  ``uniform`` cuts it into equal token counts. Slice j of a unit is charged the attention of its
  queries against keys ``0..t1``. ``redistributed`` cuts equal token counts and balances the
  attention work between slices as SlimPipe does (``synth.costs.redistribute``): each slice's F and
  B become the mean, plus the exchange's link time. A slice other than the last keeps its own K/V
  (``2 e b t kv`` per layer) for the later slices, recomputed or not, so its ``inp`` (what a
  recomputed unit holds) includes them.
- **Static memory per rank.** Mixed-precision Adam as Megatron runs it for bf16/fp16: 2-byte
  weights, 4-byte fp32 main gradients, 12 bytes of optimizer state (fp32 master weights, Adam's
  m and v): 18 bytes per parameter (Megatron-LM's distributed-optimizer notes). ``zero1`` shards
  the 12 bytes over the data-parallel degree (6 + 12/dp). fp32 models: 4 + 4 + 8 = 16 bytes
  (8/dp sharded). A tied LM head is held again on the last stage. ``reserved`` adds a fixed amount
  per rank (CUDA context, workspaces). ``offload_optimizer`` keeps Adam's m and v (``states``:
  10 bytes left on the device) or all optimizer state (``states+master``: 6 bytes) in host
  memory and charges the per-step host traffic and host Adam as ``Problem.step_overhead_ms``
  (layouts, costs and the overlap assumption: ``synth.costs.states``).
- **Comm.** A boundary tensor (``e b t h`` bytes) costs ``bytes / link + latency`` between two
  ranks: NVLink inside a node, the network across nodes; nothing on the same rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from ir import Costs, Placement, UnitCost
from synth.costs.formulas import (
    Work,
    attention_pairs,
    block_params,
    boundary_bytes,
    embedding_params,
    embedding_work,
    head_params,
    head_work,
    layer_work,
    stage_input_bytes,
)
from synth.costs.hardware import Hardware
from synth.costs.spec import CostModelError, TransformerSpec
from synth.costs.states import OptimizerOffload, StateBytes, StepOverhead, state_bytes, step_overhead

__all__ = [
    "Partition",
    "Problem",
    "Slicing",
    "Throughput",
    "Training",
    "build_problem",
    "partition_layers",
    "slice_bounds",
]


class Partition(StrEnum):
    EVEN = "even"
    BALANCED = "balanced"


class Slicing(StrEnum):
    UNIFORM = "uniform"
    BALANCED = "balanced"
    REDISTRIBUTED = "redistributed"  # uniform tokens, attention work balanced by exchange (SlimPipe)


@dataclass(frozen=True, slots=True)
class Training:
    """How the optimizer state is held.

    Attributes:
        dp: data-parallel degree (replicas of the pipeline).
        zero1: shard optimizer state over the ``dp`` replicas (ZeRO-1 / distributed optimizer).
        reserved: bytes per rank set aside for the framework (CUDA context, workspaces).
        offload_optimizer: optimizer state kept in host memory: ``none``, ``states`` (Adam's m
            and v) or ``states+master`` (m, v and the fp32 master weights); see ``synth.costs.states``.
        offload_overlap: with offload, the gradient copies, the host Adam and the weight copies
            overlap over buckets (the step costs the slowest of them) instead of running in turn.
    """

    dp: int = 1
    zero1: bool = False
    reserved: float = 0.0
    offload_optimizer: OptimizerOffload = OptimizerOffload.NONE
    offload_overlap: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.dp, bool) or not isinstance(self.dp, int) or self.dp < 1:
            raise CostModelError(f"dp must be a positive integer, got {self.dp!r}")
        if not (isinstance(self.reserved, int | float) and math.isfinite(self.reserved) and self.reserved >= 0):
            raise CostModelError(f"reserved must be bytes >= 0, got {self.reserved!r}")
        try:
            object.__setattr__(self, "offload_optimizer", OptimizerOffload(self.offload_optimizer))
        except ValueError:
            raise CostModelError(f"offload_optimizer must be one of {[o.value for o in OptimizerOffload]}, "
                                 f"got {self.offload_optimizer!r}") from None

    @property
    def shards(self) -> int:
        """Ranks the optimizer state is split over: ``dp`` with ``zero1``, else 1."""
        return self.dp if self.zero1 else 1

    def layout(self, dtype: str) -> StateBytes:
        """Per-parameter bytes on the device and the host, and per-step copies (``synth.costs.states``)."""
        return state_bytes(dtype, self.offload_optimizer, self.shards)

    def bytes_per_param(self, dtype: str) -> float:
        """Static device bytes per parameter: weights + main grads + the optimizer state left on
        the device (sharded by ``zero1``): 18 for bf16 without offload, 10 with ``states``, 6 with
        ``states+master``."""
        return self.layout(dtype).device

    def host_bytes_per_param(self, dtype: str) -> float:
        """Host bytes per parameter held for this rank's optimizer (0 without offload)."""
        return self.layout(dtype).host


@dataclass(frozen=True, slots=True)
class Throughput:
    """What users read off a simulated iteration (one pipeline; data-parallel replicas multiply it)."""

    makespan_ms: float
    tokens_per_s: float
    samples_per_s: float
    mfu: float
    step_overhead_ms: float = 0.0  # host optimizer step added to the makespan (optimizer offload)

    def summary(self) -> str:
        extra = f" (with a {self.step_overhead_ms:.1f} ms host optimizer step)" if self.step_overhead_ms else ""
        return (f"{self.tokens_per_s:,.0f} tokens/s, {self.samples_per_s:,.2f} samples/s, "
                f"MFU {100 * self.mfu:.1f}%{extra}")


@dataclass(frozen=True, slots=True)
class Problem:
    """One scheduling problem: costs per stage and slice, placement, microbatches and memory cap.

    ``ir.verify(schedule, problem)`` reads ``costs`` and ``mem_cap``.

    Attributes:
        costs: the IR's cost table (ms, bytes).
        placement: stage -> rank.
        m: microbatches per iteration.
        mem_cap: bytes per rank, or ``None`` for no cap.
        spec, hardware, training: what the costs were made from.
        layers_per_stage: blocks on each stage.
        bounds: slice boundaries in tokens, ``k + 1`` values from 0 to ``seq_len``.
        model_flops: useful FLOPs of one microbatch through the whole model (F + B + W).
        params_per_rank: parameters each rank holds (all its stages); empty when unknown.
    """

    costs: Costs
    placement: Placement
    m: int
    mem_cap: float | None
    spec: TransformerSpec
    hardware: Hardware
    training: Training
    layers_per_stage: tuple[int, ...]
    bounds: tuple[int, ...]
    model_flops: float
    params_per_rank: tuple[int, ...] = ()

    @property
    def p(self) -> int:
        return self.placement.p

    def rank_step_overhead(self, rank: int) -> StepOverhead:
        """The host optimizer step of ``rank`` (all zero without optimizer offload)."""
        if not self.params_per_rank or self.training.offload_optimizer is OptimizerOffload.NONE:
            return StepOverhead()
        return step_overhead(self.params_per_rank[rank], self.training.layout(self.spec.dtype),
                             host_bandwidth=self.hardware.host_bandwidth,
                             host_adam_rate=self.hardware.host_adam_rate, overlap=self.training.offload_overlap)

    @property
    def step_overhead(self) -> StepOverhead:
        """The slowest rank's host optimizer step: the iteration waits for it."""
        return max((self.rank_step_overhead(r) for r in range(self.p)), key=lambda o: o.total_ms,
                   default=StepOverhead())

    @property
    def step_overhead_ms(self) -> float:
        """Time per iteration that optimizer offload adds after the pipeline (not overlapped with it)."""
        return self.step_overhead.total_ms

    @property
    def host_bytes(self) -> tuple[float, ...]:
        """Host memory per rank held for its optimizer state (zeros without offload)."""
        per_param = self.training.host_bytes_per_param(self.spec.dtype)
        return tuple(n * per_param for n in self.params_per_rank)

    @property
    def k(self) -> int:
        return len(self.bounds) - 1

    def throughput(self, makespan_ms: float) -> Throughput:
        """Tokens/s, samples/s and MFU of an iteration whose pipeline takes ``makespan_ms``, plus
        ``step_overhead_ms`` (the host optimizer step, when optimizer state is offloaded)."""
        if not makespan_ms > 0:
            raise ValueError(f"makespan must be > 0 ms, got {makespan_ms!r}")
        overhead = self.step_overhead_ms
        seconds = (makespan_ms + overhead) / 1e3
        samples = self.m * self.spec.micro_batch
        peak = self.hardware.peak_flops_fp32 if self.spec.dtype == "fp32" else self.hardware.peak_flops
        mfu = self.m * self.model_flops / (seconds * self.p * peak)
        return Throughput(makespan_ms, samples * self.spec.seq_len / seconds, samples / seconds, mfu, overhead)


def partition_layers(spec: TransformerSpec, hw: Hardware, num_stages: int,
                     mode: Partition | str = Partition.BALANCED) -> tuple[int, ...]:
    """Blocks per stage (see the module docstring for the two modes).

    Raises:
        CostModelError: too few layers for the stages, or ``even`` with a remainder.
    """
    mode = Partition(mode)
    layers = spec.layers
    if num_stages == 1:
        return (layers,)
    if mode is Partition.EVEN:
        if layers % num_stages:
            raise CostModelError(
                f"{spec.name}: {layers} layers do not split evenly over {num_stages} stages; use a stage count "
                f"that divides {layers} or the balanced partition")
        return (layers // num_stages,) * num_stages
    if layers < num_stages - 2:
        raise CostModelError(f"{spec.name}: {layers} layers cannot fill {num_stages} stages (each middle stage "
                             "needs a layer); use fewer stages")
    rate = hw.flops_per_second(spec.dtype)
    seq = spec.seq_len

    def seconds(work: Work) -> float:
        return (work.f + work.b + work.w) / rate

    block = seconds(layer_work(spec, 0, seq))
    fixed = [0.0] * num_stages
    fixed[0] += seconds(embedding_work(spec, 0, seq))
    fixed[-1] += seconds(head_work(spec, 0, seq))
    least = [0 if s in (0, num_stages - 1) else 1 for s in range(num_stages)]

    def capacity(limit: float) -> list[int]:
        return [math.floor((limit - fixed[s]) / block + 1e-9) for s in range(num_stages)]

    candidates = sorted({fixed[s] + n * block for s in range(num_stages) for n in range(layers + 1)})
    for limit in candidates:
        caps = capacity(limit)
        if all(c >= lo for c, lo in zip(caps, least, strict=True)) and sum(caps) >= layers:
            break
    counts = caps
    while sum(counts) > layers:  # take blocks back from the slowest stage that can spare one
        s = max((s for s in range(num_stages) if counts[s] > least[s]), key=lambda s: (fixed[s] + counts[s] * block, s))
        counts[s] -= 1
    return tuple(counts)


def slice_bounds(spec: TransformerSpec, k: int, mode: Slicing | str = Slicing.BALANCED) -> tuple[int, ...]:
    """Token boundaries ``0 = e_0 < e_1 < ... < e_k = seq_len`` of k sequence slices.

    Raises:
        CostModelError: k is not a positive integer or exceeds the sequence length.
    """
    mode = Slicing(mode)
    seq = spec.seq_len
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CostModelError(f"slices must be a positive integer, got {k!r}")
    if k > seq:
        raise CostModelError(f"{k} slices cannot cut a {seq}-token sequence; use at most {seq}")
    if mode in (Slicing.UNIFORM, Slicing.REDISTRIBUTED):
        return tuple(round(j * seq / k) for j in range(k + 1))
    per_token = layer_work(spec, 0, 1).f - 4 * spec.micro_batch * spec.q_dim  # linear FLOPs per token
    per_token = spec.layers * per_token + head_work(spec, 0, 1).f
    per_pair = spec.layers * 4 * spec.micro_batch * spec.q_dim

    def forward(e: int) -> float:  # useful forward FLOPs of tokens 0..e-1
        return per_token * e + per_pair * attention_pairs(0, e, spec.attention_window)

    total, bounds = forward(seq), [0]
    for j in range(1, k):
        target = total * j / k
        lo, hi = bounds[-1] + 1, seq - (k - j)  # leave at least one token per remaining slice
        while lo < hi:  # smallest e with forward(e) >= target
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if forward(mid) < target else (lo, mid)
        if lo > bounds[-1] + 1 and target - forward(lo - 1) < forward(lo) - target:
            lo -= 1
        bounds.append(lo)
    return (*bounds, seq)


def build_problem(
    spec: TransformerSpec,
    hw: Hardware,
    placement: Placement,
    m: int,
    *,
    k: int = 1,
    mem_cap: float | None = None,
    partition: Partition | str = Partition.BALANCED,
    slicing: Slicing | str = Slicing.BALANCED,
    training: Training | None = None,
) -> Problem:
    """The `Problem` of training ``spec`` on ``placement.p`` GPUs of type ``hw`` with m microbatches.

    Raises:
        CostModelError: bad sizes (the message says which and how to fix it).
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise CostModelError(f"microbatches must be a positive integer, got {m!r}")
    if mem_cap is not None and not (math.isfinite(mem_cap) and mem_cap > 0):
        raise CostModelError(f"mem_cap must be a number of bytes > 0, got {mem_cap!r}")
    training = training or Training()
    num_stages = placement.num_stages
    layers = partition_layers(spec, hw, num_stages, partition)
    bounds = slice_bounds(spec, k, slicing)
    rate = hw.flops_per_second(spec.dtype)
    exchange = None
    if Slicing(slicing) is Slicing.REDISTRIBUTED and len(bounds) > 2:
        from synth.costs.redistribute import redistribute_attention

        exchange = redistribute_attention(spec, hw, bounds)

    def ms(flops: float) -> float:
        return 1e3 * flops / rate

    units = []
    for s in range(num_stages):
        first, last = s == 0, s == num_stages - 1
        row = []
        for t0, t1 in zip(bounds, bounds[1:], strict=False):
            work = layers[s] * layer_work(spec, t0, t1)
            if first:
                work = work + embedding_work(spec, t0, t1)
            if last:
                work = work + head_work(spec, t0, t1)
            f, b = ms(work.f), ms(work.b)
            j = len(row)
            if exchange is not None:  # the slice's attention after redistribution, and the exchange's link time
                delta = exchange.delta(j, spec)
                f += layers[s] * (ms(delta.f) + exchange.forward_ms[j])
                b += layers[s] * (ms(delta.b) + exchange.backward_ms[j])
            inp = _kept_bytes(spec, layers[s], t0, t1, first=first, later=j < len(bounds) - 2)
            row.append(UnitCost(f=f, b=b, w=ms(work.w), act=work.act, wact=work.wact, inp=min(inp, work.act),
                                comm=0.0 if last else _comm_ms(spec, hw, placement, s, t0, t1)))
        units.append(tuple(row))

    per_param = training.bytes_per_param(spec.dtype)
    params_per_rank = [0] * placement.p
    for s in range(num_stages):
        params = layers[s] * block_params(spec)
        params += embedding_params(spec) if s == 0 else 0
        params += head_params(spec, count_tied=True) if s == num_stages - 1 else 0
        params_per_rank[placement.rank_of(s)] += params
    static = [training.reserved + n * per_param for n in params_per_rank]
    seq = spec.seq_len
    model_flops = (spec.layers * layer_work(spec, 0, seq) + head_work(spec, 0, seq)).useful
    costs = Costs(tuple(units), tuple(static), copy_bandwidth=hw.host_bandwidth / 1e3)
    return Problem(costs, placement, m, mem_cap, spec, hw, training, layers, bounds, model_flops,
                   tuple(params_per_rank))


def _kept_bytes(spec: TransformerSpec, layers: int, t0: int, t1: int, *, first: bool, later: bool) -> float:
    """What a recomputed unit keeps: its stage input and, when ``later`` slices read them, its own
    K/V (``2 e b t kv`` per layer)."""
    kv = layers * 2 * spec.dtype_bytes * spec.micro_batch * (t1 - t0) * spec.kv_dim if later else 0
    return stage_input_bytes(spec, t0, t1, first=first) + kv


def _comm_ms(spec: TransformerSpec, hw: Hardware, placement: Placement, stage: int, t0: int, t1: int) -> float:
    src, dst = placement.rank_of(stage), placement.rank_of(stage + 1)
    if src == dst:
        return 0.0
    return 1e3 * (boundary_bytes(spec, t0, t1) / hw.link_bandwidth(src, dst) + hw.p2p_latency)
