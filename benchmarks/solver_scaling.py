"""Solver scaling (issues 6 and 14): the full-horizon model by CP-SAT, by large-neighbourhood search
and by its MILP twin (HiGHS, CBC) against the building block and the list schedulers, for p in
{4, 8, 16}, m in {8, 16, 32, 64} and caps of {1/2, 1, 2} x 1F1B's activation peak, plus p in
{32, 64} at m = 256 and caps {1/2, 1}; then what each tightening of the model buys on the four
hard cells. Writes benchmarks/results/solver_scaling.md.

Problem (stated so every number can be checked by hand):
- Standard placement (one stage per rank), F = B = W = 1 per stage, no comm latency, act = 1 per
  microbatch and stage of which W keeps wact = 1/2 after B, no static memory. Every number is a
  whole tick and a whole half-unit, so the solvers' integer data are exact and their proven bounds
  hold for the problem itself.
- Split backward (F, B, W); no recompute and no offload: the comparison is of the solvers on the
  scheduling problem proper.
- The cap is ``fraction x`` the peak of the ``1f1b`` baseline simulated on these costs (p units on
  rank 0), for fraction in {1/2, 1, 2}.

Methods, each with a wall-clock limit (default 60 s) on the same problem:
- block: ``solve_block`` (CP-SAT, the whole period search within the limit), tiled and squeezed;
  its makespan is the simulated one and its bound is the model's bound without a solver, as a
  block proves nothing about the whole horizon.
- construct: the list schedulers (``synth.construct``), the best schedule that fits.
- cpsat: ``synth.horizon.cpsat.solve_horizon`` with 2 workers on the tightened model
  (``synth.horizon.spec.Tighten``, all on), hinted with the block's schedule, the list schedulers'
  best three and the library's ZB-H1 and ZB-H2 (a hint counts only if it fits the cap in the model).
  Not run where the model has more than ``--cpsat-max-jobs`` jobs (default 12,000): at p = 32,
  m = 256 (24,576 jobs) one try took 268 s of wall time for a 60 s limit, most of it before the
  search, and found nothing better than its hint.
- lns: ``synth.horizon.lns.solve_lns`` from the best hint, same limit, where the model has at
  least ``--lns-min-jobs`` jobs (default 1,000).
- highs, cbc: ``synth.horizon.milp.solve_horizon_milp``, same hints, in a child process. The
  MILP's disjunctive model grows with the square of the jobs per rank, so it runs only where the
  model has at most ``--milp-max-jobs`` jobs (default 384); larger cells say "not run".
Bound and gap: the solver's proven bound, at least ``synth.horizon.bounds.horizon_bound`` (the
analytic work/pass/memory bounds, the longest path of the ordered model's rows and Jackson's
preemptive bound per rank); gap = (makespan - bound) / makespan. "proven" means makespan == bound.
"bound from" names the larger: the bound family, or the solver.

Tightening (the second table): the four cells of issue 14 solved by CP-SAT with each
strengthening switched off in turn, and with none, from the same hints.

Usage: ``python benchmarks/solver_scaling.py [--quick] [--p 4] [--m 8 16] [--limit 60]
[--solvers block construct cpsat lns highs cbc] [--no-big] [--no-tightening] [--out FILE]``.
``--quick`` runs p = 4, m = 8 with a 5 s limit.
A partial run writes no results file unless ``--out`` names one.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ir import Costs, Placement, simulate, verify  # noqa: E402
from synth.baselines import BASELINES  # noqa: E402
from synth.block.cpsat import solve_block  # noqa: E402
from synth.block.spec import BlockOptions, block_spec  # noqa: E402
from synth.block.tile import squeeze, tile  # noqa: E402
from synth.construct import construct  # noqa: E402
from synth.horizon.bounds import analytic_bound, horizon_bound  # noqa: E402
from synth.horizon.spec import NO_TIGHTEN, Tighten, expand, hint_from_schedule, to_schedule  # noqa: E402

PS = (4, 8, 16)
MS = (8, 16, 32, 64)
FRACTIONS = (0.5, 1.0, 2.0)
BIG = ((32, 256), (64, 256))
BIG_FRACTIONS = (0.5, 1.0)
SOLVERS = ("block", "construct", "cpsat", "lns", "highs", "cbc")
HARD = ((4, 64), (8, 64), (16, 32), (16, 64))  # issue 14's cells, cap 1/2
TIGHTENINGS = {
    "all": Tighten(),
    "no order": Tighten(order=False),
    "no cap rows": Tighten(cap=False),
    "no windows": Tighten(windows=False),
    "no load cuts": Tighten(load_cuts=False),
    "none": NO_TIGHTEN,
}
RESULTS = Path(__file__).resolve().parent / "results" / "solver_scaling.md"


def costs_of(p: int) -> Costs:
    return Costs.uniform(p, f=1, b=1, w=1, act=1.0, wact=0.5)


def one_f_one_b_peak(p: int, m: int) -> float:
    return max(simulate(BASELINES["1f1b"](p, m, costs=costs_of(p)), costs_of(p)).peak)


def _hints(p: int, m: int, cap: float, limit: float) -> tuple[list, dict]:
    """The block's schedule, the list schedulers' best three and ZB-H1/ZB-H2, with the rows of the
    block and construct methods."""
    costs, placement = costs_of(p), Placement.standard(p)
    options = BlockOptions(mem_cap=cap, recompute=False, offload=False, time_limit=limit)
    began = time.perf_counter()
    block = solve_block(costs, placement, options)
    block_schedule = squeeze(tile(block, placement, m), costs, mem_cap=cap)
    rows = {"block": {"makespan": simulate(block_schedule, costs).makespan, "seconds": time.perf_counter() - began,
                      "status": "optimal period" if block.proven else "time limit"}}
    began = time.perf_counter()
    built = construct(costs, placement, m, cap)
    rows["construct"] = {"seconds": time.perf_counter() - began, "status": built[0].name if built else "none fits"}
    if built:
        rows["construct"]["makespan"] = built[0].timeline.makespan
    hints = [block_schedule, *(c.schedule for c in built[:3]),
             *(BASELINES[name](p, m, costs=costs) for name in ("zb-h1", "zb-h2"))]
    return hints, rows


def run_cell(p: int, m: int, fraction: float, solvers: tuple[str, ...], limit: float, args) -> list[dict]:
    costs, placement = costs_of(p), Placement.standard(p)
    cap = fraction * one_f_one_b_peak(p, m)
    options = BlockOptions(mem_cap=cap, recompute=False, offload=False, time_limit=limit)
    h = expand(block_spec(costs, placement, options), m)
    exact = horizon_bound(expand(block_spec(costs, placement, options, rounded=False), m))
    base = {"p": p, "m": m, "fraction": fraction, "cap": cap, "jobs": len(h.jobs), "analytic": exact.value,
            "kind": exact.kind}
    hints, method_rows = _hints(p, m, cap, limit)
    rows: list[dict] = []
    for name in ("block", "construct"):
        if name in solvers:
            rows.append({**base, "solver": name, "bound": exact.value, **method_rows[name]})
    solutions = [s for s in (hint_from_schedule(h, x) for x in hints) if s is not None]
    for solver in solvers:
        if solver in ("block", "construct"):
            continue
        if solver in ("highs", "cbc") and len(h.jobs) > args.milp_max_jobs:
            rows.append({**base, "solver": solver, "status": f"not run ({len(h.jobs)} jobs > {args.milp_max_jobs})"})
            continue
        if solver == "cpsat" and len(h.jobs) > args.cpsat_max_jobs:
            rows.append({**base, "solver": solver, "status": f"not run ({len(h.jobs)} jobs > {args.cpsat_max_jobs})"})
            continue
        if solver == "lns" and len(h.jobs) < args.lns_min_jobs:
            rows.append({**base, "solver": solver, "status": f"not run ({len(h.jobs)} jobs < {args.lns_min_jobs})"})
            continue
        rows.append({**base, **_solve(h, solver, solutions, limit, placement, costs, cap, exact.value)})
    return rows


def _solve(h, solver: str, solutions: list, limit: float, placement, costs, cap, analytic: float) -> dict:
    if solver == "cpsat":
        from synth.horizon.cpsat import solve_horizon

        result = solve_horizon(h, time_limit=limit, workers=2, hints=solutions)
    elif solver == "lns":
        from synth.horizon.lns import solve_lns
        from synth.horizon.spec import fits_model

        fitting = sorted((s for s in solutions if fits_model(h, s)), key=lambda s: s.makespan(h))
        result = solve_lns(h, fitting[0], time_limit=limit, workers=2)
    else:
        from synth.horizon.milp import solve_horizon_milp

        result = solve_horizon_milp(h, solver=solver, time_limit=limit, workers=2, hints=solutions)
    row = {"solver": solver, "status": result.status, "seconds": result.seconds, "bound": max(analytic, result.bound)}
    if result.solution is not None:
        schedule = to_schedule(h, result.solution, placement)
        verify(schedule, costs, mem_cap=cap)
        row["makespan"] = simulate(schedule, costs).makespan
        row["model_makespan"] = result.makespan
    return row


def run_tightening(p: int, m: int, limit: float, repeats: int = 3) -> list[dict]:
    """Issue 14's cell (cap 1/2) by CP-SAT under each tightening, from the same hints; the model
    with every tightening ``repeats`` times (the target counts proofs in every run)."""
    costs, placement = costs_of(p), Placement.standard(p)
    cap = 0.5 * one_f_one_b_peak(p, m)
    options = BlockOptions(mem_cap=cap, recompute=False, offload=False, time_limit=limit)
    hints, _ = _hints(p, m, cap, limit)
    rows = []
    runs = [(f"all (run {n + 1})", TIGHTENINGS["all"]) for n in range(repeats)]
    runs += [(name, tighten) for name, tighten in TIGHTENINGS.items() if name != "all"]
    for name, tighten in runs:
        h = expand(block_spec(costs, placement, options), m, tighten)
        exact = analytic_bound(block_spec(costs, placement, options, rounded=False), m).value
        solutions = [s for s in (hint_from_schedule(h, x) for x in hints) if s is not None]
        row = _solve(h, "cpsat", solutions, limit, placement, costs, cap, exact)
        rows.append({"p": p, "m": m, "fraction": 0.5, "cap": cap, "tightening": name, "jobs": len(h.jobs),
                     "rows": len(h.cuts) + len(h.either), "analytic": exact, **row})
        print(" | ".join(_fmt_tightening(rows[-1])), flush=True)
    return rows


def _fmt_tightening(row: dict) -> list[str]:
    makespan, bound = row.get("makespan"), row["bound"]
    gap = "-" if makespan is None else f"{100 * (makespan - bound) / makespan:.1f}%"
    return [str(row["p"]), str(row["m"]), f"{row['cap']:g}", row["tightening"], str(row["rows"]),
                       "-" if makespan is None else f"{makespan:g}", f"{bound:g}", gap, f"{row['seconds']:.1f}",
                       "yes" if makespan is not None and makespan <= bound + 1e-9 else "no", row["status"]]


def _fmt(row: dict) -> list[str]:
    makespan, bound = row.get("makespan"), row.get("bound")
    if makespan is None:
        gap = proven = "-"
    else:
        gap = f"{100 * (makespan - bound) / makespan:.1f}%"
        proven = "yes" if makespan <= bound + 1e-9 else "no"
    source = "-" if bound is None else row["kind"] if bound <= row["analytic"] + 1e-9 else "solver"
    return [str(row["p"]), str(row["m"]), f"{row['fraction']:g} ({row['cap']:g})", row["solver"],
            "-" if makespan is None else f"{makespan:g}", "-" if bound is None else f"{bound:g}", source, gap,
            "-" if "seconds" not in row else f"{row['seconds']:.1f}", proven, row["status"]]


def summarize(rows: list[dict]) -> list[str]:
    """Issue 14's targets, judged on these rows: the best full-horizon answer (CP-SAT or LNS) per cell."""
    out = []
    cells: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        cells.setdefault((row["p"], row["m"], row["fraction"]), {})[row["solver"]] = row

    def answer(cell: dict) -> dict | None:
        found = [r for name in ("cpsat", "lns") if (r := cell.get(name)) and r.get("makespan") is not None]
        return min(found, key=lambda r: (r["makespan"], -r["bound"]), default=None)

    def bound(cell: dict) -> float:
        return max(r["bound"] for r in cell.values() if r.get("bound") is not None)

    for (p, m, target) in ((8, 64, 296), (16, 32, 156), (16, 64, 292)):
        best = answer(cells.get((p, m, 0.5), {}))
        if best is not None:
            out.append(f"- p={p}, m={m}, cap 1/2: {best['makespan']:g} by {best['solver']} (target <= {target}: "
                       f"{'met' if best['makespan'] <= target else 'not met'})")
    cell = cells.get((4, 64, 0.5), {}).get("cpsat")
    if cell is not None and cell.get("makespan") is not None:
        ok = cell["makespan"] <= cell["bound"] + 1e-9 and cell["seconds"] <= 61
        out.append(f"- p=4, m=64, cap 1/2: {cell['makespan']:g}, {'proven' if ok else 'not proven'} in "
                   f"{cell['seconds']:.1f} s (this run; the README reports three)")
    for label, keep, limit in (("p <= 16", lambda k: k[0] <= 16, 0.02), ("p = 32, 64", lambda k: k[0] > 16, 0.03)):
        gaps = []
        for key, cell in cells.items():
            best = answer(cell)
            if keep(key) and best is not None:
                gaps.append((key, (best["makespan"] - bound(cell)) / best["makespan"]))
        if gaps:
            worst = max(gaps, key=lambda kg: kg[1])
            over = [k for k, g in gaps if g > limit + 1e-12]
            out.append(f"- {label}: largest gap {100 * worst[1]:.1f}% (p={worst[0][0]} m={worst[0][1]} cap "
                       f"{worst[0][2]:g}); target <= {100 * limit:.0f}%: "
                       + ("met" if not over else f"not met in {len(over)} of {len(gaps)} cells: "
                          + ", ".join(f"p={k[0]} m={k[1]} cap {k[2]:g}" for k in over)))
    worse = []
    for key, cell in cells.items():
        best = answer(cell)
        others = [cell[n]["makespan"] for n in ("block", "construct") if cell.get(n, {}).get("makespan") is not None]
        if best is not None and others and best["makespan"] > min(others) + 1e-9:
            worse.append(key)
    out.append(f"- full horizon worse than the best of the block and the list schedulers: {len(worse)} of "
               f"{len(cells)} cells")
    for milp in ("highs", "cbc"):
        ran = [c[milp] for c in cells.values() if c.get(milp) and not c[milp]["status"].startswith("not run")]
        proven = [r for r in ran if r.get("makespan") is not None and r["makespan"] <= r["bound"] + 1e-9]
        same = [r for r in proven if (c := cells[(r["p"], r["m"], r["fraction"])].get("cpsat"))
                and c.get("makespan") == r["makespan"]]
        out.append(f"- {milp}: ran in {len(ran)} cells, proven in {len(proven)}; the same makespan as CP-SAT in "
                   f"{len(same)} of those")
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(cells) + " |" for cells in (header, ["---"] * len(header), *rows)]


