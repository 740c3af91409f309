"""The cost model's specs and formulas against public facts (each with its source)."""

from __future__ import annotations

import json

import pytest

from synth.costs import CostModelError, TransformerSpec, hardware, preset, spec_from_hf_config, total_params
from synth.costs.formulas import attention_pairs, block_params, embedding_params, head_work, layer_work
from synth.sizes import format_size, parse_size

# Exact parameter counts as the Hugging Face model pages / safetensors indexes report them
# (meta-llama/Llama-2-{7,13,70}b-hf, meta-llama/Meta-Llama-3-{8,70}B). The issue asks for 1%;
# the formula reproduces them to the parameter, so the test asks for that.
PUBLIC_PARAMS = {
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
}


@pytest.mark.parametrize("name", sorted(PUBLIC_PARAMS))
def test_preset_parameter_counts_match_the_released_models(name):
    assert total_params(preset(name)) == PUBLIC_PARAMS[name]


@pytest.mark.parametrize(("name", "size"), [("gpt-1.5b", 1.5e9), ("cm-9.6b", 9.6e9), ("cm-21b", 21e9),
                                            ("cm-38.5b", 38.5e9), ("cm-98.5b", 98.5e9)])
def test_paper_presets_land_on_their_named_size(name, size):
    # The ZB paper's 1.5B and the Controllable Memory paper's models are named by size; our
    # reconstruction of their shapes must agree with the name (1.5%: names are rounded).
    assert abs(total_params(preset(name)) / size - 1) < 0.015


def test_gpt2_config_json_gives_gpt2_small():
    # GPT-2 small: 124,439,808 parameters (Hugging Face "gpt2", tied embeddings, 1024 positions).
    config = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
              "n_positions": 1024, "n_inner": None, "resid_pdrop": 0.1}
    spec = spec_from_hf_config(config)
    assert total_params(spec) == 124_439_808
    assert spec.seq_len == 1024 and spec.dropout and spec.tied_embeddings and not spec.gated


def test_llama_and_mistral_config_json(tmp_path):
    llama = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
             "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
             "max_position_embeddings": 4096, "tie_word_embeddings": False}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(llama))
    spec = spec_from_hf_config(path)
    assert total_params(spec) == PUBLIC_PARAMS["llama2-7b"]
    assert spec.seq_len == 4096 and spec.gated and spec.kv_heads == 32
    # Mistral-7B-v0.1: 7,241,732,096 parameters, GQA with 8 KV heads, 4096-token sliding window.
    mistral = {**llama, "model_type": "mistral", "num_key_value_heads": 8, "intermediate_size": 14336,
               "sliding_window": 4096, "max_position_embeddings": 32768}
    spec = spec_from_hf_config(mistral, seq_len=8192)
    assert total_params(spec) == 7_241_732_096
    assert spec.attention_window == 4096 and spec.seq_len == 8192


def test_config_json_errors_name_the_problem(tmp_path):
    with pytest.raises(CostModelError, match="missing field.*intermediate_size.*vocab_size"):
        spec_from_hf_config({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4})
    with pytest.raises(CostModelError, match="n_embd"):
        spec_from_hf_config({"model_type": "gpt2", "n_layer": 2, "n_head": 4, "vocab_size": 100})
    with pytest.raises(CostModelError, match="no such file"):
        spec_from_hf_config(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CostModelError, match="not a readable JSON"):
        spec_from_hf_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(CostModelError, match="one JSON object"):
        spec_from_hf_config(bad)
    with pytest.raises(CostModelError, match="exceeds the model's 1024 learned positions"):
        spec_from_hf_config({"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 100,
                             "n_positions": 1024}, seq_len=2048)


@pytest.mark.parametrize(("changes", "message"), [
    ({"layers": 0}, "layers must be a positive integer"),
    ({"hidden": -8}, "hidden must be a positive integer"),
    ({"seq_len": 1.5}, "seq_len must be a positive integer"),
    ({"heads": 3}, "not divisible by heads"),
    ({"kv_heads": 3}, "multiple of kv_heads"),
    ({"dtype": "int8"}, "dtype 'int8'"),
    ({"micro_batch": True}, "micro_batch must be a positive integer"),
])
def test_bad_spec_sizes_are_refused(changes, message):
    with pytest.raises(CostModelError, match=message):
        preset("llama2-7b", **changes)


