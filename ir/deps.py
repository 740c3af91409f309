"""Dependency and memory rules of DESIGN.md, shared by verify, simulate and lower.

`ProgramIndex` says where every action of a schedule sits and which variant each
unit uses (split or fused backward, recompute, offload). `dependencies` lists the
actions an action must follow, each with the rule that asks for it and, for a
cross-rank edge, the unit whose comm latency it pays. `memory_effects` gives the
byte deltas an action causes on its rank, per the memory table.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import NamedTuple

from ir.actions import Action, Op
from ir.costs import Costs
from ir.schedule import Schedule

__all__ = ["Edge", "ProgramIndex", "dependencies", "memory_effects", "messages", "ready_time"]


class Edge(NamedTuple):
    """``pred`` must end before the dependent action starts (plus latency, if any).

    Attributes:
        pred: the action depended on.
        rule: the rule name used in error messages.
        latency_of: ``(stage, slice)`` whose ``UnitCost.comm`` is added, or None.
    """

    pred: Action
    rule: str
    latency_of: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One boundary tensor crossing ranks: made by ``producer``, read by ``consumers`` (a gradient
    is read by the unit's R, if it has one, and its B or BW)."""

    producer: Action
    consumers: tuple[Action, ...]
    send: Action
    recv: Action


class ProgramIndex:
    """Positions of a schedule's actions and the variant each unit uses."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.placement = schedule.placement
        self.num_stages = schedule.num_stages
        self.lowered = schedule.is_lowered
        self.where: dict[Action, tuple[int, int]] = {}
        self._deps: dict[Action, list[Edge]] = {}
        # (op, stage, microbatch, slice) -> the schedule's own action: dependencies look their
        # preds up by a plain tuple instead of building an Action for each (the hot path).
        self._by_key: dict[tuple[Op, int, int, int], Action] = {}
        self.duplicates: list[tuple[int, int, Action]] = []
        for rank, pos, action in schedule.actions():
            if action in self.where:
                self.duplicates.append((rank, pos, action))
            else:
                self.where[action] = (rank, pos)
                self._by_key[(action.op, action.stage, action.microbatch, action.slice)] = action
        self._k = schedule.k

    def deps(self, action: Action) -> list[Edge]:
        """`dependencies` of ``action``, computed once per index (verify and simulate both ask)."""
        edges = self._deps.get(action)
        if edges is None:
            edges = self._deps[action] = dependencies(action, self)
        return edges

    def has(self, action: Action) -> bool:
        return action in self.where

    def get(self, op: Op, stage: int, microbatch: int, slice_: int) -> Action:
        """The schedule's ``op`` action of the unit, or a new one if the schedule lacks it."""
        found = self._by_key.get((op, stage, microbatch, slice_))
        return found if found is not None else Action(op, stage, microbatch, slice_)

    def present(self, op: Op, stage: int, microbatch: int, slice_: int) -> bool:
        return (op, stage, microbatch, slice_) in self._by_key

    def rank_of(self, action: Action) -> int:
        """The rank that must run ``action``: the one its stage is placed on."""
        return self.placement.rank_of(action.stage)

    def backward_input(self, stage: int, microbatch: int, slice_: int) -> Action:
        """The op producing the unit's input gradient: B if the schedule splits it, else BW."""
        by_key = self._by_key
        split = by_key.get((Op.B, stage, microbatch, slice_))
        if split is not None:
            return split
        fused = by_key.get((Op.BW, stage, microbatch, slice_))
        return fused if fused is not None else Action(Op.B, stage, microbatch, slice_)

    def recomputed(self, action: Action) -> bool:
        return (Op.R, action.stage, action.microbatch, action.slice) in self._by_key

    def crosses(self, stage_a: int, stage_b: int) -> bool:
        return self.placement.rank_of(stage_a) != self.placement.rank_of(stage_b)


