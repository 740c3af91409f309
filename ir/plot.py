"""Gantt and memory figures of a simulated `Timeline`, in the style of the pipeline papers.

`plot_timeline` draws one row per rank (rank 0 on top): each compute action is a box
coloured by op with its microbatch number inside, the copy stream (OFFLOAD/RELOAD) is a
thin strip under the rank's compute row, and zero-time comm posts are left out. A second
axis below, sharing the time axis, holds each rank's memory curve with its peak marked.
When a rank holds several stages (interleaved, V-shape), its later chunks get darker
shades of the op colour, as in the Zero Bubble figures.

Times come from ``ir.simulate``; this module only draws. It builds a
`matplotlib.figure.Figure` directly (Agg, no pyplot global state). Chrome traces of
the same timeline live in ``ir.trace``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ir.actions import Op, Stream
from ir.files import check_writable
from ir.simulate import Span, Timeline

__all__ = ["plot_timeline", "OP_COLORS", "MEM_UNITS"]

# Fill colours per op: F blue, B teal, W light gray, BW purple, R orange; copies on their strip.
OP_COLORS: dict[Op, str] = {
    Op.F: "#7fb3e6",
    Op.B: "#5ec4a8",
    Op.W: "#d3d8de",
    Op.BW: "#b49be0",
    Op.R: "#f4a259",
    Op.OFFLOAD: "#8d7b9e",
    Op.RELOAD: "#e8c55a",
}

# Divisors from bytes to each memory unit; "units" plots the raw numbers (unit-cost models).
MEM_UNITS: dict[str, float] = {"GB": 1e9, "GiB": 2.0**30, "MB": 1e6, "MiB": 2.0**20, "B": 1.0, "units": 1.0}

_OP_LABELS: dict[Op, str] = {
    Op.F: "F forward",
    Op.B: "B input grad",
    Op.W: "W weight grad",
    Op.BW: "BW backward",
    Op.R: "R recompute",
    Op.OFFLOAD: "offload (copy)",
    Op.RELOAD: "reload (copy)",
}

_DPI = 110
_MIN_BOX_PX = 20  # the narrowest compute box gets about this many pixels, within the caps below
_DATA_PX = (640, 5200)  # width of the time axis in pixels: floor and cap
_LEFT_IN = 0.85
_RIGHT_IN = (2.0, 3.3)  # right margin, where the legends sit: up to 10 ranks, more (two columns)
_ROW_IN, _MEM_IN, _TOP_IN, _BOTTOM_IN, _GAP_IN = 0.42, 2.1, 0.45, 0.55, 0.3
_FONT = 7.5


@dataclass(frozen=True, slots=True)
class _Layout:
    """Figure geometry in inches plus the x scale, decided before anything is drawn."""

    width: float
    height: float
    gantt_rect: tuple[float, float, float, float]  # figure fractions: left, bottom, width, height
    mem_rect: tuple[float, float, float, float] | None
    px_per_time: float
    xmax: float
    row_in: float  # height of one rank's row


@dataclass(frozen=True, slots=True)
class _Row:
    """Vertical extent of one rank's strips in data units (the y axis grows downward)."""

    compute: tuple[float, float]  # (top, height)
    copy: tuple[float, float] | None


def plot_timeline(
    timeline: Timeline,
    path: str | Path | None = None,
    *,
    title: str | None = None,
    time_unit: str = "ms",
    mem_unit: str = "GB",
    show_memory: bool = True,
    overwrite: bool = False,
) -> Figure:
    """Draw ``timeline`` as a per-rank Gantt chart plus memory curves.

    Args:
        timeline: a simulated run (``ir.simulate``).
        path: where to write a PNG; nothing is written when None.
        title: figure title; defaults to makespan and bubble ratio.
        time_unit: label of the time axis (times are drawn as they are).
        mem_unit: one of `MEM_UNITS` (``"GB"``, ``"GiB"``, ``"B"``, ``"units"``, ...).
        show_memory: draw the memory axis under the Gantt chart.
        overwrite: replace an existing file at ``path``.

    Returns:
        The figure (also written to ``path`` when given).

    Raises:
        ValueError: on an unknown ``mem_unit``.
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
    """
    if mem_unit not in MEM_UNITS:
        raise ValueError(f"unknown mem_unit {mem_unit!r}; use one of {', '.join(MEM_UNITS)}")
    if path is not None:
        path = check_writable(path, overwrite)
    p = max(timeline.p, 1)
    has_copy = any(s.stream is Stream.COPY for s in timeline.spans)
    layout = _layout(timeline, p, show_memory)
    fig = Figure(figsize=(layout.width, layout.height), dpi=_DPI)
    gantt = fig.add_axes(layout.gantt_rect)
    _draw_gantt(gantt, timeline, p, has_copy, layout)
    fig.suptitle(title if title is not None else _default_title(timeline, time_unit), fontsize=10, y=0.995)
    if layout.mem_rect is not None:
        mem = fig.add_axes(layout.mem_rect, sharex=gantt)
        _draw_memory(mem, timeline, mem_unit, time_unit)
        gantt.tick_params(labelbottom=False)
    else:
        gantt.set_xlabel(f"time ({time_unit})")
    if path is not None:
        fig.savefig(path, format="png", dpi=_DPI)
    return fig


