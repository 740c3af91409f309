"""The compute of one unit's passes on one stage (F, R, B, W, BW, OFFLOAD, RELOAD), without comms.

`StageRunner` owns one `StageModule` and runs the passes DESIGN.md's op table names on a `Unit`
(one ``(stage, microbatch, slice)``): F keeps what autograd saved (through
``backends.torch_exec.memory``), or only the stage input when the unit will be recomputed; R
re-runs that forward with the same RNG seed; B produces the stage-input gradient with the graph
retained and frees what W does not need; W the weight gradients; BW both. The executor
(``backends.torch_exec.executor``) decides when, and moves boundary tensors between ranks; the
profiler (``backends.torch_exec.profile``) times the same passes in one process.

Sequence slices: the slices of one microbatch on one stage share a `KVChain`. A slice's
attention reads the earlier slices' keys and values as leaves of its own graph, so its B returns
their gradients, which the chain adds up until the earlier slice's B (slices go backward in
reverse order) starts from them, next to the gradient of its output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from backends.torch_exec.backward import WeightWork, backward_full, backward_input, backward_weight
from backends.torch_exec.boundary import detach, grad_leaves, input_leaves, tensor_leaves
from backends.torch_exec.memory import Copier, MemoryTracker, UnitMemory
from backends.torch_exec.model import SliceIO
from backends.torch_exec.stages import StageModule, autocast_context, copied_leaves

__all__ = ["KVChain", "StageRunner", "Unit", "WeightPlan", "unit_seed"]


def unit_seed(seed: int, step: int, stage: int, microbatch: int, slice_: int) -> int:
    """The RNG seed of one unit's forward: the same for its F and R, and for a reference run."""
    digest = hashlib.blake2b(f"{seed}/{step}/{stage}/{microbatch}/{slice_}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(slots=True)
class KVChain:
    """Keys and values of one microbatch's slices on one stage, and the gradients they collect.

    ``presents[j][n]`` is slice j's ``(key, value)`` in the stage's n-th slice-aware layer,
    detached (None for a layer without K/V, such as the embedding); ``grads[j]`` maps
    ``(n, 0 or 1)`` to the gradient later slices sent back to that key or value.
    """

    presents: dict[int, list[tuple[Tensor, Tensor] | None]] = field(default_factory=dict)
    grads: dict[int, dict[tuple[int, int], Tensor]] = field(default_factory=dict)

    def add_grad(self, slice_: int, slot: tuple[int, int], grad: Tensor | None) -> None:
        if grad is None:
            return
        grads = self.grads.setdefault(slice_, {})
        grads[slot] = grad if slot not in grads else grads[slot] + grad


@dataclass(slots=True, eq=False)
class Unit:
    """The state of one unit between its passes.

    Attributes:
        x: the stage input as it arrived (token ids on the first stage; a tensor or a pytree of
            them, `backends.torch_exec.boundary`); a recomputed unit keeps it until B.
        target: the loss target (last stage only).
        recompute: F keeps only ``x``; R rebuilds the graph just before B.
        split: the unit's backward is B then W (not BW); on the first stage, F then cuts the
            graph after the first layer (``StageModule.run``), which a fused backward does not need.
        roots: what B starts from: the output's floating-point tensors (or the loss), then this
            slice's K/V if later slices read them.
        inputs: what B differentiates: the stage input's floating-point leaves (the first layer's
            output on the first stage), then the earlier slices' K/V leaves.
        n_roots, n_inputs: how many of ``roots`` and ``inputs`` are the output and the input.
    """

    stage: int
    microbatch: int
    slice: int
    memory: UnitMemory
    x: Any
    target: Any
    seed: int
    recompute: bool = False
    chain: KVChain | None = None
    split: bool = True
    roots: list[Tensor] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    root_slots: list[tuple[int, int]] = field(default_factory=list)  # (layer, k or v) of roots[1:]
    input_slots: list[tuple[int, int, int]] = field(default_factory=list)  # (slice, layer, k or v) of inputs[1:]
    n_roots: int = 0
    n_inputs: int = 0
    work: WeightWork | None = None
    loss: Tensor | None = None
    first: list[Tensor] | None = None  # first stage: its first layer's output, which W finishes from
    first_grad: list[Tensor | None] | None = None


@dataclass(frozen=True, slots=True)
class WeightPlan:
    """Which saved tensors W reads, by the order the forward saved them (learnt by a probe)."""

    count: int
    keep: frozenset[int]


class StageRunner:
    """Runs the passes of one stage's units.

    Args:
        module: the stage.
        loss_fn: ``loss_fn(output, target)``, mean loss of one unit (last stage only).
        loss_scale: multiplies each unit's loss (``1 / (m k)``: the step's loss is a mean); with
            unequal ``lengths`` slice j's is scaled by its share of the tokens, ``k lengths[j] / seq``,
            so the step's loss is still the mean over every token.
        k: sequence slices per microbatch.
        seq_dim: the dim of stage inputs that slices cut (only used when k > 1).
        tracker, copier: memory accounting and host copies of the rank.
        lengths: tokens of each slice (None: equal slices); slice j starts at the sum of the earlier ones.
        autocast: forward passes (F, R) run under ``torch.autocast`` with this dtype (None: none).
    """

    def __init__(self, module: StageModule, loss_fn: Callable[[Any, Any], Tensor], loss_scale: float,
                 k: int, tracker: MemoryTracker, copier: Copier, seq_dim: int | None = None,
                 lengths: Sequence[int] | None = None, autocast: torch.dtype | None = None) -> None:
        self.module = module
        self.autocast = autocast
        self.seq_dim = seq_dim
        self.offsets = None if lengths is None else [sum(lengths[:j]) for j in range(len(lengths))]
        self.scales = [loss_scale] * k if lengths is None else [loss_scale * k * n / sum(lengths) for n in lengths]
        self.loss_fn = loss_fn
        self.loss_scale = loss_scale
        self.k = k
        self.tracker = tracker
        self.copier = copier
        self.params = [p for p in module.parameters() if p.requires_grad]
        self._weights = frozenset(t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers()))
        self.plans: dict[int, WeightPlan] = {}
        device = copier.device
        self._generator = (torch.cuda.default_generators[device.index or 0] if device.type == "cuda"
                           else torch.default_generator)

    def new_unit(self, microbatch: int, slice_: int, x: Any, target: Any, seed: int,
                 *, recompute: bool = False, chain: KVChain | None = None, split: bool = True) -> Unit:
        return Unit(self.module.index, microbatch, slice_, self._memory(microbatch, slice_), x, target, seed,
                    recompute, chain, split=split)

    def _memory(self, microbatch: int, slice_: int) -> UnitMemory:
        return UnitMemory(self.tracker, self._weights, f"({self.module.index},{microbatch},{slice_})",
                          self.copier.device.type)

    def _autocast(self) -> Any:
        return autocast_context(self.copier.device.type, self.autocast)

    # ------------------------------------------------------------------ forward passes

    def forward(self, unit: Unit) -> Any:
        """F: the unit's output (detached, to pass on) or, on the last stage, its scaled loss.
        A unit to be recomputed runs without a graph and keeps only its input."""
        if not unit.recompute:
            return self._forward_with_graph(unit)
        unit.memory.keep_input(tensor_leaves(unit.x))
        slices = self._slice_io(unit, leaves=False)
        self._seed(unit)
        with torch.no_grad(), self._autocast():
            out, _, _ = self.module.run(unit.x, slices)
            if self.module.is_last:
                unit.loss = self.loss_fn(out, unit.target) * self.scales[unit.slice]
        self._store_presents(unit, slices)
        return unit.loss if self.module.is_last else out

    def recompute(self, unit: Unit) -> None:
        """R: rebuild the graph of a unit whose F kept only its input (same seed, so the same dropout)."""
        self._forward_with_graph(unit)

    def _forward_with_graph(self, unit: Unit) -> Any:
        try:
            return self._forward_graph(unit)
        except RuntimeError as exc:
            # an in-place op on the leaf B stops at (the stage input, or the first layer's output on
            # the first stage): copy that leaf from now on (StageModule.copy_leaves) and run again
            if "leaf Variable that requires grad" not in str(exc) or self.module.copy_leaves:
                raise
            unit.memory.release()
            unit.memory = self._memory(unit.microbatch, unit.slice)
            self.module.copy_leaves = True
            return self._forward_graph(unit)

    def _forward_graph(self, unit: Unit) -> Any:
        first_stage = self.module.is_first
        cut = first_stage and unit.split
        inp, leaves = (unit.x, []) if first_stage else input_leaves(unit.x)
        if leaves and self.module.copy_leaves:
            inp = copied_leaves(inp)
        slices = self._slice_io(unit, leaves=True)
        self._seed(unit)
        with unit.memory.hooks(), self._autocast():
            out, unit.first, cut_leaves = self.module.run(inp, slices, cut=cut)
            if self.module.is_last:
                unit.loss = self.loss_fn(out, unit.target) * self.scales[unit.slice]
        if first_stage and slices and slices[0].present is not None:
            raise ValueError("the model's first layer carries keys/values across slices; the first stage's first "
                             "layer must not (its backward runs in W), so put an embedding first")
        unit.roots = [unit.loss] if self.module.is_last else grad_leaves(out)
        unit.inputs = list(cut_leaves if cut else leaves)
        unit.n_roots, unit.n_inputs = len(unit.roots), len(unit.inputs)
        if slices is not None:
            unit.input_slots = [(j, n, kv) for n, sl in enumerate(slices) if sl.past
                                for j in range(unit.slice) for kv in (0, 1)]
            unit.inputs += [slices[n].past[j][kv] for j, n, kv in unit.input_slots]
            if unit.slice < self.k - 1:  # later slices read this slice's K/V: B starts from them too
                unit.root_slots = [(n, kv) for n, sl in enumerate(slices) if sl.present is not None for kv in (0, 1)]
                unit.roots += [slices[n].present[kv] for n, kv in unit.root_slots]
            self._store_presents(unit, slices)
        return unit.loss if self.module.is_last else detach(out)

    def _slice_io(self, unit: Unit, *, leaves: bool) -> list[SliceIO] | None:
        """One `SliceIO` per slice-aware layer: the slice's offset and the earlier slices' K/V
        (as fresh leaves when the forward builds a graph, so that B returns their gradients)."""
        if self.k == 1:
            return None
        out = []
        for n in range(self.module.num_slice_layers):
            past = []
            for j in range(unit.slice):
                kv = unit.chain.presents[j][n]
                if kv is None:
                    continue
                past.append(tuple(t.detach().requires_grad_() for t in kv) if leaves else kv)
            offset = unit.slice * unit.x.shape[self.seq_dim] if self.offsets is None else self.offsets[unit.slice]
            out.append(SliceIO(offset, past))
        return out

    def _store_presents(self, unit: Unit, slices: list[SliceIO] | None) -> None:
        if slices is not None and unit.slice < self.k - 1:
            unit.chain.presents[unit.slice] = [
                None if sl.present is None else (sl.present[0].detach(), sl.present[1].detach()) for sl in slices
            ]

    def _seed(self, unit: Unit) -> None:
        if self.module.stochastic:
            self._generator.manual_seed(unit.seed)

    # ------------------------------------------------------------------ backward passes

    def _root_grads(self, unit: Unit, grad_out: list[Tensor] | Tensor | None) -> list[Tensor | None]:
        """The gradient of each root: ``grad_out`` (one per floating-point output tensor, or the
        tensor of a single-tensor output; None on the last stage, whose root is the loss), then
        the K/V gradients later slices sent."""
        if isinstance(grad_out, Tensor):
            grad_out = [grad_out]
        grads: list[Tensor | None] = [None] if grad_out is None else list(grad_out)
        if len(grads) != unit.n_roots:
            raise RuntimeError(f"stage {unit.stage}: {len(grads)} output gradient(s) arrived for "
                               f"{unit.n_roots} floating-point output tensor(s)")
        if unit.root_slots:
            sent = unit.chain.grads.pop(unit.slice, {})
            # a key or value no later slice reached (zero gradient) still needs a tensor to start from
            grads += [sent.get(slot) if slot in sent else torch.zeros_like(root)
                      for slot, root in zip(unit.root_slots, unit.roots[unit.n_roots:], strict=True)]
        return grads

    def backward_input(self, unit: Unit, grad_out: list[Tensor] | None) -> list[Tensor] | None:
        """B: the stage-input gradients (None on the first stage); frees what W will not read."""
        unit.memory.wait_reload()
        grads, unit.work = backward_input(unit.roots, self._root_grads(unit, grad_out), unit.inputs, self.params)
        self._pass_kv_grads(unit, grads)
        if unit.first is not None:
            unit.first_grad = grads[:unit.n_inputs]
        plan = self.plans.get(unit.slice)
        if plan is not None and plan.count == unit.memory.count:
            unit.memory.release(plan.keep)
        unit.memory.drop_input()
        return self._input_grad(unit, grads)

    def backward_weight(self, unit: Unit) -> None:
        """W: weight gradients into ``param.grad``; frees the rest of the unit."""
        backward_weight(unit.work)
        unit.work = None
        self._finish_first_layer(unit)
        unit.memory.release()

    def backward_full(self, unit: Unit, grad_out: list[Tensor] | None) -> list[Tensor] | None:
        """BW: B and W in one pass; returns the stage-input gradients (None on the first stage)."""
        unit.memory.wait_reload()
        grads = backward_full(unit.roots, self._root_grads(unit, grad_out), unit.inputs)
        self._pass_kv_grads(unit, grads)
        if unit.first is not None:
            unit.first_grad = grads[:unit.n_inputs]
            self._finish_first_layer(unit)
        unit.memory.release()
        unit.memory.drop_input()
        return self._input_grad(unit, grads)

    def _finish_first_layer(self, unit: Unit) -> None:
        """The first stage's first layer (its input is data): all of its backward is weight gradient."""
        if unit.first is not None:
            pairs = [(t, g) for t, g in zip(unit.first, unit.first_grad or [None] * len(unit.first), strict=True)
                     if g is not None and t.grad_fn is not None]
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
            unit.first = unit.first_grad = None

    def _pass_kv_grads(self, unit: Unit, grads: list[Tensor | None]) -> None:
        for (j, n, kv), grad in zip(unit.input_slots, grads[unit.n_inputs:], strict=True):
            unit.chain.add_grad(j, (n, kv), grad)

    def _input_grad(self, unit: Unit, grads: list[Tensor | None]) -> list[Tensor] | None:
        # an input leaf the stage did not use still gets a (zero) gradient: the sender expects one per leaf
        grad = None if self.module.is_first else [
            torch.zeros_like(t) if g is None else g
            for t, g in zip(unit.inputs[:unit.n_inputs], grads[:unit.n_inputs], strict=True)]
        unit.roots, unit.inputs, unit.root_slots, unit.input_slots = [], [], [], []
        if unit.chain is not None:  # later slices, whose F and R read this K/V, are past their B
            unit.chain.presents.pop(unit.slice, None)
        return grad

    # ------------------------------------------------------------------ copies

    def offload(self, unit: Unit) -> None:
        unit.memory.offload(self.copier)

    def reload(self, unit: Unit) -> None:
        unit.memory.reload(self.copier)

