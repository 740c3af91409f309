"""A hypothesis fuzz test over ``synth``'s argument lists (issue 17): options drawn with valid,
out-of-range and malformed values, in any order and combination. Every run ends with exit status
0 (a schedule written), 1 (a refusal: one line naming what is wrong) or 2 (argparse's usage
error), never a traceback, within a hang guard.

The time limit is always one of a few small or invalid values (a valid large one would only make
the test slow), and sizes stop where the search refuses a problem too large for its time limit.
"""

from __future__ import annotations

import contextlib
import io
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synth.cli import main as synth_main

_VALUES = {
    "--stages": ["1", "2", "3", "4", "8", "64", "99999", "0", "-1", "x", "2.5"],
    "-m": ["1", "3", "8", "100000000", "0", "-2", "x", "1e9"],
    "--slices": ["1", "2", "4", "64", "0", "-1", "x"],
    "--chunks": ["1", "2", "3", "auto", "64", "0", "x"],
    "--mem-cap": ["40GB", "10GB", "1KB", "1e25", "1e400", "0", "-5GB", "nan", "inf", "abc"],
    "--placement": ["standard", "interleaved", "v", "waves", "bogus"],
    "--global-batch": ["7", "64", "0", "x"],
    "--micro-batch-size": ["1", "2", "0", "x"],
    "--seq-len": ["128", "4096", "0", "x"],
    "--solver": ["cpsat", "cbc", "bogus"],
    "--optimize": ["block", "full", "auto", "bogus"],
    "--time-limit": ["0.3", "0", "-1", "nan", "inf", "x"],
    "--model": ["llama2-13b", "no-such-model"],
}
_FLAGS = ["--no-library", "--no-recompute", "--no-offload", "--no-split-backward", "--force"]

_OPTION = st.one_of(
    st.sampled_from(sorted(_VALUES)).flatmap(lambda name: st.sampled_from(_VALUES[name]).map(lambda v: [name, v])),
    st.sampled_from(_FLAGS).map(lambda flag: [flag]),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.lists(_OPTION, max_size=5))
def test_synth_argument_lists_never_give_a_traceback(tmp_path_factory, options):
    out = tmp_path_factory.mktemp("fuzz") / "s.json"
    argv = ["--time-limit", "0.3", *[word for option in options for word in option], "-o", str(out)]
    err = io.StringIO()
    began = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = synth_main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    elapsed = time.monotonic() - began
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    assert code in (0, 1, 2), (argv, code, text)
    assert elapsed < 120, (argv, elapsed)  # hang guard
    if code == 0:
        assert out.exists(), argv
    else:
        last = text.strip().splitlines()[-1]
        assert last.startswith("synth"), (argv, last)  # "synth: ..." or argparse's "synth: error: ..."
