"""Profile a model's stages into an ``ir.Costs``: measured pass times and activation bytes.

`profile_costs` runs every stage alone, in this process, through the executor's own passes
(``backends.torch_exec.passes``: the same hooks, the same split backward, the same release
plan), so what it measures is what the executor will hold and do:

- times (ms, median (or mean) of ``repeats`` after ``warmup``): F, B, W, fused BW, and R (a forward with
  the graph, after a graph-less F);
- bytes, from the saved-tensor accounting (``memory.MemoryTracker``): ``act`` held after F,
  ``wact`` still held after B (what W reads), ``inp`` what a recomputed unit keeps (its input);
- copies: ``copy_bandwidth`` from timed OFFLOADs and RELOADs of every unit's saved tensors (the
  executor's ``Copier``), with ``copy_stream`` False on CPU, where the thread that runs the passes
  makes the copies, and True on CUDA (a side stream).

With ``k > 1`` every slice is profiled in order (later slices attend over more keys and values,
so they cost more). Comm latency is not measured here: pass ``comm`` (`p2p_latency` measures one
boundary message between two ranks, and the host time of posting it). With a ``placement``,
``static`` is the bytes of the weights and their gradients on each rank (SGD keeps no other
state). DESIGN.md names this module as the profiled-model source of costs.

`costs_from_run` (``backends.torch_exec.run_costs``, re-exported here) is the other source: the
pass and post times a real run of a schedule recorded.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from backends.torch_exec.comms import post_batch
from backends.torch_exec.executor import split_batch
from backends.torch_exec.memory import Copier, MemoryTracker
from backends.torch_exec.model import ModelSpec
from backends.torch_exec.passes import KVChain, StageRunner
from backends.torch_exec.run_costs import costs_from_run, post_batches, sampled_makespans  # run-based source
from backends.torch_exec.stages import Boundary, StageModule, TensorMeta, boundary_shapes, build_stages
from backends.torch_exec.worker import first_microbatch, learn_weight_plans, ones_grads, probe_inputs, to_device
from ir import Costs, Placement, UnitCost

__all__ = ["costs_from_run", "one_way_latencies", "p2p_costs", "p2p_latency", "post_batches", "profile_costs",
           "sampled_makespans"]


def profile_costs(
    spec: ModelSpec, num_stages: int, *, microbatch_size: int, m: int = 1, k: int = 1,
    stage_layers: Sequence[int] | None = None, repeats: int = 5, warmup: int = 1, device: str = "cpu",
    comm: float = 0.0, post: float = 0.0, placement: Placement | None = None, evict: int = 16 << 20,
    estimate: str = "median", fed: bool = True,
) -> Costs:
    """Measured `Costs` of ``spec`` split into ``num_stages`` stages, per stage and slice.

    Args:
        microbatch_size: sequences per microbatch.
        m: microbatches per step (only scales the loss, as in a run with m microbatches).
        k: sequence slices per microbatch.
        repeats, warmup: timed and untimed repetitions of every pass.
        comm: p2p latency (ms) to record for every stage.
        post: host time (ms) to post one message (``UnitCost.post``), for every stage.
        placement: when given, ``static`` holds each rank's weight and gradient bytes.
        evict: bytes swept through the caches before each timed pass on CPU (0: none). A pass in a
            pipeline starts after other passes and gloo's threads have had the core, on cold
            caches; timed back to back it runs hot (seq1f1b's k = 4 slices simulated 1.4-1.7x faster
            without the sweep, benchmarks/step_time.py). The default is four times a 4 MiB L2.
        estimate: ``"median"`` (a pass's typical time) or ``"mean"`` of the ``repeats`` (its expected
            time: a step is a sum of passes, so on a machine whose cores are sometimes taken, by a
            hypervisor's steal for one, the mean is what predicts a step's expected time).
        fed: on CUDA, time each pass as a pipeline runs it, with the GPU still busy when the host
            starts it (a sleep kernel ahead, so the host enqueues the pass's kernels before the GPU
            reaches them): its GPU time between two events, or its host time where that is longer.
            False: between two synchronizations, the launch and sync latencies in (on an H200 the
            measured steps of 1- and 2-stage pipelines came out 5.7-18.5% below their simulation
            on such profiles, against within 0.4% fed for all but po-h, benchmarks/results/gpu.md).
            OFFLOAD/RELOAD, on their side stream, are always timed between synchronizations. No
            effect on CPU.
    """
    pick = _estimator(estimate)
    dev = torch.device(device)
    modules = build_stages(spec, num_stages, range(num_stages), stage_layers=stage_layers, device=dev)
    inputs, targets = (to_device(t, dev) for t in spec.make_batch(microbatch_size, 0))
    xs, ys = split_batch(inputs, 1, k, spec.seq_dim), split_batch(targets, 1, k, spec.seq_dim)[0]
    shapes = boundary_shapes(spec, num_stages, first_microbatch(inputs, 1), k=k, stage_layers=stage_layers)
    rows, copied, copy_time = [], 0.0, 0.0
    for s, module in modules.items():
        stage_in = probe_inputs(s, shapes, xs, dev)
        out_meta = shapes[s] if s < num_stages - 1 else None
        row, copy_ms = _profile_stage(module, spec, stage_in, ys, out_meta, m, k, repeats, warmup, comm, post, evict,
                                      pick, fed)
        rows.append(row)
        copied += sum(u.act for u in row)
        copy_time += copy_ms
    static = ()
    if placement is not None:
        static = tuple(float(sum(2 * p.numel() * p.element_size() for s in placement.stages_of(r)
                                 for p in modules[s].parameters())) for r in range(placement.p))
    bandwidth = copied / copy_time if copied > 0 and copy_time > 0 else math.inf
    return Costs(tuple(rows), static, copy_bandwidth=bandwidth, copy_stream=dev.type == "cuda")


def _profile_stage(module: StageModule, spec: ModelSpec, xs: list, ys: list,
                   out_meta: list[Boundary] | None, m: int, k: int, repeats: int, warmup: int, comm: float,
                   post: float, evict: int, pick, fed: bool) -> tuple[tuple[UnitCost, ...], float]:
    """The stage's costs per slice and the time (ms) of one OFFLOAD and one RELOAD of every slice, summed."""
    tracker = MemoryTracker()
    device = next(iter(module.parameters())).device
    runner = StageRunner(module, spec.loss_fn, 1.0 / (m * k), k, tracker, Copier(device), spec.seq_dim)
    learn_weight_plans(runner, xs, ys, out_meta)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timer = _Timer(sync, evict if device.type == "cpu" else 0, fed and device.type == "cuda")
    samples: list[dict[str, list[float]]] = [{} for _ in range(k)]
    for n in range(warmup + repeats):
        keep = n >= warmup
        _split_round(runner, xs, ys, out_meta, tracker, timer, samples if keep else None)
        _fused_round(runner, xs, ys, out_meta, timer, samples if keep else None)
        _recompute_round(runner, xs, ys, tracker, timer, samples if keep else None)
        _copy_round(runner, xs, ys, out_meta, timer, samples if keep else None)
    for p in module.parameters():
        p.grad = None
    med = [{key: pick(values) for key, values in row.items()} for row in samples]
    units = tuple(UnitCost(f=r["f"] * 1e3, b=r["b"] * 1e3, w=r["w"] * 1e3, bw=r["bw"] * 1e3, r=r["r"] * 1e3,
                           act=r["act"], wact=min(r["wact"], r["act"]), inp=min(r["inp"], r["act"]), comm=comm,
                           post=post)
                  for r in med)
    return units, sum((r["offload"] + r["reload"]) / 2 for r in med) * 1e3


