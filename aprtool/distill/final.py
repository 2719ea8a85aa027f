"""The final export, DIR/model.apr: every student tensor with its trained value, or a loud failure.

A long run once converged and then exported a 200-byte placeholder because the weights lived only in
the trainer. Here the file is written from the live student and then read back and checked before
success is reported:
  - it verifies (structure, CRCs, per-tensor checksums, no NaN/Inf) and holds exactly the student's
    parameter tensors, by name and count;
  - no tensor is all-zero;
  - every tensor equals the in-memory trained student's, bit for bit;
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


def student_weights(student: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The tensors that go into DIR/model.apr: the student's parameters by HF name."""
    return {name: t.detach().cpu() for name, t in student.weights().items()}


def tensor_digest(t: torch.Tensor | np.ndarray) -> str:
    array = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array).tobytes())


def start_digests(student: LlamaForCausalLM, learned: list[str]) -> dict[str, str]:
    """Digests of the learned tensors as this process starts training them."""
    weights = student.weights()
    return {name: tensor_digest(weights[name]) for name in learned if name in weights}


def check_saved_model(path: Path, expected_names: set[str]) -> list[str]:
    """Problems of an existing export (used before skipping a completed run): strict verification."""
    report = verify_file(
        path, strict=True, expect_tensors=len(expected_names), require=[("architecture", "LlamaForCausalLM")]
    )
    problems = list(report.errors)
    if report.valid:
        with open_apr(path) as f:
            if set(f.names()) != expected_names:
                problems.append("its tensor names are not the student's")
    return problems


def _content_problems(
    path: Path, trained: dict[str, torch.Tensor], start: dict[str, str], trained_steps: int
) -> list[str]:
    problems = []
    with open_apr(path) as f:
        names = set(f.names())
        missing, extra = sorted(set(trained) - names), sorted(names - set(trained))
        if missing or extra:
            problems.append(f"tensor names differ from the student's (missing {missing[:3]}, unexpected {extra[:3]})")
        differ = [n for n in sorted(names & set(trained)) if not np.array_equal(f.numpy(n), trained[n].numpy())]
        if differ:
            problems.append(f"{len(differ)} tensor(s) differ from the trained student: {', '.join(differ[:5])}")
        if trained_steps > 0 and start:
            unchanged = [n for n in sorted(start) if n in names and tensor_digest(f.numpy(n)) == start[n]]
            if len(unchanged) == len(start):
                problems.append(
                    f"{trained_steps} step(s) were trained but every learned tensor still holds its initial value "
                    "(a placeholder, not the trained student)"
                )
    return problems


def export_student(
    path: Path,
    student: LlamaForCausalLM,
    metadata: dict[str, Any],
    start: dict[str, str],
    trained_steps: int,
    log: Any,
    where_trained: str,
) -> dict[str, Any]:
    """Write DIR/model.apr and prove it holds the trained student; returns what was checked."""
    trained = {name: t.detach().cpu().clone() for name, t in student.weights().items()}  # the live student
    try:
        report = write_model(path, student_weights(student), metadata, expect_tensors=len(trained))
        problems = [w for w in report.warnings if "every value is zero" in w]
        problems += _content_problems(path, trained, start, trained_steps)
    except IntegrityError as exc:
        problems = [str(exc)]
    if problems:
        rejected = path.with_name("model.rejected.apr")
        if path.exists():
            os.replace(path, rejected)
        raise IntegrityError(
            f"EXPORT REJECTED: {path} would not hold the trained student: {'; '.join(problems)}. "
            f"It was moved to {rejected.name}; nothing was exported. {where_trained}"
        )
    if trained_steps > 0:
        unchanged = [n for n in sorted(start) if tensor_digest(trained[n]) == start[n]]
        if unchanged:
            log(
                f"WARNING: {len(unchanged)} learned tensor(s) did not change while training: {', '.join(unchanged[:5])}"
            )
    return {"tensors": len(trained), "verified": True, "matches_trained_student": True}
