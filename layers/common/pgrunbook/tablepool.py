"""Run one statement per item (a table) over a bounded number of database connections.

`each_on_own_connection(url, items, jobs, work)` starts up to `jobs` threads; each opens its own
autocommit connection, then takes the next item in the order given (callers sort largest first so
the longest item does not start last) and runs `work(conn, item)` until none is left.

Invariants:
- At most `jobs` connections (and never more than there are items); every one is closed before
  the call returns.
- `on_done(done, total, item, result, seconds)` runs in the CALLING thread, once per finished item,
  with `done` counting 1, 2, ... total (so a progress bar needs no lock).
- The first failure (a worker's error, a failed connection, an error in `on_done`, an interrupt of
  the calling thread) stops the pool: no item is started after it, every statement still running is
  cancelled (the cancel is repeated until each worker has ended, since one can reach the server just
  before its statement does), every thread is joined, and that first error is raised as it was;
  errors the cancel causes in the other workers are dropped. Only a worker whose server stops
  answering altogether (no reply to the cancel either) is left behind, as a daemon thread, after
  `STOP_WAIT` seconds.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from . import dbinfo
from .dburl import DatabaseUrl

T = TypeVar("T")
R = TypeVar("R")

STOP_WAIT = 30.0  # seconds to wait for cancelled workers before leaving them behind


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def each_on_own_connection(url: DatabaseUrl, items: Sequence[T], jobs: int,
                           work: Callable[[psycopg.Connection[Any], T], R], *, application: str,
                           setup: Callable[[psycopg.Connection[Any]], None] | None = None,
                           on_done: Callable[[int, int, T, R, float], None] | None = None,
                           ) -> list[tuple[T, R, float]]:
    """(item, result, seconds) of every item, in the order they finished."""
    total = len(items)
    if not total:
        return []
    lock = threading.Lock()
    stop = threading.Event()
    pending = iter(range(total))
    conns: list[psycopg.Connection[Any]] = []
    results: queue.Queue[tuple[int, Any, float] | _Failed] = queue.Queue()

    def worker() -> None:
        try:
            with dbinfo.connect(url, autocommit=True, application=application) as conn:
                with lock:
                    conns.append(conn)
                try:
                    if setup is not None:
                        setup(conn)
                    while not stop.is_set():
                        with lock:
                            index = next(pending, None)
                        if index is None:
                            return
                        t0 = time.monotonic()
                        value = work(conn, items[index])
                        results.put((index, value, time.monotonic() - t0))
                finally:
                    with lock:
                        conns.remove(conn)
        except BaseException as exc:  # handed to the calling thread, which raises it
            results.put(_Failed(exc))

    threads = [threading.Thread(target=worker, name=f"{application}-{i}", daemon=True)
               for i in range(max(1, min(jobs, total)))]
    for t in threads:
        t.start()
    finished: list[tuple[T, R, float]] = []
    try:
        while len(finished) < total:
            try:
                got = results.get(timeout=0.5)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and results.empty():
                    raise RuntimeError(f"{application}: workers ended with "
                                       f"{total - len(finished)} of {total} items not done") from None
                continue
            if isinstance(got, _Failed):
                raise got.error
            index, value, seconds = got
            finished.append((items[index], value, seconds))
            if on_done is not None:
                on_done(len(finished), total, items[index], value, seconds)
    except BaseException:
        stop.set()
        _cancel_until_ended(threads, conns, lock)
        raise
    for t in threads:
        t.join()
    return finished


def _cancel_until_ended(threads: list[threading.Thread], conns: list[psycopg.Connection[Any]],
                        lock: threading.Lock) -> None:
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        with lock:  # held: a worker closes its connection only after taking it off the list
            for conn in conns:
                with contextlib.suppress(psycopg.Error, OSError):
                    conn.cancel_safe(timeout=5)
        for t in threads:
            t.join(timeout=0.2)
        if not any(t.is_alive() for t in threads):
            return
