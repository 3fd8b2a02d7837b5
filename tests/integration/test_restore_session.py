"""The restore's session settings on a real server: values the load TOASTs are lz4-compressed when the
server has lz4 (default_toast_compression, docs/benchmarks.md: several times less CPU on wide rows),
also for a restoring role that is not a superuser, while a column the dump gives an explicit
compression keeps it, and the data is the same."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from pgrunbook.backup import BackupOptions, run_backup
from pgrunbook.dburl import DatabaseUrl
from pgrunbook.pgserver import LocalServer
from pgrunbook.restore import RestoreOptions, run_restore
from pgrunbook.settings import Settings
from tests.fixtures.restore_helpers import create_db, drop_db

SETTINGS = Settings.from_env({})
pytestmark = pytest.mark.usefixtures("clean_env")

# rows of several kB, compressible (TOASTed compressed): `body` with the column default, `pinned` pglz explicitly
SOURCE_SQL = """
CREATE TABLE wide (id int PRIMARY KEY, body text NOT NULL, pinned text COMPRESSION pglz NOT NULL);
INSERT INTO wide SELECT g, repeat('row ' || g || ' of wide text; ', 400), repeat('pinned ' || g || '; ', 600)
FROM generate_series(1, 40) AS g;
"""
CHECK_SQL = """
SELECT array_agg(DISTINCT pg_column_compression(body)), array_agg(DISTINCT pg_column_compression(pinned)),
       md5(string_agg(body || pinned, ',' ORDER BY id)) FROM wide
"""


def _lz4_built(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                           "WHERE name = 'default_toast_compression'").fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("superuser", [True, False], ids=["superuser", "owner-role"])
def test_restore_toasts_with_lz4_and_keeps_explicit_compression(pg_server: LocalServer, tmp_path: Path,
                                                                superuser: bool) -> None:
    source = create_db(pg_server, "toast_src")
    target = create_db(pg_server, "toast_dst")
    role = f"restorer_{uuid.uuid4().hex[:8]}"
    try:
        if not _lz4_built(source):
            pytest.skip("this server is built without lz4: the restore keeps the server's default (pglz)")
        with psycopg.connect(source) as conn:
            conn.execute(SOURCE_SQL)
            expected = conn.execute(CHECK_SQL).fetchone()
        assert expected is not None and expected[0] == ["pglz"]  # the source as a default server stores it
        url = target
        if not superuser:  # a plain role that owns the target database (as on RDS)
            with psycopg.connect(pg_server.url(), autocommit=True) as conn:
                conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'")
                conn.execute(f"ALTER DATABASE {DatabaseUrl.parse(target).dbname} OWNER TO {role}")
            with psycopg.connect(target, autocommit=True) as conn:
                conn.execute(f"ALTER SCHEMA public OWNER TO {role}")
            url = pg_server.url(DatabaseUrl.parse(target).dbname, user=role, password=f"pw-{role}")
        backup = run_backup(BackupOptions(database_url=source, dest=str(tmp_path), jobs=1), SETTINGS)
        run_restore(RestoreOptions(file=backup.archive, target_url=url, force=True, no_owner=not superuser),
                    SETTINGS)
        with psycopg.connect(target) as conn:
            body, pinned, digest = conn.execute(CHECK_SQL).fetchone() or (None, None, None)
        assert body == ["lz4"]
        assert pinned == ["pglz"]
        assert digest == expected[2]
    finally:
        drop_db(source)
        drop_db(target)
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
