"""The real run as an ``ir.Timeline``, so it prints, plots and traces like a simulated one.

Each rank records, for one step, every action's start and end (seconds since the step began,
after a barrier, so the ranks' clocks roughly agree) and its saved-activation bytes over time.
`measured_timeline` turns those records into the same ``ir.Timeline`` that ``ir.simulate``
returns (times in ms, memory in bytes), and `write_run_trace` writes it with ``ir.trace``: a
Chrome trace of the real run laid out exactly as the simulated one (one process per rank,
compute / copy / comm threads, a memory counter), so the two open side by side in Perfetto.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from backends.torch_exec.executor import StepRecord
from ir import Span, Stream, Timeline, parse_action
from ir.simulate import one_point_per_instant
from ir.trace import write_chrome_trace

__all__ = ["measured_timeline", "write_run_trace"]


def measured_timeline(records: Sequence[StepRecord]) -> Timeline:
    """The ``ir.Timeline`` of one measured step, ``records[r]`` being rank r's (with spans)."""
    spans, busy, copy_busy, memory, peak = [], [], [], [], []
    for rank, record in enumerate(records):
        compute = copy = 0.0
        for rec in record.spans:
            action = parse_action(rec.action)
            span = Span(rank, action, rec.start * 1e3, rec.end * 1e3, action.op.stream)
            spans.append(span)
            if span.stream is Stream.COMPUTE:
                compute += span.end - span.start
            elif span.stream is Stream.COPY:
                copy += span.end - span.start
        busy.append(compute)
        copy_busy.append(copy)
        curve = one_point_per_instant([(t * 1e3, float(level)) for t, level in record.memory])
        memory.append(curve)
        peak.append(float(record.peak_bytes))
    makespan = max((s.end for s in spans), default=0.0)
    return Timeline(tuple(spans), makespan, tuple(busy), tuple(copy_busy), tuple(memory), tuple(peak),
                    tuple(None for _ in records))


def write_run_trace(records: Sequence[StepRecord], path: str | Path, *, overwrite: bool = False,
                    name: str = "pipesynth run") -> Path:
    """Write the Chrome trace of one measured step (see `measured_timeline`).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return write_chrome_trace(measured_timeline(records), path, overwrite=overwrite, time_unit="ms", name=name)
