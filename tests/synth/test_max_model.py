"""``synth.research.max_model`` and ``synth max-model``: the answer fits and one size more does not,
1F1B's answer is the plain loop's, a floor nobody meets is a clear error, and the CLI's report.

The family is a tiny Llama (h 256, 4 heads, ffn 704, vocab 4096, seq 1024) on 2 x A100-40GB with
m = 4 and a 0.25 GiB cap, so sizes bind at about 20 layers and a solve takes a fraction of a second.
Every expected value is recomputed here from the cost model and the simulator, not read back.
"""

from __future__ import annotations

import argparse
import json

import pytest

from ir import Placement, simulate
from synth.baselines import BASELINES, build
from synth.costs import Training, build_problem, hardware, preset
from synth.research.max_model import Family, Floor, NothingTrains, Scale, largest, max_model
from synth.search import NoScheduleFits, SynthOptions, synthesize

BASE = preset("llama2-7b").with_(name="tiny", layers=4, hidden=256, heads=4, kv_heads=4, ffn=704, vocab=4096,
                                 seq_len=1024)
HW = hardware("a100-40gb")
P, M, CAP = 2, 4, 0.25 * 2**30
OPTIONS = SynthOptions(placements=("standard", "v"), time_limit=0.5, optimize="block")


def costs_for(spec):
    problems = {}

    def get(placement: Placement, k: int):
        key = (placement.stage_to_rank, k)
        if key not in problems:
            problems[key] = build_problem(spec, HW, placement, M, k=k)
        return problems[key]

    return get


def one_f_one_b(layers: int) -> tuple[float, float]:
    """1F1B's simulated peak (bytes) and MFU at ``layers``, from the cost model directly."""
    problem = build_problem(BASE.with_(layers=layers), HW, Placement.standard(P), M)
    timeline = simulate(build("1f1b", P, M, costs=problem.costs), problem.costs)
    return max(timeline.peak), problem.throughput(timeline.makespan).mfu


def library_best_mfu(spec) -> float:
    """The best MFU of any whole-microbatch library schedule that fits ``CAP`` (0 when none does)."""
    get, best = costs_for(spec), 0.0
    for name, baseline in BASELINES.items():
        if "k" in baseline.options:
            continue
        try:
            shape = build(name, P, M)
            problem = get(shape.placement, 1)
        except ValueError:
            continue
        timeline = simulate(build(name, P, M, costs=problem.costs), problem.costs)
        if max(timeline.peak) <= CAP * (1 + 1e-9):
            best = max(best, problem.throughput(timeline.makespan).mfu)
    return best


def largest_1f1b_fit() -> int:
    """The plain loop: the largest layer count whose 1F1B peak is within the cap."""
    fitting = [layers for layers in range(1, 65) if one_f_one_b(layers)[0] <= CAP * (1 + 1e-9)]
    assert fitting and fitting[-1] < 64
    return fitting[-1]


def test_largest_brackets_then_bisects():
    asked = []

    def trains(n):
        asked.append(n)
        return n <= 37

    assert largest(trains, 10, 1, 640) == (37, False)
    assert asked[:4] == [10, 20, 40, 30] and len(asked) <= 9  # 10, 20, 40, then 30 35 38 36 37
    assert largest(lambda n: n <= 37, 100, 1, 640) == (37, False)  # halves to 50, 25, then bisects
    assert largest(lambda n: True, 10, 1, 64) == (64, True)
    assert largest(lambda n: False, 10, 3, 64) == (None, False)


@pytest.fixture(scope="module")
def result():
    return max_model(BASE, HW, P, m=M, mem_cap=CAP, options=OPTIONS)


def check_fits_and_meets(answer, floor_mfu: float) -> None:
    """The answer's schedule, simulated on costs built here, is within the cap and at the floor."""
    schedule = answer.candidate.schedule
    problem = costs_for(BASE.with_(layers=answer.spec.layers))(schedule.placement, schedule.k)
    timeline = simulate(schedule, problem.costs)
    assert max(timeline.peak) <= CAP * (1 + 1e-9)
    assert problem.throughput(timeline.makespan).mfu >= floor_mfu * (1 - 1e-9)


