"""Attention-work redistribution between sequence slices (SlimPipe), as a cost-model option.

SlimPipe (Li et al., arXiv 2504.14519) cuts each microbatch into slices of equal token count.
Under causal attention the queries of slice j see keys ``0..t1_j``, so later slices cost more:
with k slices of L tokens, slice j holds ``j L^2 + L (L + 1) / 2`` query-key pairs. The paper
balances this with a "workload redistribution" / "attention context exchange" between devices
(abstract; the TL;DR on sciencestack.ai/paper/2504.14519). Its exact scheme was not in our
reference corpora, so what follows is ours, built to be correct and as cheap as we could make it:

- **Targets.** Every slice ends with the mean ``P / k`` pairs (``P`` = all pairs of the
  sequence, ``T (T + 1) / 2`` without a window); when ``k`` does not divide ``P`` the heaviest
  ``P mod k`` slices keep one pair more, so slices differ by at most one pair.
- **Transfers.** Slices above their target (donors, taken from the last slice down) hand their
  surplus to slices below it (receivers, from the first slice up), greedily. The moved total is
  the sum of the surpluses, the least any equalising scheme can move. With uniform slices the
  greedy pairs slice j with slice k-1-j (the pairing Megatron-LM's context parallelism also uses
  to balance causal attention): the donor moves ``(k - 1 - 2j) L^2 / 2`` pairs.
- **Shape of the moved work.** A donor ships whole key columns: key tokens it attends to,
  against all of its query rows, its columns with the most pairs first (without a window these
  are the keys ``0..t0`` every query of the slice sees, ``t`` pairs each, so
  ``ceil(pairs / t)`` columns). The receiver computes that block with a fused (FlashAttention)
  kernel and returns the partial output with its log-sum-exp; the donor merges it into its own
  online softmax. The receiver keeps nothing between the passes (SlimPipe is about memory), so
  the backward ships its inputs again.
- **Bytes per transfer**, per layer and microbatch (b sequences, e bytes per element, nq query
  rows, nk key columns, q = heads * head_dim, kv = kv_heads * head_dim, a heads; log-sum-exp
  and ``D = rowsum(dO * O)`` are fp32):
  forward ``b (2 e nq q + 2 e nk kv + 4 a nq)``: Q and K, V out; partial O and its
  log-sum-exp back.
  backward ``b (3 e nq q + 4 e nk kv + 8 a nq)``: Q, dO, K, V, log-sum-exp and D out;
  partial dQ, dK, dV back.
  Time: ``bytes / bandwidth + 2 * latency`` (one message each way), charged to both the donor
  and the receiver and not overlapped with compute (an upper bound). With a sliding window the
  moved columns may not span every query row; all nq = t rows are still charged (an upper bound).
- FLOPs follow ``synth.costs.formulas`` for a fused kernel: ``4 b q`` per pair forward and
  ``2.5`` times that backward; the model FLOPs (``useful``) do not change.

All numbers are per transformer layer; ``build_problem`` multiplies by a stage's layers. Who
runs the moved work is a schedule question, and an idealisation here: the cost model assumes
each donor has a partner device with the matching deficit at the same time (how SlimPipe places
the moved work was not retrievable). The IR has no action for attention computed on another
rank for another stage's layer, so neither ``ir.simulate`` nor the executor runs the exchange:
it reaches them only as the slice costs this module returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from synth.costs.formulas import Work, attention_pairs
from synth.costs.hardware import Hardware
from synth.costs.spec import CostModelError, TransformerSpec

__all__ = ["Redistribution", "Transfer", "exchange_bytes", "key_columns", "redistribute_attention"]

LSE_BYTES = 4  # fp32 log-sum-exp (and D) per query row and head


@dataclass(frozen=True, slots=True)
class Transfer:
    """One block of attention work moved from a donor slice to a receiver slice (one layer).

    Attributes:
        donor: the slice that gives the work (its queries).
        receiver: the slice whose device computes it.
        pairs: query-key pairs moved, per sequence and head.
        query_tokens: the donor's query rows whose Q travels and whose partial output returns.
        key_tokens: key columns whose K and V travel.
        forward_bytes: bytes on the link in the forward pass (both directions, b sequences).
        backward_bytes: bytes on the link in the backward pass.
    """

    donor: int
    receiver: int
    pairs: int
    query_tokens: int
    key_tokens: int
    forward_bytes: float
    backward_bytes: float


@dataclass(frozen=True, slots=True)
class Redistribution:
    """Per-slice attention work before and after redistribution, and the exchange it costs.

    Every tuple has one entry per slice; all values are for one transformer layer and one
    microbatch. Times are in milliseconds, the IR's unit.

    Attributes:
        bounds: the slice boundaries, ``k + 1`` token positions from 0 to ``seq_len``.
        pairs_before: causal query-key pairs per slice (per sequence and head) as sliced.
        pairs_after: the same after redistribution (sums equal; entries differ by at most 1).
        transfers: the moved blocks, donors from the last slice down.
        flops_f: attention forward FLOPs per slice after redistribution (b sequences).
        flops_b: attention backward FLOPs per slice after redistribution.
        forward_bytes: link bytes per slice in the forward (its transfers, either role).
        backward_bytes: link bytes per slice in the backward.
        forward_ms: link time per slice in the forward.
        backward_ms: link time per slice in the backward.
    """

    bounds: tuple[int, ...]
    pairs_before: tuple[int, ...]
    pairs_after: tuple[int, ...]
    transfers: tuple[Transfer, ...]
    flops_f: tuple[float, ...]
    flops_b: tuple[float, ...]
    forward_bytes: tuple[float, ...]
    backward_bytes: tuple[float, ...]
    forward_ms: tuple[float, ...]
    backward_ms: tuple[float, ...]

    @property
    def k(self) -> int:
        return len(self.bounds) - 1

    @property
    def moved_pairs(self) -> int:
        return sum(t.pairs for t in self.transfers)

    def delta(self, j: int, spec: TransformerSpec) -> Work:
        """What redistribution adds to slice j's `Work` of one layer (negative for donors):
        ``build_problem`` adds ``layers * delta`` to ``layers * layer_work(...)``."""
        moved = self.pairs_after[j] - self.pairs_before[j]
        forward = 4 * spec.micro_batch * spec.q_dim * moved
        return Work(f=forward, b=2.5 * forward)


def redistribute_attention(spec: TransformerSpec, hw: Hardware, bounds: Sequence[int], *,
                           bandwidth: float | None = None) -> Redistribution:
    """Balance causal attention over the slices ``bounds`` and price the exchange.

    Args:
        spec: the model; its ``attention_window`` shapes the pairs, and it must use a fused
            (flash) attention kernel, which partial results with a log-sum-exp need.
        hw: the GPU; its ``p2p_latency`` is paid per message.
        bounds: slice boundaries ``0 = e_0 < ... < e_k = seq_len`` (``slice_bounds``).
        bandwidth: bytes/s of the link between partner devices; ``hw.p2p_bandwidth`` (inside a
            node) by default, ``hw.internode_bandwidth`` for partners on other nodes.

    Raises:
        CostModelError: bounds that do not cut ``[0, seq_len)``, or a non-fused attention kernel.
    """
    bounds = _checked_bounds(spec, bounds)
    if not spec.flash_attention:
        raise CostModelError(f"{spec.name}: attention redistribution merges partial results by their "
                             "log-sum-exp, which needs a fused (flash) attention kernel; set flash_attention")
    link = hw.p2p_bandwidth if bandwidth is None else bandwidth
    if not link > 0:
        raise CostModelError(f"bandwidth must be bytes/s > 0, got {bandwidth!r}")
    k, window = len(bounds) - 1, spec.attention_window
    before = [attention_pairs(t0, t1, window) for t0, t1 in zip(bounds, bounds[1:], strict=False)]
    after = _targets(before)
    transfers = tuple(_transfers(spec, bounds, before, after))

    fwd_bytes, bwd_bytes, fwd_ms, bwd_ms = ([0.0] * k for _ in range(4))
    for t in transfers:
        for j in (t.donor, t.receiver):
            fwd_bytes[j] += t.forward_bytes
            bwd_bytes[j] += t.backward_bytes
            fwd_ms[j] += 1e3 * (t.forward_bytes / link + 2 * hw.p2p_latency)
            bwd_ms[j] += 1e3 * (t.backward_bytes / link + 2 * hw.p2p_latency)
    per_pair = 4 * spec.micro_batch * spec.q_dim
    return Redistribution(
        bounds, tuple(before), tuple(after), transfers,
        tuple(per_pair * n for n in after), tuple(2.5 * per_pair * n for n in after),
        tuple(fwd_bytes), tuple(bwd_bytes), tuple(fwd_ms), tuple(bwd_ms),
    )


def exchange_bytes(spec: TransformerSpec, query_tokens: int, key_tokens: int) -> tuple[float, float]:
    """Link bytes ``(forward, backward)`` of one moved block (see the module docstring)."""
    b, e, a = spec.micro_batch, spec.dtype_bytes, spec.heads
    q, kv = spec.q_dim, spec.kv_dim
    forward = b * (2 * e * query_tokens * q + 2 * e * key_tokens * kv + LSE_BYTES * a * query_tokens)
    backward = b * (3 * e * query_tokens * q + 4 * e * key_tokens * kv + 2 * LSE_BYTES * a * query_tokens)
    return forward, backward


def key_columns(t0: int, t1: int, window: int | None, pairs: int) -> tuple[int, int]:
    """Lay the pairs of queries ``[t0, t1)`` out column by column, columns with the most pairs
    first; return ``(complete, needed)``: how many columns the first ``pairs`` pairs fill
    completely, and how many they touch.

    Key x is seen by queries ``max(t0, x) .. min(t1 - 1, x + window - 1)``; the number of keys
    seen by at least c queries is ``t1 - c + 1 - max(0, t0 + c - window)`` for
    ``c <= min(t1 - t0, window)`` (and 0 beyond), so the columns are walked by level c.
    """
    if pairs <= 0:
        return 0, 0
    span = t1 - t0
    top = span if window is None else min(span, window)

    def at_least(c: int) -> int:  # keys seen by at least c of the queries
        if c > top:
            return 0
        low = 0 if window is None else max(0, t0 + c - window)
        return max(0, t1 - c + 1 - low)

    used, columns = 0, 0
    for c in range(top, 0, -1):
        n = at_least(c) - at_least(c + 1)  # columns with exactly c pairs
        if used + n * c >= pairs:
            full = (pairs - used) // c
            return columns + full, columns + -(-(pairs - used) // c)
        used, columns = used + n * c, columns + n
    raise CostModelError(f"queries [{t0}, {t1}) hold only {used} pairs, fewer than the {pairs} asked")


def _checked_bounds(spec: TransformerSpec, bounds: Sequence[int]) -> tuple[int, ...]:
    bounds = tuple(bounds)
    ok = len(bounds) >= 2 and bounds[0] == 0 and bounds[-1] == spec.seq_len
    if not ok or any(not isinstance(e, int) or isinstance(e, bool) for e in bounds) \
            or any(lo >= hi for lo, hi in zip(bounds, bounds[1:], strict=False)):
        raise CostModelError(f"slice bounds must rise strictly from 0 to seq_len {spec.seq_len}, got {bounds!r}; "
                             "use synth.costs.slice_bounds")
    return bounds


def _targets(pairs: list[int]) -> list[int]:
    """The mean per slice; the heaviest ``total mod k`` slices (later first on ties) keep one more."""
    k = len(pairs)
    base, extra = divmod(sum(pairs), k)
    heaviest = sorted(range(k), key=lambda j: (pairs[j], j), reverse=True)[:extra]
    return [base + (j in heaviest) for j in range(k)]


def _transfers(spec: TransformerSpec, bounds: tuple[int, ...], before: list[int],
               after: list[int]) -> Iterator[Transfer]:
    """Greedy donor -> receiver moves; a donor's columns are handed out in order, so the
    columns a transfer touches run from the first one not yet full to the last one it needs."""
    k = len(before)
    surplus = [before[j] - after[j] for j in range(k)]
    donors = [j for j in reversed(range(k)) if surplus[j] > 0]
    receivers = [j for j in range(k) if surplus[j] < 0]
    given = dict.fromkeys(donors, 0)  # pairs each donor has handed out so far
    ri = 0
    for d in donors:
        while surplus[d] > 0:
            r = receivers[ri]
            amount = min(surplus[d], -surplus[r])
            t0, t1 = bounds[d], bounds[d + 1]
            start, _ = key_columns(t0, t1, spec.attention_window, given[d])
            _, stop = key_columns(t0, t1, spec.attention_window, given[d] + amount)
            forward, backward = exchange_bytes(spec, t1 - t0, stop - start)
            yield Transfer(d, r, amount, t1 - t0, stop - start, forward, backward)
            given[d] += amount
            surplus[d] -= amount
            surplus[r] += amount
            if surplus[r] == 0:
                ri += 1
