"""Lint gate for pending migrations: operations that lock or rewrite busy tables.

Two sources, merged per statement:
- squawk (squawk-cli, from PyPI): a Postgres migration linter with a real SQL parser;
- pgrunbook's own checks (below), which also keep the gate working where squawk is not
  installed (a Lambda layer) and add what squawk lacks: DDL mixed with a CONCURRENTLY
  statement in one migration (Prisma cannot run it; partial failure), NOT VALID + VALIDATE in
  the same transaction, full-table locks (VACUUM FULL, CLUSTER, REINDEX, LOCK, TRUNCATE,
  REFRESH MATERIALIZED VIEW), rewriting ALTERs (SET TABLESPACE / LOGGED / UNLOGGED, serial or
  stored generated columns), renames of types, enum values, views and schemas, and unbatched
  whole-table backfills.

A migration.sql that is not UTF-8 text without a byte-order mark is an error finding
(`file-encoding`, naming the file; not ignorable): PostgreSQL and Prisma fail on it. After a BOM
the other checks still run (on the text after it); bytes that are not UTF-8 stop the checks of
that file (squawk is not run on it either).

Severity "error" = locks or rewrites a table the application uses, or breaks running code:
`--lint strict` blocks on it, `--lint warn` reports it. "warning" = advice, never blocks.
Statements on tables created in the same migration are exempt (nobody uses them yet).
A finding is acknowledged with `-- pgrunbook-ignore RULE[,RULE]` on the line before the
statement (or `-- pgrunbook-ignore-file RULE` anywhere in the file); squawk's own
`-- squawk-ignore RULE` works for the squawk rules and their pgrunbook equivalents.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .files import UTF8_BOM, Migration, Statement, needs_no_transaction, run_mode_of, split_statements

log = logging.getLogger(__name__)

LINT_MODES = ("strict", "warn", "off")

# pgrunbook rule -> (severity, the expand/contract fix)
RULES: dict[str, tuple[str, str]] = {
    "index-not-concurrent": (
        "error", "build it with CREATE INDEX CONCURRENTLY, alone in a migration of its own (it cannot run in a "
                 "transaction); if the build fails, DROP INDEX CONCURRENTLY the INVALID index and retry"),
    "drop-index-not-concurrent": (
        "error", "use DROP INDEX CONCURRENTLY, alone in a migration of its own"),
    "not-null-column-without-default": (
        "error", "expand: add the column nullable (or with a constant DEFAULT), write it from the new code, "
                 "backfill old rows in batches; contract later: CHECK (col IS NOT NULL) NOT VALID, VALIDATE, "
                 "then SET NOT NULL"),
    "set-not-null": (
        "error", "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT in a later migration, then SET NOT "
                 "NULL (PostgreSQL 12+ uses the valid check and skips the scan) and drop the check"),
    "volatile-default": (
        "error", "add the column without the default (or with a constant one: instant since PostgreSQL 11), "
                 "SET DEFAULT afterwards for new rows, and backfill existing rows in batches"),
    "column-type-change": (
        "error", "expand/contract: add a new column of the new type, write both columns, backfill in batches, "
                 "read the new one with fallback to the old, and drop the old column in a later release"),
    "drop-column": (
        "error", "contract step: first ship code that no longer reads or writes the column, drop it in a later "
                 "release (acknowledge that migration with `-- pgrunbook-ignore drop-column`)"),
    "drop-table": (
        "error", "contract step: first ship code that no longer uses the table, drop it in a later release "
                 "(acknowledge with `-- pgrunbook-ignore drop-table`)"),
    "constraint-not-valid": (
        "error", "add the FOREIGN KEY / CHECK with NOT VALID (short lock, no scan), then ALTER TABLE ... "
                 "VALIDATE CONSTRAINT in a later migration (does not block writes)"),
    "validate-in-same-transaction": (
        "error", "move VALIDATE CONSTRAINT to a later migration: in the same transaction the ADD's lock is held "
                 "for the whole validation scan"),
    "unique-constraint": (
        "error", "CREATE UNIQUE INDEX CONCURRENTLY (own migration), then ADD CONSTRAINT ... UNIQUE / PRIMARY KEY "
                 "USING INDEX"),
    "rename": (
        "error", "expand/contract instead of renaming: add the new name, write both, read the old with fallback, "
                 "backfill, switch reads, drop the old name in a later release (or keep a view with the old name)"),
    "table-rewrite": (
        "error", "avoid rewriting a live table in a migration; build a new table and switch to it with "
                 "expand/contract, or run it in a maintenance window"),
    "full-table-lock": (
        "error", "do not take table-wide locks in a migration: REINDEX / REFRESH MATERIALIZED VIEW CONCURRENTLY, "
                 "batched DELETEs instead of TRUNCATE, no VACUUM FULL / CLUSTER / LOCK TABLE"),
    "non-transactional-mixed": (
        "error", "put each CONCURRENTLY statement in a migration of its own: Prisma runs a migration as one "
                 "script (it fails there), and outside a transaction a later failure leaves the earlier "
                 "statements applied"),
    "unbatched-backfill": (
        "warning", "backfill in bounded batches (WHERE id BETWEEN ...) from a job or separate migrations, so "
                   "row locks and WAL stay small"),
    "drop-database": ("error", "never drop a database from a migration"),
    "file-encoding": (
        "error", "save migration.sql as UTF-8 without a byte-order mark (most editors: \"UTF-8\", not \"UTF-8 with "
                 "BOM\"); the file is not applied yet, so rewriting it changes no recorded checksum"),
}

# squawk rule -> pgrunbook rule it corresponds to (same finding, merged) or None (squawk-only, severity error)
SQUAWK_BLOCKING: dict[str, str | None] = {
    "require-concurrent-index-creation": "index-not-concurrent",
    "require-concurrent-index-deletion": "drop-index-not-concurrent",
    "adding-required-field": "not-null-column-without-default",
    "adding-not-nullable-field": "set-not-null",
    "adding-field-with-default": "volatile-default",
    "changing-column-type": "column-type-change",
    "ban-drop-column": "drop-column",
    "ban-drop-table": "drop-table",
    "ban-drop-database": "drop-database",
    "constraint-missing-not-valid": "constraint-not-valid",
    "adding-foreign-key-constraint": "constraint-not-valid",
    "disallowed-unique-constraint": "unique-constraint",
    "adding-serial-primary-key-field": "unique-constraint",
    "adding-primary-key-constraint": "unique-constraint",
    "renaming-column": "rename",
    "renaming-table": "rename",
    "ban-truncate-cascade": "full-table-lock",
    "ban-concurrent-index-creation-in-transaction": "non-transactional-mixed",
}
# pgrunbook sets lock_timeout and statement_timeout for every migration itself; Prisma's
# generated SQL is never idempotent (a migration runs once, in a transaction).
SQUAWK_EXCLUDED = ("require-lock-timeout", "require-statement-timeout", "prefer-robust-stmts")


@dataclass
class Finding:
    migration: str
    rule: str  # the pgrunbook rule, or the squawk rule when pgrunbook has no equivalent
    severity: str  # error | warning
    line: int
    statement: str
    message: str
    fix: str
    sources: list[str] = field(default_factory=list)  # "squawk:<rule>", "pgrunbook:<rule>"

    def to_dict(self) -> dict[str, Any]:
        return {"migration": self.migration, "rule": self.rule, "severity": self.severity, "line": self.line,
                "statement": self.statement, "message": self.message, "fix": self.fix, "sources": self.sources}

    def text(self) -> str:
        statement = f"        statement: {self.statement}\n" if self.statement else ""
        return (f"{self.severity.upper():7} {self.migration}:{self.line} [{', '.join(self.sources)}] {self.message}\n"
                f"{statement}        fix: {self.fix}")


@dataclass
class LintReport:
    mode: str
    migrations: list[str]
    findings: list[Finding]
    squawk: str | None  # squawk version used, or None when not available
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def blocked(self) -> bool:
        return self.mode == "strict" and bool(self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "migrations": self.migrations, "blocked": self.blocked,
                "errors": len(self.errors), "warnings": len(self.findings) - len(self.errors),
                "squawk": self.squawk, "findings": [f.to_dict() for f in self.findings], "notes": self.notes}

    def text(self) -> str:
        if self.mode == "off":
            return "lint: off"
        head = (f"lint ({self.mode}, {'squawk ' + self.squawk if self.squawk else 'squawk not available'} + "
                f"pgrunbook checks): {len(self.migrations)} migration(s), {len(self.errors)} error(s), "
                f"{len(self.findings) - len(self.errors)} warning(s)")
        lines = [head] + [f.text() for f in self.findings] + [f"note: {n}" for n in self.notes]
        if self.blocked:
            lines.append("lint gate (strict): blocked. Fix the migrations as suggested, or acknowledge a deliberate "
                         "contract step with `-- pgrunbook-ignore RULE` before the statement")
        return "\n".join(lines)


# --- identifiers and statement shapes ------------------------------------------------------

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QNAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"


def _norm(name: str) -> str:
    last = re.findall(_IDENT, name)[-1] if re.findall(_IDENT, name) else name
    return last[1:-1].replace('""', '"') if last.startswith('"') else last.lower()


_CREATE_TABLE = re.compile(rf"^CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:TEMP|TEMPORARY|UNLOGGED\s+)?\s*TABLE\s+"
                           rf"(?:IF\s+NOT\s+EXISTS\s+)?({_QNAME})", re.I)
_CREATE_INDEX = re.compile(rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
                           rf"(?:{_IDENT}\s+)?ON\s+(?:ONLY\s+)?({_QNAME})", re.I)
_DROP_INDEX = re.compile(r"^DROP\s+INDEX\s+(?!CONCURRENTLY\b)", re.I)
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_QNAME})\s*\*?\s+(.*)$", re.I | re.S)
_DROP_TABLE = re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?({_QNAME}(?:\s*,\s*{_QNAME})*)", re.I)
_VOLATILE = re.compile(r"\b(random|gen_random_uuid|uuid_generate_v[14]\w*|clock_timestamp|timeofday|nextval|"
                       r"statement_timestamp|txid_current|pg_current_xact_id)\s*\(", re.I)
_OTHER_RENAME = re.compile(r"^ALTER\s+(TYPE|VIEW|MATERIALIZED\s+VIEW|SCHEMA|DOMAIN|FUNCTION|PROCEDURE)\b.*\bRENAME\b",
                           re.I)


def _split_actions(text: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return [a for a in out if a]


def target_table(stmt: Statement) -> str | None:
    """The table a CREATE INDEX / ALTER TABLE / DROP TABLE / UPDATE / DELETE statement works on."""
    for pattern, group in ((_CREATE_INDEX, 2), (_ALTER_TABLE, 1), (_DROP_TABLE, 1)):
        if m := pattern.match(stmt.bare):
            return _norm(m.group(group).split(",")[0])
    if m := re.match(rf"^(?:UPDATE|DELETE\s+FROM)\s+(?:ONLY\s+)?({_QNAME})", stmt.bare, re.I):
        return _norm(m.group(1))
    return None


def created_tables(statements: list[Statement]) -> set[str]:
    return {_norm(m.group(1)) for st in statements if (m := _CREATE_TABLE.match(st.bare))}


def own_findings(migration: Migration, statements: list[Statement], server_major: int | None = None,
                 new_tables: set[str] | None = None) -> list[tuple[Statement, str, str]]:
    """(statement, rule, message) for every pgrunbook rule that fires. `new_tables`: tables created
    by earlier migrations of the same deploy (they do not exist in the database yet)."""
    found: list[tuple[Statement, str, str]] = []
    new_tables = set(new_tables or ())
    mixed = len(statements) > 1 and any(needs_no_transaction(s) for s in statements)
    in_tx = not any(needs_no_transaction(s) for s in statements)
    not_valid_added: set[str] = set()

    def add(stmt: Statement, rule: str, message: str) -> None:
        found.append((stmt, rule, message))

    for st in statements:
        b = st.bare
        up = b.upper()
        if m := _CREATE_TABLE.match(b):
            new_tables.add(_norm(m.group(1)))
            continue
        if mixed and needs_no_transaction(st):
            add(st, "non-transactional-mixed",
                "a statement that cannot run in a transaction shares its migration with other statements")
        if m := _CREATE_INDEX.match(b):
            if not m.group(1) and _norm(m.group(2)) not in new_tables:
                add(st, "index-not-concurrent",
                    f"CREATE INDEX without CONCURRENTLY on {_norm(m.group(2))} blocks its writes while it builds")
            continue
        if _DROP_INDEX.match(b):
            add(st, "drop-index-not-concurrent", "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock")
            continue
        if m := _DROP_TABLE.match(b):
            names = [_norm(n) for n in re.findall(_QNAME, m.group(1))]
            old = [n for n in names if n not in new_tables]
            if old:
                add(st, "drop-table", f"DROP TABLE {', '.join(old)} breaks the code still running against it")
            continue
        if re.match(r"^DROP\s+DATABASE\b", b, re.I):
            add(st, "drop-database", "DROP DATABASE in a migration")
            continue
        if re.match(r"^(VACUUM\s+(\(\s*)?FULL\b|CLUSTER\b|LOCK\b|TRUNCATE\b)", b, re.I) or (
                re.match(r"^(REINDEX|REFRESH\s+MATERIALIZED\s+VIEW)\b", b, re.I) and "CONCURRENTLY" not in up):
            add(st, "full-table-lock", f"{' '.join(b.split()[:3])} locks the whole table (reads and/or writes)")
            continue
        if m := _OTHER_RENAME.match(b):
            if not re.search(r"\bRENAME\s+(CONSTRAINT|ATTRIBUTE)\b", b, re.I) or m.group(1).upper() == "TYPE":
                add(st, "rename", f"renaming a {m.group(1).lower()} (or a value of it) breaks the code that uses "
                                  "the old name")
            continue
        if re.match(r"^(UPDATE|DELETE)\b", b, re.I) and not re.search(r"\bWHERE\b", b, re.I):
            target = re.match(rf"^(?:UPDATE|DELETE\s+FROM)\s+(?:ONLY\s+)?({_QNAME})", b, re.I)
            if not target or _norm(target.group(1)) not in new_tables:
                add(st, "unbatched-backfill", "an UPDATE/DELETE of every row in one transaction (row locks, WAL)")
            continue
        m = _ALTER_TABLE.match(b)
        if not m:
            continue
        table = _norm(m.group(1))
        is_new = table in new_tables
        for action in _split_actions(m.group(2)):
            a = action.upper()
            if re.match(r"^RENAME\s+(COLUMN\s+)?(?!CONSTRAINT\b)(?!TO\b)", a):
                add(st, "rename", f"renaming a column of {table} breaks the code that uses the old name")
            elif re.match(r"^RENAME\s+TO\b", a):
                add(st, "rename", f"renaming table {table} breaks the code that uses the old name")
            elif re.match(r"^VALIDATE\s+CONSTRAINT\b", a):
                cname = _norm(action.split()[2]) if len(action.split()) > 2 else ""
                if in_tx and cname in not_valid_added:
                    add(st, "validate-in-same-transaction",
                        f"VALIDATE CONSTRAINT {cname} in the same transaction that added it")
            elif is_new:
                continue
            elif m2 := re.match(rf"^ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?({_IDENT})\s+(.*)$", action,
                                re.I | re.S):
                if m2.group(1).upper() in ("CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "EXCLUDE"):
                    _constraint(st, table, action, add, not_valid_added)
                    continue
                col, rest = _norm(m2.group(1)), m2.group(2).upper()
                has_default = bool(re.search(r"\bDEFAULT\b", rest))
                if re.search(r"\bNOT\s+NULL\b", rest) and not has_default and not re.search(r"\bGENERATED\b", rest):
                    add(st, "not-null-column-without-default",
                        f"adding NOT NULL column {col} without a default to {table} fails on a non-empty table and "
                        "breaks the running code's INSERTs")
                if has_default and (_VOLATILE.search(rest) or (server_major is not None and server_major < 11)):
                    add(st, "volatile-default", f"adding column {col} with a volatile default (or any default before "
                                                f"PostgreSQL 11) rewrites {table} under an ACCESS EXCLUSIVE lock")
                elif re.search(r"\b(SMALL|BIG)?SERIAL\d?\b", rest) or re.search(r"\bGENERATED\b.*\bSTORED\b", rest):
                    add(st, "volatile-default", f"adding serial/stored generated column {col} rewrites {table}")
            elif re.match(r"^ADD\b", a):
                _constraint(st, table, action, add, not_valid_added)
            elif re.match(rf"^ALTER\s+(?:COLUMN\s+)?{_IDENT}\s+(SET\s+DATA\s+)?TYPE\b", action, re.I):
                add(st, "column-type-change", f"changing a column type of {table} rewrites it (ACCESS EXCLUSIVE) and "
                                              "breaks the running code")
            elif re.match(rf"^ALTER\s+(?:COLUMN\s+)?{_IDENT}\s+SET\s+NOT\s+NULL\b", action, re.I):
                add(st, "set-not-null", f"SET NOT NULL scans all of {table} under an ACCESS EXCLUSIVE lock")
            elif re.match(r"^DROP\s+(?!CONSTRAINT\b)", a):
                add(st, "drop-column", f"dropping a column of {table} breaks the code still reading or writing it")
            elif re.match(r"^SET\s+(TABLESPACE|LOGGED|UNLOGGED|ACCESS\s+METHOD)\b", a):
                add(st, "table-rewrite", f"ALTER TABLE {table} {' '.join(action.split()[:2])} rewrites the table")
    return found


def _constraint(st: Statement, table: str, action: str, add: Any, not_valid_added: set[str]) -> None:
    a = action.upper()
    name_m = re.match(rf"^ADD\s+CONSTRAINT\s+({_IDENT})", action, re.I)
    cname = _norm(name_m.group(1)) if name_m else ""
    if re.search(r"\b(FOREIGN\s+KEY|CHECK)\b", a):
        if re.search(r"\bNOT\s+VALID\b", a):
            not_valid_added.add(cname)
        else:
            kind = "FOREIGN KEY" if "FOREIGN" in a else "CHECK"
            add(st, "constraint-not-valid", f"adding a {kind} constraint to {table} without NOT VALID scans the "
                                            "table while blocking its writes")
    elif re.search(r"\b(UNIQUE|PRIMARY\s+KEY)\b", a) and not re.search(r"\bUSING\s+INDEX\b", a):
        add(st, "unique-constraint", f"adding a UNIQUE/PRIMARY KEY constraint to {table} builds its index under an "
                                     "ACCESS EXCLUSIVE lock")


# --- squawk -------------------------------------------------------------------------------

def squawk_binary(explicit: str | None = None) -> str | None:
    """`explicit` (Settings.squawk, PGRUNBOOK_SQUAWK), else squawk beside this Python, else on PATH."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file():
        return str(beside)
    return shutil.which("squawk")


