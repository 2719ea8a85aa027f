"""Commands whose issues have not landed yet: they say so and exit 9."""

from __future__ import annotations

import typer

from aprtool.cli._common import error
from aprtool.errors import EXIT_UNAVAILABLE

PENDING = {
    "distill": ("Distill a teacher model into a smaller student.", 5),
}


def make_pending(name: str, summary: str, issue: int):
    def command(ctx: typer.Context) -> None:
        error(f"'{name}' is not available yet (tracked in issue #{issue})")
        raise typer.Exit(EXIT_UNAVAILABLE)

    command.__doc__ = f"{summary} [not available yet: exits 9]"
    return command
