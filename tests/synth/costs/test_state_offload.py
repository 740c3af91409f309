"""Optimizer-state offload in the cost model: bytes per parameter, static bytes per rank, the
per-step host cost (``Problem.step_overhead_ms``), throughput and the CLI flags.

Expected values are the layouts' closed forms (``synth.costs.states``'s table): bf16 mixed
precision keeps 2 (weights) + 4 (fp32 main grads) + 12 (fp32 master, Adam m, v) bytes per
parameter; offloading m and v leaves 10, offloading all 12 leaves 6; times are bytes / bandwidth
and parameters / host Adam rate.
"""

from __future__ import annotations

import argparse

import pytest

from ir import Placement
from synth.costs import CostModelError, Training, build_problem, hardware, preset, total_params
from synth.costs.args import add_problem_arguments, check_costs_options, problem_from_args
from synth.costs.report import costs_report
from synth.costs.states import OptimizerOffload, StepOverhead, state_bytes, step_overhead

A100 = hardware("a100-40gb")
SPEC = preset("llama2-13b")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_problem_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(("offload", "device", "host", "to_host", "to_device"), [
    ("none", 18, 0, 0, 0),           # 2 + 4 + 12
    ("states", 10, 8, 4, 4),         # 2 + 4 + 4 master; m, v on the host; fp32 grads down, fp32 step up
    ("states+master", 6, 12, 4, 2),  # 2 + 4; master, m, v on the host; fp32 grads down, bf16 weights up
])
def test_bf16_bytes_per_param(offload, device, host, to_host, to_device):
    layout = state_bytes("bf16", offload)
    assert (layout.device, layout.host, layout.to_host, layout.to_device) == (device, host, to_host, to_device)
    training = Training(offload_optimizer=offload)
    assert training.bytes_per_param("bf16") == device
    assert training.host_bytes_per_param("bf16") == host
    assert device + host == 18  # offload moves bytes, it does not create or drop any


def test_zero1_shards_what_stays_and_what_moves():
    # dp = 4 with ZeRO-1: none 6 + 12/4 = 9; states 6 + 4/4 = 7 on the device and 8/4 = 2 on the
    # host; states+master 6 and 12/4 = 3; each rank moves and updates only its quarter.
    assert Training(dp=4, zero1=True).bytes_per_param("bf16") == 9
    states = Training(dp=4, zero1=True, offload_optimizer="states")
    assert (states.bytes_per_param("bf16"), states.host_bytes_per_param("bf16")) == (7, 2)
    full = state_bytes("bf16", "states+master", shards=4)
    assert (full.device, full.host, full.to_host, full.to_device, full.updated_on_host) == (6, 3, 1, 0.5, 0.25)
    assert Training(dp=4, offload_optimizer="states+master").shards == 1  # no zero1: no sharding


def test_fp32_layouts():
    # fp32: 4 weights + 4 grads + 8 (m, v) = 16; offload leaves 8 and keeps m, v and a weight copy (12) on the host.
    assert state_bytes("fp32").device == 16
    for mode in ("states", "states+master"):
        layout = state_bytes("fp32", mode)
        assert (layout.device, layout.host, layout.to_host, layout.to_device) == (8, 12, 4, 4)


def test_static_bytes_per_rank_shrink():
    placement = Placement.standard(8)
    plain = build_problem(SPEC, A100, placement, 16)
    full = build_problem(SPEC, A100, placement, 16, training=Training(offload_optimizer="states+master",
                                                                        reserved=1e9))
    assert sum(plain.params_per_rank) == total_params(SPEC)  # untied head: every parameter once
    for r in range(8):
        params = plain.params_per_rank[r]
        assert plain.costs.static[r] == pytest.approx(18 * params)
        assert full.costs.static[r] == pytest.approx(6 * params + 1e9)
        assert full.host_bytes[r] == pytest.approx(12 * params)
    assert plain.host_bytes == (0,) * 8 and plain.step_overhead_ms == 0.0


