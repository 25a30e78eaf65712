"""The LLaMA glue of the data-selection pipeline (``skmm_jax`` stays model-agnostic).

- `wiki_passage_task`: ``skmm_jax.experiments.tasks.document_passage_task`` on the shipped
  Wikipedia sample (label = the article).
- `llama_feature_fn` / `extract_llama_features`: the model's feature function for
  ``skmm_jax.experiments.features.extract_features``, built from the model hooks. For tokens x_i
  it returns

      pooled_i = (1/T) Σ_t Norm_final(x^{(L)}_{i,t})                        [B, D]

  (the linear-probe input) and, when asked, the residual stream entering the last
  block's MLP

      h_i = x^{(L-1)}_i + Attn_L(RMSNorm(x^{(L-1)}_i))   (``attention_residual``)   [B, T, D]

  which is all that finetuning the last MLP (+ a head) needs: the frozen layers
  below it never run again.
- `mlp_head_from_llama`: ``skmm_jax.experiments.mlp_finetune.mlp_head`` on the last block and
  the final norm.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.models.llama.modeling import Llama
from skmm_jax.common.streaming import Progress
from skmm_jax.experiments.features import LAYER_INPUT_DTYPES, ExtractedFeatures, FeatureFn, extract_features
from skmm_jax.experiments.mlp_finetune import MLPHead, mlp_head
from skmm_jax.experiments.tasks import TextTask, document_passage_task
from skmm_jax.train.probe import LinearProbe

__all__ = ["extract_llama_features", "llama_feature_fn", "mlp_head_from_llama", "model_fingerprint", "wiki_passage_task"]


def wiki_passage_task(tokenizer: Any, *, documents: Sequence[Any] | None = None, **options: Any) -> TextTask:
    """Article classification on Wikipedia passages: ``document_passage_task`` on
    ``documents`` (default: ``load_documents("wiki-sample")``); ``options`` as there."""
    if documents is not None:
        return document_passage_task(tokenizer, documents, **options)
    from prune_jax.data import WIKI_SAMPLE_SOURCE, load_documents

    return document_passage_task(tokenizer, load_documents(WIKI_SAMPLE_SOURCE), source=WIKI_SAMPLE_SOURCE, **options)


def _forward_impl(graphdef: Any, state: Any, tokens: jax.Array, layer_input: str | None) -> tuple[jax.Array, Any]:
    """pooled [B, D] float32 and (optionally) the last block's MLP input [B, T, D]."""
    model: Llama = nnx.merge(graphdef, state)
    if layer_input is None:
        hidden = model.hidden_states(tokens)  # [B, T, D]
        return jnp.mean(hidden.astype(jnp.float32), axis=1), None
    positions = model.default_positions(tokens)
    *_, last = model.walk(model.embed_tokens(tokens), positions)  # last.h: the last block's MLP input [B, T, D]
    h = last.h
    pooled = jnp.mean(model.norm(last.out).astype(jnp.float32), axis=1)
    return pooled, h.astype(LAYER_INPUT_DTYPES[layer_input])


# graphdef and the layer-input dtype are static: one compilation per model structure
# and batch shape.
_forward = jax.jit(_forward_impl, static_argnums=(0, 3))


def llama_feature_fn(model: Llama, layer_input: str | None = None) -> FeatureFn:
    """``tokens [B, T] → (pooled [B, D], h [B, T, D] | None)`` for ``extract_features``.

    The model runs as one jitted pure function of its split state (put on the device
    once). ``layer_input``: None, "float16" or "float32" (the dtype h is returned in).
    """
    if layer_input is not None and layer_input not in LAYER_INPUT_DTYPES:
        raise ValueError(f"layer_input={layer_input!r}; expected None or one of {sorted(LAYER_INPUT_DTYPES)}")
    graphdef, state = nnx.split(model)
    return functools.partial(_forward, graphdef, jax.device_put(state), layer_input=layer_input)


def model_fingerprint(model: Llama) -> Iterator[bytes]:
    """The bytes that identify a model: its config, then every parameter (path, dtype,
    shape, values) in path order. Parameters, not only the config: two checkpoints of
    one architecture (or a model before/after pruning recovery) share a config."""
    yield repr(getattr(model, "config", None)).encode()
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.asarray(leaf)
        yield f"{jax.tree_util.keystr(path)}\0{array.dtype}\0{array.shape}\0".encode()
        yield np.ascontiguousarray(array).tobytes()


def extract_llama_features(
    model: Llama,
    tokens: np.ndarray,
    *,
    cache: Any = None,
    batch_size: int = 16,
    layer_input: str | None = None,
    progress: Progress | None = None,
) -> ExtractedFeatures:
    """``skmm_jax.experiments.features.extract_features`` with the model's feature function (see the
    module docstring) and its fingerprint; token ids are checked against the vocabulary.

    ``layer_input`` "float16" halves the disk/RAM cost of h (N·T·D·2 bytes: ~290 MB for
    the default wiki task) at ~1e-3 relative rounding.
    """
    tokens = np.asarray(tokens)
    vocab = model.config.vocab_size
    if tokens.size and np.issubdtype(tokens.dtype, np.integer) and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"token ids span [{tokens.min()}, {tokens.max()}] but the model's vocabulary is {vocab}")
    return extract_features(
        llama_feature_fn(model, layer_input), tokens,
        fingerprint=model_fingerprint(model) if cache is not None else None,
        cache=cache, batch_size=batch_size, progress=progress,
    )  # fmt: skip


def mlp_head_from_llama(
    model: Llama, num_classes: int, *, probe: LinearProbe | None = None, key: jax.Array | None = None
) -> MLPHead:
    """``mlp_head`` on copies of the last decoder block (its MLP half is finetuned) and the
    final norm; the head from ``probe`` (LP-FT) or random from ``key`` (label-free)."""
    return mlp_head(model.layers[-1], model.norm, num_classes, probe=probe, key=key)
