"""Blocks of several microbatches (``BlockOptions.group``), the objective that sees m, and exact ticks.

Unit costs F = B = W = 1 on the standard placement with act = wact = 1 throughout (unless said):
a unit then holds one activation from the start of its F to the end of its W, so stage 0's
lifespan is at least 2p + 1 ticks (p forwards, p input-gradient backwards, its W), and a cap of
c activations needs an average period of at least (2p + 1) / c, besides the load F + B + W = 3.
"""

from __future__ import annotations

import json

import pytest

from ir import Costs, Placement, simulate, verify
from synth.baselines import build
from synth.block.cpsat import block_from_answer, solve_block
from synth.block.groups import copies, solve_blocks
from synth.block.spec import BlockOptions, BlockSpec, block_spec
from synth.block.tile import tile


def unit(p: int) -> Costs:
    return Costs.uniform(p, f=1, b=1, w=1, act=1, wact=1)


def test_two_microbatches_per_block_beat_one_at_a_cap_between_periods():
    # p = 4, cap 3: the average period is at least max(3, 9 / 3) = 3. With one microbatch, T = 3
    # would need stage 0's 9-tick lifespan exactly 3 T, so its chain runs without a gap: F2 at 2 and
    # B2 at 5 = 2 mod 3 collide on rank 2; hence T = 4 (by hand). Two microbatches need not
    # repeat one chain every period: T = 7, an average of 3.5 (below 4, at least 3).
    costs, placement = unit(4), Placement.standard(4)
    one = solve_block(costs, placement, BlockOptions(mem_cap=3.0))
    two = solve_block(costs, placement, BlockOptions(mem_cap=3.0, group=2))
    assert (one.period, one.group) == (4, 1) and one.proven
    assert two.group == 2 and 3 <= two.period / 2 < one.period and two.proven
    assert max(two.memory) <= 3.0


def test_two_microbatches_cannot_reach_the_memory_bound_at_half_the_ranks():
    # p = 4, cap 2 (p / 2): the bound is 9 / 2 = 4.5, so one microbatch needs T = 5. Two at T = 9
    # would hold each unit exactly 9 ticks, both chains without a gap; with copy 1 starting x
    # ticks after copy 0, rank 0's slots {0, 7, 8} and {x, x + 7, x + 8} (mod 9) leave x in 3..6,
    # and ranks 1 and 2 ({1, 6}, {2, 5} and their shifts) rule out x = 4, 5 and x = 3, 6 (by hand):
    # so T = 10, no better than one microbatch.
    costs, placement = unit(4), Placement.standard(4)
    one = solve_block(costs, placement, BlockOptions(mem_cap=2.0))
    two = solve_block(costs, placement, BlockOptions(mem_cap=2.0, group=2))
    assert one.period == 5 and two.period == 10 and two.proven
    assert (9, False) in two.probes


def test_three_microbatches_per_block_beat_one_at_half_the_ranks():
    # p = 8, cap 4 (p / 2): stage 0's lifespan is at least 2p + 1 = 17 ticks, so one microbatch per
    # period needs T >= 17 / 4, i.e. T = 5 (a whole tick), while three may average 14 / 3 (the
    # bound 17 / 4 = 4.25 <= 14 / 3 < 5). Measured: u = 1 gives 5, u = 3 gives 14 (both proven).
    costs, placement = unit(8), Placement.standard(8)
    one = solve_block(costs, placement, BlockOptions(mem_cap=4.0, time_limit=20))
    three = solve_block(costs, placement, BlockOptions(mem_cap=4.0, group=3, time_limit=20))
    assert one.period == 5 and three.group == 3
    assert 17 / 4 <= three.period / 3 < one.period
    tiled = tile(three, placement, 12)
    verify(tiled, costs, mem_cap=4.0)


@pytest.mark.parametrize("m", [5, 8])
def test_a_tiled_two_microbatch_block_verifies_and_its_estimate_is_the_simulation(m):
    costs, placement = unit(4), Placement.standard(4)
    block = solve_block(costs, placement, BlockOptions(mem_cap=3.0, group=2, m=m))
    schedule = tile(block, placement, m)
    verify(schedule, costs, mem_cap=3.0)
    timeline = simulate(schedule, costs)
    assert max(timeline.peak) <= 3.0
    assert timeline.makespan == block.estimate * block.tick  # ticks are exact here
    assert block.estimate <= block.makespan(m)  # as soon as possible never ends later than block time


def test_copies_of_a_block_are_a_block_of_more_microbatches():
    # Two copies of the u = 1 block, T apart, repeat every 2 T: the same periodic schedule, so the
    # same memory curve and the same tiled programs.
    costs, placement = unit(4), Placement.standard(4)
    options = BlockOptions(mem_cap=2.0)
    one = solve_block(costs, placement, options)
    spec = block_spec(costs, placement, BlockOptions(mem_cap=2.0, group=2))
    doubled = copies(one, 2)
    assert doubled.period == 2 * one.period
    held = spec.units_held(doubled.period, doubled.offsets, doubled.variants)
    assert held == block_spec(costs, placement, options).units_held(one.period, one.offsets, {})
    two = block_from_answer(spec, doubled, 0.0, "copies")
    for m in (5, 8):
        assert tile(two, placement, m).ranks == tile(one, placement, m).ranks