def dependencies(action: Action, ix: ProgramIndex) -> list[Edge]:
    """The edges into ``action`` (DESIGN.md, "Dependencies")."""
    op, s, i, j = action.op, action.stage, action.microbatch, action.slice
    get = ix.get
    if op is Op.F:
        edges = []
        if s > 0:
            producer = get(Op.F, s - 1, i, j)
            edges += _boundary(ix, producer, action, "forward-chain", Op.SEND_F, Op.RECV_F, (s - 1, j))
        if j > 0:
            edges.append(Edge(get(Op.F, s, i, j - 1), "slice-order"))
        return edges
    if op is Op.B or op is Op.BW:
        edges = [Edge(get(Op.F, s, i, j), "backward-after-forward")]
        if ix.present(Op.R, s, i, j):
            edges.append(Edge(get(Op.R, s, i, j), "recompute"))
        if ix.present(Op.RELOAD, s, i, j):
            edges.append(Edge(get(Op.RELOAD, s, i, j), "offload"))
        if s < ix.num_stages - 1:
            producer = ix.backward_input(s + 1, i, j)
            edges += _boundary(ix, producer, action, "backward-chain", Op.SEND_B, Op.RECV_B, (s, j))
        if j < ix._k - 1:
            edges.append(Edge(ix.backward_input(s, i, j + 1), "slice-order"))
        return edges
    if op is Op.W:
        return [Edge(get(Op.B, s, i, j), "split-backward")]
    if op is Op.R:
        # "just before B": recompute once the unit's gradient is there, so the
        # re-made activations are not held while it is still on its way.
        edges = [Edge(get(Op.F, s, i, j), "recompute")]
        if s < ix.num_stages - 1:
            producer = ix.backward_input(s + 1, i, j)
            edges += _boundary(ix, producer, action, "backward-chain", Op.SEND_B, Op.RECV_B, (s, j))
        return edges
    if op is Op.OFFLOAD:
        return [Edge(get(Op.F, s, i, j), "offload")]
    if op is Op.RELOAD:
        return [Edge(get(Op.OFFLOAD, s, i, j), "offload")]
    if op is Op.SEND_F:
        return [Edge(get(Op.F, s, i, j), "comm")]
    if op is Op.SEND_B:
        return [Edge(ix.backward_input(s, i, j), "comm")]
    return []  # RECV_*: a post, ordered only by its program position


def ready_time(edges: list[Edge], end: dict[Action, float], costs: Costs) -> float | None:
    """Earliest start the edges allow (each pred's end plus its comm latency), or None while a pred has not ended."""
    ready = 0.0
    for edge in edges:
        pred_end = end.get(edge.pred)
        if pred_end is None:
            return None
        if edge.latency_of is not None:
            pred_end += costs.unit(*edge.latency_of).comm
        ready = max(ready, pred_end)
    return ready


def _boundary(
    ix: ProgramIndex,
    producer: Action,
    consumer: Action,
    rule: str,
    send_op: Op,
    recv_op: Op,
    latency_of: tuple[int, int],
) -> list[Edge]:
    """Edges for a boundary tensor; across ranks it pays latency and, once lowered, goes through SEND/RECV."""
    if not ix.crosses(producer.stage, consumer.stage):
        return [Edge(producer, rule)]
    if not ix.lowered:
        return [Edge(producer, rule, latency_of)]
    send = ix.get(send_op, producer.stage, producer.microbatch, producer.slice)
    recv = ix.get(recv_op, consumer.stage, consumer.microbatch, consumer.slice)
    return [Edge(recv, "comm"), Edge(send, rule, latency_of)]


def messages(ix: ProgramIndex) -> list[Message]:
    """Every boundary tensor that crosses ranks, in a fixed order (stage, microbatch, slice)."""
    out = []
    last = ix.num_stages - 1
    for s, i, j in ix.schedule.units():
        if s < last and ix.crosses(s, s + 1):
            f = Action(Op.F, s, i, j)
            consumer = Action(Op.F, s + 1, i, j)
            out.append(Message(f, (consumer,), f.with_op(Op.SEND_F), consumer.with_op(Op.RECV_F)))
        if s > 0 and ix.crosses(s, s - 1):
            b = ix.backward_input(s, i, j)
            consumer = ix.backward_input(s - 1, i, j)
            recompute = consumer.with_op(Op.R)
            consumers = (recompute, consumer) if ix.has(recompute) else (consumer,)
            out.append(Message(b, consumers, b.with_op(Op.SEND_B), consumer.with_op(Op.RECV_B)))
    return out


def memory_effects(action: Action, ix: ProgramIndex, costs: Costs) -> list[tuple[bool, float]]:
    """Byte deltas on the action's rank as ``(at_end, delta)`` pairs (DESIGN.md memory table)."""
    return unit_effects(action.op, costs.unit(action.stage, action.slice), ix.recomputed(action))


def unit_effects(op: Op, u, recomputed: bool) -> list[tuple[bool, float]]:
    """`memory_effects` of an ``op`` on a unit with costs ``u`` (recomputed or not)."""
    if op is Op.F:
        return [(False, u.inp if recomputed else u.act)]
    if op is Op.R:
        # the kept input is part of act (the stage's first op saves it): R adds only the rest, and
        # the unit's backwards then free act exactly as without recompute
        return [(False, u.act - u.inp)]
    if op is Op.B:
        return [(True, -(u.act - u.wact))]
    if op is Op.BW:
        return [(True, -u.act)]
    if op is Op.W:
        return [(True, -u.wact)]
    if op is Op.OFFLOAD:
        return [(True, -u.act)]
    if op is Op.RELOAD:
        return [(False, u.act)]
    return []


@contextlib.contextmanager
def paused_gc():
    """The cyclic garbage collector paused for the block (restored as it was): the passes over a
    schedule allocate one acyclic object or more per action, and at 10^5 actions the collector's
    rescans of them cost a fifth of a simulation (measured at p = 8, m = 5000)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()