def squawk_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    return out.stdout.strip().split()[-1] if out.returncode == 0 and out.stdout.strip() else None


def run_squawk(binary: str, migration: Migration, *, in_transaction: bool, pg_version: str | None
               ) -> list[dict[str, Any]]:
    args = [binary, "--reporter", "json", "--exclude", ",".join(SQUAWK_EXCLUDED)]
    if in_transaction:
        args.append("--assume-in-transaction")
    if pg_version:
        args += ["--pg-version", pg_version]
    args.append(str(migration.path))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    text = proc.stdout.strip()
    if proc.returncode not in (0, 1) or not text.startswith("["):
        # its first line: squawk prints a Rust backtrace after the message
        first = next((ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()), "no output")
        raise UsageError(f"squawk failed on {migration.path}: {first[:300]}")
    data = json.loads(text)
    return [d for d in data if isinstance(d, dict)]


# --- the gate -------------------------------------------------------------------------------

def _statement_at(statements: list[Statement], line: int) -> Statement | None:
    best = None
    for st in statements:
        if st.line <= line:
            best = st
    return best


def _ignored(directives: list[str], names: set[str]) -> bool:
    for d in directives:
        parts = d.split(None, 1)
        rules = {r.strip() for r in (parts[1] if len(parts) > 1 else "").replace(",", " ").split()}
        if not rules or rules & names or "all" in rules:
            return True
    return False


