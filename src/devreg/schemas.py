"""The wire format's shared pieces: base models, validated text and ids."""

import contextlib
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import to_json

BIGINT_MAX = 2**63 - 1


class Schema(BaseModel):
    """Output models: built from ORM rows or from a row's values."""

    model_config = ConfigDict(from_attributes=True)


class InputSchema(BaseModel):
    """Input models: unknown fields (typos, server-owned fields such as `id`) are a 422."""

    model_config = ConfigDict(extra="forbid")


class UpdateSchema(InputSchema):
    """Partial updates: a field left out stays as it is."""

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


def storable_text(value: str) -> str:
    """PostgreSQL cannot store NUL, and text must be valid UTF-8 (no lone surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not value.isascii():  # ASCII has no surrogates: most text needs no encoding to tell
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid UTF-8 text") from None
    return value


SHORT_TEXT_MAX = 100
"""The length of names, serial numbers and models (the models' columns say it again)."""

REPEATS_MAX = 100
"""How many values a repeatable filter takes: each one is a condition of the statement."""

# Trimmed text has a character other than a space: said in the schema (`\S`), which checks the
# text as sent, a client generated from it sent spaces alone, for a 422.
_NOT_ONLY_SPACES = r"\S"

ShortText = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=SHORT_TEXT_MAX, pattern=_NOT_ONLY_SPACES
    ),
    AfterValidator(storable_text),
]
"""Names, serial numbers, models: trimmed, then 1 to 100 characters of storable text."""

Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=_NOT_ONLY_SPACES),
    AfterValidator(storable_text),
]

NamePattern = Annotated[
    str, StringConstraints(min_length=1, max_length=SHORT_TEXT_MAX), AfterValidator(storable_text)
]
"""What a name contains or starts with: as given, its spaces part of it (names are trimmed,
their inner spaces kept)."""


def _searchable(value: str) -> str:
    """Text with a letter or digit in it: the search compares words, runs of them, and finds
    nothing in punctuation alone, after reading every row to find so."""
    if not any(character.isalnum() for character in value):
        raise ValueError("must hold a letter or digit: a search compares words")
    return value


SearchText = Annotated[ShortText, AfterValidator(_searchable)]
"""What `q=` searches for."""


def _not_a_boolean(value: Any) -> Any:
    """pydantic takes `true` for 1: no id, count or duration is spelled as a boolean."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def in_digits(value: Any) -> Any:
    """A number given as text (a path's id, a query's, a JSON string) written in digits 0-9
    alone: pydantic also reads `6_7`, `+67`, ` 67`, `67.0` and other scripts' digits as 67, a
    device other than the one a typo meant. A JSON number with a fraction or an exponent
    (`67.0`, `6.7e1`) is refused too: pydantic reads it through a float, which above 2**53 is
    another number (`9007199254740993.0` was device 9007199254740992)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be written in the digits 0-9 alone")
    if isinstance(value, float):
        raise ValueError("must be a whole number written in the digits 0-9 alone")
    return value


# The bounds before the validators: after them, pydantic writes them into the JSON Schema as
# `ge` and `le`, which no JSON Schema reader knows, instead of `minimum` and `maximum`.
Id = Annotated[
    int, Field(ge=1, le=BIGINT_MAX), BeforeValidator(_not_a_boolean), BeforeValidator(in_digits)
]


_OUT_OF_RANGE = "must be after 0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z"


def _storable_instant(value: datetime) -> datetime:
    """Within what PostgreSQL and its driver store as given: asyncpg writes the first and last
    instants Python has as -infinity and infinity, and cannot write what falls outside them."""
    try:
        utc = value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        utc = datetime.min
    if utc in (datetime.min, datetime.max):
        raise ValueError(_OUT_OF_RANGE)
    # The same instant in UTC: written as text (a bulk write's JSON), an offset beyond the
    # ±15:59 PostgreSQL reads, which Python allows, was refused there.
    return value.astimezone(UTC)


