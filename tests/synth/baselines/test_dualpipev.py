"""DualPipeV (synth.baselines.dualpipev) against deepseek-ai/DualPipe's dualpipev.py and its README.

Unit model: a full 1F1B stage has F = b = w = 1 and act = 1, so each of the 2p V-shape stages
(chunks) gets f = b = w = 0.5 and act = 0.5; comm = 0, wact = 0.
"""

import pytest

import ir
from ir.deps import ProgramIndex, dependencies
from synth.baselines.dualpipev import BASELINE, dualpipev, phase_lengths

T = 0.5  # per-chunk time of each of F, b, w
CASES = [(p, m) for p in (2, 4, 8) for m in (2 * p, 3 * p, 4 * p)]


def _costs(p: int) -> ir.Costs:
    return ir.Costs.uniform(2 * p, f=T, b=T, w=T, act=0.5)


@pytest.mark.parametrize("p, m", CASES + [(1, 2), (3, 7), (4, 9)])
def test_verifies_for_every_p_and_m(p, m):
    schedule = dualpipev(p, m)
    ir.verify(schedule)
    assert schedule.placement == ir.Placement.v_shape(p)


@pytest.mark.parametrize("p, m", [(2, 3), (4, 7), (8, 8), (8, 15)])
def test_fewer_than_2p_microbatches_is_refused(p, m):
    with pytest.raises(ValueError, match="at least 2p microbatches"):
        dualpipev(p, m)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="p must be a positive integer"):
        dualpipev(0, 4)
    with pytest.raises(ValueError, match="rank must lie"):
        phase_lengths(4, 8, 4)


def test_phase_lengths_for_p4_m8():
    # dualpipev.py step(), num_ranks = 4, num_chunks = 8, rank r:
    # step_1 = (4-r-1)*2, step_2 = r+1, step_3 = 4-r-1, step_4 = 8-4*2+r+1 = r+1,
    # step_5 = 4-r-1, step_6 = r+1, step_7 = 4-r-1, step_8 = r+1.
    expected = {
        0: (6, 1, 3, 1, 3, 1, 3, 1),
        1: (4, 2, 2, 2, 2, 2, 2, 2),
        2: (2, 3, 1, 3, 1, 3, 1, 3),
        3: (0, 4, 0, 4, 0, 4, 0, 4),
    }
    for r, lengths in expected.items():
        assert phase_lengths(4, 8, r).as_tuple() == lengths


# Written out by hand from step() for p=4, m=8 (rank r holds stages r and 7-r; "|" separates phases).
# Step 6 switches to split backward at i = step_6 // 2: odd ranks before that iteration's B1,
# even ranks between its B1 and B0. Every W pops the oldest split backward (FIFO).
# Rank 0 (step_6 = 1, switch at i=0 after B1): 7BW7 then 0B4; W queue 0W4.. drained by steps 7-8.
# Rank 1 (step_6 = 2, switch at i=1 before B1): 6BW6 1BW4 | 6B7 1B5; step 7 pops 6W7 then 1W5.
# Rank 2 (step_6 = 3, switch at i=1 after B1): 5BW5 2BW4 | 5BW6 2B5 | 5B7 2B6; pops 2W5, 5W7, 2W6, 2W7.
# Rank 3 (step_6 = 4, switch at i=2 before B1): 4B6 3B6 4B7 3B7, then step 8 pops them in that order.
P4_M8 = [
    "0F0 0F1 0F2 0F3 0F4 0F5 | 0F6 7F0 | 7B0 7W0 7F1 7B1 7W1 7F2 7B2 7W2 7F3 | 0F7 7BW3 7F4 0BW0"
    " | 7BW4 7F5 0BW1 7BW5 7F6 0BW2 7BW6 7F7 0BW3 | 7BW7 0B4 | 0W4 0B5 0W5 0B6 0W6 0B7 | 0W7",
    "1F0 1F1 1F2 1F3 | 1F4 6F0 1F5 6F1 | 6B0 6W0 6F2 6B1 6W1 6F3 | 1F6 6BW2 6F4 1BW0 1F7 6BW3 6F5 1BW1"
    " | 6BW4 6F6 1BW2 6BW5 6F7 1BW3 | 6BW6 1BW4 6B7 1B5 | 6W7 1B6 1W5 1B7 | 1W6 1W7",
    "2F0 2F1 | 2F2 5F0 2F3 5F1 2F4 5F2 | 5B0 5W0 5F3 | 2F5 5BW1 5F4 2BW0 2F6 5BW2 5F5 2BW1 2F7 5BW3 5F6 2BW2"
    " | 5BW4 5F7 2BW3 | 5BW5 2BW4 5BW6 2B5 5B7 2B6 | 2W5 2B7 | 5W7 2W6 2W7",
    "| 3F0 4F0 3F1 4F1 3F2 4F2 3F3 4F3 | | 3F4 4BW0 4F4 3BW0 3F5 4BW1 4F5 3BW1 3F6 4BW2 4F6 3BW2"
    " 3F7 4BW3 4F7 3BW3 | | 4BW4 3BW4 4BW5 3BW5 4B6 3B6 4B7 3B7 | | 4W6 3W6 4W7 3W7",
]


