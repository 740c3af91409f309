"""What ``synth`` and ``synth compare`` print: the header, the candidates' table and the lines
under it (cap, baseline, bound, full horizon, skipped placements), the full-horizon
progress line on stderr, and with knobs given as ``auto`` the knob search's table of trials
(`knob_lines`, ``synth.research.knobs``) and its progress line (`TrialLine`).

The costs' source (``synth.cli.source``) decides the memory unit and whether there is a
throughput: with ``--costs FILE`` there are no tokens/s or MFU columns and memory is in the
file's unit.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from synth.candidates import best
from synth.research.knobs import KnobSearch, Trial
from synth.search import Candidate, Synthesis

__all__ = ["Outcome", "ProgressLine", "TrialLine", "compare_lines", "knob_lines", "skipped_lines", "synth_lines"]


@dataclass(frozen=True)
class Outcome:
    """One search and what it ran on.

    Attributes:
        result: the search's outcome.
        source: where the costs came from (``synth.cli.source.ModelSource`` or ``FileSource``).
        cap: the memory cap in the source's unit, or None.
        p, m, k: ranks, microbatches, slices of the synthesized schedules.
        library: whether library schedules took part (False with ``--no-library``).
    """

    result: Synthesis
    source: object
    cap: float | None
    p: int
    m: int
    k: int
    library: bool = True

    @property
    def throughput(self) -> bool:
        return self.source.has_throughput


def _columns(outcome: Outcome) -> list[str]:
    peak = f"peak {outcome.source.memory_label}".rstrip()
    rate = ["tokens/s", "MFU"] if outcome.throughput else []
    return ["schedule", "placement", "makespan ms", "bubble", *rate, peak, "fits", "recompute/offload", "solver"]


def _row(c: Candidate, outcome: Outcome, mark: str = "") -> list[str]:
    solver = "list scheduler" if c.method == "list" else ""
    if c.horizon is not None:
        solver = f"{c.horizon.solver} {c.horizon.status} {c.horizon.seconds:.2f}s full horizon"
    elif c.block is not None:
        status = "optimal" if c.block.proven else "time limit"
        solver = (f"{c.block.solver} {status} {c.block.solve_seconds:.2f}s" if c.block.solver != "sequential"
                  else "one microbatch at a time")
    rate = []
    t = outcome.source.throughput(c.schedule.placement, c.schedule.k, c.makespan)
    if t is not None:
        rate = [f"{t.tokens_per_s:,.0f}", f"{100 * t.mfu:.1f}%"]
    return [c.name + mark, c.placement, _ms(c.makespan),
            f"{c.timeline.bubble_ratio:.3f}", *rate, outcome.source.memory(c.peak), "yes" if c.fits else "no",
            c.decisions(), solver]


def _ms(x: float) -> str:
    return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def _table(rows: list[list[str]], outcome: Outcome | None = None, columns: list[str] | None = None) -> list[str]:
    columns = columns or _columns(outcome)
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*columns).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def _tried(result: Synthesis) -> str:
    """Each placement searched and the methods that gave it a candidate: ``standard (list, block)``."""
    methods: dict[str, list[str]] = {}
    for c in (*result.synthesized, *(() if result.refined is None else (result.refined,))):
        kind = c.name.split("/", 1)[1]
        methods.setdefault(kind, [])
        if c.method not in methods[kind]:
            methods[kind].append(c.method)
    return ", ".join(f"{kind} ({', '.join(ms)})" for kind, ms in methods.items()) or "none"


def skipped_lines(result: Synthesis) -> list[str]:
    """One line per placement the search could not build: ``skipped waves: <reason>``."""
    return [f"skipped {name.removeprefix('synth/')}: {str(why).splitlines()[0] if why else 'no reason given'}"
            for name, why in result.skipped if name.startswith("synth/")]


def synth_lines(outcome: Outcome) -> list[str]:
    """``synth``'s report: header, placements tried and skipped, the chosen / best synthesized /
    best block / best baseline rows, then `_notes`."""
    result, source, cap = outcome.result, outcome.source, outcome.cap
    chosen, baseline = result.chosen, result.best_baseline
    lines = [source.header(outcome.p, outcome.m, outcome.k, cap),
             f"placements tried: {_tried(result)}",
             *skipped_lines(result), ""]
    rows, shown = [_row(chosen, outcome, " (chosen)")], [chosen]
    # the block's row names the solver (--solver) even when a list scheduler's schedule is faster
    best_block = best(c for c in result.synthesized if c.method == "block")
    for extra, label in ((result.best_synthesized, "best synthesized"), (best_block, "best block"),
                         (baseline, "best baseline")):
        if extra is not None and not any(_same(extra, c) for c in shown):
            rows.append(_row(extra, outcome, f" ({label})"))
            shown.append(extra)
    return [*lines, *_table(rows, outcome), "", *_notes(outcome)]


def _same(a, b) -> bool:
    """The same candidate (the search hands the chosen one back re-simulated, as a new object)."""
    return a.name == b.name and a.schedule == b.schedule


def _notes(outcome: Outcome) -> list[str]:
    """The lines under ``synth``'s table: peaks against the cap, the library, the bound, the full
    horizon, the block, the baselines over the cap, and how long it took."""
    result, source, cap = outcome.result, outcome.source, outcome.cap
    chosen, baseline, lines = result.chosen, result.best_baseline, []
    unit = f" ({source.memory_label})" if source.memory_label else ""
    lines.append(f"peak per {'GPU' if unit else 'rank'}{unit} vs cap "
                 + ("none" if cap is None else source.memory(cap)) + ": "
                 + ", ".join(f"r{r} {source.memory(x)}" for r, x in enumerate(chosen.timeline.peak)))
    if not outcome.library:
        lines.append("library excluded (--no-library): synthesized from scratch, no library schedule as a "
                     "candidate or a hint")
    elif baseline is None:
        lines.append("no baseline fits this cap")
    else:
        gain = baseline.makespan / chosen.makespan - 1
        lines.append(f"vs best fitting baseline ({baseline.name}): {100 * gain:+.1f}% throughput")
    late = [name for name, why in result.skipped if why.startswith("not evaluated")]
    if outcome.library and late:
        lines.append(f"{len(late)} library schedule(s) not evaluated within the time limit ({', '.join(late)}): "
                     "a larger --time-limit evaluates more")
    lines.append(_bound_line(result))
    if result.refined is not None:
        lines.append(_refined_line(result.refined))
    elif result.not_refined:
        lines.append(result.not_refined)
    if chosen.block is not None:
        b = chosen.block
        proof = "proven optimal" if b.proven else "not proven (time limit)"
        lines.append(f"block: period {b.period * b.tick:.2f} ms ({b.period} ticks of {b.tick:.3f} ms), "
                     f"length {b.length * b.tick:.2f} ms, {proof}")
    unfit = [c.name for c in result.baselines if not c.fits]
    if unfit:
        lines.append(f"baselines over the cap: {', '.join(unfit)}")
    library = f"{len(result.baselines)} baselines" if outcome.library else "no baselines (--no-library)"
    lines.append(f"searched {len(_placements(result))} placement(s) and {library} in {result.seconds:.1f} s")
    return lines


def _placements(result: Synthesis) -> set[str]:
    return {c.name.split("/", 1)[1] for c in result.synthesized}


def compare_lines(outcome: Outcome) -> list[str]:
    """``synth compare``'s report: every candidate, best first, then what was not built."""
    result = outcome.result
    lines = [outcome.source.header(outcome.p, outcome.m, outcome.k, outcome.cap),
             *skipped_lines(result), "", *_table([_row(c, outcome) for c in result.ranked()], outcome)]
    if not outcome.library:
        lines += ["", "library excluded (--no-library)"]
    unbuilt = [f"{name} ({str(why).splitlines()[0]})" for name, why in result.skipped if not name.startswith("synth/")]
    if unbuilt:
        lines += ["", "not built: " + "; ".join(unbuilt)]
    return lines


