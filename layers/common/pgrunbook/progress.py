"""Progress of long commands: one small reporter protocol the core calls, three ways to show it.

The core calls `start(label, total, unit)`, then `update(done)` as often as it likes (reporters
throttle; `update(done, total=...)` corrects an estimated total), then `finish()`; a command with
phases (drill: restore then verify; migrate: backup then migrations) starts one after the other.
Sources that cannot call back (a byte counter written by another thread, a folder pg_dump fills,
a server's progress views) are polled by a `Ticker` on its own thread.

Invariants:
- the core never reads the environment nor checks for a terminal: the shell picks the reporter
  (`for_cli`: a `Bar` when stderr is a terminal, `Lines` otherwise, `Silent` with --quiet) and
  passes it down; Lambda and Fargate get `Lines` (what the core uses when given none, with
  Settings.progress_seconds, $PGRUNBOOK_PROGRESS_SECONDS);
- nothing is ever written to stdout: a `Bar` draws on stderr, `Lines` go to the logger (stderr in
  the CLI, the function's log on Lambda), so `--json` keeps stdout one JSON object;
- `rich` is imported only when a `Bar` is made (on a terminal): importing this module, and Lambda,
  never need it;
- progress never fails the operation: a reporter or a poll that raises is logged at debug level and
  ignored; the percentage shown stays below 100 % until `finish()` (an estimated total can be
  passed) and `done` never goes backwards.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

log = logging.getLogger("pgrunbook.progress")

BAR_REFRESH = 0.2  # seconds between polls when a bar is drawn


class Progress(Protocol):
    """What the core calls. `poll_seconds`: how often a Ticker should poll a source for this reporter."""

    poll_seconds: float

    def start(self, label: str, total: float | None, unit: str = "bytes") -> None: ...

    def update(self, done: float, total: float | None = None) -> None: ...

    def finish(self) -> None: ...


def human(n: float, unit: str) -> str:
    """`n` of `unit` for a person: bytes as kB/MB/GB (10^3), anything else as a count with its unit."""
    if unit != "bytes":
        return f"{int(n):,} {unit}"
    for size, name in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= size:
            return f"{n / size:.1f} {name}"
    return f"{int(n)} B"


def human_seconds(s: float) -> str:
    s = max(0, round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Silent:
    """Shows nothing (--quiet, or a caller that reports otherwise)."""

    poll_seconds = 1.0

    def start(self, label: str, total: float | None, unit: str = "bytes") -> None:
        return None

    def update(self, done: float, total: float | None = None) -> None:
        return None

    def finish(self) -> None:
        return None


class _State:
    """What every reporter tracks: label, unit, done (monotonic), total, the start time."""

    def __init__(self, label: str, total: float | None, unit: str, clock: Callable[[], float]) -> None:
        self.label, self.total, self.unit = label, total if total and total > 0 else None, unit
        self.done = 0.0
        self.t0 = clock()

    def advance(self, done: float, total: float | None) -> None:
        if total is not None and total > 0:
            self.total = total
        self.done = max(self.done, done)

    def percent(self) -> float | None:
        """Below 100 until finish: an estimated total may be passed before the end."""
        if self.total is None or self.done > self.total:  # past an estimate: no honest percentage
            return None
        return min(100.0 * self.done / self.total, 99.0)

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate so far; None while nothing moved, without a total, or past it."""
        elapsed = now - self.t0
        if self.total is None or self.done <= 0 or elapsed <= 0 or self.done >= self.total:
            return None
        return (self.total - self.done) * elapsed / self.done


