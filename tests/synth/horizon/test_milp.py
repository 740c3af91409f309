"""The full-horizon MILP twin (``synth.horizon.milp``, PuLP with HiGHS or CBC in a child process).

On small horizons with known optima both MILP solvers must prove the optimum, and the decoded
solution must be a valid schedule (``ir.verify`` under the cap) that simulates to the same
makespan; on a few more (a binding cap, recompute chosen, offload offered, free offload with the
RELOAD timing) they must agree with CP-SAT (``synth.horizon.cpsat``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ir import Costs, Placement, simulate, verify
from synth.block.spec import BlockError, BlockOptions, block_spec
from synth.horizon import milp as horizon_milp
from synth.horizon.cpsat import solve_horizon
from synth.horizon.spec import Solution, expand, hint_from_schedule, to_schedule, violations

MILP = ["highs", "cbc"]


def horizon(costs: Costs, options: BlockOptions, m: int):
    placement = Placement.standard(costs.num_stages)
    return expand(block_spec(costs, placement, options), m), placement


def check_schedule(h, result, costs: Costs, placement: Placement, mem_cap: float | None) -> None:
    """The result's solution is a valid schedule under the cap; run as soon as possible it ends no
    later than the solution's makespan, and exactly then when that is optimal."""
    schedule = to_schedule(h, result.solution, placement)
    verify(schedule, costs, mem_cap=mem_cap)
    simulated = simulate(schedule, costs).makespan
    assert simulated <= result.makespan * h.spec.tick + 1e-9
    if result.status == "optimal":
        assert simulated == pytest.approx(result.makespan * h.spec.tick)


@pytest.mark.parametrize("solver", MILP)
@pytest.mark.parametrize("m", [2, 3, 4])
def test_no_cap_reaches_the_analytic_bound(solver, m):
    # F = B = W = 1, zero comm, p = 2: the work bound 3m plus one tick of fill is the optimum.
    costs = Costs.uniform(2, act=1.0, wact=0.5)
    h, placement = horizon(costs, BlockOptions(), m)
    result = horizon_milp.solve_horizon_milp(h, solver=solver, time_limit=30)
    assert (result.status, result.makespan, result.bound, result.proven) == ("optimal", 3 * m + 1, 3 * m + 1, True)
    assert result.solver == solver and result.history == [(round(result.seconds, 3), 3 * m + 1, 3 * m + 1)]
    check_schedule(h, result, costs, placement, None)


@pytest.mark.parametrize("solver", MILP)
@pytest.mark.parametrize("m", [2, 3, 4])
def test_one_activation_per_rank(solver, m):
    # Cap one activation (wact = 0): rank 0 holds each microbatch from its F start to its B end,
    # at least 4 ticks, one at a time, so its last B ends at >= 4m and its W follows: 4m + 1,
    # which a schedule reaches.
    costs = Costs.uniform(2, act=1.0, wact=0.0)
    h, placement = horizon(costs, BlockOptions(mem_cap=1.0), m)
    seen = []
    result = horizon_milp.solve_horizon_milp(h, solver=solver, time_limit=30,
                                             progress=lambda *point: seen.append(point))
    assert (result.status, result.makespan, result.bound) == ("optimal", 4 * m + 1, 4 * m + 1)
    assert len(seen) == 1 and seen[0][1:] == (4 * m + 1, 4 * m + 1)
    check_schedule(h, result, costs, placement, 1.0)


AGREE = [
    # A binding cap: two activations per rank where 1F1B holds three.
    pytest.param(Costs.uniform(3, act=1.0, wact=0.5), BlockOptions(mem_cap=2.0), 4, id="cap"),
    # Recompute allowed under a binding cap: CP-SAT recomputes two units (makespan 11 instead of 13).
    pytest.param(Costs.uniform(2, act=1.0, wact=0.0, inp=0.1), BlockOptions(mem_cap=1.5, recompute=True), 3,
                 id="recompute"),
    # Offload offered (jobs on the copy stream), cap one activation.
    pytest.param(Costs.uniform(2, act=1.0, wact=0.0, copy_bandwidth=1.0), BlockOptions(mem_cap=1.0, offload=True),
                 3, id="offload"),
]


@pytest.mark.parametrize("solver", MILP)
@pytest.mark.parametrize(("costs", "options", "m"), AGREE)
def test_agrees_with_cpsat(solver, costs, options, m):
    h, placement = horizon(costs, options, m)
    reference = solve_horizon(h, time_limit=30)
    result = horizon_milp.solve_horizon_milp(h, solver=solver, time_limit=30)
    assert reference.status == result.status == "optimal"
    assert result.makespan == result.bound == reference.makespan
    # The same number of recompute/offload decisions (the objective's second term).
    decisions = [sum(v != "keep" for v in r.solution.variants.values()) for r in (reference, result)]
    assert decisions[0] == decisions[1]
    check_schedule(h, result, costs, placement, options.mem_cap)


@pytest.mark.parametrize("m", [2, 3])
def test_free_offload_keeps_the_reload_timing_of_cpsat(m):
    # Offload that takes no time (infinite copy bandwidth) under a one-activation cap. A RELOAD must
    # start at its OFFLOAD's end, with a compute job of its rank (not its own B) or when another
    # copy ends, as the simulator can start it; both twins prove the same bound (the model's
    # optimum, 3m + 1: the uncapped optimum) and hand back only programs the simulator reproduces
    # within the cap, with some unit offloaded (hints: none, so whatever they return they found).
    costs = Costs.uniform(2, act=1.0, wact=0.0)
    h, placement = horizon(costs, BlockOptions(mem_cap=1.0, offload=True), m)
    reference = solve_horizon(h, time_limit=30)
    result = horizon_milp.solve_horizon_milp(h, solver="highs", time_limit=60)
    assert reference.bound == result.bound == 3 * m + 1
    for r in (reference, result):
        if r.solution is not None:
            assert r.makespan < 4 * m + 1 and "offload" in r.solution.variants.values()
    if result.solution is not None:
        check_schedule(h, result, costs, placement, 1.0)
    # The model check names a RELOAD moved off every allowed instant.
    found = reference.solution
    assert violations(h, found, h.upper) == []
    rho = next(j for j in found.starts if h.jobs[j][0].op.value == "RELOAD")
    # Every job ends by the makespan, so nothing starts (or ends) one tick after it.
    moved = Solution({**found.starts, rho: reference.makespan + 1}, found.variants)
    assert any("RELOAD" in problem for problem in violations(h, moved, 10 * h.upper))