def lint_migrations(migrations: list[Migration], mode: str = "strict", *, use_squawk: bool = True,
                    server_major: int | None = None, squawk: str | None = None) -> LintReport:
    if mode not in LINT_MODES:
        raise UsageError(f"--lint must be one of {', '.join(LINT_MODES)}, not {mode!r}")
    report = LintReport(mode=mode, migrations=[m.name for m in migrations], findings=[], squawk=None)
    if mode == "off" or not migrations:
        return report
    binary = squawk_binary(squawk) if use_squawk else None
    if binary:
        report.squawk = squawk_version(binary)
        if report.squawk is None:
            binary = None
    if use_squawk and not binary:
        report.notes.append("squawk is not installed here: only pgrunbook's own checks ran")
    created: set[str] = set()  # by the pending migrations so far: not in the database yet, nobody uses them
    for migration in migrations:
        problem = migration.encoding_problem()
        if problem is not None:
            line, what = problem
            report.findings.append(Finding(migration.name, "file-encoding", RULES["file-encoding"][0], line, "",
                                           f"{migration.path} {what}", RULES["file-encoding"][1],
                                           ["pgrunbook:file-encoding"]))
            if not migration.data.startswith(UTF8_BOM):
                continue  # not text: nothing else can be checked (squawk fails on it too)
        statements = split_statements(migration.data.removeprefix(UTF8_BOM).decode("utf-8"))
        new_here = created | created_tables(statements)
        in_tx = run_mode_of(statements) == "transaction"
        file_directives = [d for s in statements for d in s.directives if "-ignore-file" in d.split()[0]]
        merged: dict[tuple[int, str], Finding] = {}
        for st, rule, message in own_findings(migration, statements, server_major, created):
            severity, fix = RULES[rule]
            key = (st.index, rule)
            if key not in merged:
                merged[key] = Finding(migration.name, rule, severity, st.line, st.short(), message, fix,
                                      [f"pgrunbook:{rule}"])
        if binary:
            pg_version = f"{server_major}.0" if server_major else None
            for item in run_squawk(binary, migration, in_transaction=in_tx, pg_version=pg_version):
                srule = str(item.get("rule_name", ""))
                line = int(item.get("line", 0)) + 1
                stmt = _statement_at(statements, line)
                if stmt is not None and srule in SQUAWK_BLOCKING and target_table(stmt) in new_here:
                    continue  # squawk sees one file: the table is new in this deploy
                index = stmt.index if stmt else 0
                own = SQUAWK_BLOCKING.get(srule, "")
                rule = own or srule
                key = (index, rule)
                if key not in merged and own:
                    # the same statement already has a blocking finding: one finding, two sources
                    key = next((k for k, f in merged.items() if k[0] == index and f.severity == "error"), key)
                if key in merged:
                    if f"squawk:{srule}" not in merged[key].sources:
                        merged[key].sources.append(f"squawk:{srule}")
                    continue
                severity = "error" if srule in SQUAWK_BLOCKING else "warning"
                fix = RULES[own][1] if own else (str(item.get("help") or "") or "see squawk's documentation for "
                                                 f"{srule}")
                merged[key] = Finding(migration.name, rule, severity, stmt.line if stmt else line,
                                      stmt.short() if stmt else "", str(item.get("message", "")), fix,
                                      [f"squawk:{srule}"])
        for (index, _rule), finding in sorted(merged.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            names = {finding.rule} | {s.split(":", 1)[1] for s in finding.sources}
            names |= {s for s, o in SQUAWK_BLOCKING.items() if o == finding.rule}
            stmt_directives = list(statements[index - 1].directives) if 0 < index <= len(statements) else []
            if _ignored([d for d in stmt_directives if "-ignore-file" not in d.split()[0]], names) or \
                    _ignored(file_directives, names):
                continue
            report.findings.append(finding)
        created = new_here
    return report
