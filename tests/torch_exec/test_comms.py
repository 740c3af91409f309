"""`comms.post_batch`: a batch that sends gives up the core afterwards (gloo's I/O thread, woken on
the sender's core, writes the message), one that only receives does not; both deliver."""

import torch
import torch.distributed as dist


def _posts(*, rank, world_size, device):
    from backends.torch_exec import comms

    yields = []
    real = comms.os.sched_yield
    comms.os.sched_yield = lambda: yields.append(1)
    try:
        peer = 1 - rank
        out, got = torch.full((3,), float(rank)), torch.zeros(3)
        counts = []
        for sending in (rank == 0, rank == 1):  # rank 0 sends first, then rank 1
            before = len(yields)
            op, buf = (dist.isend, out) if sending else (dist.irecv, got)
            for work in comms.post_batch([dist.P2POp(op, buf, peer)]):
                work.wait()
            counts.append(len(yields) - before)
    finally:
        comms.os.sched_yield = real
    return counts, got.tolist()


def test_a_batch_that_sends_yields_and_one_that_only_receives_does_not(group2):
    (counts0, got0), (counts1, got1) = group2.run(_posts)
    assert counts0 == [1, 0] and counts1 == [0, 1]
    assert got0 == [1.0] * 3 and got1 == [0.0] * 3
