"""Stage preparation: split a model's layers into a schedule's stages and wrap each as a `StageModule`.

Stages are contiguous runs of layers in model order (DESIGN.md, "Vocabulary"); which rank holds
which stage is the schedule's placement, so a rank of an interleaved, V or wave schedule builds
several `StageModule`s. `boundary_shapes` infers the tensor each stage sends to the next by
running the model on the meta device, so that receivers can allocate buffers without a shape
exchange. The per-unit passes over a stage live in ``backends.torch_exec.passes``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from backends.torch_exec.boundary import Boundary, TensorMeta, call_layer, describe, grad_leaves, input_leaves
from backends.torch_exec.model import ModelSpec, SliceIO

__all__ = ["Boundary", "StageCountError", "StageModule", "TensorMeta", "autocast_context", "boundary_shapes",
           "build_stages", "check_stage_count", "fingerprint", "partition", "stage_modules"]


class StageCountError(ValueError):
    """The model cannot be split into the schedule's number of stages."""


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
        copy_leaves: a layer modifies the leaf B stops at in place (the stage's input, or on the
            first stage the first layer's output), so that leaf is copied before the layers run
            on it (set by `StageRunner` the first time the in-place op fails; torch's runtime
            fails there).
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
        self.copy_leaves = False

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_stages - 1

    def run(self, x: Any, slices: list[SliceIO] | None = None, *, cut: bool = False
            ) -> tuple[Any, list[Tensor] | None, list[Tensor] | None]:
        """``(output, first, leaves)``. With ``cut`` (the first stage: its input is data, so its
        backward-for-inputs has nothing to reach), the first layer's output is detached into fresh
        leaves the other layers run on; ``first`` are its floating-point tensors and ``leaves``
        their detached copies. B then stops at ``leaves`` and W finishes the first layer from
        ``first``. Without ``cut``, ``first`` and ``leaves`` are None. Values between layers may
        be tensors, tuples, lists or dicts of them (`call_layer`)."""
        it = iter(slices) if slices is not None else None
        first = leaves = None
        for n, (layer, aware) in enumerate(zip(self.layers, self._slice_aware, strict=True)):
            x = call_layer(layer, x, next(it) if aware and it is not None else None)
            if n == 0 and cut:
                first = grad_leaves(x)
                x, leaves = input_leaves(x)
                if self.copy_leaves:  # an in-place op next would modify a leaf that requires grad
                    x = copied_leaves(x)
        return x, first, leaves

    def forward(self, x: Any) -> Any:
        out, _, _ = self.run(x)
        return out

    def global_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters named as in the whole model: ``"<layer index>.<name in the layer>"``."""
        return [
            (f"{gid}.{name}", param)
            for gid, layer in zip(self.layer_ids, self.layers, strict=True)
            for name, param in layer.named_parameters()
        ]


def copied_leaves(value: Any) -> Any:
    """``value`` with each tensor that requires grad replaced by a copy (autograd-tracked), so that
    an in-place op modifies the copy, not the leaf."""
    return pytree.tree_map_only(Tensor, lambda t: t.clone() if t.requires_grad else t, value)


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
    spec: ModelSpec, num_stages: int, microbatch: Any, *, k: int = 1, stage_layers: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
) -> list[list[Boundary]]:
    """``out[s][j]``: the output of stage s (every stage but the last) for slice j of a microbatch
    (j = 0 only when k = 1), found by running the whole model on the meta device (no compute, no
    comms), once per distinct slice length. The run is under ``FakeTensorMode`` too, so that a
    layer that reads a value (Hugging Face's mask helpers call ``.item()``) sees a traced tensor.

    Args:
        microbatch: one microbatch of inputs, a tensor or a pytree of them (any device; only
            shapes and dtypes are used).
        lengths: tokens of each of the k slices (None: equal slices).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        stages = build_stages(spec, num_stages, range(num_stages), stage_layers=stage_layers, device="meta")
    if k == 1:
        lengths = [None]
    elif lengths is None:
        lengths = [microbatch.shape[spec.seq_dim] // k] * k
    by_length: dict[int | None, list[Boundary]] = {}
    for n in dict.fromkeys(lengths):
        metas = []
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            x = pytree.tree_map_only(Tensor, lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta"), microbatch)
            if n is not None:
                x = x.narrow(spec.seq_dim, 0, n)
            for s in range(num_stages - 1):
                slices = [SliceIO(0) for _ in range(stages[s].num_slice_layers)] if n is not None else None
                x, _, _ = stages[s].run(x, slices)
                metas.append(describe(x))
        by_length[n] = metas
    return [[by_length[n][s] for n in lengths] for s in range(num_stages - 1)]


def autocast_context(device_type: str, dtype: torch.dtype | None) -> Any:
    """``torch.autocast(device_type, dtype)``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
