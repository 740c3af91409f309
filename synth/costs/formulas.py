"""First-principles FLOPs, bytes and parameter counts of a decoder-only transformer.

Everything here is a pure function of a `TransformerSpec` and a token range ``[t0, t1)`` of each
sequence (the whole sequence, or one Seq1F1B slice of it). Notation: b micro-batch, t = t1 - t0
tokens in the range, h hidden, q = heads * head_dim, kv = kv_heads * head_dim, f ffn width,
V vocab, e bytes per element of the dtype, a heads.

FLOPs (a multiply-add is 2 FLOPs; biases, norms, activations and softmax are memory-bound and
not counted, as in Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", Appendix):
- linear layers of a block hold ``P = h q + 2 h kv + q h + n f h`` weights (n = 3 gated, 2 not);
  forward ``F = 2 b t P``; the input-gradient backward ``B`` and the weight-gradient backward ``W``
  are each one more GEMM of the same size, ``2 b t P`` (the ZB paper's B/W split, Qi et al. 2023).
- causal attention: each query i attends keys ``0..i`` (or the last ``window`` of them), so the
  range holds ``pairs = sum_{i=t0}^{t1-1} min(i + 1, window)`` query-key pairs; Q K^T and the
  product with V cost ``2 q`` FLOPs per pair each: ``F_attn = 4 b q pairs``. Over a whole sequence
  ``pairs = s (s + 1) / 2``, so ``F_attn ~ 2 b s^2 q``: half of the non-causal count
  ``4 b s^2 h`` of Narayanan et al. A fused kernel (FlashAttention) skips masked blocks; a plain
  one computes the full ``t x t1`` score rectangle, and that is what it is charged.
- attention backward: 4 GEMMs against the forward's 2 (``2 F_attn``); FlashAttention's backward
  also recomputes Q K^T, 5 GEMMs (``2.5 F_attn``; Dao 2023, FlashAttention-2, Sec. 3.1).
  Attention has no weights, so it all lands in B.
- LM head: ``2 b t h V`` each for F, B and W. The embedding lookup and its scatter-add gradient
  are memory-bound: 0 FLOPs.
- Model FLOPs (for MFU) count F + B + W with attention counted causally and once (no recompute):
  3x the useful forward FLOPs.

Activation bytes kept for backward by one block (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", Sec. 4.1, without tensor or sequence parallelism,
generalised to GQA, gated MLPs and token ranges):
- attention: norm input ``e b t h``, QKV input ``e b t h``, Q ``e b t q``, K and V ``2 e b t kv``,
  attention output (input of the output projection) ``e b t q``; without a fused kernel the softmax
  ``e a b t t1`` (plus with dropout its 1-byte mask ``a b t t1`` and output ``e a b t t1``); a fused
  kernel keeps only the fp32 log-sum-exp ``4 a b t``; the output dropout mask ``b t h``.
- MLP: norm input ``e b t h``, first projection input ``e b t h``; gated: gate output, up output
  and down input ``3 e b t f``; not gated: activation input and second projection input
  ``2 e b t f``; the output dropout mask ``b t h``.
With GPT's shapes (q = kv = h, f = 4h, dropout, e = 2, no fused attention) this is
``34 s b h + 5 a s^2 b`` for a whole sequence, Korthikanti's equation (2).

``wact``, what W still needs once B is done: every linear layer's input and its output gradient
(the ZB implementation's WeightGradStore keeps both pairs), capped at ``act`` because the IR's
memory model frees at B and W only and never grows at B. With GPT's shapes and a fused kernel
that is 14 sbh of inputs plus 18 sbh of output gradients, 32 sbh: the W memory the ZB paper's
Table 1 lists (as we recall it; the table was not in our reference corpora).
"""

from __future__ import annotations

from dataclasses import dataclass

from synth.costs.spec import TransformerSpec

__all__ = [
    "Work",
    "attention_pairs",
    "block_params",
    "boundary_bytes",
    "embedding_params",
    "embedding_work",
    "head_params",
    "head_work",
    "layer_work",
    "stage_input_bytes",
    "total_params",
]

ID_BYTES = 8  # token ids are int64


@dataclass(frozen=True, slots=True)
class Work:
    """FLOPs and bytes of one model part over one token range of a microbatch.

    Attributes:
        f: forward FLOPs executed.
        b: input-gradient backward FLOPs executed.
        w: weight-gradient backward FLOPs.
        useful: model FLOPs of F + B + W (causal attention once), for MFU.
        act: bytes the forward keeps for the backward.
        wact: the part of ``act`` W needs after B (``<= act``).
    """

    f: float = 0.0
    b: float = 0.0
    w: float = 0.0
    useful: float = 0.0
    act: float = 0.0
    wact: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.f + other.f, self.b + other.b, self.w + other.w, self.useful + other.useful,
                    self.act + other.act, self.wact + other.wact)

    def __mul__(self, n: float) -> Work:
        return Work(self.f * n, self.b * n, self.w * n, self.useful * n, self.act * n, self.wact * n)

    __rmul__ = __mul__


def _norm_params(spec: TransformerSpec) -> int:
    return 2 * spec.hidden if spec.layernorm else spec.hidden


