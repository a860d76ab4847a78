"""Settings: every knob from the environment or `.env`, validated, the password kept secret."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from devreg.config import Settings

PASSWORD = "s3cret-pw"
DB_PARTS = ("DB_USER", "DB_PASSWORD", "DB_NAME", "DB_HOST", "DB_PORT")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting leaks in from the developer's environment or a `.env` in the working dir."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def rendered_url(settings: Settings) -> str | None:
    url = settings.external_database_url()
    return None if url is None else url.render_as_string(hide_password=False)


def error_fields(error: ValidationError) -> set[str]:
    return {str(detail["loc"][0]) for detail in error.errors() if detail["loc"]}


class TestDatabaseUrl:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("postgresql://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
            ("postgres://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
            ("postgresql+psycopg://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
            ("postgresql+asyncpg://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
            (  # asyncpg's own keywords stay; libpq's options go in a DSN asyncpg reads
                "postgresql://u:p@h:5433/db?ssl=require&sslmode=verify-full&sslrootcert=/ca.pem",
                "postgresql+asyncpg://u:p@h:5433/db?dsn=postgresql%3A%2F%2F%3Fsslmode%3D"
                "verify-full%26sslrootcert%3D%252Fca.pem&ssl=require",
            ),
            (
                "postgresql://u:p@h:5433/db?connect_timeout=7",
                "postgresql+asyncpg://u:p@h:5433/db",
            ),
            (  # libpq's dbname, which psql takes over the path (asyncpg took the path's)
                "postgresql://u:p@h:5433/db?dbname=other",
                "postgresql+asyncpg://u:p@h:5433/other",
            ),
            ("postgresql://u:p@h:5433?dbname=other", "postgresql+asyncpg://u:p@h:5433/other"),
        ],
    )
    def test_postgres_url_maps_to_asyncpg(
        self, monkeypatch: pytest.MonkeyPatch, raw: str, expected: str
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", raw)

        assert rendered_url(Settings(_env_file=None)) == expected

    def test_libpq_options_asyncpg_has_no_use_for_are_dropped(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """They would reach the server as settings, which it refuses ("unrecognized
        configuration parameter"): Neon's URLs carry channel_binding, many keepalives."""
        monkeypatch.setenv(
            "DATABASE_URL",
            "postgresql://u:p@h/db?keepalives=1&keepalives_idle=30&tcp_user_timeout=1000"
            "&sslcompression=0&channel_binding=prefer&gssencmode=disable"
            "&fallback_application_name=fleet",
        )
        assert rendered_url(Settings(_env_file=None)) == (
            "postgresql+asyncpg://u:p@h/db?dsn=postgresql%3A%2F%2F%3Fapplication_name%3Dfleet"
        )

    @pytest.mark.parametrize(
        "option", ["channel_binding=require", "gssencmode=require", "hostaddr=10.0.0.1"]
    )
    def test_libpq_options_asyncpg_cannot_honour_are_refused(
        self, monkeypatch: pytest.MonkeyPatch, option: str
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@h/db?{option}")
        with pytest.raises(ValidationError, match=f"{option} is a libpq option the asyncpg"):
            Settings(_env_file=None)

    def test_an_unknown_target_session_attrs_names_those_it_takes(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """asyncpg's own refusal named them by a method's repr."""
        monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@h/db?target_session_attrs=bogus")
        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None)

        assert "target_session_attrs must be one of any, primary, standby, prefer-standby" in str(
            raised.value
        )

    @pytest.mark.parametrize("value", ["read-write", "prefer-standby"])
    def test_a_known_target_session_attrs_is_kept(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@h/db?target_session_attrs={value}")
        url = Settings(_env_file=None).external_database_url()
        assert url is not None
        assert url.query["target_session_attrs"] == value

    @pytest.mark.parametrize(
        ("option", "says"),
        [
            ("statement_cache_size=none", "statement_cache_size must be a whole number"),
            ("max_cacheable_statement_size=-1", "max_cacheable_statement_size must be a whole"),
            ("direct_tls=maybe", "direct_tls must be true or false"),
            ("prepared_statement_name_func=uuid", "prepared_statement_name_func cannot be given"),
            ("record_class=dict", "record_class cannot be given in a URL"),
            ("timeout=soon", "timeout must be a number of seconds"),
            ("command_timeout=0", "command_timeout must be a number of seconds"),
        ],
    )
    def test_an_asyncpg_option_of_the_wrong_type_is_refused(
        self, monkeypatch: pytest.MonkeyPatch, option: str, says: str
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@h/db?{option}")
        with pytest.raises(ValidationError, match=says):
            Settings(_env_file=None)

    def test_libpq_connect_timeout_is_the_connect_timeout(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@h/db?connect_timeout=7")
        assert Settings(_env_file=None).db_connect_timeout == 7
        monkeypatch.setenv("DB_CONNECT_TIMEOUT", "3")
        assert Settings(_env_file=None).db_connect_timeout == 3

    @pytest.mark.parametrize("timeout", ["0", "-1", "301", "nan", "soon"])
    def test_an_unusable_connect_timeout_is_refused(
        self, monkeypatch: pytest.MonkeyPatch, timeout: str
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@h/db?connect_timeout={timeout}")
        with pytest.raises(ValidationError, match="connect_timeout must be a number of seconds"):
            Settings(_env_file=None)

    @pytest.mark.parametrize(
        "raw", ["mysql://u:p@h:3306/db", "mssql://u:p@h/db", "not a url at all"]
    )
    def test_non_postgres_url_rejected(self, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
        monkeypatch.setenv("DATABASE_URL", raw)

        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None)

        assert "database_url" in error_fields(raised.value)

    @pytest.mark.parametrize(
        "raw", ["postgresql://u:sec@ret-42@h:5433/db", "postgresql://u:sec@x/ret-42@h/db"]
    )
    def test_an_unescaped_at_in_the_password_is_refused_unshown(
        self, monkeypatch: pytest.MonkeyPatch, raw: str
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", raw)

        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None)

        [error] = raised.value.errors()
        assert "%40" in error["msg"]
        assert "ret-42" not in error["msg"]

    @pytest.mark.parametrize("name", ["DATABASE_URL", "database_url"])
    def test_a_database_url_set_but_empty_is_refused_not_taken_for_unset(
        self, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        """Settings are read in any case: `database_url=` was left out, and meant the embedded
        cluster."""
        monkeypatch.delenv("DATABASE_URL", raising=False)
        monkeypatch.setenv(name, "")

        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None)

        assert "database_url" in error_fields(raised.value)
        assert "set but empty" in str(raised.value)

    @pytest.mark.parametrize(
        ("name", "value", "said"),
        [
            ("DATA_DIR", "", "set but empty"),
            ("DATA_DIR", " ", "spaces around it"),
            ("DATA_DIR", "/tmp/devreg ", "spaces around it"),  # noqa: S108 - never used
            ("EMBEDDED_DB_NAME", "", "set but empty"),
            ("EMBEDDED_DB_NAME", "devreg ", "spaces around it"),
        ],
    )
    def test_where_the_embedded_data_is_is_refused_when_it_would_be_elsewhere(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
    ) -> None:
        """`EMBEDDED_DB_NAME="devreg "` made a new, empty database of that name, and an empty
        DATA_DIR meant the default one: an empty registry, or another one."""
        monkeypatch.setenv(name, value)

        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None)

        assert error_fields(raised.value) == {name.lower()}
        assert said in str(raised.value)

    @pytest.mark.parametrize("name", ["d" * 64, "\u00e9" * 32])
    def test_an_embedded_database_name_longer_than_postgresql_keeps_is_refused_by_name(
        self, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        """A name of more than 63 bytes was taken, and every start then failed on the driver's
        refusal, as if the cluster were unreachable: `cannot connect to PostgreSQL at
        127.0.0.1:54329 (ProgrammingError)`."""
        monkeypatch.setenv("EMBEDDED_DB_NAME", name)

        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None)

        assert error_fields(raised.value) == {"embedded_db_name"}
        assert "64 bytes" in str(raised.value)

    def test_an_embedded_database_name_of_63_bytes_is_taken(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("EMBEDDED_DB_NAME", "d" * 63)

        assert Settings(_env_file=None).embedded_db_name == "d" * 63

    def test_an_empty_database_url_line_in_dotenv_is_a_placeholder(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """As a copied `.env.example` has it: the embedded cluster, as the README says."""
        dotenv = tmp_path / ".env"
        dotenv.write_text("DATABASE_URL=\nPORT=4321\n")

        settings = Settings(_env_file=dotenv)

        assert settings.port == 4321  # the file was read
        assert settings.external_database_url() is None

    def test_database_url_wins_over_db_parts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        set_env(monkeypatch, {"DATABASE_URL": "postgresql://u:p@h:5433/db", "DB_NAME": "other"})

        assert rendered_url(Settings(_env_file=None)) == "postgresql+asyncpg://u:p@h:5433/db"


class TestDatabaseParts:
    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            (
                {
                    "DB_USER": "app",
                    "DB_PASSWORD": "pw",
                    "DB_NAME": "mydb",
                    "DB_HOST": "postgres_db",
                    "DB_PORT": "6543",
                },
                "postgresql+asyncpg://app:pw@postgres_db:6543/mydb",
            ),
            ({"DB_NAME": "mydb"}, "postgresql+asyncpg://postgres:postgres@localhost:5432/mydb"),
            ({"DB_HOST": "db"}, "postgresql+asyncpg://postgres:postgres@db:5432/postgres"),
            ({"DB_PORT": "6543"}, "postgresql+asyncpg://postgres:postgres@localhost:6543/postgres"),
            ({"DB_USER": "app"}, "postgresql+asyncpg://app:postgres@localhost:5432/postgres"),
            ({"DB_PASSWORD": "pw"}, "postgresql+asyncpg://postgres:pw@localhost:5432/postgres"),
        ],
        ids=["all-five", "name", "host", "port", "user", "password"],
    )
    def test_parts_compose_url_with_tutorial_defaults(
        self, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
    ) -> None:
        set_env(monkeypatch, env)

        assert rendered_url(Settings(_env_file=None)) == expected

    def test_nothing_set_means_embedded(self) -> None:
        assert Settings(_env_file=None).external_database_url() is None

    @pytest.mark.parametrize("name", DB_PARTS)
    def test_a_part_set_but_empty_is_refused_not_taken_for_unset(
        self, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        """As DATABASE_URL is: the five parts set from unset CI secrets (`DB_HOST=$DB_HOST`)
        meant the embedded cluster, another, empty registry; one of them, its default."""
        set_env(monkeypatch, dict.fromkeys(DB_PARTS, ""))

        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None)

        assert name.lower() in error_fields(raised.value)
        assert "set but empty" in str(raised.value)

    def test_an_empty_part_in_dotenv_is_a_placeholder(self, clean_environment: Path) -> None:
        (clean_environment / ".env").write_text("DB_HOST=\nDB_NAME=mydb\n")

        expected = "postgresql+asyncpg://postgres:postgres@localhost:5432/mydb"
        assert rendered_url(Settings()) == expected

    def test_tutorial_dotenv_with_export_lines_read(self, clean_environment: Path) -> None:
        (clean_environment / ".env").write_text(
            "export DB_USER=postgres\n"
            "export DB_PASSWORD=postgres\n"
            "export DB_NAME=mydb\n"
            "export DB_HOST=postgres_db\n"
            "export DB_PORT=5432\n"
        )

        expected = "postgresql+asyncpg://postgres:postgres@postgres_db:5432/mydb"
        assert rendered_url(Settings()) == expected


class TestSources:
    @pytest.mark.parametrize(
        ("name", "value", "field", "expected"),
        [
            ("POOL_SIZE", "5", "pool_size", 5),
            ("MAX_OVERFLOW", "0", "max_overflow", 0),
            ("POOL_TIMEOUT", "1.5", "pool_timeout", 1.5),
            ("PORT", "8080", "port", 8080),
            ("HOST", "devreg.internal", "host", "devreg.internal"),
            ("LOG_LEVEL", "DEBUG", "log_level", "debug"),
            ("MIGRATE_ON_START", "false", "migrate_on_start", False),
            ("IDEMPOTENCY_KEY_LIFETIME", "86400", "idempotency_key_lifetime", timedelta(days=1)),
            ("IDEMPOTENCY_KEY_LIFETIME", "3", "idempotency_key_lifetime", timedelta(seconds=3)),
            ("IDEMPOTENCY_KEY_LIFETIME", "P2D", "idempotency_key_lifetime", timedelta(days=2)),
            ("IDEMPOTENCY_KEY_LIFETIME", "12h", "idempotency_key_lifetime", timedelta(hours=12)),
            ("IDEMPOTENCY_KEY_LIFETIME", "30m", "idempotency_key_lifetime", timedelta(minutes=30)),
            ("IDEMPOTENCY_KEY_LIFETIME", "45s", "idempotency_key_lifetime", timedelta(seconds=45)),
            ("IDEMPOTENCY_KEY_LIFETIME", "24H", "idempotency_key_lifetime", timedelta(days=1)),
            (
                "IDEMPOTENCY_KEY_LIFETIME",
                "pt30m",
                "idempotency_key_lifetime",
                timedelta(minutes=30),
            ),
            ("FORWARDED_ALLOW_IPS", "10.0.0.0/8,::1", "forwarded_allow_ips", ["10.0.0.0/8", "::1"]),
            ("FORWARDED_ALLOW_IPS", "*", "forwarded_allow_ips", ["*"]),
            # As uvicorn matches a network: by its own address (it matched nothing given this).
            ("FORWARDED_ALLOW_IPS", "127.0.0.1/8", "forwarded_allow_ips", ["127.0.0.0/8"]),
            ("ROOT_PATH", "/devreg", "root_path", "/devreg"),
            ("ROOT_PATH", "/tools/dev-reg_2", "root_path", "/tools/dev-reg_2"),
        ],
    )
    def test_value_read_from_environment(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, expected: Any
    ) -> None:
        monkeypatch.setenv(name, value)

        assert getattr(Settings(_env_file=None), field) == expected

    def test_value_read_from_dotenv(self, clean_environment: Path) -> None:
        (clean_environment / ".env").write_text(
            "POOL_SIZE=7\nDATABASE_URL=postgresql://u:p@h:5433/db\n"
        )

        settings = Settings()

        assert settings.pool_size == 7
        assert rendered_url(settings) == "postgresql+asyncpg://u:p@h:5433/db"

    def test_environment_wins_over_dotenv(
        self, monkeypatch: pytest.MonkeyPatch, clean_environment: Path
    ) -> None:
        (clean_environment / ".env").write_text("POOL_SIZE=7\n")
        monkeypatch.setenv("POOL_SIZE", "9")

        assert Settings().pool_size == 9


class TestDefaults:
    @pytest.mark.parametrize(
        ("field", "expected"),
        [
            ("pool_size", 20),
            ("max_overflow", 10),
            ("port", 4000),
            ("host", "127.0.0.1"),
            ("migrate_on_start", True),
            ("root_path", ""),
        ],
    )
    def test_unset_field_has_default(self, field: str, expected: Any) -> None:
        assert getattr(Settings(_env_file=None), field) == expected

    def test_pool_timeout_default_is_a_few_seconds(self) -> None:
        assert 0 < Settings(_env_file=None).pool_timeout <= 10


class TestInvalidValues:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("POOL_SIZE", "abc"),
            ("POOL_SIZE", "0"),
            ("MAX_OVERFLOW", "-1"),
            ("POOL_TIMEOUT", "0"),
            ("PORT", "70000"),
            ("DB_PORT", "0"),
            ("LOG_LEVEL", "loud"),
            ("MIGRATE_ON_START", "maybe"),
            ("IDEMPOTENCY_KEY_LIFETIME", "0"),
            ("IDEMPOTENCY_KEY_LIFETIME", "soon"),
            ("FORWARDED_ALLOW_IPS", "proxy.internal"),
            ("FORWARDED_ALLOW_IPS", "*,10.0.0.1"),  # uvicorn would trust neither
        ],
    )
    def test_invalid_value_rejected_naming_field(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str
    ) -> None:
        monkeypatch.setenv(name, value)

        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None)

        assert error_fields(raised.value) == {name.lower()}


class TestSecrecy:
    @pytest.mark.parametrize(
        "env",
        [
            {"DATABASE_URL": f"postgresql://u:{PASSWORD}@h:5433/db"},
            {"DB_PASSWORD": PASSWORD},
        ],
        ids=["database-url", "db-password"],
    )
    @pytest.mark.parametrize("show", [repr, str], ids=["repr", "str"])
    def test_password_not_shown(
        self, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], show: Any
    ) -> None:
        set_env(monkeypatch, env)

        settings = Settings(_env_file=None)

        assert PASSWORD in rendered_url(settings)  # type: ignore[operator]
        assert PASSWORD not in show(settings)


def test_a_relative_data_dir_is_where_devreg_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", "data")

    # PostgreSQL's tools run from / and must get the whole path.
    assert Settings(_env_file=None).embedded_cluster_dir == tmp_path / "data" / "pg"


@pytest.mark.parametrize("server", [{"DATABASE_URL": "postgresql://db/devreg"}, {"DB_HOST": "db"}])
def test_a_data_dir_a_shell_would_read_otherwise_is_no_matter_with_a_server_of_ones_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: dict[str, str]
) -> None:
    set_env(monkeypatch, {"DATA_DIR": str(tmp_path / "cost$HOME"), **server})

    assert Settings(_env_file=None).data_dir == tmp_path / "cost$HOME"