def test_the_answer_fits_and_one_layer_more_does_not(result):
    ours = result.answer("synthesis")
    check_fits_and_meets(ours, result.floor_value)
    bigger = BASE.with_(layers=ours.spec.layers + 1)
    try:
        again = synthesize(lambda pl, k: costs_for(bigger)(pl, k).costs, P, M, CAP, options=OPTIONS)
    except NoScheduleFits:
        return  # nothing fits one layer more
    chosen = again.chosen
    mfu = costs_for(bigger)(chosen.schedule.placement, chosen.schedule.k).throughput(chosen.makespan).mfu
    assert max(mfu, library_best_mfu(bigger)) < result.floor_value


def test_1f1b_answer_and_floor_are_the_plain_loops(result):
    layers = largest_1f1b_fit()
    assert result.answer("1f1b").spec.layers == layers
    assert result.floor_value == pytest.approx(one_f_one_b(layers)[1], rel=1e-9)
    assert result.floor_from.startswith(f"1f1b's on the largest size it fits: {layers} layers")
    # the library's best meets the floor wherever 1F1B does, and synthesis includes the library
    best = result.answer("best library").spec.layers
    assert layers <= best <= result.answer("synthesis").spec.layers
    assert result.ratio == result.answer("synthesis").params / result.answer("1f1b").params


def test_best_library_answer_is_the_last_size_the_library_meets(result):
    best = result.answer("best library")
    check_fits_and_meets(best, result.floor_value)
    assert library_best_mfu(BASE.with_(layers=best.spec.layers + 1)) < result.floor_value * (1 - 1e-9)


def test_memory_bound_answer_and_one_more_does_not_fit():
    # a floor every fitting schedule meets: the answer is where memory runs out
    found = max_model(BASE, HW, P, m=M, floor=Floor(mfu=0.01), mem_cap=CAP, options=OPTIONS)
    ours = found.answer("synthesis")
    check_fits_and_meets(ours, 0.01)
    bigger = BASE.with_(layers=ours.spec.layers + 1)
    with pytest.raises(NoScheduleFits):
        synthesize(lambda pl, k: costs_for(bigger)(pl, k).costs, P, M, CAP, options=OPTIONS)
    assert found.answer("1f1b").spec.layers == largest_1f1b_fit()


def test_hidden_scaling_keeps_head_width_and_grouping():
    # llama2-70b: 64 heads of 128, 8 KV heads (groups of 8), ffn 28672 at h 8192. Size 4 = 4 groups:
    # 32 heads, 4 KV heads, h = 32 * 128 = 4096, ffn 28672 * 4096 / 8192 = 14336 (= 112 * 128)
    family = Family(preset("llama2-70b"), Scale.HIDDEN)
    spec = family.spec(4)
    assert (spec.heads, spec.kv_heads, spec.hidden, spec.ffn, spec.layers) == (32, 4, 4096, 14336, 80)
    assert family.base_size == 8 and family.spec(8).hidden == 8192
    # llama2-13b, 41 heads: h 5248; ffn 13824 * 5248 / 5120 = 14169.6 = 110.7 * 128 -> 111 * 128 = 14208
    assert (Family(preset("llama2-13b"), Scale.HIDDEN).spec(41).hidden,
            Family(preset("llama2-13b"), Scale.HIDDEN).spec(41).ffn) == (5248, 14208)


