"""Gantt + memory figures (ir.plot): the PNG, the rows and boxes, the memory axis."""

from __future__ import annotations

import struct

import pytest

from ir.costs import Costs, UnitCost
from ir.placement import Placement
from ir.plot import plot_timeline
from ir.schedule import Schedule
from ir.simulate import simulate

# p=2, m=1, F=1, BW=2, comm 0: 0F0 [0,1], 1F0 [1,2], 1BW0 [2,4], 0BW0 [4,6].
TINY = Schedule(Placement.standard(2), 1, [["0F0", "0BW0"], ["1F0", "1BW0"]])
TINY_COSTS = Costs.uniform(2, f=1, b=1, w=1, bw=2, act=1e9, static=(4e9, 2e9))

# V-shape, p=2 (stages 0,3 on rank 0; 1,2 on rank 1), m=2, split B/W, unit 0 of stage 0 offloaded.
V_RANK0 = ["0F0", "0OFFLOAD0", "0F1", "3F0", "3B0", "3F1", "3B1", "0RELOAD0", "0B0", "0B1", "3W0", "3W1", "0W0", "0W1"]
V_RANK1 = ["1F0", "2F0", "1F1", "2F1", "2B0", "1B0", "2B1", "1B1", "2W0", "1W0", "2W1", "1W1"]
V = Schedule(Placement.v_shape(2), 2, [V_RANK0, V_RANK1])
V_COSTS = Costs.uniform(4, f=1, b=1, w=1, act=1, copy_bandwidth=0.5)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def one_f_one_b(p: int, m: int) -> Schedule:
    """Megatron 1F1B written out: ``p-r-1`` warm-up forwards, then one F one BW, then the drain."""
    programs = []
    for r in range(p):
        warmup = min(p - r - 1, m)
        prog = [f"{r}F{i}" for i in range(warmup)]
        for i in range(m):
            if warmup + i < m:
                prog.append(f"{r}F{warmup + i}")
            prog.append(f"{r}BW{i}")
        programs.append(prog)
    return Schedule(Placement.standard(p), m, programs)


def _boxes(fig, stream: str) -> dict[str, object]:
    """The Gantt axis' rectangles of one stream, by action text (plot tags each with a gid)."""
    gantt = fig.axes[0]
    return {p.get_gid().split(":", 1)[1]: p for p in gantt.patches if (p.get_gid() or "").startswith(stream + ":")}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_written_and_overwrite_refused(tmp_path):
    tl = simulate(one_f_one_b(4, 8), Costs.uniform(4, act=1e9))
    path = tmp_path / "out" / "gantt.png"
    plot_timeline(tl, path)
    data = path.read_bytes()
    width, height = _png_size(data)
    assert 600 <= width <= 6000 and 300 <= height <= 3000
    assert 10_000 < len(data) < 5_000_000
    with pytest.raises(FileExistsError, match="overwrite=True"):
        plot_timeline(tl, path)
    assert path.read_bytes() == data
    plot_timeline(tl, path, overwrite=True, title="again")
    assert path.read_bytes() != data


def test_no_file_without_path(tmp_path):
    plot_timeline(simulate(TINY, TINY_COSTS))
    assert list(tmp_path.iterdir()) == []


def test_one_row_per_rank_rank_zero_on_top():
    fig = plot_timeline(simulate(one_f_one_b(4, 8), Costs.uniform(4)))
    gantt = fig.axes[0]
    assert [t.get_text() for t in gantt.get_yticklabels()] == ["rank 0", "rank 1", "rank 2", "rank 3"]
    bottom, top = gantt.get_ylim()
    assert bottom > top  # y grows downward: rank 0 is the top row
    ticks = list(gantt.get_yticks())
    assert ticks == sorted(ticks)


def test_one_box_per_compute_action_at_its_time():
    sched = one_f_one_b(4, 8)
    fig = plot_timeline(simulate(sched, Costs.uniform(4)))
    boxes = _boxes(fig, "compute")
    assert len(boxes) == 4 * 8 * 2
    assert set(boxes) == {str(a) for _, _, a in sched.actions()}
    # 1F1B with F=1, BW=2, comm 0: BW0 runs on rank 3 at [4,6], rank 2 [6,8], rank 1 [8,10], rank 0 [10,12].
    for rank, start in ((3, 4), (2, 6), (1, 8), (0, 10)):
        box = boxes[f"{rank}BW0"]
        assert (box.get_x(), box.get_width()) == (start, 2)
        assert rank < box.get_y() + box.get_height() / 2 < rank + 1


def test_tiny_boxes_and_labels():
    fig = plot_timeline(simulate(TINY, TINY_COSTS))
    boxes = _boxes(fig, "compute")
    assert {a: (b.get_x(), b.get_width()) for a, b in boxes.items()} == {
        "0F0": (0, 1),
        "1F0": (1, 1),
        "1BW0": (2, 2),
        "0BW0": (4, 2),
    }
    assert boxes["0F0"].get_facecolor() != boxes["0BW0"].get_facecolor()
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(labels) == ["0", "0", "0", "0"]