class Lines:
    """A log line at most every `every` seconds (and one at the start and the end): percentage, done of
    total, ETA. For logs read later (Lambda, Fargate, CI): `<label> in progress: 42% (1.2 GB of 2.9 GB),
    ETA 1m05s` with the same facts as fields (progress, done, total, unit, percent, eta_seconds)."""

    def __init__(self, every: float = 5.0, *, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every = max(every, 0.0)
        self.poll_seconds = min(max(self.every / 2, 0.05), 1.0)
        self.log = logger or log
        self.clock = clock
        self._state: _State | None = None
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self, label: str, total: float | None, unit: str = "bytes") -> None:
        with self._lock:
            self._state = _State(label, total, unit, self.clock)
            self._last = self._state.t0
            total_text = f" ({human(total, unit)} expected)" if total else ""
            self.log.info(f"{label} started{total_text}",
                          extra={"progress": label, "total": _int(self._state.total), "unit": unit})

    def update(self, done: float, total: float | None = None) -> None:
        with self._lock:
            st = self._state
            if st is None:
                return
            st.advance(done, total)
            now = self.clock()
            if now - self._last < self.every:
                return
            self._last = now
            self._emit(st, now)

    def _emit(self, st: _State, now: float, *, finished: bool = False) -> None:
        pct = 100.0 if finished else st.percent()
        eta = None if finished else st.eta(now)
        parts = [f"{st.label} {'finished' if finished else 'in progress'}:"]
        if pct is not None:
            parts.append(f"{pct:.0f}%")
        of = (f" of {human(st.total, st.unit)}" if st.done <= st.total else f", above the {human(st.total, st.unit)} "
              "expected") if st.total else ""
        parts.append(f"({human(st.done, st.unit)}{of})")
        if eta is not None:
            parts.append(f"ETA {human_seconds(eta)}")
        elif not finished and pct is not None:
            parts.append("ETA ?")
        if finished:
            parts.append(f"in {human_seconds(now - st.t0)}")
        self.log.info(" ".join(parts), extra={
            "progress": st.label, "done": _int(st.done), "total": _int(st.total), "unit": st.unit,
            "percent": None if pct is None else round(pct, 1),
            "eta_seconds": None if eta is None else round(eta, 1)})

    def finish(self) -> None:
        with self._lock:
            st, self._state = self._state, None
            if st is None:
                return
            if st.total is None or st.done > st.total:
                st.total = st.done
            st.done = st.total
            self._emit(st, self.clock(), finished=True)


def _int(n: float | None) -> int | None:
    return None if n is None else int(n)


