"""`verify`: the rules every schedule must keep, each error naming rank, action and rule.

Rules, in the order they are checked:

- ``placement``: an action runs on the rank its stage is placed on.
- ``range``: stage, microbatch and slice lie in ``0..S-1``, ``0..m-1``, ``0..k-1``.
- ``duplicate``: no action appears twice.
- ``completeness``: each unit has one F and either B and W or BW (never both);
  R at most once; OFFLOAD and RELOAD together or not at all; not R and OFFLOAD both.
- ``comm``: in a lowered schedule, exactly one SEND on the producer's rank and one
  RECV on the consumer's rank for every boundary tensor crossing ranks, and no
  other SEND/RECV; in an unlowered one, none at all.
- dependency order (rules ``forward-chain``, ``backward-chain``, ``slice-order``,
  ``backward-after-forward``, ``split-backward``, ``recompute``, ``offload``,
  ``comm``): a dependency on the same rank comes earlier in the program.
  Slices with recompute or offload need no rule of their own (DESIGN.md's dependencies imply it):
  recomputing slice j of a unit re-runs its forward against the keys and values of slices
  ``0..j-1`` of the same microbatch and stage, which their forwards made before F(s,i,j) (``slice-order``)
  and which stay on the rank until those slices' own backwards, and those come after B(s,i,j)
  (``slice-order`` backward), so after R(s,i,j). A slice's own K/V are kept on the rank from its
  F to its B whatever its variant: a recomputed slice keeps them with its input (the cost model
  counts them in ``inp``); an offloaded one leaves them on the device in the executor (the later
  slices' forwards read them), while OFFLOAD is charged the whole ``act``: with slices the IR
  overstates what an offload frees by that K/V share (a known approximation).
- ``deadlock``: the ranks can run their programs to the end when every SEND blocks
  until its RECV is posted and every RECV until its SEND is (unlowered: an action
  waits for its cross-rank dependencies to finish).
- ``memory`` (with costs and a cap): simulated peak bytes per rank within the cap.
"""

from __future__ import annotations

from typing import Any

from ir.actions import Action, Op
from ir.costs import Costs
from ir.deps import ProgramIndex, messages, paused_gc
from ir.errors import ScheduleError, Violation
from ir.schedule import Schedule

__all__ = ["verify", "find_violations", "structural_violations"]


def verify(schedule: Schedule, problem: Any = None, *, mem_cap: float | None = None) -> None:
    """Raise `ScheduleError` listing every broken rule; return None if the schedule is valid.

    Args:
        schedule: the schedule to check.
        problem: optional; an ``ir.Costs`` or any object with a ``costs`` attribute
            (and optionally ``mem_cap``, bytes per rank), such as ``synth.Problem``.
            Memory is checked when both costs and a cap are known.
        mem_cap: bytes per rank; overrides ``problem.mem_cap``.
    """
    with paused_gc():
        violations = find_violations(schedule, problem, mem_cap=mem_cap)
    if violations:
        raise ScheduleError(violations)


def find_violations(schedule: Schedule, problem: Any = None, *, mem_cap: float | None = None) -> list[Violation]:
    """Every broken rule, as `Violation`s (empty if the schedule is valid)."""
    ix = ProgramIndex(schedule)
    violations = structural_violations(schedule, ix)
    costs, cap = _costs_and_cap(problem, mem_cap)
    if violations or costs is None or cap is None:
        return violations
    return _memory_violations(schedule, costs, cap, ix)


def structural_violations(schedule: Schedule, ix: ProgramIndex) -> list[Violation]:
    """All rules but memory; later rules run only when the earlier ones hold."""
    violations = _placement_and_range(schedule) + _duplicates(ix)
    if violations:
        return violations
    violations = _completeness(schedule, ix) + _comm(schedule, ix)
    if violations:
        return violations
    violations = _order(schedule, ix)
    if violations:
        return violations
    return _deadlock(schedule, ix)


def _costs_and_cap(problem: Any, mem_cap: float | None) -> tuple[Costs | None, float | None]:
    if problem is None:
        return None, mem_cap
    costs = problem if isinstance(problem, Costs) else getattr(problem, "costs", None)
    if not isinstance(costs, Costs):
        raise TypeError(f"problem must be an ir.Costs or have a .costs attribute of that type, got {problem!r}")
    cap = mem_cap if mem_cap is not None else getattr(problem, "mem_cap", None)
    return costs, cap


def _placement_and_range(schedule: Schedule) -> list[Violation]:
    out = []
    bounds = (("stage", schedule.num_stages), ("microbatch", schedule.m), ("slice", schedule.k))
    for rank, _, action in schedule.actions():
        bad = [f"{name} {getattr(action, name)} is outside 0..{n - 1}"
               for name, n in bounds if getattr(action, name) >= n]
        if bad:
            out.append(Violation("range", rank, action, "; ".join(bad)))
            continue
        home = schedule.placement.rank_of(action.stage)
        if home != rank:
            out.append(Violation("placement", rank, action, f"stage {action.stage} is placed on rank {home}"))
    return out


def _duplicates(ix: ProgramIndex) -> list[Violation]:
    return [
        Violation("duplicate", rank, action,
                  f"appears again at position {pos} (first at position {ix.where[action][1]})")
        for rank, pos, action in ix.duplicates
    ]


