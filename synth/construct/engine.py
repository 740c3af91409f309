"""The event-driven list scheduler behind `synth.construct`: one `Policy`, one run.

Time moves from event to event (an action ends, a message arrives). Whenever a rank's compute
stream is free it picks among its ready actions by the policy's rule: the next input-gradient
backward (B or BW; an R first if the unit was recomputed), then the next forward that is
admitted (warm-up depth: microbatches forwarded whose backward has not ended; memory within
the budget; room kept so that older microbatches can always finish, ``synth.construct.reserve``),
W filling what is left; its copy stream reloads and offloads (``synth.construct.copies``).

Forwards and backwards of one stage go in microbatch order (slices forward in order, backward
in reverse), W's first in, first out. An action starts only at its "natural" time, the time
``ir.simulate`` would give it in the program this run writes (the latest of its inputs, its
stream and the previous action's start), so the simulator reproduces these times exactly
and memory is checked at the instants it is really allocated. A run in which some action can
never start returns None; so does one abandoned once a rank's compute work still to start
cannot end before the makespan to beat (`construct` passes the fastest fitting one so far).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from heapq import heappop, heappush

from synth.construct.copies import CopyStream, chain_sums
from synth.construct.reserve import Reservations
from synth.construct.tables import BW, B, F, Policy, R, Tables, W

__all__ = ["Run", "run"]

INF = math.inf


@dataclass(frozen=True, slots=True)
class Run:
    """The outcome of one policy: per rank, ``(code, unit, start, end)`` in start order
    (unit = ``(stage * m + microbatch) * k + slice``; codes from ``synth.construct.tables``)."""

    programs: tuple[tuple[tuple[int, int, float, float], ...], ...]
    recomputed: frozenset[int]


def run(tb: Tables, policy: Policy, beat: float = INF) -> Run | None:
    """Schedule every action under ``policy``; None if the run deadlocks, or once it surely ends at
    ``beat`` or later (a rank's compute work still to start no longer fits before it)."""
    engine = _Engine(tb, policy)
    if not engine.loop(beat * (1 - 1e-12)):
        return None
    recomputed = frozenset(u for u, flag in enumerate(engine.recomp) if flag)
    return Run(tuple(tuple(prog) for prog in engine.out), recomputed)


class _Engine(CopyStream, Reservations):
    """Mutable state of one run (lists indexed by unit, stage or rank)."""

    def __init__(self, tb: Tables, policy: Policy) -> None:
        self.tb, self.pol = tb, policy
        p, m, k = tb.p, tb.m, tb.k
        self.mk = mk = m * k
        n = tb.num_stages * mk
        self.fend, self.bend, self.rend = [INF] * n, [INF] * n, [INF] * n
        self.recomp, self.off = [False] * n, [False] * n
        self.off_end, self.rel_start, self.rel_end = [INF] * n, [INF] * n, [INF] * n
        self.fq, self.bq = [0] * tb.num_stages, [0] * tb.num_stages
        self.wq: list[deque[int]] = [deque() for _ in range(p)]
        self.level = [0.0] * p
        self.pending: list[list[tuple[float, float, int]]] = [[] for _ in range(p)]  # (end, -bytes freed, unit's mb)
        self.cfree, self.xfree, self.last = [0.0] * p, [0.0] * p, [0.0] * p
        self.running = [(-1, -1)] * p  # (code, unit) of the rank's latest compute action
        self.left = [[len(tb.stages[r]) * k] * m for r in range(p)]
        self.fcount = [[0] * m for _ in range(p)]
        self.held = [[0.0] * m for _ in range(p)]  # per microbatch, bytes only its own backwards free
        self.keep: list[list[float]] = [[] for _ in range(p)]  # `Reservations._keeps`, cached per action
        self.keep_pos: list[dict[int, int]] = [{} for _ in range(p)]
        self.keep_at = [-1] * p
        self.needs = [[-1.0] * m for _ in range(p)]  # `Reservations._need` per microbatch, -1 when stale
        self.inflight = [0] * p
        # compute work still to start per rank (R's left out: a lower bound either way)
        self.work = [m * sum(tb.f[c] + tb.b[c] + (tb.w[c] if tb.split else 0.0)
                             for s in tb.stages[r] for c in range(s * k, s * k + k)) for r in range(p)]
        self.order: list[deque[int]] = [deque() for _ in range(p)]
        self.out: list[list[tuple[int, int, float, float]]] = [[] for _ in range(p)]
        self.offers: list[list[int]] = [[] for _ in range(p)]  # forwarded units offload may take
        self.away = [0] * p  # units offloaded and not yet reloaded
        self.after_b = [False] * p  # the rank's last F or B was a B
        self.heap = [(0.0, r) for r in range(p)]
        self.reserving = policy.recompute or policy.offload or any(len(st) > 1 for st in tb.stages)
        self.copies = policy.offload
        if policy.jit:  # what the backward estimate (`CopyStream.eta_b`) reads
            self.chain = chain_sums(tb)
            self.fmax, self.bmin = [0] * m, [tb.num_stages] * m
        self.tol = [1e-12 * max(1.0, c) if math.isfinite(c) else 0.0 for c in tb.cap]

    def loop(self, beat: float) -> bool:
        heap, work, cfree = self.heap, self.work, self.cfree
        while heap:
            t, r = heappop(heap)
            if (cfree[r] if cfree[r] > t else t) + work[r] >= beat:
                return False  # every compute action still to start runs after t, one at a time
            self._settle(r, t)
            if self.cfree[r] <= t:
                self._compute(r, t)
            if self.copies and self.xfree[r] <= t and self._copy(r, t) and self.cfree[r] <= t:
                self._compute(r, t)  # the copy just started is one more instant a compute action may start at
        mk = self.mk
        return all(q == mk for q in self.fq) and all(q == mk for q in self.bq) and not any(self.wq)

    def _settle(self, r: int, t: float) -> None:
        """Apply the frees (and finished microbatches) of the rank's actions that ended by t."""
        pend = self.pending[r]
        if not pend:
            return
        keep = []
        for item in pend:
            if item[0] > t:
                keep.append(item)
                continue
            self.level[r] += item[1]
            mb = item[2]
            if mb >= 0:
                self.left[r][mb] -= 1
                if self.left[r][mb] == 0:
                    self.inflight[r] -= 1
        self.pending[r] = keep

    def _compute(self, r: int, t: float) -> None:
        tb = self.tb
        base = max(self.cfree[r], self.last[r])
        room = tb.cap[r] - self.level[r] + self.tol[r]
        w_ready = bool(self.wq[r]) and max(self.bend[self.wq[r][0]], base) == t
        if self.pol.rule == "alternate" and self.after_b[r]:  # 1F1B's steady state: a forward after a backward
            if self._forward(r, t, base, room, True) or self._backward(r, t, base, room):
                return
        elif self._backward(r, t, base, room):
            return
        if w_ready and self.pol.rule == "w-early" and self.level[r] >= self.pol.w_early_at * tb.cap[r]:
            self._start_w(r, t)
            return
        if self._forward(r, t, base, room, w_ready):
            return
        if w_ready:
            self._start_w(r, t)

    def _backward(self, r: int, t: float, base: float, room: float) -> bool:
        """Start the ready B/BW (or the R before it) of the deepest stage, then oldest microbatch; True if one did."""
        tb, mk, k, m = self.tb, self.mk, self.tb.k, self.tb.m
        best = None
        for s in tb.stages[r]:
            q = self.bq[s]
            if q >= mk:
                continue
            i, jj = divmod(q, k)
            j = k - 1 - jj
            u = (s * m + i) * k + j
            ready = self.fend[u]
            if s < tb.num_stages - 1:
                ready = max(ready, self.bend[u + mk] + tb.lat[s * k + j])
            if ready > t:
                continue
            redo = self.recomp[u] and self.rend[u] == INF
            if not redo:
                if self.recomp[u]:
                    ready = max(ready, self.rend[u])
                if self.off[u]:
                    ready = max(ready, self.rel_end[u])
                if ready > t:
                    continue
            if max(ready, base) < t:
                continue  # ready earlier but not run then: starting now would not be its simulated time
            if redo and tb.act[s * k + j] - tb.inp[s * k + j] > room - self._reserve(r, i):
                continue
            key = (-s, i)  # deeper stage first (Megatron interleaved drains a chunk group before the next)
            if best is None or key < best[0]:
                best = (key, u, s, i, j, redo)
        if best is None:
            return False
        _, u, s, i, j, redo = best
        if redo:
            self._start_r(r, t, u, s, i, j)
        else:
            self._start_b(r, t, u, s, i, j)
        return True

    def _forward(self, r: int, t: float, base: float, room: float, w_ready: bool) -> bool:
        """Start the admitted forward of the deepest stage (then oldest microbatch); True if one started."""
        tb, mk, k, m = self.tb, self.mk, self.tb.k, self.tb.m
        best = lean = None
        for s in tb.stages[r]:
            q = self.fq[s]
            if q >= mk:
                continue
            i, j = divmod(q, k)
            u = (s * m + i) * k + j
            ready = 0.0 if s == 0 else self.fend[u - mk] + tb.lat[(s - 1) * k + j]
            if ready > t or max(ready, base) < t:
                continue
            if self.fcount[r][i] == 0 and self.inflight[r] >= self.pol.depth[r]:
                continue
            c = s * k + j
            free = room - self._reserve(r, i)
            key = (-s, i)
            eager = self.pol.eager and self.pol.recompute
            # the last stage's B follows its F at once, so recomputing there pays only for a slice
            # that waits for the later slices of its microbatch
            may_recompute = s < tb.num_stages - 1 or j < k - 1
            if tb.act[c] <= free and not (eager and may_recompute):
                if best is None or key < best[0]:
                    best = (key, u, s, i, j)
            elif self.pol.recompute and may_recompute and tb.inp[c] <= free:
                if lean is None or key < lean[0]:
                    lean = (key, u, s, i, j)
        if best is not None:
            self._start_f(r, t, *best[1:], lean=False)
            return True
        if lean is not None and (self.pol.eager or not w_ready):  # else only when the rank would idle
            self._start_f(r, t, *lean[1:], lean=True)
            return True
        return False

    # ---- starting actions -------------------------------------------------------------

    def _issue(self, r: int, t: float, code: int, u: int, dur: float, alloc: float, free: float,
               done: int, copy: bool = False) -> float:
        end = t + dur
        if copy:
            self.xfree[r] = end
        else:
            self.cfree[r] = end
            self.running[r] = (code, u)
            if code != R:
                self.work[r] -= dur
        self.last[r] = t
        self.level[r] += alloc
        self.needs[r][u % self.mk // self.tb.k] = -1.0
        if free or done >= 0:
            self.pending[r].append((end, -free, done))
        self.out[r].append((code, u, t, end))
        heappush(self.heap, (end, r))
        return end

    def _start_f(self, r: int, t: float, u: int, s: int, i: int, j: int, lean: bool) -> None:
        tb = self.tb
        c = s * tb.k + j
        self.recomp[u] = lean
        end = self._issue(r, t, F, u, tb.f[c], tb.inp[c] if lean else tb.act[c], 0.0, -1)
        self.fend[u] = end
        self.fq[s] += 1
        if self.fcount[r][i] == 0:
            self.inflight[r] += 1
            self.order[r].append(i)
        self.fcount[r][i] += 1
        self.held[r][i] += tb.inp[c] if lean else tb.act[c]
        if self.copies and not lean and s + 1 < tb.num_stages:
            self.offers[r].append(u)
        self.after_b[r] = False
        if self.pol.jit:
            self.fmax[i] = s
        if s + 1 < tb.num_stages:
            heappush(self.heap, (end + tb.lat[c], tb.rank_of[s + 1]))

    def _start_r(self, r: int, t: float, u: int, s: int, i: int, j: int) -> None:
        tb = self.tb
        c = s * tb.k + j
        rest = tb.act[c] - tb.inp[c]  # the kept input is part of act (DESIGN.md's memory table)
        self.rend[u] = self._issue(r, t, R, u, tb.r[c], rest, 0.0, -1)
        self.held[r][i] += rest

    def _start_b(self, r: int, t: float, u: int, s: int, i: int, j: int) -> None:
        tb = self.tb
        c = s * tb.k + j
        if tb.split:
            end = self._issue(r, t, B, u, tb.b[c], 0.0, tb.act[c] - tb.wact[c], i)
            self.wq[r].append(u)
        else:
            end = self._issue(r, t, BW, u, tb.b[c], 0.0, tb.act[c], i)
        self.bend[u] = end
        self.held[r][i] -= tb.act[c]  # recomputed or not: its R brought it back to act
        self.bq[s] += 1
        self.after_b[r] = True
        if self.pol.jit:
            self.bmin[i] = s
        if s > 0:
            heappush(self.heap, (end + tb.lat[c - tb.k], tb.rank_of[s - 1]))

    def _start_w(self, r: int, t: float) -> None:
        u = self.wq[r].popleft()
        tb = self.tb
        c = u // self.mk * tb.k + u % tb.k
        self._issue(r, t, W, u, tb.w[c], 0.0, tb.wact[c], -1)
