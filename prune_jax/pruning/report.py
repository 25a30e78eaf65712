"""What ``prune`` did, typed: per-half and per-layer records and the run's summary.

``PruneReport.to_json()`` is the ``pruning.json`` written next to a pruned checkpoint
(JSON-serialisable; the keys are a stable format read by the CLI and benchmarks).
"""

from __future__ import annotations

import dataclasses

from prune_jax.pruning.config import PruneConfig


@dataclasses.dataclass(frozen=True)
class Refit:
    """One ridge refit (``recover.refit_from_grams``).

    Attributes:
      ridge: the chosen λ, None when the unrefit map won on held-out tokens.
      cv_error: its validation error Σ‖X̂W − Y‖²: with k ≥ 2 folds, the k-fold
        cross-validation error (each fold scored by the fit on the other folds, summed over
        the folds: every calibration token once); with 1, on the held-out tokens (the last
        10 %).
      errors: the same error of "unrefit" (the weights before the refit, on the same
        tokens) and of every λ of the grid (keyed f"{λ:g}").
      folds: k (``Recovery.folds``).
    """

    ridge: float | None
    cv_error: float
    errors: dict[str, float]
    folds: int


@dataclasses.dataclass(frozen=True)
class HalfReport:
    """One half (attention or MLP) of one block.

    Attributes:
      kept: unit indices kept (query heads; FFN channels), None when none was removed.
      first_refit: the shared-input refit of q,k,v (gate,up), when it ran.
      second_refit: the refit of o (down), when it ran.
      similar_marked: heads the similarity criterion marked redundant (attention only).
    """

    kept: tuple[int, ...] | None = None
    first_refit: Refit | None = None
    second_refit: Refit | None = None
    similar_marked: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class LayerReport:
    layer: int
    attention: HalfReport = HalfReport()
    mlp: HalfReport = HalfReport()

    def to_json(self) -> dict:
        """{"layer", and when they happened: "qkv_proj_recovery", "similar_heads_marked",
        "heads_kept" (indices), "o_proj_recovery", "gate_up_proj_recovery",
        "channels_kept" (a count), "down_proj_recovery"}."""
        a, m = self.attention, self.mlp
        entries = [
            ("qkv_proj_recovery", _refit_json(a.first_refit)),
            ("similar_heads_marked", None if a.similar_marked is None else list(a.similar_marked)),
            ("heads_kept", None if a.kept is None else list(a.kept)),
            ("o_proj_recovery", _refit_json(a.second_refit)),
            ("gate_up_proj_recovery", _refit_json(m.first_refit)),
            ("channels_kept", None if m.kept is None else len(m.kept)),
            ("down_proj_recovery", _refit_json(m.second_refit)),
        ]
        return {"layer": self.layer, **{name: value for name, value in entries if value is not None}}


def _refit_json(refit: Refit | None) -> dict | None:
    return None if refit is None else {"ridge": refit.ridge, "cv_error": refit.cv_error, "folds": refit.folds, "errors": dict(refit.errors)}


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """The method, options, per-layer widths, parameters before/after, recovery choices
    and timing of one ``prune`` run.

    Attributes:
      config: the ``PruneConfig`` used (recorded flat: ``PruneConfig.to_json``).
      layer_range: blocks [start, stop) pruned.
      attention_ratio, ffn_ratio: the common per-layer ratios (None for the adaptive
        allocation).
      layer_cuts: layer → (heads per group or KV groups, FFN channels) removed.
      parameters_before, parameters_after: all parameters of the model.
      prunable_before, prunable_after: attention + MLP parameters of all blocks.
      layer_heads, layer_intermediate: the widths after pruning ((N, K) and F per layer).
      calibration_shape: [S, T] of the calibration tokens.
      seconds: wall time of ``prune``.
      layers: one record per block.
    """

    config: PruneConfig
    layer_range: tuple[int, int]
    attention_ratio: float | None
    ffn_ratio: float | None
    layer_cuts: dict[int, tuple[int, int]]
    parameters_before: int
    parameters_after: int
    prunable_before: int
    prunable_after: int
    layer_heads: tuple[tuple[int, int], ...]
    layer_intermediate: tuple[int, ...]
    calibration_shape: tuple[int, int]
    seconds: float
    layers: tuple[LayerReport, ...]

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def calibration_tokens(self) -> int:
        return self.calibration_shape[0] * self.calibration_shape[1]

    @property
    def fraction_of_all_removed(self) -> float:
        return 1 - self.parameters_after / self.parameters_before

    @property
    def fraction_of_prunable_removed(self) -> float:
        return (self.prunable_before - self.prunable_after) / self.prunable_before

    def to_json(self) -> dict:
        """The ``pruning.json`` record (JSON-serialisable; a fresh dict the caller may extend)."""
        return {
            "method": self.method,
            "config": self.config.to_json(),
            "allocation": self.config.allocation_mode,
            "layer_range": list(self.layer_range),
            "attention_ratio": self.attention_ratio,
            "ffn_ratio": self.ffn_ratio,
            "layer_cuts": {str(layer): list(cut) for layer, cut in self.layer_cuts.items()},
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "fraction_of_all_removed": self.fraction_of_all_removed,
            "prunable_before": self.prunable_before,
            "prunable_after": self.prunable_after,
            "fraction_of_prunable_removed": self.fraction_of_prunable_removed,
            "layer_heads": [list(p) for p in self.layer_heads],
            "layer_intermediate": list(self.layer_intermediate),
            "calibration_tokens": self.calibration_tokens,
            "calibration_shape": list(self.calibration_shape),
            "seconds": self.seconds,
            "layers": [layer.to_json() for layer in self.layers],
        }
