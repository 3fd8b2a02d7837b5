"""`pgrunbook demo` as a user runs it (`make demo DEMO_ARGS=--yes`): Ctrl-C in the middle leaves no process and
no server behind, and the next run in the same folder goes through to the end and says what it ran."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from pgrunbook.cli import main
from pgrunbook.demo import MACHINE_FILES, MARKER
from tests.conftest import run_cli
from tests.e2e.conftest import workdir

ROWS = "3000"


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """The pids still alive after waiting up to `timeout` for them to end."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _using(folder: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmdline and _alive(proc.info["pid"]):
            found.append(f"{proc.info['pid']}: {cmdline[:200]}")
    return found


def test_ctrl_c_leaves_nothing_behind_and_the_next_run_succeeds() -> None:
    exe = str(Path(sys.executable).parent / "pgrunbook")
    with workdir() as folder:
        proc = subprocess.Popen([exe, "demo", "--yes", "--rows", ROWS, "--workdir", str(folder)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        lines: list[str] = []
        restoring = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if "Restore  Provision" in line:
                    restoring.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert restoring.wait(180), "".join(lines)
            postmasters = [int(p.read_text().split()[0]) for p in folder.glob("servers/*/data/postmaster.pid")]
            assert len(postmasters) == 2, "".join(lines)
            started = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends (the servers run in their own sessions)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(timeout=10)
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert proc.returncode == 130, (proc.returncode, err, "".join(lines[-20:]))
        assert "interrupted by SIGINT" in err and len(err.strip().splitlines()) == 1, err
        assert _gone(postmasters + started) == []
        assert _using(folder) == []
        assert not list(folder.glob("servers/*/data/postmaster.pid"))

        # the next run in the same folder: through to the end
        done = run_cli("demo", "--yes", "--rows", ROWS, "--workdir", str(folder), timeout=300)
        assert done.returncode == 0, (done.stderr, done.stdout[-3000:])
        out = done.stdout
        for path in MACHINE_FILES.values():
            assert f"{path}" in out and f"{path}" in out.split("State machines run", 1)[1]
        assert "DONE in" in out and "every step succeeded" in out
        assert "restored copy VERIFIED" in out and "Cutover:   CUT OVER" in out
        assert "Migration: applied on the new database" in out and "20260301000000_user_display_name" in out
        assert (folder / "summary.txt").read_text().strip() == out.split("\n\n", 1)[1].strip() or \
            "DONE in" in (folder / "summary.txt").read_text()
        assert sorted(p.name for p in (folder / "executions").iterdir()) == ["1-Backup.json", "2-Restore.json",
                                                                              "3-Migrate.json"]
        assert _using(folder) == [] and not list(folder.glob("servers/*/data/postmaster.pid"))


def test_usage_errors_and_a_foreign_folder_is_never_deleted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            clean_env: None) -> None:
    assert main(["demo", "--rows", "5", "--workdir", str(tmp_path / "new")]) == 2
    assert "--rows must be between" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["demo", "--yes", "--workdir", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "is not empty and is not a pgrunbook demo folder" in err and len(err.strip().splitlines()) == 1
    assert (foreign / "notes.txt").read_text() == "keep me" and not (foreign / MARKER).exists()


def test_demo_migrations_continue_the_sample_databases_history() -> None:
    """The demo's prisma/migrations folder starts with the migrations the sample database records (same bytes,
    so the same checksums: Migrate would refuse a modified applied migration) and adds one that passes the
    strict lint gate."""
    from pgrunbook.migrations.files import read_migrations
    from pgrunbook.migrations.lint import lint_migrations
    from pgrunbook.sample import SAMPLE_MIGRATIONS, demo_migrations

    found = read_migrations(demo_migrations())
    names = [m.name for m in found]
    assert names[: len(SAMPLE_MIGRATIONS)] == list(SAMPLE_MIGRATIONS) and len(names) == len(SAMPLE_MIGRATIONS) + 1
    for name, script in SAMPLE_MIGRATIONS.items():
        assert (demo_migrations() / name / "migration.sql").read_bytes() == script.encode()
    report = lint_migrations(found[len(SAMPLE_MIGRATIONS):], "strict")
    assert not report.findings, report.text()
