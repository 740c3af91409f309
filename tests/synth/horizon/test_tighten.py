"""The tightened full-horizon model (``synth.horizon.spec.Tighten``): the microbatch order and the
cap as precedences keep every optimum (exhaustive search, written independently of the model), the
cap's rows say exactly what the cumulative says where they claim to, and the bounds of
``synth.horizon.bounds.horizon_bound`` never exceed an optimum (exhaustive search, closed forms)."""

from __future__ import annotations

import pytest

from ir import Costs, Placement
from synth.baselines import BASELINES
from synth.block.spec import BlockOptions, block_spec
from synth.construct import construct
from synth.horizon.bounds import horizon_bound, jackson
from synth.horizon.cpsat import rank_relaxation_bound, solve_horizon
from synth.horizon.spec import NO_TIGHTEN, Tighten, expand, hint_from_schedule, memory_fits, violations
from tests.synth.horizon.test_cpsat import brute_force

TIGHTENINGS = {
    "none": NO_TIGHTEN,
    "order": Tighten(cap=False, windows=False, load_cuts=False),
    "order+cap": Tighten(windows=False, load_cuts=False),
    "all": Tighten(),
}
# (m, (F, B, W), act, wact, cap): p = 2; caps from one to two microbatches, both memory forms
# (wact = act frees at one pass, 0 < wact < act at two).
TINY = [
    (3, (1, 1, 1), 1.0, 0.5, 1.5),
    (3, (1, 2, 1), 1.0, 0.5, 1.5),
    (3, (1, 1, 1), 1.0, 1.0, 2.0),
    (3, (2, 1, 1), 1.0, 0.25, 1.5),
    (4, (1, 1, 1), 1.0, 0.5, 2.0),
    (2, (1, 1, 1), 1.0, 0.0, 1.0),
]


def horizon(p: int, m: int, fbw=(1, 1, 1), act=1.0, wact=0.5, cap=None, tighten: Tighten | None = None):
    f, b, w = fbw
    costs = Costs.uniform(p, f=f, b=b, w=w, act=act, wact=wact)
    spec = block_spec(costs, Placement.standard(p), BlockOptions(mem_cap=cap, recompute=False, offload=False))
    return expand(spec, m, tighten or Tighten()), costs


@pytest.mark.parametrize("name", sorted(TIGHTENINGS))
@pytest.mark.parametrize("m,fbw,act,wact,cap", TINY)
def test_every_tightening_keeps_the_exhaustive_optimum(name, m, fbw, act, wact, cap):
    expected = brute_force(2, m, *fbw, act, wact, cap)
    h, _ = horizon(2, m, fbw, act, wact, cap, TIGHTENINGS[name])
    result = solve_horizon(h, time_limit=30)
    assert (result.status, result.makespan) == ("optimal", expected)


@pytest.mark.parametrize("m,fbw,act,wact,cap", TINY)
def test_the_bound_never_exceeds_the_exhaustive_optimum(m, fbw, act, wact, cap):
    h, _ = horizon(2, m, fbw, act, wact, cap)
    assert horizon_bound(h).value <= brute_force(2, m, *fbw, act, wact, cap)


def test_the_order_bound_meets_the_one_microbatch_closed_form():
    # p = 2, cap one activation, wact = 0 (test_cpsat's closed form: the optimum is 4m + 1): the
    # cap's rows chain F0(i) -> F1(i) -> B1(i) -> B0(i) -> F0(i + 1), 4 ticks a microbatch, and the
    # last W adds 1, so the longest path alone is the optimum; the analytic bounds stay below it.
    for m in (2, 3, 5, 8):
        h, _ = horizon(2, m, wact=0.0, cap=1.0)
        bound = horizon_bound(h)
        assert bound.parts["order"] == 4 * m + 1
        assert bound.value == 4 * m + 1 and bound.parts["memory"] < 4 * m + 1


def test_no_cap_bound_is_the_work_bound():
    # Without a cap only the order rows exist: the bound is 3m + p - 1 (ZB-H2 reaches it).
    for p, m in ((2, 3), (4, 8)):
        h, _ = horizon(p, m)
        assert horizon_bound(h).value == 3 * m + p - 1


