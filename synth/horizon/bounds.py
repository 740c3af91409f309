"""Analytic lower bounds on the makespan, independent of any solver.

Every bound below holds for every schedule of ``m`` microbatches with the spec's placement,
passes and memory budgets, whichever of the allowed variants (keep, recompute, offload) each
unit picks. On a spec built with ``block_spec(..., rounded=False)`` the numbers are the real
costs (milliseconds and bytes), so the bounds hold for the problem itself; on the rounded spec
they hold for the integer model the solvers see.

- **Work** (per rank): no pass on the rank can start before its earliest possible start (the
  longest precedence path to it, fill), the rank's compute stream then runs all its mandatory
  passes of all microbatches one at a time, and after the last of them the rest of that
  microbatch's chain still has to run (drain: the smallest tail among the rank's passes).
- **Pass** (per pass of one microbatch): its m copies share one rank, so the last ends no
  earlier than its earliest start plus m durations, and its tail follows.
- **Memory** (per rank, under a cap): each microbatch's unit holds, in its cheapest variant, at
  least ``bytes x shortest lifespan`` of memory-time (a lifespan runs from its first pass's start
  to its last pass's end, which the precedences keep apart); the rank never holds more than its
  budget, so the makespan is at least the total memory-time over the budget.

Optional passes (R, OFFLOAD, RELOAD) are left out of work and paths: that only lowers the bounds.

`horizon_bound` adds two bounds on the full horizon's jobs (``synth.horizon.spec.Horizon``):

- **Order** (the slot structure under a cap): the longest path of the model's precedence rows,
  the microbatch order and the cap as precedences among them. Under a cap of K microbatches a
  stage starts its (i + K)-th forward only after its i-th microbatch's memory is freed, so the
  path climbs by a whole lifespan every K microbatches, which the memory-time bound spreads
  evenly. It holds wherever the rows cut off no optimum (every relabelled solution meets them).
- **Rank**: per rank and stream, Jackson's preemptive schedule of its jobs released at their
  heads and followed by their tails (Carlier's one-machine bound): the longest ``end + tail``
  there is a bound, since letting a rank preempt only relaxes it.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from synth.block.spec import BlockSpec, Pass

if TYPE_CHECKING:
    from synth.horizon.spec import Horizon

__all__ = ["Bound", "analytic_bound", "horizon_bound", "jackson"]


@dataclass(frozen=True, slots=True)
class Bound:
    """The best analytic bound, in the spec's time units, and the family that gives it:
    "work", "pass" or "memory" (inf with "memory" if some rank's budget cannot hold even one
    microbatch's cheapest lifespan)."""

    value: float
    kind: str
    parts: dict[str, float]


def analytic_bound(spec: BlockSpec, m: int, deadline: float | None = None) -> Bound:
    """The largest of the work, pass and memory bounds for ``m`` microbatches of ``spec``. The
    memory bound's sum stops at ``deadline`` (a ``time.perf_counter()`` value; its cost grows with
    the square of stages x slices): what it has summed by then is still a bound, a weaker one."""
    mandatory = [x for x in spec.dur if x not in spec.optional]
    keep = set(mandatory)
    head, tail = _paths(spec, keep)
    parts = {"work": 0.0, "pass": 0.0, "memory": 0.0}
    for r in range(spec.p):
        mine = [x for x in mandatory if spec.rank[x] == r and x not in spec.copy]
        if mine:
            work = m * sum(spec.dur[x] for x in mine)
            parts["work"] = max(parts["work"], min(head[x] for x in mine) + work + min(tail[x] for x in mine))
    for x in mandatory:
        parts["pass"] = max(parts["pass"], head[x] + m * spec.dur[x] + tail[x])
    if spec.budget is not None:
        parts["memory"] = _memory_bound(spec, m, deadline)
    kind = max(parts, key=lambda k: parts[k])
    return Bound(parts[kind], kind, parts)


def horizon_bound(h: Horizon, heads_tails: tuple[list, list] | None = None) -> Bound:
    """The largest of `analytic_bound` and the order and rank bounds of the module docstring, on
    ``h``'s own numbers (``heads_tails``: ``synth.horizon.rows.paths(h)`` if already known)."""
    from synth.horizon.rows import paths

    base = analytic_bound(h.spec, h.m)
    head, tail = heads_tails if heads_tails is not None else paths(h)
    parts = dict(base.parts)
    mandatory = [j for j in range(len(h.jobs)) if h.presence[j] is None]
    parts["order"] = max((head[j] + h.dur[j] + tail[j] for j in mandatory), default=0.0)
    streams: dict[tuple[int, bool], list[tuple[float, float, float]]] = {}
    for j in mandatory:
        if h.dur[j] > 0:
            streams.setdefault((h.rank[j], h.copy[j]), []).append((head[j], h.dur[j], tail[j]))
    parts["rank"] = max((jackson(jobs) for jobs in streams.values()), default=0.0)
    kind = max(parts, key=lambda k: parts[k])
    return Bound(parts[kind], kind, parts)


def jackson(jobs: list[tuple[float, float, float]]) -> float:
    """The largest ``completion + tail`` of Jackson's preemptive schedule of ``(release, duration,
    tail)`` jobs on one machine: at every instant the released job with the longest tail runs.
    A lower bound on ``max(end + tail)`` of every non-preemptive schedule (Carlier 1982)."""
    jobs = sorted(jobs)
    ready: list[tuple[float, float]] = []  # (-tail, time left)
    t, k, best = 0.0, 0, 0.0
    while k < len(jobs) or ready:
        if not ready and t < jobs[k][0]:
            t = jobs[k][0]
        while k < len(jobs) and jobs[k][0] <= t:
            heapq.heappush(ready, (-jobs[k][2], jobs[k][1]))
            k += 1
        neg_tail, left = heapq.heappop(ready)
        run = left if k == len(jobs) else min(left, jobs[k][0] - t)
        t += run
        if left - run > 1e-12:
            heapq.heappush(ready, (neg_tail, left - run))
        else:
            best = max(best, t - neg_tail)
    return best


def _paths(spec: BlockSpec, passes: set[Pass]) -> tuple[dict[Pass, float], dict[Pass, float]]:
    """Per pass, the longest precedence path to its start (head) and from its end (tail)."""
    preds: dict[Pass, list[tuple[Pass, float]]] = {x: [] for x in passes}
    succs: dict[Pass, list[tuple[Pass, float]]] = {x: [] for x in passes}
    for later, earlier, gap in spec.edges:
        if later in passes and earlier in passes:
            preds[later].append((earlier, gap))
            succs[earlier].append((later, gap))
    order = _topological(passes, preds)
    head: dict[Pass, float] = {}
    for x in order:
        head[x] = max((head[e] + spec.dur[e] + g for e, g in preds[x]), default=0)
    tail: dict[Pass, float] = {}
    for x in reversed(order):
        tail[x] = max((g + spec.dur[y] + tail[y] for y, g in succs[x]), default=0)
    return head, tail


def _topological(passes: set[Pass], preds: dict[Pass, list]) -> list[Pass]:
    """Kahn's algorithm, ties in pass order."""
    succs: dict[Pass, list[Pass]] = {x: [] for x in passes}
    indegree = {x: 0 for x in passes}
    for x in passes:
        for e, _ in preds[x]:
            succs[e].append(x)
            indegree[x] += 1
    order = sorted(x for x in passes if indegree[x] == 0)
    for x in order:  # appending while iterating walks the whole DAG
        for y in succs[x]:
            indegree[y] -= 1
            if indegree[y] == 0:
                order.append(y)
    if len(order) != len(passes):
        raise ValueError("the block's precedences have a cycle")
    return order


def _memory_bound(spec: BlockSpec, m: int, deadline: float | None = None) -> float:
    """Each rank's least activation area (bytes x time its units must hold) over its room under
    the cap. Every unit's area is at least zero, so a sum cut short at ``deadline`` is still a
    lower bound."""
    area = [0.0] * spec.p
    graphs: dict[str, tuple] = {}  # variant -> its passes' precedences in topological order
    spans_of: dict[tuple, list] = {}  # (stage, slice, variant) -> the lifespans that begin there
    for span in spec.lifespans:
        spans_of.setdefault((span.stage, span.begin.slice, span.variant), []).append(span)
    for s in range(spec.num_stages):
        for j in range(1 + max(x.slice for x in spec.dur)):
            if deadline is not None and time.perf_counter() > deadline:
                break
            cheapest = math.inf
            for variant in ("keep", *spec.choices.get(s, ())):
                if variant not in graphs:
                    graphs[variant] = _graph(spec, variant)
                spans = spans_of.get((s, j, variant), [])
                cost = 0.0
                for begin in {span.begin for span in spans}:  # one longest-path pass per beginning
                    mine = [span for span in spans if span.begin == begin]
                    dist = _distances(spec, graphs[variant], begin, {span.end for span in mine})
                    cost += sum(span.units * dist[span.end] for span in mine)
                cheapest = min(cheapest, cost)
            if cheapest < math.inf:
                area[spec.rank[Pass(s, j, spec.first.op)]] += m * cheapest
    bound = 0.0
    for r, need in enumerate(area):
        room = spec.budget[r]
        if need <= 0:
            continue
        bound = max(bound, math.inf if room <= 0 else need / room)
    return bound


def _graph(spec: BlockSpec, variant: str) -> tuple[list[Pass], dict[Pass, list[tuple[Pass, float]]], dict]:
    """The passes of ``variant`` (the mandatory ones and that variant's optional ones) in
    topological order, with their precedences and their positions in that order."""
    passes = {x for x in spec.dur if x not in spec.optional or spec.optional[x] == variant}
    preds: dict[Pass, list[tuple[Pass, float]]] = {x: [] for x in passes}
    for later, earlier, gap in spec.edges:
        if later in passes and earlier in passes:
            preds[later].append((earlier, gap))
    order = _topological(passes, preds)
    return order, preds, {x: i for i, x in enumerate(order)}


def _distances(spec: BlockSpec, graph: tuple, begin: Pass, ends: set[Pass]) -> dict[Pass, float]:
    """For each of ``ends``, the shortest time from ``begin``'s start to its end: the longest
    precedence path between them (just its duration if none leads there). One pass over the
    topological order from ``begin`` to the last of ``ends``."""
    order, preds, position = graph
    dist: dict[Pass, float] = {begin: 0}
    left = set(ends)
    for x in order[position[begin]:]:
        if x != begin:
            reach = [dist[e] + spec.dur[e] + g for e, g in preds[x] if e in dist]
            if reach:
                dist[x] = max(reach)
        left.discard(x)
        if not left:
            break
    return {end: dist.get(end, 0) + spec.dur[end] for end in ends}
