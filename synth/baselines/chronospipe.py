"""ChronosPipe (Lin, Li, Huang, Wang, Xiao, Yang, Duan, Liu; arXiv 2503.03182, v2 retitled TPipe):
Chronos-Pipe, Chronos-Recomp and Chronos-Offload.

From the paper (abstract, v1 and v2, and third-party summaries of it; the method sections could not
be retrieved while writing this module): HBM is treated as a small, fast cache and training is
scheduled for temporal locality. An activation's lifespan (its F to its backward) has an
*extrinsic* part, added by the pipeline schedule, and an *intrinsic* part, set by the layer's
depth (shallow layers' activations wait for the whole rest of the forward and backward).
Chronos-Pipe is a pipeline order that cuts the extrinsic part; Chronos-Recomp recomputes
activations chosen by lifespan; Chronos-Offload offloads weights (model states) and activations
to host memory. Reported: 2.4x the trainable model size of 1F1B / interleaved 1F1B at comparable
throughput (a 48-layer, 42B LLaMA2-70B-shaped model on PP8 x TP8 where both baselines run out of
memory), 1.5x better than 1F1B with recomputation; up to 64 GPUs, Megatron-style training.

Ours (a reading of the above, not a transcription of the authors' schedule or code):

- **Chronos-Pipe** (``chronospipe``): ``Placement.v_shape(p)``, rank r holding the shallow
  "down" chunk (stage r) and the deep "up" chunk (stage 2p-1-r), fused BW as in Megatron.
  Pairing a shallow chunk with a deep one on every rank balances lifespans across ranks.
  The order is a building block repeated every ``PERIOD = 6`` slots (a rank's 2 F + 2 BW per
  microbatch; one slot = one chunk forward, a BW takes 2), in which every pass starts as early
  as its dependencies allow, except for the fewest 3-slot delays that keep a rank's passes on
  distinct slots mod 6. For microbatch 0 on rank r (slots):
      F(down) = r,  F(up) = 2p-1-r,
      BW(up)  = 2p + 2r + 3 k_r,            k_r = floor((r + (2p-2) mod 6) / 3),
      BW(down) = 6p - 2 - 2r + 3 (k_{p-1} + j_r),   j_r = floor((p - r) / 3).
  (F legs never collide; BW(up) would hit F(down)'s slot every third rank, which k_r skips,
  and BW(down) then takes the pair left over.) Microbatch i is block + 6i; each rank runs its
  passes in slot order. Lifespans (slots, F start to BW end) on rank r:
      down: D_r = 6p - 3r + 3 (k_{p-1} + j_r),   up: U_r = 3r + 3 + 3 k_r,
  against the intrinsic 6p - 3r and 3r + 3 (no delays), and 1F1B's 6(p - r) at F = BW/2.
- **Chronos-Recomp** (``chronos-recomp``): the units of the ``stages`` shallowest stages
  (default p: every rank's down chunk, the longest-lived one on each rank) recomputed: R right
  before their BW, keeping only ``inp`` from F to R. R lengthens a rank's work to 7 slots, so
  the block is rebuilt with period 7 (`recompute_block`: each pass, in dependency-chain order,
  takes the earliest slot whose residues mod 7 are free and leave room for the rank's other
  passes); inserting R into the period-6 order instead would slow the steady state to 1F1B
  with full recompute's rate.
- **Chronos-Offload** (``chronos-offload``): the period-6 order, the units of the ``stages``
  shallowest stages offloaded: OFFLOAD right after F, RELOAD issued with the compute pass that
  precedes the BW, so the copy overlaps that pass (as ``synth.baselines.pipeoffload`` does); a
  unit with fewer than two compute passes between its F and BW stays. The paper's offload of
  model states (optimizer state, master weights) is not a schedule action in this IR: it is
  ``synth.costs.Training(offload_optimizer=...)``, which lowers the static bytes per rank and
  charges the per-step host traffic (``Problem.step_overhead_ms``).

Closed forms, unit model ``even_split_costs(schedule, f=1, b=1, w=1, act=1)`` (a full stage F = 1,
BW = 2, act 1; a chunk half of each), ``inp = 0``, no comm, hidden copies; memory in
stage-microbatches on the busiest rank, time in full-stage F units, P = floor(2p/3) + 1:

- peak activations, derived: a rank's level when a pass starts is fixed by its program order
  (allocations at F or R start, frees at BW end, one compute stream), which is the slot order of
  the periodic block. A chunk whose units live L slots, repeated every T, has
  ``floor((t-a)/T) - floor((t-a-L)/T)`` units alive at slot t (a its F slot); summing a rank's
  chunks over one period and taking the busiest rank (`peak_from_lifespans`) gives
  Chronos-Pipe ``min(m, P)`` (the lifespans above sum to 6p + 3 + 3(k_r + k_{p-1} + j_r), about
  8p slots, so about 2p/3: 1F1B keeps ``min(m, p)``, Megatron interleaved v=2 ``p + (p-1)/2`` for
  m >= 2p); Chronos-Recomp ``P/2`` (only the up chunk is whole between passes; 1F1B with full
  recompute keeps 1 + (p - 1) inp); Chronos-Offload ``(P+1)/2`` (the up chunk plus one down unit).
  Counted for p <= 20 and checked against the simulator for every m >= p (Chronos-Pipe: m >= 1).
- idle per rank (measured on the simulator, which runs each order as soon as it can and so
  squeezes the blocks' warm-up gaps; not derived): Chronos-Pipe ``3(p-1) + min((p-1) mod 3,
  m-1)/2``, i.e. 1F1B's (p-1)(F+BW) plus at most one chunk forward, for every m (bubble ratio
  idle / (3m + idle)); Chronos-Offload the same while copies hide; Chronos-Recomp
  ``(20p - 17 + 4((p-1) mod 3))/6`` for 3 <= p <= 20 and m >= p but (p, m) = (3, 3) (10p/3 against 1F1B-recompute's
  4(p-1)) on 3.5 per microbatch of work (against 4 for full recompute). Derived: the blocks tile
  their period with a rank's work, so past the warm-up each microbatch adds exactly one period
  (3 and 3.5) to the makespan. Lower bound for any V-shape order: (p-1)(F+BW)/2.
"""

