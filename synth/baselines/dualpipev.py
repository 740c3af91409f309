"""DualPipeV: the "cut-in-half" V-shape variant of DeepSeek's DualPipe.

Source: DeepSeek-V3 technical report (arXiv 2412.19437, DualPipe), and the reference code
deepseek-ai/DualPipe, ``dualpipe/dualpipev.py``, ``DualPipeV.step()``; the orders below follow
that method phase by phase (the compute calls only; where it posts its sends and receives is
left to ``ir.lower``).

Placement: ``Placement.v_shape(p)``. The code's phase-0 module on rank r is our stage r (the
way down, rank 0 takes the model input); its phase-1 module is our stage ``2p-1-r`` (the way
back up; rank 0's phase 1 computes the loss, and the last rank feeds its phase-0 output
straight into its phase-1 input). Each phase runs its microbatches in order ``0..m-1``.

Rank r runs eight phases; their lengths come from ``step()`` (see `phase_lengths`):

1. ``nF0``      2(p-r-1) x  F of stage r
2. ``nF0F1``    r+1 x       F0, F1
3. ``nB1W1F1``  p-r-1 x     B1, W1, F1 (zero-bubble split backward: ``enable_zb=True``)
4. ``nF0B1F1B0`` m-2p+r+1 x F0&BW1, F1&BW0 (overlapped pairs, except the last rank's first
   F0 and BW1, which the code runs apart: the same order here, but not listed as a pair)
5. ``nB1F1B0``  p-r-1 x     BW1, F1&BW0
6. ``nB1B0``    r+1 x       B1, B0; full backwards (BW) for the first half, split (B only,
   W deferred) from iteration ``(r+1)//2`` on: for odd r starting with that iteration's
   B1, for even r with its B0
7. ``nWB0``     p-r-1 x     W, B0 (split)
8. ``nW``       r+1 x       W

Every W pops the oldest deferred weight gradient (the code's ``WeightGradStore`` is a FIFO
queue), so a W may belong to either stage. Overlapped F&B pairs become two consecutive
actions, F first, as the code calls them. The code asserts ``m >= 2p``; ``m`` need not be
even (unlike DualPipe) and any ``p >= 1`` works.

Bubble (DualPipe README table, "DualPipeV" row, PP = 2p stages, per-stage times, no comm):
``(PP/2 - 1)(F&B + B - 3W) = (p-1)(F&B + B - 3W)`` idle per rank, where B is a *full*
backward (our BW = b + w) and F&B the time of an overlapped forward-backward pair. The code
runs a pair as one task that starts once both its inputs have arrived; simulated that way
(the pairs are listed in ``meta["overlapped_pairs"]``) with no overlap speed-up,
F&B = F + BW, the formula holds exactly for F = b = w = t per stage:
``(p-1)(3t + 2t - 3t) = 2t(p-1)``, makespan ``6tm + 2t(p-1)``, whatever m. For other ratios
it is only close (f = 2, b = w = 1 idles 4(p-1), not 3(p-1); f = 1, b = 2, w = 1 idles
4(p-1) - 1, not 4(p-1)).
``ir.simulate`` runs the pair's F and BW as two actions, so the F goes ahead while the BW
waits for its gradient, and the bubble shrinks: with F = b = w = t only the last rank's wait
for its first input is left, ``t(p-1)`` per rank, makespan ``6tm + t(p-1)``, bubble ratio
``(p-1)/(6m+p-1)``; for other costs there is no clean form (f = 1, b = 2, w = 1, p = 4: 8
instead of the formula's 12).
The code also defers some sends (step 2's F0 output until after the next F1, the last
rank's F1 output into step 4) and waits on all posted receives before each compute; only
the compute order is kept here, and ``ir.lower`` posts sends as early as the order allows.

Peak activations (same table, "Activation Per Device"): ``PP + 1 = 2p + 1``
stage-microbatch activations on every rank (with ``wact = 0``), first reached by the first
F0 of phase 4, i.e. ``p + 1/2`` in units of a full 1F1B stage (two V-shape stages).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["BASELINE", "PhaseLengths", "dualpipev", "phase_lengths"]


@dataclass(frozen=True, slots=True)
class PhaseLengths:
    """Iteration counts of the eight loops of ``DualPipeV.step()`` on one rank."""

    nf0: int
    nf0f1: int
    nb1w1f1: int
    main: int
    nb1f1b0: int
    nb1b0: int
    nwb0: int
    nw: int

    def as_tuple(self) -> tuple[int, ...]:
        return (self.nf0, self.nf0f1, self.nb1w1f1, self.main, self.nb1f1b0, self.nb1b0, self.nwb0, self.nw)


def phase_lengths(p: int, m: int, rank: int) -> PhaseLengths:
    """The loop counts ``step_1 .. step_8`` of ``dualpipev.py`` for ``rank`` of ``p``."""
    _check(p, m)
    if not 0 <= rank < p:
        raise ValueError(f"rank must lie in 0..{p - 1}, got {rank}")
    down = p - rank - 1  # ranks after this one
    up = rank + 1
    return PhaseLengths(2 * down, up, down, m - 2 * p + rank + 1, down, up, down, up)


@dataclass(slots=True)
class _Emitter:
    """Builds one rank's program the way ``step()`` walks it: per-phase microbatch counters
    for F and for backward, and the FIFO of deferred weight gradients."""

    stages: tuple[int, int]  # (phase 0 stage, phase 1 stage)
    prog: list[Action] = field(default_factory=list)
    next_f: list[int] = field(default_factory=lambda: [0, 0])
    next_b: list[int] = field(default_factory=lambda: [0, 0])
    deferred: deque[Action] = field(default_factory=deque)
    pairs: list[tuple[Action, Action]] = field(default_factory=list)

    def f(self, phase: int) -> None:
        self.prog.append(Action(Op.F, self.stages[phase], self.next_f[phase]))
        self.next_f[phase] += 1

    def b(self, phase: int, zero_bubble: bool = False) -> None:
        """A backward chunk: split (B now, W queued) with ``enable_zb``, else fused BW."""
        action = Action(Op.B if zero_bubble else Op.BW, self.stages[phase], self.next_b[phase])
        self.prog.append(action)
        self.next_b[phase] += 1
        if zero_bubble:
            self.deferred.append(action.with_op(Op.W))

    def w(self) -> None:
        self.prog.append(self.deferred.popleft())

    def fb(self, f_phase: int, b_phase: int) -> None:
        """An overlapped F&B pair (``_forward_backward_chunk``): F, then a full backward."""
        self.f(f_phase)
        self.b(b_phase)
        self.pairs.append((self.prog[-2], self.prog[-1]))


def _rank_program(p: int, m: int, rank: int) -> _Emitter:
    n = phase_lengths(p, m, rank)
    e = _Emitter((rank, 2 * p - 1 - rank))
    for _ in range(n.nf0):  # step 1
        e.f(0)
    for _ in range(n.nf0f1):  # step 2
        e.f(0)
        e.f(1)
    for _ in range(n.nb1w1f1):  # step 3
        e.b(1, zero_bubble=True)
        e.w()
        e.f(1)
    for i in range(n.main):  # step 4
        if i == 0 and rank == p - 1:  # the code runs this F0 and B1 apart, "to further reduce bubble size"
            e.f(0)
            e.b(1)
        else:
            e.fb(0, 1)
        e.fb(1, 0)
    for _ in range(n.nb1f1b0):  # step 5
        e.b(1)
        e.fb(1, 0)
    _cooldown_backwards(e, n.nb1b0, rank)  # step 6
    for _ in range(n.nwb0):  # step 7
        e.w()
        e.b(0, zero_bubble=True)
    for _ in range(n.nw):  # step 8
        e.w()
    if e.deferred:
        raise AssertionError(f"rank {rank}: {len(e.deferred)} weight gradients left unscheduled")
    return e


def _cooldown_backwards(e: _Emitter, steps: int, rank: int) -> None:
    """Step 6, nB1B0: split backwards switch on at iteration ``steps // 2``; odd ranks switch
    before that iteration's B1, even ranks between its B1 and B0."""
    zero_bubble = False
    for i in range(steps):
        if i == steps // 2 and rank % 2 == 1:
            zero_bubble = True
        e.b(1, zero_bubble)
        if i == steps // 2 and rank % 2 == 0:
            zero_bubble = True
        e.b(0, zero_bubble)


