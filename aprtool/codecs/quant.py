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
        values = self.symbols.astype(np.float32)
        values *= self.scales.astype(np.float32)[:, None]  # in place: one float array, not two
        return values.reshape(self.shape).astype(dtype, copy=False)


def as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0]
    return rows, (int(np.prod(shape[1:])) if rows else 0)


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
    if not np.isfinite(w).all():
        raise UsageError("cannot quantize a tensor holding NaN/Inf")
    if not cols:
        return Quantized(np.zeros((rows, 0), np.int8), np.zeros(rows, np.float16), shape, bits)
    peak = np.maximum(w.max(axis=1), -w.min(axis=1))
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
    q = np.divide(w, divisor)
    np.rint(q, out=q)
    np.clip(q, -levels, levels, out=q)
    return Quantized(q.astype(np.int8), scales, shape, bits)


def relative_rmse(original: np.ndarray, restored: np.ndarray) -> float:
    """||original - restored|| / ||original||, in float32 with BLAS dot products."""
    a = np.asarray(original, dtype=np.float32).ravel()
    diff = np.asarray(restored, dtype=np.float32).ravel() - a
    denom = float(np.dot(a, a))
    return float(np.sqrt(np.dot(diff, diff) / denom)) if denom > 0 else 0.0


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
