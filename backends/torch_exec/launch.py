"""Starting the ranks: local processes (one per rank) or torchrun's environment.

`WorkerGroup` spawns ``nproc`` processes that join one process group (gloo on CPU, NCCL with one
GPU each) and then run any number of tasks in it, so tests run many schedules for the price of
one start-up; `spawn` is the one-task form the CLI uses. A task is a module-level function
called as ``fn(*args, rank=r, world_size=n, device=d)`` on every rank.

Failure handling: a task refused on every rank before any compute (`ExecutorError`) leaves the
group usable and is raised as is. Any other error ends that worker with exit code 1, which
closes its connections, so its peers' waits fail (or time out) and they exit non-zero too;
the parent collects every rank's message and raises `RunFailed`, and terminates a worker that
has not reported ``timeout + 5`` seconds after the first failure (it hangs outside any wait, or
was stopped), killing it if SIGTERM does not end it. Every worker watches its parent and exits
as soon as the parent is gone, whatever signal ended it, so no rank outlives ``synth run``.

Under torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` in the environment) `torchrun_rank`
gives the rank and `init_from_env` joins torchrun's rendezvous instead.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from backends.torch_exec.executor import ExecutorError

__all__ = ["RankFailure", "RunFailed", "WorkerGroup", "init_from_env", "spawn", "torchrun_rank"]


@dataclass(frozen=True, slots=True)
class RankFailure:
    """How one rank ended a failed task: its exit code (None if still running) and its error."""

    rank: int
    exitcode: int | None
    error: str


class RunFailed(RuntimeError):
    """A task failed on at least one rank; ``failures`` has one entry per rank that did not finish."""

    def __init__(self, failures: list[RankFailure]) -> None:
        self.failures = failures
        lines = [f"rank {f.rank} (exit code {f.exitcode}): {f.error.strip().splitlines()[-1] if f.error else '?'}"
                 for f in failures]
        super().__init__("the run failed:\n  " + "\n  ".join(lines))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device(kind: str, local_rank: int) -> torch.device:
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# Seconds between a worker's checks that the process that started it is still alive.
PARENT_WATCH_SECONDS = 0.5


def _watch_parent(parent: int) -> None:
    """End this worker at once when its parent is gone (killed by any signal, even SIGKILL): the
    worker is then re-parented, so ``getppid`` changes. A thread, so a worker busy in compute or
    blocked in a collective still ends."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_WATCH_SECONDS)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@contextlib.contextmanager
