"""ZB-V (synth.baselines.zb_v) against Qi et al., arXiv 2401.10241, sec. 6 and Fig. 8, and
against torch's ``ScheduleZBVZeroBubble`` order (built in a subprocess on a fake process group).

Costs are per stage (chunk): a chunk is half of a full stage, so F = B = W = 1 per full stage
becomes f = b = w = 1/2 and act = wact = 1/2 per chunk (wact = act: a microbatch's activations
stay live until its W, as the paper counts them); times and memory below are in full-stage units.
"""


import pytest

import ir
from ir import Op
from synth.baselines.zb_v import BASELINE, zb_v
from tests.synth.baselines.torch_orders import torch_pipeline_orders

CASES = [(p, m) for p in (2, 4, 8) for m in sorted({1, p - 1, p, 2 * p - 1, 2 * p, 4 * p})]


def _unit_costs(p):
    return ir.Costs.uniform(2 * p, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.5)


def _own_span_idle(timeline, p):
    first, last = [float("inf")] * p, [0.0] * p
    for span in timeline.spans:
        first[span.rank] = min(first[span.rank], span.start)
        last[span.rank] = max(last[span.rank], span.end)
    return [last[r] - first[r] - timeline.busy[r] for r in range(p)]


@pytest.mark.parametrize(("p", "m"), [(1, 1), (1, 3), *CASES])
def test_valid_and_every_unit_split(p, m):
    schedule = zb_v(p, m)
    ir.verify(schedule)  # each unit's F, B, W exactly once, dependency order, no deadlock
    assert schedule.placement == ir.Placement.v_shape(p)
    assert schedule.ops_used() == {Op.F, Op.B, Op.W}
    assert sum(map(len, schedule.ranks)) == 3 * 2 * p * m


@pytest.mark.parametrize(("p", "m"), [(p, m) for p, m in CASES if m >= 2 * p - 1])
def test_zero_bubble_when_f_b_w_equal(p, m):
    # sec. 6: under T_F = T_B = T_W ZB-V "achieves zero bubble": every rank busy without a gap
    # from its first pass to its last (3m of work); rank r starts r half-stage forwards late, so
    # the global makespan is 3m + (p-1)/2.
    timeline = ir.simulate(zb_v(p, m), _unit_costs(p))
    assert _own_span_idle(timeline, p) == [0] * p
    assert timeline.busy == tuple([3 * m] * p)
    assert timeline.makespan == 3 * m + (p - 1) / 2


@pytest.mark.parametrize(("p", "m"), [(p, m) for p, m in CASES if m >= 2 * p - 1])
def test_peak_memory_is_1f1b(p, m):
    # sec. 6: peak activations p M_B on every worker (2p half-size chunk activations), the same as
    # 1F1B's rank-0 peak, and balanced across workers.
    timeline = ir.simulate(zb_v(p, m), _unit_costs(p))
    assert timeline.peak == tuple([p] * p)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_warm_up_counts_of_section_6(p):
    # sec. 6: worker i (1-based) warms up with 2p-1 forwards, 2p-i of the first chunk and i-1 of
    # the second, then runs p-i F-B-W groups of the second chunk before alternating.
    for r, prog in enumerate(zb_v(p, 4 * p).ranks):
        i, first, second = r + 1, r, 2 * p - 1 - r
        warm = prog[: 2 * p - 1]
        assert all(a.op is Op.F for a in warm)
        assert sum(a.stage == first for a in warm) == 2 * p - i
        assert sum(a.stage == second for a in warm) == i - 1
        groups = prog[2 * p - 1 : 2 * p - 1 + 3 * (p - i)]
        assert [(a.op, a.stage) for a in groups] == [(op, second) for op in (Op.F, Op.B, Op.W)] * (p - i)


def test_figure_8_rows():
    # Fig. 8 (p = 4, m = 8), devices 1-4, 1-based microbatch numbers in time order (chunk colours
    # not in the text). Device 1 matches in full; on devices 2-4 the last five entries (cool-down
    # B's and W's, no F) sit in another order in the figure; ours follows torch's port.
    figure = [
        "1 2 3 4 5 6 7 1 1 1 2 2 2 3 3 3 4 4 4 8 1 1 5 5 5 2 2 6 6 6 3 3 7 7 7 4 4 8 8 8 5 5 6 6 7 7 8 8",
        "1 2 3 4 5 1 6 2 1 1 3 2 2 4 3 3 7 1 1 5 4 4 8 2 2 6 5 5 3 3 7 6 6 4 4 8 7 7 5 8 6 5 7 8 8 6 7 8",
        "1 2 3 1 4 2 5 3 1 1 4 2 2 6 1 1 5 3 3 7 2 2 6 4 4 8 3 3 7 5 5 4 4 8 6 6 5 7 6 8 7 5 8 7 6 8 7 8",
        "1 1 2 2 3 3 4 4 1 1 5 1 1 5 2 2 6 2 2 6 3 3 7 3 3 7 4 4 8 4 4 8 5 5 5 6 6 7 7 8 8 5 6 6 7 7 8 8",
    ]
    schedule = zb_v(4, 8)
    for r, row in enumerate(figure):
        ours, theirs = [str(a.microbatch + 1) for a in schedule.ranks[r]], row.split()
        keep = len(theirs) if r == 0 else len(theirs) - 5
        assert ours[:keep] == theirs[:keep]
        assert sorted(ours) == sorted(theirs)
        assert {a.op for a in schedule.ranks[r][keep:]} <= {Op.B, Op.W}


@pytest.mark.parametrize(("p", "m"), [(0, 4), (4, 0), (2.5, 4), (4, False)])
def test_bad_arguments(p, m):
    with pytest.raises(ValueError, match="positive integer"):
        zb_v(p, m)


def test_registry_entry():
    assert BASELINE.name == "zb-v"
    assert BASELINE(4, 8).meta["baseline"] == "zb-v"


TORCH_CASES = [(2, 1), (2, 3), (2, 8), (4, 1), (4, 4), (4, 7), (4, 8), (4, 16), (8, 8), (8, 15), (8, 32)]


@pytest.fixture(scope="module")
def torch_orders():
    return torch_pipeline_orders("ScheduleZBVZeroBubble", TORCH_CASES, v_shape=True)


@pytest.mark.parametrize(("p", "m"), TORCH_CASES)
def test_equals_torch_schedule_zbv_zero_bubble(torch_orders, p, m):
    # torch writes our B (input grad) as I; its pipeline_order is every rank's compute order.
    ours = {str(r): [str(a).replace("B", "I") for a in prog] for r, prog in enumerate(zb_v(p, m).ranks)}
    assert ours == torch_orders[f"{p},{m}"]