def test_hidden_scale_answer_fits_and_one_head_more_does_not():
    found = max_model(BASE, HW, P, m=M, floor=Floor(mfu=0.01), scale="hidden", mem_cap=CAP, options=OPTIONS)
    ours = found.answer("synthesis")
    heads = ours.spec.heads
    assert ours.spec.hidden == 64 * heads  # head_dim 256 / 4 stays
    schedule = ours.candidate.schedule
    assert max(simulate(schedule, build_problem(ours.spec, HW, schedule.placement, M).costs).peak) <= CAP * (1 + 1e-9)
    # ffn: 704 per 256 of width, to the nearest multiple of 128 (the family's own 704 at its own 4 heads)
    ffn = 704 if heads + 1 == 4 else max(128, 128 * int(704 * 64 * (heads + 1) / 256 / 128 + 0.5))
    bigger = BASE.with_(hidden=64 * (heads + 1), heads=heads + 1, kv_heads=heads + 1, ffn=ffn)
    with pytest.raises(NoScheduleFits):
        synthesize(lambda pl, k: costs_for(bigger)(pl, k).costs, P, M, CAP, options=OPTIONS)


def test_a_floor_nobody_meets_is_a_clear_error():
    with pytest.raises(NothingTrains, match=r"MFU 99\.0%.*lower floor.*--offload-optimizer"):
        max_model(BASE, HW, P, m=M, floor=Floor(mfu=0.99), mem_cap=CAP, options=OPTIONS)
    with pytest.raises(ValueError, match="one floor"):
        Floor(mfu=0.3, at_least="1f1b")
    with pytest.raises(ValueError, match="unknown library schedule"):
        Floor(at_least="nope")


def test_optimizer_offload_grows_the_answer():
    # 18 -> 6 bytes per parameter on the GPU: 1F1B alone fits at least as many layers
    training = Training(offload_optimizer="states+master")
    on_gpu = max_model(BASE, HW, P, m=M, floor=Floor(mfu=0.01), mem_cap=CAP, options=OPTIONS)
    host = max_model(BASE, HW, P, m=M, floor=Floor(mfu=0.01), mem_cap=CAP, options=OPTIONS, training=training)
    assert host.answer("1f1b").spec.layers >= on_gpu.answer("1f1b").spec.layers
    assert host.answer("1f1b").throughput.step_overhead_ms > 0


# ------------------------------------------------------------------------------------------- CLI
def cli(argv):
    from synth.cli.max_model import add_max_model_arguments, max_model_command

    parser = argparse.ArgumentParser(prog="synth max-model")
    add_max_model_arguments(parser)
    return max_model_command(parser.parse_args(argv))


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256,
                                "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 704,
                                "vocab_size": 4096, "max_position_embeddings": 1024}))
    return path


SMALL = ["--gpu", "a100-40gb", "--stages", "2", "-m", "4", "--mem-cap", "0.25GiB", "--time-limit", "0.5",
         "--placement", "standard,v", "--optimize", "block"]


def test_cli_prints_the_table_and_the_ratio(config, capsys):
    assert cli(["--model", str(config), *SMALL]) == 0
    out, err = capsys.readouterr()
    assert "floor: MFU" in out and "1f1b's on the largest size it fits" in out
    header = next(line for line in out.splitlines() if line.startswith("contender"))
    assert header.split() == ["contender", "layers", "params", "schedule", "MFU", "tokens/s", "peak", "GiB",
                              "iteration", "ms"]
    rows = {line.split()[0] for line in out.splitlines()[out.splitlines().index(header) + 1:] if line}
    assert {"synthesis", "1f1b", "1f1b-recompute", "best"} <= rows
    assert "x 1F1B's parameters" in out
    assert "library:" in err and "solve:" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--mfu", "0.3", "--at-least", "1f1b"], "give one floor"),
    (["--costs", "c.json"], "needs --model"),
    (["--mem-cap", "1f1b*0.5"], "changes with the model's size"),
    (["--mfu", "99%"], "lower floor"),
])
def test_cli_bad_input_is_one_line(config, capsys, argv, message):
    assert cli(["--model", str(config), *SMALL, *argv]) == 1
    err = capsys.readouterr().err.rstrip().splitlines()
    assert err[-1].startswith("synth max-model: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)
    assert all(line.startswith("  ") for line in err[:-1])  # only progress lines before it
