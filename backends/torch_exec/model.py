"""Models the executor runs: `ModelSpec` (what the executor needs to know of a model) and the
small causal GPT that ships as the example and test model.

A model is a flat list of layer modules ``[pre..., body..., post...]``: the ``pre`` layers (an
embedding) always join the first stage, the ``post`` layers (a head) the last one, and the body
is split into the schedule's stages (``backends.torch_exec.stages``). Every rank builds the
same list from the same seed, so a rank's stages hold exactly the weights a single-process run
of the whole model holds; the reference run lives in ``backends.torch_exec.reference``.

Sequence slices (``k > 1``): a layer with ``slice_aware = True`` is called as
``layer(x, sl)`` with a `SliceIO` that gives the slice's first token position and the earlier
slices' keys and values, and takes this slice's own. The GPT's embedding and blocks are slice
aware; a model with none cannot be sliced (``ModelSpec.seq_dim is None``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPTConfig", "MODELS", "ModelSpec", "SliceIO", "gpt_layers", "model_spec", "sequential_spec", "tiny_gpt"]


@dataclass(slots=True)
class SliceIO:
    """What one slice-aware layer sees of a sequence slice.

    Attributes:
        offset: position of the slice's first token in the whole sequence.
        past: the earlier slices' ``(key, value)`` of this layer, in slice order.
        present: set by the layer: this slice's ``(key, value)``, for the later slices.
    """

    offset: int
    past: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    present: tuple[Tensor, Tensor] | None = None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the executor can split into stages and train.

    Attributes:
        name: shown in reports.
        build_layers: ``build_layers() -> list[nn.Module]``, the whole model in order; must give
            the same weights on every call (seed it). Picklable (a module-level function or a
            ``functools.partial`` of one), since ranks are separate processes.
        loss_fn: ``loss_fn(output, target) -> scalar``, the mean loss of one unit's output.
        make_batch: ``make_batch(batch_size, seed) -> (inputs, targets)``, a deterministic batch.
        pre: leading layers that always belong to the first stage (an embedding).
        post: trailing layers that always belong to the last stage (a head).
        seq_dim: the dim of inputs and targets that sequence slices cut; None if the model
            cannot run sequence slices (no slice-aware layers).
        seq_len: the sequence length along ``seq_dim`` (slices must divide it).
    """

    name: str
    build_layers: Callable[[], list[nn.Module]]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    make_batch: Callable[[int, int], tuple[Tensor, Tensor]]
    pre: int = 0
    post: int = 0
    seq_dim: int | None = None
    seq_len: int | None = None


# --------------------------------------------------------------------------- the tiny GPT


@dataclass(frozen=True, slots=True)
class GPTConfig:
    """A small causal GPT: token and position embedding, pre-norm blocks (causal attention,
    GELU MLP), final norm and LM head (untied, so that stages share no weights).

    Attributes:
        vocab: vocabulary size.
        seq_len: tokens per sequence.
        hidden: model width.
        heads: attention heads (must divide ``hidden``).
        layers: transformer blocks.
        mlp_ratio: MLP width over ``hidden``.
        dropout: dropout after the embedding, the attention projection and the MLP.
        seed: weight initialisation seed.
    """

    vocab: int = 64
    seq_len: int = 16
    hidden: int = 32
    heads: int = 2
    layers: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab", "seq_len", "hidden", "heads", "layers", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"GPTConfig.heads ({self.heads}) must divide hidden ({self.hidden})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


class Embedding(nn.Module):
    """Token plus learned position embedding; positions start at the slice's offset."""

    slice_aware = True

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.hidden)
        self.pos = nn.Embedding(cfg.seq_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, idx: Tensor, sl: SliceIO | None = None) -> Tensor:
        offset = sl.offset if sl is not None else 0
        pos = torch.arange(offset, offset + idx.shape[1], device=idx.device)
        return self.drop(self.tok(idx) + self.pos(pos))


