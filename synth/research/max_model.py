"""The largest model that trains at a throughput floor (``synth max-model``, issue 16).

Given a model family (a `TransformerSpec` whose layer count, or width, is scaled), ``p`` GPUs and
a floor, `max_model` finds the largest size that some schedule fits within the memory cap at or
above the floor, for four contenders: **synthesis** (``synth.search.synthesize`` with the user's
`SynthOptions`, the library included unless ``baselines=False``), **1f1b**, **1f1b-recompute**
and the **best library** schedule (plus the floor's own schedule when it is another one).

- **Sizes** (`Family`). ``scale="layers"``: size n is n layers (``n * p * lcm(2, chunks)`` with
  ``partition="even"``, which needs layers that divide every placement's stage count). ``scale="hidden"``:
  size n is n key/value head groups: ``heads = n * g`` (g = heads / kv_heads of the family, so
  grouped-query attention keeps its ratio), ``kv_heads = n``, ``hidden = heads * head_dim`` with
  the family's head_dim, and ``ffn`` in proportion to hidden, rounded to the nearest multiple of
  128 (at least 128; the family's own size keeps its own ffn). Everything else (vocabulary,
  sequence, micro-batch) stays.
- **Floor** (`Floor`): an MFU, tokens/s, or ``at_least=NAME``: NAME's MFU on the largest size NAME
  itself fits (found first by the same search over the library alone: no solver). A contender
  trains a size when its fastest schedule that fits (by the floor's measure, the host optimizer
  step included) meets the floor within a relative 1e-9, so NAME meets its own floor.
- **Evaluations**, cached by size: the library (``synth.search.library``: every library schedule the
  options allow, simulated, no solver; also at ``k`` slices when k > 1) and one solve
  (``synthesize`` with the user's options, ``time_limit`` per solve). Synthesis with the library is
  at least as fast as every library schedule, so where the library meets the floor no solve is
  needed to say synthesis does; where static memory alone is over the cap on every placement
  asked for, no synthesized schedule fits and nothing is solved. The answer's size is always
  solved, for its schedule.
- **Search** (`largest`): from a seed (the floor's size for ``at_least``, else the family's own
  size), double until the predicate fails (up to ``max_scale`` times the family's size, reported
  if reached) or halve until it holds, then bisect between the last size that trains and the first
  that does not. Bisection assumes that a size that fits and meets the floor implies every smaller
  one does (memory grows with size). That holds for memory but only roughly for MFU, which has a
  saw-tooth in ``layers mod p`` (balanced stages): the answer n is always one that trains with
  n + 1 not training, which is what the tests check, but a larger size past a gap could too.
  Time-limited solves make a solved size's "nothing fits" or "below the floor" the search's
  verdict, not a proof (each `Probe` records the solve's gap); "static memory alone is over the
  cap" is exact.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ir.verify import MEMORY_RTOL
from synth.baselines import BASELINES
from synth.candidates import Candidate, NoScheduleFits, Synthesis
from synth.cli.source import ModelSource
from synth.costs.args import resolve_model
from synth.costs.formulas import total_params
from synth.costs.hardware import Hardware, hardware
from synth.costs.problem import Partition, Throughput, Training
from synth.costs.spec import TransformerSpec
from synth.search import PLACEMENTS, SynthOptions, make_placement, show_bytes, synthesize
from synth.search import library as library_schedules

__all__ = ["CONTENDERS", "DEFAULT_OPTIONS", "Answer", "Family", "Floor", "MaxModel", "NothingTrains", "Probe",
           "Scale", "largest", "max_model", "params_text"]

CONTENDERS = ("synthesis", "1f1b", "1f1b-recompute", "best library")
# What the search runs per size unless told: every placement, full horizon when small enough (as `synth`).
DEFAULT_OPTIONS = SynthOptions(placements=PLACEMENTS, optimize="auto")
DEFAULT_MAX_SCALE = 64
FFN_MULTIPLE = 128
TOLERANCE = 1e-9


class Scale(StrEnum):
    LAYERS = "layers"
    HIDDEN = "hidden"


class NothingTrains(ValueError):
    """No size of the family trains at the floor; the message says what was found and what to change."""


@dataclass(frozen=True, slots=True)
class Floor:
    """The throughput a size must reach; exactly one field (none: ``at_least="1f1b"``).

    Attributes:
        mfu: model FLOPs utilization, a fraction in (0, 1].
        tokens_per_s: tokens per second of one pipeline.
        at_least: a library schedule's name: its MFU on the largest size it fits.
    """

    mfu: float | None = None
    tokens_per_s: float | None = None
    at_least: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("mfu", "tokens_per_s", "at_least") if getattr(self, name) is not None]
        if not given:
            object.__setattr__(self, "at_least", "1f1b")
        elif len(given) > 1:
            raise ValueError(f"give one floor (mfu, tokens_per_s or at_least), got {' and '.join(given)}")
        if self.mfu is not None and not (isinstance(self.mfu, int | float) and 0 < self.mfu <= 1):
            raise ValueError(f"the MFU floor is a fraction in (0, 1] (0.45 for 45%), got {self.mfu!r}")
        if self.tokens_per_s is not None and not (isinstance(self.tokens_per_s, int | float)
                                                  and 0 < self.tokens_per_s < math.inf):
            raise ValueError(f"the tokens/s floor must be a number > 0, got {self.tokens_per_s!r}")
        if self.at_least is not None and self.at_least not in BASELINES:
            raise ValueError(f"unknown library schedule {self.at_least!r} for the floor; known: {', '.join(BASELINES)}")

    def of(self, throughput: Throughput) -> float:
        """The floor's measure of ``throughput``."""
        return throughput.tokens_per_s if self.tokens_per_s is not None else throughput.mfu

    def show(self, value: float) -> str:
        return f"{value:,.0f} tokens/s" if self.tokens_per_s is not None else f"MFU {100 * value:.1f}%"


