"""V-Half and V-Min: the memory-controlled V-shape schedules of "Pipeline Parallelism with
Controllable Memory" (Qi, Wan, Amar, Lin; NeurIPS 2024, arXiv 2405.15362).

Source: the paper and the authors' reference implementation in sail-sg/zero-bubble-pipeline-
parallelism (Megatron ``pipeline_parallel`` scheduler module headed "Implementation of vhalf and
vmin schedules of Pipeline Parallelism with Controllable Memory": ``stable_pattern_v_half``,
``stable_pattern_v_min``, ``put_w``, ``mem_of_stage``, ``reorder``, ``schedule_from_pattern``;
AMD Primus ships a copy). The order here is the reference's, step for step: it equals that
algorithm's output for every p <= 12 and m <= 4p + 2 that was compared.

Placement: ``Placement.v_shape(p)``; rank r holds the "down" chunk (stage r) and the "up" chunk
(stage 2p-1-r). Backward is split into B and W. Every pass of a chunk is one slot.

Construction (paper section 3: a building block repeated every T slots, then squeezed):

1. Building block, per rank r, slots of F(down), F(up), B(up), B(down) for one microbatch:
   V-Half: ``2r, 3p-r-2, 3p+g+2r-1, 6p+g-r-2`` with g = 3 if p is even else 0;
   V-Min:  ``r, 2p-r-1, 2p+g+r, 4p+g-r-1`` with g = 2 if p % 3 == 0 else 0
   (g keeps the four passes on distinct slots mod 6).
2. Repeat it every T = 6 slots (a rank's 2 F + 2 B + 2 W per microbatch: the stable phase has
   no bubble), for both families.
3. W passes go to the first free slot once a B is pending ("W in the first free slot after
   its B").
4. Squeeze (reference ``reorder``): walk all passes in slot order; warm-up passes (before rank
   0's first B(down)) and cool-down passes (after rank 0's last F(down)) move to the earliest
   free slot their dependencies allow, as long as the rank's peak memory (F +1, W -1) does not
   grow; stable-phase passes stay. Done once with W placed, then once more on the F/B passes
   alone (cool-down only), then W is placed again, split by chunk (the up chunk's W first).
5. Each rank's program is its passes in slot order. Pass times do not change the order, so
   ``costs`` is accepted and ignored.

Where the issue text and the source differ the source wins: V-Half is not bubble-free
(only its stable phase is); the authors give its bubble as about half of 1F1B's.

Peak activation memory (authors' table, sail/pipeline-parallelism-with-controllable-memory
space, ``description1.md``), in 1F1B stage-microbatches M (one chunk = M/2), activations held
from F to W: 1F1B p; V-Min ``(p+4)//3``; V-Half ``(p+2)//2``. Exactly, on the busiest rank, in
chunk-microbatches: V-Min ``min(2m, 2*((p+4)//3))``, V-Half ``min(2m, 2*((p+2)//2))`` (1F1B:
``2*min(m, p)``); the ``2m`` term is all of a small batch in flight.

Bubble rate (same table, T_F = T_B = T_W, rate = 1 - (F+B+W) m / makespan): 1F1B ~ p/m,
V-Min ~ 2p/(3m), V-Half ~ p/(2m). With unit chunk passes (F+B+W = 6 per stage-microbatch) and
m >= p + 2 this construction idles, per rank, makespan - 6m = V-Half 3p-4 (p odd), 3p-7
(p even >= 4), 1 (p = 2); V-Min 4p-5 (p % 3 != 0), 4p-7 (p % 3 == 0); against 1F1B's 6(p-1)
that is within 4 slots below half (V-Half) and two thirds (V-Min), never above. For small m
the reference leaves the cool-down unsqueezed (its "last F" marker falls in the warm-up), so
the bubble there is larger; any m >= 1 is still a valid schedule.
"""

from __future__ import annotations

from collections.abc import Callable

from ir import Action, Op, Placement, Schedule
from synth.baselines.common import Baseline, check_positive

__all__ = ["V_HALF", "V_MIN", "v_half", "v_min"]

# Pass kinds per rank, in the reference's order ("FfBbWw"): the up chunk's backward comes first.
F_DOWN, F_UP, B_UP, B_DOWN, W_UP, W_DOWN = range(6)
W_ANY = 4  # the single W kind while W is not yet split by chunk
PERIOD = 6  # slots per microbatch per rank: 2 chunks x (F, B, W)
_MEMORY = {F_DOWN: 1, F_UP: 1, B_UP: 0, B_DOWN: 0, W_ANY: -1}  # reference mem_of_stage, W frees