def test_step_overhead_is_bytes_over_bandwidth_and_params_over_rate():
    hw = A100.with_(host_bandwidth=25e9, host_adam_rate=2e9)
    for overlap in (True, False):
        training = Training(offload_optimizer="states+master", offload_overlap=overlap)
        problem = build_problem(SPEC, hw, Placement.standard(8), 16, training=training)
        expected = []
        for r in range(8):
            n = problem.params_per_rank[r]
            step = problem.rank_step_overhead(r)
            assert step.to_host_ms == pytest.approx(1e3 * 4 * n / 25e9)  # fp32 grads down
            assert step.to_device_ms == pytest.approx(1e3 * 2 * n / 25e9)  # bf16 weights up
            assert step.update_ms == pytest.approx(1e3 * n / 2e9)  # host Adam
            parts = (step.to_host_ms, step.update_ms, step.to_device_ms)
            expected.append(max(parts) if overlap else sum(parts))
        assert problem.step_overhead_ms == pytest.approx(max(expected))  # the slowest rank gates the step


def test_states_mode_moves_fp32_both_ways():
    n = 1e9
    step = step_overhead(n, state_bytes("bf16", "states"), host_bandwidth=20e9, host_adam_rate=1e9, overlap=False)
    assert (step.to_host_ms, step.update_ms, step.to_device_ms) == pytest.approx((200.0, 1000.0, 200.0))
    assert step.total_ms == pytest.approx(1400.0)
    assert StepOverhead().total_ms == 0.0
    with pytest.raises(ValueError, match="host_bandwidth"):
        step_overhead(n, state_bytes("bf16", "states"), host_bandwidth=0, host_adam_rate=1e9)


def test_throughput_counts_the_step_overhead():
    training = Training(offload_optimizer="states+master")
    problem = build_problem(SPEC, A100, Placement.standard(8), 16, training=training)
    overhead = problem.step_overhead_ms
    assert overhead > 0
    t = problem.throughput(1000.0)
    assert t.step_overhead_ms == overhead and t.makespan_ms == 1000.0
    assert t.tokens_per_s == pytest.approx(16 * SPEC.seq_len / ((1000.0 + overhead) / 1e3))
    assert t.mfu == pytest.approx(16 * problem.model_flops / ((1000.0 + overhead) / 1e3 * 8 * A100.peak_flops))
    plain = build_problem(SPEC, A100, Placement.standard(8), 16)
    assert plain.throughput(1000.0).tokens_per_s == pytest.approx(16 * SPEC.seq_len)
    assert "host optimizer step" in t.summary() and "host optimizer step" not in plain.throughput(1000.0).summary()


def test_hardware_host_fields():
    # presets: 80% of PCIe 4.0 / 5.0 x16 (32 / 64 GB/s each way); host Adam an assumption (module docstring)
    assert hardware("a100-40gb").host_bandwidth == pytest.approx(25.6e9)
    assert hardware("h100-80gb").host_bandwidth == pytest.approx(51.2e9)
    assert hardware("a100-80gb").host_adam_rate == 1e9 and hardware("h200").host_adam_rate == 2e9
    with pytest.raises(CostModelError, match="host_adam_rate"):
        hardware("a100-40gb", host_adam_rate=0)


def test_bad_offload_mode():
    with pytest.raises(CostModelError, match="offload_optimizer"):
        Training(offload_optimizer="everything")
    assert Training(offload_optimizer="states").offload_optimizer is OptimizerOffload.STATES


def test_cli_flags_reach_the_problem():
    args = _parse("--offload-optimizer", "states+master", "--no-offload-overlap", "--host-bandwidth", "12GB",
                  "--host-adam-rate", "3e9")
    problem = problem_from_args(args)
    assert problem.training.offload_optimizer is OptimizerOffload.STATES_MASTER
    assert not problem.training.offload_overlap
    assert problem.hardware.host_bandwidth == 12e9 and problem.hardware.host_adam_rate == 3e9
    assert "host memory per rank for optimizer state" in costs_report(problem)
    default = problem_from_args(_parse())
    assert default.training.offload_optimizer is OptimizerOffload.NONE and default.training.offload_overlap
    with pytest.raises(SystemExit):
        _parse("--offload-optimizer", "grads")
    with pytest.raises(SystemExit):
        _parse("--host-adam-rate", "-1")


def test_costs_file_refuses_the_offload_flags(tmp_path):
    args = _parse("--costs", str(tmp_path / "c.json"), "--offload-optimizer", "states")
    with pytest.raises(CostModelError, match="--offload-optimizer"):
        check_costs_options(args)