def _default_title(timeline: Timeline, time_unit: str) -> str:
    return f"makespan {timeline.makespan:g} {time_unit}, bubble ratio {timeline.bubble_ratio:.3f}"


def _layout(timeline: Timeline, p: int, show_memory: bool) -> _Layout:
    """Width scales so the narrowest compute box stays readable; both sizes are capped."""
    xmax = timeline.makespan if timeline.makespan > 0 else 1.0
    durations = [s.end - s.start for s in timeline.spans if s.stream is Stream.COMPUTE and s.end > s.start]
    shortest = min(durations, default=xmax)
    data_px = min(max(xmax / shortest * _MIN_BOX_PX, _DATA_PX[0]), _DATA_PX[1])
    right_in = _RIGHT_IN[0] if p <= 10 else _RIGHT_IN[1]
    width = _LEFT_IN + data_px / _DPI + right_in
    gantt_h = max(p * _ROW_IN, 1.6)
    mem_h = _MEM_IN + (0.12 * (p - 8) if p > 8 else 0.0)
    height = _TOP_IN + gantt_h + (_GAP_IN + mem_h if show_memory else 0.0) + _BOTTOM_IN
    left, right = _LEFT_IN / width, data_px / _DPI / width
    gantt_rect = (left, 1 - (_TOP_IN + gantt_h) / height, right, gantt_h / height)
    mem_rect = (left, _BOTTOM_IN / height, right, mem_h / height) if show_memory else None
    return _Layout(width, height, gantt_rect, mem_rect, data_px / xmax, xmax, gantt_h / p)


def _row(rank: int, has_copy: bool) -> _Row:
    if not has_copy:
        return _Row((rank + 0.08, 0.84), None)
    return _Row((rank + 0.04, 0.66), (rank + 0.73, 0.22))


def _draw_gantt(ax: Axes, timeline: Timeline, p: int, has_copy: bool, layout: _Layout) -> None:
    chunk = _chunk_index(timeline.spans)
    groups: dict[tuple[Stream, Op, int], list[Span]] = {}
    for span in timeline.spans:
        if span.stream is not Stream.COMM:
            groups.setdefault((span.stream, span.action.op, chunk[(span.rank, span.action.stage)]), []).append(span)
    for (_, op, c), spans in groups.items():
        _draw_boxes(ax, spans, _shade(OP_COLORS.get(op, "#bbbbbb"), c), has_copy, layout)
    if has_copy:
        for r in range(p):
            top, height = _row(r, True).copy
            ax.axhline(top + height / 2, color="#c8c8c8", lw=0.5, zorder=0)
    ax.set_ylim(p, 0)  # rank 0 on top
    ax.set_xlim(0, layout.xmax)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=max(int(layout.xmax * layout.px_per_time / 90), 4)))
    ticks = [_row(r, has_copy).compute[0] + _row(r, has_copy).compute[1] / 2 for r in range(p)]
    ax.set_yticks(ticks, [f"rank {r}" for r in range(p)], fontsize=8)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="#e6e6e6", lw=0.5, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = _legend_handles(timeline.spans)
    if not handles:
        return
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        title="op",
        title_fontsize=8,
    )


def _chunk_index(spans: Iterable[Span]) -> dict[tuple[int, int], int]:
    """Per ``(rank, stage)``, the stage's position among the rank's stages (its model chunk)."""
    stages: dict[int, set[int]] = {}
    for span in spans:
        stages.setdefault(span.rank, set()).add(span.action.stage)
    return {(r, s): c for r, ss in stages.items() for c, s in enumerate(sorted(ss))}