def _document(args, rows: list[dict], tightening: list[dict], seconds: float) -> str:
    """The results file: the grid, the targets and the tightening table."""
    header = ["p", "m", "cap (units)", "solver", "makespan", "bound", "bound from", "gap", "seconds", "proven",
              "status"]
    theader = ["p", "m", "cap", "tightening", "rows", "makespan", "bound", "gap", "seconds", "proven", "status"]
    lines = [
        "# Solver scaling: full horizon (CP-SAT, LNS, HiGHS, CBC) against the block and the list schedulers",
        "",
        f"Written by `python benchmarks/solver_scaling.py` in {seconds:.0f} s on "
        f"{platform.machine()} with {os.cpu_count()} cores ({platform.python_version()}); "
        f"time limit {args.limit:g} s per solve, one solve at a time, CP-SAT and HiGHS/CBC with 2 threads.",
        "Problem: standard placement, F = B = W = 1, act 1, wact 1/2, no comm, no static memory; split "
        "backward; no recompute or offload. Caps are fractions of 1F1B's peak (p units). Makespans are "
        "simulated from the decoded schedule (`ir.simulate`), every schedule passed `ir.verify` with the cap.",
        "Bound: the solver's proven bound, at least `synth.horizon.bounds.horizon_bound` (work, pass, memory, "
        "order: the longest path of the ordered model's rows, rank: Jackson's preemptive bound per rank); "
        "\"bound from\" names the larger. `block` and `construct` carry the model's bound without a solver. "
        "Where a hint already meets that bound the solver returns it at once. Status: the solver's (`hint`: "
        "nothing better than the hint in time; for `construct` the variant that made it). Seconds are wall time "
        "including the model's construction (and, for the MILPs, the child process and the LP file CBC reads, "
        "which its time limit does not cover).",
        "",
        *_table(header, [_fmt(row) for row in rows]),
        "",
        "## Targets",
        "",
        *summarize(rows),
        "",
    ]
    if tightening:
        lines += [
            "## What each tightening buys (CP-SAT, cap 1/2, same hints)",
            "",
            "`rows`: the model's cut rows (order, cap precedences, either rows). `all (run n)`: every "
            "tightening, run n of the repeats. `no order` also drops the cap rows and the load cuts, which need "
            "the order; `none` is the model before issue 14 (stage 0's first forwards in order; its floor is "
            "the bound of its own rows, which without the order is the analytic one).",
            "",
            *_table(theader, [_fmt_tightening(row) for row in tightening]),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="p = 4, m = 8, 5 s limit")
    parser.add_argument("--p", type=int, nargs="+", default=list(PS))
    parser.add_argument("--m", type=int, nargs="+", default=list(MS))
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per solve (default 60)")
    parser.add_argument("--milp-max-jobs", type=int, default=384)
    parser.add_argument("--cpsat-max-jobs", type=int, default=12_000)
    parser.add_argument("--lns-min-jobs", type=int, default=1_000)
    parser.add_argument("--no-big", action="store_true", help="leave out p = 32 and 64")
    parser.add_argument("--no-tightening", action="store_true", help="leave out the tightening table")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fully tightened model per hard cell")
    parser.add_argument("--out", type=Path, help="results file (default: results/solver_scaling.md on a full run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.p, args.m, args.limit, args.no_big, args.no_tightening = [4], [8], 5.0, True, True
    full = (not args.quick and args.p == list(PS) and args.m == list(MS) and args.fractions == list(FRACTIONS)
            and args.solvers == list(SOLVERS) and not args.no_big and not args.no_tightening)
    out = args.out or (RESULTS if full else None)
    began = time.perf_counter()
    grid = [(p, m, f) for p in args.p for m in args.m for f in args.fractions]
    if not args.no_big:
        grid += [(p, m, f) for p, m in BIG for f in BIG_FRACTIONS]
    rows: list[dict] = []
    for p, m, fraction in grid:
        cell = run_cell(p, m, fraction, tuple(args.solvers), args.limit, args)
        for row in cell:
            print(" | ".join(_fmt(row)), flush=True)
        rows += cell
    tightening = [] if args.no_tightening else [row for p, m in HARD
                                                for row in run_tightening(p, m, args.limit, args.repeats)]
    text = _document(args, rows, tightening, time.perf_counter() - began)
    print(text)
    if out is not None:
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
