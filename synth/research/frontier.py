"""The memory/throughput frontier: the fastest schedule at every memory cap, from the least cap
any schedule needs to the cap past which more memory buys nothing.

The method (``frontier``):

1. **The ends.** The top is where the search's answer with no cap is reached: the least peak
   of any schedule found as fast as it (more memory cannot help the search). The bottom is the
   least cap the search is sure to fit (``synth.search.least_memory``: each placement's
   sequential schedule and, with the library, every library schedule); a schedule some solve
   finds below it (the list schedulers can) is kept on the frontier too.
2. **Anchors.** With ``anchors`` on, the library schedules' peaks between the ends are solved at
   too, tightest first: those are the hand designs' points, where the question "what does
   synthesis do with the same memory" is asked. Anchors stop once the frontier reaches the top's
   makespan (a looser cap cannot improve on it) or when only a third of ``points`` is left.
3. **Adaptive points.** Then, until ``points`` solves are spent, the interval between two solved
   caps where the step line is least known (its drop times its width) is cut in half and solved
   at its middle; it stops early when no interval drops by more than ``tolerance`` of the top's
   makespan.
4. **Monotone by construction.** Each solve is seeded (``SynthOptions.seeds``) with the best
   schedule found so far on each placement that fits its cap, so it starts where tighter caps
   ended; and after the sweep the frontier at a cap is the fastest of every schedule any solve
   found that fits it: the Pareto set of everything found, a step line that never rises as the
   cap loosens (a looser cap can only add schedules).
5. **The bound.** At each solved cap, the least over the placements searched of
   ``synth.horizon.refine.lower_bound`` (the chosen placement's raised to the solver's proven
   bound where it holds, as ``synthesize`` reports it). Every schedule that fits a cap fits any
   looser one, so a looser cap's bound holds at a tighter cap too: the curve is the running
   maximum from the right. A point is **proven** when its makespan meets that bound: no schedule
   on the placements searched (with the options allowed) is faster at that cap.

Library schedules are placed against the frontier as points whether or not the search used them
(``--no-library`` excludes them from the search, not from the picture). `frontier_table`,
`frontier_csv` and `plot_frontier` turn the result into what ``synth frontier`` writes.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ir.verify import MEMORY_RTOL
from synth.candidates import Candidate, NoScheduleFits, Synthesis, best
from synth.horizon.refine import lower_bound
from synth.problem import CostsFor
from synth.search import SynthOptions, least_memory, library, make_placement, synthesize

__all__ = ["Frontier", "FrontierPoint", "frontier", "frontier_csv", "frontier_table", "plot_frontier"]

# Stop refining when no interval between solved caps drops the makespan by more than this share
# of the top's makespan.
TOLERANCE = 0.002
# Two caps closer than this share of the larger are one point.
SAME_CAP = 0.002


@dataclass(frozen=True)
class FrontierPoint:
    """One solved cap.

    Attributes:
        cap: the memory cap solved at (bytes, or the costs' unit); None for the top's uncapped solve.
        chosen: the fastest schedule found by any solve that fits ``cap`` (the frontier's value).
        solved: the fastest schedule this cap's own solve returned (seeded with tighter caps' answers).
        bound: a lower bound on the makespan of every schedule that fits ``cap`` on the placements
            searched (``-inf`` where none could be computed).
        seconds: the solve's wall time.
        synthesis: the solve's outcome.
    """

    cap: float | None
    chosen: Candidate
    solved: Candidate
    bound: float
    seconds: float
    synthesis: Synthesis

    @property
    def proven(self) -> bool:
        """The makespan meets the bound: optimal among the placements searched at this cap."""
        return self.bound > 0 and self.chosen.makespan <= self.bound * (1 + 1e-9)

    @property
    def gap(self) -> float:
        """``(makespan - bound) / makespan``."""
        return max(0.0, 1 - self.bound / self.chosen.makespan) if self.bound > 0 else 1.0


@dataclass(frozen=True)
class Frontier:
    """The sweep's outcome.

    Attributes:
        points: the solved caps, tightest first (the top's uncapped solve last).
        steps: the Pareto set of every synthesized (or, with the library, chosen) schedule found:
            rising peak, falling makespan; the frontier at a cap is the last step within it.
        library: every library schedule the options allow, simulated on the same costs (the
            points the figure labels), whether or not the search used the library.
        least: the least cap the search is sure to fit (its fallbacks' lowest peak).
        top: the peak past which the frontier stops improving (the least peak of the fastest schedules).
        p, m, k: ranks, microbatches, slices.
        options: the search's options (time limit per solve, placements, library on or off).
        seconds: wall time of the whole sweep.
    """

    points: tuple[FrontierPoint, ...]
    steps: tuple[Candidate, ...]
    library: tuple[Candidate, ...]
    least: float
    top: float
    p: int
    m: int
    k: int
    options: SynthOptions
    seconds: float

    def at(self, cap: float) -> Candidate | None:
        """The frontier's schedule at ``cap``: the fastest found that fits it (None below ``least``)."""
        peaks = [c.peak for c in self.steps]
        index = bisect.bisect_right(peaks, cap * (1 + MEMORY_RTOL)) - 1
        return self.steps[index] if index >= 0 else None

    def bound_at(self, cap: float) -> float:
        """The largest bound that holds at ``cap``: a solved cap's bound holds at every tighter cap."""
        held = [pt.bound for pt in self.points if pt.cap is None or pt.cap >= cap * (1 - 1e-12)]
        return max(held, default=-math.inf)


def frontier(costs_for: CostsFor, p: int, m: int, *, k: int = 1, options: SynthOptions | None = None,
             points: int = 12, anchors: bool = True, tolerance: float = TOLERANCE, max_cap: float | None = None,
             progress: Callable[[int, int, FrontierPoint], None] | None = None) -> Frontier:
    """The memory/throughput frontier of ``p`` ranks and ``m`` microbatches (see the module docstring).

    Args:
        costs_for: ``costs_for(placement, k)`` gives the costs of that placement and slicing.
        p, m, k: ranks, microbatches, sequence slices of the synthesized schedules.
        options: what each solve may try; ``options.time_limit`` is per solve.
        points: solves in all, the top's and the least cap's included (at least 2).
        anchors: solve at every library schedule's peak between the ends.
        tolerance: stop when no interval drops the makespan by more than this share of the top's.
        max_cap: sweep no higher than this cap (default: up to where the frontier stops improving).
        progress: ``progress(done, total, point)`` after each solve.

    Raises:
        NoScheduleFits: ``max_cap`` is below the least cap the search is sure to fit (the sweep's bottom).
        ValueError: ``points`` below 2.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"a frontier needs at least 2 points (its two ends), got {points!r}")
    began = time.perf_counter()
    options = options or SynthOptions()
    found: list[Candidate] = []
    solved: list[FrontierPoint] = []

    def solve(cap: float | None) -> FrontierPoint:
        seeds = _seeds(found, cap)
        started = time.perf_counter()
        result = synthesize(costs_for, p, m, cap, k=k, options=dataclasses.replace(options, seeds=seeds))
        found.extend(c for c in (*result.synthesized, *_refined(result)) if c.fits)
        if options.baselines:  # the library took part: its fitting schedules are answers too
            found.extend(c for c in (result.chosen, *result.baselines) if c.fits)
        bound = _bound(costs_for, p, m, k, cap, options, result)
        point = FrontierPoint(cap, result.chosen, result.chosen, bound, time.perf_counter() - started, result)
        solved.append(point)
        if progress is not None:
            progress(len(solved), total[0], point)
        return point

    shown, _ = library(costs_for, p, m, k=k, options=options)  # evaluated once: the anchors and the bottom
    try:
        fallbacks = [least_memory(costs_for, p, m, k=k, options=dataclasses.replace(options, baselines=False))]
    except NoScheduleFits:
        if not (options.baselines and shown):
            raise
        fallbacks = []  # no placement builds; the library's schedules are the fallbacks
    least_schedule = min([*fallbacks, *(shown if options.baselines else ())], key=lambda c: (round(c.peak, 9),
                                                                                             c.makespan))
    least = least_schedule.peak
    if max_cap is not None and max_cap < least * (1 - MEMORY_RTOL):
        raise NoScheduleFits(f"the sweep's top cap {max_cap:g} is below its bottom, the least cap the search is "
                             f"sure to fit ({least:g}, {least_schedule.name}); give a top cap of at least that", least)
    total = [points]  # the progress line's denominator: at most this many solves
    top_point = solve(max_cap)
    # where the frontier stops improving: the least peak of any schedule as fast as the uncapped answer
    top = _pareto(found)[-1].peak if max_cap is None and found else (max_cap or top_point.chosen.peak)
    near = [c.peak for c in shown if least < c.peak < top * (1 - SAME_CAP)] if anchors else []
    caps = ([least] if least < top * (1 - SAME_CAP) else []) + _distinct(near)  # the bottom is always solved
    reserve = points // 3 if len(caps) > 1 else 0  # solves kept for the adaptive points
    for index, cap in enumerate(caps):
        if len(solved) >= points - (reserve if index else 0):
            break
        if index and _value(_pareto(found), cap) <= top_point.chosen.makespan * (1 + tolerance):
            break  # the frontier is at the top's makespan already: looser anchors cannot improve it
        solve(cap)
    while len(solved) < points:
        cap = _next_cap(solved, found, top, tolerance, top_point.chosen.makespan)
        if cap is None:
            break
        solve(cap)
    steps = _pareto(found)
    final = tuple(sorted((_at(pt, steps) for pt in solved), key=lambda pt: math.inf if pt.cap is None else pt.cap))
    top = steps[-1].peak if max_cap is None and steps else top
    return Frontier(final, steps, tuple(shown), least, top, p, m, k, options, time.perf_counter() - began)


# ---------------------------------------------------------------------------------------- sweep
def _refined(result: Synthesis) -> tuple[Candidate, ...]:
    return () if result.refined is None else (result.refined,)


def _seeds(found: list[Candidate], cap: float | None) -> tuple[Candidate, ...]:
    """The fastest found schedule on each placement that fits ``cap``."""
    fitting = [c for c in found if c.synthesized and (cap is None or c.peak <= cap * (1 + MEMORY_RTOL))]
    by_placement: dict[tuple, Candidate] = {}
    for c in fitting:
        key = c.schedule.placement.stage_to_rank
        if key not in by_placement or (c.makespan, c.peak) < (by_placement[key].makespan, by_placement[key].peak):
            by_placement[key] = c
    return tuple(by_placement.values())


def _distinct(caps: list[float]) -> list[float]:
    """``caps`` ascending, each run of caps within ``SAME_CAP`` of one another kept once, as its
    loosest (which every schedule of the run fits)."""
    out: list[float] = []
    for cap in sorted(caps):
        if out and cap <= out[-1] * (1 + SAME_CAP):
            out[-1] = cap
        else:
            out.append(cap)
    return out


def _next_cap(solved: list[FrontierPoint], found: list[Candidate], top: float, tolerance: float,
              best_makespan: float) -> float | None:
    """The middle of the interval between solved caps where the frontier is least known: the
    largest drop times width (the area a step line could be wrong by), among intervals that drop
    by more than ``tolerance`` of ``best_makespan`` and are wide enough to cut; None if none is."""
    steps = _pareto(found)
    caps = sorted({top if pt.cap is None else pt.cap for pt in solved})
    widest, chosen = 0.0, None
    for lo, hi in zip(caps, caps[1:], strict=False):
        if hi - lo <= 2 * SAME_CAP * hi:
            continue
        drop = _value(steps, lo) - _value(steps, hi)
        if drop > tolerance * best_makespan and drop * (hi - lo) > widest:
            widest, chosen = drop * (hi - lo), (lo + hi) / 2
    return chosen


def _value(steps: tuple[Candidate, ...], cap: float) -> float:
    fitting = [c.makespan for c in steps if c.peak <= cap * (1 + MEMORY_RTOL)]
    return min(fitting, default=math.inf)


def _pareto(found: list[Candidate]) -> tuple[Candidate, ...]:
    """Rising peak, strictly falling makespan: each schedule faster than every one with less memory."""
    out: list[Candidate] = []
    for c in sorted(found, key=lambda c: (round(c.peak, 9), c.makespan, not c.synthesized)):
        if not out or c.makespan < out[-1].makespan * (1 - 1e-12):
            out.append(c)
    return tuple(out)


def _at(point: FrontierPoint, steps: tuple[Candidate, ...]) -> FrontierPoint:
    """The point with its value taken from every schedule found (never slower than its own solve)."""
    cap = math.inf if point.cap is None else point.cap
    fitting = [c for c in steps if c.peak <= cap * (1 + MEMORY_RTOL)]
    chosen = best([point.solved, *fitting]) or point.solved
    return dataclasses.replace(point, chosen=chosen)


def _bound(costs_for: CostsFor, p: int, m: int, k: int, cap: float | None, options: SynthOptions,
           result: Synthesis) -> float:
    """The least bound at ``cap`` over the placements searched and the chosen schedule's own
    (``synthesize``'s, raised by the solver's proof where that holds) in place of its placement's."""
    variants = options.variants
    chosen_key = result.chosen.schedule.placement.stage_to_rank
    values = [] if result.bound is None else [result.bound.value]
    for kind in dict.fromkeys(options.placements):
        try:
            placement = make_placement(kind, p, options.chunks)
            if placement.stage_to_rank == chosen_key and result.bound is not None:
                continue
            costs = costs_for(placement, k)
        except ValueError:
            continue  # a placement the costs cannot build: no schedule on it either
        values.append(lower_bound(costs, placement, kind, m, cap, k, variants.recompute, variants.offload).value)
    finite = [v for v in values if math.isfinite(v)]
    return min(finite) if finite else -math.inf


# --------------------------------------------------------------------------------------- report
Rate = Callable[[Candidate], tuple[str, ...]]


def _fmt_ms(x: float) -> str:
    return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def frontier_table(result: Frontier, memory: Callable[[float], str], unit: str = "",
                   rate: Rate | None = None, rate_columns: tuple[str, ...] = ()) -> list[str]:
    """Markdown: the solved points (cap, frontier makespan, rate columns, peak, schedule, what it
    recomputes or offloads, bound, gap, proven), then every library schedule against the frontier
    at its own peak."""
    label = f" {unit}" if unit else ""
    head = ["cap" + label, "makespan ms", *rate_columns, "peak" + label, "schedule", "placement",
            "recompute/offload", "bound ms", "gap", "proven", "solve s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for pt in result.points:
        c = pt.chosen
        cap = "none (top)" if pt.cap is None else memory(pt.cap)
        bound = _fmt_ms(pt.bound) if pt.bound > 0 else "—"
        lines.append("| " + " | ".join([cap, _fmt_ms(c.makespan), *(rate(c) if rate else ()), memory(c.peak),
                                        c.name, c.placement, c.decisions(), bound, f"{100 * pt.gap:.1f}%",
                                        "yes" if pt.proven else "no", f"{pt.seconds:.1f}"]) + " |")
    lines += ["", "| library schedule | peak" + label + " | makespan ms | frontier at its peak ms | frontier's gain |"
              " frontier's schedule |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for c in sorted(result.library, key=lambda c: (c.peak, c.makespan)):
        at = result.at(c.peak)
        if at is None:
            lines.append(f"| {c.name} | {memory(c.peak)} | {_fmt_ms(c.makespan)} | below the least cap | | |")
            continue
        gain = c.makespan / at.makespan - 1
        lines.append(f"| {c.name} | {memory(c.peak)} | {_fmt_ms(c.makespan)} | {_fmt_ms(at.makespan)} | "
                     f"{100 * gain:+.1f}% | {at.name} |")
    return lines


def frontier_csv(result: Frontier, scale: float = 1.0, rate: Rate | None = None,
                 rate_columns: tuple[str, ...] = ()) -> str:
    """CSV: one row per solved point and one per library schedule (``kind`` says which); memory
    divided by ``scale`` (e.g. 2**30 for GiB)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["kind", "cap", "makespan_ms", *(c.replace("/", "_per_") for c in rate_columns), "peak",
                     "schedule", "placement", "recompute_offload", "bound_ms", "gap", "proven", "solve_s"])
    for pt in result.points:
        c = pt.chosen
        writer.writerow(["frontier", "" if pt.cap is None else f"{pt.cap / scale:.6g}", f"{c.makespan:.6g}",
                         *(rate(c) if rate else ()), f"{c.peak / scale:.6g}", c.name, c.placement, c.decisions(),
                         f"{pt.bound:.6g}" if pt.bound > 0 else "", f"{pt.gap:.6g}", int(pt.proven),
                         f"{pt.seconds:.3f}"])
    for c in sorted(result.library, key=lambda c: (c.peak, c.makespan)):
        writer.writerow(["library", "", f"{c.makespan:.6g}", *(rate(c) if rate else ()), f"{c.peak / scale:.6g}",
                         c.name, c.placement, c.decisions(), "", "", "", ""])
    return out.getvalue()


def plot_frontier(result: Frontier, path, *, scale: float = 1.0, unit: str = "units", title: str = "",
                  throughput: Callable[[Candidate], float] | None = None, throughput_label: str = "",
                  overwrite: bool = False):
    """A PNG: throughput (top) and makespan (bottom) against memory per GPU. The frontier is a
    step line over the Pareto set, solved points on it (stars where proven optimal), the lower
    bound a dashed step line, every library schedule a labelled point.

    ``throughput(candidate)`` gives the top panel's value (default: microbatches per second,
    ``m / makespan`` with makespans in ms)."""
    from matplotlib.figure import Figure

    from ir.files import check_writable

    path = check_writable(path, overwrite)
    rate = throughput or (lambda c: result.m / (c.makespan / 1e3))
    label = throughput_label or "microbatches per second"
    xs = [c.peak / scale for c in result.steps]
    # the chart runs to twice the top at most; library schedules beyond it are named in a corner
    reach = 2 * max(result.top, xs[-1] * scale)
    shown = [c for c in result.library if c.peak <= reach]
    beyond = sorted((c for c in result.library if c.peak > reach), key=lambda c: c.peak)
    right = max([*xs, *(c.peak / scale for c in shown), result.top / scale]) * 1.05
    fig = Figure(figsize=(9, 7.5), dpi=110)
    top_ax, low_ax = fig.subplots(2, 1, sharex=True)
    for ax, value in ((top_ax, rate), (low_ax, lambda c: c.makespan)):
        ys = [value(c) for c in result.steps]
        ax.step([*xs, right], [*ys, ys[-1]], where="post", color="#1f77b4", lw=2, label="synthesized frontier")
        solved = [pt for pt in result.points]
        ax.scatter([pt.chosen.peak / scale for pt in solved if not pt.proven],
                   [value(pt.chosen) for pt in solved if not pt.proven], color="#1f77b4", s=25, zorder=3,
                   label="solved point")
        ax.scatter([pt.chosen.peak / scale for pt in solved if pt.proven],
                   [value(pt.chosen) for pt in solved if pt.proven], color="#d62728", marker="*", s=110, zorder=4,
                   label="proven optimal")
        ax.scatter([c.peak / scale for c in shown], [value(c) for c in shown], color="#444444",
                   marker="x", s=30, zorder=3, label="library schedule")
        for (x, y), names in _labels(shown, scale, value).items():
            ax.annotate(", ".join(names), (x, y), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
        ax.grid(alpha=0.3)
    bounded = sorted((pt for pt in result.points if pt.bound > 0),
                     key=lambda pt: math.inf if pt.cap is None else pt.cap)
    if bounded:
        bx = [(result.top if pt.cap is None else pt.cap) / scale for pt in bounded]
        by = [result.bound_at(result.top if pt.cap is None else pt.cap) for pt in bounded]
        low_ax.step([*bx, right], [*by, by[-1]], where="pre", color="#2ca02c", ls="--", lw=1.3,
                    label="lower bound (placements searched)")
    if beyond:
        low_ax.text(0.99, 0.5, "off the chart: " + ", ".join(f"{c.name} at {c.peak / scale:.3g} {unit}, "
                                                               f"{c.makespan:,.0f} ms" for c in beyond),
                    transform=low_ax.transAxes, ha="right", va="center", fontsize=7, color="#444444")
    top_ax.set_ylabel(label)
    low_ax.set_ylabel("makespan ms")
    low_ax.set_xlabel(f"memory per GPU ({unit})")
    left = min(result.least, *(c.peak for c in (*result.steps, *shown)))
    low_ax.set_xlim(left=left / scale * 0.95, right=right)
    top_ax.legend(fontsize=7, loc="lower right")
    low_ax.legend(fontsize=7, loc="upper right")
    if title:
        top_ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _labels(candidates, scale: float, value) -> dict[tuple[float, float], list[str]]:
    """One label per distinct point: schedules at the same memory and value share it."""
    out: dict[tuple[float, float], list[str]] = {}
    for c in sorted(candidates, key=lambda c: c.name):
        out.setdefault((round(c.peak / scale, 6), round(value(c), 6)), []).append(c.name)
    return out
