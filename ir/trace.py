"""Chrome trace JSON of a simulated `Timeline`, for Perfetto (ui.perfetto.dev) or chrome://tracing.

Layout of the trace (Trace Event Format, JSON object form):

- one process per rank (``pid`` = rank, named ``"rank r"``, sorted by rank);
- one thread per stream: ``tid`` 0 compute, 1 copy, 2 comm;
- every action with a duration is a complete event (``"ph": "X"``) named by its text
  form (``"2F0"``), category its op, ``args`` its stage, microbatch, slice and op;
  zero-time comm posts (SEND/RECV of lowered schedules) are thread-scoped instants;
- each rank's memory curve is a counter (``"ph": "C"``) named ``"memory"``, one sample
  per distinct time (the level after every change at that instant).

Timestamps are microseconds, as the format requires; ``time_unit`` says what the
timeline's times are in. Output order is fixed: metadata, then per rank its actions
by start time, then its memory samples. Figures of the same timeline live in ``ir.plot``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ir.actions import Stream
from ir.files import write_new
from ir.simulate import Span, Timeline

__all__ = ["to_chrome_trace", "write_chrome_trace", "TIME_UNITS_US", "STREAM_TIDS"]

# Microseconds per unit of the timeline's times.
TIME_UNITS_US: dict[str, float] = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}

STREAM_TIDS: dict[Stream, int] = {Stream.COMPUTE: 0, Stream.COPY: 1, Stream.COMM: 2}


def to_chrome_trace(timeline: Timeline, *, time_unit: str = "ms", name: str = "pipesynth") -> dict[str, Any]:
    """The trace as a JSON-serialisable dict ``{"traceEvents", "displayTimeUnit", "otherData"}``.

    Args:
        timeline: a simulated run (``ir.simulate``).
        time_unit: unit of the timeline's times, one of `TIME_UNITS_US`.
        name: recorded in ``otherData`` (shown by trace viewers as metadata).

    Raises:
        ValueError: on an unknown ``time_unit``.
    """
    if time_unit not in TIME_UNITS_US:
        raise ValueError(f"unknown time_unit {time_unit!r}; use one of {', '.join(TIME_UNITS_US)}")
    scale = TIME_UNITS_US[time_unit]
    events: list[dict[str, Any]] = []
    for rank in range(timeline.p):
        events += _metadata(rank)
    for rank in range(timeline.p):
        spans = sorted((s for s in timeline.spans if s.rank == rank), key=lambda s: (s.start, STREAM_TIDS[s.stream]))
        events += [_action_event(span, scale) for span in spans]
        events += _memory_events(rank, timeline.memory[rank], scale)
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": _other_data(timeline, time_unit, name)}


def write_chrome_trace(
    timeline: Timeline,
    path: str | Path,
    *,
    overwrite: bool = False,
    time_unit: str = "ms",
    name: str = "pipesynth",
) -> Path:
    """Write `to_chrome_trace` as JSON to ``path`` and return the path.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
    """
    trace = to_chrome_trace(timeline, time_unit=time_unit, name=name)
    return write_new(path, json.dumps(trace, separators=(",", ":")) + "\n", overwrite=overwrite)


def _metadata(rank: int) -> list[dict[str, Any]]:
    """Process name and order for the rank, thread names and order for its streams."""
    events = [
        {"name": "process_name", "ph": "M", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}},
        {"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0, "args": {"sort_index": rank}},
    ]
    for stream, tid in STREAM_TIDS.items():
        events.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": {"name": stream.value}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": rank, "tid": tid, "args": {"sort_index": tid}})
    return events


def _action_event(span: Span, scale: float) -> dict[str, Any]:
    """A complete event, or a thread-scoped instant for a zero-time comm post."""
    action = span.action
    ts = span.start * scale
    event: dict[str, Any] = {
        "name": str(action),
        "cat": action.op.value,
        "ph": "X",
        "pid": span.rank,
        "tid": STREAM_TIDS[span.stream],
        "ts": ts,
        "dur": span.end * scale - ts,
    }
    if span.stream is Stream.COMM and span.end == span.start:
        del event["dur"]
        event.update(ph="i", s="t")
    event["args"] = {
        "stage": action.stage,
        "microbatch": action.microbatch,
        "slice": action.slice,
        "op": action.op.value,
    }
    return event


def _memory_events(rank: int, curve: tuple[tuple[float, float], ...], scale: float) -> list[dict[str, Any]]:
    """One counter sample per point of the rank's memory curve (one point per instant already)."""
    return [
        {"name": "memory", "ph": "C", "pid": rank, "tid": 0, "ts": t * scale, "args": {"bytes": level}}
        for t, level in curve
    ]


def _other_data(timeline: Timeline, time_unit: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "generator": "pipesynth ir.trace",
        "time_unit": time_unit,
        "p": timeline.p,
        "makespan": timeline.makespan,
        "bubble_ratio": timeline.bubble_ratio,
        "busy": list(timeline.busy),
        "peak_bytes": list(timeline.peak),
    }
