"""`lower`: insert SEND/RECV actions so each rank's program says when it communicates.

Every boundary tensor that crosses ranks becomes one message: a SEND on the
producer's rank and a RECV on the consumer's (same-rank stage neighbours need
none). The lowered programs are one global order of the compute actions and the
messages, each rank's program being that order restricted to the rank, with a
message one step taken by both of its ranks at once. Running the global order step
by step is then an execution in which every SEND meets its RECV: no deadlock even
with blocking sends and receives (``ir.verify``'s deadlock rule), and the two ranks
of a pair see their messages in the same order (what NCCL needs: it matches p2p by
order per peer pair, where gloo matches by tag).

SENDs go where the time-ordered merge puts them: a topological order taking the
earliest simulated start first, a message at its producer's end, i.e. right after
the producer (after any copy-stream action overlapping it).

RECVs go as early as the order of messages per peer pair allows. A message from
rank P to rank C can be received no earlier than right after the last compute
action of C that its SEND depends on, through program order, messages, and the
receives already placed (a RECV waits for its SEND: posted before such an action,
C would block in it for a SEND that waits, through P, for C itself). In particular
the RECV stays after every comm with P that P orders before the SEND. Receives are
placed one by one, the one whose data lands first (simulated) first, each at that
earliest place given the ones before it. Where two earliest places exclude each
other (C receiving early from P and P early from C reverses the pair's order on
one side; the same can go round three ranks), the receive whose data lands first
keeps its place. The result is a fixpoint: no RECV can move one compute action
earlier without a deadlock. No RECV comes later than the time-ordered merge puts
it (at the simulated moment its data exists), which is where they start from.

Only receives move (earlier, on their own rank), so the lowered schedule simulates
to the same compute times as the compute-only one: in ``ir.simulate`` a RECV is a
zero-time post and its consumer waits for the later of the post and the SEND plus
latency, so a receive posted by the time the data lands already cost nothing there.
On a real backend a late post does cost (gloo moves the data only once the receive
is posted); that is what posting early buys. A backend that runs a rank's p2p batches
in order on one stream (NCCL with batched p2p) pays for early posts instead: every
later send of the rank waits until the early receive's data lands. For it,
``early_recvs=False`` keeps the time-ordered merge's places.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

from ir.costs import Costs
from ir.deps import Message, ProgramIndex, messages
from ir.errors import ScheduleError
from ir.schedule import Schedule
from ir.verify import structural_violations

__all__ = ["lower"]


def lower(schedule: Schedule, costs: Costs | None = None, *, early_recvs: bool = True) -> Schedule:
    """The schedule with SEND_F/RECV_F/SEND_B/RECV_B inserted; already lowered ones come back as they are.

    Args:
        schedule: a compute-only schedule; it must pass ``ir.verify``'s structural rules.
        costs: times for the time-ordered merge (where SENDs go and receives start from) and for
            which receive is placed first (unit costs if omitted).
        early_recvs: post each RECV as early as the per-peer order allows (what a backend that
            moves each message on its own wants: gloo); False keeps the time-ordered merge's
            places, each RECV at the simulated moment its data exists (for a backend that runs all
            of a rank's p2p batches in order on one stream, as NCCL does with batched p2p: there
            a receive posted early holds up every later send of the rank until its data lands).

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
    costs = costs or Costs.uniform(schedule.num_stages, schedule.k)
    timeline = run_timeline(schedule, costs, ix)
    start = {span.action: span.start for span in timeline.spans}
    finish = {span.action: span.end for span in timeline.spans}
    dag = _Dag.build(schedule, ix, messages(ix))
    merged = _timed_merge(dag, [start[a] for a in dag.actions], [finish[m.producer] for m in dag.msgs])
    if not early_recvs:
        return schedule.with_programs(_programs(dag, merged.events), lowered=True)
    timed, sent, latest = merged.order, merged.sent, merged.gaps
    dag = dag.sending_after([dag.first[dag.rank[u]] + g - 1 for u, g in zip(dag.producer, sent, strict=True)])
    hoist = _Hoist(dag, timed, latest)
    earliest = _causal_gaps(dag, timed)
    lands = [finish[m.producer] + costs.unit(min(m.producer.stage, m.recv.stage), m.recv.slice).comm
             for m in dag.msgs]
    for n in sorted(range(len(dag.msgs)), key=lambda n: (lands[n], hoist.ord[dag.producer[n]])):
        hoist.hoist(n, earliest[n])
    return schedule.with_programs(_programs(dag, hoist.events()), lowered=True)


