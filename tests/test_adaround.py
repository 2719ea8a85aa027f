"""adaround (issue #14 §2): after GPTQ, a tied embedding's rounding choices learned on calibration windows
by the whole model's KL divergence from the float model; same grid and scales, only the symbols move."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aprtool.codecs.quant import Clip, quantize
from aprtool.ops.adaround import adaround
from aprtool.ops.calibrate import EMBEDDING, calibrate

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-bytes.apr"


def test_adaround_keeps_the_grid_moves_each_symbol_to_a_neighbouring_level_and_lowers_the_loss():
    cal = calibrate(MODEL, calib_tokens=16384, quantized=[EMBEDDING])
    assert cal.windows is not None and cal.record["adaround_windows"] == len(cal.windows) >= 8
    assert cal.windows.shape[1] == cal.select.shape[1]  # windows with their labels
    before = {n: p.detach().clone() for n, p in cal.model.named_parameters()}
    weights = before[EMBEDDING].numpy()
    start = quantize(weights, Clip.parse("std:12.85"))
    refined = adaround(cal.model, EMBEDDING, weights, start, cal.windows, steps=300)
    assert np.array_equal(refined.scales, start.scales) and refined.shape == start.shape
    assert refined.symbols.dtype == np.int8 and np.abs(refined.symbols).max() <= 31
    exact = weights / start.scales.astype(np.float32)[:, None]
    assert np.all((refined.symbols == np.floor(exact)) | (refined.symbols == np.ceil(exact)))  # up or down only
    assert 0 < np.mean(refined.symbols != start.symbols) < 0.5
    # the model is left as it was: float weights, and its parameters still trainable
    assert all(torch_equal(p, before[n]) and p.requires_grad for n, p in cal.model.named_parameters())
    # on calibration windows it did not learn on, the model loses less with the learned rounding
    assert cal.loss_with(EMBEDDING, refined.dequantize()) < cal.loss_with(EMBEDDING, start.dequantize())


def torch_equal(a, b) -> bool:
    return bool((a.detach() == b).all())
