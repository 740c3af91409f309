"""Event-driven simulation of a `Schedule` against `Costs`, giving a `Timeline`.

Semantics ("ASAP in program order"): on each rank, actions start in program
order (an action never starts before the one before it in the program); the
compute stream (F, B, W, BW, R) and the copy stream (OFFLOAD, RELOAD) each run
one action at a time; an action starts once every dependency has ended, plus the
sender unit's comm latency on a cross-rank edge. SEND/RECV (lowered schedules)
are posts: a message arrives at the later of the SEND post's end plus latency
and the RECV post's end, and its consumer waits for that. A post takes its
boundary's ``UnitCost.post`` (zero by default); one that takes time holds the
rank's compute stream (the host thread that posts also runs the passes, as
gloo's executor on CPU does) and counts as neither busy nor copy time. With
``Costs.copy_stream`` False, OFFLOAD/RELOAD hold the compute stream too (plain
copies by that thread, the executor on CPU) and still count as copy time. Memory
follows the table in DESIGN.md: allocations at an action's start, frees at its
end, frees first when both fall at the same instant. The schedule is checked by
``ir.verify``'s structural rules first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ir.actions import Action, Op, Stream, parse_action
from ir.costs import Costs
from ir.deps import ProgramIndex, memory_effects, paused_gc, ready_time, unit_effects
from ir.errors import ScheduleError, Violation
from ir.schedule import Schedule

__all__ = ["Span", "Timeline", "simulate"]


@dataclass(frozen=True, slots=True)
class Span:
    """When one action ran: ``[start, end)`` on ``stream`` of ``rank``."""

    rank: int
    action: Action
    start: float
    end: float
    stream: Stream


@dataclass(frozen=True, slots=True)
class Timeline:
    """The simulated run of a schedule.

    Attributes:
        spans: one per action, rank-major, in program order.
        makespan: the end of the last action (the run starts at 0).
        busy: compute-stream busy time per rank.
        copy_busy: copy-stream busy time per rank.
        memory: per rank, the ``(time, bytes)`` steps of its memory curve: a point at time 0,
            then one per instant at which the level changes; bytes are static + live
            activations after everything that happens at that instant.
        peak: per rank, the highest point of its memory curve.
        peak_action: per rank, the action whose allocation reached the peak (None if
            the peak is the static bytes alone).
    """

    spans: tuple[Span, ...]
    makespan: float
    busy: tuple[float, ...]
    copy_busy: tuple[float, ...]
    memory: tuple[tuple[tuple[float, float], ...], ...]
    peak: tuple[float, ...]
    peak_action: tuple[Action | None, ...]
    _by_action: dict[Action, Span] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_action.update({span.action: span for span in self.spans})

    @property
    def p(self) -> int:
        return len(self.busy)

    @property
    def bubble(self) -> tuple[float, ...]:
        """Idle share of the makespan on each rank's compute stream."""
        if self.makespan <= 0:
            return tuple(0.0 for _ in self.busy)
        return tuple((self.makespan - b) / self.makespan for b in self.busy)

    @property
    def bubble_ratio(self) -> float:
        """Idle share of all ranks' compute time: ``1 - sum(busy) / (p * makespan)``."""
        if self.makespan <= 0:
            return 0.0
        return 1.0 - sum(self.busy) / (self.p * self.makespan)

    def span(self, action: Action | str) -> Span:
        """The span of ``action`` (an `Action` or its text form)."""
        return self._by_action[parse_action(action) if isinstance(action, str) else action]

    def summary(self) -> str:
        """A small text table: makespan, then per rank busy, bubble and peak memory."""
        lines = [f"makespan {self.makespan:g}, bubble ratio {self.bubble_ratio:.4f}", "rank  busy  bubble  peak"]
        for r in range(self.p):
            lines.append(f"{r:>4}  {self.busy[r]:g}  {self.bubble[r]:.4f}  {self.peak[r]:g}")
        return "\n".join(lines)


def simulate(schedule: Schedule, costs: Costs) -> Timeline:
    """Simulate ``schedule`` with ``costs``.

    Raises:
        ScheduleError: if the schedule breaks a structural rule of ``ir.verify``
            (including deadlock) or ``costs`` does not match its shape.
    """
    from ir.verify import structural_violations

    check_costs_shape(schedule, costs)
    with paused_gc():
        ix = ProgramIndex(schedule)
        violations = structural_violations(schedule, ix)
        if violations:
            raise ScheduleError(violations)
        return run_timeline(schedule, costs, ix)


def check_costs_shape(schedule: Schedule, costs: Costs) -> None:
    problems = []
    if costs.num_stages != schedule.num_stages:
        problems.append(f"costs cover {costs.num_stages} stages but the schedule has {schedule.num_stages}")
    if costs.k != schedule.k:
        problems.append(f"costs have {costs.k} slice(s) per stage but the schedule has k={schedule.k}")
    if costs.static and len(costs.static) != schedule.p:
        problems.append(f"costs give static bytes for {len(costs.static)} ranks but the schedule has {schedule.p}")
    if problems:
        raise ValueError("costs do not fit the schedule: " + "; ".join(problems))


