"""GPTQ: int6 rounding that knows which input directions matter (Frantar et al., arXiv 2210.17323).

For a linear layer y = W x, the output error of quantizing W is tr(E H Eᵀ) with H = E[x xᵀ] over
calibration inputs. GPTQ quantizes the columns of W one at a time and pushes each column's rounding
error onto the columns not yet quantized, weighted by the Cholesky factor of H⁻¹, so later columns
compensate for earlier ones. The grid is fixed first (the same per-row fp16 scales round-to-nearest
uses), so the file format and the decoder do not change: only the symbols are better.
"""

from __future__ import annotations

import numpy as np

from aprtool.codecs.quant import Clip, Quantized, as_rows, error_sums, levels_for, quantize
from aprtool.errors import IntegrityError

# Fraction of H's mean diagonal added to its diagonal. The paper uses 0.01; on our models 1.0 (half the
# data's Hessian, half isotropic) kept more of the gain on held-out text: the Hessian of a few thousand
# calibration windows is noisy, and a tied embedding is also the input table, where every direction
# counts alike (docs/performance.md, "Calibrated rounding").
DEFAULT_DAMP = 1.0
BLOCK = 128  # columns per lazy-update block


def _inverse_cholesky(h: np.ndarray, damp: float, name: str) -> np.ndarray:
    """The upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹; the damping grows tenfold twice if needed."""
    mean = float(np.mean(np.diag(h)))
    for attempt in range(3):
        damped = h + np.eye(h.shape[0]) * (damp * 10**attempt * mean)
        try:
            lower = np.linalg.cholesky(damped)
            inverse = np.linalg.inv(lower)
            return np.linalg.cholesky(inverse.T @ inverse).T
        except np.linalg.LinAlgError:
            continue
    raise IntegrityError(f"tensor {name!r}: its calibration Hessian is not positive definite even when damped")


def check_hessian(h: np.ndarray, cols: int, name: str) -> None:
    """A Hessian that cannot guide the rounding is an error, never a silent round-to-nearest."""
    if h.shape != (cols, cols):
        raise IntegrityError(f"tensor {name!r}: calibration Hessian is {h.shape}, the tensor has {cols} columns")
    if not np.isfinite(h).all():
        raise IntegrityError(f"tensor {name!r}: calibration Hessian holds NaN/Inf (calibration inputs overflowed)")
    if not np.any(np.diag(h) > 0):
        raise IntegrityError(f"tensor {name!r}: calibration Hessian is all zero (no calibration input reached it)")


def gptq_quantize(
    weights: np.ndarray, hessian: np.ndarray, clip: Clip, *, damp: float = DEFAULT_DAMP, act_order: bool = True,
    name: str = "tensor", bits: int = 6,
) -> Quantized:  # fmt: skip
    """int6 symbols for `weights` (rows × cols, or more dims flattened to cols) on the per-row grid of
    `quantize(weights, clip)`, chosen column by column with error feedback under `hessian` (cols × cols)."""
    grid = quantize(weights, clip, bits)  # the scales, and the input checks
    levels = levels_for(bits)
    rows, cols = as_rows(grid.shape)
    if not cols or not rows:
        return grid
    check_hessian(hessian, cols, name)
    w = np.asarray(weights, dtype=np.float64).reshape(rows, cols).copy()
    h = np.asarray(hessian, dtype=np.float64).copy()
    dead = np.diag(h) <= 0  # inputs that never fire: their weights cannot matter, quantize them to 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(cols)
    w, h = w[:, order], h[np.ix_(order, order)]
    u = _inverse_cholesky(h, damp, name)
    scale = grid.scales.astype(np.float64)
    divisor = np.where(scale > 0, scale, np.inf)
    symbols = np.zeros((rows, cols), np.int8)
    for start in range(0, cols, BLOCK):
        end = min(start + BLOCK, cols)
        block = w[:, start:end]
        errors = np.zeros_like(block)
        for j in range(end - start):
            q = np.clip(np.rint(block[:, j] / divisor), -levels, levels)
            symbols[:, start + j] = q
            err = (block[:, j] - q * scale) / u[start + j, start + j]
            block[:, j + 1 :] -= np.outer(err, u[start + j, start + j + 1 : end])
            errors[:, j] = err
        w[:, end:] -= errors @ u[start:end, end:]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(cols)
    return Quantized(symbols[:, inverse], grid.scales, grid.shape, bits)


