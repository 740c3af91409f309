"""Hugging Face ``*ForCausalLM`` models (GPT-2, Llama, Mistral, Qwen2/3) as the layer list the
executor splits: ``[embedding, decoder layer x N, final norm and head]``.

Only one tensor, the hidden states, crosses a stage boundary: each decoder-layer wrapper
recomputes what the model's own forward would hand it, from the hidden states' shape alone:
the position ids (0..T-1), the rotary embeddings (Llama's family: the model's ``rotary_emb``,
a buffer and no weights, shared by every wrapper), and the causal mask (``create_causal_mask``,
or the sliding-window one for the layers that use it, exactly as the model's forward picks them).
Parameters are the model's own (no copies): the embedding and the head stay tied when the config
ties them (GPT-2's default), and the executor sums their gradients over the ranks holding them.

Causal LM training on full sequences only: no padding mask, no KV cache. The logits are
compared with targets already shifted by one token (`causal_lm_loss`). A model outside these
families, or one built with an attention implementation that is not causal without a mask, is
refused with the reason (`HFError`).

``transformers`` is an optional extra (``pip install -e '.[hf]'``); weights come from a config
(`from_config`), never from the hub.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backends.torch_exec.model import ModelSpec

__all__ = ["HFError", "causal_lm_loss", "from_config", "hf_layers", "hf_spec"]


class HFError(ValueError):
    """A Hugging Face model or config the splitter cannot handle, with the reason."""


def causal_lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross entropy (targets are the inputs shifted by one)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def _positions(h: Tensor) -> Tensor:
    return torch.arange(h.shape[1], device=h.device).unsqueeze(0)


def _mask(kind: str, config: Any, h: Tensor, positions: Tensor) -> Any:
    from transformers import masking_utils

    fn = masking_utils.create_sliding_window_causal_mask if kind == "sliding_attention" \
        else masking_utils.create_causal_mask
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"config": config, "inputs_embeds": h, "attention_mask": None, "position_ids": positions}
    for name in ("cache", "past_key_values"):
        if name in params:
            kwargs[name] = None
    if "cache_position" in params:
        kwargs["cache_position"] = positions[0]
    return fn(**kwargs)


def _hidden(out: Any) -> Tensor:
    """A decoder layer's hidden states (older transformers return a tuple)."""
    return out[0] if isinstance(out, tuple | list) else out


class GPT2Embedding(nn.Module):
    """Token and position embedding, then dropout (GPT2Model.forward's first lines)."""

    def __init__(self, wte: nn.Embedding, wpe: nn.Embedding, drop: nn.Module) -> None:
        super().__init__()
        self.wte, self.wpe, self.drop = wte, wpe, drop

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.wte(input_ids)
        return self.drop(h + self.wpe(_positions(h)))


class GPT2Layer(nn.Module):
    """One GPT2Block with the causal mask its model would give it."""

    def __init__(self, block: nn.Module, config: Any) -> None:
        super().__init__()
        self.block = block
        self._config = config

    def forward(self, h: Tensor) -> Tensor:
        positions = _positions(h)
        mask = _mask("full_attention", self._config, h, positions)
        return _hidden(self.block(h, None, mask, position_ids=positions, use_cache=False))