def _check(p: int, m: int) -> None:
    check_positive(p=p, m=m)
    if m < 2 * p:
        raise ValueError(
            f"DualPipeV needs at least 2p microbatches (dualpipev.py asserts num_chunks >= 2 * num_ranks); "
            f"got m={m} for p={p}: use m >= {2 * p} or fewer ranks"
        )


def dualpipev(p: int, m: int, *, costs=None) -> Schedule:
    """DualPipeV on ``p`` ranks (``2p`` V-shape stages) with ``m >= 2p`` microbatches.

    ``costs`` is unused: the order does not depend on pass times.

    Raises:
        ValueError: ``p`` or ``m`` not a positive int, or ``m < 2p``.
    """
    _check(p, m)
    ranks = [_rank_program(p, m, r) for r in range(p)]
    pairs = [[str(f), str(b)] for e in ranks for f, b in e.pairs]
    meta = {"made_by": "synth.baselines.dualpipev", "overlapped_pairs": pairs}
    return Schedule(Placement.v_shape(p), m, [e.prog for e in ranks], meta=meta)


BASELINE = Baseline(
    "dualpipev",
    dualpipev,
    "DualPipeV: DualPipe cut in half onto a V-shape placement, split backward in warm-up and cool-down",
    "arXiv 2412.19437; deepseek-ai/DualPipe dualpipe/dualpipev.py",
)
