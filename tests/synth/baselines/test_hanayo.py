"""Hanayo wave pipeline (synth.baselines.hanayo): validity, hand-computed timelines, closed forms,
and the comparison with Megatron interleaved 1F1B at the same stages per rank (v = 2W).

Unit model: with W waves every rank holds 2W stages; per-stage forward f = 1/(2W), fused backward
2/(2W) and activations 1/(2W) (``even_split_costs(f=1, b=1, w=1, act=1)``), so a rank's work per
microbatch is 3 and one stage-microbatch of activations is 1. In "slots" (f = 1 slot, BW = 2)
a time t is ``t * 2W`` slots. S = 2Wp stages in all.
"""

import pytest

import ir
from ir import PlacementKind
from synth.baselines.common import even_split_costs
from synth.baselines.hanayo import BASELINE, ORDERS, hanayo
from synth.baselines.interleaved import interleaved

CASES = [
    (p, m, w)
    for p in (2, 3, 4, 8)
    for w in (1, 2, 3)
    for m in sorted({1, p - 1, p, p + 1, 2 * p, 2 * p + 3, 4 * p} - {0})
    if not (p == 8 and w == 3)
]
ZB_1P5B = {"f": 18.522, "b": 18.086, "w": 9.337, "comm": 0.601}  # ms per full stage (arXiv 2401.10241)


def unit_costs(schedule: ir.Schedule) -> ir.Costs:
    return even_split_costs(schedule, f=1, b=1, w=1, act=1)


def zb_costs(schedule: ir.Schedule) -> ir.Costs:
    return even_split_costs(schedule, act=1, **ZB_1P5B)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("p,m,w", CASES)
def test_every_schedule_is_valid_and_complete(p, m, w, order):
    schedule = hanayo(p, m, waves=w, order=order)
    ir.verify(schedule)  # each unit's F and BW exactly once, same-rank order, no deadlock
    assert schedule.placement.kind is PlacementKind.WAVES
    assert schedule.num_stages == 2 * w * p
    assert all(len(prog) == 2 * 2 * w * m for prog in schedule.ranks)
    assert schedule.meta["order"] == order


def _starts_in_slots(schedule, w):
    timeline = ir.simulate(schedule, unit_costs(schedule))
    return timeline, {str(s.action): s.start * 2 * w for s in timeline.spans}


def test_hand_computed_timeline_p2_w1_m2():
    # p=2, W=1: S=4 stages 0:r0 1:r1 2:r1 3:r0. Slot grid, F = 1 slot, BW = 2, each pass at the first
    # free slot(s) of its rank after the pass before it.
    #   mb0 (meets nothing): 0F0@0 1F0@1 2F0@2 3F0@3 3BW0@4-5 2BW0@6-7 1BW0@8-9 0BW0@10-11.
    #   restricted zones of mb0: r0 closes p-1-0 = 1 slot before 3F0 (slot 2); r1 closes 1 slot before
    #   2BW0 (slot 5).
    #   mb1: 0F1@1; 1F1 after 1 on r1 -> 2 taken -> 3; 2F1@4; 3F1 after 4 on r0 -> 5 taken -> 6;
    #   3BW1@7-8; 2BW1 after 8 on r1 -> 9 taken -> 10-11; 1BW1@12-13; 0BW1@14-15.
    schedule = hanayo(2, 2, waves=1)
    assert [str(a) for a in schedule.ranks[0]] == "0F0 0F1 3F0 3BW0 3F1 3BW1 0BW0 0BW1".split()
    assert [str(a) for a in schedule.ranks[1]] == "1F0 2F0 1F1 2F1 2BW0 1BW0 2BW1 1BW1".split()
    # ASAP replay in program order gives back the grid: 3F1 waits for r0 (3BW0 ends at 6), 0BW0 for
    # 1BW0 (ends 10), 0BW1 for 1BW1 (ends 14). Makespan 16 slots = 3S + 4(m-1).
    timeline, starts = _starts_in_slots(schedule, 1)
    assert starts == pytest.approx({
        "0F0": 0, "0F1": 1, "3F0": 3, "3BW0": 4, "3F1": 6, "3BW1": 7, "0BW0": 10, "0BW1": 14,
        "1F0": 1, "2F0": 2, "1F1": 3, "2F1": 4, "2BW0": 6, "1BW0": 8, "2BW1": 10, "1BW1": 12,
    })  # fmt: skip
    assert timeline.makespan * 2 == pytest.approx(16)
    assert timeline.bubble_ratio == pytest.approx(1 - 12 / 16)  # busy 2 mbs * 2 stages * 3 slots
    # r0 peaks at 0F0 0F1 3F0 (3 chunks of 1/2); r1 holds all four of its forwards at slot 4.
    assert timeline.peak == pytest.approx((1.5, 2.0))


