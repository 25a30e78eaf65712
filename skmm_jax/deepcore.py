"""Label-aware data-selection baselines of the DeepCore family (Guo, Zhao & Bai 2022).

Each selector function has the signature of ``skmm_jax.baselines`` plus the labels::

    selector(key, features, n, *, labels, **keyword_only_options) -> int32 [n]

- ``features``: [N, d] floating, one row per sample; ``labels``: [N] integer classes
  0..C−1 (C = max label + 1 ≥ 2).
- Returns n distinct indices, best first.

All of them score the pool with a *proxy model* (Coleman et al. 2020, "selection via
proxy"): a linear softmax classifier p(x) = softmax(Wᵀx̂ + b), W [d, C], b [C], on the
standardised features x̂ = (x − μ)/σ, trained briefly on the whole pool from zeros
with AdamW (``train_proxy``: the linear-probe trainer of ``skmm_jax.train.probe``; the
problem is convex, so zeros is a natural start and the key only orders the minibatches). The probabilities of every sample after each epoch,
p_t(x_i) for t = 1..E, are recorded; y_i is the one-hot label.

- ``el2n`` (Paul, Ganguli & Dziugaite 2021): E_t ‖p_t(x_i) − y_i‖₂ over the proxy
  epochs (their score is taken early in training; a short proxy run is "early").
- ``grand`` (same paper): E_t ‖∇_θ ℓ(x_i, y_i; θ_t)‖₂ with θ = (W, b). For the linear
  head ∂ℓ/∂W = x̂ (p − y)ᵀ and ∂ℓ/∂b = p − y, so the norm is
  ‖p_t − y‖₂ · sqrt(‖x̂‖² + 1) in closed form.
- ``forgetting`` (Toneva et al. 2019): the number of forgetting events, epochs t with
  sample i classified correctly at t and wrongly at t + 1; samples never classified
  correctly count as forgotten more often than any learned one.
- ``uncertainty`` (Coleman et al. 2020) of the final predictions: "entropy"
  −Σ_c p_c log p_c, "margin" 1 − (p_(1) − p_(2)), "least-confidence" 1 − p_(1).
- ``contextual_diversity`` (Agarwal et al. 2020): greedy k-center on the final
  probability vectors with the symmetric KL divergence as the distance.

Score-based selectors keep the n largest scores; ties are broken uniformly at random
with the key. By default the top n is global (``class_balanced=False``), as in DeepCore's
defaults for Uncertainty and GraNd; DeepCore's Forgetting defaults to per-class
selection, available here as ``class_balanced=True`` for every score-based selector
(each class gets a share of n proportional to its size, by largest remainders:
``sampling.class_quotas``).

The selectors validate in Python (labels must be concrete: C and the class quotas are
static sizes) and call jitted pieces — ``train_proxy``, the ``*_scores`` functions,
``kcenter_symmetric_kl`` — which are pure functions of arrays and compose under
``jit``. Memory: the probability history is [E, N, C] float32.

``DEEPCORE`` maps the command-line names to registry entries (``skmm_jax.methods``)
that declare ``needs_labels`` and return ``(indices, diagnostics)``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from skmm_jax.common.checks import check_labels, check_rows
from skmm_jax.methods import SelectionMethod
from skmm_jax.sampling import check_subset_size, class_quotas
from skmm_jax.train.probe import LinearProbe, LinearProbeConfig, fit_linear_softmax, standardize

Array = jax.Array

UNCERTAINTY_SCORES = ("entropy", "margin", "least-confidence")
# Probabilities are floored here before taking logs (softmax underflows to 0 in f32).
_PROBABILITY_FLOOR = 1e-7

PROXY = LinearProbeConfig(epochs=10, batch_size=64, learning_rate=1e-2, weight_decay=1e-4, optimizer="adamw")
"""The default proxy training: a short AdamW run (forgetting needs ≥ 2 epochs to see an event)."""

__all__ = [
    "DEEPCORE",
    "PROXY",
    "ProxyResult",
    "UNCERTAINTY_SCORES",
    "contextual_diversity",
    "el2n",
    "el2n_scores",
    "entropy",
    "forgetting",
    "forgetting_scores",
    "grand",
    "grand_scores",
    "kcenter_symmetric_kl",
    "least_confidence",
    "margin",
    "symmetric_kl",
    "train_proxy",
    "uncertainty",
    "uncertainty_scores",
]


# ----------------------------------------------------------------------------- proxy


class ProxyResult(NamedTuple):
    """What ``train_proxy`` returns (a pytree)."""

    probe: LinearProbe  # the classifier after the last epoch, with its standardisation (μ, σ)
    probabilities: Array  # [E, N, C] softmax of every sample after each epoch
    losses: Array  # [E] mean cross-entropy over the pool after each epoch


def train_proxy(
    key: Array, features: Array, labels, config: LinearProbeConfig = PROXY, *, num_classes: int | None = None
) -> ProxyResult:
    """Trains the linear softmax proxy on the whole pool and records its predictions.

    The linear-probe trainer (``skmm_jax.train.probe.fit_linear_softmax``): mean
    cross-entropy −(1/N) Σ_i log softmax(Wᵀx̂_i + b)_{y_i} from W = 0, b = 0 over
    ``config.epochs`` shuffled passes of minibatches, in one jitted ``lax.scan``,
    recording every sample's probabilities after each epoch. Deterministic given the
    key (which only shuffles).

    Args:
      key: PRNG key; epoch t shuffles with the t-th of ``split(key, E)``.
      features: [N, d] floating array.
      labels: [N] integer classes 0..C−1.
      config: see ``LinearProbeConfig`` (default `PROXY`).
      num_classes: C (default max label + 1).

    Returns:
      ``ProxyResult`` with the final classifier, the per-epoch probabilities [E, N, C]
      and losses [E].
    """
    features = jnp.asarray(check_rows(features))
    labels = check_labels(labels, features.shape[0], min_classes=2)
    needed = int(labels.max()) + 1
    if num_classes is None:
        num_classes = needed
    elif not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < needed:
        raise ValueError(f"num_classes must be None or an int >= max label + 1 = {needed}, got {num_classes!r}")
    if not isinstance(config, LinearProbeConfig):
        raise ValueError(f"config must be a LinearProbeConfig, got {type(config).__name__}")
    fitted = fit_linear_softmax(
        key, features, jnp.asarray(labels), jnp.float32(config.learning_rate), jnp.float32(config.weight_decay),
        num_classes=num_classes, epochs=config.epochs, batch_size=min(config.batch_size, features.shape[0]),
        optimizer_kind=config.optimizer, record=True,
    )  # fmt: skip
    return ProxyResult(fitted.probe, fitted.probabilities, fitted.pool_losses)


# ----------------------------------------------------------------------------- scores


@jax.jit
def el2n_scores(probabilities: Array, labels: Array) -> Array:
    """EL2N: (1/E) Σ_t ‖p_t(x_i) − onehot(y_i)‖₂.

    Args:
      probabilities: [E, N, C] per-epoch class probabilities.
      labels: [N] int classes.

    Returns:
      [N] float32, in [0, √2].
    """
    one_hot = jax.nn.one_hot(labels, probabilities.shape[-1], dtype=jnp.float32)  # [N, C]
    errors = jnp.linalg.norm(probabilities - one_hot[None, :, :], axis=-1)  # [E, N]
    return jnp.mean(errors, axis=0)


@jax.jit
def grand_scores(probabilities: Array, labels: Array, standardized: Array) -> Array:
    """GraNd of the linear head: (1/E) Σ_t ‖p_t − y‖₂ · sqrt(‖x̂_i‖² + 1).

    For logits z = Wᵀx̂ + b and ℓ = −log softmax(z)_y, ∂ℓ/∂z = p − y, so
    ∇_W ℓ = x̂ (p − y)ᵀ, ∇_b ℓ = p − y and ‖∇_θ ℓ‖² = ‖p − y‖² (‖x̂‖² + 1) exactly.

    Args:
      probabilities: [E, N, C] per-epoch class probabilities.
      labels: [N] int classes.
      standardized: [N, d] the proxy's inputs x̂.

    Returns:
      [N] float32 expected per-sample gradient norms.
    """
    return el2n_scores(probabilities, labels) * jnp.sqrt(jnp.sum(jnp.square(standardized), axis=1) + 1.0)


@jax.jit
def forgetting_scores(probabilities: Array, labels: Array) -> Array:
    """Forgetting events: #{t < E : argmax p_t(x_i) = y_i and argmax p_{t+1}(x_i) ≠ y_i}.

    A sample that is never classified correctly gets E, more than the ⌊E/2⌋ events
    any learned sample can have: Toneva et al. count unlearned samples as forgotten
    infinitely often.

    Args:
      probabilities: [E, N, C] per-epoch class probabilities.
      labels: [N] int classes.

    Returns:
      [N] float32 counts (integers).
    """
    correct = jnp.argmax(probabilities, axis=-1) == labels[None, :]  # [E, N]
    events = jnp.sum(correct[:-1] & ~correct[1:], axis=0, dtype=jnp.int32)
    never_learned = ~jnp.any(correct, axis=0)
    return jnp.where(never_learned, probabilities.shape[0], events).astype(jnp.float32)


@partial(jax.jit, static_argnames=("score",))
def uncertainty_scores(probabilities: Array, score: str) -> Array:
    """Uncertainty of predictions [N, C] → [N] float32, larger = more uncertain.

    "entropy": −Σ_c p_c log p_c; "margin": 1 − (p_(1) − p_(2)); "least-confidence":
    1 − p_(1), with p_(1) ≥ p_(2) the two largest probabilities.
    """
    if score == "entropy":
        return jnp.sum(jax.scipy.special.entr(probabilities), axis=-1)
    if score == "margin":
        top_two = jax.lax.top_k(probabilities, 2)[0]
        return 1.0 - (top_two[:, 0] - top_two[:, 1])
    if score == "least-confidence":
        return 1.0 - jnp.max(probabilities, axis=-1)
    raise ValueError(f"score must be one of {UNCERTAINTY_SCORES}, got {score!r}")


def _floored(probabilities: Array) -> Array:
    p = jnp.maximum(probabilities.astype(jnp.float32), _PROBABILITY_FLOOR)
    return p / jnp.sum(p, axis=-1, keepdims=True)


def _symmetric_kl(p: Array, log_p: Array, q: Array, log_q: Array) -> Array:
    return jnp.sum((p - q[None, :]) * (log_p - log_q[None, :]), axis=-1)


@jax.jit
def symmetric_kl(probabilities: Array, reference: Array) -> Array:
    """KL(p_i‖q) + KL(q‖p_i) = Σ_c (p_ic − q_c)(log p_ic − log q_c) for every row.

    Probabilities are floored at 1e-7 and renormalised first, so the divergence stays
    finite when softmax underflows.

    Args:
      probabilities: [N, C] rows p_i.
      reference: [C] q.

    Returns:
      [N] float32, ≥ 0.
    """
    p, q = _floored(probabilities), _floored(reference)
    return _symmetric_kl(p, jnp.log(p), q, jnp.log(q))


@partial(jax.jit, static_argnames=("n",))
def kcenter_symmetric_kl(key: Array, probabilities: Array, n: int) -> Array:
    """Greedy k-center on probability vectors under the symmetric KL divergence.

    The first center is uniform at random; each next one is
    argmax_i min_{j ∈ S} D(p_i, p_j), D = ``symmetric_kl``. Keeps the [N]
    nearest-center divergences, so a step costs O(N·C) and no N×N matrix exists.

    Args:
      key: PRNG key for the first center.
      probabilities: [N, C] class probabilities.
      n: static number of centers, 0 < n ≤ N.

    Returns:
      [n] int32 distinct indices, in selection order.
    """
    p = _floored(probabilities)
    log_p = jnp.log(p)
    num_samples = p.shape[0]
    first = jax.random.randint(key, (), 0, num_samples, jnp.int32)

    def pick(t, state):
        taken, nearest, indices = state
        # −1 < every divergence, so duplicates of a center (D = 0) still beat taken rows.
        i = jnp.argmax(jnp.where(taken, -1.0, nearest)).astype(jnp.int32)
        nearest = jnp.minimum(nearest, _symmetric_kl(p, log_p, p[i], log_p[i]))
        return taken.at[i].set(True), nearest, indices.at[t].set(i)

    state = (
        jnp.zeros((num_samples,), bool).at[first].set(True),
        _symmetric_kl(p, log_p, p[first], log_p[first]),
        jnp.zeros((n,), jnp.int32).at[0].set(first),
    )
    return jax.lax.fori_loop(1, n, pick, state)[2]


# ----------------------------------------------------------------------------- top n


@partial(jax.jit, static_argnames=("n",))
def _top_scores(key: Array, scores: Array, n: int) -> Array:
    tie_break = jax.random.uniform(key, scores.shape, jnp.float32)
    return jnp.lexsort((tie_break, -scores))[:n].astype(jnp.int32)  # by score, then at random


@partial(jax.jit, static_argnames=("n",))
def _top_scores_per_class(key: Array, scores: Array, labels: Array, quotas: Array, n: int) -> Array:
    num_samples = scores.shape[0]
    tie_break = jax.random.uniform(key, scores.shape, jnp.float32)
    by_class = jnp.lexsort((tie_break, -scores, labels))  # grouped by class, best first
    sizes = jnp.bincount(labels, length=quotas.shape[0]).astype(jnp.int32)
    class_start = jnp.cumsum(sizes) - sizes
    rank_in_class = jnp.arange(num_samples, dtype=jnp.int32) - class_start[labels[by_class]]
    kept = jnp.zeros((num_samples,), bool).at[by_class].set(rank_in_class < quotas[labels[by_class]])
    # Exactly n rows are kept; list them best first across classes.
    return jnp.lexsort((tie_break, -scores, (~kept).astype(jnp.int32)))[:n].astype(jnp.int32)


def _keep_top(key: Array, scores: Array, n: int, labels: np.ndarray, class_balanced: bool) -> Array:
    if not class_balanced:
        return _top_scores(key, scores, n)
    quotas = class_quotas(np.bincount(labels), n)
    return _top_scores_per_class(key, scores, jnp.asarray(labels), jnp.asarray(quotas), n)


# ----------------------------------------------------------------------------- selectors


def _prepare(key: Array, features, n: int, labels, proxy: LinearProbeConfig) -> tuple[Array, np.ndarray, ProxyResult, Array]:
    """Validates, trains the proxy with split(key)[0]; returns (features, labels, proxy, key for the rest)."""
    features = jnp.asarray(check_rows(features))
    check_subset_size(n, features.shape[0])
    labels = check_labels(labels, features.shape[0], min_classes=2)
    proxy_key, rest_key = jax.random.split(key)
    return features, labels, train_proxy(proxy_key, features, labels, proxy), rest_key


def el2n(
    key: Array, features: Array, n: int, *, labels, proxy: LinearProbeConfig = PROXY, class_balanced: bool = False
) -> Array:
    """The n samples with the largest EL2N score (Paul et al. 2021): hardest first.

    See ``el2n_scores``; probabilities from ``train_proxy``.

    Args:
      key: PRNG key; ``split(key)`` gives the proxy's key and the tie-breaking key.
      features: [N, d] floating array.
      n: static subset size, 0 < n <= N.
      labels: [N] integer classes 0..C−1.
      proxy: proxy training settings.
      class_balanced: top scores per class, n_c ∝ class size, instead of globally.

    Returns:
      [n] int32 distinct indices, largest score first.
    """
    _, labels, result, key = _prepare(key, features, n, labels, proxy)
    return _keep_top(key, el2n_scores(result.probabilities, jnp.asarray(labels)), n, labels, class_balanced)


def grand(
    key: Array, features: Array, n: int, *, labels, proxy: LinearProbeConfig = PROXY, class_balanced: bool = False
) -> Array:
    """The n samples with the largest expected gradient norm, GraNd (Paul et al. 2021).

    See ``grand_scores``: E_t ‖∇_{W,b} ℓ‖ of the proxy over its epochs, in closed form.
    Arguments and return as ``el2n``.
    """
    features, labels, result, key = _prepare(key, features, n, labels, proxy)
    standardized = standardize(features, result.probe.mean, result.probe.scale)
    scores = grand_scores(result.probabilities, jnp.asarray(labels), standardized)
    return _keep_top(key, scores, n, labels, class_balanced)


def forgetting(
    key: Array, features: Array, n: int, *, labels, proxy: LinearProbeConfig = PROXY, class_balanced: bool = False
) -> Array:
    """The n most forgotten samples (Toneva et al. 2019), never-learned ones first.

    See ``forgetting_scores``: events are counted between consecutive proxy epochs.
    Counts tie often; ties are broken uniformly at random with the key. Arguments and
    return as ``el2n`` (DeepCore's own default is class_balanced=True).
    """
    _, labels, result, key = _prepare(key, features, n, labels, proxy)
    return _keep_top(key, forgetting_scores(result.probabilities, jnp.asarray(labels)), n, labels, class_balanced)


def uncertainty(
    key: Array,
    features: Array,
    n: int,
    *,
    labels,
    score: str = "entropy",
    proxy: LinearProbeConfig = PROXY,
    class_balanced: bool = False,
) -> Array:
    """The n samples the final proxy is least sure about (Coleman et al. 2020).

    Args:
      key, features, n, labels, proxy, class_balanced: as ``el2n``.
      score: "entropy" | "margin" | "least-confidence"; see ``uncertainty_scores``.

    Returns:
      [n] int32 distinct indices, most uncertain first.
    """
    if score not in UNCERTAINTY_SCORES:
        raise ValueError(f"score must be one of {UNCERTAINTY_SCORES}, got {score!r}")
    _, labels, result, key = _prepare(key, features, n, labels, proxy)
    return _keep_top(key, uncertainty_scores(result.probabilities[-1], score), n, labels, class_balanced)


def entropy(
    key: Array, features: Array, n: int, *, labels, proxy: LinearProbeConfig = PROXY, class_balanced: bool = False
) -> Array:
    """``uncertainty`` with score="entropy": largest −Σ_c p_c log p_c first."""
    return uncertainty(key, features, n, labels=labels, score="entropy", proxy=proxy, class_balanced=class_balanced)


def margin(
    key: Array, features: Array, n: int, *, labels, proxy: LinearProbeConfig = PROXY, class_balanced: bool = False
) -> Array:
    """``uncertainty`` with score="margin": smallest gap p_(1) − p_(2) first."""
    return uncertainty(key, features, n, labels=labels, score="margin", proxy=proxy, class_balanced=class_balanced)


def least_confidence(
    key: Array, features: Array, n: int, *, labels, proxy: LinearProbeConfig = PROXY, class_balanced: bool = False
) -> Array:
    """``uncertainty`` with score="least-confidence": smallest top probability first."""
    return uncertainty(
        key, features, n, labels=labels, score="least-confidence", proxy=proxy, class_balanced=class_balanced
    )


def contextual_diversity(
    key: Array, features: Array, n: int, *, labels, proxy: LinearProbeConfig = PROXY
) -> Array:
    """Contextual diversity (Agarwal et al. 2020): k-center on the proxy's predictions.

    ``kcenter_symmetric_kl`` on the final-epoch probabilities [N, C]: samples the
    proxy sees differently (different classes, different confidence) are far apart.

    Args:
      key: PRNG key; ``split(key)`` gives the proxy's key and the first center's key.
      features: [N, d] floating array.
      n: static subset size, 0 < n <= N.
      labels: [N] integer classes 0..C−1 (to train the proxy).
      proxy: proxy training settings.

    Returns:
      [n] int32 distinct indices, in selection order.
    """
    _, _, result, key = _prepare(key, features, n, labels, proxy)
    return kcenter_symmetric_kl(key, result.probabilities[-1], n)


# ----------------------------------------------------------------------------- registry

DEEPCORE: dict[str, SelectionMethod] = {
    name: SelectionMethod.from_indices(name, fn, needs_labels=True)
    for name, fn in (
        ("el2n", el2n),
        ("grand", grand),
        ("forgetting", forgetting),
        ("entropy", entropy),
        ("margin", margin),
        ("least-confidence", least_confidence),
        ("contextual-diversity", contextual_diversity),
    )
}
"""The label-aware selectors by command-line name, as selection-contract entries (``needs_labels``)."""
