"""Costs from a recorded run: what the executor's own spans say each action took.

`costs_from_run` prices each kind of pass, post and copy at its mean over a run recorded with
``RunConfig(record_spans=True)``, as the zero-bubble authors' Megatron integration profiles the
first iterations of training: inside the pipeline, with the other ranks computing and gloo's
threads sharing the cores, which an isolated profile (``backends.torch_exec.profile``) cannot see.
`sampled_makespans` simulates draws of the run's own per-action times, so the run's spread is
simulated too, not only its means.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Sequence

from ir import Action, Costs, Op, Schedule, parse_action, simulate
from ir.costs import message_stage

__all__ = ["costs_from_run", "post_batches", "sampled_makespans"]


_PASS_FIELD = {Op.F: "f", Op.B: "b", Op.W: "w", Op.BW: "bw", Op.R: "r"}


def post_batches(spans: Sequence) -> list[tuple[float, list[Action]]]:
    """The comm posts of one recorded step: ``(seconds, actions)`` per ``batch_isend_irecv`` call,
    in program order (the actions of one batch share one span, `RankExecutor.step`)."""
    batches: dict[tuple[float, float], list[Action]] = {}
    for span in spans:
        action = parse_action(span.action)
        if action.op.is_comm:
            batches.setdefault((span.start, span.end), []).append(action)
    return [(end - start, actions) for (start, end), actions in batches.items()]


def _check_records(schedule: Schedule, records: Sequence[Sequence], skip: int) -> None:
    """Refuse records that are not one list of steps per rank, each kept step with spans."""
    if len(records) != schedule.p:
        raise ValueError(f"records of {len(records)} ranks for a schedule of {schedule.p}")
    if any(not step.spans for steps in records for step in list(steps)[skip:]):
        raise ValueError("the run recorded no spans: run it with RunConfig(record_spans=True)")


def costs_from_run(schedule: Schedule, records: Sequence[Sequence], base: Costs, *, skip: int = 1) -> Costs:
    """``base`` with the times a recorded run measured: each pass's time (F, B, W, BW, R; the
    mean over its units and steps of span length less the time it waited for a message),
    each boundary's ``post`` (the mean host time per SEND/RECV posted: a batch's span over its
    actions) and, if the run copied, ``copy_bandwidth`` (``base``'s ``act`` of every OFFLOAD and
    RELOAD over their total time). Means, not medians: a step is a sum of these times, and inside a pipeline posts
    have a heavy tail (on gloo with both cores computing, about one batch in 40 takes 5-9 ms
    against a median of 0.45 ms) that a median would drop. What the run did not do (a pass, a
    boundary's posts) keeps ``base``'s value, as do bytes, ``comm`` and static memory.

    Args:
        schedule: the lowered schedule the run executed (``prepare_schedule``'s result).
        records: ``records[rank]`` is that rank's list of `StepRecord` s, recorded with spans.
        skip: leading steps of each rank left out (warm-up).
    """
    _check_records(schedule, records, skip)
    passes: dict[tuple[int, int, str], list[float]] = {}
    posts: dict[tuple[int, int], list[float]] = {}
    copied = copy_time = 0.0
    for steps in records:
        for step in list(steps)[skip:]:
            for span in step.spans:
                action = parse_action(span.action)
                if action.op in _PASS_FIELD:
                    key = (action.stage, action.slice, _PASS_FIELD[action.op])
                    passes.setdefault(key, []).append((span.end - span.start - span.wait) * 1e3)
                elif action.op in (Op.OFFLOAD, Op.RELOAD):
                    copied += base.unit(action.stage, action.slice).act
                    copy_time += (span.end - span.start) * 1e3
            for seconds, actions in post_batches(step.spans):
                for action in actions:
                    posts.setdefault((message_stage(action), action.slice), []).append(seconds * 1e3 / len(actions))
    rows = []
    for s, row in enumerate(base.units):
        out = []
        for j, unit in enumerate(row):
            got = {name: statistics.fmean(passes[(s, j, name)]) for name in _PASS_FIELD.values()
                   if (s, j, name) in passes}
            if (s, j) in posts:
                got["post"] = statistics.fmean(posts[(s, j)])
            out.append(dataclasses.replace(unit, **got))
        rows.append(tuple(out))
    bandwidth = copied / copy_time if copied > 0 and copy_time > 0 else base.copy_bandwidth
    return Costs(tuple(rows), base.static, bandwidth, base.copy_stream)


def _action_samples(records: Sequence[Sequence], skip: int) -> dict[tuple, list[float]]:
    """Each kind of action's times (ms) in a recorded run, keyed ``(op, stage, slice)`` for a pass
    or a copy and ``("post", boundary stage, slice)`` for a SEND/RECV: its span less its waits,
    plus the host time since the rank's previous action ended (the executor's own time between
    actions, and any time its thread lost the core there); a batch's span and gap are shared
    equally by its posts."""
    samples: dict[tuple, list[float]] = {}
    for steps in records:
        for step in list(steps)[skip:]:
            batches: dict[tuple[float, float], list] = {}
            for span in step.spans:
                batches.setdefault((span.start, span.end), []).append(span)
            prev_end = 0.0
            for (start, end), spans in batches.items():
                gap = max(0.0, start - prev_end)
                prev_end = end
                for span in spans:
                    action = parse_action(span.action)
                    took = (end - start + gap) / len(spans) if action.op.is_comm else end - start - span.wait + gap
                    samples.setdefault(_sample_key(action), []).append(took * 1e3)
    return samples


def _sample_key(action: Action) -> tuple:
    """`_action_samples`' key of ``action``'s kind."""
    if action.op.is_comm:
        return "post", message_stage(action), action.slice
    return action.op, action.stage, action.slice


@dataclasses.dataclass(frozen=True, slots=True)
class _DrawnCosts(Costs):
    """``Costs`` in which the actions of ``times`` take those times (one draw of a noisy run)."""

    times: dict = dataclasses.field(default_factory=dict)

    def duration(self, action: Action) -> float:
        took = self.times.get(action)
        return Costs.duration(self, action) if took is None else took


def sampled_makespans(schedule: Schedule, records: Sequence[Sequence], base: Costs, *, draws: int = 20,
                      seed: int = 0, skip: int = 1) -> list[float]:
    """``ir.simulate``'s makespan (ms) of ``schedule`` in ``draws`` draws, each action's time drawn
    (independently, with replacement, ``random.Random(seed)``) from what a recorded run's actions
    of its kind took (`_action_samples`: span less waits plus the host time before it). Where
    `costs_from_run` gives each kind its mean, which a step on two coupled ranks does not take
    (a late action on one rank makes the other wait, an early one rarely lets it start sooner),
    the mean of these makespans carries the run's spread. Kinds the run did not record keep
    ``base``'s time, as do bytes and ``comm``.

    Args:
        schedule: the lowered schedule the run executed (``prepare_schedule``'s result).
        records: ``records[rank]`` is that rank's list of `StepRecord` s, recorded with spans.
        skip: leading steps of each rank left out (warm-up).
    """
    _check_records(schedule, records, skip)
    samples = _action_samples(records, skip)
    rng = random.Random(seed)
    out = []
    for _ in range(draws):
        times = {a: rng.choice(samples[key]) for prog in schedule.ranks for a in prog
                 if (key := _sample_key(a)) in samples}
        out.append(simulate(schedule, _DrawnCosts(base.units, base.static, base.copy_bandwidth, base.copy_stream,
                                                  times)).makespan)
    return out
