"""`aprtool runs`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aprtool.cli._common import JsonOption, emit, handle_errors
from aprtool.cli.inspect import render_run
from aprtool.errors import EXIT_FAILED

EXAMPLES = """\\b
Examples:
  aprtool runs runs/small                 # every checkpoint, verified, with latest and best marked
  aprtool runs runs/small --no-verify --json
"""


@handle_errors
def runs_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A pretrain or distill run directory.")],
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Verify every checkpoint's checksums.")] = True,
    as_json: JsonOption = False,
) -> None:
    """A run's checkpoints: step, epoch, held-out loss, size, verified; which ones `latest` and `best` are.

    Exits 5 if a checkpoint does not verify.
    """
    from aprtool.train.runs import list_run

    info = list_run(run_dir, verify=verify)
    emit(info, as_json, lambda console: render_run(info, console))
    if not info["valid"]:
        raise typer.Exit(EXIT_FAILED)
