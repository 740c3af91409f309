"""The cost model: a transformer and a GPU become the IR's `Costs` and a `Problem`.

- ``synth.costs.spec``: `TransformerSpec`, presets, Hugging Face ``config.json`` reading.
- ``synth.costs.hardware``: `Hardware` presets (A100 40/80 GB, H100 80 GB, H200).
- ``synth.costs.formulas``: parameters, FLOPs (F, B, W) and activation bytes per block, with sources.
- ``synth.costs.problem``: layers to stages, sequence slices, static memory, comm, `Problem`,
  throughput (tokens/s, samples/s, MFU).

    >>> from ir import Placement
    >>> from synth.costs import build_problem, hardware, preset
    >>> problem = build_problem(preset("llama3-8b"), hardware("h100-80gb"), Placement.standard(8), m=16)
    >>> problem.layers_per_stage  # the 128k-vocabulary head weighs about two blocks
    (5, 5, 4, 4, 4, 4, 4, 2)
"""

from synth.costs.formulas import Work, total_params
from synth.costs.hardware import HARDWARE, Hardware, hardware
from synth.costs.problem import (
    Partition,
    Problem,
    Slicing,
    Throughput,
    Training,
    build_problem,
    partition_layers,
    slice_bounds,
)
from synth.costs.spec import PRESETS, CostModelError, TransformerSpec, preset, spec_from_hf_config

__all__ = [
    "HARDWARE",
    "PRESETS",
    "CostModelError",
    "Hardware",
    "Partition",
    "Problem",
    "Slicing",
    "Throughput",
    "Training",
    "TransformerSpec",
    "Work",
    "build_problem",
    "hardware",
    "partition_layers",
    "preset",
    "slice_bounds",
    "spec_from_hf_config",
    "total_params",
]
