"""Conditional requests (RFC 9110, section 13.1) on versioned resources: a resource's ETag is its
version, If-Match guards a write, If-None-Match spares a read."""

import re
from dataclasses import dataclass

# An entity tag: optional weakness marker, then an opaque string in double quotes.
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e]*)"')
_VERSION_DIGITS_MAX = 10  # a PostgreSQL integer


def etag(version: int) -> str:
    return f'"{version}"'


def _versions(header: str, *, weak_too: bool) -> frozenset[int]:
    return frozenset(
        int(tag)
        for weak, tag in _ENTITY_TAG.findall(header)
        if (weak_too or not weak) and tag.isdigit() and len(tag) <= _VERSION_DIGITS_MAX
    )


@dataclass(frozen=True)
class IfMatch:
    """What an If-Match header accepts: any current version (`*`), or only these. Weak tags
    never match: a write needs the strong comparison."""

    versions: frozenset[int] | None

    @classmethod
    def parse(cls, header: str) -> "IfMatch":
        if header.strip() == "*":
            return cls(None)
        return cls(_versions(header, weak_too=False))

    def accepts(self, version: int) -> bool:
        return self.versions is None or version in self.versions


def not_modified(if_none_match: str | None, version: int) -> bool:
    """Whether If-None-Match names this version (weak comparison) or is `*`."""
    if if_none_match is None:
        return False
    return if_none_match.strip() == "*" or version in _versions(if_none_match, weak_too=True)
