"""SlimPipe's attention redistribution (synth.costs.redistribute) against closed forms.

Sources of the expected values: the causal pair count ``sum_i (i + 1) = T (T + 1) / 2``
(``synth.costs.formulas.attention_pairs``); for k uniform slices of L tokens slice j holds
``j L^2 + L (L + 1) / 2`` pairs, the mean is ``L (k L + 1) / 2``, slice j's surplus is
``(j - (k - 1)/2) L^2``, and the least total that equalises them is the sum of the positive
surpluses, ``L^2 k^2 / 8`` for even k and ``L^2 (k^2 - 1) / 8`` for odd k (``T^2 / 8`` and
``T^2 (1 - 1/k^2) / 8``); the exchange bytes are the module docstring's formulas.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.costs import CostModelError, hardware, preset, slice_bounds
from synth.costs.formulas import attention_pairs, layer_work
from synth.costs.redistribute import exchange_bytes, key_columns, redistribute_attention

HW = hardware("h100-80gb")


def _spec(seq_len: int, **changes):
    # Llama 3 8B shapes (GQA: q = 4096, kv = 1024, 32 heads), two sequences per microbatch.
    return preset("llama3-8b", seq_len=seq_len, micro_batch=2, **changes)


# Equal slices only (k divides T); odd and even L, odd and even k.
UNIFORM = [(seq, k) for seq in (4096, 4000, 1000, 1155) for k in (1, 2, 3, 4, 5, 8, 11, 16) if seq % k == 0]


@pytest.mark.parametrize(("seq", "k"), UNIFORM)
def test_uniform_slices_closed_forms(seq, k):
    spec = _spec(seq)
    red = redistribute_attention(spec, HW, slice_bounds(spec, k, "uniform"))
    L = seq // k
    assert red.pairs_before == tuple(j * L * L + L * (L + 1) // 2 for j in range(k))
    # Work is conserved: all causal pairs of the sequence, T (T + 1) / 2.
    assert sum(red.pairs_after) == sum(red.pairs_before) == seq * (seq + 1) // 2
    assert max(red.pairs_after) - min(red.pairs_after) <= 1
    if (L * (k * L + 1)) % 2 == 0:  # the mean L (k L + 1) / 2 is a whole number
        assert set(red.pairs_after) == {L * (k * L + 1) // 2}
        assert red.moved_pairs * 8 == L * L * (k * k if k % 2 == 0 else k * k - 1)


@pytest.mark.parametrize("k", [2, 4, 5, 8, 16])
def test_uniform_slices_pair_mirrors_and_bytes(k):
    seq = 8192 if k != 5 else 8190  # L even, so every target is exact
    spec = _spec(seq)
    L = seq // k
    red = redistribute_attention(spec, HW, slice_bounds(spec, k, "uniform"))
    # Slice k-1-j gives slice j its surplus (k-1-2j) L^2 / 2, as whole key columns of L pairs each.
    expected = [(k - 1 - j, j, (k - 1 - 2 * j) * L * L // 2) for j in range(k // 2)]
    assert [(t.donor, t.receiver, t.pairs) for t in red.transfers] == expected
    b, e, a, q, kv = 2, 2, 32, 4096, 1024
    for t in red.transfers:
        nk = math.ceil(t.pairs / L)
        assert (t.query_tokens, t.key_tokens) == (L, nk)
        assert t.forward_bytes == b * (2 * e * L * q + 2 * e * nk * kv + 4 * a * L)
        assert t.backward_bytes == b * (3 * e * L * q + 4 * e * nk * kv + 8 * a * L)
        for j in (t.donor, t.receiver):  # each slice is in exactly one transfer here
            assert red.forward_bytes[j] == t.forward_bytes
            assert red.forward_ms[j] == pytest.approx(1e3 * (t.forward_bytes / HW.p2p_bandwidth + 2 * HW.p2p_latency))
            assert red.backward_ms[j] == pytest.approx(1e3 * (t.backward_bytes / HW.p2p_bandwidth
                                                              + 2 * HW.p2p_latency))
    if k % 2:  # the middle slice already holds the mean: no exchange
        assert red.forward_bytes[k // 2] == red.backward_bytes[k // 2] == 0.0


def test_flops_after_and_delta_match_layer_work():
    # After redistribution slice j's attention is 4 b q * pairs_after (forward), 2.5x backward
    # (fused kernel, synth.costs.formulas); delta() is what build_problem adds to layer_work.
    spec = _spec(8192)
    bounds = slice_bounds(spec, 4, "uniform")
    red = redistribute_attention(spec, HW, bounds)
    for j, (t0, t1) in enumerate(zip(bounds, bounds[1:], strict=False)):
        base = layer_work(spec, t0, t1)
        linear = base.f - 4 * 2 * 4096 * red.pairs_before[j]
        assert red.flops_f[j] == 4 * 2 * 4096 * red.pairs_after[j]
        assert red.flops_b[j] == 2.5 * red.flops_f[j]
        moved = base + red.delta(j, spec)
        assert moved.f == pytest.approx(linear + red.flops_f[j])
        assert moved.b == pytest.approx(base.b - 2.5 * 4 * 2 * 4096 * red.pairs_before[j] + red.flops_b[j])
        assert (moved.w, moved.useful, moved.act) == (base.w, base.useful, base.act)


def test_internode_bandwidth_option():
    spec = _spec(8192)
    bounds = slice_bounds(spec, 2, "uniform")
    near = redistribute_attention(spec, HW, bounds)
    far = redistribute_attention(spec, HW, bounds, bandwidth=HW.internode_bandwidth)
    t = near.transfers[0]
    assert far.forward_ms[0] == pytest.approx(1e3 * (t.forward_bytes / HW.internode_bandwidth + 2 * HW.p2p_latency))
    assert far.forward_bytes == near.forward_bytes


def test_one_slice_moves_nothing():
    spec = _spec(4096)
    red = redistribute_attention(spec, HW, (0, 4096))
    assert red.transfers == () and red.pairs_after == red.pairs_before == (4096 * 4097 // 2,)


def _brute_columns(t0, t1, window, pairs):
    # Independent computation: count each key's pairs with queries t0..t1-1, sort, take prefix sums.
    counts = sorted((sum(1 for i in range(t0, t1) if x <= i and (window is None or i - x < window))
                     for x in range(t1)), reverse=True)
    counts = [c for c in counts if c]
    total, complete, needed = 0, 0, 0
    for c in counts:
        if total + c <= pairs:
            complete += 1
        if total < pairs:
            needed += 1
        total += c
    return complete, needed


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 30), st.integers(1, 20), st.one_of(st.none(), st.integers(1, 25)), st.data())
def test_key_columns_against_brute_force(t0, span, window, data):
    t1 = t0 + span
    pairs = data.draw(st.integers(0, attention_pairs(t0, t1, window)))
    assert key_columns(t0, t1, window, pairs) == _brute_columns(t0, t1, window, pairs)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 600), st.data(), st.one_of(st.none(), st.integers(1, 300)))
def test_any_bounds_conserve_and_balance(seq, data, window):
    spec = _spec(seq, attention_window=window)
    k = data.draw(st.integers(1, min(seq, 12)))
    cuts = sorted(data.draw(st.sets(st.integers(1, seq - 1), min_size=k - 1, max_size=k - 1))) if k > 1 else []
    bounds = (0, *cuts, seq)
    red = redistribute_attention(spec, HW, bounds)
    k = len(bounds) - 1
    assert sum(red.pairs_after) == sum(red.pairs_before) == attention_pairs(0, seq, window)
    assert max(red.pairs_after) - min(red.pairs_after) <= 1
    net = list(red.pairs_before)
    for t in red.transfers:
        assert t.pairs > 0 and red.pairs_before[t.donor] > red.pairs_after[t.donor]
        net[t.donor] -= t.pairs
        net[t.receiver] += t.pairs
        assert 1 <= t.key_tokens <= bounds[t.donor + 1]
        assert (t.forward_bytes, t.backward_bytes) == exchange_bytes(spec, t.query_tokens, t.key_tokens)
    assert tuple(net) == red.pairs_after
    # The least possible move: exactly the surpluses.
    assert red.moved_pairs == sum(max(0, b - a) for b, a in zip(red.pairs_before, red.pairs_after, strict=True))


@pytest.mark.parametrize(
    ("changes", "bounds", "kwargs", "match"),
    [
        ({"flash_attention": False}, (0, 2048, 4096), {}, "fused"),
        ({}, (0, 2048, 4000), {}, "rise strictly from 0 to seq_len 4096"),
        ({}, (0, 3000, 2000, 4096), {}, "rise strictly"),
        ({}, (0, 2048, 4096), {"bandwidth": 0.0}, "bandwidth must be"),
    ],
)
def test_bad_inputs(changes, bounds, kwargs, match):
    with pytest.raises(CostModelError, match=match):
        redistribute_attention(_spec(4096, **changes), HW, bounds, **kwargs)
