"""The full-horizon schedule as a MILP (PuLP with HiGHS or CBC), the twin of ``synth.horizon.cpsat``.

Both models read the same integer data, a ``synth.horizon.spec.Horizon`` (jobs = passes x
microbatches in ticks, precedences with comm latency, lifespans in memory units, budgets), and
both minimize ``makespan * weight + decisions`` with ``weight = 1 + len(groups)``, so the
makespan comes first and then the fewest recompute/offload decisions. This file reads like a
solver sample: data, variables, one helper per constraint family, objective, solve.

- Tightening: the same as CP-SAT's (``synth.horizon.spec.Tighten``, sent to the child with the
  data). The microbatch order and the cap's precedences are rows of ``Horizon.links``, so they enter
  as precedences and, through the forced orders below, remove most no-overlap binaries (two runs of
  one pass are ordered); the cap's ``either`` rows get one binary each (``e = 1``: after the first
  job, else after the second); memory rows are left out on ranks whose cap those rows state exactly
  (``Horizon.exact_cap``); start windows are the start variables' bounds (``[head, upper - dur -
  tail]`` for mandatory jobs); the load cuts are rows on the makespan. Nothing is missing from the twin.
- Variables: integer ``start[j]`` in ``[0, upper - dur[j]]`` (or its window) for every job; binary ``x[g, v]``
  per group and variant with ``sum_v x[g, v] == 1``; a job or span with presence ``(g, v)``
  exists iff ``x[g, v] = 1`` (``absent`` below is ``1 - x``, 0 for the mandatory ones); integer
  ``makespan`` in ``[floor, upper]``, ``floor = ceil(horizon_bound)`` (``synth.horizon.bounds``).
- Precedences: ``start[later] >= start[earlier] + dur[earlier] + gap - M (absent later + absent
  earlier)``, ``M = max start[earlier] + dur[earlier] + gap`` (each big-M below is likewise the
  largest value the row's right side minus its left side can take, from the variables' bounds).
- Forced order (the Zero Bubble paper's transitive-closure pruning): over the precedence graph,
  with every step's jobs but the path's two ends mandatory, ``S[a]`` holds the jobs whose start
  is at least ``start[a]`` (every step has ``dur + gap >= 0``; the symmetry chain's start-to-
  start edges, gap ``-dur``, and the order's rows are such steps), ``E[a]`` those whose start is at least ``a``'s end
  (a first step with ``gap >= 0``, then steps of ``S``), ``T[a]`` those whose start is strictly
  after ``start[a]`` (some step has ``dur + gap >= 1``); all are Python ints used as bitsets.
  They hold whenever both ends exist, so each use below is relaxed by the ends' absence.
- No-overlap per (rank, stream), jobs with ``dur > 0``, for each pair ``(a, b)`` that can
  coexist: if ``b`` is in ``S[a]``, ``a`` goes first (two jobs of one stream cannot start
  together) and ``start[b] >= start[a] + dur[a] - M (absent a + absent b)`` is added without a
  binary (and left out when ``b`` is in ``E[a]``, where the precedences already say it); the
  mirror likewise; else one binary ``o`` (1: ``a`` first) with ``start[b] >= start[a] + dur[a]
  - M (1 - o) - M (absent a + absent b)`` and ``start[a] >= start[b] + dur[b] - M o - M (...)``.
- Makespan: ``makespan >= start[j] + dur[j] - M absent(j)``, left out for a job whose ``E`` holds
  a mandatory job (that one ends later).
- Memory (only with a budget), per rank ``r``: memory rises only where a span begins, so the level
  is checked at the start of every allocation job ``a`` (the begin job of a span of ``r``): for
  every span ``L`` of ``r`` that can coexist with ``a``, binary ``z[L, a]`` ("``L`` has begun by
  ``start[a]``": ``z = 0 => start[begin_L] >= start[a] + 1``) and ``y[L, a]`` ("``L`` has ended":
  ``y = 1 => start[end_L] + dur[end_L] <= start[a]``, so a free at the instant of an allocation
  counts as done, as in CP-SAT's cumulative), ``y <= z``; ``L`` is alive as ``z - y`` (a mandatory
  span), or as continuous ``w >= z - y - absent(L)``, ``w >= 0``; ``sum units_L * alive <=
  budget[r] + relax * absent(a)``. The forced orders fix what they can: ``z = 1`` when ``begin_L``
  is ``a`` or starts no later (``a`` in ``S[begin_L]``), ``z = 0`` when ``begin_L`` starts after
  ``a`` ends (``begin_L`` in ``E[a]``, ``dur[a] >= 1``), ``y = 1`` when ``a`` starts after
  ``end_L`` ends, ``y = 0`` when ``end_L`` starts no earlier than ``a`` (and ``dur >= 1``); a pair
  with ``z = 0`` or ``y = 1`` fixed is never alive and is left out.
- RELOAD timing (as ``synth.horizon.cpsat.add_reload_timing``): a RELOAD ``rho`` that exists starts at its
  OFFLOAD's end, at the end of another existing copy of its rank, or at the start of an existing
  compute job of its rank other than its own unit's B, BW and R (copies are not pruned). One
  binary ``a[rho, c]`` per candidate ``c``, ``sum_c a[rho, c] == x`` (the
  RELOAD's variant: all 0 when it is absent), ``a[rho, c] <= x_c`` for an optional candidate (an
  R of another group), and ``a = 1 => start[rho] == time_c`` as ``start[rho] >= time_c - M (1 -
  a)`` and ``time_c >= start[rho] - M (1 - a)`` (a side that a forced order gives is left out; a
  lone candidate uses ``x`` as its ``a``). Pruning is sound: a job in ``T[rho]``, or with ``rho``
  or ``rho``'s OFFLOAD in its ``T`` (or in its ``S`` when the OFFLOAD lasts a tick or more), never
  starts with ``rho``, so it is no candidate; nothing else is dropped.
- Objective: ``makespan * weight + sum x[g, v]`` over ``v != "keep"``. The makespan bound from an
  objective bound ``b`` is ``max(floor, floor(b) // weight)``.
- Hints: as ``solve_horizon``, the best hint that satisfies the model (``fits_model``) caps the
  makespan (``upper``) and is the MIP start (every variable set, the binaries from its times;
  absent jobs start at 0); the answer is never worse than it (status "hint" when the solver
  returns nothing better).

Process split: ortools 9.15 and highspy cannot share a process, and ``import pulp`` imports
highspy. So the parent side (``solve_horizon_milp``) imports neither pulp nor highspy, and the
child (``python -m synth.horizon.milp``, JSON request on stdin, JSON reply on stdout) never
imports ortools (nor ``synth.horizon.cpsat``); ``synth.horizon.spec``, ``synth.block.spec`` and
``synth.horizon.bounds`` import no solver.

Solvers (PuLP 3.3.2, HiGHS 1.15 through highspy, PuLP's bundled CBC 2.10). Statuses are read as
``synth.block.milp`` reads them: ``prob.sol_status`` 1 is proven optimal, 2 a solution found before
the time limit (``prob.status`` says "Optimal" for both), ``prob.status`` -1 infeasible. Both
solvers run with ``mip_rel_gap = 0`` and an absolute gap just under 1 (the objective is
integral). HiGHS: ``pulp.HiGHS`` has no MIP start (``warmStart=True`` only reaches HiGHS as an
unknown option), so a subclass passes the start to ``Highs.setSolution`` before ``run``; the
bound is ``getInfo().mip_dual_bound`` of ``prob.solverModel``. CBC: ``PULP_CBC_CMD(warmStart=
True)`` writes the start as a ``-mips`` file; the bound is read from CBC's log (``logPath``):
its "Lower bound:" summary line, else the last "best possible" progress line; where the log
gives none (e.g. stopped before the search), the floor stands, which is always valid.
"""