def test_hand_computed_timeline_p2_w1_m3_second_group():
    # As above, then group 1 = {mb2} searches after slot 11 (end of mb0, its group's first):
    #   0F2@12; 1F2 after 12 on r1 -> 13 taken (1BW1) -> 14; 2F2@15; 3F2@16; 3BW2@17-18;
    #   2BW2@19-20; 1BW2@21-22; 0BW2@23-24 (r1's slot 18, before 2BW2, is mb2's restricted zone).
    #   Makespan 25 slots; busy 3 mbs * 2 stages * 3 slots = 18 per rank.
    schedule = hanayo(2, 3, waves=1)
    assert [str(a) for a in schedule.ranks[0]] == "0F0 0F1 3F0 3BW0 3F1 3BW1 0BW0 0F2 0BW1 3F2 3BW2 0BW2".split()
    assert [str(a) for a in schedule.ranks[1]] == "1F0 2F0 1F1 2F1 2BW0 1BW0 2BW1 1BW1 1F2 2F2 2BW2 1BW2".split()
    timeline, starts = _starts_in_slots(schedule, 1)
    assert {k: starts[k] for k in ("0F2", "0BW1", "1F2", "2F2", "3F2", "3BW2", "2BW2", "1BW2", "0BW2")} == (
        pytest.approx({"0F2": 12, "0BW1": 14, "1F2": 14, "2F2": 15, "3F2": 16, "3BW2": 17, "2BW2": 19,
                       "1BW2": 21, "0BW2": 23})
    )  # fmt: skip
    assert timeline.makespan * 2 == pytest.approx(25)
    assert timeline.bubble_ratio == pytest.approx(1 - 18 / 25)
    assert timeline.peak == pytest.approx((1.5, 2.0))


@pytest.mark.parametrize("p,m,w", [(p, m, w) for p, m, w in CASES if m <= p])
def test_one_group_makespan_is_3s_plus_4_per_extra_microbatch(p, m, w):
    # Module docstring: microbatch 0 runs its S forwards and S backwards unobstructed (3S slots); each
    # later one queues 4 slots behind its predecessor at the backward turn on rank p-1. At m = p this is
    # the paper's bubble ratio 2(p-1) / (3pW + 2(p-1)).
    schedule = hanayo(p, m, waves=w)
    timeline = ir.simulate(schedule, unit_costs(schedule))
    stages = 2 * w * p
    assert timeline.makespan * 2 * w == pytest.approx(3 * stages + 4 * (m - 1))
    if m == p:
        assert timeline.bubble_ratio == pytest.approx(2 * (p - 1) / (3 * p * w + 2 * (p - 1)))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("p,m,w", CASES)
def test_bubble_never_beats_the_wave_lower_bound(p, m, w, order):
    # Rank p-1 cannot start before (p-1)f and must end its last backward (p-1)b before the makespan,
    # and every rank has the same work: each idles at least (p-1)(f+b), ratio >= (p-1)/(2Wm + p-1).
    schedule = hanayo(p, m, waves=w, order=order)
    timeline = ir.simulate(schedule, unit_costs(schedule))
    assert timeline.bubble_ratio >= (p - 1) / (2 * w * m + p - 1) - 1e-12


@pytest.mark.parametrize("p,m,w", CASES)
def test_paper_order_keeps_one_f_one_b_memory(p, m, w):
    # A microbatch holds at most 2W chunks (one stage-microbatch) on a rank, so peak <= m; the group
    # construction's claim is 1F1B's p on top of that.
    schedule = hanayo(p, m, waves=w)
    timeline = ir.simulate(schedule, unit_costs(schedule))
    assert max(timeline.peak) <= min(m, p) + 1e-9


def test_memory_capped_bound_is_met_at_m_equals_p():
    # With at most p stage-microbatches (S chunks) on rank p-1, any schedule idles >= 4(p-1) slots per
    # rank (module docstring); the one-group construction holds p and idles exactly that.
    for p, w in ((2, 1), (4, 1), (4, 2), (8, 2)):
        schedule = hanayo(p, p, waves=w)
        timeline = ir.simulate(schedule, unit_costs(schedule))
        idle_slots = (timeline.makespan - max(timeline.busy)) * 2 * w
        assert idle_slots == pytest.approx(4 * (p - 1))
        assert max(timeline.peak) == pytest.approx(p)


