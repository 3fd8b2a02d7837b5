"""A full disk while a backup writes its archive, its .sha256 or its manifest: one line naming the
path and the operation, exit 1, and nothing left behind (no .partial, no half-written companion,
no archive without its manifest).

The disk is a real small tmpfs (mounted for the test; skipped where mounting is not permitted),
filled with a filler file to the free space that makes each case run out at the intended file."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli

PAGE = 4096  # tmpfs allocates whole pages; directories take none


@pytest.fixture()
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def _free(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


def _leave_free(fs: Path, free: int) -> None:
    """Fill fs with a filler file until exactly `free` bytes (whole pages) are left."""
    assert free % PAGE == 0
    with open(fs / "filler", "wb") as fh:
        fh.write(b"\0" * (_free(fs) - free))
    assert _free(fs) == free


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def _files(fs: Path) -> list[str]:
    return sorted(p.relative_to(fs).as_posix() for p in fs.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def archive_size(app_db: str, tmp_path_factory: pytest.TempPathFactory) -> int:
    """The size of this database's archive (the same bytes every time: same data, same options)."""
    proc = run_cli("backup", "--database-url", app_db, "--to", str(tmp_path_factory.mktemp("probe")),
                   "--jobs", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    size = int(json.loads(proc.stdout)["bytes"])
    assert size > 2 * PAGE, "the archive must span several pages for the mid-archive case"
    return size


@pytest.mark.parametrize(("case", "failing_file"), [
    ("archive", r"db-backup-\d{8}-\d{6}Z\.dump"),  # room for half of the archive
    ("sha256", r"db-backup-\d{8}-\d{6}Z\.dump\.sha256"),  # room for the archive only
    ("manifest", r"db-backup-\d{8}-\d{6}Z\.dump\.manifest\.json"),  # room for the archive and its .sha256
])
def test_disk_full_fails_in_one_line_naming_the_file_and_leaves_nothing(
        app_db: str, small_fs: Path, archive_size: int, case: str, failing_file: str) -> None:
    # Given a destination on a disk with room for only part of the backup
    free = {"archive": _pages(archive_size) // 2 // PAGE * PAGE, "sha256": _pages(archive_size),
            "manifest": _pages(archive_size) + PAGE}[case]
    _leave_free(small_fs, free)
    # When a backup is written there
    proc = run_cli("backup", "--database-url", app_db, "--to", str(small_fs / "backups"), "--jobs", "1")
    # Then it fails with exit 1 and one line naming the operation and the file, no raw OSError
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pgrunbook: error:")]
    assert len(errors) == 1, proc.stderr
    pattern = rf"pgrunbook: error: cannot write {small_fs}/backups/\S+/{failing_file}: No space left on device"
    assert re.fullmatch(pattern, errors[0]), errors[0]
    # and nothing is left but the filler: no archive, no .partial, no half .sha256 or manifest
    assert _files(small_fs) == ["filler"]


def test_disk_full_with_out_leaves_no_partial_file(app_db: str, small_fs: Path, archive_size: int) -> None:
    # Given --out on a disk with room for the archive but not its .sha256
    _leave_free(small_fs, _pages(archive_size))
    out = small_fs / "app.dump"
    proc = run_cli("backup", "--database-url", app_db, "--out", str(out))
    # Then one line names the .sha256, and the archive is removed with it
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines()[-1] == (f"pgrunbook: error: cannot write {out}.sha256: "
                                                    "No space left on device"), proc.stderr
    assert _files(small_fs) == ["filler"]
