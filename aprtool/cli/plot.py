"""`aprtool plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aprtool.cli._common import ForceOption, JsonOption, emit, handle_errors
from aprtool.text import markup_safe

EXAMPLES = """\\b
Examples:
  aprtool plot runs/small                              # writes runs/small/curves.png
  aprtool plot runs/qat runs/noqat -o compare.png      # several runs on one figure
"""


@handle_errors
def plot_command(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="One or more pretrain/distill runs.")],
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="PNG to write.", show_default="RUN_DIR/curves.png")
    ] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Draw a run's curves from its metrics.jsonl: training and held-out loss, learning rate, grad norm
    and tokens/s against step, with phase starts (warmdown, SWA/EMA, QAT) marked. Needs matplotlib
    (pip install 'aprtool[plot]'; exit 9 without it).
    """
    from aprtool.paths import output_path
    from aprtool.train.plot import plot_runs

    if out is not None:
        output_path(out, force=force)
    info = plot_runs(list(run_dirs), out)
    emit(info, as_json, lambda console: console.print(f"wrote {markup_safe(info['file'])}"))
