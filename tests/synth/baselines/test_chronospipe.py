"""ChronosPipe (arXiv 2503.03182; synth.baselines.chronospipe): validity, the block, closed forms.

Unit model throughout: ``even_split_costs(schedule, f=1, b=1, w=1, act=1)``: a full stage has
F = 1, BW = 2 and act 1; on the V-shape every chunk is half a stage (F = 1/2 = one slot, BW = 1 =
two slots, act 1/2), so a rank's work per microbatch is 3 (6 slots). Peaks are in
stage-microbatches, times in full-stage F units. P(p) = floor(2p/3) + 1.
"""

from __future__ import annotations

import math

import pytest

import ir
from ir import Op, PlacementKind
from synth.baselines import build
from synth.baselines.chronospipe import (
    CHRONOS_OFFLOAD,
    CHRONOS_PIPE,
    CHRONOS_RECOMP,
    block,
    chronos_offload,
    chronos_recomp,
    chronospipe,
    peak_from_lifespans,
    recompute_block,
)
from synth.baselines.common import even_split_costs

PS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16)
CASES = [(p, m) for p in PS for m in sorted({1, 2, 3, p, 2 * p, 4 * p + 1})]


def _run(schedule, **kw) -> ir.Timeline:
    return ir.simulate(schedule, even_split_costs(schedule, f=1, b=1, w=1, act=1, **kw))


def big_p(p: int) -> int:
    return (2 * p) // 3 + 1


