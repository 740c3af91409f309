"""V-ZB: the Zero Bubble authors' cost-aware greedy ZB-V, the "zb" memory setting of the V-shape
schedules in "Pipeline Parallelism with Controllable Memory" (Qi, Wan, Amar, Lin; arXiv 2405.15362)
and the schedule behind the ZB-V runs of Qi et al., "Zero Bubble Pipeline Parallelism" (arXiv
2401.10241, sec. 6). The fixed ZB-V order of the same paper (torch's port) is ``synth.baselines.zb_v``;
V-Half / V-Min are ``synth.baselines.controllable_memory``.

Source: sail-sg/zero-bubble-pipeline-parallelism (commit 39f2c186a275), file
``megatron/core/pipeline_parallel/zerobubble/scheduler/zbv.py``, ``PipelineGraph.try_v_schedule`` and
``create_schedule``; ``zerobubble/runtime.py`` feeds it, for V schedules, one F, B, W and comm time
(each rank's average, then the median over ranks: ``avg_then_mid``) and ``max_mem=None``, which the
graph turns into ``2 * n_stage * f_mem``: 2p chunk activations, 1F1B's peak; ``zbpp_utils.py`` makes
``--zero-bubble-v-schedule-mem-setup zb`` (this greedy) the default V setting.

Placement ``Placement.v_shape(p)``: rank r holds the down chunk (stage r) and the up chunk (stage
2p-1-r); backward split into B and W. The greedy simulates as it goes (each pass at the later of its
rank's clock and its cross-rank input plus comm) and counts each rank's idle time after its first pass:

1. warm-up: one down-chunk F per rank; then from the last rank back, rank r's first up-chunk F, preceded
   by extra down-chunk F's on ranks 0..r while they end before that F's input arrives and rank r has
   room for 2 + 2r more chunk activations;
2. top-up: rounds of one F per rank (last rank first), alternating down and up chunk, until each rank
   has as many F's as the rank before it and more up-chunk F's;
3. 2m rounds of: W's where a B would break the limit; one B per rank (the down chunk's where its input
   is there, last rank first, else the up chunk's, first rank first); one F per rank (up chunk if its
   input is there, else down chunk if its input is there) after W's where an F would break the limit.
   Before each such B or F, W's (oldest B first) fill the wait for its input while a whole W fits;
   one more W goes in if the rest of the wait exceeds the rank's idle allowance (the largest idle time
   so far, or an earlier pass's spread) - always before a down-chunk B, before an up-chunk B only with
   ``fill_b``, before an F only with ``fill_f``;
4. the remaining W's;
5. rerun with the last pass's per-rank idle times as allowances while that lowers the largest idle time;
   do all that for the four (fill_b, fill_f) settings and keep the one with the smallest largest idle
   time (the first on ties).

Theirs: every decision above, the inputs (one time per pass kind; one memory change per kind: F +act,
B -(act - wact), W -wact) and the default limit. Ours: the code; reading those inputs from ``ir.Costs``
(upper median of per-rank averages, without their clamp to >= 1); a ValueError where their code asserts
(a limit it cannot keep: it needs about 2p chunk activations once m >= p, so v-half / v-min are the
families for less); ``mem_limit=0`` meaning zero; a 1e-9 relative slack on the memory test. Where a
pass has no cross-rank input the reference's "one more W" test reads ``end_time[-1]`` (the last
entry of its table, still unset then), so it never fires; here it is skipped. The output was compared
with the authors' ``try_v_schedule`` / ``create_schedule`` run unchanged: the same program on every
rank in all 1,876 cases tried (p <= 9, m <= 5p, random F/B/W/comm, act/wact and limits), and the same
limits rejected.

Measured (``ir.simulate``; tests in ``tests/synth/baselines/test_v_zb.py``), against zb-v, chunk costs
half a full stage, activations live until W (wact = act):

- F = B = W, no comm, m >= 2p-1: the same makespan, 3m + (p-1)/2 full-stage passes, and the same
  per-rank peak, p full-stage activations (2p chunks), as zb-v; the order itself differs.
- F = B = W, no comm, m < 2p-1: never slower than zb-v (m = 1, p >= 2: the dependency chain, 4p+1 chunk
  passes, one less than zb-v), the same highest peak min(m, p), though some ranks hold more than there.
- skewed, no comm, p in {2, 4, 8}, m in {2p, 3p, 4p}: 1:2:1 ties zb-v; 2:1:1 and 1:1:2 are 1.5-4.4%
  faster for p >= 4 (ties at p = 2).
- not faster everywhere: with the ZB paper's profiled 1.5B costs (F 18.522, B 18.086, W 9.337, comm
  0.601 ms) it is 0.06-0.57% slower at p = 2 and 4 (0.05-0.09% faster at p = 8); F = B = W with
  comm 0.1 is up to 1.5% slower at p = 2 and 8; over 600 random F/B/W/comm draws it lost in 82, by up
  to 2.5% (m >= 2p-1) and 7% (smaller m). The issue's "0.2-2.2% faster on skewed F/B/W" holds for
  the comm-free 2:1:1 and 1:1:2 cases above, not in general.
- the peak stays within the limit when every chunk has the same act and wact (the greedy sees one
  value, as the authors' "V schedule does not consider memory differences between stages").
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ir import Action, Costs, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["BASELINE", "GreedyCosts", "greedy_costs", "v_zb"]

# Pass kinds on a rank, in the order a microbatch reaches them (the reference's "FfBbWw"):
# the up chunk's backward comes first, so B_UP / W_UP are the reference's B/W "chunk 0".
F_DOWN, F_UP, B_UP, B_DOWN, W_UP, W_DOWN = range(6)
_OP = (Op.F, Op.F, Op.B, Op.B, Op.W, Op.W)
_W_OF = {B_UP: W_UP, B_DOWN: W_DOWN}
_UP_KINDS = (F_UP, B_UP, W_UP)
_FLOWS_DOWN = (F_DOWN, B_UP)  # input comes from rank r-1; F_UP and B_DOWN get theirs from r+1
_MEM_SLACK = 1e-9  # relative; keeps float sums of act/wact from tripping an exactly-met limit


class _Stuck(Exception):
    """The greedy cannot place a pass: over the memory limit or an input not yet made."""


@dataclass(frozen=True, slots=True)
class GreedyCosts:
    """What the greedy sees: one time and one memory change per pass, the same on every rank and chunk.

    Attributes:
        f, b, w: forward, input-gradient and weight-gradient time of one chunk.
        comm: latency of a cross-rank activation or gradient.
        f_mem: activation bytes an F keeps (> 0 for a limit to bind).
        b_mem, w_mem: the (non-positive) change a B and a W make.
        mem_limit: bytes of activations a rank may hold.
    """

    f: float
    b: float
    w: float
    comm: float
    f_mem: float
    b_mem: float
    w_mem: float
    mem_limit: float

    def time(self, kind: int) -> float:
        return (self.f, self.f, self.b, self.b, self.w, self.w)[kind]

    def mem(self, kind: int) -> float:
        return (self.f_mem, self.f_mem, self.b_mem, self.b_mem, self.w_mem, self.w_mem)[kind]


def greedy_costs(p: int, costs: Costs | None = None, mem_limit: float | None = None) -> GreedyCosts:
    """The greedy's inputs from per-stage costs (2p stages), as the authors derive them from profiling:
    each rank's average over its two chunks, then the median over ranks. No costs: F = B = W = 1, no
    comm, one unit of activations per chunk kept until W. Default limit: 2p chunk activations."""
    if costs is None:
        f = b = w = act = wact = 1.0
        comm = 0.0
    else:
        if costs.num_stages != 2 * p or costs.k != 1:
            raise ValueError(f"v-zb needs costs for 2p = {2 * p} stages with k = 1, got {costs.num_stages} x {costs.k}")
        units = [(costs.unit(r), costs.unit(2 * p - 1 - r)) for r in range(p)]
        f, b, w, act, wact = (_mid([(getattr(x, n) + getattr(y, n)) / 2 for x, y in units])
                              for n in ("f", "b", "w", "act", "wact"))
        # the comm of every cross-rank edge; stage p-1 feeds stage p on its own rank
        comm = _mid([costs.unit(s).comm for s in range(2 * p - 1) if s != p - 1]) if p > 1 else 0.0
    limit = 2 * p * act if mem_limit is None else float(mem_limit)
    if not limit >= 0 or math.isinf(limit):
        raise ValueError(f"mem_limit must be a finite number >= 0, got {mem_limit!r}")
    return GreedyCosts(f, b, w, comm, act, -(act - wact), -wact, limit)


def _mid(values: list[float]) -> float:
    """The upper median, as the authors take it (``sorted(a)[len(a) // 2]``)."""
    return sorted(values)[len(values) // 2]


@dataclass(slots=True)
class _Run:
    """One pass of the greedy: every rank's program so far, with the times the greedy predicts.

    ``approved`` is the per-rank idle time of an earlier pass; a rank may then idle up to
    ``max(approved) - approved[r]`` more before a W is put in front of a waiting pass.
    """

    p: int
    m: int
    g: GreedyCosts
    fill_f: bool
    fill_b: bool
    approved: tuple[float, ...] | None = None
    count: list[list[int]] = field(init=False)
    end: dict[tuple[int, int, int], float] = field(init=False, default_factory=dict)
    now: list[float] = field(init=False)
    mem: list[float] = field(init=False)
    idle: list[float] = field(init=False)
    pending: list[deque[int]] = field(init=False)
    program: list[list[tuple[int, int]]] = field(init=False)

    def __post_init__(self) -> None:
        self.count = [[0] * 6 for _ in range(self.p)]
        self.now, self.mem, self.idle = [0.0] * self.p, [0.0] * self.p, [0.0] * self.p
        self.pending = [deque() for _ in range(self.p)]
        self.program = [[] for _ in range(self.p)]

    def fits(self, r: int, delta: float) -> bool:
        return self.mem[r] + delta <= self.g.mem_limit * (1 + _MEM_SLACK)

    def input_ready(self, kind: int, r: int) -> float | None:
        """When the cross-rank input of rank r's next ``kind`` pass arrives; None if it has none.

        Raises:
            _Stuck: the input has not been placed yet.
        """
        if kind > B_DOWN:
            return None
        src = r - 1 if kind in _FLOWS_DOWN else r + 1
        if not 0 <= src < self.p:
            return None
        end = self.end.get((kind, src, self.count[r][kind]))
        if end is None:
            raise _Stuck(f"rank {r}: input of pass {kind} not made yet")
        return end + self.g.comm

    def place(self, kind: int, r: int) -> None:
        """Append rank r's next ``kind`` pass, as early as its inputs allow."""
        mb = self.count[r][kind]
        same_rank_input = (kind - 1, r, mb) if 0 < kind <= B_DOWN else (kind - 2, r, mb) if kind > B_DOWN else None
        if mb >= self.m or (same_rank_input and same_rank_input not in self.end):
            raise _Stuck(f"rank {r}: pass {kind} of microbatch {mb} cannot go next")
        if not self.fits(r, self.g.mem(kind)):
            raise _Stuck(f"rank {r}: pass {kind} of microbatch {mb} would exceed the memory limit")
        cost = self.g.time(kind)
        ready = self.input_ready(kind, r)
        end = max(self.now[r], -math.inf if ready is None else ready) + cost
        if self.count[r][F_DOWN] > 0:  # idle before a rank's first pass is not counted
            self.idle[r] += end - (self.now[r] + cost)
        self.end[kind, r, mb] = self.now[r] = end
        self.mem[r] += self.g.mem(kind)
        self.program[r].append((kind, mb))
        self.count[r][kind] += 1
        if kind in _W_OF:
            self.pending[r].append(_W_OF[kind])

    def place_w(self, r: int) -> None:
        """Append the W of rank r's oldest B that has none yet."""
        if not self.pending[r]:
            raise _Stuck(f"rank {r}: memory limit reached with no W left to free it")
        self.place(self.pending[r].popleft(), r)

    def max_idle(self, r: int | None = None) -> float:
        top = max(0.0, *self.idle)
        if r is not None and self.approved is not None:
            top = max(top, max(self.approved) - self.approved[r])
        return top


def _warm_up(run: _Run) -> None:
    """One F_DOWN on every rank; then, from the last rank back, extra F_DOWNs on ranks 0..r while
    rank r would otherwise wait for its first F_UP input (and has room for them), then that F_UP."""
    p, m, g = run.p, run.m, run.g
    for r in range(p):
        run.place(F_DOWN, r)
    for r in reversed(range(p)):
        if r < p - 1:
            ready = run.end[F_UP, r + 1, 0] + g.comm
            while (run.fits(r, g.f_mem * (2 + 2 * r)) and run.now[r] + g.f <= ready
                   and run.count[r][F_DOWN] < m):
                for j in range(r + 1):
                    run.place(F_DOWN, j)
        run.place(F_UP, r)


def _top_up_forwards(run: _Run) -> None:
    """Give each rank at least as many forwards as the rank before it, and more F_UPs, by rounds of
    one forward per rank (last rank first), the rounds alternating F_DOWN and F_UP."""
    p, m = run.p, run.m
    kind = F_DOWN
    for r in range(1, p):
        c, prev = run.count[r], run.count[r - 1]
        while c[F_DOWN] + c[F_UP] < prev[F_DOWN] + prev[F_UP] or c[F_UP] <= prev[F_UP] < m:
            for j in range(p - 1, r - 1, -1):
                if run.count[j][kind] < m:
                    run.place(kind, j)
            kind = F_UP if kind == F_DOWN else F_DOWN


def _fill_then_place(run: _Run, kind: int, r: int, may_fill: bool) -> None:
    """Put W's in front of rank r's next ``kind`` pass while they fit before its input arrives; one
    more if the remaining wait exceeds the rank's idle allowance (and ``may_fill``); then the pass."""
    ready = run.input_ready(kind, r)
    if ready is not None:
        while run.pending[r] and ready >= run.now[r] + run.g.w:
            run.place_w(r)
        if run.pending[r] and may_fill and ready - run.now[r] > run.max_idle(r) - run.idle[r]:
            run.place_w(r)
    run.place(kind, r)


def _backward_round(run: _Run) -> None:
    """One B per rank: B_DOWN where its input is there (last rank first), else B_UP (first rank first)."""
    p, m = run.p, run.m
    for r in range(p):
        while not run.fits(r, run.g.b_mem):
            run.place_w(r)
    down, up = [], []
    for r in range(p):
        c = run.count[r]
        if c[B_DOWN] >= c[B_UP]:
            up.append(r)
        elif r == p - 1 or (B_DOWN, r + 1, c[B_DOWN]) in run.end or c[B_UP] >= m:
            down.append(r)
        else:
            up.append(r)
    for r in reversed(down):
        _fill_then_place(run, B_DOWN, r, may_fill=True)
    for r in up:
        _fill_then_place(run, B_UP, r, may_fill=run.fill_b)


def _forward_round(run: _Run) -> None:
    """At most one F per rank: F_UP if its input is there, else F_DOWN if its input is there."""
    p, m = run.p, run.m
    for r in range(p):
        c = run.count[r]
        if c[F_UP] >= m:
            continue
        kind = None
        if c[F_UP] >= c[F_DOWN]:
            kind = F_DOWN
        elif r == p - 1 or (F_UP, r + 1, c[F_UP]) in run.end:
            kind = F_UP
        elif c[F_DOWN] < m and (r == 0 or (F_DOWN, r - 1, c[F_DOWN]) in run.end):
            kind = F_DOWN
        if kind is None:
            continue
        while not run.fits(r, run.g.f_mem):
            run.place_w(r)
        _fill_then_place(run, kind, r, may_fill=run.fill_f)


def _one_pass(p: int, m: int, g: GreedyCosts, fill_f: bool, fill_b: bool, approved=None) -> _Run:
    """The whole greedy once (reference ``try_v_schedule`` without its retry)."""
    run = _Run(p, m, g, fill_f, fill_b, approved)
    _warm_up(run)
    _top_up_forwards(run)
    for _ in range(2 * m):
        _backward_round(run)
        _forward_round(run)
    for r in range(p):
        while run.pending[r]:
            run.place_w(r)
    return run


def _retried(p: int, m: int, g: GreedyCosts, fill_f: bool, fill_b: bool) -> _Run:
    """Rerun with the last pass's idle times as allowances while that lowers the largest idle time."""
    best = _one_pass(p, m, g, fill_f, fill_b)
    while True:
        again = _one_pass(p, m, g, fill_f, fill_b, tuple(best.idle))
        if again.max_idle() >= best.max_idle():
            return best
        best = again


def _candidates(p: int, m: int, g: GreedyCosts) -> list[_Run]:
    """The four fill options (W before a waiting B_UP / before a waiting F, or not), retried each."""
    return [_retried(p, m, g, fill_f, fill_b) for fill_b in (True, False) for fill_f in (True, False)]


def v_zb(p: int, m: int, *, costs: Costs | None = None, mem_limit: float | None = None) -> Schedule:
    """The authors' cost-aware greedy ZB-V for p ranks (2p chunks) and m microbatches.

    Args:
        costs: per-stage costs (2p stages, k = 1); only the greedy's summary of them is used.
        mem_limit: activation bytes per rank; default 2p chunk activations (1F1B's peak).

    Raises:
        ValueError: bad p or m, costs of the wrong shape, or a limit the greedy cannot keep.
    """
    check_positive(p=p, m=m)
    g = greedy_costs(p, costs, mem_limit)
    try:
        runs = _candidates(p, m, g)
    except _Stuck as stuck:
        raise ValueError(
            f"v-zb: the greedy cannot keep mem_limit={g.mem_limit:g} ({stuck}); it is made for ZB-V's "
            f"memory, 2p = {2 * p} chunk activations ({2 * p * g.f_mem:g}); v-half and v-min use less"
        ) from None
    best = min(runs, key=lambda run: run.max_idle())  # first of the smallest, as the reference keeps
    programs = [[Action(_OP[kind], 2 * p - 1 - r if kind in _UP_KINDS else r, mb) for kind, mb in prog]
                for r, prog in enumerate(best.program)]
    meta = {"made_by": "synth.baselines.v_zb", "fill_b": best.fill_b, "fill_f": best.fill_f,
            "greedy_makespan": max(best.end.values())}
    return Schedule(Placement.v_shape(p), m, programs, meta=meta)


BASELINE = Baseline(
    "v-zb",
    v_zb,
    "cost-aware greedy ZB-V (the Zero Bubble authors'): V placement, W's fill the waits; zb-v's memory",
    "Qi et al., arXiv 2401.10241 sec. 6; sail-sg/zero-bubble-pipeline-parallelism zerobubble/scheduler/zbv.py",
    options={"mem_limit": None},
)
