"""synth.construct against closed forms: ZB-H1, ZB-H2 and ZB-V makespans (Qi et al., arXiv
2401.10241), 1F1B's with a fused backward, and the API's contract (fits the cap, sorted,
timelines equal ir.simulate's, recompute and offload only when asked)."""

import time

import pytest

import ir
from ir import Op
from synth.baselines import build
from synth.construct import Construction, construct, lower_bound, timeline_matches
from synth.construct.tables import tables

GRID = [(p, m) for p in (2, 4, 8) for m in (p, 2 * p, 4 * p)]


def _unit(p, **kw):
    # act = wact: a microbatch holds its whole act from F start to W end (B frees nothing), as the
    # paper's memory counts (sec. 2.3: M_B until W), so a cap of c bytes is c microbatches in flight.
    return ir.Costs.uniform(p, **{"act": 1.0, "wact": 1.0, **kw})


@pytest.mark.parametrize(("p", "m"), GRID)
def test_zb_h1_makespan_with_1f1b_memory(p, m):
    # ZB-H1 (sec. 2.1, Table 2): makespan 3m + p - 1 under T_F = T_B = T_W, within 1F1B's peak p.
    costs = _unit(p)
    best = construct(costs, ir.Placement.standard(p), m, p)[0]
    assert best.timeline.makespan == 3 * m + p - 1
    assert best.timeline.makespan == ir.simulate(build("zb-h1", p, m), costs).makespan
    assert max(best.timeline.peak) <= p


@pytest.mark.parametrize(("p", "m"), GRID)
def test_zb_h2_memory_no_worse_than_zb_h2(p, m):
    # ZB-H2 (sec. 2.2): with 2p - 1 microbatches of memory; never slower than the hand schedule.
    costs = _unit(p)
    best = construct(costs, ir.Placement.standard(p), m, 2 * p - 1)[0]
    assert best.timeline.makespan <= ir.simulate(build("zb-h2", p, m), costs).makespan
    assert best.timeline.makespan == 3 * m + p - 1


@pytest.mark.parametrize(("p", "m"), [(p, m) for p in (2, 3, 4, 8) for m in (2 * p - 1, 2 * p, 4 * p)])
def test_zb_h2_memory_parallelogram_has_no_gaps(p, m):
    # ZB-H2 (sec. 2.2, Fig. 3 bottom): for m >= 2p-1 and T_F = T_B = T_W every rank runs
    # without a gap from its first pass to its last.
    best = construct(_unit(p), ir.Placement.standard(p), m, 2 * p - 1)[0]
    tl = best.timeline
    for r in range(p):
        spans = [s for s in tl.spans if s.rank == r]
        assert spans[-1].end - spans[0].start == tl.busy[r]


@pytest.mark.parametrize(("p", "m"), GRID)
def test_fused_backward_is_1f1b(p, m):
    # 1F1B (arXiv 2104.04473): makespan (m + p - 1)(T_F + T_BW) = 3(m + p - 1) with bw = 2.
    costs = _unit(p, bw=2.0)
    res = construct(costs, ir.Placement.standard(p), m, p, split_backward=False)
    assert res[0].timeline.makespan == 3 * (m + p - 1)
    assert all(Op.BW in c.schedule.ops_used() and Op.W not in c.schedule.ops_used() for c in res)


@pytest.mark.parametrize(("p", "m"), [(p, m) for p in (2, 3, 4) for m in (2 * p - 1, 3 * p)])
def test_v_shape_matches_zb_v(p, m):
    # ZB-V (sec. 6): chunks of half a stage (f = b = w = 1/2, act 1/2), cap p (1F1B's rank-0 peak):
    # makespan 3m + (p-1)/2 for m >= 2p - 1 (synth.baselines.zb_v's docstring).
    costs = ir.Costs.uniform(2 * p, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.5)
    best = construct(costs, ir.Placement.v_shape(p), m, p)[0]
    assert best.timeline.makespan == 3 * m + (p - 1) / 2
    assert best.timeline.makespan <= ir.simulate(build("zb-v", p, m), costs).makespan


@pytest.mark.parametrize(("name", "placement", "split"), [
    ("interleaved", ir.Placement.interleaved(4, 2), False),  # Megatron interleaved 1F1B, arXiv 2104.04473
    ("interleaved", ir.Placement.interleaved(4, 2), True),
    ("zb-v", ir.Placement.v_shape(4), True),  # arXiv 2401.10241 sec. 6
    ("po-h", ir.Placement.v_shape(4), True),  # PipeOffload's half offload, within its memory
])
@pytest.mark.parametrize("m", [8, 16])
def test_no_slower_than_the_library_on_its_memory(name, placement, split, m):
    # Half-size chunks (f = b = w = act = 1/2); the cap is the library schedule's own simulated peak.
    costs = ir.Costs.uniform(placement.num_stages, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.5)
    library = ir.simulate(build(name, 4, m), costs)
    res = construct(costs, placement, m, max(library.peak), split_backward=split, offload=name == "po-h")
    assert res[0].timeline.makespan <= library.makespan