def _not_a_number(value: object) -> object:
    """A number names no time zone: pydantic would read it as seconds or milliseconds since
    1970, which of the two by its size."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(value, str) and ":" not in value:  # no number has one; a time of day does
        with contextlib.suppress(ValueError):
            float(value)
            number = True
    if number:
        raise ValueError("must be a date and time with its offset (ISO 8601), not a number")
    return value


# A time of day at second 60: a leap second, as RFC 3339 (the schema's date-time) writes it.
_LEAP_SECOND = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}):60(?![0-9])")
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def _leap_second(value: Any) -> Any:
    """A leap second (`2016-12-31T23:59:60Z`) as PostgreSQL reads one: the next minute's start.
    pydantic, whose datetime has no second 60, refused it for "unexpected extra characters"."""
    leap = _LEAP_SECOND.match(value) if isinstance(value, str) else None
    if leap is None:
        return value
    try:
        before = _DATETIME.validate_python(f"{leap[1]}:59{value[leap.end() :]}")
    except ValidationError:  # not a time otherwise: refused as any other would be, after this
        return value
    try:
        return (before.astimezone(UTC) if before.tzinfo else before) + timedelta(seconds=1)
    except OverflowError:
        raise ValueError(_OUT_OF_RANGE) from None


# A time of day, then an offset of whole hours alone: `+00`, as PostgreSQL writes a timestamptz
# (psql, COPY), and ISO 8601 allows.
_OFFSET_IN_HOURS = re.compile(r".*[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?[+-][0-9]{2}")


def _offset_in_hours(value: Any) -> Any:
    """An offset of hours alone written out with its minutes, as pydantic reads one: a file of
    PostgreSQL's own writing (`2024-05-06 05:08:09.123456+00`) was refused for "unexpected
    extra characters at the end of the input"."""
    if isinstance(value, str) and _OFFSET_IN_HOURS.fullmatch(value):
        return f"{value}:00"
    return value


# An aware date and time, also as PostgreSQL and RFC 3339 write some that pydantic does not read.
_WRITTEN_INSTANT = Annotated[
    AwareDatetime, BeforeValidator(_leap_second), BeforeValidator(_offset_in_hours)
]

Instant = Annotated[
    _WRITTEN_INSTANT, BeforeValidator(_not_a_number), AfterValidator(_storable_instant)
]
"""A point in time, with its offset (`Z` or `+01:00`), read as the same instant in UTC."""

# A fraction of a second beyond the microsecond PostgreSQL stores: `.1185331`.
_BEYOND_A_MICROSECOND = re.compile(r"[.,]\d{6}(\d+)")


def _rounded_up(value: Any) -> Any:
    """An instant written to a finer fraction than a microsecond, as the next microsecond:
    pydantic would cut `04.1185331` to `04.118533`, before which a time stored at
    `04.118533` is not."""
    finer = _BEYOND_A_MICROSECOND.search(value) if isinstance(value, str) else None
    if finer and finer[1].strip("0"):
        # Not a time at all, or the last one: refused as any other would be, after this.
        with contextlib.suppress(ValidationError, OverflowError):
            return _INSTANT.validate_python(value) + timedelta(microseconds=1)
    return value


_INSTANT: TypeAdapter[datetime] = TypeAdapter(_WRITTEN_INSTANT)

RoundedUpInstant = Annotated[Instant, BeforeValidator(_rounded_up)]
"""An instant that a later time than any stored at it must pass (`created_before`, `since`):
rounded up to the microsecond when given more finely."""

# A time of day, then a space and an offset's digits: the space can only be a `+` (no ISO 8601
# time has one before its offset).
_SPACE_FOR_PLUS = re.compile(
    r"(.*[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?) ([0-9]{2}(?::?[0-9]{2})?)"
)


