"""Reading an archive, for `verify-backup` and for `restore` alike (dumpfile.read_dump), and feeding it
to the tools: real archives made by `run_backup`, damaged on purpose, against a real PostgreSQL server."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from pgrunbook.archive import ArchiveRef, ArchiveReport, verify_archive
from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.errors import ArchiveCorrupt, ChecksumMismatch, PgrunbookError, RestoreFailed
from pgrunbook.manifest import sha256_line
from pgrunbook.pgserver import LocalServer
from pgrunbook.restore import MARK_FAILED, RestoreOptions, run_restore
from pgrunbook.restore import run as restore_run
from pgrunbook.settings import Settings
from tests.fixtures.restore_helpers import db_comment, new_db, user_relations

SETTINGS = Settings.from_env({})
pytestmark = pytest.mark.usefixtures("clean_env")

TWO_TABLES = """
CREATE TABLE a_first (id int PRIMARY KEY);
INSERT INTO a_first SELECT generate_series(1, 50);
CREATE TABLE b_second (id int PRIMARY KEY);
INSERT INTO b_second SELECT generate_series(1, 70);
"""


def test_a_script_cut_after_it_was_verified_commits_nothing(pg_server: LocalServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a runbook-style .sql backup, verified by the restore, then cut at a line boundary (after the
    # first table's rows) before psql reads it: psql commits its single transaction when its input ends
    with new_db(pg_server, "cut") as source, new_db(pg_server) as target:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(TWO_TABLES)
        script = tmp_path / "cut.sql"
        run_backup(BackupOptions(database_url=source, out=str(script)), SETTINGS)
        text = script.read_bytes()
        cut = text.index(b"\\.\n", text.index(b"COPY public.a_first")) + 3
        verified: Callable[..., None] = restore_run.refuse_changed  # type: ignore[attr-defined]

        def cut_then_go_on(url: object) -> None:
            script.write_bytes(text[:cut])
            verified(url)

        monkeypatch.setattr(restore_run, "refuse_changed", cut_then_go_on)
        # When it is restored
        with pytest.raises(ChecksumMismatch, match="changed after it was verified"):
            run_restore(RestoreOptions(file=str(script), target_url=target, force=True), SETTINGS)
        # Then none of it was committed (was: a_first restored, b_second missing, and the restore "done")
        assert user_relations(target) == []
        assert (db_comment(target) or "").startswith(MARK_FAILED)


# --------------------------------------------------------------------------- verify-backup and restore agree
@pytest.fixture(scope="module")
def archives(pg_server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One small database backed up in each format: {format: archive path}."""
    with new_db(pg_server, "reading") as source:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(TWO_TABLES)
        folder = tmp_path_factory.mktemp("reading")
        made = {"custom": run_backup(BackupOptions(database_url=source, dest=str(folder / "c"), jobs=1), SETTINGS),
                "directory-tar": run_backup(BackupOptions(database_url=source, dest=str(folder / "d"), jobs=2),
                                            SETTINGS),
                "plain": run_backup(BackupOptions(database_url=source, out=str(folder / "p.sql.gz")), SETTINGS)}
        assert {fmt: b.format for fmt, b in made.items()} == {fmt: fmt for fmt in made}
        yield {fmt: Path(b.archive) for fmt, b in made.items()}


def copy_of(archive: Path, folder: Path, data: bytes | None = None, *, reseal: bool = False) -> Path:
    """The archive and its companions copied into `folder`, its bytes replaced by `data`; with `reseal`
    its .sha256 and manifest rewritten to match them (an archive written broken, not damaged later)."""
    copy = folder / archive.name
    copy.write_bytes(archive.read_bytes() if data is None else data)
    sha256 = Path(f"{archive}.sha256").read_text()
    manifest = json.loads(Path(f"{archive}.manifest.json").read_text())
    if reseal:
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()
        sha256 = sha256_line(digest, copy.name)
        manifest["archive"].update(sha256=digest, bytes=copy.stat().st_size)
    Path(f"{copy}.sha256").write_text(sha256)
    Path(f"{copy}.manifest.json").write_text(json.dumps(manifest))
    return copy


