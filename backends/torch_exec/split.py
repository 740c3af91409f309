"""Splitting a model by module names, as torchtitan's ``module_fqns_per_model_part`` does.

``split_model(model, [["tok_embeddings", "layers.0"], ["layers.1", "norm", "output"]])`` gives
the named submodules as one layer list, in order, and how many of them each stage holds. The
layers must form a chain: each one is called on the previous one's output (a tuple goes on as
positional arguments, a dict as keyword ones: ``backends.torch_exec.boundary``), which is how
the model's own forward must use them. Every parameter must belong to exactly one named module,
so that nothing is left untrained; anything else is refused with the names involved.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["SplitError", "split_model"]


class SplitError(ValueError):
    """Module names that do not split the model (unknown, overlapping, or leaving parameters out)."""


def split_model(model: nn.Module, fqns_per_stage: Sequence[Sequence[str]]) -> tuple[list[nn.Module], list[int]]:
    """``(layers, stage_layers)``: the modules ``fqns_per_stage`` names, stage by stage, and the
    number of layers of each stage (pass both to ``PipelineSchedule(..., stage_layers=...)``).

    Raises:
        SplitError: an unknown name, a stage with no module, a module named twice or inside
            another named one, or parameters that no named module holds.
    """
    if isinstance(fqns_per_stage, str) or not fqns_per_stage:
        raise SplitError("give one list of module names per stage, e.g. [['embed', 'layers.0'], ['layers.1', 'head']]")
    layers, sizes, names = [], [], []
    for s, fqns in enumerate(fqns_per_stage):
        if isinstance(fqns, str) or not fqns:
            raise SplitError(f"stage {s} has no module names (got {fqns!r}); every stage needs a list of at least one")
        for fqn in fqns:
            try:
                layers.append(model.get_submodule(fqn))
            except AttributeError:
                children = ", ".join(name for name, _ in model.named_children())
                raise SplitError(f"stage {s}: {type(model).__name__} has no module {fqn!r} "
                                 f"(its top-level modules: {children})") from None
            names.append(fqn)
        sizes.append(len(fqns))
    for a in names:
        for b in names:
            if a == b and names.count(a) > 1:
                raise SplitError(f"module {a!r} is named more than once")
            if a != b and b.startswith(a + "."):
                raise SplitError(f"module {b!r} is inside {a!r}, which is also named; name each module once")
    held = {id(p) for layer in layers for p in layer.parameters()}
    left = [name for name, p in model.named_parameters() if id(p) not in held]
    if left:
        shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        raise SplitError(f"parameters {shown} are in no named module and would never train; name their modules")
    return layers, sizes
