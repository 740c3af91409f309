"""Memory reservations of `synth.construct.engine`: room kept so that no run deadlocks.

A rank that holds several stages, recomputes or offloads allocates memory again after a
microbatch's forward (its later stages' forwards, R, RELOAD). If young microbatches filled the
budget, an older one could wait for room only its own progress would free. The rule kept here:
microbatches finish on a rank in the order they started there (`_Engine.order`); when the j-th
becomes the oldest, the older ones have freed everything, so what is still held is what j and the
younger ones hold "stuck" (bytes only their own backwards free: forwarded units on the device, not
under way to the host); j then needs its own peak (`Reservations.need`) on top. An allocation
for microbatch i is admitted only if, for every j older than i,

    bytes + stuck(j and younger) + need(j) <= budget,

so each microbatch in turn can finish (by induction: its W's always can run, freeing room).
Offloads under way free their bytes by themselves, so they count for nobody.
"""

from __future__ import annotations

import math

__all__ = ["Reservations"]

INF = math.inf


class Reservations:
    """Mixin of `synth.construct.engine._Engine`: `reserve` and what it reads (state lives there)."""

    def _reserve(self, r: int, i: int) -> float:
        """Bytes of the rank's free room an allocation for microbatch i must leave (0 for the oldest)."""
        if not self.reserving:
            return 0.0
        order, left = self.order[r], self.left[r]
        while order and left[order[0]] == 0:
            order.popleft()
        if not order or order[0] == i:
            return 0.0
        key = len(self.out[r])
        if self.keep_at[r] != key:
            self._keeps(r)
            self.keep_at[r] = key
        keep = self.keep[r]
        at = self.keep_pos[r].get(i, len(keep))  # i not yet on the rank: younger than all
        return max(0.0, keep[at - 1] - self.level[r])

    def _keeps(self, r: int) -> None:
        """``keep[r][x]``: the most memory any of the first x+1 microbatches in flight needs in use
        at once when it is the oldest (stuck bytes of it and younger ones, plus its own peak)."""
        order, held, needs = self.order[r], self.held[r], self.needs[r]
        stuck = sum(held[x] for x in order)
        keep, pos, most = [], {}, 0.0
        for n, x in enumerate(order):
            need = needs[x]
            if need < 0.0:  # stale: one of its actions started on the rank since
                need = needs[x] = self._need(r, x)
            most = max(most, stuck + need)
            stuck -= held[x]
            keep.append(most)
            pos[x] = n
        self.keep[r], self.keep_pos[r] = keep, pos

    def _need(self, r: int, i: int) -> float:
        """The most bytes microbatch i's remaining actions on rank r add at once to what it holds now:
        its forwards to come, then backward by backward the R or RELOAD before each, less what each
        unit frees by its B and W (a W can always run once its B has, so that room comes back)."""
        tb, k, m = self.tb, self.tb.k, self.tb.m
        level = peak = 0.0
        for s in tb.stages[r]:
            for j in range(k):
                if self.fend[(s * m + i) * k + j] == INF:
                    level += tb.act[s * k + j]  # kept or lean: a lean F's R brings it to act (inp is part of it)
                    peak = max(peak, level)
        for s in reversed(tb.stages[r]):
            for j in range(k - 1, -1, -1):
                u, c = (s * m + i) * k + j, s * k + j
                if self.bend[u] != INF:
                    continue
                if self.fend[u] == INF:
                    level -= tb.act[c]
                    continue
                if self.recomp[u] and self.rend[u] == INF:
                    level += tb.act[c] - tb.inp[c]
                if self.off[u] and self.rel_start[u] == INF:
                    level += tb.act[c]
                peak = max(peak, level)
                level -= tb.act[c]
        return peak
