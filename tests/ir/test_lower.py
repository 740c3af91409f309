"""ir.lower's placement of SENDs and RECVs: per-peer message order that both ranks agree on
(what NCCL's order matching needs), verified programs, every RECV no later than the
time-ordered merge that lowered before (a reference copy of it lives here) and as early as
the deadlock rule allows (no RECV can move one compute action earlier), SENDs where they were,
compute times in ir.simulate unchanged, exact JSON round trips, and ``early_recvs=False`` giving
the previous placement; over every library family,
synthesized (construct) schedules and random valid programs."""

import heapq
import random

import pytest
from hypothesis import given, settings

from ir import Costs, Op, Placement, Schedule, UnitCost, find_violations, lower, simulate, verify
from ir.deps import ProgramIndex, messages
from ir.jsonio import dumps, loads
from synth.baselines import BASELINES, build
from synth.construct import construct
from tests.ir.test_properties import problems, random_topological_schedule

RECVS = (Op.RECV_F, Op.RECV_B)
SIZES = [(2, 4), (3, 6), (4, 8)]


def _library(sizes=SIZES):
    for name in BASELINES:
        for p, m in sizes:
            try:
                yield pytest.param(build(name, p, m), id=f"{name}-p{p}-m{m}")
            except ValueError:
                continue  # the family does not take this p, m (e.g. seq1f1b-i needs k <= p)


def _synthesized():
    """synth.construct's schedules for three placements under a loose and two tight caps (which
    bring offload and recompute), and with two sequence slices."""
    cases = []
    for kind, placement in [("standard", Placement.standard(3)), ("interleaved", Placement.interleaved(2, 2)),
                            ("v", Placement.v_shape(3))]:
        units = [[UnitCost(f=1 + s % 2, b=2, w=1 + (s % 3 == 0), act=4, wact=1, inp=1, comm=0.3)]
                 for s in range(placement.num_stages)]
        sliced = Costs([[UnitCost(f=1, b=1, w=1, act=2, comm=0.2)] * 2 for _ in range(placement.num_stages)])
        runs = [(Costs(units), cap, 6) for cap in (None, 10, 7)] + [(sliced, None, 4)]
        for costs, cap, m in runs:
            for made in construct(costs, placement, m, cap, recompute=True, offload=True)[:2]:
                cases.append(pytest.param(made.schedule, costs, id=f"{kind}-cap{cap}-k{costs.k}-{made.name}"))
    return cases


