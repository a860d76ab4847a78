"""The commands' standard output, and how a command ends when it cannot write there."""

import codecs
import io
import os
import signal
import sys
from typing import Any, NoReturn, TextIO

from rich.console import Console

from devreg.logs import ascii_json, visible


class OutputFailed(Exception):
    """stdout could not be written: its reader went away (`| head`), the disk is full, or it is
    closed (`>&-`; `error` None). Not an OSError, which click takes for a reader gone away and
    ends with exit 1 and no word, a traceback for any other."""

    def __init__(self, error: OSError | None) -> None:
        super().__init__(error)
        self.error = error


class _Stdout:
    """sys.stdout as it is when written to (an in-process test's runner replaces it), its
    failures raised as OutputFailed."""

    @property
    def encoding(self) -> str:
        return getattr(sys.stdout, "encoding", None) or "utf-8"

    @property
    def is_utf8(self) -> bool:
        return codecs.lookup(self.encoding).name == "utf-8"

    def isatty(self) -> bool:
        return sys.stdout is not None and sys.stdout.isatty()

    def fileno(self) -> int:
        return self._stream().fileno()

    def write(self, text: str) -> int:
        written: int = _failing_as_output(self._stream(), "write", text)
        return written

    def write_bytes(self, data: bytes) -> None:
        _failing_as_output(self._stream().buffer, "write", data)

    def flush(self) -> None:
        if sys.stdout is not None:  # closed, it holds nothing to flush
            _failing_as_output(sys.stdout, "flush")

    def _stream(self) -> TextIO:
        if sys.stdout is None:
            raise OutputFailed(None)
        return sys.stdout


def _failing_as_output(stream: Any, method: str, *arguments: Any) -> Any:
    try:
        return getattr(stream, method)(*arguments)
    except OSError as error:
        raise OutputFailed(error) from error


STDOUT = _Stdout()


class _StdoutFailingAsOutput:
    """sys.stdout for what writes to it itself, not through STDOUT (Typer's help, through
    Rich), its failures raised as OutputFailed too."""

    def __init__(self, wrapped: TextIO) -> None:
        self.wrapped = wrapped

    def write(self, text: str) -> int:
        written: int = _failing_as_output(self.wrapped, "write", text)
        return written

    def flush(self) -> None:
        _failing_as_output(self.wrapped, "flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def stdout_failing_as_output() -> None:
    """A help (`devreg --help | head -1`) whose reader went away ends as a command's output
    does (end_for_output), where click took the OSError for its own and ended with exit 1."""
    if sys.stdout is not None:
        sys.stdout = _StdoutFailingAsOutput(sys.stdout)


def stdout_for_a_log() -> None:
    """sys.stdout as it was, for a server's log: its reader gone away, the log says so once
    and the server serves on (logs.LogHandler), where OutputFailed would print a traceback
    for every line."""
    if isinstance(sys.stdout, _StdoutFailingAsOutput):
        sys.stdout = sys.stdout.wrapped


def buffered_stdout() -> None:
    """stdout through a buffered writer, as Python gives it unless told not to buffer
    (PYTHONUNBUFFERED, `-u`: common in containers). Unbuffered, a write goes straight to the
    file, and one a reader cut short by going away amid it (`| head`, more than a pipe holds)
    ends without an error, the rest of the output silently dropped: a buffered writer writes
    on, and that write fails. Each line still goes out as it is written."""
    stream = sys.stdout
    if stream is None or not isinstance(getattr(stream, "buffer", None), io.RawIOBase):
        return
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(stream.buffer),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=True,
    )


# The error handlers that end a write on a character the encoding lacks.
_FAILING_ON_A_MISSING_CHARACTER = frozenset({"strict", "surrogateescape"})


def stdout_escaping_missing_characters() -> None:
    """A character stdout's encoding lacks (Ž under LC_ALL=C or PYTHONIOENCODING=ascii, 🚀 in
    latin-1) written as Python's escape (`\\u017d`), as Python writes it to stderr: it ended the
    command with a UnicodeEncodeError's traceback, its output cut short. An escape rather than
    "?": names that differ are still told apart, and the character can be looked up."""
    stream = sys.stdout
    if getattr(stream, "errors", None) in _FAILING_ON_A_MISSING_CHARACTER:
        stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]


def as_written(text: str) -> str:
    """`text` as stdout writes it, each character its encoding lacks an escape: what a table
    must measure, or the escapes, longer than the characters, push its columns out of line."""
    if STDOUT.is_utf8:
        return text
    return text.encode(STDOUT.encoding, "backslashreplace").decode(STDOUT.encoding)


def console(**options: Any) -> Console:
    """A Rich console writing to stdout."""
    return Console(file=STDOUT, **options)  # type: ignore[arg-type]  # a file in all it uses


# A line is never folded to the console's width (80 columns when stdout is not a terminal): a
# program reading it (grep, a script) would find it broken in two.
stdout = console(soft_wrap=True)


def write_line(text: str) -> None:
    """`text` on a line of its own, as it is (no Rich markup or highlighting)."""
    STDOUT.write(text + "\n")


def write_json(document: str) -> None:
    """The JSON `document` on a line of its own, no stored text in it obeyed by a terminal
    (logs.visible): as it is on a UTF-8 stdout, else in ASCII (logs.ascii_json), which any
    encoding writes and any JSON reader reads back the same. A character the encoding lacks
    would otherwise be Python's escape (`\\U0001f680`), which JSON is not, and one it has a
    byte that is not UTF-8, which JSON must be (RFC 8259, 8.1)."""
    write_line(visible(document) if STDOUT.is_utf8 else ascii_json(document))


def end_for_output(failed: OutputFailed) -> NoReturn:
    """A reader gone away (`devreg ... | head`) ends the command without a word, as if by
    SIGPIPE, as Unix tools end (exit 128 + 13); any other failure is one line on stderr, exit 1.
    Either way what the command did before stands. stdout is pointed at /dev/null, so that
    Python's own flush at exit does not fail again."""
    if sys.stdout is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(failed.error, BrokenPipeError):
        sys.exit(128 + signal.SIGPIPE)
    reason = "it is closed" if failed.error is None else failed.error.strerror
    print(f"devreg: cannot write to stdout: {reason}", file=sys.stderr)
    sys.exit(1)
