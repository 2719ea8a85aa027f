"""`verify` for every format: APR gets its full checksum verification; safetensors, GGUF and HF folders get
every structural check their format allows (done when they are opened) and, with --deep, NaN/Inf and
all-zero checks on every tensor this reader can decode."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aprtool.container.verify import VerifyReport, check_required
from aprtool.errors import EXIT_INVALID, EXIT_NOT_FOUND, AprError, FileAccessError
from aprtool.files.detect import APR, detect
from aprtool.files.views import open_view
from aprtool.ops.verify import verify_file


def _deep(view: Any, report: VerifyReport, strict: bool) -> None:
    nonfinite, zero, skipped = [], [], []
    for spec in view.tensors.values():
        values = view.values(spec.name)
        if values is None:
            skipped.append(spec.dtype)
            continue
        with np.errstate(all="ignore"):  # signalling NaNs from a file must not print warnings
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            all_zero = values.size > 0 and np.count_nonzero(values) == 0
        if bad:
            nonfinite.append(f"{spec.name}: {bad} NaN/Inf")
            report.fail(f"tensor {spec.name!r}: {bad} NaN/Inf values")
        if all_zero:
            zero.append(spec.name)
    report.add("finite", not nonfinite, ", ".join(nonfinite) or "no NaN/Inf in decodable tensors")
    report.add("nonzero", not zero, f"all-zero: {', '.join(zero)}" if zero else "no all-zero tensors",
               severity="error" if strict else "warning")  # fmt: skip
    for name in zero:
        (report.fail if strict else report.warnings.append)(f"tensor {name!r}: every value is zero")
    if skipped:
        kinds = ", ".join(sorted(set(skipped)))
        report.add("decoded", True, f"{len(skipped)} tensors of types {kinds} not decoded", severity="info")


def verify_any(
    path: str | os.PathLike[str],
    *,
    deep: bool = False,
    strict: bool = False,
    expect_tensors: int | None = None,
    require: Sequence[tuple[str, str]] = (),
    max_bytes: int | None = None,
) -> VerifyReport:
    """Verify a file of any format (by content); `max_bytes`: fail (exit 5) if it is larger (an HF
    folder: its files together), the CI gate for an artifact cap."""
    report = _verify(path, deep=deep, strict=strict, expect_tensors=expect_tensors, require=require)
    if max_bytes is not None and report.exit_code not in (EXIT_NOT_FOUND,):
        _check_size(report, Path(path), max_bytes)
    return report


def _check_size(report: VerifyReport, path: Path, max_bytes: int) -> None:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files)
    detail = f"{size:,} bytes, limit {max_bytes:,}"
    report.add("max_bytes", size <= max_bytes, detail)
    if size > max_bytes:
        report.fail(f"max_bytes: {size:,} bytes is over the limit of {max_bytes:,} by {size - max_bytes:,}")


def _verify(path, *, deep, strict, expect_tensors, require) -> VerifyReport:
    report = VerifyReport(file=str(path))
    try:
        kind = detect(path)
        if kind == APR:
            return verify_file(path, deep=deep, strict=strict, expect_tensors=expect_tensors, require=require)
        view = open_view(path)
    except AprError as exc:
        code = EXIT_NOT_FOUND if isinstance(exc, FileAccessError) else max(exc.exit_code, EXIT_INVALID)
        report.add("structure", False, str(exc))
        report.fail(str(exc), code)
        return report
    try:
        report.add("structure", True, f"{view.format}, {len(view.tensors)} tensors, bounds and offsets checked")
        count = len(view.tensors)
        if count == 0 or (expect_tensors is not None and count != expect_tensors):
            wanted = "at least 1" if count == 0 else str(expect_tensors)
            report.add("tensor_count", False, f"{count} tensors, expected {wanted}")
            report.fail(f"tensor_count: {count}, expected {wanted}")
        else:
            report.add("tensor_count", True, f"{count} tensors")
        check_required(report, {**view.metadata, **view.architecture}, require)
        if deep:
            _deep(view, report, strict)
    finally:
        view.close()
    return report
