"""JSON text form: exact round trips, a pinned layout, and one SchemaError per broken field."""

import copy
import json

import pytest

from ir import Placement, Schedule, lower
from ir.examples import greedy, one_f_one_b
from ir.jsonio import SchemaError, dumps, from_json, load, loads, save, to_json


def _standard():
    return Schedule(
        Placement.standard(2), 2, [["0F0", "0F1", "0BW0", "0BW1"], ["1F0", "1BW0", "1F1", "1BW1"]], meta={"n": 1}
    )


def _v_split():
    return Schedule(
        Placement.v_shape(2),
        1,
        [["0F0", "3F0", "3B0", "3W0", "0B0", "0W0"], ["1F0", "2F0", "2B0", "1B0", "2W0", "1W0"]],
    )


def _sliced():
    return Schedule(
        Placement.standard(2),
        1,
        [["0F0", "0F0.1", "0B0.1", "0B0", "0W0.1", "0W0"], ["1F0", "1F0.1", "1B0.1", "1W0.1", "1B0", "1W0"]],
        k=2,
    )


def _recompute_offload():
    return Schedule(
        Placement.standard(2),
        1,
        [["0F0", "0OFFLOAD0", "0RELOAD0", "0R0", "0BW0"], ["1F0", "1BW0"]],
        meta={"recompute": [0], "offload": [0]},
    )


def _lowered():
    return Schedule(
        Placement.standard(2),
        1,
        [["0F0", "0SEND_F0", "0RECV_B0", "0BW0"], ["1RECV_F0", "1F0", "1BW0", "1SEND_B0"]],
    )


def _nested_meta():
    meta = {
        "made_by": "test",
        "solver": {"status": "OPTIMAL", "gap": 0.125, "bound": 1e-9, "times": [0.1, 2.5e10, -3.0]},
        "flags": {"ok": True, "none": None, "deep": {"deeper": [[1, 2], {"x": 0.3}]}},
        "inf": float("inf"),
        "unicode": "µs",
    }
    return Schedule(Placement.standard(1), 1, [["0F0", "0BW0"]], meta=meta)


