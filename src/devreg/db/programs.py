"""PostgreSQL's programs as the embedded cluster runs them: which version's (the one that made
the cluster), as whom (PostgreSQL refuses root: as root, the `postgres` user), in what
environment (their messages in English, which devreg reads), and what a failed one said."""

import pwd
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

SERVICE_ACCOUNT = "postgres"


class EmbeddedPostgresError(Exception):
    """The embedded cluster could not be set up or started; the message says what to do."""


# Debian's packages install each major version's binaries here, side by side.
PACKAGED_VERSIONS = Path("/usr/lib/postgresql")


def find_pg_bindir(made_by: str | None = None) -> Path:
    """PostgreSQL's binaries for a cluster made by major version `made_by` (its PG_VERSION):
    that version's packaged ones, where installed; else those on PATH; for a new cluster, those
    on PATH, else the newest packaged. Another major version cannot run an existing cluster,
    and Debian upgrades install the next beside the one a cluster was made with."""
    if made_by is not None and (PACKAGED_VERSIONS / made_by / "bin" / "pg_ctl").exists():
        return PACKAGED_VERSIONS / made_by / "bin"
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    if made_by is not None:
        raise EmbeddedPostgresError(
            f"the embedded cluster was made by PostgreSQL {made_by}, whose server binaries are "
            f"not installed: install them (`apt-get install -y postgresql-{made_by}`), or put "
            "that version's pg_ctl on PATH"
        )
    versions = sorted(
        PACKAGED_VERSIONS.glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    raise EmbeddedPostgresError(
        "PostgreSQL's server binaries were not found. Install them with "
        "`apt-get update && apt-get install -y postgresql` (or run `make run`), "
        "or set DATABASE_URL to use an existing server."
    )


def service_account() -> pwd.struct_passwd:
    """The account PostgreSQL's programs run as under root; its absence one line, not a
    traceback (binaries from elsewhere than Debian's packages come without it)."""
    try:
        return pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        raise EmbeddedPostgresError(
            f"as root, devreg runs PostgreSQL as the `{SERVICE_ACCOUNT}` user (PostgreSQL "
            "refuses root), which this machine does not have: create it "
            f"(`useradd --system {SERVICE_ACCOUNT}`), run devreg as another user, or set "
            "DATABASE_URL"
        ) from None


def in_english(environment: Mapping[str, str]) -> dict[str, str]:
    """The environment PostgreSQL's tools run in: their messages, and the server's log, in
    English, which devreg reads them in. LANGUAGE chose gettext's translation whatever the
    locale (but C), and LC_ALL overrides LC_MESSAGES."""
    kept = {
        name: value for name, value in environment.items() if name not in ("LANGUAGE", "LC_ALL")
    }
    return {**kept, "LC_MESSAGES": "C"}


def failure_reason(result: subprocess.CompletedProcess[str]) -> str:
    """Why a PostgreSQL tool failed, in a line: its first error, else its last word, else how
    it ended (killed, it says nothing)."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if _TOOL_ERROR.search(line)]
    if errors:
        return errors[0]
    if lines:
        return lines[-1]
    if result.returncode < 0:
        return f"ended by {signal.Signals(-result.returncode).name}"
    return f"exit status {result.returncode}"


_TOOL_ERROR = re.compile(r"\b(error|FATAL|PANIC):|could not ")
