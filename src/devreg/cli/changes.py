"""`devreg changes ...`: upkeep of the change log."""

from typing import Annotated

import typer

from devreg.changes import service
from devreg.cli.common import DurationWithUnit, run_in_transaction, validated
from devreg.cli.output import stdout
from devreg.schemas import InputSchema

changes_app = typer.Typer(help="The change log of devices and users.", no_args_is_help=True)


class _Age(InputSchema):
    older_than: DurationWithUnit


@changes_app.command("prune")
def changes_prune(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Age of the records to delete, e.g. 90d.")
    ],
) -> None:
    """Delete change records older than the given age."""
    age = validated(_Age, older_than=older_than).older_than
    pruned = run_in_transaction(lambda work: service.prune_changes(work, older_than=age))
    stdout.print(f"{pruned} change records deleted")


def register(app: typer.Typer) -> None:
    app.add_typer(changes_app, name="changes")
