"""pgrunbook's child processes, and what outlives a kill: the pg tools' process groups, the stop
signals, and the guardian process that cleans up after pgrunbook when it is killed.

Invariants (every pg tool the package starts is started by `spawn`, through pgtools' wrappers):

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
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from .errors import Interrupted

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # seconds a tool gets after SIGTERM before SIGKILL


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


def spawn(args: Sequence[str | Path], *, env: Mapping[str, str], stdin: Any = subprocess.DEVNULL,
          stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE) -> ToolProcess:
    """Start a pg tool (the one way the package starts them; see the module doc). Binary pipes."""
    argv = [str(a) for a in args]
    kwargs: dict[str, Any] = {"stdin": stdin, "stdout": stdout, "stderr": stderr,
                              "env": dict(env), "process_group": 0}
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


def live_tools(owner: int | None = None) -> list[ToolProcess]:
    """The tools started by this process (by the thread `owner`, if given) not yet waited for."""
    with _LIVE_LOCK:
        return [p for p in _LIVE if owner is None or p.owner == owner]


def stop_all(grace: float = STOP_GRACE, *, owner: int | None = None) -> None:
    """Stop every tool still running (those started by the thread `owner`, if given): a safety net
    behind the operations' own cleanup."""
    for proc in live_tools(owner):
        proc.stop(grace)


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
                    "from pgrunbook.processes import _guardian_main; _guardian_main()")
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


def start_guardian() -> None:
    """Start the guardian now rather than at the first registration: its interpreter then starts while
    the caller waits on the network (connecting, reading the catalog), not beside the first pg tool it
    guards (measured: ~50 ms of CPU taken from pg_dump's start on a 2-core machine)."""
    with _GUARDIAN._lock:
        _GUARDIAN._started()


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
