"""Synthesis quality (issues 5 and 13): for every cell of p in {4, 8, 16}, m in {2p, 4p, 8p}, three cost
tables and four memory caps, the makespan of the schedule synthesized from scratch (the library
excluded) against the best library schedule that fits the same cap. Writes benchmarks/results/synth_quality.md.

Cost model (stated so the numbers can be checked by hand):
- Activation memory only: every cost table has no static memory (``ir.Costs`` with ``static=()``),
  so the cap bounds activations (and whatever recompute/offload keep) alone.
- The cap of a cell is ``fraction x`` the largest per-rank peak of the ``1f1b`` baseline (standard
  placement, fused backward) simulated with the same costs, for fraction in {1/3, 1/2, 1, 2}.
- unit and zb-1.5b: the model of benchmarks/baselines.py, written again here for a placement
  (its helper ``even_split_costs`` takes a built schedule, and ``synthesize`` asks for costs by
  placement): one "full stage" is 1/p of the model; a placement with c stages per rank and k
  slices gets f = F / (c k), act = 1 / (c k) and so on per unit. unit: F = B = W = 1, no comm.
  zb-1.5b (Qi et al., arXiv 2401.10241, profiled 1.5B model): F 18.522, B 18.086, W 9.337,
  comm 0.601 ms per full stage. Memory in units of one full stage's activations for one
  microbatch (act = 1); W keeps wact = 14/34 of it after B; a recomputed unit keeps inp = 1/16;
  copying one full stage's activations to the host takes one forward time (copy bandwidth 1/F).
- llama2-13b: ``synth.costs.build_problem(preset("llama2-13b", seq_len=4096, micro_batch=1),
  hardware("a100-40gb"), placement, m, k)`` (balanced layer partition, ms and bytes, host link
  from the hardware preset), static memory stripped. Caps are reported in GiB. A placement whose
  stage count the 40 layers cannot fill (waves at p = 16: 64 stages) is skipped for that cell.
- Synthesis **from scratch**: ``synthesize`` with all four placements (standard, interleaved and
  waves with 2 chunks, V), split backward, recompute and offload allowed, CP-SAT, the default time
  limit for the whole search (``SynthOptions.time_limit``; the results file states it) and 60 ticks
  for the longest pass; k = 1; and the library excluded entirely (``baselines=False``: no library
  schedule is a candidate or a hint, as ``synth --no-library``). Then the same search with
  recompute and offload off (keep-only), to check that more options never give a slower schedule.
- The library: every k = 1 family of ``synth.baselines``, simulated exactly on the same costs; the
  best that fits the cap. The sequence-slicing families are not compared (k = 1 here).

Per cell: ratio = from-scratch makespan / best fitting library makespan; gap = (makespan - the
bound ``synthesize`` reports) / makespan.

Usage: ``python benchmarks/synth_quality.py [--quick] [--p 4 8] [--costs unit zb-1.5b] [--jobs 1]``.
``--quick`` runs p = 4, m = 2p only; a partial run (``--quick``, ``--p``, ``--costs``) writes no
results file unless ``--out`` names one. ``--jobs N`` solves N cells at a time. The default is 1:
the time limit is wall clock and each CP-SAT solve uses 2 workers, so on the 2-core machine two
cells at a time halve the run (108 cells: 11 min instead of about 20) but starve hard block
searches (e.g. p=16, m=64, llama2-13b, cap 1/2: no block found in the limit with 2 jobs, a block
found serially), which biases the quality numbers against synthesis.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ir import Costs, Placement, UnitCost, simulate  # noqa: E402
from synth.baselines import BASELINES  # noqa: E402
from synth.search import NoScheduleFits, SynthOptions, make_placement, synthesize  # noqa: E402

PS = (4, 8, 16)
M_FACTORS = (2, 4, 8)
FRACTIONS = ((1, 3), (1, 2), (1, 1), (2, 1))
WACT, INP = 14 / 34, 1 / 16
PER_STAGE = {
    "unit": {"f": 1.0, "b": 1.0, "w": 1.0, "comm": 0.0},
    "zb-1.5b": {"f": 18.522, "b": 18.086, "w": 9.337, "comm": 0.601},
}
COSTS = (*PER_STAGE, "llama2-13b")
OPTIONS = SynthOptions(placements=("standard", "interleaved", "v", "waves"), split_backward=True,
                       recompute=True, offload=True, solver="cpsat")
RESULTS = Path(__file__).resolve().parent / "results" / "synth_quality.md"
GiB = 2**30


def even_costs(placement: Placement, k: int, *, f: float, b: float, w: float, comm: float) -> Costs:
    """The docstring's even-split model for ``placement`` with ``k`` slices (no static memory)."""
    share = placement.p / (placement.num_stages * k)
    unit = UnitCost(f=f * share, b=b * share, w=w * share, act=share, wact=WACT * share, inp=INP * share, comm=comm)
    return Costs(tuple((unit,) * k for _ in range(placement.num_stages)), copy_bandwidth=1.0 / f)


