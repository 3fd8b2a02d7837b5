"""Backups against a real PostgreSQL server: folder and S3 destinations, the runbook's
.sql.gz format, consistency under concurrent writes."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import psycopg
import pytest

from pgrunbook import aws
from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.manifest import Manifest
from pgrunbook.pgtools import find_tool
from pgrunbook.settings import Settings
from tests.conftest import cli_env, run_cli
from tests.fixtures.processes import wait_until


def _only_archive(folder: Path, suffix: str) -> Path:
    found = [p for p in folder.rglob(f"*{suffix}") if p.name.endswith(suffix)]
    assert len(found) == 1, found
    return found[0]


def _rows_in_archive(archive: Path) -> dict[str, int]:
    """Rows per table as stored in a custom-format archive (COPY blocks of its data-only SQL)."""
    pg_restore = find_tool("pg_restore")
    script = subprocess.run([str(pg_restore.path), "--data-only", "--file=-", str(archive)],
                            capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = {}
    current = None
    for line in script.splitlines():
        match = re.match(r"^COPY (\S+) \(", line)
        if match:
            current = match.group(1).replace('"', "")
            counts[current] = 0
        elif line == "\\.":
            current = None
        elif current is not None:
            counts[current] += 1
    return counts


def test_backup_to_folder_writes_archive_sha256_and_manifest(sample_db: str, tmp_path: Path) -> None:
    # Given a runbook-shaped database
    # When it is backed up to a folder through the CLI with --json
    proc = run_cli("backup", "--database-url", sample_db, "--to", str(tmp_path), "--kind", "scheduled", "--json")
    # Then stdout is one JSON object describing the backup
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"archive", "manifest", "sha256", "bytes", "tables", "rows", "seconds"} <= set(out)
    archive = Path(out["archive"])
    assert re.fullmatch(r"db-backup-\d{8}-\d{6}Z\.dump(\.tar)?", archive.name)
    assert archive.parent.relative_to(tmp_path).parts[:2] == (sample_db.rsplit("/", 1)[1], "scheduled")
    # and the archive hashes to what .sha256 and the manifest say
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert out["sha256"] == digest
    assert Path(f"{archive}.sha256").read_text() == f"{digest}  {archive.name}\n"
    manifest = json.loads(Path(out["manifest"]).read_text())
    assert manifest["archive"]["sha256"] == digest and manifest["archive"]["bytes"] == archive.stat().st_size
    assert Manifest(manifest).tables == {"public.Job": 600, "public.SecurityEvent": 1000, "public.User": 200,
                                         "public._prisma_migrations": 2}
    assert out["rows"] == 1802 and out["tables"] == 4
    assert [m["name"] for m in manifest["prisma"]["migrations"]] == ["20260101000000_init",
                                                                     "20260115000000_security_events"]
    assert Manifest(manifest).sequences["public.User_id_seq"] == 200
    assert manifest["kind"] == "scheduled"
    assert manifest["source"]["system_identifier"]
    # and no password anywhere in what was written or printed
    password = sample_db.split(":")[2].split("@")[0]
    assert password not in Path(out["manifest"]).read_text()
    assert password not in proc.stdout + proc.stderr
    assert "***" in manifest["source"]["url"]
    # and verify-backup accepts it
    verified = run_cli("verify-backup", str(archive))
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_flipping_one_byte_makes_verify_backup_fail_naming_the_mismatch(sample_db: str, tmp_path: Path,
                                                                       jobs: str) -> None:
    # Given a good backup (streaming custom format with --jobs 1, parallel directory-tar with --jobs 2)
    proc = run_cli("backup", "--database-url", sample_db, "--to", str(tmp_path), "--jobs", jobs, "--json")
    assert proc.returncode == 0, proc.stderr
    archive = Path(json.loads(proc.stdout)["archive"])
    assert run_cli("verify-backup", str(archive)).returncode == 0
    # When one byte in the middle of the archive is flipped
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    # Then verify-backup exits 1 and names the sha256 mismatch
    broken = run_cli("verify-backup", str(archive))
    assert broken.returncode == 1
    assert "sha256: mismatch" in broken.stdout


def test_backup_to_s3_streams_a_multipart_upload_with_sse(sample_db: str, bucket: str) -> None:
    # Given a bucket on a local S3 reached through AWS_ENDPOINT_URL
    # When the CLI backs up to it
    proc = run_cli("backup", "--database-url", sample_db, "--to", f"s3://{bucket}/prod", "--jobs", "1", "--json",
                   env=cli_env())
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # Then archive, .sha256 and manifest sit side by side under the key layout of docs/architecture.md (keys.py)
    assert out["archive"].startswith(f"s3://{bucket}/prod/")
    key = out["archive"].split("/", 3)[3]
    assert re.fullmatch(r"prod/app_\w+/manual/\d{4}/\d{2}/db-backup-\d{8}-\d{6}Z\.dump", key)
    s3 = aws.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    database = key.split("/")[1]
    # and the database's backup index (backup_index.py) now lists it
    assert keys == {key, f"{key}.sha256", f"{key}.manifest.json", f"prod/{database}/_index/backups.json"}
    index = json.loads(s3.get_object(Bucket=bucket, Key=f"prod/{database}/_index/backups.json")["Body"].read())
    assert key.removeprefix(f"prod/{database}/") in json.dumps(index)
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == out["sha256"]
    # and verify-backup reads it back from S3
    verified = run_cli("verify-backup", out["archive"], "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"] is True


def test_s3_backup_uses_sse_kms_when_a_key_is_configured(sample_db: str, bucket: str) -> None:
    key_id = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    proc = run_cli("backup", "--database-url", sample_db, "--to", f"s3://{bucket}", "--json",
                   env=cli_env(PGRUNBOOK_KMS_KEY_ID=key_id))
    assert proc.returncode == 0, proc.stderr
    key = json.loads(proc.stdout)["archive"].split("/", 3)[3]
    head = aws.client("s3").head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]


def test_runbook_sql_gz_checks_with_sha256sum_and_restores_with_psql(sample_db: str, fresh_db: str,
                                                                    tmp_path: Path) -> None:
    # Given the runbook's own format asked for with --out
    proc = run_cli("backup", "--database-url", sample_db, "--out", "backups/pre.sql.gz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # Then `sha256sum -c` accepts the checksum file, as the runbook says
    check = subprocess.run(["sha256sum", "-c", "backups/pre.sql.gz.sha256"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # and `gunzip -c … | psql` restores it into an empty database
    psql = find_tool("psql")
    pipeline = f"gunzip -c backups/pre.sql.gz | '{psql.path}' -v ON_ERROR_STOP=1 -q \"$NEW_DATABASE_URL\""
    restore = subprocess.run(pipeline, shell=True, cwd=tmp_path, capture_output=True, text=True,  # noqa: S602
                             env=cli_env(NEW_DATABASE_URL=fresh_db))
    assert restore.returncode == 0, restore.stderr
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute('SELECT count(*) FROM "User"').fetchone() == (200,)
        assert conn.execute('SELECT count(*) FROM "SecurityEvent"').fetchone() == (1000,)
    assert gzip.decompress((tmp_path / "backups/pre.sql.gz").read_bytes()).startswith(b"--\n-- PostgreSQL")


@pytest.mark.parametrize(("jobs", "method"), [(1, "snapshot"), (2, "archive")])
def test_counts_in_the_manifest_equal_the_rows_in_the_archive_under_concurrent_writes(
        fresh_db: str, tmp_path: Path, jobs: int, method: str) -> None:
    # Given a table big enough that the dump takes a while, and a writer inserting all along
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO events(body) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 300000) g")
        conn.execute("CREATE TABLE audit (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
    stop = threading.Event()
    inserted = [0]

    def writer() -> None:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO events(body) VALUES ('x')")
                conn.execute("INSERT INTO audit DEFAULT VALUES")
                inserted[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_until(lambda: inserted[0] > 0, "the writer to write")
        before = inserted[0]
        # When a backup runs meanwhile: streamed (counts with count(*) in its snapshot) or parallel (counts read
        # from its own data files, rowcount.py)
        result = run_backup(BackupOptions(database_url=fresh_db, dest=str(tmp_path / "b"), jobs=jobs),
                            Settings.from_env({"PGRUNBOOK_COUNT_METHOD": method}))
        after = inserted[0]
    finally:
        stop.set()
        thread.join()
    assert after > before, "the writer must have written during the backup"
    # Then the manifest's counts are exactly the rows the archive holds
    archive = Path(result.archive)
    if result.format == "directory-tar":
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "x", filter="data")
        archive = tmp_path / "x"
    archived = _rows_in_archive(archive)
    manifest = Manifest(result.manifest_data).tables
    assert manifest == {"public.events": archived["public.events"], "public.audit": archived["public.audit"]}
    # and they are a snapshot: the live table has moved on since
    with psycopg.connect(fresh_db) as conn:
        live = conn.execute("SELECT count(*) FROM events").fetchone()
    assert live is not None and live[0] > manifest["public.events"]


def test_list_shows_backups_newest_first(sample_db: str, tmp_path: Path) -> None:
    first = run_cli("backup", "--database-url", sample_db, "--to", str(tmp_path), "--kind", "scheduled", "--json")
    second = run_cli("backup", "--database-url", sample_db, "--to", str(tmp_path), "--kind", "pre-migration",
                     "--json")
    assert first.returncode == 0 and second.returncode == 0
    listed = run_cli("list", "--from", str(tmp_path), "--json")
    assert listed.returncode == 0, listed.stderr
    backups = json.loads(listed.stdout)["backups"]
    assert [b["archive"] for b in backups] == [json.loads(second.stdout)["archive"],
                                               json.loads(first.stdout)["archive"]]
    assert [b["kind"] for b in backups] == ["pre-migration", "scheduled"]
    assert all(b["tables"] == 4 and b["rows"] == 1802 for b in backups)
    text = run_cli("list", "--from", str(tmp_path)).stdout
    assert "pre-migration" in text.splitlines()[1] and "scheduled" in text.splitlines()[2]


def test_copy_of_the_tools_is_not_needed_for_the_pgtools_dir(tmp_path: Path) -> None:
    # the packaged tools carry zstd and OpenSSL support (needed for RDS over TLS)
    pg_dump = find_tool("pg_dump")
    assert pg_dump.major >= 18
    libs = subprocess.run(["ldd", str(pg_dump.path)], capture_output=True, text=True).stdout
    assert "libzstd" in libs and "libssl" in libs
    assert shutil.which("sha256sum")


def test_the_password_reaches_pg_dump_through_the_environment_not_argv(sample_db: str, tmp_path: Path) -> None:
    password = sample_db.split(":")[2].split("@")[0]
    seen: list[list[str]] = []

    def capture(proc: subprocess.Popen[bytes]) -> None:
        seen.append([str(a) for a in proc.args])  # type: ignore[union-attr]
        seen.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace").split("\0"))

    run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path), jobs=1), Settings.from_env({}),
               on_dump_started=capture)
    assert seen and all(password not in arg for argv in seen for arg in argv)


@pytest.mark.parametrize(("compress", "expected"), [("gzip", "gzip:1"), ("none", "none"), ("zstd", "zstd:1")])
def test_each_compression_gives_a_verifiable_archive(sample_db: str, tmp_path: Path, compress: str,
                                                     expected: str) -> None:
    result = run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path), compress=compress, jobs=1),
                        Settings.from_env({}))
    assert result.manifest_data["archive"]["compression"] == expected
    assert run_cli("verify-backup", result.archive).returncode == 0
