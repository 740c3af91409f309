"""The full-horizon CP-SAT model: proven optima on tiny instances (closed forms and an exhaustive
search written independently of the model), decoded schedules that verify, recompute/offload
decisions exactly when they pay, hints, and the analytic bounds."""

from __future__ import annotations

import itertools
from functools import cache

import pytest

from ir import Costs, Placement, simulate, verify
from synth.baselines import BASELINES
from synth.block.spec import BlockOptions, block_spec
from synth.horizon.bounds import analytic_bound
from synth.horizon.cpsat import solve_horizon
from synth.horizon.spec import expand, hint_from_schedule, memory_fits, to_schedule


def horizon(costs: Costs, m: int, cap: float | None, **options):
    placement = Placement.standard(costs.num_stages)
    return expand(block_spec(costs, placement, BlockOptions(mem_cap=cap, **options)), m), placement


def solve(costs: Costs, m: int, cap: float | None, time_limit: float = 30.0, hints=(), **options):
    h, placement = horizon(costs, m, cap, **options)
    result = solve_horizon(h, time_limit=time_limit, hints=list(hints))
    schedule = to_schedule(h, result.solution, placement)
    verify(schedule, costs, mem_cap=cap)  # every decoded schedule passes the IR's checks
    assert simulate(schedule, costs).makespan <= result.makespan * h.spec.tick + 1e-9
    return h, result, schedule


def brute_force(p: int, m: int, f: int, b: int, w: int, act: float, wact: float, cap: float) -> int:
    """The optimal makespan by exhaustive search over every way to run the jobs, written from
    DESIGN.md's rules alone (standard placement, zero latency): F(s) after F(s-1), B(s) after
    F(s) and B(s+1), W(s) after B(s); a rank runs one job at a time; F allocates ``act`` at its
    start, B frees ``act - wact`` and W frees ``wact`` at their ends, and a rank never holds more
    than ``cap``. At every instant where a rank is free, it may start any ready job or idle until
    the next job ends elsewhere."""
    jobs = [(op, s, i) for s in range(p) for i in range(m) for op in "FBW"]
    dur = {"F": f, "B": b, "W": w}

    def ready(job, done) -> bool:
        op, s, i = job
        need = {"F": [("F", s - 1, i)] if s else [], "B": [("F", s, i)] + ([("B", s + 1, i)] if s < p - 1 else []),
                "W": [("B", s, i)]}[op]
        return all(x in done for x in need)

    def held(rank, done, running) -> float:
        started = done | {j for j, _ in running if j is not None}
        total = 0.0
        for i in range(m):
            if ("F", rank, i) in started:
                total += act
            if ("B", rank, i) in done:
                total -= act - wact
            if ("W", rank, i) in done:
                total -= wact
        return total

    @cache
    def best(done: frozenset, running: tuple) -> float:
        if len(done) == len(jobs):
            return 0
        busy = {j for j, _ in running if j is not None}
        choices = []
        for r in range(p):
            if running[r][0] is not None:
                choices.append([running[r]])
                continue
            options = [(None, 0)]
            for job in jobs:
                if job[1] == r and job not in done and job not in busy and ready(job, done):
                    if job[0] != "F" or held(r, done, running) + act <= cap + 1e-9:
                        options.append((job, dur[job[0]]))
            choices.append(options)
        value = float("inf")
        for combo in itertools.product(*choices):
            if all(j is None for j, _ in combo):
                continue
            step = min(left for j, left in combo if j is not None)
            finished = frozenset(j for j, left in combo if j is not None and left == step)
            nxt = tuple((None, 0) if j is None or left == step else (j, left - step) for j, left in combo)
            value = min(value, step + best(done | finished, nxt))
        return value

    return int(best(frozenset(), tuple((None, 0) for _ in range(p))))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_no_cap_optimum_is_3m_plus_1(m):
    # F = B = W = 1, p = 2, no cap: rank 1 cannot start before rank 0's first forward ends (1)
    # and then has 3m of work, so 3m + 1 is a bound; ZB-H2's zero-bubble schedule reaches it
    # (Qi et al. 2024). Solved with no hint: the solver proves it on its own.
    _, result, schedule = solve(Costs.uniform(2, act=1.0, wact=0.5), m, None)
    assert (result.status, result.makespan, result.bound) == ("optimal", 3 * m + 1, 3 * m + 1)
    assert simulate(schedule, Costs.uniform(2, act=1.0, wact=0.5)).makespan == 3 * m + 1


