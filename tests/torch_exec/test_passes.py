"""One process, no comms: the pieces the executor is made of, each against plain autograd."""

import pytest
import torch

from backends.torch_exec.comms import Mailbox
from backends.torch_exec.executor import SpanRecord, StepRecord
from backends.torch_exec.memory import Copier, MemoryTracker, UnitMemory
from backends.torch_exec.model import tiny_gpt
from backends.torch_exec.passes import KVChain, StageRunner, unit_seed
from backends.torch_exec.profile import profile_costs
from backends.torch_exec.reference import reference_step
from backends.torch_exec.stages import StageCountError, boundary_shapes, build_stages, partition
from backends.torch_exec.trace import measured_timeline, write_run_trace
from backends.torch_exec.worker import learn_weight_plans
from ir import Action, Op, Placement
from ir.jsonio import loads
from synth.baselines import build

CPU = torch.device("cpu")


def test_partition_splits_the_body_evenly_and_pins_embedding_and_head():
    assert partition(6, 4, pre=1, post=1) == [range(0, 2), range(2, 3), range(3, 4), range(4, 6)]
    assert partition(7, 2, pre=1, post=1) == [range(0, 4), range(4, 7)]  # 5 blocks: 3 + 2
    assert partition(6, 2, pre=1, post=1, stage_layers=[1, 3]) == [range(0, 2), range(2, 6)]
    with pytest.raises(StageCountError, match="4 stages but the model has only 3 layer"):
        partition(5, 4, pre=1, post=1)
    with pytest.raises(StageCountError, match="must be positive and sum to the model's 4 body layers"):
        partition(6, 2, pre=1, post=1, stage_layers=[1, 2])


def _runner(stage, num_stages=3, dropout=0.0, k=1, m=1):
    spec = tiny_gpt(layers=num_stages, dropout=dropout)
    module = build_stages(spec, num_stages, [stage])[stage]
    tracker = MemoryTracker()
    return spec, StageRunner(module, spec.loss_fn, 1.0 / (m * k), k, tracker, Copier(CPU), spec.seq_dim), tracker


def _stage_input(spec, stage, num_stages=3):
    x, y = spec.make_batch(2, 0)
    if stage == 0:
        return x, y
    return torch.randn(2, spec.seq_len, 32, generator=torch.Generator().manual_seed(stage)), y


def _plain(runner, x, y, grad):
    """Plain autograd on a copy of the stage: input grad and weight grads."""
    module = runner.module
    leaf = x if runner.module.is_first else x.detach().requires_grad_()
    out = module(leaf)
    loss = runner.loss_fn(out, y) * runner.loss_scale if module.is_last else None
    (loss if loss is not None else out).backward(None if loss is not None else grad)
    grads = {n: p.grad.clone() for n, p in module.global_named_parameters()}
    module.zero_grad(set_to_none=True)
    return (None if module.is_first else leaf.grad), grads


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_split_backward_equals_plain_autograd_and_b_touches_no_weight(stage):
    spec, runner, tracker = _runner(stage)
    x, y = _stage_input(spec, stage)
    grad = torch.randn(2, spec.seq_len, 32) if stage < 2 else None
    expected_input, expected = _plain(runner, x, y, grad)
    unit = runner.new_unit(0, 0, x, y, 0)
    runner.forward(unit)
    got_input = runner.backward_input(unit, grad)
    assert all(p.grad is None for p in runner.module.parameters())  # B: input gradient only
    if stage == 0:
        assert got_input is None
    else:
        torch.testing.assert_close(got_input, [expected_input], rtol=1e-5, atol=1e-7)
    runner.backward_weight(unit)  # W, on every stage including the first
    for name, p in runner.module.global_named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7)
    assert tracker.level == 0


