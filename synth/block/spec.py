"""The building block as integer data, shared by the CP-SAT model and its MILP twin.

Everything the block model needs is computed here once, in integer ticks and integer memory
units, from ``ir.Costs``, the placement and the options: the passes and their durations, the
precedences (DESIGN.md's dependency list for one microbatch, with comm latency), the lifespans
that hold memory and their byte weights, and each rank's budget. A block of u microbatches holds
u copies of all of it (``Pass.micro``), one microbatch's chain each. The vocabulary (options,
passes, lifespans) is ``synth.block.passes``; the time and memory resolution ``synth.block.ticks``.
``synth.block.cpsat`` turns the data into a CP-SAT model; ``synth.block.milp`` turns the same data
into a MILP (PuLP, HiGHS or CBC) in another process, which is why the data round-trip through
JSON. Neither solver sees the costs again, so the two models cannot drift apart. The period
search both solvers run is ``synth.block.period``.

Recompute and offload are offered with sequence slices too, per (stage, slice): a recomputed slice
re-runs its forward against the K/V of the earlier slices, which stay on the rank until their own
backwards (after this slice's; ``ir.verify``'s docstring says why no extra rule is needed), and
keeps its own K/V with its input (the cost model counts them in ``inp``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ir import Costs, Op, Placement
from synth.block import ticks
from synth.block.passes import MAX_GROUP, BlockError, BlockOptions, Lifespan, Pass

__all__ = ["MAX_GROUP", "BlockError", "BlockOptions", "BlockSpec", "Lifespan", "Pass", "block_spec"]


@dataclass(frozen=True)
class BlockSpec:
    """The block model's data in integers.

    Attributes:
        p: ranks.
        num_stages: stages.
        split_backward: whether B and W are separate passes.
        tick: cost units (ms) per tick.
        mem_unit: bytes per memory unit.
        dur: ticks of every possible pass (optional ones included).
        rank: the rank of every pass.
        copy: passes on the copy stream (OFFLOAD, RELOAD).
        optional: pass -> "recompute" | "offload" for passes present only in that variant.
        choices: stage -> the variants ("recompute", "offload") the solver may pick.
        edges: ``(later, earlier, gap)``: later starts ``gap`` ticks after earlier ends.
        lifespans: the memory each unit holds, per variant.
        budget: per rank, units available above the static memory (None: no cap).
        static: per rank, bytes of static memory.
        horizon: an upper bound on any start (room for a gap of up to ``max_period`` before every pass).
        max_period: the length of the block run one pass at a time; every period from there up
            admits a block if the memory does.
        memory: the block's memory model, "exact" or "ceil".
        exact: no rounding was needed: every duration and latency is a whole number of ticks and
            every byte count a whole number of memory units, so a bound proven on this data holds
            for the costs themselves (else the data round up and bounds hold for the model only).
        group: u, the copies of every pass (``Pass.micro`` in 0..u-1); edges and lifespans are per
            copy, the stages' recompute/offload choices are shared by the copies.
        rounding: the largest ``rounded - real`` over pass durations and the latencies the model
            pays, in cost units (0 when time is exact; memory rounding is only in ``exact``).
    """

    p: int
    num_stages: int
    split_backward: bool
    tick: float
    mem_unit: float
    dur: dict[Pass, int]
    rank: dict[Pass, int]
    copy: frozenset[Pass]
    optional: dict[Pass, str]
    choices: dict[int, tuple[str, ...]]
    edges: tuple[tuple[Pass, Pass, int], ...]
    lifespans: tuple[Lifespan, ...]
    budget: tuple[int, ...] | None
    static: tuple[float, ...]
    horizon: int
    anchors: dict[int, Pass] = field(default_factory=dict)
    max_period: int = 0
    memory: str = "exact"
    exact: bool = False
    group: int = 1
    rounding: float = 0.0

    @property
    def first(self) -> Pass:
        """The block's first pass: stage 0's forward of slice 0 of copy 0, at tick 0."""
        return Pass(0, 0, Op.F)

    @property
    def firsts(self) -> tuple[Pass, ...]:
        """Stage 0's forward of slice 0 of each copy: they start in copy order within one period
        (the symmetry the models break; any periodic schedule can be relabelled so)."""
        return tuple(Pass(0, 0, Op.F, r) for r in range(self.group))

    def single(self) -> BlockSpec:
        """The same data for copy 0 alone (a one-microbatch block)."""
        if self.group == 1:
            return self
        mine = {x for x in self.dur if x.micro == 0}
        max_period = self.max_period // self.group
        return dataclasses.replace(
            self, dur={x: d for x, d in self.dur.items() if x in mine}, rank={x: self.rank[x] for x in mine},
            copy=self.copy & mine, optional={x: k for x, k in self.optional.items() if x in mine},
            edges=tuple(e for e in self.edges if e[0] in mine),
            lifespans=tuple(s for s in self.lifespans if s.begin in mine),
            horizon=max_period * (len(mine) + 1), max_period=max_period, group=1)

    def anchor(self, rank: int) -> Pass:
        """The rank's first forward, which starts no later than any other pass on the rank."""
        return self.anchors[rank]

    @property
    def choice_weight(self) -> int:
        """The objective is ``length * choice_weight + (stages recomputed or offloaded)``: the
        shortest block first, then, among equally short ones, the fewest recompute/offload choices
        (so the solver never recomputes or offloads for nothing)."""
        return 1 + sum(len(c) for c in self.choices.values())

    def load_bound(self) -> int:
        """The smallest period any block can have: the largest mandatory compute load of a rank."""
        load = [0] * self.p
        for x, d in self.dur.items():
            if x not in self.optional and x not in self.copy:
                load[self.rank[x]] += d
        return max(1, max(load))

    def memory_of(self, period: int, offsets: dict[Pass, int], variants: dict[int, str]) -> tuple[float, ...]:
        """Per rank, the bytes the block's memory model holds (static included): the peak of the
        periodic curve ("exact") or static + sum ceil(lifespan / T) * bytes ("ceil")."""
        return tuple(self.static[r] + units * self.mem_unit
                     for r, units in enumerate(self.units_held(period, offsets, variants)))

    def allocation_instants(self) -> list[tuple[int, Pass, tuple[Lifespan, ...]]]:
        """``(rank, pass, lifespans of that rank)`` for every pass where a lifespan begins: memory
        only rises there, so the exact model checks the periodic level at these instants."""
        out = []
        for r in range(self.p):
            spans = tuple(span for span in self.lifespans if span.rank == r)
            out += [(r, at, spans) for at in sorted({span.begin for span in spans})]
        return out

    def alive_terms(self, at: Pass, span: Lifespan) -> tuple[tuple[Pass, int], tuple[Pass, int]]:
        """The two floors whose difference counts the microbatches of ``span`` alive at the start
        of ``at``: ``floor((t_at - start(x) - shift) / T)`` for ``(x, shift)`` = (begin, 0), then
        (end, its duration)."""
        return (span.begin, 0), (span.end, self.dur[span.end])

    def units_held(self, period: int, offsets: dict[Pass, int], variants: dict[int, str],
                   ranks: range | list[int] | None = None) -> list[int]:
        """Per rank, memory units above static that the model counts for this block (0 for ranks
        not in ``ranks``, if given)."""
        ranks = range(self.p) if ranks is None else ranks
        active = [span for span in self.lifespans if span.rank in ranks
                  and variants.get(span.stage, "keep") == span.variant]
        held = [0] * self.p
        if self.memory == "ceil":
            for span in active:
                length = offsets[span.end] + self.dur[span.end] - offsets[span.begin]
                held[span.rank] += math.ceil(length / period) * span.units
            return held
        for r in ranks:
            spans = [span for span in active if span.rank == r]
            for at in {span.begin for span in spans}:
                level = 0
                for span in spans:
                    (b, b_shift), (e, e_shift) = self.alive_terms(at, span)
                    level += span.units * ((offsets[at] - offsets[b] - b_shift) // period
                                           - (offsets[at] - offsets[e] - e_shift) // period)
                held[r] = max(held[r], level)
        return held

    # ------------------------------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        """Plain data for the MILP process: passes as ``[stage, slice, op]`` (``[..., micro]`` for
        copies after the first), so one-microbatch data read as before."""
        def row(x: Pass, d: int) -> list:
            return [x.stage, x.slice, x.op.value, d, self.rank[x], x in self.copy, self.optional.get(x)] + (
                [x.micro] if x.micro else [])

        return {
            "p": self.p, "num_stages": self.num_stages, "split_backward": self.split_backward,
            "tick": self.tick, "mem_unit": self.mem_unit,
            "passes": [row(x, d) for x, d in self.dur.items()],
            "choices": {str(s): list(c) for s, c in self.choices.items()},
            "edges": [[a.key(), b.key(), g] for a, b, g in self.edges],
            "lifespans": [[s.rank, s.stage, s.variant, s.begin.key(), s.end.key(), s.units] for s in self.lifespans],
            "budget": None if self.budget is None else list(self.budget), "static": list(self.static),
            "horizon": self.horizon, "anchors": {str(r): x.key() for r, x in self.anchors.items()},
            "max_period": self.max_period, "memory": self.memory, "exact": self.exact,
            "group": self.group, "rounding": self.rounding,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BlockSpec:
        pass_ = Pass.from_key
        dur, rank, copy, optional = {}, {}, set(), {}
        for stage, slice_, op, d, r, on_copy, kind, *micro in obj["passes"]:
            x = Pass(stage, slice_, Op(op), int(micro[0]) if micro else 0)
            dur[x], rank[x] = d, r
            if on_copy:
                copy.add(x)
            if kind:
                optional[x] = kind
        return cls(
            obj["p"], obj["num_stages"], obj["split_backward"], obj["tick"], obj["mem_unit"], dur, rank,
            frozenset(copy), optional, {int(s): tuple(c) for s, c in obj["choices"].items()},
            tuple((pass_(a), pass_(b), g) for a, b, g in obj["edges"]),
            tuple(Lifespan(r, s, v, pass_(b), pass_(e), u) for r, s, v, b, e, u in obj["lifespans"]),
            None if obj["budget"] is None else tuple(obj["budget"]), tuple(obj["static"]), obj["horizon"],
            {int(r): pass_(x) for r, x in obj["anchors"].items()}, obj["max_period"], obj["memory"],
            bool(obj.get("exact", False)), int(obj.get("group", 1)), float(obj.get("rounding", 0.0)),
        )


# ---------------------------------------------------------------------------------------- build
def block_spec(costs: Costs, placement: Placement, options: BlockOptions, *, rounded: bool = True) -> BlockSpec:
    """The integer data of the block model for these costs, placement and options (``options.group``
    copies of every pass).

    With ``rounded=False`` the same data come unrounded (tick = one cost unit, memory unit = one
    byte, durations and bytes as floats): the problem itself, for analytic bounds on real costs.

    Raises:
        BlockError: the costs do not match the placement.
    """
    if costs.num_stages != placement.num_stages:
        raise BlockError(f"costs have {costs.num_stages} stages but the placement has {placement.num_stages}")
    if options.memory not in ("exact", "ceil"):
        raise BlockError(f"unknown memory model {options.memory!r}; use exact or ceil")
    split = options.split_backward
    raw, optional = _raw_durations(costs, options)
    latency = {(s, j): costs.unit(s, j).comm for s in range(costs.num_stages - 1) for j in range(costs.k)
               if placement.rank_of(s) != placement.rank_of(s + 1)}  # the same rank pays none
    positive = [d for d in raw.values() if d > 0]
    paid = [c for c in latency.values() if c > 0]
    try:
        tick = ticks.tick(positive, paid, options.ticks) if rounded else 1.0
    except ValueError:
        raise BlockError("every pass takes zero time; give the costs durations") from None
    up = ticks.round_up if rounded else _as_is
    dur = {x: max(1, up(d / tick)) if d > 0 and rounded else up(d / tick) for x, d in raw.items()}
    comm = {(s, j): up(latency[(s, j)] / tick) if (s, j) in latency else 0
            for s in range(costs.num_stages - 1) for j in range(costs.k)}
    choices = {s: tuple(v for v, on in (("recompute", options.recompute), ("offload", options.offload)) if on)
               for s in range(costs.num_stages)}
    sizes = [x for row in costs.units for u in row for x in (u.act, u.wact, u.act - u.wact, u.inp) if x > 0]
    mem_unit = ticks.mem_unit(sizes) if rounded else 1.0
    static = tuple(float(costs.static_of(r)) for r in range(placement.p))
    budget = None
    if options.mem_cap is not None:
        room = [(options.mem_cap - static[r]) / mem_unit for r in range(placement.p)]
        budget = tuple(math.floor(x + 1e-9) if rounded else x for x in room)
    # A block may need idle gaps (modular no-overlap), so starts get room for a gap of up to the
    # longest period searched before every pass; with starts bounded by the sequential length
    # alone, feasibility would jump around in T (found by the MILP twin's cross-check). With u
    # copies the longest is u one-microbatch blocks one after another.
    u = options.group
    max_period = u * (sum(dur.values()) + 2 * sum(comm.values()) + 1)
    horizon = max_period * (u * len(dur) + 1)
    anchors = {r: Pass(placement.stages_of(r)[0], 0, Op.F) for r in range(placement.p)}
    spans = _lifespans(costs, placement, split, options, mem_unit, up)
    edges = _edges(dur, comm, costs.num_stages, costs.k, split)
    rounding = (max(ticks.rounding(positive, tick, at_least_one=True), ticks.rounding(paid, tick))
                if rounded else 0.0)
    exact = rounding == 0.0 and all(ticks.whole(x / mem_unit) for x in sizes)
    dur, optional, edges, spans = _copies(u, dur, optional, edges, spans)
    rank = {x: placement.rank_of(x.stage) for x in dur}
    copy = frozenset(x for x in dur if x.op in (Op.OFFLOAD, Op.RELOAD))
    return BlockSpec(placement.p, costs.num_stages, split, tick, mem_unit, dur, rank, copy, optional, choices,
                     edges, spans, budget, static, horizon, anchors, max_period, options.memory, exact, u, rounding)


def _raw_durations(costs: Costs, options: BlockOptions) -> tuple[dict[Pass, float], dict[Pass, str]]:
    """Every possible pass of one microbatch with its duration in cost units, and the optional ones."""
    ops = [Op.F, Op.B, Op.W] if options.split_backward else [Op.F, Op.BW]
    raw: dict[Pass, float] = {}
    optional: dict[Pass, str] = {}
    for s in range(costs.num_stages):
        for j in range(costs.k):
            extra = ([(Op.R, "recompute")] if options.recompute else []) + (
                [(Op.OFFLOAD, "offload"), (Op.RELOAD, "offload")] if options.offload else [])
            for op, kind in [(op, None) for op in ops] + extra:
                raw[Pass(s, j, op)] = costs.duration(Pass(s, j, op).action())
                if kind:
                    optional[Pass(s, j, op)] = kind
    return raw, optional


def _copies(u: int, dur: dict[Pass, int], optional: dict[Pass, str], edges: tuple, spans: tuple[Lifespan, ...]):
    """One microbatch's data repeated for copies 0..u-1 (edges and lifespans within each copy)."""
    if u == 1:
        return dur, optional, edges, spans

    def at(x: Pass, r: int) -> Pass:
        return dataclasses.replace(x, micro=r)

    return ({at(x, r): d for r in range(u) for x, d in dur.items()},
            {at(x, r): k for r in range(u) for x, k in optional.items()},
            tuple((at(a, r), at(b, r), g) for r in range(u) for a, b, g in edges),
            tuple(dataclasses.replace(s, begin=at(s.begin, r), end=at(s.end, r)) for r in range(u) for s in spans))


