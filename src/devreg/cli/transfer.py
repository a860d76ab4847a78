"""`devreg import`, `devreg export` and `devreg seed`: data in bulk."""

import io
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from devreg import seed
from devreg.auth.principal import FULL_ACCESS
from devreg.cli.common import fail, parse_id, run_in_transaction, validated
from devreg.cli.output import STDOUT, stdout
from devreg.db.session import UnitOfWork
from devreg.devices import export, imports
from devreg.devices.filters import DeviceFilter
from devreg.devices.models import DeviceStatus
from devreg.devices.schemas import DeviceFilterOptions, FileFormat, OnConflict

import_app = typer.Typer(help="Load data from files.", no_args_is_help=True)
export_app = typer.Typer(help="Write data to files.", no_args_is_help=True)


@import_app.command("devices")
def import_devices(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    format: Annotated[
        FileFormat | None, typer.Option(help="Default: from the file's extension.")
    ] = None,
    on_conflict: Annotated[
        OnConflict,
        typer.Option(
            help="For a serial number already registered; update changes only the fields "
            "the file gives (its CSV columns, an NDJSON line's keys)."
        ),
    ] = OnConflict.ERROR,
) -> None:
    """Import devices from CSV (with a header) or NDJSON, all or nothing.

    An import of 100,000 rows or more into a registry holding fewer devices locks the devices
    table until done, unless it is in use: then the rows go in one by one."""
    chosen = format or _format_of(file)
    started = time.perf_counter()
    rows_expected = _rows_in(file, chosen)
    try:
        # utf-8-sig: spreadsheets often start a CSV file with a byte order mark.
        with (
            _BreaksCounted(file.open("rb")) as read,
            io.TextIOWrapper(read, encoding="utf-8-sig", newline="") as source,
            _progress(source) as progress,
        ):
            result = run_in_transaction(
                lambda work: imports.import_devices(
                    work,
                    source,
                    format=chosen,
                    on_conflict=on_conflict,
                    progress=progress,
                    rows_expected=rows_expected,
                )
            )
    except UnicodeDecodeError as error:
        fail(f"{file} is not UTF-8 text: line {read.line_of(error)}", code=2)
    seconds = time.perf_counter() - started
    left_alone = "unchanged" if on_conflict is OnConflict.UPDATE else "skipped"
    stdout.print(
        f"{result.rows} rows: {result.inserted} inserted, {result.updated} updated, "
        f"{result.left_alone} {left_alone} in {seconds:.1f} s "
        f"({result.rows / seconds:,.0f} rows/s)",
        markup=False,
        highlight=False,
    )


def _rows_in(file: Path, format: FileFormat) -> int:
    """About how many rows a regular file holds: its lines, less a CSV file's header (fewer
    rows when a field spans lines). 0 for a pipe, which cannot be read twice."""
    lines = 0
    try:
        if not stat.S_ISREG(file.stat().st_mode):  # a pipe's writer would lose its reader
            return 0
        with file.open("rb") as read:
            after_cr = False
            for chunk in iter(lambda: read.read(1 << 20), b""):
                lines += _line_breaks(chunk, after_cr=after_cr)
                after_cr = chunk.endswith(b"\r")
    except OSError:  # the import, reading it, says what is wrong
        return 0
    return max(lines - (format is FileFormat.CSV), 0)


