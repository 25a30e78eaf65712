"""HF (transformers) tensor names and layouts ↔ our NNX LLaMA.

One table of rules: a regex on the HF name → our parameter path, the transform into
our layout, and its inverse for export. Loading fills ``nnx.eval_shape``'s abstract
model from the table and reports every problem at once (unexpected names, missing
parameters, shape mismatches), so a wrong checkpoint fails with one readable list.

Layouts (HF stores Linear weights as [out, in]):
  q_proj.weight [N·H, D] → q_kernel [D, N, H]      o_proj.weight [D, N·H] → o_kernel [N, H, D]
  k/v_proj.weight [K·H, D] → k/v_kernel [D, K, H]   gate/up_proj.weight [F, D] → [D, F]
  down_proj.weight [D, F] → down_kernel [F, D]      lm_head.weight [V, D] → lm_head [D, V]
The number of heads of each layer comes from the tensor's own shape (rows / H), so
pruned checkpoints with different widths per layer load through the same rules.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from prune_jax.models.llama.modeling import DTYPES, Llama, LlamaConfig, abstract_llama
from prune_jax.models.llama.sharding import param_sharding

Transform = Callable[[np.ndarray, int], np.ndarray]


def _heads_in(w: np.ndarray, head_dim: int) -> np.ndarray:  # [X·H, D] → [D, X, H]
    return w.T.reshape(w.shape[1], w.shape[0] // head_dim, head_dim)


def _heads_out(w: np.ndarray, head_dim: int) -> np.ndarray:  # [D, X, H] → [X·H, D]
    return w.reshape(w.shape[0], -1).T


def _o_in(w: np.ndarray, head_dim: int) -> np.ndarray:  # [D, N·H] → [N, H, D]
    return w.T.reshape(w.shape[1] // head_dim, head_dim, w.shape[0])


def _o_out(w: np.ndarray, head_dim: int) -> np.ndarray:  # [N, H, D] → [D, N·H]
    return w.reshape(-1, w.shape[-1]).T


def _bias_in(w: np.ndarray, head_dim: int) -> np.ndarray:  # [X·H] → [X, H]
    return w.reshape(-1, head_dim)


def _bias_out(w: np.ndarray, head_dim: int) -> np.ndarray:
    return w.reshape(-1)


def _t(w: np.ndarray, head_dim: int) -> np.ndarray:
    return w.T


def _same(w: np.ndarray, head_dim: int) -> np.ndarray:
    return w


_LAYER = r"model\.layers\.(\d+)\."
# (HF name pattern, our path with {i} for the layer, to ours, back to HF, HF name template)
RULES: tuple[tuple[str, tuple, Transform, Transform, str], ...] = (
    (r"model\.embed_tokens\.weight", ("embed",), _same, _same, "model.embed_tokens.weight"),
    (r"model\.norm\.weight", ("norm", "weight"), _same, _same, "model.norm.weight"),
    (r"lm_head\.weight", ("lm_head",), _t, _t, "lm_head.weight"),
    (_LAYER + r"input_layernorm\.weight", ("layers", "{i}", "input_norm", "weight"), _same, _same, "model.layers.{i}.input_layernorm.weight"),
    (_LAYER + r"post_attention_layernorm\.weight", ("layers", "{i}", "post_attn_norm", "weight"), _same, _same, "model.layers.{i}.post_attention_layernorm.weight"),
    (_LAYER + r"self_attn\.q_proj\.weight", ("layers", "{i}", "attn", "q_kernel"), _heads_in, _heads_out, "model.layers.{i}.self_attn.q_proj.weight"),
    (_LAYER + r"self_attn\.k_proj\.weight", ("layers", "{i}", "attn", "k_kernel"), _heads_in, _heads_out, "model.layers.{i}.self_attn.k_proj.weight"),
    (_LAYER + r"self_attn\.v_proj\.weight", ("layers", "{i}", "attn", "v_kernel"), _heads_in, _heads_out, "model.layers.{i}.self_attn.v_proj.weight"),
    (_LAYER + r"self_attn\.o_proj\.weight", ("layers", "{i}", "attn", "o_kernel"), _o_in, _o_out, "model.layers.{i}.self_attn.o_proj.weight"),
    (_LAYER + r"self_attn\.q_proj\.bias", ("layers", "{i}", "attn", "q_bias"), _bias_in, _bias_out, "model.layers.{i}.self_attn.q_proj.bias"),
    (_LAYER + r"self_attn\.k_proj\.bias", ("layers", "{i}", "attn", "k_bias"), _bias_in, _bias_out, "model.layers.{i}.self_attn.k_proj.bias"),
    (_LAYER + r"self_attn\.v_proj\.bias", ("layers", "{i}", "attn", "v_bias"), _bias_in, _bias_out, "model.layers.{i}.self_attn.v_proj.bias"),
    (_LAYER + r"self_attn\.o_proj\.bias", ("layers", "{i}", "attn", "o_bias"), _same, _same, "model.layers.{i}.self_attn.o_proj.bias"),
    (_LAYER + r"mlp\.gate_proj\.weight", ("layers", "{i}", "mlp", "gate_kernel"), _t, _t, "model.layers.{i}.mlp.gate_proj.weight"),
    (_LAYER + r"mlp\.up_proj\.weight", ("layers", "{i}", "mlp", "up_kernel"), _t, _t, "model.layers.{i}.mlp.up_proj.weight"),
    (_LAYER + r"mlp\.down_proj\.weight", ("layers", "{i}", "mlp", "down_kernel"), _t, _t, "model.layers.{i}.mlp.down_proj.weight"),
    (_LAYER + r"mlp\.gate_proj\.bias", ("layers", "{i}", "mlp", "gate_bias"), _same, _same, "model.layers.{i}.mlp.gate_proj.bias"),
    (_LAYER + r"mlp\.up_proj\.bias", ("layers", "{i}", "mlp", "up_bias"), _same, _same, "model.layers.{i}.mlp.up_proj.bias"),
    (_LAYER + r"mlp\.down_proj\.bias", ("layers", "{i}", "mlp", "down_bias"), _same, _same, "model.layers.{i}.mlp.down_proj.bias"),
)
_COMPILED = tuple((re.compile(pattern + r"$"), path, to_ours, to_hf, name) for pattern, path, to_ours, to_hf, name in RULES)
# Buffers some exporters include; they carry no parameters.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def _our_path(hf_name: str) -> tuple[tuple, Transform] | None:
    for regex, path, to_ours, _, _ in _COMPILED:
        match = regex.match(hf_name)
        if match:
            layer = int(match.group(1)) if match.groups() else None
            return tuple(layer if part == "{i}" else part for part in path), to_ours
    return None


def _flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _unflatten(flat: dict[tuple, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def model_from_state_dict(config: LlamaConfig, tensors: Mapping[str, np.ndarray], *, mesh: Mesh | None = None) -> Llama:
    """Builds our model from HF-named, HF-layout arrays (float arrays of any dtype).

    Tensors are read from ``tensors`` one at a time (it may be lazy, e.g.
    ``checkpoint.SafetensorsTensors``), transposed in their own dtype, cast once to the
    config's dtype and put on the device — or straight onto ``mesh`` with
    ``sharding.param_spec`` — so the host holds about one tensor besides the model,
    and no replicated copy of the model exists.

    Raises:
      ValueError listing every unexpected tensor, missing parameter and shape
      mismatch at once.
    """
    graphdef, state = nnx.split(abstract_llama(config))
    expected = {path: leaf for path, leaf in _flatten(nnx.to_pure_dict(state)).items()}
    dtype = DTYPES[config.dtype]
    filled: dict[tuple, jax.Array] = {}
    problems: list[str] = []
    seen: set[tuple] = set()  # paths a tensor was offered for (wrong shapes are reported once, not also as missing)
    for name in tensors:
        if _IGNORED.match(name):
            continue
        found = _our_path(name)
        if found is None:
            problems.append(f"unexpected tensor {name!r} {tuple(np.shape(tensors[name]))}")
            continue
        path, to_ours = found
        if path == ("lm_head",) and config.tie_word_embeddings:
            continue  # tied: the head is the embedding; some exporters still write it
        if path not in expected:
            problems.append(f"tensor {name!r} has no place in this config (path {'/'.join(map(str, path))})")
            continue
        want = tuple(expected[path].shape)
        seen.add(path)
        array = np.asarray(tensors[name])  # the one tensor on the host
        try:
            value = to_ours(array, config.head_dim)
        except ValueError:  # e.g. rows not a multiple of head_dim
            problems.append(f"{name!r}: shape {tuple(np.shape(array))} does not fit head_dim {config.head_dim}; expected {want} in our layout")
            continue
        if value.shape != want:
            problems.append(f"{name!r}: shape {tuple(np.shape(array))} → {value.shape}, expected {want}")
            continue
        value = np.asarray(value, dtype)  # jnp dtypes are numpy dtypes (bfloat16 via ml_dtypes)
        filled[path] = jnp.asarray(value) if mesh is None else jax.device_put(value, param_sharding(path, value.shape, mesh))
        del value, array
    for path in expected:
        if path not in seen:
            problems.append(f"missing parameter {'/'.join(map(str, path))}")
    if problems:
        raise ValueError(f"checkpoint does not match the LLaMA config ({len(problems)} problems):\n  " + "\n  ".join(problems))
    nnx.replace_by_pure_dict(state, _unflatten(filled))
    return nnx.merge(graphdef, state)


def hf_parameters(model: Llama) -> dict[str, tuple[jax.Array, Transform]]:
    """HF name → (our parameter, its transform into the HF layout); nothing is copied, so a
    writer can convert and write one tensor at a time (``checkpoint.save_hf``)."""
    flat = _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    out = {}
    for path, value in flat.items():
        layer = next((p for p in path if isinstance(p, int)), None)
        template = tuple("{i}" if isinstance(p, int) else p for p in path)
        for _, rule_path, _, to_hf, name in _COMPILED:
            if rule_path == template:
                out[name.replace("{i}", str(layer))] = (value, to_hf)
                break
        else:  # pragma: no cover - every parameter has a rule
            raise AssertionError(f"no HF name for parameter {path}")
    return out


def state_dict_from_model(model: Llama) -> dict[str, np.ndarray]:
    """HF-named, HF-layout float32 arrays of ``model`` (the inverse of loading)."""
    head_dim = model.config.head_dim
    return {name: to_hf(np.asarray(jnp.asarray(value, jnp.float32)), head_dim) for name, (value, to_hf) in hf_parameters(model).items()}
