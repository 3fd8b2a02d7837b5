"""The error classes are the names state machines route on (Lambda's errorType is the class name, and
Step Functions' Retry/Catch match it exactly), so: every raise in the package names a specific class,
never the bare PgrunbookError; the classes live in errors.py, all under PgrunbookError (the CLI's exit
codes and every `except PgrunbookError` keep working); and every name the ASL routes on is one of them."""

from __future__ import annotations

import ast
import functools
import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgrunbook import errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "common" / "pgrunbook"
SOURCES = [*sorted(PACKAGE.rglob("*.py")), *sorted((ROOT / "functions").rglob("*.py")),
           *sorted((ROOT / "scripts").rglob("*.py"))]
ERROR_CLASSES = {name: cls for name, cls in vars(errors).items()
                 if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__}
# errors that are not pgrunbook's: AWS's, Step Functions' own, and names a Pass/Fail state gives a verdict
NOT_RAISED_BY_PGRUNBOOK = ("States.", "Lambda.", "ECS.", "SNS.")


@functools.cache
def _parsed() -> tuple[tuple[Path, ast.Module], ...]:
    return tuple((path, ast.parse(path.read_text(), filename=str(path))) for path in SOURCES)


def trees() -> Iterator[tuple[Path, ast.Module]]:
    yield from _parsed()


def _name(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def test_no_raise_uses_the_bare_base_class() -> None:
    bare = [f"{path.relative_to(ROOT)}:{node.lineno}" for path, tree in trees() for node in ast.walk(tree)
            if isinstance(node, ast.Raise) and _name(node.exc) == "PgrunbookError"]
    assert not bare, "raise a specific class from pgrunbook/errors.py (a state machine routes on its name): " + \
        ", ".join(bare)


def test_the_check_finds_a_bare_raise() -> None:
    """The AST check above is not vacuous: it sees both spellings."""
    for source in ("raise PgrunbookError('x')", "raise errors.PgrunbookError('x') from None", "raise PgrunbookError"):
        (node,) = ast.parse(source).body
        assert isinstance(node, ast.Raise) and _name(node.exc) == "PgrunbookError"


def test_error_classes_live_in_errors_py() -> None:
    """A class deriving from one of errors.py's classes is defined in errors.py (private control-flow
    exceptions, named with a leading underscore, may stay where they are used)."""
    known = set(ERROR_CLASSES) | {"Exception", "BaseException"}
    elsewhere = []
    for path, tree in trees():
        if path == PACKAGE / "errors.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") \
                    and any(_name(base) in known for base in node.bases):
                elsewhere.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not elsewhere, "define error classes in pgrunbook/errors.py: " + ", ".join(elsewhere)


def test_every_error_is_a_pgrunbook_error_with_its_exit_code() -> None:
    for name, cls in ERROR_CLASSES.items():
        if cls is errors.Interrupted:  # deliberately a KeyboardInterrupt (exit 128 + signal)
            continue
        assert issubclass(cls, errors.PgrunbookError), name
        assert cls.exit_code == (2 if issubclass(cls, errors.UsageError) else 1), name


@pytest.mark.parametrize("asl", sorted((ROOT / "statemachines").glob("*.asl.json")), ids=lambda p: p.name)
def test_every_name_the_state_machines_route_on_is_an_error_class(asl: Path) -> None:
    def routed(states: dict[str, dict[str, object]]) -> Iterator[str]:
        for state in states.values():
            for rule in [*state.get("Retry", []), *state.get("Catch", [])]:  # type: ignore[misc]
                yield from rule["ErrorEquals"]
            for sub in [state.get("ItemProcessor"), state.get("Iterator"), *state.get("Branches", [])]:  # type: ignore[misc]
                if isinstance(sub, dict):
                    yield from routed(sub["States"])

    names = set(routed(json.loads(asl.read_text())["States"]))
    ours = {n for n in names if not n.startswith(NOT_RAISED_BY_PGRUNBOOK)}
    assert ours <= set(ERROR_CLASSES), f"{asl.name} routes on names no pgrunbook error has: {ours - set(ERROR_CLASSES)}"


def test_error_names_are_unique_across_the_package() -> None:
    """Two classes of one name would be one name to a state machine but two to `except`."""
    defined: dict[str, list[str]] = {}
    for path, tree in trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in ERROR_CLASSES:
                defined.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert {n: p for n, p in defined.items() if len(p) > 1} == {}