def test_unknown_names_list_the_presets():
    with pytest.raises(CostModelError, match="presets: gpt-1.5b, llama2-7b"):
        preset("llama9")
    with pytest.raises(CostModelError, match="presets: a100-40gb"):
        hardware("tpu")
    with pytest.raises(CostModelError, match="efficiency"):
        hardware("a100-40gb", efficiency=1.5)


def test_korthikanti_activation_formula_for_one_layer():
    # Korthikanti et al. 2022, eq. (2): 34 s b h + 5 a s^2 b bytes per layer (16-bit activations,
    # dropout, no tensor/sequence parallelism, attention scores kept).
    spec = preset("gpt-1.5b", flash_attention=False, micro_batch=2)
    s, b, h, a = spec.seq_len, spec.micro_batch, spec.hidden, spec.heads
    assert layer_work(spec, 0, s).act == 34 * s * b * h + 5 * a * s * s * b
    # With a fused kernel the s^2 terms go and only the fp32 log-sum-exp (4 a s b) remains.
    assert layer_work(spec.with_(flash_attention=True), 0, s).act == 34 * s * b * h + 4 * a * s * b


def test_forward_flops_are_two_per_parameter_per_token_plus_attention():
    # The usual estimate: 2 x (non-embedding params) x tokens + causal attention 2 b s^2 q per layer
    # (Kaplan et al. 2020, Table 1, with the causal half). Norm and bias parameters carry no GEMM
    # FLOPs, so the two agree to well under 1%.
    for name in ("llama2-13b", "llama3-8b", "gpt-1.5b"):
        spec = preset(name)
        s, b = spec.seq_len, spec.micro_batch
        forward = spec.layers * layer_work(spec, 0, s).f + head_work(spec, 0, s).f
        matrix_params = total_params(spec) - embedding_params(spec) + (spec.vocab * spec.hidden
                                                                        if spec.tied_embeddings else 0)
        estimate = 2 * matrix_params * b * s + spec.layers * 2 * b * s * (s + 1) * spec.q_dim
        assert abs(forward / estimate - 1) < 0.005, name


def test_b_and_w_of_a_linear_layer_equal_its_forward():
    # A linear layer's input grad and weight grad are each one GEMM of the forward's size.
    spec = preset("llama3-8b")
    head = head_work(spec, 0, spec.seq_len)
    assert head.f == head.b == head.w == 2 * spec.tokens * spec.hidden * spec.vocab
    layer = layer_work(spec, 0, spec.seq_len)
    linear = 2 * spec.tokens * (block_params(spec) - 2 * spec.hidden)  # RMSNorm weights carry no GEMM
    assert layer.w == linear
    attention = layer.f - linear
    assert layer.b - linear == pytest.approx(2.5 * attention)  # FlashAttention-2: 5 GEMMs vs 2
    assert layer.useful == pytest.approx(3 * (linear + attention))


def test_attention_pairs_closed_forms():
    assert attention_pairs(0, 10) == 55
    assert attention_pairs(3, 10) == 55 - 6
    assert attention_pairs(0, 10, window=4) == 1 + 2 + 3 + 4 * 7
    assert sum(attention_pairs(a, b, 5) for a, b in [(0, 3), (3, 9), (9, 20)]) == attention_pairs(0, 20, 5)


def test_wact_is_bounded_by_act_and_covers_linear_inputs():
    spec = preset("gpt-1.5b")
    s, b, h = spec.seq_len, spec.micro_batch, spec.hidden
    work = layer_work(spec, 0, s)
    linear_inputs = 2 * s * b * (h + h + h + 4 * h)  # Korthikanti's 2+2+2+8 sbh
    assert linear_inputs < work.wact <= work.act


@pytest.mark.parametrize(("text", "value"), [("40GB", 40e9), ("40GiB", 40 * 2**30), ("4e10", 4e10),
                                             ("1.5 MiB", 1.5 * 2**20), ("512", 512.0), (2048, 2048.0)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["40 gigs", "-1GB", "0", "GB", "nan", True])
def test_parse_size_refuses_garbage(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_format_size():
    assert format_size(2**31) == "2.00 GiB"
    assert format_size(1.5e9, "GB", 1) == "1.5 GB"


def test_spec_is_frozen_and_with_revalidates():
    spec = preset("llama2-7b")
    with pytest.raises(AttributeError):
        spec.layers = 3  # type: ignore[misc]
    assert spec.with_(seq_len=8192).seq_len == 8192
    assert preset("llama3-8b").with_(hidden=2048, heads=16).d_head == 128  # derived widths follow the shape
    assert isinstance(spec, TransformerSpec) and spec.kv_dim == spec.q_dim == 4096
