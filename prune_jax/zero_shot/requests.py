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
* ``generate_until``: greedy decoding until a stop string, EOS or ``max_new_tokens``,
  with a KV cache: the batch's contexts are prefilled once into per-block caches of
  the bucketed length, then every step runs one token per row against them (fixed
  shapes, so one compile per bucket; a step costs O(T) attention instead of the O(T²)
  of recomputing the buffer), and the host reads the chosen tokens every
  ``CHECK_EVERY`` steps to apply EOS and stop strings.

KV cache for scoring: the choices of a multiple-choice question share their context, so
requests whose inputs agree before the scored positions run that prefix once
(``_score_shared_prefixes``: its per-block keys and values are cached, then all the
continuations are scored against the cache in one batch). The grouping is exact (the
same token ids after truncation to the window), so scores equal those of the whole
forward to float rounding. ``kv_cache=False`` keeps the uncached paths as the reference
(tests compare both).

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
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prune_jax.evaluate import StagedModel, bucket_length
from prune_jax.models.llama.modeling import KVCache
from skmm_jax.common.checks import check_positive_int
from skmm_jax.common.streaming import Progress

Array = jax.Array
TokenPair = tuple[Sequence[int], Sequence[int]]
MIN_BUCKET = 64  # shortest padded length (see ``_batches``)
BATCH_TOKENS = 16384  # tokens per forward batch: the [B, T, D] stream and [B, T, chunk] logits stay small
MIN_PREFIX_STEP, MIN_SPAN_STEP = 32, 16  # padding granularity of shared prefixes and of continuations (``_quarter_bucket``)
CHECK_EVERY = 8  # decoding steps between host checks of EOS and stop strings


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


# The KV-cache forward, block by block like ``StagedModel.stream`` (equal-width blocks
# share one executable): ``_prefill`` is the forward of a [B, T] batch that also keeps each
# block's keys and values, ``_decode`` runs new tokens [B, R] at positions [B, R] against
# them. Shapes are fixed per batch, so a decoding loop never recompiles.


@functools.partial(jax.jit, static_argnums=0)
def _embedded_tokens(graphdef, state, tokens: Array) -> Array:
    return nnx.merge(graphdef, state).embed_tokens(tokens)


@functools.partial(jax.jit, static_argnums=0)
def _block_prefill(graphdef, state, x: Array, positions: Array, inv_freq: Array) -> tuple[Array, KVCache]:
    return nnx.merge(graphdef, state).prefill(x, positions, inv_freq)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=5)
def _block_decode(graphdef, state, x: Array, positions: Array, inv_freq: Array, cache: KVCache) -> tuple[Array, KVCache]:
    return nnx.merge(graphdef, state).decode(x, positions, inv_freq, cache)


@functools.partial(jax.jit, static_argnums=2)
def _rows_of_cache(cache: KVCache, rows: Array, slots: int) -> KVCache:
    """cache[rows] (one copy of a shared prefix per continuation), zero-padded to ``slots``."""
    def take(x: Array) -> Array:
        x = jnp.take(x, rows, axis=0)
        return jnp.pad(x, ((0, 0), (0, slots - x.shape[1]), (0, 0), (0, 0)))

    return KVCache(take(cache.k), take(cache.v))


def _prefill(staged: StagedModel, tokens: Array) -> tuple[Array, list[KVCache]]:
    """(the last residual stream [B, T, D] of ``staged.stream``, each block's KV cache)."""
    x, positions, caches = _embedded_tokens(*staged.model, tokens), staged.default_positions(tokens), []
    for graphdef, state in staged.blocks:
        x, cache = _block_prefill(graphdef, state, x, positions, staged.inv_freq)
        caches.append(cache)
    return x, caches