def test_lower_bound_is_zb_h1_closed_form():
    # The bound construct stops at: the last rank's work 3m plus the p - 1 forwards before it.
    tb = tables(_unit(4), ir.Placement.standard(4), 8, None, True)
    assert lower_bound(tb) == 3 * 8 + 4 - 1


def test_contract_sorted_fitting_and_reproduced_by_simulate():
    costs = ir.Costs.uniform(8, f=1.0, b=1.2, w=0.7, act=1.0, wact=0.4, comm=0.1, static=(0.5,) * 8)
    cap = 4.5
    res = construct(costs, ir.Placement.standard(8), 24, cap)
    assert res
    keys = [(c.timeline.makespan, max(c.timeline.peak)) for c in res]
    assert keys == sorted(keys)
    assert len({tuple(c.schedule.ranks) for c in res}) == len(res)
    for made in res:
        assert isinstance(made, Construction)
        assert made.schedule.meta["made_by"] == "synth.construct"
        assert made.name.startswith("list/") and made.schedule.meta["rule"] in made.name
        ir.verify(made.schedule, costs, mem_cap=cap)
        assert timeline_matches(made, costs)


def test_too_tight_cap_gives_nothing():
    # one unit's activations (1) do not fit in 0.5: no schedule exists.
    assert construct(_unit(4), ir.Placement.standard(4), 8, 0.5) == []


def test_deadline_in_the_past_still_runs_one_variant():
    res = construct(_unit(4), ir.Placement.standard(4), 8, 3.0, deadline=time.perf_counter() - 1.0)
    assert len(res) == 1


@pytest.mark.parametrize("placement", [ir.Placement.standard(4), ir.Placement.interleaved(4, 2),
                                       ir.Placement.v_shape(4)])
def test_sequence_slices(placement):
    # k = 2 slices; with slices the list schedulers recompute but do not offload (their copy
    # stream's estimates are for whole units), so no variant offloads.
    costs = ir.Costs.uniform(placement.num_stages, 2, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.5, inp=0.1)
    res = construct(costs, placement, 6, 4.0, recompute=True, offload=True)
    assert res
    for made in res:
        assert made.schedule.k == 2
        assert not made.schedule.ops_used() & {Op.OFFLOAD, Op.RELOAD}
        ir.verify(made.schedule, costs, mem_cap=4.0)
        assert timeline_matches(made, costs)


def test_sliced_recompute_fits_below_the_keep_only_floor():
    # p = 2, k = 2, act 0.5 per slice (wact = act), inp 0.05. Keeping everything the last stage
    # must hold both slices of a microbatch (slice 1's F follows slice 0's; slice 1's B comes
    # first): 1.0. A cap of 0.7 leaves recompute as the only way, and the construct finds it.
    costs = ir.Costs.uniform(2, 2, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.5, inp=0.05)
    assert not construct(costs, ir.Placement.standard(2), 4, 0.7)
    res = construct(costs, ir.Placement.standard(2), 4, 0.7, recompute=True)
    assert res and all(Op.R in made.schedule.ops_used() for made in res)
    for made in res:
        ir.verify(made.schedule, costs, mem_cap=0.7)
        assert timeline_matches(made, costs)


@pytest.mark.parametrize(("flag", "op", "p", "m", "cap", "changes"), [
    # cap 2.2 keeps two microbatches; keeping only inputs (0.1) lets more run ahead.
    ("recompute", Op.R, 4, 8, 2.2, {"inp": 0.1, "r": 0.5}),
    # cap 4 of p = 8 keeps four microbatches per rank; copies at bandwidth 2 (half a pass) let more run ahead.
    ("offload", Op.OFFLOAD, 8, 16, 4.0, {"copy_bandwidth": 2.0}),
])
def test_recompute_and_offload_only_when_asked_and_they_help(flag, op, p, m, cap, changes):
    costs = _unit(p, **changes)
    with_it = construct(costs, ir.Placement.standard(p), m, cap, **{flag: True})
    without = construct(costs, ir.Placement.standard(p), m, cap)
    assert any(op in c.schedule.ops_used() for c in with_it)
    assert not any(op in c.schedule.ops_used() for c in without)
    assert with_it[0].timeline.makespan < without[0].timeline.makespan
    for made in with_it:
        ir.verify(made.schedule, costs, mem_cap=cap)
        assert timeline_matches(made, costs)


def test_speed_smoke_p16_m128():
    # Not a timed assertion: the largest size the search starts from runs through.
    costs = _unit(16)
    res = construct(costs, ir.Placement.standard(16), 128, 8)
    assert res and max(res[0].timeline.peak) <= 8