class TestWorkers:
    @pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 2), (4, 4), (16, 4)])
    def test_default_is_one_per_usable_cpu_up_to_four(
        self, monkeypatch: pytest.MonkeyPatch, cpus: int, expected: int
    ) -> None:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))

        assert Settings(_env_file=None).workers == expected

    def test_the_environment_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WORKERS", "7")

        assert Settings(_env_file=None).workers == 7


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("24H", timedelta(hours=24)),  # refused, while 1D was taken
        ("1D", timedelta(days=1)),
        ("1.5", timedelta(seconds=1.5)),  # refused as text, taken as a number
        ("1e3", timedelta(seconds=1000)),
        (" 90d ", timedelta(days=90)),
    ],
)
def test_a_span_of_time_is_read_in_any_case_and_from_a_number_as_text(
    given: str, read: timedelta
) -> None:
    assert Settings(_env_file=None, idempotency_key_lifetime=given).idempotency_key_lifetime == read


@pytest.mark.parametrize("given", ["\u0661d", "1w", "1.5h", "-1h", "forever"])
def test_a_span_of_time_in_no_form_it_takes_names_the_forms(given: str) -> None:
    """`\u0661d` (an Arabic-Indic one) was a day; `1w` was said to lack a "day" identifier."""
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, idempotency_key_lifetime=given)

    assert "must be `90d`, `12h`, `30m`, `3600s`, a number of seconds, `HH:MM:SS`, or ISO 8601" in (
        str(raised.value)
    )


