"""Ctrl-C during ``synth run`` (issue 17): exit status 130, one line, no traceback, and no worker
left behind, whether the interrupt reaches the whole process group (a terminal's Ctrl-C) or the
parent alone (``kill -INT``).

A real 2-rank gloo run of the tiny GPT, long enough (many steps) to be interrupted mid-run. The
bounds are hang guards with wide slack, not speed targets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _gone(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_ends_every_rank_with_exit_130_and_one_line(to):
    run = subprocess.Popen([sys.executable, "-m", "synth.cli", "run", "--baseline", "1f1b", "-p", "2", "-m", "4",
                            "--steps", "100000", "--timeout", "30"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2 and run.poll() is None:
            time.sleep(0.2)
            workers = _children(run.pid)
        assert len(workers) >= 2, "the ranks did not start"
        time.sleep(3)  # into the training steps
        assert run.poll() is None
        if to == "group":
            os.killpg(run.pid, signal.SIGINT)
        else:
            run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        assert "Traceback" not in err
        # Known leftover (issue 18's note): at times multiprocessing's resource tracker, a separate
        # process, warns of a leaked semaphore after the parent has exited; those lines are set aside.
        lines = [line for line in err.splitlines() if line.strip() and "resource_tracker" not in line
                 and not line.lstrip().startswith("warnings.warn(")]
        assert lines and "interrupted" in lines[-1].lower(), err
        end = time.monotonic() + 30
        while time.monotonic() < end and not all(_gone(pid) for pid in workers):
            time.sleep(0.2)
        assert all(_gone(pid) for pid in workers), "a worker outlived the interrupted run"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
