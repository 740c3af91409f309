"""The copy stream of `synth.construct.engine`: which unit to OFFLOAD or RELOAD, and when.

Two modes, chosen by the policy:

- **eager** (``Policy.jit`` False): offload the newest forward once memory is short (or every
  one, ``eager``) and reload the next backward's unit as soon as there is room. Simple, but on a
  rank with room for only a few units the reload lands right after the offload and frees nothing.
- **just in time** (``Policy.jit``): offload a forward when its input-gradient backward is
  estimated (`CopyStream.eta_b`) at least ``Policy.gap`` copy times away, so the host round trip
  fits in the idle window; reload, in backward order and looking ahead past units kept on the
  device, only when waiting for the next chance would make the reload end after that backward
  could start. Memory freed in between admits more forwards. `synth.construct.variants` tries
  only this mode now; the eager one stays for `Policy` users.

A copy can start only at an instant another action of the rank starts or the copy stream frees
(``ir.simulate`` starts each action as early as its program allows, and the engine must agree), so
a reload waits only while such an instant is sure to come in time (`CopyStream._sure_chance`);
otherwise it starts at once, else the rank could be left with nothing to start and deadlock.

The estimate is a lower bound from what the run knows (the microbatch's deepest forward or
shallowest backward so far, then the chain of passes and comm latencies), raised to the rank's
own backlog (its compute stream, the backward before in the same stage), so it only grows as
the run learns more and a reload keyed to it starts no later than needed on the critical path.
"""

from __future__ import annotations

import math

from synth.construct.tables import OFFLOAD, RELOAD, B, F, Tables

__all__ = ["CopyStream", "chain_sums"]

INF = math.inf
LOOKAHEAD = 4  # backwards per stage a just-in-time reload looks past (units kept on the device)


def chain_sums(tb: Tables) -> tuple[list[float], list[float], list[float]]:
    """Prefix sums over stages (k = 1) of F, B and comm latency: ``x[s]`` sums stages ``< s``."""
    cf, cb, cl = [0.0], [0.0], [0.0]
    for s in range(tb.num_stages):
        cf.append(cf[-1] + tb.f[s * tb.k])
        cb.append(cb[-1] + tb.b[s * tb.k])
        cl.append(cl[-1] + tb.lat[s * tb.k])
    return cf, cb, cl


