"""Reading and writing LLaMA checkpoints: HF directories, GGUF files, the embedded model.

- ``load_hf_dir(dir)``: config.json (or our per-layer ``prune_jax_config.json``) +
  safetensors (one file or a sharded ``model.safetensors.index.json``), any float dtype
  (bf16 included).
- ``load_model(source)``: "smollm2-135m" (the embedded GGUF), a ``.gguf`` file or an HF
  directory → (model, tokenizer or None), with a tokenizer/model vocabulary check.
- ``save_hf(model, tokenizer, out_dir)``: safetensors + config.json + tokenizer files +
  a model card, written into a temporary sibling directory and renamed into place, so a
  crash never leaves a half-written checkpoint. The safetensors file is streamed: one
  tensor at a time is converted to the HF layout and written (the host holds one tensor,
  not the model). Both kinds load in stock transformers: uniform widths → a plain
  ``llama`` checkpoint; per-layer widths → config.json of ``model_type`` "pruned_llama"
  and its modeling file (``export``), loaded with ``trust_remote_code=True``. Directories
  an older version wrote for per-layer widths (``prune_jax_config.json`` instead of
  config.json) still load here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from jax.sharding import Mesh

from prune_jax.models.llama.export import hf_config, load_note, model_card, remote_code_files, to_llama_dict
from prune_jax.models.llama.modeling import Llama, LlamaConfig, num_parameters
from prune_jax.models.llama.params import hf_parameters, model_from_state_dict
from skmm_jax.common.io import OUTPUT_MARKER, is_our_output, marker_payload
from skmm_jax.common.safetensors_io import save_safetensors

# Per-layer widths were written with this file instead of config.json before the export
# carried its own modeling file; read for those directories, never written.
OUR_CONFIG = "prune_jax_config.json"
CARD = "README.md"


class SafetensorsTensors(Mapping):
    """HF name → tensor of a directory's safetensors files, read one tensor at a time
    on access, in its stored dtype (bf16 stays bf16: numpy's via ml_dtypes), so loading
    holds about one tensor on the host besides the model. Headers are read up front:
    a missing or corrupt file fails before any tensor is read."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        index = directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as err:
                raise ValueError(f"{index}: not a valid safetensors index ({err})") from None
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors weights (and no model.safetensors.index.json)")
        self._where: dict[str, Path] = {}
        for name in files:
            path = directory / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in the index but missing")
            try:
                with safe_open(str(path), framework="np") as f:
                    self._where.update((key, path) for key in f.keys())
            except Exception as err:  # OSError, ValueError and safetensors' own SafetensorError
                raise ValueError(f"{path}: not a readable safetensors file ({err})") from None

    def __getitem__(self, key: str) -> np.ndarray:
        from safetensors import safe_open

        path = self._where[key]
        try:
            with safe_open(str(path), framework="np") as f:
                return f.get_tensor(key)
        except Exception as err:
            raise ValueError(f"{path}: tensor {key!r} is not readable ({err})") from None

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def read_config(directory: str | os.PathLike, *, dtype: str = "float32") -> LlamaConfig:
    """The directory's config: an older export's per-layer ``prune_jax_config.json`` when
    present, else config.json (a stock "llama" one or our "pruned_llama" one)."""
    directory = Path(directory)
    for name in (OUR_CONFIG, "config.json"):
        path = directory / name
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except ValueError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
            return LlamaConfig.from_hf(to_llama_dict(raw), dtype=dtype)
    raise FileNotFoundError(f"{directory}: no config.json (or {OUR_CONFIG}); is this a model directory?")


def load_hf_dir(directory: str | os.PathLike, *, dtype: str = "float32", mesh: Mesh | None = None) -> Llama:
    """A LLaMA from an HF-style directory (config + safetensors), tensor by tensor in
    ``dtype``, each put straight onto ``mesh`` (``sharding.param_spec``) when given."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    config = read_config(directory, dtype=dtype)
    return model_from_state_dict(config, SafetensorsTensors(directory), mesh=mesh)


def load_gguf(path: str | os.PathLike, *, dtype: str = "float32", mesh: Mesh | None = None) -> Llama:
    """A LLaMA from a GGUF file (dequantised to float32, q/k un-permuted), one tensor at a
    time from the one reader, each cast to ``dtype`` and placed (sharded on ``mesh``) before
    the next is read: the host holds about one tensor besides the model."""
    from prune_jax.models.llama.gguf import open_gguf

    hf_config, tensors = open_gguf(path)
    return model_from_state_dict(LlamaConfig.from_hf(hf_config, dtype=dtype), tensors, mesh=mesh)


def load_tokenizer(source: str | os.PathLike) -> Any | None:
    """transformers tokenizer for a model directory or GGUF file; None when it has none."""
    from transformers import AutoTokenizer

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer source {path} does not exist (expected a model/tokenizer directory or a .gguf file)")
    if path.suffix == ".gguf":
        from prune_jax.models.llama.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(path)
    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return AutoTokenizer.from_pretrained(str(path))
    return None


def check_tokenizer(model: Llama, tokenizer: Any) -> None:
    """ValueError when the tokenizer can emit ids the model has no embedding for."""
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"tokenizer/model mismatch: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{model.config.vocab_size}; use the tokenizer that belongs to this model"
        )


def resolve_model_source(source: str | os.PathLike) -> Path:
    """"smollm2-135m" (or another embedded name) → its file; paths are checked to exist."""
    from prune_jax.embedded import EMBEDDED_MODELS, embedded_model_path

    if str(source) in EMBEDDED_MODELS:
        return embedded_model_path(str(source))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"model {source!r}: no such file or directory (and not one of the embedded models {sorted(EMBEDDED_MODELS)})")
    return path


def load_model(
    source: str | os.PathLike, *, dtype: str = "float32", tokenizer: bool = True, mesh: Mesh | None = None
) -> tuple[Llama, Any | None]:
    """(model, tokenizer) from "smollm2-135m", a .gguf file or an HF directory.

    Args:
      dtype: parameter dtype ("float32" or "bfloat16"; an HF directory is read tensor by
        tensor in its stored dtype and cast once).
      mesh: put every parameter straight onto this mesh (FSDP over its "data" axis,
        tensor parallel over "model", see ``sharding``); None: the default device.
    """
    path = resolve_model_source(source)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: a model file must be .gguf; for safetensors pass the directory holding config.json")
        model = load_gguf(path, dtype=dtype, mesh=mesh)
    else:
        model = load_hf_dir(path, dtype=dtype, mesh=mesh)
    tok = load_tokenizer(path) if tokenizer else None
    check_tokenizer(model, tok)
    return model, tok


def save_hf(
    model: Llama,
    tokenizer: Any | None,
    out_dir: str | os.PathLike,
    *,
    extra_files: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str | None:
    """Writes ``model`` (and tokenizer) as an HF directory, atomically.

    Args:
      model: our LLaMA (any widths).
      tokenizer: a transformers tokenizer or None.
      out_dir: destination. It may not exist, be empty, or be a directory an earlier
        ``save_hf`` wrote (it holds `OUTPUT_MARKER`); it is then replaced as a whole.
        Anything else (a file, a directory of other files) is refused unless
        ``overwrite``: a typo in a path must never delete a user's data.
      extra_files: {name: JSON-serialisable object, or str for a text file} written next
        to the weights (e.g. a pruning report; "README.md": the model card, which is
        otherwise a plain one of ``export.model_card``).
      overwrite: replace whatever is at ``out_dir``.

    Returns:
      None for uniform widths (a plain ``llama`` checkpoint), or for per-layer widths the
      note saying how stock transformers loads it (``trust_remote_code=True``).

    Raises:
      FileExistsError: ``out_dir`` holds something this function did not write and
        ``overwrite`` is False (checked before anything is written).
    """
    import jax
    import jax.numpy as jnp

    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite=overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a checkpoint is meant to be shared
        dtype = np.dtype(jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32)
        params, head_dim = hf_parameters(model), config.head_dim
        layout = {name: (dtype, jax.eval_shape(lambda v, to_hf=to_hf: to_hf(v, head_dim), value).shape)
                  for name, (value, to_hf) in params.items()}

        def hf_tensor(name: str) -> np.ndarray:  # one parameter to the host, in the HF layout and the file's dtype
            value, to_hf = params[name]
            return np.asarray(to_hf(np.asarray(value), head_dim), dtype)

        save_safetensors(tmp / "model.safetensors", layout, hf_tensor, metadata={"format": "pt"})
        hf = config.to_hf_dict()
        hf["dtype"] = config.dtype
        _write_description(model, tokenizer, out_dir, tmp, hf, extra_files or {})
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if out_dir.exists() or out_dir.is_symlink():
            old = out_dir.with_name(f".{out_dir.name}.old")
            _remove(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            _remove(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return None if config.uniform else load_note(out_dir, uniform=False)


def _write_description(model: Llama, tokenizer: Any | None, out_dir: Path, tmp: Path, hf: dict, extra_files: dict[str, Any]) -> None:
    """Everything but the tensors into ``tmp``: config.json (``hf``, the config's keyword
    arguments, as ``export.hf_config`` gives them), the modeling file for per-layer widths,
    the tokenizer, the model card, ``extra_files`` and the marker."""
    config = model.config
    (tmp / "config.json").write_text(json.dumps({**hf, **hf_config(config)}, indent=2) + "\n")
    for name, text in remote_code_files(config).items():
        (tmp / name).write_text(text)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    files = {CARD: model_card(config, out_dir, parameters=num_parameters(model)), **extra_files, OUTPUT_MARKER: marker_payload("save_hf")}
    for name, obj in files.items():
        (tmp / name).write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def is_replaceable(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` does not exist, is an empty directory, or was written by `save_hf`
    (it holds `OUTPUT_MARKER`)."""
    path = Path(out_dir)
    if not path.exists() and not path.is_symlink():
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    return not any(path.iterdir()) or is_our_output(path)


def check_replaceable(out_dir: str | os.PathLike, *, overwrite: bool) -> None:
    """FileExistsError unless `save_hf` may write ``out_dir`` (see `is_replaceable`)."""
    if not overwrite and not is_replaceable(out_dir):
        what = "a file" if Path(out_dir).is_file() else "a non-empty directory that prune_jax did not write"
        raise FileExistsError(f"{out_dir} is {what}; choose another path or pass overwrite=True (--overwrite) to replace it")
