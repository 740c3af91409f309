"""torch CSV form: op mapping on literal text, both of torch's formats, round trips, refusals
(and the renumbering that makes an out-of-order last stage exportable), import of torch's own
formats, and a peer check against torch's ``_PipelineScheduleRuntime`` loading and lowering our
files (run in a subprocess by ``tests/ir/torch_peer.py``; ``tests/ir/test_torch_runtime.py``
runs them for real)."""

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ir import Action, Costs, Op, Placement, PlacementKind, Schedule, lower, simulate, verify
from ir.examples import greedy, one_f_one_b
from ir.torch_csv import (
    TorchCsvError,
    check_torch_runnable,
    from_torch_csv,
    read_torch_csv,
    to_torch_csv,
    torch_order,
    write_torch_csv,
)

PEER = Path(__file__).with_name("torch_peer.py")


def _same(a, b):
    assert (a.placement, a.m, a.k, a.ranks) == (b.placement, b.m, b.k, b.ranks)


# --------------------------------------------------------------------------- export


def test_op_mapping_on_literal_text():
    schedule = Schedule(
        Placement.standard(2), 2, [["0F0", "0F1", "0B0", "0W0", "0BW1"], ["1F0", "1B0", "1W0", "1F1", "1BW1"]]
    )
    assert to_torch_csv(schedule) == "0F0,0F1,0I0,0W0,0B1\n1F0,1I0,1W0,1F1,1B1\n"


def test_one_f_one_b_export_is_textbook_1f1b():
    assert to_torch_csv(one_f_one_b(2, 3)) == "0F0,0F1,0B0,0F2,0B1,0B2\n1F0,1B0,1F1,1B1,1F2,1B2\n"
    assert to_torch_csv(one_f_one_b(2, 2, split_backward=True)) == "0F0,0F1,0I0,0W0,0I1,0W1\n1F0,1I0,1W0,1F1,1I1,1W1\n"


LOWERED = Schedule(
    Placement.standard(2),
    1,
    [["0F0", "0SEND_F0", "0RECV_B0", "0B0", "0W0"], ["1RECV_F0", "1F0", "1BW0", "1SEND_B0"]],
)


def test_compute_comms_text_has_reduce_grad_after_each_stages_last_backward():
    # torch runs a compute_comms file as written: without REDUCE_GRAD it never divides the
    # gradients by m. Torch's _add_reduce_grad counts W and B (our BW), not I (our B).
    assert to_torch_csv(LOWERED, format="compute_comms") == (
        "0F0,0SEND_F0,0RECV_B0,0I0,0W0,0REDUCE_GRAD\n1RECV_F0,1F0,1B0,1REDUCE_GRAD,1SEND_B0\n"
    )
    text = to_torch_csv(one_f_one_b(2, 2, split_backward=True), format="compute_comms")
    rows = [row.split(",") for row in text.splitlines()]
    for stage, row in enumerate(rows):
        assert row.count(f"{stage}REDUCE_GRAD") == 1
        assert row.index(f"{stage}REDUCE_GRAD") == row.index(f"{stage}W1") + 1  # the stage's m-th W
    assert text.replace(",0REDUCE_GRAD", "").replace(",1REDUCE_GRAD", "") == (
        to_torch_csv(lower(one_f_one_b(2, 2, split_backward=True)), format="compute_comms")
        .replace(",0REDUCE_GRAD", "").replace(",1REDUCE_GRAD", ""))


def test_compute_only_text_of_a_lowered_schedule_drops_its_comms():
    assert to_torch_csv(LOWERED) == "0F0,0I0,0W0\n1F0,1B0\n"
    assert to_torch_csv(lower(one_f_one_b(3, 4))) == to_torch_csv(one_f_one_b(3, 4))


def test_unknown_format_is_refused():
    with pytest.raises(TorchCsvError, match="unknown torch CSV format 'dump'.*compute_only, compute_comms"):
        to_torch_csv(one_f_one_b(2, 2), format="dump")


