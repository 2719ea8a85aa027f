"""What every trainer shares: signals, seeding, evaluation, parameter groups, the log line."""

from __future__ import annotations

import contextlib
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aprtool.errors import AprError
from aprtool.model.llama import LlamaForCausalLM
from aprtool.text import printable

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(AprError):
    """SIGINT/SIGTERM: a checkpoint was written; the exit code is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def catch_signals() -> tuple[list[int], Callable[[], None]]:
    """From now on SIGINT/SIGTERM are only recorded (the list fills), so the loop can finish its step,
    write a checkpoint and raise `interrupted(...)`. Call the returned function to restore the handlers."""
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in SIGNAL_EXIT}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return caught, restore


def interrupted(signum: int, step: int, checkpoint: Path, resume_command: str) -> TrainingInterrupted:
    name = signal.Signals(signum).name
    return TrainingInterrupted(
        f"{name} received: stopped after step {step}; checkpoint {checkpoint.name} written. "
        f"Resume with: {resume_command}",
        SIGNAL_EXIT[signum],
    )


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def stderr_log(message: str) -> None:
    sys.stderr.write(f"[aprtool] {printable(message)}\n")
    sys.stderr.flush()


def code_version() -> str:
    from aprtool import __version__

    return __version__


def evaluate(model: LlamaForCausalLM, windows: torch.Tensor, batch_size: int, device: str) -> float:
    """Mean cross-entropy (nats/token) over the fixed held-out windows."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch_size):
            batch = windows[i : i + batch_size].to(device)
            with autocast(device):
                logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
            total += float(loss)
            count += batch[:, 1:].numel()
    model.train()
    return total / count


def autocast(device: str):
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def param_groups(model: LlamaForCausalLM, weight_decay: float) -> tuple[list[dict], list[str]]:
    """Matrices decay, norms and embeddings do not; frozen parameters (requires_grad False) are left out.
    Returns groups and the optimizer's name order."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied lm_head appears once, as the embedding
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed_tokens" not in name else no_decay).append((name, p))
    groups = [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]
    return groups, [n for n, _ in decay + no_decay]
