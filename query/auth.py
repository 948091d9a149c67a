"""Bearer tokens: scoped to entities, read-only or read-write, stored hashed.

A token is ``stride_<id>_<secret>``. Only the SHA-256 of the secret is stored
(the secret is 32 random bytes: a slow hash buys nothing against guessing),
with the token's id, name, entities and whether it may write. ``stride token
create|list|revoke`` manage them in a file, one JSON object per line, that the
query service reads at start and again whenever it changes (a ``stat`` per
request): a token created or revoked takes effect at once, without a restart.
Every query process reads the same file (a mounted secret in Kubernetes).

With a tokens file, every request needs ``Authorization: Bearer <token>``,
but for ``/healthz`` and ``/readyz`` (probes, which reveal nothing). A request
about an entity (every path with ``{entity}``) needs a token for that entity
(or for ``*``, every entity); ``PATCH`` and ``DELETE`` need a read-write one.
Missing, unknown and revoked tokens get 401, a token without the right
scope 403; both with the service's JSON error body.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import Forbidden, Unauthorized, Unavailable

log = logging.getLogger("stride.query")

__all__ = ["AUTH_EXEMPT", "GRANT", "Grant", "TokenRecord", "Tokens", "middleware"]

#: Paths that answer without a token: liveness and readiness probes.
AUTH_EXEMPT = frozenset({"/healthz", "/readyz"})
#: Methods that change data: they need a read-write token.
_WRITES = frozenset({"PATCH", "DELETE", "PUT"})
_PREFIX = "stride_"
ALL_ENTITIES = "*"


class TokenRecord(msgspec.Struct, forbid_unknown_fields=True):
    """One token as stored: never its secret, only the secret's SHA-256."""

    id: str
    name: str
    entities: list[str]
    write: bool
    sha256: str
    created_at: str
    revoked_at: str | None = None


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a presented token allows."""

    token_id: str
    entities: frozenset[str]
    write: bool

    def allows(self, entity: str | None, writing: bool) -> bool:
        if writing and not self.write:
            return False
        return entity is None or ALL_ENTITIES in self.entities or entity in self.entities


_DECODER = msgspec.json.Decoder(TokenRecord)
_ENCODER = msgspec.json.Encoder()


class Tokens:
    """The tokens file: create, list and revoke (the CLI); check (the service)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, TokenRecord] = {}
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) last read
        self._reported: str | None = None  # the read error last logged
        self._load()

    # ---- the CLI's side --------------------------------------------------------------------

    def create(
        self, entities: Iterable[str], *, write: bool, name: str = ""
    ) -> tuple[TokenRecord, str]:
        """A new token: its record, and the token itself (shown once, never stored)."""
        scopes = sorted(set(entities))
        if not scopes:
            raise ValueError("a token needs at least one entity ('*' for every entity)")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = TokenRecord(
            id=token_id,
            name=name,
            entities=scopes,
            write=write,
            sha256=_digest(secret),
            created_at=_now(),
        )
        self._load()
        self._records[token_id] = record
        self._save()
        return record, f"{_PREFIX}{token_id}_{secret}"

    def revoke(self, token_id: str) -> TokenRecord:
        """Mark the token revoked (kept, so ``list`` shows it was)."""
        self._load()
        record = self._records.get(token_id)
        if record is None:
            raise KeyError(f"no token {token_id!r} in {self.path}")
        if record.revoked_at is None:
            record = msgspec.structs.replace(record, revoked_at=_now())
            self._records[token_id] = record
            self._save()
        return record

    def list(self) -> list[TokenRecord]:
        self._load()
        return sorted(self._records.values(), key=lambda r: r.created_at)

    # ---- the service's side ----------------------------------------------------------------

    def check(self, token: str) -> Grant | None:
        """What ``token`` allows, or ``None`` if it is unknown, malformed or revoked."""
        self._load()
        if not token.startswith(_PREFIX):
            return None
        token_id, _, secret = token[len(_PREFIX) :].partition("_")
        record = self._records.get(token_id)
        if record is None or record.revoked_at is not None or not secret:
            return None
        if not hmac.compare_digest(record.sha256, _digest(secret)):
            return None
        return Grant(record.id, frozenset(record.entities), record.write)

    def report(self, error: Exception) -> None:
        """Log why the file cannot be read, once per error (not once per request)."""
        if str(error) != self._reported:
            self._reported = str(error)
            log.error("refusing every request: cannot read the tokens file: %s", error)

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._records, self._seen = {}, None
            return
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a save renames a new file in
        if self._seen == seen:
            return
        records = {}
        for number, line in enumerate(self.path.read_bytes().splitlines(), start=1):
            if line.strip():
                try:
                    record = _DECODER.decode(line)
                except msgspec.DecodeError as exc:
                    raise ValueError(f"{self.path}, line {number}: not a token: {exc}") from None
                records[record.id] = record
        self._records, self._seen = records, seen
        self._reported = None

    def _save(self) -> None:
        """Write every record to a new file and rename it over the old: a reader
        sees the old file or the new one, never half of one. Owner-only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".tmp")
        body = b"".join(_ENCODER.encode(r) + b"\n" for r in self._records.values())
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.path)
        self._seen = None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Where the middleware leaves the request's :class:`Grant` for handlers.
GRANT = "stride.grant"


def middleware(tokens: Tokens) -> Middleware:
    """The aiohttp middleware that refuses requests without a fitting token."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in AUTH_EXEMPT:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "this service needs a token: send 'Authorization: Bearer <token>' "
                "(stride.Api(token=...) or $STRIDE_API_TOKEN)"
            )
        try:
            grant = tokens.check(token.strip())
        except (ValueError, OSError) as exc:  # fail closed; the details go to the log
            tokens.report(exc)
            raise Unavailable(
                "the service cannot read its tokens file; it refuses every request until "
                "the file is fixed (its log says what is wrong; `stride token list "
                "--tokens FILE` checks it)"
            ) from None
        if grant is None:
            raise Unauthorized("the token is unknown or revoked: ask for a new one")
        entity = request.match_info.get("entity")
        writing = request.method in _WRITES
        if not grant.allows(entity, writing):
            what = "change runs" if writing and not grant.write else f"read entity {entity!r}"
            raise Forbidden(f"token {grant.token_id} may not {what}")
        request[GRANT] = grant
        return await handler(request)

    return require_token
