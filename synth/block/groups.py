"""Blocks of u = 1..4 microbatches, and the one whose tiled makespan is shortest.

A block of u microbatches (``BlockOptions.group``) repeats every T ticks, an average period of
T / u: with u > 1 a rank may interleave microbatches' passes in ways one microbatch's block
cannot, e.g. when one microbatch's lifespan is just over a whole number of periods and the cap
rounds it up (``synth.block.cpsat``). `solve_blocks` solves u = 1 first, as a one-microbatch
solve would, within ``options.time_limit`` (the one limit covers every u; solves end early when
proven, as small blocks usually are), then each larger u on an even share of what is left, and
keeps the block with the smallest tiled makespan for ``options.m`` (``Block.estimate``, the tiled
programs run as soon as possible in ticks; without m the smallest average period), the smaller u
on ties. `solve_groups` returns every u's block instead, for a
caller that squeezes each (squeezing can reorder them).

Each larger u starts from what a smaller one found (`copies`): u / d copies of a block of d
microbatches (d divides u), one period apart, form a block of u microbatches with period
``(u / d) T_d`` and the same periodic schedule, so it satisfies the u model (its memory curve
is the same; only the ``ceil`` model, which rounds each copy's lifespans up on their own, may
refuse it). It bounds the u search from above, which then probes only shorter periods.
"""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction

from ir import Costs, Placement
from synth.block.cpsat import Block, solve
from synth.block.objective import asap_fits
from synth.block.period import Answer
from synth.block.spec import MAX_GROUP, BlockError, BlockOptions, BlockSpec, block_spec

__all__ = ["GROUPS", "copies", "solve_blocks", "solve_groups"]

GROUPS = (1, 2, 3, 4)


def solve_blocks(costs: Costs, placement: Placement, options: BlockOptions | None = None,
                 groups: tuple[int, ...] = GROUPS, solver: str = "cpsat") -> Block:
    """The block with the smallest estimated tiled makespan for ``options.m`` microbatches (without
    m: the smallest average period) over ``groups`` microbatches per block, all within
    ``options.time_limit`` seconds (for the MILP solvers, where that limit is per solve, each u's
    search gets the whole limit per solve). ``solve_seconds`` covers every u.

    Raises:
        BlockError: no block fits (the cap is too small even one microbatch at a time), a group
            is out of range, or no u gave a block in time.
    """
    options = options or BlockOptions()
    began = time.perf_counter()
    best = min(solve_groups(costs, placement, options, groups, solver).values(), key=lambda b: _rank(b, options.m))
    return dataclasses.replace(best, solve_seconds=time.perf_counter() - began)


def solve_groups(costs: Costs, placement: Placement, options: BlockOptions | None = None,
                 groups: tuple[int, ...] = GROUPS, solver: str = "cpsat") -> dict[int, Block]:
    """u -> the block of u microbatches, for the u in ``groups`` that gave one in time (the smallest
    u first, within ``options.time_limit``, each larger u on an even share of what is left, hinted
    with `copies` of a smaller one). Raises as `solve_blocks`."""
    options = options or BlockOptions()
    groups = tuple(sorted(set(groups)))
    if not groups or any(isinstance(u, bool) or not isinstance(u, int) or not 1 <= u <= MAX_GROUP for u in groups):
        raise BlockError(f"groups must be microbatches per block in 1..{MAX_GROUP}, got {groups!r}")
    deadline = time.perf_counter() + options.time_limit
    solved: dict[int, Block] = {}
    found: dict[int, Block] = {}
    failures: list[BlockError] = []
    for n, u in enumerate(groups):
        left = deadline - time.perf_counter()
        if n > 0 and left < 0.1:
            break
        share = left if n == 0 else left / (len(groups) - n)  # the first may take all, as without groups
        mine = dataclasses.replace(options, group=u, time_limit=max(0.1, share) if solver == "cpsat"
                                   else options.time_limit)
        spec = block_spec(costs, placement, mine)
        try:
            block = solve(spec, mine, solver, known=_known(spec, found))
        except BlockError as err:
            if "no building block fits" in str(err):
                raise  # one microbatch in flight is the least any u holds: none fits
            failures.append(err)
            continue
        found[u] = block
        if n == 0 or options.m is None or asap_fits(spec, block.period, block.offsets, _variants(block), options.m):
            solved[u] = block  # (else its tiling, run early, would pass the cap: only a hint for larger u)
    if not solved:
        raise failures[0] if failures else BlockError(f"no block was found in {options.time_limit:g} s")
    return solved


def copies(block: Block, times: int) -> Answer:
    """``times`` copies of ``block``, one period apart: a block of ``times * block.group``
    microbatches with period ``times * block.period`` (copy ``j d + r`` is copy r of the j-th)."""
    d = block.group
    offsets = {dataclasses.replace(x, micro=j * d + x.micro): t + j * block.period
               for j in range(times) for x, t in block.offsets.items()}
    return Answer(times * block.period, offsets, _variants(block), True, ())


def _variants(block: Block) -> dict[int, str]:
    variants = {s: "recompute" for s, on in enumerate(block.recompute) if on}
    variants.update({s: "offload" for s, on in enumerate(block.offload) if on})
    return variants


def _known(spec: BlockSpec, solved: dict[int, Block]) -> Answer | None:
    """The shortest-period block of ``spec.group`` microbatches made of copies of a solved smaller
    block, if one fits ``spec``'s memory model."""
    u = spec.group
    offers = sorted((copies(b, u // d) for d, b in solved.items() if d < u and u % d == 0), key=lambda a: a.period)
    for offer in offers:
        if spec.budget is None or all(held <= room for held, room in zip(
                spec.units_held(offer.period, offer.offsets, offer.variants), spec.budget, strict=True)):
            return offer
    return None


def _rank(block: Block, m: int | None) -> tuple:
    """Smaller is better: the tiled schedule's makespan for m (``Block.estimate``; else the average
    period), then the smaller u."""
    return (block.estimate if m is not None else Fraction(block.period, block.group), block.group)
