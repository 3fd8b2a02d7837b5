"""dumpfile.read_dump without a server: plain scripts (as pg_dump 18 writes them) read whatever the
chunking, damage reported as one line, the bytes hashed and kept whole even when the contents stop
reading, and a tar's members checked before anything is listed (the real pg_restore, no server)."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest

from pgrunbook import dumpfile
from pgrunbook.dumpfile import PlainScript, contents_problem, read_dump
from pgrunbook.pgtools import PgRestore

SCRIPT = b"""--
-- PostgreSQL database dump
--

-- Dumped from database version 18.6
-- Dumped by pg_dump version 18.6

SET statement_timeout = 0;
CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public;
CREATE EXTENSION "uuid-ossp";
CREATE EXTENSION plpgsql;
CREATE TABLE public.notes (body text);
COPY public.notes (body) FROM stdin;
CREATE EXTENSION not_an_extension_but_data
plain row
\\.

--
-- PostgreSQL database dump complete
--

"""
EXPECTED = PlainScript(source_major=18, extensions=frozenset({"citext", "uuid-ossp"}))


def read(data: bytes, *, gz: bool = False, into: Path | None = None) -> dumpfile.DumpContents:
    return read_dump(io.BytesIO(data), "plain", gz=gz, into=into)


@pytest.mark.parametrize("gz", [False, True], ids=["sql", "sql.gz"])
def test_a_plain_script_reads_whatever_its_chunks(gz: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    data = gzip.compress(SCRIPT) if gz else SCRIPT
    rng = random.Random(9_0303)
    for _ in range(40):  # every line, the COPY line among them, cut somewhere by a chunk's end
        monkeypatch.setattr(dumpfile, "CHUNK", rng.randrange(1, 64))
        contents = read(data, gz=gz)
        assert contents.problem is None and contents.script == EXPECTED
        assert (contents.sha256, contents.bytes) == (hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.parametrize(("data", "gz", "problem"), [
    (gzip.compress(SCRIPT)[:-30], True, "the gzip stream is truncated"),
    (b"\x1f\x8b\x08\x00" + b"\xff" * 40, True, "the gzip stream is corrupt"),
    (SCRIPT.replace(b"-- PostgreSQL database dump\n", b"-- something\n", 1), False,
     "not a pg_dump SQL script (no header)"),
    (SCRIPT[: SCRIPT.index(b"\\.")], False, "the SQL script is truncated (no 'dump complete' trailer)"),
], ids=["gzip-cut", "gzip-corrupt", "no-header", "no-trailer"])
def test_a_damaged_script_is_one_line_and_still_fully_hashed(data: bytes, gz: bool, problem: str,
                                                            tmp_path: Path) -> None:
    kept = tmp_path / "kept.sql"
    contents = read(data, gz=gz, into=kept)
    assert contents.problem is not None and contents.problem.startswith(problem) and contents.script is None
    assert contents_problem(contents, None) == f"the archive does not read: {contents.problem}"
    assert contents.sha256 == hashlib.sha256(data).hexdigest() and kept.read_bytes() == data


def _tar(*members: tuple[str, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize(("data", "problem"), [
    (_tar(("toc.dat", b"x"), ("sub/3001.dat.gz", b"y")), "the tar holds an unexpected entry 'sub/3001.dat.gz'"),
    (_tar(("toc.dat", b"x"), ("..", b"y")), "the tar holds an unexpected entry '..'"),
    (_tar(("sub", None), ("toc.dat", b"x")), "the tar holds an unexpected entry 'sub'"),
    (_tar(("3001.dat.gz", b"y")), "the tar holds no toc.dat"),
    (b"not a tar at all" * 100, "not a tar: "),
], ids=["sub-folder", "dot-dot", "directory", "no-toc", "not-a-tar"])
def test_a_tar_is_checked_member_by_member(data: bytes, problem: str, tmp_path: Path) -> None:
    into = tmp_path / "archive.d"
    contents = read_dump(io.BytesIO(data), "directory-tar", pg_restore=PgRestore.find(), into=into)
    assert contents.problem is not None and contents.problem.startswith(problem) and contents.toc is None
    assert (contents.sha256, contents.bytes) == (hashlib.sha256(data).hexdigest(), len(data))
    assert not (tmp_path / "sub").exists() and not (tmp_path / "3001.dat.gz").exists()  # nothing outside `into`


def test_garbage_is_no_custom_archive_and_is_kept_whole(tmp_path: Path) -> None:
    data = b"PGDMP but not really " * 100_000  # more than pg_restore reads before it gives up
    kept = tmp_path / "x.dump"
    contents = read_dump(io.BytesIO(data), "custom", pg_restore=PgRestore.find(), into=kept)
    assert contents.problem is not None and contents.toc is None
    assert kept.read_bytes() == data and contents.sha256 == hashlib.sha256(data).hexdigest()


def test_listing_needs_pg_restore() -> None:
    with pytest.raises(ValueError):
        read_dump(io.BytesIO(b""), "custom")
    with pytest.raises(ValueError):
        read_dump(io.BytesIO(b""), "zip")
