"""The variants `construct` tries: priority rules times warm-up depths (plus recompute and
offload ones when asked), cheapest and most promising first so a deadline cuts the tail.

Depth counts microbatches in flight on a rank (forwarded there, input-gradient backward of
all its units there not ended; W's are left to memory). Its base is the 1F1B-like depth, the
number of ranks a microbatch still visits from the rank's first stage on (``p - r`` for the
standard placement: ZB-H1's warm-up, sec. 2.1); ``base+j`` warms up deeper, ``2base-1`` as
ZB-H2 (sec. 2.2), ``max(2,base-1)`` one less but at least 2; ``mem`` leaves it to memory alone.
Offload variants copy just in time (``synth.construct.copies``) and are not clipped to memory's
depth.
"""

from __future__ import annotations

import math

from synth.construct.tables import RULES, Policy, Tables

__all__ = ["policies"]


def policies(tb: Tables, *, recompute: bool, offload: bool) -> list[Policy]:
    """Every policy to try, in the order to try them; recompute for any k, offload for k = 1.
    W-early is tried with the memory-only depth alone (deeper warm-ups leave it nothing to add)."""
    depths = _depths(tb)
    plain = [Policy(f"list/{rule}/depth={label}", rule, depth)
             for label, depth in depths for rule in RULES if rule != "w-early"]
    mem = depths[0][1]
    plain.insert(2, Policy("list/w-early/depth=mem", "w-early", mem, w_early_at=0.75))
    extra: list[Policy] = []
    if math.isfinite(max(tb.cap)):
        if offload and tb.k == 1:  # the just-in-time copy stream estimates backwards of whole units
            extra += _offload_policies(tb, mem)
        if recompute:
            extra += [Policy(f"list/{rule}/depth=mem/recompute", rule, mem, w_early_at=0.75, recompute=True)
                      for rule in RULES]
            extra += [Policy(f"list/{rule}/depth=mem/recompute-all", rule, mem, recompute=True, eager=True)
                      for rule in ("b-first", "alternate")]
    return plain[:3] + extra + plain[3:]  # memory-only first: it is the best one more often than not


def _offload_policies(tb: Tables, mem: tuple[float, ...]) -> list[Policy]:
    """Offload variants, all just in time (``Policy.jit``), with the memory-only depth and with ZB-H2's
    ``2base-1`` (not clipped to memory: offloading is what lets a rank hold more microbatches). Of
    the rules x depths (mem, base, base+1, 2base-1) x gaps (2, 3, 4), these two made the best
    schedule (or tied it) on llama2-13b over 8 A100-40GB, m = 32, for the standard, interleaved, V
    and two-wave placements and on unit-cost cases; the eager modes (offload when short, offload
    all, reload as soon as there is room) were slower on every one, so they are no longer tried."""
    deep = tuple(2 * _base_depth(tb, r) - 1 for r in range(tb.p))
    jit = [("alternate", "mem", mem, 3.0), ("alternate", "2base-1", deep, 4.0)]
    return [Policy(f"list/{rule}/depth={label}/offload-jit{gap:g}", rule, depth, w_early_at=0.75, offload=True,
                   jit=True, gap=gap) for rule, label, depth, gap in jit]


def _depths(tb: Tables) -> list[tuple[str, tuple[float, ...]]]:
    """(label, per-rank depth) pairs, memory-only first, then the base family; each depth is
    clipped to what memory admits (`_memory_depth`), and dropped when that leaves it equal to
    another one or to the clip itself (taken as the memory-only variant)."""
    p = tb.p
    base = [_base_depth(tb, r) for r in range(p)]
    limit = [_memory_depth(tb, r) for r in range(p)]
    out: list[tuple[str, tuple[float, ...]]] = [("mem", tuple(math.inf for _ in range(p)))]
    seen = {tuple(limit)}
    family = [(f"base+{j}", [b + j for b in base]) for j in (0, 1)] + [("2base-1", [2 * b - 1 for b in base])]
    # one less than 1F1B's, but at least 2: the late ranks, whose first backward comes soonest, then
    # take the bursts of forwards the early ones send without filling up before it (unit costs, standard
    # placement, caps of p/2 microbatches: p = 8, m = 64 297 -> 295; p = 16, m = 32 161 -> 155; p = 16,
    # m = 64 297 -> 291, each the best known)
    family.append(("max(2,base-1)", [max(2, b - 1) for b in base]))
    for label, wanted in family:
        depth = tuple(min(d, cap) for d, cap in zip(wanted, limit, strict=True))
        if depth in seen:
            continue
        seen.add(depth)
        out.append((label, depth))
    return out


def _base_depth(tb: Tables, r: int) -> int:
    """Ranks visited from the rank's first stage to the last one, counted in stage shares of p."""
    first = tb.stages[r][0]
    return max(1, math.ceil((tb.num_stages - first) * tb.p / tb.num_stages))


def _memory_depth(tb: Tables, r: int) -> float:
    """Most microbatches in flight the budget allows (each holds its act until its backward, as
    the plain variants neither recompute nor offload); inf when act is zero or there is no cap."""
    k = tb.k
    held = sum(tb.act[s * k + j] for s in tb.stages[r] for j in range(k))
    if held <= 0 or not math.isfinite(tb.cap[r]):
        return math.inf
    return max(1, math.floor(tb.cap[r] / held + 1e-9))
