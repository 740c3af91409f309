"""The building-block model as a MILP (PuLP with HiGHS or CBC), the twin of ``synth.block.cpsat``.

Both models read the same integer data, a ``synth.block.spec.BlockSpec``, and both search the
period with ``search_period``: feasibility probes (constant objective) over T, then one solve
that minimizes the block length at the smallest feasible T (a probe's block stands in if that
solve finds nothing). Here ``time_limit`` bounds each solve; CP-SAT shares it over the search.
This file reads like a solver sample: data, variables, one helper per constraint family,
objective, solve.

- Data: the ``BlockSpec`` (passes with durations in ticks, ranks, copy-stream passes, optional
  passes per variant, precedences, lifespans and budgets in memory units, horizon, anchors).
- Variables: integer ``start[x]`` in [0, horizon] for every pass; binary ``choice[s, v]`` per
  stage and variant (at most one per stage; none = "keep"); a pass is present if it is
  mandatory or its variant is chosen; integer ``lap[x]`` in [0, horizon // T + 1]; a binary
  order per pair of passes on one stream; integer ``n`` per lifespan; integer ``length``.
- Precedences: ``start[later] >= start[earlier] + dur[earlier] + gap - M (2 - both present)``
  with ``M = horizon + dur[earlier] + gap``.
- Copies: a block of u microbatches holds u copies of every pass (``Pass.micro``), with edges
  and lifespans per copy; copy 0's laps are >= 0, the others' any integer; ``start[first of copy
  r + 1] >= start[first of copy r] + dur`` and the last copy's first forward ends within T.
- Modular no-overlap per (rank, stream): ``phase[x] = start[x] - start[anchor] - T lap[x]`` in
  ``[0, T - d]``, then for each pair a binary order ``o`` and ``phase[x] + d[x] <= phase[y] +
  T (1 - o) + T (absent x + absent y)`` (and the mirror with ``T o``). ``M = T`` suffices: with
  phases in [0, T - d] no difference exceeds T. The phase bounds hold for absent passes too,
  unlike CP-SAT's optional intervals; that changes nothing, because an absent pass's start is
  bound by nothing else (its edges, length and lifespan rows are all relaxed), so it can always
  sit at its anchor. Passes with d = 0 are skipped; an optional pass with d > T is absent.
- Memory (only with a budget): ``n T >= start[end] + dur[end] - start[begin] - M (off)`` with
  ``M = horizon + dur[end]``, where ``off`` is the sum of the stage's choices for "keep" and
  ``1 - choice`` for a variant; per rank ``sum units * n <= budget``.
- Length: ``start[first] == 0``, ``length >= start[x] + d - (horizon + d) absent(x)``.

Process split: ortools 9.15 and highspy 1.15 cannot share a process (each one's shared library
leaves the other with undefined symbols, whichever is imported first), and ``import pulp``
imports highspy. So this module never imports ortools (nor ``synth.block.cpsat``), and the parent
side imports neither pulp nor highspy: ``solve_spec_milp`` runs ``python -m synth.block.milp`` with
``{"spec", "time_limit", "workers", "solver", "m", "known"}`` as JSON on stdin and reads ``{"answer": ...}``
or ``{"error": ...}`` from stdout. Every failure there (timeout, crash, no block, a missing
solver) comes back as a ``BlockError`` that says what to do.

Status (PuLP 3.3.2, HiGHS 1.15.1 through highspy, PuLP's bundled CBC 2.10.3), found by solving
with time limits too short to finish: ``prob.status`` alone misleads; it says "Optimal" (1)
for a CBC or HiGHS run stopped by its time limit with a solution in hand. ``prob.sol_status``
tells them apart: ``LpSolutionOptimal`` (1) means proven, ``LpSolutionIntegerFeasible`` (2)
means a solution found before the limit. A run stopped without a solution gives status
"Not Solved" (0) and ``LpSolutionNoSolutionFound`` (0) for both solvers. A proven infeasible
model gives status "Infeasible" (-1) for both; HiGHS sets ``LpSolutionInfeasible`` (-1) with
it, but CBC's "Integer infeasible" leaves ``sol_status`` at ``LpSolutionNoSolutionFound`` (0),
so infeasibility is read from ``status``. Hence a probe is True with a solution (1 or 2),
False when infeasible, else None (unknown); a final with only a feasible solution reports
``optimal=False``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from synth.block.objective import widen
from synth.block.period import Answer, search_period
from synth.block.spec import BlockError, BlockOptions, BlockSpec, Pass
from synth.child import ask, serve

__all__ = ["MILP_SOLVERS", "main", "solve_spec_milp"]

MILP_SOLVERS = ("highs", "cbc")
WIDEN_SAMPLES = 8  # larger periods widen may solve before refining (each solve has the whole limit)



# ------------------------------------------------------------------------------------- parent side
def solve_spec_milp(spec: BlockSpec, options: BlockOptions, solver: str, known: Answer | None = None) -> Answer:
    """The MILP answer for ``spec`` (smallest period, then shortest block; with ``options.m`` the
    shortest tiled makespan, ``synth.block.objective.widen``), solved in a child process.

    Args:
        spec: the block data.
        options: ``time_limit`` (seconds for each MILP solve; CP-SAT shares it over the whole
            search instead), ``workers`` (solver threads) and ``m`` are used.
        solver: "highs" or "cbc".
        known: a block satisfying ``spec``: only smaller periods are searched.

    Raises:
        BlockError: no block fits, the solver is unknown or missing, or the child failed or timed out.
    """
    if solver not in MILP_SOLVERS:
        raise BlockError(f"unknown MILP solver {solver!r}; choose one of {', '.join(MILP_SOLVERS)}")
    request = {"spec": spec.to_json(), "time_limit": options.time_limit, "workers": options.workers,
               "solver": solver, "m": options.m, "known": None if known is None else known.to_json()}
    # Generous: every one of search_period's solves (at most ceil(log2(horizon)) + 1 probes and
    # a final) taking its whole limit, plus start-up; widen's (at most twice its samples) too.
    solves = math.ceil(math.log2(max(2, spec.horizon))) + 3 + (0 if options.m is None else 2 * WIDEN_SAMPLES)
    reply = ask("synth.block.milp", request, options.time_limit * solves + 60, f"the {solver} MILP search",
                f"each solve may take only {options.time_limit:g} s")
    return Answer.from_json(reply["answer"])


# --------------------------------------------------------------------------------------- child side
def main() -> int:
    """The child: read the request on stdin, write ``{"answer": ...}`` or ``{"error": ...}`` on stdout."""
    def answer(request: dict) -> dict:
        known = request.get("known")
        return {"answer": _search(BlockSpec.from_json(request["spec"]), float(request["time_limit"]),
                                  int(request["workers"]), request["solver"], request.get("m"),
                                  None if known is None else Answer.from_json(known)).to_json()}

    return serve(answer)


def _search(spec: BlockSpec, time_limit: float, workers: int, solver: str, m: int | None = None,
            known: Answer | None = None) -> Answer:
    """``search_period`` with MILP solves of ``time_limit`` seconds each, then with ``m``
    ``widen``. A probe hands back the block it found, which stands in if the final solve finds
    nothing in time."""
    backend = _backend(solver, time_limit, workers)

    def probe(period: int):
        outcome, v = _solve(spec, period, backend, optimize=False)
        if outcome in _FOUND:
            return True, _decode(spec, v)
        return False if outcome == "infeasible" else None

    def final(period: int):
        outcome, v = _solve(spec, period, backend, optimize=True)
        if outcome not in _FOUND:
            return False if outcome == "infeasible" else None
        return (outcome == "optimal", *_decode(spec, v))

    answer = search_period(spec, probe, final, time_limit, known)
    if m is None:
        return answer
    return widen(spec, answer, final, int(m), lambda: True, WIDEN_SAMPLES)


def _backend(solver: str, time_limit: float, workers: int):
    """The PuLP solver object; imported here so the parent never loads pulp (and with it highspy)."""
    try:
        import pulp
    except ImportError as e:
        raise BlockError("the MILP solvers need PuLP: pip install pulp, or use --solver cpsat") from e
    if solver == "highs":
        backend = pulp.HiGHS(msg=False, timeLimit=time_limit, threads=workers)
        if not backend.available():
            raise BlockError("--solver highs needs highspy: pip install highspy, or use --solver cpsat or cbc")
    elif solver == "cbc":
        # PuLP 3.3 deprecates its bundled CBC (PULP_CBC_CMD) for 4.0; it still ships and works.
        pulp.set_v4_migration_warnings(False)
        backend = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, threads=workers)
        if not backend.available():
            raise BlockError("--solver cbc needs PuLP's bundled CBC, which is missing here; reinstall pulp, "
                             "or use --solver cpsat or highs")
    else:
        raise BlockError(f"unknown MILP solver {solver!r}; choose one of {', '.join(MILP_SOLVERS)}")
    return backend


# ---------------------------------------------------------------------------------------- variables
@dataclass
class _Vars:
    start: dict[Pass, Any]
    present: dict[Pass, Any]  # 1 for a mandatory pass, else its stage's choice variable
    choice: dict[tuple[int, str], Any]
    length: Any


def _variables(prob, spec: BlockSpec) -> _Vars:
    import pulp

    def var(name: str, lo: int, hi: int, cat: str = pulp.LpInteger):
        return prob.add_variable(name, lo, hi, cat=cat)

    start = {x: var(f"start_{x.name}", 0, spec.horizon) for x in spec.dur}
    choice = {(s, c): var(f"{c}_s{s}", 0, 1, pulp.LpBinary) for s, cs in spec.choices.items() for c in cs}
    for s, cs in spec.choices.items():
        if len(cs) > 1:  # a unit is recomputed or offloaded, not both
            prob += pulp.lpSum(choice[(s, c)] for c in cs) <= 1, f"one_variant_s{s}"
    present = {x: choice[(x.stage, spec.optional[x])] if x in spec.optional else 1 for x in spec.dur}
    return _Vars(start, present, choice, var("block_length", 0, spec.horizon))


def _absent(v: _Vars, *passes: Pass):
    """How many of ``passes`` are absent (an expression; 0 when all are mandatory)."""
    return sum(1 - v.present[x] for x in passes)


# ------------------------------------------------------------------------------------- constraints
def add_precedences(prob, v: _Vars, spec: BlockSpec) -> None:
    """DESIGN.md's dependencies within one microbatch, with comm latency between ranks; an edge
    binds only when both of its passes are present (big-M: an edge spans at most the horizon)."""
    for i, (later, earlier, gap) in enumerate(spec.edges):
        big_m = spec.horizon + spec.dur[earlier] + gap
        prob += (v.start[later] >= v.start[earlier] + spec.dur[earlier] + gap - big_m * _absent(v, later, earlier),
                 f"edge{i}_{later.name}_after_{earlier.name}")


def add_modular_no_overlap(prob, v: _Vars, spec: BlockSpec, period: int) -> None:
    """No two passes of any microbatches overlap on a rank's compute stream or copy stream.

    Each pass maps to its phase ``start - start[anchor] - lap T`` in ``[0, T - d]`` (the anchor,
    the rank's first forward, starts no later than any pass on the rank, so cutting the circle
    there cuts no pass); then every pair on one stream is ordered by a binary, big-M ``T``.
    """
    import pulp

    streams: dict[tuple[int, bool], list[Pass]] = {}
    phase = {}
    for x, d in spec.dur.items():
        if d == 0:
            continue
        if d > period:  # only optional passes can be: T is at least a rank's mandatory load
            prob += v.present[x] == 0, f"too_long_{x.name}"
            continue
        laps = spec.horizon // period + 1
        lap = prob.add_variable(f"lap_{x.name}", 0 if x.micro == 0 else -laps, laps, cat=pulp.LpInteger)
        phase[x] = v.start[x] - v.start[spec.anchor(spec.rank[x])] - period * lap
        prob += phase[x] >= 0, f"phase_lo_{x.name}"
        prob += phase[x] <= period - d, f"phase_hi_{x.name}"
        streams.setdefault((spec.rank[x], x in spec.copy), []).append(x)
    for passes in streams.values():
        for i, x in enumerate(passes):
            for y in passes[i + 1:]:
                before = prob.add_variable(f"order_{x.name}_{y.name}", 0, 1, cat=pulp.LpBinary)  # 1: x first
                slack = period * _absent(v, x, y)
                prob += phase[x] + spec.dur[x] <= phase[y] + period * (1 - before) + slack, f"x_{x.name}_{y.name}"
                prob += phase[y] + spec.dur[y] <= phase[x] + period * before + slack, f"x_{y.name}_{x.name}"


def add_memory_cap(prob, v: _Vars, spec: BlockSpec, period: int) -> None:
    """Memory per rank within its budget, in the model ``spec.memory`` names (as ``synth.block.cpsat``).

    "exact": at every instant a lifespan begins (each present F, R, RELOAD), the periodic level
    ``sum units * (floor((t - b) / T) - floor((t - e) / T))`` fits; ``T q <= x <= T q + T - 1``
    defines each floor. "ceil": ``sum n * units`` with ``n T >= lifespan``. A lifespan binds only in
    its stage's variant ("keep": no choice taken); elsewhere big-M rows let its count be 0.
    """
    import pulp

    if spec.budget is None:
        return
    bound = spec.horizon // period + 2
    if spec.memory == "ceil":
        terms: dict[int, list] = {r: [] for r in range(spec.p)}
        for i, span in enumerate(spec.lifespans):
            n = prob.add_variable(f"alive{i}_{span.variant}_{span.end.name}", 0, bound, cat=pulp.LpInteger)
            big_m = spec.horizon + spec.dur[span.end]
            life = v.start[span.end] + spec.dur[span.end] - v.start[span.begin]
            prob += period * n >= life - big_m * _inactive(v, spec, span), f"life{i}"
            terms[span.rank].append(span.units * n)
        for r, rank_terms in terms.items():
            _budget_row(prob, v, spec, r, rank_terms, None)
        return
    floors: dict[tuple, Any] = {}

    def floor_of(at: Pass, x: Pass, shift: int):
        """q = floor((start[at] - start[x] - shift) / T), as T q <= diff <= T q + T - 1."""
        if (at, x, shift) not in floors:
            name = f"{at.name}_{x.name}_{shift}"
            q = prob.add_variable(f"floor_{name}", -bound, bound, cat=pulp.LpInteger)
            diff = v.start[at] - v.start[x] - shift
            prob.addConstraint(period * q <= diff, f"floor_lo_{name}")
            prob.addConstraint(diff <= period * q + period - 1, f"floor_hi_{name}")
            floors[(at, x, shift)] = q
        return floors[(at, x, shift)]

    for r, at, spans in spec.allocation_instants():
        terms = []
        for i, span in enumerate(spans):
            (b, b_shift), (e, e_shift) = spec.alive_terms(at, span)
            count = prob.add_variable(f"alive_{at.name}_{i}", 0, bound, cat=pulp.LpInteger)
            prob += (count >= floor_of(at, b, b_shift) - floor_of(at, e, e_shift)
                     - 2 * bound * _inactive(v, spec, span)), f"alive_{at.name}_{i}"
            terms.append(span.units * count)
        _budget_row(prob, v, spec, r, terms, at, period)
    for r in set(range(spec.p)) - {span.rank for span in spec.lifespans}:
        _budget_row(prob, v, spec, r, [], None)


def _inactive(v: _Vars, spec: BlockSpec, span):
    """1 when ``span``'s variant is not its stage's choice, else 0 (a linear expression)."""
    import pulp

    chosen = [v.choice[(span.stage, c)] for c in spec.choices[span.stage]]
    return pulp.lpSum(chosen) if span.variant == "keep" else 1 - v.choice[(span.stage, span.variant)]


def _budget_row(prob, v: _Vars, spec: BlockSpec, r: int, terms: list, at: Pass | None, period: int = 1) -> None:
    """``sum terms <= budget[r]``, relaxed when the instant ``at`` is an absent pass."""
    import pulp

    name = f"budget_r{r}" + ("" if at is None else f"_{at.name}")
    if not terms:
        if spec.budget[r] < 0:  # static memory alone is over the cap: no variable to say so with
            prob += v.length <= -1, name
        return
    total_units = sum(span.units for span in spec.lifespans if span.rank == r)
    slack = 0 if at is None else (spec.horizon // period + 2) * total_units * _absent(v, at)
    prob += pulp.lpSum(terms) <= spec.budget[r] + slack, name


def add_symmetry(prob, v: _Vars, spec: BlockSpec, period: int) -> None:
    """Copy r + 1's stage-0 first forward after copy r's, the last within the period (exact: see
    ``synth.block.cpsat.add_symmetry``)."""
    firsts, d = spec.firsts, spec.dur[spec.first]
    for earlier, later in zip(firsts, firsts[1:], strict=False):
        prob += v.start[later] >= v.start[earlier] + d, f"symmetry_{later.name}"
    if len(firsts) > 1:
        prob += v.start[firsts[-1]] + d <= period, "symmetry_within_period"


def add_block_length(prob, v: _Vars, spec: BlockSpec) -> None:
    """``length`` is the block's last end, measured from the first forward (which starts at 0)."""
    prob += v.start[spec.first] == 0, "first_at_zero"
    for x, d in spec.dur.items():
        prob += v.length >= v.start[x] + d - (spec.horizon + d) * _absent(v, x), f"length_{x.name}"


