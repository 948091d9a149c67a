"""File bytes by key: the object store that ingest and query share.

Two backends behind one interface, :class:`ObjectStore`:

* :class:`LocalObjects`, a directory (the embedded default): ``file:///path/to/dir``;
* :class:`S3Objects`, an S3-compatible bucket (MinIO in production) through the
  ``minio`` client: ``s3://ACCESS_KEY:SECRET_KEY@host:port/bucket?secure=false&region=us-east-1``.

:func:`open_objects` opens either from its URL, which the entry point reads
from its settings. In an ``s3://`` URL, the access key and secret are
percent-encoded (``/`` is ``%2F``); ``secure`` (``true`` unless given)
picks HTTPS or HTTP; ``region`` is optional; the bucket is created if missing.

Every call blocks (file or network I/O): from an event loop, run them on an
executor thread. Both backends follow the same rules: keys are checked by
:func:`validate_key`; a put is all or nothing; ``get(key, start=, end=)``
returns ``data[start:end]`` (end exclusive, cut at the end of the object);
``head`` and ``get`` of a missing key raise :class:`ObjectNotFoundError`;
``delete`` of a missing key does nothing. Errors are the
:mod:`stride.store.errors` tree; ``retriable`` says whether to try again.

Example::

    from stride.store.objects import open_objects

    objects = open_objects("file:///var/lib/stride/objects")
    objects.put("runs/a/log.txt", (line.encode() for line in lines))
    print(objects.head("runs/a/log.txt").size)
    with objects.get("runs/a/log.txt", start=0, end=100) as stream:
        first = b"".join(stream)
"""

from __future__ import annotations

from stride._extras import require_server_extra

require_server_extra("stride.store.objects", "minio")

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from ._local_objects import LocalObjects
from ._objects_base import (
    MAX_KEY_BYTES,
    ObjectInfo,
    ObjectStore,
    ObjectStream,
    PutData,
    validate_key,
)
from ._s3_objects import S3Objects, S3Settings
from ._url import redact
from .errors import (
    CredentialsRefusedError,
    InvalidKeyError,
    ObjectNotFoundError,
    StoreError,
    StoreUnavailableError,
)

__all__ = [
    "MAX_KEY_BYTES",
    "CredentialsRefusedError",
    "InvalidKeyError",
    "LocalObjects",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStream",
    "PutData",
    "S3Objects",
    "S3Settings",
    "StoreError",
    "StoreUnavailableError",
    "open_objects",
    "validate_key",
]

_FORMS = "file:///path/to/dir or s3://ACCESS_KEY:SECRET_KEY@host:port/bucket?secure=false"
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def open_objects(url: str) -> ObjectStore:
    """Open the object store that ``url`` names (see the module docstring for the forms).

    A URL of any other form raises ``ValueError`` naming the forms; an S3
    store that refuses the credentials raises :class:`CredentialsRefusedError`.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"object store URL {url!r}: a file URL is file:///absolute/path")
        if parts.query or parts.fragment:
            raise ValueError(f"object store URL {url!r}: a file URL takes no options")
        return LocalObjects(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        return S3Objects(_s3_settings(url))
    raise ValueError(f"unsupported object store URL {_redacted(url)!r}: expected {_FORMS}")


def _s3_settings(url: str) -> S3Settings:
    parts = urlsplit(url)
    shown = _redacted(url)
    userinfo, at, endpoint = parts.netloc.rpartition("@")
    access, colon, secret = userinfo.partition(":")
    if not at or not access or not colon or not secret:
        raise ValueError(f"object store URL {shown!r}: give the credentials, as {_FORMS}")
    bucket = parts.path.strip("/")
    if not bucket or "/" in bucket:
        raise ValueError(f"object store URL {shown!r}: the path is the bucket name, one segment")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(options) - {"secure", "region"}
    if unknown:
        raise ValueError(
            f"object store URL {shown!r}: unknown option(s) {sorted(unknown)}; "
            "the options are secure=true|false and region=NAME"
        )
    secure = options.get("secure", "true").lower()
    if secure not in _BOOLS:
        raise ValueError(f"object store URL {shown!r}: secure={secure!r}; use true or false")
    return S3Settings(
        endpoint=endpoint,
        access_key=unquote(access),
        secret_key=unquote(secret),
        bucket=bucket,
        region=options.get("region") or None,
        secure=_BOOLS[secure],
    )


def _redacted(url: str) -> str:
    """``url`` without its secret, for error messages (see :func:`._url.redact`)."""
    return redact(url)
