"""Restore guards and failures against real PostgreSQL servers. Each bad input from issue 3 has a test
here that fails if its guard is removed; unless stated the target must be left untouched."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.backup import BackupOptions, BackupResult, run_backup
from pgrunbook.cli import main
from pgrunbook.errors import ChecksumMismatch, PgrunbookError, StoreError
from pgrunbook.pgserver import LocalServer
from pgrunbook.pgtools import server_binaries
from pgrunbook.restore import MARK_FAILED, RestoreFailed, RestoreOptions, run_restore
from pgrunbook.settings import Settings
from pgrunbook.verify import VerifyOptions, run_verify
from tests.fixtures.restore_helpers import (
    create_fidelity_db,
    db_comment,
    drop_db,
    fingerprints,
    new_db,
    user_relations,
)

SETTINGS = Settings.from_env({})
pytestmark = pytest.mark.usefixtures("clean_env")


def _backup(url: str, dest: Path, **kw: object) -> BackupResult:
    return run_backup(BackupOptions(database_url=url, dest=str(dest), **kw), SETTINGS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sample_backup(pg_server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupResult]:
    from pgrunbook.sample import create_sample_database

    url = create_sample_database(pg_server.url(), "restore_src", users=50, jobs_per_user=2, events=100)
    yield run_backup(BackupOptions(database_url=url, dest=str(tmp_path_factory.mktemp("bk")), jobs=1), SETTINGS)
    drop_db(url)


def _untouched(url: str) -> None:
    assert user_relations(url) == []
    assert db_comment(url) is None


def _copy_backup(backup: BackupResult, folder: Path) -> Path:
    """Archive + .sha256 + manifest copied to folder (so a test may damage them)."""
    src = Path(backup.archive)
    for suffix in ("", ".sha256", ".manifest.json"):
        shutil.copy(f"{src}{suffix}", folder / f"{src.name}{suffix}")
    return folder / src.name


def test_restore_cli_json_and_text(sample_backup: BackupResult, fresh_db: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Given an empty target; When restored through the CLI with --json
    rc = main(["restore", "--file", sample_backup.archive, "--target-url", fresh_db, "--force", "--json"])
    out = json.loads(capsys.readouterr().out)
    # Then it succeeds and says what it did
    assert rc == 0
    assert out["format"] == "custom" and out["sha256"] == sample_backup.sha256 and out["tables"] == 4
    assert "***" in out["target"] and "restore_src" not in out["target"]


def test_no_force_exit_2(sample_backup: BackupResult, fresh_db: str, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    # Given $NEW_DATABASE_URL names an empty database (the runbook's default target)
    monkeypatch.setenv("NEW_DATABASE_URL", fresh_db)
    # When restore runs without --force
    rc = main(["restore", "--file", sample_backup.archive])
    # Then it refuses with exit 2 and a clear message; the target is untouched
    assert rc == 2
    assert "--force" in capsys.readouterr().err
    _untouched(fresh_db)


@pytest.mark.parametrize("ddl", [
    "CREATE TABLE t (i int)",
    "CREATE SCHEMA s2; CREATE VIEW s2.v AS SELECT 1 AS x",
    "CREATE SEQUENCE s",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1",
    "CREATE TYPE e AS ENUM ('a')",
    "SELECT lo_from_bytea(0, '\\x00')",
])
def test_non_empty_target_refused(ddl: str, sample_backup: BackupResult, fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(ddl)
    before = user_relations(fresh_db)
    with pytest.raises(PgrunbookError, match="is not empty") as err:
        run_restore(RestoreOptions(file=sample_backup.archive, target_url=fresh_db, force=True), SETTINGS)
    assert err.value.exit_code == 1
    assert user_relations(fresh_db) == before
    assert db_comment(fresh_db) is None


def test_target_is_source_refused(sample_db: str, tmp_path: Path) -> None:
    # Given a backup of a database that was then emptied (so only the source guard can stop a restore)
    backup = _backup(sample_db, tmp_path, jobs=1)
    with psycopg.connect(sample_db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    # When it is restored into its own source; Then it is refused, naming the source
    with pytest.raises(PgrunbookError, match="is the backup's source"):
        run_restore(RestoreOptions(file=backup.archive, target_url=sample_db, force=True), SETTINGS)
    _untouched(sample_db)


def test_target_equal_to_database_url_refused(sample_backup: BackupResult, fresh_db: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    rc = main(["restore", "--file", sample_backup.archive, "--target-url", fresh_db, "--force"])
    assert rc == 1
    assert "$DATABASE_URL" in capsys.readouterr().err
    _untouched(fresh_db)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_archive_refused(damage: str, sample_backup: BackupResult, fresh_db: str, tmp_path: Path) -> None:
    archive = _copy_backup(sample_backup, tmp_path)
    data = bytearray(archive.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="hashes to"):
        run_restore(RestoreOptions(file=str(archive), target_url=fresh_db, force=True), SETTINGS)
    _untouched(fresh_db)


def test_manifest_from_another_backup_refused(sample_db: str, fresh_db: str, tmp_path: Path) -> None:
    first = _backup(sample_db, tmp_path / "a", jobs=1)
    with psycopg.connect(sample_db, autocommit=True) as conn:
        conn.execute('DELETE FROM "SecurityEvent" WHERE id < 10')
    second = _backup(sample_db, tmp_path / "b", jobs=1)
    shutil.copy(second.manifest, first.manifest)
    with pytest.raises(ChecksumMismatch, match="different backups"):
        run_restore(RestoreOptions(file=first.archive, target_url=fresh_db, force=True), SETTINGS)
    _untouched(fresh_db)


def test_missing_manifest_of_our_archive_refused(sample_backup: BackupResult, fresh_db: str, tmp_path: Path) -> None:
    archive = _copy_backup(sample_backup, tmp_path)
    Path(f"{archive}.manifest.json").unlink()
    with pytest.raises(PgrunbookError, match=r"manifest\.json is missing"):
        run_restore(RestoreOptions(file=str(archive), target_url=fresh_db, force=True), SETTINGS)
    _untouched(fresh_db)


def test_source_newer_than_target_refused(sample_backup: BackupResult, fresh_db: str, tmp_path: Path) -> None:
    archive = _copy_backup(sample_backup, tmp_path)
    manifest_path = Path(f"{archive}.manifest.json")
    data = json.loads(manifest_path.read_text())
    data["source"]["server_version_num"] = 190002
    data["source"]["server_version"] = "19.2"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(PgrunbookError, match="older than the backup's source"):
        run_restore(RestoreOptions(file=str(archive), target_url=fresh_db, force=True), SETTINGS)
    _untouched(fresh_db)


# --------------------------------------------------------------------------- S3
def test_restore_from_s3_parallel_archive(bucket: str, sample_db: str, fresh_db: str) -> None:
    backup = run_backup(BackupOptions(database_url=sample_db, dest=f"s3://{bucket}/b", jobs=2), SETTINGS)
    assert backup.archive.startswith("s3://") and backup.format == "directory-tar"
    result = run_restore(RestoreOptions(file=backup.archive, target_url=fresh_db, force=True, jobs=2), SETTINGS)
    assert result.sha256 == backup.sha256
    report = run_verify(VerifyOptions(database_url=fresh_db, manifest=backup.archive), SETTINGS)
    assert report.ok, report.text()


def test_s3_archive_without_sha256_refused(bucket: str, sample_db: str, fresh_db: str) -> None:
    backup = run_backup(BackupOptions(database_url=sample_db, dest=f"s3://{bucket}/b", jobs=1), SETTINGS)
    key = backup.archive.split("/", 3)[3]
    aws.client("s3").delete_object(Bucket=bucket, Key=key + ".sha256")
    with pytest.raises(ChecksumMismatch, match=r"\.sha256 is missing"):
        run_restore(RestoreOptions(file=backup.archive, target_url=fresh_db, force=True), SETTINGS)
    _untouched(fresh_db)


def test_s3_object_missing(bucket: str, fresh_db: str) -> None:
    with pytest.raises(StoreError, match="not found"):
        run_restore(RestoreOptions(file=f"s3://{bucket}/nope/db-backup-20260101-000000Z.dump", target_url=fresh_db,
                                   force=True), SETTINGS)
    _untouched(fresh_db)


class _Deny(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that denies everything (as a bucket policy or missing IAM permission does)."""

    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            b"<Message>Access Denied</Message></Error>")

    def _deny(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_HEAD = do_PUT = do_POST = _deny

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_s3_access_denied(aws_env: None, fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
        aws.reset_clients()
        with pytest.raises(StoreError, match="access denied"):
            run_restore(RestoreOptions(file="s3://locked/app/db-backup-20260101-000000Z.dump", target_url=fresh_db,
                                       force=True), SETTINGS)
    finally:
        server.shutdown()
        aws.reset_clients()
    _untouched(fresh_db)


# --------------------------------------------------------------------------- runbook files
def test_runbook_file_without_sha256_warns_and_restores(sample_db: str, fresh_db: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Given the runbook's own backup file: a .sql.gz with no .sha256 (sha256sum was not available) and no manifest
    out = tmp_path / "backups" / "db-backup-20260207-123000Z.sql.gz"
    run_backup(BackupOptions(database_url=sample_db, out=str(out)), SETTINGS)
    Path(f"{out}.sha256").unlink()
    Path(f"{out}.manifest.json").unlink()
    # When restored; Then it warns about the missing checksum and restores
    rc = main(["restore", "--file", str(out), "--target-url", fresh_db, "--force"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "sha256 is missing" in captured.err and "sha256 is missing" in captured.out
    report = run_verify(VerifyOptions(database_url=fresh_db), SETTINGS)
    assert report.ok, report.text()
    assert [c.actual for c in report.checks if c.name == 'rows "User"'] == ["200"]


def test_runbook_file_truncated_refused_even_without_sha256(sample_db: str, fresh_db: str, tmp_path: Path) -> None:
    out = tmp_path / "db.sql.gz"
    run_backup(BackupOptions(database_url=sample_db, out=str(out)), SETTINGS)
    for suffix in (".sha256", ".manifest.json"):
        Path(f"{out}{suffix}").unlink()
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(PgrunbookError, match="truncated"):
        run_restore(RestoreOptions(file=str(out), target_url=fresh_db, force=True), SETTINGS)
    _untouched(fresh_db)


# --------------------------------------------------------------------------- a failing load
STRICT_SOURCE = """
CREATE FUNCTION strict_ok(v int) RETURNS boolean LANGUAGE sql IMMUTABLE
    AS $$ SELECT current_setting('app.strict', true) IS DISTINCT FROM 'on' OR v > 0 $$;
CREATE TABLE a_first (id int PRIMARY KEY);
INSERT INTO a_first SELECT generate_series(1, 100);
CREATE TABLE z_checked (v int CHECK (strict_ok(v)));
INSERT INTO z_checked VALUES (1), (-1);
"""


@pytest.mark.parametrize("fmt", ["custom", "plain"])
def test_failed_load_names_object_and_marks_target(fmt: str, pg_server: LocalServer, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Given a backup whose data the target will reject part-way (a CHECK that the target's settings make fail)
    with new_db(pg_server, "strict") as source, new_db(pg_server) as target:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(STRICT_SOURCE)
        if fmt == "plain":
            archive = str(tmp_path / "strict.sql.gz")
            run_backup(BackupOptions(database_url=source, out=archive), SETTINGS)
        else:
            archive = _backup(source, tmp_path, jobs=1).archive
        dbname = target.rsplit("/", 1)[1]
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {dbname} SET app.strict = 'on'")
        # When restored
        rc = main(["restore", "--file", archive, "--target-url", target, "--force"])
        err = capsys.readouterr().err
        # Then it exits non-zero naming the object that failed, and the target is marked failed
        assert rc == 1
        assert "z_checked" in err and "check constraint" in err
        assert (db_comment(target) or "").startswith(MARK_FAILED)
        # And verify refuses the copy
        report = run_verify(VerifyOptions(database_url=target), SETTINGS)
        assert not report.ok
        assert any(c.name == "restore mark" and not c.ok for c in report.checks)


def test_failed_restore_raises_restore_failed(pg_server: LocalServer, tmp_path: Path) -> None:
    with new_db(pg_server, "strict") as source, new_db(pg_server) as target:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(STRICT_SOURCE)
        archive = _backup(source, tmp_path, jobs=2).archive
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {target.rsplit('/', 1)[1]} SET app.strict = 'on'")
        with pytest.raises(RestoreFailed, match=r"z_checked.*violates check constraint"):
            run_restore(RestoreOptions(file=archive, target_url=target, force=True, jobs=2), SETTINGS)


# --------------------------------------------------------------------------- other servers
@pytest.fixture(scope="module")
def server_without_extensions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A PostgreSQL 18 server whose installation lacks citext and hstore."""
    root = tmp_path_factory.mktemp("noext")
    install = root / "pg"
    shutil.copytree(server_binaries().parent, install, symlinks=True)
    for control in (install / "share" / "extension").glob("*"):
        if control.name.startswith(("citext", "hstore")):
            control.unlink()
    with LocalServer.running(root / "data", bin_dir=install / "bin") as server:
        yield server


def test_missing_extensions_all_reported(pg_server: LocalServer, server_without_extensions: LocalServer,
                                         tmp_path: Path) -> None:
    with new_db(pg_server, "ext") as source, new_db(server_without_extensions) as target:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION citext; CREATE EXTENSION hstore; "
                         "CREATE TABLE t (a citext, b hstore)")
        backup = _backup(source, tmp_path, jobs=1)
        with pytest.raises(PgrunbookError, match="lacks extensions the backup uses: citext, hstore"):
            run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True), SETTINGS)
        _untouched(target)


def test_missing_roles_refused_then_no_owner_reports_them(pg_server: LocalServer,
                                                          server_without_extensions: LocalServer,
                                                          tmp_path: Path) -> None:
    # Given a backup whose objects are granted to a role the other server lacks (and no extension it lacks)
    with new_db(pg_server, "roles") as source, new_db(server_without_extensions) as target:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("DO $$ BEGIN CREATE ROLE fidelity_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN "
                         "NULL; END $$; CREATE TABLE t (i int); INSERT INTO t VALUES (1), (2); "
                         "GRANT SELECT ON t TO fidelity_reader")
        backup = _backup(source, tmp_path, jobs=1)
        # When restored as is: refused, naming the role
        with pytest.raises(PgrunbookError, match="lacks role fidelity_reader"):
            run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True), SETTINGS)
        _untouched(target)
        # When restored with --no-owner: done, and the missing role is reported
        result = run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True, no_owner=True),
                             SETTINGS)
        assert result.missing_roles == ["fidelity_reader"]
        assert any("fidelity_reader" in w for w in result.warnings)
        assert run_verify(VerifyOptions(database_url=target, manifest=backup.archive), SETTINGS).ok


def test_ownership_and_grants_restored(pg_server: LocalServer, tmp_path: Path) -> None:
    # Given the fidelity database (grants to fidelity_reader, a large object granted to it)
    source = create_fidelity_db(pg_server)
    try:
        backup = _backup(source, tmp_path, jobs=2)
        with new_db(pg_server) as target:
            run_restore(RestoreOptions(file=backup.archive, target_url=target, force=True), SETTINGS)
            with psycopg.connect(target, autocommit=True) as conn:
                grants = conn.execute("SELECT has_table_privilege('fidelity_reader', 'app.note', 'SELECT'), "
                                      "has_column_privilege('fidelity_reader', 'app.account', 'email', 'SELECT'), "
                                      "has_column_privilege('fidelity_reader', 'app.account', 'mood', 'SELECT'), "
                                      "has_largeobject_privilege('fidelity_reader', 424243, 'SELECT')").fetchone()
                rls = conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = 'app.note'::regclass").fetchone()
            assert grants == (True, True, False, True)
            assert rls == (True,)
            assert fingerprints(target)["large objects"] == fingerprints(source)["large objects"]
    finally:
        drop_db(source)


def test_runbook_file_no_owner_on_server_without_roles(pg_server: LocalServer,
                                                        server_without_extensions: LocalServer,
                                                        tmp_path: Path) -> None:
    # Given a runbook .sql.gz (no manifest, no .sha256) whose objects are owned by / granted to a role the
    # other server lacks
    with new_db(pg_server, "plainroles") as source, new_db(server_without_extensions) as target, \
            new_db(server_without_extensions) as target2:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("DO $$ BEGIN CREATE ROLE fidelity_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN "
                         "NULL; END $$; CREATE TABLE t (i int, s text); "
                         "INSERT INTO t VALUES (1, 'ALTER TABLE x OWNER TO nobody;'), (2, 'GRANT ALL ON t TO x;'); "
                         "ALTER TABLE t OWNER TO fidelity_reader; GRANT SELECT ON t TO fidelity_reader")
        out = tmp_path / "db.sql.gz"
        run_backup(BackupOptions(database_url=source, out=str(out)), SETTINGS)
        for suffix in (".sha256", ".manifest.json"):
            Path(f"{out}{suffix}").unlink()
        # When restored as is: psql stops at the missing role, the load is rolled back and the target marked
        with pytest.raises(RestoreFailed, match="fidelity_reader"):
            run_restore(RestoreOptions(file=str(out), target_url=target, force=True), SETTINGS)
        assert user_relations(target) == [] and (db_comment(target) or "").startswith(MARK_FAILED)
        # When restored with --no-owner: ownership and grants are skipped, the data (even lines that look
        # like ALTER ... OWNER / GRANT inside COPY data) arrives intact
        result = run_restore(RestoreOptions(file=str(out), target_url=target2, force=True, no_owner=True), SETTINGS)
        assert any("grants are both skipped" in w for w in result.warnings)
        with psycopg.connect(target2, autocommit=True) as conn:
            rows = conn.execute("SELECT i, s FROM t ORDER BY i").fetchall()
        assert rows == [(1, "ALTER TABLE x OWNER TO nobody;"), (2, "GRANT ALL ON t TO x;")]
