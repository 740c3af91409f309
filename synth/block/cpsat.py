"""The building-block model (Controllable Memory, Qi et al. 2024, arXiv 2405.15362) in CP-SAT.

A schedule is u microbatches' passes (its *building block*, u = ``BlockOptions.group`` in 1..4),
repeated every period ``T`` (average period T / u). The block fixes each pass's offset; microbatch
``i = q u + r`` runs copy r's pass x at ``offset[x] + q T``. The model reads
like an OR-Tools CP-SAT sample: data, variables, one helper per constraint family, objective,
solve, then the answer is checked again (by ``synth.block.tile`` and ``ir.verify``).

- Data: per stage and slice the pass times of ``ir.Costs`` rounded up to integer ticks; the
  placement (stage -> rank); whether the backward is split (B + W) or fused (BW); whether the
  solver may choose recompute (an R pass; the unit keeps only its input until R) or offload
  (OFFLOAD after F and RELOAD before B on the rank's copy stream) per stage.
- Variables: ``start`` of every pass of every copy; per stage the booleans ``recompute[s]`` /
  ``offload[s]``, shared by the copies (optional passes are optional intervals); per pass its lap
  ``q`` and its position modulo T.
- Modular no-overlap: on every rank the passes of all microbatches must not overlap. Mapping
  each pass to ``start - start[anchor] - q T`` in ``[0, T - d]`` (the anchor is the F of the
  rank's first stage in copy 0: no compute pass can wrap past its slot, so cutting the circle
  there cuts none; copy 0's passes start after it, other copies' laps may be negative) turns it
  into a plain NoOverlap per rank and stream over all copies' passes.
- Symmetry: copies are interchangeable microbatches, so (relabelling, and shifting a copy by T)
  copy r + 1's stage-0 first forward starts after copy r's, and all of them within one period.
- Precedences: DESIGN.md's dependency list within each copy (one microbatch), with comm latency
  between ranks; R waits for its unit's incoming gradient, as ``ir.deps`` has it.
- Memory: a unit alive for ``l`` ticks overlaps at most ``ceil(l / T)`` microbatches of itself,
  so with an integer ``n >= l / T`` per lifespan (``n T >= l``, linear once T is fixed) a rank
  holds at most ``static + sum n * bytes``; that must fit the cap.
- Objective: the smallest T (galloping up from the load bound, then bisecting; each probe a
  feasibility solve), then the shortest block (warm-up and cool-down) at that T, then the fewest
  stages recomputed or offloaded. With ``BlockOptions.m``, larger periods follow while their
  tiled makespan may be shorter (``synth.block.objective``). ``synth.block.groups`` tries
  u = 1..4 and keeps the block whose tiled makespan is shortest.

The data (durations in ticks, edges, lifespans, budgets) come from ``synth.block.spec``, which
the MILP twin (``synth.block.milp``, PuLP with HiGHS or CBC in a separate process) reads too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from ir import Costs, Placement
from synth.block.objective import tiled_asap, tiled_length, widen
from synth.block.period import Answer, search_period
from synth.block.spec import BlockError, BlockOptions, BlockSpec, Pass, block_spec

__all__ = ["SOLVERS", "Block", "BlockError", "BlockOptions", "Pass", "block_from_answer", "solve", "solve_block",
           "solve_spec"]

SOLVERS = ("cpsat", "highs", "cbc")


@dataclass(frozen=True, slots=True)
class Block:
    """A solved building block of ``group`` microbatches.

    Attributes:
        period: T in ticks, for ``group`` microbatches (the average period is T / group).
        tick: cost units (ms) per tick.
        offsets: start tick of every present pass of every copy (``Pass.micro``).
        durations: ticks of every present pass.
        recompute: per stage, whether it is recomputed.
        offload: per stage, whether it is offloaded.
        memory: per rank, the model's bound on bytes held (static included).
        proven: every probe was decided and the final solve is optimal: T is the load bound or
            T - 1 is proven infeasible, and the block length is optimal at T (feasibility is not
            monotone in T in general, so a smaller T below an infeasible one is not ruled out).
            With ``BlockOptions.m``: besides, every larger period that could end sooner in block
            time was solved to optimality (``synth.block.objective.widen``).
        solve_seconds: wall time of all solves.
        probes: the feasibility probes, ``(T, feasible)``.
        solver: "cpsat", "highs" or "cbc".
        group: u, the microbatches per block.
        estimate: with ``BlockOptions.m``, ticks the tiled schedule of m microbatches takes run as
            soon as possible (``synth.block.objective.tiled_asap``: ``ir.simulate``'s rules in
            ticks, before any squeeze); else None.
    """

    period: int
    tick: float
    offsets: dict[Pass, int]
    durations: dict[Pass, int]
    recompute: tuple[bool, ...]
    offload: tuple[bool, ...]
    memory: tuple[float, ...]
    proven: bool
    solve_seconds: float
    probes: tuple[tuple[int, bool], ...] = field(default=())
    solver: str = "cpsat"
    group: int = 1
    estimate: int | None = None

    @property
    def length(self) -> int:
        """Ticks from the block's first start to its last end."""
        return max(self.offsets[x] + self.durations[x] for x in self.offsets) - min(self.offsets.values())

    def makespan(self, m: int) -> int:
        """Ticks ``m`` microbatches of the tiled block take in block time, about
        ``(ceil(m / group) - 1) period + length`` (``synth.block.objective.tiled_length``)."""
        return tiled_length(self.period, self.offsets, self.durations, self.group, m)