@pytest.mark.parametrize("seconds", ["0.0004", "0.0001"])
def test_a_statement_timeout_under_a_millisecond_is_refused_not_made_no_limit(seconds: str) -> None:
    """PostgreSQL takes whole milliseconds: 0.0004 s was sent as 0, no limit at all."""
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, statement_timeout=seconds)

    assert error_fields(raised.value) == {"statement_timeout"}


@pytest.mark.parametrize("seconds", ["0", "0.001", "2.5"])
def test_a_statement_timeout_of_none_or_milliseconds_is_taken(seconds: str) -> None:
    assert Settings(_env_file=None, statement_timeout=seconds).statement_timeout == float(seconds)


@pytest.mark.parametrize(
    "origin",
    ["https://a.example/app", "a.example", "ftp://a.example", "https://u@a.example", "null", "*"],
)
def test_an_origin_no_browser_sends_is_refused(origin: str) -> None:
    """`https://a.example/` was taken, and matched no browser's Origin: every preflight from
    it was refused (400), with nothing said at start."""
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, cors_origins=f"https://b.example, {origin}")

    assert error_fields(raised.value) == {"cors_origins"}
    assert f"{origin!r} is not an origin" in str(raised.value)


@pytest.mark.parametrize(
    ("origin", "as_sent"),
    [
        ("https://Admin.Example", "https://admin.example"),
        ("HTTPS://ui.example", "https://ui.example"),
        ("https://ui.example:443", "https://ui.example"),
        ("http://ui.example:80", "http://ui.example"),
        ("https://ui.example:0444", "https://ui.example:444"),
        ("https://ui.example:", "https://ui.example"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("https://faß.de", "https://xn--fa-hia.de"),  # UTS 46, as browsers: not fass.de
        ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
        ("http://127.1", "http://127.0.0.1"),
        ("http://a.example/", "http://a.example"),
    ],
)
def test_an_origin_written_otherwise_than_browsers_send_it_is_refused_naming_their_form(
    origin: str, as_sent: str
) -> None:
    """Taken as written, these matched no browser's Origin (lower case, punycode, no default
    port), so their preflights were all refused, with nothing said at start."""
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, cors_origins=origin)

    assert f"write it as a browser sends it: {as_sent}" in str(raised.value)