def verdicts(archive: Path, target: str) -> tuple[ArchiveReport, BaseException | None]:
    """What verify-backup says of `archive`, and what restoring it into `target` raised (None: restored)."""
    report = verify_archive(ArchiveRef.from_uri(str(archive)))
    try:
        run_restore(RestoreOptions(file=str(archive), target_url=target, force=True, analyze=False), SETTINGS)
    except PgrunbookError as exc:
        return report, exc
    return report, None


def test_a_tar_with_other_entries_fails_verify_backup_as_it_fails_restore(archives: dict[str, Path],
                                                                         pg_server: LocalServer,
                                                                         tmp_path: Path) -> None:
    # Given a .dump.tar written with an entry pg_dump never writes (a file in a sub-folder), its checksums
    # matching: restore refused it, verify-backup (which extracted only toc.dat) said OK
    original = archives["directory-tar"]
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as out, tarfile.open(original) as tar:
        for member in tar:
            out.addfile(member, tar.extractfile(member))
        extra = tarfile.TarInfo("sub/extra.dat")
        extra.size = 3
        out.addfile(extra, io.BytesIO(b"abc"))
    archive = copy_of(original, tmp_path, packed.getvalue(), reseal=True)
    with new_db(pg_server) as target:
        report, refused = verdicts(archive, target)
        assert user_relations(target) == [] and db_comment(target) is None
    # Then both refuse it, in the same words
    assert not report.ok
    assert isinstance(refused, ArchiveCorrupt)
    assert report.first_failure() == f"table of contents: {refused}"
    assert "unexpected entry 'sub/extra.dat'" in str(refused)


@pytest.mark.parametrize("fmt", ["custom", "directory-tar", "plain"])
def test_verify_backup_and_restore_agree_on_damaged_archives(fmt: str, archives: dict[str, Path],
                                                             pg_server: LocalServer, tmp_path: Path) -> None:
    rng = random.Random(f"9-3-{fmt}")
    original = archives[fmt].read_bytes()
    for case in range(4):
        data = bytearray(original)
        if case % 2 == 0:  # a flipped byte
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:  # cut short
            del data[rng.randrange(1, len(data)):]
        folder = tmp_path / str(case)
        folder.mkdir()
        with new_db(pg_server) as target:
            # Damaged after the backup: both name the checksum, and nothing reaches the target
            report, refused = verdicts(copy_of(archives[fmt], folder, bytes(data)),
                                       target)
            assert isinstance(refused, ChecksumMismatch), refused
            assert [c.name for c in report.checks if not c.ok][:1] == ["sha256"]
            assert user_relations(target) == [] and db_comment(target) is None
        (folder / "sealed").mkdir()
        with new_db(pg_server) as target:
            # Written so (checksums match): the contents decide, and both decide alike
            report, refused = verdicts(copy_of(archives[fmt], folder / "sealed", bytes(data), reseal=True), target)
            if isinstance(refused, ArchiveCorrupt):
                assert not report.ok and report.first_failure().endswith(f": {refused}"), (report.checks, refused)
                assert user_relations(target) == [] and db_comment(target) is None
            else:  # the damage is in the data, which only the load reads: verify-backup cannot see it
                assert report.ok, report.checks
                assert refused is None or isinstance(refused, RestoreFailed), refused


def test_a_data_line_that_reads_like_create_extension_is_data(pg_server: LocalServer, tmp_path: Path) -> None:
    # Given a runbook .sql.gz whose table data holds a line "CREATE EXTENSION <an extension nowhere>"
    with new_db(pg_server, "ext") as source, new_db(pg_server) as target:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (body text)")
            conn.execute("INSERT INTO notes VALUES ('CREATE EXTENSION pgrunbook_no_such_extension')")
        script = tmp_path / "notes.sql.gz"
        run_backup(BackupOptions(database_url=source, out=str(script)), SETTINGS)
        # When it is restored (the script was read for the extensions it creates: the data line counted,
        # and the restore was refused, "the target server lacks extension ... pgrunbook_no_such_extension")
        run_restore(RestoreOptions(file=str(script), target_url=target, force=True), SETTINGS)
        # Then the row is restored as the data it is
        with psycopg.connect(target, autocommit=True) as conn:
            assert conn.execute("SELECT body FROM notes").fetchall() == [
                ("CREATE EXTENSION pgrunbook_no_such_extension",)]
