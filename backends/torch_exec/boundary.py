"""What crosses a stage boundary: one tensor, or a tuple, list or dict of them (a pytree).

A layer's output is the next layer's input: a tensor is passed as it is, a tuple or list as
positional arguments, a dict as keyword arguments (`call_layer`). Between two stages on
different ranks the tensor leaves travel as one message each (`Boundary.tensors`, in pytree
order); leaves that are not tensors (None, ints, flags) are constants of the model and are
rebuilt from the `Boundary` the receiver inferred, never sent. Gradients travel back for the
floating-point tensor leaves only (`Boundary.grad_slots`): integer tensors (token ids, position
ids, masks) have none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

__all__ = ["Boundary", "TensorMeta", "call_layer", "describe", "detach", "grad_leaves", "input_leaves", "rebuild",
           "stand_in", "tensor_leaves"]


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Shape and dtype of a boundary tensor (one unit's stage output)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def carries_grad(self) -> bool:
        return self.dtype.is_floating_point or self.dtype.is_complex


@dataclass(frozen=True, slots=True)
class Boundary:
    """One unit's stage output, as the receiver must rebuild it.

    Attributes:
        spec: the pytree structure (a single leaf for a plain tensor).
        leaves: per leaf, its `TensorMeta` (a tensor) or its value (a constant).
    """

    spec: pytree.TreeSpec
    leaves: tuple[Any, ...]

    @property
    def tensors(self) -> list[TensorMeta]:
        """The tensor leaves, in the order they are sent."""
        return [leaf for leaf in self.leaves if isinstance(leaf, TensorMeta)]

    @property
    def grad_slots(self) -> list[int]:
        """Indices into `tensors` of the leaves whose gradient travels back."""
        return [n for n, meta in enumerate(self.tensors) if meta.carries_grad]

    @property
    def grads(self) -> list[TensorMeta]:
        """The gradients that travel back, in order."""
        tensors = self.tensors
        return [tensors[n] for n in self.grad_slots]

    @property
    def single(self) -> bool:
        return self.spec.is_leaf() and len(self.tensors) == 1

    # a plain tensor boundary reads like the TensorMeta it is (boundary_shapes' callers of old)
    @property
    def shape(self) -> tuple[int, ...]:
        return self._only().shape

    @property
    def dtype(self) -> torch.dtype:
        return self._only().dtype

    def __reduce__(self) -> tuple:
        # pickled (to other ranks) through treespec_dumps: pickling a TreeSpec itself warns in torch 2.13
        return (_boundary, (pytree.treespec_dumps(self.spec), self.leaves))

    def _only(self) -> TensorMeta:
        if not self.single:
            raise ValueError(f"the boundary carries {len(self.tensors)} tensors in a {self.spec.type}, not one")
        return self.tensors[0]


def _boundary(spec: str, leaves: tuple) -> Boundary:
    return Boundary(pytree.treespec_loads(spec), leaves)


def describe(value: Any) -> Boundary:
    """The `Boundary` of a stage output (tensors may be on the meta device)."""
    flat, spec = pytree.tree_flatten(value)
    leaves = []
    for leaf in flat:
        if isinstance(leaf, Tensor):
            leaves.append(TensorMeta(tuple(leaf.shape), leaf.dtype))
        elif leaf is None or isinstance(leaf, bool | int | float | str):
            leaves.append(leaf)
        else:
            raise TypeError(f"a stage boundary may carry tensors, tuples, lists and dicts of them, and None, numbers "
                            f"or strings, but one layer returned a {type(leaf).__name__}; return tensors instead")
    if not any(isinstance(leaf, TensorMeta) for leaf in leaves):
        raise TypeError("a stage boundary carries no tensor: every layer must pass at least one tensor on")
    return Boundary(spec, tuple(leaves))


def tensor_leaves(value: Any) -> list[Tensor]:
    """The tensor leaves of ``value`` in pytree order (what is sent)."""
    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, Tensor)]


def grad_leaves(value: Any) -> list[Tensor]:
    """The floating-point tensor leaves of ``value`` (those whose gradient travels back)."""
    return [t for t in tensor_leaves(value) if t.dtype.is_floating_point or t.dtype.is_complex]


def rebuild(boundary: Boundary, tensors: Sequence[Tensor]) -> Any:
    """The stage output ``boundary`` describes, from its tensor leaves (as received)."""
    it = iter(tensors)
    flat = [next(it) if isinstance(leaf, TensorMeta) else leaf for leaf in boundary.leaves]
    return pytree.tree_unflatten(flat, boundary.spec)


def input_leaves(value: Any) -> tuple[Any, list[Tensor]]:
    """``value`` with each floating-point tensor leaf replaced by a fresh leaf that requires grad
    (what B differentiates), and those leaves in order."""
    flat, spec = pytree.tree_flatten(value)
    leaves = []
    for n, leaf in enumerate(flat):
        if isinstance(leaf, Tensor) and (leaf.dtype.is_floating_point or leaf.dtype.is_complex):
            flat[n] = leaf.detach().requires_grad_()
            leaves.append(flat[n])
    return pytree.tree_unflatten(flat, spec), leaves


def detach(value: Any) -> Any:
    """``value`` with every tensor leaf detached."""
    return pytree.tree_map_only(Tensor, Tensor.detach, value)


def stand_in(boundary: Boundary, device: torch.device | str, seed: int) -> Any:
    """A stage input of ``boundary``'s shapes for probes: random floats, zeros for integer leaves."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(meta.shape, generator=gen).to(device=device, dtype=meta.dtype) if meta.carries_grad
               else torch.zeros(meta.shape, dtype=meta.dtype, device=device) for meta in boundary.tensors]
    return rebuild(boundary, tensors)


def call_layer(layer: nn.Module | Callable[..., Any], x: Any, sl: Any = None) -> Any:
    """``layer`` on the previous layer's output: a tensor as it is, a tuple or list as positional
    arguments, a dict as keyword arguments; a slice-aware layer also gets its `SliceIO` ``sl``."""
    if isinstance(x, Tensor):
        return layer(x) if sl is None else layer(x, sl)
    if sl is not None:
        raise ValueError("sequence slices cut one tensor per stage boundary; this model passes a "
                         f"{type(x).__name__} between layers, so run it with k=1")
    if isinstance(x, dict):
        return layer(**x)
    if isinstance(x, tuple | list):
        return layer(*x)
    raise TypeError(f"a layer got a {type(x).__name__} from the layer before it; layers must pass on a tensor, "
                    "a tuple or list of tensors (positional arguments of the next layer) or a dict (keyword ones)")