def test_programs_for_p4_m8_match_the_hand_written_orders():
    schedule = dualpipev(4, 8)
    for r, text in enumerate(P4_M8):
        assert [str(a) for a in schedule.ranks[r]] == text.replace("|", " ").split()


def test_overlapped_pairs_are_the_code_forward_backward_chunks():
    # p=4, m=8: rank r has 2*step_4 + step_5 pairs, minus one on the last rank (its first F0, B1 run apart).
    pairs = dualpipev(4, 8).meta["overlapped_pairs"]
    assert len(pairs) == sum(2 * (r + 1) + (3 - r) for r in range(4)) - 1
    assert ["0F7", "7BW3"] in pairs and ["3F4", "4BW0"] not in pairs and ["4F4", "3BW0"] in pairs


@pytest.mark.parametrize("p, m", CASES)
def test_bubble_with_split_pairs(p, m):
    # ir.simulate runs a pair's F ahead of its BW. With f = b = w = T per chunk every rank does
    # 2m chunks of F + b + w = 6Tm; the last rank waits (p-1) forwards (p-1)T for its first input
    # and is never idle again, so makespan = 6Tm + (p-1)T and every rank idles (p-1)T = (p-1)/2.
    timeline = ir.simulate(dualpipev(p, m), _costs(p))
    assert timeline.makespan == pytest.approx(6 * T * m + (p - 1) * T)
    assert timeline.busy == pytest.approx([6 * T * m] * p)
    assert timeline.bubble_ratio == pytest.approx((p - 1) / (6 * m + p - 1))


def _simulate_with_pairs(schedule, costs):
    """Makespan when each overlapped pair is one task that starts once both its inputs are in,
    as dualpipev.py's _forward_backward_chunk waits for both receives (no overlap speed-up)."""
    pair_of = {}
    for f, b in schedule.meta["overlapped_pairs"]:
        pair_of[ir.parse_action(f)] = (ir.parse_action(f), ir.parse_action(b))
    tasks = []
    for prog in schedule.ranks:
        rank_tasks, skip = [], set()
        for a in prog:
            if a not in skip:
                rank_tasks.append(pair_of.get(a, (a,)))
                skip.update(rank_tasks[-1])
        tasks.append(rank_tasks)
    ix = ProgramIndex(schedule)
    end, pos, free = {}, [0] * schedule.p, [0.0] * schedule.p
    while any(pos[r] < len(tasks[r]) for r in range(schedule.p)):
        moved = False
        for r in range(schedule.p):
            while pos[r] < len(tasks[r]):
                task = tasks[r][pos[r]]
                preds = [e.pred for a in task for e in dependencies(a, ix) if e.pred not in task]
                if any(q not in end for q in preds):
                    break
                free[r] = max([free[r]] + [end[q] for q in preds]) + sum(costs.duration(a) for a in task)
                end.update({a: free[r] for a in task})
                pos[r] += 1
                moved = True
        assert moved, "deadlock"
    return max(free)


@pytest.mark.parametrize("p, m", CASES)
def test_bubble_with_pairs_as_tasks_matches_the_readme(p, m):
    # DualPipe README, "DualPipeV" row (PP = 2p stages): bubble (PP/2 - 1)(F&B + B - 3W) with B a full
    # backward (b + w = 2T) and, without overlap, F&B = F + B = 3T: (p-1)(3T + 2T - 3T) = 2T(p-1) = p - 1.
    readme_bubble = (2 * p / 2 - 1) * ((T + 2 * T) + 2 * T - 3 * T)
    assert _simulate_with_pairs(dualpipev(p, m), _costs(p)) == pytest.approx(6 * T * m + readme_bubble)


@pytest.mark.parametrize("p, m", CASES)
def test_peak_activations_match_the_readme(p, m):
    # DualPipe README, "Activation Per Device" for DualPipeV: PP + 1 = 2p + 1 chunks of act 0.5,
    # i.e. p + 1/2 full stages; by hand on rank 0: steps 1-2 hold 2(p-1) + 2 = 2p chunks, step 3's
    # B, W, F keep 2p, and step 4's first F0 makes 2p + 1 before its pair's BW frees one.
    timeline = ir.simulate(dualpipev(p, m), _costs(p))
    assert timeline.peak[0] == pytest.approx((2 * p + 1) * 0.5)
    assert timeline.peak == pytest.approx([p + 0.5] * p)


def test_registry_entry():
    assert BASELINE.name == "dualpipev"
    assert BASELINE(4, 8).meta["baseline"] == "dualpipev"
    with pytest.raises(ValueError, match="takes no option"):
        BASELINE(4, 8, v=2)
