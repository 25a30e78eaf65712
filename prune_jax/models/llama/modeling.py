"""LLaMA in Flax NNX, sized by its kernels so pruned layers can differ in width.

One decoder block (pre-norm, residual):

    h = x + Attn(RMSNorm(x)),      y = h + MLP(RMSNorm(h)),
    MLP(x) = W_down (silu(W_gate x) ⊙ W_up x)                       (SwiGLU)
    Attn: q = x W_q [B,T,N,H], k = x W_k [B,T,K,H], v = x W_v [B,T,K,H];
          RoPE on q, k (rotate-half layout); query head n reads KV group n // (N/K);
          softmax(q kᵀ/√H + causal mask) v, then W_o [N,H,D] back to D.

Every module reads N, K, H, F and D from its kernel shapes (q: [D, N, H], k/v:
[D, K, H], o: [N, H, D], gate/up: [D, F], down: [F, D]), never from the config, so
physically sliced heads or channels need no config change. The config keeps only
what kernels cannot say: RoPE parameters, norm epsilon, tying, dtype.

Every projection goes through ``skmm_jax.common.kernels.project``: a kernel array gives the
plain einsum, and any kernel may instead be a ``LoraKernel`` (finetuning adapters)
or a ``ProbedKernel`` (factored per-sample gradient sketches); ``kernel_inputs``
says how each kernel reads as a matrix.

Attention is plain einsum + softmax (an XLA path: differentiable per sample under
``vmap(grad)``, unlike fused cuDNN attention in this jax release).

KV cache (zero-shot scoring and generation): ``prefill`` is the causal forward that also
returns each block's RoPE'd keys and values (``KVCache``, one per block, sized by that
block's K); ``decode`` runs new tokens at given positions against it, writing their keys
at their positions' slots and attending to the slots at or before each query's position,
so it reads the same keys and values as the forward of the whole sequence.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skmm_jax.common.checks import check_positive_int
from skmm_jax.common.kernels import project

Array = jax.Array

ROPE_TYPES = ("default", "linear", "llama3")
ATTENTION_IMPLEMENTATIONS = ("chunked", "dot_product")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """What a LLaMA needs beyond its kernel shapes (plus the widths used to build it).

    Attributes:
      vocab_size, hidden_size, num_layers: model sizes.
      layer_heads: per layer (num_heads N, num_kv_heads K); N % K == 0.
      layer_intermediate: per layer FFN width F.
      head_dim: H.
      rms_norm_eps: RMSNorm ε.
      rope_theta: RoPE base.
      rope_type: "default", "linear" or "llama3" (as in transformers' rope_parameters).
      rope_factor, rope_low_freq_factor, rope_high_freq_factor,
      rope_original_max_position: scaling parameters ("linear": factor; "llama3": all).
      tie_word_embeddings: LM head = embeddingᵀ.
      attention_bias, mlp_bias: biases on the attention / MLP projections.
      dtype: "float32" or "bfloat16" (parameters and activations; softmax,
        norms and logits are computed in float32).
      attention: how attention is computed, "chunked" (XLA, never stores [T, T] scores,
        differentiable under ``vmap(grad)``) or "dot_product" (``jax.nn.dot_product_attention``:
        cuDNN flash attention on GPU); a runtime choice, not exported (``set_attention``).
      bos_token_id, eos_token_id: kept for export.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    layer_heads: tuple[tuple[int, int], ...]
    layer_intermediate: tuple[int, ...]
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    dtype: str = "float32"
    attention: str = "chunked"
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {self.rope_type!r}; supported: {ROPE_TYPES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if len(self.layer_heads) != self.num_layers or len(self.layer_intermediate) != self.num_layers:
            raise ValueError(
                f"per-layer widths must have num_layers = {self.num_layers} entries, got "
                f"{len(self.layer_heads)} head pairs and {len(self.layer_intermediate)} FFN widths"
            )
        for index, (heads, kv_heads) in enumerate(self.layer_heads):
            if kv_heads < 1 or heads < 1 or heads % kv_heads:
                raise ValueError(f"layer {index}: num_heads {heads} must be a positive multiple of num_kv_heads {kv_heads}")

    @property
    def uniform(self) -> bool:
        """True when every layer has the same widths (stock transformers can load it)."""
        return len(set(self.layer_heads)) == 1 and len(set(self.layer_intermediate)) == 1

    def with_dtype(self, dtype: str) -> "LlamaConfig":
        return dataclasses.replace(self, dtype=dtype)

    def check_sequence_length(self, length: int, *, name: str = "seq_len") -> None:
        """Raise ValueError unless 1 ≤ ``length`` ≤ ``max_position_embeddings``.

        Why: positions past the trained context put RoPE at angles the model never saw
        (its outputs there are meaningless), and such lengths are only reached by
        mistake; they also cost O(T²) attention work and a compile per length. Callers
        pass ``name`` as the user typed it (e.g. ``"--seq-len"``) so the error points at
        the argument to fix.
        """
        if length < 1:
            raise ValueError(f"{name}={length} must be a positive number of tokens (1 to {self.max_position_embeddings})")
        if length > self.max_position_embeddings:
            raise ValueError(
                f"{name}={length} exceeds the model's context of {self.max_position_embeddings} tokens "
                f"(max_position_embeddings); use at most {self.max_position_embeddings}"
            )

    @classmethod
    def from_hf(cls, hf: Any, *, dtype: str = "float32") -> "LlamaConfig":
        """From a ``transformers.LlamaConfig`` (or its dict); per-layer widths from our
        optional ``layer_heads`` / ``layer_intermediate`` entries, else uniform."""
        get = (lambda k, d=None: hf.get(k, d)) if isinstance(hf, dict) else (lambda k, d=None: getattr(hf, k, d))
        model_type = get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(f"unsupported architecture: model_type {model_type!r} (only 'llama' is supported)")
        heads, kv_heads = get("num_attention_heads"), get("num_key_value_heads") or get("num_attention_heads")
        hidden, layers = get("hidden_size"), get("num_hidden_layers")
        rope = dict(get("rope_parameters") or {})
        if not rope:  # older configs: rope_theta + rope_scaling
            rope = dict(get("rope_scaling") or {})
            rope.setdefault("rope_theta", get("rope_theta", 10000.0))
            if "type" in rope:
                rope.setdefault("rope_type", rope.pop("type"))
        rope_type = rope.get("rope_type", "default")
        layer_heads = get("layer_heads")
        layer_intermediate = get("layer_intermediate")
        return cls(
            vocab_size=get("vocab_size"),
            hidden_size=hidden,
            num_layers=layers,
            layer_heads=tuple(tuple(p) for p in layer_heads) if layer_heads else ((heads, kv_heads),) * layers,
            layer_intermediate=tuple(layer_intermediate) if layer_intermediate else (get("intermediate_size"),) * layers,
            head_dim=get("head_dim") or hidden // heads,
            rms_norm_eps=get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_position=int(rope.get("original_max_position_embeddings", get("max_position_embeddings", 2048)))
            if rope_type == "llama3" else 8192,
            max_position_embeddings=get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            attention_bias=bool(get("attention_bias", False)),
            mlp_bias=bool(get("mlp_bias", False)),
            dtype=dtype,
            bos_token_id=get("bos_token_id"),
            eos_token_id=get("eos_token_id"),
        )

    def to_hf_dict(self) -> dict:
        """transformers ``LlamaConfig`` keyword arguments (uniform widths from layer 0;
        the per-layer lists are added when widths differ)."""
        rope: dict = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type in ("linear", "llama3"):
            rope["factor"] = self.rope_factor
        if self.rope_type == "llama3":
            rope.update(low_freq_factor=self.rope_low_freq_factor, high_freq_factor=self.rope_high_freq_factor,
                        original_max_position_embeddings=self.rope_original_max_position)
        out = {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.layer_intermediate[0],
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.layer_heads[0][0],
            "num_key_value_heads": self.layer_heads[0][1],
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": self.dtype,
        }
        if not self.uniform:
            out["layer_heads"] = [list(p) for p in self.layer_heads]
            out["layer_intermediate"] = list(self.layer_intermediate)
        return out


def kernel_inputs(path: str, shape: tuple[int, ...]) -> int:
    """Leading kernel axes contracted with the layer input: 2 for o [N, H, D], else 1.

    The ``split`` of ``make_pytree_sketch("kronecker", ..., split=kernel_inputs)`` and
    the ``n_in`` of a ``LoraKernel`` (``path`` ends with the kernel's name, e.g.
    ``"layers/3/attention/o_kernel"``; a ``/value`` suffix of NNX state is ignored).
    """
    name = path.removesuffix("/value").rsplit("/", 1)[-1]
    return 2 if name == "o_kernel" else 1


def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """θ_i = base^{-2i/H} for i < H/2, rescaled as transformers does for "linear"
    (÷ factor) and "llama3" (÷ factor for long wavelengths, unchanged for short ones,
    smooth interpolation in between)."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    inv = inv.astype(np.float32)
    if config.rope_type == "linear":
        return inv / np.float32(config.rope_factor)
    if config.rope_type == "llama3":
        factor, low, high = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
        old = config.rope_original_max_position
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotate-half RoPE: x [B, T, N, H], positions [B, T] → same shape (float32 maths)."""
    angles = positions[:, :, None].astype(jnp.float32) * inv_freq[None, None, :]  # [B, T, H/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    xf = x.astype(jnp.float32)
    half = xf.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


ATTENTION_BLOCK = 128
VOCAB_CHUNK = 8192  # logits columns per step of the chunked loss (chunked_nll)
ATTENTION_GROUPS = 8


def _attend(q: Array, k: Array, v: Array, first: Array | int, scale: Array) -> Array:
    """Causal attention of the query rows at positions ``first + [0, R)`` to keys [0, S).

    Heads-major layout, so both products are plain batched GEMMs over (B, K):
    q [B, K, G, R, H], k/v [B, K, S, H] → [B, K, G, R, H]. The
    scores are [B, K, G, R, S] (float32); the softmax is normalised after the value
    product, out = (exp(s − max) v) / Σ exp(s − max), which saves a pass over the score
    block. A row whose position p is below S − 1 is masked beyond p; every row sees at
    least key 0, so no softmax row is empty (padded query rows included).
    """
    rows, keys = q.shape[3], k.shape[2]
    causal = (first + jnp.arange(rows))[:, None] >= jnp.arange(keys)[None, :]  # [R, S]
    return _masked_attend(q, k, v, causal, scale)


def _masked_attend(q: Array, k: Array, v: Array, visible: Array, scale: Array) -> Array:
    """softmax over the ``visible`` keys of q kᵀ·scale, times v: q [B, K, G, R, H], k/v
    [B, K, S, H], ``visible`` boolean, broadcastable to the scores [B, K, G, R, S] (every
    row must see at least one key) → [B, K, G, R, H] (the body of ``_attend``)."""
    scores = jnp.einsum("BKGRH,BKSH->BKGRS", q, k, preferred_element_type=jnp.float32) * scale  # [B, K, G, R, S]
    scores = jnp.where(visible, scores, jnp.float32(-1e30))
    peak = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores - peak)  # masked entries: exp(−1e30 − peak) = 0 exactly
    total = jnp.sum(weights, axis=-1, keepdims=True)  # [B, K, G, R, 1]
    out = jnp.einsum("BKGRS,BKSH->BKGRH", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / total).astype(q.dtype)


def _split_evenly(total: int, parts: int) -> list[tuple[int, int]]:
    """(first, count) of ``parts`` contiguous runs covering [0, total), sizes differing by ≤ 1."""
    base, extra = divmod(total, parts)
    runs, first = [], 0
    for index in range(parts):
        count = base + (index < extra)
        runs.append((first, count))
        first += count
    return runs



def causal_attention(q: Array, k: Array, v: Array, *, block: int = ATTENTION_BLOCK, implementation: str = "chunked") -> Array:
    """softmax(q kᵀ/√H + causal mask) v for q [B, T, K, G, H], k/v [B, T, K, H] → [B, T, K, G, H].

    ``implementation="dot_product"`` calls ``jax.nn.dot_product_attention`` (cuDNN flash
    attention on NVIDIA GPUs, where it never stores [T, T] scores; on CPU/TPU its XLA
    path materialises them, so use it for GPU evaluation). ``"chunked"`` (the default)
    is the XLA path below: it never materialises [B, K, G, T, T], is differentiable and
    vmap-able under ``vmap(grad)`` for per-sample gradients.

    Chunked: queries go in blocks of ``block`` rows, so the score tensor is at most
    [B, K, G, block, T]. With n = ⌈T / block⌉ blocks:

    * n ≤ ``ATTENTION_GROUPS`` (8; T ≤ 1024 at the default block): the blocks unroll at
      trace time and block [s, e) meets keys [0, e) only, skipping the masked upper
      triangle: ≈ ½ of the T² score work.
    * n > 8: unrolling would make trace and compile time grow linearly with T (≈ 4 min
      to compile a SmolLM2 forward at T = 8192). Instead the n blocks are cut into 8
      contiguous groups of ≈ m = n/8 blocks; each group is one ``lax.map`` (a scan) over
      its blocks, every block meeting the keys up to the group's end, with the causal
      mask applied inside. The program is 8 scan bodies whatever T is, so compile time
      no longer grows with T. Cost: group g (of 8) computes m·(g+1)m block pairs, in all
      n²·(8+1)/(2·8) ≈ 0.56 n² against ≈ 0.5 n² for the triangle, i.e. ≈ 12% more
      score FLOPs than the unrolled path (a single scan over keys [0, T) would be 2×).
      Queries are padded to n·block rows and sliced back; keys are never padded (each
      group reads keys [0, min(end, T))), so no padded key can be attended to.
      The scan body is rematerialised (``jax.checkpoint``): reverse mode stores only
      each block's queries and recomputes its scores, so gradients also hold one
      [B, K, G, block, T] score block at a time instead of n stacked ones (= T²).

    Both chunked paths agree with one-shot softmax attention to float rounding (masked
    scores are −1e30, so exp() makes them exactly 0).
    """
    batch, length, kv_heads, group, head_dim = q.shape
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "dot_product":
        out = jax.nn.dot_product_attention(q.reshape(batch, length, kv_heads * group, head_dim), k, v, is_causal=True)
        return out.reshape(q.shape)
    check_positive_int(block, "block")  # query rows per block
    # Heads-major once: every block's products are then batched GEMMs without
    # per-block transposes (≈ 25 % faster on CPU at T = 2048).
    scale = jnp.float32(1.0 / math.sqrt(head_dim))  # applied to the float32 scores (exact in bf16 runs)
    q = q.transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, H]
    blocks = -(-length // block)
    if blocks <= ATTENTION_GROUPS:
        outputs = []
        for start in range(0, length, block):
            stop = min(start + block, length)
            outputs.append(_attend(q[:, :, :, start:stop], k[:, :, :stop], v[:, :, :stop], start, scale))
        out = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=3)
        return out.transpose(0, 3, 1, 2, 4)

    padded = blocks * block
    q = jnp.pad(q, ((0, 0), (0, 0), (0, 0), (0, padded - length), (0, 0)))  # [B, K, G, n·block, H]
    attend = jax.checkpoint(_attend, prevent_cse=False)  # prevent_cse is unneeded inside a scan
    outputs = []
    for first_block, count in _split_evenly(blocks, ATTENTION_GROUPS):
        start, stop = first_block * block, (first_block + count) * block
        keys = min(stop, length)
        k_seen, v_seen = k[:, :, :keys], v[:, :, :keys]  # [B, K, S, H]
        q_blocks = q[:, :, :, start:stop].reshape(batch, kv_heads, group, count, block, head_dim)
        q_blocks = jnp.moveaxis(q_blocks, 3, 0)  # [m, B, K, G, block, H]
        firsts = start + block * jnp.arange(count, dtype=jnp.int32)  # [m]
        out = jax.lax.map(lambda xs: attend(xs[0], k_seen, v_seen, xs[1], scale), (q_blocks, firsts))  # [m, B, K, G, block, H]
        outputs.append(jnp.moveaxis(out, 0, 3).reshape(batch, kv_heads, group, stop - start, head_dim))
    return jnp.concatenate(outputs, axis=3)[:, :, :, :length].transpose(0, 3, 1, 2, 4)