@dataclass(frozen=True, slots=True)
class Family:
    """A model family: ``base`` scaled by ``scale``; size n is n layers (times ``step``) or n key/value
    head groups (see the module docstring)."""

    base: TransformerSpec
    scale: Scale = Scale.LAYERS
    step: int = 1

    @property
    def group(self) -> int:
        return self.base.heads // self.base.n_kv_heads

    @property
    def base_size(self) -> int:
        if self.scale is Scale.HIDDEN:
            return self.base.n_kv_heads
        return max(1, round(self.base.layers / self.step))

    def least(self, p: int) -> int:
        """The smallest size the balanced partition can spread over ``p`` stages."""
        return max(1, p - 2) if self.scale is Scale.LAYERS and self.step == 1 else 1

    def spec(self, n: int) -> TransformerSpec:
        base = self.base
        if self.scale is Scale.LAYERS:
            return base.with_(layers=n * self.step, name=f"{base.name}-{n * self.step}L")
        heads, d_head = n * self.group, base.d_head
        hidden = heads * d_head
        ffn = max(FFN_MULTIPLE, FFN_MULTIPLE * math.floor(base.ffn * hidden / base.hidden / FFN_MULTIPLE + 0.5))
        if n == self.base_size:
            ffn = base.ffn  # the family's own size is the family's own model
        return base.with_(hidden=hidden, heads=heads, kv_heads=n, head_dim=base.head_dim, ffn=ffn,
                          name=f"{base.name}-h{hidden}")

    def label(self, n: int) -> str:
        spec = self.spec(n)
        if self.scale is Scale.HIDDEN:
            return f"hidden {spec.hidden}"
        return f"{spec.layers} layer{'s' if spec.layers != 1 else ''}"


@dataclass(frozen=True)
class Probe:
    """One evaluation of one size: ``kind`` "library" (no solver), "solve", or "static" (static memory
    alone is over the cap on every placement asked for: not solved). ``best`` is the fastest fitting
    schedule found (None: nothing fits); ``meets`` is None before the floor is known."""

    size: int
    label: str
    params: int
    kind: str
    best: str | None
    mfu: float | None
    tokens_per_s: float | None
    meets: bool | None
    seconds: float
    gap: float | None = None

    def line(self) -> str:
        head = f"  {self.label} ({params_text(self.params)} params), {self.kind}: "
        if self.kind == "static":
            return head + "static memory alone is over the cap on every placement, not solved"
        if self.best is None:
            return head + f"nothing fits ({self.seconds:.1f} s)"
        verdict = {None: "fits", True: "meets the floor", False: "below the floor"}[self.meets]
        gap = "" if self.gap is None else f", gap {100 * self.gap:.1f}%"
        return head + (f"fastest {self.best}, MFU {100 * self.mfu:.1f}%, {self.tokens_per_s:,.0f} tokens/s, {verdict}"
                       f"{gap} ({self.seconds:.1f} s)")


