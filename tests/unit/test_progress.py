"""progress.py: the reporters (lines with percentage and ETA on a fake clock, a rich bar on a terminal, the
CLI's choice), the ticker and phases; no database."""

from __future__ import annotations

import io
import logging
import random
import subprocess
import sys
import threading

import pytest

from pgrunbook import progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def captured() -> Capture:
    logger = logging.getLogger("test.progress")
    logger.handlers[:] = [cap := Capture()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return cap


def test_lines_throttle_and_give_percent_and_eta(captured: Capture) -> None:
    clock = Clock()
    lines = progress.Lines(5.0, logger=logging.getLogger("test.progress"), clock=clock)
    lines.start("backup", 1000, "bytes")
    for t, done in ((1, 100), (4.9, 200), (5.0, 250), (7, 300), (10.5, 500)):
        clock.now = 100 + t
        lines.update(done)
    lines.finish()
    messages = [r.getMessage() for r in captured.records]
    assert messages == [
        "backup started (1.0 kB expected)",
        "backup in progress: 25% (250 B of 1.0 kB) ETA 15s",  # 250 in 5 s: 750 left at 50 B/s
        "backup in progress: 50% (500 B of 1.0 kB) ETA 10s",
        "backup finished: 100% (1.0 kB of 1.0 kB) in 10s",
    ]
    last = captured.records[2]
    assert (last.progress, last.done, last.total, last.unit, last.percent, last.eta_seconds) == (  # type: ignore[attr-defined]
        "backup", 500, 1000, "bytes", 50.0, 10.5)


def test_lines_never_claim_100_before_finish_nor_go_backwards(captured: Capture) -> None:
    """Generated: random updates around an estimated total (fixed seed)."""
    rng = random.Random(14)
    clock = Clock()
    lines = progress.Lines(0, logger=logging.getLogger("test.progress"), clock=clock)
    lines.start("restore", 10_000, "rows")
    for _ in range(300):
        clock.now += rng.random()
        lines.update(rng.randrange(0, 12_000), rng.choice([None, None, 10_000, 11_000]))
    percents = [r.percent for r in captured.records[1:]]  # type: ignore[attr-defined]
    dones = [r.done for r in captured.records[1:]]  # type: ignore[attr-defined]
    assert dones == sorted(dones)
    assert all(p is None or p <= 99.0 for p in percents)
    assert any(p is None for p in percents)  # past the estimate: no percentage, not a false one
    lines.finish()
    assert captured.records[-1].percent == 100.0  # type: ignore[attr-defined]


def test_lines_without_total_say_how_much(captured: Capture) -> None:
    clock = Clock()
    lines = progress.Lines(0, logger=logging.getLogger("test.progress"), clock=clock)
    lines.start("verify", None, "tables")
    clock.now += 1
    lines.update(3)
    clock.now += 1
    lines.update(4, 10)
    assert [r.getMessage() for r in captured.records[1:]] == [
        "verify in progress: (3 tables)", "verify in progress: 40% (4 tables of 10 tables) ETA 3s"]


def test_ticker_polls_until_stopped_and_survives_a_failing_poll(captured: Capture) -> None:
    seen: list[float] = []
    calls = [0]
    polled = threading.Event()

    class Recorder(progress.Silent):
        poll_seconds = 0.01

        def update(self, done: float, total: float | None = None) -> None:
            seen.append(done)
            if len(seen) >= 3:
                polled.set()

    def poll() -> float:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError("the server went away for a moment")
        return float(calls[0])

    with progress.Ticker(Recorder(), poll):
        assert polled.wait(10)
    after = len(seen)
    assert seen[:3] == [2.0, 3.0, 4.0]
    assert len(seen) == after  # stopped with the block


def test_phase_finishes_only_when_the_block_succeeds(captured: Capture) -> None:
    lines = progress.Lines(0, logger=logging.getLogger("test.progress"), clock=Clock())
    with pytest.raises(RuntimeError), progress.phase(lines, "restore", 10, "rows"):
        raise RuntimeError("pg_restore failed")
    assert [r.getMessage() for r in captured.records] == ["restore started (10 rows expected)"]
    with progress.phase(lines, "analyze", None, "tables") as shown:
        progress.counted_callback(shown)(2, 2, "t")
    assert captured.records[-1].getMessage().startswith("analyze finished: 100% (2 tables of 2 tables)")
    with progress.phase(lines, "restore", 10, "bytes") as shown:
        progress.counted_callback(shown)(10)  # a byte counter: done only
    assert captured.records[-1].getMessage().startswith("restore finished: 100% (10 B of 10 B)")


def test_with_progress_passes_the_callback_only_to_a_function_that_takes_it(captured: Capture) -> None:
    lines = progress.Lines(0, logger=logging.getLogger("test.progress"), clock=Clock())

    def counts(a: int, on_progress: object = None) -> object:
        assert callable(on_progress)
        on_progress(1, 2, "t1", 0.1)
        on_progress(2, 2, "t2", 0.1)
        return a

    def plain(a: int) -> int:
        return a

    assert progress.with_progress(counts, lines, "verify", "tables", 7) == 7
    assert progress.with_progress(plain, lines, "verify", "tables", 8) == 8
    assert [r.getMessage().split(":")[0] for r in captured.records] == [
        "verify started", "verify in progress", "verify in progress", "verify finished"]


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_choice() -> None:
    assert isinstance(progress.for_cli(stream=io.StringIO(), every=3), progress.Lines)
    assert isinstance(progress.for_cli(stream=FakeTty(), quiet=True), progress.Silent)
    bar = progress.for_cli(stream=FakeTty())
    assert isinstance(bar, progress.Bar)


def test_bar_draws_percentage_on_its_stream_and_routes_log_lines_above_it() -> None:
    out = FakeTty()
    bar = progress.Bar(out)
    logger = logging.getLogger("pgrunbook")
    handler = logging.StreamHandler(out)
    old = logger.handlers[:]
    logger.handlers[:] = [handler]
    try:
        bar.start("restore", 200, "rows")
        bar.update(50)
        assert handler.stream is not out  # while drawn, logs go through rich's console
        logger.warning("a warning while the bar is drawn")
        bar.finish()
        assert handler.stream is out
    finally:
        logger.handlers[:] = old
    text = out.getvalue()
    assert "restore" in text and "100%" in text and "200/200" in text
    assert "a warning while the bar is drawn" in text


def test_core_import_does_not_import_rich() -> None:
    code = ("import sys, pgrunbook.progress, pgrunbook.backup, pgrunbook.restore, pgrunbook.drill; "
            "p = pgrunbook.progress.default(None, 5); p.start('x', 1); p.update(1); p.finish(); "
            "print('rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
