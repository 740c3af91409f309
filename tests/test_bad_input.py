"""Bad input at the edge (issue 17): each case ends with a clear one-line refusal (exit 1, or
argparse's exit 2 for a bad option value) that names what is wrong, never a traceback or a hang.

The commands run in-process (an uncaught exception fails the test); the one input that could
block a reader (a named pipe) runs in a subprocess with a timeout.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ir.examples import one_f_one_b
from ir.jsonio import save, to_json
from synth.cli import main as synth_main


def _refused(argv, capsys, *needles, code=1):
    """Run ``synth argv``; the exit code, one line on stderr holding every needle, no traceback."""
    try:
        got = synth_main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        got = exit_.code
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    for needle in needles:
        assert needle in last, (needle, last)
    return last


@pytest.fixture
def schedule_doc():
    return to_json(one_f_one_b(2, 2))


def test_config_fields_name_the_file_and_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_type": "gpt2", "n_layer": "abc", "n_embd": 64, "n_head": 4, "vocab_size": 100}))
    _refused(["costs", "--model", str(bad)], capsys, "bad.json", "'n_layer'", "'abc'", "whole number")
    inf = tmp_path / "inf.json"  # 1e400 parses as an infinite float
    inf.write_text('{"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, '
                   '"vocab_size": 100, "max_position_embeddings": 1e400}')
    _refused(["costs", "--model", str(inf)], capsys, "inf.json", "'max_position_embeddings'", "inf")


def test_schedule_files_that_cannot_be_schedules(tmp_path, capsys, schedule_doc):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _refused(["show", str(deep)], capsys, "deep.json", "nested too deeply")
    huge_rank = dict(schedule_doc, placement=dict(schedule_doc["placement"], stage_to_rank=[0, 1_000_000_000]))
    (tmp_path / "rank.json").write_text(json.dumps(huge_rank))
    _refused(["show", str(tmp_path / "rank.json")], capsys, "stage_to_rank[1]", "rank 1000000000")
    many = dict(schedule_doc, m=1_000_000_000)  # 8 actions cannot run a billion microbatches
    (tmp_path / "many.json").write_text(json.dumps(many))
    _refused(["show", str(tmp_path / "many.json")], capsys, "'m'", "actions in all")
    (tmp_path / "latin1.json").write_bytes(b"\xff\xfe{}")
    _refused(["show", str(tmp_path / "latin1.json")], capsys, "latin1.json", "not UTF-8")
    _refused(["show", str(tmp_path)], capsys, "is a directory")
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")  # a link to a device that reads without end
    _refused(["show", str(zero)], capsys, "zero.json", "not a regular file")
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    _refused(["show", str(loop)], capsys, "loop.json", "cannot be read")


def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    pipe = tmp_path / "pipe.json"
    os.mkfifo(pipe)
    done = subprocess.run([sys.executable, "-m", "synth.cli", "show", str(pipe)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "not a regular file" in done.stderr and "Traceback" not in done.stderr


def test_show_refuses_a_file_and_a_baseline_together(tmp_path, capsys):
    path = save(one_f_one_b(2, 2), tmp_path / "s.json")
    _refused(["show", str(path), "--baseline", "1f1b"], capsys, "not both", "s.json", "1f1b")


def test_output_paths_are_checked_once_before_any_work(tmp_path, capsys):
    same = tmp_path / "x.json"
    _refused(["--stages", "2", "-o", str(same), "--trace", str(same), "--force"], capsys, "same file")
    assert not same.exists()  # refused before the solver ran and wrote anything
    _refused(["--stages", "2", "-o", str(tmp_path)], capsys, "is a directory")
    _refused(["--stages", "2", "-o", "/proc/pipesynth-x.json"], capsys, "cannot write", "/proc")


def test_run_options_out_of_range_are_refused(tmp_path, capsys):
    path = str(save(one_f_one_b(2, 2), tmp_path / "s.json"))
    _refused(["run", path, "--lr", "nan"], capsys, "learning rate", code=2)
    _refused(["run", path, "--lr", "-0.05"], capsys, "must be > 0", code=2)
    _refused(["run", path, "--batch-size", "0"], capsys, "positive integer", code=2)
    _refused(["run", path, "--timeout", "0.001"], capsys, "at least 5", code=2)
    _refused(["run", path, "--dropout", "1.5"], capsys, "[0, 1)", code=2)
    _refused(["run", str(tmp_path)], capsys, "is a directory")


def test_a_cap_above_every_need_is_no_cap(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert synth_main(["--stages", "2", "-m", "4", "--time-limit", "0.5", "--mem-cap", "1e25", "-o", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err and out.exists()


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=6), st.lists(st.integers(-2, 5), max_size=4), st.dictionaries(
                        st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mutated_schedule_files_are_read_or_refused_clearly(tmp_path_factory, data):
    """Replace one field (at any depth) of a valid schedule with an arbitrary value: ``synth show``
    either accepts it or refuses it with its reason; never a traceback."""
    doc = to_json(one_f_one_b(2, 3))
    paths = [("format",), ("version",), ("m",), ("k",), ("meta",), ("placement",), ("placement", "kind"),
             ("placement", "stage_to_rank"), ("placement", "stage_to_rank", 1), ("ranks",), ("ranks", 0),
             ("ranks", 1, 2)]
    path = data.draw(st.sampled_from(paths))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(_VALUES)
    file = tmp_path_factory.mktemp("fuzz") / "s.json"
    file.write_text(json.dumps(doc))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = synth_main(["show", str(file)])
    assert code in (0, 1)
    assert "Traceback" not in err.getvalue()
    if code == 1:  # the refusal starts with the command's name (a rule list may follow, one per line)
        assert err.getvalue().startswith("synth show: ")
