"""Progress of the long commands as people and logs see it: lines with a percentage on stderr when it is not a
terminal (a stalled backup keeps saying where it is), a rich bar on a terminal (a pty), stdout one JSON object
with --json; restore's row progress read from the target's progress views while a COPY runs."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import psycopg

from pgrunbook import progress
from pgrunbook.backup import BackupOptions, BackupResult, run_backup
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.pgserver import LocalServer
from pgrunbook.restore.run import _RowsLoaded
from pgrunbook.settings import Settings
from tests.conftest import cli_env, run_cli
from tests.integration.test_handlers import event, handler, stack  # noqa: F401 (the handlers' stack fixture)

SETTINGS = Settings.from_env({})
PGRUNBOOK = str(Path(sys.executable).parent / "pgrunbook")


def _one_json(stdout: str) -> dict[str, Any]:
    """stdout is exactly one JSON object (json.loads refuses anything before or after it)."""
    data = json.loads(stdout)
    assert isinstance(data, dict)
    return data


def _backup(url: str, dest: Path) -> BackupResult:
    return run_backup(BackupOptions(database_url=url, dest=str(dest), jobs=1), SETTINGS, progress=progress.Silent())


def test_a_stalled_backup_keeps_printing_progress_lines(app_db: str, tmp_path: Path) -> None:
    # Given a session holding a lock the backup needs (the backup cannot finish until it is released)
    env = cli_env(PGRUNBOOK_PROGRESS_SECONDS="0.05")
    for name in ("DATABASE_URL", "PGRUNBOOK_BACKUP_DEST"):
        env.pop(name, None)
    with psycopg.connect(app_db) as blocker:
        blocker.execute('LOCK TABLE "Job" IN ACCESS EXCLUSIVE MODE')
        proc = subprocess.Popen([PGRUNBOOK, "backup", "--database-url", app_db, "--to", str(tmp_path), "--jobs", "1",
                                 "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                stdin=subprocess.DEVNULL)
        lines: list[str] = []
        seen = threading.Event()

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if re.match(r"pgrunbook: backup in progress: \d+% \(", line) and len(
                        [x for x in lines if "backup in progress" in x]) >= 3:
                    seen.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # When it has been stalled long enough to print several progress lines
        try:
            assert seen.wait(60), "".join(lines)
        finally:
            blocker.rollback()  # the lock goes: the backup can finish
        assert proc.stdout is not None
        stdout = proc.stdout.read()  # stderr is the reader's alone
        proc.wait(timeout=60)
        reader.join(timeout=10)
    # Then stderr had progress lines with a percentage and ETA, and stdout is the one JSON result
    assert proc.returncode == 0, "".join(lines)
    stalled = [x for x in lines if "backup in progress" in x]
    assert all("ETA" in x for x in stalled)
    assert any(re.match(r"pgrunbook: backup finished: 100% \(.+\) in \d+s", x) for x in lines), "".join(lines)
    assert _one_json(stdout)["database"]


def test_restore_verify_and_drill_print_progress_lines_and_json_stays_one_object(
        app_db: str, fresh_db: str, pg_server: LocalServer, tmp_path: Path) -> None:
    backup = _backup(app_db, tmp_path)
    env = cli_env(PGRUNBOOK_PROGRESS_SECONDS="0")
    for name in ("DATABASE_URL", "NEW_DATABASE_URL", "PGRUNBOOK_BACKUP_DEST"):
        env.pop(name, None)

    # restore: rows loaded of the manifest's exact count, then tables analysed
    r = run_cli("restore", "--file", backup.archive, "--target-url", fresh_db, "--force", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert _one_json(r.stdout)["target"]
    assert f"fetch finished: 100% ({progress.human(backup.bytes, 'bytes')} of" in r.stderr, r.stderr
    assert f"restore started ({backup.rows:,} rows expected)" in r.stderr
    assert f"restore finished: 100% ({backup.rows:,} rows of {backup.rows:,} rows)" in r.stderr, r.stderr
    assert re.search(r"analyze finished: 100% \(\d+ tables of \d+ tables\)", r.stderr), r.stderr

    # verify: tables counted of all (helper B's on_progress callback)
    r = run_cli("verify", "--database-url", fresh_db, "--manifest", backup.archive, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert _one_json(r.stdout)["ok"] is True
    assert re.search(r"verify finished: 100% \(\d+ tables of \d+ tables\)", r.stderr), r.stderr

    # drill: the restore's phases, then verify's
    r = run_cli("drill", "--backup", backup.archive, "--server-url", pg_server.url(), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert _one_json(r.stdout)["verified"] is True
    assert r.stderr.index("restore finished: 100%") < r.stderr.index("analyze finished: 100%")
    assert r.stderr.index("analyze finished: 100%") < r.stderr.index("verify finished: 100%")


def test_verify_prints_progress_lines(app_db: str, tmp_path: Path) -> None:
    backup = _backup(app_db, tmp_path)
    env = cli_env(PGRUNBOOK_PROGRESS_SECONDS="0")
    r = run_cli("verify", "--database-url", app_db, "--manifest", backup.archive, "--json", env=env)
    assert r.returncode == 0, r.stderr
    _one_json(r.stdout)
    assert re.search(r"verify in progress: \d+% \(\d+ tables of \d+ tables\)", r.stderr), r.stderr


def test_a_terminal_gets_a_bar_with_a_percentage(app_db: str, tmp_path: Path) -> None:
    # stderr is a pty (a terminal), stdout a pipe: the bar is drawn on the terminal, stdout stays one object
    master, slave = os.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="140", LINES="40")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([PGRUNBOOK, "backup", "--database-url", app_db, "--to", str(tmp_path), "--jobs", "1",
                             "--json"], stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    drawn = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end closed
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=60) == 0
    reader.join(timeout=10)
    os.close(master)
    text = drawn.decode(errors="replace")
    assert _one_json(stdout)["rows"] > 0
    assert "backup" in text and "100%" in text, text
    assert "━" in text, text  # rich's bar
    assert "backup in progress" not in text  # a bar, not lines


def test_restore_rows_come_from_the_targets_copy_progress(fresh_db: str) -> None:
    """_RowsLoaded against a real COPY in flight: rows so far from pg_stat_progress_copy, and a table whose COPY
    ended counts as complete."""
    class Expected:
        tables: ClassVar[dict[str, int]] = {"public.t": 60_000, "public.u": 10}

        @staticmethod
        def key(schema: str, name: str) -> str:
            return f"{schema}.{name}"

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int); CREATE TABLE u (i int)")
    rows = _RowsLoaded(DatabaseUrl.parse(fresh_db), Expected())  # type: ignore[arg-type]
    assert rows.total == 60_010
    with rows, psycopg.connect(fresh_db) as loader:
        with loader.cursor().copy("COPY t FROM STDIN") as copy:
            for i in range(50_000):  # more than psycopg buffers: most of it reaches the server now
                copy.write_row((i,))
            # the rows reach the server while the COPY is open; poll until the server says so
            seen = 0.0
            for _ in range(200):
                seen = rows.poll() or 0.0
                if seen > 0:
                    break
                threading.Event().wait(0.05)
            assert 0 < seen <= 50_000
            assert rows.copying == {"public.t"}
        loader.commit()
        assert rows.poll() == 60_000  # its COPY ended: the whole table is in (the manifest's count)


def test_runbook_script_restore_shows_bytes_fed(app_db: str, fresh_db: str, tmp_path: Path) -> None:
    out = tmp_path / "db.sql.gz"
    run_backup(BackupOptions(database_url=app_db, out=str(out)), SETTINGS, progress=progress.Silent())
    size = out.stat().st_size
    r = run_cli("restore", "--file", str(out), "--target-url", fresh_db, "--force", "--json",
                env=cli_env(PGRUNBOOK_PROGRESS_SECONDS="0"))
    assert r.returncode == 0, r.stderr
    _one_json(r.stdout)
    assert f"restore started ({progress.human(size, 'bytes')} expected)" in r.stderr, r.stderr
    assert re.search(r"restore finished: 100% \(.+ of .+\)", r.stderr), r.stderr


def test_migrate_shows_the_backup_then_migrations_applied(fresh_db: str, tmp_path: Path) -> None:
    from tests.integration.test_migrations import INIT, write

    mig = write(tmp_path / "migrations", {
        "20260101000000_init": INIT,
        "20260102000000_second": 'ALTER TABLE "Account" ADD COLUMN "nickname" TEXT;\n'})
    r = run_cli("migrate", "--database-url", fresh_db, "--migrations", str(mig), "--backup-to", str(tmp_path / "b"),
                "--json", env=cli_env(PGRUNBOOK_PROGRESS_SECONDS="0"))
    assert r.returncode == 0, r.stderr
    assert _one_json(r.stdout)["outcome"] == "applied"
    backup_done = re.search(r"backup (upload )?finished: 100% \(.+ of .+\)", r.stderr)  # streamed, or parallel
    assert backup_done, r.stderr
    assert "migrations finished: 100% (2 migrations of 2 migrations)" in r.stderr, r.stderr
    assert backup_done.start() < r.stderr.index("migrations finished: 100%")




def test_the_lambda_steps_log_progress_lines(stack: Any, capsys: Any, monkeypatch: Any) -> None:  # noqa: F811
    """On Lambda (no terminal, no CLI) the reporter is lines, JSON through powertools: Backup (bytes), Restore
    (rows, then tables analysed) and Verify (tables counted), each ending at 100 % of an exact total."""
    from pgrunbook.lambda_support import LocalContext

    monkeypatch.setenv("PGRUNBOOK_PROGRESS_SECONDS", "0")
    # the records themselves, whatever handlers earlier tests' powertools Loggers left on the pgrunbook loggers
    # (each bound to that test's captured stdout)
    seen: list[logging.LogRecord] = []
    collector = logging.Handler(logging.INFO)
    collector.emit = seen.append  # type: ignore[method-assign, assignment]
    progress_log = logging.getLogger("pgrunbook.progress")
    progress_log.addHandler(collector)
    monkeypatch.setattr(progress_log, "level", logging.INFO)
    monkeypatch.setattr(progress_log, "disabled", False)
    backup = handler("backup")(event("backup"), LocalContext())
    target = handler("provision")(event("provision-create"), LocalContext())
    try:
        handler("restore")(event("restore", backup=backup["archive"], target=target), LocalContext())
        report = handler("verify")(event("verify", backup=backup["archive"], target=target), LocalContext())
        assert report["ok"] is True, report["text"]
    finally:
        handler("provision")({"action": "delete", "target": target}, LocalContext())
        progress_log.removeHandler(collector)
    records = [vars(r) for r in seen]
    finished = {r["progress"]: r for r in records if r.get("progress") and r.get("percent") == 100.0}
    written = finished.get("backup") or finished.get("backup upload")  # streamed, or parallel
    assert written is not None, [r for r in records if str(r.get("progress", "")).startswith("backup")]
    assert written["done"] == written["total"] == backup["bytes"]
    assert finished["fetch"]["done"] == finished["fetch"]["total"] == backup["bytes"]  # downloaded from S3
    assert finished["restore"]["unit"] == "rows" and finished["restore"]["done"] == backup["rows"]
    assert finished["analyze"]["done"] == finished["verify"]["done"] == backup["tables"]


def test_backup_expects_the_previous_backups_size_and_a_slow_listing_never_delays_it(
        app_db: str, tmp_path: Path, monkeypatch: Any) -> None:
    from pgrunbook import backup_index
    from pgrunbook.backup import _PreviousBackup

    first = _backup(app_db, tmp_path)
    database = first.database
    previous = _PreviousBackup(str(tmp_path), database, SETTINGS)
    for _ in range(200):  # the lookup runs on its own thread: poll for its answer
        if previous.bytes is not None:
            break
        threading.Event().wait(0.05)
    assert previous.bytes == first.bytes

    # a listing that does not answer until the backup is over: the backup finishes on the estimate
    release, asked = threading.Event(), threading.Event()
    where: list[threading.Thread] = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        where.append(threading.current_thread())
        asked.set()
        release.wait(60)
        return None

    monkeypatch.setattr(backup_index, "latest_backup", slow)
    try:
        second = _backup(app_db, tmp_path)  # returns while the lookup still waits
        assert second.bytes > 0
        assert asked.wait(30)  # it was looked up, on its own thread
        assert where[0] is not threading.main_thread()
    finally:
        release.set()