from __future__ import annotations

from dataclasses import dataclass

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive
from synth.baselines.pipeoffload import with_offload

__all__ = [
    "CHRONOS_OFFLOAD",
    "CHRONOS_PIPE",
    "CHRONOS_RECOMP",
    "Block",
    "block",
    "chronos_offload",
    "chronos_recomp",
    "chronospipe",
    "peak_from_lifespans",
    "recompute_block",
]


@dataclass(frozen=True, slots=True)
class Block:
    """Start slots of microbatch 0's passes on each rank (one slot = one chunk forward, a BW two).

    Attributes:
        period: slots between consecutive microbatches (a rank's work per microbatch).
        f_down, f_up, bw_up, bw_down: per rank r, the slot where F of stage r, F of stage
            2p-1-r, BW of stage 2p-1-r and BW of stage r start.
        r_down: per rank, the slot of stage r's recompute (empty without recompute).
    """

    period: int
    f_down: tuple[int, ...]
    f_up: tuple[int, ...]
    bw_up: tuple[int, ...]
    bw_down: tuple[int, ...]
    r_down: tuple[int, ...] = ()

    @property
    def p(self) -> int:
        return len(self.f_down)

    def lifespans(self, rank: int) -> tuple[int, int]:
        """(down, up) chunk lifespans on ``rank`` in slots: F start to BW end."""
        return self.bw_down[rank] + 2 - self.f_down[rank], self.bw_up[rank] + 2 - self.f_up[rank]

    def passes(self, rank: int) -> list[tuple[int, int]]:
        """(start, length) of the rank's passes, for the collision check."""
        out = [(self.f_down[rank], 1), (self.f_up[rank], 1), (self.bw_up[rank], 2), (self.bw_down[rank], 2)]
        return out + ([(self.r_down[rank], 1)] if self.r_down else [])

    def check(self) -> None:
        """Raise AssertionError unless every rank's passes fill distinct slots mod the period."""
        for r in range(self.p):
            slots = [(start + k) % self.period for start, length in self.passes(r) for k in range(length)]
            if sorted(slots) != list(range(self.period)):
                raise AssertionError(f"chronospipe block collides on rank {r} (p={self.p}): {self.passes(r)}")


