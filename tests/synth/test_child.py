"""The MILP twins' child process (synth.child): every way it can fail becomes a BlockError that
says what happened, for both callers (the block MILP and the full-horizon MILP)."""

from __future__ import annotations

import subprocess

import pytest

from ir import Costs, Placement
from synth import child
from synth.block import milp
from synth.block.spec import BlockError, BlockOptions, block_spec
from synth.horizon import milp as horizon_milp
from synth.horizon.spec import expand


def block_milp() -> None:
    milp.solve_spec_milp(block_spec(Costs.uniform(2), Placement.standard(2), BlockOptions()), BlockOptions(), "highs")


def horizon_milp_() -> None:
    h = expand(block_spec(Costs.uniform(2), Placement.standard(2), BlockOptions()), 2)
    horizon_milp.solve_horizon_milp(h, solver="highs", time_limit=1)


@pytest.mark.parametrize("caller", [block_milp, horizon_milp_])
@pytest.mark.parametrize(("failure", "message"), [
    (subprocess.TimeoutExpired("python", 1.0), "did not finish"),
    (subprocess.CompletedProcess("python", 1, "", "Traceback ...\nMemoryError"), "failed \\(exit 1\\)"),
    (subprocess.CompletedProcess("python", 0, "oops", ""), "printed no answer"),
    (subprocess.CompletedProcess("python", 0, '{"error": "no highspy"}', ""), "no highspy"),
])
def test_a_failed_child_becomes_a_block_error(monkeypatch, caller, failure, message):
    def run(*args, **kwargs):
        if isinstance(failure, Exception):
            raise failure
        return failure

    monkeypatch.setattr(child.subprocess, "run", run)
    with pytest.raises(BlockError, match=message):
        caller()
