"""The migrations folder as Prisma lays it out: `<dir>/<name>/migration.sql`, applied in name
order, plus `migration_lock.toml` (provider = "postgresql").

Checksums are Prisma's: the lowercase hex sha256 of the file's bytes. When comparing with a
recorded checksum we accept what Prisma accepts: the same script with CRLF or LF line endings,
and the non-zero-padded hex that old Prisma versions wrote (prisma-engines issue 1887).

A script is UTF-8 text without a byte-order mark: PostgreSQL (and so Prisma) fails on a BOM
(a syntax error at its first statement) and on bytes that are not UTF-8. `encoding_problem` says
what is wrong (the lint gate reports it as a finding naming the file); the bytes are never
changed, so checksums stay Prisma's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

SCRIPT_NAME = "migration.sql"
UTF8_BOM = b"\xef\xbb\xbf"
LOCK_FILE = "migration_lock.toml"
CHECKSUM_LEN = 64


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _old_format(digest: bytes) -> str:
    return "".join(f"{b:x}" for b in digest)


def checksum_matches(data: bytes, recorded: str) -> bool:
    variants = (data, data.replace(b"\r\n", b"\n"), data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    for variant in variants:
        digest = hashlib.sha256(variant).digest()
        rendered = digest.hex() if len(recorded) == CHECKSUM_LEN or not recorded else _old_format(digest)
        if rendered == recorded:
            return True
    return False


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a script: its text as written, where it starts, and a `bare` form
    (comments removed, string contents blanked, whitespace collapsed) for pattern checks."""

    index: int  # 1-based position in the script
    line: int  # 1-based line where the statement starts
    sql: str
    bare: str
    directives: tuple[str, ...] = ()  # `-- pgrunbook-ignore ...` / `-- squawk-ignore ...` just before it

    def short(self, limit: int = 120) -> str:
        text = " ".join(self.sql.split())
        return text if len(text) <= limit else text[: limit - 3] + "..."


# Statements PostgreSQL refuses inside a transaction block (PreventInTransactionBlock).
_NO_TRANSACTION = [re.compile(p, re.I) for p in (
    r"^CREATE\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY\b",
    r"^DROP\s+INDEX\s+CONCURRENTLY\b",
    r"^REINDEX\b.*\bCONCURRENTLY\b",
    r"^ALTER\s+TABLE\b.*\bDETACH\s+PARTITION\b.*\bCONCURRENTLY\b",
    r"^VACUUM\b",
    r"^CREATE\s+DATABASE\b",
    r"^DROP\s+DATABASE\b",
    r"^ALTER\s+SYSTEM\b",
    r"^(CREATE|DROP)\s+TABLESPACE\b",
    r"^(CREATE|DROP)\s+SUBSCRIPTION\b",
    r"^ALTER\s+DATABASE\b.*\bSET\s+TABLESPACE\b",
)]
_TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b", re.I)


def needs_no_transaction(stmt: Statement) -> bool:
    return any(p.search(stmt.bare) for p in _NO_TRANSACTION)


def is_transaction_control(stmt: Statement) -> bool:
    return bool(_TRANSACTION_CONTROL.search(stmt.bare)) and not stmt.bare.upper().startswith("BEGIN ATOMIC")


