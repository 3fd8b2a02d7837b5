"""What a database holds, read through psycopg: identity, tables with exact counts,
sequences, extensions, roles, Prisma migration state.

Everything here runs inside whatever transaction the caller holds, so the backup reads
it all in the exported snapshot that pg_dump dumps.

Invariants:
- Names are data, never parsed: every name Postgres accepts (dots, quotes, spaces, newlines,
  unicode, 63 bytes) is carried as separate schema and name strings (plus the table's OID),
  and reaches SQL only through `psycopg.sql.Identifier`.
- `display_name` / `ident` render names for people and for report keys: one line, and
  injective (two different names never render alike), so they may key a dict.
- Which server a database lives on is decided by `same_database` from what the servers say
  about themselves (system_identifier, their own port, postmaster start), never from how a URL
  spells its host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

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
    port: int | None = None  # the server's own `port` setting (not the URL's: proxies and sockets differ)
    started_at: str | None = None  # pg_postmaster_start_time() as epoch seconds (text, microseconds)

    @property
    def major(self) -> int:
        return self.server_version_num // 10000

    def database_identity(self) -> DatabaseIdentity:
        """This database as observed now (for `same_database`)."""
        return DatabaseIdentity(database=self.database, system_identifier=self.system_identifier,
                                port=self.port, started_at=self.started_at, live=True)


@dataclass(frozen=True)
class DatabaseIdentity:
    """Which database on which server, as the server reports it.

    `live`: observed now on a connection (then a different `started_at` proves a different
    postmaster); False for an identity recorded earlier (a manifest's source), whose server may
    have restarted since."""

    database: str
    system_identifier: str | None = None
    port: int | None = None
    started_at: str | None = None
    live: bool = False

    @classmethod
    def recorded(cls, source: dict[str, Any]) -> DatabaseIdentity:
        """The source recorded in a manifest. Version 1 manifests recorded the URL's port, which a
        proxy or socket may spell differently from the server's own: only `server_port` is trusted."""
        port = source.get("server_port")
        return cls(database=str(source.get("database") or ""), system_identifier=source.get("system_identifier"),
                   port=int(port) if port is not None else None, started_at=source.get("server_started_at"), live=False)


def same_database(a: DatabaseIdentity, b: DatabaseIdentity) -> bool | None:
    """True when a and b are the same database of the same server; False when they are not; None
    when the servers did not say enough to tell (no system_identifier, no comparable start time).

    Host spellings (localhost, 127.0.0.1, a socket path, a DNS alias) play no part: the server's
    system_identifier, its own port and the database name decide; a replica or copy of a cluster
    shares the identifier, so the port tells copies on one host apart, and two live servers with
    different postmaster start times are different servers."""
    if a.database != b.database:
        return False
    if a.port is not None and b.port is not None and a.port != b.port:
        return False
    if a.system_identifier and b.system_identifier and a.system_identifier != b.system_identifier:
        return False
    if a.started_at and b.started_at:
        if a.started_at == b.started_at:
            return True
        if a.live and b.live:
            return False
    if a.system_identifier and b.system_identifier:
        return True
    return None


def live_identity(url: DatabaseUrl, *, application: str = "pgrunbook", connect_timeout: int = 10) -> DatabaseIdentity:
    """The database `url` reaches, as its server identifies it now (raises ConnectionFailed)."""
    with connect(url, autocommit=True, application=application, connect_timeout=connect_timeout) as conn:
        return server_identity(conn).database_identity()


def server_identity(conn: psycopg.Connection[Any]) -> ServerIdentity:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
        "current_database(), pg_encoding_to_char(encoding), pg_database_size(current_database()), "
        "current_setting('port')::int, extract(epoch FROM pg_postmaster_start_time())::text "
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
                          database_size_bytes=int(row[4]), port=int(row[5]), started_at=str(row[6]))


# --------------------------------------------------------------------------- names for people
_PLAIN_NAME = re.compile(r"[\w$]+")


def ident(name: str) -> str:
    """A name as people read it: as is when it is only letters, digits, `_` and `$`; otherwise in
    double quotes (inner quotes doubled), and in `U&"..."` form (SQL's Unicode escapes) when it holds
    a character that does not print (newline, tab, ...). Always one line; never the same text for
    two different names."""
    if _PLAIN_NAME.fullmatch(name):
        return name
    if name.isprintable():
        return '"' + name.replace('"', '""') + '"'
    out = []
    for ch in name:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('""')
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\{ord(ch):04X}")
        else:
            out.append(f"\\+{ord(ch):06X}")
    return 'U&"' + "".join(out) + '"'


def display_name(schema: str, name: str) -> str:
    """schema.name for people and report keys (see `ident`): public.User, "s.x".y, s."x.y"."""
    return f"{ident(schema)}.{ident(name)}"


def legacy_name(schema: str, name: str) -> str:
    """The version 1 manifest key, "schema.name" joined as is (ambiguous: kept to read old manifests)."""
    return f"{schema}.{name}"


# --------------------------------------------------------------------------- contents
class TableRef(NamedTuple):
    schema: str
    name: str
    oid: int  # pg_class OID: pg_dump's TABLE DATA entry for the table carries it