def time_ordered_lowering(schedule: Schedule, costs: Costs) -> Schedule:
    """The lowering ir.lower did before receives moved early (reference): the compute actions and
    messages merged by simulated time, a message at its producer's end ahead of compute starting
    then, each rank's program that order restricted to it."""
    ix = ProgramIndex(schedule)
    timeline = simulate(schedule, costs)
    start = {s.action: s.start for s in timeline.spans}
    end = {s.action: s.end for s in timeline.spans}
    succ, indegree, key = {}, {}, {}

    def edge(a, b):
        succ.setdefault(a, []).append(b)
        indegree[b] = indegree.get(b, 0) + 1

    for rank, pos, action in schedule.actions():
        key[("a", rank, pos)] = (start[action], 1, rank, pos)
        indegree.setdefault(("a", rank, pos), 0)
        if pos:
            edge(("a", rank, pos - 1), ("a", rank, pos))
    msgs = messages(ix)
    for n, msg in enumerate(msgs):
        key[("m", n)] = (end[msg.producer], 0, ix.rank_of(msg.send), n)
        indegree.setdefault(("m", n), 0)
        edge(("a", *ix.where[msg.producer]), ("m", n))
        for consumer in msg.consumers:
            edge(("m", n), ("a", *ix.where[consumer]))
    programs = [[] for _ in range(schedule.p)]
    ready = [(key[v], v) for v, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    while ready:
        _, v = heapq.heappop(ready)
        if v[0] == "a":
            programs[v[1]].append(schedule.ranks[v[1]][v[2]])
        else:
            programs[ix.rank_of(msgs[v[1]].send)].append(msgs[v[1]].send)
            programs[ix.rank_of(msgs[v[1]].recv)].append(msgs[v[1]].recv)
        for w in succ.get(v, ()):
            indegree[w] -= 1
            if indegree[w] == 0:
                heapq.heappush(ready, (key[w], w))
    return schedule.with_programs(programs, lowered=True)


def gaps(lowered: Schedule) -> dict:
    """Comm action -> how many compute actions of its rank come before it."""
    out = {}
    for prog in lowered.ranks:
        computes = 0
        for a in prog:
            if a.op.is_comm:
                out[a] = computes
            else:
                computes += 1
    return out


def peer_orders(lowered: Schedule) -> dict[tuple[int, int], list[int]]:
    """(rank, peer) -> the messages between them, in the rank's program order."""
    ix = ProgramIndex(lowered)
    number = {}
    for n, msg in enumerate(messages(ix)):
        number[msg.send] = number[msg.recv] = n
    out: dict[tuple[int, int], list[int]] = {}
    for r, prog in enumerate(lowered.ranks):
        for a in prog:
            if a.op.is_comm:
                peer = lowered.placement.rank_of(a.stage + (1 if a.op in (Op.SEND_F, Op.RECV_B) else -1))
                out.setdefault((r, peer), []).append(number[a])
    return out


def check_lowering(schedule: Schedule, costs: Costs, *, fixpoint: bool = True) -> Schedule:
    lowered = lower(schedule, costs)
    verify(lowered)
    orders = peer_orders(lowered)
    for (r, q), seq in orders.items():
        assert seq == orders[(q, r)], f"ranks {r} and {q} order their messages differently"
    before, now = gaps(time_ordered_lowering(schedule, costs)), gaps(lowered)
    assert now.keys() == before.keys()
    for a, g in now.items():
        if a.op in RECVS:
            assert g <= before[a], f"{a} posted after {g} compute actions, before after {before[a]}"
        else:
            assert g == before[a], f"{a} moved from {before[a]} to {g}"
    if fixpoint:
        assert hoistable(lowered) == []
    return lowered


def hoistable(lowered: Schedule) -> list[str]:
    """The RECVs that could move before the compute action ahead of them and still verify."""
    out = []
    for r, prog in enumerate(lowered.ranks):
        for i, a in enumerate(prog):
            j = max((k for k in range(i) if not prog[k].op.is_comm), default=None)
            if a.op not in RECVS or j is None:
                continue
            moved = list(prog[:i]) + list(prog[i + 1:])
            moved.insert(j, a)
            if not find_violations(lowered.with_programs([*lowered.ranks[:r], moved, *lowered.ranks[r + 1:]])):
                out.append(str(a))
    return out


@pytest.mark.parametrize("schedule", list(_library()))
def test_library_families(schedule):
    costs = Costs.uniform(schedule.num_stages, schedule.k, f=1, b=2, w=1, comm=0.2)
    check_lowering(schedule, costs, fixpoint=sum(map(len, schedule.ranks)) <= 200)
    timed = lower(schedule, costs, early_recvs=False)  # the time-ordered merge's places, as before
    assert timed == time_ordered_lowering(schedule, costs)
    verify(timed)


@pytest.mark.parametrize(("schedule", "costs"), _synthesized())
def test_synthesized_schedules(schedule, costs):
    check_lowering(schedule, costs)


def test_synthesized_cases_cover_recompute_and_offload():
    used = set().union(*(case.values[0].ops_used() for case in _synthesized()))
    assert {Op.R, Op.OFFLOAD, Op.RELOAD, Op.B, Op.W} <= used


def test_1f1b_known_programs():
    # 1F1B, p=2, m=4 (unit costs): rank 1 posts the first two activations' receives at the start
    # (the old lowering: 1RECV_F1 after 1F0); rank 0 posts gradient 1's receive with gradient 0's,
    # before 0BW0, as 1BW1 needs only 0F1 of rank 0 (old: after 0F2). Rank 1 receiving activation
    # 2 before 1BW1 and rank 0 gradient 1 before 0F2 exclude each other (each would wait for the
    # other's SEND); both land at t=7, and the gradient, whose producer starts first, keeps its place.
    lowered = lower(build("1f1b", 2, 4))
    assert [" ".join(map(str, prog)) for prog in lowered.ranks] == [
        "0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0RECV_B1 0BW0 0F2 0SEND_F2 0RECV_B2 0BW1 0F3 0SEND_F3 0RECV_B3 "
        "0BW2 0BW3",
        "1RECV_F0 1RECV_F1 1F0 1BW0 1SEND_B0 1F1 1BW1 1SEND_B1 1RECV_F2 1F2 1BW2 1SEND_B2 1RECV_F3 1F3 1BW3 "
        "1SEND_B3",
    ]
    assert lowered.meta["lowered"] is True


def test_gpipe_receives_everything_up_front():
    # GPipe: no forward waits for anything on the receiving rank, so every activation's RECV is
    # posted at the start; every gradient's RECV right after the last forward.
    p, m = 3, 4
    lowered = lower(build("gpipe", p, m))
    for r in range(1, p):
        assert {a.op for a in lowered.ranks[r][:m]} == {Op.RECV_F}
    for r in range(p - 1):
        prog = lowered.ranks[r]
        last_forward = max(i for i, a in enumerate(prog) if a.op is Op.F)
        assert all(a.op is Op.RECV_B for a in prog[last_forward + 2:last_forward + 2 + m])


@pytest.mark.parametrize("schedule", list(_library([(2, 3), (4, 8)])))
def test_simulated_compute_times_do_not_change(schedule):
    # ir.simulate: a RECV is a zero-time post; the consumer waits for the later of the post and
    # the SEND plus latency. Posts only move earlier, so compute spans stay those of the
    # compute-only schedule and each RECV's post is no later than before.
    costs = Costs.uniform(schedule.num_stages, schedule.k, f=1, b=2, w=1.5, comm=0.4)
    plain = {s.action: (s.start, s.end) for s in simulate(schedule, costs).spans}
    timeline = simulate(lower(schedule, costs), costs)
    assert {s.action: (s.start, s.end) for s in timeline.spans if not s.action.op.is_comm} == plain
    old = simulate(time_ordered_lowering(schedule, costs), costs)
    assert timeline.makespan == old.makespan
    for span in timeline.spans:
        if span.action.op in RECVS:
            assert span.start <= old.span(span.action).start


@pytest.mark.parametrize("schedule", list(_library([(3, 5)])))
def test_json_round_trip(schedule):
    lowered = lower(schedule)
    back = loads(dumps(lowered))
    assert back == lowered and back.is_lowered
    assert lower(back) is back  # lowered once, kept as it is


@settings(max_examples=40, deadline=None)
@given(problems())
def test_random_valid_programs(problem):
    placement, m, k, actions, costs, rng = problem
    schedule = random_topological_schedule(placement, m, k, actions, rng)
    check_lowering(schedule, costs)


def test_uniform_costs_by_default():
    schedule = build("zb-v", 2, 4)
    assert lower(schedule) == lower(schedule, Costs.uniform(schedule.num_stages))
    rng = random.Random(7)
    units = [[UnitCost(f=rng.uniform(0.5, 2), b=rng.uniform(0.5, 2), w=rng.uniform(0.5, 2), comm=0.1)]
             for _ in range(schedule.num_stages)]
    check_lowering(schedule, Costs(units))  # any costs: same guarantees
