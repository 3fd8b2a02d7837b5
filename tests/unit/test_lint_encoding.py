"""The lint gate and migration.sql files that are not UTF-8 text without a byte-order mark.

PostgreSQL (and so Prisma) fails on a BOM (a syntax error at the first statement) and on bytes
that are not UTF-8: the gate reports either as an error finding naming the file, in its normal
output (one line per finding), instead of missing the first statement's problems (BOM) or
stopping with an exception (invalid UTF-8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgrunbook.cli import main
from pgrunbook.migrations import lint_migrations, read_migrations

INDEX = 'CREATE INDEX "Job_title_idx" ON "Job"("title");\n'
BOM = b"\xef\xbb\xbf"


def folder(tmp_path: Path, scripts: dict[str, bytes]) -> Path:
    root = tmp_path / "migrations"
    for name, data in scripts.items():
        (root / name).mkdir(parents=True)
        (root / name / "migration.sql").write_bytes(data)
    return root


@pytest.mark.parametrize("use_squawk", [False, True])
def test_a_byte_order_mark_is_an_error_naming_the_file_and_the_rest_is_still_checked(
        tmp_path: Path, use_squawk: bool) -> None:
    root = folder(tmp_path, {"20260101000000_bom": BOM + INDEX.encode()})
    report = lint_migrations(read_migrations(root), "strict", use_squawk=use_squawk, server_major=18)
    path = root / "20260101000000_bom" / "migration.sql"
    by_rule = {f.rule: f for f in report.errors}
    assert set(by_rule) == {"file-encoding", "index-not-concurrent"}  # the index behind the BOM is still found
    encoding = by_rule["file-encoding"]
    assert encoding.line == 1 and str(path) in encoding.message and "byte-order mark" in encoding.message
    assert report.blocked
    head = encoding.text().splitlines()[0]
    assert head.startswith("ERROR   20260101000000_bom:1 [pgrunbook:file-encoding]") and str(path) in head
    assert "statement:" not in encoding.text()  # a file finding has no statement line


@pytest.mark.parametrize("use_squawk", [False, True])
def test_invalid_utf8_is_an_error_naming_the_file_and_line_not_an_exception(tmp_path: Path, use_squawk: bool) -> None:
    bad = b"-- a comment\nALTER TABLE \"Job\" ADD COLUMN \"note\" TEXT DEFAULT '\xff\xfe';\n"
    root = folder(tmp_path, {"20260101000000_latin1": bad, "20260102000000_index": INDEX.encode()})
    report = lint_migrations(read_migrations(root), "strict", use_squawk=use_squawk, server_major=18)
    findings = [(f.migration, f.rule) for f in report.findings]
    # the bad file gets one finding (squawk is not run on it: it fails with a backtrace there); the next is linted
    assert findings == [("20260101000000_latin1", "file-encoding"), ("20260102000000_index", "index-not-concurrent")]
    encoding = report.findings[0]
    path = root / "20260101000000_latin1" / "migration.sql"
    assert encoding.severity == "error" and encoding.line == 2
    offset = bad.index(b"\xff")
    assert encoding.message == f"{path} is not valid UTF-8 (invalid start byte at byte {offset}, line 2)"


def test_the_cli_gate_prints_one_line_per_finding_and_exits_1(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = folder(tmp_path, {"20260101000000_bom": BOM + b"SELECT 1;\n", "20260102000000_bad": b"SELECT '\xc3';\n"})
    assert main(["migrate", "lint", "--migrations", str(root)]) == 1
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert len(heads) == 2 and all("[pgrunbook:file-encoding]" in h for h in heads)
    assert str(root / "20260101000000_bom" / "migration.sql") in heads[0]
    assert str(root / "20260102000000_bad" / "migration.sql") in heads[1]
    assert main(["migrate", "lint", "--migrations", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [f["rule"] for f in report["findings"]] == ["file-encoding", "file-encoding"] and report["blocked"]


def test_clean_utf8_passes_and_the_bytes_are_untouched(tmp_path: Path) -> None:
    data = "-- grüße\nSELECT 'ünïcode';\n".encode()
    root = folder(tmp_path, {"20260101000000_ok": data})
    (migration,) = read_migrations(root)
    assert migration.encoding_problem() is None
    assert lint_migrations([migration], "strict", use_squawk=False).findings == []
    assert (root / "20260101000000_ok" / "migration.sql").read_bytes() == data
