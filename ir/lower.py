"""`lower`: insert SEND/RECV actions so each rank's program says when it communicates.

Every boundary tensor that crosses ranks becomes one message: a SEND on the
producer's rank and a RECV on the consumer's (same-rank stage neighbours need
none). The messages and the compute programs are merged into one global order: a
topological order of the graph whose edges are each rank's program order,
producer -> message and message -> consumer, taking the ready node with the
earliest simulated time first (a message at its producer's end, ahead of compute
starting at the same instant). Each rank's lowered program is that global order
restricted to the rank, so running the global order step by step is an execution
in which every SEND meets its RECV: no deadlock even with blocking sends and
receives. SENDs land right after their producer and RECVs are posted as soon as
the data exists, so the lowered schedule simulates to the same times as the
compute-only one.
"""

from __future__ import annotations

import heapq

from ir.costs import Costs
from ir.deps import ProgramIndex, messages
from ir.errors import ScheduleError
from ir.schedule import Schedule
from ir.verify import structural_violations

__all__ = ["lower"]


def lower(schedule: Schedule, costs: Costs | None = None) -> Schedule:
    """The schedule with SEND_F/RECV_F/SEND_B/RECV_B inserted; already lowered ones come back as they are.

    Args:
        schedule: a compute-only schedule; it must pass ``ir.verify``'s structural rules.
        costs: times used to order sends and receives (unit costs if omitted).

    Raises:
        ScheduleError: if the schedule is invalid (including deadlock).
    """
    from ir.simulate import run_timeline

    ix = ProgramIndex(schedule)
    violations = structural_violations(schedule, ix)
    if violations:
        raise ScheduleError(violations)
    if schedule.is_lowered:
        return schedule
    timeline = run_timeline(schedule, costs or Costs.uniform(schedule.num_stages, schedule.k), ix)
    start = {span.action: span.start for span in timeline.spans}
    finish = {span.action: span.end for span in timeline.spans}
    msgs = messages(ix)

    # Nodes: ("a", rank, pos) for program actions, ("m", n) for message n.
    succ: dict[tuple, list[tuple]] = {}
    indegree: dict[tuple, int] = {}
    key: dict[tuple, tuple] = {}

    def add_edge(a: tuple, b: tuple) -> None:
        succ.setdefault(a, []).append(b)
        indegree[b] = indegree.get(b, 0) + 1

    for rank, pos, action in schedule.actions():
        node = ("a", rank, pos)
        key[node] = (start[action], 1, rank, pos)
        indegree.setdefault(node, 0)
        if pos > 0:
            add_edge(("a", rank, pos - 1), node)
    for n, msg in enumerate(msgs):
        node = ("m", n)
        key[node] = (finish[msg.producer], 0, ix.rank_of(msg.send), n)
        indegree.setdefault(node, 0)
        add_edge(("a", *ix.where[msg.producer]), node)
        for consumer in msg.consumers:
            add_edge(node, ("a", *ix.where[consumer]))

    programs: list[list] = [[] for _ in range(schedule.p)]
    ready = [(key[node], node) for node, deg in indegree.items() if deg == 0]
    heapq.heapify(ready)
    while ready:
        _, node = heapq.heappop(ready)
        if node[0] == "a":
            programs[node[1]].append(schedule.ranks[node[1]][node[2]])
        else:
            msg = msgs[node[1]]
            programs[ix.rank_of(msg.send)].append(msg.send)
            programs[ix.rank_of(msg.recv)].append(msg.recv)
        for nxt in succ.get(node, ()):
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                heapq.heappush(ready, (key[nxt], nxt))
    return schedule.with_programs(programs, lowered=True)
