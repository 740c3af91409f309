"""The building-block model (Controllable Memory, Qi et al. 2024, arXiv 2405.15362) in CP-SAT.

A schedule is one microbatch's passes (its *building block*), repeated every period ``T``. The
block fixes each pass's offset; microbatch i runs pass x at ``offset[x] + i T``. The model reads
like an OR-Tools CP-SAT sample: data, variables, one helper per constraint family, objective,
solve, then the answer is checked again (by ``synth.tile`` and ``ir.verify``).

- Data: per stage and slice the pass times of ``ir.Costs`` rounded up to integer ticks; the
  placement (stage -> rank); whether the backward is split (B + W) or fused (BW); whether the
  solver may choose recompute (an R pass; the unit keeps only its input until R) or offload
  (OFFLOAD after F and RELOAD before B on the rank's copy stream) per stage.
- Variables: ``start`` of every pass; per stage the booleans ``recompute[s]``/``offload[s]``
  (optional passes are optional intervals); per pass its lap ``q`` and its position modulo T.
- Modular no-overlap: on every rank the passes of all microbatches must not overlap. Mapping
  each pass to ``start - start[anchor] - q T`` in ``[0, T - d]`` (the anchor is the F of the
  rank's first stage, which starts no later than any other pass on the rank, so cutting the
  circle there cuts no pass) turns it into a plain NoOverlap per rank and stream.
- Precedences: DESIGN.md's dependency list within one microbatch, with comm latency between
  ranks; R waits for its unit's incoming gradient, as ``ir.deps`` has it.
- Memory: a unit alive for ``l`` ticks overlaps at most ``ceil(l / T)`` microbatches of itself,
  so with an integer ``n >= l / T`` per lifespan (``n T >= l``, linear once T is fixed) a rank
  holds at most ``static + sum n * bytes``; that must fit the cap.
- Objective: the smallest T (binary search over T, each probe a feasibility solve), then the
  shortest block (warm-up and cool-down) at that T.

Recompute and offload are offered only without sequence slices (k = 1): a recomputed slice would
need the K/V of earlier slices, which a recomputed earlier slice has not rebuilt yet.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from ir import Costs, Op, Placement

__all__ = ["Block", "BlockError", "BlockOptions", "Pass", "solve_block"]


class BlockError(ValueError):
    """No building block satisfies the options (e.g. a cap below every block's memory)."""


@dataclass(frozen=True, slots=True)
class BlockOptions:
    """What the block model may do.

    Attributes:
        split_backward: B and W as separate passes (else one BW pass).
        recompute: the solver may recompute a stage (k = 1 only).
        offload: the solver may offload a stage's activations to host (k = 1 only).
        mem_cap: bytes per rank, or ``None`` for no cap.
        ticks: target ticks for the longest pass (time resolution; durations round up).
        time_limit: seconds for each CP-SAT solve.
        workers: CP-SAT search workers.
    """

    split_backward: bool = True
    recompute: bool = False
    offload: bool = False
    mem_cap: float | None = None
    ticks: int = 60
    time_limit: float = 2.0
    workers: int = 2


@dataclass(frozen=True, slots=True, order=True)
class Pass:
    """One pass of the block: ``op`` of stage ``stage``, slice ``slice`` (microbatch 0)."""

    stage: int
    slice: int
    op: Op


@dataclass(frozen=True, slots=True)
class Block:
    """A solved building block.

    Attributes:
        period: T in ticks.
        tick: cost units (ms) per tick.
        offsets: start tick of every present pass.
        durations: ticks of every present pass.
        recompute: per stage, whether it is recomputed.
        offload: per stage, whether it is offloaded.
        memory: per rank, the model's bound on bytes held (static included).
        proven: whether T is proven minimal for this tick size and the block length optimal.
        solve_seconds: wall time of all solves.
        probes: the feasibility probes, ``(T, feasible)``.
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

    @property
    def length(self) -> int:
        """Ticks from the block's first start to its last end."""
        return max(self.offsets[x] + self.durations[x] for x in self.offsets) - min(self.offsets.values())


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class _Data:
    costs: Costs
    placement: Placement
    options: BlockOptions
    tick: float
    dur: dict[Pass, int]            # every possible pass, optional ones included
    comm: dict[tuple[int, int], int]  # (stage, slice) -> ticks to the next stage's rank (0 on one rank)
    optional: dict[Pass, str]       # pass -> "recompute" | "offload"
    mem_unit: float
    horizon: int

    @property
    def stages(self) -> range:
        return range(self.placement.num_stages)

    @property
    def k(self) -> int:
        return self.costs.k

    def rank(self, x: Pass) -> int:
        return self.placement.rank_of(x.stage)

    def copy_stream(self, x: Pass) -> bool:
        return x.op in (Op.OFFLOAD, Op.RELOAD)


def _data(costs: Costs, placement: Placement, options: BlockOptions) -> _Data:
    if costs.num_stages != placement.num_stages:
        raise BlockError(f"costs have {costs.num_stages} stages but the placement has {placement.num_stages}")
    if (options.recompute or options.offload) and costs.k > 1:
        raise BlockError("recompute and offload are offered only without sequence slices (k = 1)")
    ops = [Op.F, Op.B, Op.W] if options.split_backward else [Op.F, Op.BW]
    raw: dict[Pass, float] = {}
    optional: dict[Pass, str] = {}
    for s in range(costs.num_stages):
        for j in range(costs.k):
            for op in ops:
                raw[Pass(s, j, op)] = costs.duration(_action(Pass(s, j, op)))
            if options.recompute:
                raw[Pass(s, j, Op.R)] = costs.duration(_action(Pass(s, j, Op.R)))
                optional[Pass(s, j, Op.R)] = "recompute"
            if options.offload:
                for op in (Op.OFFLOAD, Op.RELOAD):
                    raw[Pass(s, j, op)] = costs.duration(_action(Pass(s, j, op)))
                    optional[Pass(s, j, op)] = "offload"
    tick = _tick([d for d in raw.values() if d > 0], options.ticks)
    dur = {x: max(1, math.ceil(d / tick - 1e-9)) if d > 0 else 0 for x, d in raw.items()}
    comm = {}
    for s in range(costs.num_stages - 1):
        crosses = placement.rank_of(s) != placement.rank_of(s + 1)
        for j in range(costs.k):
            comm[(s, j)] = math.ceil(costs.unit(s, j).comm / tick - 1e-9) if crosses else 0
    biggest = max(u.act for row in costs.units for u in row) or 1.0
    horizon = sum(dur.values()) + 2 * sum(comm.values()) + 1
    return _Data(costs, placement, options, tick, dur, comm, optional, biggest / 1000, horizon)


def _tick(durations: list[float], target: int) -> float:
    """Cost units per tick: exact when all durations are multiples of a common base that keeps the
    longest within ``4 * target`` ticks (unit costs: 1), else ``longest / target`` (durations then
    round up, so the block's times never undercut the real ones)."""
    if not durations:
        raise BlockError("every pass takes zero time; give the costs durations")
    longest = max(durations)
    micro = [round(d * 1e6) for d in durations]
    if all(abs(m - d * 1e6) < 1e-3 for m, d in zip(micro, durations, strict=True)):
        base = math.gcd(*micro) / 1e6
        if longest / base <= 4 * target:
            return base
    return longest / target


def _action(x: Pass):
    from ir import Action

    return Action(x.op, x.stage, 0, x.slice)


# ---------------------------------------------------------------------------------------- variables
@dataclass
class _Vars:
    start: dict[Pass, cp_model.IntVar]
    present: dict[Pass, cp_model.IntVar | bool]
    recompute: dict[int, cp_model.IntVar]
    offload: dict[int, cp_model.IntVar]
    length: cp_model.IntVar


def _variables(model: cp_model.CpModel, data: _Data) -> _Vars:
    start = {x: model.NewIntVar(0, data.horizon, f"start_s{x.stage}_j{x.slice}_{x.op.value}") for x in data.dur}
    recompute = {s: model.NewBoolVar(f"recompute_s{s}") for s in data.stages} if data.options.recompute else {}
    offload = {s: model.NewBoolVar(f"offload_s{s}") for s in data.stages} if data.options.offload else {}
    for s in data.stages:
        if s in recompute and s in offload:
            model.AddBoolOr([recompute[s].Not(), offload[s].Not()])  # a unit is recomputed or offloaded
    present: dict[Pass, cp_model.IntVar | bool] = {}
    for x in data.dur:
        kind = data.optional.get(x)
        present[x] = True if kind is None else (recompute if kind == "recompute" else offload)[x.stage]
    length = model.NewIntVar(0, data.horizon, "block_length")
    return _Vars(start, present, recompute, offload, length)


# ------------------------------------------------------------------------------------- constraints
def _after(model: cp_model.CpModel, v: _Vars, data: _Data, later: Pass, earlier: Pass, gap: int = 0) -> None:
    """``later`` starts once ``earlier`` has ended, plus ``gap`` ticks, when both are present."""
    ct = model.Add(v.start[later] >= v.start[earlier] + data.dur[earlier] + gap)
    literals = [lit for lit in (v.present[later], v.present[earlier]) if lit is not True]
    if literals:
        ct.OnlyEnforceIf(literals)


def add_precedences(model: cp_model.CpModel, v: _Vars, data: _Data) -> None:
    """DESIGN.md's dependencies within one microbatch, with comm latency between ranks.

    Args:
        model: the CP-SAT model.
        v: the variables.
        data: durations, comm ticks, options.
    """
    last, k = data.placement.num_stages - 1, data.k
    back = Op.B if data.options.split_backward else Op.BW
    for s in data.stages:
        for j in range(k):
            f, b = Pass(s, j, Op.F), Pass(s, j, back)
            if s > 0:
                _after(model, v, data, f, Pass(s - 1, j, Op.F), data.comm[(s - 1, j)])
            if j > 0:
                _after(model, v, data, f, Pass(s, j - 1, Op.F))
            _after(model, v, data, b, f)
            grad = None if s == last else (Pass(s + 1, j, back), data.comm[(s, j)])
            if grad:
                _after(model, v, data, b, *grad)
            if j < k - 1:
                _after(model, v, data, b, Pass(s, j + 1, back))
            if data.options.split_backward:
                _after(model, v, data, Pass(s, j, Op.W), b)
            r = Pass(s, j, Op.R)
            if r in data.dur:
                _after(model, v, data, r, f)
                _after(model, v, data, b, r)
                if grad:
                    _after(model, v, data, r, *grad)
            off, rel = Pass(s, j, Op.OFFLOAD), Pass(s, j, Op.RELOAD)
            if off in data.dur:
                _after(model, v, data, off, f)
                _after(model, v, data, rel, off)
                _after(model, v, data, b, rel)


def add_modular_no_overlap(model: cp_model.CpModel, v: _Vars, data: _Data, period: int) -> None:
    """No two passes of any microbatches overlap on a rank's compute stream or copy stream.

    Args:
        model: the CP-SAT model.
        v: the variables.
        data: durations and placement.
        period: T in ticks.
    """
    streams: dict[tuple[int, bool], list] = {}
    anchor = {r: Pass(data.placement.stages_of(r)[0], 0, Op.F) for r in range(data.placement.p)}
    laps = data.horizon // period + 1
    for x, d in data.dur.items():
        if d == 0:
            continue
        if d > period:  # only optional passes can be: T is at least a rank's mandatory load
            model.Add(v.present[x] == 0)
            continue
        name = f"s{x.stage}_j{x.slice}_{x.op.value}"
        lap = model.NewIntVar(0, laps, f"lap_{name}")
        phase = model.NewIntVar(0, period - d, f"phase_{name}")
        ct = model.Add(phase == v.start[x] - v.start[anchor[data.rank(x)]] - lap * period)
        if v.present[x] is True:
            interval = model.NewIntervalVar(phase, d, phase + d, f"slot_{name}")
        else:
            ct.OnlyEnforceIf(v.present[x])
            interval = model.NewOptionalIntervalVar(phase, d, phase + d, v.present[x], f"slot_{name}")
        streams.setdefault((data.rank(x), data.copy_stream(x)), []).append(interval)
    for intervals in streams.values():
        model.AddNoOverlap(intervals)


def add_memory_cap(model: cp_model.CpModel, v: _Vars, data: _Data, period: int) -> None:
    """``static + sum_lifespans ceil(l / T) * bytes <= cap`` on every rank.

    Each unit contributes, by variant: keep: act - wact from F to B, wact from F to W (act from
    F to BW); recompute: inp from F to B plus the same act terms from R; offload: act from F to
    the end of OFFLOAD plus the act terms from RELOAD.

    Args:
        model: the CP-SAT model.
        v: the variables.
        data: costs, cap, placement.
        period: T in ticks.
    """
    cap = data.options.mem_cap
    if cap is None:
        return
    unit = data.mem_unit
    terms: dict[int, list] = {r: [] for r in range(data.placement.p)}
    split = data.options.split_backward
    back = Op.B if split else Op.BW
    for s in data.stages:
        r = data.placement.rank_of(s)
        for j in range(data.k):
            u = data.costs.unit(s, j)
            tail = [(back, u.act - u.wact if split else u.act)] + ([(Op.W, u.wact)] if split else [])
            variants = [("keep", Pass(s, j, Op.F), None)]
            if s in v.recompute:
                variants.append(("recompute", Pass(s, j, Op.R), v.recompute[s]))
            if s in v.offload:
                variants.append(("offload", Pass(s, j, Op.RELOAD), v.offload[s]))
            chosen = [lit for _, _, lit in variants if lit is not None]
            for kind, source, lit in variants:
                enforce = [lit] if lit is not None else [c.Not() for c in chosen]
                spans = [(source, end, nbytes) for end, nbytes in tail]
                if kind == "recompute":
                    spans.append((Pass(s, j, Op.F), back, u.inp))
                if kind == "offload":
                    spans.append((Pass(s, j, Op.F), Op.OFFLOAD, u.act))
                for begin, end_op, nbytes in spans:
                    if nbytes <= 0:
                        continue
                    end = Pass(s, j, end_op)
                    n = model.NewIntVar(0, data.horizon // period + 2, f"alive_s{s}_j{j}_{kind}_{end_op.value}")
                    ct = model.Add(n * period >= v.start[end] + data.dur[end] - v.start[begin])
                    if enforce:
                        ct.OnlyEnforceIf(enforce)  # an unchosen variant's counts are free, so 0 is best
                    terms[r].append((math.ceil(nbytes / unit), n))
    for r, rank_terms in terms.items():
        budget = math.floor((cap - data.costs.static_of(r)) / unit)
        model.Add(sum(c * n for c, n in rank_terms) <= budget)


def add_block_length(model: cp_model.CpModel, v: _Vars, data: _Data) -> None:
    """``length`` is the block's last end, measured from the first forward (which starts at 0)."""
    model.Add(v.start[Pass(0, 0, Op.F)] == 0)
    for x, d in data.dur.items():
        ct = model.Add(v.length >= v.start[x] + d)
        if v.present[x] is not True:
            ct.OnlyEnforceIf(v.present[x])


# ---------------------------------------------------------------------------------------------- solve
def _model(data: _Data, period: int) -> tuple[cp_model.CpModel, _Vars]:
    model = cp_model.CpModel()
    v = _variables(model, data)
    add_precedences(model, v, data)
    add_modular_no_overlap(model, v, data, period)
    add_memory_cap(model, v, data, period)
    add_block_length(model, v, data)
    return model, v


def _solve(data: _Data, period: int, optimize: bool) -> tuple[int, cp_model.CpSolver, _Vars]:
    model, v = _model(data, period)
    if optimize:
        model.Minimize(v.length)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = data.options.time_limit
    solver.parameters.num_search_workers = data.options.workers
    solver.parameters.random_seed = 0
    return solver.Solve(model), solver, v


def solve_block(costs: Costs, placement: Placement, options: BlockOptions | None = None) -> Block:
    """The building block with the smallest period that fits ``options.mem_cap``.

    Raises:
        BlockError: no block fits (the cap is too small even one microbatch at a time).
    """
    options = options or BlockOptions()
    data = _data(costs, placement, options)
    began = time.perf_counter()
    load = {}
    for x, d in data.dur.items():
        if x not in data.optional and not data.copy_stream(x):
            load[data.rank(x)] = load.get(data.rank(x), 0) + d
    lo, hi = max(load.values()), data.horizon
    probes: list[tuple[int, bool]] = []
    proven = True

    def feasible(period: int) -> bool:
        nonlocal proven
        status, _, _ = _solve(data, period, optimize=False)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE, cp_model.INFEASIBLE):
            proven = False  # time limit without an answer: treated as infeasible
        probes.append((period, status in (cp_model.OPTIMAL, cp_model.FEASIBLE)))
        return probes[-1][1]

    if not feasible(hi):
        raise BlockError("no building block fits the memory cap, even with one microbatch in flight per stage")
    if feasible(lo):
        hi = lo
    else:
        while hi - lo > 1:  # invariant: lo infeasible, hi feasible
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    status, solver, v = _solve(data, hi, optimize=True)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise BlockError(f"the period {hi} probed feasible but the final solve found nothing in "
                         f"{options.time_limit} s; raise --time-limit")
    proven = proven and status == cp_model.OPTIMAL
    present = {x for x in data.dur if v.present[x] is True or solver.BooleanValue(v.present[x])}
    offsets = {x: solver.Value(v.start[x]) for x in sorted(present)}
    recompute = tuple(bool(s in v.recompute and solver.BooleanValue(v.recompute[s])) for s in data.stages)
    offload = tuple(bool(s in v.offload and solver.BooleanValue(v.offload[s])) for s in data.stages)
    memory = _memory_bound(data, hi, offsets, recompute, offload)
    return Block(hi, data.tick, offsets, {x: data.dur[x] for x in offsets}, recompute, offload, memory, proven,
                 time.perf_counter() - began, tuple(probes))


def _memory_bound(data: _Data, period: int, offsets: dict[Pass, int], recompute, offload) -> tuple[float, ...]:
    """The block's memory bound per rank, recomputed from the answer (bytes, static included)."""
    held = [data.costs.static_of(r) for r in range(data.placement.p)]
    split = data.options.split_backward
    back = Op.B if split else Op.BW

    def alive(begin: Pass, end: Pass) -> int:
        return math.ceil((offsets[end] + data.dur[end] - offsets[begin]) / period)

    for s in data.stages:
        r = data.placement.rank_of(s)
        for j in range(data.k):
            u = data.costs.unit(s, j)
            source = Pass(s, j, Op.R if recompute[s] else Op.RELOAD if offload[s] else Op.F)
            held[r] += alive(source, Pass(s, j, back)) * (u.act - u.wact if split else u.act)
            if split:
                held[r] += alive(source, Pass(s, j, Op.W)) * u.wact
            if recompute[s]:
                held[r] += alive(Pass(s, j, Op.F), Pass(s, j, back)) * u.inp
            if offload[s]:
                held[r] += alive(Pass(s, j, Op.F), Pass(s, j, Op.OFFLOAD)) * u.act
    return tuple(held)