@dataclass(frozen=True)
class Answer:
    """A contender's largest size (``size`` None: no size trains; ``note`` says why).

    Attributes:
        contender: one of `CONTENDERS`, or the floor's schedule.
        size, label, spec, params: the size, as the family counts it, its spec and parameters.
        candidate: the schedule chosen at that size, with its simulation.
        throughput: its throughput (host optimizer step included).
        ceiling: the size is the search's ceiling (larger ones were not tried).
        gap, proven: for synthesis, the chosen schedule's gap to its placement's bound and whether
            it is proven optimal there (gap 0, or the full horizon proven on that placement).
        note: why there is no answer, or what else to know.
    """

    contender: str
    size: int | None
    label: str = ""
    spec: TransformerSpec | None = None
    params: int = 0
    candidate: Candidate | None = None
    throughput: Throughput | None = None
    ceiling: bool = False
    gap: float | None = None
    proven: bool | None = None
    note: str = ""

    @property
    def iteration_ms(self) -> float:
        t = self.throughput
        return t.makespan_ms + t.step_overhead_ms


@dataclass(frozen=True)
class MaxModel:
    """`max_model`'s result: every contender's answer, the floor and the evaluations behind them.

    Attributes:
        family, hardware, p, m, k, mem_cap: what was searched (the cap in bytes per GPU).
        floor, floor_value: the floor asked for and its value (a fraction for MFU, else tokens/s).
        floor_from: where the value came from ("given", or the ``at_least`` schedule's size).
        answers: one per contender, synthesis first (`CONTENDERS`, plus the floor's schedule).
        probes: every evaluation, in order.
        time_limit: seconds per solve; library: whether synthesis included the library.
        seconds: wall time of the whole search.
    """

    family: Family
    hardware: Hardware
    p: int
    m: int
    k: int
    mem_cap: float
    floor: Floor
    floor_value: float
    floor_from: str
    answers: tuple[Answer, ...]
    probes: tuple[Probe, ...]
    time_limit: float
    library: bool
    seconds: float

    def answer(self, contender: str) -> Answer:
        return next(a for a in self.answers if a.contender == contender)

    @property
    def ratio(self) -> float | None:
        """Synthesis's parameters over 1F1B's (None when 1F1B trains no size)."""
        ours, theirs = self.answer("synthesis"), self.answer("1f1b")
        return None if theirs.size is None else ours.params / theirs.params

    def lines(self) -> list[str]:
        from synth.cli.max_model import report_lines

        return report_lines(self)


