"""Synthesis end to end: squeeze, the search with its safety net, the smallest-cap error, and
the `synth` / `synth compare` commands."""

from __future__ import annotations

import json

import pytest

from ir import Costs, Op, Placement, Schedule, simulate, verify
from ir.jsonio import load
from synth.baselines import build
from synth.baselines.common import even_split_costs
from synth.block.cpsat import BlockOptions, solve_block
from synth.block.period import least_memory
from synth.block.spec import BlockSpec, block_spec
from synth.block.tile import squeeze, tile
from synth.cli import main as synth_main
from synth.search import NoScheduleFits, SynthOptions, synthesize


def unit_costs(placement: Placement, k: int) -> Costs:
    """F = B = W = 1 per full stage split evenly over a rank's stages; act 1, wact 1/2, inp 1/16;
    copying one full stage's activations takes one forward time (as benchmarks/baselines.py)."""
    shape = Schedule(placement, 1, [[] for _ in range(placement.p)], k=k)
    return even_split_costs(shape, f=1, b=1, w=1, act=1, wact=0.5, inp=1 / 16, copy_bandwidth=1.0)


@pytest.mark.parametrize("p,m", [(4, 8), (4, 16), (8, 16)])
def test_squeeze_recovers_zb_h1_at_one_f_one_b_memory(p, m):
    # ZB-H1 with F = B = W = 1: makespan 3m + (p - 1)(F + B - W) = 3m + p - 1 at 1F1B's peak p
    # (Qi et al. 2024, sec. 2.1). The tiled block alone defers no W and ends at 3m + 2(p - 1).
    costs = Costs.uniform(p, f=1, b=1, w=1, act=1)
    block = solve_block(costs, Placement.standard(p), BlockOptions(mem_cap=float(p)))
    tiled = tile(block, Placement.standard(p), m)
    assert simulate(tiled, costs).makespan == 3 * m + 2 * (p - 1)
    squeezed = squeeze(tiled, costs, mem_cap=float(p))
    verify(squeezed, costs, mem_cap=float(p))
    assert simulate(squeezed, costs).makespan == 3 * m + p - 1


def test_squeeze_without_a_cap_never_raises_a_peak():
    costs = Costs.uniform(8, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.25)
    block = solve_block(costs, Placement.v_shape(4), BlockOptions())
    tiled = tile(block, Placement.v_shape(4), 12)
    squeezed = squeeze(tiled, costs)
    before, after = simulate(tiled, costs), simulate(squeezed, costs)
    assert all(a <= b + 1e-12 for a, b in zip(after.peak, before.peak, strict=True))
    assert after.makespan <= before.makespan


@pytest.mark.parametrize("fraction", [1 / 3, 1 / 2, 1])
def test_v_shape_is_no_slower_than_every_v_schedule_that_fits(fraction):
    # p = 4, V placement, half-stage F = B = W = 0.5, act 0.5, wact 0.25; caps are fractions of
    # 1F1B's peak (4 full-stage activations). At 1/3 no hand-designed V schedule fits (v-min needs
    # 2 at p = 4) and synthesis still returns one within the cap; at 1/2 v-min fits; at 1, zb-v.
    p, m = 4, 16
    costs = Costs.uniform(2 * p, f=0.5, b=0.5, w=0.5, act=0.5, wact=0.25)
    cap = fraction * max(simulate(build("1f1b", p, m), Costs.uniform(p, f=1, b=1, w=1, act=1, wact=0.5)).peak)
    block = solve_block(costs, Placement.v_shape(p), BlockOptions(mem_cap=cap))
    schedule = squeeze(tile(block, Placement.v_shape(p), m), costs, cap)
    verify(schedule, costs, mem_cap=cap)
    fitting = [t for t in (simulate(build(name, p, m), costs) for name in ("v-min", "v-half", "zb-v"))
               if max(t.peak) <= cap]
    assert len(fitting) == {1 / 3: 0, 1 / 2: 1, 1: 3}[fraction]
    assert all(simulate(schedule, costs).makespan <= t.makespan for t in fitting)


@pytest.mark.parametrize("fraction", [1 / 2, 1, 2])
def test_search_never_returns_worse_than_the_best_fitting_baseline(fraction):
    p, m = 4, 8
    one_f_one_b = simulate(build("1f1b", p, m), unit_costs(Placement.standard(p), 1))
    cap = fraction * max(one_f_one_b.peak)
    result = synthesize(unit_costs, p, m, cap, options=SynthOptions(placements=("standard", "v"), time_limit=1.0))
    fitting = [c for c in result.baselines if c.fits]
    assert fitting, "some baseline fits every cap tested here"
    assert result.chosen.fits and result.chosen.makespan <= min(c.makespan for c in fitting)
    verify(result.chosen.schedule, result.chosen.costs, mem_cap=cap)
    for c in result.synthesized:  # every synthesized candidate is checked and within the cap
        assert c.fits and max(simulate(c.schedule, c.costs).peak) <= cap * (1 + 1e-9)
    ranked = result.ranked()
    assert [c.makespan for c in ranked if c.fits] == sorted(c.makespan for c in ranked if c.fits)


