"""Property test: on random uneven problems every schedule synth.construct returns verifies,
fits the cap, and is exactly what ir.simulate makes of it; with 1F1B's memory (standard
placement) it always finds one."""

from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.verify import MEMORY_RTOL
from synth.baselines import build
from synth.construct import construct, timeline_matches

PLACEMENTS = ("standard", "interleaved", "v")


def _placement(kind, p):
    if kind == "standard":
        return ir.Placement.standard(p)
    if kind == "interleaved":
        return ir.Placement.interleaved(p, 2)
    return ir.Placement.v_shape(p)


@st.composite
def problems(draw):
    p = draw(st.integers(2, 5))
    m = draw(st.integers(1, 10))
    kind = draw(st.sampled_from(PLACEMENTS))
    placement = _placement(kind, p)
    amount = st.floats(0.5, 3.0)
    units = []
    for _ in range(placement.num_stages):
        act = draw(st.floats(0.5, 2.0))
        units.append((ir.UnitCost(f=draw(amount), b=draw(amount), w=draw(amount), act=act,
                                  wact=act * draw(st.floats(0.0, 1.0)), inp=act * 0.2,
                                  comm=draw(st.floats(0.0, 0.5))),))
    costs = ir.Costs(tuple(units))
    share = draw(st.floats(0.0, 1.0))
    split = draw(st.booleans())
    extra = draw(st.sampled_from(["none", "recompute", "offload"]))
    return p, m, placement, costs, share, split, extra


def _one_f_one_b_peak(p, m, costs, placement):
    """1F1B's peak on the standard placement (for other placements its formula: min(p-r, m)
    microbatches of each rank's stages)."""
    if placement.kind is ir.PlacementKind.STANDARD:
        return max(ir.simulate(build("1f1b", p, m), costs).peak)
    return max(min(p - r, m) * sum(costs.unit(s).act for s in placement.stages_of(r)) for r in range(p))


@settings(max_examples=30, deadline=None)
@given(problems())
def test_every_returned_schedule_verifies_and_fits(problem):
    p, m, placement, costs, share, split, extra = problem
    least = max(costs.unit(s).act for s in range(placement.num_stages))
    peak_1f1b = _one_f_one_b_peak(p, m, costs, placement)
    cap = least + share * (2 * peak_1f1b - least)
    res = construct(costs, placement, m, cap, split_backward=split,
                    recompute=extra == "recompute", offload=extra == "offload")
    for made in res:
        ir.verify(made.schedule, costs, mem_cap=cap)
        assert max(made.timeline.peak) <= cap * (1 + MEMORY_RTOL)
        assert timeline_matches(made, costs)
    if placement.kind is ir.PlacementKind.STANDARD and cap >= peak_1f1b:
        assert res
