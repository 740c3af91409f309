"""Tables of a `Problem`'s costs, as `synth costs` prints them and benchmarks/costs.py records them."""

from __future__ import annotations

from synth.costs.problem import Problem

__all__ = ["costs_report", "describe", "stage_table"]

GiB, MiB = 2**30, 2**20


def describe(problem: Problem) -> str:
    """One paragraph: model, microbatch shape, GPU and how the layers were cut."""
    spec, hw = problem.spec, problem.hardware
    kv = f" ({spec.n_kv_heads} kv)" if spec.n_kv_heads != spec.heads else ""
    return (
        f"{spec.name}: {spec.layers} layers, h {spec.hidden}, {spec.heads} heads{kv}, ffn {spec.ffn}"
        f"{' gated' if spec.gated else ''}, vocab {spec.vocab}; seq {spec.seq_len}, micro-batch {spec.micro_batch}, "
        f"{spec.dtype}, {'fused' if spec.flash_attention else 'plain'} attention. "
        f"GPU {hw.name}: {hw.peak_flops / 1e12:.0f} TFLOP/s peak x efficiency {hw.efficiency:g}, "
        f"{hw.memory / GiB:.1f} GiB. {problem.p} ranks, {problem.placement.num_stages} stages "
        f"({problem.placement.kind.value}), layers per stage {list(problem.layers_per_stage)}, "
        f"{problem.k} slice(s), {problem.m} microbatches. {_state_text(problem)}"
    )


def _state_text(problem: Problem) -> str:
    """Where the model states live, in one sentence."""
    training, dtype = problem.training, problem.spec.dtype
    text = f"Model states {training.bytes_per_param(dtype):g} bytes/param on the GPU"
    if training.zero1:
        text += f" (optimizer sharded over dp={training.dp})"
    if training.offload_optimizer.value != "none":
        text += (f", {training.host_bytes_per_param(dtype):g} on the host (--offload-optimizer "
                 f"{training.offload_optimizer.value})")
    return text + "."


def stage_table(problem: Problem) -> list[str]:
    """A markdown table, one row per stage and slice: pass times (ms), bytes, comm, static memory."""
    k = problem.k
    rows = [("| stage | slice | " if k > 1 else "| stage | ")
            + "layers | F ms | B ms | W ms | act GiB | wact GiB | inp MiB | comm ms | offload ms | static GiB (rank) |",
            "| ---: | " + ("---: | " if k > 1 else "") + "---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
            "---: | ---: |"]
    for s, row in enumerate(problem.costs.units):
        rank = problem.placement.rank_of(s)
        for j, u in enumerate(row):
            copy = u.act / problem.costs.copy_bandwidth
            rows.append(f"| {s} | " + (f"{j} | " if k > 1 else "")
                        + f"{problem.layers_per_stage[s]} | {u.f:.2f} | {u.b:.2f} | {u.w:.2f} | {u.act / GiB:.3f} | "
                        f"{u.wact / GiB:.3f} | {u.inp / MiB:.2f} | {u.comm:.3f} | {copy:.1f} | "
                        f"{problem.costs.static[rank] / GiB:.2f} ({rank}) |")
    return rows


def costs_report(problem: Problem) -> str:
    """What `synth costs` prints: the description, the stage table, totals, and 1F1B on these costs
    (Seq1F1B with the same slices when k > 1; for placements where they apply) so a reader sees
    whether memory binds."""
    from ir import simulate
    from synth.costs.formulas import total_params

    hw = problem.hardware
    lines = [describe(problem), "", *stage_table(problem), "",
             f"parameters {total_params(problem.spec):,}; model FLOPs per microbatch {problem.model_flops:.4e}; "
             f"static memory per rank (GiB): " + ", ".join(f"{x / GiB:.2f}" for x in problem.costs.static)]
    if problem.training.offload_optimizer.value != "none":
        step = problem.step_overhead
        mode = "overlapped, the slowest counts" if step.overlap else "one after another"
        lines.append("host memory per rank for optimizer state (GiB): "
                     + ", ".join(f"{x / GiB:.2f}" for x in problem.host_bytes)
                     + f"; host optimizer step {step.total_ms:.1f} ms per iteration (gradients to host "
                       f"{step.to_host_ms:.1f} ms, host Adam {step.update_ms:.1f} ms, weights back "
                       f"{step.to_device_ms:.1f} ms, {mode}; slowest rank), added to every makespan")
    if problem.placement.kind.value == "standard":
        from synth.baselines import build

        name, label = ("1f1b", "1F1B") if problem.k == 1 else ("seq1f1b", f"Seq1F1B (k={problem.k})")
        timeline = simulate(build(name, problem.p, problem.m, **({"k": problem.k} if problem.k > 1 else {})),
                            problem.costs)
        over = [r for r, peak in enumerate(timeline.peak) if peak > hw.memory]
        lines.append(f"{label} on these costs: makespan {timeline.makespan:.1f} ms, "
                     f"bubble {timeline.bubble_ratio:.3f}, "
                     f"{problem.throughput(timeline.makespan).summary()}; peak per rank (GiB) "
                     + ", ".join(f"{x / GiB:.1f}" for x in timeline.peak)
                     + (f"; ranks {over} exceed the {hw.memory / GiB:.1f} GiB of a {hw.name}" if over
                        else f"; fits the {hw.memory / GiB:.1f} GiB of a {hw.name}"))
    return "\n".join(lines)