def test_memory_follows_the_op_table():
    """F holds act; B frees all but what W reads (wact, learnt by the probe); W frees the rest;
    a recomputed unit holds only its input until R; OFFLOAD/RELOAD move act off and back."""
    spec, runner, tracker = _runner(1)
    x, y = _stage_input(spec, 1)
    grad = torch.ones(2, spec.seq_len, 32)
    learn_weight_plans(runner, [x], [y], boundary_shapes(spec, 3, x.new_zeros(2, 16, dtype=torch.long))[1])
    assert tracker.level == 0 and all(p.grad is None for p in runner.module.parameters())

    unit = runner.new_unit(0, 0, x, y, 0)
    runner.forward(unit)
    act = tracker.level
    runner.backward_input(unit, grad)
    wact = tracker.level
    assert 0 < wact < act
    runner.backward_weight(unit)
    assert tracker.level == 0

    unit = runner.new_unit(0, 0, x, y, 0, recompute=True)
    runner.forward(unit)
    assert tracker.level == x.numel() * 4  # only the input
    runner.recompute(unit)
    assert tracker.level >= act
    runner.backward_full(unit, grad)
    assert tracker.level == 0

    unit = runner.new_unit(0, 0, x, y, 0)
    runner.forward(unit)
    runner.offload(unit)
    assert tracker.level == 0 and all(h.host is not None for h in unit.memory.handles)
    runner.reload(unit)
    assert tracker.level == act
    runner.backward_full(unit, grad)
    assert tracker.level == 0
    assert tracker.peak == act


def test_offloaded_and_recomputed_units_give_the_same_gradients():
    spec, runner, _ = _runner(1, dropout=0.3)
    x, y = _stage_input(spec, 1)
    grad = torch.randn(2, spec.seq_len, 32)
    results = []
    for mode in ("plain", "offload", "recompute"):
        unit = runner.new_unit(0, 0, x, y, seed=7, recompute=mode == "recompute")
        out = runner.forward(unit)
        if mode == "offload":
            runner.offload(unit)
            runner.reload(unit)
        if mode == "recompute":
            runner.recompute(unit)
        input_grad = runner.backward_full(unit, grad)
        results.append((out, input_grad, {n: p.grad.clone() for n, p in runner.module.global_named_parameters()}))
        runner.module.zero_grad(set_to_none=True)
    (out0, g0, w0), *others = results
    for out, g, w in others:
        torch.testing.assert_close(out, out0, rtol=0, atol=0)  # same seed, same dropout mask: bit for bit
        torch.testing.assert_close(g, g0, rtol=0, atol=0)
        for name in w0:
            torch.testing.assert_close(w[name], w0[name], rtol=0, atol=0)
    other = runner.forward(runner.new_unit(0, 0, x, y, seed=8))
    assert not torch.equal(other, out0)  # another seed draws another mask


def test_a_released_saved_tensor_is_reported_not_silently_used():
    spec, runner, _ = _runner(1)
    x, y = _stage_input(spec, 1)
    unit = runner.new_unit(0, 0, x, y, 0)
    runner.forward(unit)
    unit.memory.release()
    with pytest.raises(RuntimeError, match=r"unit \(1,0,0\): autograd needs saved tensor #\d+, which was released"):
        runner.backward_full(unit, torch.ones(2, spec.seq_len, 32))


def test_saved_tensors_off_the_units_device_are_neither_counted_nor_copied():
    """CUDA's attention kernels save CPU scalars (their RNG seed and offset): on a unit whose
    activations live on another device they are not activation memory and have no device-to-host
    copy, so they pass through the hooks as weights do (found on an H200: record_stream on a CPU
    tensor failed every offload). Here the CPU tensors play that part for a unit declared on cuda."""
    x = torch.randn(4, 8, requires_grad=True)
    nbytes = x.numel() * x.element_size()
    # sin saves x, the product saves sin(x) and x: three saved tensors on two storages
    for device, held, count in (("cpu", 2 * nbytes, 3), ("cuda", 0, 0)):
        tracker = MemoryTracker()
        memory = UnitMemory(tracker, frozenset(), "(0,0,0)", device)
        with memory.hooks():
            y = (x.sin() * x).sum()
        assert (tracker.level, memory.count) == (held, count)
        y.backward()  # what passed through is used as saved
        torch.testing.assert_close(x.grad, x.cos() * x + x.sin())
        x.grad = None


def test_slices_with_carried_keys_and_values_equal_the_whole_sequence():
    """k=4 slices of a middle stage, keys/values carried forward and their gradients backward,
    equal one whole-sequence pass: output and weight gradients."""
    spec, runner, _ = _runner(1, k=4)
    x, _ = _stage_input(spec, 1)
    grad = torch.randn_like(x)
    expected_out = runner.module(x)
    expected_out.backward(grad)
    expected = {n: p.grad.clone() for n, p in runner.module.global_named_parameters()}
    runner.module.zero_grad(set_to_none=True)
    chain = KVChain()
    units = [runner.new_unit(0, j, c.contiguous(), None, 0, chain=chain) for j, c in enumerate(x.chunk(4, dim=1))]
    outs = [runner.forward(u) for u in units]
    torch.testing.assert_close(torch.cat(outs, dim=1), expected_out.detach(), rtol=1e-5, atol=1e-6)
    for u, g in reversed(list(zip(units, grad.chunk(4, dim=1), strict=True))):
        runner.backward_input(u, g.contiguous())
    for u in units:
        runner.backward_weight(u)
    for name, p in runner.module.global_named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6)


