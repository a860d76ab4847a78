"""`devreg`: serve the API, manage the database, and work with users and devices.

Data commands call the same services as the HTTP API, inside the same kind of transaction.
"""

import sys

import typer

from devreg.cli import changes, records, server, tokens, transfer
from devreg.cli.common import Terminated, print_error
from devreg.cli.output import (
    STDOUT,
    OutputFailed,
    buffered_stdout,
    end_for_output,
    stdout_escaping_missing_characters,
    stdout_failing_as_output,
)

app = typer.Typer(
    help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown"
)
server.register(app)
records.register(app)
tokens.register(app)
changes.register(app)
transfer.register(app)


def main() -> None:
    buffered_stdout()
    stdout_escaping_missing_characters()
    stdout_failing_as_output()
    try:
        code = app(prog_name="devreg", standalone_mode=False)
        STDOUT.flush()  # what is still buffered: failing here, not in Python's flush at exit
    except OutputFailed as failed:
        end_for_output(failed)
    except typer.TyperException as exc:  # a usage error: one line, as every other error
        context = getattr(exc, "ctx", None)
        see = f" (see {context.command_path} --help)" if context is not None else ""
        if message := exc.format_message():  # none when the help was shown instead
            print_error(f"{message}{see}")
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Terminated as ended:
        sys.exit(128 + ended.signal_number)
    sys.exit(code if isinstance(code, int) else 0)
