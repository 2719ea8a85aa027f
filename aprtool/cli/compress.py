"""`aprtool compress`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from aprtool.cli._common import JsonOption, emit, handle_errors
from aprtool.codecs.compress import DEFAULT_CLIP, CompressOptions, compress_file
from aprtool.codecs.quant import DEFAULT_MIN_ELEMENTS
from aprtool.text import markup_safe


def _render(report: dict[str, Any]):
    def render(console: Console) -> None:
        console.print(
            f"{markup_safe(report['output'])}: {report['output_bytes']:,} bytes "
            f"(input {report['input_bytes']:,} bytes; {report['mode']}, codec {report['codec']})"
        )
        for warning in report["warnings"]:
            console.print(f"[yellow]warning[/]: {markup_safe(warning)}")
        if not report["quantized_params"]:
            console.print("no tensor was quantized: nothing to compare")
            return
        table = Table(title=f"{report['quantized_params']:,} quantized weights, same symbols for every codec")
        for col in ("codec", "bytes", "bits/weight", "over entropy", "encode MB/s", "decode MB/s"):
            table.add_column(col, justify="left" if col == "codec" else "right")
        table.add_row("f32", f"{report['raw_float_bytes']:,}", "32.0000", "", "", "")
        for name, c in sorted(report["codecs"].items(), key=lambda kv: kv[1]["bytes"]):
            mark = " *" if name == report["codec"] else ""
            table.add_row(
                name + mark,
                f"{c['bytes']:,}",
                f"{c['bits_per_weight']:.4f}",
                f"{c['over_entropy_pct']:+.3f}%",
                f"{c['encode_mb_s'] or 0:.1f}",
                f"{c['decode_mb_s'] or 0:.1f}",
            )
        bound = report["entropy_bound_bytes"]
        bits = bound * 8 / report["quantized_params"]
        table.add_row("order-0 bound", f"{bound:,}", f"{bits:.4f}", "", "", "")
        console.print(table)

    return render


@handle_errors
def compress_command(
    src: Annotated[Path, typer.Argument(metavar="IN", help=".apr or .safetensors input.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .apr path.", show_default=False)],
    codec: Annotated[str, typer.Option(help="Lossless coder: rans, lzma, zstd or raw.")] = "rans",
    quant: Annotated[
        str, typer.Option(help="int6: quantize float matrices once; none: keep floats as they are.")
    ] = "int6",
    clip: Annotated[
        str,
        typer.Option(help="Row scale: absmax (max|row|/31) or std:K (K*std(row)/31, larger values clipped)."),
    ] = DEFAULT_CLIP,
    min_elements: Annotated[
        int, typer.Option(help="Tensors with fewer elements (and every 1-D tensor) are not quantized.")
    ] = DEFAULT_MIN_ELEMENTS,
    passthrough: Annotated[
        str, typer.Option(help="Unquantized float tensors: f16 (store as fp16) or keep (unchanged).")
    ] = "f16",
    compare: Annotated[
        bool, typer.Option("--compare/--no-compare", help="Also code with every codec and print the table.")
    ] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists (atomically).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Quantize to int6 and entropy-code an APR or safetensors file, comparing every codec.

    If IN is already quantized, compress repacks it with the new codec without re-quantizing;
    `aprtool verify --deep OUT` then proves the decoded content is unchanged.
    """
    options = CompressOptions(
        codec=codec,
        quant=quant,
        clip=clip,
        min_elements=min_elements,
        passthrough=passthrough,
        compare=compare,
        force=force,
    )
    report = compress_file(src, out, options)
    emit(report, as_json, _render(report))
