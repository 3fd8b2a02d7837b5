"""What a database holds, read through psycopg: identity, tables with exact counts,
sequences, extensions, roles, Prisma migration state.

Everything here runs inside whatever transaction the caller holds, so the backup reads
it all in the exported snapshot that pg_dump dumps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .dburl import DatabaseUrl, mask_secrets
from .errors import ConnectionFailed

USER_SCHEMAS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
"""


def connect(url: DatabaseUrl, *, autocommit: bool = False, application: str = "pgrunbook",
            connect_timeout: int = 10) -> psycopg.Connection[Any]:
    """Connect with a clear one-line error (never showing the password)."""
    try:
        return psycopg.connect(url.conninfo(), password=url.password, autocommit=autocommit,
                               application_name=application, connect_timeout=connect_timeout)
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to {url.display()}: {_reason(exc, url)}") from None


def _reason(exc: Exception, url: DatabaseUrl) -> str:
    text = " ".join(str(exc).split())
    if url.password:
        text = text.replace(url.password, "***")
    lowered = text.lower()
    if "password authentication failed" in lowered:
        return f"password authentication failed for user {url.user or '(default)'}"
    if "does not exist" in lowered and "database" in lowered:
        return f'database "{url.dbname}" does not exist'
    if "connection refused" in lowered or "could not connect" in lowered or "timeout" in lowered \
            or "no route" in lowered or "could not translate host" in lowered:
        return f"server unreachable at {url.host}:{url.port} ({_first_clause(text)})"
    return mask_secrets(text)


def _first_clause(text: str) -> str:
    for marker in ("Connection refused", "timeout expired", "could not translate host name", "No route to host"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text[:120]


@dataclass(frozen=True)
class ServerIdentity:
    server_version: str
    server_version_num: int
    system_identifier: str | None
    database: str
    encoding: str
    database_size_bytes: int

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


def server_identity(conn: psycopg.Connection[Any]) -> ServerIdentity:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
        "current_database(), pg_encoding_to_char(encoding), pg_database_size(current_database()) "
        "FROM pg_database WHERE datname = current_database()").fetchone()
    assert row is not None
    sysid: str | None
    try:
        with conn.transaction():
            sysid_row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
            sysid = sysid_row[0] if sysid_row else None
    except psycopg.errors.InsufficientPrivilege:
        sysid = None
    return ServerIdentity(server_version=str(row[0]).split()[0], server_version_num=int(row[1]),
                          system_identifier=sysid, database=str(row[2]), encoding=str(row[3]),
                          database_size_bytes=int(row[4]))


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Tables whose rows pg_dump dumps: ordinary tables (partitions included, parents not),
    outside system schemas, not owned by an extension. Sorted by schema, name."""
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {USER_SCHEMAS}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2""").fetchall()
    return [(str(s), str(t)) for s, t in rows]


def exact_counts(conn: psycopg.Connection[Any], tables: list[tuple[str, str]],
                 batch: int = 200) -> dict[str, int]:
    """count(*) of every table, in batches of UNION ALL (one round trip per batch)."""
    counts: dict[str, int] = {}
    for start in range(0, len(tables), batch):
        part = tables[start:start + batch]
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {i}, count(*) FROM {t}").format(i=sql.Literal(i), t=sql.Identifier(s, n))
            for i, (s, n) in enumerate(part))
        for index, count in conn.execute(query).fetchall():
            schema, name = part[int(index)]
            counts[qualified(schema, name)] = int(count)
    return counts


def qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def sequences(conn: psycopg.Connection[Any]) -> dict[str, int | None]:
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname, s.last_value
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname
        WHERE c.relkind = 'S' AND {USER_SCHEMAS}
        ORDER BY 1, 2""").fetchall()
    return {qualified(str(s), str(n)): (int(v) if v is not None else None) for s, n, v in rows}


def extensions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute("SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1")
    return {str(n): str(v) for n, v in rows.fetchall()}


def roles_used(conn: psycopg.Connection[Any]) -> list[str]:
    """Roles that own or are granted something in the user schemas (restore needs them)."""
    rows = conn.execute(f"""
        WITH objs AS (
            SELECT c.relowner AS owner, c.relacl AS acl FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMAS}
            UNION ALL SELECT n.nspowner, n.nspacl FROM pg_namespace n WHERE {USER_SCHEMAS}
            UNION ALL SELECT p.proowner, p.proacl FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMAS}
            UNION ALL SELECT t.typowner, t.typacl FROM pg_type t
              JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {USER_SCHEMAS}
        ), ids AS (
            SELECT owner AS id FROM objs
            UNION SELECT (aclexplode(acl)).grantee FROM objs WHERE acl IS NOT NULL
        )
        SELECT DISTINCT r.rolname FROM ids JOIN pg_roles r ON r.oid = ids.id ORDER BY 1""").fetchall()
    return [str(r[0]) for r in rows]


def prisma_table(conn: psycopg.Connection[Any]) -> str | None:
    """Schema-qualified name of the _prisma_migrations table on the search path, if any."""
    found = conn.execute("""SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE c.oid = to_regclass('_prisma_migrations')""").fetchone()
    return f"{found[0]}._prisma_migrations" if found else None


def prisma_migrations(conn: psycopg.Connection[Any], table: str | None = None) -> list[dict[str, Any]] | None:
    """Rows of _prisma_migrations (`table`, or the one prisma_table finds) in started order,
    or None when the table does not exist."""
    table = table or prisma_table(conn)
    if table is None:
        return None
    schema = table.split(".", 1)[0]
    rows = conn.execute(sql.SQL(
        "SELECT migration_name, checksum, started_at, finished_at, rolled_back_at, applied_steps_count "
        "FROM {} ORDER BY started_at, migration_name").format(sql.Identifier(schema, "_prisma_migrations"))
    ).fetchall()
    return [{"name": r[0], "checksum": r[1],
             "started_at": r[2].isoformat() if r[2] else None,
             "finished_at": r[3].isoformat() if r[3] else None,
             "rolled_back_at": r[4].isoformat() if r[4] else None,
             "applied_steps_count": r[5]} for r in rows]