@pytest.mark.parametrize(("p", "m"), CASES)
def test_valid(p, m):
    for schedule in (chronospipe(p, m), chronos_recomp(p, m), chronos_offload(p, m),
                     chronos_recomp(p, m, stages=p // 2), chronos_offload(p, m, stages=p // 2)):
        ir.verify(schedule)  # every unit once, same-rank order, no deadlock
        assert schedule.placement.kind is PlacementKind.V_SHAPE


def test_hand_block_and_order_p2():
    # p = 2: k_r = floor((r + 2)/3) = (0, 1), j_r = floor((2 - r)/3) = (0, 0).
    # Rank 0 (stages 0, 3): F(0)@0, F(3)@3, BW(3)@4, BW(0)@10 - 0 + 3(1 + 0) = 13.
    # Rank 1 (stages 1, 2): F(1)@1, F(2)@2, BW(2)@4 + 2 + 3 = 9, BW(1)@10 - 2 + 3 = 11.
    blk = block(2)
    assert (blk.f_down, blk.f_up, blk.bw_up, blk.bw_down) == ((0, 1), (3, 2), (4, 9), (13, 11))
    # Microbatch 1 is every slot + 6; a rank runs its passes in slot order.
    s = chronospipe(2, 2)
    assert [[str(a) for a in prog] for prog in s.ranks] == [
        ["0F0", "3F0", "3BW0", "0F1", "3F1", "3BW1", "0BW0", "0BW1"],  # slots 0 3 4 6 9 10 13 19
        ["1F0", "2F0", "1F1", "2F1", "2BW0", "1BW0", "2BW1", "1BW1"],  # slots 1 2 7 8 9 11 15 17
    ]


@pytest.mark.parametrize("p", range(1, 21))
def test_block_formulas(p):
    blk = block(p)
    k = [(r + (2 * p - 2) % 6) // 3 for r in range(p)]
    for r in range(p):
        # lifespans from the module docstring: D_r = 6p - 3r + 3(k_{p-1} + j_r), U_r = 3r + 3 + 3k_r
        assert blk.lifespans(r) == (6 * p - 3 * r + 3 * (k[p - 1] + (p - r) // 3), 3 * r + 3 + 3 * k[r])
    # dependency chain: F down the ranks, F back up, BW(up) down, BW(down) back up
    assert all(blk.f_up[r] >= blk.f_up[r + 1] + 1 for r in range(p - 1)) and blk.f_up[p - 1] >= blk.f_down[p - 1] + 1
    assert blk.bw_up[0] >= blk.f_up[0] + 1 and all(blk.bw_up[r] >= blk.bw_up[r - 1] + 2 for r in range(1, p))
    assert blk.bw_down[p - 1] >= blk.bw_up[p - 1] + 2
    assert all(blk.bw_down[r] >= blk.bw_down[r + 1] + 2 for r in range(p - 1))
    blk.check()
    recompute_block(p).check()


@pytest.mark.parametrize("p", range(1, 21))
def test_peak_counted_from_lifespans(p):
    # The counting argument alone (no simulator): 2P chunk-units = P stage-microbatches.
    assert peak_from_lifespans(block(p)) == 2 * big_p(p)
    assert peak_from_lifespans(recompute_block(p), mode="recompute") == big_p(p)
    assert peak_from_lifespans(block(p), mode="offload") == big_p(p) + 1


@pytest.mark.parametrize(("p", "m"), CASES)
def test_chronospipe_closed_forms(p, m):
    t = _run(chronospipe(p, m))
    assert max(t.peak) == min(m, big_p(p))
    idle = 3 * (p - 1) + min((p - 1) % 3, m - 1) / 2  # measured closed form (module docstring)
    assert t.makespan == pytest.approx(3 * m + idle)
    assert t.bubble_ratio == pytest.approx(idle / (3 * m + idle))


@pytest.mark.parametrize("p", (2, 4, 8, 16))
def test_peak_against_1f1b_and_interleaved(p):
    m = 4 * p
    chronos = _run(chronospipe(p, m))
    one = _run(build("1f1b", p, m))
    inter = _run(build("interleaved", p, m, v=2))
    assert max(one.peak) == p and max(inter.peak) == p + (p - 1) / 2  # their closed forms
    assert max(chronos.peak) == big_p(p) <= max(one.peak) < max(inter.peak)
    if p >= 4:
        assert max(chronos.peak) < max(one.peak)
    # throughput comparable to 1F1B: at most half a stage forward more per iteration
    assert chronos.makespan <= one.makespan + 0.5


@pytest.mark.parametrize("p", (3, 4, 5, 6, 7, 8, 9, 12, 16))
def test_recompute_closed_forms(p):
    for m in (p, 2 * p, 4 * p + 1):
        s = chronos_recomp(p, m)
        assert sum(a.op is Op.R for prog in s.ranks for a in prog) == p * m  # one R per down unit
        assert all(a.stage < p for prog in s.ranks for a in prog if a.op is Op.R)
        t = _run(s)
        assert max(t.peak) == big_p(p) / 2  # inp = 0: the counting argument's value
        idle = (20 * p - 17 + 4 * ((p - 1) % 3)) / 6  # measured closed form (module docstring)
        if (p, m) != (3, 3):  # the one exception for m >= p, p <= 20: half a chunk forward less
            assert t.makespan == pytest.approx(3.5 * m + idle)
        full = _run(build("1f1b-recompute", p, m))
        assert t.makespan < full.makespan  # cheaper than recomputing every stage


def test_recompute_steady_state_adds_one_period():
    # The period-7 block tiles a rank's 3.5 units of work: each further microbatch adds 3.5.
    for p in (4, 8):
        spans = [_run(chronos_recomp(p, m)).makespan for m in range(p, p + 4)]
        assert [b - a for a, b in zip(spans, spans[1:], strict=False)] == pytest.approx([3.5] * 3)


def test_recompute_keeps_inputs():
    # With inp > 0 a recomputed down unit keeps inp/2 (half a stage's input) from F to R.
    p, m = 4, 16
    plain = max(_run(chronos_recomp(p, m)).peak)
    with_inp = max(_run(chronos_recomp(p, m), inp=0.1).peak)
    assert plain < with_inp < plain + p * 0.1


@pytest.mark.parametrize("p", (2, 4, 8, 16))
def test_offload_hidden_copies(p):
    m = 4 * p
    s = chronos_offload(p, m)
    t = _run(s)
    assert max(t.peak) == (big_p(p) + 1) / 2
    assert t.makespan == pytest.approx(_run(chronospipe(p, m)).makespan)  # free copies cost no time
    # a copy as long as one chunk forward (act 1/2 at bandwidth 1) still hides behind a pass
    timed = ir.simulate(s, even_split_costs(s, f=1, b=1, w=1, act=1, copy_bandwidth=1.0))
    assert timed.makespan == pytest.approx(t.makespan)
    offloaded = {a.unit for prog in s.ranks for a in prog if a.op is Op.OFFLOAD}
    assert offloaded and all(stage < p for stage, _, _ in offloaded)


def test_offload_placement_p2():
    # OFFLOAD right after F; RELOAD right after the compute pass that precedes BW.
    s = chronos_offload(2, 2)
    assert [str(a) for a in s.ranks[0]] == [
        "0F0", "0OFFLOAD0", "3F0", "3BW0", "0F1", "0OFFLOAD1", "3F1", "3BW1", "0RELOAD0", "0BW0",
        "0RELOAD1", "0BW1",
    ]


def test_slow_copies_delay():
    p, m = 4, 16
    s = chronos_offload(p, m)
    slow = ir.simulate(s, even_split_costs(s, f=1, b=1, w=1, act=1, copy_bandwidth=0.05))
    assert slow.makespan > _run(s).makespan
    assert math.isfinite(slow.makespan)


def test_registry_entries_and_options():
    assert (CHRONOS_PIPE.name, CHRONOS_RECOMP.name, CHRONOS_OFFLOAD.name) == (
        "chronospipe", "chronos-recomp", "chronos-offload")
    assert CHRONOS_PIPE(4, 8).meta["baseline"] == "chronospipe"
    assert CHRONOS_RECOMP(4, 8, stages=2).meta["recompute_stages"] == 2
    assert CHRONOS_OFFLOAD(4, 8).meta["offload_stages"] == 4
    assert chronos_recomp(4, 8, stages=0).ranks == chronospipe(4, 8).ranks
    with pytest.raises(ValueError, match="takes no option"):
        CHRONOS_PIPE(4, 8, stages=2)
    with pytest.raises(ValueError, match="stages must be"):
        chronos_offload(4, 8, stages=5)
    with pytest.raises(ValueError, match="positive"):
        chronospipe(0, 4)
