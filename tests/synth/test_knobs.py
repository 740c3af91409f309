"""The knob search (``synth.research.knobs``, ``synth -m/-k/--chunks auto``): the best trial is the
fastest by the documented measure, its schedule is valid and fits, and what cannot be searched is
refused in one line."""

from __future__ import annotations

import json

import pytest

from ir import simulate, verify
from ir.jsonio import load
from synth.cli import main as synth_main
from synth.cli.source import FileSource, ModelSource
from synth.costs import CostModelError, hardware
from synth.costs.args import fixed_batch
from synth.costs.problem import Training
from synth.costs.spec import preset
from synth.costs.user import parse_user_costs
from synth.research.knobs import KnobError, search_knobs
from synth.search import SynthOptions

UNIT = {"f": 1, "b": 1, "w": 1, "act": 1, "wact": 0.5, "comm": 0.05}


def _costs_file(tmp_path) -> str:
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(UNIT))
    return str(path)


def _first_fastest(trials):
    """The documented rule, restated: the shortest iteration time, ties to the first trial."""
    shortest = min(t.iteration_ms for t in trials if t.ok)
    return next(t for t in trials if t.ok and t.iteration_ms <= shortest * (1 + 1e-9))


def test_microbatches_auto_keeps_the_trial_with_the_most_tokens_per_s():
    hw = hardware("a100-80gb")
    training = Training(offload_optimizer="states")  # a host optimizer step, so the overhead must count

    def make_source(micro_batch, m):
        return ModelSource(preset("gpt-1.5b", micro_batch=micro_batch or 1), hw, training, m, "balanced", "balanced")

    options = SynthOptions(placements=("standard", "v"), time_limit=1.5)
    search = search_knobs(make_source, 2, hw.memory, microbatches="auto", global_batch=8, options=options,
                          min_trial_seconds=0.3)
    assert [(t.knobs.micro_batch, t.knobs.m) for t in search.trials] == [(1, 8), (2, 4), (4, 2)]
    assert search.not_tried == (("micro-batch 8", "m 1 < 2 stages leaves most of the pipeline idle"),)
    rates = []
    for t in search.trials:
        assert t.ok, t.error
        c, spec = t.chosen, t.source.spec
        overhead = t.source.problem(c.schedule.placement, c.schedule.k).step_overhead_ms
        assert overhead > 0
        # tokens = m x micro-batch x seq over the makespan plus the host step, recomputed by hand
        tokens_per_s = t.knobs.m * spec.micro_batch * spec.seq_len / ((c.makespan + overhead) / 1e3)
        assert t.throughput.tokens_per_s == pytest.approx(tokens_per_s, rel=1e-12)
        rates.append(tokens_per_s)
    best = search.best
    assert best is _first_fastest(search.trials)
    assert best.throughput.tokens_per_s == pytest.approx(max(rates), rel=1e-9)
    # the chosen schedule verifies, simulates to the makespan reported and fits the cap
    c = best.chosen
    verify(c.schedule, c.costs, mem_cap=hw.memory)
    timeline = simulate(c.schedule, c.costs)
    assert timeline.makespan == pytest.approx(c.makespan) and max(timeline.peak) <= hw.memory and c.fits
    assert c.schedule.m == best.knobs.m
    # each placement searched has its own row, the chosen one's among them
    rows = best.by_placement()
    assert [r.placement for r in rows][:2] == ["standard", "v"]
    assert any(r.candidate.schedule == c.schedule for r in rows)


def test_slices_and_chunks_auto_on_a_costs_file_rank_by_makespan():
    user = parse_user_costs(UNIT, 2)
    options = SynthOptions(placements=("standard", "interleaved"), time_limit=1.0)
    search = search_knobs(lambda b, m: FileSource(user), 2, 6.0, microbatches=4, slices="auto", chunks="auto",
                          options=options, min_trial_seconds=0.2)
    knobs = [(t.knobs.k, t.knobs.chunks, t.placements) for t in search.trials]
    # later chunk values search only the chunked placement (standard does not depend on chunks)
    assert knobs[:3] == [(1, 2, ("standard", "interleaved")), (1, 3, ("interleaved",)), (1, 4, ("interleaved",))]
    assert {k for k, _, _ in knobs} == {1, 2, 4, 8}
    assert not search.throughput and all(t.throughput is None for t in search.trials)
    for t in search.trials:
        if t.ok:
            assert t.iteration_ms == t.chosen.makespan  # no host step: the makespan is the measure
            verify(t.chosen.schedule, t.chosen.costs, mem_cap=6.0)
    assert search.best is _first_fastest(search.trials)
    assert search.best.chosen.schedule.k == search.best.knobs.k


def test_chunks_auto_without_a_chunked_placement_is_not_varied():
    user = parse_user_costs(UNIT, 2)
    search = search_knobs(lambda b, m: FileSource(user), 2, None, microbatches=2, chunks="auto",
                          options=SynthOptions(placements=("standard",), time_limit=0.3), min_trial_seconds=0.2)
    assert len(search.trials) == 1 and "chunks not varied" in search.notes[0]


