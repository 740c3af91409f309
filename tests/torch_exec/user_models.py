"""Model functions a user names with ``synth run --model module:function`` (importable by the ranks)."""

import torch
import torch.nn.functional as F
from torch import nn

from backends.torch_exec import sequential_spec


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def _batch(batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 4, generator=gen), torch.randn(batch_size, 2, generator=gen)


def mlp_spec():
    return sequential_spec("user-mlp", _mlp, F.mse_loss, _batch)


class Noisy(nn.Module):
    """Multiplies by fresh noise outside the executor's seeding (not an nn.Dropout): every run
    draws other numbers, so the pipelined gradients differ from one process's."""

    def forward(self, x):
        return x * (1 + torch.rand_like(x))


def _noisy() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), Noisy(), nn.Linear(8, 2))


def noisy_spec():
    return sequential_spec("noisy", _noisy, F.mse_loss, _batch)


def not_a_spec():
    return nn.Linear(2, 2)
