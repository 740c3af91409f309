"""The versioned JSON text form of a `Schedule` (DESIGN.md, "The IR").

Layout, version 1::

    {"format": "pipesynth.schedule", "version": 1,
     "placement": {"kind": "standard", "stage_to_rank": [0, 1]},
     "m": 4, "k": 1,
     "ranks": [["0F0", "0F1", ...], ["1F0", ...]],
     "meta": {...}}

Actions are stored in their text form (``ir.actions``). A round trip is exact:
``loads(dumps(s)) == s``, meta included, as long as meta holds JSON values (tuples
come back as lists; dict keys must be strings). Readers check everything and raise
`SchemaError` naming the offending field (``'ranks[1][3]'``, ``'placement.kind'``).
The torch CSV form lives in ``ir.torch_csv``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ir.actions import parse_action
from ir.files import read_input, write_new
from ir.placement import Placement, PlacementKind
from ir.schedule import Schedule

__all__ = ["FORMAT", "VERSION", "SchemaError", "dumps", "from_json", "load", "loads", "save", "to_json"]

FORMAT = "pipesynth.schedule"
VERSION = 1
_FIELDS = ("format", "version", "placement", "m", "k", "ranks", "meta")
_PLACEMENT_FIELDS = ("kind", "stage_to_rank")


class SchemaError(ValueError):
    """A schedule JSON document (or text) does not follow the format; the message names the field."""


# --------------------------------------------------------------------------- writing


def to_json(schedule: Schedule) -> dict[str, Any]:
    """The JSON object (plain dicts, lists, strings, numbers) for ``schedule``.

    Raises:
        SchemaError: when ``schedule.meta`` holds something JSON cannot represent.
    """
    return {
        "format": FORMAT,
        "version": VERSION,
        "placement": {
            "kind": schedule.placement.kind.value,
            "stage_to_rank": list(schedule.placement.stage_to_rank),
        },
        "m": schedule.m,
        "k": schedule.k,
        "ranks": [[str(a) for a in prog] for prog in schedule.ranks],
        "meta": _plain(schedule.meta, "meta"),
    }


def _plain(value: Any, path: str) -> Any:
    """A JSON-ready copy of a meta value; tuples become lists, anything else unknown is refused."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SchemaError(
                    f"schedule JSON field {path!r}: key {key!r} ({type(key).__name__}) is not a string; JSON keys are "
                    "strings and it would not come back equal, so use a string key"
                )
            out[key] = _plain(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{path}[{n}]") for n, item in enumerate(value)]
    raise SchemaError(
        f"schedule JSON field {path!r}: a {type(value).__name__} is not JSON-serialisable; "
        "keep meta to dicts, lists, strings, numbers, booleans and None"
    )


def dumps(schedule: Schedule) -> str:
    """The JSON text for ``schedule``: one line per rank program, meta indented, trailing newline."""
    obj = to_json(schedule)
    lines = ["{"]
    for key in _FIELDS:
        if key == "ranks":
            body = ",\n".join(f"    {json.dumps(prog)}" for prog in obj["ranks"])
            text = f"[\n{body}\n  ]" if obj["ranks"] else "[]"
        elif key == "meta":
            text = json.dumps(obj["meta"], indent=2).replace("\n", "\n  ")
        else:
            text = json.dumps(obj[key])
        comma = "," if key != _FIELDS[-1] else ""
        lines.append(f"  {json.dumps(key)}: {text}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def save(schedule: Schedule, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``schedule`` as JSON to ``path``; returns the path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return write_new(path, dumps(schedule), overwrite=overwrite)


# --------------------------------------------------------------------------- reading


def loads(text: str | bytes) -> Schedule:
    """Parse schedule JSON text.

    Raises:
        SchemaError: invalid JSON (with line and column) or a document that breaks the format.
    """
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"schedule JSON is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise SchemaError("schedule JSON is nested too deeply to be a schedule (arrays or objects within one "
                          "another thousands of levels down)") from None
    return from_json(obj)


def load(path: str | Path) -> Schedule:
    """Read a schedule JSON file.

    Raises:
        SchemaError: as `loads`, with the path in front of the message.
        InputFileError: missing, not a regular file, too large or not UTF-8 (``ir.files.read_input``).
    """
    path = Path(path)
    text = read_input(path, "schedule")
    try:
        return loads(text)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SchemaError(f"schedule JSON has the key {key!r} twice in one object; keep one")
        out[key] = value
    return out


def from_json(obj: Any) -> Schedule:
    """The `Schedule` a JSON object describes (the inverse of `to_json`).

    Raises:
        SchemaError: naming the field that is missing, mistyped or invalid.
    """
    if not isinstance(obj, dict):
        raise SchemaError(f"schedule JSON must be an object, got {_kind(obj)}")
    _check_header(obj)  # first: another version may have other fields
    _check_keys(obj, _FIELDS, "")
    declared = len(obj["ranks"]) if isinstance(obj["ranks"], list) else None
    placement = _read_placement(obj["placement"], declared)
    m = _positive_int(obj["m"], "m")
    k = _positive_int(obj["k"], "k")
    ranks = _read_ranks(obj["ranks"])
    meta = obj["meta"]
    if not isinstance(meta, dict):
        raise _field_error("meta", f"expected an object, got {_kind(meta)}")
    try:
        schedule = Schedule(placement, m, ranks, k, meta)
    except (TypeError, ValueError) as exc:
        raise _field_error("ranks", str(exc)) from None
    # every microbatch and slice runs a forward on every stage: the sizes are bounded by the actions
    # written (checked before verify or simulate enumerate them)
    actions = sum(len(prog) for prog in ranks)
    if m * k * placement.num_stages > actions:
        raise _field_error("m", f"m = {m} microbatches of k = {k} slice(s) over {placement.num_stages} stages need "
                                f"at least {m * k * placement.num_stages:,} forwards, but the file holds "
                                f"{actions:,} actions in all")
    return schedule


def _check_header(obj: dict[str, Any]) -> None:
    for name in ("format", "version"):
        if name not in obj:
            raise SchemaError(
                f"schedule JSON field {name!r} is missing; a pipesynth schedule starts with "
                f'{{"format": "{FORMAT}", "version": {VERSION}, ...}}'
            )
    if obj["format"] != FORMAT:
        raise _field_error("format", f"expected {FORMAT!r}, got {obj['format']!r}; this is not a pipesynth schedule")
    version = obj["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _field_error("version", f"expected an int, got {_kind(version)}")
    if version != VERSION:
        raise _field_error(
            "version",
            f"version {version} is not supported; this reader supports version {VERSION} "
            "(a newer file needs a newer pipesynth)",
        )


def _read_placement(obj: Any, declared: int | None = None) -> Placement:
    if not isinstance(obj, dict):
        raise _field_error("placement", f"expected an object, got {_kind(obj)}")
    _check_keys(obj, _PLACEMENT_FIELDS, "placement.")
    kind = obj["kind"]
    kinds = [k.value for k in PlacementKind]
    if kind not in kinds:
        raise _field_error("placement.kind", f"{kind!r} is not a placement kind; expected one of {kinds}")
    stage_to_rank = obj["stage_to_rank"]
    if not isinstance(stage_to_rank, list):
        raise _field_error("placement.stage_to_rank", f"expected a list of ranks, got {_kind(stage_to_rank)}")
    for s, rank in enumerate(stage_to_rank):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise _field_error(f"placement.stage_to_rank[{s}]", f"expected a non-negative int, got {rank!r}")
        if declared is not None and rank >= max(declared, len(stage_to_rank)):  # before any table sized by it
            raise _field_error(f"placement.stage_to_rank[{s}]", f"rank {rank}, but the file has {declared} rank "
                                                                f"program(s) (ranks 0 to {declared - 1})")
    try:
        return Placement(tuple(stage_to_rank), PlacementKind(kind))
    except ValueError as exc:
        raise _field_error("placement", str(exc)) from None


def _read_ranks(obj: Any) -> list[list[Any]]:
    if not isinstance(obj, list):
        raise _field_error("ranks", f"expected a list of rank programs, got {_kind(obj)}")
    programs = []
    for r, prog in enumerate(obj):
        if not isinstance(prog, list):
            raise _field_error(f"ranks[{r}]", f"expected a list of action strings, got {_kind(prog)}")
        actions = []
        for n, text in enumerate(prog):
            if not isinstance(text, str):
                raise _field_error(f"ranks[{r}][{n}]", f"expected an action string such as '0F1', got {text!r}")
            try:
                actions.append(parse_action(text))
            except ValueError as exc:
                raise _field_error(f"ranks[{r}][{n}]", str(exc)) from None
        programs.append(actions)
    return programs


def _check_keys(obj: dict[str, Any], fields: tuple[str, ...], prefix: str) -> None:
    for name in fields:
        if name not in obj:
            raise SchemaError(
                f"schedule JSON field {prefix + name!r} is missing; a version {VERSION} "
                f"{'placement' if prefix else 'schedule'} has {list(fields)}"
            )
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise SchemaError(
            f"schedule JSON field {prefix + unknown[0]!r} is not part of the format; "
            f"expected only {list(fields)} (a typo?)"
        )


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _field_error(path, f"expected a positive int, got {value!r}")
    return value


def _field_error(path: str, detail: str) -> SchemaError:
    return SchemaError(f"schedule JSON field {path!r}: {detail}")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"the {type(value).__name__} {value!r}")