def costs_function(label: str, m: int):
    """``costs_for(placement, k) -> ir.Costs`` for one of COSTS, static memory stripped."""
    if label in PER_STAGE:
        return lambda placement, k: even_costs(placement, k, **PER_STAGE[label])
    if label != "llama2-13b":
        raise ValueError(f"unknown costs {label!r}; use one of {', '.join(COSTS)}")
    from synth.costs import build_problem, hardware, preset

    spec, hw = preset("llama2-13b", seq_len=4096, micro_batch=1), hardware("a100-40gb")

    def costs_for(placement: Placement, k: int) -> Costs:
        return dataclasses.replace(build_problem(spec, hw, placement, m, k=k).costs, static=())

    return costs_for


def one_f_one_b_peak(costs_for, p: int, m: int) -> float:
    """Largest per-rank peak of the 1f1b baseline simulated with these costs."""
    costs = costs_for(Placement.standard(p), 1)
    return max(simulate(BASELINES["1f1b"](p, m, costs=costs), costs).peak)


def usable_placements(costs_for, p: int) -> tuple[tuple[str, ...], list[str]]:
    """The placements whose costs can be built (llama2-13b cannot fill 64 stages), and the rest."""
    ok, skipped = [], []
    for kind in OPTIONS.placements:
        try:
            costs_for(make_placement(kind, p, OPTIONS.chunks), 1)
        except ValueError as err:
            skipped.append(f"{kind}: {str(err).splitlines()[0]}")
        else:
            ok.append(kind)
    return tuple(ok), skipped


def library(costs_for, p: int, m: int, cap: float) -> tuple | None:
    """The best fitting library schedule (k = 1 families), simulated exactly: ``(name, makespan,
    peak)``, or None if none fits."""
    from ir import ScheduleError
    from ir.verify import MEMORY_RTOL

    best = None
    for name, baseline in BASELINES.items():
        if "k" in baseline.options:
            continue
        try:
            shape = baseline(p, m)
            costs = costs_for(shape.placement, 1)
            timeline = simulate(baseline(p, m, costs=costs), costs)
        except (ValueError, ScheduleError):
            continue
        if max(timeline.peak) <= cap * (1 + MEMORY_RTOL) and (best is None or timeline.makespan < best[1]):
            best = (name, timeline.makespan, max(timeline.peak))
    return best


def from_scratch(costs_for, p: int, m: int, cap: float, placements: tuple[str, ...], restricted: bool) -> dict:
    """``synthesize`` with the library excluded (neither candidate nor hint); ``restricted``: no
    recompute or offload either."""
    options = dataclasses.replace(OPTIONS, placements=placements, baselines=False,
                                  recompute=not restricted, offload=not restricted)
    began = time.perf_counter()
    try:
        result = synthesize(costs_for, p, m, cap, options=options)
    except NoScheduleFits as err:
        return {"fits": False, "seconds": time.perf_counter() - began, "smallest": err.smallest}
    chosen = result.chosen
    gap = result.gap
    return {"fits": True, "seconds": result.seconds, "placement": chosen.placement, "method": chosen.method,
            "makespan": chosen.makespan, "peak": chosen.peak, "gap": gap,
            "bound": None if result.bound is None else (result.bound.value, result.bound.source),
            "proven": gap is not None and gap <= 1e-9, "decisions": chosen.decisions()}


def run_cell(p: int, m: int, label: str, fraction: tuple[int, int], restricted: bool = True) -> dict:
    """One cell; a plain dict so it crosses process boundaries."""
    costs_for = costs_function(label, m)
    peak = one_f_one_b_peak(costs_for, p, m)
    cap = peak * fraction[0] / fraction[1]
    placements, skipped = usable_placements(costs_for, p)
    row = {"p": p, "m": m, "costs": label, "fraction": fraction, "cap": cap, "peak_1f1b": peak,
           "skipped": skipped, "baseline": library(costs_for, p, m, cap),
           "scratch": from_scratch(costs_for, p, m, cap, placements, restricted=False), "keep_only": None}
    if restricted and (OPTIONS.recompute or OPTIONS.offload):
        row["keep_only"] = from_scratch(costs_for, p, m, cap, placements, restricted=True)
    row["seconds"] = row["scratch"]["seconds"] + (row["keep_only"] or {"seconds": 0.0})["seconds"]
    return row


def ratio(row: dict) -> float | None:
    """From-scratch makespan / best fitting baseline makespan; None where either side is missing."""
    if row["baseline"] is None or not row["scratch"]["fits"]:
        return None
    return row["scratch"]["makespan"] / row["baseline"][1]


