"""`devreg tokens ...`: API tokens, managed with the database's own access (as an admin)."""

from datetime import datetime
from typing import Annotated

import typer
from pydantic import TypeAdapter
from rich.table import Table

from devreg.auth import service
from devreg.auth.models import TokenScope
from devreg.auth.principal import FULL_ACCESS
from devreg.auth.schemas import TokenCreate, TokenRead
from devreg.cli.common import JsonFlag, in_transaction, show, stdout, validated
from devreg.schemas import BIGINT_MAX

tokens_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)

UserOption = Annotated[int, typer.Option("--user", min=1, max=BIGINT_MAX, help="The user's id.")]


@tokens_app.command("create")
def tokens_create(
    user: UserOption,
    scope: Annotated[TokenScope, typer.Option(help="`read` may only read.")] = TokenScope.WRITE,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 90d, 12h or 30m; none: never expires.")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Sees and changes everything.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a token and print it: this is the only time it is shown."""
    data = validated(TokenCreate, user_id=user, scope=scope, expires_in=expires, admin=admin)
    created = in_transaction(lambda session: service.create_token(session, FULL_ACCESS, data=data))
    if as_json:
        print(created.model_dump_json())
        return
    show(TokenRead.model_validate(created.model_dump(exclude={"token"})), as_json=False)
    stdout.print("\ntoken (shown once; keep it secret):", style="bold")
    print(created.token)


@tokens_app.command("list")
def tokens_list(
    user: Annotated[
        int | None, typer.Option("--user", min=1, max=BIGINT_MAX, help="Only this user's.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List tokens (never the tokens themselves: their prefix, scope and dates)."""
    tokens = in_transaction(lambda session: service.list_tokens(session, FULL_ACCESS, user_id=user))
    items = [TokenRead.model_validate(token) for token in tokens]
    if as_json:
        print(TypeAdapter(list[TokenRead]).dump_json(items).decode())
        return
    columns = ("id", "user_id", "prefix", "scope", "admin", "created_at", "expires_at",
               "last_used_at", "revoked_at")  # fmt: skip
    table = Table()
    for column in columns:
        # The prefix is what a user looks for: never broken across lines.
        table.add_column(column, overflow="fold", no_wrap=column == "prefix")
    for item in items:
        row = item.model_dump()
        table.add_row(*(_cell(row[column]) for column in columns))
    stdout.print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(min=1, max=BIGINT_MAX, help="The token's id.")],
) -> None:
    """Revoke a token. A running server stops accepting it within AUTH_CACHE_TTL seconds."""
    in_transaction(lambda session: service.revoke_token(session, FULL_ACCESS, token_id))
    stdout.print(f"token {token_id} revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
