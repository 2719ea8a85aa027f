"""`aprtool diff`."""

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
  aprtool diff run/model.apr model.int6.apr            # the cost of int6, tensor by tensor
  aprtool diff model.apr model.gguf --atol 1e-3        # an export against its source
"""


def _render(report: dict[str, Any]):
    def render(console: Console) -> None:
        verdict = "[green]same[/]" if report["same"] else "[red]different[/]"
        a, b = markup_safe(report["a"]), markup_safe(report["b"])
        console.print(f"{verdict}: {a} ({report['formats'][0]}) vs {b} ({report['formats'][1]}), "
                      f"{report['compared']} tensors compared, atol {report['atol']:g}")  # fmt: skip
        for side, names in (("only in A", report["only_in_a"]), ("only in B", report["only_in_b"])):
            if names:
                console.print(f"{side}: {', '.join(map(markup_safe, names))}")
        if report["metadata_changed"]:
            console.print(f"metadata keys changed: {', '.join(map(markup_safe, report['metadata_changed']))}")
        if report["tensors"]:
            table = Table("tensor", "shape / dtype", "max |a-b|", "max rel", "cosine")
            for r in report["tensors"]:
                what = " → ".join(map(str, r.get("shape") or r.get("dtype") or []))
                nums = [f"{r[k]:.4g}" if k in r else "-" for k in ("max_abs", "max_rel", "cosine")]
                name = ("[red]" if r["different"] else "") + markup_safe(r["name"]) + ("[/]" if r["different"] else "")
                table.add_row(name, markup_safe(what), *nums)
            console.print(table)

    return render


@handle_errors
def diff_command(
    a: Annotated[Path, typer.Argument(metavar="A", help="A model file or folder (APR, safetensors, GGUF, HF).")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Another, in any of those formats.")],
    atol: Annotated[float, typer.Option(help="Largest absolute difference that still counts as the same.")] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Compare two models: tensors only in A or B, shape or dtype changed, values changed (max absolute and
    relative difference, cosine), metadata keys changed. Works across formats (GGUF names mapped back).

    Exits 0 when the same (names, shapes, values within --atol), 5 when different.
    """
    from aprtool.files.diff import diff_paths

    report = diff_paths(a, b, atol=atol)
    emit(report, as_json, _render(report))
    if not report["same"]:
        raise typer.Exit(EXIT_FAILED)
