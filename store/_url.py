"""The storage URL: the one setting that picks and configures the ClickHouse backend.

Two forms:

* ``chdb:///path/to/dir[?setting=value...]``: ClickHouse embedded in the
  process (chDB), the single-process default. One process at a time may open
  a data directory. Options are ClickHouse server settings for the engine,
  such as ``mark_cache_size`` or ``max_server_memory_usage`` (bytes); see
  :data:`EMBEDDED_DEFAULTS` for the bounds Stride applies unless given.
* ``http://`` or ``https://user:password@host:port/database?option=value...``:
  a ClickHouse server over its HTTP interface (clickhouse-connect). The port
  defaults to 8123 (http) or 8443 (https), the user to ``default``, the
  database to ``stride``. The user and password are percent-encoded.
  Options:

  ``cluster=NAME``
      cluster mode: DDL runs ``ON CLUSTER NAME``, tables are replicated, and
      ``Distributed`` tables sharded by run sit in front (see :mod:`.schema`);
  ``connect_timeout=SECONDS`` (default 10), ``send_receive_timeout=SECONDS`` (300);
  ``compress=lz4|zstd|gzip|none`` (default ``lz4``): what the client asks for
      on results; Arrow inserts compress their buffers with lz4 or zstd
      (``insert_select`` bodies go uncompressed);
  ``verify=true|false`` (default true) and ``ca_cert=PATH``: TLS checks.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["EMBEDDED_DEFAULTS", "ChdbConfig", "ClickHouseConfig", "parse_store_url"]

DEFAULT_DATABASE = "stride"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORMS = "chdb:///path/to/dir or http(s)://user:password@host:port/database"
_COMPRESSION = ("lz4", "zstd", "gzip", "none")
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


#: Engine settings for embedded ClickHouse, which runs beside training on the same
#: machine: its caches are bounded (a server's defaults are sized for a server of
#: its own, e.g. a 5 GiB mark cache), and ``chdb:///dir?name=value`` overrides them.
EMBEDDED_DEFAULTS: dict[str, str] = {
    "mark_cache_size": str(64 << 20),
    "primary_index_cache_size": str(64 << 20),
    "index_mark_cache_size": str(16 << 20),
    "index_uncompressed_cache_size": "0",
    "uncompressed_cache_size": "0",
    "query_condition_cache_size": str(16 << 20),
    "compiled_expression_cache_size": str(16 << 20),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChdbConfig:
    path: Path
    database: str = DEFAULT_DATABASE
    #: ClickHouse server settings for the engine (see :data:`EMBEDDED_DEFAULTS`).
    engine: dict[str, str] = dataclasses.field(default_factory=lambda: dict(EMBEDDED_DEFAULTS))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClickHouseConfig:
    host: str
    port: int
    secure: bool
    user: str = "default"
    password: str = dataclasses.field(default="", repr=False)
    database: str = DEFAULT_DATABASE
    cluster: str | None = None
    connect_timeout_s: float = 10.0
    send_receive_timeout_s: float = 300.0
    compress: str | None = "lz4"
    verify: bool = True
    ca_cert: str | None = None

    @property
    def address(self) -> str:
        """The server's address without credentials, for messages and logs."""
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}/{self.database}"


def parse_store_url(url: str) -> ChdbConfig | ClickHouseConfig:
    """Read a storage URL (see the module docstring); ``ValueError`` says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"storage URL {url!r}: a chDB URL is chdb:///absolute/path")
        if any(c in unquote(parts.path) for c in "?&"):
            # chDB reads engine options after a "?" in its connection string.
            raise ValueError(f"storage URL {url!r}: a chDB directory may not contain ? or &")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        for name, value in options.items():
            if not _IDENTIFIER.fullmatch(name) or not re.fullmatch(r"[\w.]+", value):
                raise ValueError(
                    f"storage URL {url!r}: engine option {name}={value!r} must be a setting "
                    "name and a plain value"
                )
        return ChdbConfig(path=Path(unquote(parts.path)), engine={**EMBEDDED_DEFAULTS, **options})
    if parts.scheme in ("http", "https"):
        return _clickhouse(url)
    raise ValueError(f"unsupported storage URL {redact(url)!r}: expected {_FORMS}")


def redact(url: str) -> str:
    """``url`` with its password (or a lone token) replaced by ``***``.

    Works on the raw text, so a password with an unencoded ``/``, ``?`` or ``#``
    (which would end the host part for a URL parser) is hidden too: everything
    between ``://`` and the last ``@`` is credentials.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, hostpart = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{hostpart}"


def _clickhouse(url: str) -> ClickHouseConfig:
    shown = redact(url)
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    try:
        port = parts.port or (8443 if secure else 8123)
    except ValueError:
        raise ValueError(
            f"storage URL {shown!r}: the port is not a number (percent-encode special "
            "characters in the user and password: / as %2F, @ as %40, ? as %3F, # as %23)"
        ) from None
    if not parts.hostname:
        raise ValueError(f"storage URL {shown!r}: no host; expected {_FORMS}")
    database = parts.path.strip("/") or DEFAULT_DATABASE
    if not _IDENTIFIER.fullmatch(database):
        raise ValueError(
            f"storage URL {shown!r}: database {database!r} must be letters, digits and _"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    known = {"cluster", "connect_timeout", "send_receive_timeout", "compress", "verify", "ca_cert"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"storage URL {shown!r}: unknown option(s) {unknown}; the options are {sorted(known)}"
        )
    cluster = options.get("cluster") or None
    if cluster is not None and not _IDENTIFIER.fullmatch(cluster):
        raise ValueError(f"storage URL {shown!r}: cluster {cluster!r} must be letters, digits, _")
    compress = options.get("compress", "lz4").lower()
    if compress not in _COMPRESSION:
        raise ValueError(f"storage URL {shown!r}: compress={compress!r}; use one of {_COMPRESSION}")
    verify = options.get("verify", "true").lower()
    if verify not in _BOOLS:
        raise ValueError(f"storage URL {shown!r}: verify={verify!r}; use true or false")
    return ClickHouseConfig(
        host=parts.hostname,
        port=port,
        secure=secure,
        user=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password or ""),
        database=database,
        cluster=cluster,
        connect_timeout_s=_seconds(options, "connect_timeout", 10.0, shown),
        send_receive_timeout_s=_seconds(options, "send_receive_timeout", 300.0, shown),
        compress=None if compress == "none" else compress,
        verify=_BOOLS[verify],
        ca_cert=options.get("ca_cert") or None,
    )


def _seconds(options: dict[str, str], name: str, default: float, shown: str) -> float:
    text = options.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"storage URL {shown!r}: {name}={text!r} must be a positive number")
    return value