@pytest.mark.parametrize("m", [2, 3, 4])
def test_one_microbatch_cap_optimum_is_4m_plus_1(m):
    # Cap = one activation per rank, wact = 0: rank 0 holds a microbatch from its F start to its B
    # end, at least F + F + B + B = 4 ticks, one microbatch at a time, so its last B ends at >= 4m
    # and that microbatch's W follows: 4m + 1. Every other W fits in rank 0's waits.
    costs = Costs.uniform(2, act=1.0, wact=0.0)
    _, result, _ = solve(costs, m, 1.0)
    assert (result.status, result.makespan, result.bound) == ("optimal", 4 * m + 1, 4 * m + 1)


@pytest.mark.parametrize("m,fbw,act,wact,cap", [
    (2, (1, 2, 1), 1.0, 0.5, 1.5),
    (3, (1, 2, 1), 1.0, 0.5, 1.5),
    (3, (1, 1, 1), 1.0, 0.5, 2.0),
    (3, (2, 1, 1), 1.0, 0.25, 1.5),
])
def test_optimum_matches_exhaustive_search(m, fbw, act, wact, cap):
    f, b, w = fbw
    expected = brute_force(2, m, f, b, w, act, wact, cap)
    _, result, _ = solve(Costs.uniform(2, f=f, b=b, w=w, act=act, wact=wact), m, cap)
    assert (result.status, result.makespan, result.bound) == ("optimal", expected, expected)


def test_exhaustive_search_can_disagree():
    # The check above can fail: a tighter cap gives the exhaustive search a longer optimum.
    assert brute_force(2, 2, 1, 1, 1, 1.0, 0.0, 1.0) == 9 > brute_force(2, 2, 1, 1, 1, 1.0, 0.0, 2.0)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_free_offload_is_chosen_and_pays(m):
    # Offload that costs no time (infinite copy bandwidth) frees the activation as soon as F ends,
    # so the one-microbatch cap (optimum 4m + 1 without offload) binds less: the answer beats
    # 4m + 1 with some unit offloaded, and no bound goes below the uncapped optimum 3m + 1 (for
    # m = 2 the simulator reproduces a 3m + 1 program, so it is proven). The decoded program
    # simulates to the answer's makespan within the cap.
    costs = Costs.uniform(2, act=1.0, wact=0.0)
    h, result, schedule = solve(costs, m, 1.0, offload=True)
    assert 3 * m + 1 <= result.bound <= result.makespan < 4 * m + 1
    assert result.status == "optimal" or m > 2
    assert set(result.solution.variants.values()) <= {"keep", "offload"}
    assert "offload" in result.solution.variants.values()
    assert any(a.op.value == "OFFLOAD" for _, _, a in schedule.actions())
    assert simulate(schedule, costs).makespan == result.makespan


@pytest.mark.parametrize("m", [2, 3])
def test_prohibitive_offload_is_never_chosen(m):
    # Copying an activation takes 50 forward times: offloading can only lose, so the optimum is
    # the no-offload one, 4m + 1, and no unit is offloaded (the objective's tie-break).
    costs = Costs.uniform(2, act=1.0, wact=0.0, copy_bandwidth=1 / 50)
    _, result, schedule = solve(costs, m, 1.0, offload=True)
    assert (result.status, result.makespan) == ("optimal", 4 * m + 1)
    assert all(v == "keep" for v in result.solution.variants.values())
    assert not any(a.op.value in ("OFFLOAD", "RELOAD") for _, _, a in schedule.actions())