def _interrupts_ignored():
    """SIGINT ignored while workers start, so they begin with it ignored (a terminal's Ctrl-C
    reaches the whole process group: the parent alone reports it and ends the ranks, which would
    otherwise each print a KeyboardInterrupt traceback). Only the main thread can set handlers."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _nccl_device(device: torch.device) -> torch.device | None:
    """The rank's GPU for ``init_process_group(device_id=...)`` (NCCL binds its communicator to it
    instead of guessing at the first collective); None on CPU."""
    return device if device.type == "cuda" else None


def _worker(rank: int, world_size: int, port: int, device_kind: str, timeout: float, threads: int,
            tasks: Any, results: Any, parent: int) -> None:
    _watch_parent(parent)
    torch.set_num_threads(threads)
    code = 0
    try:
        device = _device(device_kind, rank)
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout),
                                device_id=_nccl_device(device))
    except Exception:  # noqa: BLE001 - report any start-up failure to the parent
        results.put((rank, "error", traceback.format_exc()))
        code = 1
    while code == 0:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            results.put((rank, "ok", fn(*args, rank=rank, world_size=world_size, device=device)))
        except ExecutorError as exc:  # refused before any compute, identically on every rank
            results.put((rank, "refused", str(exc)))
        except BaseException as exc:  # noqa: BLE001 - the parent reports it; this rank must end
            results.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
            code = 1
    results.close()
    results.join_thread()
    if code == 0:
        dist.destroy_process_group()
    sys.exit(code)


class WorkerGroup:
    """``nproc`` rank processes sharing one process group, running tasks until closed.

    Args:
        nproc: number of ranks.
        device: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL, GPU ``r`` for rank ``r``).
        timeout: seconds a wait inside a rank may take (process-group timeout); the parent also
            gives up on a task this long after its first failure.
        threads: torch intra-op threads per rank (default: the CPU cores split between ranks).
    """

    def __init__(self, nproc: int, *, device: str = "cpu", timeout: float = 60.0, threads: int | None = None) -> None:
        if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
            raise ValueError(f"nproc must be a positive int, got {nproc!r}")
        if device == "cuda" and torch.cuda.device_count() < nproc:
            raise ValueError(f"{nproc} ranks need {nproc} GPUs, found {torch.cuda.device_count()}")
        self.nproc = nproc
        self.timeout = timeout
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(nproc)]
        threads = threads or max(1, (os.cpu_count() or 1) // nproc)
        port = _free_port()
        self._procs = [
            ctx.Process(target=_worker, args=(r, nproc, port, device, timeout, threads, self._tasks[r], self._results,
                                                     os.getpid()),
                        daemon=True)
            for r in range(nproc)
        ]
        with _interrupts_ignored():  # inherited: Ctrl-C is the parent's to handle (it ends the group)
            for proc in self._procs:
                proc.start()
        self.broken = False

    def run(self, fn: Callable[..., Any], *args: Any, deadline: float = 3600.0) -> list[Any]:
        """``fn(*args, rank=, world_size=, device=)`` on every rank; the results by rank.

        Raises:
            ExecutorError: every rank refused the task before compute, or it cannot be pickled to
                reach them (the group stays usable).
            RunFailed: a rank failed; the group is closed.
        """
        if self.broken:
            raise RuntimeError("this worker group was closed after a failed run; start a new one")
        try:  # here, not in the queue's feeder thread: there a failure is printed and the ranks wait forever
            pickle.dumps((fn, args))
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises, the task cannot reach the ranks
            raise ExecutorError(f"the task cannot be sent to the ranks ({type(exc).__name__}: {exc}); every part of "
                                "it (the model spec's functions included) must be picklable: define them at module "
                                "level, not as lambdas or local functions") from None
        for q in self._tasks:
            q.put((fn, args))
        got: dict[int, tuple[str, Any]] = {}
        give_up = time.monotonic() + deadline
        while len(got) < self.nproc:
            try:
                rank, status, value = self._results.get(timeout=0.5)
            except queue.Empty:
                if any(not p.is_alive() for r, p in enumerate(self._procs) if r not in got):
                    break  # a rank died without reporting
                if any(s == "error" for s, _ in got.values()) and any(
                        _stopped(p) for r, p in enumerate(self._procs) if r not in got):
                    break  # a stopped rank never reports: end the run now
                if time.monotonic() > give_up:
                    break
                continue
            got[rank] = (status, value)
            if status == "error":  # the others fail within their wait timeout; give them that long
                give_up = min(give_up, time.monotonic() + self.timeout + 5)
        statuses = {status for status, _ in got.values()}
        if len(got) == self.nproc and statuses == {"ok"}:
            return [got[r][1] for r in range(self.nproc)]
        if len(got) == self.nproc and statuses == {"refused"}:
            raise ExecutorError(got[0][1])
        self._fail(got)

    def _fail(self, got: dict[int, tuple[str, Any]]) -> None:
        """Close a group after a failed task: ranks that reported exit by themselves, silent ones
        (dead or hung) are terminated; raise `RunFailed` with every rank that did not succeed."""
        self.broken = True
        silent = "no report within the timeout: the process died, hung or was stopped (SIGSTOP); ended"
        for r, proc in enumerate(self._procs):
            if r in got:
                proc.join(5)
            _end(proc)
        failures = []
        for r, proc in enumerate(self._procs):
            status, value = got.get(r, ("lost", silent))
            if status != "ok":
                failures.append(RankFailure(r, proc.exitcode, value if isinstance(value, str) else repr(value)))
        self._close_queues()
        raise RunFailed(failures)

    def close(self) -> None:
        if not self.broken:
            for q in self._tasks:
                q.put(None)
            for proc in self._procs:
                proc.join(10)
        for proc in self._procs:
            _end(proc)
        self.broken = True
        self._close_queues()

    def _close_queues(self) -> None:
        for q in (*self._tasks, self._results):
            q.close()
            q.cancel_join_thread()

    @property
    def exitcodes(self) -> list[int | None]:
        return [p.exitcode for p in self._procs]

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stopped(proc) -> bool:
    """``proc`` is stopped (SIGSTOP, a debugger): Linux's /proc state ``T`` or ``t``; False elsewhere."""
    try:
        with open(f"/proc/{proc.pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def _end(proc) -> None:
    """Terminate ``proc`` if it still runs, and kill it if that does not end it within 5 s (a
    stopped process does not act on SIGTERM until continued; SIGKILL ends it anyway)."""
    if proc.is_alive() and not _stopped(proc):
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def spawn(nproc: int, fn: Callable[..., Any], *args: Any, device: str = "cpu", timeout: float = 60.0,
          threads: int | None = None) -> list[Any]:
    """Start ``nproc`` ranks, run one task on them (see `WorkerGroup.run`) and stop them."""
    with WorkerGroup(nproc, device=device, timeout=timeout, threads=threads) as group:
        return group.run(fn, *args)


def torchrun_rank() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when torchrun (or any env:// launcher) started this process."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))


def init_from_env(device_kind: str, timeout: float) -> tuple[int, int, torch.device]:
    """Join torchrun's process group; returns ``(rank, world_size, device)``."""
    found = torchrun_rank()
    if found is None:
        raise RuntimeError("not started by torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not all set")
    rank, world_size, local_rank = found
    device = _device(device_kind, local_rank)
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", init_method="env://", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout),
                            device_id=_nccl_device(device))
    return rank, world_size, device