# A valid waves schedule whose last stage runs microbatches 0, 2, 3, 1: the greedy waves
# schedule with microbatches 1, 2, 3 renamed 2, 3, 1 (torch's runtime cannot run it as ordered).
_RENAME = (0, 2, 3, 1)


def _out_of_order_waves():
    schedule = greedy(Placement.waves(2, 2), 4, split_backward=True)
    programs = [[Action(a.op, a.stage, _RENAME[a.microbatch]) for a in prog] for prog in schedule.ranks]
    return schedule, schedule.with_programs(programs)


def _last_stage_forwards(schedule):
    last = schedule.num_stages - 1
    prog = schedule.ranks[schedule.placement.stage_to_rank[last]]
    return [a.microbatch for a in prog if a.op is Op.F and a.stage == last]


def test_export_refuses_a_last_stage_out_of_order_and_says_what_to_do():
    _, shuffled = _out_of_order_waves()
    verify(shuffled)
    assert _last_stage_forwards(shuffled) == [0, 2, 3, 1]
    for fmt in ("compute_only", "compute_comms"):
        with pytest.raises(TorchCsvError) as err:
            to_torch_csv(shuffled, format=fmt)
        message = str(err.value)
        assert "last stage (stage 7, rank 0) runs its forwards in microbatch order 0, 2, 3, 1" in message
        assert "backward of microbatch 1 would get the loss of microbatch 2" in message
        assert "Loss for microbatch" in message and "torch_order(schedule)" in message


def test_torch_order_renumbers_microbatches_and_keeps_the_timing():
    original, shuffled = _out_of_order_waves()
    ready = torch_order(shuffled)
    assert ready.renumbered == (0, 3, 1, 2)  # old microbatch i is new renumbered[i]
    assert "renumbered (1->3, 2->1, 3->2)" in ready.note and "timing are unchanged" in ready.note
    assert ready.schedule.ranks == original.ranks and ready.schedule.meta["torch_renumbered"] == [0, 3, 1, 2]
    check_torch_runnable(ready.schedule)
    costs = Costs.uniform(8, f=1, b=1.5, w=0.5, comm=0.25)
    assert simulate(ready.schedule, costs).makespan == simulate(shuffled, costs).makespan
    assert to_torch_csv(ready.schedule) == to_torch_csv(original)
    in_order = torch_order(original)
    assert in_order.schedule is original and in_order.renumbered is None and in_order.note is None


@pytest.mark.parametrize("op", ["R", "OFFLOAD", "RELOAD"])
def test_torch_order_refuses_what_torch_has_no_cell_for(op):
    schedule = Schedule(Placement.standard(2), 1, [["0F0", f"0{op}0", "0BW0"], ["1F0", "1BW0"]])
    with pytest.raises(TorchCsvError, match="--no-recompute --no-offload"):
        torch_order(schedule)


@pytest.mark.parametrize("op", ["R", "OFFLOAD", "RELOAD"])
def test_export_refuses_recompute_and_offload(op):
    schedule = Schedule(Placement.standard(2), 1, [["0F0", f"0{op}0", "0BW0"], ["1F0", "1BW0"]])
    with pytest.raises(TorchCsvError) as err:
        to_torch_csv(schedule)
    message = str(err.value)
    assert "no recompute/offload op" in message and f"0{op}0" in message and "rank 0, position 1" in message


