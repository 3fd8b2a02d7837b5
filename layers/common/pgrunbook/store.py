"""Where backups live: an S3 bucket or a local folder, behind one small interface.

A location is a URI: `s3://bucket/prefix/...` or a filesystem path. Keys are relative,
'/'-separated, and never hold an empty, `.` or `..` segment (checked on every write and
delete), so no key reaches outside its store. Names that come from outside (a database
name, a kind) become key segments only through `keys.encode_segment` (reversible, one-to-one).

Writers stream: the S3 writer is a multipart upload with a bounded number of parts in flight
(memory stays flat whatever the size); the folder writer writes a partial file whose name is
unique to the writer (`<name>.<random>.partial`, created with O_EXCL) and moves it in place on
commit. Either way an aborted or failed write leaves nothing that looks like a finished object,
and no `.partial` behind it. While a write is open, its `.partial` file (or its multipart upload
and claim object) is registered with pgtools' guardian, which removes (aborts) it should the
process be killed before the writer commits or aborts.

Replacing: by default a commit replaces the object (reports, approvals). `exclusive=True` never
replaces: the folder writer claims the final name with `os.link` (atomic, fails if the name
exists), S3 writes with `If-None-Match: *` (PutObject and CompleteMultipartUpload), and a taken
name raises ObjectExists. `unique=True` (backups) instead moves on to the next free name
`<stem>.2.<ext>`, `<stem>.3.<ext>`, …: the folder writer at commit (link, next name on EEXIST);
the S3 writer before it uploads, by creating the claim object `<key>.partial` with
`If-None-Match: *` (deleted when the write ends), then completes with `If-None-Match: *` as
well. `writer.key` is the final key once the writer committed.

Part size (S3): `part_size_for(expected_bytes)` sizes parts from the expected object size (the database's
size with a margin of SIZE_MARGIN, capped at S3's 5 TiB object limit) so 10,000 parts always hold it:
16 MiB up to ~78 GiB of database, growing to 525 MiB for 5 TiB, never below 5 MiB nor above 5 GiB.
`open_store(..., expected_bytes=N)` applies it; an explicit `part_size_mb` ($PGRUNBOOK_MULTIPART_CHUNK_MB)
overrides it. Memory stays bounded at every size: a part of up to `spool_over` bytes (16 MiB) is held in
memory, a larger one is written to a temp file (in `spool_dir`, default the system's temp folder) and uploaded
from there, so at most (1 + in_flight) parts exist at once — in memory ≤ 2 x 16 MiB, on disk ≤ 2 parts
(≤ 1.05 GiB at 5 TiB). A spool file is registered with the guardian (removed should pgrunbook be killed) and
removed as soon as its part is uploaded, on abort and on commit.

Conditional writes (the backup index): `get_versioned(key)` returns the bytes with a version tag (S3: the
ETag; a folder: inode, mtime and size of the file read), and `put_if(key, data, etag=...)` writes only if
the object still has that version (`etag=None`: only if it does not exist) — S3 If-Match / If-None-Match,
a folder under an exclusive flock of its directory. `list()` gives each object's version tag too (`etag`).

Every failure is a StoreError whose one line names the operation and the path or URI
("cannot write /x/y.sha256: No space left on device"); no raw OSError leaves this module.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import secrets
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from . import aws
from .errors import ObjectExists, StoreError, UsageError
from .keys import PARTIAL_SUFFIX
from .pgtools import Guard, guard_path, guard_s3_object, guard_s3_upload

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's limits for a multipart part (but the last) and an object
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024 * 1024 * MiB
DEFAULT_PART = 16 * MiB  # also the largest part held in memory (spool_over)
SIZE_MARGIN = 2.0  # an archive may outgrow its database (no compression, bytea written as hex)


def part_size_for(expected_bytes: int | None, *, margin: float = SIZE_MARGIN, floor: int = DEFAULT_PART) -> int:
    """The multipart part size for an object expected to be about `expected_bytes`: whole MiB, at least
    `floor` (at least 5 MiB), at most 5 GiB, and large enough that MAX_PARTS parts hold
    min(expected_bytes x margin, 5 TiB). Unknown (None or ≤ 0): `floor`."""
    floor = max(floor, MIN_PART)
    if not expected_bytes or expected_bytes <= 0:
        return floor
    planned = min(math.ceil(expected_bytes * margin), MAX_OBJECT)
    need = math.ceil(math.ceil(planned / MAX_PARTS) / MiB) * MiB
    return min(max(floor, need), MAX_PART)

MAX_SERIAL = 1000  # `unique` writers try <stem>.2.<ext> … <stem>.1000.<ext>, then give up

def numbered(key: str, serial: int) -> str:
    """The serial-th candidate name for key: 'a/x.dump' (1), 'a/x.2.dump', 'a/x.3.dump', …"""
    if serial <= 1:
        return key
    folder, _, name = key.rpartition("/")
    stem, dot, ext = name.partition(".")
    numbered_name = f"{stem}.{serial}{dot}{ext}"
    return f"{folder}/{numbered_name}" if folder else numbered_name


def check_key(key: str) -> str:
    """A key to write or delete: relative, '/'-separated, no empty, '.' or '..' segment."""
    if not key or any(part in ("", ".", "..") for part in key.split("/")):
        raise UsageError(f"invalid object key {key!r}: empty, '.' or '..' segment")
    return key


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _os_error(operation: str, path: Path | str, exc: OSError) -> StoreError:
    return StoreError(f"cannot {operation} {path}: {_reason(exc)}")


class ObjectWriter(Protocol):
    key: str  # the object's key; with unique=True the final one once committed

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # epoch seconds
    etag: str = ""  # a version tag: S3's ETag; a file's inode, mtime and size (changes when replaced)


Listing = list[ObjectInfo]  # (inside the store classes `list` names their method)


def _file_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class Store(Protocol):
    """A bucket/prefix or a folder. Keys are relative, '/'-separated."""

    base: str

    def uri(self, key: str) -> str: ...
    def open_writer(self, key: str, *, exclusive: bool = False, unique: bool = False) -> ObjectWriter: ...
    def open_reader(self, key: str) -> IO[bytes]: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream", *,
                  exclusive: bool = False) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def list_tree(self, prefix: str = "", *, skip_after: str = "") -> Listing: ...  # list(), maybe less: S3Store
    def delete(self, key: str) -> None: ...
    def check_writable(self) -> None: ...
    def get_versioned(self, key: str) -> tuple[bytes, str] | None: ...
    def put_if(self, key: str, data: bytes, *, etag: str | None,
               content_type: str = "application/octet-stream") -> bool: ...


# --------------------------------------------------------------------------- local folder
def _claim_name(partial: Path, target: Path) -> None:
    """Give the finished partial file the name target, never replacing: FileExistsError if taken."""
    try:
        os.link(partial, target)  # atomic; fails with EEXIST when target exists
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        # a file system without hard links: claim the name empty with O_EXCL, then move the data onto it
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        try:
            os.replace(partial, target)
        except OSError:
            with contextlib.suppress(OSError):
                target.unlink()
            raise
    else:
        partial.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make the new directory entry durable (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _FileWriter:
    def __init__(self, store: LocalStore, key: str, *, exclusive: bool, unique: bool) -> None:
        self.store, self.key = store, check_key(key)
        self.exclusive, self.unique = exclusive or unique, unique
        path = store.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error("create folder", path.parent, exc) from None
        while True:  # a name no other writer uses: concurrent writers of one key never share a file
            self.partial = path.with_name(f"{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
            try:
                self._fh: IO[bytes] | None = open(self.partial, "xb")  # noqa: SIM115 - closed in commit/abort
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise _os_error("write", path, exc) from None
        self._guard = guard_path(self.partial)  # removed by pgtools' guardian should pgrunbook be killed

    @property
    def path(self) -> Path:
        return self.store.path(self.key)

    def write(self, data: bytes) -> None:
        assert self._fh is not None
        try:
            self._fh.write(data)
        except OSError as exc:
            raise _os_error("write", self.path, exc) from None

    def commit(self) -> None:
        fh, self._fh = self._fh, None
        assert fh is not None
        try:
            try:
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fh.close()  # closes the file even when the flush fails (and then raises again)
        except OSError as exc:
            self._remove_partial()
            raise _os_error("write", self.path, exc) from None
        try:
            self._move_in_place()
        except BaseException:
            self._remove_partial()
            raise
        _fsync_folder(self.path.parent)
        self._guard.release()

    def _move_in_place(self) -> None:
        asked = self.key
        if not self.exclusive:
            try:
                os.replace(self.partial, self.path)
            except OSError as exc:
                raise _os_error("create", self.path, exc) from None
            return
        for serial in range(1, (MAX_SERIAL if self.unique else 1) + 1):
            self.key = numbered(asked, serial)
            try:
                _claim_name(self.partial, self.path)
                return
            except FileExistsError:
                continue
            except OSError as exc:
                raise _os_error("create", self.path, exc) from None
        self.key = asked
        if self.unique:
            raise ObjectExists(f"{self.path} and its {MAX_SERIAL - 1} numbered variants already exist")
        raise ObjectExists(f"{self.path} already exists: not replacing it")

    def _remove_partial(self) -> None:
        try:
            self.partial.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove a partial file", extra={"path": str(self.partial), "error": _reason(exc)})
        self._guard.release()

    def abort(self) -> None:
        """Never raises: it runs while another error is on its way to the operator."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):
                fh.close()  # may try to flush buffered bytes into a full disk: the fd is closed anyway
        self._remove_partial()


