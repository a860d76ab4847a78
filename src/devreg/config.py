"""Every knob devreg has, read from the environment (and a `.env` file) in one place."""

import inspect
import ipaddress
import os
import re
from collections.abc import Sequence
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import parse_qs, urlencode, urlsplit

import ada_url
import asyncpg
from asyncpg.connect_utils import SessionAttribute
from dotenv.parser import Binding, parse_stream
from platformdirs import user_data_path
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from devreg.schemas import Duration, is_a_number

ASYNC_DRIVER = "postgresql+asyncpg"
_POSTGRES_SCHEMES = {
    "postgres",
    "postgresql",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
}

AuthMode = Literal["auto", "required", "off"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
Port = Annotated[int, Field(ge=1, le=65535)]
_CONNECT_TIMEOUT_MAX = 300
# RFC 3986's unreserved characters: the others are written into the docs page's script and
# HTML as they are, where a quote ended a string (`/dev'reg`).
_PATH_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_MILLISECOND = 0.001
# pg_ctl hands the data directory and its log's path to a shell, in double quotes: `$HOME` in
# them was expanded, and the cluster made elsewhere or not at all ("is port N taken?").
_SHELL_SPECIAL = frozenset('$`"\\')
# PostgreSQL's NAMEDATALEN, less its terminating zero byte.
_NAME_BYTES_MAX = 63


# Each worker keeps up to POOL_SIZE + MAX_OVERFLOW connections open; four workers at the
# defaults (120) fit the embedded cluster's max_connections (see db/embedded.py).
_MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """One worker per CPU this process may run on, up to four."""
    return max(1, min(len(os.sched_getaffinity(0)), _MAX_DEFAULT_WORKERS))


def default_data_dir() -> Path:
    """Where the embedded cluster lives: a system path for root, the XDG data dir otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/devreg")
    return user_data_path("devreg")


ENV_FILE = ".env"


def _browser_origin(origin: str) -> str | None:
    """`origin` as a browser's Origin header writes it (the WHATWG URL standard's serialisation:
    lower case, punycode by UTS 46, no default port, IP addresses in their shortest form), or
    None if it is no http(s) origin at all (a path, a query, credentials)."""
    try:
        url = ada_url.URL(origin)
    except ValueError:
        return None
    if url.protocol not in ("http:", "https:") or url.pathname != "/" or url.search:
        return None
    if url.username or url.password or "?" in origin or "#" in origin:
        return None
    return str(url.origin)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=ENV_FILE,
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )

    # An external PostgreSQL: DATABASE_URL, or the tutorial's five DB_* parts.
    # With neither, devreg runs its own embedded cluster under DATA_DIR.
    database_url: SecretStr | None = Field(None, validate_default=True)
    db_user: str | None = Field(None, validate_default=True)
    db_password: SecretStr | None = Field(None, validate_default=True)
    db_name: str | None = Field(None, validate_default=True)
    db_host: str | None = Field(None, validate_default=True)
    db_port: Port | None = Field(None, validate_default=True)

    pool_size: int = Field(20, ge=1, le=1000)
    max_overflow: int = Field(10, ge=0, le=1000)
    pool_timeout: float = Field(
        3.0,
        gt=0,
        le=300,
        description="Seconds to wait for a pooled connection before answering 503.",
    )
    # Requests one worker works on at once; the rest wait their turn in arrival order (at most
    # POOL_TIMEOUT seconds, then 503). Health checks are never held back. See admission.py.
    max_requests_in_progress: int = Field(8, ge=1, le=10_000)
    # Exports one worker streams at once: each holds a database connection until its last byte
    # is sent, however slowly its client reads, so unbounded they could take the whole pool.
    # Another is refused at once (503): waiting, it would hold one of the requests' turns.
    max_exports_in_progress: int = Field(4, ge=1, le=1000)
    db_connect_timeout: float = Field(5.0, gt=0, le=_CONNECT_TIMEOUT_MAX)
    health_timeout: float = Field(2.0, gt=0, le=60)
    db_echo: bool = False
    # Seconds one SQL statement may run before PostgreSQL cancels it (a 503); 0: no limit.
    statement_timeout: float = Field(0.0, ge=0, le=86_400)

    host: str = "127.0.0.1"
    port: Port = 4000
    workers: int = Field(default_factory=default_workers, ge=1, le=64)
    log_level: LogLevel = "info"
    # FastAPI's own OpenTelemetry (a span, metrics and log records per request, through the
    # globally configured providers, or those FASTAPI_OTEL_AUTO_CONFIGURE sets up). Off by
    # default: deciding per request whether any provider is configured costs ~2% of a GET.
    telemetry: bool = False
    migrate_on_start: bool = True
    # Request bodies above these many bytes are refused with 413: every route, and bulk writes.
    max_body_size: int = Field(1024 * 1024, ge=1024)
    max_bulk_body_size: int = Field(64 * 1024 * 1024, ge=1024)
    # Seconds a request's body may take to arrive, from the request's start (then 408): a
    # client that stops sending must not hold its connection for ever.
    body_timeout: float = Field(30.0, gt=0, le=3600)
    # Seconds a stopping server waits for the requests in progress (an export read slowly)
    # before it cancels them: within the 30 s a container gets from SIGTERM to SIGKILL.
    shutdown_timeout: float = Field(25.0, gt=0, le=3600)
    # Origins (comma-separated) whose browser scripts may call the API; none by default.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Proxies (comma-separated addresses or networks, or *) whose X-Forwarded-For and
    # X-Forwarded-Proto are believed: the client they name is the request's client.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"]
    )
    # The path prefix a proxy serves devreg under, stripping it before it passes requests on
    # (`/devreg` for https://example.org/devreg/...): uvicorn's root_path, which the docs, the
    # schema's servers, Location and problems' instance name. Empty: served at the site's root.
    root_path: str = ""
    # auto: open on a loopback address until the first token is created, then tokens required;
    # refused on any other address. required: tokens always. off: no authentication at all.
    auth: AuthMode = "auto"
    # Seconds a verified token (or the absence of any token) is trusted without asking the
    # database again: how long a revocation may take to reach the other workers.
    auth_cache_ttl: float = Field(10.0, ge=0, le=3600)
    # How long an Idempotency-Key is remembered (its answer given again to a retry).
    idempotency_key_lifetime: Duration = timedelta(hours=24)
    # PUT, PATCH and DELETE of a device without If-Match: last write wins, or 428 when required
    # (and then bulk updates and deletes, and a user's deletion with its devices, which name no
    # versions, are refused with 428 too).
    require_if_match: bool = False

    data_dir: Path = Field(default_factory=default_data_dir, validate_default=True)
    embedded_pg_port: Port = 54329
    embedded_db_name: str = Field("devreg", validate_default=True)

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, proxies: list[str]) -> list[str]:
        """As uvicorn matches them: a network by its own address (`127.0.0.1/8` is read as
        `127.0.0.0/8`, where uvicorn matched nothing), and `*` only alone."""
        if "*" in proxies:
            if len(proxies) > 1:
                raise ValueError("* (every proxy) stands alone")
            return proxies
        try:
            return [
                str(ipaddress.ip_network(proxy, strict=False))
                if "/" in proxy
                else str(ipaddress.ip_address(proxy))
                for proxy in proxies
            ]
        except ValueError as exc:
            raise ValueError(f"{exc}: write IP addresses, networks or *") from None

    @field_validator("root_path")
    @classmethod
    def _path_prefix(cls, prefix: str) -> str:
        """Segments of a URL's path (RFC 3986's unreserved characters), each after a `/`, none
        after the last: uvicorn puts it before every request's path as written, so `devreg`
        or `/devreg/` would make every path one that no route has, and it takes ASCII alone."""
        if not prefix or _PATH_PREFIX.fullmatch(prefix):
            return prefix
        if not prefix.startswith("/"):
            raise ValueError(f"{prefix!r} does not begin with /: write /{prefix.strip('/')}")
        if prefix.endswith("/"):
            stripped = prefix.rstrip("/")
            raise ValueError(
                f"{prefix!r} ends with /: write {stripped}"
                if stripped
                else "'/' is the root: leave it unset"
            )
        raise ValueError(
            f"{prefix!r}: write its segments with letters, digits and -._~ alone, one / before each"
        )

    @field_validator("statement_timeout")
    @classmethod
    def _whole_milliseconds(cls, value: float) -> float:
        """PostgreSQL takes it in whole milliseconds: less than half of one would be 0, no
        limit at all."""
        if 0 < value < _MILLISECOND:
            raise ValueError("must be 0 (no limit) or at least 0.001 (a millisecond)")
        return value

    @field_validator("log_level", "auth", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_origins", "forwarded_allow_ips", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_as_browsers_send_them(cls, origins: list[str]) -> list[str]:
        """An origin is a scheme, a host and perhaps a port, as a browser's Origin header has
        it: one written otherwise (`https://ui.example/`, a path, no scheme, capitals, a default
        port) matches no browser, and its preflights were all refused, with nothing said."""
        for origin in origins:
            as_sent = _browser_origin(origin)
            if as_sent is None:
                raise ValueError(f"{origin!r} is not an origin: write it as https://host[:port]")
            if origin != as_sent:
                raise ValueError(f"{origin!r}: write it as a browser sends it: {as_sent}")
        return origins

    @field_validator("database_url")
    @classmethod
    def _must_be_postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _to_async_url(value.get_secret_value())
        elif _set_but_empty("database_url"):
            raise ValueError(
                "set but empty: give a PostgreSQL URL, or unset it for the embedded PostgreSQL"
            )
        return value

    @field_validator("db_user", "db_password", "db_name", "db_host", "db_port")
    @classmethod
    def _database_part_given(cls, value: object, info: ValidationInfo) -> object:
        """As DATABASE_URL: all five set from unset secrets meant the embedded cluster, and one
        its default, another database than the one meant."""
        if value is None and _set_but_empty(info.field_name or ""):
            raise ValueError("set but empty: give a value, or unset it for the default")
        return value

    @field_validator("data_dir", "embedded_db_name", mode="before")
    @classmethod
    def _where_the_data_is(cls, value: object, info: ValidationInfo) -> object:
        """A place for the data given with spaces around it, or set but empty, would be
        another place than the one meant, its data not there: an empty registry."""
        name = info.field_name or ""
        default = cls.model_fields[name].get_default(call_default_factory=True)
        if value == default and _set_but_empty(name):  # the default, for an empty variable
            raise ValueError("set but empty: give a value, or unset it for the default")
        if isinstance(value, str) and value != value.strip():
            raise ValueError(f"has spaces around it: {value!r}")
        return value

    @field_validator("embedded_db_name")
    @classmethod
    def _a_name_postgresql_keeps(cls, name: str) -> str:
        """At most 63 bytes, as PostgreSQL keeps a name: a longer one was refused by the driver
        only as the database was looked for, every start failing as if the cluster could not
        be reached ("cannot connect to PostgreSQL ... (ProgrammingError)")."""
        size = len(name.encode())
        if size > _NAME_BYTES_MAX:
            raise ValueError(
                f"is {size} bytes long: PostgreSQL's names are at most {_NAME_BYTES_MAX}"
            )
        return name

    @field_validator("data_dir")
    @classmethod
    def _whole_path(cls, data_dir: Path) -> Path:
        """Absolute: PostgreSQL's tools run from / (embedded.py), not from where devreg
        started."""
        try:
            return data_dir.absolute()
        except FileNotFoundError:  # no working directory to find it from
            raise ValueError(
                f"{str(data_dir)!r} is relative and the working directory it is in is gone: "
                "give a whole path, or run devreg from a directory that exists"
            ) from None

    @model_validator(mode="after")
    def _data_dir_pg_ctl_can_use(self) -> Self:
        """Only where the embedded cluster is used: DATABASE_URL's users need no DATA_DIR."""
        cluster_dir = str(self.embedded_cluster_dir)
        if self.uses_embedded_cluster and not _SHELL_SPECIAL.isdisjoint(cluster_dir):
            raise ValueError(
                f'DATA_DIR may not hold $, `, " or \\ (pg_ctl hands it to a shell): {self.data_dir}'
            )
        return self

    @model_validator(mode="after")
    def _connect_timeout_from_url(self) -> Self:
        """libpq's `connect_timeout` in DATABASE_URL sets DB_CONNECT_TIMEOUT, unless that is
        set too."""
        if self.database_url is None or "db_connect_timeout" in self.model_fields_set:
            return self
        timeout = _url_connect_timeout(make_url(self.database_url.get_secret_value()))
        if timeout is not None:
            self.db_connect_timeout = timeout
        return self

    @property
    def exports_at_once(self) -> int:
        """MAX_EXPORTS_IN_PROGRESS, held below the pool's size: an export holds a connection
        until its last byte is sent, and slow readers must leave one for other requests (a pool
        of one has none to spare: it serves an export at a time all the same)."""
        return max(1, min(self.max_exports_in_progress, self.pool_size + self.max_overflow - 1))

    @property
    def uses_embedded_cluster(self) -> bool:
        """No server configured: neither DATABASE_URL nor any of its parts."""
        parts = (self.db_user, self.db_password, self.db_name, self.db_host, self.db_port)
        return self.database_url is None and all(part is None for part in parts)

    def external_database_url(self) -> URL | None:
        """The configured server's URL on the asyncpg driver, or None to use the embedded one."""
        if self.database_url is not None:
            return _to_async_url(self.database_url.get_secret_value())
        if self.uses_embedded_cluster:
            return None
        # The tutorial's defaults fill in whichever parts are left out.
        return URL.create(
            ASYNC_DRIVER,
            username=self.db_user or "postgres",
            password=self.db_password.get_secret_value() if self.db_password else "postgres",
            host=self.db_host or "localhost",
            port=self.db_port or 5432,
            database=self.db_name or "postgres",
        )

    @property
    def embedded_cluster_dir(self) -> Path:
        return self.data_dir / "pg"