def test_jackson_preempts_for_the_longest_tail():
    # A (release 0, 3 long, tail 0) and B (release 1, 1 long, tail 5): B preempts A at 1 and ends
    # at 2 (2 + 5 = 7), A ends at 4; the bound is 7, which the schedule "idle, B, A" also reaches.
    assert jackson([(0, 3, 0), (1, 1, 5)]) == 7
    assert jackson([(0, 2, 1), (0, 2, 1)]) == 5  # no release gap: total work plus the tail
    assert jackson([]) == 0


def _schedules(p: int, m: int, costs: Costs):
    """Many schedules of one problem with different memory profiles: the library's split-backward
    ones and the list schedulers' at several caps."""
    out = [BASELINES[name](p, m, costs=costs) for name in ("zb-h1", "zb-h2", "1f1b-split")
           if name in BASELINES]
    for cap in (None, 1.0, 1.5, 2.0, 3.0):
        out += [c.schedule for c in construct(costs, Placement.standard(p), m, cap)]
    return out


@pytest.mark.parametrize("wact", [1.0, 0.5, 0.25])
def test_the_cap_rows_are_exact_where_they_say_so(wact):
    # Every rank holds one stage, so memory frees at one pass (wact = act) or two (B and W): the
    # model marks every rank exact, and then a relabelled schedule meets the cap's rows exactly
    # when it meets the budget. Both outcomes occur across the caps.
    p, m = 3, 6
    costs = Costs.uniform(p, act=1.0, wact=wact)
    seen, either = set(), 0
    for cap in (1.0, 1.25, 1.5, 2.0, 2.5, 3.0):
        h, _ = horizon(p, m, wact=wact, cap=cap)
        assert all(h.exact_cap)
        either += len(h.either)
        for schedule in _schedules(p, m, costs):
            sol = hint_from_schedule(h, schedule)
            assert sol is not None
            fits = memory_fits(h, sol)
            rows_hold = not [v for v in violations(h, sol) if "memory" not in v]
            assert rows_hold == fits, (cap, schedule.meta.get("made_by"))
            seen.add(fits)
    assert seen == {True, False}
    assert (either > 0) == (0 < wact < 1)  # two frees need the either rows; one does not


def test_a_hint_out_of_order_is_relabelled_into_the_ordered_model():
    # The library's schedules, relabelled so each pass runs its microbatches in order, meet every
    # row of the ordered model (the order included) and keep their makespan.
    p, m = 4, 8
    h, costs = horizon(p, m, cap=None)
    for name in ("zb-h1", "zb-h2"):
        sol = hint_from_schedule(h, BASELINES[name](p, m, costs=costs))
        assert sol is not None and not violations(h, sol)
        assert sol.makespan(h) == 3 * m + p - 1  # both are zero-bubble here (Qi et al. 2024)


@pytest.mark.parametrize("m,fbw,act,wact,cap", TINY)
def test_the_rank_relaxation_never_exceeds_the_exhaustive_optimum(m, fbw, act, wact, cap):
    expected = brute_force(2, m, *fbw, act, wact, cap)
    h, _ = horizon(2, m, fbw, act, wact, cap)
    for rank in (0, 1):
        bound = rank_relaxation_bound(h, rank, 10.0)
        assert bound is not None and horizon_bound(h).value - 1 < bound <= expected


def test_the_rank_relaxation_sees_what_jackson_cannot():
    # p = 4, m = 16, cap 2 (half of 1F1B), wact 1/2: rank 0 must interleave its F, B and W within
    # two microbatches' memory, which the preemptive one-machine bound ignores. The relaxation's
    # bound is above every bound of horizon_bound and below the optimum CP-SAT proves (81, the
    # solver_scaling benchmark's cell).
    h, _ = horizon(4, 16, cap=2.0)
    relaxed = rank_relaxation_bound(h, 0, 20.0)
    assert horizon_bound(h).value < relaxed <= 81
    assert solve_horizon(h, time_limit=30).makespan == 81


def test_the_rank_relaxation_needs_the_order():
    h, _ = horizon(2, 3, cap=1.5, tighten=NO_TIGHTEN)
    assert rank_relaxation_bound(h, 0, 1.0) is None
