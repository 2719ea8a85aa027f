"""AdaRound after GPTQ for a tied embedding (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
Quantization", arXiv 2004.10568).

GPTQ rounds each token's row under a quadratic proxy of the loss: one Hessian per row, the output role's
Gauss-Newton term plus the input role's Fisher term (calibrate.collect_row_hessians). That proxy leaves
out the softmax's cross-row curvature and how an input vector's error travels through the layers. Here
each weight's choice between the two grid levels around it is learned on the calibration windows by the
real objective: the whole model's KL divergence from the float model, with a regulariser that drives
every choice to one level. It starts from the symbols GPTQ chose, on the same grid and scales, so the
file format and the decoder do not change: only the symbols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from aprtool.codecs.quant import Quantized, as_rows, levels_for

if TYPE_CHECKING:
    import torch

# Chosen on one model (bench_gptq.py's seed 0) and checked on two others of its recipe (docs/performance.md).
STEPS = 1_000  # Adam steps; 500 kept two thirds of the gain
LEARNING_RATE = 0.03
REG_WEIGHT = 3.0  # weight of the rounding regulariser against the KL (nats/token): every choice ends decided
WARMUP = 0.2  # fraction of the steps with the KL alone, before the regulariser anneals
BETA = (20.0, 2.0)  # the regulariser's exponent, annealed from the first to the second (the paper's values)
BATCH = 8  # calibration windows per step, taken in order
STRETCH = (-0.1, 1.1)  # the rectified sigmoid's range (the paper's gamma, zeta): 0 and 1 are reached exactly
START_MARGIN = 0.1  # the starting choice as 0.1 / 0.9, not 0 / 1, so that its gradient is not zero


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    import torch

    low, high = STRETCH
    return (torch.sigmoid(v) * (high - low) + low).clamp(0.0, 1.0)


def _start_logits(up: np.ndarray) -> torch.Tensor:
    """The logits whose rectified sigmoid is START_MARGIN (level below) or 1 − START_MARGIN (level above)."""
    import torch

    low, high = STRETCH
    h = torch.from_numpy(up.astype(np.float32)) * (1 - 2 * START_MARGIN) + START_MARGIN
    return torch.log((h - low) / (high - h))


def adaround(model: Any, name: str, weights: np.ndarray, start: Quantized, windows: torch.Tensor,
             steps: int = STEPS, progress: Callable[[int, int], None] | None = None) -> Quantized:  # fmt: skip
    """`start`'s symbols for weight `name` of `model` (the float LlamaForCausalLM), each moved to whichever of
    the two grid levels around its float weight the model's KL divergence from the float model on
    `windows` ([n, seq + 1] token ids) prefers. Every symbol ends within one level of the float weight."""
    import torch

    levels = levels_for(start.bits)
    rows, cols = as_rows(start.shape)
    scale = torch.from_numpy(start.scales.astype(np.float32))[:, None]
    w = torch.from_numpy(np.asarray(weights, np.float32).reshape(rows, cols))
    below = torch.floor(w / torch.where(scale > 0, scale, torch.ones_like(scale)))
    up = np.clip(start.symbols.astype(np.float32) - below.numpy(), 0, 1)  # GPTQ's choice where it is a neighbour
    v = _start_logits(up).requires_grad_(True)
    shape = tuple(model.state_dict()[name].shape)

    def values(h: torch.Tensor) -> torch.Tensor:
        return (scale * (below + h).clamp(-levels, levels)).reshape(shape)

    trainable = [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)  # only the rounding choices learn
    try:
        with torch.enable_grad():
            _learn(model, name, v, values, windows, steps, progress)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    with torch.no_grad():
        chosen = below + (_rectified_sigmoid(v) >= 0.5).float()
        symbols = chosen.clamp(-levels, levels).where(scale > 0, torch.zeros_like(chosen))
    return Quantized(symbols.numpy().astype(np.int8), start.scales, start.shape, start.bits)


def _learn(model: Any, name: str, v: torch.Tensor, values: Any, windows: torch.Tensor, steps: int,
           progress: Callable[[int, int], None] | None) -> None:  # fmt: skip
    """Adam on the rounding logits `v`: the KL divergence of the model with `name` set to `values(h(v))` from
    the float model, batch by batch in order, plus after the warm-up the annealed rounding regulariser."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
    warm = int(WARMUP * steps)
    batches = max(1, len(windows) // BATCH)
    for step in range(steps):
        batch = windows[(step % batches) * BATCH : (step % batches + 1) * BATCH, :-1]
        with torch.no_grad():
            target = F.log_softmax(model(batch).float(), -1)
        h = _rectified_sigmoid(v)
        logits = functional_call(model, {name: values(h)}, (batch,))
        loss = F.kl_div(F.log_softmax(logits.float(), -1), target, log_target=True, reduction="none").sum(-1).mean()
        if step >= warm:
            beta = BETA[0] + (BETA[1] - BETA[0]) * (step - warm) / max(1, steps - warm)
            loss = loss + REG_WEIGHT * (1 - (2 * h - 1).abs().pow(beta)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None and (step + 1) % 50 == 0:
            progress(step + 1, steps)