@pytest.mark.parametrize("w", [1, 2])
@pytest.mark.parametrize("costs_of", [unit_costs, zb_costs], ids=["unit", "zb-1.5b"])
def test_not_dominated_by_interleaved_at_the_benchmark_point(w, costs_of):
    # p=8, m=32: interleaved with v = 2W keeps p + (p-1)/v stage-microbatches on rank 0 (its docstring;
    # 9.75 for W=2, 11.5 for W=1); Hanayo keeps 1F1B's p = 8, so it wins on memory, whatever the bubble.
    p, m = 8, 32
    ours, theirs = hanayo(p, m, waves=w), interleaved(p, m, v=2 * w)
    a, b = ir.simulate(ours, costs_of(ours)), ir.simulate(theirs, costs_of(theirs))
    assert max(b.peak) == pytest.approx(p + (p - 1) / (2 * w))
    assert max(a.peak) == pytest.approx(p)
    assert max(a.peak) < max(b.peak)


@pytest.mark.parametrize("costs_of", [unit_costs, zb_costs], ids=["unit", "zb-1.5b"])
def test_virtual_order_for_one_wave_is_not_dominated_either(costs_of):
    # order="virtual-1f1b", W=1: p + 1/2 stage-microbatches per rank (sum of min(S-s, m) chunks over
    # the rank's stages, below) against interleaved's p + (p-1)/2.
    p, m = 8, 32
    ours, theirs = hanayo(p, m, waves=1, order="virtual-1f1b"), interleaved(p, m, v=2)
    a, b = ir.simulate(ours, costs_of(ours)), ir.simulate(theirs, costs_of(theirs))
    assert max(a.peak) == pytest.approx(p + 0.5) and max(a.peak) < max(b.peak)


@pytest.mark.parametrize("p,m,w", [(2, 8, 1), (4, 8, 1), (4, 16, 2), (8, 32, 2)] + [(p, p, 1) for p in (2, 4, 8)])
def test_virtual_order_bubble_in_steady_regime(p, m, w):
    # order="virtual-1f1b", m >= S (and W = 1, m = p): one forward more per rank hop than the lower
    # bound, bubble (p-1)(2f+b) = 4(p-1) slots per rank, work 6Wm slots: ratio 2(p-1)/(3Wm + 2(p-1)).
    schedule = hanayo(p, m, waves=w, order="virtual-1f1b")
    timeline = ir.simulate(schedule, unit_costs(schedule))
    assert timeline.makespan * 2 * w == pytest.approx(6 * w * m + 4 * (p - 1))


@pytest.mark.parametrize("p,m,w", CASES)
def test_virtual_order_peak_is_one_f_one_b_over_the_virtual_stages(p, m, w):
    # 1F1B over S stages keeps min(S - s, m) microbatches on stage s (warm-up plus the forward that
    # opens the steady phase); a rank holds 2W stages, each chunk 1/(2W) of a stage-microbatch.
    schedule = hanayo(p, m, waves=w, order="virtual-1f1b")
    timeline = ir.simulate(schedule, unit_costs(schedule))
    stages = 2 * w * p
    for r in range(p):
        chunks = sum(min(stages - s, m) for s in schedule.placement.stages_of(r))
        assert timeline.peak[r] == pytest.approx(chunks / (2 * w))


def test_registry_entry_defaults_to_two_waves_and_the_paper_order():
    schedule = BASELINE(4, 16)
    assert schedule.num_stages == 16
    assert schedule.meta["baseline"] == "hanayo"
    assert schedule.meta["order"] == "paper"
    assert BASELINE.options == {"waves": 2, "order": "paper"}
    assert BASELINE(4, 8, order="virtual-1f1b").meta["order"] == "virtual-1f1b"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"p": 1, "m": 4, "waves": 1}, "p >= 2"),
        ({"p": 4, "m": 4, "waves": 0}, "waves must be a positive integer"),
        ({"p": 4, "m": 0, "waves": 1}, "m must be a positive integer"),
        ({"p": 4, "m": 4, "waves": 1, "order": "zigzag"}, "order must be one of"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hanayo(**kwargs)