RankSlots = list[list[int]]  # slots[kind][microbatch] on one rank
Slots = list[RankSlots]  # per rank


def v_half(p: int, m: int, *, costs=None) -> Schedule:
    """V-Half: peak about half of 1F1B's activations, bubble about half of 1F1B's."""
    return _build(p, m, "v-half", _v_half_block)


def v_min(p: int, m: int, *, costs=None) -> Schedule:
    """V-Min: peak about a third of 1F1B's activations, bubble about two thirds of 1F1B's."""
    return _build(p, m, "v-min", _v_min_block)


def _v_half_block(p: int) -> list[tuple[int, int, int, int]]:
    """Slots of F(down), F(up), B(up), B(down) of microbatch 0 on each rank (stable_pattern_v_half)."""
    g = 3 if p % 2 == 0 else 0
    return [(2 * r, 3 * p - r - 2, 3 * p + g + 2 * r - 1, 6 * p + g - r - 2) for r in range(p)]


def _v_min_block(p: int) -> list[tuple[int, int, int, int]]:
    """Slots of F(down), F(up), B(up), B(down) of microbatch 0 on each rank (stable_pattern_v_min)."""
    g = 2 if p % 3 == 0 else 0
    return [(r, 2 * p - r - 1, 2 * p + g + r, 4 * p + g - r - 1) for r in range(p)]


def _build(p: int, m: int, name: str, block: Callable[[int], list[tuple[int, int, int, int]]]) -> Schedule:
    check_positive(p=p, m=m)
    slots = [[[offset + PERIOD * i for i in range(m)] for offset in rank] for rank in block(p)]
    _check_no_collision(slots)
    slots = _squeeze(slots, with_w=True)
    slots = _squeeze([rank[:W_ANY] for rank in slots], with_w=False)
    slots = [_place_w(rank[:W_ANY], split=True) for rank in slots]
    programs = [_program(rank, r, p) for r, rank in enumerate(slots)]
    meta = {"made_by": f"synth.baselines.controllable_memory ({name})"}
    return Schedule(Placement.v_shape(p), m, programs, meta=meta)


def _check_no_collision(slots: Slots) -> None:
    for r, rank in enumerate(slots):
        taken = [t for kind in rank for t in kind]
        if len(taken) != len(set(taken)):
            raise AssertionError(f"building block puts two passes in one slot on rank {r}")


def _place_w(rank: RankSlots, *, split: bool) -> RankSlots:
    """Add W slots: each free slot takes one pending W (reference ``put_w``).

    Unsplit, one W kind counts every B; split, W(up) is preferred over W(down). Ws still
    pending after the last F/B slot follow it back to back.
    """
    kind_at = {t: kind for kind, times in enumerate(rank[:W_ANY]) for t in times}
    bound = max(times[-1] for times in rank[:W_ANY])
    pending = [0, 0]
    placed: list[list[int]] = [[], []] if split else [[]]
    for t in range(bound + 1):
        kind = kind_at.get(t)
        if kind in (B_UP, B_DOWN):
            pending[kind - B_UP if split else 0] += 1
        elif kind is None:
            w = next((w for w in range(2) if pending[w]), None)
            if w is not None:
                placed[w].append(t)
                pending[w] -= 1
    t = bound
    for w in range(2):
        for _ in range(pending[w]):
            t += 1
            placed[w].append(t)
    return [list(times) for times in rank[:W_ANY]] + placed


def _peak(rank: RankSlots) -> int:
    """Peak live chunk activations on a rank (reference ``mem_of_stage``): F +1, W -1.

    Without W slots, each pending W is assumed to run in the next free slot.
    """
    has_w = len(rank) > W_ANY
    kind_at = {t: kind for kind, times in enumerate(rank) for t in times}
    bound = max(times[-1] for times in rank)
    live = peak = pending = 0
    for t in range(bound + 1):
        kind = kind_at.get(t)
        if kind is not None:
            live += _MEMORY[kind]
            pending += kind in (B_UP, B_DOWN)
        elif not has_w and pending:
            live -= 1
            pending -= 1
        peak = max(peak, live)
    return peak


