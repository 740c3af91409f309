"""Chrome trace export (ir.trace): hand-timed tiny cases plus whole-timeline properties."""

from __future__ import annotations

import json

import pytest

from ir.costs import Costs
from ir.placement import Placement
from ir.schedule import Schedule
from ir.simulate import simulate
from ir.trace import to_chrome_trace, write_chrome_trace

# p=2, m=1, F=1, BW=2, comm 0: 0F0 [0,1], 1F0 [1,2], 1BW0 [2,4], 0BW0 [4,6].
TINY = Schedule(Placement.standard(2), 1, [["0F0", "0BW0"], ["1F0", "1BW0"]])
TINY_COSTS = Costs.uniform(2, f=1, b=1, w=1, bw=2, act=5, static=(10, 20))

# V-shape, p=2 (stages 0,3 on rank 0; 1,2 on rank 1), m=2, split B/W, unit 0 of stage 0 offloaded.
V_RANK0 = ["0F0", "0OFFLOAD0", "0F1", "3F0", "3B0", "3F1", "3B1", "0RELOAD0", "0B0", "0B1", "3W0", "3W1", "0W0", "0W1"]
V_RANK1 = ["1F0", "2F0", "1F1", "2F1", "2B0", "1B0", "2B1", "1B1", "2W0", "1W0", "2W1", "1W1"]
V = Schedule(Placement.v_shape(2), 2, [V_RANK0, V_RANK1])
V_COSTS = Costs.uniform(4, f=1, b=1, w=1, act=1, copy_bandwidth=0.5)  # a copy takes 1 / 0.5 = 2


def _events(trace: dict, ph: str) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == ph]


def test_tiny_case_times_are_literal_microseconds():
    trace = to_chrome_trace(simulate(TINY, TINY_COSTS))
    got = {e["name"]: (e["pid"], e["tid"], e["ts"], e["dur"]) for e in _events(trace, "X")}
    assert got == {
        "0F0": (0, 0, 0.0, 1000.0),
        "1F0": (1, 0, 1000.0, 1000.0),
        "1BW0": (1, 0, 2000.0, 2000.0),
        "0BW0": (0, 0, 4000.0, 2000.0),
    }
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"]["makespan"] == 6


def test_tiny_case_memory_counters():
    # rank 0: static 10, +5 at 0 (0F0), -5 at 6 (0BW0); rank 1: static 20, +5 at 1, -5 at 4.
    counters = _events(to_chrome_trace(simulate(TINY, TINY_COSTS)), "C")
    got = [(e["pid"], e["ts"], e["args"]["bytes"]) for e in counters]
    assert got == [(0, 0.0, 15), (0, 6000.0, 10), (1, 0.0, 20), (1, 1000.0, 25), (1, 4000.0, 20)]
    assert {e["name"] for e in counters} == {"memory"}


def test_time_unit_conversion():
    tl = simulate(TINY, TINY_COSTS)
    us = {e["name"]: (e["ts"], e["dur"]) for e in _events(to_chrome_trace(tl, time_unit="us"), "X")}
    s = {e["name"]: (e["ts"], e["dur"]) for e in _events(to_chrome_trace(tl, time_unit="s"), "X")}
    assert us["0BW0"] == (4.0, 2.0)
    assert s["0BW0"] == (4e6, 2e6)
    with pytest.raises(ValueError, match="time_unit"):
        to_chrome_trace(tl, time_unit="minutes")


def test_every_action_once_with_timeline_times():
    tl = simulate(V, V_COSTS)
    trace = json.loads(json.dumps(to_chrome_trace(tl)))  # serialisable, and survives the round trip
    complete = _events(trace, "X")
    assert sorted(e["name"] for e in complete) == sorted(str(s.action) for s in tl.spans)
    by_name = {e["name"]: e for e in complete}
    for span in tl.spans:
        event = by_name[str(span.action)]
        assert event["pid"] == span.rank
        assert event["ts"] == span.start * 1000
        assert event["ts"] + event["dur"] == span.end * 1000
        assert event["cat"] == span.action.op.value
        assert event["args"] == {
            "stage": span.action.stage,
            "microbatch": span.action.microbatch,
            "slice": span.action.slice,
            "op": span.action.op.value,
        }