def monotone(row: dict) -> bool | None:
    """More options (recompute, offload) never slower than the keep-only search; None if not run
    or the keep-only search found nothing (then nothing to compare)."""
    keep = row["keep_only"]
    if keep is None or not keep["fits"]:
        return None
    return row["scratch"]["fits"] and row["scratch"]["makespan"] <= keep["makespan"] * (1 + 1e-9)


def show_cap(row: dict) -> str:
    if row["costs"] == "llama2-13b":
        return f"{row['cap'] / GiB:.2f} GiB"
    return f"{row['cap']:.3f}"


def show_fraction(fraction: tuple[int, int]) -> str:
    return f"{fraction[0]}/{fraction[1]}" if fraction[1] != 1 else str(fraction[0])


def progress(row: dict, done: int, total: int) -> str:
    s, base, r = row["scratch"], row["baseline"], ratio(row)
    synth = f"{s['placement']}/{s['method']} {s['makespan']:.3f}" if s["fits"] else "none fits"
    keep = row["keep_only"]
    keep_text = "" if keep is None else f", keep-only {keep['makespan']:.3f}" if keep["fits"] else ", keep-only none"
    return (f"[{done}/{total}] p={row['p']} m={row['m']} {row['costs']} cap {show_fraction(row['fraction'])}x: "
            f"from scratch {synth}, baseline {f'{base[0]} {base[1]:.3f}' if base else 'none fits'}, "
            f"ratio {'-' if r is None else f'{r:.4f}'}{keep_text}, {row['seconds']:.1f}s")


def summary(rows: list[dict], wall: float, jobs: int) -> list[str]:
    eps = 1e-9
    rs = [(row, r) for row in rows if (r := ratio(row)) is not None]
    tight = [(row, r) for row, r in rs if row["fraction"][0] <= row["fraction"][1]]
    checks = [m for m in (monotone(row) for row in rows) if m is not None]
    methods: dict[str, int] = {}
    for row in rows:
        if row["scratch"]["fits"]:
            methods[row["scratch"]["method"]] = methods.get(row["scratch"]["method"], 0) + 1
    gaps = [row["scratch"]["gap"] for row in rows if row["scratch"]["fits"] and row["scratch"]["gap"] is not None]
    try:
        from ortools import __version__ as ortools_version
    except ImportError:  # pragma: no cover
        ortools_version = "?"
    values = [r for _, r in rs]
    seconds = [row["scratch"]["seconds"] for row in rows]
    return [
        f"- Cells: {len(rows)}; both a from-scratch schedule and a library schedule fit in {len(rs)}; only the "
        f"from-scratch search fits: {sum(row['scratch']['fits'] and row['baseline'] is None for row in rows)}; "
        f"only the library: {sum(not row['scratch']['fits'] and row['baseline'] is not None for row in rows)}.",
        f"- From scratch (library excluded, neither candidate nor hint) at or below the best fitting library "
        f"schedule: {sum(r <= 1 + eps for r in values)} of {len(values)} cells; below 0.99 of it in "
        f"{sum(r < 0.99 for _, r in tight)} of {len(tight)} cells at caps <= 1x 1F1B; "
        + (f"median ratio {statistics.median(values):.4f}, min {min(values):.4f}, max {max(values):.4f}."
           if values else "no ratios."),
        "- By method of the from-scratch winner: " + ", ".join(f"{k} {v}" for k, v in sorted(methods.items())) + ".",
        "- Gap to the lower bound (analytic, or the solver's where its data are exact): median "
        + (f"{100 * statistics.median(gaps):.1f}%, max {100 * max(gaps):.1f}%; optimal for its placement (gap 0) in "
           f"{sum(g <= eps for g in gaps)} of {len(gaps)} cells." if gaps else "none."),
        f"- More options never slower: allowing recompute and offload gave a from-scratch schedule no slower than "
        f"the keep-only search in {sum(checks)} of {len(checks)} cells where the keep-only search fits"
        + (f" (slower in: {', '.join(_where(row) for row in rows if monotone(row) is False)})" if not all(checks)
           else "") + ".",
        "- Search time per cell (from scratch): median "
        f"{statistics.median(seconds):.1f} s, max {max(seconds):.1f} s.",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, OR-Tools "
        f"{ortools_version}; CP-SAT with 2 workers; time limit {OPTIONS.time_limit:g} s for the whole search "
        f"(`SynthOptions.time_limit`), {OPTIONS.ticks} ticks for the longest pass; {jobs} cell(s) at a time; "
        f"whole run {wall / 60:.1f} min.",
    ]