class KVCache(NamedTuple):
    """One block's keys and values, k/v [B, S, K, H] (k after RoPE): slot s holds the
    token at position s, so a query at position p reads slots [0, p]. A model's cache is
    a tuple with one per block (pruned blocks differ in K)."""

    k: Array
    v: Array


def cached_attention(q: Array, cache: KVCache, positions: Array) -> Array:
    """softmax(q kᵀ/√H over the slots s ≤ position) v for queries q [B, R, K, G, H] at
    ``positions`` [B, R] against ``cache`` (slots [0, S)) → [B, R, K, G, H].

    A query at position p sees exactly the keys the causal forward gives it, provided
    slots [0, p] hold the tokens at positions [0, p] (the prefill's, then the written
    ones); slots beyond p (right padding, stale entries, tokens of later steps) are
    masked to exp(−1e30 − max) = 0, so what they hold never matters. Scores are
    [B, K, G, R, S] (R is a decode step or a continuation: short).
    """
    head_dim, slots = q.shape[-1], cache.k.shape[1]
    scale = jnp.float32(1.0 / math.sqrt(head_dim))
    visible = positions[:, None, None, :, None] >= jnp.arange(slots)[None, None, None, None, :]  # [B, 1, 1, R, S]
    k, v = cache.k.transpose(0, 2, 1, 3), cache.v.transpose(0, 2, 1, 3)  # [B, K, S, H]
    out = _masked_attend(q.transpose(0, 2, 3, 1, 4), k, v, visible, scale)  # [B, K, G, R, H]
    return out.transpose(0, 3, 1, 2, 4)