def test_copy_stream_events_on_thread_one():
    # Hand timing: 0F0 [0,1] then 0OFFLOAD0 [1,3]; 0RELOAD0 is issued after 3B1 starts at 6: [6,8].
    complete = {e["name"]: e for e in _events(to_chrome_trace(simulate(V, V_COSTS)), "X")}
    offload, reload = complete["0OFFLOAD0"], complete["0RELOAD0"]
    assert (offload["pid"], offload["tid"], offload["ts"], offload["dur"]) == (0, 1, 1000.0, 2000.0)
    assert (reload["pid"], reload["tid"], reload["ts"], reload["dur"]) == (0, 1, 6000.0, 2000.0)
    assert complete["0B0"]["ts"] == 8000.0  # waits for the reload
    assert {e["tid"] for n, e in complete.items() if "LOAD" not in n} == {0}


def test_metadata_names_every_rank_and_stream():
    trace = to_chrome_trace(simulate(V, V_COSTS))
    meta = _events(trace, "M")
    names = {(e["pid"], e["tid"], e["name"]): e["args"] for e in meta}
    for rank in (0, 1):
        assert names[(rank, 0, "process_name")] == {"name": f"rank {rank}"}
        assert names[(rank, 0, "process_sort_index")] == {"sort_index": rank}
        for tid, stream in enumerate(("compute", "copy", "comm")):
            assert names[(rank, tid, "thread_name")] == {"name": stream}
    assert {e["pid"] for e in trace["traceEvents"]} == {0, 1}


def test_counters_match_memory_curve():
    tl = simulate(V, V_COSTS)
    counters = _events(to_chrome_trace(tl), "C")
    for rank, curve in enumerate(tl.memory):
        got = [(e["ts"], e["args"]["bytes"]) for e in counters if e["pid"] == rank]
        assert got == [(t * 1000, level) for t, level in curve]
    # Rank 0 by hand (act 1, wact 0, static 0): 1 at 0, 2 at 1, peak 3 when 0RELOAD0 starts at 6.
    rank0 = [(e["ts"], e["args"]["bytes"]) for e in counters if e["pid"] == 0]
    assert rank0[:3] == [(0.0, 1), (1000.0, 2), (6000.0, 3)]
    assert max(b for _, b in rank0) == 3 and (6000.0, 3) in rank0


def test_comm_posts_are_instants():
    # Lowered p=2, m=1, comm 0.5: 0F0 [0,1], SEND_F at 1, 1F0 [1.5,2.5], 1BW0 [2.5,4.5],
    # SEND_B at 4.5, 0BW0 [5,7]; RECV_F is posted at 0 and RECV_B right after SEND_F, at 1.
    lowered = Schedule(
        Placement.standard(2), 1, [["0F0", "0SEND_F0", "0RECV_B0", "0BW0"], ["1RECV_F0", "1F0", "1BW0", "1SEND_B0"]]
    )
    trace = to_chrome_trace(simulate(lowered, Costs.uniform(2, f=1, b=1, w=1, comm=0.5)))
    instants = {e["name"]: (e["pid"], e["tid"], e["ts"], e["s"]) for e in _events(trace, "i")}
    assert instants == {
        "0SEND_F0": (0, 2, 1000.0, "t"),
        "0RECV_B0": (0, 2, 1000.0, "t"),
        "1RECV_F0": (1, 2, 0.0, "t"),
        "1SEND_B0": (1, 2, 4500.0, "t"),
    }
    assert all("dur" not in e for e in _events(trace, "i"))
    complete = {e["name"]: (e["ts"], e["dur"]) for e in _events(trace, "X")}
    assert complete == {
        "0F0": (0.0, 1000.0),
        "1F0": (1500.0, 1000.0),
        "1BW0": (2500.0, 2000.0),
        "0BW0": (5000.0, 2000.0),
    }


def test_output_order_is_deterministic_and_grouped():
    tl = simulate(V, V_COSTS)
    first, second = to_chrome_trace(tl), to_chrome_trace(tl)
    assert json.dumps(first) == json.dumps(second)
    phases = [e["ph"] for e in first["traceEvents"]]
    assert phases[: 2 * 8] == ["M"] * 16  # 2 process + 6 thread records per rank
    pids = [e["pid"] for e in first["traceEvents"] if e["ph"] != "M"]
    assert pids == sorted(pids)
    for rank in (0, 1):
        starts = [e["ts"] for e in first["traceEvents"] if e["ph"] == "X" and e["pid"] == rank]
        assert starts == sorted(starts)


def test_write_refuses_to_overwrite(tmp_path):
    tl = simulate(TINY, TINY_COSTS)
    path = tmp_path / "trace.json"
    assert write_chrome_trace(tl, path) == path
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(to_chrome_trace(tl)))
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_chrome_trace(tl, path)
    assert path.read_text() == "keep me"
    write_chrome_trace(tl, path, overwrite=True)
    assert json.loads(path.read_text())["otherData"]["name"] == "pipesynth"