def _linear_weights(spec: TransformerSpec) -> int:
    """Weights of a block's linear layers: ``h q + 2 h kv + q h + n f h``."""
    h, f = spec.hidden, spec.ffn
    return h * spec.q_dim + 2 * h * spec.kv_dim + spec.q_dim * h + (3 if spec.gated else 2) * h * f


def block_params(spec: TransformerSpec) -> int:
    """Parameters of one transformer block: linear weights, their biases, two norms."""
    h, f = spec.hidden, spec.ffn
    biases = 0
    if spec.bias:
        biases = spec.q_dim + 2 * spec.kv_dim + h + (2 * f if spec.gated else f) + h
    elif spec.qkv_bias:
        biases = spec.q_dim + 2 * spec.kv_dim
    return _linear_weights(spec) + biases + 2 * _norm_params(spec)


def embedding_params(spec: TransformerSpec) -> int:
    """Token embedding ``V h`` plus learned positions (GPT-2)."""
    return (spec.vocab + spec.learned_positions) * spec.hidden


def head_params(spec: TransformerSpec, *, count_tied: bool = False) -> int:
    """Final norm plus the LM head ``V h``; a tied head reuses the embedding, so its matrix counts
    only with ``count_tied`` (memory: the last stage holds its own copy, as Megatron does)."""
    matrix = spec.vocab * spec.hidden if (count_tied or not spec.tied_embeddings) else 0
    return _norm_params(spec) + matrix


def total_params(spec: TransformerSpec) -> int:
    """Parameters of the model (a tied matrix counted once)."""
    return embedding_params(spec) + spec.layers * block_params(spec) + head_params(spec)


def attention_pairs(t0: int, t1: int, window: int | None = None) -> int:
    """Causal query-key pairs of queries ``t0..t1-1``: ``sum_i min(i + 1, window)``."""
    def prefix(n: int) -> int:  # pairs of queries 0..n-1
        if window is None or n <= window:
            return n * (n + 1) // 2
        return window * (window + 1) // 2 + (n - window) * window
    return prefix(t1) - prefix(t0)


def layer_work(spec: TransformerSpec, t0: int, t1: int) -> Work:
    """One transformer block over tokens ``[t0, t1)`` of each of the b sequences."""
    e, b, t = spec.dtype_bytes, spec.micro_batch, t1 - t0
    h, q, kv, f, a = spec.hidden, spec.q_dim, spec.kv_dim, spec.ffn, spec.heads
    linear = 2 * b * t * _linear_weights(spec)
    pairs = attention_pairs(t0, t1, spec.attention_window)
    executed = pairs if spec.flash_attention else t * t1
    attn_useful, attn = 4 * b * q * pairs, 4 * b * q * executed
    attn_backward = (2.5 if spec.flash_attention else 2.0) * attn

    tokens = b * t
    mask = tokens * h if spec.dropout else 0  # 1-byte dropout mask of an h-wide output
    if spec.flash_attention:
        core = 4 * a * tokens  # fp32 log-sum-exp per query and head
    else:
        scores = a * b * t * t1
        core = e * scores + ((1 + e) * scores if spec.dropout else 0)
    attention = e * tokens * (h + h + q + 2 * kv + q) + core + mask
    mlp = e * tokens * (h + h) + (3 if spec.gated else 2) * e * tokens * f + mask
    act = attention + mlp
    linear_inputs = e * tokens * (h + q + h + f)
    output_grads = e * tokens * ((q + 2 * kv) + h + (2 * f if spec.gated else f) + h)
    return Work(f=linear + attn, b=linear + attn_backward, w=linear, useful=3 * (linear + attn_useful),
                act=act, wact=min(act, linear_inputs + output_grads))


def embedding_work(spec: TransformerSpec, t0: int, t1: int) -> Work:
    """The embedding lookup: no FLOPs; keeps the token ids (and a dropout mask) for its gradient."""
    tokens = spec.micro_batch * (t1 - t0)
    act = ID_BYTES * tokens + (tokens * spec.hidden if spec.dropout else 0)
    return Work(act=act, wact=act)


def head_work(spec: TransformerSpec, t0: int, t1: int) -> Work:
    """Final norm, LM head and cross-entropy over tokens ``[t0, t1)``.

    Keeps the norm input and the head input (``e b t h`` each) and the fp32 softmax the loss's
    backward reads (``4 b t V``, as Megatron's cross-entropy keeps it); W needs the head input
    and the logits' gradient ``e b t V``.
    """
    e, tokens = spec.dtype_bytes, spec.micro_batch * (t1 - t0)
    gemm = 2 * tokens * spec.hidden * spec.vocab
    act = 2 * e * tokens * spec.hidden + 4 * tokens * spec.vocab
    wact = min(act, e * tokens * spec.hidden + e * tokens * spec.vocab)
    return Work(f=gemm, b=gemm, w=gemm, useful=3 * gemm, act=act, wact=wact)


def boundary_bytes(spec: TransformerSpec, t0: int, t1: int) -> float:
    """The activation (and its gradient) one stage hands the next: ``e b t h``."""
    return spec.dtype_bytes * spec.micro_batch * (t1 - t0) * spec.hidden


def stage_input_bytes(spec: TransformerSpec, t0: int, t1: int, *, first: bool) -> float:
    """What a recomputed unit keeps: its stage input (token ids on the first stage)."""
    return ID_BYTES * spec.micro_batch * (t1 - t0) if first else boundary_bytes(spec, t0, t1)
