"""ZB-H1 and ZB-H2 (synth.baselines.zero_bubble) against Qi et al., arXiv 2401.10241, sec. 2:
Table 2 (bubble), sec. 2.3 (peak activations per worker), Fig. 3 (orders), and torch's
``ScheduleInterleavedZeroBubble`` (ZB-H1 with one stage per rank), run in a subprocess
(marked slow: ``pytest -m slow tests/synth/test_zero_bubble.py``)."""


import pytest

import ir
from ir import Op
from synth.baselines.zero_bubble import BASELINE, BASELINE_H2, zb_h1, zb_h2
from tests.synth.baselines.torch_orders import torch_pipeline_orders

BUILDERS = {"zb-h1": zb_h1, "zb-h2": zb_h2}
CASES = [(p, m) for p in (2, 4, 8) for m in sorted({1, p - 1, p, 2 * p - 1, 2 * p, 4 * p})]


def _own_span_idle(timeline, p):
    """Per rank: (end of its last pass - start of its first) - busy; the paper's per-stage bubble."""
    first, last = [float("inf")] * p, [0.0] * p
    for span in timeline.spans:
        first[span.rank] = min(first[span.rank], span.start)
        last[span.rank] = max(last[span.rank], span.end)
    return [last[r] - first[r] - timeline.busy[r] for r in range(p)]


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize(("p", "m"), CASES)
def test_valid_and_every_unit_split(name, p, m):
    schedule = BUILDERS[name](p, m)
    ir.verify(schedule)  # each unit's F, B, W exactly once, dependency order, no deadlock
    assert schedule.placement == ir.Placement.standard(p)
    assert schedule.ops_used() == {Op.F, Op.B, Op.W}
    assert sum(map(len, schedule.ranks)) == 3 * p * m


@pytest.mark.parametrize(("p", "m"), [(p, m) for p, m in CASES if m >= p])
@pytest.mark.parametrize(("f", "b", "w"), [(1, 1, 1), (1, 1.5, 0.5), (2, 1, 1)])
def test_zb_h1_bubble_matches_table_2(p, m, f, b, w):
    # Table 2: ZB-H1 bubble (p-1)(T_F + T_B - T_W) on every rank (valid for T_W <= T_F, T_B; no comm).
    timeline = ir.simulate(zb_h1(p, m), ir.Costs.uniform(p, f=f, b=b, w=w))
    bubble = (p - 1) * (f + b - w)
    assert timeline.makespan == pytest.approx(m * (f + b + w) + bubble)
    assert [timeline.makespan - busy for busy in timeline.busy] == pytest.approx([bubble] * p)


@pytest.mark.parametrize(("p", "m"), [(p, m) for p, m in CASES if m >= 2 * p - 1])
@pytest.mark.parametrize(("f", "b", "w"), [(1, 1, 1), (1, 1.5, 0.5), (2, 1, 1)])
def test_zb_h2_bubble_matches_table_2(p, m, f, b, w):
    # Table 2: ZB-H2 bubble (p-1)(T_F + T_B - 2T_W), measured as sec. 5.3 does: on the largest
    # per-stage execution time (rank 0's), the optimizer sync being bypassed (sec. 4). The stagger
    # (p-1-r)(T_F + T_B - 2T_W) of rank r follows from the same parallelogram: zero when F = B = W.
    timeline = ir.simulate(zb_h2(p, m), ir.Costs.uniform(p, f=f, b=b, w=w))
    assert _own_span_idle(timeline, p) == pytest.approx([(p - 1 - r) * (f + b - 2 * w) for r in range(p)])


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize(("p", "m"), [(p, m) for p, m in CASES if m >= p])
def test_unit_costs_reach_the_lower_bound(name, p, m):
    # F = B = W = 1: rank p-1 cannot start before p-1 forwards are done and has 3m of work, so no
    # schedule beats 3m + p - 1; both reach it (ZB-H1: 3m + (p-1)(F+B-W), a third of 1F1B's bubble).
    timeline = ir.simulate(BUILDERS[name](p, m), ir.Costs.uniform(p))
    assert timeline.makespan == 3 * m + p - 1
    if name == "zb-h2" and m >= 2 * p - 1:
        assert _own_span_idle(timeline, p) == [0] * p  # the parallelogram: no gap on any rank