def _decode(staged: StagedModel, tokens: Array, positions: Array, caches: Sequence[KVCache]) -> tuple[Array, list[KVCache]]:
    """(the last residual stream [B, R, D] of new tokens at ``positions``, the updated
    caches; the caches passed in are donated: do not reuse them)."""
    x, updated = _embedded_tokens(*staged.model, tokens), []
    for (graphdef, state), cache in zip(staged.blocks, caches, strict=True):
        x, cache = _block_decode(graphdef, state, x, positions, staged.inv_freq, cache)
        updated.append(cache)
    return x, updated


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
    batches of ≈ ``batch_tokens`` tokens; B is fixed per bucket, so shapes repeat, except
    for the bucket's last batch, whose B is the power of two ≥ its rows (a handful of
    generation requests must not run a batch of mostly dummy rows at every step).

    Buckets start at ``MIN_BUCKET`` tokens: every distinct T compiles every distinct block
    width once more (a pruned model with per-layer widths has up to L of them), so a few
    coarse buckets cost less than the padding they save would."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    position = 0
    while position < len(order):
        bucket = bucket_length(lengths[order[position]], minimum=MIN_BUCKET)
        rows = max(1, batch_tokens // bucket)
        members = [i for i in order[position:position + rows] if bucket_length(lengths[i], minimum=MIN_BUCKET) == bucket]
        yield bucket, min(rows, bucket_length(len(members), minimum=1)), members
        position += len(members)


def _quarter_bucket(length: int, minimum: int) -> int:
    """``length`` rounded up to a multiple of max(``minimum``, bucket_length / 4): four
    padded lengths per octave, so padding wastes < 25 % (a power-of-two bucket wastes up
    to 50 %) while a task still compiles only a few shapes."""
    step = max(minimum, bucket_length(length, minimum=1) // 4)
    return -(-length // step) * step


def loglikelihood_tokens(
    model,
    requests: Sequence[TokenPair],
    *,
    max_length: int | None = None,
    batch_tokens: int = BATCH_TOKENS,
    progress: Progress | None = None,
    kv_cache: bool = True,
) -> list[tuple[float, bool]]:
    """[(log p(continuation | context), is_greedy)] for token-id (context, continuation) pairs.

    Requests whose model inputs share the same prefix (the tokens before the last
    context token, after truncation to the window: the choices of one multiple-choice
    question) run that prefix once and score their continuations against its KV cache
    (``kv_cache=True``, see ``_score_shared_prefixes``); every other request, and all of
    them with ``kv_cache=False`` (the reference), runs context + continuation whole. Both
    give the same scores to float rounding.

    Args:
      model: our ``Llama`` (any per-layer widths).
      requests: (context ids, continuation ids); the context must be non-empty (pass a
        prefix token such as BOS for an unconditional continuation) and the continuation
        non-empty and at most ``max_length`` tokens.
      max_length: the window L (default: the model's context); longer inputs lose context
        tokens from the left.
      batch_tokens: ≈ tokens per forward batch.
      progress: ``progress(requests_done, total)`` after each batch.
      kv_cache: share the forward of a common prefix between requests.

    Raises:
      ValueError: an empty context or continuation, a continuation longer than the
        window, or token ids outside the vocabulary, naming the request index.
    """
    window = _window(model, max_length)
    check_positive_int(batch_tokens, "batch_tokens")
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
    groups = _shared_prefix_groups(inputs, predicted) if kv_cache else []
    shared = {i for group in groups for i in group}
    alone = [i for i in range(len(inputs)) if i not in shared]
    staged = StagedModel(model)
    scores: list[tuple[list[int], Array, Array]] = []
    done = 0
    batches = (_score_whole(staged, inputs, targets, predicted, alone, batch_tokens),
               _score_shared_prefixes(staged, inputs, targets, predicted, groups, batch_tokens))
    for members, logprob, greedy in (batch for source in batches for batch in source):
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


def _score_whole(staged: StagedModel, inputs, targets, predicted, which: Sequence[int], batch_tokens: int):
    """(request indices, log p [B], is_greedy [B]) per batch of the requests ``which``,
    each run as one whole input (context + continuation): the uncached reference."""
    for bucket, rows, members in _batches([len(inputs[i]) for i in which], batch_tokens):
        members = [which[m] for m in members]
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
        yield members, logprob, greedy


def _shared_prefix_groups(inputs, predicted) -> list[list[int]]:
    """Requests whose inputs agree on every token before the scored ones (same ids, same
    length, hence the same positions), in groups of ≥ 2; the prefix may be empty (a
    one-token context), then only the scored tokens are run."""
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, (tokens, count) in enumerate(zip(inputs, predicted)):
        by_prefix.setdefault(tuple(tokens[:len(tokens) - count]), []).append(i)
    return [group for group in by_prefix.values() if len(group) > 1]


def _score_shared_prefixes(staged: StagedModel, inputs, targets, predicted, groups: Sequence[list[int]], batch_tokens: int):
    """(request indices, log p [B], is_greedy [B]) per batch of groups sharing a prefix.

    Request i's input is its prefix p (P tokens, shared by its group) then its C scored
    positions s (the last context token and the continuation but its last token): a batch
    runs each group's prefix once (``_prefill``: [G, T_p] rows, caches of T_p slots),
    copies the caches to the group's requests (padded to T_p + T_s slots) and runs every
    request's s at positions P + [0, T_s) against them (``_decode``: [R, T_s] rows, each
    query reading slots ≤ its position: its prefix and its own causal past). So a
    4-choice question costs ≈ P + 4 C tokens instead of 4 (P + C), and the scores are those
    of the whole forward (the same keys, values and positions).

    Batches hold groups of one padded prefix length T_p (``_quarter_bucket``), longest
    continuations first, T_s the padded longest of the batch; G = batch_tokens /
    (T_p + m T_s) groups and R = m G requests, m the largest group, padded with dummy
    rows (fewer rows, a power of two, when fewer groups are left at that T_p): a task
    compiles a few programs per T_p.
    """
    if not groups:
        return
    most = max(len(group) for group in groups)

    def lengths(group):
        count = predicted[group[0]]
        prefix = len(inputs[group[0]]) - count
        span = max(predicted[i] for i in group)
        return _quarter_bucket(max(prefix, 1), MIN_PREFIX_STEP), _quarter_bucket(span, MIN_SPAN_STEP)

    keyed = sorted(((lengths(group), group) for group in groups), key=lambda item: (-item[0][0], -item[0][1]))
    position = 0
    while position < len(keyed):
        (prefix_slots, span), _ = keyed[position]  # the batch's longest continuation comes first
        rows = max(1, batch_tokens // (prefix_slots + most * span))
        batch = [group for (slots, _), group in itertools.takewhile(lambda item, slots=prefix_slots: item[0][0] == slots, keyed[position:position + rows])]
        rows = min(rows, bucket_length(len(batch), minimum=1))
        position += len(batch)
        prefix_tokens = np.zeros((rows, prefix_slots), np.int32)
        owner = np.zeros(rows * most, np.int32)
        tokens, positions = np.zeros((rows * most, span), np.int32), np.tile(np.arange(span, dtype=np.int32), (rows * most, 1))
        target, mask = np.zeros((rows * most, span), np.int32), np.zeros((rows * most, span), np.float32)
        members, row = [], 0
        for g, group in enumerate(batch):
            prefix = len(inputs[group[0]]) - predicted[group[0]]
            prefix_tokens[g, :prefix] = inputs[group[0]][:prefix]
            for i in group:
                count = predicted[i]
                owner[row] = g
                tokens[row, :count] = inputs[i][prefix:]
                positions[row] += prefix
                target[row, :count] = targets[i][prefix:]
                mask[row, :count] = 1.0
                members.append(i)
                row += 1
        _, caches = _prefill(staged, jnp.asarray(prefix_tokens))
        owner = jnp.asarray(owner)
        caches = [_rows_of_cache(cache, owner, prefix_slots + span) for cache in caches]
        positions = jnp.asarray(positions)
        x, _ = _decode(staged, jnp.asarray(tokens), positions, caches)
        local = jnp.broadcast_to(jnp.arange(span, dtype=jnp.int32)[None, :], positions.shape)
        logprob, greedy = _continuation_scores(*staged.model, x, local, jnp.asarray(target), jnp.asarray(mask))
        yield members, logprob[:len(members)], greedy[:len(members)]


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
    kv_cache: bool = True,
    check_every: int = CHECK_EVERY,
) -> list[list[int]]:
    """Greedy continuations (token ids) of each context, at most ``max_new_tokens`` long.

    A row stops at ``eos_token`` (not included) or when ``stop(row_index, new_tokens)``
    returns True (the text-level wrapper checks stop strings there); the batch stops when
    every row has. Contexts are truncated from the left to L − max_new_tokens tokens.

    With ``kv_cache`` (the default) a batch is prefilled once into caches of its bucketed
    length, then each step runs one token per row against them (``_decode``, fixed
    shapes: one compile per bucket); the chosen tokens stay on the device and the host
    reads them every ``check_every`` steps to apply EOS and ``stop`` (rows that ended in
    between decode a few wasted tokens, which are dropped, so the output is the same).
    ``kv_cache=False`` is the reference: the whole buffer's forward at every step and a
    host check per token.
    """
    window = _window(model, max_length)
    if not 1 <= max_new_tokens < window:
        raise ValueError(f"max_new_tokens must lie in [1, {window}) (the window), got {max_new_tokens}")
    check_positive_int(check_every, "check_every")
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
        decode = _decode_cached if kv_cache else _decode_recomputed
        decode(staged, buffer, lengths, members, outputs, max_new_tokens=max_new_tokens, stop=stop, eos_token=eos_token,
               check_every=check_every)
    return outputs


class _Rows:
    """The host's view of a decoding batch: appends each member row's new tokens to
    ``outputs`` until EOS (dropped) or ``stop`` ends the row; later tokens are ignored."""

    def __init__(self, members, outputs, stop, eos_token):
        self.members, self.outputs, self.stop, self.eos_token = members, outputs, stop, eos_token
        self.running = [True] * len(members)

    def take(self, row: int, token: int) -> bool:
        """Apply the next token of ``row``; True when it joined the row's output."""
        if not self.running[row]:
            return False
        i = self.members[row]
        if self.eos_token is not None and token == self.eos_token:
            self.running[row] = False
            return False
        self.outputs[i].append(token)
        if self.stop is not None and self.stop(i, self.outputs[i]):
            self.running[row] = False
        return True

    @property
    def all_stopped(self) -> bool:
        return not any(self.running)


def _decode_recomputed(staged, buffer, lengths, members, outputs, *, max_new_tokens, stop, eos_token, check_every):
    """The reference: each step recomputes the forward of the whole buffer."""
    del check_every  # a host check every step
    state = _Rows(members, outputs, stop, eos_token)
    for _ in range(max_new_tokens):
        x = staged.stream(jnp.asarray(buffer))
        chosen = np.asarray(_greedy_next(*staged.model, x, jnp.asarray(lengths - 1)))  # host sync per step
        for row in range(len(members)):
            if state.take(row, int(chosen[row])):
                buffer[row, lengths[row]] = chosen[row]
                lengths[row] += 1
        if state.all_stopped:
            break


def _decode_cached(staged, buffer, lengths, members, outputs, *, max_new_tokens, stop, eos_token, check_every):
    """Prefill the buffer once, then one token per row and step against the KV caches."""
    state = _Rows(members, outputs, stop, eos_token)
    checked = 0  # steps whose tokens the host has applied

    def apply(new: list[Array]) -> None:
        nonlocal checked
        tokens = np.asarray(jnp.stack(new[checked:], axis=1))  # [B, steps]: the one host sync per check
        for step in range(tokens.shape[1]):
            for row in range(len(members)):
                state.take(row, int(tokens[row, step]))
        checked = len(new)

    x, caches = _prefill(staged, jnp.asarray(buffer))
    chosen = _greedy_next(*staged.model, x, jnp.asarray(lengths - 1))  # [B]
    new = [chosen]
    position = jnp.asarray(lengths)[:, None]  # [B, 1]: the slot of the token fed next
    first = jnp.zeros(len(lengths), jnp.int32)
    checks = stop is not None or eos_token is not None
    for step in range(1, max_new_tokens):
        if checks and step % check_every == 0:
            apply(new)
            if state.all_stopped:
                break
        x, caches = _decode(staged, chosen[:, None], position, caches)
        chosen = _greedy_next(*staged.model, x, first)
        position = position + 1
        new.append(chosen)
    if checked < len(new):
        apply(new)


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
