"""`Hardware`: one GPU and its links, as the cost model needs them, with presets.

Sources for the presets (vendor data sheets):
- A100 SXM (NVIDIA A100 data sheet): 312 TFLOP/s dense BF16/FP16, 19.5 TFLOP/s FP32; NVLink 3 at
  600 GB/s per GPU in both directions together (300 GB/s each way); PCIe 4.0 x16 to the host
  (about 32 GB/s each way); DGX A100 has one 200 Gb/s HDR InfiniBand port per GPU (25 GB/s).
- H100 SXM (NVIDIA H100 data sheet): 989 TFLOP/s dense BF16/FP16 (1,979 with sparsity), 67 TFLOP/s
  FP32; NVLink 4 at 900 GB/s (450 GB/s each way); PCIe 5.0 x16 (about 64 GB/s each way); DGX H100
  has one 400 Gb/s NDR port per GPU (50 GB/s).
- H200 SXM (NVIDIA H200 data sheet): the H100's compute and links with 141 GB of HBM3e.

Memory: the "40GB"/"80GB" cards hold 40/80 GiB (nvidia-smi reports 40,960/81,920 MiB for A100s); the
H200's 141 GB is NVIDIA's decimal figure.

Host and inter-node bandwidths are taken as 80% of the link's nominal rate, what pinned-memory
copies and NCCL typically reach; the p2p latency is a 10 us order of magnitude. ``efficiency``, the
fraction of peak FLOP/s a transformer's GEMMs reach, is an assumption, not a measurement: 0.50 on
A100 (Narayanan et al. 2021, SC'21, report 52% of peak for large GPTs on A100s) and 0.45 on
H100/H200. Calibrate it to a profile with ``--efficiency``.

Host link and host optimizer (optimizer-state offload, ``synth.costs.states``): ``host_bandwidth``
is the copy rate each way of one GPU's PCIe link, 80% of nominal as above (A100, PCIe 4.0 x16:
25.6 GB/s; H100/H200, PCIe 5.0 x16: 51.2 GB/s). In a DGX two GPUs share one switch uplink to the
CPU, so when all GPUs copy at once a GPU may see about half: pass ``--host-bandwidth`` to model
that. ``host_adam_rate``, the parameters per second the host's Adam updates for one GPU, is an
assumption, not a measurement: a vectorised CPU Adam (DeepSpeed's CPU-Adam, Megatron's CPU
optimizer) is memory-bound, reading gradient, master, m and v and writing master, m, v and the
new weights, about 30 bytes per parameter. A DGX A100's two EPYC 7742 have 16 DDR4-3200 channels
(410 GB/s peak); at about 60% of it shared by 8 GPUs that is about 30 GB/s, 1e9 parameters/s
per GPU. A DGX H100's two Xeon 8480C have 16 DDR5-4800 channels (614 GB/s): 2e9 per GPU.
Calibrate it with ``--host-adam-rate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from synth.costs.spec import CostModelError, pick

__all__ = ["HARDWARE", "Hardware", "hardware"]

GiB = 2**30


@dataclass(frozen=True, slots=True)
class Hardware:
    """One GPU model and how it is connected.

    Attributes:
        name: label for reports.
        peak_flops: dense BF16/FP16 tensor-core FLOP/s.
        peak_flops_fp32: dense FP32 FLOP/s (used when the model's dtype is fp32).
        memory: device memory in bytes.
        efficiency: fraction of peak the model's matrix multiplies reach (0 < e <= 1).
        host_bandwidth: bytes/s each way between device and pinned host memory (activation and
            optimizer-state offload).
        p2p_bandwidth: bytes/s each way between two GPUs of one node.
        internode_bandwidth: bytes/s each way between GPUs of different nodes (per GPU).
        p2p_latency: seconds of fixed cost per point-to-point message.
        gpus_per_node: GPUs per node; ranks ``r`` and ``r'`` share a node when
            ``r // gpus_per_node == r' // gpus_per_node``.
        host_adam_rate: parameters per second the host's Adam updates for one GPU's share of
            the host (optimizer-state offload; an assumption, see the module docstring).
    """

    name: str
    peak_flops: float
    peak_flops_fp32: float
    memory: float
    efficiency: float
    host_bandwidth: float
    p2p_bandwidth: float
    internode_bandwidth: float
    p2p_latency: float = 1e-5
    gpus_per_node: int = 8
    host_adam_rate: float = 1e9

    def __post_init__(self) -> None:
        for name in ("peak_flops", "peak_flops_fp32", "memory", "host_bandwidth", "p2p_bandwidth",
                     "internode_bandwidth", "host_adam_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value <= 0:
                raise CostModelError(f"{self.name}: {name} must be a finite number > 0, got {value!r}")
        if not 0 < self.efficiency <= 1:
            raise CostModelError(f"{self.name}: efficiency must be in (0, 1], got {self.efficiency!r}")
        if not self.p2p_latency >= 0:
            raise CostModelError(f"{self.name}: p2p_latency must be >= 0, got {self.p2p_latency!r}")
        if isinstance(self.gpus_per_node, bool) or not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 1:
            raise CostModelError(f"{self.name}: gpus_per_node must be a positive integer, got {self.gpus_per_node!r}")

    def flops_per_second(self, dtype: str) -> float:
        """Achieved FLOP/s for ``dtype``: the dtype's peak times ``efficiency``."""
        peak = self.peak_flops_fp32 if dtype == "fp32" else self.peak_flops
        return peak * self.efficiency

    def link_bandwidth(self, rank_a: int, rank_b: int) -> float:
        """Bytes/s between two ranks: NVLink inside a node, the network across nodes."""
        same_node = rank_a // self.gpus_per_node == rank_b // self.gpus_per_node
        return self.p2p_bandwidth if same_node else self.internode_bandwidth

    def with_(self, **changes: Any) -> Hardware:
        return replace(self, **changes)


def _a100(name: str, memory_gib: int) -> Hardware:
    return Hardware(name, peak_flops=312e12, peak_flops_fp32=19.5e12, memory=memory_gib * GiB, efficiency=0.50,
                    host_bandwidth=0.8 * 32e9, p2p_bandwidth=300e9, internode_bandwidth=0.8 * 25e9,
                    host_adam_rate=1e9)


def _h100(name: str, memory: float) -> Hardware:
    return Hardware(name, peak_flops=989e12, peak_flops_fp32=67e12, memory=memory, efficiency=0.45,
                    host_bandwidth=0.8 * 64e9, p2p_bandwidth=450e9, internode_bandwidth=0.8 * 50e9,
                    host_adam_rate=2e9)


HARDWARE: dict[str, Hardware] = {
    hw.name: hw
    for hw in (_a100("a100-40gb", 40), _a100("a100-80gb", 80), _h100("h100-80gb", 80 * GiB), _h100("h200", 141e9))
}


def hardware(name: str, **changes: Any) -> Hardware:
    """A preset by name, optionally changed (``hardware("a100-40gb", efficiency=0.4)``).

    Raises:
        CostModelError: unknown name (the message lists the presets).
    """
    return pick(HARDWARE, name, "GPU", changes)
