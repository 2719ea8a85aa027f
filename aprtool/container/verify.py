"""`verify`: every integrity and content check on APR files, as a report (never a traceback)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aprtool.container import constants as C
from aprtool.container.reader import AprFile, open_apr
from aprtool.container.scan import scan_file
from aprtool.container.tokenizer_text import has_embedded_text, verified_text
from aprtool.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    AprError,
    FileAccessError,
    FormatError,
    IntegrityError,
    UsageError,
)

# Decodes every encoded tensor of a file and returns what failed. The container does not know the
# codecs (they sit above it): the caller passes one (aprtool.ops.verify passes aprtool.codecs').
Decoder = Callable[[AprFile], list[AprError]]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    severity: str = "error"  # "warning": reported, fails only under --strict


@dataclass
class VerifyReport:
    file: str
    valid: bool = True
    exit_code: int = EXIT_OK
    checks: list[Check] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, passed: bool, detail: str, *, severity: str = "error") -> None:
        self.checks.append(Check(name, passed, detail, severity))

    def fail(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        self.valid = False
        self.errors.append(message)
        self.exit_code = max(self.exit_code, exit_code)

    def error(self, what: str) -> AprError:
        """The report as one exception of the class its exit code stands for (3, 4 or 5)."""
        kind = {EXIT_NOT_FOUND: FileAccessError, EXIT_INVALID: FormatError}.get(self.exit_code, IntegrityError)
        return kind(f"{what}: does not verify: {'; '.join(self.errors)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "valid": self.valid,
            "exit_code": self.exit_code,
            "checks": [asdict(c) for c in self.checks],
            "errors": self.errors,
            "warnings": self.warnings,
        }


def parse_requirements(pairs: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--require {pair!r}: expected KEY=VALUE")
        out.append((key, value))
    return out


def _lookup(metadata: dict[str, Any], key: str) -> tuple[bool, Any]:
    """Dotted keys reach into nested objects: `aprtool.records_version`."""
    node: Any = metadata
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _matches(actual: Any, wanted: str) -> bool:
    if isinstance(actual, str):
        return actual == wanted
    try:
        return actual == json.loads(wanted)
    except ValueError:
        return False


def check_required(report: VerifyReport, metadata: dict[str, Any], require: Sequence[tuple[str, str]]) -> None:
    """--require KEY=VALUE: each a check, each mismatch an error naming the value found."""
    for key, wanted in require:
        found, actual = _lookup(metadata, key)
        ok = found and _matches(actual, wanted)
        detail = f"{key}={json.dumps(actual, default=str) if found else '(missing)'}, required {wanted}"
        report.add(f"require:{key}", ok, detail)
        if not ok:
            report.fail(f"metadata {detail}")


def verify_file(
    path: str | os.PathLike[str],
    *,
    deep: bool = False,
    strict: bool = False,
    expect_tensors: int | None = None,
    require: Sequence[tuple[str, str]] = (),
    decoder: Decoder | None = None,
) -> VerifyReport:
    """Every structural and checksum check of an APR file; with `deep`, NaN/Inf and all-zero tensors
    too, and every encoded tensor decoded by `decoder` (without one they are reported as not decoded)."""
    report = VerifyReport(file=str(path))
    try:
        f = open_apr(path, check_header_crc=False)
    except FileAccessError as exc:
        report.add("readable", False, str(exc))
        report.fail(str(exc), EXIT_NOT_FOUND)
        return report
    except AprError as exc:
        report.add("structure", False, str(exc))
        report.fail(str(exc), EXIT_INVALID)
        return report
    with f:
        report.add("structure", True, f"APR v{f.header.version}, {len(f)} tensors")
        if f.header_crc_valid:
            report.add("header_crc", True, f"{f.header.header_crc:08x}")
        else:
            msg = "header_crc: stored value does not match the header bytes"
            report.add("header_crc", False, msg)
            report.fail(msg)
        try:
            scan = scan_file(f)
        except OSError as exc:
            report.add("readable", False, f"read failed: {exc}")
            report.fail(f"{path}: read failed: {exc}", EXIT_NOT_FOUND)
            return report
        if scan.footer_crc == f.stored_footer_crc:
            report.add("footer_crc", True, f"{scan.footer_crc:08x}")
        else:
            msg = (
                f"footer_crc: stored {f.stored_footer_crc:08x}, computed {scan.footer_crc:08x} "
                "(the file was modified or truncated after writing)"
            )
            report.add("footer_crc", False, msg)
            report.fail(msg)
        _tensor_checksums(f, scan, report)
        _content(f, scan, report, strict)
        _counts(f, report, expect_tensors)
        _tokenizer(f, report)
        check_required(report, f.metadata, require)
        if deep:
            _decode_all(f, report, decoder)
    return report


def _tokenizer(f: AprFile, report: VerifyReport) -> None:
    """An embedded tokenizer.json must decode and match its sha256 (section 3.2), or the model cannot run."""
    info = f.metadata.get(C.TOKENIZER_KEY)
    if not has_embedded_text(info):
        return
    try:
        text = verified_text(info)
    except FormatError as exc:
        report.add("tokenizer", False, str(exc))
        report.fail(str(exc), EXIT_INVALID)
        return
    report.add("tokenizer", True, f"embedded tokenizer.json, {len(text.encode('utf-8')):,} bytes, sha256 matches")


def _decode_all(f: AprFile, report: VerifyReport, decoder: Decoder | None) -> None:
    encoded = sum(t.dtype.code >= C.ENCODED_DTYPE_MIN for t in f.tensors.values())
    if encoded and decoder is None:
        report.add("deep", True, f"{encoded} encoded tensors not decoded (no decoder given)", severity="warning")
        return
    problems = decoder(f) if encoded and decoder is not None else []
    detail = f"{encoded} encoded tensors decoded" if encoded else "no encoded tensors"
    report.add("deep", not problems, "; ".join(map(str, problems)) or detail)
    for p in problems:
        report.fail(str(p), p.exit_code)


def _tensor_checksums(f: AprFile, scan: Any, report: VerifyReport) -> None:
    if not f.has_tensor_records:
        report.add(
            "tensor_checksums",
            True,
            "absent: file has no aprtool per-tensor records (header and footer CRC cover it)",
            severity="info",
        )
        return
    broken = []
    for name, info in f.tensors.items():
        want = info.record[C.CHECKSUM_ALGORITHM] if info.record else None
        if scan.tensors[name].digest != want:
            broken.append(name)
            report.fail(
                f"tensor {name!r}: stored-bytes checksum mismatch "
                f"({C.CHECKSUM_ALGORITHM} stored {want}, computed {scan.tensors[name].digest})"
            )
    detail = f"broken: {', '.join(broken)}" if broken else f"{len(f)} tensors match"
    report.add("tensor_checksums", not broken, detail)


def _content(f: AprFile, scan: Any, report: VerifyReport, strict: bool) -> None:
    nonfinite = [(n, s.nonfinite) for n, s in scan.tensors.items() if s.nonfinite]
    for name, count in nonfinite:
        report.fail(f"tensor {name!r}: {count} NaN/Inf values")
    report.add(
        "finite",
        not nonfinite,
        ", ".join(f"{n}: {c} NaN/Inf" for n, c in nonfinite) or "no NaN/Inf in float tensors",
    )
    zero = [n for n, s in scan.tensors.items() if f.tensors[n].dtype.itemsize and f.tensors[n].numel and not s.nonzero]
    detail = f"all-zero: {', '.join(zero)}" if zero else "no all-zero tensors"
    report.add("nonzero", not zero, detail, severity="error" if strict else "warning")
    for name in zero:
        message = f"tensor {name!r}: every value is zero"
        if strict:
            report.fail(message)
        else:
            report.warnings.append(message)


def _counts(f: AprFile, report: VerifyReport, expect: int | None) -> None:
    count = len(f)
    if count == 0:
        report.add("tensor_count", False, "0 tensors: an empty model is never valid")
        report.fail("tensor_count: the file holds 0 tensors")
    elif expect is not None and count != expect:
        report.add("tensor_count", False, f"{count} tensors, expected {expect}")
        report.fail(f"tensor_count: {count}, expected {expect}")
    else:
        report.add("tensor_count", True, f"{count} tensors")


def verify_files(paths: Sequence[str | os.PathLike[str]], **options: Any) -> list[VerifyReport]:
    return [verify_file(p, **options) for p in paths]
