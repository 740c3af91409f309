"""Synthesis quality (issue 5): for every cell of p in {4, 8, 16}, m in {2p, 4p, 8p}, three cost
tables and four memory caps, the synthesized schedule's makespan against the best library schedule
that fits the same cap. Writes benchmarks/results/synth_quality.md.

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
- Synthesis: ``synthesize`` with all four placements (standard, interleaved and waves with 2
  chunks, V), split backward, recompute and offload allowed, CP-SAT, the default time limit per
  block (``SynthOptions.time_limit``; the results file states it) and 60 ticks for the longest
  pass; k = 1 (the sequence-slicing baselines are
  not compared, as ``synthesize`` compares like with like).

Per cell: the raw ratio is the best fitting synthesized makespan over the best fitting baseline
makespan (before the safety net); the chosen ratio is what ``synthesize`` returns (``chosen``, the
safety net included) over the same baseline, so it is <= 1 by construction.

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


def run_cell(p: int, m: int, label: str, fraction: tuple[int, int]) -> dict:
    """One cell; a plain dict so it crosses process boundaries."""
    costs_for = costs_function(label, m)
    peak = one_f_one_b_peak(costs_for, p, m)
    cap = peak * fraction[0] / fraction[1]
    placements, skipped = usable_placements(costs_for, p)
    row = {"p": p, "m": m, "costs": label, "fraction": fraction, "cap": cap, "peak_1f1b": peak,
           "skipped": skipped, "no_block": [], "synth": None, "baseline": None, "chosen": None, "blocks": [],
           "nothing_fits": False}
    began = time.perf_counter()
    try:
        result = synthesize(costs_for, p, m, cap, options=dataclasses.replace(OPTIONS, placements=placements))
    except NoScheduleFits as err:
        row.update(nothing_fits=True, seconds=time.perf_counter() - began, smallest=err.smallest)
        return row
    row["seconds"] = result.seconds
    row["blocks"] = [(c.placement, c.block.proven, c.block.solve_seconds, c.fits) for c in result.synthesized]
    row["no_block"] = [(name.removeprefix("synth/"), why) for name, why in result.skipped if name.startswith("synth/")]
    best, base = result.best_synthesized, result.best_baseline
    if best is not None:
        row["synth"] = (best.placement, best.makespan, best.block.proven, best.peak)
    if base is not None:
        row["baseline"] = (base.name, base.makespan, base.peak)
    row["chosen"] = (result.chosen.name, result.chosen.makespan)
    return row


def ratios(row: dict) -> tuple[float | None, float | None]:
    """(raw synth / baseline, chosen / baseline); None where either side is missing."""
    if row["baseline"] is None:
        return None, None
    base = row["baseline"][1]
    raw = row["synth"][1] / base if row["synth"] is not None else None
    return raw, row["chosen"][1] / base


def only_synth(row: dict) -> bool:
    return row["synth"] is not None and row["baseline"] is None


def show_cap(row: dict) -> str:
    if row["costs"] == "llama2-13b":
        return f"{row['cap'] / GiB:.2f} GiB"
    return f"{row['cap']:.3f}"


def show_fraction(fraction: tuple[int, int]) -> str:
    return f"{fraction[0]}/{fraction[1]}" if fraction[1] != 1 else str(fraction[0])


def max_block_seconds(row: dict) -> float:
    return max((s for _, _, s, _ in row["blocks"]), default=0.0)


def progress(row: dict, done: int, total: int) -> str:
    raw, chosen = ratios(row)
    synth = f"{row['synth'][0]} {row['synth'][1]:.3f}" if row["synth"] else "none fits"
    base = f"{row['baseline'][0]} {row['baseline'][1]:.3f}" if row["baseline"] else "none fits"
    ratio = f"raw {raw:.4f}" if raw is not None else "raw -"
    return (f"[{done}/{total}] p={row['p']} m={row['m']} {row['costs']} cap {show_fraction(row['fraction'])}x: "
            f"synth {synth}, baseline {base}, {ratio}, {row['seconds']:.1f}s (max block "
            f"{max_block_seconds(row):.2f}s)")


def summary(rows: list[dict], wall: float, jobs: int) -> list[str]:
    raws = [r for r in (ratios(row)[0] for row in rows) if r is not None]
    chosen = [c for c in (ratios(row)[1] for row in rows) if c is not None]
    blocks = [b for row in rows for b in row["blocks"]]
    proven = sum(1 for b in blocks if b[1])
    failed = [f for row in rows for f in row["no_block"]]
    failed_why: dict[str, int] = {}
    for _, why in failed:
        failed_why[why] = failed_why.get(why, 0) + 1
    best_proven = [row["synth"][2] for row in rows if row["synth"] is not None]
    slowest = max(rows, key=max_block_seconds)
    eps = 1e-9
    try:
        from ortools import __version__ as ortools_version
    except ImportError:  # pragma: no cover
        ortools_version = "?"
    lines = [
        f"- Cells: {len(rows)}; both a synthesized and a baseline schedule fit in {len(raws)}.",
        f"- Raw ratio (best synthesized / best fitting baseline, before the safety net) <= 1.00 in "
        f"{sum(r <= 1 + eps for r in raws)} of {len(raws)} cells, < 1.00 in {sum(r < 1 - eps for r in raws)}; "
        + (f"median {statistics.median(raws):.4f}, min {min(raws):.4f}, max {max(raws):.4f}." if raws else "none."),
        "- Chosen ratio (what `synthesize` returns, safety net included): max "
        + (f"{max(chosen):.4f}" if chosen else "-") + f" over {len(chosen)} cells; synthesis chosen in "
        f"{sum(1 for row in rows if row['chosen'] and row['chosen'][0].startswith('synth/'))} cells.",
        f"- Only synthesis fits: {sum(only_synth(row) for row in rows)} cells; only a baseline fits: "
        f"{sum(row['baseline'] is not None and row['synth'] is None for row in rows)}; nothing fits: "
        f"{sum(row['nothing_fits'] for row in rows)}.",
        f"- Block searches: {len(blocks) + len(failed)} (one per usable placement and cell); {len(blocks)} gave a "
        f"block, {proven} of them proven optimal (for the tick size); {len(failed)} gave none ("
        + (", ".join(f"{n} x {why}" for why, n in sorted(failed_why.items(), key=lambda x: -x[1])) or "-")
        + f"). Best synthesized schedule proven in {sum(best_proven)} of {len(best_proven)} cells.",
        f"- Max block solve time: {max_block_seconds(slowest):.2f} s (p={slowest['p']}, m={slowest['m']}, "
        f"{slowest['costs']}, cap {show_fraction(slowest['fraction'])}x; target < 2 s for p <= 16); blocks over 2 s: "
        f"{sum(1 for b in blocks if b[2] >= 2.0)}. Median search time per cell "
        f"{statistics.median(row['seconds'] for row in rows):.1f} s, max {max(row['seconds'] for row in rows):.1f} s.",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, OR-Tools "
        f"{ortools_version}; CP-SAT with 2 workers, time limit {OPTIONS.time_limit:g} s per block, "
        f"{OPTIONS.ticks} ticks for the longest pass; {jobs} cell(s) at a time; whole run {wall / 60:.1f} min.",
    ]
    return lines


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| p | m | costs | cap x 1F1B | cap | best synthesized | proven | synth makespan | best fitting baseline "
        "| baseline makespan | raw ratio | chosen ratio | only synth fits | no block | search s | max block s |",
        "| ---: | ---: | --- | ---: | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        raw, chosen = ratios(row)
        synth = row["synth"]
        base = row["baseline"]
        lines.append(
            f"| {row['p']} | {row['m']} | {row['costs']} | {show_fraction(row['fraction'])} | {show_cap(row)} | "
            + (f"{synth[0]} | {'yes' if synth[2] else 'no'} | {synth[1]:.3f} | " if synth else "- | - | - | ")
            + (f"{base[0]} | {base[1]:.3f} | " if base else "- | - | ")
            + (f"{raw:.4f}" if raw is not None else "-") + " | "
            + (f"{chosen:.4f}" if chosen is not None else "-") + " | "
            + ("yes" if only_synth(row) else ("nothing fits" if row["nothing_fits"] else "")) + " | "
            + ", ".join(kind for kind, _ in row["no_block"]) + " | "
            + f"{row['seconds']:.1f} | {max_block_seconds(row):.2f} |")
    return lines


def report(rows: list[dict], wall: float, jobs: int, title_note: str) -> str:
    skipped = sorted({(row["costs"], row["p"], s) for row in rows for s in row["skipped"]})
    lines = [
        "# Synthesis quality: synthesized vs best fitting baseline",
        "",
        f"Made by `benchmarks/synth_quality.py`{title_note}. Costs and caps as stated in the script's docstring: "
        "activation memory only (no static memory), cap = fraction x the largest per-rank peak of 1F1B simulated "
        "with the same costs; unit and zb-1.5b memory in full-stage activations, llama2-13b in GiB. Makespans are "
        "simulated (`ir.simulate`), so they are exact for the cost model; solve times are wall clock and depend on "
        "the machine (CP-SAT under a time limit is not deterministic).",
        "",
        "## Summary",
        "",
        *summary(rows, wall, jobs),
        "",
        "Ratios: raw = best fitting synthesized makespan / best fitting baseline makespan (no safety net); "
        "chosen = `Synthesis.chosen` makespan / the same baseline (<= 1 by construction). A `-` means that side "
        "has no fitting schedule. No block: placements whose block search returned nothing (see the summary for why).",
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
    parser.add_argument("--jobs", type=int, default=1, help="cells solved at a time (default 1; see the docstring)")
    parser.add_argument("--out", type=Path, help="markdown output (default: benchmarks/results/synth_quality.md "
                        "for a full run, none for a partial one)")
    args = parser.parse_args(argv)
    ps = (4,) if args.quick else tuple(args.p or PS)
    labels = tuple(args.costs or COSTS)
    todo = cells(ps, labels, args.quick)
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
