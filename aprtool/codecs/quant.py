"""int6 symmetric per-row quantization: the lossy step, done once.

A tensor of shape [rows, ...] is viewed as rows x cols; each row gets one fp16 scale and every weight
becomes an integer symbol in -31..31 (63 levels). `torch_fake_quant` is the same quantizer for
quantization-aware training, so the trainer and `compress` cannot drift apart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from aprtool.container import constants as C
from aprtool.errors import UsageError

LEVELS = C.INT6_LEVELS  # symbols -31..31


@dataclass(frozen=True)
class Clip:
    """How the per-row scale is chosen: `absmax` (no clipping) or `std:K` (K standard deviations)."""

    mode: str  # "absmax" | "std"
    k: float = 0.0

    def __str__(self) -> str:
        return "absmax" if self.mode == "absmax" else f"std:{self.k:g}"

    @classmethod
    def parse(cls, text: str) -> Clip:
        if text == "absmax":
            return cls("absmax")
        kind, _, value = text.partition(":")
        if kind == "std":
            try:
                k = float(value)
            except ValueError:
                k = float("nan")
            if k > 0 and np.isfinite(k):
                return cls("std", k)
        raise UsageError(f"--clip {text!r}: expected 'absmax' or 'std:K' with K a positive number")


def levels_for(bits: int) -> int:
    """The largest symbol of a `bits`-wide symmetric grid: 7, 15, 31, 63, 127 for 4..8 bits."""
    if bits not in C.QUANT_BITS:
        raise UsageError(f"{bits}-bit quantization: widths are {C.QUANT_BITS[0]}..{C.QUANT_BITS[-1]}")
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class Quantized:
    symbols: np.ndarray  # int8, shape [rows, cols], values in -levels_for(bits)..levels_for(bits)
    scales: np.ndarray  # float16, shape [rows]
    shape: tuple[int, ...]  # the original tensor's shape
    bits: int = C.DEFAULT_BITS

    @functools.cached_property
    def counts(self) -> np.ndarray:
        """Occurrences of each int8 value (index value + 128), computed once for entropy and rANS."""
        from aprtool.codecs.coders import symbol_counts

        return symbol_counts(self.symbols)

    def dequantize(self, dtype: Any = np.float32) -> np.ndarray:
        return self.dequantize_rows(slice(None), dtype).reshape(self.shape)

    def dequantize_rows(self, rows: slice, dtype: Any = np.float32) -> np.ndarray:
        """Rows of the [rows, cols] matrix the symbols stand for."""
        values = self.symbols[rows].astype(np.float32)
        values *= self.scales[rows].astype(np.float32)[:, None]  # in place: one float array, not two
        return values.astype(dtype, copy=False)


def as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0]
    return rows, (int(np.prod(shape[1:])) if rows else 0)


BLOCK_ELEMENTS = 1 << 18  # values per block of rows: float64 temporaries of 2 MiB, never of the tensor


def row_blocks(rows: int, cols: int) -> list[slice]:
    """Consecutive row ranges of about BLOCK_ELEMENTS values each, covering [0, rows)."""
    step = max(1, BLOCK_ELEMENTS // max(cols, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def error_sums(weights: np.ndarray, restored: Any, hessian: np.ndarray | None = None) -> tuple[float, float]:
    """(‖E‖², ‖W‖²), or with a Hessian (tr(E·H·Eᵀ), tr(W·H·Wᵀ)), in float64, E the rounding error of
    `restored` (an array of the weights' shape, or anything with `dequantize_rows`); a block of rows at a time."""
    shape = tuple(weights.shape) if weights.ndim else (1,)
    rows, cols = as_rows(shape) if len(shape) > 1 else (1, shape[0])
    w_all = np.asarray(weights).reshape(rows, cols)
    r_all = np.asarray(restored).reshape(rows, cols) if isinstance(restored, np.ndarray) else None
    h = None if hessian is None else np.asarray(hessian, np.float64)
    error = norm = 0.0
    for block in row_blocks(rows, cols):
        w = w_all[block].astype(np.float64)
        r = restored.dequantize_rows(block, np.float64) if r_all is None else r_all[block].astype(np.float64)
        e = r - w
        if h is None:
            error, norm = error + float(np.einsum("ij,ij->", e, e)), norm + float(np.einsum("ij,ij->", w, w))
        else:  # the product first: BLAS, not einsum's three-operand loop
            error, norm = error + float(np.einsum("ij,ij->", e @ h, e)), norm + float(np.einsum("ij,ij->", w @ h, w))
    return error, norm


def relative_error(weights: np.ndarray, restored: Any) -> float:
    """‖W − R‖ / ‖W‖, R the restored weights (an array or quantized symbols), a block at a time."""
    error, norm = error_sums(weights, restored)
    return float(np.sqrt(error / norm)) if norm > 0 else 0.0


def _fp16_scales(raw: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Round scales to fp16 without letting a scale round below what its row needs."""
    if not np.isfinite(raw).all() or raw.max(initial=0) > np.finfo(np.float16).max:
        raise UsageError("int6 scale does not fit in fp16 (weights larger than ~2e6)")
    scales = raw.astype(np.float16)
    low = scales.astype(np.float32) < raw
    scales[low] = np.nextafter(scales[low], np.float16(np.inf))
    tiny = (scales == 0) & (peak > 0)  # below fp16's smallest subnormal: use that subnormal
    scales[tiny] = np.float16(2.0**-24)
    return scales


def quantize(weights: np.ndarray, clip: Clip, bits: int = C.DEFAULT_BITS) -> Quantized:
    """Quantize a float tensor (2-D or more) to `bits`-wide symbols (int6 by default) with fp16 per-row scales."""
    levels = levels_for(bits)
    shape = tuple(weights.shape)
    rows, cols = as_rows(shape)
    w = np.asarray(weights, dtype=np.float32).reshape(rows, cols)
    if not cols:
        return Quantized(np.zeros((rows, 0), np.int8), np.zeros(rows, np.float16), shape, bits)
    high, low = w.max(axis=1), w.min(axis=1)  # NaN propagates into both; an Inf is an extreme
    if not (np.isfinite(high).all() and np.isfinite(low).all()):
        raise UsageError("cannot quantize a tensor holding NaN/Inf")
    peak = np.maximum(high, -low)
    if clip.mode == "absmax":
        raw = peak / levels
    else:  # one pass for the std: E[x^2] - E[x]^2, accumulated in float64
        mean = w.sum(axis=1, dtype=np.float64) / cols
        var = np.einsum("ij,ij->i", w, w, dtype=np.float64) / cols - mean * mean
        raw = (clip.k * np.sqrt(np.maximum(var, 0)) / levels).astype(np.float32)
        raw = np.where(raw > 0, raw, peak / levels)  # a constant row has std 0: fall back to absmax
    scales = _fp16_scales(raw.astype(np.float32), peak)
    s = scales.astype(np.float32)
    divisor = np.where(s > 0, s, np.float32(np.inf))[:, None]  # zero rows quantize to 0
    symbols = np.empty((rows, cols), np.int8)
    for block in row_blocks(rows, cols):  # a float temporary of one block, not of the tensor
        q = np.divide(w[block], divisor[block])
        np.rint(q, out=q)
        np.clip(q, -levels, levels, out=q)
        symbols[block] = q
    return Quantized(symbols, scales, shape, bits)


def torch_fake_quant(weight: Any, clip: Clip) -> Any:
    """Straight-through int6 fake quantization of a torch weight (same math as `quantize`)."""
    import torch

    w = weight.reshape(weight.shape[0], -1)
    peak = w.detach().abs().amax(dim=1)
    if clip.mode == "absmax":
        raw = peak / LEVELS
    else:
        raw = clip.k * w.detach().float().std(dim=1, unbiased=False) / LEVELS
        raw = torch.where(raw > 0, raw, peak / LEVELS)
    scale = raw.to(torch.float16).float()
    bumped = torch.nextafter(scale.half(), torch.tensor(65504.0).half()).float()
    scale = torch.where(scale < raw, bumped, scale)
    scale = torch.where((scale == 0) & (peak > 0), torch.full_like(scale, 2.0**-24), scale)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    q = torch.clamp(torch.round(w / safe), -LEVELS, LEVELS) * scale[:, None]
    return (w + (q - w).detach()).reshape(weight.shape)