# ---------------------------------------------------------------------------------------- variables
@dataclass
class _Vars:
    start: dict[Pass, cp_model.IntVar]
    present: dict[Pass, cp_model.IntVar | bool]
    choice: dict[tuple[int, str], cp_model.IntVar]
    length: cp_model.IntVar


def _variables(model: cp_model.CpModel, spec: BlockSpec) -> _Vars:
    start = {x: model.NewIntVar(0, spec.horizon, f"start_{x.name}") for x in spec.dur}
    choice = {(s, v): model.NewBoolVar(f"{v}_s{s}") for s, vs in spec.choices.items() for v in vs}
    for s, vs in spec.choices.items():
        if len(vs) > 1:
            model.AddAtMostOne(choice[(s, v)] for v in vs)  # a unit is recomputed or offloaded, not both
    present = {x: choice[(x.stage, spec.optional[x])] if x in spec.optional else True for x in spec.dur}
    length = model.NewIntVar(0, spec.horizon, "block_length")
    return _Vars(start, present, choice, length)


def _enforce(ct: cp_model.Constraint, literals: list) -> None:
    literals = [lit for lit in literals if lit is not True]
    if literals:
        ct.OnlyEnforceIf(literals)


# ------------------------------------------------------------------------------------- constraints
def add_precedences(model: cp_model.CpModel, v: _Vars, spec: BlockSpec) -> None:
    """DESIGN.md's dependencies within one microbatch, with comm latency between ranks; an edge
    binds only when both of its passes are present."""
    for later, earlier, gap in spec.edges:
        ct = model.Add(v.start[later] >= v.start[earlier] + spec.dur[earlier] + gap)
        _enforce(ct, [v.present[later], v.present[earlier]])


def add_modular_no_overlap(model: cp_model.CpModel, v: _Vars, spec: BlockSpec, period: int) -> None:
    """No two passes of any microbatches overlap on a rank's compute stream or copy stream.

    Each pass maps to its phase ``start - start[anchor] - lap T`` in ``[0, T - d]``; the anchor
    (the rank's first forward in copy 0) holds the slot right after the cut, so no compute pass
    wraps past it, and the modular constraint becomes a plain NoOverlap. Copy 0's passes start
    after their anchor (lap >= 0); other copies may start before it (any lap).
    """
    streams: dict[tuple[int, bool], list] = {}
    laps = spec.horizon // period + 1
    for x, d in spec.dur.items():
        if d == 0:
            continue
        if d > period:  # only optional passes can be: T is at least a rank's mandatory load
            model.Add(v.present[x] == 0)
            continue
        lap = model.NewIntVar(0 if x.micro == 0 else -laps, laps, f"lap_{x.name}")
        phase = model.NewIntVar(0, period - d, f"phase_{x.name}")
        ct = model.Add(phase == v.start[x] - v.start[spec.anchor(spec.rank[x])] - lap * period)
        if v.present[x] is True:
            interval = model.NewIntervalVar(phase, d, phase + d, f"slot_{x.name}")
        else:
            ct.OnlyEnforceIf(v.present[x])
            interval = model.NewOptionalIntervalVar(phase, d, phase + d, v.present[x], f"slot_{x.name}")
        streams.setdefault((spec.rank[x], x in spec.copy), []).append(interval)
    for intervals in streams.values():
        model.AddNoOverlap(intervals)


