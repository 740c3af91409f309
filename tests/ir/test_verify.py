"""`verify` rejects one hand-made schedule per broken rule, naming rank, action and rule."""

import pytest

from ir import Costs, Placement, Schedule, ScheduleError, find_violations, lower, verify
from ir.examples import one_f_one_b


def _sched(ranks, p=2, m=1, k=1, placement=None):
    return Schedule(placement or Placement.standard(p), m, ranks, k)


def _only(schedule, rule, rank, action, text=None, problem=None):
    """The schedule breaks exactly ``rule`` at (rank, action); the message names all three."""
    with pytest.raises(ScheduleError) as err:
        verify(schedule, problem)
    hits = [v for v in err.value.violations if v.rule == rule]
    assert hits, f"expected rule {rule}, got {err.value}"
    assert err.value.rules == {rule}
    v = hits[0]
    assert v.rank == rank and str(v.action) == action
    message = str(err.value)
    assert f"rank {rank}" in message and f"action {action}" in message and f"[{rule}]" in message
    if text:
        assert text in message


def test_valid_schedules_pass():
    verify(_sched([["0F0", "0BW0"], ["1F0", "1BW0"]]))
    verify(one_f_one_b(4, 8))
    verify(one_f_one_b(4, 8, split_backward=True))
    assert find_violations(one_f_one_b(3, 2)) == []


def test_placement_rule():
    _only(_sched([["0F0", "0BW0", "1F0"], ["1BW0"]]), "placement", 0, "1F0", "stage 1 is placed on rank 1")


def test_range_rule():
    _only(_sched([["0F0", "0BW0", "0F1"], ["1F0", "1BW0"]]), "range", 0, "0F1", "microbatch 1 is outside 0..0")


def test_duplicate_rule():
    _only(_sched([["0F0", "0F0", "0BW0"], ["1F0", "1BW0"]]), "duplicate", 0, "0F0")


def test_completeness_missing_backward():
    _only(_sched([["0F0"], ["1F0", "1BW0"]]), "completeness", 0, "0B0", "missing")


def test_completeness_missing_w():
    _only(_sched([["0F0", "0B0"], ["1F0", "1BW0"]]), "completeness", 0, "0W0", "W after B")


def test_completeness_fused_and_split():
    _only(_sched([["0F0", "0BW0", "0B0", "0W0"], ["1F0", "1BW0"]]), "completeness", 0, "0BW0", "either BW or B and W")


def test_completeness_offload_without_reload():
    _only(_sched([["0F0", "0OFFLOAD0", "0BW0"], ["1F0", "1BW0"]]), "completeness", 0, "0OFFLOAD0", "without RELOAD")


def test_completeness_recompute_and_offload():
    ranks = [["0F0", "0OFFLOAD0", "0RELOAD0", "0R0", "0BW0"], ["1F0", "1BW0"]]
    _only(_sched(ranks), "completeness", 0, "0R0", "not both")


def test_same_rank_order_backward_after_forward():
    _only(_sched([["0BW0", "0F0"], ["1F0", "1BW0"]]), "backward-after-forward", 0, "0BW0", "needs 0F0 first")


def test_same_rank_order_forward_chain_v_shape():
    # V-shape, p=1 ... use p=2: stages 0,3 on rank 0; 1,2 on rank 1. 2F0 before 1F0 on rank 1.
    ranks = [["0F0", "3F0", "3BW0", "0BW0"], ["2F0", "1F0", "2BW0", "1BW0"]]
    _only(_sched(ranks, placement=Placement.v_shape(2)), "forward-chain", 1, "2F0", "needs 1F0 first")


def test_split_backward_order():
    _only(_sched([["0F0", "0W0", "0B0"], ["1F0", "1BW0"]]), "split-backward", 0, "0W0", "needs 0B0")


def test_slice_order_forward_and_backward():
    fwd = [["0F0.1", "0F0", "0BW0.1", "0BW0"], ["1F0", "1F0.1", "1BW0.1", "1BW0"]]
    _only(_sched(fwd, k=2), "slice-order", 0, "0F0.1", "needs 0F0 first")
    bwd = [["0F0", "0F0.1", "0BW0.1", "0BW0"], ["1F0", "1F0.1", "1BW0", "1BW0.1"]]
    _only(_sched(bwd, k=2), "slice-order", 1, "1BW0", "needs 1BW0.1 first")


def test_recompute_order():
    _only(_sched([["0F0", "0BW0", "0R0"], ["1F0", "1BW0"]]), "recompute", 0, "0BW0", "needs 0R0 first")


def test_reload_order():
    ranks = [["0F0", "0RELOAD0", "0OFFLOAD0", "0BW0"], ["1F0", "1BW0"]]
    _only(_sched(ranks), "offload", 0, "0RELOAD0", "needs 0OFFLOAD0 first")


def test_deadlock_unlowered():
    # rank 0 waits for the grad of microbatch 0 before running F1; rank 1 wants F1 first.
    ranks = [["0F0", "0BW0", "0F1", "0BW1"], ["1F1", "1F0", "1BW0", "1BW1"]]
    _only(_sched(ranks, m=2), "deadlock", 0, "0BW0", "waits for 1BW0 on rank 1")


def test_deadlock_lowered_blocking_sends():
    # Both ranks send before they receive: with blocking sends neither can move.
    ranks = [
        ["0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B0", "0BW0", "0RECV_B1", "0BW1"],
        ["1RECV_F0", "1F0", "1BW0", "1SEND_B0", "1RECV_F1", "1F1", "1BW1", "1SEND_B1"],
    ]
    _only(_sched(ranks, m=2), "deadlock", 0, "0SEND_F1", "blocks until rank 1 reaches 1RECV_F1")


def test_comm_rules():
    lowered = lower(_sched([["0F0", "0BW0"], ["1F0", "1BW0"]]))
    verify(lowered)
    ranks = [list(map(str, prog)) for prog in lowered.ranks]
    ranks[1].remove("1RECV_F0")
    _only(_sched(ranks), "comm", 1, "1RECV_F0", "missing")
    stray = [["0F0", "0BW0", "0SEND_B0"], ["1F0", "1BW0"]]
    with pytest.raises(ScheduleError, match=r"rank 0, action 0SEND_B0: \[comm\] no boundary tensor"):
        verify(_sched(stray))


def test_memory_cap_names_smallest_cap():
    # 1F1B, p=2, m=2, act=1 per unit: rank 0 holds 2 activations at its peak (closed form: p - r).
    costs = Costs.uniform(2, act=1.0, static=(10.0, 10.0))
    schedule = one_f_one_b(2, 2)
    verify(schedule, costs, mem_cap=12.0)
    with pytest.raises(ScheduleError) as err:
        verify(schedule, costs, mem_cap=11.5)
    assert err.value.rules == {"memory"}
    (v,) = err.value.violations
    assert v.rank == 0 and str(v.action) == "0F1"
    assert "peak 12 bytes exceeds the cap 11.5" in str(err.value)
    assert "smallest cap this schedule fits is 12" in str(err.value)


def test_memory_cap_from_problem_object():
    class Problem:
        costs = Costs.uniform(2, act=1.0)
        mem_cap = 1.5

    with pytest.raises(ScheduleError, match=r"rank 0, action 0F1: \[memory\]"):
        verify(one_f_one_b(2, 2), Problem())