def _as_is(x: float) -> float:
    return x


def _edges(dur: dict[Pass, int], comm: dict[tuple[int, int], int], num_stages: int, k: int,
           split: bool) -> tuple[tuple[Pass, Pass, int], ...]:
    """DESIGN.md's dependencies within one microbatch; R also waits for its unit's gradient."""
    edges: list[tuple[Pass, Pass, int]] = []
    back = Op.B if split else Op.BW
    for s in range(num_stages):
        for j in range(k):
            f, b = Pass(s, j, Op.F), Pass(s, j, back)
            if s > 0:
                edges.append((f, Pass(s - 1, j, Op.F), comm[(s - 1, j)]))
            if j > 0:
                edges.append((f, Pass(s, j - 1, Op.F), 0))
            edges.append((b, f, 0))
            grad = None if s == num_stages - 1 else (Pass(s + 1, j, back), comm[(s, j)])
            if grad:
                edges.append((b, *grad))
            if j < k - 1:
                edges.append((b, Pass(s, j + 1, back), 0))
            if split:
                edges.append((Pass(s, j, Op.W), b, 0))
            r = Pass(s, j, Op.R)
            if r in dur:
                edges += [(r, f, 0), (b, r, 0)]
                if grad:
                    edges.append((r, *grad))
            off, rel = Pass(s, j, Op.OFFLOAD), Pass(s, j, Op.RELOAD)
            if off in dur:
                edges += [(off, f, 0), (rel, off, 0), (b, rel, 0)]
    return tuple(edges)