def write_cache(cache: KVCache, k: Array, v: Array, positions: Array) -> KVCache:
    """``cache`` with k/v [B, R, K, H] written at slots ``positions`` [B, R] (row by row;
    a slot ≥ S is dropped: it could only hold a padded query's key, never read)."""
    rows = jnp.arange(k.shape[0])[:, None]
    return KVCache(cache.k.at[rows, positions].set(k, mode="drop"), cache.v.at[rows, positions].set(v, mode="drop"))


def _zeros(shape, dtype):
    return jnp.zeros(shape, dtype)


class RMSNorm(nnx.Module):
    """y = x / √(mean(x²) + ε) · w, computed in float32."""

    def __init__(self, dim: int, *, eps: float, dtype: Any):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (xf * self.weight[...].astype(jnp.float32)[None, None, :]).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query causal self-attention; N, K, H, D from the kernels."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, *, bias: bool, dtype: Any, rngs: nnx.Rngs,
                 implementation: str = "chunked"):
        init = nnx.initializers.normal(0.02)
        self.implementation = implementation  # static: "chunked" or "dot_product" (causal_attention)
        self.q_kernel = nnx.Param(init(rngs.params(), (hidden, heads, head_dim), dtype))  # [D, N, H]
        self.k_kernel = nnx.Param(init(rngs.params(), (hidden, kv_heads, head_dim), dtype))  # [D, K, H]
        self.v_kernel = nnx.Param(init(rngs.params(), (hidden, kv_heads, head_dim), dtype))  # [D, K, H]
        self.o_kernel = nnx.Param(init(rngs.params(), (heads, head_dim, hidden), dtype))  # [N, H, D]
        self.q_bias = nnx.Param(_zeros((heads, head_dim), dtype)) if bias else None
        self.k_bias = nnx.Param(_zeros((kv_heads, head_dim), dtype)) if bias else None
        self.v_bias = nnx.Param(_zeros((kv_heads, head_dim), dtype)) if bias else None
        self.o_bias = nnx.Param(_zeros((hidden,), dtype)) if bias else None

    def __call__(self, x: Array, positions: Array, inv_freq: Array) -> Array:
        return self.project_out(self.heads(x, positions, inv_freq))

    def project_out(self, heads_out: Array) -> Array:
        """o_proj: [B, T, N, H] per-head outputs → [B, T, D]."""
        out = project("BTNH,NHD->BTD", heads_out, self.o_kernel[...])
        if self.o_bias is not None:
            out = out + self.o_bias[...][None, None, :]
        return out

    def projections(self, x: Array) -> tuple[Array, Array, Array]:
        """(q [B, T, N, H], k, v [B, T, K, H]) before RoPE, biases included."""
        q = project("BTD,DNH->BTNH", x, self.q_kernel[...])
        k = project("BTD,DKH->BTKH", x, self.k_kernel[...])
        v = project("BTD,DKH->BTKH", x, self.v_kernel[...])
        if self.q_bias is not None:
            q = q + self.q_bias[...][None, None, :, :]
            k = k + self.k_bias[...][None, None, :, :]
            v = v + self.v_bias[...][None, None, :, :]
        return q, k, v

    def _grouped_qkv(self, x: Array, positions: Array, inv_freq: Array) -> tuple[Array, Array, Array]:
        q, k, v = self.projections(x)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        batch, length, heads, head_dim = q.shape
        kv_heads = k.shape[2]
        return q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim), k, v  # q [B, T, K, G, H]

    def heads(self, x: Array, positions: Array, inv_freq: Array) -> Array:
        """Per-head attention outputs before o_proj, [B, T, N, H] (o_proj's input)."""
        return self._heads_and_cache(x, positions, inv_freq)[0]

    def _heads_and_cache(self, x: Array, positions: Array, inv_freq: Array) -> tuple[Array, KVCache]:
        q, k, v = self._grouped_qkv(x, positions, inv_freq)
        batch, length = x.shape[0], x.shape[1]
        out = causal_attention(q, k, v, implementation=self.implementation).reshape(batch, length, -1, q.shape[-1])
        return out, KVCache(k, v)

    def prefill(self, x: Array, positions: Array, inv_freq: Array) -> tuple[Array, KVCache]:
        """(``self(x, ...)`` [B, T, D], the KV cache of the T tokens): the causal forward
        (the same ops, so the same numbers) that also returns its RoPE'd keys and values."""
        out, cache = self._heads_and_cache(x, positions, inv_freq)
        return self.project_out(out), cache

    def decode(self, x: Array, positions: Array, inv_freq: Array, cache: KVCache) -> tuple[Array, KVCache]:
        """Attention of R new tokens x [B, R, D] at ``positions`` [B, R] to the cached keys
        and to each other: their k/v are written at their positions' slots, then each
        query reads the slots ≤ its position (``cached_attention``). Returns [B, R, D] and
        the updated cache (slots [0, S) must cover every real position)."""
        q, k, v = self._grouped_qkv(x, positions, inv_freq)
        cache = write_cache(cache, k, v, positions)
        out = cached_attention(q, cache, positions)
        return self.project_out(out.reshape(x.shape[0], x.shape[1], -1, q.shape[-1])), cache

    def probabilities(self, x: Array, positions: Array, inv_freq: Array) -> Array:
        """Attention maps softmax(q kᵀ/√H + causal mask), float32 [B, N, T, T] (calibration
        of the head-similarity criterion; O(T²) memory, so short sequences only)."""
        q, k, _ = self._grouped_qkv(x, positions, inv_freq)
        length = q.shape[1]
        scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(q.shape[-1]))
        causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
        probs = jax.nn.softmax(jnp.where(causal, scores, jnp.float32(-1e30)), axis=-1)
        return probs.reshape(probs.shape[0], -1, length, length)


