"""Hanayo wave pipeline (synth.baselines.hanayo): validity, a hand-computed timeline, and bounds.

Unit model: with W waves every rank holds 2W stages; per-stage forward f = 1/(2W), fused
backward 2/(2W) and activations 1/(2W), so a rank's work per microbatch is 3 and one
stage-microbatch of activations is 1. S = 2Wp stages in all.
"""

import pytest

import ir
from ir import PlacementKind
from synth.baselines.hanayo import BASELINE, hanayo

CASES = [(p, m, w) for p in (2, 4, 8) for w in (1, 2) for m in sorted({1, p - 1, p, 2 * p, 4 * p})]


def unit_costs(p: int, w: int) -> ir.Costs:
    v = 2 * w
    return ir.Costs.uniform(v * p, f=1 / v, b=1 / v, w=1 / v, act=1 / v)


@pytest.mark.parametrize("p,m,w", CASES)
def test_every_schedule_is_valid_and_complete(p, m, w):
    schedule = hanayo(p, m, waves=w)
    ir.verify(schedule)  # each unit's F and BW exactly once, same-rank order, no deadlock
    assert schedule.placement.kind is PlacementKind.WAVES
    assert schedule.num_stages == 2 * w * p
    assert all(len(prog) == 2 * 2 * w * m for prog in schedule.ranks)


def test_hand_computed_timeline_p2_w2_m2():
    # p=2, W=2: S=8 stages zig-zag 0:r0 1:r1 2:r1 3:r0 4:r0 5:r1 6:r1 7:r0.
    # Virtual 1F1B over 8 stages, one device each, F=1, BW=2 (times in units of f):
    #   stages 0..6 warm up min(7-s, 2) = 2 forwards: F(s,0) at s, F(s,1) at s+1;
    #   stage 7 warms up 0: F(7,0)@7, BW(7,0)@8, F(7,1)@10 (after BW), BW(7,1)@11;
    #   BW(s,0) at 10 + 2(6-s) and BW(s,1) at 13 + 2(6-s) for s <= 6 (each waits for stage s+1).
    # Rank order = sort by (virtual start, F first, deeper stage first):
    #   r0 {0,3,4,7}: 0F0@0 0F1@1 3F0@3 4F0@4 3F1@4 4F1@5 7F0@7 7BW0@8 7F1@10 7BW1@11
    #                 4BW0@14 3BW0@16 4BW1@17 3BW1@19 0BW0@22 0BW1@25
    #   r1 {1,2,5,6}: 1F0@1 2F0@2 1F1@2 2F1@3 5F0@5 6F0@6 5F1@6 6F1@7 6BW0@10 5BW0@12
    #                 6BW1@13 5BW1@15 2BW0@18 1BW0@20 2BW1@21 1BW1@23
    schedule = hanayo(2, 2, waves=2)
    assert [str(a) for a in schedule.ranks[0]] == (
        "0F0 0F1 3F0 4F0 3F1 4F1 7F0 7BW0 7F1 7BW1 4BW0 3BW0 4BW1 3BW1 0BW0 0BW1"
    ).split()
    assert [str(a) for a in schedule.ranks[1]] == (
        "1F0 2F0 1F1 2F1 5F0 6F0 5F1 6F1 6BW0 5BW0 6BW1 5BW1 2BW0 1BW0 2BW1 1BW1"
    ).split()
    # Real run, ASAP in program order, times in units of f (F=1, BW=2):
    #   r0: 0F0 [0,1] 0F1 [1,2]
    #   r1: 1F0 [1,2] 2F0 [2,3] 1F1 [3,4] 2F1 [4,5]
    #   r0: 3F0 [3,4] 4F0 [4,5] 3F1 [5,6] (waits 2F1) 4F1 [6,7]
    #   r1: 5F0 [5,6] 6F0 [6,7] 5F1 [7,8] (waits 4F1) 6F1 [8,9]
    #   r0: 7F0 [7,8] 7BW0 [8,10] 7F1 [10,11] 7BW1 [11,13]
    #   r1: 6BW0 [10,12] 5BW0 [12,14] 6BW1 [14,16] 5BW1 [16,18]
    #   r0: 4BW0 [14,16] 3BW0 [16,18] 4BW1 [18,20] 3BW1 [20,22]
    #   r1: 2BW0 [18,20] 1BW0 [20,22] 2BW1 [22,24] 1BW1 [24,26]
    #   r0: 0BW0 [22,24] 0BW1 [26,28]  -> makespan 28 f = 7.
    starts = {
        "0F0": 0, "0F1": 1, "1F0": 1, "2F0": 2, "1F1": 3, "2F1": 4, "3F0": 3, "4F0": 4, "3F1": 5,
        "4F1": 6, "5F0": 5, "6F0": 6, "5F1": 7, "6F1": 8, "7F0": 7, "7BW0": 8, "7F1": 10, "7BW1": 11,
        "6BW0": 10, "5BW0": 12, "6BW1": 14, "5BW1": 16, "4BW0": 14, "3BW0": 16, "4BW1": 18, "3BW1": 20,
        "2BW0": 18, "1BW0": 20, "2BW1": 22, "1BW1": 24, "0BW0": 22, "0BW1": 26,
    }  # fmt: skip
    timeline = ir.simulate(schedule, unit_costs(2, 2))
    f = 1 / 4
    assert {str(s.action): s.start / f for s in timeline.spans} == pytest.approx(starts)
    assert timeline.makespan == pytest.approx(28 * f)
    # Busy 4 stages * 2 microbatches * 3f = 24f per rank: bubble 1 - 24/28 = 1/7.
    assert timeline.bubble_ratio == pytest.approx(1 / 7)
    # Peak: r0 holds 0F0 0F1 3F0 4F0 3F1 4F1 7F0 = 7 chunks at t=7 (7BW0 frees at 10);
    #       r1 holds all 8 of its forwards at t=8 (6BW0 frees at 12). A chunk is 1/4.
    assert timeline.peak == pytest.approx((7 / 4, 8 / 4))


