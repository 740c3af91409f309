"""The search over the knobs a user otherwise picks by hand: the split of a global batch into
microbatches (``-m auto``), sequence slices (``--slices auto``) and the chunks of the interleaved
and waves placements (``--chunks auto``); the placement itself is searched inside every
``synth.search.synthesize`` call already (``--placement auto``).

Method: a grid. Every combination of the values tried is one **trial**, one ``synthesize`` run on
the problem those knobs give; the best trial is the one whose chosen schedule trains the global
batch fastest. The measure is the **iteration time**: the simulated makespan plus the host
optimizer step (``Problem.step_overhead_ms``, zero without optimizer offload and with a ``--costs``
file). Every trial trains the same sequences (m x micro-batch size is the global batch when
``-m auto``, and fixed otherwise), so the shorter iteration is the higher tokens/s and MFU, and the
same ranking holds for a costs file, which has no tokens/s. Ties go to the first trial in trial
order (micro-batch size ascending, then slices, then chunks): the smaller micro-batch, the fewer
slices, the fewer chunks.

The values tried:

- ``-m auto`` needs the global batch G (sequences per iteration): each micro-batch size b dividing G,
  from 1 up to `MAX_MICRO_BATCH`, with m = G / b microbatches, as long as m >= p (fewer
  microbatches than stages leave most of the pipeline idle in every schedule: the fill and drain
  alone are p - 1 of m + p - 1 steps). Each b is a cost model of its own (its spec's
  ``micro_batch``), so ``make_source(b, m)`` builds one. A ``--costs`` file's per-microbatch costs
  are for one micro-batch size, so it cannot trade b against m: refused (`KnobError`).
- ``--slices auto``: k in `SLICES` (1, 2, 4, 8); a k the source cannot cut (more slices than
  tokens) is not tried, with the reason. With k > 1 the library's candidates are the
  sequence-slicing families (Seq1F1B, SlimPipe) and the search does not recompute or offload.
  A costs file splits each full stage's numbers evenly over the slices (``synth.costs.user``), so
  its k > 1 trials are as idealised as that split.
- ``--chunks auto``: 2, 3 and 4 (`CHUNKS`) chunks for interleaved and waves, when either is
  searched (else chunks do nothing and are not varied: a note says so). Standard and V do not
  depend on the chunks: they are searched (with the library) in the first chunk value's trial
  only, and later chunk values' trials search interleaved and waves alone, without the library
  (whose interleaved and waves schedules use 2 chunks anyway). A chunk count a placement's stages
  cannot be built with (too few layers) is not tried, with the reason.

Time: ``options.time_limit`` is the **whole** search's. Each trial gets a share of what is left, in
proportion to the placements it searches (a trial of interleaved and waves gets half of one of
all four), and at least ``min_trial_seconds`` (`MIN_TRIAL_SECONDS`): below that a synthesize run
is mostly its fixed costs. Many trials can therefore take longer than the limit; `KnobSearch`
records the time spent, and the report says it.

Pruning: when a micro-batch size fits no schedule at some slices and chunks, the larger sizes at
the same slices and chunks are not tried (with the reason): the least-memory schedule pipesynth
builds (one microbatch in flight) holds static memory, the same at every micro-batch size, plus
one microbatch's activations, which grow with it.

The memory cap is the same for every trial (a physical amount per GPU); a cap given as a function
(``1f1b*X`` on the command line) is resolved once, on the first trial's source.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ir import Costs, Placement
from synth.candidates import Candidate, NoScheduleFits, Synthesis, best
from synth.costs.args import AUTO, fixed_batch
from synth.costs.problem import Throughput
from synth.search import PLACEMENTS, SynthOptions, make_placement, synthesize

__all__ = ["AUTO", "CHUNKED", "CHUNKS", "MAX_MICRO_BATCH", "MIN_TRIAL_SECONDS", "SLICES", "KnobError", "KnobSearch",
           "Knobs", "PlacementResult", "Source", "Trial", "microbatches_need_model", "search_knobs"]

SLICES = (1, 2, 4, 8)
CHUNKS = (2, 3, 4)
# The placements whose stages per rank (interleaved) or waves (waves) the chunks set.
CHUNKED = ("interleaved", "waves")
# The largest micro-batch size -m auto tries: activations grow linearly with it, and past a few
# sequences per microbatch a GPU's matmuls are saturated, so larger ones only cost memory.
MAX_MICRO_BATCH = 16
# The least seconds a trial gets, whatever the share of the time limit.
MIN_TRIAL_SECONDS = 0.5
# Relative difference below which two iteration times tie (the first trial wins).
TIE = 1e-9


class KnobError(ValueError):
    """A knob search that cannot run as asked; the message says what to change."""


class Source(Protocol):
    """What a trial's costs come from (``synth.cli.source.ModelSource`` or ``FileSource``)."""

    has_throughput: bool

    def costs_for(self, placement: Placement, k: int) -> Costs: ...

    def throughput(self, placement: Placement, k: int, makespan: float) -> Throughput | None: ...