class MLP(nnx.Module):
    """SwiGLU: W_down (silu(W_gate x) ⊙ W_up x); F from the kernels."""

    def __init__(self, hidden: int, intermediate: int, *, bias: bool, dtype: Any, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.gate_kernel = nnx.Param(init(rngs.params(), (hidden, intermediate), dtype))  # [D, F]
        self.up_kernel = nnx.Param(init(rngs.params(), (hidden, intermediate), dtype))  # [D, F]
        self.down_kernel = nnx.Param(init(rngs.params(), (intermediate, hidden), dtype))  # [F, D]
        self.gate_bias = nnx.Param(_zeros((intermediate,), dtype)) if bias else None
        self.up_bias = nnx.Param(_zeros((intermediate,), dtype)) if bias else None
        self.down_bias = nnx.Param(_zeros((hidden,), dtype)) if bias else None

    def __call__(self, x: Array) -> Array:
        return self.project_out(self.intermediate(x))

    def pre_activations(self, x: Array) -> tuple[Array, Array]:
        """(W_G x, W_U x), each [B, T, F]."""
        gate = project("BTD,DF->BTF", x, self.gate_kernel[...])
        up = project("BTD,DF->BTF", x, self.up_kernel[...])
        if self.gate_bias is not None:
            gate, up = gate + self.gate_bias[...][None, None, :], up + self.up_bias[...][None, None, :]
        return gate, up

    def intermediate(self, x: Array) -> Array:
        """h = silu(W_G x) ⊙ W_U x, [B, T, F] (down_proj's input)."""
        gate, up = self.pre_activations(x)
        return jax.nn.silu(gate) * up

    def project_out(self, hidden: Array) -> Array:
        """down_proj: [B, T, F] → [B, T, D]."""
        out = project("BTF,FD->BTD", hidden, self.down_kernel[...])
        if self.down_bias is not None:
            out = out + self.down_bias[...][None, None, :]
        return out


class DecoderBlock(nnx.Module):
    def __init__(self, config: LlamaConfig, layer: int, *, rngs: nnx.Rngs):
        dtype = DTYPES[config.dtype]
        heads, kv_heads = config.layer_heads[layer]
        self.input_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype)
        self.attn = Attention(config.hidden_size, heads, kv_heads, config.head_dim, bias=config.attention_bias, dtype=dtype, rngs=rngs,
                              implementation=config.attention)
        self.post_attn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype)
        self.mlp = MLP(config.hidden_size, config.layer_intermediate[layer], bias=config.mlp_bias, dtype=dtype, rngs=rngs)

    # Hooks: the block's two residual halves, so consumers (calibration, recovery,
    # feature extraction, heads on the last block) ask for the stream they need instead
    # of re-writing the forward.
    def attention_residual(self, x: Array, positions: Array, inv_freq: Array) -> Array:
        """h = x + Attn(RMSNorm(x)), [B, T, D]: the stream into the MLP half."""
        return x + self.attn(self.input_norm(x), positions, inv_freq)

    def mlp_residual(self, h: Array) -> Array:
        """y = h + MLP(RMSNorm(h)), [B, T, D]: the block's output."""
        return h + self.mlp(self.post_attn_norm(h))

    def half_residual(self, half: int, x: Array, positions: Array, inv_freq: Array) -> Array:
        """The stream after half ``half`` of the block (0: attention, 1: MLP) applied to
        ``x`` [B, T, D]: the one hook for code that advances the stream half by half."""
        return self.attention_residual(x, positions, inv_freq) if half == 0 else self.mlp_residual(x)

    def __call__(self, x: Array, positions: Array, inv_freq: Array) -> Array:
        return self.mlp_residual(self.attention_residual(x, positions, inv_freq))

    def prefill(self, x: Array, positions: Array, inv_freq: Array) -> tuple[Array, KVCache]:
        """(``self(x, ...)``, the block's KV cache of x's tokens)."""
        attended, cache = self.attn.prefill(self.input_norm(x), positions, inv_freq)
        return self.mlp_residual(x + attended), cache

    def decode(self, x: Array, positions: Array, inv_freq: Array, cache: KVCache) -> tuple[Array, KVCache]:
        """The block on new tokens x [B, R, D] at ``positions`` [B, R] given the cache of
        the tokens before them (``Attention.decode``); returns (output, updated cache)."""
        attended, cache = self.attn.decode(self.input_norm(x), positions, inv_freq, cache)
        return self.mlp_residual(x + attended), cache


