"""The `aprtool` command line: thin Typer wrappers over library functions.

`main()` runs the app without click's standalone mode, so usage errors are ours to print: one line and
the hint (not a box), exit 2, and with `--json` also a JSON object on stdout.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from aprtool import __version__
from aprtool.cli import compress, diff, distill, eval, export, inspect, plot, pretrain, runs, verify
from aprtool.cli._common import EXIT_CODES_HELP, error, fail
from aprtool.errors import EXIT_USAGE

app = typer.Typer(
    name="aprtool",
    help="Train small language models and keep their weights in one checksummed APR container.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"aprtool {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train small language models and keep their weights in one checksummed APR container."""


# One module per command: its function is `NAME_command`, its help ends with its EXAMPLES.
for module in (pretrain, distill, inspect, verify, diff, compress, export, eval, runs, plot):
    name = module.__name__.rsplit(".", 1)[1]
    app.command(name, epilog=f"{module.EXAMPLES}\n{EXIT_CODES_HELP}")(getattr(module, f"{name}_command"))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, prog_name="aprtool", standalone_mode=False)
    except TyperException as exc:  # click's usage errors, as vendored by typer
        message = exc.format_message()
        if not message:  # `aprtool` alone: the help was printed
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "aprtool"
        if "--json" in args:
            fail(message, EXIT_USAGE, True)
        else:
            error(message)
        sys.stderr.write(f"Try '{command} --help' for help.\n")
        sys.exit(EXIT_USAGE)
    sys.exit(code if isinstance(code, int) else 0)
