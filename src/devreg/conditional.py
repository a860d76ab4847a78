"""Conditional requests (RFC 9110, section 13.1) on versioned resources: a resource's ETag is its
version. If-Match guards a write (or a read: 412); If-None-Match spares a read (304), or refuses
a write (412); If-Unmodified-Since, without If-Match, guards as If-Match does, by the time of
the last change (`updated_at`)."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from wsgiref.handlers import format_date_time

# An entity tag: optional weakness marker, then an opaque string in double quotes, which may
# hold bytes beyond ASCII (RFC 9110's obs-text; headers are read as Latin-1).
_TAG = r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"'
# A list of entity tags (RFC 9110, section 5.6.1): empty elements and separators first, then
# each tag with the commas (and empty elements) after it, or the end. Read element by element
# from where the previous one stopped, so a header is read once: one regular expression for
# the whole list took time quadratic in a run of commas.
_LEADING_SEPARATORS = re.compile(r"[\s,]*")
_ELEMENT = re.compile(rf"{_TAG}\s*(?:,[\s,]*|\Z)")
# A version as etag() writes it: tags compare as strings, so "01" is not version 1.
_VERSION_TAG = re.compile(r"0|[1-9][0-9]{0,9}")
_VERSION_MAX = 2**31 - 1  # a PostgreSQL integer


def etag(version: int) -> str:
    return f'"{version}"'


def last_modified(updated_at: datetime) -> str:
    """`updated_at` as an HTTP-date (IMF-fixdate, to the second): what a client sends back in
    If-Unmodified-Since, rather than a time of its own or the response's Date."""
    return format_date_time(updated_at.timestamp())


def _versions(header: str, *, weak_too: bool) -> frozenset[int]:
    """The versions the header's tags name; a tag that names none (such as "01", or a number
    beyond any version) matches nothing, and never reaches a statement. A header that is not a
    list of entity tags (`"1" "2"`, `x"1"`) names nothing at all."""
    listed = _tag_list(header)
    return frozenset() if listed is None else _named(listed, weak_too=weak_too)


def _named(listed: list[tuple[str, str]], *, weak_too: bool) -> frozenset[int]:
    tags = (tag for weak, tag in listed if weak_too or not weak)
    versions = (int(tag) for tag in tags if _VERSION_TAG.fullmatch(tag))
    return frozenset(version for version in versions if version <= _VERSION_MAX)


def check_tags(header: str) -> list[tuple[str, str]]:
    """The entity tags of an If-Match or If-None-Match that is not `*`; ValueError for one that
    lists none (a version sent without its quotes, an empty value). Taken as naming no version,
    an If-Match was a 412 saying the version had changed to the very one sent, which a client
    re-reading and retrying met forever; an If-None-Match guarded nothing."""
    listed = _tag_list(header)
    if not listed:
        raise ValueError(header)
    return listed


def _tag_list(header: str) -> list[tuple[str, str]] | None:
    """(weakness marker, opaque tag) of each entity tag in the list, or None if the header is
    not such a list."""
    tags = []
    leading = _LEADING_SEPARATORS.match(header)
    position = leading.end() if leading else 0
    while position < len(header):
        element = _ELEMENT.match(header, position)
        if element is None:
            return None
        tags.append((element.group(1) or "", element.group(2)))
        position = element.end()
    return tags


@dataclass(frozen=True)
class IfMatch:
    """What an If-Match header accepts: any current version (`*`), or only these. Weak tags
    never match: a write needs the strong comparison."""

    versions: frozenset[int] | None

    @classmethod
    def parse(cls, header: str) -> "IfMatch":
        """ValueError for a header that is neither `*` nor a list of entity tags (check_tags)."""
        if _is_any(header):
            return cls(None)
        return cls(_named(check_tags(header), weak_too=False))

    def accepts(self, version: int) -> bool:
        return self.versions is None or version in self.versions


def not_modified(if_none_match: str | None, version: int) -> bool:
    """Whether If-None-Match names this version (weak comparison) or is `*`: a read is answered
    304, a write refused (412)."""
    if if_none_match is None:
        return False
    return _is_any(if_none_match) or version in _versions(if_none_match, weak_too=True)


def _is_any(header: str) -> bool:
    return header.strip() == "*"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_CLOCK = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110, section 5.6.7: IMF-fixdate, then the two obsolete forms a recipient must read.
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_IMF_FIXDATE = re.compile(rf"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_CLOCK} GMT")
_RFC850_DATE = re.compile(
    rf"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_CLOCK} GMT"
)
_ASCTIME_DATE = re.compile(rf"{_DAY} {_MONTH} ([0-9 ][0-9]) {_CLOCK} ([0-9]{{4}})")


def http_date(header: str) -> datetime | None:
    """An HTTP-date (RFC 9110, section 5.6.7: GMT, to the second), or None for anything else,
    which a recipient ignores: a list of dates, another zone, an email's date forms."""
    header = header.strip()
    two_digit_year = False
    if match := _IMF_FIXDATE.fullmatch(header):
        day, month, year, *clock = match.groups()
    elif match := _RFC850_DATE.fullmatch(header):
        day, month, short_year, *clock = match.groups()
        year, two_digit_year = str(datetime.now(UTC).year // 100 * 100 + int(short_year)), True
    elif match := _ASCTIME_DATE.fullmatch(header):
        month, day, *clock, year = match.groups()
    else:
        return None
    hour, minute, second = map(int, clock)
    if (hour, minute, second) == (23, 59, 60):
        # A leap second, which RFC 9110 allows and a datetime cannot hold: to the second, a
        # change after it is one after 23:59:59 (PostgreSQL's clock has no 23:59:60).
        second = 59
    try:
        date = datetime(
            int(year), _MONTHS.index(month) + 1, int(day), hour, minute, second, tzinfo=UTC
        )
        return _within_50_years(date) if two_digit_year else date
    except ValueError:  # 31 Feb, 25:00
        return None


def _within_50_years(date: datetime) -> datetime:
    """A two-digit year's date as RFC 9110 reads it: one more than 50 years ahead is the most
    recent past year with those digits."""
    if date > datetime.now(UTC) + _FIFTY_YEARS:
        return date.replace(year=date.year - 100)
    return date


_FIFTY_YEARS = timedelta(days=50 * 365.25)


def changed_since(updated_at: datetime, since: datetime) -> bool:
    """Whether a change at `updated_at` came after `since`, compared to the second (an
    HTTP-date's precision): a client sends a time read from `updated_at`, cut to the second."""
    return updated_at.replace(microsecond=0) > since


@dataclass(frozen=True)
class Preconditions:
    """A write's preconditions: If-Match, and If-None-Match, which a write must not find true
    either (`*`: a device that exists at all), and If-Unmodified-Since (only without If-Match,
    which supersedes it)."""

    if_match: IfMatch | None
    if_none_match: str | None
    unmodified_since: datetime | None = None

    @property
    def accepted_versions(self) -> frozenset[int] | None:
        """The versions If-Match lets a write apply to; None for any."""
        return self.if_match.versions if self.if_match is not None else None

    @property
    def refuses_any_version(self) -> bool:
        """If-None-Match: *, which no existing device meets."""
        return self.if_none_match is not None and _is_any(self.if_none_match)

    @property
    def refused_versions(self) -> frozenset[int]:
        """The versions If-None-Match names (weak comparison), which a write may not apply to."""
        if self.if_none_match is None or self.refuses_any_version:
            return frozenset()
        return _versions(self.if_none_match, weak_too=True)
