"""Compatibility with the real Prisma CLI (6.19.3, run offline through the driver-adapter route
set up in tests/prisma/): pgrunbook and `prisma migrate` take turns on the same database and
agree on up-to-date, pending, failed and not-managed states.

The Node project is installed once per session (`npm ci` into tests/prisma/node_modules).
These tests are skipped only when the npm registry cannot be reached (or npm is not
installed); any other installation failure fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pgrunbook.cli import main
from pgrunbook.migrations import LOCK_KEY

from ..conftest import project_root
from .test_migrations import FUNC, INIT, rows, write

# the first test also pays for the one-time `npm ci` (about 20 s here, more on a cold cache)
pytestmark = pytest.mark.timeout(900)

PRISMA_DIR = project_root() / "tests" / "prisma"
PRISMA_VERSION = "6.19.3"
NETWORK_ERRORS = ("ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN", "ECONNRESET", "ENETUNREACH",
                  "network", "getaddrinfo", "socket hang up", "proxy")


@dataclass(frozen=True)
class Prisma:
    node: str
    cli_js: Path

    def run(self, database_url: str, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": database_url, "CHECKPOINT_DISABLE": "1", "PRISMA_HIDE_UPDATE_MESSAGE": "1",
               "NO_COLOR": "1", "FORCE_COLOR": "0",
               "NODE_OPTIONS": f"--require {PRISMA_DIR / 'unref-timers.cjs'}"}
        return subprocess.run(
            [self.node, str(self.cli_js), *args, "--config", str(PRISMA_DIR / "prisma.config.ts"),
             "--schema", str(project / "schema.prisma")],
            cwd=PRISMA_DIR, env=env, capture_output=True, text=True, timeout=120, check=False)


def _installed() -> bool:
    package = PRISMA_DIR / "node_modules" / "prisma" / "package.json"
    adapter = PRISMA_DIR / "node_modules" / "@prisma" / "adapter-pg" / "package.json"
    return package.is_file() and adapter.is_file() and json.loads(package.read_text())["version"] == PRISMA_VERSION


@pytest.fixture(scope="session")
def prisma() -> Prisma:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("npm is not installed here, so the npm registry is unreachable: the Prisma CLI cannot be installed")
    if not _installed():
        proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=PRISMA_DIR,
                              capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            text = proc.stderr + proc.stdout
            ping = subprocess.run([npm, "ping"], cwd=PRISMA_DIR, capture_output=True, text=True, timeout=120,
                                  check=False)
            if ping.returncode != 0 or any(marker in text for marker in NETWORK_ERRORS):
                pytest.skip(f"the npm registry is unreachable (npm ci failed: {text.strip().splitlines()[-1:]}), "
                            "so the Prisma CLI could not be installed")
            pytest.fail(f"npm ci in {PRISMA_DIR} failed although the registry is reachable:\n{text[-2000:]}")
    assert _installed()
    return Prisma(node=node, cli_js=PRISMA_DIR / "node_modules" / "prisma" / "build" / "index.js")


def project(root: Path, migrations: dict[str, str]) -> Path:
    """A Prisma project: schema.prisma with migrations/ beside it (Prisma's layout)."""
    write(root / "migrations", migrations)
    shutil.copy(PRISMA_DIR / "schema.prisma", root / "schema.prisma")
    return root


def ours(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_prisma_uses_the_same_lock_key(prisma: Prisma) -> None:
    engine = (prisma.cli_js.parent / "schema_engine_bg.wasm").read_bytes()
    assert f"SELECT pg_advisory_lock({LOCK_KEY})".encode() in engine


def test_migrated_by_pgrunbook_is_up_to_date_for_prisma(prisma: Prisma, fresh_db: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    proj = project(tmp_path, {"20260101000000_init": INIT, "20260102000000_func": FUNC})
    mig = str(proj / "migrations")
    code, _, err = ours(capsys, "migrate", "--database-url", fresh_db, "--migrations", mig, "--skip-backup",
                        "--reason", "test")
    assert code == 0, err
    done = prisma.run(fresh_db, proj, "migrate", "status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Database schema is up to date!" in done.stdout

    # pending: both say so, naming it
    write(proj / "migrations", {
        "20260103000000_nick": 'ALTER TABLE "Account" ADD COLUMN "nick" TEXT;\n',
        # alone in its migration, a CONCURRENTLY statement runs under both tools
        "20260104000000_nick_idx": 'CREATE INDEX CONCURRENTLY "Account_nick_idx" ON "Account"("nick");\n'})
    assert ours(capsys, "migrate-status", "--database-url", fresh_db, "--migrations", mig)[0] == 1
    pending = prisma.run(fresh_db, proj, "migrate", "status")
    assert pending.returncode == 1 and "have not yet been applied" in pending.stdout
    assert "20260103000000_nick" in pending.stdout

    # and Prisma can take its turn on a database pgrunbook manages
    deployed = prisma.run(fresh_db, proj, "migrate", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert ours(capsys, "migrate-status", "--database-url", fresh_db, "--migrations", mig)[0] == 0
    assert [r["migration_name"] for r in rows(fresh_db)] == ["20260101000000_init", "20260102000000_func",
                                                              "20260103000000_nick", "20260104000000_nick_idx"]


def test_migrated_by_prisma_is_up_to_date_for_pgrunbook(prisma: Prisma, fresh_db: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    proj = project(tmp_path, {"20260101000000_init": INIT, "20260102000000_func": FUNC})
    mig = str(proj / "migrations")
    deployed = prisma.run(fresh_db, proj, "migrate", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    code, out, _ = ours(capsys, "migrate-status", "--database-url", fresh_db, "--migrations", mig, "--json")
    assert code == 0 and json.loads(out)["state"] == "up-to-date" and json.loads(out)["edited"] == []
    for row in rows(fresh_db):  # the very checksums pgrunbook writes
        data = (proj / "migrations" / row["migration_name"] / "migration.sql").read_bytes()
        assert row["checksum"] == hashlib.sha256(data).hexdigest() and row["applied_steps_count"] == 1

    # Prisma's deploy fails on a migration: pgrunbook sees it failed and refuses, like Prisma
    write(proj / "migrations", {"20260103000000_bad": 'ALTER TABLE "Missing" ADD COLUMN x int;\n'})
    failed = prisma.run(fresh_db, proj, "migrate", "deploy")
    # (through the driver adapter Prisma reports "external connector error" rather than P3018)
    assert failed.returncode == 1 and "20260103000000_bad" in failed.stdout + failed.stderr
    code, out, _ = ours(capsys, "migrate-status", "--database-url", fresh_db, "--migrations", mig, "--json")
    assert code == 1 and json.loads(out)["state"] == "failed"
    assert [f["name"] for f in json.loads(out)["failed"]] == ["20260103000000_bad"]
    code, _, err = ours(capsys, "migrate", "--database-url", fresh_db, "--migrations", mig, "--skip-backup",
                        "--reason", "test")
    assert code == 1 and "P3009" in err and "20260103000000_bad" in err

    # resolved and fixed with pgrunbook: Prisma agrees it is up to date
    assert ours(capsys, "migrate", "resolve", "--database-url", fresh_db, "--migrations", mig,
                "--rolled-back", "20260103000000_bad")[0] == 0
    (proj / "migrations" / "20260103000000_bad" / "migration.sql").write_text(
        'ALTER TABLE "Account" ADD COLUMN x int;\n')
    code, _, err = ours(capsys, "migrate", "--database-url", fresh_db, "--migrations", mig, "--skip-backup",
                        "--reason", "test")
    assert code == 0, err
    done = prisma.run(fresh_db, proj, "migrate", "status")
    assert done.returncode == 0 and "Database schema is up to date!" in done.stdout, done.stdout + done.stderr


def test_failed_by_pgrunbook_is_failed_for_prisma(prisma: Prisma, fresh_db: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    proj = project(tmp_path, {"20260101000000_init": INIT,
                              "20260102000000_bad": 'CREATE TABLE "Half" (id int);\nSELECT 1/0;\n'})
    mig = str(proj / "migrations")
    code, _, err = ours(capsys, "migrate", "--database-url", fresh_db, "--migrations", mig, "--skip-backup",
                        "--reason", "test")
    assert code == 1 and "20260102000000_bad" in err
    status = prisma.run(fresh_db, proj, "migrate", "status")
    assert status.returncode == 1 and "20260102000000_bad" in status.stdout + status.stderr
    refused = prisma.run(fresh_db, proj, "migrate", "deploy")
    assert refused.returncode == 1 and "P3009" in refused.stdout + refused.stderr
    assert "20260102000000_bad" in refused.stdout + refused.stderr

    # hotfixed by hand, resolved as applied by pgrunbook: Prisma agrees
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute('CREATE TABLE "Half" (id int)')
    assert ours(capsys, "migrate", "resolve", "--database-url", fresh_db, "--migrations", mig,
                "--applied", "20260102000000_bad")[0] == 0
    done = prisma.run(fresh_db, proj, "migrate", "status")
    assert done.returncode == 0 and "Database schema is up to date!" in done.stdout, done.stdout + done.stderr


def test_unmanaged_database_agrees_and_baseline_satisfies_prisma(prisma: Prisma, sample_db: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pgrunbook.sample import SAMPLE_MIGRATIONS

    with psycopg.connect(sample_db, autocommit=True) as conn:
        conn.execute("DROP TABLE _prisma_migrations")
    proj = project(tmp_path, dict(SAMPLE_MIGRATIONS))
    mig = str(proj / "migrations")
    # Prisma's status calls it pending (exit 1), ours not-managed (exit 1); both deploys refuse (P3005)
    status = prisma.run(sample_db, proj, "migrate", "status")
    assert status.returncode == 1 and "20260101000000_init" in status.stdout
    code, out, _ = ours(capsys, "migrate-status", "--database-url", sample_db, "--migrations", mig, "--json")
    assert code == 1 and json.loads(out)["state"] == "not-managed"
    refused = prisma.run(sample_db, proj, "migrate", "deploy")
    assert refused.returncode == 1 and "P3005" in refused.stdout + refused.stderr
    code, _, err = ours(capsys, "migrate", "--database-url", sample_db, "--migrations", mig, "--skip-backup",
                        "--reason", "test")
    assert code == 1 and "P3005" in err
    code, _, err = ours(capsys, "migrate", "--database-url", sample_db, "--migrations", mig, "--skip-backup",
                        "--reason", "test", "--baseline")
    assert code == 0, err
    done = prisma.run(sample_db, proj, "migrate", "status")
    assert done.returncode == 0 and "Database schema is up to date!" in done.stdout, done.stdout + done.stderr
