"""`simulate` against timelines computed by hand (times in the comments are derived
step by step from the semantics in ir/simulate.py's docstring)."""

import pytest

from ir import Costs, Placement, Schedule, ScheduleError, lower, simulate
from ir.examples import one_f_one_b


def _spans(timeline):
    return {str(s.action): (s.start, s.end) for s in timeline.spans}


def test_two_ranks_1f1b_with_comm_latency():
    # p=2, m=2, F=1, B=W=1 (BW=2), comm 0.5, act=1.
    # 0F0 [0,1]  0F1 [1,2]  1F0 [1.5,2.5] (0F0 end + 0.5)  1BW0 [2.5,4.5]
    # 1F1: ready 2+0.5=2.5 but rank 1 busy until 4.5 -> [4.5,5.5]; 1BW1 [5.5,7.5]
    # 0BW0: ready 4.5+0.5=5 -> [5,7]; 0BW1: ready 7.5+0.5=8 -> [8,10]
    schedule = one_f_one_b(2, 2)
    timeline = simulate(schedule, Costs.uniform(2, comm=0.5))
    assert _spans(timeline) == {
        "0F0": (0, 1),
        "0F1": (1, 2),
        "0BW0": (5, 7),
        "0BW1": (8, 10),
        "1F0": (1.5, 2.5),
        "1BW0": (2.5, 4.5),
        "1F1": (4.5, 5.5),
        "1BW1": (5.5, 7.5),
    }
    assert timeline.makespan == 10
    assert timeline.busy == (6, 6)
    assert timeline.bubble == (0.4, 0.4)
    # rank 0 holds two activations from t=1 until 0BW0 ends at 7
    assert timeline.memory[0] == ((0, 1), (1, 2), (7, 1), (10, 0))
    # at 4.5 rank 1 frees microbatch 0 and allocates microbatch 1: one instant, level unchanged, no point
    assert timeline.memory[1] == ((0, 0), (1.5, 1), (7.5, 0))
    assert timeline.peak == (2, 1)
    assert str(timeline.peak_action[0]) == "0F1"


THREE_RANKS = [
    ["0F0", "0OFFLOAD0", "0F1", "0RELOAD0", "0B0", "0W0", "0B1", "0W1"],
    ["1F0", "1F1", "1B0", "1W0", "1B1", "1W1"],
    ["2F0", "2B0", "2F1", "2B1", "2W0", "2W1"],
]


def test_three_ranks_copy_stream_overlaps_compute():
    # F=B=W=1, comm 0.5, act=4, wact=1, copy bandwidth 2 bytes/time -> OFFLOAD/RELOAD take 2.
    # rank 0: 0F0 [0,1]; 0OFFLOAD0 on the copy stream [1,3]; 0F1 overlaps it [1,2];
    #         0RELOAD0 after the offload [3,5]; 0B0 waits for 1B0 (end 6.5) + 0.5 -> [7,8]; 0W0 [8,9];
    #         0B1 waits for 1B1 (end 8.5) + 0.5 -> [9,10]; 0W1 [10,11]
    # rank 1: 1F0 [1.5,2.5]; 1F1 [2.5,3.5]; 1B0 after 2B0 (5) + 0.5 -> [5.5,6.5]; 1W0 [6.5,7.5];
    #         1B1 after 2B1 (7) + 0.5 -> [7.5,8.5]; 1W1 [8.5,9.5]
    # rank 2: 2F0 [3,4]; 2B0 [4,5]; 2F1 [5,6]; 2B1 [6,7]; 2W0 [7,8]; 2W1 [8,9]
    costs = Costs.uniform(3, act=4, wact=1, comm=0.5, copy_bandwidth=2)
    timeline = simulate(Schedule(Placement.standard(3), 2, THREE_RANKS), costs)
    assert _spans(timeline) == {
        "0F0": (0, 1),
        "0OFFLOAD0": (1, 3),
        "0F1": (1, 2),
        "0RELOAD0": (3, 5),
        "0B0": (7, 8),
        "0W0": (8, 9),
        "0B1": (9, 10),
        "0W1": (10, 11),
        "1F0": (1.5, 2.5),
        "1F1": (2.5, 3.5),
        "1B0": (5.5, 6.5),
        "1W0": (6.5, 7.5),
        "1B1": (7.5, 8.5),
        "1W1": (8.5, 9.5),
        "2F0": (3, 4),
        "2B0": (4, 5),
        "2F1": (5, 6),
        "2B1": (6, 7),
        "2W0": (7, 8),
        "2W1": (8, 9),
    }
    assert timeline.makespan == 11
    assert timeline.busy == (6, 6, 6)
    assert timeline.copy_busy == (4, 0, 0)
    # offload frees 4 at t=3 as the reload re-adds 4 (level unchanged); B frees act-wact=3, W frees wact=1
    assert timeline.memory[0] == ((0, 4), (1, 8), (8, 5), (9, 4), (10, 1), (11, 0))
    assert timeline.peak[0] == 8


