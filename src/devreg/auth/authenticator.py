"""Authentication: which principal a request acts for, checked without a round trip per request.

A token is verified against the database once, then trusted from an in-process cache for at
most AUTH_CACHE_TTL seconds (and never past its expiry). Revoking a token clears it from this
process's cache at once; other workers and processes drop it within the TTL.
"""

import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cachetools import TLRUCache

from devreg.auth.principal import FULL_ACCESS, Principal
from devreg.auth.repository import TokenRepository
from devreg.config import AuthMode, Settings
from devreg.db.session import UnitOfWork
from devreg.errors import (
    DatabaseDeniesPrivilege,
    DatabaseReadOnly,
    InvalidToken,
    MalformedAuthorization,
    NotALocalRequest,
    Unauthenticated,
)

logger = logging.getLogger("devreg.auth")

_CACHED_TOKENS = 10_000

# RFC 6750, section 2.1: what a bearer token may be written as (b64token).
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

RawHeaders = Iterable[tuple[bytes, bytes]]


def token_digest(token: str) -> bytes:
    """What is stored of a token. Tokens carry 256 random bits, so a fast hash is enough: no
    password-style stretching, which would cost milliseconds on every cache miss."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class _Verdict:
    principal: Principal | None  # None: not a live token
    trusted_for: float  # seconds


class Authenticator:
    def __init__(
        self, mode: AuthMode, *, cache_ttl: float, trusted_origins: Sequence[str] = ()
    ) -> None:
        self.mode = mode
        self.cache_ttl = cache_ttl
        self.trusted_origins = frozenset(trusted_origins)
        self._verdicts: TLRUCache[bytes, _Verdict] = TLRUCache(
            maxsize=_CACHED_TOKENS, ttu=lambda _key, verdict, now: now + verdict.trusted_for
        )
        self._tokens_exist = False
        self._open_until = 0.0
        # Counts what was forgotten: a lookup that began before must not cache what it found.
        self._forgettings = 0

    async def principal(
        self,
        work: UnitOfWork,
        authorization: str | None,
        headers: RawHeaders,
        client_host: str | None,
    ) -> Principal:
        if self.mode == "off":  # no authentication: a token sent is not looked at
            return FULL_ACCESS
        if authorization is None:
            if await self._open(work):
                self._require_local(headers, client_host)
                return FULL_ACCESS
            raise Unauthenticated
        scheme, _, credentials = authorization.partition(" ")
        token = credentials.strip()
        if scheme.lower() != "bearer":
            # Another scheme, or none: the challenge says which to use, with no error code
            # (RFC 6750, section 3.1).
            raise Unauthenticated("Authorization must be: Bearer <token>.")
        if not token:
            raise MalformedAuthorization
        if not _BEARER_TOKEN.fullmatch(token):
            # Quoted, doubled or with a stray character: a request to fix, not a token to
            # replace (invalid_token would say it is unknown, expired or revoked).
            raise MalformedAuthorization(
                "The token must be sent as it was given: letters, digits and -._~+/ alone."
            )
        verdict = await self._verdict(work, token_digest(token))
        if verdict.principal is None:
            raise InvalidToken
        return verdict.principal

    async def _verdict(self, work: UnitOfWork, digest: bytes) -> _Verdict:
        verdict = self._verdicts.get(digest)
        if verdict is None:
            forgettings = self._forgettings
            found = await _verified(work, digest)
            if found is None:
                verdict = _Verdict(None, self.cache_ttl)
            else:
                principal, expires_in = found
                ttl = self.cache_ttl if expires_in is None else min(self.cache_ttl, expires_in)
                verdict = _Verdict(principal, ttl)
            # A revocation may have come while the database answered: this request may use the
            # token, as it began before; later ones must ask again.
            if verdict.trusted_for > 0 and forgettings == self._forgettings:
                self._verdicts[digest] = verdict
        return verdict

    async def _open(self, work: UnitOfWork) -> bool:
        """Whether a request without a token is served: with AUTH=auto (which only a loopback
        address may run), until the first token is created."""
        if self.mode != "auto":
            return False
        if self._tokens_exist:
            return False
        if time.monotonic() < self._open_until:
            return True
        if await TokenRepository(work).any_ever_created():
            self.token_created()
            return False
        self._open_until = time.monotonic() + self.cache_ttl
        return True

    async def confirm_open(self, work: UnitOfWork, principal: Principal) -> None:
        """For a request let in without a token because the API was open: 401 if a token has
        been created since (by another worker or the CLI, within AUTH_CACHE_TTL), and the API
        believed closed from then on; else it stays open until the transaction ends. A token
        made by such a request would outlive the open API."""
        if self.mode != "auto" or principal.token_id is not None:
            return
        if await TokenRepository(work).any_ever_created(held=True):
            self.token_created()
            raise Unauthenticated

    def _require_local(self, headers: RawHeaders, client_host: str | None) -> None:
        """The open API trusts whoever can reach loopback, but a browser reaches it for any web
        page: refuse a request sent under a name that is not loopback's (a DNS-rebinding page
        reading the API as its own site) or, by a browser's Origin, from another site's page.
        A proxy on this machine reaches it for other machines: refuse a request it says came
        from elsewhere (X-Forwarded-For, which uvicorn trusts from FORWARDED_ALLOW_IPS)."""
        if client_host is not None and not is_loopback(client_host):
            raise NotALocalRequest
        for name, value in headers:
            if name == b"host":
                if not names_this_machine(value.decode("latin-1")):
                    raise NotALocalRequest
            elif name == b"origin":
                origin = value.decode("latin-1")
                if origin in self.trusted_origins:
                    continue
                try:
                    authority = urlsplit(origin).netloc
                except ValueError:  # an unclosed [: no site at all
                    raise NotALocalRequest from None
                if not names_this_machine(authority):
                    raise NotALocalRequest

    def token_created(self) -> None:
        self._tokens_exist = True

    def forget_token(self, token_id: int) -> None:
        """Forget a token found revoked or expired by its id."""
        self._forget_where(lambda principal: principal.token_id == token_id)

    def forget(self, digest: bytes) -> None:
        self._forgettings += 1
        self._verdicts.pop(digest, None)

    def forget_user(self, user_id: int) -> None:
        """Forget the tokens of a deleted user (the database deleted them with the user)."""
        self._forget_where(lambda principal: principal.user_id == user_id)

    def _forget_where(self, whose: Callable[[Principal], bool]) -> None:
        self._forgettings += 1
        for digest, verdict in list(self._verdicts.items()):
            if verdict.principal is not None and whose(verdict.principal):
                self._verdicts.pop(digest, None)


async def _verified(work: UnitOfWork, digest: bytes) -> tuple[Principal, float | None] | None:
    """The token's principal and seconds until it expires (None: not live), its use noted. A
    database that takes no writes (a standby, or read-only for maintenance), or a role granted
    reads alone, refuses the note: the token is then verified by a read, so that reads are
    still served (and writes refused as such)."""
    tokens = TokenRepository(work)
    try:
        return await tokens.use(digest)
    except (DatabaseReadOnly, DatabaseDeniesPrivilege):
        return await tokens.look_up(digest)


def is_loopback(host: str) -> bool:
    if host.lower().removesuffix(".") == "localhost":  # a host name, in any case (RFC 4343)
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # `::ffff:127.0.0.1`, as a dual-stack proxy names a client of 127.0.0.1 (loopback for
    # Python from 3.13 only).
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def names_this_machine(authority: str) -> bool:
    """Whether `host[:port]` is loopback's: localhost, a name under .localhost (which browsers
    resolve to loopback themselves, RFC 6761) or a loopback address."""
    try:
        host = urlsplit("//" + authority).hostname
    except ValueError:  # an unclosed [
        return False
    if host is None:
        return False
    return is_loopback(host) or host.removesuffix(".").endswith(".localhost")


class UnsafeBinding(Exception):
    """Serving a non-loopback address with AUTH=auto: the operator must choose."""


def check_binding(settings: Settings) -> None:
    """Refuse to serve other hosts without a decision on authentication; warn when it is off
    (once per process serving, in its log's format)."""
    refuse_unsafe_binding(settings)
    if settings.auth == "off":
        logger.warning(
            "AUTH=off: authentication is disabled; anyone who can reach %s:%s may read and "
            "change every device and user",
            settings.host,
            settings.port,
        )


def refuse_unsafe_binding(settings: Settings) -> None:
    """Refuse to serve other hosts without a decision on authentication."""
    if settings.auth == "auto" and not is_loopback(settings.host):
        raise UnsafeBinding(
            f"HOST={settings.host} is not a loopback address: set AUTH=required to require "
            "API tokens (create one with `devreg tokens create`), or AUTH=off to serve "
            "without authentication"
        )
