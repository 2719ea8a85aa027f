"""`aprtool inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aprtool.cli._common import JsonOption, emit, handle_errors
from aprtool.container import inspect_file
from aprtool.errors import EXIT_FAILED
from aprtool.text import markup_safe

EXAMPLES = """\b
Examples:
  aprtool inspect model.int6.apr --tensors
  aprtool inspect model.apr --json | jq .param_count
"""


def _mark(value: bool | None) -> str:
    return {True: "[green]valid[/]", False: "[red]INVALID[/]", None: "unchecked"}[value]


def _render(info: dict[str, Any], show_tensors: bool) -> Any:
    def render(console: Console) -> None:
        summary = Table(show_header=False, box=None, pad_edge=False)
        summary.add_column(style="bold")
        summary.add_column()
        flags = [k for k in ("row_major", "quantized") if info["flags"][k]]
        rows = [
            ("file", info["file"]),
            ("format", f"{info['format']} (version {info['version']})"),
            ("size", f"{info['size_bytes']:,} bytes"),
            ("tensors", f"{info['tensor_count']:,}"),
            ("parameters", f"{info['param_count']:,}"),
            ("architecture", str(info["architecture"] or "-")),
            ("name", str(info["metadata"].get("name", "-"))),
            ("flags", f"0x{info['flags']['value']:04x} ({', '.join(flags) or 'none'})"),
            ("header CRC", _mark(info["header_checksum_valid"])),
            ("footer CRC", _mark(info["footer_checksum_valid"])),
            ("tensor checksums", info["tensor_checksums"]),
            ("checksums", _mark(info["checksum_valid"])),
        ]
        for key, value in rows:  # values from the file are escaped; the marks are our own markup
            summary.add_row(key, value if key.endswith(("CRC", "checksums")) else markup_safe(value))
        console.print(summary)
        if show_tensors:
            table = Table("name", "dtype", "shape", "stored bytes", "codec")
            table.columns[0].overflow = "fold"
            for t in info["tensors"]:
                shape = "[" + ", ".join(map(str, t["shape"])) + "]"
                cells = (t["name"], t["dtype"], shape, f"{t['stored_bytes']:,}", t["codec"] or "-")
                table.add_row(*map(markup_safe, cells))
            console.print(table)

    return render


@handle_errors
def inspect_command(
    file: Annotated[Path, typer.Argument(help="APR file to describe.", show_default=False)],
    as_json: JsonOption = False,
    tensors: Annotated[bool, typer.Option("--tensors", help="Also list every tensor.")] = False,
    no_checksums: Annotated[bool, typer.Option("--no-checksums", help="Skip the full-file checksum pass.")] = False,
) -> None:
    """Summarize an APR file: format, size, tensors, parameters, architecture, checksum status.

    Exits 4 if the file is not a structurally valid APR file, 5 if a checksum does not match.
    """
    info = inspect_file(file, checksums=not no_checksums)
    emit(info, as_json, _render(info, tensors))
    if info["checksum_valid"] is False:
        raise typer.Exit(EXIT_FAILED)
