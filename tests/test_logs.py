import json
import logging

from devreg.logs import RedactingJsonFormatter, logging_config


def format_record(message: str, *, exc_info: bool = False) -> dict[str, object]:
    formatter = RedactingJsonFormatter("%(levelname)s %(name)s %(message)s")
    try:
        raise RuntimeError("SELECT secret FROM users WHERE password='hunter2'")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "devreg.test",
            logging.ERROR,
            __file__,
            1,
            message,
            (),
            sys.exc_info() if exc_info else None,
        )
    return json.loads(formatter.format(record))  # type: ignore[no-any-return]


def test_exception_becomes_its_type_name() -> None:
    line = format_record("failed", exc_info=True)
    assert line["message"] == "failed"
    assert line["error_type"] == "RuntimeError"
    assert "hunter2" not in json.dumps(line)
    assert "Traceback" not in json.dumps(line)


def test_traceback_text_in_a_message_is_reduced_to_the_error_type() -> None:
    traceback_text = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "sqlalchemy.exc.ProgrammingError: (asyncpg.exceptions.Foo) SELECT password='hunter2'"
    )
    line = format_record(traceback_text)
    assert line["message"] == "error: ProgrammingError (Foo)"


def test_a_start_up_failure_names_the_error_above_sqlalchemys_link() -> None:
    """uvicorn logs a failed start-up's traceback as the message; SQLAlchemy ends it with a link."""
    traceback_text = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "sqlalchemy.exc.OperationalError: (asyncpg.exceptions.TooManyConnectionsError) "
        "sorry, too many clients already\n"
        "[SQL: SELECT password FROM secrets]\n"
        "(Background on this error at: https://sqlalche.me/e/20/e3q8)"
    )
    line = format_record(traceback_text)
    assert line["message"] == "error: OperationalError (TooManyConnectionsError)"
    assert "SELECT" not in json.dumps(line)


def test_sql_is_logged_only_with_db_echo() -> None:
    quiet = logging_config("info")["loggers"]["sqlalchemy.engine"]["level"]
    echoing = logging_config("info", echo_sql=True)["loggers"]["sqlalchemy.engine"]["level"]
    assert (quiet, echoing) == ("WARNING", "INFO")
