"""The period search shared by the block model's solvers (``synth.block.cpsat``, ``synth.block.milp``).

`search_period` finds the smallest period with a block (galloping up from the per-rank load,
then bisecting) and the shortest block there, given a solver's feasibility probe and final solve.
`least_memory` and `sequential_block` describe the one block every cap of at least its memory
admits: one microbatch at a time, freeing as soon as it can (with u copies, the copies one
period of the one-microbatch block apart). The objective that sees m is ``synth.block.objective``.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from ir import Op
from synth.block.spec import BlockError, BlockSpec, Pass

__all__ = ["Answer", "least_memory", "search_period", "sequential_block"]


@dataclass(frozen=True)
class Answer:
    """A solver's block: the period, every present pass's start, each stage's variant, and
    whether the period is proven minimal and the block length optimal at that period."""

    period: int
    offsets: dict[Pass, int]
    variants: dict[int, str]
    proven: bool
    probes: tuple[tuple[int, bool], ...]

    def to_json(self) -> dict[str, Any]:
        return {"period": self.period, "offsets": [[*x.key(), t] for x, t in self.offsets.items()],
                "variants": {str(s): v for s, v in self.variants.items()}, "proven": self.proven,
                "probes": [list(pr) for pr in self.probes]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Answer:
        return cls(obj["period"], {Pass.from_key(row[:-1]): row[-1] for row in obj["offsets"]},
                   {int(s): v for s, v in obj["variants"].items()}, obj["proven"],
                   tuple((int(t), bool(f)) for t, f in obj["probes"]))


def search_period(spec: BlockSpec, probe, final, time_limit: float, known: Answer | None = None) -> Answer:
    """The smallest feasible period (galloping up from the load bound, then bisecting), then the
    shortest block at that period.

    Args:
        spec: the block data.
        probe: ``probe(period)`` returns True, False or None (the solver ran out of time; counted
            as infeasible, and the answer is then not proven), or ``(True, (offsets, variants))``
            with the block it found, which stands in if the final solve finds nothing in time.
        final: ``final(period) -> (optimal, offsets, variants)`` minimizing the block length, or
            False (proven infeasible) or None (nothing found in time).
        time_limit: seconds per block, for the error message.
        known: a block already known to satisfy ``spec`` (the answer of a stricter model): only
            smaller periods are searched, and it stands in if nothing smaller is found.

    Raises:
        BlockError: no block fits, or no solve found a block at the chosen period in time.
    """
    probes: list[tuple[int, bool]] = []
    found: dict[int, tuple] = {}
    proven = True

    def feasible(period: int) -> bool:
        nonlocal proven
        result = probe(period)
        if isinstance(result, tuple):
            result, found[period] = result
        if result is None:
            proven = False
        probes.append((period, bool(result)))
        return bool(result)

    lo, hi = spec.load_bound(), spec.max_period
    if known is not None:
        hi = known.period
        found[hi] = (known.offsets, known.variants)
        probes.extend(known.probes)
        proven = known.proven
    elif spec.budget is not None:
        need = [round((held - static) / spec.mem_unit) for held, static in zip(least_memory(spec), spec.static,
                                                                                strict=True)]
        if any(n > b for n, b in zip(need, spec.budget, strict=True)):
            # one microbatch at a time, freeing as soon as it can, is the least any block holds
            raise BlockError("no building block fits the memory cap, even with one microbatch in flight")
    if lo < hi and feasible(lo):
        hi = lo
    else:  # gallop up from the load bound (the answer is usually near it), then bisect
        step = max(1, lo // 16)
        while lo + step < hi:
            if feasible(lo + step):
                hi = lo + step
                break
            lo, step = lo + step, 2 * step
        while hi - lo > 1:  # invariant: lo infeasible (or unknown), hi feasible
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    if hi == spec.max_period and hi not in found:  # no probe found a block: run one pass at a time
        offsets, variants = sequential_block(spec)
        if spec.budget is None or all(held <= room for held, room in zip(
                spec.units_held(hi, offsets, variants), spec.budget, strict=True)):
            found[hi] = (offsets, variants)  # (the ceil model may refuse it with u > 1 copies)
    result = final(hi)
    if not result and hi in found:
        result = (False, *found[hi])
    if not result:
        raise BlockError(f"no block was found in {time_limit:g} s (or none fits this memory model); "
                         "raise --time-limit")
    optimal, offsets, variants = result
    return Answer(hi, offsets, variants, proven and optimal, tuple(probes))


def least_memory(spec: BlockSpec) -> tuple[float, ...]:
    """Per rank, the least memory a block of ``spec`` holds: one microbatch in flight, its passes
    one at a time in the order that frees soonest (forwards in stage order, each OFFLOAD right after
    its F; then per stage in reverse RELOAD, R, B, W), and per rank the cheapest combination of
    its stages' allowed variants. A cap of at least the largest of these admits a block
    (`sequential_block`). With u copies the same (copy 0's data): no block holds less."""
    return _least(spec.single())[0]


def sequential_block(spec: BlockSpec) -> tuple[dict[Pass, int], dict[int, str]]:
    """The block of `least_memory`: passes one at a time in that order (each as early as its
    edges allow), with the cheapest variants; it is no longer than ``spec.max_period``. With u
    copies, copy r runs it ``r`` one-microbatch periods later (the same periodic schedule)."""
    if spec.group > 1:
        one = spec.single()
        offsets, variants = sequential_block(one)
        return {dataclasses.replace(x, micro=r): t + r * one.max_period
                for r in range(spec.group) for x, t in offsets.items()}, variants
    variants = _least(spec)[1]
    offsets, t = {}, 0
    for x in _sequential_order(spec, variants):
        t = max([t] + [offsets[e] + spec.dur[e] + gap for later, e, gap in spec.edges if later == x and e in offsets])
        offsets[x], t = t, t + spec.dur[x]
    return offsets, variants


def _sequential_order(spec: BlockSpec, variants: dict[int, str | None], every: bool = False) -> list[Pass]:
    """The passes one microbatch runs, in the order that frees soonest (all optional ones with
    ``every``, else those of the chosen variants)."""
    back = Op.B if spec.split_backward else Op.BW
    slices = sorted({x.slice for x in spec.dur})
    order = [x for s in range(spec.num_stages) for j in slices for x in (Pass(s, j, Op.F), Pass(s, j, Op.OFFLOAD))]
    order += [x for s in reversed(range(spec.num_stages)) for j in reversed(slices)
              for x in (Pass(s, j, Op.RELOAD), Pass(s, j, Op.R), Pass(s, j, back), Pass(s, j, Op.W))]
    return [x for x in order if x in spec.dur
            and (every or x not in spec.optional or variants.get(x.stage) == spec.optional[x])]


def _least(spec: BlockSpec) -> tuple[tuple[float, ...], dict[int, str]]:
    period = sum(spec.dur.values()) + len(spec.dur) + 1  # longer than the whole block: one microbatch at a time
    held, chosen = list(spec.static), {}
    for r in range(spec.p):
        stages = sorted({x.stage for x in spec.dur if spec.rank[x] == r})
        mine = [x for x in _sequential_order(spec, {s: None for s in spec.choices}, every=True)
                if spec.rank[x] == r]  # only the rank's own passes set its memory
        best = None
        for combo in itertools.islice(itertools.product(*[("keep", *spec.choices[s]) for s in stages]), 729):
            variants = {s: c for s, c in zip(stages, combo, strict=True) if c != "keep"}
            offsets, t = {}, 0
            for x in mine:
                if x not in spec.optional or variants.get(x.stage) == spec.optional[x]:
                    offsets[x], t = t, t + max(1, spec.dur[x])
            units = spec.units_held(period, offsets, variants, [r])[r]
            if best is None or units < best[0]:
                best = (units, variants)
        held[r] += best[0] * spec.mem_unit
        chosen.update(best[1])
    return tuple(held), chosen