class Embedding(nn.Module):
    """Llama family: the token embedding."""

    def __init__(self, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.embed_tokens(input_ids)


class DecoderLayer(nn.Module):
    """Llama family: one decoder layer with its rotary embeddings and mask, recomputed here."""

    def __init__(self, layer: nn.Module, rotary: nn.Module, config: Any, kind: str) -> None:
        super().__init__()
        self.layer = layer
        self.rotary = rotary  # no parameters; the same module in every wrapper
        self._config = config
        self.kind = kind

    def forward(self, h: Tensor) -> Tensor:
        positions = _positions(h)
        mask = _mask(self.kind, self._config, h, positions)
        rope = self.rotary(h, positions)
        return _hidden(self.layer(h, attention_mask=mask, position_ids=positions, position_embeddings=rope,
                                  use_cache=False))


class Head(nn.Module):
    """The final norm and the LM head: hidden states to logits."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, h: Tensor) -> Tensor:
        return self.lm_head(self.norm(h))


_CAUSAL_WITHOUT_MASK = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def hf_layers(model: nn.Module) -> list[nn.Module]:
    """``[embedding, decoder layers..., head]`` of a Hugging Face ``*ForCausalLM``, sharing its
    parameters; split them with ``pre=1, post=1`` (the embedding joins stage 0, the head the last).

    Raises:
        HFError: the model is not a GPT-2 or Llama-family causal LM (the message says what was found).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "lm_head"):
        raise HFError(f"{type(model).__name__} is not a Hugging Face *ForCausalLM (no config or lm_head); "
                      "split it by module names instead (backends.torch_exec.split_model)")
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in _CAUSAL_WITHOUT_MASK:
        raise HFError(f"attention implementation {impl!r} is not supported; use one of "
                      f"{', '.join(_CAUSAL_WITHOUT_MASK)}")
    if getattr(config, "is_encoder_decoder", False):
        raise HFError(f"{type(model).__name__} is an encoder-decoder model; only decoder-only causal LMs split")
    gpt2 = getattr(model, "transformer", None)
    if gpt2 is not None and all(hasattr(gpt2, n) for n in ("wte", "wpe", "drop", "h", "ln_f")):
        return [GPT2Embedding(gpt2.wte, gpt2.wpe, gpt2.drop), *(GPT2Layer(b, config) for b in gpt2.h),
                Head(gpt2.ln_f, model.lm_head)]
    body = getattr(model, "model", None)
    if body is not None and all(hasattr(body, n) for n in ("embed_tokens", "layers", "norm", "rotary_emb")):
        kinds = _layer_kinds(config, len(body.layers))
        return [Embedding(body.embed_tokens),
                *(DecoderLayer(layer, body.rotary_emb, config, kind) for layer, kind in zip(body.layers, kinds,
                                                                                           strict=True)),
                Head(body.norm, model.lm_head)]
    raise HFError(f"{type(model).__name__} ({getattr(config, 'model_type', '?')}) is not a GPT-2 or Llama-family "
                  "layout (transformer.h or model.layers with rotary_emb); split it by module names instead "
                  "(backends.torch_exec.split_model)")


def _layer_kinds(config: Any, n: int) -> list[str]:
    """Which mask each decoder layer gets, as the model's forward chooses it."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types[:n])
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return ["sliding_attention"] * n
    return ["full_attention"] * n


def from_config(config: Any, seed: int = 0) -> nn.Module:
    """A ``*ForCausalLM`` with random weights from ``config`` (a transformers config object, a
    dict with ``model_type``, or a path to a config JSON), seeded: the same weights on every call."""
    try:
        import transformers
    except ImportError:
        raise HFError("Hugging Face models need transformers: pip install -e '.[hf]'") from None
    if isinstance(config, str | Path):
        path = Path(config)
        try:
            config = json.loads(path.read_text())
        except OSError as exc:
            raise HFError(f"cannot read the config {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise HFError(f"{path} is not JSON: {exc}") from None
    if isinstance(config, dict):
        data = dict(config)
        kind = data.pop("model_type", None)
        if not kind:
            raise HFError("the config has no \"model_type\" (e.g. \"gpt2\", \"llama\", \"mistral\", \"qwen2\")")
        try:
            config = transformers.AutoConfig.for_model(kind, **data)
        except (ValueError, KeyError) as exc:
            raise HFError(f"model_type {kind!r}: {exc}") from None
    torch.manual_seed(seed)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except ValueError as exc:
        raise HFError(f"cannot build a causal LM from the config: {exc}") from None
    return model.train()


def _build(config: Any, seed: int) -> list[nn.Module]:
    return hf_layers(from_config(config, seed))


def _batch(vocab: int, seq_len: int, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def hf_spec(config: Any, *, seq_len: int = 16, seed: int = 0, name: str | None = None) -> ModelSpec:
    """A `ModelSpec` of the causal LM ``config`` describes (random weights from ``seed``; random
    token batches of ``seq_len`` tokens), for ``synth run`` and the executor's tests."""
    model = from_config(config, seed)  # checks the config once, here, before any process starts
    hf_layers(model)
    vocab = model.config.vocab_size
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise HFError(f"seq_len {seq_len} is longer than the model's {limit} positions; use --seq-len {limit} or less")
    data = config if not isinstance(config, Path) else str(config)
    label = name or f"hf:{getattr(model.config, 'model_type', 'model')}"
    return ModelSpec(label, functools.partial(_build, data, seed), causal_lm_loss,
                     functools.partial(_batch, vocab, seq_len), pre=1, post=1)