def _bound_line(result: Synthesis) -> str:
    bound = result.bound
    if bound is None or not math.isfinite(bound.value):
        return "lower bound: none"
    extra = "" if bound.source.startswith("analytic") else f"; analytic {bound.analytic:,.1f} ms"
    return (f"lower bound: {bound.value:,.1f} ms ({bound.source}, any {bound.placement}-placement schedule{extra}); "
            f"gap {100 * result.gap:.1f}%")


def _refined_line(c: Candidate) -> str:
    r = c.horizon
    tick = c.schedule.meta.get("tick", 1.0)
    exact = c.schedule.meta.get("exact", False)
    what = ("proven optimal" + ("" if exact else " for the model (durations rounded up to ticks)") if r.proven
            else f"{r.status}, model bound {r.bound * tick:,.1f} ms")
    return (f"full horizon ({r.solver}, {r.seconds:.1f} s): {c.makespan:,.1f} ms simulated "
            f"({r.makespan * tick:,.1f} ms in the model's ticks), {what}"
            + ("" if c.fits else "; over the cap in simulation, not used"))


class ProgressLine:
    """Prints the full-horizon solve's progress to stderr: objective, bound and gap over time, at
    every improvement of the schedule and at most once a second for the bound alone."""

    def __init__(self, stream=None) -> None:
        self.stream = stream
        self.last: tuple | None = None
        self.printed_at = -math.inf

    def __call__(self, seconds: float, makespan: float | None, bound: float) -> None:
        if self.last == (makespan, bound):
            return
        improved = self.last is None or makespan != self.last[0]
        if not improved and seconds - self.printed_at < 1:
            return
        self.last, self.printed_at = (makespan, bound), seconds
        gap = "" if makespan is None or makespan <= 0 else f", gap {100 * max(0.0, 1 - bound / makespan):.1f}%"
        found = "none yet" if makespan is None else f"{makespan:,.1f} ms"
        print(f"  full horizon {seconds:6.1f} s: makespan {found}, bound {bound:,.1f} ms{gap}",
              file=self.stream or sys.stderr, flush=True)


