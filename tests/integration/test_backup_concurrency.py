"""Several backups of one database to one destination at the same time: each ends as its own
verifiable archive (or fails with exit 1 and one line), never as an archive another run
overwrote or mixed into.

The runs are real `pgrunbook backup` processes. So that they all want the same archive name,
each one's clock is pinned to the same second (the only thing the launcher changes), and they
start together: each imports pgrunbook, says "ready", and waits for one "go" sent to all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgrunbook import aws
from tests.conftest import cli_env, run_cli

RUNS = 3
NOW = "2026-01-08T12:34:56+00:00"

LAUNCHER = """
import datetime as _dt, os, sys
from pgrunbook import backup
from pgrunbook.cli import main

_fixed = _dt.datetime.fromisoformat(os.environ["PINNED_NOW"])

class _PinnedClock(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return _fixed

backup.datetime = _PinnedClock
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(sys.argv[1:]))
"""


def _run_together(args: list[str], runs: int = RUNS) -> list[subprocess.CompletedProcess[str]]:
    env = cli_env(PINNED_NOW=NOW)
    procs = [subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(runs)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n", proc.communicate(timeout=30)
        for proc in procs:  # all of them are waiting: let them go at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()  # communicate() closes it
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _check_results(results: list[subprocess.CompletedProcess[str]]) -> list[str]:
    """Every run either succeeded with its own archive that verifies, or failed with exit 1 and one line."""
    archives = []
    for proc in results:
        assert "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode == 1:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pgrunbook: error:")]
            assert len(errors) == 1, proc.stderr
            assert "run with -v for details" not in errors[0], f"an unmapped error: {errors[0]}"
            continue
        assert proc.returncode == 0, (proc.returncode, proc.stderr)
        out = json.loads(proc.stdout)
        archives.append(out["archive"])
        verify = run_cli("verify-backup", out["archive"], "--json")
        assert verify.returncode == 0, (out["archive"], verify.stdout, verify.stderr)
        report = json.loads(verify.stdout)
        assert report["sha256"] == out["sha256"], "the archive is not the bytes this run wrote"
    assert len(set(archives)) == len(archives), f"two runs reported the same archive: {archives}"
    return archives


def test_three_backups_at_once_to_a_folder_each_end_as_their_own_archive(app_db: str, tmp_path: Path) -> None:
    # Given three backups of one database to one folder, started together in the same second
    dest = tmp_path / "backups"
    results = _run_together(["backup", "--database-url", app_db, "--to", str(dest), "--jobs", "1", "--json"])
    # Then each one is a distinct archive that verifies against its own .sha256 and manifest
    archives = _check_results(results)
    assert len(archives) == RUNS, [p.stderr for p in results]
    assert sorted(Path(a).name for a in archives) == ["db-backup-20260108-123456Z.2.dump",
                                                      "db-backup-20260108-123456Z.3.dump",
                                                      "db-backup-20260108-123456Z.dump"]
    # and the folder holds exactly those archives with their companions: no partial file, nothing mixed
    names = sorted(p.name for p in dest.rglob("*") if p.is_file() and "_index" not in p.parts)
    assert names == sorted(n for a in archives for n in (Path(a).name, f"{Path(a).name}.manifest.json",
                                                         f"{Path(a).name}.sha256"))
    # and the database's backup index (written under a lock on a folder) records all three
    (index,) = dest.glob("*/_index/backups.json")
    assert all(Path(a).name in index.read_text() for a in archives)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_three_backups_at_once_to_one_s3_prefix_each_end_as_their_own_archive(app_db: str, bucket: str,
                                                                              jobs: str) -> None:
    # Given three backups of one database to one S3 prefix, started together in the same second
    results = _run_together(["backup", "--database-url", app_db, "--to", f"s3://{bucket}/prod", "--jobs", jobs,
                             "--json"])
    # Then none replaced another: each is its own archive that verifies
    archives = _check_results(results)
    assert len(archives) == RUNS, [p.stderr for p in results]
    # and the bucket holds exactly those archives with their companions: no claim object, no upload left
    s3 = aws.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])
                  if "/_index/" not in o["Key"])
    expected = sorted(a.removeprefix(f"s3://{bucket}/") + suffix for a in archives
                      for suffix in ("", ".manifest.json", ".sha256"))
    assert keys == expected
    # and list shows all three (moto's conditional writes are not atomic across threads, so the index may have
    # lost a racing entry there; list then reads that manifest: the listing is the truth, backup_index.py)
    listed = run_cli("list", "--from", f"s3://{bucket}/prod", "--json", env=cli_env())
    assert sorted(b["archive"] for b in json.loads(listed.stdout)["backups"]) == sorted(archives)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
