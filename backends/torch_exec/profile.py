"""Profile a model's stages into an ``ir.Costs``: measured pass times and activation bytes.

`profile_costs` runs every stage alone, in this process, through the executor's own passes
(``backends.torch_exec.passes``: the same hooks, the same split backward, the same release
plan), so what it measures is what the executor will hold and do:

- times (ms, median of ``repeats`` after ``warmup``): F, B, W, fused BW, and R (a forward with
  the graph, after a graph-less F);
- bytes, from the saved-tensor accounting (``memory.MemoryTracker``): ``act`` held after F,
  ``wact`` still held after B (what W reads), ``inp`` what a recomputed unit keeps (its input).

With ``k > 1`` every slice is profiled in order (later slices attend over more keys and values,
so they cost more). Comm latency is not measured here: pass ``comm`` (`p2p_latency` measures one
boundary message between two ranks). With a ``placement``, ``static`` is the bytes of the weights
and their gradients on each rank (SGD keeps no other state). DESIGN.md names this module as the
profiled-model source of costs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from backends.torch_exec.executor import split_batch
from backends.torch_exec.memory import Copier, MemoryTracker
from backends.torch_exec.model import ModelSpec
from backends.torch_exec.passes import KVChain, StageRunner
from backends.torch_exec.stages import Boundary, StageModule, TensorMeta, boundary_shapes, build_stages
from backends.torch_exec.worker import first_microbatch, learn_weight_plans, ones_grads, probe_inputs, to_device
from ir import Costs, Placement, UnitCost

__all__ = ["p2p_latency", "profile_costs"]


def profile_costs(
    spec: ModelSpec, num_stages: int, *, microbatch_size: int, m: int = 1, k: int = 1,
    stage_layers: Sequence[int] | None = None, repeats: int = 5, warmup: int = 1, device: str = "cpu",
    comm: float = 0.0, placement: Placement | None = None,
) -> Costs:
    """Measured `Costs` of ``spec`` split into ``num_stages`` stages, per stage and slice.

    Args:
        microbatch_size: sequences per microbatch.
        m: microbatches per step (only scales the loss, as in a run with m microbatches).
        k: sequence slices per microbatch.
        repeats, warmup: timed and untimed repetitions of every pass.
        comm: p2p latency (ms) to record for every stage.
        placement: when given, ``static`` holds each rank's weight and gradient bytes.
    """
    dev = torch.device(device)
    modules = build_stages(spec, num_stages, range(num_stages), stage_layers=stage_layers, device=dev)
    inputs, targets = (to_device(t, dev) for t in spec.make_batch(microbatch_size, 0))
    xs, ys = split_batch(inputs, 1, k, spec.seq_dim), split_batch(targets, 1, k, spec.seq_dim)[0]
    shapes = boundary_shapes(spec, num_stages, first_microbatch(inputs, 1), k=k, stage_layers=stage_layers)
    rows = []
    for s, module in modules.items():
        stage_in = probe_inputs(s, shapes, xs, dev)
        out_meta = shapes[s] if s < num_stages - 1 else None
        rows.append(_profile_stage(module, spec, stage_in, ys, out_meta, m, k, repeats, warmup, comm))
    static = ()
    if placement is not None:
        static = tuple(float(sum(2 * p.numel() * p.element_size() for s in placement.stages_of(r)
                                 for p in modules[s].parameters())) for r in range(placement.p))
    return Costs(tuple(rows), static)


def _profile_stage(module: StageModule, spec: ModelSpec, xs: list, ys: list,
                   out_meta: list[Boundary] | None, m: int, k: int, repeats: int, warmup: int, comm: float
                   ) -> tuple[UnitCost, ...]:
    tracker = MemoryTracker()
    device = next(iter(module.parameters())).device
    runner = StageRunner(module, spec.loss_fn, 1.0 / (m * k), k, tracker, Copier(device), spec.seq_dim)
    learn_weight_plans(runner, xs, ys, out_meta)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples: list[dict[str, list[float]]] = [{} for _ in range(k)]
    for n in range(warmup + repeats):
        keep = n >= warmup
        _split_round(runner, xs, ys, out_meta, tracker, sync, samples if keep else None)
        _fused_round(runner, xs, ys, out_meta, sync, samples if keep else None)
        _recompute_round(runner, xs, ys, tracker, sync, samples if keep else None)
    for p in module.parameters():
        p.grad = None
    med = [{key: statistics.median(values) for key, values in row.items()} for row in samples]
    return tuple(UnitCost(f=r["f"] * 1e3, b=r["b"] * 1e3, w=r["w"] * 1e3, bw=r["bw"] * 1e3, r=r["r"] * 1e3,
                          act=r["act"], wact=min(r["wact"], r["act"]), inp=min(r["inp"], r["act"]), comm=comm)
                 for r in med)


def _units(runner: StageRunner, xs: list[Tensor], ys: list[Tensor], recompute: bool = False, split: bool = True
           ) -> list:
    chain = KVChain() if runner.k > 1 else None
    return [runner.new_unit(0, j, x, y, 0, recompute=recompute, chain=chain, split=split)
            for j, (x, y) in enumerate(zip(xs, ys, strict=True))]


def _grad(out_meta: list[Boundary] | None, slice_: int, device: torch.device) -> list[Tensor] | None:
    return None if out_meta is None else ones_grads(out_meta[slice_], device)


def _timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _put(samples, j: int, key: str, value: float) -> None:
    if samples is not None:
        samples[j].setdefault(key, []).append(value)


def _split_round(runner, xs, ys, out_meta, tracker, sync, samples) -> None:
    """F of every slice, then B in reverse slice order, then W: times, act and wact."""
    units = _units(runner, xs, ys)
    for unit in units:
        before = tracker.level
        _put(samples, unit.slice, "f", _timed(lambda u=unit: runner.forward(u), sync))
        _put(samples, unit.slice, "act", tracker.level - before)
    for unit in reversed(units):
        held = tracker.level
        grad = _grad(out_meta, unit.slice, runner.copier.device)
        _put(samples, unit.slice, "b", _timed(lambda u=unit, g=grad: runner.backward_input(u, g), sync))
        _put(samples, unit.slice, "freed_b", held - tracker.level)
    for unit in units:
        held = tracker.level
        _put(samples, unit.slice, "w", _timed(lambda u=unit: runner.backward_weight(u), sync))
        _put(samples, unit.slice, "wact", held - tracker.level)


def _fused_round(runner, xs, ys, out_meta, sync, samples) -> None:
    units = _units(runner, xs, ys, split=False)
    for unit in units:
        runner.forward(unit)
    for unit in reversed(units):
        grad = _grad(out_meta, unit.slice, runner.copier.device)
        _put(samples, unit.slice, "bw", _timed(lambda u=unit, g=grad: runner.backward_full(u, g), sync))


def _recompute_round(runner, xs, ys, tracker, sync, samples) -> None:
    """A graph-less F (keeps the input: ``inp``), then R (timed), then a fused backward."""
    units = _units(runner, xs, ys, recompute=True, split=False)
    for unit in units:
        before = tracker.level
        runner.forward(unit)
        _put(samples, unit.slice, "inp", tracker.level - before)
    for unit in reversed(units):
        _put(samples, unit.slice, "r", _timed(lambda u=unit: runner.recompute(u), sync))
        runner.backward_full(unit, None if runner.module.is_last else
                             [torch.ones_like(r) for r in unit.roots[:unit.n_roots]])


def p2p_latency(metas: Sequence[TensorMeta], *, rank: int, peer: int, repeats: int = 50, warmup: int = 5,
                device: str | torch.device = "cpu", group=None) -> float:
    """One boundary message's one-way time (ms) between this rank and ``peer``, measured: half the
    median round trip of a ping-pong, each leg posted as the executor's ``Mailbox`` posts a message
    (one ``batch_isend_irecv``, one op per tensor of ``metas``; the same tensors travel back, as a
    boundary's gradient does). This is what to pass as ``profile_costs(comm=...)``: ``ir.simulate``
    adds it to every cross-rank boundary edge. Both ranks call it (the lower one pings); both get the
    lower rank's measurement.

    Args:
        metas: the tensors of one boundary message (e.g. ``boundary_shapes(...)[s][j].tensors``).
        repeats, warmup: timed and untimed round trips.
        group: the process group holding both ranks (None: the world); ranks are its global ranks.
    """
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = [torch.ones(m.shape, dtype=m.dtype, device=dev) for m in metas]
    back = [torch.empty(m.shape, dtype=m.dtype, device=dev) for m in metas]

    def leg(op, tensors: list[Tensor]) -> None:
        for work in dist.batch_isend_irecv([dist.P2POp(op, t, peer, group, n) for n, t in enumerate(tensors)]):
            work.wait()

    pinger = rank < peer
    samples = []
    for n in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        if pinger:
            leg(dist.isend, out)
            leg(dist.irecv, back)
        else:
            leg(dist.irecv, back)
            leg(dist.isend, out)
        sync()
        if n >= warmup:
            samples.append(time.perf_counter() - start)
    result = torch.tensor([statistics.median(samples) * 1e3 / 2], dtype=torch.float64, device=dev)
    leg(dist.isend if pinger else dist.irecv, [result])
    return float(result.item())
