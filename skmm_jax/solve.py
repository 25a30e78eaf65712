"""SkMM step 3: solve the moment-matching relaxation over the capped simplex with optax.

    min_{p ∈ P}  Σ_j ω_j relu(κ λ_j − (Bᵀp)_j)²,     P = {p : 0 ≤ p_i ≤ 1/n, Σ_i p_i = 1}.

The solver works in the scale-free variable q = n p ∈ Q = {0 ≤ q_i ≤ 1, Σ q_i = n}
(q_i is "how much of sample i is in the coreset"), so one learning rate works for any
N and n. Each step: gradient → centre it (subtract its mean) → optax update → EXACT
Euclidean projection onto Q. Centring projects the gradient onto the tangent space
Σ_i dq_i = 0. It changes nothing for projected gradient descent (the projection
absorbs constant shifts), but it is what lets Adam move at all: B ≥ 0, so every
coordinate of the raw gradient has the same sign, Adam's per-coordinate
normalisation turns it into the same step everywhere, and the projection undoes it.

The loop is one ``lax.while_loop`` under ``jit`` (early stopping when the iterate stops
moving), with the loss curve written into a fixed-size buffer; all operations are
elementwise or reductions over N, so the cost per iteration is O(N m) and N can be
sharded across devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from skmm_jax.common.checks import check_positive_int
from skmm_jax.common.precision import HIGHEST
from skmm_jax.common.streaming import Progress
from skmm_jax.moments import Spectrum, direction_coverage, direction_weights, moment_matching_loss

Array = jax.Array

OPTIMIZERS = ("pgd", "nesterov", "adam")


def project_capped_simplex(x: Array, total: float | Array, *, cap: float = 1.0, iterations: int = 40) -> Array:
    """Euclidean projection of x onto {y : 0 ≤ y_i ≤ cap, Σ y_i = total}.

    The solution is y_i = clip(x_i − τ, 0, cap) for the unique τ with Σ y_i = total
    (KKT). τ is bracketed by bisection (Σ clip(x − τ) is non-increasing in τ), then
    solved exactly on the bracket's active set: with F the free coordinates
    (0 < x_i − τ < cap) and C the capped ones, τ = (Σ_F x_i + |C|·cap − total)/|F|.
    Two such refinements make the result exact to float rounding, not to the
    bisection tolerance. Only elementwise maps and sums over x, so x may be sharded.

    Args:
      x: [N] point to project.
      total: Σ y (needs 0 < total ≤ N·cap).
      cap: upper bound of every coordinate.
      iterations: bisection steps before the exact refinement.
    """
    x = x.astype(jnp.float32)
    total = jnp.asarray(total, jnp.float32)
    cap = jnp.float32(cap)

    def mass(tau):
        return jnp.sum(jnp.clip(x - tau, 0.0, cap))

    def bisect(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = mass(mid) > total
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    # mass(max x − total/N − cap)… simpler safe bracket: mass(lo) = N·cap ≥ total, mass(hi) = 0.
    lo, hi = jax.lax.fori_loop(0, iterations, bisect, (jnp.min(x) - cap, jnp.max(x)))
    tau = 0.5 * (lo + hi)
    for _ in range(2):
        shifted = x - tau
        free = (shifted > 0.0) & (shifted < cap)
        capped = shifted >= cap
        num_free = jnp.sum(free.astype(jnp.float32))
        exact = (jnp.sum(jnp.where(free, x, 0.0)) + cap * jnp.sum(capped.astype(jnp.float32)) - total) / jnp.maximum(num_free, 1.0)
        tau = jnp.where(num_free > 0, exact, tau)
    return jnp.clip(x - tau, 0.0, cap)


@functools.partial(dataclasses.dataclass, frozen=True)
class SolverConfig:
    """How the relaxation is solved (hashable: a static argument of the jitted solver).

    Attributes:
      optimizer: "pgd" (projected gradient, step 1/L), "nesterov" (projected gradient
        with Nesterov momentum 0.9, step 1/L) or "adam" (optax.adam on the centred
        gradient; learning rate in units of q, default 0.01).
      learning_rate: None for the default of the optimizer. For pgd/nesterov it
        multiplies 1/L, L = 2‖B diag(√ω)‖²/n² the Lipschitz constant of ∇_q L.
      max_steps: iteration cap (also the length of the loss curve).
      tol: stop when max_i |Δq_i| < tol (q in [0, 1]).
      weighting: "absolute" (ω_j = 1, the paper's) or "relative" (ω_j = 1/λ_j²).
    """

    optimizer: str = "nesterov"
    learning_rate: float | None = None
    max_steps: int = 500
    tol: float = 1e-5
    weighting: str = "absolute"

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check_positive_int(self.max_steps, "max_steps")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")


class SolveResult(NamedTuple):
    """Output of ``solve_moment_matching``.

    Attributes:
      p: [N] weights in P (Σ p = 1, 0 ≤ p ≤ 1/n).
      losses: [max_steps] loss after each step; NaN after early stopping.
      steps: [] number of steps run.
      coverage: [] min_j (Bᵀp)_j/λ_j over active directions (κ reached by p).
    """

    p: Array
    losses: Array
    steps: Array
    coverage: Array


def _optimizer(config: SolverConfig, lipschitz: Array) -> optax.GradientTransformation:
    centre = optax.stateless(lambda g, _: jax.tree.map(lambda x: x - jnp.mean(x), g))
    if config.optimizer == "adam":
        return optax.chain(centre, optax.adam(config.learning_rate or 1e-2))
    step = (config.learning_rate or 1.0) / lipschitz
    momentum = 0.9 if config.optimizer == "nesterov" else None
    return optax.chain(centre, optax.sgd(step, momentum=momentum, nesterov=momentum is not None))


@functools.partial(jax.jit, static_argnames=("n", "config"))
def solve_moment_matching(spectrum: Spectrum, coverage: Array, n: int, config: SolverConfig = SolverConfig(), init: Array | None = None) -> SolveResult:
    """Minimises L(p) over P with an optax optimiser and exact projections.

    Args:
      spectrum: from ``sketched_spectrum`` (normalised).
      coverage: κ = 1/c_S, the fraction of every eigenvalue the weights must carry.
      n: coreset size (static): the cap is 1/n.
      config: solver settings (static).
      init: optional [N] starting weights p (default uniform 1/N).
    """
    moments = spectrum.moments
    num = moments.shape[0]
    weights = direction_weights(spectrum, config.weighting)
    coverage = jnp.asarray(coverage, jnp.float32)

    def loss_q(q):
        return moment_matching_loss(q / n, spectrum, coverage, weights)

    # L = 2 λ_max(B W Bᵀ)/n² = 2 λ_max(W^½ BᵀB W^½)/n²: an m×m eigenvalue, not N×N.
    scaled = moments * jnp.sqrt(weights)[None, :]
    gram = jnp.matmul(scaled.T, scaled, precision=HIGHEST)
    lipschitz = jnp.maximum(2.0 * jnp.linalg.eigvalsh(gram)[-1] / jnp.float32(float(n) ** 2), jnp.finfo(jnp.float32).tiny)
    optimizer = _optimizer(config, lipschitz)

    q0 = jnp.full((num,), n / num, jnp.float32) if init is None else project_capped_simplex(init * n, n)
    with jax.numpy_dtype_promotion("standard"):
        opt_state0 = optimizer.init(q0)
    state0 = (q0, opt_state0, jnp.int32(0), jnp.float32(jnp.inf), jnp.full((config.max_steps,), jnp.nan, jnp.float32))

    def keep_going(state):
        _, _, step, change, _ = state
        return (step < config.max_steps) & (change >= config.tol)

    def body(state):
        q, opt_state, step, _, losses = state
        grad = jax.grad(loss_q)(q)
        # optax mixes Python floats with int32 step counts (bias correction); allow it
        # even when the caller runs with strict dtype promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grad, opt_state, q)
        q_new = project_capped_simplex(q + updates, n)
        losses = losses.at[step].set(loss_q(q_new))
        return q_new, opt_state, step + 1, jnp.max(jnp.abs(q_new - q)), losses

    q, _, steps, _, losses = jax.lax.while_loop(keep_going, body, state0)
    p = q / n
    return SolveResult(p, losses, steps, jnp.min(direction_coverage(p, spectrum)))


def max_feasible_coverage(
    spectrum: Spectrum,
    n: int,
    config: SolverConfig = SolverConfig(),
    *,
    bisection_steps: int = 10,
    slack: float = 0.02,
    progress: Progress | None = None,
) -> tuple[float, SolveResult]:
    """The largest κ = 1/c_S that weights in P can reach in every direction, by bisection.

    κ* = max_{p∈P} min_j (Bᵀp)_j/λ_j lies in [1, N/n]: uniform weights reach 1, and no
    direction can get more than the mean of its n largest B_ij, at most N/n times λ_j.
    The default c_S = 1/κ* asks for the most moment in every direction that the pool
    can supply with n samples — the tightest exploitation constraint of the theory
    (variance ∝ c_S) that is still feasible, so the relaxation is neither slack
    (c_S ≥ 1: uniform is optimal, nothing is learned) nor infeasible (the loss then
    trades directions against each other and piles mass onto the cheapest ones).
    A κ counts as reached when the solver's p covers at least (1 − slack)·κ.
    The bisection runs on log κ, warm-starting each solve from the last feasible p.

    Args:
      spectrum, n, config: as for ``solve_moment_matching``.
      bisection_steps: solves after the one at κ = 1 (each costs up to max_steps).
      slack: relative shortfall of coverage still counted as reached.
      progress: optional ``progress(solves_done, solves_total)``: once with 0 before
        the first solve, then after each solve has finished (a solve is one jitted
        loop of up to max_steps); solves_total is 1 + bisection_steps (1 when n = N).
        It is called between solves, where the bisection reads the coverage back
        anyway, so it adds no synchronisation inside the jitted loops.

    Returns:
      (κ*, the solve at κ*).
    """
    num = spectrum.moments.shape[0]
    lo, hi = 0.0, float(jnp.log(num / n))
    total = 1 + bisection_steps if hi > 0.0 else 1
    if progress is not None:
        progress(0, total)
    best = solve_moment_matching(spectrum, jnp.float32(1.0), n, config)
    if progress is not None:
        best.coverage.block_until_ready()
        progress(1, total)
    if hi <= 0.0:
        return 1.0, best
    for step in range(bisection_steps):
        mid = 0.5 * (lo + hi)
        kappa = float(jnp.exp(mid))
        result = solve_moment_matching(spectrum, jnp.float32(kappa), n, config, best.p)
        if float(result.coverage) >= (1.0 - slack) * kappa:
            lo, best = mid, result
        else:
            hi = mid
        if progress is not None:
            progress(step + 2, total)
    return float(jnp.exp(lo)), best
