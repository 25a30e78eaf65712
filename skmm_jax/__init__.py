"""skmm_jax: Sketchy Moment Matching data selection for finetuning, in JAX.

Pipeline, one module per step:
  ``sketch``    JL transforms Γ (gaussian, rademacher, sjlt, countsketch, srht, kronecker),
                the ``SKETCH_KINDS`` registry
  ``gradients`` per-sample gradients with vmap(grad), sketched as they are produced: G̃ = GΓ
  ``head_gradients`` label-free gradients of a linear head on features: pseudo-labels from
                ``kmeans`` (or a head, or a few labels), (p − e_ỹ) ⊗ x Kronecker-sketched
  ``moments``   spectrum Σ̃ = VΛVᵀ, moment matrix B, the moment-matching objective
  ``solve``     optax solver over the capped simplex with exact projections; default c_S
  ``draw``      p → a discrete coreset (greedy / swap moment matching, sampling, top-n, balanced),
                the ``DRAW_RULES`` registry
  ``select``    ``skmm`` end to end, the ``METHODS`` registry, ``select(method, key, features, n)``
  ``methods``   the selection contract: ``SelectionMethod`` (one signature, (indices, diagnostics))
  ``baselines`` uniform, herding, k-center, adaptive sampling, (ridge) leverage scores
  ``deepcore``  label-aware baselines on a linear proxy: EL2N, GraNd, forgetting,
                uncertainty (entropy, margin, least confidence), contextual diversity

Around them: ``sampling`` (draws without replacement, class quotas) and ``train`` (the
linear proxy of the label-aware baselines). Below them, the ground floor ``common``
(streaming, io, checks, precision, gram, checkpoints, kernels, cli) that ``prune_jax``
builds on too. Above them, never imported by the library: ``experiments`` (task
builders, cached features, the FT-setting MLP, metrics, the demo). The package imports
nothing from ``prune_jax``.
"""

from skmm_jax import baselines, deepcore, sketch
from skmm_jax.baselines import BASELINES
from skmm_jax.deepcore import DEEPCORE
from skmm_jax.draw import DRAW_RULES
from skmm_jax.gradients import per_sample_grads, sketch_per_sample_grads
from skmm_jax.head_gradients import PseudoLabelGradientConfig, pseudo_label_gradients
from skmm_jax.methods import SelectionMethod
from skmm_jax.moments import Spectrum, sketched_spectrum, subset_coverage
from skmm_jax.select import METHODS, Selection, SkMMConfig, select, skmm, skmm_indices
from skmm_jax.sketch import KINDS, SKETCH_KINDS, make_pytree_sketch, make_sketch, sketch_rows
from skmm_jax.solve import SolverConfig, max_feasible_coverage, project_capped_simplex, solve_moment_matching

__version__ = "0.1.0"

__all__ = [
    "BASELINES",
    "DEEPCORE",
    "DRAW_RULES",
    "KINDS",
    "METHODS",
    "PseudoLabelGradientConfig",
    "Selection",
    "SelectionMethod",
    "SKETCH_KINDS",
    "SkMMConfig",
    "SolverConfig",
    "Spectrum",
    "baselines",
    "deepcore",
    "make_pytree_sketch",
    "make_sketch",
    "max_feasible_coverage",
    "per_sample_grads",
    "project_capped_simplex",
    "pseudo_label_gradients",
    "select",
    "sketch",
    "sketch_per_sample_grads",
    "sketch_rows",
    "sketched_spectrum",
    "skmm",
    "skmm_indices",
    "solve_moment_matching",
    "subset_coverage",
]
