"""The MILP twin (``synth.block.milp``, PuLP with HiGHS or CBC in a child process) against CP-SAT.

On each small block both must find the same period and the same block length, both proven,
and the MILP's block, tiled, must pass ``ir.verify`` (with the cap where there is one).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ir import Costs, Placement, verify
from synth.block import milp
from synth.block.cpsat import BlockError, BlockOptions, solve_block
from synth.block.spec import block_spec
from synth.block.tile import tile

MILP = ["highs", "cbc"]


def agree(solver: str, costs: Costs, placement: Placement, options: BlockOptions, period: float, length: int):
    """Solve with CP-SAT and ``solver``; both must give ``period`` (cost units) and ``length`` (ticks),
    proven, and the MILP block must tile into a valid schedule under the cap. Returns the MILP block."""
    reference = solve_block(costs, placement, options)
    block = solve_block(costs, placement, options, solver=solver)
    for b in (reference, block):
        assert (b.period * b.tick, b.length, b.proven) == (period, length, True), b.solver
    assert block.solver == solver
    verify(tile(block, placement, 2 * placement.p + 1), costs, mem_cap=options.mem_cap)
    return block


@pytest.mark.parametrize("solver", MILP)
@pytest.mark.parametrize("p", [2, 3])
def test_fused_backward_gives_one_f_one_b(solver, p):
    # F = 1, BW = 2: 1F1B's stable phase T = F + BW = 3; one microbatch's block is p forwards then
    # p backwards, 3p long (closed form, Narayanan et al. 2021).
    agree(solver, Costs.uniform(p, f=1, b=1, w=1, act=1), Placement.standard(p), BlockOptions(split_backward=False),
          period=3, length=3 * p)


@pytest.mark.parametrize("solver", MILP)
def test_split_backward_at_one_f_one_b_memory(solver):
    # Cap p activations: T = F + B + W = 3, no idle in the stable phase (closed form); the length 12
    # is the CP-SAT run's.
    p = 4
    agree(solver, Costs.uniform(p, f=1, b=1, w=1, act=1), Placement.standard(p), BlockOptions(mem_cap=float(p)),
          period=3, length=12)


@pytest.mark.parametrize("solver", MILP)
def test_v_shape(solver):
    # p = 2, four half-stages with F = B = W = 0.5 and act 0.5; cap 1.5 (V-Min's peak on rank 0).
    # Each rank holds two half-stages, so T = 2 x 1.5 = 3, the load bound (closed form); the
    # length 11 ticks of 0.5 is the CP-SAT run's.
    agree(solver, Costs.uniform(4, f=0.5, b=0.5, w=0.5, act=0.5), Placement.v_shape(2), BlockOptions(mem_cap=1.5),
          period=3, length=11)


@pytest.mark.parametrize("solver", MILP)
def test_recompute_is_chosen_when_the_cap_binds_and_pays(solver):
    # test_blocks' case: recomputing stage 0 gives T = 4 (one more F on rank 0) under the cap 1.5,
    # where keeping everything needs T = 6; the length 8 is the CP-SAT run's.
    costs = Costs.uniform(2, f=1, b=1, w=1, act=1, inp=0.1)
    options = BlockOptions(split_backward=False, mem_cap=1.5, recompute=True)
    block = agree(solver, costs, Placement.standard(2), options, period=4, length=8)
    assert block.recompute == (True, False)


@pytest.mark.parametrize("memory", ["exact", "ceil"])
@pytest.mark.parametrize("solver", MILP)
def test_offload_is_chosen_when_the_cap_binds(solver, memory):
    # p = 4, F = 1, BW = 2, OFFLOAD = RELOAD = act / bandwidth = 1, cap 2. At T = 3 a kept unit of
    # stage s lives 12 - 3s ticks (ceil(l / 3) = 4, 3, 2, 1 microbatches), so stages 0 and 1 must
    # offload: then F..OFFLOAD (2 ticks) and RELOAD..BW (3 ticks) hold one each, 2 in all, and the
    # copy stream's load 2 fits in T. T = 3 is the load bound (closed form); the length 12 is the
    # CP-SAT run's. Each single lifespan counts ceil(l / T) in both memory models, so they agree here.
    costs = Costs.uniform(4, f=1, b=1, w=1, act=1, copy_bandwidth=1.0)
    options = BlockOptions(split_backward=False, mem_cap=2.0, offload=True, memory=memory)
    block = agree(solver, costs, Placement.standard(4), options, period=3, length=12)
    assert block.offload[:2] == (True, True)


@pytest.mark.parametrize("solver", MILP)
def test_two_microbatches_per_block(solver):
    # test_groups' case: p = 4, unit costs, act = wact = 1, cap 3; one microbatch needs T = 4 (by
    # hand), two reach T = 7 with copies of every pass, the symmetry break and the periodic memory
    # of both; the length 13 is the CP-SAT run's.
    options = BlockOptions(mem_cap=3.0, group=2)
    block = agree(solver, Costs.uniform(4, f=1, b=1, w=1, act=1, wact=1), Placement.standard(4), options,
                  period=7, length=13)
    assert block.group == 2 and {x.micro for x in block.offsets} == {0, 1}


@pytest.mark.parametrize("solver", MILP)
def test_the_m_aware_search_agrees(solver):
    # p = 4, act 1, wact 0.5, cap 4, m = 2: the periods 3..5 may end sooner in block time; T = 3's
    # block, 12 ticks when tiled (the CP-SAT run's), stays best, in the MILP's widened search too.
    costs, placement = Costs.uniform(4, f=1, b=1, w=1, act=1, wact=0.5), Placement.standard(4)
    options = BlockOptions(mem_cap=4.0, m=2)
    reference = solve_block(costs, placement, options)
    block = solve_block(costs, placement, options, solver=solver)
    assert (reference.period, reference.estimate) == (3, 12)
    assert (block.period, block.estimate, block.proven) == (reference.period, reference.estimate, True)


@pytest.mark.parametrize("solver", MILP)
def test_a_cap_below_every_block_is_refused(solver):
    costs = Costs.uniform(2, f=1, b=1, w=1, act=1)
    with pytest.raises(BlockError, match="no building block fits"):
        solve_block(costs, Placement.standard(2), BlockOptions(mem_cap=0.5), solver=solver)


def test_an_unknown_solver_is_refused():
    costs, placement = Costs.uniform(2), Placement.standard(2)
    with pytest.raises(BlockError, match="unknown solver 'gurobi'"):
        solve_block(costs, placement, solver="gurobi")
    with pytest.raises(BlockError, match="unknown MILP solver 'cpsat'"):
        milp.solve_spec_milp(block_spec(costs, placement, BlockOptions()), BlockOptions(), "cpsat")


def test_a_missing_highspy_says_what_to_install(tmp_path, monkeypatch):
    # The child inherits PYTHONPATH; a highspy that fails to import stands in for a missing one.
    (tmp_path / "highspy").mkdir()
    (tmp_path / "highspy" / "__init__.py").write_text("raise ImportError('no highspy here')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(BlockError, match="pip install highspy"):
        solve_block(Costs.uniform(2), Placement.standard(2), solver="highs")


def test_the_parent_never_loads_pulp_or_highspy():
    # ortools and highspy cannot share a process: a process that has CP-SAT loaded must still be
    # able to ask for HiGHS, and must not have pulp (which imports highspy) afterwards.
    code = ("import sys; from ortools.sat.python import cp_model; from ir import Costs, Placement; "
            "from synth.block.cpsat import solve_block; b = solve_block(Costs.uniform(2), Placement.standard(2), "
            "solver='highs'); assert b.proven, b; assert not {'pulp', 'highspy'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
