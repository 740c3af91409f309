"""The optimizer step after each executed step: SGD, Adam on the device, or Adam on the host.

``host-adam`` is ChronosPipe's model-state offload as the executor runs it (the cost model's
``Training(offload_optimizer="states+master")``): fp32 master weights and Adam's two moments live
in host memory; each step copies the gradients to the host, runs ``torch.optim.Adam`` there on the
host tensors, and copies the updated weights back into the stage's parameters. On CUDA the host
tensors are pinned. The device then holds only the weights and their gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "HostAdam", "make_optimizer"]

OPTIMIZERS = ("sgd", "adam", "host-adam")


class HostAdam:
    """Adam whose state and fp32 master weights are host tensors (see the module docstring)."""

    def __init__(self, params: Sequence[nn.Parameter], lr: float) -> None:
        self.params = list(params)
        pin = any(p.device.type == "cuda" for p in self.params)
        self.master = [p.detach().to("cpu", torch.float32, copy=True) for p in self.params]
        if pin:
            self.master = [m.pin_memory() for m in self.master]
        self.optimizer = torch.optim.Adam(self.master, lr=lr)

    def step(self) -> None:
        for p, master in zip(self.params, self.master, strict=True):
            master.grad = None if p.grad is None else p.grad.detach().to("cpu", torch.float32, copy=True)
        self.optimizer.step()
        with torch.no_grad():
            for p, master in zip(self.params, self.master, strict=True):
                p.copy_(master.to(p.device, p.dtype, non_blocking=True))


def make_optimizer(name: str, params: Sequence[nn.Parameter], lr: float):
    """The optimizer ``name`` (one of `OPTIMIZERS`) over ``params``; None when ``lr`` is 0."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    if lr <= 0:
        return None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return HostAdam(params, lr)