class _BreaksCounted(io.BufferedIOBase):
    """A binary file that counts the line breaks in the chunks it hands its reader (a text
    decoder): a decoding error names its position only within the bytes being decoded (the
    latest chunk, after any bytes of an unfinished character from the one before), and a pipe
    cannot be read again to find the line. Lines end as the import reads them: at CR, LF or
    CRLF, whose bytes no UTF-8 character holds."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw = raw
        self._breaks_before_chunk = 0
        self._chunk = b""
        self._after_cr = False  # the chunk before the latest ended with a CR

    @property
    def name(self) -> object:
        return self.raw.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.raw.seekable()

    def fileno(self) -> int:
        return self.raw.fileno()

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.raw.close()
        super().close()

    def read(self, size: int | None = -1) -> bytes:
        return self._handed_out(self.raw.read(size))

    def read1(self, size: int = -1) -> bytes:
        return self._handed_out(self.raw.read1(size))

    def _handed_out(self, chunk: bytes) -> bytes:
        if self._chunk:
            self._breaks_before_chunk += _line_breaks(self._chunk, after_cr=self._after_cr)
            self._after_cr = self._chunk.endswith(b"\r")
        self._chunk = chunk
        return chunk

    def line_of(self, error: UnicodeDecodeError) -> int:
        """The number of the line the decoding `error`, in the latest chunk, is on."""
        before = error.object[: error.start]
        return self._breaks_before_chunk + _line_breaks(before, after_cr=self._after_cr) + 1


def _line_breaks(data: bytes, *, after_cr: bool) -> int:
    """CRs, LFs and CRLFs in `data`; an LF first after a CR ends no other line."""
    breaks = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return breaks - 1 if after_cr and data.startswith(b"\n") else breaks


@export_app.command("devices")
def export_devices(
    format: Annotated[
        FileFormat | None,
        typer.Option(help="Default: from --output's extension (.csv or .ndjson); csv to stdout."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Default (or -): stdout.")
    ] = None,
    status: Annotated[list[DeviceStatus] | None, typer.Option(help="Repeat for any of.")] = None,
    owner_id: Annotated[
        list[int] | None, typer.Option(parser=parse_id, help="Repeat for any of.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Repeat: has all of these.")] = None,
    q: Annotated[str | None, typer.Option(help="Search name, serial and model.")] = None,
) -> None:
    """Export devices (all, or those matching the filters) as CSV or NDJSON."""
    if output == Path("-"):  # stdout, as for most tools (a file named - is given by its whole path)
        output = None
    to_stdout = output is None or _is_stdout(output)
    chosen: FileFormat
    if format is not None:
        chosen = format
    elif output is not None and not to_stdout:
        chosen = _format_of(output)
    else:  # a name for stdout (/dev/stdout) need not tell a format, as stdout itself need not
        chosen = (_format_named(output) if output else None) or FileFormat.CSV
    options = validated(DeviceFilterOptions, status=status, owner_id=owner_id, tag=tag, q=q)
    filters = DeviceFilter(
        status=tuple(options.status),
        owner_id=tuple(options.owner_id),
        tags=tuple(options.tag),
        search=options.q,
    )

    async def write(work: UnitOfWork) -> None:
        chunks = export.export_devices(work, filters=filters, format=chosen, principal=FULL_ACCESS)
        # Closed at once when writing fails (the reader gone), while its transaction is open.
        async with aclosing(chunks):
            with _replaced_on_success(None if to_stdout else output) as write_chunk:
                async for chunk in chunks:
                    write_chunk(chunk)

    try:
        run_in_transaction(write)
    except BrokenPipeError:  # stdout's failures are cli.output's
        fail(f"cannot write {output or 'to stdout'}: the reader of the pipe went away")
    except OSError as exc:
        fail(f"cannot write {output or 'to stdout'}: {exc.strerror}")


@contextmanager
def _replaced_on_success(output: Path | None) -> Iterator[Callable[[bytes], object]]:
    """How an export's chunks are written: to stdout (`output` None; also for a name of this
    process's own stdout, `/dev/stdout` when the shell sent it to a file, `>>` say, so that the
    file is written where the shell put it, not replaced); to a device or a pipe, as they come;
    or to a file, written beside its place and moved there only once the export is whole, so
    that a failed export (no database, a timeout, a full disk) leaves nothing half-written and
    an existing file as it was. A symbolic link is written through, to the file it names."""
    if output is None:
        STDOUT.flush()
        yield STDOUT.write_bytes
        return
    if output.exists() and not output.is_file():  # a device, a named pipe
        with output.open("wb") as device:
            yield device.write
        return
    target = Path(os.path.realpath(output))
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask()
    staged = target.parent / f".{target.name}.{secrets.token_hex(8)}"
    try:
        # Named first and made inside the try: a Ctrl-C or SIGTERM at any instant, the one just
        # after its creation included, finds it to remove.
        with os.fdopen(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            yield out.write
    except FileExistsError:
        raise  # another's file by that name: not this export's to remove
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    try:
        os.chmod(staged, mode)
        os.replace(staged, target)
    except OSError:
        staged.unlink()
        raise


def _is_stdout(path: Path) -> bool:
    if sys.stdout is None:  # closed: nothing is it
        return False
    try:
        return os.path.samestat(path.stat(), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):  # no such file; a stdout with no file descriptor
        return False


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def seed_data(
    devices: Annotated[int, typer.Option(min=0, max=100_000_000)] = 1000,
    users: Annotated[int, typer.Option(min=0, max=10_000_000)] = 100,
) -> None:
    """Fill the database with synthetic users and devices (development, benchmarks).

    A seed of 100,000 devices or more into a registry holding fewer locks the devices table
    until done, unless it is in use: then the rows go in one by one."""
    started = time.perf_counter()
    seeded = run_in_transaction(lambda work: seed.seed(work, users=users, devices=devices))
    stdout.print(
        f"seeded {seeded.users} users and {seeded.devices} devices in "
        f"{time.perf_counter() - started:.1f} s"
    )


def _format_named(path: Path) -> FileFormat | None:
    """The format `path`'s extension names, if it names one."""
    try:
        return FileFormat(path.suffix.lstrip(".").lower())
    except ValueError:
        return None


def _format_of(path: Path) -> FileFormat:
    named = _format_named(path)
    if named is None:
        choices = ", ".join(member.value for member in FileFormat)
        fail(f"cannot tell the format of {path.name}; use --format ({choices})", code=2)
    return named


@contextmanager
def _progress(source: TextIO) -> Iterator[imports.Progress | None]:
    """A progress bar (rows, rows/s, ETA from the bytes read) on a terminal; else nothing.
    Read from a pipe, whose size is unknown, it counts rows only."""
    if not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("{task.fields[rows]:,} rows"),
        TextColumn("{task.fields[rate]}"),
        BarColumn(),
        TimeRemainingColumn(),
    )
    size = os.fstat(source.fileno()).st_size if source.seekable() else None
    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield _Bar(bar, bar.add_task("import", total=size, rows=0, rate=""), source, size)


class _Bar:
    """An import's progress on a rich progress bar."""

    def __init__(self, bar: Progress, task: TaskID, source: TextIO, size: int | None) -> None:
        self._bar, self._task, self._source, self._size = bar, task, source, size
        self._started = time.perf_counter()

    def written(self, rows: int) -> None:
        rate = rows / max(time.perf_counter() - self._started, 1e-6)
        read = None if self._size is None else min(self._source.buffer.tell(), self._size)
        self._bar.update(self._task, completed=read, rows=rows, rate=f"{rate:,.0f} rows/s")

    def indexing(self) -> None:
        self._bar.update(self._task, rate="building the devices' indexes")


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import")
    app.add_typer(export_app, name="export")
    app.command("seed")(seed_data)