MakeSource = Callable[[int | None, int], Source]


@dataclass(frozen=True, slots=True)
class Knobs:
    """One trial's values.

    Attributes:
        m: microbatches.
        k: sequence slices.
        chunks: chunks of interleaved (stages per rank) and waves (waves).
        micro_batch: sequences per microbatch, or None for the source's own (a costs file's).
    """

    m: int
    k: int
    chunks: int
    micro_batch: int | None = None

    def describe(self) -> str:
        batch = "" if self.micro_batch is None else f"micro-batch {self.micro_batch}, "
        return f"{batch}m {self.m}, k {self.k}, chunks {self.chunks}"


@dataclass(frozen=True)
class PlacementResult:
    """The best schedule a trial found on one placement.

    Attributes:
        placement: the placement kind (standard, interleaved, v, waves).
        chunks: its stages per rank (interleaved) or waves (waves); None for standard and v.
        candidate: the best candidate on it (synthesized or from the library): the fastest that fits,
            else the one with the lowest peak.
        throughput: its tokens/s and MFU (None with a costs file).
    """

    placement: str
    chunks: int | None
    candidate: Candidate
    throughput: Throughput | None


@dataclass(frozen=True)
class Trial:
    """One synthesize run on one combination of knobs.

    Attributes:
        knobs: the values tried.
        placements: the placement kinds it searched.
        source: its costs.
        time_limit: the seconds it was given.
        result: what synthesize found, or None when it failed.
        error: why it failed (nothing fits the cap, ...).
        smallest: with nothing fitting, the least cap any of its schedules needs.
        seconds: wall time it took.
    """

    knobs: Knobs
    placements: tuple[str, ...]
    source: Any
    time_limit: float
    result: Synthesis | None = None
    error: str = ""
    smallest: float | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def chosen(self) -> Candidate | None:
        return None if self.result is None else self.result.chosen

    @property
    def throughput(self) -> Throughput | None:
        return None if self.result is None else _throughput(self.source, self.result.chosen)

    @property
    def makespan(self) -> float:
        return math.inf if self.result is None else self.result.chosen.makespan

    @property
    def step_overhead_ms(self) -> float:
        t = self.throughput
        return 0.0 if t is None else t.step_overhead_ms

    @property
    def iteration_ms(self) -> float:
        """The measure: makespan plus the host optimizer step (infinite for a failed trial)."""
        return self.makespan + self.step_overhead_ms

    @property
    def micro_batch(self) -> int | None:
        """The micro-batch size trained (the source's own when the knob is None), None for a costs file."""
        spec = getattr(self.source, "spec", None)
        return self.knobs.micro_batch if spec is None else spec.micro_batch

    def by_placement(self) -> list[PlacementResult]:
        """The best candidate on each placement searched (in the order asked), then the chosen one's
        placement when it is none of them (a library schedule on a placement not searched)."""
        if self.result is None:
            return []
        p, r = self.chosen.schedule.placement.p, self.result
        pool = [*r.synthesized, *(() if r.refined is None else (r.refined,)), *r.baselines]
        out = []
        for kind in self.placements:
            try:
                placement = make_placement(kind, p, self.knobs.chunks)
            except ValueError:
                continue
            here = [c for c in pool if c.schedule.placement == placement]
            if here:  # the fastest that fits, else the one closest to fitting
                out.append(self._result(kind, best(here) or min(here, key=lambda c: (c.peak, c.makespan))))
        if not any(row.candidate.schedule.placement == r.chosen.schedule.placement for row in out):
            out.append(self._result(r.chosen.placement, r.chosen))
        return out

    def _result(self, kind: str, c: Candidate) -> PlacementResult:
        placement = c.schedule.placement
        per_rank = placement.num_stages // placement.p  # a wave is a V: two stages per rank
        chunks = {"interleaved": per_rank, "waves": per_rank // 2}.get(kind)
        return PlacementResult(kind, chunks, c, _throughput(self.source, c))


@dataclass(frozen=True)
class KnobSearch:
    """Every trial and the best.

    Attributes:
        trials: in trial order (micro-batch size, then slices, then chunks, ascending).
        best: the trial with the shortest iteration time (ties: the first), None if every trial failed.
        searched: the knobs searched ("microbatches", "slices", "chunks").
        global_batch: sequences per iteration, when given.
        cap: the memory cap every trial used, in the sources' unit (None: no cap).
        not_tried: ``(what, why)`` for knob values and placements left out before solving.
        notes: what the search says about the knobs asked for (e.g. chunks with no chunked placement).
        time_limit: the whole search's budget, seconds.
        min_trial_seconds: the least a trial was given.
        seconds: the whole search's wall time.
    """

    trials: tuple[Trial, ...]
    best: Trial | None
    searched: tuple[str, ...]
    global_batch: int | None
    cap: float | None
    not_tried: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    time_limit: float = 0.0
    min_trial_seconds: float = MIN_TRIAL_SECONDS
    seconds: float = 0.0

    @property
    def throughput(self) -> bool:
        """Whether the trials have tokens/s (the cost model) or only makespans (a costs file)."""
        return bool(self.trials) and self.trials[0].source.has_throughput

    def failure(self) -> str:
        """Why no trial gave a schedule: the trial needing the least cap's error, else the first error."""
        failed = [t for t in self.trials if not t.ok]
        if not failed:
            return "no knob values could be tried: " + "; ".join(f"{what} ({why})" for what, why in self.not_tried)
        sized = [t for t in failed if t.smallest is not None and math.isfinite(t.smallest)]
        t = min(sized, key=lambda t: t.smallest) if sized else failed[0]
        return f"no trial of the knob search found a schedule; the closest ({t.knobs.describe()}): {t.error}"


def microbatches_need_model(costs: object) -> str:
    """The refusal of ``-m auto`` on a costs file (``costs`` names it)."""
    return (f"--microbatches auto trades the micro-batch size against the number of microbatches, which needs the "
            f"cost model: --costs {costs} gives costs for one micro-batch size; give -m M (or drop --costs and give "
            "--model with --global-batch)")


# ------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True, slots=True)
class _Plan:
    knobs: Knobs
    placements: tuple[str, ...]
    baselines: bool


def _batches(p: int, microbatches: int | str | None, global_batch: int | None,
             micro_batch: int | None, not_tried: list) -> list[tuple[int, int | None]]:
    """``(m, micro-batch size)`` to try: the divisors of the global batch for auto, else the one fixed pair."""
    if microbatches != AUTO:
        m, b = fixed_batch(microbatches, global_batch, micro_batch)
        return [(m or 4 * p, b)]
    if global_batch is None:
        raise KnobError("--microbatches auto needs --global-batch G (sequences per iteration) to split into "
                        "microbatches; give --global-batch, or a fixed -m")
    if micro_batch is not None:
        raise KnobError(f"--microbatches auto searches the micro-batch size; drop --micro-batch-size {micro_batch} "
                        f"(or give -m {global_batch // micro_batch if global_batch % micro_batch == 0 else 'M'})")
    out = []
    for b in range(1, min(global_batch, MAX_MICRO_BATCH) + 1):
        if global_batch % b:
            continue
        m = global_batch // b
        if m < p:
            not_tried.append((f"micro-batch {b}", f"m {m} < {p} stages leaves most of the pipeline idle"))
        else:
            out.append((m, b))
    if not out:
        raise KnobError(f"--global-batch {global_batch} on {p} stages: every micro-batch size leaves fewer "
                        f"microbatches than stages, most of the pipeline idle; use --global-batch {p} or more")
    return out


def _plans(batches: list[tuple[int, int | None]], slices: int | str, chunks: int | str,
           placements: tuple[str, ...], baselines: bool, notes: list) -> list[_Plan]:
    """Every trial in trial order; later chunk values search only the chunked placements."""
    ks = SLICES if slices == AUTO else (slices,)
    chunked = tuple(kind for kind in placements if kind in CHUNKED)
    if chunks == AUTO and not chunked:
        notes.append(f"--chunks auto: chunks set only interleaved and waves, and neither is searched here "
                     f"({', '.join(placements)}); chunks not varied")
    cs = CHUNKS if chunks == AUTO and chunked else (CHUNKS[0] if chunks == AUTO else chunks,)
    out = []
    for m, b in batches:
        for k in ks:
            for index, c in enumerate(cs):
                out.append(_Plan(Knobs(m, k, c, b), placements if index == 0 else chunked,
                                 baselines and index == 0))
    return out


def _buildable(plan: _Plan, source: Source, p: int, not_tried: list) -> tuple[str, ...]:
    """The plan's placements whose costs the source can build (the others to ``not_tried``)."""
    kinds = []
    for kind in plan.placements:
        try:
            source.costs_for(make_placement(kind, p, plan.knobs.chunks), plan.knobs.k)
        except ValueError as err:
            not_tried.append((f"{plan.knobs.describe()}, {kind}", str(err).splitlines()[0]))
            continue
        kinds.append(kind)
    return tuple(kinds)


# ----------------------------------------------------------------------------------------- search
def search_knobs(make_source: MakeSource, p: int, cap: float | None | Callable[[Source, int], float | None], *,
                 microbatches: int | str | None = None, slices: int | str = 1, chunks: int | str = 2,
                 global_batch: int | None = None, micro_batch: int | None = None,
                 options: SynthOptions | None = None, progress: Callable[[int, int, Trial], None] | None = None,
                 min_trial_seconds: float = MIN_TRIAL_SECONDS) -> KnobSearch:
    """Try every combination of the knobs given as ``"auto"`` and keep the fastest (module docstring).

    Args:
        make_source: ``make_source(micro_batch, m)`` gives the costs for that micro-batch size
            (None: the source's own) and m microbatches.
        p: ranks.
        cap: memory per rank in the source's unit, None for no cap, or ``cap(source, m)`` resolved once
            on the first trial's source (e.g. a fraction of 1F1B's peak).
        microbatches: m, ``"auto"`` (needs ``global_batch``), or None (``global_batch / micro_batch``, or 4 p).
        slices: k or ``"auto"``.
        chunks: chunks of interleaved and waves, or ``"auto"``.
        global_batch: sequences per iteration (m x micro-batch size).
        micro_batch: a fixed micro-batch size (not with ``microbatches="auto"``).
        options: the synthesizer's options; ``time_limit`` is the whole search's, ``placements`` and
            ``chunks`` are set per trial.
        progress: ``progress(index, trials, trial)`` after each trial.
        min_trial_seconds: the least time a trial gets.

    Raises:
        KnobError: knobs that cannot be searched as given (the message says what to change).
        CostModelError: a bad combination of batch sizes (``synth.costs.args.fixed_batch``).
    """
    options = options or SynthOptions(placements=PLACEMENTS)
    began = time.perf_counter()
    not_tried: list[tuple[str, str]] = []
    notes: list[str] = []
    sources: dict[tuple[int | None, int], Source] = {}

    def source_for(knobs: Knobs) -> Source:
        key = (knobs.micro_batch, knobs.m)
        if key not in sources:
            sources[key] = make_source(*key)
        return sources[key]

    for name, value in (("microbatches", microbatches), ("slices", slices), ("chunks", chunks)):
        if value != AUTO and not (value is None and name == "microbatches") and not _positive(value):
            raise KnobError(f"{name} must be a positive integer or {AUTO!r}, got {value!r}")
    if microbatches == AUTO:
        probe = make_source(None, p)
        if not probe.has_throughput:
            raise KnobError(microbatches_need_model(getattr(getattr(probe, "user", None), "source", "FILE")))
    batches = _batches(p, microbatches, global_batch, micro_batch, not_tried)
    plans = _plans(batches, slices, chunks, tuple(dict.fromkeys(options.placements)), options.baselines, notes)
    runnable = []
    for plan in plans:
        kinds = _buildable(plan, source_for(plan.knobs), p, not_tried)
        if kinds:
            runnable.append(dataclasses.replace(plan, placements=kinds))
    if callable(cap) and runnable:
        cap = cap(source_for(runnable[0].knobs), runnable[0].knobs.m)
    elif callable(cap):
        cap = None
    deadline = began + options.time_limit
    trials: list[Trial] = []
    unfit: dict[tuple, Trial] = {}  # (k, chunks, placements) -> the trial that fitted nothing
    for index, plan in enumerate(runnable):
        smaller = unfit.get(_same_but_batch(plan))
        if smaller is not None:
            knobs = plan.knobs
            not_tried.append((f"micro-batch {knobs.micro_batch} (k {knobs.k}, chunks {knobs.chunks})",
                              _larger_needs_more(smaller)))
            continue
        left = [later for later in runnable[index:] if _same_but_batch(later) not in unfit]
        share = max(0.0, deadline - time.perf_counter()) * len(plan.placements) / sum(len(x.placements) for x in left)
        trial = _trial(plan, source_for(plan.knobs), p, cap, options, max(min_trial_seconds, share))
        trials.append(trial)
        if not trial.ok and trial.smallest is not None and plan.knobs.micro_batch is not None:
            unfit[_same_but_batch(plan)] = trial
        if progress is not None:
            progress(index, len(runnable), trial)
    return KnobSearch(tuple(trials), _best(trials), _searched(microbatches, slices, chunks), global_batch, cap,
                      tuple(not_tried), tuple(notes), options.time_limit, min_trial_seconds,
                      time.perf_counter() - began)


def _trial(plan: _Plan, source: Source, p: int, cap: float | None, options: SynthOptions, seconds: float) -> Trial:
    """One synthesize run; nothing fitting (or nothing buildable) becomes the trial's error."""
    knobs = plan.knobs
    trial_options = dataclasses.replace(options, placements=plan.placements, chunks=knobs.chunks, time_limit=seconds,
                                        baselines=plan.baselines)
    began = time.perf_counter()
    trial = Trial(knobs, plan.placements, source, seconds)
    try:
        result = synthesize(source.costs_for, p, knobs.m, cap, k=knobs.k, options=trial_options)
    except NoScheduleFits as err:
        return dataclasses.replace(trial, error=str(err), smallest=err.smallest, seconds=time.perf_counter() - began)
    return dataclasses.replace(trial, result=result, seconds=time.perf_counter() - began)


def _same_but_batch(plan: _Plan) -> tuple:
    return plan.knobs.k, plan.knobs.chunks, plan.placements


def _larger_needs_more(smaller: Trial) -> str:
    """Why a larger micro-batch is not tried after ``smaller`` fitted nothing: the least-memory
    schedule (one microbatch in flight) keeps static memory, which does not depend on the micro-batch
    size, plus one microbatch's activations, which grow with it, so it needs more still."""
    return (f"micro-batch {smaller.knobs.micro_batch} with the same slices and chunks fits no schedule, and a larger "
            "micro-batch needs more memory")


def _best(trials: list[Trial]) -> Trial | None:
    """The shortest iteration time; a later trial must beat the best so far by more than `TIE`."""
    chosen = None
    for trial in trials:
        if trial.ok and (chosen is None or trial.iteration_ms < chosen.iteration_ms * (1 - TIE)):
            chosen = trial
    return chosen


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _searched(microbatches, slices, chunks) -> tuple[str, ...]:
    named = {"microbatches": microbatches, "slices": slices, "chunks": chunks}
    return tuple(name for name, value in named.items() if value == AUTO)


def _throughput(source: Source, c: Candidate) -> Throughput | None:
    return source.throughput(c.schedule.placement, c.schedule.k, c.makespan)