def user_tables(conn: psycopg.Connection[Any]) -> list[TableRef]:
    """Tables whose rows pg_dump dumps: ordinary tables (partitions included, parents not),
    outside system schemas, not owned by an extension. Sorted by schema, name."""
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname, c.oid::bigint
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {USER_SCHEMAS}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2""").fetchall()
    return [TableRef(str(s), str(t), int(o)) for s, t, o in rows]


ALL_VISIBLE_SHARE = 0.9  # cheap_to_count: the share of pages the visibility map must mark all-visible
SMALL_TABLE_PAGES = 128  # cheap_to_count: a heap this small (1 MB) costs nothing to scan


def cheap_to_count(conn: psycopg.Connection[Any], tables: list[TableRef]) -> set[TableRef]:
    """The tables count(*) counts without reading a large heap: small ones (under SMALL_TABLE_PAGES), and
    those with a valid, non-partial B-tree index and at least ALL_VISIBLE_SHARE of their pages all-visible
    (pg_class.relpages / relallvisible, as of the last VACUUM or ANALYZE): the planner counts those with an
    index-only scan. Only the cost depends on this guess, never the count: count(*) is exact either way."""
    rows = conn.execute("""
        SELECT c.oid::bigint FROM pg_class c
        WHERE c.oid = ANY(%s) AND (c.relpages < %s OR (c.relallvisible >= %s * c.relpages
          AND EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                      JOIN pg_am am ON am.oid = ic.relam
                      WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL AND am.amname = 'btree')))""",
                        ([t.oid for t in tables], SMALL_TABLE_PAGES, ALL_VISIBLE_SHARE)).fetchall()
    oids = {int(r[0]) for r in rows}
    return {t for t in tables if t.oid in oids}


def exact_counts(conn: psycopg.Connection[Any], tables: list[TableRef],
                 batch: int = 200) -> dict[TableRef, int]:
    """count(*) of every table, in batches of UNION ALL (one round trip per batch)."""
    counts: dict[TableRef, int] = {}
    for start in range(0, len(tables), batch):
        part = tables[start:start + batch]
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {i}, count(*) FROM {t}").format(i=sql.Literal(i), t=sql.Identifier(t.schema, t.name))
            for i, t in enumerate(part))
        for index, count in conn.execute(query).fetchall():
            counts[part[int(index)]] = int(count)
    return counts


def sequences(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int | None]:
    """(schema, name) -> last_value (None: never used, or not readable) of every user sequence."""
    rows = conn.execute(f"""
        SELECT n.nspname, c.relname, s.last_value
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname
        WHERE c.relkind = 'S' AND {USER_SCHEMAS}
        ORDER BY 1, 2""").fetchall()
    return {(str(s), str(n)): (int(v) if v is not None else None) for s, n, v in rows}


def extensions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute("SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1")
    return {str(n): str(v) for n, v in rows.fetchall()}


# Every object pg_dump dumps with an owner or a grant list: (owner, acl, nsp, classid, objid), nsp the schema
# of a schema-qualified object (NULL for the others and for schemas themselves). Extension members are left
# out (pg_dump dumps the extension, not its members), and so is the owner of the public schema when it is the
# default pg_database_owner (pg_dump writes no ALTER SCHEMA public OWNER for it).
_IN_SCHEMA = [  # catalog, its alias's owner, acl (or NULL) and namespace columns
    ("pg_class", "relowner", "relacl", "relnamespace"), ("pg_proc", "proowner", "proacl", "pronamespace"),
    ("pg_type", "typowner", "typacl", "typnamespace"), ("pg_collation", "collowner", "NULL", "collnamespace"),
    ("pg_conversion", "conowner", "NULL", "connamespace"), ("pg_operator", "oprowner", "NULL", "oprnamespace"),
    ("pg_opclass", "opcowner", "NULL", "opcnamespace"), ("pg_opfamily", "opfowner", "NULL", "opfnamespace"),
    ("pg_ts_config", "cfgowner", "NULL", "cfgnamespace"), ("pg_ts_dict", "dictowner", "NULL", "dictnamespace"),
    ("pg_statistic_ext", "stxowner", "NULL", "stxnamespace"),
]
_GLOBAL = [  # catalog (as classid), table, owner, acl, filter
    ("pg_largeobject", "pg_largeobject_metadata", "lomowner", "lomacl", "true"),
    ("pg_foreign_data_wrapper", "pg_foreign_data_wrapper", "fdwowner", "fdwacl", "true"),
    ("pg_foreign_server", "pg_foreign_server", "srvowner", "srvacl", "true"),
    ("pg_event_trigger", "pg_event_trigger", "evtowner", "NULL", "true"),
    ("pg_publication", "pg_publication", "pubowner", "NULL", "true"),
    ("pg_language", "pg_language", "lanowner", "lanacl", "x.lanispl"),
    ("pg_default_acl", "pg_default_acl", "defaclrole", "defaclacl", "true"),
]
def _union(cat: str, table: str, owner: str, acl: str, nsp: str | None, cond: str) -> str:
    acl_col = "NULL" if acl == "NULL" else f"x.{acl}"
    if nsp is None:
        return f"""    UNION ALL SELECT x.{owner}, {acl_col}, NULL, '{cat}'::regclass, x.oid
      FROM {table} x WHERE {cond}\n"""
    return f"""    UNION ALL SELECT x.{owner}, {acl_col}, n.oid, '{cat}'::regclass, x.oid
      FROM {table} x JOIN pg_namespace n ON n.oid = x.{nsp} WHERE {USER_SCHEMAS}\n"""


_OWNED_OBJECTS = f"""
    SELECT CASE WHEN n.nspname = 'public' AND n.nspowner =
                     (SELECT oid FROM pg_roles WHERE rolname = 'pg_database_owner') THEN NULL
                ELSE n.nspowner END AS owner, n.nspacl AS acl, NULL::oid AS nsp,
           'pg_namespace'::regclass AS classid, n.oid AS objid
      FROM pg_namespace n WHERE {USER_SCHEMAS}
