"""The largest model that trains at 1F1B's throughput (issue 16, ``synth max-model``). Writes
benchmarks/results/max_model.md.

The setting: llama2-13b's family (h 5120, 40 heads, ffn 13824, vocab 32000, seq 4096, micro-batch 1;
the layer count scaled) on 8 x A100-40GB, m = 32 microbatches, the GPU's 40 GiB as the cap, the floor
``--at-least 1f1b`` (1F1B's MFU on the largest size 1F1B fits, found over the library alone). Four
cells: optimizer state on the GPU (18 bytes per parameter) or with ``--offload-optimizer
states+master`` (6 bytes per parameter on the GPU, the host step charged per iteration), each with
synthesis including the library and from scratch (``baselines=False``, ``--no-library``; the
library contenders are evaluated the same in both). Each cell is ``synth.research.max_model`` with
every placement, CP-SAT, ``optimize="auto"`` and ``--time-limit`` seconds per solve (each
``synthesize`` call); the cells run one after another, each from-scratch cell three times (the
smallest answer reported, every run's listed). Recorded per cell: every contender's
largest size with its schedule, MFU, tokens/s, peak and iteration time, the ratio to 1F1B in
parameters, whether synthesis's schedule is proven optimal on its placement (``Synthesis.gap`` 0 or
the full horizon proven), each evaluated size's verdict with its solve's gap, and the wall time.

Usage: ``python benchmarks/max_model.py [--time-limit 8] [--model llama2-13b --stages 8 -m 32 --seq-len N]
[--out FILE]``. A run other than the default setting writes no results file unless ``--out`` names one.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth.costs import Training, hardware, preset  # noqa: E402
from synth.research.max_model import Floor, MaxModel, max_model, params_text  # noqa: E402
from synth.search import DEFAULT_TIME_LIMIT, PLACEMENTS, SynthOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "max_model.md"
DEFAULTS = {"model": "llama2-13b", "gpu": "a100-40gb", "stages": 8, "microbatches": 32, "seq_len": None,
            "time_limit": DEFAULT_TIME_LIMIT}
CELLS = (("none", True), ("none", False), ("states+master", True), ("states+master", False))
REPEATS = 3  # runs of each from-scratch cell (time-limited solves); the worst answer is reported


def run_cell(args: argparse.Namespace, offload: str, library: bool) -> MaxModel:
    spec = preset(args.model, **({"seq_len": args.seq_len} if args.seq_len else {}))
    options = SynthOptions(placements=PLACEMENTS, optimize="auto", time_limit=args.time_limit, baselines=library)
    return max_model(spec, hardware(args.gpu), args.stages, m=args.microbatches, floor=Floor(at_least="1f1b"),
                     training=Training(offload_optimizer=offload), options=options,
                     progress=lambda probe: print(probe.line(), flush=True))


def summary_row(offload: str, library: bool, r: MaxModel) -> str:
    ours = r.answer("synthesis")

    def size(contender: str) -> str:
        a = r.answer(contender)
        return "none" if a.size is None else f"{a.spec.layers} ({params_text(a.params)})"

    proven = "yes" if ours.proven else "no"
    gap = "" if ours.gap is None else f" (gap {100 * ours.gap:.1f}%)"
    solves = sum(p.kind == "solve" for p in r.probes)
    ratio = "—" if r.ratio is None else f"{r.ratio:.2f}x"
    return (f"| {offload} | {'with the library' if library else 'from scratch'} | {100 * r.floor_value:.1f}% | "
            f"{size('synthesis')} | {ours.candidate.name} | {100 * ours.throughput.mfu:.1f}% | {size('1f1b')} | "
            f"{ratio} | {size('1f1b-recompute')} | {size('best library')} | {proven}{gap} | {solves} | "
            f"{r.seconds:.0f} |")


def probe_lines(r: MaxModel) -> list[str]:
    return [p.line().strip() for p in r.probes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULTS["model"])
    parser.add_argument("--gpu", default=DEFAULTS["gpu"])
    parser.add_argument("--stages", type=int, default=DEFAULTS["stages"])
    parser.add_argument("-m", "--microbatches", type=int, default=DEFAULTS["microbatches"])
    parser.add_argument("--seq-len", type=int, default=DEFAULTS["seq_len"])
    parser.add_argument("--time-limit", type=float, default=DEFAULTS["time_limit"], help="seconds per solve")
    parser.add_argument("--out", type=Path, help=f"results file (default {RESULTS} for the default setting)")
    args = parser.parse_args(argv)
    partial = any(getattr(args, name) != value for name, value in DEFAULTS.items() if name != "time_limit")
    out = args.out or (None if partial else RESULTS)
    began = time.perf_counter()
    cells = []
    repeats: dict[tuple[str, bool], list[MaxModel]] = {}
    for offload, library in CELLS:
        runs = []
        for index in range(1 if library else REPEATS):  # from scratch, time-limited: repeated, worst reported
            print(f"== optimizer offload {offload}, {'with the library' if library else 'from scratch'} "
                  f"#{index + 1}", flush=True)
            runs.append(run_cell(args, offload, library))
            print("\n".join(runs[-1].lines()), flush=True)
        repeats[(offload, library)] = runs
        cells.append((offload, library, min(runs, key=lambda r: r.answer("synthesis").params)))
    wall = time.perf_counter() - began
    setting = (f"`synth max-model --model {args.model} --gpu {args.gpu} --stages {args.stages} -m {args.microbatches}"
               + (f" --seq-len {args.seq_len}" if args.seq_len else "")
               + f" --at-least 1f1b --time-limit {args.time_limit:g}`, with `--offload-optimizer states+master` "
               "and `--no-library` as the cells say")
    lines = [
        "# The largest model that trains at 1F1B's throughput (`synth max-model`)",
        "",
        f"Written by `benchmarks/max_model.py` (its docstring states the setting). Each cell is {setting}.",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}. Solver: "
        f"CP-SAT, every placement, optimize auto, {args.time_limit:g} s per solve (each `synthesize` call), the "
        f"cells one at a time. Wall time of the whole run: {wall:.0f} s.",
        "",
        "Proven: synthesis's schedule at its answer is optimal on its placement (`Synthesis.gap` 0, or the full "
        "horizon proven there). \"Static memory alone is over the cap\" is exact; a solved size's \"nothing fits\" "
        "or \"below the floor\" is the time-limited search's verdict, not a proof (each solved size's gap is in "
        "the details).",
        "",
        "| optimizer state | synthesis | floor (1F1B's MFU) | synthesis layers | its schedule | MFU | 1F1B layers | "
        "ratio (params) | 1F1B-recompute layers | best library layers | proven | solves | wall s |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        *(summary_row(offload, library, r) for offload, library, r in cells),
    ]
    for offload, library, r in cells:
        runs = repeats[(offload, library)]
        every = "" if len(runs) == 1 else (
            f"{len(runs)} runs; synthesis's answer in each: "
            + ", ".join(f"{x.answer('synthesis').spec.layers} layers" if x.answer("synthesis").size else "none"
                        for x in runs) + "; the smallest (worst) is shown.")
        lines += ["", f"## Optimizer state {offload}, synthesis {'with the library' if library else 'from scratch'}",
                  "", *([every, ""] if every else []), "```", *r.lines(), "```", "", "Each evaluated size, in order:",
                  "", "```", *probe_lines(r), "```"]
    text = "\n".join(lines) + "\n"
    if out is None:
        print("(not the default setting: no results file written; give --out to write one)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
