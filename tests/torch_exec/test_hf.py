"""Hugging Face causal LMs split by `hf_layers` (GPT-2, Llama, Mistral, Qwen2, Qwen3 from tiny
configs, random weights, no hub): the layer chain equals the model's own forward, and pipelined
runs on 2 and 4 gloo ranks give the single-process gradients (rtol 1e-5, fp32), tied and untied,
for library and synthesized schedules (issue 18)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from backends.torch_exec import PipelineSchedule, hf_layers, hf_spec, split_model  # noqa: E402
from backends.torch_exec.hf import HFError, causal_lm_loss, from_config  # noqa: E402
from backends.torch_exec.reference import reference_step  # noqa: E402
from backends.torch_exec.split import SplitError  # noqa: E402
from backends.torch_exec.worker import RunConfig, run_rank  # noqa: E402
from ir import Costs, Placement  # noqa: E402
from synth.baselines import build  # noqa: E402
from synth.construct import construct  # noqa: E402

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
SMALL = {"num_hidden_layers": 4, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 64, "max_position_embeddings": 32}
CONFIGS = {
    "gpt2": {"model_type": "gpt2", "n_layer": 4, "n_embd": 32, "n_head": 2, "vocab_size": 64, "n_positions": 32,
             "bos_token_id": 0, "eos_token_id": 0, **NO_DROPOUT},  # tie_word_embeddings: True (GPT-2's default)
    "llama": {"model_type": "llama", **SMALL, "tie_word_embeddings": False},
    "llama-tied": {"model_type": "llama", **SMALL, "tie_word_embeddings": True},
    "mistral": {"model_type": "mistral", **SMALL, "sliding_window": 4},  # window < sequence: the mask matters
    "qwen2": {"model_type": "qwen2", **SMALL, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", **SMALL, "head_dim": 8},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_layer_chain_is_the_models_own_forward(name):
    model = from_config(CONFIGS[name], seed=0).eval()
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    h = tokens
    for layer in hf_layers(model):
        h = layer(h)
    # the same modules and the same mask / rotary functions the model's forward calls: bit for bit
    torch.testing.assert_close(h, model(tokens).logits, rtol=0, atol=0)
    params = {id(p) for layer in hf_layers(model) for p in layer.parameters()}
    assert params == {id(p) for p in model.parameters()}  # every weight is in a layer, none copied


def test_a_tied_config_shares_the_embedding_with_the_head():
    layers = hf_layers(from_config(CONFIGS["gpt2"]))
    assert layers[-1].lm_head.weight is layers[0].wte.weight


def _grads(results):
    return {k: v for r in results for k, v in r.grads.items()}


def _check(results, spec, schedule, batch):
    ref = reference_step(spec, batch, num_stages=schedule.num_stages, m=schedule.m, per_unit=True)
    grads = _grads(results)
    assert set(grads) == set(ref.grads)
    for key, expected in ref.grads.items():
        torch.testing.assert_close(grads[key], expected, rtol=1e-5, atol=1e-6, msg=key)
    (loss,) = [s.loss for r in results for s in r.steps if s.loss is not None]
    assert loss == pytest.approx(ref.loss, rel=1e-6)


def _synthesized(p: int, m: int, v: bool = False):
    """A list-scheduled schedule (synth.construct) under a cap of p microbatches' activations."""
    placement = Placement.v_shape(p) if v else Placement.standard(p)
    costs = Costs.uniform(placement.num_stages, act=1.0, wact=1.0)
    return construct(costs, placement, m, float(p))[0].schedule


CASES2 = [("gpt2", "1f1b"), ("gpt2", "zb-v"), ("gpt2", "interleaved"), ("llama", "1f1b"), ("llama-tied", "zb-h1"),
          ("mistral", "zb-v"), ("qwen2", "1f1b"), ("gpt2", "synth"), ("llama", "synth-v")]


