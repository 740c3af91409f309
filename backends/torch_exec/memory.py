"""What autograd saves, per unit: saved-tensor hooks, release, offload, and byte accounting.

Every forward (F or R) of a unit runs under `UnitMemory.hooks`: each tensor autograd saves is
packed into a `Packed` handle the unit owns (parameters and buffers are passed through: they
are weights, not activations). Owning the handles is what lets the executor follow DESIGN.md's
memory table exactly, on CPU as on GPU:

- B releases the saved tensors W will not read (which ones is learnt once per stage and slice by
  a probe run: ``passes.WeightPlan``); W and BW release the rest; a released tensor is gone
  even though autograd's graph still holds the (now empty) handle.
- OFFLOAD copies the storages behind the unit's saved tensors to host memory (each storage once,
  however many saved tensors view it) and drops the device copies; RELOAD brings them back and
  rebuilds the views. On CUDA the copies go to pinned memory on a side stream (`Copier`); on
  CPU they are plain synchronous copies.

`MemoryTracker` counts the bytes held per rank over time, by storage (a storage saved by two
ops, or viewed twice, counts once). Its peak is what ``benchmarks/executor.py`` compares with
``ir.simulate``'s prediction; on CUDA the executor also reports ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["Copier", "MemoryTracker", "Packed", "UnitMemory"]


class MemoryTracker:
    """Bytes of activations a rank holds, by storage, with a curve over time and its peak.

    Attributes:
        level: bytes held now.
        peak: the highest level since the last `reset`.
        curve: ``(seconds since reset, level)`` after every change, when ``keep_curve`` (traces).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter, keep_curve: bool = True) -> None:
        self._clock = clock
        self.keep_curve = keep_curve
        self._live: dict[int, list[int]] = {}  # storage pointer -> [holders, bytes]
        self.level = 0
        self.peak = 0
        self._t0 = clock()
        self.curve: list[tuple[float, int]] = [(0.0, 0)]

    def reset(self) -> None:
        """Start a new curve (keeps what is held): the peak restarts from the current level."""
        self._t0 = self._clock()
        self.peak = self.level
        self.curve = [(0.0, self.level)]

    def hold(self, tensor: Tensor) -> int:
        """Count ``tensor``'s storage as held once more; returns the key to `drop` it with."""
        storage = tensor.untyped_storage()
        return self.hold_storage(storage.data_ptr(), storage)

    def hold_storage(self, key: int, storage: torch.UntypedStorage) -> int:
        entry = self._live.get(key)
        if entry is not None:
            entry[0] += 1
            return key
        nbytes = storage.nbytes()
        self._live[key] = [1, nbytes]
        if nbytes:
            self._change(nbytes)
        return key

    def drop(self, key: int) -> None:
        entry = self._live[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._live[key]
            if entry[1]:
                self._change(-entry[1])

    def _change(self, delta: int) -> None:
        self.level += delta
        if self.level > self.peak:
            self.peak = self.level
        if self.keep_curve:
            self.curve.append((self._clock() - self._t0, self.level))


class Packed:
    """One saved tensor of a unit: on the device (``tensor``), on the host (``host``), or released."""

    __slots__ = ("tensor", "host", "key", "index")

    def __init__(self, tensor: Tensor, key: int, index: int) -> None:
        self.tensor: Tensor | None = tensor
        self.host: _View | None = None
        self.key: int | None = key
        self.index = index


class Copier:
    """Moves saved tensors between the device and the host: pinned memory and a side stream on
    CUDA (the compute stream waits for a reload before the unit's backward), plain copies on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def to_host(self, tensors: list[Tensor]) -> list[Tensor]:
        if not self.cuda:
            return [t.clone() for t in tensors]
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        out = []
        with torch.cuda.stream(self.stream):
            for t in tensors:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                t.record_stream(self.stream)  # the device copy stays allocated until this copy ran
                out.append(host)
        return out

    def to_device(self, tensors: list[Tensor]) -> tuple[list[Tensor], Any]:
        """The device copies and an event the compute stream must wait for (None on CPU)."""
        if not self.cuda:
            return [t.clone() for t in tensors], None
        with torch.cuda.stream(self.stream):
            out = [t.to(self.device, non_blocking=True) for t in tensors]
            event = torch.cuda.Event()
            event.record(self.stream)
        compute = torch.cuda.current_stream(self.device)
        for t in out:
            t.record_stream(compute)
        return out, event


class UnitMemory:
    """The tensors autograd saved for one unit's forward, owned through saved-tensor hooks.

    Attributes:
        handles: every `Packed` handle, in the order the forward saved them.
        recording: while not None, the indices of the handles unpacked (how the probe learns
            which saved tensors W reads).
        kept: keys of the stage input's tensors a recomputed unit keeps instead of its activations.
    """

    def __init__(self, tracker: MemoryTracker, weights: frozenset[int], label: str, device: str | None = None
                 ) -> None:
        self._tracker = tracker
        self._weights = weights  # storage pointers of parameters and buffers: never packed
        # the device type whose memory the unit's activations take (None: every saved tensor's);
        # a saved tensor elsewhere, like the CPU seed and offset CUDA's attention kernels save, is
        # not activation memory there and cannot go through a device-to-host copy: passed through
        self._device = device
        self.label = label
        self.handles: list[Packed] = []
        self.recording: set[int] | None = None
        self.kept: list[int] | None = None
        self.reload_event: Any = None
        self.offloaded = False

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: Tensor) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._weights or (self._device is not None and tensor.device.type != self._device):
            return tensor
        handle = Packed(tensor, self._tracker.hold_storage(key, storage), len(self.handles))
        self.handles.append(handle)
        return handle

    def _unpack(self, packed: Any) -> Tensor:
        if not isinstance(packed, Packed):
            return packed
        if self.recording is not None:
            self.recording.add(packed.index)
        if packed.tensor is None:
            where = "offloaded to the host and not reloaded" if packed.host is not None else "released"
            raise RuntimeError(
                f"unit {self.label}: autograd needs saved tensor #{packed.index}, which was {where}; "
                "the schedule's order or the executor's W plan is wrong"
            )
        return packed.tensor

    @property
    def count(self) -> int:
        return len(self.handles)

    def keep_input(self, tensors: Tensor | Iterable[Tensor]) -> None:
        """Count the stage input (its tensors) a recomputed unit keeps (DESIGN.md: F holds ``inp``)."""
        self.kept = [self._tracker.hold(t) for t in ([tensors] if isinstance(tensors, Tensor) else tensors)]

    def drop_input(self) -> None:
        if self.kept is not None:
            for key in self.kept:
                self._tracker.drop(key)
            self.kept = None

    def release(self, keep: Iterable[int] = ()) -> None:
        """Let go of every saved tensor except the handles numbered in ``keep``."""
        keep = frozenset(keep)
        for handle in self.handles:
            if handle.index in keep:
                continue
            if handle.key is not None:
                self._tracker.drop(handle.key)
                handle.key = None
            handle.tensor = None
            handle.host = None

    def offload(self, copier: Copier) -> None:
        """Copy the storages behind the saved tensors to the host (each once, however many saved
        tensors view it) and drop the device copies."""
        live = [h for h in self.handles if h.tensor is not None]
        storages, index = _by_storage([h.tensor for h in live])
        hosts = copier.to_host(storages)
        for handle, n in zip(live, index, strict=True):
            t = handle.tensor
            self._tracker.drop(handle.key)
            handle.key = None
            handle.host = _View(hosts[n], t.dtype, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            handle.tensor = None
        self.offloaded = True

    def reload(self, copier: Copier) -> None:
        """Bring offloaded storages back to the device and rebuild the saved tensors as views of them."""
        away = [h for h in self.handles if h.host is not None]
        hosts, index = _unique([h.host.storage for h in away])
        back, self.reload_event = copier.to_device(hosts)
        for handle, n in zip(away, index, strict=True):
            handle.tensor = handle.host.on(back[n])
            handle.key = self._tracker.hold(handle.tensor)
            handle.host = None
        self.offloaded = False

    def wait_reload(self) -> None:
        """Make the compute stream wait for the reload copies (CUDA); a no-op on CPU."""
        if self.reload_event is not None:
            torch.cuda.current_stream().wait_event(self.reload_event)
            self.reload_event = None


class _View:
    """Where a saved tensor sits in a storage that was copied out as flat bytes."""

    __slots__ = ("storage", "dtype", "offset", "shape", "stride")

    def __init__(self, storage: Tensor, dtype: torch.dtype, offset: int, shape: tuple, stride: tuple) -> None:
        self.storage, self.dtype, self.offset, self.shape, self.stride = storage, dtype, offset, shape, stride

    def on(self, flat: Tensor) -> Tensor:
        """The saved tensor as a view of ``flat`` (the storage's bytes, wherever they are now)."""
        return torch.empty(0, dtype=self.dtype, device=flat.device).set_(
            flat.untyped_storage(), self.offset, self.shape, self.stride)


def _by_storage(tensors: list[Tensor]) -> tuple[list[Tensor], list[int]]:
    """Each distinct storage behind ``tensors`` as a flat byte tensor, and for each input its position."""
    seen: dict[int, int] = {}
    flats: list[Tensor] = []
    index = []
    for t in tensors:
        storage = t.untyped_storage()
        n = seen.get(storage.data_ptr())
        if n is None:
            n = seen[storage.data_ptr()] = len(flats)
            flats.append(torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage))
        index.append(n)
    return flats, index


def _unique(tensors: list[Tensor]) -> tuple[list[Tensor], list[int]]:
    seen: dict[int, int] = {}
    index = []
    for t in tensors:
        index.append(seen.setdefault(id(t), len(seen)))
    unique = {n: t for t, n in zip(tensors, index, strict=True)}
    return [unique[n] for n in range(len(unique))], index