def _completeness(schedule: Schedule, ix: ProgramIndex) -> list[Violation]:
    out = []
    ops_of: dict[tuple[int, int, int], set[Op]] = {}
    for action in ix.where:
        if not action.op.is_comm:
            ops_of.setdefault(action.unit, set()).add(action.op)
    complete = {Op.F, Op.BW}, {Op.F, Op.B, Op.W}
    for s, i, j in schedule.units():
        present = ops_of.get((s, i, j), set())
        if present in complete:
            continue  # the common case, with nothing to report
        rank = schedule.placement.rank_of(s)
        out += [Violation("completeness", rank, Action(op, s, i, j), why) for op, why in _unit_gaps(present)]
    return out




def _unit_gaps(present: set[Op]) -> list[tuple[Op, str]]:
    """What is missing from, or too much in, one unit's set of ops."""
    gaps = []
    if Op.F not in present:
        gaps.append((Op.F, "missing: every unit needs its forward once"))
    if Op.BW in present and present & {Op.B, Op.W}:
        gaps.append((Op.BW, "the unit also has a split B/W; use either BW or B and W"))
    elif Op.BW not in present:
        if Op.B not in present:
            gaps.append((Op.B, "missing: every unit needs its backward once (B and W, or BW)"))
        if Op.W not in present:
            gaps.append((Op.W, "missing: a split backward needs W after B (or use BW)"))
    if (Op.OFFLOAD in present) != (Op.RELOAD in present):
        have, lack = (Op.OFFLOAD, Op.RELOAD) if Op.OFFLOAD in present else (Op.RELOAD, Op.OFFLOAD)
        gaps.append((have, f"{have.value} without {lack.value}; offloaded activations must come back before B"))
    if Op.R in present and Op.OFFLOAD in present:
        gaps.append((Op.R, "a unit is either recomputed or offloaded, not both"))
    return gaps


def _comm(schedule: Schedule, ix: ProgramIndex) -> list[Violation]:
    present = {a for _, _, a in schedule.actions() if a.op.is_comm}
    if not present:
        return []
    expected = set()
    for msg in messages(ix):
        expected.update((msg.send, msg.recv))
    out = [
        Violation("comm", ix.rank_of(a), a, "no boundary tensor crosses ranks here; remove it")
        for a in sorted(present - expected, key=str)
    ]
    out += [
        Violation("comm", ix.rank_of(a), a, "missing: the schedule is lowered but this boundary tensor has no "
                  f"{a.op.value}; run ir.lower on the compute-only schedule")
        for a in sorted(expected - present, key=str)
    ]
    return out


def _order(schedule: Schedule, ix: ProgramIndex) -> list[Violation]:
    out = []
    for rank, pos, action in schedule.actions():
        for edge in ix.deps(action):
            found = ix.where.get(edge.pred)
            if found is None or found[0] != rank or found[1] < pos:
                continue
            out.append(Violation(edge.rule, rank, action, f"needs {edge.pred} first, which comes later on this rank "
                                 f"(position {found[1]} > {pos})"))
    return out


def _deadlock(schedule: Schedule, ix: ProgramIndex) -> list[Violation]:
    """Run the programs with blocking semantics; report where each stuck rank waits."""
    progs = schedule.ranks
    head = [0] * schedule.p
    partner = {msg.send: msg.recv for msg in messages(ix)} if ix.lowered else {}
    partner.update({recv: send for send, recv in partner.items()})

    def done(action: Action) -> bool:
        rank, pos = ix.where[action]
        return pos < head[rank]

    progressed = True
    while progressed:
        progressed = False
        for r, prog in enumerate(progs):
            while head[r] < len(prog):
                action = prog[head[r]]
                if action.op.is_comm:
                    peer_action = partner[action]
                    peer = ix.rank_of(peer_action)
                    if head[peer] >= len(progs[peer]) or progs[peer][head[peer]] != peer_action:
                        break
                    head[peer] += 1
                elif not ix.lowered and not all(done(e.pred) for e in ix.deps(action)):
                    break
                head[r] += 1
                progressed = True
    stuck = []
    for r, prog in enumerate(progs):
        if head[r] == len(prog):
            continue
        action = prog[head[r]]
        if action.op.is_comm:
            peer_action = partner[action]
            why = f"blocks until rank {ix.rank_of(peer_action)} reaches {peer_action}"
        else:
            waits = [e.pred for e in ix.deps(action) if not done(e.pred)]
            why = "waits for " + ", ".join(f"{a} on rank {ix.rank_of(a)}" for a in waits)
        stuck.append(Violation("deadlock", r, action, why + "; no rank can move"))
    return stuck


# Memory levels are sums of float byte counts; a peak within this relative margin of the cap is
# rounding, not an overrun (1e-9 of 80 GiB is 86 bytes).
MEMORY_RTOL = 1e-9


def _memory_violations(schedule: Schedule, costs: Costs, cap: float, ix: ProgramIndex) -> list[Violation]:
    from ir.simulate import check_costs_shape, run_timeline

    check_costs_shape(schedule, costs)
    timeline = run_timeline(schedule, costs, ix)
    return [
        Violation("memory", r, timeline.peak_action[r],
                  f"peak {timeline.peak[r]:g} bytes exceeds the cap {cap:g} by {timeline.peak[r] - cap:g}; "
                  f"the smallest cap this schedule fits is {max(timeline.peak):g}")
        for r in range(schedule.p) if timeline.peak[r] > cap * (1 + MEMORY_RTOL)
    ]
