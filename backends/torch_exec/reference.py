"""The single-process reference: the same model and batch without a pipeline, for equivalence checks.

`reference_step` runs the whole model in one process and one autograd graph, then one backward,
and returns the loss and every parameter's gradient (names as ``StageModule.global_named_parameters``).
Two forms, both independent of the executor's passes, comms and saved-tensor handling:

- ``per_unit=False``: the whole batch through the whole model at once, loss = mean over all
  tokens. Only valid without dropout (the executor draws dropout per unit).
- ``per_unit=True``: microbatch by microbatch and slice by slice, each stage's forward seeded
  as the executor seeds it (``passes.unit_seed``), later slices reading the earlier slices' keys
  and values in the same graph; the loss is the mean of the units' losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from backends.torch_exec.executor import split_batch
from backends.torch_exec.model import ModelSpec, SliceIO
from backends.torch_exec.passes import unit_seed
from backends.torch_exec.stages import build_stages

__all__ = ["Reference", "reference_step"]


@dataclass(frozen=True, slots=True)
class Reference:
    """Loss and gradients of one step, and the parameters after ``steps`` SGD steps if asked."""

    loss: float
    grads: dict[str, Tensor]
    params: dict[str, Tensor]


def reference_step(
    spec: ModelSpec, batch_size: int, *, num_stages: int, m: int = 1, k: int = 1, per_unit: bool = True,
    seed: int = 0, data_seed: int = 0, stage_layers: Sequence[int] | None = None, steps: int = 1, lr: float = 0.0,
    lengths: Sequence[int] | None = None, optimizer: str = "sgd",
) -> Reference:
    """Loss and gradients of the first step (and parameters after ``steps`` steps of ``optimizer``,
    "sgd" or "adam" (torch's, on the same device as the model), at ``lr``).

    ``num_stages`` and ``stage_layers`` only fix where the per-unit dropout seeds change
    (stage boundaries); the model and its weights are the same for any split. ``lengths``: the
    tokens of each of the ``k`` slices (None: equal slices).
    """
    stages = build_stages(spec, num_stages, range(num_stages), stage_layers=stage_layers)
    params = list({id(p): p for st in stages.values() for p in st.parameters()}.values())  # a tied tensor once
    inputs, targets = spec.make_batch(batch_size, data_seed)
    first = None
    adam = torch.optim.Adam(params, lr=lr) if optimizer != "sgd" and lr > 0 else None
    for step in range(steps):
        for p in params:
            p.grad = None
        if per_unit:
            loss = _per_unit_loss(spec, stages, inputs, targets, m, k, seed, step, lengths)
        else:
            if any(st.stochastic for st in stages.values()):
                raise ValueError("the whole-batch reference cannot draw per-unit dropout; use per_unit=True")
            x = inputs
            for s in range(num_stages):
                x = stages[s](x)
            loss = spec.loss_fn(x, targets)
        loss.backward()
        if first is None:
            first = (loss.item(), _named(stages, grads=True))
        if adam is not None:
            adam.step()
            continue
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
    return Reference(first[0], first[1], _named(stages, grads=False))


def _per_unit_loss(spec: ModelSpec, stages: dict, inputs: Tensor, targets: Tensor, m: int, k: int, seed: int,
                   step: int, lengths: Sequence[int] | None) -> Tensor:
    xs, ys = (split_batch(t, m, k, spec.seq_dim, lengths) for t in (inputs, targets))
    total = torch.zeros(())
    for i in range(m):
        presents: dict[int, list[list]] = {s: [[] for _ in range(st.num_slice_layers)] for s, st in stages.items()}
        for j in range(k):
            x = xs[i][j]
            for s, st in stages.items():
                torch.manual_seed(unit_seed(seed, step, s, i, j))
                slices = None
                if k > 1:
                    offset = sum(xs[i][jj].shape[spec.seq_dim] for jj in range(j))
                    slices = [SliceIO(offset, list(past)) for past in presents[s]]
                x, _, _ = st.run(x, slices)
                if slices is not None:
                    for past, sl in zip(presents[s], slices, strict=True):
                        if sl.present is not None:
                            past.append(sl.present)
            share = ys[i][j].shape[spec.seq_dim] / spec.seq_len if k > 1 else 1.0  # the slice's share of tokens
            total = total + spec.loss_fn(x, ys[i][j]) * share
    return total / m


def _named(stages: dict, grads: bool) -> dict[str, Tensor]:
    out = {}
    for st in stages.values():
        for name, p in st.global_named_parameters():
            t = p.grad if grads else p
            out[name] = None if t is None else t.detach().clone()
    return out
