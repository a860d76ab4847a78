"""The CLI run in-process (typer's CliRunner) against a database of the test's own."""

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import URL
from typer.testing import CliRunner, Result

from devreg.cli import app
from devreg.config import get_settings

Invoke = Callable[..., Result]


@pytest.fixture
def devreg(committed_database_url: URL, monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoke]:
    """Runs `devreg ARGS...` against a database of the test's own."""
    for name in ("DB_USER", "DB_PASSWORD", "DB_NAME", "DB_HOST", "DB_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", committed_database_url.render_as_string(hide_password=False))
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        """`env` overrides environment variables for this one run."""
        get_settings.cache_clear()
        return runner.invoke(app, list(args), env=env)

    yield invoke
    get_settings.cache_clear()
