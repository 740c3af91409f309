"""Stage preparation: split a model's layers into a schedule's stages and wrap each as a `StageModule`.

Stages are contiguous runs of layers in model order (DESIGN.md, "Vocabulary"); which rank holds
which stage is the schedule's placement, so a rank of an interleaved, V or wave schedule builds
several `StageModule`s. `boundary_shapes` infers the tensor each stage sends to the next by
running the model on the meta device, so that receivers can allocate buffers without a shape
exchange. The per-unit passes over a stage live in ``backends.torch_exec.passes``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backends.torch_exec.model import ModelSpec, SliceIO

__all__ = ["StageCountError", "StageModule", "TensorMeta", "boundary_shapes", "build_stages", "check_stage_count",
           "fingerprint", "partition", "stage_modules"]


class StageCountError(ValueError):
    """The model cannot be split into the schedule's number of stages."""


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Shape and dtype of a boundary tensor (one unit's stage output)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def partition(
    num_layers: int, num_stages: int, *, pre: int = 0, post: int = 0, stage_layers: Sequence[int] | None = None
) -> list[range]:
    """Which layers each stage holds: ``pre`` layers join stage 0, ``post`` the last stage, and the
    body layers in between are split evenly (earlier stages take the remainder) or as ``stage_layers``.

    Raises:
        StageCountError: naming both numbers when the split cannot match the stage count.
    """
    body = num_layers - pre - post
    if stage_layers is not None:
        sizes = list(stage_layers)
        if len(sizes) != num_stages:
            raise StageCountError(
                f"the schedule has {num_stages} stages but the model is split into {len(sizes)} stages "
                f"(stage_layers={sizes}); give one layer count per stage, or a schedule with {len(sizes)} stages"
            )
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes) or sum(sizes) != body:
            raise StageCountError(
                f"stage_layers={sizes} must be positive and sum to the model's {body} body layers"
            )
    else:
        if num_stages > body:
            raise StageCountError(
                f"the schedule has {num_stages} stages but the model has only {body} layer(s) to split "
                f"(each stage needs at least one); use a model with at least {num_stages} layers "
                f"or a schedule with at most {body} stage(s)"
            )
        base, extra = divmod(body, num_stages)
        sizes = [base + (1 if s < extra else 0) for s in range(num_stages)]
    ranges, start = [], 0
    for s, size in enumerate(sizes):
        stop = start + size + (pre if s == 0 else 0) + (post if s == num_stages - 1 else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


class StageModule(nn.Module):
    """One stage: a run of the model's layers, called in order.

    Attributes:
        index: the stage number ``s`` (``0..num_stages-1``).
        num_stages: S.
        layer_ids: the model-wide index of each layer (parameter names use it).
        num_slice_layers: how many of its layers take a `SliceIO` (K/V carried between slices).
    """

    def __init__(self, index: int, num_stages: int, layers: Sequence[nn.Module], layer_ids: Sequence[int]) -> None:
        super().__init__()
        self.index = index
        self.num_stages = num_stages
        self.layers = nn.ModuleList(layers)
        self.layer_ids = tuple(layer_ids)
        self._slice_aware = tuple(bool(getattr(layer, "slice_aware", False)) for layer in layers)
        self.num_slice_layers = sum(self._slice_aware)
        self.stochastic = any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.modules())

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_stages - 1

    def run(self, x: Tensor, slices: list[SliceIO] | None = None, *, cut: bool = False
            ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(output, first, leaf)``. With ``cut`` (the first stage: its input is data, so its
        backward-for-inputs has nothing to reach), the first layer's output ``first`` is detached
        into the leaf ``leaf`` the other layers run on; B then stops at ``leaf`` and W finishes
        the first layer from ``first``. Without ``cut``, ``first`` and ``leaf`` are None."""
        it = iter(slices) if slices is not None else None
        first = leaf = None
        for n, (layer, aware) in enumerate(zip(self.layers, self._slice_aware, strict=True)):
            x = layer(x, next(it)) if aware and it is not None else layer(x)
            if n == 0 and cut:
                first, x = x, x.detach().requires_grad_()
                leaf = x
        return x, first, leaf

    def forward(self, x: Tensor) -> Tensor:
        out, _, _ = self.run(x)
        return out

    def global_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters named as in the whole model: ``"<layer index>.<name in the layer>"``."""
        return [
            (f"{gid}.{name}", param)
            for gid, layer in zip(self.layer_ids, self.layers, strict=True)
            for name, param in layer.named_parameters()
        ]


def check_stage_count(spec: ModelSpec, num_stages: int, stage_layers: Sequence[int] | None = None) -> None:
    """Raise `StageCountError` if ``spec`` cannot be split into ``num_stages`` stages (builds it on
    the meta device: no memory, no compute)."""
    with torch.device("meta"):
        num_layers = len(spec.build_layers())
    partition(num_layers, num_stages, pre=spec.pre, post=spec.post, stage_layers=stage_layers)


def build_stages(
    spec: ModelSpec, num_stages: int, stages: Sequence[int], *, stage_layers: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, StageModule]:
    """The `StageModule`s of ``stages`` (a rank's stage numbers), on ``device``.

    Raises:
        StageCountError: the model cannot be split into ``num_stages`` stages.
    """
    return stage_modules(spec.build_layers(), spec, num_stages, stages, stage_layers=stage_layers, device=device)


def stage_modules(
    layers: Sequence[nn.Module], spec: ModelSpec, num_stages: int, stages: Sequence[int], *,
    stage_layers: Sequence[int] | None = None, device: torch.device | str = "cpu",
) -> dict[int, StageModule]:
    """`build_stages` from already built ``layers``."""
    ranges = partition(len(layers), num_stages, pre=spec.pre, post=spec.post, stage_layers=stage_layers)
    return {
        s: StageModule(s, num_stages, [layers[n] for n in ranges[s]], list(ranges[s])).to(device) for s in stages
    }


def fingerprint(layers: Sequence[nn.Module]) -> str:
    """A digest of every weight of the model: equal on every rank when ``build_layers`` is seeded.
    Tensors are flattened first: a 0-dim one (BatchNorm's ``num_batches_tracked``) cannot be viewed
    as bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for layer in layers:
        for name, tensor in (*layer.named_parameters(), *layer.named_buffers()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def boundary_shapes(
    spec: ModelSpec, num_stages: int, microbatch: Tensor, *, k: int = 1, stage_layers: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
) -> list[list[TensorMeta]]:
    """``out[s][j]``: the output of stage s (every stage but the last) for slice j of a microbatch
    (j = 0 only when k = 1), found by running the whole model on the meta device (no compute, no
    comms), once per distinct slice length.

    Args:
        microbatch: one microbatch of inputs (any device; only its shape and dtype are used).
        lengths: tokens of each of the k slices (None: equal slices).
    """
    with torch.device("meta"):
        stages = build_stages(spec, num_stages, range(num_stages), stage_layers=stage_layers, device="meta")
    if k == 1:
        lengths = [None]
    elif lengths is None:
        lengths = [microbatch.shape[spec.seq_dim] // k] * k
    by_length: dict[int | None, list[TensorMeta]] = {}
    for n in dict.fromkeys(lengths):
        x = torch.empty(microbatch.shape, dtype=microbatch.dtype, device="meta")
        if n is not None:
            x = x.narrow(spec.seq_dim, 0, n)
        metas = []
        with torch.no_grad():
            for s in range(num_stages - 1):
                slices = [SliceIO(0) for _ in range(stages[s].num_slice_layers)] if n is not None else None
                x, _, _ = stages[s].run(x, slices)
                metas.append(TensorMeta(tuple(x.shape), x.dtype))
        by_length[n] = metas
    return [[by_length[n][s] for n in lengths] for s in range(num_stages - 1)]
