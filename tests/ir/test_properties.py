"""Property tests: any random topological order of a valid problem's passes, split per
rank, is a valid program; it verifies, simulates without deadlock, keeps busy time equal
to the sum of durations, and lowers to a schedule with the same timing."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ir import Action, Costs, Op, Placement, Schedule, UnitCost, lower, simulate, verify
from ir.deps import ProgramIndex, dependencies

PLACEMENTS = {
    "standard": lambda p: Placement.standard(p),
    "interleaved": lambda p: Placement.interleaved(p, 2),
    "v": lambda p: Placement.v_shape(p),
    "waves": lambda p: Placement.waves(p, 2),
}


@st.composite
def problems(draw):
    p = draw(st.integers(1, 4))
    placement = PLACEMENTS[draw(st.sampled_from(sorted(PLACEMENTS)))](p)
    m, k = draw(st.integers(1, 4)), draw(st.integers(1, 2))
    units = []
    actions = []
    for s in range(placement.num_stages):
        row = []
        for j in range(k):
            act = draw(st.integers(1, 8))
            row.append(
                UnitCost(
                    f=draw(st.integers(0, 4)),
                    b=draw(st.integers(0, 4)),
                    w=draw(st.integers(0, 4)),
                    act=act,
                    wact=draw(st.integers(0, act)),
                    inp=draw(st.integers(0, min(2, act))),  # the kept input is part of act
                    comm=draw(st.integers(0, 2)),
                )
            )
            for i in range(m):
                split = draw(st.booleans())
                actions += [Action(op, s, i, j) for op in ((Op.F, Op.B, Op.W) if split else (Op.F, Op.BW))]
                variant = draw(st.sampled_from(["keep", "recompute", "offload"]))
                if variant == "recompute":
                    actions.append(Action(Op.R, s, i, j))
                elif variant == "offload":
                    actions += [Action(Op.OFFLOAD, s, i, j), Action(Op.RELOAD, s, i, j)]
        units.append(row)
    costs = Costs(units, static=tuple(draw(st.integers(0, 10)) for _ in range(p)), copy_bandwidth=2)
    return placement, m, k, actions, costs, draw(st.randoms(use_true_random=False))


def random_topological_schedule(placement, m, k, actions, rng: random.Random) -> Schedule:
    """Kahn's algorithm over the dependency graph, picking a random ready action each step."""
    bag = [[a for a in actions if placement.rank_of(a.stage) == r] for r in range(placement.p)]
    ix = ProgramIndex(Schedule(placement, m, bag, k))
    preds = {a: {e.pred for e in dependencies(a, ix)} for a in actions}
    done, programs = set(), [[] for _ in range(placement.p)]
    ready = sorted((a for a in actions if not preds[a]), key=str)
    while ready:
        a = ready.pop(rng.randrange(len(ready)))
        done.add(a)
        programs[placement.rank_of(a.stage)].append(a)
        ready += sorted((b for b in actions if b not in done and b not in ready and preds[b] <= done), key=str)
    assert len(done) == len(actions)
    return Schedule(placement, m, programs, k)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_random_valid_programs(problem):
    placement, m, k, actions, costs, rng = problem
    schedule = random_topological_schedule(placement, m, k, actions, rng)
    verify(schedule)
    timeline = simulate(schedule, costs)
    for r, prog in enumerate(schedule.ranks):
        compute = sum(costs.duration(a) for a in prog if a.op.stream == "compute")
        assert timeline.busy[r] == compute
        assert timeline.copy_busy[r] == sum(costs.duration(a) for a in prog if a.op.stream == "copy")
        # every byte allocated is freed by the end: the curve returns to the static level
        assert timeline.memory[r][-1][1] == costs.static_of(r)
    assert timeline.makespan >= max(timeline.busy)
    for span in timeline.spans:
        assert span.end - span.start == costs.duration(span.action)
        assert span.start >= 0

    lowered = lower(schedule, costs)
    verify(lowered)
    again = simulate(lowered, costs)
    assert again.makespan == timeline.makespan
    assert {s.action: (s.start, s.end) for s in again.spans if not s.action.op.is_comm} == {
        s.action: (s.start, s.end) for s in timeline.spans
    }