# ---------------------------------------------------------------------------------------------- solve
_FOUND = ("optimal", "feasible")


def _model(spec: BlockSpec, period: int, optimize: bool):
    import pulp

    prob = pulp.LpProblem(f"block_T{period}", pulp.LpMinimize)
    v = _variables(prob, spec)
    add_precedences(prob, v, spec)
    add_modular_no_overlap(prob, v, spec, period)
    add_memory_cap(prob, v, spec, period)
    add_symmetry(prob, v, spec, period)
    add_block_length(prob, v, spec)
    objective = v.length * spec.choice_weight + pulp.lpSum(v.choice.values())  # length, then fewest choices
    prob.setObjective(objective if optimize else 0 * v.length)  # probes: feasibility only
    return prob, v


def _solve(spec: BlockSpec, period: int, backend, optimize: bool):
    """Solve at ``period``; the outcome is "optimal", "feasible", "infeasible" or "unknown"."""
    import pulp

    prob, v = _model(spec, period, optimize)
    prob.solve(backend)  # PuLP 3.3's HiGHS and CBC return normally at their time limits
    if prob.sol_status == pulp.LpSolutionOptimal:
        outcome = "optimal"
    elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
        outcome = "feasible"  # stopped at the time limit with a solution (prob.status still says Optimal)
    elif prob.status == pulp.LpStatusInfeasible:
        outcome = "infeasible"  # CBC's "Integer infeasible" leaves sol_status at NoSolutionFound
    else:
        outcome = "unknown"
    return outcome, v


def _decode(spec: BlockSpec, v: _Vars) -> tuple[dict[Pass, int], dict[int, str]]:
    """The present passes' starts and the chosen variants, read from the solution."""
    present = [x for x in spec.dur if _on(v.present[x])]
    offsets = {x: round(v.start[x].varValue) for x in sorted(present)}
    variants = {s: c for (s, c), var in v.choice.items() if _on(var)}
    return offsets, variants


def _on(value) -> bool:
    """Whether a presence (1 or a binary variable) is on in the solution."""
    return value == 1 if isinstance(value, int) else value.varValue is not None and value.varValue > 0.5


if __name__ == "__main__":
    sys.exit(main())
