"""`devreg`: serve the API, manage the database, and work with users and devices.

Data commands call the same services as the HTTP API, inside the same kind of transaction.
"""

import sys

import typer

from devreg.cli import changes, records, server, tokens, transfer

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
server.register(app)
records.register(app)
tokens.register(app)
changes.register(app)
transfer.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