def params_text(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


# ------------------------------------------------------------------------------------------ search
def largest(trains: Callable[[int], bool], seed: int, least: int, ceiling: int) -> tuple[int | None, bool]:
    """The largest n in ``[least, ceiling]`` with ``trains(n)``, from ``seed``: double (or halve) to
    bracket, then bisect; assumes ``trains`` holds up to some size and not after (module docstring).
    Returns ``(n, reached_ceiling)``; n is None when nothing down to ``least`` trains."""
    seed = min(max(seed, least), ceiling)
    if trains(seed):
        lo, hi = seed, None
        while hi is None:
            if lo >= ceiling:
                return lo, True
            nxt = min(2 * lo, ceiling)
            lo, hi = (nxt, None) if trains(nxt) else (lo, nxt)
    else:
        lo, hi = None, seed
        while lo is None:
            if hi <= least:
                return None, False
            nxt = max(hi // 2, least)
            lo, hi = (nxt, hi) if trains(nxt) else (None, nxt)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if trains(mid) else (lo, mid)
    return lo, False


class _Sizes:
    """The evaluations, cached by size: each size's cost model, library and solve."""

    def __init__(self, family: Family, hw: Hardware, training: Training, p: int, m: int, k: int, cap: float,
                 options: SynthOptions, partition: str, slicing: str, progress: Callable | None) -> None:
        self.family, self.hw, self.training, self.p, self.m, self.k, self.cap = family, hw, training, p, m, k, cap
        self.options, self.partition, self.slicing, self.progress = options, partition, slicing, progress
        self.floor: Floor | None = None
        self.floor_value: float | None = None
        self._sources: dict[int, ModelSource] = {}
        self._library: dict[int, tuple[Candidate, ...]] = {}
        self._solves: dict[int, Synthesis | None] = {}
        self.skipped: dict[str, str] = {}  # library schedules not built, and why (the first size's reason)
        self.probes: list[Probe] = []

    def source(self, n: int) -> ModelSource:
        if n not in self._sources:
            self._sources[n] = ModelSource(self.family.spec(n), self.hw, self.training, self.m, self.partition,
                                           self.slicing)
        return self._sources[n]

    def throughput(self, n: int, c: Candidate) -> Throughput:
        return self.source(n).throughput(c.schedule.placement, c.schedule.k, c.makespan)

    def fastest(self, n: int, candidates) -> Candidate | None:
        """The fitting candidate with the most throughput (MFU ranks as tokens/s at one size), lower peak on ties."""
        fitting = [c for c in candidates if c.fits]
        return max(fitting, key=lambda c: (self.throughput(n, c).mfu, -c.peak), default=None)

    def meets(self, n: int, c: Candidate | None) -> bool:
        return c is not None and self.floor.of(self.throughput(n, c)) >= self.floor_value * (1 - TOLERANCE)

    def library(self, n: int) -> tuple[Candidate, ...]:
        """Every library schedule the options allow at size n (whole microbatches, and ``k`` slices),
        judged against the cap."""
        if n not in self._library:
            began, found = time.perf_counter(), []
            for k in dict.fromkeys((1, self.k)):
                built, skipped = library_schedules(self.source(n).costs_for, self.p, self.m, k=k, options=self.options)
                found += [dataclasses.replace(c, fits=c.peak <= self.cap * (1 + MEMORY_RTOL)) for c in built]
                self.skipped.update((name, why) for name, why in skipped if name not in self.skipped)
            self._library[n] = tuple(found)
            self._probe(n, "library", self.fastest(n, found), began)
        return self._library[n]

    def solve(self, n: int) -> Synthesis | None:
        """The user's search at size n (None: nothing fits); not run where static memory alone is over
        the cap on every placement asked for (peaks include it). ``synth.search.least_memory`` is no
        such test: the list schedulers can fit below its sequential schedule's peak."""
        if n not in self._solves:
            began, result = time.perf_counter(), None
            static = self._static_over(n)
            if not static:
                try:
                    result = synthesize(self.source(n).costs_for, self.p, self.m, self.cap, k=self.k,
                                        options=self.options)
                except NoScheduleFits:
                    pass
            self._solves[n] = result
            self._probe(n, "static" if static else "solve", None if result is None else self.synthesized(n), began,
                        None if result is None else result.gap)
        return self._solves[n]

    def synthesized(self, n: int) -> Candidate | None:
        """Synthesis's answer at a solved size: the chosen schedule, or with the library any library
        schedule that beats it on throughput (the host optimizer step differs by placement)."""
        result = self._solves[n]
        if result is None:
            return None
        library = self.library(n) if self.options.baselines else ()
        return self.fastest(n, (result.chosen, *library))

    def _static_over(self, n: int) -> bool:
        """Static memory alone is over the cap on every placement synthesis may use (or none builds)."""
        source = self.source(n)
        for kind in self.options.placements:
            try:
                static = source.costs_for(make_placement(kind, self.p, self.options.chunks), self.k).static
            except ValueError:
                continue
            if max(static, default=0.0) <= self.cap * (1 + MEMORY_RTOL):
                return False
        return True

    def _probe(self, n: int, kind: str, best: Candidate | None, began: float, gap: float | None = None) -> None:
        t = None if best is None else self.throughput(n, best)
        meets = None if self.floor is None or best is None else self.meets(n, best)
        probe = Probe(n, self.family.label(n), total_params(self.family.spec(n)), kind,
                      None if best is None else best.name, None if t is None else t.mfu,
                      None if t is None else t.tokens_per_s, meets, time.perf_counter() - began, gap)
        self.probes.append(probe)
        if self.progress is not None:
            self.progress(probe)

    # ----------------------------------------------------------------------------- contenders
    def named(self, n: int, name: str) -> Candidate | None:
        return next((c for c in self.library(n) if c.name == name and c.fits), None)

    def best_library(self, n: int) -> Candidate | None:
        return self.fastest(n, self.library(n))

    def synthesis_trains(self, n: int) -> bool:
        if self.options.baselines and self.meets(n, self.best_library(n)):
            return True  # synthesis with the library is at least as fast as the library
        if self.solve(n) is None:
            return False
        return self.meets(n, self.synthesized(n))


def max_model(model: TransformerSpec | str, gpu: Hardware | str, p: int, *, m: int | None = None,
              floor: Floor | None = None, scale: Scale | str = Scale.LAYERS, mem_cap: float | None = None,
              training: Training | None = None, k: int = 1, partition: str = "balanced", slicing: str = "balanced",
              options: SynthOptions | None = None, max_scale: int = DEFAULT_MAX_SCALE,
              progress: Callable[[Probe], None] | None = None) -> MaxModel:
    """The largest size of ``model``'s family that trains on ``p`` GPUs at the floor, per contender.

    Args:
        model: the family's base: a spec, a preset name or a config.json path.
        gpu: a `Hardware` or a preset name.
        p: pipeline ranks.
        m: microbatches per iteration (default 4p).
        floor: the throughput floor (default: 1F1B's MFU on the largest size it fits).
        scale: "layers" or "hidden" (module docstring).
        mem_cap: bytes per GPU (default the GPU's memory).
        training: optimizer-state layout (``Training(offload_optimizer="states+master")``).
        k: sequence slices of the synthesized schedules.
        partition, slicing: as ``synth.costs.build_problem``.
        options: the search per size (default `DEFAULT_OPTIONS`); ``time_limit`` is per solve and
            ``baselines=False`` makes the synthesis contender from scratch.
        max_scale: the largest size tried is this many times the family's own.
        progress: called with each `Probe` as it is made.

    Raises:
        NothingTrains: synthesis trains no size (or the floor's schedule fits none), with the fix.
        CostModelError: bad model, GPU or training options.
    """
    began = time.perf_counter()
    spec = resolve_model(model) if isinstance(model, str) else model
    hw = hardware(gpu) if isinstance(gpu, str) else gpu
    floor, options = floor or Floor(), options or DEFAULT_OPTIONS
    if isinstance(max_scale, bool) or not isinstance(max_scale, int) or max_scale < 2:
        raise ValueError(f"max_scale must be an integer >= 2, got {max_scale!r}")
    step = p * math.lcm(2, options.chunks) if Partition(partition) is Partition.EVEN else 1
    family = Family(spec, Scale(scale), step if Scale(scale) is Scale.LAYERS else 1)
    cap = hw.memory if mem_cap is None else mem_cap
    sizes = _Sizes(family, hw, training or Training(), p, m or 4 * p, k, cap, options, partition, slicing, progress)
    least = family.least(p)
    ceiling = max(family.base_size * max_scale, least)
    seed, floor_from = family.base_size, "given"
    if floor.at_least is not None:
        name = floor.at_least
        n, _ = largest(lambda n: sizes.named(n, name) is not None, family.base_size, least, ceiling)
        if n is None:
            why = _skip_reason(sizes, name) or f"down to {family.label(least)}"
            raise NothingTrains(f"{name} fits no size of {spec.name}'s family on {p} x {hw.name} within "
                                f"{show_bytes(cap)} ({why}), so it sets no floor; {_FIX}")
        sizes.floor_value = floor.of(sizes.throughput(n, sizes.named(n, name)))
        seed, floor_from = n, f"{name}'s on the largest size it fits: {family.label(n)}, " \
                              f"{params_text(total_params(family.spec(n)))} params"
    else:
        sizes.floor_value = floor.mfu if floor.mfu is not None else floor.tokens_per_s
    sizes.floor = floor
    contenders = {"synthesis": sizes.synthesis_trains,
                  "1f1b": lambda n: sizes.meets(n, sizes.named(n, "1f1b")),
                  "1f1b-recompute": lambda n: sizes.meets(n, sizes.named(n, "1f1b-recompute"))}
    if floor.at_least is not None and floor.at_least not in contenders:
        contenders[floor.at_least] = lambda n: sizes.meets(n, sizes.named(n, floor.at_least))
    contenders["best library"] = lambda n: sizes.meets(n, sizes.best_library(n))
    answers = []
    for name, trains in contenders.items():
        n, at_ceiling = largest(_memo(trains), seed, least, ceiling)
        answers.append(_answer(sizes, name, n, at_ceiling, least, ceiling))
        if answers[0].size is None:  # synthesis is searched first: without it there is no answer
            raise NothingTrains(f"no size of {spec.name}'s family trains at {floor.show(sizes.floor_value)} on {p} "
                                f"x {hw.name} within {show_bytes(cap)}: {answers[0].note}; {_FIX}")
    return MaxModel(family, hw, p, m or 4 * p, k, cap, floor, sizes.floor_value, floor_from, tuple(answers),
                    tuple(sizes.probes), options.time_limit, options.baselines, time.perf_counter() - began)


_FIX = ("use a lower floor (--mfu, --tokens-per-s, --at-least), more stages, a larger --mem-cap, or optimizer-state "
        "offload (--offload-optimizer states+master)")


def _memo(trains: Callable[[int], bool]) -> Callable[[int], bool]:
    seen: dict[int, bool] = {}

    def cached(n: int) -> bool:
        if n not in seen:
            seen[n] = trains(n)
        return seen[n]

    return cached


def _answer(sizes: _Sizes, name: str, n: int | None, at_ceiling: bool, least: int, ceiling: int) -> Answer:
    family = sizes.family
    if n is None:
        return Answer(name, None, note=_why_none(sizes, name, least, ceiling))
    gap = proven = None
    if name == "synthesis":
        result = sizes.solve(n)
        # None: static memory rules out every placement asked for, and a library schedule trains
        chosen = sizes.synthesized(n) or sizes.best_library(n)
        if result is not None and chosen is result.chosen:  # else a library schedule won on throughput
            refined = result.refined
            gap = result.gap
            proven = (gap is not None and gap <= TOLERANCE) or (
                refined is not None and refined.horizon is not None and refined.horizon.proven
                and refined.schedule.placement == chosen.schedule.placement)
    else:
        chosen = sizes.best_library(n) if name == "best library" else sizes.named(n, name)
    note = f"at the ceiling ({ceiling // family.base_size}x the family's size): larger sizes not tried" \
        if at_ceiling else ""
    return Answer(name, n, family.label(n), family.spec(n), total_params(family.spec(n)), chosen,
                  sizes.throughput(n, chosen), at_ceiling, gap, proven, note)


def _why_none(sizes: _Sizes, name: str, least: int, ceiling: int) -> str:
    """Why a contender trains no size: what it reaches where it fits, or that it fits nowhere."""
    family = sizes.family
    if name == "synthesis":
        if sizes.solve(least) is None:
            return f"nothing fits even {family.label(least)}"
        reached = [p for p in sizes.probes if p.kind == "solve" and p.best is not None]
        top = max(reached, key=lambda p: p.tokens_per_s if sizes.floor.tokens_per_s is not None else p.mfu)
        value = top.tokens_per_s if sizes.floor.tokens_per_s is not None else top.mfu
        return f"the best of the sizes solved is {sizes.floor.show(value)} ({top.label}, {top.best})"
    pick = sizes.best_library if name == "best library" else (lambda n: sizes.named(n, name))
    n, _ = largest(lambda n: pick(n) is not None, family.base_size, least, ceiling)
    if n is None:
        allowed = _skip_reason(sizes, name)
        return allowed or f"fits no size down to {family.label(least)}"
    t = sizes.throughput(n, pick(n))
    return f"below the floor; the largest size it fits is {family.label(n)} at {sizes.floor.show(sizes.floor.of(t))}"


def _skip_reason(sizes: _Sizes, name: str) -> str:
    """Why the options leave a library schedule out ("" when they allow it)."""
    why = sizes.skipped.get(name)
    return f"not evaluated: {why}" if why else ""
