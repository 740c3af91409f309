"""The memory/throughput frontier (``synth.research.frontier``, ``synth frontier``).

Unit costs: F = B = W = 1 time unit and 1 unit of activation memory per full stage (1/p of the
model), no comm, split over a placement's stages; offload off (with unlimited copy bandwidth it
would be free), recompute allowed, synthesized from scratch (the library only as points).
"""

import csv
import math

import pytest

from ir import Costs, UnitCost, simulate, verify
from synth.baselines import BASELINES
from synth.baselines.common import even_split_costs
from synth.cli import main as synth_main
from synth.research.frontier import frontier
from synth.search import NoScheduleFits, SynthOptions, synthesize

P, M = 4, 8
PLACEMENTS = ("standard", "interleaved", "v", "waves")


def unit_costs(placement, k):
    share = placement.p / (placement.num_stages * k)
    unit = UnitCost(f=share, b=share, w=share, act=share)
    return Costs(tuple((unit,) * k for _ in range(placement.num_stages)))


OPTIONS = SynthOptions(placements=PLACEMENTS, time_limit=1.5, baselines=False, offload=False, optimize="auto")


@pytest.fixture(scope="module")
def unit_frontier():
    return frontier(unit_costs, P, M, options=OPTIONS, points=8)


def test_frontier_is_monotone_and_every_point_verifies_under_its_cap(unit_frontier):
    fr = unit_frontier
    values = [pt.chosen.makespan for pt in fr.points]
    assert values == sorted(values, reverse=True)  # tightest cap first: never faster at a tighter cap
    for pt in fr.points:
        cap = math.inf if pt.cap is None else pt.cap
        assert pt.chosen.peak <= cap * (1 + 1e-9)
        assert pt.chosen.makespan <= pt.solved.makespan  # never slower than the cap's own solve
        verify(pt.chosen.schedule, pt.chosen.costs, mem_cap=None if pt.cap is None else pt.cap)
        again = simulate(pt.chosen.schedule, pt.chosen.costs)  # independent re-simulation
        assert math.isclose(again.makespan, pt.chosen.makespan) and max(again.peak) <= cap * (1 + 1e-9)
        assert pt.chosen.synthesized  # from scratch: no library schedule on the frontier
    peaks = [c.peak for c in fr.steps]
    assert peaks == sorted(peaks)
    assert all(a.makespan > b.makespan for a, b in zip(fr.steps, fr.steps[1:], strict=False))
    assert fr.points[0].cap == pytest.approx(fr.least)
    # every bound holds: no point is faster than the bound of any cap at least as loose
    for pt in fr.points:
        cap = math.inf if pt.cap is None else pt.cap
        assert pt.chosen.makespan >= fr.bound_at(cap) * (1 - 1e-9)


def test_frontier_contains_the_closed_form_points(unit_frontier):
    fr, p, m = unit_frontier, P, M
    # (memory in full-stage activations, makespan), closed forms with F = B = W = 1 and no comm:
    closed = {
        "1f1b": (p, 3 * (m + p - 1)),  # PipeDream-flush: (m + p - 1)(F + B + W), p microbatches in flight
        "zb-h1": (p, 3 * m + p - 1),  # Zero Bubble H1: 3m + (p - 1)(F + B - W) at 1F1B's memory
        "1f1b-recompute": (1, 4 * (m + p - 1)),  # each unit F, R, B, W: (m + p - 1)(2F + B + W), one in flight
    }
    for name, (memory, makespan) in closed.items():
        built = BASELINES[name](p, m)
        timeline = simulate(built, even_split_costs(built, f=1, b=1, w=1))
        assert (max(timeline.peak), timeline.makespan) == pytest.approx((memory, makespan))  # the formula holds
        assert fr.at(memory).makespan <= makespan + 1e-9, name
    # V-Min holds (p + 4) // 3 activations and V-Half p / 2 + 1 (Controllable Memory, arXiv 2405.15362);
    # their makespans are the library's simulated ones
    for name, memory in (("v-min", (p + 4) // 3), ("v-half", p // 2 + 1)):
        built = BASELINES[name](p, m)
        timeline = simulate(built, even_split_costs(built, f=1, b=1, w=1))
        assert max(timeline.peak) == pytest.approx(memory)
        assert fr.at(memory).makespan <= timeline.makespan + 1e-9, name
    # every library schedule the options allow is placed against the frontier
    assert {c.name for c in fr.library} >= {"1f1b", "zb-h1", "v-min", "v-half", "1f1b-recompute"}
    assert not any(c.name in ("po-h", "po-f") for c in fr.library)  # offload is off


def test_seeds_make_a_looser_cap_no_slower():
    options = SynthOptions(placements=("standard",), time_limit=0.5, baselines=False, offload=False)
    tight = synthesize(unit_costs, P, M, 2.0, options=options)
    seeded = synthesize(unit_costs, P, M, 2.5, options=SynthOptions(
        placements=("standard",), time_limit=0.5, baselines=False, offload=False,
        construct=False, seeds=(tight.chosen,)))
    assert seeded.chosen.makespan <= tight.chosen.makespan
    # a seed that does what the options forbid is left out
    recomputes = synthesize(unit_costs, P, M, 1.0, options=options).chosen
    assert "recompute" in recomputes.decisions()
    plain = SynthOptions(placements=("standard",), time_limit=0.5, baselines=False, offload=False, recompute=False,
                         seeds=(recomputes,))
    assert "recompute" not in synthesize(unit_costs, P, M, 4.0, options=plain).chosen.decisions()


def test_a_top_below_every_schedule_names_the_least_cap():
    with pytest.raises(NoScheduleFits, match="below its bottom"):
        frontier(unit_costs, P, M, options=OPTIONS, points=2, max_cap=0.01)
    with pytest.raises(ValueError, match="at least 2 points"):
        frontier(unit_costs, P, M, options=OPTIONS, points=1)


def test_synth_frontier_writes_table_csv_and_figure(tmp_path, capsys):
    costs = tmp_path / "costs.json"
    costs.write_text('{"f": 1, "b": 1, "w": 1, "act": 1, "wact": 0, "comm": 0}')
    prefix = tmp_path / "out" / "fr"
    argv = ["frontier", "--costs", str(costs), "--stages", "2", "-m", "4", "--time-limit", "0.5", "--points", "4",
            "--placement", "standard,v", "--out", str(prefix)]
    assert synth_main(argv) == 0
    captured = capsys.readouterr()
    assert "| cap | makespan ms |" in captured.out and "frontier [" in captured.err
    rows = list(csv.DictReader((tmp_path / "out" / "fr.csv").open()))
    frontier_rows = [r for r in rows if r["kind"] == "frontier"]
    assert 2 <= len(frontier_rows) <= 4
    makespans = [float(r["makespan_ms"]) for r in frontier_rows]
    assert makespans == sorted(makespans, reverse=True)
    assert any(r["kind"] == "library" and r["schedule"] == "1f1b" for r in rows)
    assert (tmp_path / "out" / "fr.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "fr.md").read_text().startswith("# Frontier")
    # the outputs exist now: refused before any solve without --force
    assert synth_main(argv) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err and "frontier [" not in err
    assert synth_main(["frontier", "-m", "auto", "--global-batch", "8", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "--microbatches auto" in err and "fixed values" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        synth_main([*argv, "--points", "1"])
    assert exit_.value.code == 2
    assert "at least 2 points" in capsys.readouterr().err