# Per-row Hessians (gptq_rows) are sums over the positions where each token is used: a rare token's is
# the sum of few samples, so it is noisier. Each row is damped by ROW_DAMP·sqrt(its mean diagonal × the
# mean over rows): relative to its own scale that is more for a rare row (towards round-to-nearest) and
# less for a frequent one. On held-out text this beat damping every row by a fixed fraction of its own
# diagonal (docs/performance.md).
ROW_DAMP = 0.03


def row_factors(hessians: np.ndarray, damp: float = ROW_DAMP, name: str = "tensor") -> np.ndarray:
    """Per row, the upper Cholesky factor of (H_r + damp·sqrt(m_r·m)·I)⁻¹ (m_r: the row's mean diagonal, m:
    their mean); a row no calibration input reached (all-zero H_r) gets the identity: round-to-nearest.
    They depend on neither the clip nor the width, so a tensor's are computed once for every candidate."""
    if hessians.ndim != 3 or hessians.shape[1] != hessians.shape[2]:
        raise IntegrityError(f"tensor {name!r}: per-row Hessians are {hessians.shape}, need rows × cols × cols")
    if not np.isfinite(hessians).all() or not np.any(hessians):
        raise IntegrityError(f"tensor {name!r}: per-row calibration Hessians are all zero or hold NaN/Inf")
    h = np.array(hessians, dtype=np.float64)
    idx = np.arange(h.shape[1])
    mean = h[:, idx, idx].mean(axis=1)
    h[mean <= 0] = np.eye(h.shape[1])
    reached = np.where(mean > 0, mean, 0.0)
    h[:, idx, idx] += (damp * np.sqrt(reached * reached.mean()))[:, None]
    try:
        inverse_lower = np.linalg.inv(np.linalg.cholesky(h))
        return np.swapaxes(np.linalg.cholesky(np.swapaxes(inverse_lower, 1, 2) @ inverse_lower), 1, 2)
    except np.linalg.LinAlgError:
        raise IntegrityError(f"tensor {name!r}: a row's calibration Hessian is not positive definite") from None


def gptq_rows(
    weights: np.ndarray, factors: np.ndarray, clip: Clip, *, name: str = "tensor", bits: int = 6
) -> Quantized:
    """GPTQ with one Hessian per row, given as `row_factors` (rows × cols × cols), columns in their own order,
    all rows at once: for a tied embedding each token's row has its own curvature
    (calibrate.collect_row_hessians), where one shared H = E[x xᵀ] weighs a token that is never
    predicted like the most frequent one."""
    grid = quantize(weights, clip, bits)
    levels = levels_for(bits)
    rows, cols = as_rows(grid.shape)
    if factors.shape != (rows, cols, cols):
        raise IntegrityError(f"tensor {name!r}: per-row Hessians are {factors.shape[:3]}, need {(rows, cols, cols)}")
    u = factors
    w = np.asarray(weights, dtype=np.float64).reshape(rows, cols).copy()
    scale = grid.scales.astype(np.float64)
    divisor = np.where(scale > 0, scale, np.inf)
    symbols = np.zeros((rows, cols), np.int8)
    for j in range(cols):
        q = np.clip(np.rint(w[:, j] / divisor), -levels, levels)
        symbols[:, j] = q
        err = (w[:, j] - q * scale) / u[:, j, j]
        w[:, j + 1 :] -= err[:, None] * u[:, j, j + 1 :]
    return Quantized(symbols, grid.scales, grid.shape, bits)


def output_error(weights: np.ndarray, q: Quantized, hessian: np.ndarray) -> float:
    """tr(E H Eᵀ) / tr(W H Wᵀ): the relative output error the rounding causes on the calibration inputs."""
    error, norm = error_sums(weights, q, hessian)
    return error / norm if norm > 0 else 0.0