def _set_but_empty(field: str) -> bool:
    """Whether the field's variable is in the environment, empty: left out by env_ignore_empty,
    it would mean the default (for DATABASE_URL the embedded cluster), another database than the
    one meant (an unset CI secret, `DATABASE_URL=$UNSET`)."""
    return any(
        name.upper() == field.upper() and not given.strip()
        for name, given in os.environ.items()  # as settings are read: in any case
    )


def _to_async_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise ValueError("DATABASE_URL is not a valid database URL") from exc
    if url.drivername not in _POSTGRES_SCHEMES:
        raise ValueError("DATABASE_URL must be a postgresql:// URL")
    if "@" in (url.host or "") + (url.database or ""):  # split at an @ of the password
        raise ValueError("DATABASE_URL has an unescaped @ before its host: write @ as %40")
    _url_connect_timeout(url)
    _refuse_unknown_session_attributes(url)
    driver_connect_args(url)  # a value that is not of its type refused now, naming it
    if (dbname := url.query.get("dbname")) is not None:
        # libpq's name for the database, which psql takes over the URL's path; asyncpg would
        # take the path's over it.
        url = url.set(database=_last(dbname)).difference_update_query(["dbname"])
    driver_options = {name: value for name, value in url.query.items() if name in _DRIVER_KEYWORDS}
    libpq_options = _libpq_options(
        {name: value for name, value in url.query.items() if name not in _DRIVER_KEYWORDS}
    )
    if libpq_options:
        driver_options["dsn"] = "postgresql://?" + urlencode(libpq_options, doseq=True)
    return url.set(drivername=ASYNC_DRIVER, query=driver_options)