def add_memory_cap(model: cp_model.CpModel, v: _Vars, spec: BlockSpec, period: int) -> None:
    """Per rank, the memory of the periodic schedule at each allocation instant fits the budget.

    With microbatch i running the block shifted by ``i T``, a lifespan ``[b, e)`` is alive at time
    ``t`` for ``floor((t - b) / T) - floor((t - e) / T)`` microbatches (linear once T is fixed:
    ``T q <= x <= T q + T - 1`` defines ``q = floor(x / T)``). Memory only rises when a lifespan
    begins, so checking the instants where lifespans begin (each present F, R and RELOAD) bounds
    the whole periodic curve exactly; a lifespan counts only in its stage's chosen variant. This is
    the Controllable Memory bound ``ceil(lifespan / T)`` made exact: a unit's two spans (act - wact
    to B, wact to W; or F to OFFLOAD and RELOAD to B) no longer each round up on their own.
    """
    if spec.budget is None:
        return
    if spec.memory == "ceil":
        return add_memory_cap_ceil(model, v, spec, period)
    bound = spec.horizon // period + 2
    floors: dict[tuple[Pass, Pass, int], cp_model.IntVar] = {}

    def floor_of(at: Pass, x: Pass, shift: int) -> cp_model.IntVar:
        """q = floor((start[at] - start[x] - shift) / T), as T q <= diff <= T q + T - 1."""
        if (at, x, shift) not in floors:
            q = model.NewIntVar(-bound, bound, f"floor_{at.name}_{x.name}_{shift}")
            diff = v.start[at] - v.start[x] - shift
            model.Add(period * q <= diff)
            model.Add(diff <= period * q + period - 1)
            floors[(at, x, shift)] = q
        return floors[(at, x, shift)]

    for r, at, spans in spec.allocation_instants():
        terms = []
        for i, span in enumerate(spans):
            (b, b_shift), (e, e_shift) = spec.alive_terms(at, span)
            count = model.NewIntVar(0, bound, f"alive_{at.name}_{i}")
            ct = model.Add(count >= floor_of(at, b, b_shift) - floor_of(at, e, e_shift))
            _enforce(ct, _variant_literals(v, spec, span))
            terms.append(span.units * count)
        _enforce(model.Add(sum(terms) <= spec.budget[r]), [v.present[at]])


