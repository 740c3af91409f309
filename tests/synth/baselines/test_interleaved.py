"""Interleaved 1F1B (synth.baselines.interleaved) against Megatron's order and the paper's closed forms.

Unit model: per-chunk forward f = 1/v, fused backward 2/v and activations 1/v, so a rank's work
per microbatch is 3 (F = 1, BW = 2 for a whole stage) and one stage-microbatch of activations is 1.
"""

import pytest

import ir
from ir import PlacementKind
from synth.baselines.interleaved import BASELINE, interleaved

CASES = [(p, m, v) for p in (2, 4, 8) for v in (2, 3) for m in (p, 2 * p, 4 * p)]


def unit_costs(p: int, v: int) -> ir.Costs:
    return ir.Costs.uniform(v * p, f=1 / v, b=1 / v, w=1 / v, act=1 / v)


@pytest.mark.parametrize("p,m,v", CASES)
def test_every_schedule_is_valid_and_complete(p, m, v):
    schedule = interleaved(p, m, v=v)
    ir.verify(schedule)  # each unit's F and BW exactly once, same-rank order, no deadlock
    assert schedule.placement.kind is PlacementKind.INTERLEAVED
    assert schedule.num_stages == v * p
    assert all(len(prog) == 2 * v * m for prog in schedule.ranks)


@pytest.mark.parametrize("p,m,v", CASES)
def test_bubble_matches_narayanan_et_al(p, m, v):
    # Narayanan et al. 2021 (arXiv 2104.04473) sec. 2.2.2: bubble time (p-1)(t_f+t_b)/v per rank,
    # so the makespan is m(t_f+t_b) + (p-1)(t_f+t_b)/v and the bubble fraction (p-1)/(v*m + p-1).
    timeline = ir.simulate(interleaved(p, m, v=v), unit_costs(p, v))
    assert timeline.makespan == pytest.approx(3 * m + 3 * (p - 1) / v)
    assert timeline.bubble_ratio == pytest.approx((p - 1) / (v * m + p - 1))


@pytest.mark.parametrize("p,m,v", CASES)
def test_peak_activations_follow_megatron_warmup(p, m, v):
    # Megatron's num_warmup_microbatches for rank r: (v-1)*p + 2*(p-r-1), capped at v*m. The forward
    # that opens the first 1F1B step starts before the first backward frees anything, so rank r
    # peaks at warmup + 1 chunks (all v*m when the cap binds), each 1/v of a stage-microbatch.
    timeline = ir.simulate(interleaved(p, m, v=v), unit_costs(p, v))
    for r in range(p):
        warmup = min((v - 1) * p + 2 * (p - r - 1), v * m)
        assert timeline.peak[r] == pytest.approx(min(warmup + 1, v * m) / v)


@pytest.mark.parametrize("p,v", [(2, 2), (4, 2), (4, 3), (8, 2)])
def test_rank0_peak_is_p_times_one_plus_p_minus_1_over_pv(p, v):
    # With m > p the cap does not bind: rank 0 holds (v-1)p + 2(p-1) + 1 = (v+1)p - 1 chunks,
    # i.e. p * (1 + (p-1)/(p*v)) stage-microbatches (the interleaved memory factor).
    timeline = ir.simulate(interleaved(p, 2 * p, v=v), unit_costs(p, v))
    assert timeline.peak[0] == pytest.approx(p * (1 + (p - 1) / (p * v)))


def test_order_follows_megatron_schedule_table():
    # p=2, v=2, m=4, written out from get_schedule_table (groups of p=2 microbatches, chunk-major):
    # virtual k: 0 1 2 3 4 5 6 7 -> microbatch 0 1 0 1 2 3 2 3, forward chunk 0 0 1 1 0 0 1 1,
    # backward chunk 1 1 0 0 1 1 0 0. Stage = chunk*2 + rank.
    # Rank 0: warm-up min(1*2 + 2*1, 8) = 4 forwards, then F(k+4)/B(k) for k=0..3, then B4..B7.
    # Rank 1: warm-up min(2 + 0, 8) = 2 forwards, then F(k+2)/B(k) for k=0..5, then B6, B7.
    schedule = interleaved(2, 4, v=2)
    assert [str(a) for a in schedule.ranks[0]] == (
        "0F0 0F1 2F0 2F1 "
        "0F2 2BW0 0F3 2BW1 2F2 0BW0 2F3 0BW1 "
        "2BW2 2BW3 0BW2 0BW3"
    ).split()
    assert [str(a) for a in schedule.ranks[1]] == (
        "1F0 1F1 "
        "3F0 3BW0 3F1 3BW1 1F2 1BW0 1F3 1BW1 3F2 3BW2 3F3 3BW3 "
        "1BW2 1BW3"
    ).split()


def test_registry_entry_defaults_to_two_chunks():
    schedule = BASELINE(4, 8)
    assert schedule.num_stages == 8
    assert schedule.meta["baseline"] == "interleaved"
    assert BASELINE.options == {"v": 2}
    with pytest.raises(ValueError, match="no option"):
        BASELINE(4, 8, waves=2)


@pytest.mark.parametrize(
    "p,m,v,message",
    [
        (4, 6, 2, "multiple of p=4"),
        (4, 2, 2, "multiple of p=4"),
        (1, 4, 2, "p >= 2"),
        (4, 8, 1, "v >= 2"),
        (4, 0, 2, "m must be a positive integer"),
    ],
)
def test_bad_arguments_say_what_to_change(p, m, v, message):
    with pytest.raises(ValueError, match=message):
        interleaved(p, m, v=v)
