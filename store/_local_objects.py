"""Objects as files under a directory: the embedded default.

A put streams into a hidden temporary file in the object's own directory,
fsyncs it, and renames it over the key's path (then fsyncs the directory).
A rename is atomic, so a reader opens the old object or the new one; a put
that fails, or a process that dies mid-write, leaves at most a temporary
file whose name no key can spell (segments ending in ``.stride-tmp`` are
refused), never a visible half-object.

The content type travels with the file as an extended attribute, set before
the rename (``application/octet-stream`` on a filesystem without user extended
attributes). The etag is the file's inode, modification time and size: a put
makes a new file, so it changes the tag, and a rename keeps it. No digest is
computed: at ~600 MB/s, an MD5 cost more than the write itself.

A file cannot also be a directory: an object ``a`` and an object ``a/b``
cannot both exist here (S3 allows it); the second put raises
:class:`InvalidKeyError`. Deleting the last object of a directory removes it.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ._objects_base import (
    CHUNK_BYTES,
    TMP_SUFFIX,
    ObjectInfo,
    ObjectStream,
    PutData,
    check_range,
    put_chunks,
    validate_key,
)
from .errors import InvalidKeyError, ObjectNotFoundError, StoreError, StoreUnavailableError

_TYPE_ATTR = "user.stride.content_type"
_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA}
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
_CONFLICT = (
    "the local object directory cannot hold both an object and other objects under "
    "it as a prefix (like 'a' and 'a/b'); choose keys that are never a prefix of another"
)


class LocalObjects:
    """Objects stored as files under ``root``, created if missing.

    Example::

        objects = LocalObjects(Path(".stride/objects"))
        objects.put("runs/a/model.bin", open("model.bin", "rb"))
        with objects.get("runs/a/model.bin", start=0, end=16) as stream:
            header = b"".join(stream)
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self._where = f"the local object directory {self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error(exc, self.root) from exc

    def __repr__(self) -> str:
        return f"LocalObjects({str(self.root)!r})"

    def put(
        self,
        key: str,
        data: PutData,
        *,
        length: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        path = self._path(key)
        chunks = put_chunks(key, data, length)
        fd, tmp = self._create_temp(key, path.parent)
        try:
            with open(fd, "wb") as f:
                self._write(f, chunks, tmp)
                try:
                    f.flush()
                    self._set_meta(f.fileno(), content_type)
                    os.fsync(f.fileno())
                    info = self._info(key, f.fileno())
                except OSError as exc:
                    raise self._os_error(exc, tmp) from exc
            try:
                os.replace(tmp, path)
            except IsADirectoryError as exc:
                raise InvalidKeyError(key, _CONFLICT) from exc
            except OSError as exc:
                raise self._os_error(exc, path) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._fsync_dir(path.parent)
        return info

    def get(self, key: str, *, start: int = 0, end: int | None = None) -> ObjectStream:
        check_range(start, end)
        path = self._path(key)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (the stream closes it)
        except _MISSING:
            raise ObjectNotFoundError(key, self._where) from None
        except OSError as exc:
            raise self._os_error(exc, path) from exc
        try:
            size = os.fstat(f.fileno()).st_size
            stop = size if end is None else min(end, size)
            first = min(start, stop)
            f.seek(first)
        except OSError as exc:
            f.close()
            raise self._os_error(exc, path) from exc
        return ObjectStream(self._read(f, stop - first, path), stop - first, f.close)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except _MISSING:
            raise ObjectNotFoundError(key, self._where) from None
        except OSError as exc:
            raise self._os_error(exc, path) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory of objects
                raise ObjectNotFoundError(key, self._where)
            return self._info(key, fd)
        except OSError as exc:
            raise self._os_error(exc, path) from exc
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except _MISSING:
            return
        except OSError as exc:
            raise self._os_error(exc, path) from exc
        self._delete_empty_parents(path.parent)

    def _delete_empty_parents(self, parent: Path) -> None:
        """Leave no empty directory behind: it would block a later object of that name."""
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def move(self, source: str, target: str) -> ObjectInfo:
        path, to = self._path(source), self._path(target)
        for attempt in range(3):
            if not path.is_file():  # missing, or a directory of objects
                raise ObjectNotFoundError(source, self._where)
            try:
                to.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, to)  # the content type and the etag move with the file
                break
            except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
                raise InvalidKeyError(target, _CONFLICT) from exc
            except FileNotFoundError as exc:  # the source went, or a delete took the directory
                if attempt == 2:
                    raise self._os_error(exc, to.parent) from exc
            except OSError as exc:
                raise self._os_error(exc, to) from exc
        self._fsync_dir(to.parent)
        self._delete_empty_parents(path.parent)
        return self.head(target)

    def presigned_get(self, key: str, *, expires: dt.timedelta = dt.timedelta(hours=1)) -> str:
        """A ``file://`` URL of the object's file: the best a directory can offer.

        It works only on this machine, for whoever may read the file, and
        ``expires`` is not enforced (there is no server to enforce it). The
        query service will serve local objects over HTTP; until then this is it.
        """
        if expires <= dt.timedelta(0):
            raise ValueError(f"expires={expires}: give a positive duration")
        return self._path(key).as_uri()

    def sweep(self, abandoned: str, older_than: dt.timedelta) -> int:
        cutoff = dt.datetime.now(dt.UTC).timestamp() - older_than.total_seconds()
        under = self.root / validate_key(abandoned.rstrip("/"))
        deleted = 0
        for directory, _, files in os.walk(self.root):
            for name in files:
                path = Path(directory, name)
                if not (name.endswith(TMP_SUFFIX) or path.is_relative_to(under)):
                    continue
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        deleted += 1
                except FileNotFoundError:  # finished, or swept by another worker, meanwhile
                    continue
                except OSError as exc:
                    raise self._os_error(exc, path) from exc
        return deleted

    def close(self) -> None:
        pass

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _create_temp(self, key: str, directory: Path) -> tuple[int, Path]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for attempt in range(3):
            tmp = directory / f".{secrets.token_hex(8)}{TMP_SUFFIX}"
            try:
                directory.mkdir(parents=True, exist_ok=True)
                return os.open(tmp, flags, 0o644), tmp
            except (FileExistsError, NotADirectoryError) as exc:
                if directory.is_dir():  # a name clash with another temp file: try another
                    continue
                raise InvalidKeyError(key, _CONFLICT) from exc
            except FileNotFoundError as exc:
                if attempt == 2:  # a delete keeps removing the emptied directory
                    raise self._os_error(exc, directory) from exc
            except OSError as exc:
                raise self._os_error(exc, directory) from exc
        raise StoreUnavailableError(f"cannot create a temporary file in {directory}; retry")

    def _write(self, f: BinaryIO, chunks: Iterator[bytes], tmp: Path) -> None:
        for chunk in chunks:  # what the caller's data raises passes through unchanged
            try:
                f.write(chunk)
            except OSError as exc:
                raise self._os_error(exc, tmp) from exc

    def _read(self, f: BinaryIO, remaining: int, path: Path) -> Iterator[bytes]:
        while remaining > 0:
            try:
                chunk = f.read(min(CHUNK_BYTES, remaining))
            except OSError as exc:
                raise self._os_error(exc, path) from exc
            if not chunk:
                raise StoreUnavailableError(f"{path} ended early while being read; retry")
            remaining -= len(chunk)
            yield chunk

    def _set_meta(self, fd: int, content_type: str) -> None:
        try:
            os.setxattr(fd, _TYPE_ATTR, content_type.encode())
        except OSError as exc:
            if exc.errno not in _NO_XATTR:
                raise

    def _info(self, key: str, fd: int) -> ObjectInfo:
        st = os.fstat(fd)
        try:
            content_type = os.getxattr(fd, _TYPE_ATTR).decode()
        except OSError as exc:
            if exc.errno not in _NO_XATTR:
                raise
            content_type = "application/octet-stream"
        etag = f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"
        modified = dt.datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=dt.UTC)
        return ObjectInfo(key, st.st_size, etag, content_type, modified)

    def _fsync_dir(self, directory: Path) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._os_error(exc, directory) from exc

    def _os_error(self, exc: OSError, path: Path) -> StoreError:
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            return StoreError(
                f"{path}: {exc.strerror}: give this process read and write access to "
                f"{self.root}, or choose another object directory",
                retriable=False,
            )
        return StoreUnavailableError(
            f"{path}: {exc.strerror or exc}: check the disk under {self.root} "
            "(free space, mount, errors); the call may be retried"
        )