def test_copies_without_a_stream_hold_the_compute_stream():
    # p=1, m=2, F=B=W=1 (BW=2), act=4, copy bandwidth 2 bytes/time -> OFFLOAD/RELOAD take 2.
    # On a copy stream (the default): 0F0 [0,1]; 0OFFLOAD0 [1,3] beside 0F1 [1,2]; 0BW1 [2,4];
    #   0RELOAD0 starts when the copy stream is free (3), while 0BW1 still holds unit 1 -> [3,5];
    #   0BW0 [5,7]. Memory: 4 at 0, 8 at 1 (two units), at 3 the offload frees 4 as the reload adds 4.
    # With copy_stream=False the copies run in program order on the compute stream:
    #   0F0 [0,1] 0OFFLOAD0 [1,3] 0F1 [3,4] 0BW1 [4,6] 0RELOAD0 [6,8] 0BW0 [8,10]; at 3 and at 6
    #   one unit's act leaves as another's arrives, so the level never exceeds one unit's act.
    program = [["0F0", "0OFFLOAD0", "0F1", "0BW1", "0RELOAD0", "0BW0"]]
    schedule = Schedule(Placement.standard(1), 2, program)
    overlapped = simulate(schedule, Costs.uniform(1, act=4, copy_bandwidth=2))
    assert _spans(overlapped) == {"0F0": (0, 1), "0OFFLOAD0": (1, 3), "0F1": (1, 2), "0BW1": (2, 4),
                                  "0RELOAD0": (3, 5), "0BW0": (5, 7)}
    assert overlapped.memory[0] == ((0, 4), (1, 8), (4, 4), (7, 0))
    held = simulate(schedule, Costs.uniform(1, act=4, copy_bandwidth=2, copy_stream=False))
    assert _spans(held) == {"0F0": (0, 1), "0OFFLOAD0": (1, 3), "0F1": (3, 4), "0BW1": (4, 6),
                            "0RELOAD0": (6, 8), "0BW0": (8, 10)}
    assert held.makespan == 10
    assert held.busy == (6,) and held.copy_busy == (4,)  # copies still count as copy time, not busy
    assert held.memory[0] == ((0, 4), (10, 0))
    assert held.peak == (4,)
    # even free copies (infinite bandwidth) wait for the pass before them to end
    free = simulate(schedule, Costs.uniform(1, act=4, copy_stream=False))
    assert _spans(free)["0RELOAD0"] == (4, 4) and free.peak == (4,)


def test_costs_copy_stream_must_be_a_bool():
    with pytest.raises(TypeError, match="copy_stream must be True or False"):
        Costs.uniform(1, copy_stream=0)