def block(p: int) -> Block:
    """The Chronos-Pipe building block for ``p`` ranks, period 6 (formulas in the module docstring).

    Raises:
        ValueError: p is not a positive int.
    """
    check_positive(p=p)
    k = [(r + (2 * p - 2) % 6) // 3 for r in range(p)]
    out = Block(
        period=6,
        f_down=tuple(range(p)),
        f_up=tuple(2 * p - 1 - r for r in range(p)),
        bw_up=tuple(2 * p + 2 * r + 3 * k[r] for r in range(p)),
        bw_down=tuple(6 * p - 2 - 2 * r + 3 * (k[p - 1] + (p - r) // 3) for r in range(p)),
    )
    out.check()
    return out


def recompute_block(p: int) -> Block:
    """The Chronos-Recomp block, period 7: the passes of `block` plus R(down) right before
    BW(down). Every pass, in dependency-chain order (F down the ranks, F back up, BW(up) down
    the ranks, R + BW(down) back up), takes the earliest slot at or after its predecessor's end
    whose residues mod 7 are free on its rank and leave room for the rank's remaining passes."""
    check_positive(p=p)
    period = 7
    chain = ([("fd", r) for r in range(p)] + [("fu", r) for r in reversed(range(p))]
             + [("bu", r) for r in range(p)] + [("bd", r) for r in reversed(range(p))])
    length = {"fd": 1, "fu": 1, "bu": 2, "bd": 3}  # "bd" is R then BW, back to back
    used: list[set[int]] = [set() for _ in range(p)]
    start: dict[tuple[str, int], int] = {}
    t = 0
    for kind, r in chain:
        rest = [length[k] for k in length if (k, r) not in start and k != kind]
        s = t
        while True:
            arc = {(s + j) % period for j in range(length[kind])}
            if not arc & used[r] and _arcs_fit(set(range(period)) - used[r] - arc, rest, period):
                break
            s += 1
        start[kind, r] = s
        used[r] |= arc
        t = s + length[kind]
    out = Block(period, tuple(start["fd", r] for r in range(p)), tuple(start["fu", r] for r in range(p)),
                tuple(start["bu", r] for r in range(p)), tuple(start["bd", r] + 1 for r in range(p)),
                tuple(start["bd", r] for r in range(p)))
    out.check()
    return out


def _arcs_fit(free: set[int], lengths: list[int], period: int) -> bool:
    """Can runs of these lengths be placed, disjoint, on consecutive residues inside ``free``?"""
    if not lengths:
        return True
    for s in free:
        arc = {(s + j) % period for j in range(lengths[0])}
        if arc <= free and _arcs_fit(free - arc, lengths[1:], period):
            return True
    return False


def peak_from_lifespans(blk: Block, *, mode: str = "keep") -> int:
    """Steady-state peak of the busiest rank in chunk-units (half stage-microbatches), counted
    from the block's slots alone (the derivation in the module docstring), ``inp = 0``.

    ``mode``: ``"keep"`` (Chronos-Pipe), ``"recompute"`` (every down unit holds nothing from F to
    its R) or ``"offload"`` (hidden copies: a down unit is on the device only during its F and
    from the start of the pass before its BW to the BW's end).
    """
    period = blk.period

    def alive(first: int, life: int, t: int) -> int:  # units n with first + nT <= t < first + life + nT
        return (t - first) // period - (t - first - life) // period

    best = 0
    for r in range(blk.p):
        down, up = blk.lifespans(r)
        starts = sorted(s % period for s, _ in blk.passes(r))
        if mode == "keep":
            level = max(alive(blk.f_down[r], down, t) + alive(blk.f_up[r], up, t) for t in starts)
        elif mode == "recompute":
            level = max(max(alive(blk.f_up[r], up, t) for t in starts), alive(blk.f_up[r], up, blk.r_down[r]) + 1)
        elif mode == "offload":
            bd = blk.bw_down[r] % period
            before = max(s for s in starts if s < bd) if any(s < bd for s in starts) else max(starts) - period
            held = {blk.f_down[r] % period} | {x % period for x in range(before, bd + 1)}
            level = max(alive(blk.f_up[r], up, t) + (t in held) for t in starts)
        else:
            raise ValueError(f"mode must be 'keep', 'recompute' or 'offload', got {mode!r}")
        best = max(best, level)
    return best


def _programs(blk: Block, m: int, recompute: set[int]) -> list[list[Action]]:
    """Every rank's passes in the slot order of the block repeated m times."""
    p = blk.p
    programs = []
    for r in range(p):
        down, up = r, 2 * p - 1 - r
        timed = []
        for i in range(m):
            base = blk.period * i
            timed += [(blk.f_down[r] + base, Action(Op.F, down, i)), (blk.f_up[r] + base, Action(Op.F, up, i)),
                      (blk.bw_up[r] + base, Action(Op.BW, up, i)), (blk.bw_down[r] + base, Action(Op.BW, down, i))]
            if down in recompute:
                timed.append((blk.r_down[r] + base, Action(Op.R, down, i)))
        programs.append([a for _, a in sorted(timed, key=lambda item: item[0])])
    return programs


def _shallow(p: int, stages: int | None) -> set[int]:
    n = p if stages is None else stages
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= p:
        raise ValueError(f"stages must be an int in 0..{p} (how many of the shallowest stages, the down chunks, "
                         f"to treat; the deep up chunks live too briefly to gain), got {stages!r}")
    return set(range(n))


def chronospipe(p: int, m: int, *, costs=None) -> Schedule:
    """Chronos-Pipe on ``Placement.v_shape(p)``: `block` repeated every 6 slots.
    Pass times do not change the order, so ``costs`` is accepted and ignored."""
    check_positive(p=p, m=m)
    meta = {"made_by": "synth.baselines.chronospipe"}
    return Schedule(Placement.v_shape(p), m, _programs(block(p), m, set()), meta=meta)


def chronos_recomp(p: int, m: int, *, costs=None, stages: int | None = None) -> Schedule:
    """Chronos-Pipe with the ``stages`` shallowest stages recomputed (default p: every down
    chunk), on `recompute_block`; ``stages=0`` is plain Chronos-Pipe."""
    check_positive(p=p, m=m)
    chosen = _shallow(p, stages)
    blk = recompute_block(p) if chosen else block(p)
    meta = {"made_by": "synth.baselines.chronospipe (recompute)", "recompute_stages": len(chosen)}
    return Schedule(Placement.v_shape(p), m, _programs(blk, m, chosen), meta=meta)


def chronos_offload(p: int, m: int, *, costs=None, stages: int | None = None) -> Schedule:
    """Chronos-Pipe with the ``stages`` shallowest stages' activations offloaded (default p)."""
    check_positive(p=p, m=m)
    chosen = _shallow(p, stages)
    programs = [with_offload(prog, chosen, Op.BW) for prog in _programs(block(p), m, set())]
    meta = {"made_by": "synth.baselines.chronospipe (offload)", "offload_stages": len(chosen)}
    return Schedule(Placement.v_shape(p), m, programs, meta=meta)


_SOURCE = "ChronosPipe / TPipe, arXiv 2503.03182 (placement, order, recompute and offload choices: our reading)"
CHRONOS_PIPE = Baseline("chronospipe", chronospipe,
                        "Chronos-Pipe: V-shape, fused BW, backwards as early as a collision-free block allows",
                        _SOURCE)
CHRONOS_RECOMP = Baseline("chronos-recomp", chronos_recomp,
                          "Chronos-Pipe with the longest-lived (shallowest) stages recomputed",
                          _SOURCE, options={"stages": None})
CHRONOS_OFFLOAD = Baseline("chronos-offload", chronos_offload,
                           "Chronos-Pipe with the longest-lived (shallowest) stages' activations offloaded",
                           _SOURCE, options={"stages": None})