class PhaseLine:
    """Prints each step of the search to stderr as it starts, with the seconds since the first
    (``SynthOptions.phase``: told only on problems whose steps take a noticeable time)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream
        self.began: float | None = None

    def __call__(self, what: str) -> None:
        import time

        now = time.perf_counter()
        if self.began is None:
            self.began = now
        print(f"  [{now - self.began:5.1f} s] {what}", file=self.stream or sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ knob search
def knob_lines(search: KnobSearch) -> list[str]:
    """The knob search's report: what was tried and how it was ranked, one row per trial and
    placement (the trial's best schedule there; the best trial's chosen schedule marked), the
    values not tried and the trials that failed, then the best trial's knobs. As in `synth_lines`,
    a costs file's trials have no tokens/s or MFU columns."""
    unit = search.trials[0].source.memory_label if search.trials else ""
    overhead = any(t.ok and t.step_overhead_ms > 0 for t in search.trials)
    batch = any(t.micro_batch is not None for t in search.trials)  # none with a costs file
    columns = [*(["micro-batch"] if batch else []), "m", "k", "chunks", "placement", "schedule", "makespan ms",
               *(["iteration ms"] if overhead else []), *(["tokens/s", "MFU"] if search.throughput else []),
               f"peak {unit}".rstrip(), "fits"]
    rows = [row[0 if batch else 1:] for trial in search.trials
            for row in _trial_rows(trial, trial is search.best, overhead, search.throughput)]
    lines = [_knob_header(search), *search.notes, ""]
    if rows:
        lines += _table(rows, columns=columns)
    reasons: dict[str, list[str]] = {}  # one line per reason, naming every value it left out
    for what, why in search.not_tried:
        reasons.setdefault(why, []).append(what)
    lines += [f"not tried: {', '.join(whats)}: {why}" for why, whats in reasons.items()]
    lines += [f"failed: {_knobs_text(t)}: {t.error.splitlines()[0]}" for t in search.trials
              if not t.ok and t.smallest is None]
    if any(not t.ok and t.smallest is not None for t in search.trials):
        lines.append("none fits: no schedule fits the cap; the peak column gives the least any schedule built needs")
    if search.best is not None:
        b, t = search.best, search.best.throughput
        rate = f", {t.tokens_per_s:,.0f} tokens/s, MFU {100 * t.mfu:.1f}%" if t is not None else ""
        lines.append(f"best: {_knobs_text(b)}: {b.chosen.name} ({b.chosen.placement}), "
                     f"{_ms(b.iteration_ms)} ms per iteration{rate}")
    return lines