@dataclass(frozen=True, slots=True)
class _Dag:
    """The compute actions as nodes ``0..N-1`` (rank-major, program order) and the messages between them.

    Attributes:
        actions, rank, pos: node -> its action, rank and position in the rank's program.
        first: rank -> its first node (``first[p]`` = N).
        msgs: the messages; ``producer[n]``: the node its SEND follows (the producer, or a copy-stream
            action that overlaps it); ``consumers[n]``: the nodes that read it; ``dest[n]``: the RECV's rank.
        sends: node -> the messages whose SEND follows it.
        inbox: node -> the messages it consumes.
    """

    actions: list
    rank: list[int]
    pos: list[int]
    first: list[int]
    msgs: list[Message]
    producer: list[int]
    consumers: list[list[int]]
    dest: list[int]
    sends: list[list[int]]
    inbox: list[list[int]]

    @staticmethod
    def build(schedule: Schedule, ix: ProgramIndex, msgs: list[Message]) -> _Dag:
        actions, rank, pos, first, node = [], [], [], [], {}
        for r, prog in enumerate(schedule.ranks):
            first.append(len(actions))
            for at, action in enumerate(prog):
                node[action] = len(actions)
                actions.append(action)
                rank.append(r)
                pos.append(at)
        first.append(len(actions))
        consumers = [[node[c] for c in m.consumers] for m in msgs]
        inbox: list[list[int]] = [[] for _ in actions]
        for n, vs in enumerate(consumers):
            for v in vs:
                inbox[v].append(n)
        dest = [ix.rank_of(m.recv) for m in msgs]
        dag = _Dag(actions, rank, pos, first, msgs, [], consumers, dest, [], inbox)
        return dag.sending_after([node[m.producer] for m in msgs])

    def sending_after(self, after: list[int]) -> _Dag:
        """The same graph with message n's SEND right after node ``after[n]``."""
        sends: list[list[int]] = [[] for _ in self.actions]
        for n, u in enumerate(after):
            sends[u].append(n)
        return replace(self, producer=after, sends=sends)

    def next_on_rank(self, v: int) -> int | None:
        return v + 1 if v + 1 < self.first[self.rank[v] + 1] else None


@dataclass(frozen=True, slots=True)
class _Merged:
    """A global order of compute nodes and messages.

    Attributes:
        events: ``(0, node)`` or ``(1, message)`` in order.
        order: the compute nodes in that order.
        sent, gaps: per message, how many compute actions of the sending (receiving) rank precede it.
    """

    events: list[tuple[int, int]]
    order: list[int]
    sent: list[int]
    gaps: list[int]


def _timed_merge(dag: _Dag, start: list[float], ready_at: list[float]) -> _Merged:
    """The time-ordered merge (where receives start from): a topological order taking the earliest
    simulated start first, a message at its producer's end (``ready_at``) ahead of compute starting then."""
    indegree = [len(box) for box in dag.inbox]
    for r in range(len(dag.first) - 1):
        for v in range(dag.first[r] + 1, dag.first[r + 1]):
            indegree[v] += 1
    ran = [0] * (len(dag.first) - 1)  # compute actions emitted per rank
    ready = [(start[v], 1, dag.rank[v], v) for v in range(len(dag.actions)) if indegree[v] == 0]
    heapq.heapify(ready)
    events, order, sent, gaps = [], [], [0] * len(dag.msgs), [0] * len(dag.msgs)

    def release(v: int) -> None:
        indegree[v] -= 1
        if indegree[v] == 0:
            heapq.heappush(ready, (start[v], 1, dag.rank[v], v))

    while ready:
        _, kind, _, x = heapq.heappop(ready)
        events.append((1 - kind, x))
        if kind == 0:  # message x
            sent[x], gaps[x] = ran[dag.rank[dag.producer[x]]], ran[dag.dest[x]]
            for v in dag.consumers[x]:
                release(v)
            continue
        order.append(x)
        ran[dag.rank[x]] += 1
        for n in dag.sends[x]:
            heapq.heappush(ready, (ready_at[n], 0, dag.rank[x], n))
        nxt = dag.next_on_rank(x)
        if nxt is not None:
            release(nxt)
    return _Merged(events, order, sent, gaps)


