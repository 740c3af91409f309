"""A model whose last layer fails on purpose (importable, so that spawned ranks can build it)."""

import functools
import time

import torch
from torch import nn

from backends.torch_exec.model import ModelSpec, gpt_loss, tiny_gpt


class Faulty(nn.Module):
    """Identity until its ``after``-th call, then raises (or, with ``hang``, sleeps for a minute)."""

    def __init__(self, after: int, hang: bool) -> None:
        super().__init__()
        self.after = after
        self.hang = hang
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            if self.hang:
                time.sleep(60)
            raise RuntimeError(f"injected failure in call {self.calls}")
        return x


def _layers(after: int, hang: bool) -> list[nn.Module]:
    layers = tiny_gpt(layers=2).build_layers()
    return [*layers[:-1], Faulty(after, hang), layers[-1]]


def faulty_gpt(after: int = 2, hang: bool = False) -> ModelSpec:
    """tiny-gpt (2 blocks) with a `Faulty` layer before the head, on the last stage."""
    base = tiny_gpt(layers=2)
    return ModelSpec("faulty-gpt", functools.partial(_layers, after, hang), gpt_loss, base.make_batch,
                     pre=1, post=2, seq_dim=1, seq_len=base.seq_len)