class CopyStream:
    """Mixin of `synth.construct.engine._Engine`: the copy-stream decisions (state lives there)."""

    def _copy(self, r: int, t: float) -> bool:
        """Start a RELOAD or an OFFLOAD on rank r's free copy stream at t, if one is due; True if one did."""
        offer = self._offer(r, t)
        if offer < 0 and not self.away[r]:
            return False  # nothing forwarded to offload, nothing on the host to reload
        base = max(self.xfree[r], self.last[r])
        if offer >= 0 and (max(self.fend[offer], base) != t or not self._worth_offloading(r, t, offer)):
            offer = -1
        pick = self._reload_jit(r, t, base, offer) if self.pol.jit else self._reload_eager(r, t, base)
        if pick is not None:
            self._start_copy(r, t, RELOAD, *pick)
        elif offer >= 0:
            self._start_copy(r, t, OFFLOAD, offer, offer // self.mk * self.tb.k + offer % self.tb.k,
                             offer % self.mk // self.tb.k)
        else:
            return False
        return True

    def _worth_offloading(self, r: int, t: float, u: int) -> bool:
        tb, pol = self.tb, self.pol
        c = u // self.mk * tb.k + u % tb.k
        if pol.jit:
            return self.eta_b(u) - t >= pol.gap * tb.copy[c]
        return pol.eager or self.level[r] + tb.act[c] > tb.cap[r]

    def _reload_eager(self, r: int, t: float, base: float) -> tuple[int, int, int] | None:
        """The next backward's offloaded unit, as ``(unit, c, microbatch)``, once there is room."""
        tb, mk, k = self.tb, self.mk, self.tb.k
        room = tb.cap[r] - self.level[r] + self.tol[r]
        for s in tb.stages[r]:
            q = self.bq[s]
            if q >= mk:
                continue
            i, jj = divmod(q, k)
            u = (s * tb.m + i) * k + k - 1 - jj
            if self.off[u] and self.rel_start[u] == INF:
                ready = self.off_end[u]
                c = u // mk * k + u % k
                if ready <= t and max(ready, base) == t and tb.act[c] <= room - self._reserve(r, i):
                    return u, c, i
        return None

    def _reload_jit(self, r: int, t: float, base: float, offer: int) -> tuple[int, int, int] | None:
        """The offloaded unit (k = 1) whose backward comes first, if its reload cannot wait: waiting
        for the next chance to start a copy would end it after that backward may start, or there is
        no sure next chance (a copy may start only when another action on the rank starts or ends)."""
        tb, m = self.tb, self.tb.m
        best = None
        for s in tb.stages[r]:
            u, eta = self._next_reload(r, s)
            if u >= 0 and (best is None or eta < best[1]):
                best = (u, eta)
        if best is None:
            return None
        u, eta = best
        if max(self.off_end[u], base) != t:
            return None
        nxt = t + tb.copy[offer // m] if offer >= 0 else self._sure_chance(r, t)
        if nxt + tb.copy[u // m] < eta:
            return None  # waiting still makes it in time, and keeps the memory free meanwhile
        i = u % m
        if tb.act[u // m] > tb.cap[r] - self.level[r] + self.tol[r] - self._reserve(r, i):
            return None
        return u, u // m, i

    def _sure_chance(self, r: int, t: float) -> float:
        """The next time a copy may surely start on rank r: when its compute stream surely starts its
        next action (a W is or will then be ready; the forward now running will be offloaded; a
        backward whose unit is on the device or an admitted forward gets its input); inf if unknown."""
        tb, mk, m = self.tb, self.mk, self.tb.m
        free = max(self.cfree[r], t)
        best = INF
        if self.cfree[r] > t:
            code, u = self.running[r]
            if code == B or self.wq[r]:
                return free
            if code == F and self.offers[r] and self.offers[r][-1] == u and not self.off[u] \
                    and self.eta_b(u) - free >= self.pol.gap * tb.copy[u // mk]:
                best = free
        for s in tb.stages[r]:
            q = self.bq[s]
            if q < mk:
                u = s * m + q
                ready = self.fend[u] if s == tb.num_stages - 1 else self.bend[u + mk] + tb.lat[s]
                if ready < best and (not self.off[u] or self.rel_start[u] != INF):
                    best = max(ready, free)
            q = self.fq[s]
            if q < mk:
                u = s * m + q
                ready = 0.0 if s == 0 else self.fend[u - mk] + tb.lat[s - 1]
                if ready < best and self._admits(r, s, q):
                    best = max(ready, free)
        return best

    def _admits(self, r: int, s: int, i: int) -> bool:
        """Whether rank r's memory and depth admit the forward of (s, i) now (k = 1)."""
        tb = self.tb
        if self.fcount[r][i] == 0 and self.inflight[r] >= self.pol.depth[r]:
            return False
        return tb.act[s] <= tb.cap[r] - self.level[r] + self.tol[r] - self._reserve(r, i)

    def _next_reload(self, r: int, s: int) -> tuple[int, float]:
        """Stage s's first offloaded, not yet reloaded unit in backward order (k = 1) within
        `LOOKAHEAD`, with its backward's estimated start; ``(-1, inf)`` if none."""
        m, tb = self.tb.m, self.tb
        eta = self.cfree[r]
        for q in range(self.bq[s], min(self.fq[s], self.bq[s] + LOOKAHEAD)):
            u = s * m + q
            eta = max(eta, self.eta_b(u))
            if self.off[u] and self.rel_start[u] == INF:
                return u, eta
            eta += tb.b[s]  # the next backward of this stage comes after this one
        return -1, INF

    def eta_b(self, u: int) -> float:
        """A lower bound on when the input-gradient backward of unit u (k = 1) can start, from the
        microbatch's progress so far (its shallowest started backward, else its deepest forward)."""
        m, last = self.tb.m, self.tb.num_stages - 1
        s, i = divmod(u, m)
        cf, cb, cl = self.chain
        lo = self.bmin[i]
        if lo <= last:  # B(lo, i) has started: its end, then the chain of B's down to s
            return self.bend[lo * m + i] + cb[lo] - cb[s + 1] + cl[lo] - cl[s]
        x = self.fmax[i]
        return self.fend[x * m + i] + cf[last + 1] - cf[x + 1] + cb[last + 1] - cb[s + 1] + cl[last] - cl[x] \
            + cl[last] - cl[s]

    def _offer(self, r: int, t: float) -> int:
        """The newest ended forward on the rank that may still be offloaded (its B farthest away), or -1."""
        offers = self.offers[r]
        while offers and (self.off[offers[-1]] or self.bend[offers[-1]] != INF):
            offers.pop()
        for u in reversed(offers[-3:]):  # the newest may still be running
            if self.fend[u] <= t and not self.off[u] and self.bend[u] == INF:
                return u
        return -1

    def _start_copy(self, r: int, t: float, code: int, u: int, c: int, i: int) -> None:
        """Start the OFFLOAD or RELOAD of unit u (table index c, microbatch i) at t."""
        act = self.tb.act[c]
        if code == OFFLOAD:
            self.off[u] = True
            self.off_end[u] = self._issue(r, t, OFFLOAD, u, self.tb.copy[c], 0.0, act, -1, copy=True)
            self.held[r][i] -= act
            self.away[r] += 1
        else:
            self.rel_start[u] = t
            self.held[r][i] += act
            self.away[r] -= 1
            self.rel_end[u] = self._issue(r, t, RELOAD, u, self.tb.copy[c], act, 0.0, -1, copy=True)