def _causal_gaps(dag: _Dag, order: list[int]) -> list[int]:
    """Per message, the fewest compute actions of the receiving rank its RECV can follow: one past
    the last of them its producer depends on (through program order and messages)."""
    p = len(dag.first) - 1
    last: list[list[int] | None] = [None] * len(dag.actions)  # node -> per rank, its last ancestor's position
    for v in order:
        r = dag.rank[v]
        seen = list(last[v - 1]) if v > dag.first[r] else [-1] * p
        for n in dag.inbox[v]:
            seen = [max(a, b) for a, b in zip(seen, last[dag.producer[n]], strict=True)]
        seen[r] = dag.pos[v]
        last[v] = seen
    return [last[u][dag.dest[n]] + 1 for n, u in enumerate(dag.producer)]


class _Hoist:
    """The compute nodes in a topological order (``ord``) of the graph whose edges are program
    order, producer -> consumer and, per message, producer -> the first compute action of the
    receiving rank after its RECV; kept topological while receive edges move earlier (Pearce and
    Kelly's dynamic topological order: only the nodes between the edge's ends are renumbered).

    Args:
        dag: the graph.
        order: a topological order to start from (the time-ordered merge).
        latest: per message, its RECV's gap there (how many compute actions of the receiving rank
            precede it): where it starts and the latest it may end.
    """

    def __init__(self, dag: _Dag, order: list[int], latest: list[int]) -> None:
        self.dag = dag
        self.ord = [0] * len(dag.actions)
        for at, v in enumerate(order):
            self.ord[v] = at
        self.succ: list[list[int]] = [[] for _ in dag.actions]
        self.pred: list[list[int]] = [[] for _ in dag.actions]
        for r in range(len(dag.first) - 1):
            for v in range(dag.first[r] + 1, dag.first[r + 1]):
                self._edge(v - 1, v)
        for n, u in enumerate(dag.producer):
            for v in dag.consumers[n]:
                self._edge(u, v)
            self._edge(u, dag.first[dag.dest[n]] + latest[n])
        self.gap = list(latest)

    def _edge(self, u: int, v: int) -> None:
        self.succ[u].append(v)
        self.pred[v].append(u)

    def hoist(self, n: int, earliest: int) -> None:
        """Move message n's RECV to right after the last compute action of its rank that its
        producer depends on now (at ``earliest`` or later)."""
        dag, u, c = self.dag, self.dag.producer[n], self.dag.dest[n]
        if self.gap[n] <= earliest:
            return
        lo = self.ord[dag.first[c] + earliest]  # nothing before it in the order is a descendant of it
        ancestors, stack, top = {u}, [u], earliest - 1
        while stack:
            for x in self.pred[stack.pop()]:
                if x not in ancestors and self.ord[x] >= lo:
                    ancestors.add(x)
                    stack.append(x)
                    if dag.rank[x] == c:
                        top = max(top, dag.pos[x])
                        if top + 1 >= self.gap[n]:
                            return  # no earlier place
        self.gap[n] = top + 1
        v = dag.first[c] + top + 1
        self._edge(u, v)
        if self.ord[v] < self.ord[u]:
            self._renumber(u, v, ancestors)

    def _renumber(self, u: int, v: int, ancestors: set[int]) -> None:
        """Restore the order after the edge u -> v: the ancestors of u placed after v, then the
        descendants of v placed before u, in the positions the two sets held."""
        ord_, top = self.ord, self.ord[u]
        back = sorted((x for x in ancestors if ord_[x] > ord_[v]), key=ord_.__getitem__)
        ahead, stack = {v}, [v]
        while stack:
            for x in self.succ[stack.pop()]:
                if x not in ahead and ord_[x] < top:
                    ahead.add(x)
                    stack.append(x)
        moved = back + sorted(ahead, key=ord_.__getitem__)
        for x, at in zip(moved, sorted(ord_[x] for x in moved), strict=True):
            ord_[x] = at

    def events(self) -> list[tuple[int, int]]:
        """The global order: each compute node, then the messages whose SEND follows it."""
        out: list[tuple[int, int]] = []
        for v in sorted(range(len(self.ord)), key=self.ord.__getitem__):
            out.append((0, v))
            out += [(1, n) for n in self.dag.sends[v]]
        return out


def _programs(dag: _Dag, events: list[tuple[int, int]]) -> list[list]:
    """Each rank's program: the global order restricted to it, a message adding its SEND and its RECV."""
    programs: list[list] = [[] for _ in range(len(dag.first) - 1)]
    for kind, x in events:
        if kind == 0:
            programs[dag.rank[x]].append(dag.actions[x])
        else:
            programs[dag.rank[dag.producer[x]]].append(dag.msgs[x].send)
            programs[dag.dest[x]].append(dag.msgs[x].recv)
    return programs