def test_the_per_unit_reference_equals_the_whole_batch_without_dropout():
    spec = tiny_gpt(layers=2)
    whole = reference_step(spec, 8, num_stages=2, per_unit=False)
    for m, k in ((4, 1), (2, 4)):
        per_unit = reference_step(spec, 8, num_stages=2, m=m, k=k, per_unit=True)
        assert per_unit.loss == pytest.approx(whole.loss, rel=1e-6)
        for name, g in whole.grads.items():
            torch.testing.assert_close(per_unit.grads[name], g, rtol=1e-5, atol=1e-6)


def test_unit_seeds_are_stable_and_distinct():
    seeds = {unit_seed(0, step, s, i, j) for step in range(2) for s in range(4) for i in range(4) for j in range(2)}
    assert len(seeds) == 64 and unit_seed(0, 1, 2, 3, 0) == unit_seed(0, 1, 2, 3, 0)
    assert all(0 <= s < 2**63 for s in seeds)


def test_both_ends_of_a_message_compute_the_same_tag():
    schedule = build("seq1f1b", 2, 2, k=2)
    boxes = [Mailbox(r, schedule, [], CPU, 1.0) for r in range(2)]
    send, recv = Action(Op.SEND_F, 0, 1, 1), Action(Op.RECV_F, 1, 1, 1)
    assert boxes[0]._tag(send) == boxes[1]._tag(recv)
    back_send, back_recv = Action(Op.SEND_B, 1, 1, 1), Action(Op.RECV_B, 0, 1, 1)
    assert boxes[1]._tag(back_send) == boxes[0]._tag(back_recv) != boxes[0]._tag(send)


def test_profile_measures_bytes_and_times_per_stage_and_slice():
    spec = tiny_gpt(layers=2)
    costs = profile_costs(spec, 2, microbatch_size=2, k=2, repeats=1, warmup=0, placement=Placement.standard(2))
    assert costs.num_stages == 2 and costs.k == 2
    for row in costs.units:
        for u in row:
            assert 0 < u.wact < u.act and u.f > 0 and u.b > 0 and u.w > 0 and u.r > 0
        assert row[1].act > row[0].act  # the second slice attends over twice the keys and values
    assert costs.units[1][0].inp == 2 * 8 * 32 * 4  # a hidden-state slice: 2 x 8 tokens x 32 fp32
    params = [sum(p.numel() for p in st.parameters()) for st in build_stages(spec, 2, [0, 1]).values()]
    assert costs.static == tuple(2.0 * 4 * n for n in params)  # weights and gradients
    # copies were timed (a finite bandwidth) and, on CPU, hold the compute stream
    assert 0 < costs.copy_bandwidth < float("inf") and costs.copy_stream is False


def test_a_measured_step_becomes_a_timeline_and_a_chrome_trace(tmp_path):
    records = [
        StepRecord(None, 0.004, 100, [SpanRecord("0F0", 0.0, 0.001), SpanRecord("0SEND_F0", 0.001, 0.001),
                                      SpanRecord("0OFFLOAD0", 0.001, 0.002)], [(0.0, 0), (0.0005, 100)]),
        StepRecord(4.2, 0.004, 50, [SpanRecord("1RECV_F0", 0.0, 0.0), SpanRecord("1F0", 0.002, 0.003)],
                   [(0.0, 0), (0.0025, 50)]),
    ]
    timeline = measured_timeline(records)
    assert timeline.makespan == pytest.approx(3.0)  # ms
    assert timeline.busy == pytest.approx((1.0, 1.0)) and timeline.copy_busy == pytest.approx((1.0, 0.0))
    assert timeline.peak == (100.0, 50.0)
    path = write_run_trace(records, tmp_path / "run.json")
    events = __import__("json").loads(path.read_text())["traceEvents"]
    assert {e["name"] for e in events if e.get("ph") in ("X", "i")} == {"0F0", "0SEND_F0", "0OFFLOAD0", "1RECV_F0",
                                                                          "1F0"}
    with pytest.raises(FileExistsError):
        write_run_trace(records, path)
    assert loads  # the JSON form is what synth run reads