def _squeeze(slots: Slots, *, with_w: bool) -> Slots:
    """Move warm-up and cool-down passes earlier without raising peak memory (reference ``reorder``).

    Returns the unit-time ASAP start of every pass (F/B kinds plus one unsplit W kind).
    """
    if with_w:
        slots = [_place_w(rank, split=False) for rank in slots]
    cap = max(_peak(rank) for rank in slots)
    last = len(slots[0][F_DOWN]) - 1
    events = _in_slot_order(slots)
    taken: list[set[int]] = [set() for _ in slots]
    phase = "warm-up"
    for t, r, kind, i in events:
        if phase == "warm-up" and kind == B_DOWN and r == 0:
            phase = "stable"
        if phase == "stable" and kind == F_DOWN and i == last:
            phase = "cool-down"
            taken[r].add(t)
            continue
        if phase == "stable" or (phase == "warm-up" and not with_w):
            taken[r].add(t)
            continue
        taken[r].add(_move_earlier(slots, taken[r], cap, (t, r, kind, i)))
    if not with_w:
        slots = [_place_w(rank, split=False) for rank in slots]
    return _asap(slots)


def _in_slot_order(slots: Slots) -> list[tuple[int, int, int, int]]:
    """Every pass as ``(slot, rank, kind, microbatch)``, sorted: the reference's processing order."""
    passes = ((t, r, kind, i) for r, rank in enumerate(slots) for kind, ts in enumerate(rank) for i, t in enumerate(ts))
    return sorted(passes)


def _move_earlier(slots: Slots, taken: set[int], cap: int, event: tuple[int, int, int, int]) -> int:
    """Put one pass in its earliest free slot after its dependencies that keeps the rank's peak <= cap."""
    t, r, kind, i = event
    rank = slots[r]
    for s in range(_earliest(slots, r, kind, i), t):
        if s in taken:
            continue
        rank[kind][i] = s
        if _peak(rank) <= cap:
            return s
    rank[kind][i] = t
    return t


def _earliest(slots: Slots, r: int, kind: int, i: int) -> int:
    """One slot after the latest dependency, as the reference's ``reorder`` counts them."""
    rank = slots[r]
    deps = [-1]
    if kind in (F_DOWN, B_UP) and r > 0:  # these travel from rank 0 towards rank p-1
        deps.append(slots[r - 1][kind][i])
    if kind in (F_UP, B_DOWN) and r + 1 < len(slots):  # these travel back towards rank 0
        deps.append(slots[r + 1][kind][i])
    if F_DOWN < kind < W_ANY:  # F(up) after F(down), B(up) after F(up), B(down) after B(up)
        deps.append(rank[kind - 1][i])
    if kind == W_ANY:  # the i-th W after the i-th B of either chunk
        deps.append(sorted(rank[B_UP] + rank[B_DOWN])[i])
    if i > 0:
        deps.append(rank[kind][i - 1])
    return max(deps) + 1


def _asap(slots: Slots) -> Slots:
    """Start times when every pass takes one slot and runs as soon as its rank's order allows."""
    p = len(slots)
    end: dict[tuple[int, int, int], int] = {}
    prev: list[tuple[int, int, int] | None] = [None] * p
    starts = [[[0] * len(ts) for ts in rank] for rank in slots]
    order = _in_slot_order(slots)
    for _, r, kind, i in order:
        deps = [prev[r]]
        if kind in (F_DOWN, B_UP) and r > 0:
            deps.append((r - 1, kind, i))
        if kind in (F_UP, B_DOWN) and r + 1 < p:
            deps.append((r + 1, kind, i))
        if F_DOWN < kind < W_ANY:
            deps.append((r, kind - 1, i))
        if i > 0:
            deps.append((r, kind, i - 1))
        start = max((end[d] for d in deps if d is not None), default=0)
        starts[r][kind][i] = start
        end[(r, kind, i)] = start + 1
        prev[r] = (r, kind, i)
    return starts


def _program(rank: RankSlots, r: int, p: int) -> list[Action]:
    """Rank r's actions in slot order, with each kind mapped to its op and V-shape stage."""
    down, up = r, 2 * p - 1 - r
    op_stage = {
        F_DOWN: (Op.F, down),
        F_UP: (Op.F, up),
        B_UP: (Op.B, up),
        B_DOWN: (Op.B, down),
        W_UP: (Op.W, up),
        W_DOWN: (Op.W, down),
    }
    timed = sorted((t, kind, i) for kind, ts in enumerate(rank) for i, t in enumerate(ts))
    return [Action(op_stage[kind][0], op_stage[kind][1], i) for _, kind, i in timed]


V_HALF = Baseline(
    "v-half",
    v_half,
    "V-shape building block, about 1/2 of 1F1B's activation memory (split backward)",
    "arXiv 2405.15362; sail-sg/zero-bubble-pipeline-parallelism v_schedule.py (vhalf)",
)
V_MIN = Baseline(
    "v-min",
    v_min,
    "V-shape building block, about 1/3 of 1F1B's activation memory (split backward)",
    "arXiv 2405.15362; sail-sg/zero-bubble-pipeline-parallelism v_schedule.py (vmin)",
)
