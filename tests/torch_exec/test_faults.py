"""Faults in the ranks' processes (issue 17): the parent's death ends every worker, and a rank
that is stopped (SIGSTOP) ends the run with a failure instead of a hang.

Both start real gloo process groups (``backends.torch_exec.launch.WorkerGroup``). The bounds are
hang detectors with generous slack (the parent-death watch polls every
``PARENT_WATCH_SECONDS``; a stopped rank's peer fails within the group's timeout), not speed
targets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from backends.torch_exec.launch import RunFailed, WorkerGroup

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    """No such process, or a zombie (exited, not yet reaped by whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_killing_the_parent_ends_every_worker(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from backends.torch_exec.launch import WorkerGroup
        group = WorkerGroup(2, timeout=30, threads=1)
        print(" ".join(str(p.pid) for p in group._procs), flush=True)
        time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)  # nothing in the parent runs: only the workers' watch can act
        parent.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(_gone(pid) for pid in pids):
            time.sleep(0.2)
        assert all(_gone(pid) for pid in pids), "a worker outlived its parent"
    finally:
        parent.kill()


def _stop_rank_one(*, rank, world_size, device):
    import torch

    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    dist.all_reduce(torch.ones(1))  # rank 0 waits for a peer that never comes
    return rank


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_stopped_rank_ends_the_run_within_twice_the_timeout():
    timeout = 10.0
    group = WorkerGroup(2, timeout=timeout, threads=1)
    began = time.monotonic()
    try:
        with pytest.raises(RunFailed) as failed:
            group.run(_stop_rank_one)
        elapsed = time.monotonic() - began
    finally:
        group.close()
    assert elapsed < 2 * timeout, elapsed
    message = str(failed.value)
    assert "rank 1" in message and "stopped" in message
    assert all(code is not None for code in group.exitcodes)  # nothing left running