def test_knob_errors_name_the_fix():
    user = parse_user_costs(UNIT, 2)
    with pytest.raises(KnobError, match="needs the cost model"):
        search_knobs(lambda b, m: FileSource(user), 2, None, microbatches="auto", global_batch=8)

    def model(b, m):
        return ModelSource(preset("gpt-1.5b", micro_batch=b or 1), hardware("a100-80gb"), Training(), m,
                           "balanced", "balanced")

    with pytest.raises(KnobError, match="needs --global-batch"):
        search_knobs(model, 2, None, microbatches="auto")
    with pytest.raises(KnobError, match="use --global-batch 4 or more"):
        search_knobs(model, 4, None, microbatches="auto", global_batch=3)
    with pytest.raises(KnobError, match="drop --micro-batch-size 2"):
        search_knobs(model, 2, None, microbatches="auto", global_batch=8, micro_batch=2)


def test_fixed_batch_splits_the_global_batch():
    assert fixed_batch(8, None, None) == (8, None)
    assert fixed_batch(8, 16, None) == (8, 2)
    assert fixed_batch(None, 16, 4) == (4, 4)
    assert fixed_batch(None, 16, None) == (16, 1)
    with pytest.raises(CostModelError, match="does not split into 6 microbatches"):
        fixed_batch(6, 16, None)
    with pytest.raises(CostModelError, match="is not -m 8 x --micro-batch-size 4"):
        fixed_batch(8, 16, 4)


@pytest.mark.parametrize("argv, message", [
    (["-m", "auto"], "--microbatches auto needs --global-batch G"),
    (["--costs", "{costs}", "-p", "2", "-m", "auto"], "needs the cost model"),
    (["--costs", "{costs}", "-p", "2", "-m", "auto", "--global-batch", "8"], "needs the cost model"),
    (["--costs", "{costs}", "-p", "2", "-m", "4", "--global-batch", "8"], "drop --global-batch"),
    (["-m", "6", "--global-batch", "16"], "does not split into 6 microbatches"),
    (["costs", "-m", "auto"], "-m/--microbatches auto: this command takes fixed values"),
    (["costs", "--costs", "{costs}", "-p", "2", "-k", "auto"], "-k/--slices auto: this command takes fixed values"),
    (["costs", "--placement", "interleaved", "--chunks", "auto"], "--chunks auto: this command takes fixed values"),
])
def test_refusals_are_one_line_without_traceback(tmp_path, capsys, argv, message):
    argv = [arg.replace("{costs}", _costs_file(tmp_path)) for arg in argv]
    if argv[0] != "costs":
        argv += ["-o", str(tmp_path / "s.json")]
    assert synth_main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_knobs_take_a_number_or_auto(capsys):
    with pytest.raises(SystemExit):
        synth_main(["-k", "x"])
    assert "expected a positive integer or auto, got 'x'" in capsys.readouterr().err


def test_synth_with_auto_prints_the_trials_then_the_best_and_writes_it(tmp_path, capsys):
    out = tmp_path / "s.json"
    argv = ["--costs", _costs_file(tmp_path), "-p", "2", "-m", "4", "--slices", "auto", "--placement", "standard",
            "--time-limit", "1", "-o", str(out)]
    assert synth_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("knob search: slices 1, 2, 4, 8; 4 trial(s)") and "ranked by makespan" in lines[0]
    header = lines[2].split()  # a costs file: no micro-batch size, tokens/s or MFU
    assert header[:5] == ["m", "k", "chunks", "placement", "schedule"] and "tokens/s" not in header
    end = next(i for i, line in enumerate(lines) if line.startswith("best: "))
    rows = [row.split() for row in lines[3:end]]
    # one row per trial and placement: standard, and the library's best when on another placement
    assert sorted({int(row[1]) for row in rows}) == [1, 2, 4, 8] and sum("(best)" in row for row in rows) == 1
    best = lines[end]
    k = int(best.split(", k ")[1].split(",")[0])
    assert any(line.startswith("costs from") and f"{k} slice(s)" in line for line in lines)  # the usual report
    schedule = load(out)
    assert schedule.k == k and schedule.meta["knob_search"]["chosen"]["k"] == k
    assert lines[-1] == f"wrote {out}"


def test_synth_without_auto_is_unchanged(tmp_path, capsys):
    out = tmp_path / "s.json"
    argv = ["--costs", _costs_file(tmp_path), "-p", "2", "-m", "4", "--placement", "standard", "--time-limit", "0.5",
            "-o", str(out)]
    assert synth_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("costs from") and lines[1].startswith("placements tried: standard")
    assert not any("knob search" in line for line in lines)
    assert "knob_search" not in load(out).meta and "micro_batch" not in load(out).meta


def test_global_batch_with_a_fixed_m_sets_the_micro_batch_size(capsys):
    assert synth_main(["costs", "--model", "gpt-1.5b", "-p", "2", "-m", "4", "--global-batch", "8"]) == 0
    assert "micro-batch 2" in capsys.readouterr().out


def test_a_micro_batch_that_fits_nothing_prunes_the_larger_ones():
    def make_source(micro_batch, m):
        return ModelSource(preset("gpt-1.5b", micro_batch=micro_batch or 1), hardware("a100-80gb"), Training(), m,
                           "balanced", "balanced")

    search = search_knobs(make_source, 2, 1e9, microbatches="auto", global_batch=4,
                          options=SynthOptions(placements=("standard",), time_limit=0.3), min_trial_seconds=0.2)
    assert [t.knobs.micro_batch for t in search.trials] == [1] and search.best is None
    assert search.not_tried[-1] == ("micro-batch 2 (k 1, chunks 2)", "micro-batch 1 with the same slices and "
                                    "chunks fits no schedule, and a larger micro-batch needs more memory")
    assert "no trial of the knob search found a schedule" in search.failure() and "--mem-cap" in search.failure()
