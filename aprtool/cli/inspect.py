"""`aprtool inspect`: any format a user holds (APR, safetensors, GGUF, HF folder) or a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aprtool.cli._common import JsonOption, emit, handle_errors
from aprtool.errors import EXIT_FAILED
from aprtool.text import markup_safe

EXAMPLES = """\\b
Examples:
  aprtool inspect model.int6.apr --tensors
  aprtool inspect model.gguf --tensors --stats       # safetensors, GGUF and HF folders too
  aprtool inspect runs/small                         # a run: its checkpoints (same as `aprtool runs`)
"""


def _mark(value: bool | None) -> str:
    return {True: "[green]valid[/]", False: "[red]INVALID[/]", None: "unchecked"}[value]


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else markup_safe(value)


def _summary_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    groups = info["tensor_groups"]
    count = f"{info['tensor_count']:,}" + (
        f" ({groups['model']:,} model, {groups['training_state']:,} training state)" if groups["training_state"] else ""
    )
    rows = [
        ("file", markup_safe(info["file"])),
        ("format", markup_safe(info["format"]) + (f" (version {info['version']})" if "version" in info else "")),
        ("size", f"{info['size_bytes']:,} bytes"),
        ("tensors", count),
        ("parameters", f"{info['param_count']:,}"),
        ("dtypes", ", ".join(f"{markup_safe(k)} ×{v}" for k, v in sorted(info["dtypes"].items())) or "-"),
    ]
    rows += [(key, _number(value)) for key, value in info["architecture_fields"].items()]
    name = (info.get("metadata") or {}).get("name")
    if name is not None:
        rows.append(("name", markup_safe(name)))
    if "flags" in info:  # APR: its checksums
        flags = [k for k in ("row_major", "quantized", "has_vocab") if info["flags"][k]]
        rows += [
            ("flags", f"0x{info['flags']['value']:04x} ({', '.join(flags) or 'none'})"),
            ("header CRC", _mark(info["header_checksum_valid"])),
            ("footer CRC", _mark(info["footer_checksum_valid"])),
            ("tensor checksums", info["tensor_checksums"]),
            ("checksums", _mark(info["checksum_valid"])),
        ]
    for key, value in (info.get("training") or {}).items():
        rows.append((f"training {key}", _number(value) if not isinstance(value, dict) else markup_safe(value)))
    return rows


def _tensor_table(info: dict[str, Any]) -> Table:
    stats = any("stats" in t for t in info["tensors"])
    codecs = any(t.get("codec") for t in info["tensors"])
    columns = ("name", "dtype", "shape", "bytes", "bits/w", *(("codec",) * codecs))
    table = Table(*columns, *(("min", "max", "mean", "std", "zero %") * stats))
    table.columns[0].overflow = "fold"
    for t in info["tensors"]:
        shape = "[" + ", ".join(map(str, t["shape"])) + "]"
        cells = [markup_safe(t["name"]), markup_safe(t["dtype"]), shape, f"{t['stored_bytes']:,}"]
        cells.append("-" if t["bits_per_weight"] is None else f"{t['bits_per_weight']:.3f}")
        if codecs:
            quant = f"{t['quant']} " if isinstance(t.get("quant"), str) else ""
            cells.append(markup_safe(f"{quant}{t['codec']}" if t.get("codec") else "-"))
        if stats:
            s = t.get("stats") or {}
            cells += [_number(s.get(k)) for k in ("min", "max", "mean", "std")]
            cells.append("-" if "zero_fraction" not in s else f"{100 * s['zero_fraction']:.1f}")
        table.add_row(*cells)
    return table


def render_run(info: dict[str, Any], console: Console) -> None:
    console.print(f"run {markup_safe(info['run'])}: status {markup_safe(info['status'] or '-')}")
    table = Table("checkpoint", "step", "epoch", "val loss", "bytes", "verified", "")
    for row in ([info["model"]] if info["model"] else []) + info["checkpoints"]:
        marks = [m for m, name in (("latest", info["latest"]), ("best", info["best"])) if row["file"] == name]
        verified = {True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[row.get("verified")]
        table.add_row(markup_safe(row["file"]), _number(row.get("step")), _number(row.get("epoch")),
                      _number(row.get("val_loss")), f"{row['bytes']:,}", verified, ", ".join(marks))  # fmt: skip
    console.print(table)


def _render(info: dict[str, Any], show_tensors: bool) -> Any:
    def render(console: Console) -> None:
        if info.get("format") == "aprtool run":
            render_run(info, console)
            return
        summary = Table(show_header=False, box=None, pad_edge=False)
        summary.add_column(style="bold")
        summary.add_column()
        for key, value in _summary_rows(info):
            summary.add_row(key, value)
        console.print(summary)
        if show_tensors:
            console.print(_tensor_table(info))

    return render


@handle_errors
def inspect_command(
    file: Annotated[Path, typer.Argument(help="A model file or folder, or a run directory.", show_default=False)],
    as_json: JsonOption = False,
    tensors: Annotated[bool, typer.Option("--tensors", help="Also list every tensor.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="With --tensors: min/max/mean/std/zero % per tensor.")] = False,
    no_checksums: Annotated[
        bool, typer.Option("--no-checksums", help="APR: skip the full-file checksum pass.")
    ] = False,
) -> None:
    """Describe a model: format, size, tensors, parameters, dtypes, architecture; checksums for APR;
    training facts for a checkpoint. The format is recognised by content: APR, safetensors, GGUF, an HF
    folder (config.json + safetensors), or a run directory.

    Exits 4 if the file is not structurally valid, 5 if a checksum does not match.
    """
    from aprtool.files.inspect import inspect_path

    info = inspect_path(file, stats=stats, checksums=not no_checksums)
    emit(info, as_json, _render(info, tensors or stats))
    if info["valid"] is False:
        raise typer.Exit(EXIT_FAILED)
