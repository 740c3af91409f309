"""The torch.distributed executor: runs a lowered ``ir.Schedule`` on a real PyTorch model (DESIGN.md, "Executor").

Modules, from the model up:

- ``model``: `ModelSpec` (a model as a list of layers) and the tiny causal GPT example.
- ``stages``: split the layers into the schedule's stages (`StageModule`), boundary shapes.
- ``memory``: saved-tensor hooks, release, offload/reload, byte accounting.
- ``backward``: split backward (B for inputs, W for weights) and fused BW.
- ``passes``: one unit's F, R, B, W, BW, OFFLOAD, RELOAD on one stage (`StageRunner`).
- ``comms``: batched p2p of boundary tensors with bounded waits (`Mailbox`).
- ``executor``: checks a schedule (`prepare_schedule`) and walks a rank's program (`RankExecutor`).
- ``boundary``: what crosses a stage boundary (a tensor, or a tuple/dict of them).
- ``split``: `split_model`, by module names; ``hf``: `hf_layers`, Hugging Face ``*ForCausalLM`` models.
- ``pipeline``: `PipelineSchedule`, the executor in the user's own training loop (torch.distributed.pipelining's shape).
- ``worker``: one rank's whole run (`RunConfig`, `run_rank`); ``launch``: local processes or torchrun.
- ``reference``: the single-process run the executor must equal; ``profile``: measured ``ir.Costs``;
  ``trace``: the real run as an ``ir.Timeline`` / Chrome trace; ``cli``: ``synth run``.

Importing this package does not import torch; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ExecutorError",
    "ModelSpec",
    "PipelineSchedule",
    "RunConfig",
    "RunFailed",
    "WorkerGroup",
    "clip_grad_norm_",
    "hf_layers",
    "hf_spec",
    "model_spec",
    "prepare_schedule",
    "profile_costs",
    "reference_step",
    "run_rank",
    "sequential_spec",
    "spawn",
    "split_model",
    "tiny_gpt",
]

_HOME = {
    "ExecutorError": "executor",
    "prepare_schedule": "executor",
    "ModelSpec": "model",
    "model_spec": "model",
    "sequential_spec": "model",
    "tiny_gpt": "model",
    "RunConfig": "worker",
    "run_rank": "worker",
    "RunFailed": "launch",
    "WorkerGroup": "launch",
    "spawn": "launch",
    "profile_costs": "profile",
    "PipelineSchedule": "pipeline",
    "clip_grad_norm_": "pipeline",
    "hf_layers": "hf",
    "hf_spec": "hf",
    "split_model": "split",
    "reference_step": "reference",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'backends.torch_exec' has no attribute {name!r}")
    return getattr(importlib.import_module(f"backends.torch_exec.{_HOME[name]}"), name)
