"""Compute orders of torch's own pipelining schedules, for comparison with ours.

``torch_pipeline_orders(schedule_class, cases, v_shape)`` runs a subprocess (so that
torch.distributed stays out of pytest's process) that joins a fake process group as
rank 0 of p, builds real ``PipelineStage``s for rank 0's stages (stage 0, plus stage
2p-1 when ``v_shape``), instantiates ``torch.distributed.pipelining.<schedule_class>``
and returns ``{"p,m": {rank: [cells]}}`` of its ``pipeline_order``.
"""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = r"""
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining import schedules
from torch.testing._internal.distributed.fake_pg import FakeStore

schedule_class, v_shape, cases = sys.argv[1], sys.argv[2] == "1", json.loads(sys.argv[3])
out = {}
for p, m in cases:
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=p)
    try:
        num_stages = 2 * p if v_shape else p
        own = (0, num_stages - 1) if v_shape else (0,)
        stages = [PipelineStage(torch.nn.Linear(4, 4), s, num_stages, torch.device("cpu")) for s in own]
        schedule = getattr(schedules, schedule_class)(stages, n_microbatches=m, loss_fn=lambda y, t: y.sum())
        out[f"{p},{m}"] = {r: [str(a) for a in acts if a is not None] for r, acts in schedule.pipeline_order.items()}
    finally:
        dist.destroy_process_group()
print(json.dumps(out))
"""


def torch_pipeline_orders(schedule_class: str, cases: list[tuple[int, int]], *, v_shape: bool) -> dict:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, schedule_class, "1" if v_shape else "0", json.dumps(cases)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