from __future__ import annotations

import math
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synth.block.spec import BlockError, BlockSpec
from synth.child import ask, serve
from synth.horizon.bounds import horizon_bound
from synth.horizon.rows import paths
from synth.horizon.spec import Horizon, Solution, Tighten, expand, fits_model, realize, violations

if TYPE_CHECKING:
    from synth.horizon.milp_model import Model

__all__ = ["MILP_SOLVERS", "main", "model_size", "solve_horizon_milp"]

MILP_SOLVERS = ("highs", "cbc")


Progress = Callable[[float, int | None, int], None]  # (seconds, makespan or None, bound), ticks


# ------------------------------------------------------------------------------------- parent side
def solve_horizon_milp(h: Horizon, *, solver: str, time_limit: float, workers: int = 2,
                       hints: list[Solution] = (), progress: Progress | None = None):
    """Minimize the makespan of ``h`` with a MILP (``solver``: "highs" or "cbc") within ``time_limit``
    seconds, in a child process; the same semantics as ``synth.horizon.cpsat.solve_horizon``.

    Returns:
        A ``synth.horizon.cpsat.HorizonResult``; its history is the final point only, and ``progress``
        (if given) is called once, at the end.

    Raises:
        BlockError: the solver is unknown or missing, or the child failed or timed out.
    """
    from synth.horizon.cpsat import HorizonResult  # the parent may hold ortools; only the child must not

    reply = _ask(h, solver, time_limit, workers, hints, build_only=False)
    solution = None if reply["solution"] is None else Solution.from_json(reply["solution"])
    makespan = reply["makespan"]
    bound = int(reply["bound"])
    seconds = float(reply["seconds"])
    status = reply["status"]
    proven = status == "optimal" or (makespan is not None and makespan <= bound)
    history = [(round(seconds, 3), makespan, bound)]
    if progress is not None:
        progress(seconds, makespan, bound)
    return HorizonResult(solution, makespan, bound, proven, status, seconds, solver, history)