def dsn_options(url: URL) -> dict[str, list[str]]:
    """The libpq options of a URL _to_async_url made (`application_name`, `sslrootcert`...),
    which it hands to asyncpg in a DSN of their own."""
    dsn = url.query.get("dsn")
    return parse_qs(urlsplit(_last(dsn)).query) if dsn else {}


# The URL options SQLAlchemy passes to asyncpg.connect as keywords (ssl, target_session_attrs),
# as it always has. The other options are libpq's (sslmode, sslrootcert, application_name,
# options...): those go to asyncpg in a DSN made of them alone, which asyncpg reads as libpq
# would; host, user and the rest still come from the URL itself.
_DRIVER_KEYWORDS = frozenset(inspect.signature(asyncpg.connect).parameters) | {
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
}
# Driver keywords whose values a URL writes as text, by the type asyncpg needs (it compared the
# text "0" with a number); and those that are objects no URL can write.
_WHOLE_NUMBER_KEYWORDS = frozenset(
    {
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "prepared_statement_cache_size",
    }
)
_SECONDS_KEYWORDS = frozenset({"timeout", "command_timeout"})  # devreg's settings set its own
_BOOLEAN_KEYWORDS = {"direct_tls": {"true": True, "false": False}}
_OBJECT_KEYWORDS = frozenset(
    {
        "loop",
        "connection_class",
        "record_class",
        "server_settings",
        "prepared_statement_name_func",
    }
)


