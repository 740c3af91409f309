"""A solver in a child process, JSON in and JSON out: what the MILP twins (``synth.block.milp``,
``synth.horizon.milp``) share.

``ortools`` 9.15 and ``highspy`` 1.15 cannot be imported into one Python process (each one's shared
library leaves the other with undefined symbols), and ``import pulp`` imports highspy. So the MILPs
run in ``python -m <module>``: `ask` sends the request on stdin and reads the reply from stdout;
`serve` is the child's side. Every failure (timeout, crash, no reply, an error the child reports)
comes back as a ``BlockError`` that says what to do. This module imports no solver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synth.block.spec import BlockError

__all__ = ["ask", "serve"]

_ROOT = Path(__file__).resolve().parent.parent  # the directory holding the ``synth`` package


def ask(module: str, request: dict[str, Any], timeout: float, what: str, limit: str) -> dict[str, Any]:
    """Run ``python -m module`` with ``request`` and return its reply.

    Args:
        module: the child's module (its ``main`` calls `serve`).
        request: the JSON request.
        timeout: seconds before the child is stopped.
        what: the job's name in error messages, e.g. "the highs MILP search".
        limit: what the time limit allowed, for the timeout message, e.g. "each solve may take only 2 s".

    Raises:
        BlockError: the child timed out, failed, printed no reply, or replied with an error.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run([sys.executable, "-m", module], input=json.dumps(request), text=True,
                              capture_output=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise BlockError(f"{what} did not finish in {timeout:g} s although {limit}; lower the time limit, "
                         f"or use the cpsat solver") from e
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise BlockError(f"{what} process failed (exit {done.returncode}); run `python -m {module}` by hand to "
                         f"debug, or use the cpsat solver:\n{tail}")
    try:
        reply = json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise BlockError(f"{what} process printed no answer: {done.stdout[-300:]!r}") from e
    if "error" in reply:
        raise BlockError(reply["error"])
    return reply


def serve(handle: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """The child's side: read the request on stdin, write ``handle(request)`` (or ``{"error": ...}``
    for a ``BlockError``) on stdout. The solvers' C code may print to fd 1, so the reply keeps a copy
    of it and everything else goes to stderr."""
    reply_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    request = json.load(sys.stdin)
    try:
        reply = handle(request)
    except BlockError as e:
        reply = {"error": str(e)}
    json.dump(reply, reply_to)
    reply_to.close()
    return 0
