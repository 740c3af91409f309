"""``--costs FILE`` (per-stage costs a user measured), ``--mem-cap`` forms, ``--no-library``,
several ``--placement`` kinds and skipped placements, through the ``synth`` command."""

from __future__ import annotations

import json

import pytest

from ir import Costs, UnitCost, simulate, verify
from ir.jsonio import load, save
from synth.baselines import BASELINES
from synth.cli import main as synth_main

UNIT = {"f": 1, "b": 1, "w": 1, "act": 1, "wact": 1, "comm": 0}
FAST = ["--no-library", "--no-recompute", "--no-offload", "--time-limit", "0.3"]


def _write(tmp_path, data, name: str = "costs.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_costs_file_schedule_verifies_under_the_cap_near_the_bound(tmp_path, capsys):
    costs_file, out = _write(tmp_path, UNIT), tmp_path / "x.json"
    argv = ["--costs", str(costs_file), "--stages", "4", "--microbatches", "8", "--placement", "standard",
            "--no-library", "--no-recompute", "--no-offload", "--time-limit", "0.5", "--mem-cap", "4",
            "-o", str(out)]
    assert synth_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"costs from {costs_file}" in printed and "library excluded (--no-library)" in printed
    assert "tokens/s" not in printed and "MFU" not in printed and "(best baseline)" not in printed
    schedule = load(out)
    costs = Costs.uniform(4, f=1, b=1, w=1, act=1, wact=1)  # the file's costs on the standard placement
    verify(schedule, costs, mem_cap=4)  # 4 = p: ZB-H1's peak (Qi et al. 2024, sec. 2.1)
    makespan = simulate(schedule, costs).makespan
    # Every rank does 3m = 24 units of work and rank p-1 cannot start before p-1 = 3: makespan >= 3m + p - 1
    # = 27, which ZB-H1 reaches at this cap (Qi et al. 2024, sec. 2.1); the list schedulers find it.
    assert makespan == 27
    assert schedule.meta["mem_cap"] == 4 and schedule.meta["costs"] == str(costs_file)


@pytest.mark.parametrize(("data", "field"), [
    ({k: v for k, v in UNIT.items() if k != "comm"}, "'comm'"),  # missing
    ({**UNIT, "bw": 1}, "'bw'"),  # unknown
    ({**UNIT, "f": "fast"}, "'f'"),  # not a number
    ({**UNIT, "b": -1}, "'b'"),  # negative
    ('{"f": 1, "b": 1, "w": NaN, "act": 1, "wact": 1, "comm": 0}', "'w'"),  # NaN (Python's JSON reads it)
    ('{"f": 1, "b": 1, "w": 1, "act": Infinity, "wact": 1, "comm": 0}', "'act'"),  # inf
    ({**UNIT, "act": 1, "wact": 2}, "'wact'"),  # wact > act
    ({**UNIT, "inp": [0, 0, 0, 3]}, "'inp'"),  # inp > act, on rank 3
    ({**UNIT, "act": [1, 1, 1]}, "'act' has 3 values but there are 4 ranks"),  # wrong length
    ({**UNIT, "static": [0, True, 0, 0]}, "'static[1]'"),  # a bool is not a number
])
def test_each_bad_costs_file_is_one_line_naming_the_field(tmp_path, capsys, data, field):
    path = _write(tmp_path, data)
    assert synth_main(["--costs", str(path), "-p", "4", "-o", str(tmp_path / "s.json"), *FAST]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert field in err and str(path) in err
    assert not (tmp_path / "s.json").exists()


def test_model_options_and_unit_sizes_are_refused_beside_a_costs_file(tmp_path, capsys):
    path = _write(tmp_path, UNIT)
    assert synth_main(["--costs", str(path), "--gpu", "h100-80gb", "-p", "4", *FAST]) == 1
    assert "drop --gpu" in capsys.readouterr().err
    assert synth_main(["--costs", str(path), "--mem-cap", "40GB", "-p", "4", *FAST]) == 1
    assert "plain number" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: neither a size nor 1f1b*X
        synth_main(["--costs", str(path), "--mem-cap", "lots"])
    assert "1f1b*0.5" in capsys.readouterr().err


def test_mem_cap_as_a_fraction_of_1f1b_peak(tmp_path, capsys):
    data = {**UNIT, "act": [2, 1, 1, 1], "wact": 0.5, "static": [1, 0, 0, 0]}
    path, out = _write(tmp_path, data), tmp_path / "x.json"
    argv = ["--costs", str(path), "-p", "4", "-m", "8", "--placement", "standard", "--mem-cap", "1f1b*0.5",
            "-o", str(out), *FAST]
    assert synth_main(argv) == 0
    capsys.readouterr()
    # Independently: the file's costs on the standard placement (c = k = 1), 1F1B from the library.
    units = tuple((UnitCost(f=1, b=1, w=1, act=a, wact=0.5, comm=0),) for a in data["act"])
    costs = Costs(units, static=(1, 0, 0, 0))
    peak = max(simulate(BASELINES["1f1b"](4, 8, costs=costs), costs).peak)
    assert peak == 1 + 4 * 2  # rank 0: static + p microbatches in flight of act 2
    schedule = load(out)
    assert schedule.meta["mem_cap"] == pytest.approx(peak / 2)
    assert max(simulate(schedule, costs).peak) <= peak / 2 + 1e-9


def test_show_uses_the_costs_file(tmp_path, capsys):
    schedule = save(BASELINES["1f1b"](2, 2), tmp_path / "s.json")
    path = _write(tmp_path, {**UNIT, "f": 2})
    assert synth_main(["show", str(schedule), "--costs", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"costs from {path}" in out
    assert "makespan 12," in out  # 1F1B: (m + p - 1)(f + b + w) = 3 * (2 + 1 + 1)
    assert synth_main(["show", str(schedule), "--costs", str(path), "--f", "3"]) == 1
    assert "drop --f" in capsys.readouterr().err


def test_costs_command_prints_the_file_split_over_the_placement(tmp_path, capsys):
    path = _write(tmp_path, {**UNIT, "f": [2, 4], "offload": 0.5})
    assert synth_main(["costs", "--costs", str(path), "-p", "2", "--placement", "interleaved", "-m", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4  # 2 ranks x 2 chunks
    # stage 3 sits on rank 1 (interleaved: s % p): F = 4 / 2 chunks; copy = act / (act / offload) halved too
    assert rows[3].split("|")[1:5] == [" 3 ", " 1 ", " 2 ", " 0.5 "]
    assert rows[3].split("|")[10].strip() == "0.25"
    assert "1F1B on these costs" in out


def test_skipped_placement_is_one_line(tmp_path, capsys):
    config = {"model_type": "llama", "num_hidden_layers": 24, "hidden_size": 256, "num_attention_heads": 4,
              "intermediate_size": 688, "vocab_size": 1000, "max_position_embeddings": 512}
    path = _write(tmp_path, config, "config.json")
    argv = ["--model", str(path), "--stages", "8", "-m", "8", "--placement", "standard", "--placement", "waves",
            "-o", str(tmp_path / "s.json"), *FAST]
    assert synth_main(argv) == 0
    out = capsys.readouterr().out
    # waves (2 waves) needs 2 * 2 * 8 = 32 stages; 24 layers fill at most 24 + 2 (first and last may be empty)
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped waves: ") and "32 stages" in skipped[0]
    assert "placements tried: standard (" in out and "peak per GPU (GiB)" in out