SCHEDULES = {
    "standard": _standard,
    "v_split": _v_split,
    "sliced": _sliced,
    "recompute_offload": _recompute_offload,
    "lowered": _lowered,
    "nested_meta": _nested_meta,
    "one_f_one_b": lambda: one_f_one_b(4, 8),
    "greedy_v": lambda: greedy(Placement.v_shape(4), 8, split_backward=True),
    "greedy_interleaved_sliced": lambda: greedy(Placement.interleaved(2, 2), 3, k=2),
    "lowered_1f1b": lambda: lower(one_f_one_b(3, 4)),
    "explicit": lambda: Schedule(Placement.explicit([1, 0]), 1, [["1F0", "1BW0"], ["0F0", "0BW0"]]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_round_trip_is_exact(name):
    schedule = SCHEDULES[name]()
    assert loads(dumps(schedule)) == schedule
    assert from_json(to_json(schedule)) == schedule
    assert from_json(json.loads(json.dumps(to_json(schedule)))) == schedule


def test_round_trip_keeps_kinds_and_meta_types():
    back = loads(dumps(_nested_meta()))
    assert back.meta["solver"]["gap"] == 0.125 and isinstance(back.meta["solver"]["gap"], float)
    assert back.meta["inf"] == float("inf")
    assert back.meta["flags"]["ok"] is True and back.meta["flags"]["none"] is None
    assert loads(dumps(_v_split())).placement.kind.value == "v"


def test_tuples_in_meta_come_back_as_lists():
    schedule = Schedule(Placement.standard(1), 1, [["0F0", "0BW0"]], meta={"caps": (1, 2)})
    assert loads(dumps(schedule)).meta == {"caps": [1, 2]}


def test_to_json_layout():
    assert to_json(_sliced()) == {
        "format": "pipesynth.schedule",
        "version": 1,
        "placement": {"kind": "standard", "stage_to_rank": [0, 1]},
        "m": 1,
        "k": 2,
        "ranks": [["0F0", "0F0.1", "0B0.1", "0B0", "0W0.1", "0W0"], ["1F0", "1F0.1", "1B0.1", "1W0.1", "1B0", "1W0"]],
        "meta": {},
    }


def test_dumps_text_is_pinned():
    expected = (
        "{\n"
        '  "format": "pipesynth.schedule",\n'
        '  "version": 1,\n'
        '  "placement": {"kind": "standard", "stage_to_rank": [0, 1]},\n'
        '  "m": 2,\n'
        '  "k": 1,\n'
        '  "ranks": [\n'
        '    ["0F0", "0F1", "0BW0", "0BW1"],\n'
        '    ["1F0", "1BW0", "1F1", "1BW1"]\n'
        "  ],\n"
        '  "meta": {\n'
        '    "n": 1\n'
        "  }\n"
        "}\n"
    )
    assert dumps(_standard()) == expected


# --------------------------------------------------------------------------- rejections


def _doc():
    return to_json(_standard())


def _set(path, value):
    """A valid document with the item at ``path`` (a tuple of keys) replaced, or deleted if value is _DEL."""

    def edit():
        doc = copy.deepcopy(_doc())
        *head, last = path
        target = doc
        for key in head:
            target = target[key]
        if value is _DEL:
            del target[last]
        else:
            target[last] = value
        return doc

    return edit


_DEL = object()

BAD_DOCS = {
    "format wrong": (_set(("format",), "other.thing"), ["'format'", "'pipesynth.schedule'", "'other.thing'"]),
    "format missing": (_set(("format",), _DEL), ["'format' is missing"]),
    "version unknown": (_set(("version",), 2), ["'version'", "version 2 is not supported", "supports version 1"]),
    "version text": (_set(("version",), "1"), ["'version'", "expected an int"]),
    "version missing": (_set(("version",), _DEL), ["'version' is missing"]),
    "placement missing": (_set(("placement",), _DEL), ["'placement' is missing"]),
    "placement list": (_set(("placement",), [0, 1]), ["'placement'", "expected an object"]),
    "placement kind": (_set(("placement", "kind"), "ring"), ["'placement.kind'", "'ring'", "standard"]),
    "placement kind missing": (_set(("placement", "kind"), _DEL), ["'placement.kind' is missing"]),
    "placement extra": (_set(("placement", "v"), 2), ["'placement.v'", "not part of the format"]),
    "stage_to_rank type": (_set(("placement", "stage_to_rank"), "0,1"), ["'placement.stage_to_rank'", "list"]),
    "stage_to_rank item": (_set(("placement", "stage_to_rank", 1), -1), ["'placement.stage_to_rank[1]'", "-1"]),
    "stage_to_rank bool": (_set(("placement", "stage_to_rank", 0), False), ["'placement.stage_to_rank[0]'"]),
    "placement mismatch": (_set(("placement", "stage_to_rank"), [0, 1, 1]), ["'placement'", "not a 'standard'"]),
    "placement past the ranks": (_set(("placement", "stage_to_rank"), [0, 2]),
                                 ["'placement.stage_to_rank[1]'", "rank 2", "2 rank program(s)"]),
    "placement huge rank": (_set(("placement", "stage_to_rank"), [0, 1_000_000_000]),
                            ["'placement.stage_to_rank[1]'", "rank 1000000000"]),
    "m beyond the actions": (_set(("m",), 1_000_000_000), ["'m'", "forwards", "actions in all"]),
    "m zero": (_set(("m",), 0), ["'m'", "positive int", "0"]),
    "m text": (_set(("m",), "2"), ["'m'", "positive int"]),
    "m bool": (_set(("m",), True), ["'m'", "positive int"]),
    "m float": (_set(("m",), 2.0), ["'m'", "positive int"]),
    "m missing": (_set(("m",), _DEL), ["'m' is missing"]),
    "k zero": (_set(("k",), 0), ["'k'", "positive int"]),
    "k missing": (_set(("k",), _DEL), ["'k' is missing"]),
    "ranks type": (_set(("ranks",), {"0": []}), ["'ranks'", "expected a list"]),
    "rank type": (_set(("ranks", 1), "1F0 1BW0"), ["'ranks[1]'", "expected a list"]),
    "action text": (_set(("ranks", 1, 3), "0X1"), ["'ranks[1][3]'", "'0X1' is not an action"]),
    "action type": (_set(("ranks", 0, 0), 5), ["'ranks[0][0]'", "expected an action string"]),
    "action trailing junk": (_set(("ranks", 0, 2), "0BW0x"), ["'ranks[0][2]'", "'0BW0x'"]),
    "rank count": (_set(("ranks",), [["0F0"]]), ["'ranks'", "1 rank programs", "2 ranks"]),
    "meta type": (_set(("meta",), []), ["'meta'", "expected an object"]),
    "meta missing": (_set(("meta",), _DEL), ["'meta' is missing"]),
    "unknown field": (_set(("schedule",), 1), ["'schedule'", "not part of the format"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_reader_rejects_with_field_named(case):
    make, fragments = BAD_DOCS[case]
    doc = make()
    for reader in (lambda: from_json(doc), lambda: loads(json.dumps(doc))):
        with pytest.raises(SchemaError) as err:
            reader()
        message = str(err.value)
        assert message.startswith("schedule JSON field '"), message
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"


def test_schema_error_is_a_value_error():
    assert issubclass(SchemaError, ValueError)


@pytest.mark.parametrize("obj", [[1, 2], "text", None, 3])
def test_document_must_be_an_object(obj):
    with pytest.raises(SchemaError, match="must be an object"):
        from_json(obj)


def test_invalid_json_text_gives_line_and_column():
    text = '{\n  "format": "pipesynth.schedule",\n  "version": 1,,\n}'  # the second comma is column 16
    with pytest.raises(SchemaError) as err:
        loads(text)
    assert "not valid JSON" in str(err.value) and "line 3 column 16" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_truncated_json_text():
    with pytest.raises(SchemaError, match=r"not valid JSON: .* line 1 column"):
        loads('{"format": ')


def test_duplicate_key_is_rejected():
    text = dumps(_standard()).replace('"m": 2,', '"m": 2,\n  "m": 3,')
    with pytest.raises(SchemaError, match="'m' twice"):
        loads(text)


def test_meta_that_json_cannot_hold_is_refused_on_write():
    bad_value = Schedule(Placement.standard(1), 1, [["0F0", "0BW0"]], meta={"a": {"b": [1, {2, 3}]}})
    with pytest.raises(SchemaError, match=r"'meta\.a\.b\[1\]'.*set is not JSON-serialisable"):
        dumps(bad_value)
    bad_key = Schedule(Placement.standard(1), 1, [["0F0", "0BW0"]], meta={"caps": {4: 1}})
    with pytest.raises(SchemaError, match=r"'meta\.caps'.*key 4 \(int\) is not a string"):
        to_json(bad_key)


# --------------------------------------------------------------------------- files


def test_save_and_load(tmp_path):
    path = tmp_path / "sub" / "s.json"
    assert save(_v_split(), path) == path
    assert load(path) == _v_split()
    assert load(str(path)) == _v_split()


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "s.json"
    save(_standard(), path)
    with pytest.raises(FileExistsError) as err:
        save(_v_split(), path)
    assert str(path) in str(err.value) and "overwrite=True" in str(err.value) and "--force" in str(err.value)
    assert load(path) == _standard()  # untouched
    save(_v_split(), path, overwrite=True)
    assert load(path) == _v_split()


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"format": "pipesynth.schedule", "version": 7}')
    with pytest.raises(SchemaError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: schedule JSON field 'version'")
