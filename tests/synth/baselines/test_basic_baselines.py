"""gpipe, 1f1b, 1f1b-recompute against their published closed forms (unit costs per stage)."""

import pytest

from ir import Costs, simulate, verify
from synth.baselines import BASELINES, build


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "1f1b-recompute"])
@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("mult", [0.5, 1, 2, 4])
def test_closed_forms(name, p, mult):
    m = max(1, int(mult * p))
    schedule = build(name, p, m)
    verify(schedule)
    assert schedule.meta["baseline"] == name
    f, bw, inp = 1.0, 2.0, 0.125
    timeline = simulate(schedule, Costs.uniform(p, f=f, b=1, w=1, act=1, inp=inp))
    # GPipe and 1F1B (Narayanan et al. 2021, sec 2.2): makespan (m + p - 1)(F + BW), bubble (p-1)/(m+p-1).
    if name != "1f1b-recompute":
        assert timeline.makespan == (m + p - 1) * (f + bw)
        assert timeline.bubble_ratio == pytest.approx((p - 1) / (m + p - 1))
    if name == "gpipe":  # all m microbatches live on every rank when the backwards start
        assert timeline.peak == tuple(float(m) for _ in range(p))
    elif name == "1f1b":  # rank r keeps min(p - r, m) microbatches (warm-up p - r - 1, plus the one in flight)
        assert timeline.peak == tuple(float(min(p - r, m)) for r in range(p))
    else:  # at an R's start, min(p - r, m) microbatches in flight: the recomputing one holds its whole act
        # (its input is part of it, DESIGN.md's memory table), the other min(p - r, m) - 1 their inputs
        assert timeline.peak == pytest.approx(tuple((min(p - r, m) - 1) * inp + 1 for r in range(p)))


def test_recompute_is_1f1b_with_a_longer_backward():
    # R waits for the same gradient as its BW and runs right before it, so 1f1b-recompute is 1F1B
    # with backward R + BW: makespan (m + p - 1)(F + R + BW) by the 1F1B closed form, one extra F per unit.
    for p, m in [(2, 2), (4, 8), (8, 16)]:
        timeline = simulate(build("1f1b-recompute", p, m), Costs.uniform(p, f=1, b=1, w=1, act=1, inp=0.125))
        assert timeline.makespan == (m + p - 1) * (1 + 1 + 2)
        assert timeline.busy == tuple(m * 4.0 for _ in range(p))


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="m must be a positive integer, got 0"):
        build("1f1b", 4, 0)
    with pytest.raises(ValueError, match="unknown baseline 'nope'; known: gpipe, 1f1b"):
        build("nope", 4, 4)
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['v'\]"):
        BASELINES["gpipe"](4, 4, v=2)
