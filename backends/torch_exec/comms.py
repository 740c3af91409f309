"""Point-to-point traffic of one rank: boundary activations forward, their gradients backward.

A lowered schedule (``ir.lower``) says where each rank posts its SEND_F/RECV_F/SEND_B/RECV_B.
The executor hands every run of consecutive comm actions to `Mailbox.post`, which issues them
as one ``batch_isend_irecv``: receives go into buffers allocated from the known boundary shapes
(``backends.torch_exec.stages.boundary_shapes``, so no shape exchange), sends take the tensor the
producing pass left in the outbox. Nothing waits at post time: the consumer of a received tensor
waits for it (`take`), and sends are completed lazily and at the end of the step (`drain`).

Every wait is bounded: a peer that died or hangs ends the rank's run with a `CommError` that
names the action, the peer and the timeout, instead of a hang. Messages carry a tag derived from
the unit (gloo matches by it; NCCL ignores tags and relies on the order, which ``ir.verify``'s
deadlock rule guarantees to agree on both sides).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from backends.torch_exec.stages import TensorMeta
from ir import Action, Op, Schedule

__all__ = ["CommError", "Mailbox"]


class CommError(RuntimeError):
    """A send or receive failed or did not complete within the timeout."""


@dataclass(slots=True)
class _InFlight:
    action: Action
    peer: int
    tensor: Tensor
    work: dist.Work | None = None


class Mailbox:
    """Boundary tensors in flight for one rank.

    Args:
        rank: this rank.
        schedule: the (lowered) schedule, for the placement and the tag space.
        shapes: ``shapes[s]`` is one unit's output of stage ``s`` (all but the last stage).
        device: where receive buffers live.
        timeout: seconds any single wait may take.
        group: the process group (default: the world).
    """

    def __init__(self, rank: int, schedule: Schedule, shapes: list[list[TensorMeta]], device: torch.device,
                 timeout: float, group: dist.ProcessGroup | None = None) -> None:
        self.rank = rank
        self.placement = schedule.placement
        self.num_stages, self.m, self.k = schedule.num_stages, schedule.m, schedule.k
        self.shapes = shapes
        self.device = device
        self.timeout = timeout
        self.group = group
        self.outbox: dict[Action, Tensor] = {}  # SEND action -> the tensor its producer made
        self._recvs: dict[Action, _InFlight] = {}
        self._sends: list[_InFlight] = []

    def post(self, actions: list[Action]) -> None:
        """Issue ``actions`` (consecutive SEND/RECV of the program) as one batch."""
        flights = [self._flight(a) for a in actions]
        ops = [dist.P2POp(dist.isend if f.action.op in (Op.SEND_F, Op.SEND_B) else dist.irecv, f.tensor, f.peer,
                          self.group, self._tag(f.action)) for f in flights]
        try:
            works = dist.batch_isend_irecv(ops)
        except RuntimeError as exc:
            raise CommError(f"rank {self.rank}: posting {', '.join(map(str, actions))} failed: {exc}") from exc
        for flight, work in zip(flights, works, strict=True):
            flight.work = work
            if flight.action.op in (Op.SEND_F, Op.SEND_B):
                self._sends.append(flight)
            else:
                self._recvs[flight.action] = flight
        self._sends = [f for f in self._sends if not f.work.is_completed()]

    def _flight(self, action: Action) -> _InFlight:
        s = action.stage
        if action.op is Op.SEND_F:
            return _InFlight(action, self.placement.rank_of(s + 1), self._outgoing(action))
        if action.op is Op.SEND_B:
            return _InFlight(action, self.placement.rank_of(s - 1), self._outgoing(action))
        meta = (self.shapes[s - 1] if action.op is Op.RECV_F else self.shapes[s])[action.slice]
        peer = self.placement.rank_of(s - 1 if action.op is Op.RECV_F else s + 1)
        return _InFlight(action, peer, torch.empty(meta.shape, dtype=meta.dtype, device=self.device))

    def _outgoing(self, action: Action) -> Tensor:
        try:
            tensor = self.outbox.pop(action)
        except KeyError:
            raise CommError(f"rank {self.rank}: {action} has nothing to send; its producer has not run") from None
        return tensor.contiguous()

    def _tag(self, action: Action) -> int:
        """The same number on both sides of a message: direction, producing stage, microbatch, slice."""
        if action.op in (Op.SEND_F, Op.SEND_B):
            direction, producer = (0 if action.op is Op.SEND_F else 1), action.stage
        else:
            direction = 0 if action.op is Op.RECV_F else 1
            producer = action.stage - 1 if action.op is Op.RECV_F else action.stage + 1
        return ((direction * self.num_stages + producer) * self.m + action.microbatch) * self.k + action.slice

    def take(self, recv: Action) -> Tensor:
        """The tensor ``recv`` (a RECV action of this rank) brought, once it has arrived."""
        try:
            flight = self._recvs.pop(recv)
        except KeyError:
            raise CommError(f"rank {self.rank}: {recv} was not posted before the pass that needs it") from None
        self._wait(flight, "receiving")
        return flight.tensor

    def drain(self) -> None:
        """Wait for every send still in flight (end of step); check nothing was left unreceived."""
        for flight in self._sends:
            self._wait(flight, "sending")
        self._sends = []
        if self._recvs:
            left = ", ".join(str(a) for a in self._recvs)
            self._recvs.clear()
            raise CommError(f"rank {self.rank}: received but never used: {left}")
        if self.outbox:
            left = ", ".join(str(a) for a in self.outbox)
            self.outbox.clear()
            raise CommError(f"rank {self.rank}: produced but never sent: {left}")

    def _wait(self, flight: _InFlight, what: str) -> None:
        try:
            flight.work.wait(datetime.timedelta(seconds=self.timeout))
        except RuntimeError as exc:
            raise CommError(
                f"rank {self.rank}: {what} {flight.action} {'to' if what == 'sending' else 'from'} rank "
                f"{flight.peer} failed or did not complete within {self.timeout:g} s (the peer may have "
                f"failed: see its error): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
