"""`aprtool export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from aprtool.cli._common import ForceOption, JsonOption, emit, handle_errors
from aprtool.cli.choices import ExportDtype, ExportTarget
from aprtool.text import markup_safe

EXAMPLES = """\b
Examples:
  aprtool export model.int6.apr -o hf/ --to hf        # loads with AutoModelForCausalLM
  aprtool export model.apr -o model.gguf --to gguf --dtype f16
"""


def _render(report: dict[str, Any]):
    def render(console: Console) -> None:
        out = markup_safe(report["output"])
        console.print(f"{out}: {report['to']}, {report['tensors']} tensors, {report['bytes']:,} bytes")
        for path in report["files"]:
            console.print(f"  {markup_safe(path)}")
        for warning in report["warnings"]:
            console.print(f"[yellow]warning[/]: {markup_safe(warning)}")

    return render


@handle_errors
def export_command(
    src: Annotated[Path, typer.Argument(metavar="IN", help=".apr (float or int6) or .safetensors input.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output file (a directory for --to hf).")],
    to: Annotated[ExportTarget, typer.Option("--to", help="The format to write.")],
    dtype: Annotated[
        ExportDtype | None, typer.Option(help="Float tensors' dtype (default: as stored; int6 -> f32).")
    ] = None,
    weights_only: Annotated[
        bool, typer.Option("--weights-only", help="With --to apr: drop training state (__training__.*).")
    ] = False,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Export to safetensors, a Hugging Face model directory, GGUF, or APR; or import safetensors.

    int6-encoded tensors are dequantized. Training state is never exported (except --to apr without
    --weights-only). OUT is written atomically. Exits 5 for a model with no tensors, missing
    architecture fields (named), or a tensor name collision.
    """
    from aprtool.interop.export import export_file

    report = export_file(
        src, out, to.value, dtype=dtype.value if dtype else None, weights_only=weights_only, force=force
    )
    emit(report, as_json, _render(report))