def test_recompute_is_chosen_when_it_pays():
    costs = Costs.uniform(2, act=1.0, wact=0.0, inp=0.1)
    h, placement = horizon(costs, BlockOptions(mem_cap=1.5, recompute=True), 3)
    result = horizon_milp.solve_horizon_milp(h, solver="highs", time_limit=30)
    assert result.makespan == 11 and "recompute" in result.solution.variants.values()
    assert any(a.op.value == "R" for prog in to_schedule(h, result.solution, placement).ranks for a in prog)


@pytest.mark.parametrize("solver", MILP)
def test_the_answer_is_never_worse_than_the_hint(solver):
    # ZB-H1's order, every job 5 ticks late: a valid hint of makespan 32 (the optimum is 27).
    from synth.baselines import BASELINES

    costs = Costs.uniform(4, act=1.0, wact=0.5)
    h, placement = horizon(costs, BlockOptions(mem_cap=8.0), 8)
    hint = hint_from_schedule(h, BASELINES["zb-h1"](4, 8, costs=costs))
    late = Solution({j: t + 5 for j, t in hint.starts.items()}, hint.variants)
    result = horizon_milp.solve_horizon_milp(h, solver=solver, time_limit=0.5, hints=[late])
    assert result.status in ("optimal", "feasible", "hint")
    assert 27 <= result.makespan <= 32 and result.bound <= result.makespan
    check_schedule(h, result, costs, placement, 8.0)
    # The hint itself at the floor: nothing to search.
    exact = horizon_milp.solve_horizon_milp(h, solver=solver, time_limit=5, hints=[hint])
    assert (exact.status, exact.makespan, exact.bound) == ("optimal", 27, 27)


@pytest.mark.parametrize("solver", MILP)
def test_a_cap_below_one_microbatch_is_infeasible(solver):
    h, _ = horizon(Costs.uniform(2, act=1.0), BlockOptions(mem_cap=0.5), 2)
    result = horizon_milp.solve_horizon_milp(h, solver=solver, time_limit=5)
    assert (result.status, result.solution, result.makespan, result.proven) == ("infeasible", None, None, False)


def test_an_unknown_solver_is_refused():
    h, _ = horizon(Costs.uniform(2), BlockOptions(), 2)
    with pytest.raises(BlockError, match="unknown MILP solver 'cpsat'; choose one of highs, cbc"):
        horizon_milp.solve_horizon_milp(h, solver="cpsat", time_limit=1)


def test_a_missing_highspy_says_what_to_install(tmp_path, monkeypatch):
    # The child inherits PYTHONPATH; a highspy that fails to import stands in for a missing one.
    (tmp_path / "highspy").mkdir()
    (tmp_path / "highspy" / "__init__.py").write_text("raise ImportError('no highspy here')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    h, _ = horizon(Costs.uniform(2), BlockOptions(), 2)
    with pytest.raises(BlockError, match="pip install highspy"):
        horizon_milp.solve_horizon_milp(h, solver="highs", time_limit=1)


def test_cbc_bounds_are_read_from_its_log():
    summary = "Result - Stopped on time limit\n\nObjective value:  48.0\nLower bound:                    34.000\n"
    progress = "Cbc0010I After 100 nodes, 23 on tree, 1e+50 best solution, best possible 33.5 (5.13 seconds)\n"
    assert horizon_milp._cbc_bound(progress + summary) == 34.0
    assert horizon_milp._cbc_bound(progress) == 33.5
    assert horizon_milp._cbc_bound("Result - Stopped on time limit\n") is None


def test_model_size_counts_binaries_and_rows():
    h, _ = horizon(Costs.uniform(2, act=1.0, wact=0.0), BlockOptions(mem_cap=1.0), 3)
    size = horizon_milp.model_size(h)
    assert size["binaries"] > 0 and size["rows"] > size["binaries"] // 2
    assert size["columns"] == size["binaries"] + size["integers"]  # no optional span: no continuous w


def test_the_parent_never_loads_pulp_or_highspy():
    # ortools and highspy cannot share a process: a process that has CP-SAT loaded must still be
    # able to ask for HiGHS, and must not have pulp (which imports highspy) afterwards.
    code = ("import sys; from ortools.sat.python import cp_model; from ir import Costs, Placement; "
            "from synth.block.spec import BlockOptions, block_spec; from synth.horizon.spec import expand; "
            "from synth.horizon.milp import solve_horizon_milp; "
            "h = expand(block_spec(Costs.uniform(2), Placement.standard(2), BlockOptions()), 2); "
            "r = solve_horizon_milp(h, solver='highs', time_limit=10); assert r.proven, r; "
            "assert not {'pulp', 'highspy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_child_imports_no_cpsat():
    # The child side's modules must not pull in ortools (synth.horizon.cpsat does).
    code = ("import sys, synth.horizon.milp, synth.horizon.spec, synth.block.spec, synth.horizon.bounds; "
            "assert not any(m.startswith('ortools') for m in sys.modules), 'ortools loaded'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
