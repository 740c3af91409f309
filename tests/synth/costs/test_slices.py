"""Sequence slices in the cost model: the K/V a slice keeps for later slices, SlimPipe's
redistributed slicing, and ``synth costs -k``."""

import pytest

from ir import Placement
from synth.cli import main
from synth.costs.formulas import stage_input_bytes
from synth.costs.hardware import hardware
from synth.costs.problem import build_problem
from synth.costs.redistribute import redistribute_attention
from synth.costs.spec import preset

SPEC = preset("llama2-7b", seq_len=8192)
HW = hardware("a100-40gb")


def test_a_slice_keeps_its_keys_and_values_for_the_later_slices():
    # inp of slice j < k-1 = the stage input + layers x 2 (K and V) x e b t kv (formulas.py's K/V
    # bytes); the last slice has no later slice to serve and keeps only its input.
    problem = build_problem(SPEC, HW, Placement.standard(4), 8, k=4, slicing="uniform")
    s, bounds = 1, problem.bounds
    for j in range(4):
        t0, t1 = bounds[j], bounds[j + 1]
        kv = problem.layers_per_stage[s] * 2 * 2 * SPEC.micro_batch * (t1 - t0) * SPEC.kv_dim if j < 3 else 0
        assert problem.costs.unit(s, j).inp == pytest.approx(stage_input_bytes(SPEC, t0, t1, first=False) + kv)


def test_redistributed_slices_cost_the_same_up_to_the_exchange():
    # Uniform tokens; after redistribution every slice does the mean attention work (within one
    # pair), so F minus the exchange's link time is the same for every slice, and the F summed
    # over slices equals uniform slicing's plus the link time (the work is moved, not made).
    k, s = 4, 1
    uniform = build_problem(SPEC, HW, Placement.standard(4), 8, k=k, slicing="uniform")
    red = build_problem(SPEC, HW, Placement.standard(4), 8, k=k, slicing="redistributed")
    assert red.bounds == uniform.bounds
    exchange = redistribute_attention(SPEC, HW, red.bounds)
    n = red.layers_per_stage[s]
    compute = [red.costs.unit(s, j).f - n * exchange.forward_ms[j] for j in range(k)]
    assert max(compute) - min(compute) == pytest.approx(0, abs=1e-6 * max(compute))
    assert sum(compute) == pytest.approx(sum(uniform.costs.unit(s, j).f for j in range(k)), rel=1e-9)
    plain = [uniform.costs.unit(s, j).f for j in range(k)]
    assert plain[-1] > plain[0]  # without it, the last slice attends to the most keys


def test_synth_costs_with_slices_compares_with_seq1f1b(capsys):
    assert main(["costs", "-k", "2", "--stages", "4", "--model", "llama2-7b"]) == 0
    out = capsys.readouterr().out
    assert "Seq1F1B (k=2) on these costs" in out and "| stage | slice |" in out
