"""`aprtool verify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from aprtool.cli._common import JsonOption, emit, handle_errors
from aprtool.container.verify import VerifyReport, parse_requirements
from aprtool.sizes import parse_size
from aprtool.text import markup_safe

EXAMPLES = """\b
Examples:
  aprtool verify model.int6.apr --deep --strict
  aprtool verify run/model.apr --require architecture=LlamaForCausalLM --expect-tensors 38 --json
  aprtool verify model.int6.apr --max-bytes 16MB      # the CI gate for an artifact cap
"""


def _render(reports: list[VerifyReport]):
    def render(console: Console) -> None:
        for r in reports:
            status = "[green]PASS[/]" if r.valid else "[red]FAIL[/]"
            passed = sum(c.passed for c in r.checks)
            console.print(f"{status} {markup_safe(r.file)} ({passed}/{len(r.checks)} checks passed)")
            for message in r.errors:
                console.print(f"  [red]error[/]: {markup_safe(message)}")
            for message in r.warnings:
                console.print(f"  [yellow]warning[/]: {markup_safe(message)}")

    return render


@handle_errors
def verify_command(
    files: Annotated[
        list[Path], typer.Argument(help="APR, safetensors or GGUF files, or HF folders.", show_default=False)
    ],
    as_json: JsonOption = False,
    deep: Annotated[
        bool, typer.Option("--deep", help="Decode encoded tensors and check their content digests.")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings (all-zero tensors) as failures.")] = False,
    expect_tensors: Annotated[
        int | None,
        typer.Option("--expect-tensors", metavar="N", help="Fail unless the file has N tensors."),
    ] = None,
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require",
            metavar="KEY=VALUE",
            help="Fail unless metadata KEY (dotted for nested keys) equals VALUE. Repeatable.",
        ),
    ] = None,
    max_bytes: Annotated[
        str | None,
        typer.Option("--max-bytes", metavar="N", help="Fail (exit 5) if a file is larger: 16000000, 16MB, 15.5MiB."),
    ] = None,
) -> None:
    """Check structure, header/footer CRCs, every tensor's checksum, NaN/Inf and all-zero tensors.

    APR files get every check; safetensors, GGUF and HF folders get the structural checks their format
    allows (bounds, overlaps, sizes) and, with --deep, NaN/Inf and all-zero tensors. A file with 0 tensors
    always fails. Exits with the worst code over all files: 3 unreadable, 4 structurally invalid, 5 a
    check failed.
    """
    from aprtool.files.verify import verify_any

    requirements = parse_requirements(require or [])
    limit = parse_size(max_bytes, "--max-bytes") if max_bytes is not None else None
    options = {"deep": deep, "strict": strict, "expect_tensors": expect_tensors, "require": requirements,
               "max_bytes": limit}  # fmt: skip
    reports = [verify_any(f, **options) for f in files]
    payload = [r.to_json() for r in reports]
    emit(payload[0] if len(payload) == 1 else payload, as_json, _render(reports))
    code = max(r.exit_code for r in reports)
    if code:
        raise typer.Exit(code)
