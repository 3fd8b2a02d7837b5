"""Counting rows in COPY text data (rowcount.py): exact, or None when the data does not end as pg_dump ends it."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import pytest
import zstandard

from pgrunbook.errors import BackupFailed
from pgrunbook.rowcount import CHUNK, TERMINATOR, count_copy_rows, count_data_file


def _copy_text(value: str) -> str:
    """A value as COPY text format writes it (the escapes PostgreSQL uses)."""
    return (value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))


def _copy_data(rows: list[list[str | None]]) -> bytes:
    lines = ["\t".join("\\N" if v is None else _copy_text(v) for v in row) + "\n" for row in rows]
    return "".join(lines).encode() + TERMINATOR


@pytest.mark.parametrize(("data", "rows"), [
    (TERMINATOR, 0),
    (b"1\tx\n" + TERMINATOR, 1),
    (b"1\ta\\nb\n2\t\\\\.\n3\t\\N\n" + TERMINATOR, 3),   # an escaped LF, a value that is a backslash-dot, a NULL
    (b"\\\\.\n" + TERMINATOR, 1),                         # a row whose only value is "\."
])
def test_rows_are_line_feeds_minus_the_terminator(data: bytes, rows: int) -> None:
    assert count_copy_rows(io.BytesIO(data)) == rows


@pytest.mark.parametrize("data", [
    b"",                              # nothing at all
    b"1\tx\n",                        # cut before the terminator
    b"1\tx\n\\.\n\n",                 # cut inside it
    b"1\tx\\.\n\n\n",                 # the terminator not on its own line
    b"1\tx\n" + TERMINATOR + b"2\n",  # something after it
])
def test_data_that_does_not_end_as_pg_dump_ends_it_is_not_counted(data: bytes) -> None:
    assert count_copy_rows(io.BytesIO(data)) is None


def test_generated_rows_count_exactly_across_chunk_boundaries() -> None:
    # Given seeded rows of hostile values (line feeds, CRs, tabs, backslashes, "\." alone, multibyte), some long
    # enough that rows straddle the 1 MB read size
    rng = random.Random(1414)
    alphabet = ["a", "\n", "\r", "\t", "\\", ".", "\\.", "é", "😀", " ", "\x00".replace("\x00", "z")]
    for _ in range(40):
        rows = [[("".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 200])))
                  if rng.random() > 0.1 else None) for _ in range(rng.randint(1, 4))]
                for _ in range(rng.randint(0, 300))]
        if rows and rng.random() < 0.3:
            rows[0][0] = "x" * (CHUNK + rng.randint(-5, 5))
        data = _copy_data(rows)
        # Then the count is the number of rows
        assert count_copy_rows(io.BytesIO(data)) == len(rows)


@pytest.mark.parametrize("suffix", [".dat", ".dat.gz", ".dat.zst"])
def test_each_compression_pg_dump_writes_is_read(tmp_path: Path, suffix: str) -> None:
    data = _copy_data([["1", "a\nb"], ["2", None]] * 1000)
    packed = {".dat": data, ".dat.gz": gzip.compress(data),
              ".dat.zst": zstandard.ZstdCompressor(level=1).compress(data)}[suffix]
    path = tmp_path / f"3001{suffix}"
    path.write_bytes(packed)
    assert count_data_file(path) == 2000


def test_a_data_file_of_several_zstd_frames_is_read_to_its_end(tmp_path: Path) -> None:
    first, second = _copy_data([["1"]] * 10)[:-len(TERMINATOR)], b"2\n" * 5 + TERMINATOR
    path = tmp_path / "3002.dat.zst"
    cctx = zstandard.ZstdCompressor(level=1)
    path.write_bytes(cctx.compress(first) + cctx.compress(second))
    assert count_data_file(path) == 15


@pytest.mark.parametrize("suffix", [".dat.gz", ".dat.zst"])
def test_a_data_file_that_does_not_decompress_fails_the_backup_in_one_line(tmp_path: Path, suffix: str) -> None:
    data = _copy_data([["1", "x" * 100]] * 5000)
    packed = gzip.compress(data) if suffix == ".dat.gz" else zstandard.ZstdCompressor(level=1).compress(data)
    path = tmp_path / f"3003{suffix}"
    damaged = bytearray(packed)
    damaged[len(damaged) // 2: len(damaged) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(damaged))
    with pytest.raises(BackupFailed) as caught:
        count_data_file(path)
    assert "3003" in str(caught.value) and "\n" not in str(caught.value)
