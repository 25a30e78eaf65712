"""What to prune and how: ``PruneConfig``, grouped by concern.

  - ``Budget``: how much goes and where (sparsity or fixed module ratios, layer range,
    GQA head mode, allocation mode — a key of ``allocation.ALLOCATIONS``);
  - ``HeadCriterion``: which heads go first (the method's score, or the paper's
    attention-map similarity);
  - ``Recovery``: the layer-wise ridge refits to the dense outputs and bias compensation;
  - method options: the knobs only one method reads (dap-obs's dampening, magnitude's
    norm) are declared by the method's registry entry (``scores.Score.options``), and
    ``PruneConfig.options`` is an instance of that type (None: the method's defaults);
  - run-level: method, batch size, seed.

Every group validates itself in ``__post_init__``. ``PruneConfig.to_json()`` is the flat
``pruning.json`` "config" record (one key per setting, the method's options among
them) and ``PruneConfig.from_json`` its inverse: a flag or a benchmark variant maps to
one key. This module imports no pipeline module (prune, stage, report, resume), so
all of them import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from prune_jax.pruning.allocation import ALLOCATIONS, HEAD_MODES
from prune_jax.pruning.recover import FOLDS, RIDGE_GRID
from prune_jax.pruning.scores import SCORES
from skmm_jax.common.checks import check_positive_int

HEAD_CRITERIA = ("score", "similarity")
REFITS = ("full", "second")
RIDGE_TOWARD = ("zero", "current")


def _one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How many units go, and from which layers.

    Attributes:
      sparsity: target fraction of the prunable parameters (attention + MLP weights of
        all blocks) to remove, in (0, 1); met by the allocation mode over the layer range
        (heads are coarse units, so the exact fraction is reported).
      attention_ratio, ffn_ratio: fixed per-layer ratios instead of the budget (0 disables
        that module; either given: ``sparsity`` and ``allocation`` are ignored).
      layer_range: blocks [start, stop) to prune; default the paper's [4, L − 2) (first and
        last blocks kept), clipped to the model.
      head_mode: "per-group" (the same number of query heads leaves every KV group; k/v
        untouched) or "kv-groups" (whole KV groups with their query heads).
      allocation: a key of ``allocation.ALLOCATIONS`` ("uniform": one ratio over the layer
        range; "adaptive": FLAP's per-layer standardised scores, one global threshold;
        "global": raw scores per parameter freed, one threshold — for scores on one scale
        across layers, dap-obs's relative output errors), or None: the method's own
        (``Score.allocation``, "global" for dap-obs, "uniform" otherwise).
      max_block_removal: for "adaptive" / "global": the largest fraction of a block's FFN
        channels removed (None: 0.9 adaptive, 0.5 global — ``allocation.GLOBAL_MAX_REMOVED``).
      allocation_samples: calibration sequences read by the allocation's first pass over
        the dense model (the modes that read scores, and a score's loss sensitivity): the
        first n (rounded up to a multiple of the data-parallel devices); None: the
        method's own (``Score.allocation_samples``; all when it has none). The
        pass only ranks units across blocks, and costs a forward (and the Grams) over what
        it reads; the units themselves are removed on the whole calibration set.
    """

    sparsity: float = 0.2
    attention_ratio: float | None = None
    ffn_ratio: float | None = None
    layer_range: tuple[int, int] | None = None
    head_mode: str = "per-group"
    allocation: str | None = None
    max_block_removal: float | None = None
    allocation_samples: int | None = None

    def __post_init__(self):
        if not (isinstance(self.sparsity, (int, float)) and 0.0 < self.sparsity < 1.0):
            raise ValueError(f"sparsity must lie in (0, 1), got {self.sparsity!r}")
        for name in ("attention_ratio", "ffn_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
        _one_of("head_mode", self.head_mode, HEAD_MODES)
        _one_of("allocation", self.allocation, tuple(ALLOCATIONS) + (None,))  # the registry: a mode registered at run time is valid
        if self.max_block_removal is not None and not 0.0 < self.max_block_removal < 1.0:
            raise ValueError(f"max_block_removal must lie in (0, 1), got {self.max_block_removal!r}")
        if self.allocation_samples is not None and not (isinstance(self.allocation_samples, int) and self.allocation_samples >= 1):
            raise ValueError(f"allocation_samples must be an int >= 1 (or None: all), got {self.allocation_samples!r}")

    @property
    def fixed_ratios(self) -> bool:
        """Fixed per-module ratios replace the budget."""
        return self.attention_ratio is not None or self.ffn_ratio is not None


@dataclasses.dataclass(frozen=True)
class HeadCriterion:
    """Which query heads go first.

    Attributes:
      criterion: "score" (the method's head score) or "similarity" (paper §3.2: heads whose
        attention maps are within Jensen–Shannon divergence τ of another head go first, the
        score fills the rest of the budget; ``scores.similar_heads``).
      similarity_tau: τ for the similarity criterion (paper: 0.2, in nats).
    """

    criterion: str = "score"
    similarity_tau: float = 0.2

    def __post_init__(self):
        _one_of("head_criterion", self.criterion, HEAD_CRITERIA)
        if not self.similarity_tau > 0:
            raise ValueError(f"similarity_tau must be > 0, got {self.similarity_tau!r}")


@dataclasses.dataclass(frozen=True)
class Recovery:
    """Layer-wise recovery by ridge least squares to the dense outputs, and bias compensation.

    Attributes:
      enabled: refit the pruned blocks (and every later block: they see a changed stream).
      refit: "full" (q,k,v, o, gate,up, down — the paper's order) or "second" (o and down only).
      ridge_grid: λ candidates (the validation error picks one, or keeps the unrefit map).
      folds: how λ is chosen: k ≥ 2 (default 4): k-fold cross-validation over the
        calibration sequences (k contiguous blocks of whole sequences; the sum of the held-out
        errors over the folds picks λ, then W is fit on all of them; needs ≥ k sequences);
        1: one hold-out, the last 10 % of the calibration tokens (the earlier rule: which
        sequences come last then moves the choice). k-fold keeps k·(C² + C·O) sums per
        refit instead of 2·(C² + C·O) and takes k + 1 eigendecompositions instead of one
        (``recover``).
      ridge_toward: what the ridge shrinks the refit toward: "current" (default: the weights
        before the refit, so directions the calibration set does not excite keep them;
        ``recover.ridge_path``) or "zero" (classic ridge: erases those directions, which made
        recovery hurt end to end — docs/pruning.md, "Why recovery used to hurt").
      bias_compensation: add W[:, pruned] · mean(x_pruned) to the output bias (FLAP); None:
        the score's ``compensates_biases`` (on for "flap" only). Adds zero biases where the
        model has none; with recovery, every bias is then refit jointly with its kernel (an
        intercept).
    """

    enabled: bool = False
    refit: str = "full"
    ridge_grid: tuple[float, ...] = RIDGE_GRID
    ridge_toward: str = "current"
    folds: int = FOLDS
    bias_compensation: bool | None = None

    def __post_init__(self):
        _one_of("refit", self.refit, REFITS)
        _one_of("ridge_toward", self.ridge_toward, RIDGE_TOWARD)
        check_positive_int(self.folds, "recover_folds")

    @property
    def toward_current(self) -> bool:
        return self.ridge_toward == "current"


# The flat record (pruning.json's "config", the resume fingerprint, ``from_json``): key →
# (group field of PruneConfig or None for a run-level field, field within the group).
_RECORD: dict[str, tuple[str | None, str]] = {
    "method": (None, "method"),
    "sparsity": ("budget", "sparsity"),
    "attention_ratio": ("budget", "attention_ratio"),
    "ffn_ratio": ("budget", "ffn_ratio"),
    "layer_range": ("budget", "layer_range"),
    "head_mode": ("budget", "head_mode"),
    "allocation": ("budget", "allocation"),
    "max_block_removal": ("budget", "max_block_removal"),
    "allocation_samples": ("budget", "allocation_samples"),
    "head_criterion": ("heads", "criterion"),
    "similarity_tau": ("heads", "similarity_tau"),
    "recover": ("recovery", "enabled"),
    "refit": ("recovery", "refit"),
    "ridge_grid": ("recovery", "ridge_grid"),
    "ridge_toward": ("recovery", "ridge_toward"),
    "recover_folds": ("recovery", "folds"),
    "bias_compensation": ("recovery", "bias_compensation"),
    "batch_size": (None, "batch_size"),
    "seed": (None, "seed"),
}


def option_fields(method: str) -> tuple[str, ...]:
    """Names of ``method``'s options (empty when it has none)."""
    options = SCORES[method].options
    return () if options is None else tuple(f.name for f in dataclasses.fields(options))


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """What to prune and how (module docstring: the groups).

    Attributes:
      method: unit score, a key of ``scores.SCORES``: "dap-obs" (default; the greedy output
        approximation with optimal compensation, best in ``benchmarks/prune_llama``), "dap"
        (the paper's distribution-aware scores), the baselines.
      budget: ``Budget``.
      heads: ``HeadCriterion``.
      recovery: ``Recovery``.
      options: the method's options, an instance of ``SCORES[method].options`` (e.g.
        ``scores.ObsOptions(damp=...)`` for "dap-obs", ``scores.NormOptions(norm=...)`` for
        "magnitude"); None: the method's defaults (set here, so the field always holds the
        options used, or None for a method without options).
      batch_size: calibration sequences per forward step.
      seed: for "random" and nothing else.
    """

    method: str = "dap-obs"
    budget: Budget = Budget()
    heads: HeadCriterion = HeadCriterion()
    recovery: Recovery = Recovery()
    options: Any = None
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        SCORES.lookup(self.method, setting="method")  # the registry: an entry registered at run time is valid too
        for name, kind in (("budget", Budget), ("heads", HeadCriterion), ("recovery", Recovery)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        object.__setattr__(self, "options", _method_options(self.method, self.options))
        check_positive_int(self.batch_size, "batch_size")

    @property
    def allocation_mode(self) -> str:
        """The allocation used: ``budget.allocation``, or the method's own when it is None."""
        return SCORES[self.method].allocation if self.budget.allocation is None else self.budget.allocation

    @property
    def allocation_samples(self) -> int | None:
        """Sequences the allocation's dense pass reads: ``budget.allocation_samples``, or the
        method's own (``Score.allocation_samples``) when it is None; None: all."""
        given = self.budget.allocation_samples
        return SCORES[self.method].allocation_samples if given is None else given

    @property
    def compensate(self) -> bool:
        """Bias compensation: ``recovery.bias_compensation``, or the method's default when it is None."""
        given = self.recovery.bias_compensation
        return SCORES[self.method].compensates_biases if given is None else given

    def to_json(self) -> dict:
        """The flat record of every setting (pruning.json's "config"; the resume
        fingerprint): one key per field of the groups (``recover`` for ``recovery.enabled``,
        ``head_criterion`` for ``heads.criterion``) and one per method option."""
        record = {key: getattr(self if group is None else getattr(self, group), name) for key, (group, name) in _RECORD.items()}
        if self.options is not None:
            record.update(dataclasses.asdict(self.options))
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "PruneConfig":
        """The config of a flat record (``to_json``'s keys; absent keys take their
        defaults), e.g. a CLI's flags or a benchmark's variant.

        Raises:
          ValueError: a key that is neither a setting nor an option of the method (naming
            the methods that have it; the message starts with the key, so a CLI can put
            its flag there), or an invalid value.
        """
        method = record.get("method", cls.method)
        SCORES.lookup(method, setting="method")
        groups: dict[str | None, dict[str, Any]] = {None: {}, "budget": {}, "heads": {}, "recovery": {}}
        options = {}
        own_options = option_fields(method)
        for key, value in record.items():
            if key in _RECORD:
                group, name = _RECORD[key]
                groups[group][name] = tuple(value) if key in ("layer_range", "ridge_grid") and value is not None else value
            elif key in own_options:
                options[key] = value
            else:
                owners = [m for m in SCORES if key in option_fields(m)]
                if not owners:
                    raise ValueError(f"{key} is not a prune setting (settings: {tuple(_RECORD)}; method options: see scores.SCORES)")
                raise ValueError(f"{key} is an option of method {' / '.join(map(repr, owners))}, not of {method!r} "
                                 f"(its options: {', '.join(own_options) or 'none'})")
        top = groups.pop(None)
        return cls(**top, budget=Budget(**groups["budget"]), heads=HeadCriterion(**groups["heads"]),
                   recovery=Recovery(**groups["recovery"]), options=SCORES[method].options(**options) if options else None)


def _method_options(method: str, options):
    """``options``, or the method's defaults when None; ValueError when they are not of the
    type the method's registry entry declares."""
    kind = SCORES[method].options
    clash = set(option_fields(method)) & set(_RECORD)
    if clash:  # one flat record holds both
        raise ValueError(f"method {method!r} declares options named like prune settings: {sorted(clash)}")
    if kind is None:
        if options is not None:
            raise ValueError(f"method {method!r} takes no options, got {options!r}")
        return None
    if options is None:
        return kind()
    if type(options) is not kind:
        raise ValueError(f"options for method {method!r} must be a {kind.__name__} (or None for its defaults), got {options!r}")
    return options