def _lifespans(costs: Costs, placement: Placement, split: bool, options: BlockOptions,
               mem_unit: float, up=ticks.round_up) -> tuple[Lifespan, ...]:
    """Per unit and variant, the spans that hold memory (DESIGN.md's memory table).

    keep: act - wact from F to B and wact from F to W (act from F to BW); recompute: the kept
    input ``inp`` from F, the rest ``act - inp`` from R (``inp`` is part of ``act``), ending as the
    keep terms do (`_recompute_items`); offload: act from F to the end of OFFLOAD plus the act
    terms from RELOAD. Bytes round up to memory units, so the bound never undercounts.
    """
    spans: list[Lifespan] = []
    back = Op.B if split else Op.BW
    for s in range(costs.num_stages):
        r = placement.rank_of(s)
        for j in range(costs.k):
            u = costs.unit(s, j)
            tail = [(back, u.act - u.wact if split else u.act)] + ([(Op.W, u.wact)] if split else [])
            variants = [("keep", Op.F)]
            if options.recompute:
                variants.append(("recompute", Op.R))
            if options.offload:
                variants.append(("offload", Op.RELOAD))
            for variant, source in variants:
                items = [(source, end, nbytes) for end, nbytes in tail]
                if variant == "recompute":
                    items = _recompute_items(tail, u.inp)
                if variant == "offload":
                    items.append((Op.F, Op.OFFLOAD, u.act))
                for begin, end, nbytes in items:
                    units = up(nbytes / mem_unit)
                    if nbytes > 0 and units > 0:  # a difference of equal sizes may leave float noise
                        spans.append(Lifespan(r, s, variant, Pass(s, j, begin), Pass(s, j, end), units))
    return tuple(spans)


def _recompute_items(tail: list[tuple[Op, float]], inp: float) -> list[tuple[Op, Op, float]]:
    """A recomputed unit's spans ``(begin, end, bytes)``: F allocates ``inp``, R the rest of ``act``,
    and the ends free what they free without recompute (``tail``: B's ``act - wact`` then W's
    ``wact``, or BW's ``act``). The input's bytes go to the earliest end first, so with ``inp <=
    act - wact`` it is one span F..B and the curve is DESIGN.md's: ``+inp`` at F, ``+(act - inp)``
    at R, the ends' frees as without recompute."""
    items = []
    for end, nbytes in tail:
        kept = min(inp, nbytes)
        inp -= kept
        items += [(Op.F, end, kept), (Op.R, end, nbytes - kept)]
    return items
