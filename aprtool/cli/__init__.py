"""The `aprtool` command line: thin Typer wrappers over library functions."""

from __future__ import annotations

import typer

from aprtool.cli._common import EXIT_CODES_HELP
from aprtool.cli.compress import compress_command
from aprtool.cli.distill import distill_command
from aprtool.cli.eval import eval_command
from aprtool.cli.export import export_command
from aprtool.cli.inspect import inspect_command
from aprtool.cli.pretrain import pretrain_command
from aprtool.cli.verify import verify_command

app = typer.Typer(
    name="aprtool",
    help="Train small language models and keep their weights in one checksummed APR container.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("pretrain", epilog=EXIT_CODES_HELP)(pretrain_command)
app.command("distill", epilog=EXIT_CODES_HELP)(distill_command)
app.command("inspect", epilog=EXIT_CODES_HELP)(inspect_command)
app.command("verify", epilog=EXIT_CODES_HELP)(verify_command)
app.command("compress", epilog=EXIT_CODES_HELP)(compress_command)
app.command("export", epilog=EXIT_CODES_HELP)(export_command)
app.command("eval", epilog=EXIT_CODES_HELP)(eval_command)


def main() -> None:
    app(prog_name="aprtool")
