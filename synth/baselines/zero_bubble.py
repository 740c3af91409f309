"""ZB-H1 and ZB-H2: the handcrafted zero-bubble schedules of Qi et al., "Zero Bubble (Almost)
Pipeline Parallelism", ICLR 2024, arXiv 2401.10241, sec. 2 and Fig. 3 (code:
sail-sg/zero-bubble-pipeline-parallelism; ZB-H1 as DeepSpeed's ``ZeroBubbleH1Pipeline`` with
exact B/W semantics and torch.distributed.pipelining's ``ScheduleInterleavedZeroBubble`` with one
stage per rank). Standard placement, backward split into B (input grad) and W (weight grad).
The V-shape variant ZB-V lives in ``zb_v``.

ZB-H1 (rank r of p): ``min(p-1-r, m)`` warm-up forwards; then step i = 0..m-1 runs
F(warm-up + i) (while forwards remain), B(i) and, once i >= r, W(i - r); the last r W's close
the program. W is delayed by r steps, so every rank holds p microbatches in flight, as in
Fig. 3 (top): rank 0 reads F1-F4, B1 W1 F5, B2 W2 F6, ... (1-based).
Bubble (Table 2): (p-1)(T_F + T_B - T_W) per rank, i.e. makespan m(T_F+T_B+T_W) + (p-1)(T_F+T_B-T_W)
(exact for m >= p, zero comm and T_W <= min(T_F, T_B), as in the paper's Table 1; with
T_F = T_B = T_W: makespan 3m + p - 1, a third of 1F1B's bubble).
Peak activations of rank r (sec. 2.3): (p-r) M_B + r M_W, i.e. ``(p-r)*act + r*wact``; p*act on
rank 0, as 1F1B (and on every rank when a microbatch counts fully until its W, wact = act).

ZB-H2: rank r first runs min(2(p-r)-1, m) forwards (7/5/3/1 for p = 4, Fig. 3 bottom: ZB-H1's
warm-up plus its idle slots), then max(m-2p+1, 0) steady groups B(k) W(k) F(next), then the
tail: B(k) for the remaining k, the gap after each of the first ones filled by the remaining
forwards (2r of them when m >= 2p-1), every other gap and the end by the left-over W's in FIFO
order. Fig. 3 (bottom) rank 0 reads F1-F7, B1 W1 F8, B2 W2, B3 W3, ... (1-based, m = 8).
Bubble (Table 2): (p-1)(T_F + T_B - 2T_W), counted on rank 0's own span, first pass to last
(the paper bypasses the optimizer sync, sec. 4, so the next iteration's warm-up fills the
stagger; "the largest execution time of all stages", sec. 5.3); rank r's own span has
(p-1-r)(T_F + T_B - 2T_W). Holds for m >= 2p-1 ("a sufficient number of microbatches": rank 0
cannot be busy before its first B without 2p-1 forwards), zero comm, T_W <= T_F and
2T_W <= T_F + T_B. With T_F = T_B = T_W every rank is busy without a gap (the "parallelogram");
against the global makespan every rank still idles (p-1)T_F: makespan 3m + p - 1 under unit
costs, as ZB-H1.
For m < 2p-1 the same rule gives a valid schedule with a bubble (makespan 3m + p - 1 for p <= m).
Peak activations of rank r (sec. 2.3, m >= 2p-1): (2p-2r-1) M_B + 2r M_W, i.e.
``(2p-2r-1)*act + 2r*wact``; (2p-1)*act on every rank when wact = act.
The authors' code has no handcrafted ZB-H2 (it runs the automatic ZB-2p); this order is rebuilt
from Fig. 3 (warm-up counts, rank 0's row) and matches the sec. 2.3 memory formula per worker.
"""

from __future__ import annotations

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["BASELINE", "BASELINE_H2", "zb_h1", "zb_h2"]


def zb_h1(p: int, m: int, *, costs=None) -> Schedule:
    """ZB-H1: 1F1B order with split backward and W delayed by r steps on rank r."""
    check_positive(p=p, m=m)
    programs = [_h1_program(r, p, m) for r in range(p)]
    return Schedule(Placement.standard(p), m, programs, meta={"made_by": "synth.baselines.zero_bubble (zb-h1)"})


def _h1_program(r: int, p: int, m: int) -> list[Action]:
    warmup = min(p - 1 - r, m)
    prog = [Action(Op.F, r, i) for i in range(warmup)]
    for i in range(m):
        if warmup + i < m:
            prog.append(Action(Op.F, r, warmup + i))
        prog.append(Action(Op.B, r, i))
        if i >= r:
            prog.append(Action(Op.W, r, i - r))
    prog.extend(Action(Op.W, r, i) for i in range(max(m - r, 0), m))
    return prog


def zb_h2(p: int, m: int, *, costs=None) -> Schedule:
    """ZB-H2: 2(p-r)-1 warm-up forwards, steady B-W-F groups, forwards first in the tail."""
    check_positive(p=p, m=m)
    programs = [_h2_program(r, p, m) for r in range(p)]
    return Schedule(Placement.standard(p), m, programs, meta={"made_by": "synth.baselines.zero_bubble (zb-h2)"})


def _h2_program(r: int, p: int, n: int) -> list[Action]:
    """Rank r's ZB-H2 program for n microbatches (the parallelogram needs n >= 2p-1)."""
    warmup = min(2 * (p - r) - 1, n)
    steady = max(n - (2 * p - 1), 0)
    prog = [Action(Op.F, r, i) for i in range(warmup)]
    for k in range(steady):
        prog += [Action(Op.B, r, k), Action(Op.W, r, k), Action(Op.F, r, warmup + k)]
    next_f, next_w = warmup + steady, steady
    for k in range(steady, n):
        prog.append(Action(Op.B, r, k))
        if k == n - 1:
            break
        if next_f < n:  # the first 2r gaps of the tail take the remaining forwards
            prog.append(Action(Op.F, r, next_f))
            next_f += 1
        else:
            prog.append(Action(Op.W, r, next_w))
            next_w += 1
    prog.extend(Action(Op.W, r, i) for i in range(next_w, n))
    return prog


BASELINE = Baseline(
    "zb-h1",
    zb_h1,
    "zero bubble H1: 1F1B with split backward, W delayed to fill the tail; 1F1B's peak memory",
    "Qi et al., Zero Bubble Pipeline Parallelism, arXiv 2401.10241, sec. 2.1",
)
BASELINE_H2 = Baseline(
    "zb-h2",
    zb_h2,
    "zero bubble H2: 2p-1 warm-up forwards, parallelogram with no bubble when F=B=W; (2p-1) peak",
    "Qi et al., Zero Bubble Pipeline Parallelism, arXiv 2401.10241, sec. 2.2",
)
