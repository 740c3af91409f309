"""The synth models' memory against ``ir.simulate``'s on recompute schedules.

The block and full-horizon models (CP-SAT, the MILP twins, the bounds) all count memory through
``BlockSpec.lifespans``; the list schedulers through their own tables. On a schedule run as the
simulator runs it (``hint_from_schedule``: its programs as soon as possible, in exact ticks), the
level the lifespans hold must be the simulator's at every instant, so the peaks are equal: a
recomputed unit holds ``inp`` from F, ``act`` from R's start (its input is part of it) until B frees
``act - wact``, then ``wact`` until W (DESIGN.md's memory table). The level here is summed from the
lifespans directly, not through ``memory_fits``.
"""

from __future__ import annotations

import pytest

from ir import Costs, Op, Placement, Schedule, simulate
from synth.baselines import BASELINES
from synth.block.spec import BlockOptions, block_spec
from synth.construct import construct
from synth.horizon.cpsat import solve_horizon
from synth.horizon.spec import exists, expand, hint_from_schedule, to_schedule


def model_peaks(schedule: Schedule, costs: Costs, cap: float | None = None) -> tuple[float, ...]:
    """Per rank, static plus the highest level of the horizon model's lifespans, in bytes, for
    ``schedule`` as the simulator runs it (frees before allocations at one instant)."""
    split = Op.B in schedule.ops_used()
    spec = block_spec(costs, schedule.placement, BlockOptions(split_backward=split, recompute=True, mem_cap=cap))
    assert spec.exact  # dyadic costs: ticks and memory units lose nothing
    h = expand(spec, schedule.m)
    sol = hint_from_schedule(h, schedule)
    assert sol is not None
    events: list[list[tuple[int, int]]] = [[] for _ in range(spec.p)]
    for r, b, e, units, when in h.spans:
        if exists(h, when, sol.variants):
            events[r] += [(sol.starts[b], units), (sol.starts[e] + h.dur[e], -units)]
    peaks = []
    for r, evs in enumerate(events):
        level = top = 0
        for _, delta in sorted(evs):
            level += delta
            top = max(top, level)
        peaks.append(spec.static[r] + top * spec.mem_unit)
    return tuple(peaks)


def _one_stage(m: int, split: bool) -> Schedule:
    """p = 1, every unit recomputed: forwards, then R and B (or BW) per microbatch, then the W's."""
    back = "B" if split else "BW"
    prog = [f"0F{i}" for i in range(m)] + [x for i in range(m) for x in (f"0R{i}", f"0{back}{i}")]
    return Schedule(Placement.standard(1), m, [prog + ([f"0W{i}" for i in range(m)] if split else [])])


CASES = [
    # 1F1B with full recompute, p = 4, m = 8: at an R's start rank r holds min(p - r, m) - 1 inputs
    # and the recomputing unit's act (test_basic_baselines' closed form): 1 + (3 - r) / 8.
    pytest.param(BASELINES["1f1b-recompute"](4, 8), Costs.uniform(4, act=1.0, inp=0.125),
                 tuple(1 + (3 - r) * 0.125 for r in range(4)), id="1f1b-recompute"),
    # Chronos-Recomp, V placement (half stages), p = 4, m = 8; no closed form with inp > 0.
    pytest.param(BASELINES["chronos-recomp"](4, 8), Costs.uniform(8, f=0.5, b=0.5, w=0.5, act=0.5, inp=0.0625),
                 None, id="chronos-recomp"),
    # One stage, split backward, W's deferred, inp > act - wact (the input's bytes spill past B
    # into W's span): act + (m - 1) max(inp, wact) = 1 + 2 x 0.75 (test_simulate's closed form).
    pytest.param(_one_stage(3, split=True), Costs.uniform(1, act=1.0, wact=0.75, inp=0.5), (2.5,), id="spill"),
    # The same with inp < act - wact: 1 + 2 x max(0.125, 0.25).
    pytest.param(_one_stage(3, split=True), Costs.uniform(1, act=1.0, wact=0.25, inp=0.125), (1.5,), id="split"),
    # Fused: BW frees act, no wact waits: act + (m - 1) inp = 1 + 3 x 0.25.
    pytest.param(_one_stage(4, split=False), Costs.uniform(1, act=1.0, inp=0.25, static=(2.0,)), (2 + 1.75,),
                 id="fused"),
]


@pytest.mark.parametrize(("schedule", "costs", "closed_form"), CASES)
def test_lifespans_peak_is_the_simulators(schedule, costs, closed_form):
    simulated = simulate(schedule, costs).peak
    if closed_form is not None:
        assert simulated == pytest.approx(closed_form)
    assert model_peaks(schedule, costs) == pytest.approx(simulated)


def test_list_schedulers_with_recompute_predict_the_simulators_peak():
    # p = 4, cap 2.2 (two microbatches kept): the list schedulers recompute; their own timeline's
    # peak, the lifespans' and the simulator's agree on every schedule that recomputes.
    p, cap = 4, 2.2
    costs = Costs.uniform(p, act=1.0, wact=0.5, inp=0.125, r=0.5)
    made = [c for c in construct(costs, Placement.standard(p), 8, cap, recompute=True)
            if Op.R in c.schedule.ops_used()]
    assert made
    for c in made:
        simulated = simulate(c.schedule, costs).peak
        assert c.timeline.peak == simulated and max(simulated) <= cap
        assert model_peaks(c.schedule, costs, cap) == pytest.approx(simulated)


def test_horizon_solution_with_recompute_keeps_the_simulated_peak_within_the_cap():
    # p = 2, m = 3, act 1, wact 0, inp 1/8, cap 1.5: the solver recomputes (test_milp's case).
    # The decoded schedule, re-run as the simulator runs it, holds what the lifespans say, within the cap.
    costs = Costs.uniform(2, act=1.0, wact=0.0, inp=0.125)
    placement = Placement.standard(2)
    h = expand(block_spec(costs, placement, BlockOptions(mem_cap=1.5, recompute=True)), 3)
    result = solve_horizon(h, time_limit=30)
    assert "recompute" in result.solution.variants.values()
    schedule = to_schedule(h, result.solution, placement)
    simulated = simulate(schedule, costs).peak
    assert max(simulated) <= 1.5
    assert model_peaks(schedule, costs, 1.5) == pytest.approx(simulated)
