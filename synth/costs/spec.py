"""`TransformerSpec`: the model the cost model prices, its presets, and Hugging Face configs.

A spec is a decoder-only transformer: an embedding, ``layers`` identical blocks (attention and
MLP, each behind a norm, with residual adds) and a head (final norm, LM head, cross-entropy
loss). The formulas that turn a spec into FLOPs and bytes live in ``synth.costs.formulas``;
stages, slices and the `Problem` in ``synth.costs.problem``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ir.files import InputFileError, read_input

__all__ = ["DTYPE_BYTES", "PRESETS", "CostModelError", "TransformerSpec", "preset", "spec_from_hf_config"]

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


class CostModelError(ValueError):
    """Bad input to the cost model; the message says what is wrong and how to fix it."""


@dataclass(frozen=True, slots=True)
class TransformerSpec:
    """A decoder-only transformer and the shape of one microbatch.

    Attributes:
        name: label for reports.
        layers: transformer blocks.
        hidden: model width h.
        heads: attention (query) heads a.
        ffn: MLP inner width.
        vocab: vocabulary size V (rows of the embedding and the LM head).
        kv_heads: key/value heads (grouped-query attention); ``None`` means ``heads``.
        head_dim: width of one head; ``None`` means ``hidden // heads``.
        gated: gated MLP (SwiGLU: gate, up and down projections) instead of two projections.
        tied_embeddings: the LM head reuses the embedding matrix.
        seq_len: tokens per sequence s.
        micro_batch: sequences per microbatch b.
        dtype: ``bf16``, ``fp16`` or ``fp32``: weights, activations and the FLOP rate used.
        flash_attention: fused attention (no s x s score matrix kept; backward recomputes it).
        bias: biases on every linear layer (GPT-2 / Megatron GPT).
        qkv_bias: biases on the query/key/value projections only (Qwen2).
        layernorm: LayerNorm (weight and bias) instead of RMSNorm (weight only).
        learned_positions: rows of a learned position embedding (GPT-2); 0 for rotary. Only the
            parameter count reads it (a Hugging Face config's ``n_positions`` also bounds ``seq_len``).
        dropout: dropout after attention probabilities and after each block output (GPT);
            its 1-byte masks are kept for backward.
        attention_window: sliding-window attention span (Mistral); ``None`` for full causal.
    """

    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    kv_heads: int | None = None
    head_dim: int | None = None
    gated: bool = True
    tied_embeddings: bool = False
    seq_len: int = 4096
    micro_batch: int = 1
    dtype: str = "bf16"
    flash_attention: bool = True
    bias: bool = False
    qkv_bias: bool = False
    layernorm: bool = False
    learned_positions: int = 0
    dropout: bool = False
    attention_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "ffn", "vocab", "seq_len", "micro_batch"):
            _check_positive(self.name, name, getattr(self, name))
        for name in ("kv_heads", "head_dim", "attention_window"):
            if getattr(self, name) is not None:
                _check_positive(self.name, name, getattr(self, name))
        if isinstance(self.learned_positions, bool) or not isinstance(self.learned_positions, int) \
                or self.learned_positions < 0:
            raise CostModelError(f"{self.name}: learned_positions must be an integer >= 0, "
                                 f"got {self.learned_positions!r}")
        if self.head_dim is None and self.hidden % self.heads:
            raise CostModelError(f"{self.name}: hidden {self.hidden} is not divisible by heads {self.heads}; "
                                 "give head_dim explicitly")
        if self.heads % self.n_kv_heads:
            raise CostModelError(f"{self.name}: heads {self.heads} must be a multiple of kv_heads {self.n_kv_heads}")
        if self.dtype not in DTYPE_BYTES:
            raise CostModelError(f"{self.name}: dtype {self.dtype!r} is not one of {', '.join(DTYPE_BYTES)}")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads in effect (``kv_heads``, else ``heads``)."""
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def d_head(self) -> int:
        """Width of one head in effect (``head_dim``, else ``hidden // heads``)."""
        return self.hidden // self.heads if self.head_dim is None else self.head_dim

    @property
    def q_dim(self) -> int:
        """Width of all query heads together (``heads * d_head``)."""
        return self.heads * self.d_head

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together (``n_kv_heads * d_head``)."""
        return self.n_kv_heads * self.d_head

    @property
    def tokens(self) -> int:
        """Tokens per microbatch (``micro_batch * seq_len``)."""
        return self.micro_batch * self.seq_len

    def with_(self, **changes: Any) -> TransformerSpec:
        """A copy with some fields changed (``spec.with_(seq_len=8192)``), validated again."""
        return replace(self, **changes)


def _check_positive(model: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CostModelError(f"{model}: {name} must be a positive integer, got {value!r}")


def _gpt(name: str, layers: int, hidden: int, heads: int, seq_len: int, micro_batch: int) -> TransformerSpec:
    """A Megatron GPT: LayerNorm, biases, GeLU MLP of width 4h, learned positions, tied embeddings,
    dropout, the GPT-2 vocabulary padded to a multiple of 128 (50,257 -> 50,304) as Megatron does."""
    return TransformerSpec(name, layers, hidden, heads, 4 * hidden, 50304, gated=False, tied_embeddings=True,
                           seq_len=seq_len, micro_batch=micro_batch, bias=True, layernorm=True,
                           learned_positions=seq_len, dropout=True)


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int,
           seq_len: int) -> TransformerSpec:
    """A Llama: RMSNorm, no biases, SwiGLU MLP, rotary positions, untied embeddings, no dropout."""
    return TransformerSpec(name, layers, hidden, heads, ffn, vocab, kv_heads=kv_heads, seq_len=seq_len)


# Sources:
# - gpt-1.5b: ZB paper (Qi et al. 2023, arXiv 2401.10241) Table 3: 22 layers, 24 heads, hidden 2304,
#   sequence 1024 (the micro-batch size here is ours).
# - llama2-*: Touvron et al. 2023 (arXiv 2307.09288) and the released config.json files: 7B 32 layers,
#   h 4096, 32 heads, ffn 11008; 13B 40/5120/40/13824; 70B 80/8192/64 (8 KV heads)/28672; vocab 32000;
#   context 4096.
# - llama3-*: Meta Llama 3 config.json files: 8B 32/4096/32 (8 KV)/14336; 70B 80/8192/64 (8 KV)/28672;
#   vocab 128256; context 8192.
# - cm-*: the Controllable Memory paper's GPT models (Qi et al. 2024, arXiv 2405.15362). The paper's
#   table was not in our reference corpora: layers and widths are recalled (30/5120, 46/6144, 62/7168,
#   78/10240, head dim 128, as Megatron GPTs) and checked only by the parameter count landing within
#   1.5% of the named size (tests/synth/test_costs.py). Verify against the paper before quoting them.
PRESETS: dict[str, TransformerSpec] = {
    spec.name: spec
    for spec in (
        _gpt("gpt-1.5b", 22, 2304, 24, seq_len=1024, micro_batch=1),
        _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
        _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
        _llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
        _gpt("cm-9.6b", 30, 5120, 40, seq_len=4096, micro_batch=1),
        _gpt("cm-21b", 46, 6144, 48, seq_len=4096, micro_batch=1),
        _gpt("cm-38.5b", 62, 7168, 56, seq_len=4096, micro_batch=1),
        _gpt("cm-98.5b", 78, 10240, 80, seq_len=4096, micro_batch=1),
    )
}


def preset(name: str, **changes: Any) -> TransformerSpec:
    """A preset by name, optionally changed (``preset("llama2-13b", seq_len=8192)``).

    Raises:
        CostModelError: unknown name (the message lists the presets).
    """
    return pick(PRESETS, name, "model", changes, hint="; or give a path to a Hugging Face config.json")


def pick(table: dict[str, Any], name: str, what: str, changes: dict[str, Any], hint: str = "") -> Any:
    """``table[name]``, with ``changes`` applied through its ``with_``; an unknown name raises
    `CostModelError` listing the table's names."""
    try:
        entry = table[name]
    except KeyError:
        raise CostModelError(f"unknown {what} {name!r}; presets: {', '.join(table)}{hint}") from None
    return entry.with_(**changes) if changes else entry


# Hugging Face field names. Llama, Mistral, Qwen2/3 and most newer decoders share the first set;
# GPT-2 has its own.
_LLAMA_FIELDS = {"num_hidden_layers": "layers", "hidden_size": "hidden", "num_attention_heads": "heads",
                 "intermediate_size": "ffn", "vocab_size": "vocab"}
_GPT2_FIELDS = {"n_layer": "layers", "n_embd": "hidden", "n_head": "heads", "vocab_size": "vocab"}


def spec_from_hf_config(
    source: str | Path | dict[str, Any], *, seq_len: int | None = None, micro_batch: int = 1,
    dtype: str = "bf16", flash_attention: bool = True,
) -> TransformerSpec:
    """A spec from a Hugging Face ``config.json`` (a path or the parsed dict).

    Reads Llama/Mistral/Qwen field names (``num_hidden_layers``, ``hidden_size``,
    ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, ``vocab_size``,
    ``head_dim``, ``tie_word_embeddings``, ``attention_bias``, ``sliding_window``) or GPT-2's
    (``n_layer``, ``n_embd``, ``n_head``, ``n_inner``, ``n_positions``). ``seq_len`` defaults to
    the smaller of the model's ``max_position_embeddings`` (``n_positions``) and 4096.

    Raises:
        CostModelError: unreadable file, or required fields missing (all of them are named).
    """
    config, label = _read_config(source)
    model_type = str(config.get("model_type", "")).lower()
    gpt2 = model_type == "gpt2" or ("n_layer" in config and "num_hidden_layers" not in config)
    fields = _GPT2_FIELDS if gpt2 else _LLAMA_FIELDS
    missing = [key for key in fields if config.get(key) is None]
    if missing:
        raise CostModelError(
            f"{label}: missing field(s) {', '.join(missing)}; a {'GPT-2' if gpt2 else 'Llama/Mistral/Qwen'}-style "
            f"config.json needs {', '.join(fields)}")
    for key in (*fields, "n_positions", "max_position_embeddings", "n_inner", "num_key_value_heads", "head_dim",
                "sliding_window"):
        config = {**config, key: _whole(config, key, label)} if key in config else config
    values = {name: config[key] for key, name in fields.items()}
    max_positions = config.get("n_positions" if gpt2 else "max_position_embeddings")
    if seq_len is None:
        seq_len = min(int(max_positions), 4096) if max_positions else 4096
    if gpt2 and max_positions and seq_len > int(max_positions):
        raise CostModelError(f"{label}: seq_len {seq_len} exceeds the model's {max_positions} learned positions "
                             "(n_positions); use a shorter --seq-len")
    common = dict(seq_len=seq_len, micro_batch=micro_batch, dtype=dtype, flash_attention=flash_attention)
    name = str(config.get("_name_or_path") or Path(label).parent.name or model_type or "hf-model")
    try:
        if gpt2:
            return TransformerSpec(
                name, ffn=config.get("n_inner") or 4 * values["hidden"], gated=False,
                tied_embeddings=bool(config.get("tie_word_embeddings", True)), bias=True, layernorm=True,
                learned_positions=int(max_positions or seq_len),
                dropout=any(float(config.get(k) or 0) > 0 for k in ("resid_pdrop", "attn_pdrop", "embd_pdrop")),
                **values, **common)
        window = config.get("sliding_window")
        if model_type.startswith("qwen") and not config.get("use_sliding_window", False):
            window = None
        return TransformerSpec(
            name, kv_heads=config.get("num_key_value_heads"), head_dim=config.get("head_dim"),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            bias=bool(config.get("mlp_bias", False)) and bool(config.get("attention_bias", False)),
            qkv_bias=bool(config.get("attention_bias", model_type == "qwen2")),
            attention_window=int(window) if window else None, **values, **common)
    except TypeError as exc:
        raise CostModelError(f"{label}: a field has the wrong type ({exc})") from None


# Larger than any real model's dimension or context, and small enough for exact float arithmetic.
_LARGEST_FIELD = 2**40


def _whole(config: dict[str, Any], key: str, label: str) -> int | None:
    """``config[key]`` as a positive whole number (None stays None), or `CostModelError` naming the
    file, the field, the value and what is allowed."""
    value = config[key]
    if value is None:
        return None
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if not whole or not 1 <= value <= _LARGEST_FIELD:
        raise CostModelError(f"{label}: field {key!r} is {value!r}; it must be a whole number from 1 to "
                             f"{_LARGEST_FIELD:,}")
    return int(value)


def _read_config(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(source, dict):
        return source, "config"
    path = Path(source)
    try:
        config = json.loads(read_input(path, "model config"))
    except InputFileError as exc:
        fix = "; give a preset name or a Hugging Face config.json" if not path.exists() else ""
        raise CostModelError(f"{exc}{fix}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CostModelError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(config, dict):
        raise CostModelError(f"{path}: a config.json holds one JSON object, found {type(config).__name__}")
    return config, str(path)