def _plus_sent_unescaped(value: Any) -> Any:
    """An instant in a query string whose offset's `+` was sent as is (`curl
    '...?since=2026-12-01T00:00:00+01:00'`), which a query string reads as a space, as HTML
    forms write one: refused, it was "unexpected extra characters at the end of the input"."""
    spaced = _SPACE_FOR_PLUS.fullmatch(value) if isinstance(value, str) else None
    return f"{spaced[1]}+{spaced[2]}" if spaced else value


InstantParameter = Annotated[Instant, BeforeValidator(_plus_sent_unescaped)]
"""An Instant given in a query string, its offset's `+` taken as sent unescaped too."""

RoundedUpInstantParameter = Annotated[RoundedUpInstant, BeforeValidator(_plus_sent_unescaped)]
"""A RoundedUpInstant given in a query string, its offset's `+` taken as sent unescaped too."""

# ASCII digits only: `\d` took other scripts' digits too (`"\u0661d"` was a day).
_SHORT_DURATION = re.compile(r"([0-9]+)([dhms]?)", re.IGNORECASE)
_DURATION_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds", "": "seconds"}
_DURATION_MAX = timedelta(days=36_500)
_TOO_LONG = f"must be at most {_DURATION_MAX.days} days"
_NOT_LONGER_THAN_ZERO = "must be longer than zero"
_DURATION_FORMS = (
    "`90d`, `12h`, `30m`, `3600s`, a number of seconds, `HH:MM:SS`, or ISO 8601 (`P90D`)"
)
# What pydantic reads as a time of day's length, with days before it: `01:30:00`, `1 day, 01:30`.
_CLOCK_DURATION = r"([0-9]+ ?d(ays?)?,? ?)?[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"


def _short_duration(value: Any) -> Any:
    """`90d`, `12h`, `30m`, `3600s` or `3600` (seconds, as text too: the CLI's options are text)
    as a timedelta; ISO 8601 and a number of seconds are left to pydantic; other text is
    refused naming the forms (pydantic's word for `24H` was about a "day" identifier)."""
    if isinstance(value, int | float):
        return _bounded_seconds(value)
    if not isinstance(value, str):
        return value
    if match := _SHORT_DURATION.fullmatch(value.strip()):
        # More digits than any span within the limit has (and than int() takes, past 4,300).
        if len(match[1].lstrip("0")) > len(str(int(_DURATION_MAX.total_seconds()))):
            raise ValueError(_TOO_LONG)
        try:
            return timedelta(**{_DURATION_UNITS[match[2].lower()]: int(match[1])})
        except OverflowError:  # beyond what a timedelta holds, and so beyond the limit
            raise ValueError(_TOO_LONG) from None
    if is_a_number(value):
        # Seconds, which pydantic takes from a number, not from text.
        return _bounded_seconds(float(value))
    # As the other forms are read: spaces around it (pydantic refused " P1D "), and ISO 8601's
    # letters in either case (pydantic refused "p90d").
    span = value.strip()
    if not written_as_a_span(span):
        raise ValueError(f"must be {_DURATION_FORMS}")
    return span.upper() if span.upper().startswith("P") else span


def written_as_a_span(text: str) -> bool:
    """Whether `text` is written in a form of a span of time other than a number alone, whatever
    its value: with its unit (`90d`), ISO 8601 (`P90D`, in either case) or a clock's (`01:30:00`,
    which pydantic reads)."""
    span = text.strip()
    return bool(_SHORT_DURATION.fullmatch(span)) or span.upper().startswith("P") or ":" in span


_UNSIGNED_NUMBER = r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
_NUMBER = re.compile(rf"[+-]?{_UNSIGNED_NUMBER}")


def is_a_number(text: str) -> bool:
    """Whether `text` is a decimal number, in ASCII digits (spaces around it allowed)."""
    return _NUMBER.fullmatch(text.strip()) is not None