class LocalStore:
    def __init__(self, base: str | Path) -> None:
        if not str(base).strip():
            raise UsageError("the destination folder is empty: give a folder or s3://bucket/prefix")
        self.root = Path(base).expanduser()
        self.base = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def open_writer(self, key: str, *, exclusive: bool = False, unique: bool = False) -> ObjectWriter:
        return _FileWriter(self, key, exclusive=exclusive, unique=unique)

    def open_reader(self, key: str) -> IO[bytes]:
        try:
            return open(self.path(key), "rb")
        except OSError as exc:
            raise _os_error("read", self.path(key), exc) from None

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream", *,
                  exclusive: bool = False) -> None:
        writer = self.open_writer(key, exclusive=exclusive)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as fh:
            try:
                return fh.read()
            except OSError as exc:
                raise _os_error("read", self.path(key), exc) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except OSError as exc:
            raise _os_error("read", self.path(key), exc) from None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        start = self.path(prefix)
        if not start.exists():
            return []
        found = []
        try:
            paths = list(start.rglob("*")) if start.is_dir() else [start]
        except OSError as exc:
            raise _os_error("list", start, exc) from None
        for path in paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # removed since listed (another run's partial file, say)
            except OSError as exc:
                raise _os_error("read", path, exc) from None
            if stat.S_ISREG(st.st_mode):
                found.append(ObjectInfo(key=path.relative_to(self.root).as_posix(), size=st.st_size,
                                        modified=st.st_mtime, etag=_file_etag(st)))
        return found

    def list_tree(self, prefix: str = "", *, skip_after: str = "") -> Listing:
        """list(prefix): a folder walk needs no parallel requests, and costs nothing more for the objects
        S3Store.list_tree may leave out (`skip_after`)."""
        return self.list(prefix)

    def delete(self, key: str) -> None:
        path = self.path(check_key(key))
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error("delete", path, exc) from None

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create backup folder {self.root}: {_reason(exc)}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"backup folder {self.root} is not writable")

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, version tag) of the file, None when there is none; the tag is the opened file's own."""
        path = self.path(key)
        try:
            with open(path, "rb") as fh:
                return fh.read(), _file_etag(os.fstat(fh.fileno()))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error("read", path, exc) from None

    def put_if(self, key: str, data: bytes, *, etag: str | None,
               content_type: str = "application/octet-stream") -> bool:
        """Replace the file only if it still has version `etag` (None: only if it does not exist); False
        when it changed. Writers of one folder take turns under an exclusive flock of the folder."""
        path = self.path(check_key(key))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError as exc:
            raise _os_error("write", path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current: str | None = _file_etag(path.stat())
            except FileNotFoundError:
                current = None
            if current != etag:
                return False
            self.put_bytes(key, data, content_type)
            return True
        except OSError as exc:
            raise _os_error("write", path, exc) from None
        finally:
            os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- S3
def kind_tagging(key: str) -> dict[str, str]:
    """Backups live at <database>/<kind>/YYYY/MM/<file>: S3 objects there are tagged kind=<kind>, so the
    bucket's lifecycle rules (one per kind, filtered by tag: a prefix cannot select a kind across
    databases) expire each kind on its own schedule. Other keys get no tag."""
    from .settings import KINDS

    parts = key.split("/")
    if len(parts) >= 4 and parts[-4] in KINDS:
        return {"Tagging": f"kind={parts[-4]}"}
    return {}


def _taken(exc: ClientError) -> bool:
    """S3's answer to a conditional write whose key exists (412), or that raced another one (409)."""
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412


def _s3_error(exc: Exception, bucket: str, key: str = "") -> StoreError:
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",):
            return StoreError(f"bucket {bucket} does not exist")
        if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch") \
                or status == 403:
            return StoreError(f"access denied to {where} ({code})")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return StoreError(f"{where} not found")
        if _taken(exc):
            return ObjectExists(f"{where} already exists: not replacing it")
        return StoreError(f"S3 error on {where}: {code} {exc.response.get('Error', {}).get('Message', '')}".strip())
    return StoreError(f"S3 unreachable for {where}: {exc}")


class _Part:
    """One part being filled: a bytearray, or (over the spool threshold) a temp file registered with the
    guardian. `discard` removes the file; it is idempotent and never raises."""

    def __init__(self, spool: bool, spool_dir: str | None) -> None:
        self.length = 0
        self.memory: bytearray | None = None
        self.file: IO[bytes] | None = None
        self.path: Path | None = None
        self._guard: Guard | None = None
        if not spool:
            self.memory = bytearray()
            return
        try:
            fd, name = tempfile.mkstemp(prefix="pgrunbook-part-", suffix=".spool", dir=spool_dir)
        except OSError as exc:
            raise _os_error("create a spool file in", spool_dir or tempfile.gettempdir(), exc) from None
        self.path = Path(name)
        self._guard = guard_path(self.path)
        self.file = os.fdopen(fd, "w+b")

    def write(self, data: memoryview) -> None:
        if self.memory is not None:
            self.memory += data
        else:
            assert self.file is not None and self.path is not None
            try:
                self.file.write(data)
            except OSError as exc:
                raise _os_error("write", self.path, exc) from None
        self.length += len(data)

    def body(self) -> bytearray | IO[bytes]:
        if self.memory is not None:
            return self.memory
        assert self.file is not None and self.path is not None
        try:
            self.file.flush()
            self.file.seek(0)
        except OSError as exc:
            raise _os_error("write", self.path, exc) from None
        return self.file

    def discard(self) -> None:
        self.memory = None
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            self.path = None
        if self._guard is not None:
            self._guard.release()
            self._guard = None


class _MultipartWriter:
    """Streams to S3: fills a part, uploads it on a background thread while the next one fills (at
    most `in_flight` parts uploading, so at most (1 + in_flight) parts exist whatever the archive's
    size), completes on commit, aborts the upload on abort. A part larger than `spool_over` bytes
    is filled in a temp file instead of memory (see the module docstring)."""

    MAX_PARTS = MAX_PARTS  # S3's limit

    def __init__(self, store: S3Store, key: str, part_size: int, in_flight: int = 1, *,
                 exclusive: bool = False, unique: bool = False, spool_over: int = DEFAULT_PART,
                 spool_dir: str | None = None) -> None:
        self.store, self.key, self.part_size = store, check_key(key), part_size
        self.exclusive = exclusive or unique
        self._spool, self._spool_dir = part_size > spool_over, spool_dir
        self._claim: str | None = None
        self._guards: dict[str, Guard] = {}  # the upload and the claim object, for pgtools' guardian
        self._open_parts: set[_Part] = set()  # every part not yet uploaded and discarded
        self._lock = threading.Lock()
        self._buffer: _Part | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self.upload_id: str | None = None
        if unique:
            self.key = self._claim_name(key)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        self._slots = threading.Semaphore(in_flight)
        try:
            resp = store.s3.create_multipart_upload(Bucket=store.bucket, Key=store.full_key(self.key),
                                                    **store.encryption_args(), **kind_tagging(self.key))
        except (ClientError, BotoCoreError) as exc:
            self._pool.shutdown()
            self._release_claim()
            raise _s3_error(exc, store.bucket, store.full_key(self.key)) from None
        self.upload_id = resp["UploadId"]
        self._guards["upload"] = guard_s3_upload(store.bucket, store.full_key(self.key), self.upload_id)

    def _claim_name(self, asked: str) -> str:
        """The first free name among asked, <stem>.2.<ext>, …, claimed by creating <name>.partial
        with If-None-Match: * (atomic in S3: of two concurrent claims exactly one succeeds)."""
        store = self.store
        for serial in range(1, MAX_SERIAL + 1):
            key = numbered(asked, serial)
            if store.exists(key):
                continue
            claim = key + PARTIAL_SUFFIX
            try:
                store.s3.put_object(Bucket=store.bucket, Key=store.full_key(claim), Body=b"", IfNoneMatch="*",
                                    **store.encryption_args(), **kind_tagging(claim))
            except ClientError as exc:
                if _taken(exc):
                    continue  # another run is writing this name
                raise _s3_error(exc, store.bucket, store.full_key(key)) from None
            except BotoCoreError as exc:
                raise _s3_error(exc, store.bucket, store.full_key(key)) from None
            self._claim = claim
            self._guards["claim"] = guard_s3_object(store.bucket, store.full_key(claim))
            if store.exists(key):  # finished (and its claim removed) between our two looks
                self._release_claim()
                continue
            return key
        raise ObjectExists(f"{store.uri(asked)} and its {MAX_SERIAL - 1} numbered variants already exist")

    def _release_claim(self) -> None:
        claim, self._claim = self._claim, None
        if claim is not None:
            try:
                self.store.s3.delete_object(Bucket=self.store.bucket, Key=self.store.full_key(claim))
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not remove a claim object", extra={"object": self.store.uri(claim),
                                                                       "error": str(exc)})
        for name in ("claim", "upload") if self.upload_id is None else ("claim",):
            if name in self._guards:
                self._guards.pop(name).release()

    def _new_part(self) -> _Part:
        part = _Part(self._spool, self._spool_dir)
        with self._lock:
            self._open_parts.add(part)
        return part

    def _discard(self, part: _Part) -> None:
        part.discard()
        with self._lock:
            self._open_parts.discard(part)

    def _upload(self, number: int, part: _Part) -> dict[str, Any]:
        try:
            resp = self.store.s3.upload_part(Bucket=self.store.bucket, Key=self.store.full_key(self.key),
                                             UploadId=self.upload_id, PartNumber=number, Body=part.body(),
                                             ContentLength=part.length)
            return {"PartNumber": number, "ETag": resp["ETag"]}
        finally:
            self._discard(part)
            self._slots.release()

    def _flush(self) -> None:
        if len(self._parts) >= self.MAX_PARTS:
            raise StoreError(f"the archive is larger than S3's {self.MAX_PARTS} parts of "
                             f"{self.part_size // MiB} MB: raise PGRUNBOOK_MULTIPART_CHUNK_MB")
        self._slots.acquire()  # wait for a free upload slot before taking the buffer: no extra copy
        part = self._buffer if self._buffer is not None else self._new_part()
        self._buffer = None
        self._parts.append(self._pool.submit(self._upload, len(self._parts) + 1, part))

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._buffer is None:
                self._buffer = self._new_part()
            room = self.part_size - self._buffer.length
            self._buffer.write(view[:room])
            view = view[room:]
            if self._buffer.length >= self.part_size:
                self._flush()
        # surface a failed upload early instead of streaming the whole dump for nothing
        for part in self._parts:
            if part.done() and part.exception() is not None:
                self._raise(part.exception())

    def _raise(self, exc: BaseException | None) -> None:
        if isinstance(exc, ClientError | BotoCoreError):
            raise _s3_error(exc, self.store.bucket, self.store.full_key(self.key)) from None
        raise exc if exc else StoreError("S3 upload failed")

    def commit(self) -> None:
        if (self._buffer is not None and self._buffer.length) or not self._parts:
            self._flush()
        try:
            parts = [p.result() for p in self._parts]
            self.store.s3.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.store.full_key(self.key), UploadId=self.upload_id,
                MultipartUpload={"Parts": parts}, **({"IfNoneMatch": "*"} if self.exclusive else {}))
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise _s3_error(exc, self.store.bucket, self.store.full_key(self.key)) from None
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown()
        self.upload_id = None
        self._release_claim()

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buffer = None
        with self._lock:
            left = list(self._open_parts)
        for part in left:  # the one being filled and any whose upload was cancelled
            self._discard(part)
        if self.upload_id is not None:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.store.s3.abort_multipart_upload(Bucket=self.store.bucket,
                                                     Key=self.store.full_key(self.key), UploadId=self.upload_id)
            self.upload_id = None
        self._release_claim()