class BlockStream(NamedTuple):
    """One step of ``Llama.walk``: block ``index``, the module, the stream h [B, T, D]
    after its attention half (the MLP half's input, before its norm) and its output."""

    index: int
    block: DecoderBlock
    h: Array
    out: Array


class Llama(nnx.Module):
    """Causal LM: tokens [B, T] → logits [B, T, V] (float32)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        dtype = DTYPES[config.dtype]
        self.config = config
        self.embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (config.vocab_size, config.hidden_size), dtype))  # [V, D]
        self.layers = nnx.List([DecoderBlock(config, i, rngs=rngs) for i in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype)
        self.lm_head = None if config.tie_word_embeddings else nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (config.hidden_size, config.vocab_size), dtype))  # [D, V]

    # Hooks: the pieces of the forward, so a consumer that needs the residual stream at
    # some block (calibration, recovery, features) composes them instead of copying it.
    @staticmethod
    def default_positions(tokens: Array) -> Array:
        """Positions 0..T-1 for every row, [B, T] int32."""
        return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :], tokens.shape)

    def rope_frequencies(self) -> Array:
        """RoPE inverse frequencies [H/2] (float32; a constant under jit)."""
        return jnp.asarray(rope_inverse_frequencies(self.config))

    def embed_tokens(self, tokens: Array) -> Array:
        """The residual stream entering block 0, [B, T, D]."""
        return jnp.take(self.embed[...], tokens, axis=0)

    def walk(self, x: Array, positions: Array, start: int = 0, stop: int | None = None) -> Iterator[BlockStream]:
        """The block-by-block run of blocks [start, stop) on the stream ``x`` [B, T, D]
        entering block ``start``: one ``BlockStream`` (index, block, h = the stream into
        its MLP half, out = its output) per block, in order. The one walk over
        ``layers``: a consumer that reads the stream inside the model (calibration
        moments, features at the last block) iterates it instead of re-writing the forward."""
        inv_freq = self.rope_frequencies()
        for index, block in enumerate(list(self.layers)[start:stop], start=start):
            h = block.attention_residual(x, positions, inv_freq)
            x = block.mlp_residual(h)
            yield BlockStream(index, block, h, x)

    def apply_blocks(self, x: Array, positions: Array, start: int = 0, stop: int | None = None) -> Array:
        """The residual stream after blocks [start, stop) applied to ``x`` [B, T, D]."""
        for step in self.walk(x, positions, start, stop):
            x = step.out
        return x

    def hidden_states(self, tokens: Array, positions: Array | None = None) -> Array:
        """Final-norm hidden states [B, T, D]."""
        positions = self.default_positions(tokens) if positions is None else positions
        return self.norm(self.apply_blocks(self.embed_tokens(tokens), positions))

    def head(self) -> Array:
        """The LM head [D, V] (embeddingᵀ when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, hidden: Array) -> Array:
        return jnp.einsum("BTD,DV->BTV", hidden, self.head(), preferred_element_type=jnp.float32)

    def __call__(self, tokens: Array, positions: Array | None = None) -> Array:
        return self.logits(self.hidden_states(tokens, positions))

    def prefill(self, tokens: Array, positions: Array | None = None) -> tuple[Array, tuple[KVCache, ...]]:
        """(final-norm hidden states [B, T, D] as ``hidden_states``, one ``KVCache`` per
        block with slots [0, T)). Pad the caches (``extend_cache``) before decoding past T."""
        positions = self.default_positions(tokens) if positions is None else positions
        x, inv_freq, caches = self.embed_tokens(tokens), self.rope_frequencies(), []
        for block in self.layers:
            x, cache = block.prefill(x, positions, inv_freq)
            caches.append(cache)
        return self.norm(x), tuple(caches)

    def decode(self, tokens: Array, positions: Array, caches: tuple[KVCache, ...]) -> tuple[Array, tuple[KVCache, ...]]:
        """(final-norm hidden states [B, R, D] of new tokens [B, R] at ``positions`` [B, R],
        the updated caches): the forward of the whole sequence read at those positions."""
        x, inv_freq, updated = self.embed_tokens(tokens), self.rope_frequencies(), []
        for block, cache in zip(self.layers, caches, strict=True):
            x, cache = block.decode(x, positions, inv_freq, cache)
            updated.append(cache)
        return self.norm(x), tuple(updated)

    def next_token_nll(self, hidden: Array, targets: Array, *, vocab_chunk: int = VOCAB_CHUNK,
                       with_argmax: bool = False) -> Array | tuple[Array, Array]:
        """−log p(targets | hidden) [B, T] float32 from final-norm hidden states [B, T, D],
        without the [B, T, V] logits (``chunked_nll``); with ``with_argmax`` also the
        greedy next token [B, T] int32."""
        tied = self.lm_head is None
        return chunked_nll(hidden, self.embed[...] if tied else self.lm_head[...], targets,
                           vocab_chunk=vocab_chunk, head_is_embedding=tied, with_argmax=with_argmax)

    def token_nll(self, tokens: Array) -> Array:
        """−log p(x_{t+1} | x_≤t) for t < T − 1, [B, T − 1] float32: the next-token loss
        of every predicted token (perplexity, and the loss of gradient-based scores).
        The first token of a row has no context and is not predicted."""
        return self.next_token_nll(self.hidden_states(tokens[:, :-1]), tokens[:, 1:])



