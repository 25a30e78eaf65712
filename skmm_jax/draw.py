"""SkMM step 4: turning the relaxed weights p into a discrete coreset of n samples.

Rules:
  - "sample": n draws without replacement ∝ p (Gumbel top-k).
  - "top": the n largest p_i.
  - "balanced": per class, a share of n proportional to the class's p-mass (largest
    remainders), drawn ∝ p within the class.
  - "greedy": discrete moment matching. Start empty and repeatedly add the sample
    that most reduces D(S) = Σ_j ω_j relu(κ λ_j − (1/n) Σ_{i∈S} B_ij)², the objective
    evaluated on the coreset itself (each member weighs 1/n). Ties — e.g. once every
    direction is covered — go to the larger p.
  - "swap": draw ∝ p, then local search: exchange the member whose removal costs
    least with the non-member that then helps most, while D(S) decreases.

Why the discrete rules: solving the relaxation exactly and sampling ∝ p does not make
the sampled subset meet the moment constraints (a sample of n points misses small
clusters that p covers fractionally); greedy/swap optimise the quantity the theory
bounds, the coverage of the subset actually returned. Each greedy step or swap costs
O(N m) and runs inside one jitted ``lax`` loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from skmm_jax.moments import Spectrum
from skmm_jax.sampling import sample_without_replacement

Array = jax.Array
HIGHEST = jax.lax.Precision.HIGHEST

DRAWS = ("sample", "top", "balanced", "greedy", "swap")


def _subset_loss(total: Array, target: Array, weights: Array, n: int) -> Array:
    """D for coreset moment sums ``total`` [..., m] (members weigh 1/n)."""
    shortfall = jax.nn.relu(target - total / n)
    return jnp.sum(weights * shortfall * shortfall, axis=-1)


def draw_sample(key: Array, p: Array, n: int) -> Array:
    return sample_without_replacement(key, p, n)


def draw_top(p: Array, n: int) -> Array:
    return jax.lax.top_k(p, n)[1].astype(jnp.int32)


def draw_balanced(key: Array, p: Array, labels: Array, n: int, num_classes: int) -> Array:
    """Class shares n_c ∝ Σ_{i∈c} p_i (largest remainders, capped at the class size),
    then ∝ p inside each class, realised as one Gumbel top-k with per-class quotas."""
    labels = jnp.asarray(labels, jnp.int32)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [N, C]
    mass = jnp.matmul(p, one_hot, precision=HIGHEST)
    sizes = jnp.sum(one_hot, axis=0)
    ideal = jnp.minimum(mass / jnp.sum(mass) * n, sizes)
    quota = jnp.floor(ideal)
    # Hand out the remaining slots by largest remainder among classes with room left.
    remainder = jnp.where(quota < sizes, ideal - quota, -1.0)
    missing = n - jnp.sum(quota)
    order = jnp.argsort(-remainder)
    rank = jnp.zeros((num_classes,), jnp.float32).at[order].set(jnp.arange(num_classes, dtype=jnp.float32))
    quota = quota + ((rank < missing) & (quota < sizes)).astype(jnp.float32)
    # Rank every sample inside its class by log p + Gumbel; keep the first quota[c] of class c.
    gumbel = jax.random.gumbel(key, p.shape, jnp.float32)
    score = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -1e4) + gumbel
    order = jnp.lexsort((-score, labels))  # by class, then best first
    sorted_labels = labels[order]
    start = jnp.cumsum(sizes) - sizes
    position = jnp.arange(p.shape[0], dtype=jnp.float32) - start[sorted_labels]
    keep = position < quota[sorted_labels]
    # Kept samples first (stable), then take n: exactly n are kept when quotas sum to n.
    picked = order[jnp.argsort(~keep, stable=True)][:n]
    return picked.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("n",))
def draw_greedy(spectrum: Spectrum, p: Array, coverage: Array, weights: Array, n: int) -> Array:
    """Greedy discrete moment matching (see module docstring); [n] int32 in pick order."""
    moments = spectrum.moments
    target = coverage * spectrum.eigenvalues
    num = moments.shape[0]
    # Tie-break by p, scaled far below any real decrease of D.
    tie = p / jnp.maximum(jnp.max(p), 1e-30) * 1e-12

    def pick(step, state):
        total, taken, chosen = state
        loss = _subset_loss(total[None, :] + moments, target[None, :], weights[None, :], n)  # [N]
        score = jnp.where(taken, jnp.inf, loss - tie)
        best = jnp.argmin(score)
        return total + moments[best], taken.at[best].set(True), chosen.at[step].set(best)

    state = (jnp.zeros_like(target), jnp.zeros((num,), bool), jnp.zeros((n,), jnp.int32))
    return jax.lax.fori_loop(0, n, pick, state)[2]


@functools.partial(jax.jit, static_argnames=("n", "max_swaps"))
def refine_swaps(spectrum: Spectrum, indices: Array, coverage: Array, weights: Array, n: int, max_swaps: int) -> tuple[Array, Array]:
    """Best-improvement exchange local search on D(S); returns (indices, swaps made)."""
    moments = spectrum.moments
    target = coverage * spectrum.eigenvalues
    num = moments.shape[0]
    member = jnp.zeros((num,), bool).at[indices].set(True)
    total = jnp.sum(moments[indices], axis=0)

    def loss_of(totals):
        return _subset_loss(totals, target[None, :], weights[None, :], n)

    def cond(state):
        _, _, _, swaps, improved = state
        return improved & (swaps < max_swaps)

    def body(state):
        member, total, indices, swaps, _ = state
        current = _subset_loss(total, target, weights, n)
        # Remove the member whose removal raises D least …
        drop_loss = jnp.where(member, loss_of(total[None, :] - moments), jnp.inf)
        out = jnp.argmin(drop_loss)
        reduced = total - moments[out]
        # … and add the non-member that lowers D most.
        add_loss = jnp.where(member, jnp.inf, loss_of(reduced[None, :] + moments))
        add_loss = add_loss.at[out].set(jnp.inf)
        inn = jnp.argmin(add_loss)
        better = add_loss[inn] < current * (1.0 - 1e-6)
        slot = jnp.argmax(indices == out)
        member = jnp.where(better, member.at[out].set(False).at[inn].set(True), member)
        total = jnp.where(better, reduced + moments[inn], total)
        indices = jnp.where(better, indices.at[slot].set(inn.astype(jnp.int32)), indices)
        return member, total, indices, swaps + better.astype(jnp.int32), better

    state = (member, total, jnp.asarray(indices, jnp.int32), jnp.int32(0), jnp.bool_(True))
    _, _, indices, swaps, _ = jax.lax.while_loop(cond, body, state)
    return indices, swaps