def test_export_refuses_slices():
    sliced = Schedule(Placement.standard(1), 1, [["0F0", "0F0.1", "0BW0.1", "0BW0"]], k=2)
    with pytest.raises(TorchCsvError, match=r"k=2 sequence slices.*no sequence slices.*k=1"):
        to_torch_csv(sliced)
    stray = Schedule(Placement.standard(1), 1, [["0F0", "0F0.1", "0BW0"]])  # slice 1 with k=1
    with pytest.raises(TorchCsvError, match=r"0F0\.1 is sequence slice 1"):
        to_torch_csv(stray)


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "s.csv"
    write_torch_csv(one_f_one_b(2, 2), path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_torch_csv(one_f_one_b(2, 3), path)
    write_torch_csv(one_f_one_b(2, 3), path, overwrite=True)
    assert path.read_text() == "0F0,0F1,0B0,0F2,0B1,0B2\n1F0,1B0,1F1,1B1,1F2,1B2\n"
    _same(read_torch_csv(path), one_f_one_b(2, 3))


# --------------------------------------------------------------------------- round trips

ROUND_TRIPS = {
    "1f1b": lambda: one_f_one_b(4, 8),
    "1f1b split": lambda: one_f_one_b(3, 5, split_backward=True),
    "greedy v split": lambda: greedy(Placement.v_shape(4), 8, split_backward=True),
    "greedy interleaved": lambda: greedy(Placement.interleaved(2, 2), 4),
    "greedy waves": lambda: greedy(Placement.waves(2, 2), 3, split_backward=True),
    "explicit": lambda: Schedule(Placement.explicit([1, 0]), 1, [["1F0", "1BW0"], ["0F0", "0BW0"]]),
    "lowered 1f1b": lambda: lower(one_f_one_b(3, 4)),
    "lowered greedy v": lambda: lower(greedy(Placement.v_shape(2), 3, split_backward=True)),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_export_import_round_trip(name):
    schedule = ROUND_TRIPS[name]()
    fmt = "compute_comms" if schedule.is_lowered else "compute_only"
    back = from_torch_csv(to_torch_csv(schedule, format=fmt))  # REDUCE_GRAD cells are dropped on import
    _same(back, schedule)
    assert back.meta == {"source": "torch-csv"}
    if not schedule.is_lowered:  # compute_comms lowers it first
        _same(from_torch_csv(to_torch_csv(schedule, format="compute_comms")), lower(schedule))


# --------------------------------------------------------------------------- import


def test_import_maps_ops_and_infers_m():
    back = from_torch_csv("0F0,0F1,0I0,0W0,0B1\n1F0,1I0,1W0,1F1,1B1\n")
    assert back.placement == Placement.standard(2) and back.m == 2 and back.k == 1
    assert back.ranks[0] == (
        Action(Op.F, 0, 0),
        Action(Op.F, 0, 1),
        Action(Op.B, 0, 0),
        Action(Op.W, 0, 0),
        Action(Op.BW, 0, 1),
    )
    assert from_torch_csv("0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n", m=5).m == 5


@pytest.mark.parametrize(
    ("rows", "kind", "stage_to_rank"),
    [
        ("0F0,0B0\n1F0,1B0\n", PlacementKind.STANDARD, (0, 1)),
        ("0F0,3F0,3B0,0B0\n1F0,2F0,2B0,1B0\n", PlacementKind.V_SHAPE, (0, 1, 1, 0)),
        ("0F0,2F0,2B0,0B0\n1F0,3F0,3B0,1B0\n", PlacementKind.INTERLEAVED, (0, 1, 0, 1)),
        ("0F0,3F0,4F0,7F0,7B0,4B0,3B0,0B0\n1F0,2F0,5F0,6F0,6B0,5B0,2B0,1B0\n", PlacementKind.WAVES, (0, 1, 1, 0) * 2),
        ("1F0,1B0\n0F0,0B0\n", PlacementKind.EXPLICIT, (1, 0)),
        ("0F0,1F0,1B0,0B0\n2F0,2B0\n", PlacementKind.EXPLICIT, (0, 0, 1)),
    ],
)
def test_import_infers_placement(rows, kind, stage_to_rank):
    placement = from_torch_csv(rows).placement
    assert placement.kind is kind and placement.stage_to_rank == stage_to_rank


def test_import_skips_empty_cells_and_trailing_blank_lines():
    back = from_torch_csv("0F0,, 0B0 ,\n1F0,1B0\n\n\n")
    assert [[str(a) for a in prog] for prog in back.ranks] == [["0F0", "0BW0"], ["1F0", "1BW0"]]


def test_import_expands_overlap_f_b():
    back = from_torch_csv("0F0,0F1,(0F2;0B0)OVERLAP_F_B,0B1,0B2\n1F0,1B0,1F1,1B1,1F2,1B2\n")
    assert [str(a) for a in back.ranks[0]] == ["0F0", "0F1", "0F2", "0BW0", "0BW1", "0BW2"]


def test_import_compute_comms():
    text = "0F0,0SEND_F0,0RECV_B0,0I0,0W0\n1RECV_F0,1F0,1B0,1SEND_B0\n"
    expected = Schedule(
        Placement.standard(2),
        1,
        [["0F0", "0SEND_F0", "0RECV_B0", "0B0", "0W0"], ["1RECV_F0", "1F0", "1BW0", "1SEND_B0"]],
    )
    back = from_torch_csv(text)
    _same(back, expected)
    assert back.is_lowered


# What torch 2.13's _PipelineScheduleRuntime._dump_csv() writes (format "compute_comms")
# after loading "0F0,0F1,0B0,0B1" / "1F0,1B0,1F1,1B1": its lowering adds FSDP/DP ops.
TORCH_DUMP = (
    "0UNSHARD,0F0,0SEND_F0,0F1,0SEND_F1,0RECV_B0,0B0,0RECV_B1,0B1,0REDUCE_GRAD,0RESHARD\r\n"
    "1UNSHARD,1RECV_F0,1F0,1RECV_F1,1B0,1SEND_B0,1F1,1B1,1SEND_B1,1REDUCE_GRAD,1RESHARD\r\n"
)


def test_import_torch_dump_refuses_fsdp_ops_by_default():
    with pytest.raises(TorchCsvError) as err:
        from_torch_csv(TORCH_DUMP)
    message = str(err.value)
    assert "rank 0 (row 1), column 1" in message and "'0UNSHARD'" in message and "FSDP op" in message
    assert "does not model" in message and "drop_fsdp_ops=True" in message


def test_import_torch_dump_dropping_fsdp_ops():
    expected = Schedule(
        Placement.standard(2),
        2,
        [
            ["0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B0", "0BW0", "0RECV_B1", "0BW1"],
            ["1RECV_F0", "1F0", "1RECV_F1", "1BW0", "1SEND_B0", "1F1", "1BW1", "1SEND_B1"],
        ],
    )
    _same(from_torch_csv(TORCH_DUMP, drop_fsdp_ops=True), expected)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("0F0,0B0\n1F0,1RESHARD,1B0\n", ["rank 1 (row 2), column 2", "'1RESHARD'", "RESHARD", "FSDP op"]),
        ("0F0,(0F1;0UNSHARD)OVERLAP_F_B\n", ["column 2", "UNSHARD", "FSDP op"]),
        ("0F0,0B0\n1F0,0X1\n", ["rank 1 (row 2), column 2", "'0X1' is not a torch action"]),
        ("0F0,0F1x\n", ["column 2", "'0F1x' is not a torch action"]),
        ("0F0,0F1.1\n", ["'0F1.1' is not a torch action"]),
        ("0F0,0B\n", ["column 2", "'0B' has no microbatch index"]),
        ("0F0,1B0\n1F0,1B0\n", ["stage 1 on both rank 0 and rank 1"]),
        ("0F0,0B0\n2F0,2B0\n", ["no action for stage(s) [1]"]),
        ("0F0,0B0\n\n1F0,1B0\n", ["rank(s) [1] run no stage"]),
        ("0F0,0F1,0B0,0B1\n1F0,1B0\n", ["[2, 1] forward (F) actions per stage", "m="]),
        ("", ["no rows"]),
    ],
)
def test_import_errors_name_the_cell(text, fragments):
    with pytest.raises(TorchCsvError) as err:
        from_torch_csv(text)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {str(err.value)!r}"


