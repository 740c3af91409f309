"""The cost model's numbers for llama2-13b on 8 x A100-40GB (seq 4096, micro-batch 1), laid out so
a reader can check them by hand. Writes benchmarks/results/costs.md.

Everything printed is computed by ``synth.costs``; the per-layer lines restate its formulas
(``synth/costs/formulas.py``) with the numbers plugged in.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ir import Placement, simulate  # noqa: E402
from synth.baselines import build  # noqa: E402
from synth.costs import PRESETS, build_problem, hardware, preset, total_params  # noqa: E402
from synth.costs.formulas import attention_pairs, block_params, layer_work  # noqa: E402
from synth.costs.report import describe, stage_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "costs.md"
GiB = 2**30
P, M = 8, 16


def hand_check(spec, hw) -> list[str]:
    s, b, h, f, e = spec.seq_len, spec.micro_batch, spec.hidden, spec.ffn, spec.dtype_bytes
    linear_weights = block_params(spec) - 2 * h
    pairs = attention_pairs(0, s)
    work = layer_work(spec, 0, s)
    rate = hw.flops_per_second(spec.dtype)
    return [
        f"- Linear weights per block: 4h^2 + 3hf = 4·{h}^2 + 3·{h}·{f} = {linear_weights:,}; "
        f"block parameters with the two RMSNorm weights: {block_params(spec):,}.",
        f"- Forward linear FLOPs per block: 2·b·s·weights = 2·{b}·{s}·{linear_weights:,} = "
        f"{2 * b * s * linear_weights:.4e}.",
        f"- Causal attention pairs s(s+1)/2 = {pairs:,}; attention FLOPs 4·b·q·pairs = {4 * b * h * pairs:.4e}.",
        f"- Per block F = {work.f:.4e}, B = linear + 2.5 × attention = {work.b:.4e}, W = linear = {work.w:.4e} FLOPs.",
        f"- Achieved rate: {hw.peak_flops / 1e12:.0f} TFLOP/s × efficiency {hw.efficiency} = "
        f"{rate / 1e12:.0f} TFLOP/s, so one block's F takes {1e3 * work.f / rate:.3f} ms.",
        f"- Activations per block (bytes, e = {e}): attention e·b·s·(h + h + q + 2kv + q) + 4·a·b·s = "
        f"{e * b * s * 6 * h + 4 * spec.heads * b * s:,}; MLP e·b·s·(2h + 3f) = {e * b * s * (2 * h + 3 * f):,}; "
        f"total {work.act:,.0f} = {work.act / GiB:.4f} GiB ({work.act / (b * s * h):.3f} sbh).",
        f"- wact per block (linear inputs + output grads, capped at act): {work.wact:,.0f} bytes.",
        f"- Static per rank: parameters × 18 bytes (bf16 weights 2 + fp32 grads 4 + Adam 12); a 5-block stage "
        f"holds {5 * block_params(spec):,} parameters = {5 * block_params(spec) * 18 / GiB:.2f} GiB.",
    ]


def main() -> None:
    spec, hw = preset("llama2-13b", seq_len=4096, micro_batch=1), hardware("a100-40gb")
    problem = build_problem(spec, hw, Placement.standard(P), M, mem_cap=hw.memory)
    timeline = simulate(build("1f1b", P, M), problem.costs)
    throughput = problem.throughput(timeline.makespan)
    sliced = build_problem(spec, hw, Placement.standard(P), M, k=4)
    lines = [
        "# Cost model: llama2-13b on 8 x A100-40GB",
        "",
        f"Made by `benchmarks/costs.py` (Python {platform.python_version()}, {platform.machine()}); pure "
        "arithmetic, no solver, no timing. No dropout; NVLink "
        f"{hw.p2p_bandwidth / 1e9:.0f} GB/s, host link {hw.host_bandwidth / 1e9:.1f} GB/s. The balanced partition "
        "is the even one here: a 32k-vocabulary head weighs less than a block.",
        "",
        describe(problem),
        "",
        *stage_table(problem),
        "",
        "## By hand",
        "",
        *hand_check(spec, hw),
        "",
        "## What it implies",
        "",
        f"- 1F1B (simulated, these costs): makespan {timeline.makespan:.1f} ms, bubble {timeline.bubble_ratio:.3f}, "
        f"{throughput.summary()}.",
        "- 1F1B peak memory per rank (GiB): " + ", ".join(f"{x / GiB:.1f}" for x in timeline.peak)
        + f" against {hw.memory / GiB:.0f} GiB: ranks "
        + ", ".join(str(r) for r, x in enumerate(timeline.peak) if x > hw.memory) + " do not fit.",
        f"- Seq1F1B slices (k=4, equal forward FLOPs): token bounds {sliced.bounds}; stage 0's F per slice "
        + ", ".join(f"{u.f:.2f}" for u in sliced.costs.units[0]) + " ms.",
        "",
        "## Parameter counts of the presets",
        "",
        "| preset | layers | hidden | heads (kv) | ffn | vocab | parameters |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {name} | {p.layers} | {p.hidden} | {p.heads} ({p.n_kv_heads}) | {p.ffn} | {p.vocab} | "
          f"{total_params(p):,} |" for name, p in PRESETS.items()),
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