class Block(nn.Module):
    """Pre-norm transformer block; with a `SliceIO`, attention also reads earlier slices' K/V."""

    slice_aware = True

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.fc = nn.Linear(cfg.hidden, cfg.mlp_ratio * cfg.hidden)
        self.out = nn.Linear(cfg.mlp_ratio * cfg.hidden, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, sl: SliceIO | None = None) -> Tensor:
        x = x + self.drop(self.proj(self._attention(self.ln1(x), sl)))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))

    def _attention(self, h: Tensor, sl: SliceIO | None) -> Tensor:
        b, t, c = h.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(h).split(c, dim=2))
        if sl is None or not sl.past:
            if sl is not None:
                sl.present = (k, v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            sl.present = (k, v)
            keys = torch.cat([pk for pk, _ in sl.past] + [k], dim=2)
            values = torch.cat([pv for _, pv in sl.past] + [v], dim=2)
            before = keys.shape[2] - t  # tokens of the earlier slices
            # query n (position before + n) sees keys 0..before + n: causal across slices
            mask = torch.ones(t, keys.shape[2], dtype=torch.bool, device=h.device).tril(diagonal=before)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return y.transpose(1, 2).reshape(b, t, c)


class Head(nn.Module):
    """Final layer norm and LM head: hidden states to logits."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(cfg.hidden)
        self.lm = nn.Linear(cfg.hidden, cfg.vocab)

    def forward(self, x: Tensor) -> Tensor:
        return self.lm(self.ln(x))


def gpt_layers(cfg: GPTConfig) -> list[nn.Module]:
    """``[Embedding, Block x layers, Head]``, initialised from ``cfg.seed`` (GPT-2 style init)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    layers: list[nn.Module] = [Embedding(cfg), *(Block(cfg) for _ in range(cfg.layers)), Head(cfg)]
    for layer in layers:
        for name, param in layer.named_parameters():
            if param.is_meta:
                continue
            with torch.no_grad():
                if name.endswith("bias"):
                    param.zero_()
                elif param.dim() == 1:  # layer norm scale
                    param.fill_(1.0)
                else:
                    std = 0.02 / math.sqrt(2 * cfg.layers) if name in ("proj.weight", "out.weight") else 0.02
                    param.copy_(torch.randn(param.shape, generator=gen) * std)
    return layers


def gpt_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross entropy over the unit's tokens."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def gpt_batch(cfg: GPTConfig, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Random token sequences; the targets are the inputs shifted by one token."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab, (batch_size, cfg.seq_len + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def tiny_gpt(**overrides: object) -> ModelSpec:
    """The example GPT (`GPTConfig` defaults: hidden 32, 2 heads, seq 16, vocab 64) as a `ModelSpec`."""
    cfg = replace(GPTConfig(), **overrides)
    return ModelSpec(
        name="tiny-gpt",
        build_layers=functools.partial(gpt_layers, cfg),
        loss_fn=gpt_loss,
        make_batch=functools.partial(gpt_batch, cfg),
        pre=1,
        post=1,
        seq_dim=1,
        seq_len=cfg.seq_len,
    )


def sequential_spec(
    name: str,
    build: Callable[[], nn.Sequential],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    make_batch: Callable[[int, int], tuple[Tensor, Tensor]],
) -> ModelSpec:
    """A `ModelSpec` for an ``nn.Sequential``: its children are the layers, split evenly."""
    return ModelSpec(name, functools.partial(_children, build), loss_fn, make_batch)


def _children(build: Callable[[], nn.Sequential]) -> list[nn.Module]:
    return list(build().children())


MODELS: dict[str, Callable[..., ModelSpec]] = {"tiny-gpt": tiny_gpt}


def model_spec(name: str, **options: object) -> ModelSpec:
    """The registered model ``name`` built with ``options``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad options.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    try:
        return factory(**options)
    except TypeError as exc:
        raise ValueError(f"model {name!r}: {exc}") from None