def test_a_cap_below_everything_names_the_smallest_cap_that_works():
    p, m = 4, 8
    options = SynthOptions(placements=("standard",), time_limit=1.0)
    with pytest.raises(NoScheduleFits) as caught:
        synthesize(unit_costs, p, m, 0.01, options=options)
    smallest = caught.value.smallest
    assert "use --mem-cap" in str(caught.value) and smallest > 0.01
    # at exactly that cap something fits (the error's promise), and just below it nothing does
    assert synthesize(unit_costs, p, m, smallest, options=options).chosen.fits
    with pytest.raises(NoScheduleFits):
        synthesize(unit_costs, p, m, smallest * 0.999, options=options)


def test_least_memory_is_one_microbatch_in_flight():
    # standard placement, keep only: static + act of its one stage; with recompute allowed, the
    # cheapest variant still holds act (F's input plus R's activations: inp + act > act).
    costs = Costs.uniform(2, f=1, b=1, w=1, act=1.0, wact=0.5, inp=0.1, static=(3.0, 2.0))
    spec = block_spec(costs, Placement.standard(2), BlockOptions(recompute=True))
    assert least_memory(spec) == pytest.approx((4.0, 3.0), rel=1e-3)


def test_block_spec_round_trips_through_json():
    costs = Costs.uniform(4, f=1, b=2, w=1, act=1, wact=0.5, inp=0.1, comm=0.25)
    spec = block_spec(costs, Placement.v_shape(2), BlockOptions(recompute=True, offload=True, mem_cap=3.0))
    again = BlockSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec


# -------------------------------------------------------------------------------------- commands
SMALL = ["--model", "gpt-1.5b", "--gpu", "a100-80gb", "--stages", "4", "-m", "8", "--seq-len", "1024",
         "--time-limit", "0.5"]


def test_synth_writes_a_verified_schedule_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert synth_main([*SMALL, "--placement", "standard", "--mem-cap", "80GB", "-o", str(out),
                       "--trace", str(tmp_path / "t.json")]) == 0
    text = capsys.readouterr().out
    assert "(chosen)" in text and "peak per GPU" in text and f"wrote {out}" in text
    schedule = load(out)
    assert schedule.meta["chosen"] in text
    verify(schedule)
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]


