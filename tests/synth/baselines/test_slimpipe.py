"""SlimPipe (arXiv 2504.14519): order, validity, bubble and peak memory against closed forms.

The closed forms are derived in ``synth/baselines/slimpipe.py``'s docstring; every expected value
below is computed from them, never from the simulator.
"""

from __future__ import annotations

import pytest

import ir
from ir import Op
from synth.baselines.common import even_split_costs
from synth.baselines.seq1f1b import seq1f1b, seq1f1b_interleaved
from synth.baselines.slimpipe import BASELINE, LEAN, group_microbatches, slimpipe, warmup


def _buildable(p: int, v: int, k: int, m: int, lean: bool) -> bool:
    return v == 1 or lean or m % group_microbatches(p, k) == 0


# (p, v, k, m, lean) over k below, at and above p, including k not a multiple of p and m not a
# multiple of ceil(p/k) (lean only: the default refuses those, see test_refuses_short_last_group).
CASES = [(p, v, k, m, lean) for p in (1, 2, 3, 4, 8) for v in (1, 2, 3)
         for k in sorted({1, 2, p - 1, p, p + 1, 2 * p} - {0}) for m in (1, 2, 5) for lean in (False, True)
         if _buildable(p, v, k, m, lean)]
PLAIN = [(p, m, k) for p in (1, 2, 4, 8) for m in (1, 2, 5, 8) for k in (1, 2, 8, 16)]
LONG = [(p, v, k, m) for p in (4, 8) for v in (1, 2) for k in (p, 2 * p) for m in (8, 16)]


def _programs(schedule: ir.Schedule) -> list[list[str]]:
    return [[str(a) for a in prog] for prog in schedule.ranks]


def _costs(schedule: ir.Schedule, f: float = 1.0, b: float = 2.0, comm: float = 0.0) -> ir.Costs:
    # f and b per stage-microbatch (act 1), split evenly over the v chunks and k slices.
    return even_split_costs(schedule, f=f, b=b, w=0.0, act=1.0, comm=comm)


def _lag(v: int, lean: bool) -> int:
    return 1 if v == 1 or lean else 2


def test_hand_order_two_ranks_interleaved():
    # p = 2, k = 2, v = 2, d = 2: w_0 = 2 + 2 + 1 = 5, w_1 = 0 + 2 + 1 = 3. Forwards chunk-major
    # per microbatch (stage 0 = chunk 0 on rank 0, stage 2 = chunk 1); backwards chunk 1 first,
    # slices reversed.
    s = slimpipe(2, 2, k=2, v=2)
    assert _programs(s) == [
        ["0F0", "0F0.1", "2F0", "2F0.1", "0F1", "0F1.1", "2BW0.1", "2F1", "2BW0", "2F1.1", "0BW0.1", "0BW0",
         "2BW1.1", "2BW1", "0BW1.1", "0BW1"],
        ["1F0", "1F0.1", "3F0", "3F0.1", "3BW0.1", "1F1", "3BW0", "1F1.1", "1BW0.1", "3F1", "1BW0", "3F1.1",
         "3BW1.1", "3BW1", "1BW1.1", "1BW1"],
    ]


@pytest.mark.parametrize(("p", "m", "k"), PLAIN)
def test_plain_is_seq1f1b_order(p, m, k):
    # v = 1: SlimPipe's order is Seq1F1B's (the paper's difference is uniform slicing and the
    # redistribution, both in the cost model), warm-up p - r - 2 + k.
    assert slimpipe(p, m, k=k, v=1).ranks == seq1f1b(p, m, k=k).ranks


@pytest.mark.parametrize(("p", "v", "k", "m", "lean"), CASES)
def test_valid_bubble_and_peak(p, v, k, m, lean):
    s = slimpipe(p, m, k=k, v=v, lean=lean)
    ir.verify(s)
    t = ir.simulate(s, _costs(s))
    g = group_microbatches(p, k) * k
    for r in range(p):
        # Program order fixes the level: w_r + 1 units (warm-up + first steady forward) of 1/(v k).
        w = _lag(v, lean) * (p - 1 - r) + (v - 1) * g + k - 1
        assert warmup(p, r, k, v, lean=lean) == w
        assert t.peak[r] == pytest.approx(min(w + 1, v * m * k) / (v * k))
    if m % group_microbatches(p, k) == 0:
        # Lower bound (p-1) F + m (f+b) + (p-1) BW, attained: fraction (p-1)/(v k m + p - 1).
        assert t.makespan == pytest.approx(m * 3.0 + (p - 1) * 3.0 / (v * k))
        assert t.bubble_ratio == pytest.approx((p - 1) / (v * k * m + p - 1))


@pytest.mark.parametrize(("p", "v", "k", "m"), LONG)
def test_long_runs_bubble(p, v, k, m):
    s = slimpipe(p, m, k=k, v=v)
    t = ir.simulate(s, _costs(s, f=1.0, b=1.0))
    assert t.bubble_ratio == pytest.approx((p - 1) / (v * k * m + p - 1))


