"""Model states per parameter (weights, gradients, Adam state), where they live (device or host),
and what keeping part of them on the host costs each training step.

``synth.costs.problem`` turns these per-parameter figures into a rank's static bytes and its
``Problem.step_overhead_ms``; ``synth.costs.hardware`` gives the host link and the host's Adam
rate. The layouts (bytes per parameter; ``/s`` is the ZeRO-1 shard count, ``dp`` when
``zero1`` is on, else 1):

| dtype | offload | device | host | to host per step | to device per step |
| --- | --- | --- | --- | --- | --- |
| bf16/fp16 | none | 2 w + 4 g + 12/s (master, m, v) = 18 at s = 1 | 0 | 0 | 0 |
| bf16/fp16 | states | 2 w + 4 g + 4/s master = 10 | 8/s (m, v) | 4/s fp32 grads | 4/s fp32 update |
| bf16/fp16 | states+master | 2 w + 4 g = 6 | 12/s (master, m, v) | 4/s fp32 grads | 2/s bf16 weights |
| fp32 | none | 4 w + 4 g + 8/s (m, v) = 16 | 0 | 0 | 0 |
| fp32 | states, states+master | 4 w + 4 g = 8 | 12/s (m, v, a weight copy) | 4/s grads | 4/s weights |

- ``states``: Adam's m and v on the host, the fp32 master weights stay on the device. The
  host runs Adam's moment update and returns the fp32 step, which the device adds to its master
  copy (and casts to bf16; device time not charged).
- ``states+master``: all of the optimizer on the host, as ZeRO-Offload (Ren et al. 2021,
  arXiv 2101.06840) and Megatron-Core's ``--optimizer-cpu-offload`` do: fp32 gradients go to the
  host, the host updates master, m and v, and the new bf16 weights come back.
- Gradients are Megatron's fp32 main gradients (4 bytes): they accumulate on the device over the
  microbatches and move once per step, after the pipeline flush. With ZeRO-1 each rank moves
  and updates only its 1/s shard (after the reduce-scatter; the all-gather of the updated
  weights is data-parallel traffic, which the cost model does not charge in any layout).

Step overhead. Each rank moves ``params * to_host`` bytes down and ``params * to_device`` bytes
up at the host bandwidth (PCIe is full duplex: the two directions do not share it), and the
host updates ``params / s`` parameters at ``Hardware.host_adam_rate``. Overlap assumption:
none of it overlaps the pipeline, because a rank's gradients are final only after its last
backward and the next iteration's first forward needs the new weights. Within the step, with
``overlap=True`` (the default) the copies and the host update run as a pipeline over gradient
buckets (Megatron's ``--overlap-cpu-optimizer-d2h-h2d``, ZeRO-Offload's overlapped swap), so
the step costs the slowest of the three (the pipeline's fill and drain, one bucket, are not
charged); with ``overlap=False`` it costs their sum. The iteration ends when the slowest rank
is done: ``Problem.step_overhead_ms`` is the largest rank's. The GPU optimizer step that
offload replaces is not charged in any layout, so the overhead is what offload adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["OptimizerOffload", "StateBytes", "StepOverhead", "state_bytes", "step_overhead"]


class OptimizerOffload(StrEnum):
    """Which optimizer states live in host memory (see the module docstring's table)."""

    NONE = "none"
    STATES = "states"  # Adam m and v on the host; the fp32 master weights stay on the device
    STATES_MASTER = "states+master"  # m, v and the fp32 master weights on the host (ZeRO-Offload)


@dataclass(frozen=True, slots=True)
class StateBytes:
    """Bytes per parameter of one layout, ZeRO-1 sharding already applied.

    Attributes:
        weights: device weights (the dtype's width).
        grads: device main gradients (fp32).
        optimizer_device: optimizer state kept on the device.
        host: optimizer state (and, for fp32 offload, a weight copy) kept in host memory.
        to_host: bytes copied device -> host per step (gradients).
        to_device: bytes copied host -> device per step (new weights or the fp32 step).
        updated_on_host: fraction of the parameters whose update the host computes (1/s or 0).
    """

    weights: float
    grads: float
    optimizer_device: float
    host: float
    to_host: float
    to_device: float
    updated_on_host: float

    @property
    def device(self) -> float:
        """Static device bytes per parameter."""
        return self.weights + self.grads + self.optimizer_device


def state_bytes(dtype: str, offload: OptimizerOffload | str = OptimizerOffload.NONE, shards: int = 1) -> StateBytes:
    """The layout of ``dtype`` parameters under ``offload``, sharded over ``shards`` ranks.

    Raises:
        ValueError: unknown offload mode or shards < 1.
    """
    offload = OptimizerOffload(offload)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    s = shards
    if dtype == "fp32":
        if offload is OptimizerOffload.NONE:
            return StateBytes(4, 4, 8 / s, 0, 0, 0, 0)
        return StateBytes(4, 4, 0, 12 / s, 4 / s, 4 / s, 1 / s)
    if offload is OptimizerOffload.NONE:
        return StateBytes(2, 4, 12 / s, 0, 0, 0, 0)
    if offload is OptimizerOffload.STATES:
        return StateBytes(2, 4, 4 / s, 8 / s, 4 / s, 4 / s, 1 / s)
    return StateBytes(2, 4, 0, 12 / s, 4 / s, 2 / s, 1 / s)


@dataclass(frozen=True, slots=True)
class StepOverhead:
    """The host part of one rank's optimizer step, in ms.

    Attributes:
        to_host_ms: gradients down the host link.
        update_ms: Adam on the host.
        to_device_ms: new weights (or steps) back up the link.
        overlap: the three run as a pipeline over buckets (cost: the slowest), else one after another.
    """

    to_host_ms: float = 0.0
    update_ms: float = 0.0
    to_device_ms: float = 0.0
    overlap: bool = True

    @property
    def total_ms(self) -> float:
        parts = (self.to_host_ms, self.update_ms, self.to_device_ms)
        return max(parts) if self.overlap else sum(parts)


def step_overhead(params: float, layout: StateBytes, *, host_bandwidth: float, host_adam_rate: float,
                  overlap: bool = True) -> StepOverhead:
    """The host step of a rank holding ``params`` parameters in ``layout``.

    Args:
        params: parameters on the rank (all its stages).
        layout: from `state_bytes`.
        host_bandwidth: bytes/s each way between the device and pinned host memory.
        host_adam_rate: parameters/s the host's Adam updates for this rank.
        overlap: bucketed overlap of copies and update (see the module docstring).
    """
    if not (math.isfinite(params) and params >= 0):
        raise ValueError(f"params must be a count >= 0, got {params!r}")
    if not (host_bandwidth > 0 and host_adam_rate > 0):
        raise ValueError(f"host_bandwidth and host_adam_rate must be > 0, got {host_bandwidth!r}, {host_adam_rate!r}")
    return StepOverhead(to_host_ms=1e3 * params * layout.to_host / host_bandwidth,
                        update_ms=1e3 * params * layout.updated_on_host / host_adam_rate,
                        to_device_ms=1e3 * params * layout.to_device / host_bandwidth,
                        overlap=overlap)
