"""The rows that tighten the full-horizon model, derived from a ``BlockSpec`` (what they are, and
why they cut off no optimum, is in ``synth.horizon.spec``'s docstring), and the longest paths
over a `Horizon`'s rows that the start windows, the load cuts and the bounds read.

- `cap_rows`: the memory cap as precedences per rank, and the ``either`` rows where memory frees
  at two passes; which ranks they state exactly.
- `load_terms`: the per-rank load cuts on the makespan.
- `paths`: per job, the longest path of rows to its start and from its end (`topological` order).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from synth.block.spec import BlockSpec, Pass

if TYPE_CHECKING:
    from synth.horizon.spec import Horizon

__all__ = ["cap_rows", "ends_of", "load_terms", "paths", "topological"]


def cap_rows(spec: BlockSpec, exact: list[bool]) -> tuple[list[tuple[Pass, Pass, int]], list[tuple]]:
    """The cap as precedences (the module docstring; no unit has a variant), and where exact.

    Returns ``(rows, either)``: a row ``(b, e, K)`` says the i-th run of ``b`` starts no earlier than
    the (i - K)-th run of ``e`` ends; an ``either`` row ``(b, e1, k1, e2, k2)`` says it starts after
    the (i - k1)-th run of ``e1`` ends or after the (i - k2)-th run of ``e2`` does. Sets ``exact[r]``
    where rank r's rows say all its cumulative would: its lifespans begin at one pass and end at one
    pass, or at two passes ``e1`` and a later ``e2`` (B and W: with ``a`` microbatches before their
    ``e1`` at the i-th start of ``b``, at most ``(budget - u1 a) // u2`` may be before their ``e2``).
    """
    before = _reach(spec)  # x -> passes that start no earlier than x starts
    rows: list[tuple[Pass, Pass, int]] = []
    either: list[tuple] = []
    for r in range(spec.p):
        mine = [span for span in spec.lifespans if span.rank == r and span.units > 0]
        if not mine:
            continue
        budget = spec.budget[r]
        begins, ends = {span.begin for span in mine}, {span.end for span in mine}
        feasible = True
        for b in sorted(begins):
            earlier = [span for span in mine if span.begin == b or b in before[span.begin]]
            # the units b's own microbatch surely holds at b's start
            own = sum(span.units for span in earlier if span.end in before[b] and spec.dur[span.end] > 0)
            for e in sorted(ends):
                if e not in before[b] or spec.dur[e] <= 0:
                    continue  # e may end before b starts: no microbatch is sure to hold both
                later = {e} | _after_end(spec, e, before)
                units = sum(span.units for span in earlier if span.end in later)
                held = max(own, units)
                if units <= 0:
                    continue
                if budget < held:  # not even one microbatch fits: the cumulative says so
                    feasible = False
                    continue
                # i itself holds `held`, each other microbatch alive before its e at least `units`
                rows.append((b, e, 1 + _floor_div(budget - held, units)))
        exact[r] = feasible and len(begins) == 1 and spec.dur[min(begins)] > 0 and (
            len(ends) == 1 or _two_ends(spec, mine, before, budget, either))
    return rows, either


def _two_ends(spec: BlockSpec, mine: list, before: dict, budget: int, either: list) -> bool:
    """For a rank whose lifespans begin at one pass ``b`` and end at two, ``e1`` and ``e2`` (which
    ends no earlier), add the ``either`` rows that make its cap exact and return True; False if
    the ends are not so nested. With ``a`` microbatches (the i-th included) before their ``e1`` at
    the i-th start of ``b``, memory is ``u1 a + u2 w`` with ``w`` those before their ``e2``, so
    ``w <= c_a = (budget - u1 a) // u2``: if the (i + 1 - a)-th ``e1`` has not ended, the (i - c_a)-th
    ``e2`` has. a = 1 is a plain row (`cap_rows` makes it); a = 2..K1 are ``either`` rows."""
    ends = sorted({span.end for span in mine})
    b = mine[0].begin
    for e1, e2 in (ends, ends[::-1]):
        if e2 in _after_end(spec, e1, before) and e1 in before[b] and spec.dur[e1] > 0 and spec.dur[e2] > 0:
            break
    else:
        return False
    u1 = sum(span.units for span in mine if span.end == e1)
    u2 = sum(span.units for span in mine if span.end == e2)
    c1 = _floor_div(budget - u1, u2)
    for a in range(2, _floor_div(budget, u1 + u2) + 1):
        ca = _floor_div(budget - u1 * a, u2)
        if ca < c1:
            either.append((b, e1, a - 1, e2, ca))
    return True


def ends_of(spec: BlockSpec, r: int) -> set[Pass]:
    return {span.end for span in spec.lifespans if span.rank == r and span.units > 0}


def _floor_div(a: float, b: float) -> int:
    """``floor(a / b)`` for memory in units (ints) or in bytes (floats, within rounding)."""
    return math.floor(a / b + 1e-9)


def _reach(spec: BlockSpec) -> dict[Pass, set[Pass]]:
    """Per pass, the passes a path of precedences makes start no earlier than it starts."""
    succs: dict[Pass, list[Pass]] = {x: [] for x in spec.dur}
    for later, earlier, gap in spec.edges:
        if spec.dur[earlier] + gap >= 0:
            succs[earlier].append(later)
    out: dict[Pass, set[Pass]] = {}
    for x in spec.dur:
        seen, stack = set(), [x]
        while stack:
            for y in succs[stack.pop()]:
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
        out[x] = seen
    return out


def _after_end(spec: BlockSpec, e: Pass, before: dict[Pass, set[Pass]]) -> set[Pass]:
    """The passes that end no earlier than ``e`` ends: those a precedence with a gap >= 0 out of
    ``e`` leads to, and all that start after them."""
    out: set[Pass] = set()
    for later, earlier, gap in spec.edges:
        if earlier == e and gap >= 0:
            out |= {later} | before[later]
    return out


def load_terms(h: Horizon, tails: list[int]) -> list[tuple[int, int, int]]:
    """``(job, i, c)``: the makespan is at least ``start[job] + c``, where ``job`` is a rank's first
    pass of microbatch i (`BlockSpec.anchor`) and ``c`` the rank's compute work of microbatches
    i..m-1 plus the least tail (`paths`) among those jobs. Holds under the microbatch order: every
    such job starts after its own microbatch's anchor (a path of precedences leads there), which
    starts no earlier than microbatch i's, and they run one at a time. Empty if not ordered."""
    if not h.ordered:
        return []
    spec, index, out = h.spec, h.index(), []
    after = _reach(spec)
    for r in range(spec.p):
        anchor = spec.anchors.get(r)
        if anchor is None:
            continue
        mine = [x for x in after[anchor] | {anchor} if spec.rank[x] == r and x not in spec.copy]
        work = sum(spec.dur[x] for x in mine)
        least = 0
        for i in reversed(range(h.m)):  # least: the smallest tail among microbatches i..m-1
            here = min(tails[index[(x, i)]] for x in mine)
            least = here if i == h.m - 1 else min(least, here)
            out.append((index[(anchor, i)], i, (h.m - i) * work + least))
    return out


def topological(succs: list[list[tuple[int, int]]]) -> list[int]:
    """Jobs in an order where every job comes after its predecessors (Kahn's algorithm) over
    ``succs[j] = [(successor, gap), ...]``; ValueError on a cycle."""
    n = len(succs)
    indegree = [0] * n
    for out in succs:
        for c, _ in out:
            indegree[c] += 1
    order = [j for j in range(n) if indegree[j] == 0]
    for j in order:  # appending while iterating walks the whole DAG
        for c, _ in succs[j]:
            indegree[c] -= 1
            if indegree[c] == 0:
                order.append(c)
    if len(order) != n:
        raise ValueError("the full-horizon precedences have a cycle")
    return order


def paths(h: Horizon) -> tuple[list[int], list[int]]:
    """Per job, the longest path of precedence rows (`Horizon.links`, between jobs that exist in
    every variant) to its start (head) and from its end to the makespan (tail); optional jobs get
    0 and 0. Every solution starts job j in ``[head[j], makespan - dur[j] - tail[j]]``."""
    n = len(h.jobs)
    succs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for later, earlier, gap in h.links:
        if h.presence[later] is None and h.presence[earlier] is None:
            succs[earlier].append((later, gap))
    order = topological(succs)
    head, tail = [0] * n, [0] * n
    for j in order:
        for c, gap in succs[j]:
            head[c] = max(head[c], head[j] + h.dur[j] + gap)
    for j in reversed(order):
        tail[j] = max([0, *(gap + h.dur[c] + tail[c] for c, gap in succs[j])])
    return head, tail
