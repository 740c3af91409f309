"""V-Half and V-Min (arXiv 2405.15362): validity, published peak memory and bubble, reference orders.

Unit costs throughout: every chunk pass (F, B, W of one V-shape stage) takes 1 slot, comm 0,
and one chunk-microbatch keeps act = 1 until its W (wact = act), which is how the paper's
reference code counts memory (``mem_of_stage``: F +1, W -1). A 1F1B stage is two chunks, so a
1F1B stage-microbatch is 2 here and 1F1B's F+B+W is 6 slots.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir import Costs, Op, PlacementKind
from synth.baselines.controllable_memory import V_HALF, V_MIN, v_half, v_min
from synth.baselines.one_f_one_b import one_f_one_b

FAMILIES = {"v-half": v_half, "v-min": v_min}


def unit_costs(p: int) -> Costs:
    return Costs.uniform(2 * p, f=1, b=1, w=1, act=1, wact=1)


def published_peak_chunks(name: str, p: int, m: int) -> int:
    # Authors' table (huggingface.co/spaces/sail/pipeline-parallelism-with-controllable-memory,
    # description1.md), activation memory in 1F1B stage-microbatches: V-Min (p+4)//3, V-Half (p+2)//2.
    # Times 2 for chunks; a batch of m microbatches cannot hold more than its 2m chunks.
    stage_units = (p + 4) // 3 if name == "v-min" else (p + 2) // 2
    return min(2 * m, 2 * stage_units)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
def test_valid_for_small_and_large_batches(name, p):
    for m in sorted({1, max(1, p - 1), p, 2 * p, 4 * p}):
        schedule = FAMILIES[name](p, m)
        ir.verify(schedule)
        assert schedule.placement.kind is PlacementKind.V_SHAPE and schedule.num_stages == 2 * p
        assert schedule.ops_used() == {Op.F, Op.B, Op.W}
        # 2 chunks x (F, B, W) per microbatch on every rank
        assert all(len(prog) == 6 * m for prog in schedule.ranks)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
def test_peak_activation_matches_published_formula(name, p):
    for m in sorted({1, 2, p, p + 2, 2 * p, 4 * p}):
        timeline = ir.simulate(FAMILIES[name](p, m), unit_costs(p))
        assert max(timeline.peak) == published_peak_chunks(name, p, m), (p, m, timeline.peak)


@pytest.mark.parametrize("p", [6, 12])
def test_peak_is_a_third_and_a_half_of_one_f_one_b(p):
    # Same model on 1F1B: one stage = two chunks, so act 2 per stage-microbatch; its peak is p of them.
    # For p divisible by 6 the published forms are exactly a third / a half of that plus one stage-microbatch:
    # (p+4)//3 = p/3 + 1 and (p+2)//2 = p/2 + 1.
    m = 4 * p
    one_f_one_b_peak = max(ir.simulate(one_f_one_b(p, m), Costs.uniform(p, act=2, wact=2)).peak)
    assert one_f_one_b_peak == 2 * p
    assert max(ir.simulate(v_min(p, m), unit_costs(p)).peak) == one_f_one_b_peak // 3 + 2
    assert max(ir.simulate(v_half(p, m), unit_costs(p)).peak) == one_f_one_b_peak // 2 + 2


@pytest.mark.parametrize("name, share", [("v-half", (1, 2)), ("v-min", (2, 3))])
@pytest.mark.parametrize("p", [2, 3, 4, 5, 6, 8])
def test_bubble_is_the_published_share_of_one_f_one_b(name, share, p):
    # Authors' table, T_F = T_B = T_W: bubble rate 1F1B ~ p/m, V-Min ~ 2p/(3m), V-Half ~ p/(2m).
    # 1F1B idles (p-1)(F+B+W) = 6(p-1) slots per rank; the "~" holds here as: V idles at most
    # share * 6(p-1) and at least 4 slots less, once m >= p + 2 (smaller m keeps an unsqueezed cool-down).
    num, den = share
    one_f_one_b_idle = 6 * (p - 1)
    idles = []
    for m in (p + 2, p + 3, 2 * p + 2, 4 * p):
        timeline = ir.simulate(FAMILIES[name](p, m), unit_costs(p))
        assert timeline.busy == (6 * m,) * p
        idles.append(timeline.makespan - 6 * m)
    # Stable phase: the block repeats every T = 6 slots with no bubble, so the idle does not grow with m.
    assert len(set(idles)) == 1
    assert num * one_f_one_b_idle - 4 * den <= den * idles[0] <= num * one_f_one_b_idle


# Orders produced by the authors' algorithm (sail-sg/zero-bubble-pipeline-parallelism, "Implementation of
# vhalf and vmin schedules": stable_pattern_v_*, put_w, reorder, schedule_from_pattern) run for these
# (p, m); its types F f B b W w map to F(stage r), F(2p-1-r), B(2p-1-r), B(r), W(2p-1-r), W(r).
REFERENCE = {
    ("v-half", 4, 8): [
        "0F0 0F1 0F2 0F3 0F4 7F0 7B0 7W0 7F1 7B1 7W1 7F2 0B0 7B2 7W2 7F3 0W0 0F5 0B1 7B3 7W3 7F4 0W1 0F6 "
        "0B2 7B4 7W4 7F5 0W2 0F7 0B3 7B5 7W5 7F6 7B6 7W6 0B4 0W3 0W4 7F7 7B7 0B5 7W7 0B6 0W5 0W6 0B7 0W7",
        "1F0 1F1 1F2 1F3 6F0 6F1 6B0 6W0 6F2 6B1 6W1 1B0 1W0 1F4 6F3 6B2 6W2 1B1 1W1 1F5 6F4 6B3 6W3 1B2 "
        "1W2 1F6 6F5 6B4 6W4 1B3 1F7 1W3 6F6 6B5 6W5 1B4 6B6 6W6 6F7 1W4 1B5 6B7 1B6 6W7 1W5 1W6 1B7 1W7",
        "2F0 2F1 2F2 5F0 5F1 5F2 5B0 5W0 2F3 5B1 2B0 5W1 2W0 5F3 2F4 2B1 5B2 5W2 5F4 2W1 2F5 2B2 5B3 5W3 "
        "5F5 2W2 2F6 2B3 5B4 5W4 5F6 2W3 2F7 2B4 5B5 5W5 5F7 5B6 2B5 5W6 2B6 5B7 5W7 2W4 2B7 2W5 2W6 2W7",
        "3F0 4F0 3F1 4F1 3F2 4F2 4B0 4W0 3B0 3W0 3F3 4F3 4B1 4W1 3B1 3W1 3F4 4F4 4B2 4W2 3B2 3W2 3F5 4F5 "
        "4B3 4W3 3B3 3F6 3W3 4F6 4B4 3B4 4W4 3F7 3W4 4F7 4B5 3B5 4B6 3B6 4W5 4W6 4B7 3B7 4W7 3W5 3W6 3W7",
    ],
    ("v-half", 3, 5): [
        "0F0 0F1 0F2 5F0 5B0 5W0 5F1 5B1 5W1 0B0 0W0 0F3 5F2 5B2 5W2 0B1 0W1 0F4 5F3 5B3 5W3 0B2 0W2 5F4 "
        "5B4 0B3 5W4 0W3 0B4 0W4",
        "1F0 1F1 4F0 4F1 4B0 4W0 1F2 1B0 4B1 4W1 4F2 1W0 1F3 1B1 4B2 4W2 4F3 1W1 1F4 1B2 4B3 4W3 4F4 1W2 "
        "1B3 4B4 4W4 1W3 1B4 1W4",
        "2F0 3F0 2F1 3F1 3B0 3W0 2B0 2W0 2F2 3F2 3B1 3W1 2B1 2W1 2F3 3F3 3B2 2B2 3W2 2F4 2W2 3F4 3B3 2B3 "
        "3W3 2W3 3B4 2B4 3W4 2W4",
    ],
    ("v-min", 3, 6): [
        "0F0 0F1 0F2 5F0 5B0 5W0 5F1 0B0 5B1 5W1 0W0 5F2 0F3 0B1 5B2 5W2 0W1 5F3 0F4 0B2 5B3 5W3 0W2 5F4 "
        "0F5 0B3 5B4 5W4 0W3 5F5 5B5 0B4 5W5 0W4 0B5 0W5",
        "1F0 1F1 4F0 4F1 4B0 4W0 1B0 1F2 1W0 4B1 4F2 4W1 1B1 1F3 1W1 4B2 4F3 4W2 1B2 1F4 1W2 4B3 4F4 4W3 "
        "1B3 1F5 1W3 4B4 4F5 4W4 1B4 4B5 4W5 1W4 1B5 1W5",
        "2F0 3F0 2F1 3F1 3B0 2B0 3W0 2W0 2F2 3F2 3B1 2B1 3W1 2W1 2F3 3F3 3B2 2B2 3W2 2W2 2F4 3F4 3B3 2B3 "
        "3W3 2W3 2F5 3F5 3B4 2B4 3W4 2W4 3B5 2B5 3W5 2W5",
    ],
    ("v-min", 4, 6): [
        "0F0 0F1 0F2 7F0 7B0 7W0 7F1 7B1 7W1 0B0 0W0 0F3 7F2 7B2 0B1 7W2 0W1 0F4 7F3 7B3 0B2 7W3 0W2 0F5 "
        "7F4 7B4 0B3 7W4 0W3 7F5 7B5 0B4 7W5 0W4 0B5 0W5",
        "1F0 1F1 6F0 6F1 6B0 6W0 1F2 1B0 6B1 6W1 1W0 6F2 1F3 1B1 6B2 6W2 1W1 6F3 1F4 1B2 6B3 6W3 1W2 6F4 "
        "1F5 1B3 6B4 6W4 1W3 6F5 1B4 6B5 6W5 1W4 1B5 1W5",
        "2F0 2F1 5F0 5F1 5B0 5W0 2F2 2B0 2W0 5B1 5F2 5W1 2B1 2F3 2W1 5B2 5F3 5W2 2B2 2F4 2W2 5B3 5F4 5W3 "
        "2B3 2F5 2W3 5B4 5F5 5W4 2B4 2W4 5B5 5W5 2B5 2W5",
        "3F0 4F0 3F1 4F1 4B0 3B0 4W0 3W0 3F2 4F2 4B1 3B1 4W1 3W1 3F3 4F3 4B2 3B2 4W2 3W2 3F4 4F4 4B3 3B3 "
        "4W3 3W3 3F5 4F5 4B4 3B4 4W4 3W4 4B5 3B5 4W5 3W5",
    ],
}


@pytest.mark.parametrize("key", REFERENCE)
def test_orders_match_the_reference_implementation(key):
    name, p, m = key
    got = [" ".join(str(a) for a in prog) for prog in FAMILIES[name](p, m).ranks]
    assert got == REFERENCE[key]


def test_order_does_not_depend_on_costs():
    slow_w = Costs.uniform(8, f=1, b=2, w=3, act=1, wact=1, comm=0.5)
    assert v_half(4, 8, costs=slow_w).ranks == v_half(4, 8).ranks
    assert v_min(4, 8, costs=slow_w).ranks == v_min(4, 8).ranks


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(sorted(FAMILIES)), st.integers(1, 10), st.integers(1, 30))
def test_any_p_and_m_is_valid_and_within_the_published_peak(name, p, m):
    schedule = FAMILIES[name](p, m)
    ir.verify(schedule)
    assert max(ir.simulate(schedule, unit_costs(p)).peak) == published_peak_chunks(name, p, m)


def test_registry_entries_and_bad_arguments():
    assert (V_HALF.name, V_MIN.name) == ("v-half", "v-min")
    assert V_HALF(4, 8).meta["baseline"] == "v-half"
    assert V_MIN(4, 8).ranks == v_min(4, 8).ranks
    for bad in ({"p": 0, "m": 4}, {"p": 4, "m": 0}, {"p": 2.0, "m": 4}):
        with pytest.raises(ValueError, match="positive integer"):
            v_half(**bad)
        with pytest.raises(ValueError, match="positive integer"):
            v_min(**bad)
    with pytest.raises(ValueError, match="takes no option"):
        V_MIN(4, 8, v=3)
