"""Stages, slices, static memory, comm and throughput of `synth.costs.build_problem`."""

from __future__ import annotations

import itertools

import pytest

from ir import Placement, ScheduleError, simulate, verify
from synth.baselines import build
from synth.costs import (
    CostModelError,
    Training,
    build_problem,
    hardware,
    partition_layers,
    preset,
    slice_bounds,
)
from synth.costs.formulas import block_params, embedding_params, head_params, head_work, layer_work

A100 = hardware("a100-40gb")


def _stage_seconds(spec, counts):
    rate = A100.flops_per_second(spec.dtype)
    block = layer_work(spec, 0, spec.seq_len)
    head = head_work(spec, 0, spec.seq_len)
    times = [n * (block.f + block.b + block.w) / rate for n in counts]
    times[-1] += (head.f + head.b + head.w) / rate
    return times


@pytest.mark.parametrize(("name", "stages"), [("llama3-8b", 4), ("llama3-8b", 6), ("gpt-1.5b", 5),
                                               ("llama2-7b", 3)])
def test_balanced_partition_is_the_min_max_split(name, stages):
    # Independent check: enumerate every split (middle stages >= 1 block) and take the best max.
    spec = preset(name, layers=10, seq_len=2048)
    counts = partition_layers(spec, A100, stages)
    assert sum(counts) == 10 and all(c >= 1 for c in counts[1:-1])
    best = min(
        max(_stage_seconds(spec, split))
        for split in itertools.product(range(11), repeat=stages)
        if sum(split) == 10 and all(c >= 1 for c in split[1:-1])
    )
    assert max(_stage_seconds(spec, counts)) == pytest.approx(best)


def test_a_big_vocabulary_head_takes_blocks_off_the_last_stage():
    counts = partition_layers(preset("llama3-8b"), A100, 8)
    assert counts[-1] < counts[0] and sum(counts) == 32
    assert partition_layers(preset("llama2-70b"), A100, 8) == (10,) * 8  # 32k vocab: even is optimal


def test_even_partition_refuses_a_remainder():
    assert partition_layers(preset("llama2-13b"), A100, 8, "even") == (5,) * 8
    with pytest.raises(CostModelError, match="40 layers do not split evenly over 6 stages"):
        partition_layers(preset("llama2-13b"), A100, 6, "even")
    with pytest.raises(CostModelError, match="cannot fill 8 stages"):
        partition_layers(preset("llama2-7b", layers=4), A100, 8)


def _forward(spec, t0, t1):
    return spec.layers * layer_work(spec, t0, t1).useful / 3 + head_work(spec, t0, t1).f


