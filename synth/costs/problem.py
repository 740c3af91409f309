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
  queries against keys ``0..t1``.
- **Static memory per rank.** Mixed-precision Adam as Megatron runs it for bf16/fp16: 2-byte
  weights, 4-byte fp32 main gradients, 12 bytes of optimizer state (fp32 master weights, Adam's
  m and v): 18 bytes per parameter (Megatron-LM's distributed-optimizer notes). ``zero1`` shards
  the 12 bytes over the data-parallel degree (6 + 12/dp). fp32 models: 4 + 4 + 8 = 16 bytes
  (8/dp sharded). A tied LM head is held again on the last stage. ``reserved`` adds a fixed amount
  per rank (CUDA context, workspaces).
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


@dataclass(frozen=True, slots=True)
class Training:
    """How the optimizer state is held.

    Attributes:
        dp: data-parallel degree (replicas of the pipeline).
        zero1: shard optimizer state over the ``dp`` replicas (ZeRO-1 / distributed optimizer).
        reserved: bytes per rank set aside for the framework (CUDA context, workspaces).
    """

    dp: int = 1
    zero1: bool = False
    reserved: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.dp, bool) or not isinstance(self.dp, int) or self.dp < 1:
            raise CostModelError(f"dp must be a positive integer, got {self.dp!r}")
        if not (isinstance(self.reserved, int | float) and math.isfinite(self.reserved) and self.reserved >= 0):
            raise CostModelError(f"reserved must be bytes >= 0, got {self.reserved!r}")

    def bytes_per_param(self, dtype: str) -> float:
        """Static bytes per parameter: weights + main grads + optimizer state (sharded by ``zero1``)."""
        weights, grads, optimizer = (4, 4, 8) if dtype == "fp32" else (2, 4, 12)
        return weights + grads + optimizer / (self.dp if self.zero1 else 1)


@dataclass(frozen=True, slots=True)
class Throughput:
    """What users read off a simulated iteration (one pipeline; data-parallel replicas multiply it)."""

    makespan_ms: float
    tokens_per_s: float
    samples_per_s: float
    mfu: float

    def summary(self) -> str:
        return (f"{self.tokens_per_s:,.0f} tokens/s, {self.samples_per_s:,.2f} samples/s, "
                f"MFU {100 * self.mfu:.1f}%")


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

    @property
    def p(self) -> int:
        return self.placement.p

    @property
    def k(self) -> int:
        return len(self.bounds) - 1

    def throughput(self, makespan_ms: float) -> Throughput:
        """Tokens/s, samples/s and MFU of an iteration that takes ``makespan_ms``."""
        if not makespan_ms > 0:
            raise ValueError(f"makespan must be > 0 ms, got {makespan_ms!r}")
        seconds = makespan_ms / 1e3
        samples = self.m * self.spec.micro_batch
        peak = self.hardware.peak_flops_fp32 if self.spec.dtype == "fp32" else self.hardware.peak_flops
        mfu = self.m * self.model_flops / (seconds * self.p * peak)
        return Throughput(makespan_ms, samples * self.spec.seq_len / seconds, samples / seconds, mfu)


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
    if mode is Slicing.UNIFORM:
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
            row.append(UnitCost(f=ms(work.f), b=ms(work.b), w=ms(work.w), act=work.act, wact=work.wact,
                                inp=stage_input_bytes(spec, t0, t1, first=first),
                                comm=0.0 if last else _comm_ms(spec, hw, placement, s, t0, t1)))
        units.append(tuple(row))

    per_param = training.bytes_per_param(spec.dtype)
    static = [training.reserved] * placement.p
    for s in range(num_stages):
        params = layers[s] * block_params(spec)
        params += embedding_params(spec) if s == 0 else 0
        params += head_params(spec, count_tied=True) if s == num_stages - 1 else 0
        static[placement.rank_of(s)] += params * per_param
    seq = spec.seq_len
    model_flops = (spec.layers * layer_work(spec, 0, seq) + head_work(spec, 0, seq)).useful
    costs = Costs(tuple(units), tuple(static), copy_bandwidth=hw.host_bandwidth / 1e3)
    return Problem(costs, placement, m, mem_cap, spec, hw, training, layers, bounds, model_flops)


def _comm_ms(spec: TransformerSpec, hw: Hardware, placement: Placement, stage: int, t0: int, t1: int) -> float:
    src, dst = placement.rank_of(stage), placement.rank_of(stage + 1)
    if src == dst:
        return 0.0
    return 1e3 * (boundary_bytes(spec, t0, t1) / hw.link_bandwidth(src, dst) + hw.p2p_latency)
