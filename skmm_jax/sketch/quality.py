"""How well a sketch preserves geometry: the numbers tests and benchmarks report."""

from __future__ import annotations

import numpy as np


def norm_ratios(rows: np.ndarray, sketched: np.ndarray) -> np.ndarray:
    """‖x_i Γ‖² / ‖x_i‖² per row (1 is perfect; JL: 1 ± O(1/√m))."""
    rows = np.asarray(rows, np.float64)
    sketched = np.asarray(sketched, np.float64)
    return np.sum(sketched**2, axis=1) / np.sum(rows**2, axis=1)


def inner_product_error(rows: np.ndarray, sketched: np.ndarray) -> float:
    """Relative Frobenius error of the Gram matrix: ‖SSᵀ − XXᵀ‖_F / ‖XXᵀ‖_F."""
    rows = np.asarray(rows, np.float64)
    sketched = np.asarray(sketched, np.float64)
    exact = rows @ rows.T
    return float(np.linalg.norm(sketched @ sketched.T - exact) / np.linalg.norm(exact))


def subspace_distortion(sketched_basis: np.ndarray) -> float:
    """ε of a subspace embedding, given an orthonormal basis Q [k, r] sketched to QΓ [k, m].

    Γ embeds span(Q) with distortion ε when (1 − ε)‖x‖² ≤ ‖xΓ‖² ≤ (1 + ε)‖x‖² for all
    x in the span, i.e. every singular value σ of QΓ has |σ² − 1| ≤ ε.
    """
    s = np.linalg.svd(np.asarray(sketched_basis, np.float64), compute_uv=False)
    if s.shape[0] < sketched_basis.shape[0]:  # m < k: some direction is sent to 0
        return 1.0
    return float(np.max(np.abs(s**2 - 1.0)))
