"""The final export, RUN_DIR/model.apr: every tensor with its trained value, or a loud failure (both trainers).

A long run once converged and then exported a 200-byte placeholder because the weights lived only in
the trainer. Here the file is written from the live model and then read back and checked before
success is reported:
  - it verifies (structure, CRCs, per-tensor checksums, no NaN/Inf) and holds exactly the model's
    parameter tensors, by name and count;
  - no tensor is all-zero;
  - every tensor equals the in-memory trained model's, bit for bit;
  - if this process trained any step, the learned tensors are not all still at their starting values.
Anything else raises IntegrityError (exit 5), and the rejected file is moved to model.rejected.apr so
that DIR/model.apr never names a bad export.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from aprtool.container import open_apr, verify_file
from aprtool.errors import IntegrityError
from aprtool.model.io import write_model
from aprtool.model.llama import LlamaForCausalLM


def model_weights(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The tensors that go into RUN_DIR/model.apr: the model's parameters by HF name."""
    return {name: t.detach().cpu() for name, t in model.weights().items()}


def tensor_digest(t: torch.Tensor | np.ndarray) -> str:
    array = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array).tobytes())


def start_digests(model: LlamaForCausalLM, learned: list[str]) -> dict[str, str]:
    """Digests of the learned tensors as this process starts training them."""
    weights = model.weights()
    return {name: tensor_digest(weights[name]) for name in learned if name in weights}


def check_saved_model(path: Path, expected_names: set[str], architecture: str) -> list[str]:
    """Problems of an existing export (used before skipping a completed run): strict verification."""
    require = [("architecture", architecture)]
    report = verify_file(path, strict=True, expect_tensors=len(expected_names), require=require)
    problems = list(report.errors)
    if report.valid:
        with open_apr(path) as f:
            if set(f.names()) != expected_names:
                problems.append("its tensor names are not the expected ones")
    return problems


def _content_problems(
    path: Path, trained: dict[str, torch.Tensor], start: dict[str, str], trained_steps: int, role: str
) -> list[str]:
    problems = []
    with open_apr(path) as f:
        names = set(f.names())
        missing, extra = sorted(set(trained) - names), sorted(names - set(trained))
        if missing or extra:
            problems.append(f"tensor names differ from the {role}'s (missing {missing[:3]}, unexpected {extra[:3]})")
        differ = [n for n in sorted(names & set(trained)) if not np.array_equal(f.numpy(n), trained[n].numpy())]
        if differ:
            problems.append(f"{len(differ)} tensor(s) differ from the trained {role}: {', '.join(differ[:5])}")
        if trained_steps > 0 and start:
            unchanged = [n for n in sorted(start) if n in names and tensor_digest(f.numpy(n)) == start[n]]
            if len(unchanged) == len(start):
                problems.append(
                    f"{trained_steps} step(s) were trained but every learned tensor still holds its initial value "
                    f"(a placeholder, not the trained {role})"
                )
    return problems


def export_trained(
    path: Path,
    model: LlamaForCausalLM,
    metadata: dict[str, Any],
    start: dict[str, str],
    trained_steps: int,
    log: Any,
    where_trained: str,
    role: str = "model",
) -> dict[str, Any]:
    """Write RUN_DIR/model.apr and prove it holds the trained model (the `role`: model, student); returns
    what was checked."""
    trained = {name: t.detach().cpu().clone() for name, t in model.weights().items()}  # the live model
    try:
        report = write_model(path, model_weights(model), metadata, expect_tensors=len(trained))
        problems = [w for w in report.warnings if "every value is zero" in w]
        problems += _content_problems(path, trained, start, trained_steps, role)
    except IntegrityError as exc:
        problems = [str(exc)]
    if problems:
        rejected = path.with_name("model.rejected.apr")
        if path.exists():
            os.replace(path, rejected)
        raise IntegrityError(
            f"EXPORT REJECTED: {path} would not hold the trained {role}: {'; '.join(problems)}. "
            f"It was moved to {rejected.name}; nothing was exported. {where_trained}"
        )
    if trained_steps > 0:
        unchanged = [n for n in sorted(start) if tensor_digest(trained[n]) == start[n]]
        if unchanged:
            log(
                f"WARNING: {len(unchanged)} learned tensor(s) did not change while training: {', '.join(unchanged[:5])}"
            )
    return {"tensors": len(trained), "verified": True, f"matches_trained_{role}": True}