def driver_connect_args(url: URL) -> dict[str, Any]:
    """The URL's driver options that are not text, as the values asyncpg takes (to pass as
    connect_args, which take precedence over the URL's text)."""
    typed: dict[str, Any] = {}
    for name, given in url.query.items():
        value = _last(given)
        if name in _OBJECT_KEYWORDS:
            raise ValueError(f"DATABASE_URL option {name} cannot be given in a URL")
        if name in _WHOLE_NUMBER_KEYWORDS:
            if not value.isascii() or not value.isdigit():
                raise ValueError(f"DATABASE_URL option {name} must be a whole number")
            typed[name] = int(value)
        elif name in _SECONDS_KEYWORDS:
            typed[name] = _seconds(name, value)
        elif name in _BOOLEAN_KEYWORDS:
            if value.lower() not in _BOOLEAN_KEYWORDS[name]:
                raise ValueError(f"DATABASE_URL option {name} must be true or false")
            typed[name] = _BOOLEAN_KEYWORDS[name][value.lower()]
    return typed


# libpq options asyncpg does not read, which would reach the server as settings it refuses.
# Dropped: client-side tuning, and what asyncpg does anyway or never needs.
_LIBPQ_DROPPED = frozenset(
    {
        "connect_timeout",  # DB_CONNECT_TIMEOUT (Settings)
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "sslcompression",
        "sslsni",
    }
)
# Dropped at the values that ask for nothing asyncpg lacks; refused at the others (require).
_LIBPQ_OPTIONAL = {"channel_binding": {"disable", "prefer"}, "gssencmode": {"disable", "prefer"}}
_LIBPQ_UNSUPPORTED = frozenset(
    {
        "hostaddr",
        "require_auth",
        "requiressl",
        "requirepeer",
        "sslcertmode",
        "sslcrldir",
        "gssdelegation",
        "load_balance_hosts",
        "replication",
    }
)


