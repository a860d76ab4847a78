"""What devreg finds out about the PostgreSQL server it is given."""

import logging
import uuid

import pytest
from sqlalchemy.engine import URL

from devreg.app import create_app
from tests.support import admin, make_settings, running

FOLDS_ONLY_ASCII = "the database folds only A-Z to lower case"


async def warnings_at_start(url: URL, caplog: pytest.LogCaptureFixture) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="devreg"):
        async with running(create_app(make_settings(url))):
            pass
    return [record.getMessage() for record in caplog.records if record.name == "devreg"]


@pytest.mark.parametrize("encoding", ["UTF8", "LATIN1", "KOI8R"])
async def test_a_database_whose_lower_case_is_ascii_only_is_warned_of(
    server_url: URL, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    """Under LC_CTYPE=C `name__ic=éclair` missed ÉCLAIR, and ÉVE@x.org and éve@x.org were two
    users, where README promised any case: nothing said so. (Asked with a Σ, a LATIN1 database
    failed the start-up; KOI8-R has no É to ask with, and is not warned of.)"""
    name = f"devreg_c_{uuid.uuid4().hex[:12]}"
    await admin(
        server_url,
        f"CREATE DATABASE {name} TEMPLATE template0 ENCODING '{encoding}' LC_CTYPE 'C' "
        "LC_COLLATE 'C'",
    )
    try:
        warnings = await warnings_at_start(server_url.set(database=name), caplog)
    finally:
        await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    warned = any(warning.startswith(FOLDS_ONLY_ASCII) for warning in warnings)
    assert warned is (encoding != "KOI8R"), warnings


async def test_a_database_that_folds_every_letter_is_not(
    committed_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    warnings = await warnings_at_start(committed_database_url, caplog)

    assert not any(warning.startswith(FOLDS_ONLY_ASCII) for warning in warnings), warnings
