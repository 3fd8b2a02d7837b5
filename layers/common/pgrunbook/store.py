"""Where backups live: an S3 bucket or a local folder, behind one small interface.

A location is a URI: `s3://bucket/prefix/...` or a filesystem path. Writers stream: the
S3 writer is a multipart upload with a bounded number of parts in flight (memory stays
flat whatever the size), the folder writer writes `<name>.partial` and renames on commit.
Either way an aborted write leaves nothing that looks like a finished object.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from . import aws
from .errors import StoreError

PARTIAL_SUFFIX = ".partial"


class ObjectWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # epoch seconds


class Store(Protocol):
    """A bucket/prefix or a folder. Keys are relative, '/'-separated."""

    base: str

    def uri(self, key: str) -> str: ...
    def open_writer(self, key: str) -> ObjectWriter: ...
    def open_reader(self, key: str) -> IO[bytes]: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...
    def check_writable(self) -> None: ...


# --------------------------------------------------------------------------- local folder
class _FileWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + PARTIAL_SUFFIX)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[bytes] | None = open(self.partial, "wb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise StoreError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None

    def write(self, data: bytes) -> None:
        assert self._fh is not None
        try:
            self._fh.write(data)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def commit(self) -> None:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.partial.unlink(missing_ok=True)


class LocalStore:
    def __init__(self, base: str | Path) -> None:
        self.root = Path(base).expanduser()
        self.base = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def open_writer(self, key: str) -> ObjectWriter:
        return _FileWriter(self.path(key))

    def open_reader(self, key: str) -> IO[bytes]:
        try:
            return open(self.path(key), "rb")
        except OSError as exc:
            raise StoreError(f"cannot read {self.path(key)}: {exc.strerror or exc}") from None

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        writer = self.open_writer(key)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except OSError as exc:
            raise StoreError(f"cannot read {self.path(key)}: {exc.strerror or exc}") from None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        start = self.path(prefix)
        if not start.exists():
            return []
        found = []
        for path in start.rglob("*") if start.is_dir() else [start]:
            if path.is_file():
                st = path.stat()
                found.append(ObjectInfo(key=path.relative_to(self.root).as_posix(), size=st.st_size,
                                        modified=st.st_mtime))
        return found

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create backup folder {self.root}: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"backup folder {self.root} is not writable")


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
        return StoreError(f"S3 error on {where}: {code} {exc.response.get('Error', {}).get('Message', '')}".strip())
    return StoreError(f"S3 unreachable for {where}: {exc}")


class _MultipartWriter:
    """Streams to S3: fills a part buffer, uploads it on a background thread while the next one
    fills (at most `in_flight` parts uploading, so memory is about (1 + in_flight) parts whatever
    the archive's size), completes on commit, aborts the upload on abort."""

    MAX_PARTS = 10_000  # S3's limit

    def __init__(self, store: S3Store, key: str, part_size: int, in_flight: int = 1) -> None:
        self.store, self.key, self.part_size = store, key, part_size
        self._buffer = bytearray()
        self._parts: list[Future[dict[str, Any]]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        self._slots = threading.Semaphore(in_flight)
        try:
            resp = store.s3.create_multipart_upload(Bucket=store.bucket, Key=store.full_key(key),
                                                    **store.encryption_args(), **kind_tagging(key))
        except (ClientError, BotoCoreError) as exc:
            self._pool.shutdown()
            raise _s3_error(exc, store.bucket, store.full_key(key)) from None
        self.upload_id: str | None = resp["UploadId"]

    def _upload(self, number: int, data: bytearray) -> dict[str, Any]:
        try:
            resp = self.store.s3.upload_part(Bucket=self.store.bucket, Key=self.store.full_key(self.key),
                                             UploadId=self.upload_id, PartNumber=number, Body=data)
            return {"PartNumber": number, "ETag": resp["ETag"]}
        finally:
            self._slots.release()

    def _flush(self) -> None:
        if len(self._parts) >= self.MAX_PARTS:
            raise StoreError(f"the archive is larger than S3's {self.MAX_PARTS} parts of "
                             f"{self.part_size // (1024 * 1024)} MB: raise PGRUNBOOK_MULTIPART_CHUNK_MB")
        self._slots.acquire()  # wait for a free upload slot before taking the buffer: no extra copy
        data, self._buffer = self._buffer, bytearray()
        self._parts.append(self._pool.submit(self._upload, len(self._parts) + 1, data))

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self.part_size:
            chunk = self._buffer[self.part_size:]
            del self._buffer[self.part_size:]
            self._flush()
            self._buffer += chunk
        # surface a failed upload early instead of streaming the whole dump for nothing
        for part in self._parts:
            if part.done() and part.exception() is not None:
                self._raise(part.exception())

    def _raise(self, exc: BaseException | None) -> None:
        if isinstance(exc, ClientError | BotoCoreError):
            raise _s3_error(exc, self.store.bucket, self.store.full_key(self.key)) from None
        raise exc if exc else StoreError("S3 upload failed")

    def commit(self) -> None:
        if self._buffer or not self._parts:
            self._flush()
        try:
            parts = [p.result() for p in self._parts]
            self.store.s3.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.store.full_key(self.key), UploadId=self.upload_id,
                MultipartUpload={"Parts": parts})
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise _s3_error(exc, self.store.bucket, self.store.full_key(self.key)) from None
        finally:
            self._pool.shutdown()
        self.upload_id = None

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.upload_id is not None:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.store.s3.abort_multipart_upload(Bucket=self.store.bucket,
                                                     Key=self.store.full_key(self.key), UploadId=self.upload_id)
            self.upload_id = None


class S3Store:
    def __init__(self, uri: str, *, kms_key_id: str | None = None, part_size: int = 16 * 1024 * 1024) -> None:
        rest = uri[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise StoreError(f"invalid S3 URI {uri!r}: no bucket")
        self.prefix = prefix.strip("/")
        self.base = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.kms_key_id = kms_key_id
        self.part_size = max(part_size, 5 * 1024 * 1024)

    @property
    def s3(self) -> Any:
        return aws.client("s3")

    def full_key(self, key: str) -> str:
        return str(PurePosixPath(self.prefix) / key) if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def encryption_args(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def open_writer(self, key: str) -> ObjectWriter:
        return _MultipartWriter(self, key, self.part_size)

    def open_reader(self, key: str) -> IO[bytes]:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None
        return body  # type: ignore[no-any-return]

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data, ContentType=content_type,
                               **self.encryption_args(), **kind_tagging(key))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket, self.full_key(key)) from None

    def get_bytes(self, key: str) -> bytes:
        with contextlib.closing(self.open_reader(key)) as body:
            return body.read()

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
        found = []
        try:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) + 1:] if self.prefix else obj["Key"]
                    found.append(ObjectInfo(key=key, size=int(obj["Size"]),
                                            modified=obj["LastModified"].timestamp()))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, self.bucket, full) from None
        return found

    def delete(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.full_key(key))
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


def open_store(dest: str, *, kms_key_id: str | None = None, part_size_mb: int = 16) -> Store:
    """A store for `s3://bucket/prefix` or a folder path."""
    if dest.startswith("s3://"):
        return S3Store(dest, kms_key_id=kms_key_id, part_size=part_size_mb * 1024 * 1024)
    return LocalStore(dest)


def split_uri(uri: str) -> tuple[Store, str]:
    """(store of the containing folder/prefix, key of the object) for an object URI."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        return S3Store(f"s3://{bucket}"), key
    path = Path(uri).expanduser()
    return LocalStore(path.parent), path.name


@contextlib.contextmanager
def writing(store: Store, key: str) -> Iterator[ObjectWriter]:
    """Open a writer that commits when the block ends normally and aborts otherwise."""
    writer = store.open_writer(key)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()