def test_recompute_memory_and_time():
    # p=1, m=2: F keeps only inp=1 of act=5; R (time 1) adds the rest, act - inp = 4, just before
    # BW; BW frees act (DESIGN.md's memory table: inp is part of act, never counted twice).
    # 0F0 [0,1] 0F1 [1,2] 0R0 [2,3] 0BW0 [3,5] 0R1 [5,6] 0BW1 [6,8]
    schedule = Schedule(Placement.standard(1), 2, [["0F0", "0F1", "0R0", "0BW0", "0R1", "0BW1"]])
    timeline = simulate(schedule, Costs.uniform(1, act=5, inp=1, static=(100,)))
    assert _spans(timeline)["0BW1"] == (6, 8)
    # 100 + 1 + 1 at 0 and 1; 0R0 at 2: + 4 -> 106 (unit 0's act plus unit 1's inp); at 5 0BW0
    # frees act=5 and 0R1 adds 4 in the same instant -> one point at 105; 0BW1 frees 5 at 8.
    assert timeline.memory[0] == ((0, 101), (1, 102), (2, 106), (5, 105), (8, 100))
    assert timeline.peak == (100 + 5 + 1,)  # static + one unit's act + the other's inp


@pytest.mark.parametrize(("act", "wact", "inp", "m"), [(8, 3, 1, 3), (8, 1, 2, 3), (5, 0, 5, 2), (6, 2, 0, 4)])
def test_recompute_peak_closed_form_one_stage(act, wact, inp, m):
    # p=1: every unit recomputed, forwards first, then R and B per microbatch, the W's last.
    # DESIGN.md's table: F +inp, R +(act - inp), B -(act - wact) at its end, W -wact. At R_i's
    # start (B_{i-1} has just freed, frees first) the rank holds the m-1-i inputs still waiting,
    # unit i's whole act (its input included) and the i earlier units' wact, so the peak is
    # max over i of (m-1-i) inp + act + i wact = act + (m-1) max(inp, wact); after the forwards
    # it is only m inp <= that, since inp <= act.
    split = [f"0F{i}" for i in range(m)] + [x for i in range(m) for x in (f"0R{i}", f"0B{i}")]
    split += [f"0W{i}" for i in range(m)]
    fused = [f"0F{i}" for i in range(m)] + [x for i in range(m) for x in (f"0R{i}", f"0BW{i}")]
    costs = Costs.uniform(1, act=act, wact=wact, inp=inp, static=(10,))
    timeline = simulate(Schedule(Placement.standard(1), m, [split]), costs)
    assert timeline.peak == (10 + act + (m - 1) * max(inp, wact),)
    assert timeline.memory[0][-1][1] == 10  # everything freed: each unit's act by its B and W together
    # fused: B and W are one BW that frees act, so no wact waits: act + (m-1) inp
    assert simulate(Schedule(Placement.standard(1), m, [fused]), costs).peak == (10 + act + (m - 1) * inp,)


def test_slices_follow_causal_order():
    # p=1, k=2, m=1, F=1 B=2 W=1 per slice: forward slices in order, backward slices in reverse.
    schedule = Schedule(Placement.standard(1), 1, [["0F0", "0F0.1", "0B0.1", "0B0", "0W0.1", "0W0"]], k=2)
    timeline = simulate(schedule, Costs.uniform(1, 2, f=1, b=2, w=1))
    assert _spans(timeline) == {
        "0F0": (0, 1),
        "0F0.1": (1, 2),
        "0B0.1": (2, 4),
        "0B0": (4, 6),
        "0W0.1": (6, 7),
        "0W0": (7, 8),
    }


def test_lowered_schedule_simulates_like_compute_only():
    costs = Costs.uniform(2, comm=0.5)
    schedule = one_f_one_b(2, 2)
    plain, lowered = simulate(schedule, costs), simulate(lower(schedule, costs), costs)
    assert _spans(lowered) | _spans(plain) == _spans(lowered)  # compute spans identical
    assert lowered.makespan == plain.makespan == 10


