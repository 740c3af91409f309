"""Costs measured from a real run (`costs_from_run`, `sampled_makespans`), the latency and post time of a
message (`p2p_costs`, `one_way_latencies`) and the wait time each span records. Hand-built records and
stamps give the expected values exactly; real gloo runs check what only a run can show (waits inside
their spans, the same measurement on both ranks)."""

import math

import pytest

from backends.torch_exec.executor import SpanRecord, StepRecord, prepare_schedule
from backends.torch_exec.model import tiny_gpt
from backends.torch_exec.profile import one_way_latencies, p2p_costs
from backends.torch_exec.run_costs import _action_samples, costs_from_run, sampled_makespans
from backends.torch_exec.stages import boundary_shapes
from backends.torch_exec.worker import RunConfig, first_microbatch, run_rank
from ir import Costs, Op, UnitCost, lower, parse_action, simulate
from ir.examples import one_f_one_b


def _step(spans):
    return StepRecord(None, 0.01, 0, [SpanRecord(*s) for s in spans])


def test_costs_from_run_takes_means_of_pass_time_less_waits_and_posts_per_action():
    schedule = lower(one_f_one_b(2, 2))  # rank 0: 0F0 0SEND_F0 0F1 0SEND_F0 ...; rank 1 receives
    base = Costs(((UnitCost(f=9, b=9, w=9, act=5, wact=2, inp=1, comm=0.3, post=0.7),),
                  (UnitCost(f=9, b=9, w=9, act=6, comm=0.4, post=0.8),)), static=(10.0, 20.0))
    warm = [_step([("0F0", 0, 1)]), _step([("1F0", 0, 1)])]  # left out by skip=1
    rank0 = [warm[0], _step([("0F0", 0.000, 0.002), ("0SEND_F0", 0.002, 0.003),
                             ("0F1", 0.003, 0.007), ("0SEND_F1", 0.007, 0.008), ("0RECV_B0", 0.007, 0.008)]),
             _step([("0F0", 0.000, 0.003)])]
    # 1F0 waited 3 ms of its 4 ms span: 1 ms of pass; 1F1 waited 0 of 2 ms
    rank1 = [warm[1], _step([("1RECV_F0", 0.0, 0.0005), ("1F0", 0.0005, 0.0045, 0.003),
                             ("1RECV_F1", 0.0045, 0.0055), ("1F1", 0.0055, 0.0075, 0.0)])]
    costs = costs_from_run(schedule, [rank0, rank1], base, skip=1)
    s0, s1 = costs.unit(0), costs.unit(1)
    assert s0.f == pytest.approx(3.0)  # mean of 2, 4 and 3 ms
    assert s1.f == pytest.approx(1.5)  # mean of 4 - 3 = 1 and 2 - 0 = 2 ms
    # posts of boundary 0: SEND_F0 1 ms, a batch of two actions over 1 ms gives 0.5 each, RECV_F0 0.5, RECV_F1 1:
    # mean of (1, 0.5, 0.5, 0.5, 1) = 0.7
    assert s0.post == pytest.approx(0.7)
    assert (s0.b, s0.w, s1.b, s1.w) == (9, 9, 9, 9)  # not run: the base's
    assert s1.post == 0.8  # stage 1 is the last: no boundary of its own, the base's value stays
    assert (s0.act, s0.wact, s0.inp, s0.comm, s1.act, s1.comm) == (5, 2, 1, 0.3, 6, 0.4)
    assert costs.static == (10.0, 20.0)


def test_costs_from_run_prices_copies_as_bytes_over_their_time():
    # stage 0 moves act = 4000 bytes per OFFLOAD and per RELOAD; stage 1 holds act = 6000
    schedule = lower(one_f_one_b(2, 1))
    base = Costs((((UnitCost(f=1, b=1, w=1, act=4000)),), (UnitCost(f=1, b=1, w=1, act=6000),)),
                 copy_bandwidth=1.0, copy_stream=False)
    rank0 = [_step([("0F0", 0.0, 0.001), ("0OFFLOAD0", 0.001, 0.003), ("0RELOAD0", 0.004, 0.005)])]
    rank1 = [_step([("1F0", 0.0, 0.001), ("1OFFLOAD0", 0.001, 0.004)])]
    costs = costs_from_run(schedule, [rank0, rank1], base, skip=0)
    # bytes 4000 + 4000 + 6000 over 2 + 1 + 3 ms
    assert costs.copy_bandwidth == pytest.approx(14000 / 6)
    assert costs.copy_stream is False  # the base's: where copies run is not measured
    no_copies = costs_from_run(schedule, [[_step([("0F0", 0, 0.001)])], [_step([("1F0", 0, 0.001)])]], base, skip=0)
    assert no_copies.copy_bandwidth == 1.0  # nothing copied: the base's bandwidth stays


