"""The core test: every schedule family, run by real ranks over gloo, gives the loss and every
parameter gradient of a single-process run of the same model and batch.

Expected values come from ``backends.torch_exec.reference`` (one process, one autograd graph,
no pipeline, no saved-tensor hooks, no split backward). Tolerance: fp32, ``rtol=1e-5, atol=1e-6``
on gradients whose largest entries are about 0.1-0.2; a pipeline adds a unit's gradients to
``param.grad`` in its own order (and W adds per meeting node), so sums of up to m*k = 16 terms
may round differently: a few ulps, measured at most 4e-8 here. Anything structurally wrong (a
lost microbatch, a slice's K/V gradient dropped, a wrong dropout mask) is off by ~1e-3 or more:
`test_a_different_batch_is_told_apart` checks that the comparison can fail.
"""

import pytest
import torch

from backends.torch_exec.model import tiny_gpt
from backends.torch_exec.reference import reference_step
from backends.torch_exec.worker import RunConfig, run_rank
from ir import Op, verify
from synth.baselines import build

RTOL, ATOL = 1e-5, 1e-6

# name -> build options per world size; every family of the library (seq1f1b-i needs k <= p)
FAMILIES = {
    "gpipe": {}, "1f1b": {}, "1f1b-recompute": {}, "interleaved": {}, "zb-h1": {}, "zb-h2": {}, "zb-v": {},
    "v-half": {}, "v-min": {}, "hanayo": {}, "seq1f1b": {}, "seq1f1b-i": {2: {"k": 2}}, "dualpipev": {},
    "po-h": {}, "po-f": {}, "v-zb": {}, "slimpipe": {}, "slimpipe-lean": {}, "chronospipe": {},
    "chronos-recomp": {}, "chronos-offload": {},
}


def _schedule(name: str, p: int):
    return build(name, p, 2 * p, **FAMILIES[name].get(p, {}))


def run_and_reference(group, schedule, *, dropout=0.0, per_unit=None, steps=1, lr=0.0, data_seed=0, lengths=None,
                      optimizer="sgd"):
    spec = tiny_gpt(layers=schedule.num_stages, dropout=dropout)
    batch = 2 * schedule.m
    cfg = RunConfig(schedule, spec, batch, steps=steps, lr=lr, keep_grads=True, keep_params=steps > 1,
                    timeout=30.0, slice_lengths=lengths, optimizer=optimizer)
    results = group.run(run_rank, cfg)
    ref = reference_step(spec, batch, num_stages=schedule.num_stages, m=schedule.m, k=schedule.k,
                         per_unit=dropout > 0 if per_unit is None else per_unit, steps=steps, lr=lr,
                         data_seed=data_seed, lengths=lengths, optimizer="sgd" if optimizer == "sgd" else "adam")
    return results, ref


def merged(results, what="grads"):
    out = {}
    for r in results:
        out.update(getattr(r, what))
    return out