def test_solve_blocks_is_never_worse_than_one_microbatch():
    costs, placement = unit(4), Placement.standard(4)
    m = 8
    one = solve_block(costs, placement, BlockOptions(mem_cap=3.0, m=m))
    best = solve_blocks(costs, placement, BlockOptions(mem_cap=3.0, m=m, time_limit=4.0))
    assert best.estimate <= one.estimate and best.solve_seconds <= 4.0 + 1.0
    schedule = tile(best, placement, m)
    verify(schedule, costs, mem_cap=3.0)
    assert simulate(schedule, costs).makespan <= simulate(tile(one, placement, m), costs).makespan


def test_memory_slack_never_makes_the_m_aware_block_slower():
    # More memory admits every block a tighter cap does; measured, the estimate does not rise.
    costs, placement = Costs.uniform(4, f=1, b=1, w=1, act=1, wact=0.5), Placement.standard(4)
    m = 6
    estimates = [solve_blocks(costs, placement, BlockOptions(mem_cap=cap, m=m, time_limit=2.0), groups=(1, 2)).estimate
                 for cap in (2.0, 3.0, 4.0)]
    assert estimates == sorted(estimates, reverse=True)


def test_at_v_half_memory_the_m_aware_block_is_no_slower():
    # V placement, p = 4, half-stages F = B = W = 0.5, act 0.5; cap V-Half's simulated peak.
    p, m = 4, 8
    costs, placement = Costs.uniform(2 * p, f=0.5, b=0.5, w=0.5, act=0.5), Placement.v_shape(p)
    cap = max(simulate(build("v-half", p, m), costs).peak)
    plain = solve_block(costs, placement, BlockOptions(mem_cap=cap))
    aware = solve_block(costs, placement, BlockOptions(mem_cap=cap, m=m))
    makespans = []
    for block in (plain, aware):
        schedule = tile(block, placement, m)
        verify(schedule, costs, mem_cap=cap)
        makespans.append(simulate(schedule, costs).makespan)
    assert makespans[1] <= makespans[0]
    assert aware.estimate * aware.tick == makespans[1]


def test_a_comm_latency_of_a_tenth_of_a_pass_is_exact():
    # F = B = W = 1, comm 0.1: the gcd of every duration and latency is 0.1, ten ticks a pass.
    costs = Costs.uniform(4, f=1, b=1, w=1, act=1, comm=0.1)
    spec = block_spec(costs, Placement.standard(4), BlockOptions())
    assert spec.exact and spec.tick == pytest.approx(0.1) and spec.rounding == 0.0
    assert {d for d in spec.dur.values()} == {10}
    assert {g for _, _, g in spec.edges if g} == {1}


def test_a_latency_off_the_grid_rounds_by_less_than_a_tick():
    # comm 0.0137 shares no divisor with the passes within the resolution, so the tick is
    # 1 / 60 (60 ticks a pass, durations exact) and the latency rounds up to one tick.
    costs = Costs.uniform(4, f=1, b=1, w=1, act=1, comm=0.0137)
    spec = block_spec(costs, Placement.standard(4), BlockOptions())
    assert not spec.exact and spec.tick == pytest.approx(1 / 60)
    assert spec.rounding == pytest.approx(1 / 60 - 0.0137)


def test_a_multi_microbatch_spec_round_trips_and_old_data_still_reads():
    costs = Costs.uniform(4, f=1, b=2, w=1, act=1, wact=0.5, inp=0.1, comm=0.25)
    spec = block_spec(costs, Placement.v_shape(2), BlockOptions(recompute=True, mem_cap=3.0, group=3))
    assert BlockSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.group == 3 and {x.micro for x in spec.dur} == {0, 1, 2}
    one = block_spec(costs, Placement.v_shape(2), BlockOptions(recompute=True, mem_cap=3.0)).to_json()
    assert all(len(row) == 7 for row in one["passes"]) and all(len(a) == 3 for a, _, _ in one["edges"])
    del one["group"], one["rounding"]  # data written before u existed
    assert BlockSpec.from_json(one).group == 1


def test_blocks_whose_early_tiling_passes_the_cap_are_not_chosen():
    # test_cpsat's V-shape offload case. Run as soon as possible, a tiled block can start an F
    # while an OFFLOAD before it in the program is still copying (in block time it had ended), so
    # some blocks within the cap tile over it (measured: T = 7 at u = 1 tiles to a peak of 1.25).
    # The m-aware search and solve_blocks keep only blocks whose tiling fits.
    costs = Costs.uniform(4, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.25, copy_bandwidth=1.0)
    placement, m = Placement.v_shape(2), 3
    for block in (solve_block(costs, placement, BlockOptions(mem_cap=1.0, offload=True, m=m, time_limit=5)),
                  solve_blocks(costs, placement, BlockOptions(mem_cap=1.0, offload=True, m=m, time_limit=5),
                               groups=(1, 2))):
        verify(tile(block, placement, m), costs, mem_cap=1.0)