def test_import_drops_reduce_grad():
    back = from_torch_csv("0F0,0B0,0REDUCE_GRAD\n1F0,1B0,1REDUCE_GRAD\n")
    _same(back, Schedule(Placement.standard(2), 1, [["0F0", "0BW0"], ["1F0", "1BW0"]]))


def test_read_names_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("0F0,0Q0\n")
    with pytest.raises(TorchCsvError, match=re.escape(f"{path}: torch CSV rank 0 (row 1), column 2")):
        read_torch_csv(path)


# --------------------------------------------------------------------------- peer check with torch

PEER_CASES = {
    "1f1b": (lambda: one_f_one_b(4, 8), "0"),
    "greedy v split": (lambda: greedy(Placement.v_shape(4), 8, split_backward=True), "0,7"),
}
_COMM = re.compile(r"\d+(SEND_F|RECV_F|SEND_B|RECV_B)\d+")


@pytest.fixture(scope="module")
def torch_peer(tmp_path_factory):
    """Run torch_peer.py on every case at once; {case: (schedule, csv text, torch's JSON answer)}."""
    started = {}
    for name, (make, rank0_stages) in PEER_CASES.items():
        schedule = make()
        folder = tmp_path_factory.mktemp("peer")
        path = write_torch_csv(schedule, folder / "schedule.csv")
        lowered = write_torch_csv(schedule, folder / "lowered.csv", format="compute_comms")
        args = [str(path), "--p", str(schedule.p), "--m", str(schedule.m), "--lowered", str(lowered)]
        args += ["--num-stages", str(schedule.num_stages), "--stages", rank0_stages]
        proc = subprocess.Popen(
            [sys.executable, str(PEER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started[name] = (schedule, path.read_text(), proc)
    answers = {}
    for name, (schedule, text, proc) in started.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"torch_peer.py failed on {name}:\n{err[-4000:]}"
        answers[name] = (schedule, text, json.loads(out))
    return answers


@pytest.mark.parametrize("name", sorted(PEER_CASES))
def test_torch_runtime_loads_our_csv(torch_peer, name):
    schedule, text, peer = torch_peer[name]
    assert peer["stage_to_rank"] == {str(s): r for s, r in enumerate(schedule.placement.stage_to_rank)}
    assert peer["pipeline_order"] == {str(r): row.split(",") for r, row in enumerate(text.splitlines())}
    assert peer["simulate_error"] is None, peer["simulate_error"]
    assert peer["simulated_steps"] > 0


@pytest.mark.parametrize("name", sorted(PEER_CASES))
def test_torch_simulator_runs_our_lowering(torch_peer, name):
    _, _, peer = torch_peer[name]
    assert peer["lowered"]["simulate_error"] is None, peer["lowered"]["simulate_error"]
    assert peer["lowered"]["simulated_steps"] > 0


@pytest.mark.parametrize("name", sorted(PEER_CASES))
def test_lower_matches_torch_comm_counts(torch_peer, name):
    schedule, _, peer = torch_peer[name]
    ours = lower(schedule)
    for rank in range(schedule.p):
        torch_cells = peer["with_comms"][str(rank)]
        our_comms = [a for a in ours.ranks[rank] if a.op.is_comm]
        torch_comms = [c for c in torch_cells if _COMM.fullmatch(c)]
        assert Counter(a.op.value for a in our_comms) == Counter(_COMM.fullmatch(c).group(1) for c in torch_comms)
        # Same stage convention as torch, so the very same messages, not only as many:
        assert Counter(str(a) for a in our_comms) == Counter(torch_comms)
        # Neither lowering reorders compute.
        assert [c for c in torch_cells if not _COMM.fullmatch(c)] == _compute_cells(ours, rank)


def _compute_cells(schedule, rank):
    """Rank ``rank``'s compute actions in torch's notation, written out by hand (F, I, W, B)."""
    names = {Op.F: "F", Op.B: "I", Op.W: "W", Op.BW: "B"}
    return [f"{a.stage}{names[a.op]}{a.microbatch}" for a in schedule.ranks[rank] if not a.op.is_comm]