def _libpq_options(options: dict[str, Any]) -> dict[str, Any]:
    """The URL's libpq options that asyncpg reads or the server takes as settings
    (application_name, options): those asyncpg has no use for dropped, those it cannot honour
    refused by name."""
    kept = {}
    for name, value in options.items():
        last = _last(value)
        if name in _LIBPQ_UNSUPPORTED or (
            name in _LIBPQ_OPTIONAL and last not in _LIBPQ_OPTIONAL[name]
        ):
            raise ValueError(f"{name}={last} is a libpq option the asyncpg driver cannot honour")
        if name not in _LIBPQ_DROPPED and name not in _LIBPQ_OPTIONAL:
            kept[name] = value
    fallback = kept.pop("fallback_application_name", None)
    if fallback is not None:
        kept.setdefault("application_name", fallback)
    return kept


def _url_connect_timeout(url: URL) -> float | None:
    """The URL's libpq `connect_timeout` in seconds, if it has one (a positive number)."""
    raw = url.query.get("connect_timeout")
    return None if raw is None else _seconds("connect_timeout", _last(raw), _CONNECT_TIMEOUT_MAX)


def _last(given: str | Sequence[str]) -> str:
    """A URL option's value: the last, when it is given several times (as libpq reads it)."""
    return given if isinstance(given, str) else given[-1]


def _seconds(name: str, value: str, at_most: float = float("inf")) -> float:
    """A URL option's number of seconds: above 0, and at most `at_most`."""
    seconds = float(value) if is_a_number(value) else 0.0
    if not 0 < seconds <= at_most:
        bound = "" if at_most == float("inf") else f" and at most {at_most}"
        raise ValueError(f"{name} must be a number of seconds above 0{bound}")
    return seconds


_SESSION_ATTRIBUTES = tuple(attribute.value for attribute in SessionAttribute)


def _refuse_unknown_session_attributes(url: URL) -> None:
    """libpq's `target_session_attrs` one of the values asyncpg takes: its own refusal named
    them by the repr of a method ("<built-in method values of mappingproxy object ...>")."""
    given = url.query.get("target_session_attrs")
    for value in [given] if isinstance(given, str) else given or ():
        if value not in _SESSION_ATTRIBUTES:
            raise ValueError(
                f"target_session_attrs must be one of {', '.join(_SESSION_ATTRIBUTES)}"
            )


class EnvFileError(ValueError):
    """The .env file exists but cannot be read whole."""


def check_env_file(path: Path) -> None:
    """Refuse a .env file that cannot be read, or has a line that is not `NAME=value`:
    python-dotenv would skip such a line with a warning, and devreg go on without the setting
    (without its DATABASE_URL, on another database)."""
    try:
        with path.open(encoding="utf-8") as stream:
            for binding in parse_stream(stream):
                # A name alone (no `=`) is read as a setting without a value: skipped too.
                if binding.error or (binding.key is not None and binding.value is None):
                    # Never the line itself, which may be a secret written on its own.
                    hint = "an unclosed quote?" if binding.error else "no `=`?"
                    raise EnvFileError(
                        f"line {_line_of(binding)} of the .env file is not NAME=value ({hint})"
                    )
    except FileNotFoundError:
        return
    except UnicodeDecodeError:
        raise EnvFileError("the .env file is not UTF-8 text") from None
    except OSError as exc:
        raise EnvFileError(f"the .env file cannot be read: {exc.strerror}") from None


def _line_of(binding: Binding) -> int:
    """The line a binding is on: python-dotenv's begins where its text does, at the blank lines
    before it."""
    text = binding.original.string
    return binding.original.line + text[: len(text) - len(text.lstrip())].count("\n")


@lru_cache
def get_settings() -> Settings:
    check_env_file(Path(ENV_FILE))
    return Settings()