def _knob_header(search: KnobSearch) -> str:
    tried, trials = [], search.trials
    if "microbatches" in search.searched:
        sizes = sorted({t.micro_batch for t in trials if t.micro_batch is not None})
        tried.append(f"micro-batch {', '.join(map(str, sizes)) or 'none'} of a global batch of {search.global_batch}")
    for name, attribute in (("slices", "k"), ("chunks", "chunks")):
        if name in search.searched:
            tried.append(f"{name} {', '.join(str(x) for x in sorted({getattr(t.knobs, attribute) for t in trials}))}")
    measure = ("by iteration time (makespan + host optimizer step; every trial trains the same sequences, so the "
               "shortest has the most tokens/s)" if search.throughput
               else "by makespan (every trial runs the same microbatches)")
    given = sorted(t.time_limit for t in trials)
    share = f"{given[0]:.2g}" + (f"-{given[-1]:.2g}" if given and given[-1] > given[0] * 1.05 else "") if given else "0"
    return (f"knob search: {'; '.join(tried) or 'nothing searched'}; {len(trials)} trial(s) in {search.seconds:.1f} s "
            f"(--time-limit {search.time_limit:g} s shared among them: {share} s each, at least "
            f"{search.min_trial_seconds:g}); ranked {measure}")


def _knobs_text(trial: Trial) -> str:
    b = trial.micro_batch
    batch = "" if b is None else f"micro-batch {b}, "
    return f"{batch}m {trial.knobs.m}, k {trial.knobs.k}, chunks {trial.knobs.chunks}"


def _trial_rows(trial: Trial, is_best: bool, overhead: bool, throughput: bool) -> list[list[str]]:
    """One row per placement of ``trial``: its best schedule there (`Trial.by_placement`)."""
    knobs = trial.knobs
    head = ["-" if trial.micro_batch is None else str(trial.micro_batch), str(knobs.m), str(knobs.k)]
    if not trial.ok:  # the peak column: the least any of its schedules needs
        least = trial.smallest
        peak = "-" if least is None or not math.isfinite(least) else trial.source.memory(least)
        blank = ["-"] * (1 + overhead + 2 * throughput)
        return [[*head, str(knobs.chunks), ",".join(trial.placements), "none fits", *blank, peak, "no"]]
    rows = []
    for result in trial.by_placement():
        c, t = result.candidate, result.throughput
        mark = " (best)" if is_best and _same(c, trial.chosen) else ""
        extra = [_ms(c.makespan + (t.step_overhead_ms if t else 0.0))] if overhead else []
        rate = [] if not throughput else ["-", "-"] if t is None else [f"{t.tokens_per_s:,.0f}", f"{100 * t.mfu:.1f}%"]
        rows.append([*head, "-" if result.chunks is None else str(result.chunks), result.placement, c.name + mark,
                     _ms(c.makespan), *extra, *rate, trial.source.memory(c.peak), "yes" if c.fits else "no"])
    return rows


class TrialLine:
    """Prints one line per finished trial of the knob search to stderr (the search can take a while)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream

    def __call__(self, index: int, total: int, trial: Trial) -> None:
        found = (f"{trial.chosen.name} {_ms(trial.makespan)} ms" if trial.ok
                 else trial.error.splitlines()[0][:80])
        print(f"  trial {index + 1}/{total} ({_knobs_text(trial)}; {trial.seconds:.1f} s): {found}",
              file=self.stream or sys.stderr, flush=True)
