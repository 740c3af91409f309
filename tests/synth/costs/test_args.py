"""The shared problem options and the stage table."""

from __future__ import annotations

import argparse
import json

import pytest

from synth.cli.source import CapArg, parse_mem_cap
from synth.costs import CostModelError, total_params
from synth.costs.args import (
    PLACEMENT_KINDS,
    add_problem_arguments,
    placement_for,
    placements_from_args,
    problem_from_args,
    resolve_model,
)
from synth.costs.report import describe, stage_table


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_problem_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_build_llama2_13b_on_eight_a100s():
    problem = problem_from_args(_parse())
    assert problem.spec.name == "llama2-13b" and problem.hardware.name == "a100-40gb"
    assert problem.p == 8 and problem.m == 32 and problem.k == 1


def test_options_reach_the_problem():
    problem = problem_from_args(_parse("--model", "llama3-8b", "--gpu", "h100-80gb", "-p", "4", "--placement", "v",
                                       "--seq-len", "2048", "--micro-batch-size", "2", "-m", "8", "-k", "2",
                                       "--efficiency", "0.4", "--dp", "2", "--zero1", "--reserved", "1GiB"),
                                mem_cap=7e10)
    assert problem.placement.num_stages == 8 and problem.spec.seq_len == 2048 and problem.spec.micro_batch == 2
    assert problem.hardware.efficiency == 0.4 and problem.training.zero1 and problem.training.reserved == 2**30
    assert problem.k == 2 and problem.m == 8 and problem.mem_cap == 7e10


def test_model_may_be_a_config_json(tmp_path):
    config = {"model_type": "llama", "num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8,
              "intermediate_size": 1376, "vocab_size": 1000, "max_position_embeddings": 2048}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    spec = resolve_model(str(path), seq_len=1024, micro_batch=None, dtype="fp16")
    assert spec.seq_len == 1024 and spec.micro_batch == 1 and spec.dtype == "fp16"
    assert total_params(spec) == 8 * (4 * 512**2 + 3 * 512 * 1376 + 2 * 512) + 2 * 1000 * 512 + 512


def test_bad_model_and_placement_names():
    with pytest.raises(CostModelError, match="unknown model 'gpt-5'.*config.json"):
        resolve_model("gpt-5")
    with pytest.raises(CostModelError, match="unknown placement"):
        placement_for("zigzag", 4)
    with pytest.raises(SystemExit):
        _parse("--stages", "0")
    with pytest.raises(SystemExit):
        _parse("--reserved", "lots")


def test_stage_table_has_a_row_per_stage_and_slice():
    problem = problem_from_args(_parse("-p", "4", "-k", "2", "--model", "gpt-1.5b"))
    table = stage_table(problem)
    assert len(table) == 2 + 4 * 2
    assert table[0].startswith("| stage | slice |")
    assert "gpt-1.5b: 22 layers" in describe(problem)


def test_synth_costs_command(capsys):
    from synth.cli import main

    assert main(["costs", "--model", "llama2-13b", "-p", "8", "-m", "16"]) == 0
    out = capsys.readouterr().out
    assert "layers per stage [5, 5, 5, 5, 5, 5, 5, 5]" in out and "| 7 | 5 |" in out
    # 1F1B needs static + 8 act on rank 0, over the 40 GiB of an A100-40GB (benchmarks/results/costs.md).
    assert "ranks [0, 1, 2, 3] exceed the 40.0 GiB of a a100-40gb" in out
    assert main(["costs", "--model", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["costs", "--model", "llama2-13b", "-p", "6", "--partition", "even"]) == 1
    assert "do not split evenly over 6 stages" in capsys.readouterr().err


def _synth_parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_problem_arguments(parser, several_placements=True)
    return parser.parse_args(list(argv))


def test_several_placements_repeated_or_comma_separated():
    assert placements_from_args(_synth_parse()) == PLACEMENT_KINDS  # auto
    assert placements_from_args(_synth_parse("--placement", "v,standard", "--placement", "v")) == ("v", "standard")
    assert placements_from_args(_synth_parse("--placement", "standard,auto")) == PLACEMENT_KINDS
    with pytest.raises(SystemExit):
        _synth_parse("--placement", "standard,zigzag")


def test_mem_cap_forms():
    assert parse_mem_cap("40GB") == CapArg("40GB", amount=4e10, has_unit=True)
    assert parse_mem_cap("40GiB").amount == 40 * 2**30
    assert parse_mem_cap("4e10") == CapArg("4e10", amount=4e10)
    assert parse_mem_cap("1F1B * 0.5") == CapArg("1F1B * 0.5", fraction=0.5)
    for bad in ("lots", "1f1b*0", "1f1b*", "-3", "0.5*1f1b"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_mem_cap(bad)


def test_1f1b_fraction_with_a_model_is_half_of_its_simulated_peak():
    from ir import Placement, simulate
    from synth.baselines import BASELINES
    from synth.cli.source import resolve_cap, source_from_args
    from synth.costs import build_problem, hardware, preset

    args = _synth_parse("--model", "gpt-1.5b", "-p", "4")
    source = source_from_args(args, m=8)
    problem = build_problem(preset("gpt-1.5b"), hardware("a100-40gb"), Placement.standard(4), 8)
    peak = max(simulate(BASELINES["1f1b"](4, 8, costs=problem.costs), problem.costs).peak)
    assert resolve_cap(parse_mem_cap("1f1b*0.5"), source, 4, 8) == pytest.approx(peak / 2)
    assert resolve_cap(None, source, 4, 8) == hardware("a100-40gb").memory


def test_costs_file_split_over_chunks_and_slices_by_rank():
    from ir import Placement
    from synth.costs.user import costs_for, parse_user_costs

    user = parse_user_costs({"f": [4, 8], "b": 4, "w": 4, "act": [8, 4], "wact": 4, "inp": [2, 1], "comm": [0.5, 0.25],
                             "static": [3, 1], "offload": [2, 4]}, 2)
    placement = Placement.interleaved(2, 2)  # stages 0, 2 on rank 0; 1, 3 on rank 1
    costs = costs_for(user, placement, 2)
    share = 1 / (2 * 2)  # c = 2 stages per rank, k = 2 slices
    assert costs.k == 2 and costs.num_stages == 4 and costs.static == (3, 1)
    for s in range(4):
        r = placement.rank_of(s)
        u = costs.unit(s, 1)
        assert (u.f, u.act, u.inp, u.comm) == (user.f[r] * share, user.act[r] * share, user.inp[r] * share,
                                               user.comm[r])
    assert costs.copy_bandwidth == min(8 / 2, 4 / 4)  # the slowest rank's act / offload
    assert parse_user_costs({"f": 1, "b": 1, "w": 1, "act": 1, "wact": 1, "comm": 0}, 3).offload_offered is False
    with pytest.raises(CostModelError, match="for 2 ranks"):
        costs_for(user, Placement.standard(3), 1)