def chunked_nll(hidden: Array, head: Array, targets: Array, *, vocab_chunk: int = VOCAB_CHUNK,
                head_is_embedding: bool = False, with_argmax: bool = False) -> Array | tuple[Array, Array]:
    """−log softmax(hidden · head)[targets], [B, T] float32, in vocabulary chunks.

    logsumexp_v z_v is accumulated online over column chunks c of the head,
    (m, s) ← (max(m, max z_c), s·e^{m − m'} + Σ e^{z_c − m'}), so at most [B, T, chunk]
    logits exist at once (at T = 8192, V = 128 K: 256 MiB per chunk of 8192 instead of
    4 GiB), and the target logit is hidden · head[:, target]. The chunk loop is a scan
    over a rematerialised body: under ``grad`` it stores (m, s) per chunk, not the logits.
    The last chunk is read at start V − chunk (no padding, no copy of the head) and its
    columns already counted are masked out.

    ``head`` is [D, V], or the [V, D] embedding when ``head_is_embedding`` (tied weights:
    no transposed copy).

    ``with_argmax``: also return argmax_v z_v [B, T] int32 (the greedy next token, the
    first index on ties, as ``jnp.argmax``), tracked in the same chunk loop: whether a
    continuation is the greedy one is then ``argmax == targets`` on the very logits the
    loss used, with no rounding gap between a gathered and a chunked logit.
    """
    vocab = head.shape[0] if head_is_embedding else head.shape[1]
    axis = 0 if head_is_embedding else 1
    chosen = jnp.take(head, targets, axis=axis)  # [B, T, D] or [D, B, T]
    spec = "BTD,BTD->BT" if head_is_embedding else "BTD,DBT->BT"
    target_logit = jnp.einsum(spec, hidden, chosen, preferred_element_type=jnp.float32)
    spec = "BTD,VD->BTV" if head_is_embedding else "BTD,DV->BTV"
    if vocab <= vocab_chunk:
        logits = jnp.einsum(spec, hidden, head, preferred_element_type=jnp.float32)
        nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
        return (nll, jnp.argmax(logits, axis=-1).astype(jnp.int32)) if with_argmax else nll
    chunks = -(-vocab // vocab_chunk)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def step(carry, index):
        peak, total, best = carry
        start = jnp.minimum(index * vocab_chunk, vocab - vocab_chunk)
        columns = jax.lax.dynamic_slice_in_dim(head, start, vocab_chunk, axis=axis)
        logits = jnp.einsum(spec, hidden, columns, preferred_element_type=jnp.float32)  # [B, T, chunk]
        fresh = start + jnp.arange(vocab_chunk) >= index * vocab_chunk  # the last chunk overlaps the previous one
        logits = jnp.where(fresh, logits, jnp.float32(-1e30))
        chunk_peak = jnp.max(logits, axis=-1)
        new_peak = jnp.maximum(peak, chunk_peak)
        total = total * jnp.exp(peak - new_peak) + jnp.sum(jnp.exp(logits - new_peak[..., None]), axis=-1)
        if best is not None:  # strictly greater: an earlier chunk keeps a tie (the first index wins)
            best = jnp.where(chunk_peak > peak, start + jnp.argmax(logits, axis=-1).astype(jnp.int32), best)
        return (new_peak, total, best), None

    best = jnp.zeros(targets.shape, jnp.int32) if with_argmax else None
    start = (jnp.full(targets.shape, -1e30, jnp.float32), jnp.zeros(targets.shape, jnp.float32), best)
    (peak, total, best), _ = jax.lax.scan(step, start, jnp.arange(chunks))
    nll = peak + jnp.log(total) - target_logit
    return (nll, best) if with_argmax else nll


def extend_cache(caches: tuple[KVCache, ...], slots: int) -> tuple[KVCache, ...]:
    """Each block's cache zero-padded to ``slots`` slots (room for the tokens to come)."""
    def pad(x: Array) -> Array:
        return jnp.pad(x, ((0, 0), (0, slots - x.shape[1]), (0, 0), (0, 0)))

    return tuple(KVCache(pad(c.k), pad(c.v)) for c in caches)


def set_attention(model: "Llama", implementation: str) -> "Llama":
    """Switch every block's attention to ``implementation`` ("chunked" or "dot_product";
    see ``causal_attention``) in place; returns the model. Weights are untouched."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
    model.config = dataclasses.replace(model.config, attention=implementation)
    for block in model.layers:
        block.attn.implementation = implementation
    return model


def init_llama(config: LlamaConfig, seed: int = 0) -> Llama:
    """A randomly initialised model (tests, and the target of checkpoint loading)."""
    return Llama(config, rngs=nnx.Rngs(seed))


def abstract_llama(config: LlamaConfig) -> Llama:
    """The model's structure with ShapeDtypeStruct leaves (no memory): loaders fill it."""
    return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))


def num_parameters(model: Llama) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