def test_recompute_is_chosen_only_when_it_pays():
    # inp = 0: a recomputed unit holds nothing between F and R, so with the one-microbatch cap
    # recompute buys overlap; R costs one forward. Without a cap nothing is recomputed.
    costs = Costs.uniform(2, act=1.0, wact=0.0, inp=0.0)
    _, capped, _ = solve(costs, 3, 1.0, recompute=True)
    _, free, _ = solve(costs, 3, None, recompute=True)
    assert capped.makespan < 4 * 3 + 1
    assert any(v == "recompute" for v in capped.solution.variants.values())
    assert free.makespan == 3 * 3 + 1 and all(v == "keep" for v in free.solution.variants.values())


def test_hint_is_never_beaten_by_a_worse_answer():
    # ZB-H1 at 1F1B's memory is optimal for F = B = W (3m + p - 1, Qi et al. 2024): its hint meets
    # the analytic bound, so the answer is proven at once and is the hint's makespan.
    p, m = 4, 8
    costs = Costs.uniform(p, act=1.0, wact=0.5)
    h, _ = horizon(costs, m, float(p))
    hint = hint_from_schedule(h, BASELINES["zb-h1"](p, m, costs=costs))
    assert hint is not None and memory_fits(h, hint) and hint.makespan(h) == 3 * m + p - 1
    result = solve_horizon(h, time_limit=0.1, hints=[hint])
    assert (result.status, result.makespan, result.bound) == ("optimal", 3 * m + p - 1, 3 * m + p - 1)


def test_hint_of_another_shape_is_refused():
    costs = Costs.uniform(4, act=1.0, wact=0.5)
    h, _ = horizon(costs, 8, None)
    assert hint_from_schedule(h, BASELINES["zb-h1"](4, 6, costs=costs)) is None  # other m
    assert hint_from_schedule(h, BASELINES["1f1b"](4, 8, costs=costs)) is None  # fused backward


def test_analytic_bound_closed_forms():
    # Work bound: rank p-1 waits (p-1) forwards, then does 3m of work: 3m + p - 1 (F = B = W = 1).
    for p, m in [(2, 3), (4, 8), (8, 16)]:
        spec = block_spec(Costs.uniform(p, act=1.0), Placement.standard(p), BlockOptions(), rounded=False)
        bound = analytic_bound(spec, m)
        assert (bound.value, bound.kind) == (3 * m + p - 1, "work")
    # Memory bound: with cap 1 and wact = 0, rank 0 holds 1 unit for >= 2p ticks per microbatch.
    spec = block_spec(Costs.uniform(4, act=1.0), Placement.standard(4), BlockOptions(mem_cap=1.0), rounded=False)
    assert analytic_bound(spec, 10).parts["memory"] == 10 * 8


def test_analytic_bound_is_below_every_baseline():
    # A bound must never exceed a schedule that exists: every library schedule that fits.
    p, m = 4, 8
    costs = Costs.uniform(p, f=1, b=1.5, w=0.5, act=1.0, wact=0.5, inp=0.1, copy_bandwidth=2.0)
    for cap in (1.5, 2.0, 4.0, None):
        spec = block_spec(costs, Placement.standard(p), BlockOptions(mem_cap=cap, recompute=True, offload=True),
                          rounded=False)
        bound = analytic_bound(spec, m).value
        checked = 0
        for name in ("gpipe", "1f1b", "1f1b-recompute", "zb-h1", "zb-h2", "po-h", "po-f"):
            schedule = BASELINES[name](p, m)
            if schedule.placement != Placement.standard(p):
                continue
            timeline = simulate(BASELINES[name](p, m, costs=costs), costs)
            if cap is None or max(timeline.peak) <= cap:
                checked += 1
                assert timeline.makespan >= bound - 1e-9, (name, cap)
        assert checked >= 1