def _bounded_seconds(seconds: float) -> float:
    """A number of seconds, refused beyond the bounds as any span is: pydantic's refusal of one
    beyond what a timedelta holds (`1e300`) named its own limit, 999,999,999 days."""
    if seconds > _DURATION_MAX.total_seconds():
        raise ValueError(_TOO_LONG)
    if seconds < 0:
        raise ValueError(_NOT_LONGER_THAN_ZERO)
    return seconds


def _sensible_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(_NOT_LONGER_THAN_ZERO)
    if value > _DURATION_MAX:
        raise ValueError(_TOO_LONG)
    return value


_DURATION_SCHEMA = {
    "anyOf": [
        {
            "type": "string",
            # A number without a minus sign: a span is longer than zero.
            "pattern": rf"^\s*([0-9]{{1,10}}[dhmsDHMS]?|\+?{_UNSIGNED_NUMBER}|{_CLOCK_DURATION}"
            r"|[Pp].+)\s*$",
            "description": "`90d`, `12h`, `30m`, `3600s`, `3600`, `01:30:00`, or ISO 8601 "
            f"(`P90D`); longer than zero, at most {_DURATION_MAX.days} days",
        },
        {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": int(_DURATION_MAX.total_seconds()),
            "description": "seconds",
        },
    ]
}

Duration = Annotated[
    timedelta,
    BeforeValidator(_short_duration),
    BeforeValidator(_not_a_boolean),
    AfterValidator(_sensible_duration),
    # Not pydantic's `format: duration` (ISO 8601 only): clients generated from the schema
    # would refuse `90d`.
    WithJsonSchema(_DURATION_SCHEMA),
]
"""A span of time: `90d`, `12h`, `30m`, `3600s`, seconds, or an ISO 8601 duration (`P90D`)."""

ATTRIBUTES_MAX_DEPTH = 16
ATTRIBUTES_MAX_BYTES = 64 * 1024  # as compact JSON text, numbers written out as jsonb does


def _storable_json(value: Any, depth: int = 0) -> int:
    """Check a JSON value for what PostgreSQL cannot store; how many more characters than its
    JSON text jsonb's will take: jsonb writes numbers out in full (1e300 is 301 digits), and
    so would an export of them, which must import again."""
    if isinstance(value, dict):
        for key in value:
            storable_text(key)
        items: Iterable[Any] = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return _storable_scalar(value)
    if value and depth == ATTRIBUTES_MAX_DEPTH:  # its items are a level too deep
        raise ValueError(f"must not nest deeper than {ATTRIBUTES_MAX_DEPTH} levels")
    longer_by = 0
    # The common scalars are checked here rather than a call deeper: an import checks millions.
    for item in items:
        kind = type(item)
        if kind is str:
            storable_text(item)
        elif not (kind is int or kind is bool or item is None):
            longer_by += _storable_json(item, depth + 1)
    return longer_by


def _storable_scalar(value: Any) -> int:
    if isinstance(value, str):
        storable_text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
        text = repr(value)
        if "e" not in text:  # written as it is
            return 0
        return _written_out_length(text) - len(to_json(value))
    return 0


def _written_out_length(text: str) -> int:
    """The length of a float's repr in exponent form (`-1.5e-07`) written out in full, as
    PostgreSQL's numeric does (`-0.00000015`)."""
    mantissa, exponent_text = text.split("e")
    sign = 1 if mantissa.startswith("-") else 0
    digits = len(mantissa.lstrip("-").replace(".", ""))
    exponent = int(exponent_text)
    if exponent < 0:  # 0.000ddd
        return sign + 2 + (-exponent - 1) + digits
    return sign + exponent + 1  # repr uses an exponent from 1e16 up: never a fraction there


def _storable_json_object(value: dict[str, Any]) -> dict[str, Any]:
    written_out = _storable_json(value)
    if len(to_json(value)) + written_out > ATTRIBUTES_MAX_BYTES:
        raise ValueError(f"must not take more than {ATTRIBUTES_MAX_BYTES} bytes as JSON")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_storable_json_object)]