def test_synth_refuses_to_overwrite_before_solving(tmp_path, capsys):
    out = tmp_path / "s.json"
    out.write_text("mine")
    assert synth_main([*SMALL, "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err and out.read_text() == "mine"


def test_synth_names_the_smallest_cap_when_nothing_fits(tmp_path, capsys):
    assert synth_main([*SMALL, "--placement", "standard", "--mem-cap", "1GB", "-o", str(tmp_path / "s.json")]) == 1
    err = capsys.readouterr().err
    assert "no schedule fits a memory cap of 0.93 GiB" in err and "use --mem-cap" in err and "Traceback" not in err
    assert not (tmp_path / "s.json").exists()


def test_synth_compare_lists_every_candidate_best_first(capsys):
    assert synth_main(["compare", *SMALL, "--placement", "standard", "--mem-cap", "80GB"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("synth", "1f1b", "zb-", "gpipe", "v-", "interleaved"))]
    synthesized = ("synth/standard", "synth-list/standard")
    assert rows[0].split()[0] in {*synthesized, "zb-v", "dualpipev", "zb-h2", "hanayo", "zb-h1"}
    assert any(r.startswith(synthesized) for r in rows) and any(r.startswith("1f1b ") for r in rows)


def test_synth_with_the_milp_twin_and_the_papers_memory_bound(tmp_path, capsys):
    # the HiGHS path runs in a child process (ortools and highspy cannot share one); the ceil
    # memory model is the Controllable Memory paper's bound
    out = tmp_path / "s.json"
    assert synth_main([*SMALL, "--placement", "standard", "--mem-cap", "80GB", "--solver", "highs",
                       "--memory-model", "ceil", "--time-limit", "4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(chosen)" in text and "highs " in text and out.exists()  # the synthesized row names its solver
    verify(load(out))


# ----------------------------------------------------------------------------- full horizon (issue 6)
@pytest.mark.parametrize("solver", ["cpsat", "highs"])
def test_full_horizon_refines_the_block_and_proves_its_bound(solver):
    # p = 4, m = 6, F = B = W = 1, cap = half of 1F1B's peak, no recompute/offload: the data are
    # exact, so the solver's proven bound holds for the problem and the gap closes.
    p, m = 4, 6
    options = SynthOptions(placements=("standard",), recompute=False, offload=False, baselines=False,
                           solver=solver, time_limit=20.0, optimize="full")
    result = synthesize(lambda placement, k: Costs.uniform(placement.num_stages, act=1.0, wact=0.5), p, m, 2.0,
                        options=options)
    refined, block = result.refined, result.best_synthesized
    assert refined is not None and refined.fits and refined.horizon.proven
    assert refined.makespan <= block.makespan
    assert result.chosen.makespan == refined.makespan
    assert result.bound.source == f"{solver} proven" and result.bound.value == refined.makespan
    assert result.gap == 0.0
    verify(refined.schedule, refined.costs, mem_cap=2.0)


def test_auto_refines_by_neighbourhood_search_when_the_whole_model_is_too_large_for_the_time_limit():
    # 4 x 16 x 3 = 192 jobs > 100 per second of a 0.2 s limit: auto runs LNS from the best
    # candidate, which is never worse than it, and the bound holds.
    options = SynthOptions(placements=("standard",), baselines=False, time_limit=0.2, optimize="auto")
    result = synthesize(unit_costs, 4, 16, 4.0, options=options)
    assert result.refined is not None and result.refined.horizon.solver == "cpsat-lns"
    assert result.refined.makespan <= result.best_synthesized.makespan + 1e-9
    assert result.bound is not None and result.bound.value <= result.chosen.makespan


def test_synth_optimize_full_prints_the_bound_and_the_refinement(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert synth_main([*SMALL, "--placement", "standard", "--mem-cap", "80GB", "--optimize", "full",
                       "--time-limit", "2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lower bound:" in text and "gap" in text and "full horizon (cpsat" in text
    verify(load(out))


def test_progress_line_prints_every_better_schedule_and_the_bound_at_most_once_a_second():
    import io

    from synth.cli.commands import ProgressLine

    out = io.StringIO()
    line = ProgressLine(out)
    line(0.1, None, 90.0)        # printed: the first report
    line(0.2, 120.0, 90.0)       # printed: a schedule
    line(0.3, 120.0, 95.0)       # bound only, within a second of the last line: not printed
    line(0.4, 110.0, 95.0)       # printed: a better schedule
    line(1.5, 110.0, 99.0)       # printed: bound only, a second later
    line(1.6, 110.0, 99.0)       # nothing new
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert "makespan none yet, bound 90.0 ms" in lines[0]
    assert "makespan 110.0 ms, bound 99.0 ms, gap 10.0%" in lines[3]  # (110 - 99) / 110


# ------------------------------------------------------------------------------ options (issue 13)
def test_no_recompute_and_no_offload_exclude_library_schedules_that_do():
    # 1f1b-recompute fits caps no other library schedule does; without recompute it is never a
    # candidate, and nothing chosen recomputes or offloads.
    p, m = 4, 8
    options = SynthOptions(placements=("standard",), recompute=False, offload=False, time_limit=1.0)
    result = synthesize(unit_costs, p, m, 4.0, options=options)
    names = {c.name for c in result.baselines}
    assert "1f1b-recompute" not in names and not {"po-h", "po-f"} & names
    assert ("1f1b-recompute", "recomputes (--no-recompute)") in result.skipped
    for c in (*result.synthesized, *result.baselines, result.chosen):
        assert not {a.op for _, _, a in c.schedule.actions()} & {Op.R, Op.OFFLOAD, Op.RELOAD}


def test_no_library_means_no_library_candidate_or_hint():
    options = SynthOptions(placements=("standard",), baselines=False, time_limit=1.0)
    result = synthesize(unit_costs, 4, 8, 4.0, options=options)
    assert result.baselines == () and result.chosen.synthesized and result.best_baseline is None


def test_a_placement_whose_costs_cannot_be_built_is_skipped_with_why():
    def costs_for(placement, k):
        if placement.num_stages > 4:
            raise ValueError("tiny: 4 layers cannot fill 8 stages\nmore text")
        return unit_costs(placement, k)

    result = synthesize(costs_for, 4, 8, 4.0, options=SynthOptions(placements=("standard", "v"), time_limit=1.0))
    assert ("synth/v", "tiny: 4 layers cannot fill 8 stages") in result.skipped
    assert {c.placement for c in result.synthesized} == {"standard"}