def test_copy_stream_is_a_thin_strip_and_comm_is_not_drawn():
    fig = plot_timeline(simulate(V, V_COSTS), mem_unit="units")
    compute, copy = _boxes(fig, "compute"), _boxes(fig, "copy")
    assert set(copy) == {"0OFFLOAD0", "0RELOAD0"}
    assert len(compute) == len(V_RANK0) + len(V_RANK1) - 2
    offload = copy["0OFFLOAD0"]
    assert (offload.get_x(), offload.get_width()) == (1, 2)  # after 0F0 ends at 1; 1 / 0.5 = 2 long
    f0 = compute["0F0"]
    assert offload.get_height() < f0.get_height() / 2
    assert offload.get_y() >= f0.get_y() + f0.get_height()  # under the compute row
    assert offload.get_y() + offload.get_height() < 1  # still in rank 0's row

    lowered = Schedule(
        Placement.standard(2), 1, [["0F0", "0SEND_F0", "0RECV_B0", "0BW0"], ["1RECV_F0", "1F0", "1BW0", "1SEND_B0"]]
    )
    fig = plot_timeline(simulate(lowered, Costs.uniform(2)))
    assert set(_boxes(fig, "compute")) == {"0F0", "1F0", "1BW0", "0BW0"}
    assert len(fig.axes[0].patches) == 4


def test_later_chunks_are_shaded_and_legend_lists_ops():
    fig = plot_timeline(simulate(V, V_COSTS))
    boxes = _boxes(fig, "compute")
    assert boxes["0F0"].get_facecolor() != boxes["3F0"].get_facecolor()  # chunks 0 and 1 of rank 0
    assert boxes["0F0"].get_facecolor() == boxes["1F0"].get_facecolor()  # both first chunks
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for op in ("F", "B", "W", "offload", "reload"):
        assert any(text.startswith(op) for text in legend), (op, legend)
    assert not any(text.startswith(("BW", "R ")) for text in legend)


def test_slices_are_labelled_with_dot_j():
    sched = Schedule(Placement.standard(1), 1, [["0F0", "0F0.1", "0BW0.1", "0BW0"]], k=2)
    fig = plot_timeline(simulate(sched, Costs.uniform(1, 2)))
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0", "0", "0.1", "0.1"]


def test_memory_axis_in_units_with_peaks():
    # TINY: rank 0 holds 4 GB static + 1 GB from 0 to 6; rank 1 2 GB + 1 GB from 1 to 4.
    fig = plot_timeline(simulate(TINY, TINY_COSTS), mem_unit="GB")
    mem = fig.axes[1]
    assert mem.get_ylabel() == "memory (GB)"
    curves = [line for line in mem.get_lines() if line.get_drawstyle() == "steps-post"]
    assert len(curves) == 2
    assert list(curves[0].get_xdata()) == [0, 6, 6] and list(curves[0].get_ydata()) == [5, 4, 4]
    assert list(curves[1].get_xdata()) == [0, 1, 4, 6] and list(curves[1].get_ydata()) == [2, 3, 2, 2]
    peaks = [(line.get_xdata()[0], line.get_ydata()[0]) for line in mem.get_lines() if line.get_marker() == "v"]
    assert peaks == [(0, 5), (1, 3)]
    legend = [t.get_text() for t in mem.get_legend().get_texts()]
    assert legend == ["rank 0: peak 5", "rank 1: peak 3"]

    gib = plot_timeline(simulate(TINY, TINY_COSTS), mem_unit="GiB").axes[1]
    assert gib.get_lines()[0].get_ydata()[0] == pytest.approx(5e9 / 2**30)
    raw = plot_timeline(simulate(TINY, TINY_COSTS), mem_unit="B").axes[1]
    assert raw.get_lines()[0].get_ydata()[0] == 5e9


def test_memory_axis_optional_and_units_checked():
    tl = simulate(TINY, TINY_COSTS)
    fig = plot_timeline(tl, show_memory=False)
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "time (ms)"
    assert len(plot_timeline(tl, time_unit="us").axes) == 2
    with pytest.raises(ValueError, match="mem_unit"):
        plot_timeline(tl, mem_unit="furlongs")


def test_width_scales_with_actions_and_is_capped():
    small = plot_timeline(simulate(one_f_one_b(2, 2), Costs.uniform(2)), show_memory=False)
    large = plot_timeline(simulate(one_f_one_b(8, 32), Costs.uniform(8)), show_memory=False)
    assert small.get_size_inches()[0] < large.get_size_inches()[0] < 60
    assert large.get_size_inches()[1] > small.get_size_inches()[1]
    # One very short stage would ask for an absurd width: capped, and its boxes carry no text.
    units = ((UnitCost(f=1e-4, b=1e-4, w=1e-4),), (UnitCost(f=1, b=1, w=1),))
    tl = simulate(one_f_one_b(2, 4), Costs(units))
    fig = plot_timeline(tl, show_memory=False)
    assert fig.get_size_inches()[0] < 60
    assert len(fig.axes[0].texts) == 8  # only stage 1's 4 F and 4 BW are wide enough to label
    assert len(_boxes(fig, "compute")) == 16


def test_title_default_and_override():
    tl = simulate(TINY, TINY_COSTS)
    assert plot_timeline(tl).texts[0].get_text() == "makespan 6 ms, bubble ratio 0.500"  # busy 3 + 3 of 2 * 6
    assert plot_timeline(tl, title="custom").texts[0].get_text() == "custom"