def run_mode_of(statements: list[Statement]) -> str:
    """'transaction' (the whole script in one transaction) or 'no-transaction' (statement by
    statement, autocommit): when a statement cannot run in a transaction block, or the script
    manages its own transactions."""
    if any(needs_no_transaction(s) or is_transaction_control(s) for s in statements):
        return "no-transaction"
    return "transaction"


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    data: bytes = field(repr=False)

    @property
    def checksum(self) -> str:
        return checksum(self.data)

    @property
    def script(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            problem = self.encoding_problem()
            raise UsageError(f"{self.path} {problem[1] if problem else 'is not UTF-8'}") from None

    def encoding_problem(self) -> tuple[int, str] | None:
        """(line, what is wrong) when the file is not UTF-8 text without a byte-order mark, else None."""
        try:
            self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = self.data.count(b"\n", 0, exc.start) + 1
            return line, f"is not valid UTF-8 ({exc.reason} at byte {exc.start}, line {line})"
        if self.data.startswith(UTF8_BOM):
            return 1, "starts with a UTF-8 byte-order mark (BOM): PostgreSQL and Prisma fail on it"
        return None

    def statements(self) -> list[Statement]:
        return split_statements(self.script)

    def run_mode(self) -> str:
        """See run_mode_of."""
        return run_mode_of(self.statements())


def read_migrations(directory: str | Path) -> list[Migration]:
    """Every `<dir>/<name>/migration.sql`, in name order. A missing folder, a folder that is
    not a directory, or a migration folder without its script is an error."""
    root = Path(directory).expanduser()
    if not root.exists():
        raise UsageError(f"migrations folder {root} does not exist (pass --migrations DIR; "
                         "Prisma's default is prisma/migrations)")
    if not root.is_dir():
        raise UsageError(f"migrations folder {root} is not a directory")
    _check_lock_file(root)
    found: list[Migration] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        script = entry / SCRIPT_NAME
        if not script.is_file():
            raise UsageError(f"migration folder {entry} has no {SCRIPT_NAME}")
        found.append(Migration(name=entry.name, path=script, data=script.read_bytes()))
    return found


def _check_lock_file(root: Path) -> None:
    lock = root / LOCK_FILE
    if not lock.is_file():
        return
    match = re.search(r'^\s*provider\s*=\s*"([^"]*)"', lock.read_text(errors="replace"), re.M)
    if match and match.group(1) not in ("postgresql", "postgres"):
        raise UsageError(f"{lock} says provider = \"{match.group(1)}\": these migrations are not for PostgreSQL")


# --- a small, careful SQL splitter --------------------------------------------------------

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_DIRECTIVE = re.compile(r"--\s*((?:pgrunbook|squawk)-ignore(?:-file)?\b.*)$", re.I)


def _strip_leading_comments(text: str) -> str:
    while True:
        if text.startswith("--"):
            text = text.split("\n", 1)[1].lstrip() if "\n" in text else ""
        elif text.startswith("/*"):
            depth, i = 0, 0
            while i < len(text):
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                    if depth == 0:
                        break
                else:
                    i += 1
            text = text[i:].lstrip()
        else:
            return text


def split_statements(script: str) -> list[Statement]:
    """Split on top-level semicolons, honouring '...' and E'...' strings, "identifiers",
    $tag$ bodies $tag$, -- comments, nested /* */ comments and BEGIN ATOMIC ... END bodies."""
    out: list[Statement] = []
    n = len(script)
    i = 0
    start = 0
    bare: list[str] = []
    directives: list[str] = []
    atomic_depth = 0

    def flush(end: int) -> None:
        nonlocal start, bare, directives
        segment = script[start:end]
        text = _strip_leading_comments(segment.strip())
        bare_text = " ".join("".join(bare).split())
        if bare_text:
            offset = max(segment.find(text), 0)
            line = script.count("\n", 0, start + offset) + 1
            out.append(Statement(index=len(out) + 1, line=line, sql=text, bare=bare_text,
                                 directives=tuple(directives)))
            directives = []
        start = end + 1
        bare = []

    while i < n:
        c = script[i]
        if c == "-" and script.startswith("--", i):
            j = script.find("\n", i)
            j = n if j < 0 else j
            m = _DIRECTIVE.match(script[i:j])
            if m:
                directives.append(m.group(1).strip())
            bare.append(" ")
            i = j
            continue
        if c == "/" and script.startswith("/*", i):
            depth = 0
            while i < n:
                if script.startswith("/*", i):
                    depth += 1
                    i += 2
                elif script.startswith("*/", i):
                    depth -= 1
                    i += 2
                    if depth == 0:
                        break
                else:
                    i += 1
            bare.append(" ")
            continue
        if c == "'":
            before = script[i - 2] if i >= 2 else " "
            escaped = i > 0 and script[i - 1] in "eE" and not (before.isalnum() or before == "_")
            j = i + 1
            while j < n:
                if escaped and script[j] == "\\":
                    j += 2
                    continue
                if script[j] == "'":
                    if j + 1 < n and script[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            bare.append("''")
            i = j + 1
            continue
        if c == '"':
            j = script.find('"', i + 1)
            while j >= 0 and j + 1 < n and script[j + 1] == '"':
                j = script.find('"', j + 2)
            j = n - 1 if j < 0 else j
            bare.append(script[i:j + 1])
            i = j + 1
            continue
        if c == "$":
            m = _DOLLAR.match(script, i)
            if m and not (i > 0 and (script[i - 1].isalnum() or script[i - 1] == "_")):
                tag = m.group(0)
                j = script.find(tag, m.end())
                j = n if j < 0 else j + len(tag)
                bare.append("$$ $$")
                i = j
                continue
        if c.isalpha():
            j = i
            while j < n and (script[j].isalnum() or script[j] in "_$"):
                j += 1
            word = script[i:j].upper()
            opens_body = word == "ATOMIC" and "".join(bare).rstrip().upper().endswith("BEGIN")
            if opens_body or (word == "CASE" and atomic_depth):
                atomic_depth += 1
            elif word == "END" and atomic_depth:
                atomic_depth -= 1
            bare.append(script[i:j])
            i = j
            continue
        if c == ";" and not atomic_depth:
            flush(i)
            i += 1
            continue
        bare.append(c)
        i += 1
    flush(n)
    return out
