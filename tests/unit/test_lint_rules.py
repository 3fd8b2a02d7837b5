"""The lint gate, rule by rule: for every rule of pgrunbook.migrations.lint, SQL that must trigger it and
SQL that must not (usually the expand/contract fix the rule itself suggests). Only pgrunbook's own
checks run here (squawk is optional and has its own tests); no database is needed.

A generated variant of every case (fixed seeds: keywords in random case, whitespace and line breaks
changed outside quotes and comments) must give the same verdict: the rules read SQL, not spelling."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from pgrunbook.migrations.files import Migration
from pgrunbook.migrations.lint import RULES, LintReport, lint_migrations

BOM = b"\xef\xbb\xbf"
FK = 'ALTER TABLE "Job" ADD CONSTRAINT "Job_userId_fkey" FOREIGN KEY ("userId") REFERENCES "User"("id")'

# rule -> (SQL that must trigger it, [SQL that must not])
CASES: dict[str, tuple[str | bytes, list[str | bytes]]] = {
    "index-not-concurrent": (
        'CREATE INDEX "Account_name_idx" ON "Account"("name");',
        ['CREATE INDEX CONCURRENTLY "Account_name_idx" ON "Account"("name");',
         'CREATE TABLE "Fresh" (id int);\nCREATE INDEX "Fresh_id_idx" ON "Fresh"("id");']),
    "drop-index-not-concurrent": (
        'DROP INDEX "Account_name_idx";',
        ['DROP INDEX CONCURRENTLY "Account_name_idx";']),
    "not-null-column-without-default": (
        'ALTER TABLE "Account" ADD COLUMN "plan" TEXT NOT NULL;',
        ["ALTER TABLE \"Account\" ADD COLUMN \"plan\" TEXT NOT NULL DEFAULT 'free';",
         'ALTER TABLE "Account" ADD COLUMN "plan" TEXT;']),
    "set-not-null": (
        'ALTER TABLE "Account" ALTER COLUMN "plan" SET NOT NULL;',
        ['ALTER TABLE "Account" ADD CONSTRAINT "Account_plan_nn" CHECK ("plan" IS NOT NULL) NOT VALID;']),
    "volatile-default": (
        'ALTER TABLE "Account" ADD COLUMN "token" UUID DEFAULT gen_random_uuid();',
        ['ALTER TABLE "Account" ADD COLUMN "visits" INTEGER DEFAULT 0;',
         'ALTER TABLE "Account" ALTER COLUMN "token" SET DEFAULT gen_random_uuid();']),
    "column-type-change": (
        'ALTER TABLE "Account" ALTER COLUMN "email" TYPE VARCHAR(320);',
        ['ALTER TABLE "Account" ADD COLUMN "email2" VARCHAR(320);']),
    "drop-column": (
        'ALTER TABLE "Account" DROP COLUMN "oldName";',
        ['-- pgrunbook-ignore drop-column\nALTER TABLE "Account" DROP COLUMN "oldName";',
         'ALTER TABLE "Account" DROP CONSTRAINT "Account_plan_nn";']),
    "drop-table": (
        'DROP TABLE "Legacy";',
        ['CREATE TABLE "Scratch" (id int);\nDROP TABLE "Scratch";',
         '-- pgrunbook-ignore drop-table\nDROP TABLE "Legacy";']),
    "constraint-not-valid": (
        FK + ";",
        [FK + " NOT VALID;"]),
    "validate-in-same-transaction": (
        FK + ' NOT VALID;\nALTER TABLE "Job" VALIDATE CONSTRAINT "Job_userId_fkey";',
        ['ALTER TABLE "Job" VALIDATE CONSTRAINT "Job_userId_fkey";']),
    "unique-constraint": (
        'ALTER TABLE "Account" ADD CONSTRAINT "Account_email_key" UNIQUE ("email");',
        ['ALTER TABLE "Account" ADD CONSTRAINT "Account_email_key" UNIQUE USING INDEX "Account_email_idx";']),
    "rename": (
        'ALTER TABLE "Account" RENAME COLUMN "oldName" TO "newName";',
        ['ALTER TABLE "Account" RENAME CONSTRAINT "Account_plan_nn" TO "Account_plan_not_null";',
         'ALTER TABLE "Account" ADD COLUMN "newName" TEXT;']),
    "table-rewrite": (
        'ALTER TABLE "Account" SET TABLESPACE "fast";',
        ['ALTER TABLE "Account" SET (fillfactor = 90);']),
    "full-table-lock": (
        'TRUNCATE "Account";',
        ['REINDEX INDEX CONCURRENTLY "Account_email_idx";',
         'DELETE FROM "Account" WHERE "id" BETWEEN 1 AND 1000;']),
    "non-transactional-mixed": (
        'CREATE INDEX CONCURRENTLY "Account_name_idx" ON "Account"("name");\n'
        'ALTER TABLE "Account" ADD COLUMN "nick" TEXT;',
        ['CREATE INDEX CONCURRENTLY "Account_name_idx" ON "Account"("name");']),
    "unbatched-backfill": (
        "UPDATE \"Account\" SET \"plan\" = 'free';",
        ["UPDATE \"Account\" SET \"plan\" = 'free' WHERE \"id\" BETWEEN 1 AND 1000;",
         "CREATE TABLE \"Fresh\" (id int, plan text);\nUPDATE \"Fresh\" SET \"plan\" = 'free';"]),
    "drop-database": (
        'DROP DATABASE "app";',
        ["SELECT 'DROP DATABASE app is never run from a migration';"]),
    "file-encoding": (
        BOM + b'ALTER TABLE "Account" ADD COLUMN "nick" TEXT;\n',
        ['-- the café\'s column\nALTER TABLE "Account" ADD COLUMN "nick" TEXT;']),
}
ENCODING_TRIGGERS = [b'-- caf\xe9 (latin-1)\nALTER TABLE "Account" ADD COLUMN "nick" TEXT;\n']


def lint(sql: str | bytes, mode: str = "strict") -> LintReport:
    data = sql if isinstance(sql, bytes) else sql.encode()
    migration = Migration("20260101000000_case", Path("prisma/migrations/20260101000000_case/migration.sql"), data)
    return lint_migrations([migration], mode, use_squawk=False, server_major=16)


def rules(report: LintReport) -> set[str]:
    return {f.rule for f in report.findings}


def test_every_rule_has_cases() -> None:
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_triggers(rule: str) -> None:
    trigger, _ = CASES[rule]
    report = lint(trigger)
    (finding,) = [f for f in report.findings if f.rule == rule]
    severity, fix = RULES[rule]
    assert (finding.severity, finding.fix) == (severity, fix)
    assert report.blocked == any(f.severity == "error" for f in report.findings)
    if rules(report) == {rule}:
        assert report.blocked is (severity == "error")
    assert not lint(trigger, "warn").blocked  # warn reports, never blocks


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_stays_quiet(rule: str) -> None:
    for quiet in CASES[rule][1]:
        assert rule not in rules(lint(quiet)), quiet


def test_a_file_that_is_not_utf8_is_an_encoding_finding() -> None:
    for data in ENCODING_TRIGGERS:
        assert rules(lint(data)) == {"file-encoding"}


_TOKENS = re.compile(r'("(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'|--[^\n]*|\s+|[A-Za-z_][A-Za-z0-9_]*|.)', re.S)


def respell(sql: str, rng: random.Random) -> str:
    """The same SQL, spelled differently: words outside quotes in random case, whitespace between
    tokens varied (a line break stays after a comment)."""
    out: list[str] = []
    for token in _TOKENS.findall(sql):
        if token.isspace():
            out.append("\n" if out and out[-1].startswith("--") else rng.choice([" ", "  ", "\n", "\n    ", "\t"]))
        elif token[0].isalpha() or token[0] == "_":
            out.append("".join(c.upper() if rng.random() < 0.5 else c.lower() for c in token))
        else:
            out.append(token)
    return "".join(out)


@pytest.mark.parametrize("seed", [7, 2026])
def test_verdicts_do_not_depend_on_spelling(seed: int) -> None:
    rng = random.Random(seed)
    for rule, (trigger, quiet) in sorted(CASES.items()):
        for sql, expected in [(trigger, True), *((q, False) for q in quiet)]:
            if isinstance(sql, bytes):
                continue
            variant = respell(sql, rng)
            assert (rule in rules(lint(variant))) is expected, (rule, variant)