class S3Store:
    def __init__(self, uri: str, *, kms_key_id: str | None = None, part_size: int = DEFAULT_PART,
                 spool_over: int = DEFAULT_PART, spool_dir: str | None = None) -> None:
        rest = uri[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise UsageError(f"invalid S3 URI {uri!r}: no bucket")
        prefix = prefix.removesuffix("/")  # s3://bucket/prefix/ names the same place as s3://bucket/prefix
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise UsageError(f"invalid S3 URI {uri!r}: the prefix has an empty, '.' or '..' segment")
        self.prefix = prefix
        self.base = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.kms_key_id = kms_key_id
        self.part_size = min(max(part_size, MIN_PART), MAX_PART)
        self.spool_over, self.spool_dir = spool_over, spool_dir

    def part_size_for(self, expected_bytes: int | None) -> int:
        return part_size_for(expected_bytes)

    @property
    def s3(self) -> Any:
        return aws.client("s3")

    def full_key(self, key: str) -> str:
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def encryption_args(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def open_writer(self, key: str, *, exclusive: bool = False, unique: bool = False) -> ObjectWriter:
        return _MultipartWriter(self, key, self.part_size, exclusive=exclusive, unique=unique,
                                spool_over=self.spool_over, spool_dir=self.spool_dir)

    def open_reader(self, key: str) -> IO[bytes]:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None
        return body  # type: ignore[no-any-return]

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream", *,
                  exclusive: bool = False) -> None:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self.full_key(check_key(key)), Body=data,
                               ContentType=content_type, **self.encryption_args(), **kind_tagging(key),
                               **({"IfNoneMatch": "*"} if exclusive else {}))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None

    def get_bytes(self, key: str) -> bytes:
        with contextlib.closing(self.open_reader(key)) as body:
            try:
                return body.read()
            except BotoCoreError as exc:
                raise _s3_error(exc, self.bucket, self.full_key(key)) from None

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=self.full_key(key))  # type: ignore[no-any-return]
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None
        except BotoCoreError as exc:
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise StoreError(f"{self.uri(key)} not found")
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        full = self.full_key(prefix)
        if full and not prefix:
            full += "/"
        return self._list(full)

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def _list(self, full: str, delimiter: str = "") -> Listing:
        """Every object under the full key prefix `full`; with a delimiter, the common prefixes too (as
        ObjectInfo of size -1, key relative and ending with the delimiter)."""
        found = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full, **({"Delimiter": delimiter} if delimiter else {})):
                for obj in page.get("Contents", []):
                    found.append(ObjectInfo(key=self._relative(obj["Key"]), size=int(obj["Size"]),
                                            modified=obj["LastModified"].timestamp(), etag=obj.get("ETag", "")))
                for common in page.get("CommonPrefixes", []):
                    found.append(ObjectInfo(key=self._relative(common["Prefix"]), size=-1, modified=0.0))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket, full) from None
        return found

    def list_tree(self, prefix: str = "", *, skip_after: str = "", workers: int = 8) -> Listing:
        """The same objects as list(prefix), each first-level folder under it listed on its own thread (up
        to `workers` at once): ListObjectsV2 pages are sequential within one prefix, so a bucket of many
        databases lists in about the time of its largest database.

        `skip_after` (e.g. ".sha256"): an object is left out when the part of its key before the first
        `skip_after` below the folder is the key of a listed object (an archive's `<archive>.sha256`):
        S3 sends each such group as one short common prefix (Delimiter), not as objects. A common prefix
        that is not <a listed object> + skip_after is listed in full, so nothing else is left out."""
        full = self.full_key(prefix)
        if full and not full.endswith("/"):
            full += "/"
        top = self._list(full, "/")
        found = [i for i in top if i.size >= 0]
        folders = [i.key for i in top if i.size < 0]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(folders))),
                                thread_name_prefix="s3-list") as pool:
            for part in pool.map(lambda f: self._list_skipping(f, skip_after), folders):
                found.extend(part)
        return found

    def _list_skipping(self, prefix: str, skip_after: str) -> Listing:
        if not skip_after:
            return self.list(prefix)
        listed = self._list(self.full_key(prefix), skip_after)
        objects = [i for i in listed if i.size >= 0]
        keys = {i.key for i in objects}
        for common in (i.key for i in listed if i.size < 0):
            if common[:-len(skip_after)] not in keys:  # not <a listed object>+skip_after: list what it holds
                objects.extend(self.list(common))
        return objects

    def delete(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.full_key(check_key(key)))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None

    def check_writable(self) -> None:
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise StoreError(f"bucket {self.bucket} does not exist") from None
            raise _s3_error(exc, self.bucket) from None
        except BotoCoreError as exc:
            raise _s3_error(exc, self.bucket) from None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of the object — both from one GET, so they belong together — None when missing."""
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=self.full_key(key))
            with contextlib.closing(resp["Body"]) as body:
                return body.read(), str(resp.get("ETag", ""))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound") \
                    or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None
        except BotoCoreError as exc:
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None

    def put_if(self, key: str, data: bytes, *, etag: str | None,
               content_type: str = "application/octet-stream") -> bool:
        """PutObject with If-Match: etag (None: If-None-Match: *); False when the object changed (412, 409,
        or 404 when it was deleted since)."""
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self.full_key(check_key(key)), Body=data,
                               ContentType=content_type, **self.encryption_args(), **kind_tagging(key), **condition)
        except ClientError as exc:
            if _taken(exc) or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None
        except BotoCoreError as exc:
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None
        return True


def open_store(dest: str, *, kms_key_id: str | None = None, part_size_mb: int | None = None,
               expected_bytes: int | None = None, spool_dir: str | None = None) -> Store:
    """A store for `s3://bucket/prefix` or a folder path (an empty destination is a usage error).

    S3 multipart parts: `part_size_mb` when given (the explicit override, $PGRUNBOOK_MULTIPART_CHUNK_MB),
    else `part_size_for(expected_bytes)` (16 MiB when the size is unknown)."""
    if dest.startswith("s3://"):
        part_size = part_size_mb * MiB if part_size_mb else part_size_for(expected_bytes)
        if part_size_mb and expected_bytes and part_size * MAX_PARTS < expected_bytes * SIZE_MARGIN:
            log.warning("the multipart part size set by PGRUNBOOK_MULTIPART_CHUNK_MB may be too small for this "
                        "database", extra={"part_size_mb": part_size_mb, "expected_bytes": expected_bytes,
                                           "suggested_part_size_mb": part_size_for(expected_bytes) // MiB})
        return S3Store(dest, kms_key_id=kms_key_id, part_size=part_size, spool_dir=spool_dir)
    return LocalStore(dest)


def split_uri(uri: str) -> tuple[Store, str]:
    """(store of the containing folder/prefix, key of the object) for an object URI."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        return S3Store(f"s3://{bucket}"), key
    path = Path(uri).expanduser()
    return LocalStore(path.parent), path.name


@contextlib.contextmanager
def writing(store: Store, key: str, *, exclusive: bool = False) -> Iterator[ObjectWriter]:
    """Open a writer that commits when the block ends normally and aborts otherwise."""
    writer = store.open_writer(key, exclusive=exclusive)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()