def model_size(h: Horizon, hints: list[Solution] = (), solver: str = "highs") -> dict[str, int]:
    """The MILP's size (``columns``, ``binaries``, ``integers``, ``rows``) for ``h`` with these hints
    (the best fitting one sets ``upper``), built in a child process without solving."""
    return _ask(h, solver, 0.0, 1, hints, build_only=True)["size"]


def _ask(h: Horizon, solver: str, time_limit: float, workers: int, hints, build_only: bool) -> dict[str, Any]:
    if solver not in MILP_SOLVERS:
        raise BlockError(f"unknown MILP solver {solver!r}; choose one of {', '.join(MILP_SOLVERS)}")
    request = {"spec": h.spec.to_json(), "m": h.m, "tighten": h.tighten.to_json(),
               "hints": [s.to_json() for s in hints],
               "time_limit": time_limit, "workers": workers, "solver": solver, "build_only": build_only}
    # The solve takes time_limit (less the model's build); building and start-up get room too.
    return ask("synth.horizon.milp", request, 2 * time_limit + 120, f"the {solver} full-horizon MILP",
               f"its solve may take only {time_limit:g} s")


# --------------------------------------------------------------------------------------- child side
def main() -> int:
    """The child: read the request on stdin, write the reply (or ``{"error": ...}``) on stdout."""
    return serve(_serve)


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    h = expand(BlockSpec.from_json(request["spec"]), int(request["m"]), Tighten(**request.get("tighten", {})))
    hints = [Solution.from_json(s) for s in request["hints"]]
    solver, time_limit, workers = request["solver"], float(request["time_limit"]), int(request["workers"])
    _check_solver(solver)  # fails early on a missing solver
    fitting = sorted((s for s in hints if fits_model(h, s)), key=lambda s: s.makespan(h))
    best_hint = fitting[0] if fitting else None
    upper = h.upper if best_hint is None else min(h.upper, best_hint.makespan(h))
    heads_tails = paths(h)
    floor = _floor(h, upper, heads_tails)

    def reply(solution: Solution | None, bound: int, status: str) -> dict[str, Any]:
        return {"solution": None if solution is None else solution.to_json(),
                "makespan": None if solution is None else solution.makespan(h), "bound": int(bound),
                "status": status, "seconds": time.perf_counter() - began}

    if floor > upper:
        return reply(None, floor, "infeasible")
    from synth.horizon.milp_model import Model  # imports pulp: the child only

    model = Model(h, upper, floor, heads_tails)
    if request.get("build_only"):
        return {"size": model.size()}
    if best_hint is not None:
        model.set_start(best_hint)
    limit = max(0.05, time_limit - (time.perf_counter() - began))
    outcome, obj_bound = _solve(model, solver, limit, workers, best_hint is not None)
    weight = model.weight
    bound = floor if obj_bound is None else max(floor, int(math.floor(obj_bound + 1e-9)) // weight)
    if outcome in ("optimal", "feasible"):
        solution = model.decode()
        problems = violations(h, solution, upper)
        if problems:  # a model or rounding bug: never hand back a wrong schedule
            print(f"horizon_milp: the {solver} solution breaks the model: {problems[:5]}", file=sys.stderr)
            outcome = "unknown"
        # As CP-SAT's: only a solution the simulator reproduces is handed back (the model's RELOAD
        # rule is a relaxation of the simulator's); the bound stands either way.
        if outcome == "optimal" and not problems:  # the model's optimum bounds every schedule
            bound = max(bound, solution.makespan(h))
        solution = None if problems else realize(h, solution)
        if solution is not None and (best_hint is None or solution.makespan(h) <= best_hint.makespan(h)):
            makespan = solution.makespan(h)
            proven = makespan <= bound
            return reply(solution, makespan if proven else bound, "optimal" if proven else "feasible")
    if outcome == "infeasible" and best_hint is None:
        return reply(None, floor, "infeasible")
    if best_hint is not None:
        settled = best_hint.makespan(h) <= bound
        return reply(best_hint, best_hint.makespan(h) if settled else bound, "optimal" if settled else "hint")
    return reply(None, bound, "unknown")


def _floor(h: Horizon, upper: int, heads_tails: tuple[list, list]) -> int:
    """``ceil`` of ``synth.horizon.bounds.horizon_bound``; ``upper + 1`` (infeasible) when it is infinite
    (a budget that holds no microbatch)."""
    value = horizon_bound(h, heads_tails).value
    return upper + 1 if math.isinf(value) else int(math.ceil(value - 1e-9))


def _check_solver(solver: str) -> None:
    """Raise a ``BlockError`` that says what to install unless ``solver`` can run here; imports
    pulp, so only the child calls it."""
    try:
        import pulp
    except ImportError as e:
        raise BlockError("the MILP solvers need PuLP: pip install pulp, or use the cpsat solver") from e
    if solver == "highs":
        if not pulp.HiGHS(msg=False).available():
            raise BlockError("the highs solver needs highspy: pip install highspy, or use the cpsat or cbc solver")
    elif solver == "cbc":
        pulp.set_v4_migration_warnings(False)  # PuLP 3.3 deprecates its bundled CBC for 4.0; it still works
        if not pulp.PULP_CBC_CMD(msg=False).available():
            raise BlockError("the cbc solver needs PuLP's bundled CBC, which is missing here; reinstall pulp, "
                             "or use the cpsat or highs solver")
    else:
        raise BlockError(f"unknown MILP solver {solver!r}; choose one of {', '.join(MILP_SOLVERS)}")


# ------------------------------------------------------------------------------------------ solve
_LOWER_BOUND = re.compile(r"^Lower bound:\s*(-?[0-9.eE+-]+)", re.MULTILINE)
_BEST_POSSIBLE = re.compile(r"best possible (-?[0-9.eE+-]+)")


def _solve(model: Model, solver: str, time_limit: float, workers: int, warm: bool) -> tuple[str, float | None]:
    """Solve; ``(outcome, objective bound or None)`` with outcome "optimal", "feasible",
    "infeasible" or "unknown"."""
    import pulp

    prob = model.prob
    obj_bound: float | None = None
    if solver == "highs":
        prob.solve(_highs_class()(msg=False, timeLimit=time_limit, threads=workers, gapRel=0.0, gapAbs=0.999,
                                  warm=warm))
        info = prob.solverModel.getInfo()
        if math.isfinite(info.mip_dual_bound):
            obj_bound = float(info.mip_dual_bound)
    else:
        with tempfile.TemporaryDirectory(prefix="horizon_milp_") as tmp:
            log = Path(tmp) / "cbc.log"
            backend = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, threads=workers, gapRel=0.0, gapAbs=0.999,
                                        warmStart=warm, logPath=str(log))
            prob.solve(backend)
            obj_bound = _cbc_bound(log.read_text(errors="replace"))
    if prob.sol_status == pulp.LpSolutionOptimal:
        return "optimal", obj_bound
    if prob.sol_status == pulp.LpSolutionIntegerFeasible:
        return "feasible", obj_bound  # stopped at the time limit with a solution (prob.status says Optimal)
    if prob.status == pulp.LpStatusInfeasible:
        return "infeasible", obj_bound  # CBC's "Integer infeasible" leaves sol_status at NoSolutionFound
    return "unknown", obj_bound


def _cbc_bound(log: str) -> float | None:
    """The objective bound in a CBC log: the summary's "Lower bound:", else the last "best possible"."""
    for pattern in (_LOWER_BOUND, _BEST_POSSIBLE):
        found = pattern.findall(log)
        if found:
            try:
                return float(found[-1])
            except ValueError:
                continue
    return None


def _highs_class():
    """``pulp.HiGHS`` with a MIP start: the variables' initial values go to ``Highs.setSolution``."""
    import numpy as np
    import pulp

    class Highs(pulp.HiGHS):
        def __init__(self, *, warm: bool = False, **kwargs) -> None:
            super().__init__(**kwargs)
            self.warm = warm

        def callSolver(self, lp) -> None:  # noqa: N802 (PuLP's name)
            if self.warm:
                given = [(var.index, var.varValue) for var in lp.variables() if var.varValue is not None]
                if given:
                    index = np.array([i for i, _ in given], dtype=np.int32)
                    value = np.array([v for _, v in given], dtype=np.float64)
                    lp.solverModel.setSolution(len(given), index, value)
            lp.solverModel.run()

    return Highs


if __name__ == "__main__":
    sys.exit(main())
