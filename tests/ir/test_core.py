"""Actions, placements, schedules and costs: text forms, formulas from DESIGN.md, input errors."""

import math

import pytest

from ir import Action, Costs, Op, Placement, Schedule, UnitCost, lower, parse_action, verify
from ir.examples import greedy, one_f_one_b


@pytest.mark.parametrize(
    "text, op, stage, mb, sl",
    [
        ("2F0", Op.F, 2, 0, 0),
        ("5B3", Op.B, 5, 3, 0),
        ("1W7", Op.W, 1, 7, 0),
        ("3BW12", Op.BW, 3, 12, 0),
        ("2F0.1", Op.F, 2, 0, 1),
        ("0R4", Op.R, 0, 4, 0),
        ("1RECV_F2", Op.RECV_F, 1, 2, 0),
        ("4OFFLOAD1.3", Op.OFFLOAD, 4, 1, 3),
        ("4RELOAD1", Op.RELOAD, 4, 1, 0),
        ("0SEND_B9", Op.SEND_B, 0, 9, 0),
    ],
)
def test_action_text_round_trip(text, op, stage, mb, sl):
    action = parse_action(text)
    assert action == Action(op, stage, mb, sl)
    assert str(action) == text
    assert hash(action) == hash(Action(op, stage, mb, sl))


@pytest.mark.parametrize("bad", ["", "F0", "2X0", "2F", "2F0.", "-1F0", "2f0", "2F0.1.2", "0F01", "01F0"])
def test_bad_action_text_names_the_form(bad):
    with pytest.raises(ValueError, match="is not an action; expected <stage><op><microbatch>"):
        parse_action(bad)


def test_action_field_checks():
    with pytest.raises(ValueError, match="Action.microbatch must be a non-negative int"):
        Action(Op.F, 0, -1)
    with pytest.raises(ValueError, match="unknown op 'Z'"):
        Action("Z", 0, 0)


def test_placements_follow_design_formulas():
    # DESIGN.md "Vocabulary": interleaved s % p; V-shape s for s<p, 2p-1-s after; waves zig-zag over 2Wp stages.
    assert Placement.standard(3).stage_to_rank == (0, 1, 2)
    assert Placement.interleaved(3, 2).stage_to_rank == (0, 1, 2, 0, 1, 2)
    assert Placement.v_shape(3).stage_to_rank == (0, 1, 2, 2, 1, 0)
    assert Placement.waves(2, 2).stage_to_rank == (0, 1, 1, 0, 0, 1, 1, 0)
    assert Placement.v_shape(4).stages_of(1) == (1, 6)
    assert Placement.explicit([1, 0, 1]).p == 2


def test_placement_errors_say_how_to_fix():
    with pytest.raises(ValueError, match=r"leaves rank\(s\) \[1\] without a stage"):
        Placement.explicit([0, 2])
    with pytest.raises(ValueError, match="is not a 'v' placement.*use kind='explicit'"):
        Placement((0, 1, 0, 1), "v")
    with pytest.raises(ValueError, match="number of ranks must be a positive int"):
        Placement.standard(0)


def test_schedule_checks_shape():
    with pytest.raises(ValueError, match="2 rank programs but its placement has 3 ranks"):
        Schedule(Placement.standard(3), 1, [["0F0"], ["1F0"]])
    with pytest.raises(ValueError, match="Schedule.m must be a positive int"):
        Schedule(Placement.standard(1), 0, [[]])
    s = Schedule(Placement.standard(1), 1, [["0F0", "0BW0"]], meta={"a": 1})
    assert s.ranks == ((Action(Op.F, 0, 0), Action(Op.BW, 0, 0)),)
    assert s == Schedule(Placement.standard(1), 1, [[Action(Op.F, 0, 0), Action(Op.BW, 0, 0)]], meta={"a": 1})


def test_costs_defaults_and_checks():
    u = UnitCost(f=1, b=2, w=3, act=10)
    c = Costs(((u,),), copy_bandwidth=5)
    assert c.duration(parse_action("0BW0")) == 5  # bw defaults to b + w
    assert c.duration(parse_action("0R0")) == 1  # r defaults to f
    assert c.duration(parse_action("0OFFLOAD0")) == 2  # act / copy_bandwidth = 10 / 5
    assert Costs.uniform(1).duration(parse_action("0RELOAD0")) == 0  # infinite bandwidth
    with pytest.raises(ValueError, match="UnitCost.f must be a finite number >= 0"):
        UnitCost(f=-1, b=0, w=0)
    with pytest.raises(ValueError, match="UnitCost.f must be a finite number >= 0"):
        UnitCost(f=math.nan, b=0, w=0)
    with pytest.raises(ValueError, match=r"wact \(2\) cannot exceed act \(1\)"):
        UnitCost(f=0, b=0, w=0, act=1, wact=2)
    with pytest.raises(ValueError, match=r"inp \(2\) cannot exceed act \(1\).*make it at most act"):
        UnitCost(f=0, b=0, w=0, act=1, inp=2)  # the kept stage input is part of act (DESIGN.md, "Ops")


def test_lower_counts_and_positions():
    # 1F1B, p ranks, m microbatches: (p-1) boundaries, each carries m activations forward and
    # m gradients back: 2m(p-1) messages, i.e. 2m(p-1) SENDs and as many RECVs.
    p, m = 4, 8
    lowered = lower(one_f_one_b(p, m))
    verify(lowered)
    ops = [a.op for _, _, a in lowered.actions()]
    assert ops.count(Op.SEND_F) == ops.count(Op.RECV_F) == m * (p - 1)
    assert ops.count(Op.SEND_B) == ops.count(Op.RECV_B) == m * (p - 1)
    for prog in lowered.ranks:  # a SEND follows its producer with at most other comm posts between them
        for pos, a in enumerate(prog):
            if a.op is Op.SEND_F:
                producer = prog.index(a.with_op(Op.F))
                assert producer < pos and all(b.op.is_comm for b in prog[producer + 1 : pos])
    assert lower(lowered) is lowered


def test_lower_skips_same_rank_neighbours():
    # V-shape: stages p-1 and p share rank p-1, so 2p-1 stage boundaries but only 2p-2 cross ranks.
    p, m = 3, 2
    lowered = lower(greedy(Placement.v_shape(p), m, split_backward=True))
    verify(lowered)
    sends = [a for _, _, a in lowered.actions() if a.op in (Op.SEND_F, Op.SEND_B)]
    assert len(sends) == 2 * m * (2 * p - 2)
    assert not any(a.stage == p - 1 and a.op is Op.SEND_F for a in sends)


def test_greedy_respects_in_flight_cap():
    # With a cap of 1, a single rank runs F then BW for one microbatch at a time.
    s = greedy(Placement.standard(1), 3, max_in_flight=1)
    assert [str(a) for a in s.ranks[0]] == ["0F0", "0BW0", "0F1", "0BW1", "0F2", "0BW2"]