def _where(row: dict) -> str:
    return f"p={row['p']} m={row['m']} {row['costs']} {show_fraction(row['fraction'])}"


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| p | m | cap x 1F1B | cap | from scratch | makespan | gap | recompute/offload | best fitting baseline "
        "| baseline makespan | ratio | keep-only from scratch | search s |",
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        s, base, r, keep = row["scratch"], row["baseline"], ratio(row), row["keep_only"]
        scratch = (f"{s['placement']} ({s['method']}) | {s['makespan']:.3f} | "
                   + ("-" if s["gap"] is None else f"{100 * s['gap']:.1f}%") + f" | {s['decisions']} | "
                   if s["fits"] else "nothing fits | - | - | - | ")
        keep_text = "-" if keep is None else f"{keep['makespan']:.3f}" if keep["fits"] else "nothing fits"
        lines.append(
            f"| {row['p']} | {row['m']} | {show_fraction(row['fraction'])} | {show_cap(row)} | {scratch}"
            + (f"{base[0]} | {base[1]:.3f} | " if base else "- | - | ")
            + ("-" if r is None else f"{r:.4f}") + f" | {keep_text} | {row['seconds']:.1f} |")
    return lines


def report(rows: list[dict], wall: float, jobs: int, title_note: str) -> str:
    skipped = sorted({(row["costs"], row["p"], s) for row in rows for s in row["skipped"]})
    lines = [
        "# Synthesis quality: synthesized from scratch vs the best fitting library schedule",
        "",
        f"Made by `benchmarks/synth_quality.py`{title_note}. Costs and caps as stated in the script's docstring: "
        "activation memory only (no static memory), cap = fraction x the largest per-rank peak of 1F1B simulated "
        "with the same costs; unit and zb-1.5b memory in full-stage activations, llama2-13b in GiB. Makespans are "
        "simulated (`ir.simulate`), so they are exact for the cost model; solve times are wall clock and depend on "
        "the machine (CP-SAT under a time limit is not deterministic).",
        "",
        "**From scratch** is `synthesize` with the library excluded entirely (`baselines=False`, as `--no-library`): "
        "no library schedule is a candidate or a hint. What `synth` returns is never slower than the best fitting "
        "library schedule, because the library is its safety net; this table measures synthesis without it. "
        "Ratio = from-scratch makespan / best fitting library makespan. Gap = (makespan - lower bound) / makespan, "
        "for the bound `synth` reports on the winner's placement. Keep-only = the same from-scratch search with "
        "recompute and offload off (more options must never give a slower schedule).",
        "",
        "## Summary",
        "",
        *summary(rows, wall, jobs),
        "",
    ]
    if skipped:
        lines += ["Placements skipped (their costs cannot be built):", ""]
        lines += [f"- {label}, p={p}: {why}" for label, p, why in skipped]
        lines.append("")
    for label in COSTS:
        part = [row for row in rows if row["costs"] == label]
        if part:
            lines += [f"## {label}", "", *table(part), ""]
    return "\n".join(lines)


def cells(ps, labels, quick: bool) -> list[tuple]:
    out = []
    for label in labels:
        for p in ps:
            for factor in (M_FACTORS[:1] if quick else M_FACTORS):
                for fraction in FRACTIONS:
                    out.append((p, factor * p, label, fraction))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="p = 4, m = 2p only (smoke run)")
    parser.add_argument("--p", type=int, nargs="+", choices=PS, help="only these p")
    parser.add_argument("--costs", nargs="+", choices=COSTS, help="only these cost tables")
    parser.add_argument("--no-keep-only", action="store_true",
                        help="skip the keep-only search of each cell (the more-options-never-slower check)")
    parser.add_argument("--jobs", type=int, default=1, help="cells solved at a time (default 1; see the docstring)")
    parser.add_argument("--out", type=Path, help="markdown output (default: benchmarks/results/synth_quality.md "
                        "for a full run, none for a partial one)")
    args = parser.parse_args(argv)
    ps = (4,) if args.quick else tuple(args.p or PS)
    labels = tuple(args.costs or COSTS)
    todo = [(*cell, not args.no_keep_only) for cell in cells(ps, labels, args.quick)]
    partial = args.quick or ps != PS or labels != COSTS
    out = args.out or (None if partial else RESULTS)
    print(f"{len(todo)} cells, {args.jobs} at a time", flush=True)
    began = time.perf_counter()
    rows = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for row in pool.map(run_cell, *zip(*todo, strict=True)):
                rows.append(row)
                print(progress(row, len(rows), len(todo)), flush=True)
    else:
        for cell in todo:
            rows.append(run_cell(*cell))
            print(progress(rows[-1], len(rows), len(todo)), flush=True)
    wall = time.perf_counter() - began
    scope = ", ".join(f"p={p}" for p in ps) + (", m=2p" if args.quick else "") + "; " + ", ".join(labels)
    note = f" (partial run: {scope})" if partial else " (full run)"
    text = report(rows, wall, args.jobs, note)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {out}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
