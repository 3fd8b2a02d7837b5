"""The restore drill end to end: latest backup -> fresh target -> restore -> verify -> report -> tear down."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.cli import main
from pgrunbook.drill import DrillOptions, run_drill
from pgrunbook.pgserver import LocalServer
from pgrunbook.settings import Settings
from tests.fixtures.restore_helpers import drop_db

SETTINGS = Settings.from_env({})
pytestmark = pytest.mark.usefixtures("clean_env")


def _drill_databases(server: LocalServer) -> list[str]:
    with psycopg.connect(server.url(), autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgrunbook_drill_%'").fetchall()
    return [str(r[0]) for r in rows]


def test_drill_database_provisioner_cli(sample_db: str, pg_server: LocalServer, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Given two backups in a folder (the drill must take the latest)
    run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path), jobs=1), SETTINGS)
    latest = run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path), jobs=2), SETTINGS)
    # When the drill runs on the existing server
    rc = main(["drill", "--from", str(tmp_path), "--server-url", pg_server.url(), "--json"])
    out = json.loads(capsys.readouterr().out)
    # Then it verified the latest backup, reports timings, and dropped the target
    assert rc == 0, out
    assert out["verified"] and out["backup"] == latest.archive and out["provisioner"] == "database"
    assert {"provision", "download", "restore", "analyze", "verify", "teardown", "total"} <= set(out["timings"])
    assert out["seconds_per_gb"] > 0 and out["verify"]["ok"]
    assert "***" in out["target"]["url"]
    assert _drill_databases(pg_server) == []


def test_drill_local_instance_restore_tuned_then_reset(sample_db: str, tmp_path: Path) -> None:
    backup = run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path / "b"), jobs=2), SETTINGS)
    report = run_drill(DrillOptions(backup=backup.archive, provisioner="local-instance",
                                    work_dir=str(tmp_path / "w")), SETTINGS)
    assert report.verified, report.text()
    assert report.target["details"]["settings"] == "production"
    assert "restore drill: VERIFIED" in report.text()
    assert not Path(report.target["details"]["data_dir"]).exists()  # torn down


def test_drill_keep_leaves_target(sample_db: str, pg_server: LocalServer, tmp_path: Path) -> None:
    run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path), jobs=1), SETTINGS)
    report = run_drill(DrillOptions(dest=str(tmp_path), server_url=pg_server.url(), keep=True), SETTINGS)
    try:
        assert report.verified and report.kept
        assert _drill_databases(pg_server) == [report.target["name"]]
    finally:
        drop_db(pg_server.url(report.target["name"]))


def test_drill_on_damaged_backup_fails_and_cleans_up(sample_db: str, pg_server: LocalServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    backup = run_backup(BackupOptions(database_url=sample_db, dest=str(tmp_path), jobs=1), SETTINGS)
    archive = Path(backup.archive)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    rc = main(["drill", "--from", str(tmp_path), "--server-url", pg_server.url()])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.startswith("restore drill: FAILED") and "hashes to" in out
    assert _drill_databases(pg_server) == []


def test_drill_without_backups_fails(tmp_path: Path, pg_server: LocalServer) -> None:
    report = run_drill(DrillOptions(dest=str(tmp_path), server_url=pg_server.url()), SETTINGS)
    assert not report.verified and "no backup found" in (report.error or "")


def test_drill_fidelity_into_fresh_instance(pg_server: LocalServer, tmp_path: Path) -> None:
    """The fidelity fixture through a drill into a fresh, restore-tuned (no fsync during the load) instance that
    is then restarted with production settings: schema text and fingerprints identical, roles recreated."""
    from pgrunbook.provision.local_instance import LocalInstanceProvisioner
    from tests.fixtures.restore_helpers import create_fidelity_db, fingerprints, schema_text

    source = create_fidelity_db(pg_server)
    provisioner = LocalInstanceProvisioner(tmp_path / "i")
    try:
        backup = run_backup(BackupOptions(database_url=source, dest=str(tmp_path / "b"), jobs=2), SETTINGS)
        report = run_drill(DrillOptions(backup=backup.archive, keep=True), SETTINGS, provisioner=provisioner)
        assert report.verified, report.text()
        assert report.target["details"]["roles_created"] == ["fidelity_reader"]
        target = provisioner._servers[report.target["name"]].url(report.target["url"].rsplit("/", 1)[1])
        assert schema_text(target) == schema_text(source)
        assert fingerprints(target) == fingerprints(source)
    finally:
        for name in list(provisioner._servers):
            provisioner.destroy_server(name)
        drop_db(source)


def test_drill_latest_from_s3(bucket: str, sample_db: str, pg_server: LocalServer) -> None:
    run_backup(BackupOptions(database_url=sample_db, dest=f"s3://{bucket}/backups", kind="scheduled", jobs=1),
               SETTINGS)
    report = run_drill(DrillOptions(dest=f"s3://{bucket}/backups", server_url=pg_server.url()), SETTINGS)
    assert report.verified, report.text()
    assert (report.backup or "").startswith(f"s3://{bucket}/backups/") and "/scheduled/" in (report.backup or "")
    assert _drill_databases(pg_server) == []
