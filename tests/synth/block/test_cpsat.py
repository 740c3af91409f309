"""The building-block model and its tiling, against known optima with unit costs."""

from __future__ import annotations

import pytest

from ir import Costs, Op, Placement, simulate, verify
from synth.baselines import build
from synth.block.cpsat import BlockError, BlockOptions, solve_block
from synth.block.tile import tile


@pytest.mark.parametrize("p", [2, 3, 4])
def test_fused_backward_recovers_one_f_one_b(p):
    # With F = 1 and BW = 2 per stage the stable phase needs T = F + BW = 3 on every rank; the
    # tiled schedule is 1F1B: makespan 3 (m + p - 1) and peak p - r activations on rank r
    # (Narayanan et al. 2021).
    costs = Costs.uniform(p, f=1, b=1, w=1, act=1)
    block = solve_block(costs, Placement.standard(p), BlockOptions(split_backward=False))
    assert block.period * block.tick == 3 and block.proven
    for m in (1, p, 2 * p + 1):
        schedule = tile(block, Placement.standard(p), m)
        verify(schedule)
        timeline = simulate(schedule, costs)
        assert timeline.makespan == 3 * (m + p - 1)
        assert timeline.peak == tuple(float(min(m, p - r)) for r in range(p))


@pytest.mark.parametrize("p", [2, 4])
def test_split_backward_reaches_the_zero_bubble_stable_phase(p):
    # Split backward at 1F1B's memory: T = F + B + W (no idle in the stable phase), and the
    # tiled schedule never holds more than 1F1B does.
    costs = Costs.uniform(p, f=1, b=1, w=1, act=1)
    one_f_one_b = simulate(build("1f1b", p, 4 * p), costs)
    block = solve_block(costs, Placement.standard(p), BlockOptions(mem_cap=float(p)))
    assert block.period * block.tick == 3
    timeline = simulate(tile(block, Placement.standard(p), 4 * p), costs)
    assert max(timeline.peak) <= max(one_f_one_b.peak)
    assert timeline.makespan <= one_f_one_b.makespan


def test_v_shape_under_v_min_memory_is_no_slower_than_v_min():
    # p = 4, V placement, each half-stage F = B = W = 0.5 and act 0.5 (one full stage = 1).
    costs = Costs.uniform(8, f=0.5, b=0.5, w=0.5, act=0.5)
    v_min = simulate(build("v-min", 4, 16), costs)
    cap = max(v_min.peak)
    block = solve_block(costs, Placement.v_shape(4), BlockOptions(mem_cap=cap))
    schedule = tile(block, Placement.v_shape(4), 16)
    verify(schedule, costs, mem_cap=cap)
    assert simulate(schedule, costs).makespan <= v_min.makespan


def test_recompute_is_chosen_when_the_cap_binds_and_pays():
    # p = 2, fused backward, act 1 and input 0.1 per stage. Keeping everything, rank 0 holds two
    # microbatches at T = 3, over a cap of 1.5; keeping one (T = 6) is slower than recomputing
    # stage 0 (R adds one F: T = 4 on rank 0). Rank 0 then peaks at R's start: that unit's act 1
    # (its input is part of it, DESIGN.md's memory table) plus the next microbatch's input 0.1.
    costs = Costs.uniform(2, f=1, b=1, w=1, act=1, inp=0.1)
    keep = solve_block(costs, Placement.standard(2), BlockOptions(split_backward=False, mem_cap=1.5))
    assert keep.period * keep.tick == 6 and keep.recompute == (False, False)
    block = solve_block(costs, Placement.standard(2), BlockOptions(split_backward=False, mem_cap=1.5,
                                                                   recompute=True))
    assert block.period * block.tick == 4 and block.recompute == (True, False)
    assert block.memory == pytest.approx((1 + 0.1, 1))
    schedule = tile(block, Placement.standard(2), 6)
    verify(schedule, costs, mem_cap=1.5)
    assert simulate(schedule, costs).peak == pytest.approx(block.memory)  # the model's peak is the simulator's


def test_a_cap_below_every_block_is_refused():
    costs = Costs.uniform(2, f=1, b=1, w=1, act=1)
    with pytest.raises(BlockError, match="no building block fits"):
        solve_block(costs, Placement.standard(2), BlockOptions(mem_cap=0.5))


def test_recompute_with_slices_fits_where_keeping_cannot():
    # k = 2 slices of act 0.5 (wact = act), inp 0.05, cap 0.6. Keeping everything, the last stage
    # holds both slices of a microbatch at once (slice 1's F follows slice 0's, and slice 1's B
    # comes first): 1.0 > 0.6, so no block fits. Recomputing slice 0 (it keeps 0.05 plus its
    # K/V, counted in inp) holds at most 0.05 + 0.5 while slice 1 runs, and R re-adds 0.45 only
    # once slice 1 is freed: 0.55 <= 0.6. Its period is at least the load bound 2 slices x (F + B + W)
    # = 3 per rank (the cap also keeps microbatches from overlapping much, so it is longer).
    costs = Costs.uniform(2, k=2, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.5, inp=0.05)
    with pytest.raises(BlockError, match="no building block fits"):
        solve_block(costs, Placement.standard(2), BlockOptions(mem_cap=0.6))
    block = solve_block(costs, Placement.standard(2), BlockOptions(mem_cap=0.6, recompute=True))
    assert block.period * block.tick >= 3 and any(block.recompute)
    schedule = tile(block, Placement.standard(2), 4, k=2)
    assert Op.R in schedule.ops_used()
    verify(schedule, costs, mem_cap=0.6)


def test_slices_follow_the_slice_order():
    costs = Costs.uniform(4, k=2, f=0.5, b=0.5, w=0.5, act=0.5)
    block = solve_block(costs, Placement.standard(4), BlockOptions())
    assert block.period * block.tick == 3  # two slices of 1.5 each per rank
    verify(tile(block, Placement.standard(4), 8, k=2))


def test_exact_periodic_memory_beats_the_per_lifespan_ceiling():
    # V placement, p = 2, half-stage F = B = W = 0.5, act 0.5, wact 0.25, copying a half stage's
    # activations takes 0.5, cap 1 (a full stage's activations). With offload a unit holds memory
    # from F to the end of OFFLOAD and again from RELOAD: two spans that the paper's bound rounds
    # up one by one, so it needs T = 4.5 without offload; counting the periodic memory curve at
    # each allocation instant admits T = 3, the load bound F + B + W per full stage.
    costs = Costs.uniform(4, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.25, copy_bandwidth=1.0)
    placement = Placement.v_shape(2)
    ceil = solve_block(costs, placement, BlockOptions(mem_cap=1.0, offload=True, memory="ceil", time_limit=5))
    exact = solve_block(costs, placement, BlockOptions(mem_cap=1.0, offload=True, time_limit=5))
    assert ceil.period * ceil.tick == 4.5 and exact.period * exact.tick == 3.0 and exact.proven
    assert any(exact.offload) and max(exact.memory) <= 1.0
    schedule = tile(exact, placement, 8)
    verify(schedule, costs, mem_cap=1.0)
    assert max(simulate(schedule, costs).peak) <= 1.0