def test_posts_that_take_time_hold_the_compute_stream():
    # p=2, m=1, F=1, BW=2, comm 0.5, post 0.25 (UnitCost.post: each SEND/RECV holds its rank's compute stream).
    # rank 0: 0F0 [0,1], 0SEND_F0 [1,1.25], 0RECV_B0 [1.25,1.5]; rank 1: 1RECV_F0 [0,0.25],
    # 1F0 at max(send end 1.25 + 0.5, recv end 0.25) -> [1.75,2.75], 1BW0 [2.75,4.75], 1SEND_B0 [4.75,5];
    # 0BW0 at max(5 + 0.5, 1.5) -> [5.5,7.5]: the free-post makespan 7 plus the two posts on the path.
    schedule = lower(one_f_one_b(2, 1))
    assert [list(map(str, prog)) for prog in schedule.ranks] == [
        ["0F0", "0SEND_F0", "0RECV_B0", "0BW0"], ["1RECV_F0", "1F0", "1BW0", "1SEND_B0"]]
    timeline = simulate(schedule, Costs.uniform(2, comm=0.5, post=0.25))
    assert _spans(timeline) == {"0F0": (0, 1), "0SEND_F0": (1, 1.25), "0RECV_B0": (1.25, 1.5), "0BW0": (5.5, 7.5),
                                "1RECV_F0": (0, 0.25), "1F0": (1.75, 2.75), "1BW0": (2.75, 4.75),
                                "1SEND_B0": (4.75, 5)}
    assert timeline.makespan == 7.5 == simulate(schedule, Costs.uniform(2, comm=0.5)).makespan + 2 * 0.25
    assert timeline.busy == (3, 3)  # posts are neither compute nor copy time
    # a post delays the compute after it: 0F1 waits for 0SEND_F0 to end in 1F1B at m=2
    two = simulate(lower(one_f_one_b(2, 2)), Costs.uniform(2, post=0.25))
    assert two.span("0F1").start == two.span("0SEND_F0").end == 1.25
    # an unlowered schedule has no posts and ignores the field
    assert simulate(one_f_one_b(2, 2), Costs.uniform(2, post=0.25)).makespan == simulate(
        one_f_one_b(2, 2), Costs.uniform(2)).makespan


def test_1f1b_closed_form_bubble():
    # 1F1B with F=1, BW=2: makespan (m+p-1)*3, bubble (p-1)/(m+p-1) (Narayanan et al. 2021, sec. 2.2)
    for p, m in [(2, 4), (4, 8), (8, 16)]:
        timeline = simulate(one_f_one_b(p, m), Costs.uniform(p, f=1, b=1, w=1))
        assert timeline.makespan == 3 * (m + p - 1)
        assert timeline.bubble_ratio == pytest.approx((p - 1) / (m + p - 1))
        assert timeline.peak == tuple(float(p - r) for r in range(p))  # p - r activations on rank r


def test_simulate_refuses_invalid_schedule_and_mismatched_costs():
    with pytest.raises(ScheduleError, match="deadlock"):
        simulate(
            Schedule(Placement.standard(2), 2, [["0F0", "0BW0", "0F1", "0BW1"], ["1F1", "1F0", "1BW0", "1BW1"]]),
            Costs.uniform(2),
        )
    with pytest.raises(ValueError, match="costs cover 3 stages but the schedule has 2"):
        simulate(one_f_one_b(2, 1), Costs.uniform(3))


def test_recompute_waits_for_its_gradient():
    # p=2, m=1, unit 0 of stage 0 recomputed; F=1, R=1, BW=2, act=5, inp=1, comm 0.
    # 0F0 [0,1] 1F0 [1,2] 1BW0 [2,4]; 0R0 waits for the gradient from 1BW0 -> [4,5]; 0BW0 [5,7].
    # Rank 0 keeps only inp=1 until the recompute adds act - inp = 4 at 4; BW frees act=5 at 7.
    schedule = Schedule(Placement.standard(2), 1, [["0F0", "0R0", "0BW0"], ["1F0", "1BW0"]])
    timeline = simulate(schedule, Costs.uniform(2, act=5, inp=1))
    assert _spans(timeline) == {"0F0": (0, 1), "1F0": (1, 2), "1BW0": (2, 4), "0R0": (4, 5), "0BW0": (5, 7)}
    assert timeline.memory[0] == ((0, 1), (4, 5), (7, 0))
    assert str(timeline.peak_action[0]) == "0R0"
    lowered = lower(schedule)  # the gradient's RECV must come before the recompute
    prog = [str(a) for a in lowered.ranks[0]]
    assert prog.index("0RECV_B0") < prog.index("0R0") < prog.index("0BW0")