@pytest.mark.parametrize(("p", "k"), [(4, 4), (4, 8), (8, 8), (8, 16)])
@pytest.mark.parametrize("v", [1, 2, 3])
def test_rank0_peak_is_about_one_microbatch(p, k, v):
    # k >= p, m >= 2: rank 0 holds 1 + d (p - 1)/(v k) stage-microbatches; Seq1F1B 1 + (p - 1)/k.
    m = 4
    for lean in (False, True):
        s = slimpipe(p, m, k=k, v=v, lean=lean)
        peak = ir.simulate(s, _costs(s)).peak[0]
        assert peak == pytest.approx(1 + _lag(v, lean) * (p - 1) / (v * k))
        ref = seq1f1b(p, m, k=k)
        seq_peak = ir.simulate(ref, _costs(ref)).peak[0]
        assert seq_peak == pytest.approx(1 + (p - 1) / k)
        assert peak <= seq_peak + 1e-12
        if lean and v > 1 or v >= 3:
            assert peak < seq_peak


@pytest.mark.parametrize("v", [2, 3])
@pytest.mark.parametrize("p", [2, 4, 8])
def test_at_k_equal_p_against_seq1f1b_interleaved(p, v):
    # k = p: the same forward table as Seq1F1B-I (one group = p units = one microbatch) and the
    # same warm-up 2(p-1-r) + (v-1)p + k - 1 without lean, so the same programs; lean holds
    # p - 1 - r units of 1/(v k) fewer on rank r at the same makespan.
    m, k = 2 * p, p
    ours, ref = slimpipe(p, m, k=k, v=v), seq1f1b_interleaved(p, m, k=k, v=v)
    assert ours.ranks == ref.ranks
    lean = slimpipe(p, m, k=k, v=v, lean=True)
    t_lean, t_ref = ir.simulate(lean, _costs(lean)), ir.simulate(ref, _costs(ref))
    for r in range(p):
        assert t_lean.peak[r] == pytest.approx(t_ref.peak[r] - (p - 1 - r) / (v * k))
    assert t_lean.makespan == pytest.approx(t_ref.makespan)


def test_k_above_p_where_seq1f1b_interleaved_refuses():
    with pytest.raises(ValueError, match="k <= p"):
        seq1f1b_interleaved(4, 4, k=8, v=2)
    s = slimpipe(4, 4, k=8, v=2)
    ir.verify(s)
    assert ir.simulate(s, _costs(s)).bubble_ratio == pytest.approx(3 / (2 * 8 * 4 + 3))


def test_forward_and_backward_order_per_chunk():
    # Forwards: per microbatch (k >= p), chunk 0's k slices, then chunk 1's. Backwards: per chunk,
    # microbatches first-in first-out, slices last-in first-out.
    p, m, k, v = 4, 3, 6, 2
    s = slimpipe(p, m, k=k, v=v)
    for r, prog in enumerate(s.ranks):
        forwards = [(a.stage, a.microbatch, a.slice) for a in prog if a.op is Op.F]
        assert forwards == [(c * p + r, i, j) for i in range(m) for c in range(v) for j in range(k)]
        for stage in (r, p + r):
            got = [(a.microbatch, a.slice) for a in prog if a.op is Op.BW and a.stage == stage]
            assert got == [(i, j) for i in range(m) for j in reversed(range(k))]


def test_groups_of_microbatches_when_k_below_p():
    # k = 2 < p = 4: G = 2 microbatches per group, so each chunk pass covers 4 units >= p.
    s = slimpipe(4, 4, k=2, v=2)
    forwards = [(a.stage, a.microbatch, a.slice) for a in s.ranks[0] if a.op is Op.F]
    assert forwards[:8] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (4, 0, 0), (4, 0, 1), (4, 1, 0), (4, 1, 1)]
    assert s.meta["group"] == 2


def test_lean_pays_for_comm_latency():
    # Why the default keeps Megatron's 2(p-1-r): with a comm latency per hop the lean order puts
    # every hop on the critical path; the default's extra warm-up absorbs it. Both still valid.
    p, m, k, v = 8, 8, 16, 2
    default, lean = slimpipe(p, m, k=k, v=v), slimpipe(p, m, k=k, v=v, lean=True)
    t_default = ir.simulate(default, _costs(default, comm=0.01))
    t_lean = ir.simulate(lean, _costs(lean, comm=0.01))
    assert t_default.makespan < t_lean.makespan
    assert max(t_lean.peak) < max(t_default.peak)


def test_registry_entries():
    assert (BASELINE.name, LEAN.name) == ("slimpipe", "slimpipe-lean")
    s = BASELINE(4, 4)
    assert (s.k, s.num_stages, s.meta["baseline"], s.meta["lean"]) == (8, 8, "slimpipe", False)
    s = LEAN(4, 4, k=16, v=1)
    assert (s.k, s.num_stages, s.meta["lean"]) == (16, 4, True)
    assert s.placement == ir.Placement.standard(4)


def test_refuses_short_last_group():
    # d = 2 with k < p and m not a multiple of ceil(p/k): the last group has fewer than p units.
    with pytest.raises(ValueError, match="multiple of 2"):
        slimpipe(4, 3, k=2, v=2)
    ir.verify(slimpipe(4, 3, k=2, v=2, lean=True))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: slimpipe(0, 4), "p must be a positive integer"),
        (lambda: slimpipe(4, 4, k=0), "k must be a positive integer"),
        (lambda: slimpipe(4, 4, v=0), "v must be a positive integer"),
        (lambda: slimpipe(4, 4, lean="yes"), "lean must be True or False"),
        (lambda: BASELINE(4, 4, chunks=2), "takes no option"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