def run_timeline(schedule: Schedule, costs: Costs, ix: ProgramIndex) -> Timeline:
    """The timing pass proper; ``schedule`` must already be structurally valid."""
    p = schedule.p
    deps = {a: ix.deps(a) for _, _, a in schedule.actions()}
    end: dict[Action, float] = {}
    spans: list[list[Span]] = [[] for _ in range(p)]
    head = [0] * p
    issued = [0.0] * p  # start of the last action issued on the rank
    free = [{Stream.COMPUTE: 0.0, Stream.COPY: 0.0, Stream.COMM: 0.0} for _ in range(p)]
    remaining = sum(len(prog) for prog in schedule.ranks)
    while remaining:
        progressed = False
        for r, prog in enumerate(schedule.ranks):
            while head[r] < len(prog):
                action = prog[head[r]]
                ready = ready_time(deps[action], end, costs)
                if ready is None:
                    break
                stream = action.op.stream
                took = costs.duration(action)
                # a post that takes time is the host thread's: it holds the compute stream, as do
                # copies when the costs give them no stream of their own
                host = (stream is Stream.COMM and took > 0) or (stream is Stream.COPY and not costs.copy_stream)
                runs_on = Stream.COMPUTE if host else stream
                start = max(ready, issued[r], free[r][runs_on])
                finish = start + took
                end[action] = finish
                issued[r] = start
                if runs_on is not Stream.COMM:
                    free[r][runs_on] = finish
                spans[r].append(Span(r, action, start, finish, stream))
                head[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # verify rules this out; kept so a bug cannot hang
            stuck = [Violation("deadlock", r, schedule.ranks[r][head[r]], "simulation cannot start it")
                     for r in range(p) if head[r] < len(schedule.ranks[r])]
            raise ScheduleError(stuck)
    flat = tuple(span for rank_spans in spans for span in rank_spans)
    return _timeline(schedule, costs, ix, flat)


def _timeline(schedule: Schedule, costs: Costs, ix: ProgramIndex, spans: tuple[Span, ...]) -> Timeline:
    p = schedule.p
    busy = [0.0] * p
    copy_busy = [0.0] * p
    events: list[list[tuple[float, int, float, Action]]] = [[] for _ in range(p)]
    for span in spans:
        length = span.end - span.start
        if span.stream is Stream.COMPUTE:
            busy[span.rank] += length
        elif span.stream is Stream.COPY:
            copy_busy[span.rank] += length
        for at_end, delta in memory_effects(span.action, ix, costs):
            # frees (order 0) before allocations (order 1) at the same instant
            events[span.rank].append((span.end if at_end else span.start, 0 if delta < 0 else 1, delta, span.action))
    memory, peak, peak_action = [], [], []
    for r in range(p):
        level = costs.static_of(r)
        curve = [(0.0, level)]
        top, top_action = level, None
        for t, _, delta, action in sorted(events[r], key=lambda e: (e[0], e[1])):
            level += delta
            curve.append((t, level))
            if level > top:
                top, top_action = level, action
        memory.append(one_point_per_instant(curve))
        peak.append(top)
        peak_action.append(top_action)
    makespan = max((s.end for s in spans), default=0.0)
    return Timeline(spans, makespan, tuple(busy), tuple(copy_busy), tuple(memory), tuple(peak), tuple(peak_action))


def one_point_per_instant(curve: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Keep the last level at each instant (frees sort first, so it is also the highest there),
    then drop points that leave the level unchanged; the first point stays at time 0."""
    merged: list[tuple[float, float]] = []
    for t, level in curve:
        if merged and merged[-1][0] == t:
            merged[-1] = (t, level)
        else:
            merged.append((t, level))
    out = merged[:1]
    out += [(t, level) for (t, level), (_, before) in zip(merged[1:], merged, strict=False) if level != before]
    return tuple(out)


def program_order_peak(schedule: Schedule, costs: Costs) -> float | None:
    """The highest memory level of any rank from program order alone, in one pass with no timing:
    exact for a schedule with no recompute, offload or reload whose actions all take time (one
    compute stream runs them in order, each allocating at its start and freeing at its end, the
    order `simulate`'s events sort into); None for any other schedule."""
    units: dict[tuple[int, int], object] = {}
    top = -math.inf
    for r, prog in enumerate(schedule.ranks):
        level = costs.static_of(r)
        top = max(top, level)
        for a in prog:
            if a.op not in _IN_ORDER or costs.duration(a) <= 0:
                return None
            key = (a.stage, a.slice)
            u = units.get(key) or units.setdefault(key, costs.unit(*key))
            for _, delta in unit_effects(a.op, u, False):
                level += delta
            top = max(top, level)
    return top


_IN_ORDER = frozenset((Op.F, Op.B, Op.BW, Op.W))

