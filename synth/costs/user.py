"""Per-stage costs a user measured (``synth --costs FILE``), instead of a model and a GPU.

The file is one JSON object; every value is a number (the same on every rank) or a list with one
number per rank (``--stages`` of them). Values are per **full stage**: 1/p of the model, what one
rank holds in the standard placement, for one microbatch.

| field | required | meaning |
| --- | --- | --- |
| ``f``, ``b``, ``w`` | yes | forward, input-gradient and weight-gradient time, ms (``f``, ``b`` > 0; ``w`` >= 0) |
| ``act`` | yes | memory the forward keeps for backward |
| ``wact`` | yes | the part of ``act`` that W still needs after B (at most ``act``) |
| ``comm`` | yes | ms to send a stage's output to the next rank (and its gradient back) |
| ``inp`` | no | the stage input, all a recomputed stage keeps (at most ``act``; default 0) |
| ``static`` | no | memory per rank that never moves: weights, grads, optimizer state (default 0) |
| ``offload`` | no | ms to copy one full stage's ``act`` to host memory (0: free); absent: offload not offered |

Memory is in the file's own unit (bytes, GB, "activations of one layer", ...); ``--mem-cap`` is
then a plain number in that unit. No other field is accepted. Without ``offload`` the search is
told not to offload (``SynthOptions(offload=False)``); nothing is assumed about the copy speed.

How a full stage's values reach a placement's stages (the split of
``synth.baselines.common.even_split_costs``): a rank holding c stages, with k slices, gives each
of its stages' units ``1/(c k)`` of its ``f``, ``b``, ``w``, ``act``, ``wact`` and ``inp``; comm
latency is kept per unit, and ``static`` stays per rank. The IR has one copy bandwidth, so with
per-rank ``offload`` times the slowest rank's ``act / offload`` is used for all (never faster than
measured).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ir import Costs, Placement, UnitCost
from ir.files import InputFileError, read_input
from synth.costs.spec import CostModelError

__all__ = ["FIELDS", "REQUIRED", "UserCosts", "costs_for", "costs_table", "parse_user_costs", "read_user_costs",
           "user_costs_report"]

REQUIRED = ("f", "b", "w", "act", "wact", "comm")
OPTIONAL = ("inp", "static", "offload")
FIELDS = REQUIRED + OPTIONAL
_POSITIVE = ("f", "b")  # a pass that takes no time is a mistake in the file, not a cost
_UNITS = {**dict.fromkeys(("f", "b", "w", "comm"), "ms per full stage"), "offload": "ms per full stage's act",
          **dict.fromkeys(("act", "wact", "inp"), "memory per full stage, in the file's unit"),
          "static": "memory per rank, in the file's unit"}


@dataclass(frozen=True, slots=True)
class UserCosts:
    """Costs per full stage, one value per rank (see the module docstring for the file format).

    Attributes:
        source: the file they came from (named in messages and reports).
        f, b, w: pass times of a rank's full stage, ms.
        act, wact, inp: memory of a rank's full stage per microbatch, in the file's unit.
        comm: latency to the next rank, ms.
        static: memory per rank that never moves.
        offload: ms to copy a full stage's ``act`` to host, per rank; None: offload not offered.
    """

    source: str
    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    act: tuple[float, ...]
    wact: tuple[float, ...]
    comm: tuple[float, ...]
    inp: tuple[float, ...]
    static: tuple[float, ...]
    offload: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        lengths = {name: len(getattr(self, name)) for name in FIELDS if getattr(self, name) is not None}
        if len(set(lengths.values())) != 1 or not self.f:
            raise CostModelError(f"{self.source}: every field needs one value per rank, got lengths {lengths}")

    @property
    def p(self) -> int:
        return len(self.f)

    @property
    def offload_offered(self) -> bool:
        return self.offload is not None

    @property
    def copy_bandwidth(self) -> float:
        """Memory units per ms between device and host: the slowest rank's ``act / offload``
        (infinite when every copy is free or offload is not offered)."""
        if self.offload is None:
            return math.inf
        rates = [a / t for a, t in zip(self.act, self.offload, strict=True) if a > 0 and t > 0]
        return min(rates, default=math.inf)

    def describe(self) -> str:
        """One line: every field, a single number where all ranks agree."""
        def show(values: tuple[float, ...]) -> str:
            return f"{values[0]:g}" if len(set(values)) == 1 else "[" + ", ".join(f"{x:g}" for x in values) + "]"

        parts = [f"{name}={show(getattr(self, name))}" for name in FIELDS if getattr(self, name) is not None]
        offload = "" if self.offload_offered else "; no offload (the file has no 'offload')"
        return (f"costs from {self.source} per full stage (times in ms, memory in the file's unit): "
                + " ".join(parts) + offload)


def read_user_costs(path: str | Path, p: int) -> UserCosts:
    """The costs in the JSON file ``path`` for ``p`` ranks.

    Raises:
        CostModelError: unreadable file, not JSON, or any bad field (the message names the file,
            the field and the fix).
    """
    path = Path(path)
    try:
        text = read_input(path, "costs file")
    except InputFileError as err:
        raise CostModelError(str(err)) from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise CostModelError(f"{path}: nested too deeply to be a costs file (one flat object)") from None
    except json.JSONDecodeError as err:
        raise CostModelError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                             "write one object such as {\"f\": 1, \"b\": 1, \"w\": 1, \"act\": 1, \"wact\": 1, "
                             "\"comm\": 0}") from None
    return parse_user_costs(data, p, source=str(path))


def parse_user_costs(data: Any, p: int, *, source: str = "costs") -> UserCosts:
    """`UserCosts` from the parsed file ``data`` for ``p`` ranks (see the module docstring).

    Raises:
        CostModelError: naming ``source``, the field and the fix.
    """
    if not isinstance(data, dict):
        raise CostModelError(f"{source}: expected a JSON object with fields {', '.join(REQUIRED)}, "
                             f"got {type(data).__name__}")
    unknown = [key for key in data if key not in FIELDS]
    if unknown:
        raise CostModelError(f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
                             f"{', '.join(REQUIRED)} (required) and {', '.join(OPTIONAL)} (optional)")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CostModelError(f"{source}: missing field(s) {', '.join(map(repr, missing))}; give each as a number "
                             f"of its unit per full stage, or a list of {p} (one per rank)")
    values = {name: _per_rank(source, name, data.get(name, 0.0), p) for name in FIELDS
              if name in data or name != "offload"}
    for name in ("wact", "inp"):
        for rank, (part, whole) in enumerate(zip(values[name], values["act"], strict=True)):
            if part > whole:
                raise CostModelError(
                    f"{source}: '{name}' is {part:g} on rank {rank}, more than 'act' ({whole:g}); {name} is part of "
                    f"the activations act counts, so make it at most act")
    return UserCosts(source=source, **values)


def _per_rank(source: str, name: str, value: Any, p: int) -> tuple[float, ...]:
    """One value per rank from a number or a list of p numbers, each finite and >= 0 (> 0 for f, b)."""
    if isinstance(value, list):
        if len(value) != p:
            raise CostModelError(f"{source}: '{name}' has {len(value)} values but there are {p} ranks (--stages); "
                                 f"give {p} values (one per rank) or a single number for all")
        items = [(f"{name}[{i}]", x) for i, x in enumerate(value)]
    else:
        items = [(name, value)]
    out = []
    for label, x in items:
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise CostModelError(f"{source}: '{label}' must be a number"
                                 + (f" or a list of {p} numbers (one per rank)" if label == name else "")
                                 + f", got {json.dumps(x)}")
        least = "> 0" if name in _POSITIVE else ">= 0"
        if not math.isfinite(x) or x < 0 or (name in _POSITIVE and x == 0):
            raise CostModelError(f"{source}: '{label}' must be a finite number {least} ({_UNITS[name]}), got {x!r}")
        out.append(float(x))
    return tuple(out) if isinstance(value, list) else tuple(out) * p


def costs_for(user: UserCosts, placement: Placement, k: int) -> Costs:
    """The IR's costs of ``placement`` with ``k`` slices: each rank's full stage split evenly over
    its stages and the slices (the module docstring says how).

    Raises:
        CostModelError: the placement has another number of ranks than the file.
    """
    if placement.p != user.p:
        raise CostModelError(f"{user.source} gives costs for {user.p} ranks, but the schedule has {placement.p}; "
                             f"use --stages {user.p} or give {placement.p} values per list")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CostModelError(f"slices must be a positive integer, got {k!r}")
    rows = []
    for s in range(placement.num_stages):
        r = placement.rank_of(s)
        share = 1.0 / (len(placement.stages_of(r)) * k)
        unit = UnitCost(f=user.f[r] * share, b=user.b[r] * share, w=user.w[r] * share, act=user.act[r] * share,
                        wact=user.wact[r] * share, inp=user.inp[r] * share, comm=user.comm[r])
        rows.append((unit,) * k)
    return Costs(tuple(rows), user.static, copy_bandwidth=user.copy_bandwidth)


def costs_table(user: UserCosts, placement: Placement, k: int) -> list[str]:
    """A markdown table, one row per stage (slices share a row: they are equal): what
    `costs_for` gives each unit, and its copy time when offload is offered."""
    costs = costs_for(user, placement, k)
    rows = ["| stage | rank | F ms | B ms | W ms | act | wact | inp | comm ms | offload ms | static (rank) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in range(placement.num_stages):
        u, r = costs.unit(s), placement.rank_of(s)
        copy = f"{u.act / costs.copy_bandwidth:.4g}" if user.offload_offered else "-"
        rows.append(f"| {s} | {r} | {u.f:.4g} | {u.b:.4g} | {u.w:.4g} | {u.act:.4g} | {u.wact:.4g} | {u.inp:.4g} | "
                    f"{u.comm:.4g} | {copy} | {costs.static_of(r):.4g} |")
    return rows


def user_costs_report(user: UserCosts, placement: Placement, k: int, m: int) -> str:
    """What ``synth costs --costs FILE`` prints: the file's values, the per-unit table, and 1F1B
    on these costs (standard placement, k = 1) so a reader sees whether memory binds."""
    from ir import simulate
    from synth.baselines import BASELINES

    lines = [user.describe(),
             f"{user.p} ranks, {placement.num_stages} stages ({placement.kind.value}), {k} slice(s), {m} microbatches; "
             f"per unit (stage, microbatch, slice), each slice alike:", "", *costs_table(user, placement, k)]
    standard = Placement.standard(user.p)
    one_f_one_b = costs_for(user, standard, 1)
    timeline = simulate(BASELINES["1f1b"](user.p, m, costs=one_f_one_b), one_f_one_b)
    lines += ["", f"1F1B on these costs (standard placement, whole microbatches): makespan {timeline.makespan:.4g} ms, "
              f"bubble {timeline.bubble_ratio:.3f}; peak per rank " + ", ".join(f"{x:.4g}" for x in timeline.peak)]
    return "\n".join(lines)