_ESTIMATES = {"median": statistics.median, "mean": statistics.fmean}


def _estimator(name: str):
    try:
        return _ESTIMATES[name]
    except KeyError:
        raise ValueError(f"estimate must be one of {', '.join(map(repr, _ESTIMATES))}, got {name!r}") from None


def _units(runner: StageRunner, xs: list[Tensor], ys: list[Tensor], recompute: bool = False, split: bool = True
           ) -> list:
    chain = KVChain() if runner.k > 1 else None
    return [runner.new_unit(0, j, x, y, 0, recompute=recompute, chain=chain, split=split)
            for j, (x, y) in enumerate(zip(xs, ys, strict=True))]


def _grad(out_meta: list[Boundary] | None, slice_: int, device: torch.device) -> list[Tensor] | None:
    return None if out_meta is None else ones_grads(out_meta[slice_], device)


# the longest head start (ms) a fed CUDA timing gives the host before the GPU reaches the pass
LEAD_CAP_MS = 200.0


class _Timer:
    """Times one pass: waits for the device, sweeps ``evict`` bytes through the CPU caches (so the
    pass starts as cold as in a pipeline, where other microbatches' and stages' passes and the
    comm threads ran since), then times the pass alone. ``fed`` (CUDA): the pass's GPU time with
    the host ahead of the GPU (`profile_costs`); a ``copy`` is always timed between synchronizations."""

    def __init__(self, sync, evict: int, fed: bool = False) -> None:
        self.sync = sync
        self.sweep = torch.zeros(evict // 4) if evict > 0 else None
        self.fed = fed
        if fed:
            self.cycles_per_ms = _sleep_rate()
            self.lead_ms = 20.0  # the head start the host gets; grows to twice the longest host time seen

    def __call__(self, fn, copy: bool = False) -> float:
        if self.sweep is not None:
            self.sweep.add_(1.0)
        if copy or not self.fed:
            return _timed(fn, self.sync)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.sync()
        torch.cuda._sleep(int(self.lead_ms * self.cycles_per_ms))
        start.record()
        began = time.perf_counter()
        fn()
        host = time.perf_counter() - began
        end.record()
        end.synchronize()
        gpu = start.elapsed_time(end) / 1e3
        if host * 1e3 >= self.lead_ms:  # the pass itself waited for the GPU: its host time holds the sleep
            return gpu
        self.lead_ms = min(max(self.lead_ms, 2e3 * host), LEAD_CAP_MS)
        return max(gpu, host)


def _sleep_rate() -> float:
    """GPU cycles per ms of ``torch.cuda._sleep`` (its argument is in cycles), measured."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 20_000_000
    for _ in range(2):  # the first wakes the clocks up
        torch.cuda.synchronize()
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
    return cycles / start.elapsed_time(end)


def _timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _put(samples, j: int, key: str, value: float) -> None:
    if samples is not None:
        samples[j].setdefault(key, []).append(value)


def _split_round(runner, xs, ys, out_meta, tracker, timer, samples) -> None:
    """F of every slice, then B in reverse slice order, then W: times, act and wact."""
    units = _units(runner, xs, ys)
    for unit in units:
        before = tracker.level
        _put(samples, unit.slice, "f", timer(lambda u=unit: runner.forward(u)))
        _put(samples, unit.slice, "act", tracker.level - before)
    for unit in reversed(units):
        held = tracker.level
        grad = _grad(out_meta, unit.slice, runner.copier.device)
        _put(samples, unit.slice, "b", timer(lambda u=unit, g=grad: runner.backward_input(u, g)))
        _put(samples, unit.slice, "freed_b", held - tracker.level)
    for unit in units:
        held = tracker.level
        _put(samples, unit.slice, "w", timer(lambda u=unit: runner.backward_weight(u)))
        _put(samples, unit.slice, "wact", held - tracker.level)


def _fused_round(runner, xs, ys, out_meta, timer, samples) -> None:
    units = _units(runner, xs, ys, split=False)
    for unit in units:
        runner.forward(unit)
    for unit in reversed(units):
        grad = _grad(out_meta, unit.slice, runner.copier.device)
        _put(samples, unit.slice, "bw", timer(lambda u=unit, g=grad: runner.backward_full(u, g)))


def _recompute_round(runner, xs, ys, tracker, timer, samples) -> None:
    """A graph-less F (keeps the input: ``inp``), then R (timed), then a fused backward."""
    units = _units(runner, xs, ys, recompute=True, split=False)
    for unit in units:
        before = tracker.level
        runner.forward(unit)
        _put(samples, unit.slice, "inp", tracker.level - before)
    for unit in reversed(units):
        _put(samples, unit.slice, "r", timer(lambda u=unit: runner.recompute(u)))
        runner.backward_full(unit, None if runner.module.is_last else
                             [torch.ones_like(r) for r in unit.roots[:unit.n_roots]])


def _copy_round(runner, xs, ys, out_meta, timer, samples) -> None:
    """F, then OFFLOAD and RELOAD of its saved tensors (each timed), then a fused backward."""
    units = _units(runner, xs, ys, split=False)
    for unit in units:
        runner.forward(unit)
    for unit in reversed(units):
        _put(samples, unit.slice, "offload", timer(lambda u=unit: runner.offload(u), copy=True))
        _put(samples, unit.slice, "reload", timer(lambda u=unit: runner.reload(u), copy=True))
        runner.backward_full(unit, _grad(out_meta, unit.slice, runner.copier.device))


def p2p_latency(metas: Sequence[TensorMeta], *, rank: int, peer: int, repeats: int = 50, warmup: int = 5,
                device: str | torch.device = "cpu", group=None) -> float:
    """One boundary message's one-way time (ms) to a waiting receiver between this rank and ``peer``:
    `p2p_costs`' first value."""
    return p2p_costs(metas, rank=rank, peer=peer, repeats=repeats, warmup=warmup, device=device, group=group)[0]


def p2p_costs(metas: Sequence[TensorMeta], *, rank: int, peer: int, repeats: int = 50, warmup: int = 5,
              device: str | torch.device = "cpu", group=None, estimate: str = "median") -> tuple[float, float]:
    """``(comm, post)`` in ms for one boundary message between this rank and ``peer``, each message
    posted as the executor's ``Mailbox`` posts it (one ``batch_isend_irecv``, one op per tensor of
    ``metas``; the same tensors travel back, as a boundary's gradient does), in a pipeline's
    conditions: the sender posts between two passes of its own while the receiver, its receive
    posted early (as ``ir.lower`` posts them on gloo), has finished its pass and waits.

    ``comm`` is what ``ir.simulate`` adds to a SEND's post end before the message is there
    (`profile_costs(comm=...)`): the time from the end of the sender's post to the return of the
    waiting receiver's wait, measured both ways (`_one_way`) so that the two ranks' clocks need not
    agree: the mean of the two directions' stamp differences cancels their offset (NTP's rule).
    Not half a round trip, as before: a round trip holds both sides' posts, which the simulation
    charges separately, and with both ranks idle in their waits some ping-pongs take time slices
    (on a 2-core VM, half the median round trip of 20 was 0.08-0.2 ms in most runs and 1.4-2.0 ms
    in some; this measurement gave 0.003-0.027 ms in every run, as the executor's own spans show:
    a waiting consumer had its message a median 0.006-0.043 ms before the post ended). ``post``, the
    time inside ``batch_isend_irecv``, is ``UnitCost.post``, the host time a SEND or RECV of a
    lowered schedule takes, timed between two spells of compute (`_loaded_posts`). Both ranks call
    it; both get the lower rank's values. `costs_from_run` measures posts in a real run.

    Args:
        metas: the tensors of one boundary message (e.g. ``boundary_shapes(...)[s][j].tensors``).
        repeats, warmup: timed and untimed messages each way.
        group: the process group holding both ranks (None: the world); ranks are its global ranks.
        estimate: ``"median"`` or ``"mean"`` of the samples, for both values (`profile_costs`).
    """
    pick = _estimator(estimate)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = [torch.ones(m.shape, dtype=m.dtype, device=dev) for m in metas]
    back = [torch.empty(m.shape, dtype=m.dtype, device=dev) for m in metas]
    pinger = rank < peer
    one_way = _one_way(out, back, peer, group, pinger, repeats, warmup, sync)  # the pinger's samples
    # a message can be there before its post returns (the post yields the core to gloo's I/O thread)
    comm = max(0.0, pick(one_way)) if pinger else 0.0
    posts = _loaded_posts(out, back, peer, group, pinger, repeats, warmup, sync)
    result = torch.tensor([comm * 1e3, pick(posts) * 1e3 if pinger else 0.0],
                          dtype=torch.float64, device=dev)  # the peer's values are overwritten by the pinger's
    for work in _post(dist.isend if pinger else dist.irecv, [result], peer, group):
        work.wait()
    return float(result[0].item()), float(result[1].item())


# Compute (s) around each timed message of `_one_way`: a rank sends, computes _AFTER, posts its
# receive for the next message and computes _RECEIVER_BEFORE, while its peer, from the message's
# arrival, computes _SENDER_BEFORE and sends: the longer spell makes the receiver wait when the
# message leaves, as a consumer does in a pipeline (equal spells let the two race)
_SENDER_BEFORE, _AFTER, _RECEIVER_BEFORE = 1.5e-3, 0.5e-3, 0.25e-3


def _one_way(out: list[Tensor], back: list[Tensor], peer: int, group, pinger: bool, repeats: int, warmup: int,
             sync) -> list[float]:
    """One-way times (s) of one message to a waiting receiver, one per round of a message each way
    (the pinger's first): in each, the sender computes, posts (its stamp: when the post returns),
    computes again (the next pass) and waits for its send; the receiver posted its receive before,
    computes less and waits (its stamp: when the wait returns). Stamp differences of the two
    directions are ``latency + offset`` and ``latency - offset`` (``offset``: the receiver's clock
    less the sender's), so each round's mean of the two is the latency (both ways equally fast),
    whatever the clocks' offset. The pinger gets the samples, the peer an empty list. The spells
    of compute multiply 128 x 128 matrices (tens of us each, so a spell ends on time; one product
    of `_loaded_posts`' 1 MiB matrices takes about 3 ms on one core)."""
    work = torch.ones(128, 128, device=out[0].device)
    stamps = [0.0] * (2 * (warmup + repeats))
    for n in range(len(stamps)):
        sending = (n % 2 == 0) == pinger
        if sending:
            _busy(_SENDER_BEFORE, work)
            works = _post(dist.isend, out if pinger else back, peer, group)
            stamps[n] = time.perf_counter()
            _busy(_AFTER, work)
        else:
            works = _post(dist.irecv, back if pinger else out, peer, group)
            _busy(_RECEIVER_BEFORE, work)
        for w in works:
            w.wait()
        sync()
        if not sending:
            stamps[n] = time.perf_counter()
    mine = torch.tensor(stamps, dtype=torch.float64, device=out[0].device)  # NCCL moves device tensors only
    theirs = torch.empty_like(mine)
    for w in post_batch([dist.P2POp(dist.isend, mine, peer, group), dist.P2POp(dist.irecv, theirs, peer, group)]):
        w.wait()
    return one_way_latencies(stamps, theirs.cpu().tolist(), warmup) if pinger else []


def one_way_latencies(mine: Sequence[float], theirs: Sequence[float], warmup: int = 0) -> list[float]:
    """Per round, the one-way time of a message from the stamps of `_one_way`: ``mine`` the
    pinger's (even entries: when its send's post returned; odd: when its receive's wait returned),
    ``theirs`` the peer's (even: arrivals; odd: post ends), each on its own clock. A round's two
    stamp differences are ``latency + offset`` and ``latency - offset``; their mean is the latency,
    whatever the offset between the clocks. The first ``warmup`` rounds are left out."""
    if len(mine) != len(theirs) or len(mine) % 2:
        raise ValueError(f"stamps of {len(mine)} and {len(theirs)} messages: both sides need the same even count")
    return [((theirs[n] - mine[n]) + (mine[n + 1] - theirs[n + 1])) / 2 for n in range(2 * warmup, len(mine), 2)]


def _post(op, tensors: list[Tensor], peer: int, group) -> list:
    """One message posted as the executor's ``Mailbox`` posts it: one ``batch_isend_irecv``, one op
    (tag) per tensor."""
    return post_batch([dist.P2POp(op, t, peer, group, n) for n, t in enumerate(tensors)])


def _busy(seconds: float, work: Tensor) -> None:
    """Compute (matmuls of ``work`` with itself) for about ``seconds``, as a pass would."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        torch.mm(work, work)


def _loaded_posts(out: list[Tensor], back: list[Tensor], peer: int, group, pinger: bool, repeats: int,
                  warmup: int, sync) -> list[float]:
    """The pinger's post times (s) of a send and of a receive, taking turns, each posted as in a
    pipeline: between two passes of its own while the peer computes, the receive posted before the
    matching send (as ``ir.lower`` posts them on gloo). The spells of compute work on 1 MiB
    matrices, more than a core's L2 cache holds, as a pass's activations and weights do: a post
    right after a pass runs on cold caches, which is most of why it costs 2-3x a post in a
    ping-pong loop (measured on gloo: 0.18-0.27 against 0.07-0.14 ms with 64 x 64 matrices).
    The peer's times are not kept."""
    work = torch.ones(512, 512, device=out[0].device)
    posts: list[float] = []

    def post(op, tensors: list[Tensor]) -> tuple[list, float]:
        start = time.perf_counter()
        works = _post(op, tensors, peer, group)
        return works, time.perf_counter() - start

    for n in range(2 * (warmup + repeats)):
        sending = n % 2 == 0  # the pinger's op this turn: a send, then a receive
        if pinger:
            _busy(5e-4, work)  # the end of a pass
            works, took = post(dist.isend if sending else dist.irecv, out if sending else back)
            _busy(1e-3, work)  # the next pass
            if n >= 2 * warmup:
                posts.append(took)
        elif sending:  # the pinger sends: our receive is already posted while we compute
            works, _ = post(dist.irecv, back)
            _busy(2e-3, work)
        else:  # the pinger receives (posted early): we send after a pass
            _busy(1e-3, work)
            works, _ = post(dist.isend, out)
            _busy(1e-3, work)
        for w in works:
            w.wait()
        sync()
    return posts