def _shade(color: str, chunk: int) -> tuple[float, float, float]:
    """The op colour darkened 22% per chunk after the first (capped)."""
    factor = 1.0 - 0.22 * min(chunk, 3)
    return tuple(c * factor for c in to_rgb(color))


def _draw_boxes(
    ax: Axes, spans: list[Span], color: tuple[float, float, float], has_copy: bool, layout: _Layout
) -> None:
    """One bar per span (a single ``barh`` call per colour); each patch's gid is ``"<stream>:<action>"``."""
    rows = [_row(s.rank, has_copy) for s in spans]
    extents = [row.compute if s.stream is Stream.COMPUTE else row.copy for s, row in zip(spans, rows, strict=True)]
    widths = [s.end - s.start for s in spans]
    bars = ax.barh(
        [top for top, _ in extents],
        widths,
        height=[h for _, h in extents],
        left=[s.start for s in spans],
        align="edge",
        color=color,
        edgecolor="#333333",
        linewidth=0.4,
        zorder=2,
    )
    text_color = _text_color(color)
    for span, patch, (top, height), width in zip(spans, bars.patches, extents, widths, strict=True):
        patch.set_gid(f"{span.stream.value}:{span.action}")
        label = _box_label(span)
        fontsize = _fit_font(label, width * layout.px_per_time, height * layout.row_in * 72, span.stream)
        if fontsize:
            ax.text(
                span.start + width / 2,
                top + height / 2,
                label,
                ha="center",
                va="center",
                fontsize=fontsize,
                color=text_color,
                zorder=3,
                clip_on=True,
            )


def _box_label(span: Span) -> str:
    a = span.action
    return f"{a.microbatch}.{a.slice}" if a.slice else str(a.microbatch)


def _fit_font(label: str, box_px: float, box_pt: float, stream: Stream) -> float | None:
    """The largest of a few font sizes whose text fits the box, or None to leave it blank."""
    sizes = (_FONT, 6.5, 5.5) if stream is Stream.COMPUTE else (5.5,)
    for size in sizes:
        text_px = (0.62 * len(label) + 0.5) * size * _DPI / 72
        if text_px <= box_px and size <= box_pt * 0.95:
            return size
    return None


def _text_color(rgb: tuple[float, float, float]) -> str:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "black" if luminance > 0.5 else "white"


def _legend_handles(spans: tuple[Span, ...]) -> list[Patch]:
    used = {s.action.op for s in spans if s.stream is not Stream.COMM}
    edge = {"edgecolor": "#333333", "linewidth": 0.4}
    handles = [Patch(facecolor=color, label=_OP_LABELS[op], **edge) for op, color in OP_COLORS.items() if op in used]
    if any(c > 0 for c in _chunk_index(spans).values()):
        handles.append(Patch(facecolor=_shade(OP_COLORS[Op.F], 1), label="later chunk\n(darker)", **edge))
    return handles


def _draw_memory(ax: Axes, timeline: Timeline, mem_unit: str, time_unit: str) -> None:
    scale = MEM_UNITS[mem_unit]
    colors = _rank_colors(timeline.p)
    xmax = timeline.makespan if timeline.makespan > 0 else 1.0
    for r, curve in enumerate(timeline.memory):
        xs = [t for t, _ in curve] + [xmax]
        ys = [b / scale for _, b in curve]
        ys.append(ys[-1])
        peak = timeline.peak[r] / scale
        ax.step(xs, ys, where="post", color=colors[r], lw=1.2, label=f"rank {r}: peak {_fmt(peak)}")
        at = next((t for t, b in curve if math.isclose(b / scale, peak)), 0.0)
        ax.plot(
            [at],
            [peak],
            marker="v",
            color=colors[r],
            markersize=6,
            markeredgecolor="black",
            markeredgewidth=0.5,
            zorder=4,
        )
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel(f"memory ({mem_unit})")
    ax.set_ylim(bottom=0)
    ax.grid(color="#e6e6e6", lw=0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ncol = 1 if timeline.p <= 10 else 2
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
        ncol=ncol,
        title="▼ = peak",
        title_fontsize=7,
        handlelength=1.2,
        columnspacing=0.8,
    )


def _rank_colors(p: int) -> list[tuple[float, ...]]:
    cmap = colormaps["tab10" if p <= 10 else "turbo"]
    return [cmap(r) if p <= 10 else cmap(0.05 + 0.9 * r / max(p - 1, 1)) for r in range(p)]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
