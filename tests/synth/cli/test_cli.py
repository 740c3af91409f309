"""The user-facing entry points: the IR demo (`python -m ir`) and `synth show`."""

import json

from ir.demo import main as demo_main
from ir.examples import one_f_one_b
from ir.jsonio import save
from synth.cli import main as synth_main


def test_demo_writes_every_form_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_main(["-p", "2", "-m", "3", "--out", str(out)]) == 0
    for name in ("1f1b", "v-greedy"):
        for suffix in (".json", ".csv", ".png", ".trace.json"):
            assert (out / f"{name}{suffix}").stat().st_size > 0
    printed = capsys.readouterr().out
    # 1F1B, p=2, m=3, per-stage f, bw = b + w, comm c (ZB 1.5B: 18.522, 18.086 + 9.337, 0.601), by hand:
    # 0F0 [0,f] 0F1 [f,2f]; 1F0 [f+c,2f+c] 1BW0 -> 2f+c+bw; 0BW0 -> 2f+2c+2bw; 1F1, 1BW1 -> 3f+c+2bw;
    # 0F2 -> 3f+2c+2bw; 0BW1 -> 3f+2c+3bw; 1F2 -> 4f+3c+2bw; 1BW2 -> 4f+3c+3bw; 0BW2 -> 4f+4c+4bw.
    f, bw, c = 18.522, 18.086 + 9.337, 0.601
    row = next(line for line in printed.splitlines() if line.startswith("1f1b"))
    assert float(row.split()[1]) == round(4 * (f + bw) + 4 * c, 3)
    assert json.loads((out / "1f1b.trace.json").read_text())["traceEvents"]
    assert demo_main(["-p", "2", "-m", "3", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_synth_show_summarises_a_saved_schedule(tmp_path, capsys):
    path = save(one_f_one_b(2, 2), tmp_path / "s.json")
    assert synth_main(["show", str(path), "--plot", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "makespan 9," in out  # 1F1B with F=B=W=1, no comm: (m+p-1)(F+B+W) = 3 * 3
    assert (tmp_path / "s.png").exists()


def test_synth_show_reports_bad_input_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "pipesynth.schedule", "version": 99}')
    assert synth_main(["show", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "version" in err and "Traceback" not in err


def test_synth_baselines_lists_the_library_and_show_builds_one(capsys):
    from synth.baselines import BASELINES

    assert synth_main(["baselines"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(BASELINES)
    # ZB-H1 with F=B=W=1 per stage, m >= p: makespan 3m + (p-1)(F+B-W) = 24 + 3 (Qi et al. 2024, sec. 2.1)
    assert synth_main(["show", "--baseline", "zb-h1", "-p", "4", "-m", "8"]) == 0
    assert "makespan 27," in capsys.readouterr().out
    assert synth_main(["show", "--baseline", "nope"]) == 1
    assert "unknown baseline 'nope'; known: gpipe" in capsys.readouterr().err
