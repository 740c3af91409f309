"""Synthesized schedules on torch's real runtime, ``synth --torch-csv`` and ``synth export torchtitan``.

Every schedule ``synthesize`` returns on small problems (every placement, loose and tight caps,
recompute allowed on one) is either exported, in both of torch's formats, and run by torch's own
``_PipelineScheduleRuntime`` (4 gloo processes, ``tests/ir/torch_runtime_peer.py``) with the
gradients of a single-process run, or refused by the export with the reason. The CSVs the
``synth`` command and ``synth export torchtitan`` write run there too (one process group for
all); the commands' refusals are one line on stderr, with nothing written.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from ir import Action, Op, Placement, simulate
from ir.examples import greedy
from ir.jsonio import load, save
from ir.torch_csv import FORMATS, TorchCsvError, from_torch_csv, to_torch_csv, torch_order
from synth.baselines import build
from synth.cli import main as synth_main
from synth.search import SynthOptions, synthesize
from tests.ir.torch_runtime_peer import run_on_torch
from tests.synth.test_search import SMALL, unit_costs

P, M = 4, 8
ONE_F_ONE_B_PEAK = max(simulate(build("1f1b", P, M), unit_costs(Placement.standard(P), 1)).peak)
# name -> (placements, cap as a fraction of 1F1B's peak or None, recompute allowed, optimize)
PROBLEMS = {
    "standard": (("standard",), None, False, "block"),
    "interleaved": (("interleaved",), None, False, "block"),
    "v": (("v",), None, False, "block"),
    "waves": (("waves",), None, False, "full"),
    "v at half 1f1b": (("v",), 0.5, False, "full"),
    "standard at 1f1b": (("standard",), 1.0, False, "block"),
    "standard recompute at 0.4 1f1b": (("standard",), 0.4, True, "block"),
}
COSTS_FILE = {"f": 1, "b": 1, "w": 1, "act": 1, "wact": 0.5, "inp": 0.1, "comm": 0}


def _synthesized() -> dict:
    """``{(problem, candidate): Candidate}`` of every schedule synthesized on the problems (list
    schedulers, blocks and, with optimize "full", the full horizon's)."""
    out = {}
    for problem, (placements, fraction, recompute, optimize) in PROBLEMS.items():
        cap = None if fraction is None else fraction * ONE_F_ONE_B_PEAK
        options = SynthOptions(placements=placements, recompute=recompute, offload=False, baselines=False,
                               time_limit=1.0 if optimize == "full" else 0.6, optimize=optimize)
        result = synthesize(unit_costs, P, M, cap, options=options)
        for candidate in (*result.synthesized, *([result.refined] if result.refined else [])):
            out[problem, candidate.name] = candidate
    return out


def _synth(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = synth_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _case(name, path, fmt, schedule) -> dict:
    return {"name": name, "csv": str(path), "format": fmt, "m": schedule.m,
            "stage_to_rank": list(schedule.placement.stage_to_rank)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The synthesized schedules' CSVs (or refusals) and the commands' outputs, all run on torch at once."""
    folder = tmp_path_factory.mktemp("torch-export")
    cases, refused, candidates = [], {}, _synthesized()
    for n, (key, candidate) in enumerate(candidates.items()):
        try:
            ready = torch_order(candidate.schedule)
            texts = {fmt: to_torch_csv(ready.schedule, format=fmt, costs=candidate.costs) for fmt in FORMATS}
        except TorchCsvError as err:
            refused[key] = str(err)
            continue
        for fmt, text in texts.items():
            path = folder / f"synth{n}.{fmt}.csv"
            path.write_text(text)
            cases.append(_case(f"{key} {fmt}", path, fmt, ready.schedule))
    commands = {}
    common = [*SMALL, "--placement", "v", "--mem-cap", "80GB", "--no-recompute", "--no-offload"]
    commands["only"] = _synth(*common, "-o", folder / "v.json", "--torch-csv", folder / "v.csv")
    commands["comms"] = _synth(*common, "-o", folder / "v2.json", "--torch-csv", folder / "v2.csv",
                               "--torch-csv-format", "compute_comms")
    commands["titan"] = _synth("export", "torchtitan", folder / "v.json", "--csv", folder / "titan.csv")
    for name, file, fmt in (("only", "v", "compute_only"), ("comms", "v2", "compute_comms"),
                            ("titan", "titan", "compute_only")):
        if commands[name][0] == 0:
            cases.append(_case(f"command {name}", folder / f"{file}.csv", fmt, load(folder / "v.json")))
    return {"candidates": candidates, "refused": refused, "commands": commands, "folder": folder,
            "runs": run_on_torch(cases, P, folder)}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_synthesized_schedules_run_on_torch_or_are_refused_with_the_reason(exported, problem):
    keys = [key for key in exported["candidates"] if key[0] == problem]
    assert keys, f"synthesize returned nothing on {problem}"
    for key in keys:
        if key in exported["refused"]:
            reason = exported["refused"][key]
            assert exported["candidates"][key].schedule.ops_used() & {Op.R, Op.OFFLOAD, Op.RELOAD}, reason
            assert "no recompute/offload op" in reason and "--no-recompute --no-offload" in reason
            continue
        for fmt in FORMATS:
            report = exported["runs"][f"{key} {fmt}"]
            assert report["error"] is None, f"{key} {fmt}: {report['error']}"


def test_both_outcomes_occur(exported):
    ran = {key for key in exported["candidates"] if key not in exported["refused"]}
    assert len(ran) >= 8 and {key[0] for key in ran} >= set(PROBLEMS) - {"standard recompute at 0.4 1f1b"}
    assert any(name.startswith("synth-full/") for _, name in ran)
    assert any(key[0] == "standard recompute at 0.4 1f1b" for key in exported["refused"])


# ------------------------------------------------------------------------------- synth --torch-csv


def test_torch_csv_is_compute_only_by_default_and_runs_on_torch(exported):
    code, out, err = exported["commands"]["only"]
    folder = exported["folder"]
    assert code == 0, err
    assert f"wrote {folder / 'v.csv'} (torch compute_only CSV)" in out
    text = (folder / "v.csv").read_text()
    assert "SEND" not in text and "RECV" not in text and "REDUCE_GRAD" not in text
    schedule = load(folder / "v.json")
    assert text == to_torch_csv(torch_order(schedule).schedule)
    assert from_torch_csv(text).ranks == torch_order(schedule).schedule.ranks
    assert exported["runs"]["command only"]["error"] is None, exported["runs"]["command only"]["error"]


def test_torch_csv_format_compute_comms_gives_single_process_gradients(exported):
    code, out, err = exported["commands"]["comms"]
    folder = exported["folder"]
    assert code == 0, err
    assert "(torch compute_comms CSV)" in out
    rows = (folder / "v2.csv").read_text().splitlines()
    for rank, row in enumerate(rows):  # V: rank r holds stages r and 7 - r, one REDUCE_GRAD each
        assert sorted(c for c in row.split(",") if "REDUCE_GRAD" in c) == sorted(
            [f"{rank}REDUCE_GRAD", f"{2 * P - 1 - rank}REDUCE_GRAD"])
    assert "SEND_F" in rows[0] and "RECV_B" in rows[0]
    assert exported["runs"]["command comms"]["error"] is None, exported["runs"]["command comms"]["error"]


def _costs_file(tmp_path):
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(COSTS_FILE))
    return path


def test_torch_csv_refuses_slices_before_solving(tmp_path):
    out, csv = tmp_path / "s.json", tmp_path / "s.csv"
    code, _, err = _synth("--costs", _costs_file(tmp_path), "-p", "4", "-m", "8", "-k", "2", "-o", out,
                          "--torch-csv", csv, "--time-limit", "0.3")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no sequence slices" in err and "-k 1" in err and not out.exists() and not csv.exists()


def test_torch_csv_format_needs_torch_csv(tmp_path):
    code, _, err = _synth("--costs", _costs_file(tmp_path), "-p", "4", "-o", tmp_path / "s.json",
                          "--torch-csv-format", "compute_comms")
    assert code == 1 and "--torch-csv-format compute_comms needs --torch-csv PATH" in err


def test_torch_csv_refuses_a_recomputing_choice_and_writes_nothing(tmp_path):
    out, csv = tmp_path / "s.json", tmp_path / "s.csv"
    code, _, err = _synth("--costs", _costs_file(tmp_path), "-p", "4", "-m", "8", "--placement", "standard",
                          "--mem-cap", "1.5", "--no-offload", "--time-limit", "0.5", "-o", out, "--torch-csv", csv)
    last = err.strip().splitlines()[-1]  # after the solver's progress lines
    assert code == 1 and last.startswith("synth: --torch-csv") and "Traceback" not in err
    assert "is R; torch's runtime has no recompute/offload op" in last and "nothing was written" in last
    assert "--no-recompute --no-offload" in last and not out.exists() and not csv.exists()


# ------------------------------------------------------------------------------- synth export


def test_export_torchtitan_prints_the_settings_and_its_csv_runs(exported):
    code, out, err = exported["commands"]["titan"]
    folder = exported["folder"]
    assert code == 0, err
    csv = folder / "titan.csv"
    assert csv.read_text() == (folder / "v.csv").read_text()
    for line in ("parallelism.pipeline_parallel_degree = 4", "parallelism.pipeline_parallel_schedule = 'ZBVZeroBubble'",
                 f"parallelism.pipeline_parallel_schedule_csv = '{csv.resolve()}'",
                 "parallelism.num_pp_microbatches = 8",
                 "parallelism.pipeline_parallel_layers_per_stage = 3",  # gpt-1.5b: ceil((22 + 2) / 3) = 8 stages
                 "training.num_tokens_per_microbatch_per_dp_rank = 1024",
                 "stages per rank: 2 (rank 0: 0, 7; rank 1: 1, 6; rank 2: 2, 5; rank 3: 3, 4)",
                 "V style only for ZBVZeroBubble and DualPipeV", "pipeline_parallel_microbatch_size = 1"):
        assert line in " ".join(out.split()), f"{line!r} not in:\n{out}"
    assert f"--parallelism.pipeline_parallel_schedule_csv {csv.resolve()}" in out
    assert exported["runs"]["command titan"]["error"] is None, exported["runs"]["command titan"]["error"]


@pytest.mark.parametrize(("make", "name", "per_rank"), [
    (lambda: build("1f1b", 4, 8), "'1F1B'", "1 (rank 0: 0; rank 1: 1; rank 2: 2; rank 3: 3)"),
    (lambda: build("interleaved", 4, 8), "'Interleaved1F1B'", "2 (rank 0: 0, 4;"),
    (lambda: build("zb-h1", 2, 4), "'1F1B'", "1 (rank 0: 0; rank 1: 1)"),
])
def test_export_names_the_schedule_torchtitan_places_the_same_way(tmp_path, make, name, per_rank):
    save(make(), tmp_path / "s.json")
    code, out, err = _synth("export", "torchtitan", tmp_path / "s.json")
    assert code == 0, err
    assert f"parallelism.pipeline_parallel_schedule = {name}" in " ".join(out.split())
    assert f"stages per rank: {per_rank}" in out and (tmp_path / "s.csv").exists()
    assert "leave it unset" in out  # no layer count recorded; torchtitan's default stage count is right


def test_export_computes_layers_per_stage_for_more_chunks(tmp_path):
    save(greedy(Placement.interleaved(4, 3), 8), tmp_path / "s.json")
    code, out, err = _synth("export", "torchtitan", tmp_path / "s.json", "--layers", "22")
    assert code == 0, err
    assert "parallelism.pipeline_parallel_layers_per_stage = 2" in " ".join(out.split())  # ceil(24 / 2) = 12 stages
    code, out, err = _synth("export", "torchtitan", tmp_path / "s.json", "--csv", tmp_path / "t.csv")
    assert code == 0 and "pipeline_parallel_layers_per_stage: needed" in out  # 3 per rank is not the default


def test_export_refuses_to_overwrite_without_force(tmp_path):
    save(build("1f1b", 2, 4), tmp_path / "s.json")
    (tmp_path / "s.csv").write_text("mine")
    code, _, err = _synth("export", "torchtitan", tmp_path / "s.json")
    assert code == 1 and "already exists" in err and (tmp_path / "s.csv").read_text() == "mine"
    assert _synth("export", "torchtitan", tmp_path / "s.json", "--force")[0] == 0
    assert (tmp_path / "s.csv").read_text() == to_torch_csv(build("1f1b", 2, 4))


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda: build("hanayo", 4, 8), "torchtitan cannot place this schedule's stages"),
    (lambda: build("1f1b-recompute", 4, 8), "no recompute/offload op"),
    (lambda: build("seq1f1b", 4, 8), "no sequence slices"),
    (lambda: build("1f1b", 1, 4), "pipeline_parallel_degree = 1"),
])
def test_export_refuses_what_torchtitan_cannot_run_in_one_line(tmp_path, make, fragment):
    save(make(), tmp_path / "s.json")
    code, _, err = _synth("export", "torchtitan", tmp_path / "s.json")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("synth export: ") and fragment in err and not (tmp_path / "s.csv").exists()


def test_export_renumbers_a_last_stage_out_of_order(tmp_path):
    schedule = greedy(Placement.v_shape(2), 4, split_backward=True)
    rename = (0, 2, 3, 1)
    shuffled = schedule.with_programs([[Action(a.op, a.stage, rename[a.microbatch]) for a in prog]
                                       for prog in schedule.ranks])
    save(shuffled, tmp_path / "s.json")
    code, out, err = _synth("export", "torchtitan", tmp_path / "s.json")
    assert code == 0, err
    assert "microbatches renumbered (1->3, 2->1, 3->2)" in out
    assert (tmp_path / "s.csv").read_text() == to_torch_csv(schedule)