@pytest.mark.parametrize(("name", "k"), [("llama2-13b", 2), ("llama2-13b", 4), ("llama3-8b", 8), ("gpt-1.5b", 4)])
def test_balanced_slices_have_equal_forward_flops_and_are_longer_first(name, k):
    # Seq1F1B's computation-wise partition: equal forward FLOPs per slice (within 1%, the issue's
    # bar); causal attention makes later tokens dearer, so slices shrink.
    spec = preset(name)
    bounds = slice_bounds(spec, k)
    assert bounds[0] == 0 and bounds[-1] == spec.seq_len
    flops = [_forward(spec, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert max(flops) / min(flops) - 1 < 0.01
    lengths = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    assert all(x > y for x, y in zip(lengths, lengths[1:], strict=False))


def test_uniform_slices_and_bad_slice_counts():
    spec = preset("gpt-1.5b")
    assert slice_bounds(spec, 4, "uniform") == (0, 256, 512, 768, 1024)
    with pytest.raises(CostModelError, match="at most 1024"):
        slice_bounds(spec, 2000)
    with pytest.raises(CostModelError, match="positive integer"):
        slice_bounds(spec, 0)


def test_slice_costs_add_up_to_the_whole_sequence():
    # Causal pairs, linear FLOPs and bytes are additive over slices (no double counting), with a
    # fused attention kernel. inp too, once the K/V that slices 0..k-2 keep for the later ones
    # (2 e b t kv per layer) are taken out.
    spec, placement = preset("llama2-7b", layers=8), Placement.standard(4)
    whole = build_problem(spec, A100, placement, 4).costs
    problem = build_problem(spec, A100, placement, 4, k=4)
    sliced, bounds = problem.costs, problem.bounds
    for s in range(4):
        for field in ("f", "b", "w", "act", "inp"):
            total = sum(getattr(u, field) for u in sliced.units[s])
            if field == "inp":
                total -= problem.layers_per_stage[s] * 2 * 2 * spec.micro_batch * bounds[-2] * spec.kv_dim
            assert total == pytest.approx(getattr(whole.units[s][0], field), rel=1e-9), (s, field)


def test_static_memory_is_params_times_bytes_per_param():
    # Megatron's mixed-precision Adam: 2 (bf16 weights) + 4 (fp32 grads) + 12 (fp32 master, m, v);
    # the distributed optimizer (ZeRO-1) shards the 12: 6 + 12/dp.
    spec, placement = preset("llama2-13b"), Placement.standard(8)
    costs = build_problem(spec, A100, placement, 8).costs
    assert costs.static[3] == 5 * block_params(spec) * 18
    assert costs.static[0] == (5 * block_params(spec) + embedding_params(spec)) * 18
    assert costs.static[7] == (5 * block_params(spec) + head_params(spec)) * 18
    sharded = build_problem(spec, A100, placement, 8, training=Training(dp=4, zero1=True, reserved=1e9)).costs
    assert sharded.static[3] == 5 * block_params(spec) * (6 + 12 / 4) + 1e9


def test_tied_head_is_held_again_on_the_last_stage():
    spec = preset("gpt-1.5b")
    problem = build_problem(spec, A100, Placement.standard(2), 2)
    blocks = problem.layers_per_stage[1]
    assert problem.costs.static[1] == (blocks * block_params(spec) + 2 * spec.hidden + spec.vocab * spec.hidden) * 18


def test_comm_uses_nvlink_inside_a_node_and_the_network_across():
    hw = A100.with_(gpus_per_node=2)
    spec = preset("llama2-7b", layers=4)
    costs = build_problem(spec, hw, Placement.standard(4), 4).costs
    boundary = 2 * spec.tokens * spec.hidden
    assert costs.units[0][0].comm == pytest.approx(1e3 * (boundary / hw.p2p_bandwidth + hw.p2p_latency))
    assert costs.units[1][0].comm == pytest.approx(1e3 * (boundary / hw.internode_bandwidth + hw.p2p_latency))
    assert costs.units[3][0].comm == 0.0
    v = build_problem(spec.with_(layers=8), hw, Placement.v_shape(4), 4).costs
    assert v.units[3][0].comm == 0.0  # stages 3 and 4 share rank 3


def test_one_f_one_b_peak_memory_matches_the_closed_form_and_the_cap_error():
    # 1F1B keeps p - r microbatches in flight on rank r (Narayanan et al. 2021), so its peak is
    # static_r + (p - r) act_r. llama2-13b on 8 x A100-40GB at seq 4096 does not fit there.
    problem = build_problem(preset("llama2-13b"), A100, Placement.standard(8), 16, mem_cap=A100.memory)
    schedule = build("1f1b", 8, 16)
    timeline = simulate(schedule, problem.costs)
    for r in range(8):
        expected = problem.costs.static[r] + (8 - r) * problem.costs.units[r][0].act
        assert timeline.peak[r] == pytest.approx(expected)
    with pytest.raises(ScheduleError, match="memory"):
        verify(schedule, problem)


def test_throughput_figures():
    problem = build_problem(preset("llama2-7b"), A100, Placement.standard(4), 8)
    t = problem.throughput(2000.0)
    assert t.tokens_per_s == pytest.approx(8 * 4096 / 2.0)
    assert t.samples_per_s == pytest.approx(4.0)
    assert t.mfu == pytest.approx(8 * problem.model_flops / (2.0 * 4 * 312e12))
    # A bubble-free iteration at the achieved rate cannot beat the assumed efficiency.
    busy = sum(u.f + u.b + u.w for row in problem.costs.units for u in row) * 8 / 4
    assert problem.throughput(busy).mfu <= A100.efficiency
    with pytest.raises(ValueError, match="makespan"):
        problem.throughput(0.0)


def test_bad_problem_inputs():
    spec = preset("llama2-7b")
    with pytest.raises(CostModelError, match="microbatches"):
        build_problem(spec, A100, Placement.standard(4), 0)
    with pytest.raises(CostModelError, match="mem_cap"):
        build_problem(spec, A100, Placement.standard(4), 4, mem_cap=-1.0)
    with pytest.raises(CostModelError, match="dp"):
        Training(dp=0)