@pytest.mark.parametrize("name,schedule_name", CASES2, ids=[f"{a}-{b}" for a, b in CASES2])
def test_two_ranks_match_one_process(group2, name, schedule_name):
    if schedule_name.startswith("synth"):
        schedule = _synthesized(2, 4, v=schedule_name == "synth-v")
    else:
        schedule = build(schedule_name, 2, 4)
    spec = hf_spec(CONFIGS[name], seq_len=8)
    results = group2.run(run_rank, RunConfig(schedule, spec, 8, keep_grads=True, timeout=30.0))
    _check(results, spec, schedule, 8)


@pytest.mark.parametrize("name,schedule_name", [("gpt2", "1f1b"), ("llama", "synth")])
def test_four_ranks_match_one_process(group4, name, schedule_name):
    schedule = _synthesized(4, 4) if schedule_name == "synth" else build(schedule_name, 4, 4)
    spec = hf_spec(CONFIGS[name], seq_len=8)
    results = group4.run(run_rank, RunConfig(schedule, spec, 8, keep_grads=True, timeout=30.0))
    _check(results, spec, schedule, 8)


def llama_loop(schedule, *, rank, world_size, device):
    """The user's loop with the user's own Hugging Face model object."""
    model = from_config(CONFIGS["llama-tied"], seed=0)
    pipe = PipelineSchedule(schedule, hf_layers(model), loss_fn=causal_lm_loss, pre=1, post=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-4)  # the whole model's, as users write
    for step in range(2):
        optimizer.zero_grad()
        x, y = _tokens(step)
        pipe.step(x, target=y)
        pipe.clip_grad_norm_(0.5)
        optimizer.step()
    return dict(pipe.named_parameters())


def _tokens(step):
    t = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(step))
    return t[:, :-1], t[:, 1:]


def test_a_users_loop_over_a_tied_llama_equals_one_process(group2):
    results = group2.run(llama_loop, build("1f1b", 2, 2))
    model = from_config(CONFIGS["llama-tied"], seed=0)
    layers = hf_layers(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-4)
    for step in range(2):
        optimizer.zero_grad()
        x, y = _tokens(step)
        loss = sum(causal_lm_loss(model(xi).logits, yi) for xi, yi in zip(x.chunk(2), y.chunk(2), strict=True)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
    got = {k: v for r in results for k, v in r.items()}
    for n, layer in enumerate(layers):
        for pname, p in layer.named_parameters(remove_duplicate=False):
            torch.testing.assert_close(got[f"{n}.{pname}"].detach(), p.detach(), rtol=1e-5, atol=1e-6)


def test_models_and_configs_the_splitter_cannot_handle_are_refused_with_the_reason(tmp_path):
    with pytest.raises(HFError, match="is not a Hugging Face \\*ForCausalLM"):
        hf_layers(torch.nn.Linear(2, 2))
    with pytest.raises(HFError, match='no "model_type"'):
        from_config({"n_layer": 2})
    with pytest.raises(HFError, match="model_type 'no-such-model'"):
        from_config({"model_type": "no-such-model"})
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(HFError, match="is not JSON"):
        from_config(bad)
    with pytest.raises(HFError, match="seq_len 64 is longer than the model's 32 positions"):
        hf_spec(CONFIGS["gpt2"], seq_len=64)


def test_split_by_module_names_as_torchtitan_names_them():
    model = from_config(CONFIGS["llama"])
    layers, sizes = split_model(model, [["model.embed_tokens", "model.layers.0"], ["model.layers.1", "model.layers.2",
                                        "model.layers.3", "model.norm", "lm_head"]])
    assert sizes == [2, 5] and layers[0] is model.model.embed_tokens and layers[-1] is model.lm_head
    with pytest.raises(SplitError, match="has no module 'model.layer.9'"):
        split_model(model, [["model.layer.9"]])
    with pytest.raises(SplitError, match="'model.layers.0.mlp' is inside 'model.layers.0'"):
        split_model(model, [["model.layers.0", "model.layers.0.mlp"]])
    with pytest.raises(SplitError, match="parameters lm_head.weight are in no named module"):
        split_model(model, [["model"]])