def test_profile_refuses_an_unknown_estimate():
    from backends.torch_exec.profile import profile_costs
    with pytest.raises(ValueError, match="estimate must be one of 'median', 'mean', got 'max'"):
        profile_costs(tiny_gpt(layers=2), 2, microbatch_size=2, estimate="max")


def test_costs_from_run_refuses_records_that_do_not_fit():
    schedule = lower(one_f_one_b(2, 1))
    base = Costs.uniform(2)
    with pytest.raises(ValueError, match="records of 1 ranks for a schedule of 2"):
        costs_from_run(schedule, [[_step([("0F0", 0, 1)])]], base, skip=0)
    with pytest.raises(ValueError, match="record_spans=True"):
        costs_from_run(schedule, [[_step([])], [_step([])]], base, skip=0)


def _ping(metas, *, rank, world_size, device):
    return p2p_costs(metas, rank=rank, peer=1 - rank, repeats=5, warmup=1, device=device)


def test_a_recorded_run_prices_every_pass_and_post_and_its_waits_fit_inside_their_spans(group2):
    schedule = one_f_one_b(2, 4)
    spec = tiny_gpt(layers=2)
    lowered = prepare_schedule(schedule, spec, early_recvs=True)
    results = group2.run(run_rank, RunConfig(schedule, spec, 8, steps=2, record_spans=True))
    for r in results:
        for step in r.steps:
            assert step.started > 0
            for span in step.spans:
                assert 0 <= span.wait <= span.end - span.start + 1e-6, span
                # the thread's CPU time fits in the span (less its waits, to the clocks' resolution)
                assert 0 <= span.cpu <= span.end - span.start - span.wait + 1e-4, span
                if span.wait > 0:  # only a pass that takes a message from the other rank waits
                    a = parse_action(span.action)
                    assert a.op in (Op.F, Op.BW) and (a.stage, a.op) in ((1, Op.F), (0, Op.BW)), span
            assert sum(span.cpu for span in step.spans if not parse_action(span.action).op.is_comm) > 0
    base = Costs.uniform(2, f=0, b=0, w=0, bw=0)
    costs = costs_from_run(lowered, [r.steps for r in results], base)
    for u in costs.units[0] + costs.units[1]:
        assert u.f > 0 and u.bw > 0
    assert costs.unit(0).post > 0  # boundary 0's SEND/RECV, posted on both ranks
    assert simulate(lowered, costs).makespan > 0
    inputs, _ = spec.make_batch(8, 0)
    metas = boundary_shapes(spec, 2, first_microbatch(inputs, 4))[0][0].tensors
    got = group2.run(_ping, metas)
    assert got[0] == got[1]  # the lower rank's measurement, sent to the other
    comm, post = got[0]
    # comm may be 0: on gloo a message can reach a waiting receiver before the sender's post returns
    assert 0 <= comm < 1e3 and 0 < post < 1e3 and all(math.isfinite(x) for x in got[0])
    drawn = sampled_makespans(lowered, [r.steps for r in results], costs, draws=5, seed=3)
    assert len(drawn) == 5 and all(0 < x < 1e6 and math.isfinite(x) for x in drawn)
    assert sampled_makespans(lowered, [r.steps for r in results], costs, draws=5, seed=3) == drawn


def test_one_way_latencies_cancel_the_offset_between_the_two_clocks():
    # the peer's clock reads 1000 s ahead; messages take 0.1 ms (pinger -> peer) and 0.3 ms back in
    # round 0 (mean 0.2 ms), 0.2 ms both ways in round 1; round 0 is a warm-up in the second call
    offset, mine, theirs = 1000.0, [], []
    for t, there, back in ((10.0, 1e-4, 3e-4), (10.01, 2e-4, 2e-4)):
        mine.append(t)  # our post ends
        theirs.append(t + there + offset)  # it arrives, on the peer's clock
        theirs.append(theirs[-1] + 0.002)  # the peer's post ends 2 ms later
        mine.append(theirs[-1] - offset + back)  # it arrives here
    assert one_way_latencies(mine, theirs) == pytest.approx([2e-4, 2e-4], abs=1e-9)
    assert one_way_latencies(mine, theirs, warmup=1) == pytest.approx([2e-4], abs=1e-9)
    with pytest.raises(ValueError, match="the same even count"):
        one_way_latencies(mine, theirs[:-1])