def assert_equal_to_reference(results, ref):
    losses = [s.loss for r in results for s in r.steps[:1] if s.loss is not None]
    assert len(losses) == 1  # only the rank holding the last stage reports the loss
    assert losses[0] == pytest.approx(ref.loss, rel=1e-6)
    grads = merged(results)
    assert set(grads) == set(ref.grads)  # every parameter lives on exactly one rank
    for name, expected in ref.grads.items():
        assert grads[name] is not None, f"{name} got no gradient"
        torch.testing.assert_close(grads[name], expected, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_two_ranks_match_one_process(group2, name):
    results, ref = run_and_reference(group2, _schedule(name, 2))
    assert_equal_to_reference(results, ref)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_four_ranks_match_one_process(group4, name):
    results, ref = run_and_reference(group4, _schedule(name, 4))
    assert_equal_to_reference(results, ref)


@pytest.mark.parametrize("name", ["1f1b-recompute", "zb-v", "seq1f1b", "po-f", "hanayo"])
def test_dropout_matches_the_per_unit_reference(group2, name):
    """Dropout 0.1: F and R (recompute) draw the same masks as the reference's per-unit seeds."""
    results, ref = run_and_reference(group2, _schedule(name, 2), dropout=0.1)
    assert_equal_to_reference(results, ref)
    plain, _ = run_and_reference(group2, _schedule(name, 2), dropout=0.0, per_unit=True)
    loss = next(s.loss for r in plain for s in r.steps if s.loss is not None)
    assert abs(loss - ref.loss) > 1e-4  # dropout really changed the run


def test_sequence_slices_match_the_whole_sequence(group4):
    """Seq1F1B with k=4 against the reference that runs whole sequences in one causal attention."""
    results, ref = run_and_reference(group4, build("seq1f1b", 4, 4, k=4), per_unit=False)
    assert_equal_to_reference(results, ref)


def test_three_sgd_steps_match(group2):
    """Gradients are reset between steps and the update is the same: weights agree after 3 steps."""
    results, ref = run_and_reference(group2, _schedule("zb-v", 2), steps=3, lr=0.1)
    params = merged(results, "params")
    assert set(params) == set(ref.params)
    for name, expected in ref.params.items():
        torch.testing.assert_close(params[name], expected, rtol=RTOL, atol=ATOL)
    losses = [s.loss for r in results for s in r.steps if s.loss is not None]
    assert losses[0] > losses[1] > losses[2]  # the same batch every step: training lowers its loss


def test_adam_on_the_host_matches_adam(group2):
    """host-adam (Adam's state and fp32 master weights on the host, ChronosPipe's model-state
    offload) gives the weights of Adam on the device after 3 steps, and both those of torch's Adam
    on the one-process run. Tolerance against the reference: Adam divides each gradient by its
    running RMS, so elements whose gradient is within rounding of zero (|g| near eps = 1e-8) turn
    the pipeline's few-ulp gradient differences into update differences up to a fraction of lr
    (measured 2.4e-5 at lr 0.01); a lost or unapplied update is off by about lr (1e-2) per step."""
    schedule = _schedule("zb-v", 2)
    host, ref = run_and_reference(group2, schedule, steps=3, lr=0.01, optimizer="host-adam")
    device, _ = run_and_reference(group2, schedule, steps=3, lr=0.01, optimizer="adam")
    on_host, on_device = merged(host, "params"), merged(device, "params")
    assert set(on_host) == set(ref.params)
    for name, expected in ref.params.items():
        torch.testing.assert_close(on_host[name], on_device[name], rtol=0, atol=1e-7)
        torch.testing.assert_close(on_host[name], expected, rtol=0, atol=1e-4)
    initial = reference_step(tiny_gpt(layers=schedule.num_stages), 2 * schedule.m, num_stages=schedule.num_stages,
                             m=schedule.m, per_unit=False).params
    assert max((on_host[n] - initial[n]).abs().max().item() for n in initial) > 1e-3  # the steps moved the weights


def test_a_different_batch_is_told_apart(group2):
    """The comparison can fail: the reference of another batch differs by far more than the tolerance."""
    results, ref = run_and_reference(group2, _schedule("zb-h1", 2), data_seed=1)
    with pytest.raises(AssertionError):
        assert_equal_to_reference(results, ref)


def with_passes(schedule, stages, *, recompute: bool):
    """``schedule`` with every unit of ``stages`` recomputed (R just before its B or BW) or offloaded
    (OFFLOAD right after F, RELOAD just before the backward)."""
    programs = []
    for prog in schedule.ranks:
        out = []
        for a in prog:
            backward = a.op in (Op.B, Op.BW) and a.stage in stages
            if backward:
                out.append(a.with_op(Op.R if recompute else Op.RELOAD))
            out.append(a)
            if a.op is Op.F and a.stage in stages and not recompute:
                out.append(a.with_op(Op.OFFLOAD))
        programs.append(out)
    return schedule.with_programs(programs)


@pytest.mark.parametrize("name, stages, recompute", [
    ("zb-h1", {0, 1}, True),          # R with split B/W, including the first stage's cut
    ("zb-v", {0, 3}, True),           # R on a V placement (both of rank 0's stages)
    ("seq1f1b", {0}, True),           # R with sequence slices: K/V of earlier slices reused
    ("interleaved", {1, 2}, False),   # OFFLOAD/RELOAD with fused backward
    ("seq1f1b", {1}, False),          # offloaded slices
])
def test_recompute_and_offload_variants_match(group2, name, stages, recompute):
    schedule = with_passes(_schedule(name, 2), stages, recompute=recompute)
    verify(schedule)
    assert schedule.ops_used() & {Op.R, Op.OFFLOAD}
    results, ref = run_and_reference(group2, schedule, dropout=0.1)
    assert_equal_to_reference(results, ref)


# tiny_gpt's 16 tokens cut as a compute-balanced split would: earlier slices attend to fewer keys, so
# they are longer (the lengths only need to be unequal and sum to 16).
UNEQUAL = {3: (7, 5, 4), 4: (6, 4, 3, 3)}


@pytest.mark.parametrize("group, p, k, dropout", [
    ("group2", 2, 3, 0.0), ("group2", 2, 4, 0.1), ("group4", 4, 3, 0.0), ("group4", 4, 4, 0.1),
])
def test_unequal_slices_with_recompute_and_offload_match(request, group, p, k, dropout):
    """Slices of unequal length, some stages recomputed (R re-reads the kept K/V of earlier slices)
    and the others offloaded, against the one-process run. Without dropout the reference is the
    whole batch at once (no slicing at all), so the per-slice loss weights (a slice's share of the
    tokens) are checked too; with dropout it is the per-unit reference with the same masks."""
    schedule = build("seq1f1b", p, 2 * p, k=k)
    schedule = with_passes(with_passes(schedule, set(range(0, p, 2)), recompute=True),
                           set(range(1, p, 2)), recompute=False)
    verify(schedule)
    assert {Op.R, Op.OFFLOAD} <= schedule.ops_used()
    results, ref = run_and_reference(request.getfixturevalue(group), schedule, dropout=dropout, lengths=UNEQUAL[k])
    assert_equal_to_reference(results, ref)