def rich_progress(console: Any, *, label_width: int = 8, indent: str = "", unit: str = "bytes",
                  disable: bool = False) -> Any:
    """The one rich progress bar of pgrunbook (the CLI's `Bar` and the demo's byte bars): label, bar,
    percentage, done/total, speed or count, time remaining. rich is imported here, on demand."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    amount = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),
                                                                                 TextColumn(unit))
    return Progress(TextColumn(f"{indent}{{task.description:<{label_width}}}"), BarColumn(bar_width=40),
                    TaskProgressColumn(), *amount, TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=disable, transient=False, redirect_stdout=False,
                    redirect_stderr=False)


class Bar:
    """A rich progress bar on stderr (a terminal): percentage, amount, speed, ETA. While it is drawn, the
    CLI's log lines are printed above it (through rich's console) instead of through it."""

    poll_seconds = BAR_REFRESH

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream if stream is not None else sys.stderr, markup=False, highlight=False,
                               emoji=False)
        self._progress: Any = None
        self._task: Any = None
        self._state: _State | None = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._lock = threading.Lock()

    def start(self, label: str, total: float | None, unit: str = "bytes") -> None:
        self.finish()
        with self._lock:
            self._state = _State(label, total, unit, time.monotonic)
            self._progress = rich_progress(self.console, label_width=max(len(label), 8), unit=unit)
            self._task = self._progress.add_task(label, total=self._state.total)
            self._progress.start()
            self._route_logs()

    def update(self, done: float, total: float | None = None) -> None:
        with self._lock:
            st = self._state
            if st is None or self._progress is None:
                return
            st.advance(done, total)
            shown = st.done if st.total is None else min(st.done, st.total * 0.99)
            self._progress.update(self._task, completed=shown, total=st.total)

    def finish(self) -> None:
        with self._lock:
            st, progress = self._state, self._progress
            self._state, self._progress = None, None
            if progress is None or st is None:
                return
            final = max(st.done, st.total or 0)
            progress.update(self._task, completed=final, total=final or None)
            progress.stop()
            self._restore_logs()

    def _route_logs(self) -> None:
        """Log lines written to the terminal the bar is on go through rich's console (above the bar)."""
        proxy = _ConsoleWriter(self.console)
        for handler in logging.getLogger("pgrunbook").handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, self.console.file):
                self._handlers.append((handler, handler.stream))
                handler.setStream(proxy)

    def _restore_logs(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()


class _ConsoleWriter:
    """A text stream that prints each line through a rich console (so a live bar stays below it)."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def write(self, text: str) -> int:
        if text.strip():
            self.console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        return None


def for_cli(*, quiet: bool = False, stream: IO[str] | None = None, every: float = 5.0) -> Progress:
    """The CLI's choice: nothing with --quiet, a bar when stderr is a terminal, lines every `every` seconds
    (Settings.progress_seconds) otherwise. stdout is never used, so --json output stays one object."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return Silent()
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Bar(stream) if tty else Lines(every)


def default(progress: Progress | None, every: float) -> Progress:
    """The reporter the core uses: the one passed, else lines (Lambda, Fargate, library callers)."""
    return progress if progress is not None else Lines(every)


class Ticker:
    """Polls `poll()` (-> done, or (done, total), or None for "no news") every `reporter.poll_seconds` on a
    daemon thread and passes it to `reporter.update`, between `with` entry and exit. A poll that raises
    is logged at debug level and the ticker goes on; `stop()` (or leaving the block) ends it."""

    def __init__(self, reporter: Progress, poll: Callable[[], Any], *, name: str = "progress") -> None:
        self.reporter, self.poll = reporter, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def tick(self) -> None:
        try:
            value = self.poll()
            if value is None:
                return
            if isinstance(value, tuple):
                self.reporter.update(value[0], value[1])
            else:
                self.reporter.update(value)
        except Exception as exc:  # progress never fails the operation
            log.debug("progress poll failed", extra={"reason": str(exc)})

    def _run(self) -> None:
        while not self._stop.wait(self.reporter.poll_seconds):
            self.tick()


@contextlib.contextmanager
def phase(reporter: Progress, label: str, total: float | None, unit: str = "bytes",
          poll: Callable[[], Any] | None = None) -> Iterator[Progress]:
    """`with phase(reporter, "restore", total, "rows", poll):` start, poll while the block runs (if `poll`),
    then one last poll and finish when the block succeeds (a failed block is not shown as 100 %)."""
    safely(reporter.start, label, total, unit)
    ticker = Ticker(reporter, poll) if poll is not None else None
    ok = False
    try:
        if ticker is not None:
            with ticker:
                yield reporter
            ticker.tick()
        else:
            yield reporter
        ok = True
    finally:
        if ok:
            safely(reporter.finish)
        else:
            safely(abandon, reporter)


def abandon(reporter: Progress) -> None:
    """Stop drawing after a failure without claiming 100 %: a Bar stops where it was; lines say nothing more."""
    if isinstance(reporter, Bar):
        with reporter._lock:
            progress, reporter._progress, reporter._state = reporter._progress, None, None
            if progress is not None:
                progress.stop()
            reporter._restore_logs()
    elif isinstance(reporter, Lines):
        with reporter._lock:
            reporter._state = None


def safely(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # progress never fails the operation
        log.debug("progress reporter failed", extra={"reason": str(exc)})


def with_progress(fn: Callable[..., Any], reporter: Progress, label: str, unit: str, *args: Any) -> Any:
    """`fn(*args, on_progress=callback)` shown as phase `label` (counts of `unit`) when `fn` takes an
    `on_progress(done, total, ...)` callback (verify's counts); plain `fn(*args)` otherwise."""
    import inspect

    if "on_progress" not in inspect.signature(fn).parameters:
        return fn(*args)
    with phase(reporter, label, None, unit) as shown:
        return fn(*args, on_progress=counted_callback(shown))


def counted_callback(reporter: Progress) -> Callable[..., None]:
    """A callback `(done[, total, *rest])` (verify's on_progress, the migrations' on_applied, a byte counter)
    feeding `reporter`; it never raises."""
    def callback(done: float, total: float | None = None, *rest: Any) -> None:
        safely(reporter.update, done, total)
    return callback