def _flat_run():
    """Two identical steps of lower(one_f_one_b(2, 1)) with host time between actions (ms by hand):
    rank 0: 0F0 0-2, a 0.5 gap, its batch of SEND_F0 + RECV_B0 2.5-3.0, a 1.0 gap, 0BW0 4.0-9.0 of which
    2 waited; rank 1: 1RECV_F0 0-0.5, 1F0 0.5-4.5 of which 2.5 waited, 1BW0 4.5-7.5, a 0.2 gap, 1SEND_B0
    7.7-8.0. So F0 2.0, BW0 5 - 2 + 1 = 4.0, F1 1.5, BW1 3.0, every post 0.5 (the batch's (0.5 + 0.5) / 2,
    the receive 0.5, the send 0.3 + 0.2)."""
    rank0 = [("0F0", 0, 0.002), ("0SEND_F0", 0.0025, 0.003), ("0RECV_B0", 0.0025, 0.003),
             ("0BW0", 0.004, 0.009, 0.002)]
    rank1 = [("1RECV_F0", 0, 0.0005), ("1F0", 0.0005, 0.0045, 0.0025), ("1BW0", 0.0045, 0.0075),
             ("1SEND_B0", 0.0077, 0.008)]
    return [[_step(rank0), _step(rank0)], [_step(rank1), _step(rank1)]]


def test_action_samples_add_the_host_time_before_each_action():
    samples = _action_samples(_flat_run(), skip=0)
    expected = {(Op.F, 0, 0): 2.0, (Op.BW, 0, 0): 4.0, (Op.F, 1, 0): 1.5, (Op.BW, 1, 0): 3.0, ("post", 0, 0): 0.5}
    assert samples.keys() == expected.keys()
    for key, ms in expected.items():
        assert samples[key] == pytest.approx([ms] * len(samples[key])), key
    assert len(samples[("post", 0, 0)]) == 8  # 4 posts a step, 2 steps


def test_sampled_makespans_without_spread_are_the_simulation_of_the_run_times():
    schedule = lower(one_f_one_b(2, 1))
    base = Costs((((UnitCost(f=9, b=9, w=9, comm=0.1)),), (UnitCost(f=9, b=9, w=9, comm=0.1),)))
    # the hand-derived times of _flat_run, simulated directly
    by_hand = Costs(((UnitCost(f=2.0, b=9, w=9, bw=4.0, comm=0.1, post=0.5),),
                     (UnitCost(f=1.5, b=9, w=9, bw=3.0, comm=0.1),)))
    drawn = sampled_makespans(schedule, _flat_run(), base, draws=4, skip=0)
    assert drawn == pytest.approx([simulate(schedule, by_hand).makespan] * 4)


def test_sampled_makespans_draw_each_action_from_its_kind():
    schedule = lower(one_f_one_b(2, 1))
    base = Costs((((UnitCost(f=9, b=9, w=9)),), (UnitCost(f=9, b=9, w=9),)))
    run = _flat_run()
    # step 1 of rank 0: F0 takes 4 ms instead of 2, the rest 2 ms later with the same gaps and lengths
    run[0][1] = _step([("0F0", 0, 0.004), ("0SEND_F0", 0.0045, 0.005), ("0RECV_B0", 0.0045, 0.005),
                       ("0BW0", 0.006, 0.011, 0.002)])
    # F0 took 2 ms in step 0 and 4 ms in step 1; everything else as before
    assert sorted(_action_samples(run, skip=0)[(Op.F, 0, 0)]) == pytest.approx([2.0, 4.0])
    outcomes = {f: simulate(schedule, Costs(((UnitCost(f=f, b=9, w=9, bw=4.0, post=0.5),),
                                             (UnitCost(f=1.5, b=9, w=9, bw=3.0),)))).makespan for f in (2.0, 4.0)}
    drawn = sampled_makespans(schedule, run, base, draws=40, seed=0, skip=0)
    assert {min(outcomes.values(), key=lambda m: abs(m - x)) for x in drawn} == set(outcomes.values())
    assert all(min(abs(x - m) for m in outcomes.values()) < 1e-9 for x in drawn)
    assert sampled_makespans(schedule, run, base, draws=40, seed=0, skip=0) == drawn  # the seed repeats it
    with pytest.raises(ValueError, match="records of 1 ranks"):
        sampled_makespans(schedule, run[:1], base)
    with pytest.raises(ValueError, match="record_spans=True"):
        sampled_makespans(schedule, [[_step([])], [_step([])]], base, skip=0)
