"""Seq1F1B and Seq1F1B-I (arXiv 2406.03488): order, validity, bubble and peak memory."""

from __future__ import annotations

import pytest

import ir
from ir import Action, Op
from synth.baselines.one_f_one_b import one_f_one_b
from synth.baselines.seq1f1b import BASELINE, INTERLEAVED, seq1f1b, seq1f1b_interleaved

K = 4
PLAIN_CASES = [(p, m) for p in (2, 4, 8) for m in sorted({1, 2, p, 2 * p, 4 * p})]
# seq1f1b-i needs k <= p and p | m*k: k = 2 on two ranks, k = 4 on four and eight.
INTERLEAVED_CASES = [
    (p, m, k) for p, k in ((2, 2), (4, 4), (8, 4)) for m in sorted({1, 2, p, 2 * p, 4 * p}) if (m * k) % p == 0
]


def _slice_costs(num_stages: int, k: int, chunks: int = 1) -> ir.Costs:
    """Unit costs per slice: a rank's full model slice costs F = 1, BW = 2 and keeps act 1 per
    microbatch, split evenly over k slices and v chunks."""
    n = k * chunks
    return ir.Costs.uniform(num_stages, k, f=1 / n, b=2 / n, w=0.0, act=1 / n)


def _programs(schedule: ir.Schedule) -> list[list[str]]:
    return [[str(a) for a in prog] for prog in schedule.ranks]


def test_hand_order_two_ranks():
    # Warm-up p - r - 2 + k slices (k = 2): rank 0 runs 2 forwards, rank 1 one; backwards take
    # microbatches in order, slices in reverse.
    s = seq1f1b(2, 2, k=2)
    assert _programs(s) == [
        ["0F0", "0F0.1", "0F1", "0BW0.1", "0F1.1", "0BW0", "0BW1.1", "0BW1"],
        ["1F0", "1F0.1", "1BW0.1", "1F1", "1BW0", "1F1.1", "1BW1.1", "1BW1"],
    ]


def test_one_slice_is_1f1b():
    for p, m in PLAIN_CASES:
        assert seq1f1b(p, m, k=1).ranks == one_f_one_b(p, m).ranks


@pytest.mark.parametrize(("p", "m"), PLAIN_CASES)
def test_seq1f1b_valid_bubble_and_memory(p, m):
    s = seq1f1b(p, m, k=K)
    ir.verify(s)
    t = ir.simulate(s, _slice_costs(p, K))
    # Seq1F1B = 1F1B over m*k slice units of (f+b)/k: idle (p-1)(f+b)/k per rank, so the
    # bubble fraction is (p-1)/(k m + p - 1) (arXiv 2406.03488, with 1F1B's (p-1)/(m+p-1)).
    assert t.bubble_ratio == pytest.approx((p - 1) / (K * m + p - 1))
    # Rank 0 holds its warm-up p + k - 2 slices plus the first steady forward before the first
    # backward frees one: p + k - 1 slices of 1/k (issue text; warm-up from the reference code).
    assert t.peak[0] == pytest.approx(min(p + K - 1, m * K) / K)
    for r in range(p):
        assert t.peak[r] == pytest.approx(min(p - r + K - 1, m * K) / K)


@pytest.mark.parametrize(("p", "m", "k"), INTERLEAVED_CASES)
def test_seq1f1b_interleaved_valid_bubble_and_memory(p, m, k):
    v = 2
    s = seq1f1b_interleaved(p, m, k=k, v=v)
    ir.verify(s)
    t = ir.simulate(s, _slice_costs(v * p, k, v))
    # Interleaved 1F1B over m*k units: idle (p-1)(f+b)/(v k) per rank, a fraction
    # (p-1)/(v k m + p - 1) (Megatron interleaved bubble, arXiv 2104.04473, applied to slices).
    assert t.bubble_ratio == pytest.approx((p - 1) / (v * k * m + p - 1))
    # Rank 0 warms up 2(p-1) + (v-1)p + k - 1 chunk-slices (reference code), plus one steady
    # forward before the first backward: each holds 1/(v k).
    assert t.peak[0] == pytest.approx(min(2 * (p - 1) + (v - 1) * p + k, v * m * k) / (v * k))


def test_interleaved_backward_order_per_chunk():
    # Each chunk pops microbatches first-in first-out and slices last-in first-out.
    p, m, k, v = 4, 4, 4, 2
    s = seq1f1b_interleaved(p, m, k=k, v=v)
    expected = [(i, j) for i in range(m) for j in reversed(range(k))]
    for r, prog in enumerate(s.ranks):
        for stage in (r, p + r):
            got = [(a.microbatch, a.slice) for a in prog if a.op is Op.BW and a.stage == stage]
            assert got == expected


def test_interleaved_forwards_in_groups_of_p_units():
    # Megatron's table: p slice units of chunk 0, the same p units of chunk 1, then the next p.
    s = seq1f1b_interleaved(4, 2, k=4, v=2)
    forwards = [a for a in s.ranks[3] if a.op is Op.F]
    first = [Action(Op.F, 3, 0, j) for j in range(4)] + [Action(Op.F, 7, 0, j) for j in range(4)]
    assert forwards[:8] == first


def test_registry_entries():
    assert BASELINE.name == "seq1f1b" and INTERLEAVED.name == "seq1f1b-i"
    assert BASELINE(4, 4).k == 4
    s = INTERLEAVED(4, 4, k=2)
    assert (s.k, s.num_stages, s.meta["baseline"]) == (2, 8, "seq1f1b-i")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: seq1f1b(0, 4), "p must be a positive integer"),
        (lambda: seq1f1b(4, 4, k=0), "k must be a positive integer"),
        (lambda: seq1f1b_interleaved(2, 4, k=4), "k <= p"),
        (lambda: seq1f1b_interleaved(8, 1, k=4), "multiple of p"),
        (lambda: seq1f1b_interleaved(4, 4, v=0), "v must be a positive integer"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