@pytest.mark.parametrize("p,m,w", CASES)
def test_bubble_never_beats_the_wave_lower_bound(p, m, w):
    # Rank p-1 cannot start before (p-1)f and must end its last backward (p-1)b before the
    # makespan (the last microbatch's backward still crosses ranks p-2..0), so each rank idles
    # at least (p-1)(f+b): bubble ratio >= (p-1)/(2Wm + p-1).
    timeline = ir.simulate(hanayo(p, m, waves=w), unit_costs(p, w))
    assert timeline.bubble_ratio >= (p - 1) / (2 * w * m + p - 1) - 1e-12


@pytest.mark.parametrize(
    "p,m,w",
    [(2, 4, 1), (2, 8, 1), (4, 8, 1), (4, 16, 1), (8, 16, 1), (2, 8, 2), (4, 16, 2), (4, 32, 2), (8, 32, 2)]
    + [(p, p, 1) for p in (2, 4, 8)],
)
def test_bubble_in_steady_regime(p, m, w):
    # This order's closed form (module docstring), m >= S = 2Wp (and W = 1, m = p): one forward
    # more per rank hop than the lower bound, bubble (p-1)(2f+b) = 4(p-1)f per rank, work 6Wm f,
    # so makespan = (6Wm + 4(p-1)) f and bubble ratio 2(p-1)/(3Wm + 2(p-1)).
    timeline = ir.simulate(hanayo(p, m, waves=w), unit_costs(p, w))
    f = 1 / (2 * w)
    assert timeline.makespan == pytest.approx((6 * w * m + 4 * (p - 1)) * f)
    assert timeline.bubble_ratio == pytest.approx(2 * (p - 1) / (3 * w * m + 2 * (p - 1)))


@pytest.mark.parametrize("p,m,w", CASES)
def test_peak_activations_are_one_f_one_b_over_the_virtual_stages(p, m, w):
    # 1F1B over S stages keeps min(S - s, m) microbatches on stage s at its peak (warm-up plus the
    # forward that opens the steady phase); a rank holds 2W stages, each chunk 1/(2W) of a stage.
    schedule = hanayo(p, m, waves=w)
    timeline = ir.simulate(schedule, unit_costs(p, w))
    stages = 2 * w * p
    for r in range(p):
        chunks = sum(min(stages - s, m) for s in schedule.placement.stages_of(r))
        assert timeline.peak[r] == pytest.approx(chunks / (2 * w))


@pytest.mark.parametrize("p,w", [(2, 1), (4, 1), (4, 2), (8, 2)])
def test_peak_for_many_microbatches_is_wp_plus_half_on_every_rank(p, w):
    # For m >= S: sum over rank r's stages of (S - s) = 2W^2 p + W chunks = Wp + 1/2 stage-mbs.
    timeline = ir.simulate(hanayo(p, 2 * w * p, waves=w), unit_costs(p, w))
    assert timeline.peak == pytest.approx([w * p + 0.5] * p)


def test_registry_entry_defaults_to_two_waves():
    schedule = BASELINE(4, 16)
    assert schedule.num_stages == 16
    assert schedule.meta["baseline"] == "hanayo"
    assert BASELINE.options == {"waves": 2}


@pytest.mark.parametrize(
    "p,m,w,message",
    [(1, 4, 1, "p >= 2"), (4, 4, 0, "waves must be a positive integer"), (4, 0, 1, "m must be a positive integer")],
)
def test_bad_arguments_say_what_to_change(p, m, w, message):
    with pytest.raises(ValueError, match=message):
        hanayo(p, m, waves=w)
