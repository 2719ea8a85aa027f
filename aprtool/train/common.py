"""What every trainer shares: signals, seeding, evaluation, parameter groups, the log line."""

from __future__ import annotations

import contextlib
import math
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


WRAP_WARN_EPOCHS = 4  # more passes than this over one training split and a small model memorizes it


def corpus_wrap_warning(planned_steps: int, windows_per_step: int, epoch_windows: int, seq_len: int) -> str | None:
    """A loud warning when the planned steps read the training split more than WRAP_WARN_EPOCHS times."""
    epochs = planned_steps * windows_per_step / epoch_windows
    if epochs <= WRAP_WARN_EPOCHS:
        return None
    return (
        f"the planned {planned_steps:,} steps read the training split {epochs:.1f} times "
        f"({epoch_windows * seq_len:,} tokens per epoch): a corpus repeated this often is memorized "
        "(held-out loss rises while training loss falls); use a larger --corpus or fewer --steps"
    )


def eval_shortfall(val_windows: int, seq_len: int, eval_tokens: int) -> str | None:
    """The held-out split cannot supply --eval-tokens: say so instead of silently scoring fewer."""
    if val_windows >= max(1, eval_tokens // seq_len):
        return None
    return (
        f"the held-out split holds {val_windows * seq_len:,} scored tokens, fewer than --eval-tokens "
        f"{eval_tokens:,}: every evaluation uses those {val_windows * seq_len:,} (use a larger --corpus or "
        "--val-fraction for a steadier held-out loss)"
    )


def clip_limit(grad_clip: float) -> float:
    """--grad-clip 0 turns clipping off (the norm is still measured, for the logs)."""
    return grad_clip if grad_clip > 0 else math.inf