def add_memory_cap_ceil(model: cp_model.CpModel, v: _Vars, spec: BlockSpec, period: int) -> None:
    """The Controllable Memory bound: ``sum_lifespans n * units <= budget`` per rank, with an
    integer ``n T >= lifespan`` (a unit alive for ``l`` ticks overlaps at most ``ceil(l / T)``
    microbatches of itself); ``n`` is forced only in its stage's chosen variant."""
    terms: dict[int, list] = {r: [] for r in range(spec.p)}
    for i, span in enumerate(spec.lifespans):
        n = model.NewIntVar(0, spec.horizon // period + 2, f"alive_{i}_{span.variant}_{span.end.name}")
        ct = model.Add(n * period >= v.start[span.end] + spec.dur[span.end] - v.start[span.begin])
        _enforce(ct, _variant_literals(v, spec, span))
        terms[span.rank].append(span.units * n)
    for r, rank_terms in terms.items():
        model.Add(sum(rank_terms) <= spec.budget[r])


def _variant_literals(v: _Vars, spec: BlockSpec, span) -> list:
    """The literals under which ``span`` holds memory: its stage chose its variant."""
    chosen = [v.choice[(span.stage, c)] for c in spec.choices[span.stage]]
    return [c.Not() for c in chosen] if span.variant == "keep" else [v.choice[(span.stage, span.variant)]]


def add_symmetry(model: cp_model.CpModel, v: _Vars, spec: BlockSpec, period: int) -> None:
    """Copy r + 1's stage-0 first forward starts after copy r's ends, and the last one ends within
    the period of copy 0's (which starts at 0). Exact: any periodic schedule of u microbatches can
    be relabelled so stage 0's first forwards run in microbatch order, and a copy shifted by a
    whole period is the same schedule with a block no longer."""
    firsts = spec.firsts
    d = spec.dur[spec.first]
    for earlier, later in zip(firsts, firsts[1:], strict=False):
        model.Add(v.start[later] >= v.start[earlier] + d)
    if len(firsts) > 1:
        model.Add(v.start[firsts[-1]] + d <= period)


def add_block_length(model: cp_model.CpModel, v: _Vars, spec: BlockSpec) -> None:
    """``length`` is the block's last end, measured from the first forward (which starts at 0)."""
    model.Add(v.start[spec.first] == 0)
    for x, d in spec.dur.items():
        _enforce(model.Add(v.length >= v.start[x] + d), [v.present[x]])


# ---------------------------------------------------------------------------------------------- solve
def _model(spec: BlockSpec, period: int) -> tuple[cp_model.CpModel, _Vars]:
    model = cp_model.CpModel()
    v = _variables(model, spec)
    add_precedences(model, v, spec)
    add_modular_no_overlap(model, v, spec, period)
    add_memory_cap(model, v, spec, period)
    add_symmetry(model, v, spec, period)
    add_block_length(model, v, spec)
    return model, v


def _solve(spec: BlockSpec, period: int, options: BlockOptions, seconds: float, optimize: bool,
           hint: tuple | None = None):
    model, v = _model(spec, period)
    if optimize:
        model.Minimize(v.length * spec.choice_weight + sum(v.choice.values()))
    if hint is not None:
        offsets, variants = hint
        for x, var in v.start.items():
            if x in offsets:
                model.AddHint(var, offsets[x])
        for (s, c), lit in v.choice.items():
            model.AddHint(lit, variants.get(s) == c)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = seconds
    solver.parameters.num_search_workers = options.workers
    solver.parameters.random_seed = 0
    return solver.Solve(model), solver, v


def _decode(spec: BlockSpec, solver: cp_model.CpSolver, v: _Vars) -> tuple[dict[Pass, int], dict[int, str]]:
    present = [x for x in spec.dur if v.present[x] is True or solver.BooleanValue(v.present[x])]
    offsets = {x: solver.Value(v.start[x]) for x in sorted(present)}
    variants = {s: c for (s, c), lit in v.choice.items() if solver.BooleanValue(lit)}
    return offsets, variants


def solve_spec(spec: BlockSpec, options: BlockOptions, known: Answer | None = None) -> Answer:
    """The CP-SAT answer for ``spec``: smallest period, then shortest block (or, with
    ``options.m``, the block whose tiled makespan is shortest), all within ``options.time_limit``.

    With the exact memory model and a cap, the paper's ``ceil`` model runs first on half the time:
    its blocks are exact-feasible too (it over-counts), and it solves fast, so its answer bounds the
    exact search, which then probes only smaller periods, hinted with it (u = 1 only: with more
    copies it rounds each copy's lifespans up on their own, so it rarely helps). A ``known`` block
    (one satisfying ``spec``, e.g. copies of a smaller block) takes its place. With ``options.m`` the
    period search gets 60% of the time and `synth.block.objective.widen` the rest."""
    began = time.perf_counter()
    deadline = began + options.time_limit
    searched = began + (0.6 if options.m is not None else 1.0) * options.time_limit
    if known is None and spec.memory == "exact" and spec.budget is not None and spec.group == 1:
        try:
            known = _search(dataclasses.replace(spec, memory="ceil"), options, (searched - began) / 2)
        except BlockError:  # the cap is below what the over-counting bound admits: exact alone
            known = None
    answer = _search(spec, options, max(0.1, searched - time.perf_counter()), known=known)
    if options.m is None:
        return answer

    def final(period: int):
        return _final(spec, options, period, max(0.05, 0.5 * (deadline - time.perf_counter())))

    return widen(spec, answer, final, options.m, lambda: time.perf_counter() < deadline - 0.05)


def _final(spec: BlockSpec, options: BlockOptions, period: int, seconds: float, hint: tuple | None = None):
    """The shortest block at ``period``: ``(optimal, offsets, variants)``, False if proven
    infeasible, None if nothing was found in time."""
    status, solver, v = _solve(spec, period, options, seconds, optimize=True, hint=hint)
    if status == cp_model.INFEASIBLE:
        return False
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return (status == cp_model.OPTIMAL, *_decode(spec, solver, v))


def _search(spec: BlockSpec, options: BlockOptions, seconds: float, known: Answer | None = None) -> Answer:
    """``search_period`` with CP-SAT probes (each a third of ``seconds``, or half of what is
    left), the smallest feasible block so far as the hint, and a final solve that starts from the
    probe's block, so it never returns a longer one."""
    found = (cp_model.OPTIMAL, cp_model.FEASIBLE)
    deadline = time.perf_counter() + seconds
    blocks: dict[int, tuple] = {} if known is None else {known.period: (known.offsets, known.variants)}

    def left(share: float) -> float:
        return max(0.05, share * (deadline - time.perf_counter()))

    def probe(period: int):
        if time.perf_counter() >= deadline - 0.05:
            return None  # out of time: unknown, and the search ends at the best period found
        nearest = min(blocks, default=None)
        status, solver, v = _solve(spec, period, options, min(left(0.5), seconds / 3), optimize=False,
                                   hint=None if nearest is None else blocks[nearest])
        if status in found:
            blocks[period] = _decode(spec, solver, v)
            return True, blocks[period]
        return False if status == cp_model.INFEASIBLE else None

    def final(period: int):
        return _final(spec, options, period, left(1.0), blocks.get(period))

    return search_period(spec, probe, final, options.time_limit, known)


def solve_block(costs: Costs, placement: Placement, options: BlockOptions | None = None,
                solver: str = "cpsat") -> Block:
    """The building block of ``options.group`` microbatches with the smallest period that fits
    ``options.mem_cap`` (with ``options.m``: the shortest tiled makespan); for the best over
    u = 1..4 see ``synth.block.groups.solve_blocks``.

    Args:
        costs: per-unit costs (``ir.Costs``).
        placement: stage -> rank.
        options: what the model may do.
        solver: "cpsat" (in this process), or "highs" / "cbc" (the MILP twin, in a subprocess).

    Raises:
        BlockError: no block fits (the cap is too small even one microbatch at a time), or the
            solver is unknown or failed.
    """
    options = options or BlockOptions()
    return solve(block_spec(costs, placement, options), options, solver)


def solve(spec: BlockSpec, options: BlockOptions, solver: str = "cpsat", known: Answer | None = None) -> Block:
    """The `Block` of ``spec`` by ``solver``; ``known``, a block satisfying ``spec``, bounds the
    period search (see `solve_spec`)."""
    if solver not in SOLVERS:
        raise BlockError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    began = time.perf_counter()
    if solver == "cpsat":
        answer = solve_spec(spec, options, known)
    else:
        from synth.block.milp import solve_spec_milp

        answer = solve_spec_milp(spec, options, solver, known)
    return block_from_answer(spec, answer, time.perf_counter() - began, solver, options.m)


def block_from_answer(spec: BlockSpec, answer: Answer, seconds: float, solver: str, m: int | None = None) -> Block:
    """The `Block` a solver's answer describes, with its memory bound recomputed from the offsets
    (and, for ``m`` microbatches, its estimate)."""
    stages = range(spec.num_stages)
    return Block(answer.period, spec.tick, dict(answer.offsets), {x: spec.dur[x] for x in answer.offsets},
                 tuple(answer.variants.get(s) == "recompute" for s in stages),
                 tuple(answer.variants.get(s) == "offload" for s in stages),
                 spec.memory_of(answer.period, answer.offsets, answer.variants), answer.proven, seconds,
                 answer.probes, solver, spec.group,
                 None if m is None else tiled_asap(spec, answer.period, answer.offsets, m))