@pytest.mark.parametrize(("p", "m"), [(p, m) for p, m in CASES if m >= p])
def test_zb_h1_peak_memory(p, m):
    # sec. 2.3: worker i (1-based) holds (p-i+1) M_B + (i-1) M_W; with W freeing the whole unit
    # (wact = act, a microbatch live until its W) that is p on every rank, 1F1B's rank-0 peak.
    full = ir.simulate(zb_h1(p, m), ir.Costs.uniform(p, act=1, wact=1))
    assert full.peak == tuple([p] * p)
    split = ir.simulate(zb_h1(p, m), ir.Costs.uniform(p, act=1, wact=0.25))
    assert split.peak == pytest.approx([(p - r) * 1 + r * 0.25 for r in range(p)])


@pytest.mark.parametrize(("p", "m"), [(p, m) for p, m in CASES if m >= 2 * p - 1])
def test_zb_h2_peak_memory(p, m):
    # sec. 2.3: worker i (1-based) holds (2p-2i+1) M_B + (2i-2) M_W: 2p-1 when wact = act.
    full = ir.simulate(zb_h2(p, m), ir.Costs.uniform(p, act=1, wact=1))
    assert full.peak == tuple([2 * p - 1] * p)
    split = ir.simulate(zb_h2(p, m), ir.Costs.uniform(p, act=1, wact=0.25))
    assert split.peak == pytest.approx([(2 * p - 2 * r - 1) + 2 * r * 0.25 for r in range(p)])


def test_figure_3_rank_0_rows():
    # Fig. 3, p = 4, m = 8, device 1, 1-based microbatch numbers in time order.
    h1 = "1 2 3 4 1 1 5 2 2 6 3 3 7 4 4 8 5 5 6 6 7 7 8 8"
    h2 = "1 2 3 4 5 6 7 1 1 8 2 2 3 3 4 4 5 5 6 6 7 7 8 8"
    for build, row in ((zb_h1, h1), (zb_h2, h2)):
        assert " ".join(str(a.microbatch + 1) for a in build(4, 8).ranks[0]) == row
    assert [a.op for a in zb_h2(4, 8).ranks[0][7:10]] == [Op.B, Op.W, Op.F]


@pytest.mark.parametrize("p", [2, 4, 8])
def test_zb_h2_warm_up_fills_the_zb_h1_idle_slots(p):
    # Fig. 3: ZB-H2 starts rank r with 2(p-r)-1 forwards (7/5/3/1 for p = 4), ZB-H1 with p-r.
    for build, expected in ((zb_h1, [p - r for r in range(p)]), (zb_h2, [2 * (p - r) - 1 for r in range(p)])):
        schedule = build(p, 4 * p)
        leading = [next(i for i, a in enumerate(prog) if a.op is not Op.F) for prog in schedule.ranks]
        assert leading == expected


def test_zb_h1_is_deepspeed_exact_order():
    # DeepSpeed ZeroBubbleH1Pipeline (enable_zbh1_exact_semantics), rank 2 of 4, m = 6:
    # 1 warm-up F, 2 (F, B) steps, then (F, B, W), then (B, W), then the 2 left-over W.
    expected = "2F0 2F1 2B0 2F2 2B1 2F3 2B2 2W0 2F4 2B3 2W1 2F5 2B4 2W2 2B5 2W3 2W4 2W5"
    assert " ".join(map(str, zb_h1(4, 6).ranks[2])) == expected


@pytest.mark.parametrize("build", [zb_h1, zb_h2])
@pytest.mark.parametrize(("p", "m"), [(0, 4), (4, 0), (-1, 4), (2.0, 4), (4, True)])
def test_bad_arguments(build, p, m):
    with pytest.raises(ValueError, match="positive integer"):
        build(p, m)


def test_registry_entries():
    assert (BASELINE.name, BASELINE_H2.name) == ("zb-h1", "zb-h2")
    assert BASELINE(4, 8).meta["baseline"] == "zb-h1"
    with pytest.raises(ValueError, match="takes no option"):
        BASELINE_H2(4, 8, v=2)


TORCH_CASES = [(2, 1), (2, 4), (4, 2), (4, 4), (4, 8), (4, 16), (8, 8), (8, 16)]


@pytest.fixture(scope="module")
def torch_orders():
    return torch_pipeline_orders("ScheduleInterleavedZeroBubble", TORCH_CASES, v_shape=False)


@pytest.mark.parametrize(("p", "m"), TORCH_CASES)
def test_zb_h1_equals_torch_interleaved_zero_bubble(torch_orders, p, m):
    # torch writes our B (input grad) as I.
    ours = {str(r): [str(a).replace("B", "I") for a in prog] for r, prog in enumerate(zb_h1(p, m).ranks)}
    assert ours == torch_orders[f"{p},{m}"]
