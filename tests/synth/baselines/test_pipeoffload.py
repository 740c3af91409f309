"""PipeOffload PO-H / PO-F (arXiv 2503.01328): order, offload placement, memory, copy cost."""

from __future__ import annotations

import math

import pytest

import ir
from ir import Op, Placement, Schedule
from synth.baselines.pipeoffload import PO_F, PO_H, gis_programs, pipeoffload

CASES = [(p, m) for p in (2, 4, 8) for m in sorted({1, 2, p, 2 * p, 4 * p})]


def _costs(p: int, v: int, copy_time: float = 0.0) -> ir.Costs:
    """A rank's whole slice costs F = B = W = 1 and keeps act 1 per microbatch, split over v
    chunks; ``copy_time`` is one OFFLOAD or RELOAD, in chunk passes (0: free copies)."""
    bandwidth = math.inf if copy_time == 0 else 1 / copy_time  # act/bandwidth = copy_time/v
    return ir.Costs.uniform(v * p, 1, f=1 / v, b=1 / v, w=1 / v, act=1 / v, copy_bandwidth=bandwidth)


def _strip_copies(s: Schedule) -> Schedule:
    return Schedule(s.placement, s.m, [[a for a in prog if a.op.stream is ir.Stream.COMPUTE] for prog in s.ranks])


def test_hand_order_two_ranks():
    # Building block for p = 2, v = 2, g = 1 (so G = 1): rank d puts F(chunk c) at slot 3c + d,
    # B(chunk 1-c) at 3 + d + 3(1-d) + 1 + 3c, W one slot later; block b repeats 6 slots later.
    # Rank 0: F0@0 F2@3 B2@7 W2@8 B0@10 W0@11, +6 for microbatch 1; sorted by slot.
    progs = gis_programs(2, 2, 2, 1)
    assert [[str(a) for a in prog] for prog in progs] == [
        ["0F0", "2F0", "0F1", "2B0", "2W0", "2F1", "0B0", "0W0", "2B1", "2W1", "0B1", "0W1"],
        ["1F0", "3F0", "3B0", "3W0", "1F1", "1B0", "1W0", "3F1", "3B1", "3W1", "1B1", "1W1"],
    ]


def test_hand_offload_placement():
    # PO-F on the order above: units with at least two passes between F and B are offloaded;
    # OFFLOAD right after F, RELOAD right after the pass that precedes B.
    s = pipeoffload(2, 2, v=2, g=1, offload="full")
    assert [str(a) for a in s.ranks[0]] == [
        "0F0", "0OFFLOAD0", "2F0", "0F1", "0OFFLOAD1", "2B0", "2W0", "2F1", "0RELOAD0", "2OFFLOAD1",
        "0B0", "0W0", "2RELOAD1", "2B1", "2W1", "0RELOAD1", "0B1", "0W1",
    ]


@pytest.mark.parametrize(("p", "m"), CASES)
@pytest.mark.parametrize("v", [2, 4])
def test_valid(p, m, v):
    for offload in ("half", "full"):
        ir.verify(pipeoffload(p, m, v=v, offload=offload))


@pytest.mark.parametrize("p", [2, 4, 8])
@pytest.mark.parametrize("v", [2, 4])
def test_po_f_peak_is_constant(p, v):
    # PO-F with hidden copies: a rank holds only the unit in F and the unit reloaded during
    # that pass for the next B, two chunk-units of act 1/v whatever p (paper: PO-F's activation
    # memory does not grow with p; hand count for the IR's copy semantics).
    for m in (2, p, 4 * p):
        s = pipeoffload(p, m, v=v, offload="full")
        for copy_time in (0.0, 0.5):
            assert max(ir.simulate(s, _costs(p, v, copy_time)).peak) == pytest.approx(2 / v)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_hidden_copies_cost_no_time(p):
    # Free or sub-pass copies never delay a pass, so the makespan is the order's own.
    v, m = 2, 4 * p
    for offload in ("half", "full"):
        s = pipeoffload(p, m, v=v, offload=offload)
        bare = ir.simulate(_strip_copies(s), _costs(p, v)).makespan
        for copy_time in (0.0, 0.5, 1.0):
            assert ir.simulate(s, _costs(p, v, copy_time)).makespan == pytest.approx(bare)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_slow_copies_grow_makespan(p):
    v, m = 2, 2 * p
    s = pipeoffload(p, m, v=v, offload="full")
    times = [ir.simulate(s, _costs(p, v, c)).makespan for c in (0.0, 2.0, 4.0)]
    assert times[0] < times[1] < times[2]


@pytest.mark.parametrize("p", [4, 8])
def test_po_h_offloads_first_half_and_sits_between(p):
    v, m = 4, 4 * p
    h = pipeoffload(p, m, v=v, offload="half")
    offloaded_chunks = {a.stage // p for prog in h.ranks for a in prog if a.op is Op.OFFLOAD}
    assert offloaded_chunks == {0, 1}
    costs = _costs(p, v)
    peak_h = max(ir.simulate(h, costs).peak)
    peak_f = max(ir.simulate(pipeoffload(p, m, v=v, offload="full"), costs).peak)
    peak_none = max(ir.simulate(_strip_copies(h), costs).peak)
    assert peak_f < peak_h < peak_none


def test_no_unit_both_recomputed_and_offloaded():
    s = pipeoffload(4, 8, v=2)
    assert Op.R not in s.ops_used()
    assert s.placement == Placement.interleaved(4, 2)


def test_registry_entries():
    assert (PO_H.name, PO_F.name) == ("po-h", "po-f")
    assert PO_F(4, 8).meta["offload"] == "full"
    assert PO_H(4, 8, v=4).meta["offload"] == "half"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pipeoffload(0, 4), "p must be a positive integer"),
        (lambda: pipeoffload(4, 4, v=3, offload="half"), "v must be even"),
        (lambda: pipeoffload(4, 4, g=5), "exceeds p"),
        (lambda: pipeoffload(4, 4, g=0), "g must be a positive integer"),
        (lambda: pipeoffload(4, 4, offload="some"), "'half'"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
