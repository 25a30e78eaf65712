"""The three request types of zero-shot evaluation, on our JAX LLaMA, batched and jitted.

* ``loglikelihood``: for (context, continuation) pairs, log p(continuation | context) =
  Σ_{t ∈ continuation} log p(x_t | x_<t), and whether every continuation token is the
  greedy (argmax) one. The model sees (context + continuation)[−(L + 1):][:−1] for a
  window of L tokens: the context is truncated from the LEFT, the continuation never.
* ``loglikelihood_rolling``: log p(document) over disjoint windows of L predicted
  tokens, the first conditioned on a prefix token (BOS, else EOS), each later one on the
  window before it (the same windows as lm-evaluation-harness, so the two sum the same
  log-probabilities). With windows that tile a token stream it is −(T − 1)·W·nll of
  ``prune_jax.evaluate.perplexity`` (tested).
* ``generate_until``: greedy decoding until a stop string, EOS or ``max_new_tokens``.
  Each step recomputes the forward of the whole (bucketed) buffer: no KV cache, so a
  step costs O(T²) attention; fine for the short answers of zero-shot tasks, and it
  reuses the one block-by-block forward the rest of the library compiles.

Batching follows the harness: requests are sorted by input length, longest first, and
cut into batches of ≈ ``batch_tokens`` tokens whose length is padded to a power of two
(``bucket_length``) and whose row count is padded with dummy rows. So a task compiles
one program per distinct bucket (O(log L)), never one per request. Right padding is
exact for a causal model. Scores stay on the device until the end (one host sync) unless
a progress callback asks for one per batch.

Token-level functions take token id lists; text-level wrappers take a transformers
tokenizer and encode as the harness's ``hf`` model does (``encode_pair``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.evaluate import StagedModel, bucket_length
from skmm_jax.common.streaming import Progress

Array = jax.Array
TokenPair = tuple[Sequence[int], Sequence[int]]
MIN_BUCKET = 64  # shortest padded length (see ``_batches``)
BATCH_TOKENS = 16384  # tokens per forward batch: the [B, T, D] stream and [B, T, chunk] logits stay small


# ----------------------------------------------------------------------------- jitted kernels


@functools.partial(jax.jit, static_argnums=0)
def _continuation_scores(graphdef, state, x: Array, positions: Array, targets: Array, mask: Array) -> tuple[Array, Array]:
    """(Σ_j mask·log p(targets_j), all masked targets greedy) per row, from the last
    residual stream x [B, T, D] read at the continuation's positions [B, C] only: the
    head (V·D per token, a fifth of SmolLM2's forward) runs on B·C tokens, not B·T, and
    in vocabulary chunks (``chunked_nll``)."""
    model = nnx.merge(graphdef, state)
    hidden = jnp.take_along_axis(x, positions[..., None], axis=1)  # [B, C, D]
    nll, argmax = model.next_token_nll(model.norm(hidden), targets, with_argmax=True)
    logprob = -jnp.sum(nll * mask, axis=1)
    is_greedy = jnp.all((argmax == targets) | (mask == 0), axis=1)
    return logprob, is_greedy


@functools.partial(jax.jit, static_argnums=0)
def _greedy_next(graphdef, state, x: Array, last: Array) -> Array:
    """argmax_v logits at row b's position last[b], [B] int32 (only [B, V] logits)."""
    model = nnx.merge(graphdef, state)
    h = jnp.take_along_axis(x, last[:, None, None], axis=1)  # [B, 1, D]
    return jnp.argmax(model.logits(model.norm(h))[:, 0], axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- token level


def _window(model, max_length: int | None) -> int:
    window = model.config.max_position_embeddings if max_length is None else int(max_length)
    model.config.check_sequence_length(window, name="max_length")
    return window


def _check_ids(ids: Sequence[int], vocab: int, what: str) -> None:
    if len(ids) and (min(ids) < 0 or max(ids) >= vocab):
        raise ValueError(f"{what}: token ids must lie in [0, {vocab}) for this model, got range [{min(ids)}, {max(ids)}]")


def _batches(lengths: Sequence[int], batch_tokens: int):
    """Indices of ``lengths`` sorted longest first, cut into (bucket T, rows B, indices)
    batches of ≈ ``batch_tokens`` tokens; B is fixed per bucket, so shapes repeat.

    Buckets start at ``MIN_BUCKET`` tokens: every distinct T compiles every distinct block
    width once more (a pruned model with per-layer widths has up to L of them), so a few
    coarse buckets cost less than the padding they save would."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    position = 0
    while position < len(order):
        bucket = bucket_length(lengths[order[position]], minimum=MIN_BUCKET)
        rows = max(1, batch_tokens // bucket)
        members = [i for i in order[position:position + rows] if bucket_length(lengths[i], minimum=MIN_BUCKET) == bucket]
        yield bucket, rows, members
        position += len(members)


def loglikelihood_tokens(
    model,
    requests: Sequence[TokenPair],
    *,
    max_length: int | None = None,
    batch_tokens: int = BATCH_TOKENS,
    progress: Progress | None = None,
) -> list[tuple[float, bool]]:
    """[(log p(continuation | context), is_greedy)] for token-id (context, continuation) pairs.

    Args:
      model: our ``Llama`` (any per-layer widths).
      requests: (context ids, continuation ids); the context must be non-empty (pass a
        prefix token such as BOS for an unconditional continuation) and the continuation
        non-empty and at most ``max_length`` tokens.
      max_length: the window L (default: the model's context); longer inputs lose context
        tokens from the left.
      batch_tokens: ≈ tokens per forward batch.
      progress: ``progress(requests_done, total)`` after each batch.

    Raises:
      ValueError: an empty context or continuation, a continuation longer than the
        window, or token ids outside the vocabulary, naming the request index.
    """
    window = _window(model, max_length)
    vocab = model.config.vocab_size
    inputs, targets, predicted = [], [], []
    for index, (context, continuation) in enumerate(requests):
        context, continuation = list(context), list(continuation)
        if not context:
            raise ValueError(f"request {index}: empty context; pass a prefix token (BOS or EOS) as the context")
        if not continuation:
            raise ValueError(f"request {index}: empty continuation: nothing to score")
        if len(continuation) > window:
            raise ValueError(f"request {index}: continuation of {len(continuation)} tokens exceeds the window of {window} tokens")
        _check_ids(context + continuation, vocab, f"request {index}")
        whole = (context + continuation)[-(window + 1):]
        inputs.append(whole[:-1])
        targets.append(whole[1:])
        predicted.append(len(continuation))
    staged = StagedModel(model)
    scores: list[tuple[list[int], Array, Array]] = []
    done = 0
    for bucket, rows, members in _batches([len(x) for x in inputs], batch_tokens):
        span = bucket_length(max(predicted[i] for i in members), minimum=MIN_BUCKET)  # scored positions per row
        tokens = np.zeros((rows, bucket), np.int32)
        positions, target = np.zeros((rows, span), np.int32), np.zeros((rows, span), np.int32)
        mask = np.zeros((rows, span), np.float32)
        for row, i in enumerate(members):
            length, count = len(inputs[i]), predicted[i]
            tokens[row, :length] = inputs[i]
            positions[row, :count] = np.arange(length - count, length)
            target[row, :count] = targets[i][length - count:]
            mask[row, :count] = 1.0
        x = staged.stream(jnp.asarray(tokens))
        logprob, greedy = _continuation_scores(*staged.model, x, *map(jnp.asarray, (positions, target, mask)))
        scores.append((members, logprob, greedy))
        done += len(members)
        if progress is not None:
            logprob.block_until_ready()
            progress(done, len(inputs))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(inputs)
    for members, logprob, greedy in scores:
        logprob, greedy = np.asarray(logprob), np.asarray(greedy)
        for row, i in enumerate(members):
            results[i] = (float(logprob[row]), bool(greedy[row]))
    return results


def rolling_windows(tokens: Sequence[int], prefix_token: int, window: int) -> list[TokenPair]:
    """Disjoint (context, continuation) pairs whose continuations tile ``tokens``: the
    first predicts tokens[:L] after ``prefix_token``; each later one predicts the next
    ≤ L tokens with the window of L tokens before its last one as input."""
    tokens = list(tokens)
    sequence = [prefix_token] + tokens  # sequence[s + 1] is tokens[s]
    pairs = []
    for start in range(0, len(tokens), window):
        stop = min(start + window, len(tokens))
        first_input = max(0, stop - window)  # the input is sequence[first_input:stop]
        pairs.append((sequence[first_input:start + 1], sequence[start + 1:stop + 1]))
    return pairs


def loglikelihood_rolling_tokens(
    model,
    documents: Sequence[Sequence[int]],
    *,
    prefix_token: int,
    max_length: int | None = None,
    batch_tokens: int = BATCH_TOKENS,
    progress: Progress | None = None,
) -> list[float]:
    """log p(document) = Σ_t log p(x_t | up to L tokens before it, the first after
    ``prefix_token``) for each token-id document (``rolling_windows``); all windows of
    all documents are scored in one batched ``loglikelihood_tokens`` call."""
    window = _window(model, max_length)
    pairs, owner = [], []
    for index, document in enumerate(documents):
        if not len(document):
            raise ValueError(f"document {index} is empty: nothing to score")
        for pair in rolling_windows(document, prefix_token, window):
            pairs.append(pair)
            owner.append(index)
    scores = loglikelihood_tokens(model, pairs, max_length=window, batch_tokens=batch_tokens, progress=progress)
    totals = [0.0] * len(documents)
    for index, (logprob, _) in zip(owner, scores):
        totals[index] += logprob
    return totals


def generate_greedy_tokens(
    model,
    contexts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop: Any = None,
    eos_token: int | None = None,
    max_length: int | None = None,
    batch_tokens: int = BATCH_TOKENS,
) -> list[list[int]]:
    """Greedy continuations (token ids) of each context, at most ``max_new_tokens`` long.

    A row stops at ``eos_token`` (not included) or when ``stop(row_index, new_tokens)``
    returns True (the text-level wrapper checks stop strings there); the batch stops when
    every row has. Contexts are truncated from the left to L − max_new_tokens tokens.
    """
    window = _window(model, max_length)
    if not 1 <= max_new_tokens < window:
        raise ValueError(f"max_new_tokens must lie in [1, {window}) (the window), got {max_new_tokens}")
    keep = window - max_new_tokens
    contexts = [list(c)[-keep:] for c in contexts]
    for index, context in enumerate(contexts):
        if not context:
            raise ValueError(f"context {index} is empty; pass a prefix token (BOS or EOS)")
        _check_ids(context, model.config.vocab_size, f"context {index}")
    staged = StagedModel(model)
    outputs: list[list[int]] = [[] for _ in contexts]
    for bucket, rows, members in _batches([len(c) + max_new_tokens for c in contexts], batch_tokens):
        buffer = np.zeros((rows, bucket), np.int32)
        lengths = np.ones(rows, np.int32)  # dummy rows: one token, never read
        for row, i in enumerate(members):
            buffer[row, :len(contexts[i])] = contexts[i]
            lengths[row] = len(contexts[i])
        running = np.zeros(rows, bool)
        running[:len(members)] = True
        for _ in range(max_new_tokens):
            x = staged.stream(jnp.asarray(buffer))
            chosen = np.asarray(_greedy_next(*staged.model, x, jnp.asarray(lengths - 1)))  # host sync per step: stops are host checks
            for row, i in enumerate(members):
                if not running[row]:
                    continue
                token = int(chosen[row])
                if eos_token is not None and token == eos_token:
                    running[row] = False
                    continue
                outputs[i].append(token)
                buffer[row, lengths[row]] = token
                lengths[row] += 1
                if stop is not None and stop(i, outputs[i]):
                    running[row] = False
            if not running.any():
                break
    return outputs


# ----------------------------------------------------------------------------- text level


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with the tokenizer's own special-token default (as the
    harness's ``hf`` model: a LLaMA-2 tokenizer adds BOS, SmolLM2's adds nothing)."""
    return list(tokenizer.encode(text))


def prefix_token(tokenizer) -> int:
    """What an empty context is replaced by: BOS, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")
    return int(token)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness encodes them: trailing whitespace
    of the context moves to the continuation (" Paris", not " " + "Paris"), the pair is
    encoded as ONE string and split at the context's length (merges across the boundary
    stay as the tokenizer makes them); an empty context becomes the prefix token."""
    if not context:
        ids = encode(tokenizer, continuation)
        first = prefix_token(tokenizer)
        return ([first], ids) if not ids or ids[0] != first else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, context_ids = encode(tokenizer, context + continuation), encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def loglikelihood(model, tokenizer, requests: Sequence[tuple[str, str]], **options) -> list[tuple[float, bool]]:
    """``loglikelihood_tokens`` of text (context, continuation) pairs (``encode_pair``)."""
    return loglikelihood_tokens(model, [encode_pair(tokenizer, c, x) for c, x in requests], **options)


def loglikelihood_rolling(model, tokenizer, texts: Sequence[str], **options) -> list[float]:
    """``loglikelihood_rolling_tokens`` of texts (natural-log probability of each)."""
    return loglikelihood_rolling_tokens(model, [encode(tokenizer, t) for t in texts], prefix_token=prefix_token(tokenizer), **options)


def generate_until(
    model,
    tokenizer,
    requests: Sequence[tuple[str, Sequence[str]]],
    *,
    max_new_tokens: int = 32,
    **options,
) -> list[str]:
    """Greedy text continuations of (context, stop strings) requests, cut before the
    first stop string; decoding also ends at EOS or after ``max_new_tokens`` tokens."""
    stops = [list(until) for _, until in requests]

    def stopped(index: int, new_tokens: list[int]) -> bool:
        text = tokenizer.decode(new_tokens)
        return any(s and s in text for s in stops[index])

    contexts = [encode(tokenizer, c) if c else [prefix_token(tokenizer)] for c, _ in requests]
    generated = generate_greedy_tokens(model, contexts, max_new_tokens=max_new_tokens, stop=stopped,
                                       eos_token=tokenizer.eos_token_id, **options)
    texts = []
    for index, tokens in enumerate(generated):
        text = tokenizer.decode(tokens)
        for s in stops[index]:
            if s:
                text = text.split(s)[0]
        texts.append(text)
    return texts