def test_origins_with_ports_are_taken() -> None:
    given = "https://ui.example, http://localhost:3000, http://[::1]:8080, http://my_host.lan"
    assert Settings(_env_file=None, cors_origins=given).cors_origins == [
        "https://ui.example",
        "http://localhost:3000",
        "http://[::1]:8080",
        "http://my_host.lan",
    ]


def test_a_place_given_outright_is_taken_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An empty DATA_DIR in the environment refused a data_dir given to Settings itself."""
    monkeypatch.setenv("DATA_DIR", "")

    assert Settings(_env_file=None, data_dir=tmp_path).data_dir == tmp_path


def test_a_span_of_time_as_hours_minutes_and_seconds_is_still_read() -> None:
    lifetime = Settings(_env_file=None, idempotency_key_lifetime="01:30:00")
    assert lifetime.idempotency_key_lifetime == timedelta(hours=1, minutes=30)


@pytest.mark.parametrize(
    ("prefix", "told"),
    [
        ("devreg", "'devreg' does not begin with /: write /devreg"),
        ("/devreg/", "'/devreg/' ends with /: write /devreg"),
        ("/", "'/' is the root: leave it unset"),
        ("//devreg", "one / before each"),
        ("/dev reg", "one / before each"),
        ("/devreg?x", "one / before each"),
        ("/régistre", "one / before each"),  # uvicorn takes ASCII alone
        ("/dev'reg", "one / before each"),  # would end a string in the docs page's script
        ("/dev<reg>", "one / before each"),
    ],
)
def test_a_root_path_no_route_could_be_under_is_refused_saying_what_to_write(
    monkeypatch: pytest.MonkeyPatch, prefix: str, told: str
) -> None:
    """uvicorn puts ROOT_PATH before every request's path as written: without its first `/`,
    or with a last one, no path would be one that a route has."""
    monkeypatch.setenv("ROOT_PATH", prefix)

    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)

    assert error_fields(raised.value) == {"root_path"}
    assert told in str(raised.value)
