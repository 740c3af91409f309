"""pipesynth's synthesizer: problems and cost model, baseline schedules, the integer
programs and the ``synth`` command. Builds on ``ir``; DESIGN.md is the contract between the parts.

``synth.synthesize`` (one search), ``synth.frontier`` (the memory/throughput frontier),
``synth.max_model`` (the largest model at a throughput floor) and ``synth.search_knobs`` (the
hand-picked knobs searched) are imported on first use: importing ``synth`` loads no solver, so a
HiGHS child process (``synth.child``) never loads OR-Tools beside it.
"""

_LAZY = {"synthesize": "synth.search", "SynthOptions": "synth.search", "frontier": "synth.research.frontier",
         "max_model": "synth.research.max_model", "search_knobs": "synth.research.knobs"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synth' has no attribute {name!r}")