""" + "".join(_union(cat, cat, owner, acl, nsp, "") for cat, owner, acl, nsp in _IN_SCHEMA) \
    + "".join(_union(cat, table, owner, acl, None, cond) for cat, table, owner, acl, cond in _GLOBAL)
_DUMPED_OBJECTS = f"""
    SELECT o.owner, o.acl, o.nsp FROM ({_OWNED_OBJECTS}) o
    WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = o.classid AND d.objid = o.objid
                      AND d.deptype = 'e')
"""


def roles_used(conn: psycopg.Connection[Any]) -> list[str]:
    """Roles that own or are granted something pg_dump dumps (restore needs them on the target)."""
    rows = conn.execute(f"""
        WITH objs AS ({_DUMPED_OBJECTS}), ids AS (
            SELECT owner AS id FROM objs
            UNION SELECT (aclexplode(acl)).grantee FROM objs WHERE acl IS NOT NULL
        )
        SELECT DISTINCT r.rolname FROM ids JOIN pg_roles r ON r.oid = ids.id ORDER BY 1""").fetchall()
    return [str(r[0]) for r in rows]


def owner_roles(conn: psycopg.Connection[Any]) -> list[str]:
    """Roles that own something pg_dump dumps: pg_restore gives each object back to its owner (ALTER ...
    OWNER TO), which the restoring role may do only for roles it can become."""
    rows = conn.execute(f"""
        SELECT DISTINCT r.rolname FROM ({_DUMPED_OBJECTS}) o JOIN pg_roles r ON r.oid = o.owner
        ORDER BY 1""").fetchall()
    return [str(r[0]) for r in rows]


def schema_owners(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every schema holding objects pg_dump dumps: its name, its owner (None for the public schema's default
    owner pg_database_owner) and the owners of its objects. A role that is given an object (ALTER ... OWNER
    TO) must be able to create in its schema; pg_restore grants privileges on schemas only at the end."""
    rows = conn.execute(f"""
        SELECT n.nspname, CASE WHEN n.nspname = 'public' AND s.rolname = 'pg_database_owner' THEN NULL
                               ELSE s.rolname END,
               array_agg(DISTINCT r.rolname ORDER BY r.rolname)
        FROM ({_DUMPED_OBJECTS}) o JOIN pg_namespace n ON n.oid = o.nsp
        JOIN pg_roles s ON s.oid = n.nspowner JOIN pg_roles r ON r.oid = o.owner
        GROUP BY n.nspname, s.rolname ORDER BY 1""").fetchall()
    return [{"name": str(n), "owner": None if o is None else str(o), "object_owners": [str(r) for r in owners]}
            for n, o, owners in rows]


def prisma_table(conn: psycopg.Connection[Any]) -> str | None:
    """Schema-qualified name (`display_name`) of the _prisma_migrations table on the search path, if any."""
    schema = prisma_schema(conn)
    return display_name(schema, "_prisma_migrations") if schema is not None else None


def prisma_schema(conn: psycopg.Connection[Any]) -> str | None:
    """Schema of the _prisma_migrations table on the search path, if any."""
    found = conn.execute("""SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE c.oid = to_regclass('_prisma_migrations')""").fetchone()
    return str(found[0]) if found else None


def prisma_migrations(conn: psycopg.Connection[Any], schema: str | None = None) -> list[dict[str, Any]] | None:
    """Rows of _prisma_migrations in `schema` (default: the one on the search path) in started order,
    or None when the table does not exist."""
    schema = schema if schema is not None else prisma_schema(conn)
    if schema is None:
        return None
    rows = conn.execute(sql.SQL(
        "SELECT migration_name, checksum, started_at, finished_at, rolled_back_at, applied_steps_count "
        "FROM {} ORDER BY started_at, migration_name").format(sql.Identifier(schema, "_prisma_migrations"))
    ).fetchall()
    return [{"name": r[0], "checksum": r[1],
             "started_at": r[2].isoformat() if r[2] else None,
             "finished_at": r[3].isoformat() if r[3] else None,
             "rolled_back_at": r[4].isoformat() if r[4] else None,
             "applied_steps_count": r[5]} for r in rows]
