"""`devreg tokens ...`: API tokens, managed with the database's own access (as an admin)."""

from typing import Annotated

import typer

from devreg.auth import service
from devreg.auth.filters import TokenFilter
from devreg.auth.models import TokenScope
from devreg.auth.principal import FULL_ACCESS
from devreg.auth.schemas import TokenCreate, TokenPage, TokenRead
from devreg.cli.common import (
    Cursor,
    DurationWithUnit,
    JsonFlag,
    Limit,
    parse_id,
    run_in_transaction,
    show,
    show_page,
    validated,
)
from devreg.cli.output import stdout, write_line
from devreg.pagination import PAGE_LIMIT_DEFAULT, PageRequest

tokens_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)

UserOption = Annotated[int, typer.Option("--user", parser=parse_id, help="The user's id.")]


class _TokenOptions(TokenCreate):
    expires_in: DurationWithUnit | None = None


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
    data = validated(
        _TokenOptions,
        {"user_id": "--user", "expires_in": "--expires"},
        user_id=user,
        scope=scope,
        expires_in=expires,
        admin=admin,
    )
    created = run_in_transaction(lambda work: service.create_token(work, FULL_ACCESS, data=data))
    if as_json:
        write_line(created.model_dump_json())
        return
    show(TokenRead.model_validate(created.model_dump(exclude={"token"})), as_json=False)
    stdout.print("\ntoken (shown once; keep it secret):", style="bold")
    write_line(created.token)


@tokens_app.command("list")
def tokens_list(
    user: Annotated[
        int | None, typer.Option("--user", parser=parse_id, help="Only this user's.")
    ] = None,
    limit: Limit = PAGE_LIMIT_DEFAULT,
    cursor: Cursor = None,
    as_json: JsonFlag = False,
) -> None:
    """List tokens, a page at a time.

    Never the tokens themselves: their prefix, scope and dates."""
    page = PageRequest(limit=limit, cursor=cursor)
    result = run_in_transaction(
        lambda work: service.list_tokens(
            work, FULL_ACCESS, filters=TokenFilter(user_id=(user,) if user else ()), page=page
        )
    )
    columns = ("id", "user_id", "prefix", "scope", "admin", "created_at", "expires_at",
               "last_used_at", "revoked_at")  # fmt: skip
    # The prefix is what a user looks for: never broken across lines.
    show_page(TokenPage, result, columns, as_json=as_json, unbroken=("prefix",))


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(parser=parse_id, help="The token's id.")],
) -> None:
    """Revoke a token. A running server stops accepting it within AUTH_CACHE_TTL seconds."""
    run_in_transaction(lambda work: service.revoke_token(work, FULL_ACCESS, token_id))
    stdout.print(f"token {token_id} revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(tokens_app, name="tokens")
