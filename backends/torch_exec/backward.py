"""Split backward: B (gradients for the stage inputs only) and W (weight gradients), plus fused BW.

B walks the autograd graph from the stage's roots (its output, or its loss) to its inputs,
with the graph retained. On the way it records, at every *meeting node* (a node on the
input path that also leads to parameters), the gradient that reached it. W later starts from
exactly those nodes with exactly those gradients and walks only towards the parameters, so no
part of the backward runs twice. This is the construction of the Zero Bubble paper (Qi et al.,
arXiv 2401.10241, sec. 2) as ``torch.distributed.pipelining._backward`` implements it
(``stage_backward_input`` / ``stage_backward_weight``); it is rewritten here so that the
executor owns when saved tensors die (``backends.torch_exec.memory``).

Parameters are grouped by the meeting nodes they are reached from; a group with several
meeting nodes pins each node's incoming gradient to the recorded one during W, so that a
gradient flowing between two meeting nodes is not counted twice.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node

__all__ = ["WeightWork", "backward_full", "backward_input", "backward_weight"]


@dataclass(slots=True)
class _Group:
    params: set[Node] = field(default_factory=set)
    meeting: set[Node] = field(default_factory=set)
    nodes: list[Node] = field(default_factory=list)  # meeting nodes, in a fixed order
    grads: list[tuple | None] = field(default_factory=list)


@dataclass(slots=True)
class WeightWork:
    """What B leaves for W: per parameter group, the meeting nodes and the gradients recorded there."""

    groups: list[_Group]
    params: dict[Node, Tensor]  # gradient accumulator node -> parameter
    # parameters that reach the roots without meeting the input path: W runs a full backward
    # from the roots for them (roots and their gradients are kept only then)
    orphans: list[Tensor] = field(default_factory=list)
    roots: list[tuple[Tensor, Tensor]] = field(default_factory=list)


def _node(t: Tensor) -> Node | None:
    """The grad_fn of ``t``, or its gradient accumulator when ``t`` is a leaf."""
    if t.grad_fn is not None:
        return t.grad_fn
    if not t.requires_grad:
        return None
    return t.view_as(t).grad_fn.next_functions[0][0]  # a view makes the accumulator exist


def _reverse_edges(roots: list[Node]) -> dict[Node, list[Node]]:
    """For every node reachable from ``roots``, the nodes that feed gradient into it."""
    rev: dict[Node, list[Node]] = collections.defaultdict(list)
    seen = set(roots)
    queue = collections.deque(roots)
    while queue:
        node = queue.popleft()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            rev[nxt].append(node)
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return rev


def _closure(starts: list[Node], rev: dict[Node, list[Node]], stop: set[Node]) -> tuple[set[Node], set[Node]]:
    """Nodes reached from ``starts`` walking towards the roots, halting at nodes of ``stop``
    (returned apart: the ones met)."""
    inside, met = set(starts), set()
    queue = collections.deque(starts)
    while queue:
        for prev in rev.get(queue.popleft(), ()):
            if prev in inside:
                continue
            if prev in stop:
                met.add(prev)
                continue
            inside.add(prev)
            queue.append(prev)
    return inside, met


def _groups(roots: list[Node], inputs: list[Node], params: dict[Node, Tensor]) -> tuple[list[_Group], list[Node]]:
    """Parameter groups by meeting node, and the parameters that meet no input path (orphans)."""
    rev = _reverse_edges(roots)
    input_path, _ = _closure(inputs, rev, set())
    by_meeting: dict[Node, _Group] = {}
    orphans = []
    for param in params:
        if param not in rev:
            continue  # unused by this unit
        _, met = _closure([param], rev, input_path)
        if not met:
            orphans.append(param)
            continue
        group = _Group({param}, met)
        for node in met:
            other = by_meeting.get(node)
            if other is not None and other is not group:
                other.params |= group.params
                other.meeting |= group.meeting
                group = other
        for node in group.meeting:
            by_meeting[node] = group
    unique = {id(g): g for g in by_meeting.values()}
    return list(unique.values()), orphans


def backward_input(
    roots: Sequence[Tensor], root_grads: Sequence[Tensor | None], inputs: Sequence[Tensor],
    params: Sequence[Tensor],
) -> tuple[list[Tensor | None], WeightWork]:
    """B: gradients of ``inputs`` (None where unused), the graph kept for `backward_weight`.

    Args:
        roots: the stage output(s) (or the loss); graph-less ones are skipped.
        root_grads: the gradient of each root (None means ones, for a loss).
        inputs: tensors whose gradient B must produce (stage input leaf or, on the first stage,
            its first layer's output).
        params: the stage's parameters.
    """
    pairs = [(r, torch.ones_like(r) if g is None else g) for r, g in zip(roots, root_grads, strict=True)
             if r.requires_grad]
    accumulators = {_node(p): p for p in params if p.requires_grad}
    wanted = [t for t in inputs if t.requires_grad]
    groups, orphans = _groups([_node(r) for r, _ in pairs], [_node(t) for t in wanted], accumulators)
    handles = []
    for group in groups:
        group.nodes = list(group.meeting)
        group.grads = [None] * len(group.nodes)
        for n, node in enumerate(group.nodes):
            handles.append(node.register_prehook(_recorder(group, n)))
    try:
        grads = torch.autograd.grad([r for r, _ in pairs], wanted, [g for _, g in pairs],
                                    retain_graph=True, allow_unused=True) if pairs and wanted else []
    finally:
        for handle in handles:
            handle.remove()
    by_input = dict(zip(map(id, wanted), grads, strict=True))
    work = WeightWork(groups, accumulators)
    if orphans:
        work.orphans = [accumulators[node] for node in orphans]
        work.roots = pairs
    return [by_input.get(id(t)) for t in inputs], work


def _recorder(group: _Group, n: int):
    def hook(grad_outputs: tuple) -> None:
        group.grads[n] = grad_outputs

    return hook


def backward_weight(work: WeightWork) -> None:
    """W: weight gradients from what B recorded, accumulated into ``param.grad``; frees the graph.

    One backward call per parameter group, from its meeting nodes with the gradients B recorded
    there. (One call for all groups would also walk the input path between groups' meeting
    nodes, redoing B's work, only to discard it.)
    """
    if work.orphans:  # first, with the graph kept: the groups below free what they walk
        dweights = torch.autograd.grad([r for r, _ in work.roots], work.orphans, [g for _, g in work.roots],
                                       retain_graph=True, allow_unused=True)
        for param, dw in zip(work.orphans, dweights, strict=True):
            if dw is not None:
                _accumulate(param, dw)
    for group in work.groups:
        edges, grads = [], []
        for node, recorded in zip(group.nodes, group.grads, strict=True):
            for n, g in enumerate(recorded or ()):
                if g is not None:
                    edges.append(GradientEdge(node, n))
                    grads.append(g)
        if not edges:
            continue
        pins = []
        if len(group.nodes) > 1:  # keep each meeting node's input at what B recorded
            pins = [node.register_prehook(lambda _g, rec=rec: rec)
                    for node, rec in zip(group.nodes, group.grads, strict=True) if rec is not None]
        order = list(group.params)
        try:
            dweights = torch.autograd.grad(edges, [GradientEdge(p, 0) for p in order], grads, allow_unused=True)
        finally:
            for pin in pins:
                pin.remove()
        for node, dw in zip(order, dweights, strict=True):
            if dw is not None:
                _accumulate(work.params[node], dw)
    work.groups.clear()
    work.roots.clear()


def _accumulate(param: Tensor, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


def backward_full(
    roots: Sequence[Tensor], root_grads: Sequence[Tensor | None], inputs: Sequence[Tensor]
) -> list[Tensor | None]:
    """BW: one backward pass; weight gradients accumulate into ``param.grad``; returns the input
    gradients (None where unused)."""
    pairs = [(r, torch.ones_like(r) if g is None else g) for r, g in zip(roots, root_grads, strict=True)
             if r.requires_grad]
    for t in inputs:
        if t.requires_grad and t.grad_fn is None:
            t.grad = None
    if pairs:
        torch.autograd.backward([r for r, _ in pairs], [g for _, g in pairs])
    return [t.grad if t.grad_fn is None and t.requires_grad else None for t in inputs]
