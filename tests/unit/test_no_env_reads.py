"""Configuration is read once, by settings.py, in each shell: no other module of the package touches the
process environment (an AST walk over layers/common/pgrunbook/), and only the shells build Settings.

The one exception is not configuration: pgtools.tool_env copies the environment into the pg tools'
child processes (and finds them on its PATH)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import project_root

PACKAGE = project_root() / "layers" / "common" / "pgrunbook"
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv", "get_exec_path"}
ALLOWED = {("settings.py", None), ("pgtools.py", "tool_env")}  # (module, function; None = the whole module)
# where Settings are built from the environment: the CLI's main, the Lambda handler shell, the Fargate
# task, the local runner, and the sample app's own main (a separate program)
SHELLS = {("cli/__init__.py", "main"), ("lambda_support.py", "configured"), ("fargate_task.py", "main"),
          ("localcloud/cloud.py", "__init__"), ("sampleapp.py", "main")}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _functions(tree: ast.AST) -> Iterator[tuple[str | None, ast.AST]]:
    """Every node with the name of the innermost function around it (None at module level)."""
    def walk(node: ast.AST, where: str | None) -> Iterator[tuple[str | None, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where
            yield inner, child
            yield from walk(child, inner)

    yield from walk(tree, None)


def environment_reads(name: str, tree: ast.Module) -> list[str]:
    """`os.environ`, `os.getenv(...)`, `from os import environ`, through any alias of `os`."""
    aliases = {"os"} | {a.asname for n in ast.walk(tree) if isinstance(n, ast.Import)
                        for a in n.names if a.name == "os" and a.asname}
    found = []
    for where, node in _functions(tree):
        hit = (isinstance(node, ast.Attribute) and node.attr in ENV_NAMES and isinstance(node.value, ast.Name)
               and node.value.id in aliases) or (
            isinstance(node, ast.ImportFrom) and node.module in ("os", "posix")
            and any(a.name in ENV_NAMES for a in node.names))
        if hit and (name, None) not in ALLOWED and (name, where) not in ALLOWED:
            found.append(f"{name}:{getattr(node, 'lineno', '?')} ({where or 'module level'})")
    return found


def settings_built(name: str, tree: ast.Module) -> list[str]:
    """Calls of Settings.from_env (or any `X.from_env`): where configuration is read from the environment."""
    found = []
    for where, node in _functions(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_env"
                and (name, where) not in SHELLS and name != "settings.py"):
            found.append(f"{name}:{node.lineno} ({where or 'module level'})")
    return found


def test_no_module_but_settings_reads_the_environment() -> None:
    reads = [r for name, tree in modules() for r in environment_reads(name, tree)]
    assert not reads, "read configuration through settings.Settings (built once by the shell): " + ", ".join(reads)


def test_only_the_shells_build_settings_from_the_environment() -> None:
    built = [b for name, tree in modules() for b in settings_built(name, tree)]
    assert not built, "take the shell's Settings as a parameter instead: " + ", ".join(built)
    # and the shells do build them (the list above is not stale)
    calls = {(name, where) for name, tree in modules() for where, node in _functions(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_env"}
    assert calls >= SHELLS, sorted(SHELLS - calls)


def test_the_checks_see_what_they_must() -> None:
    """The walk is not blind: every form of an environment read, and a from_env call, is reported."""
    src = ("import os\nimport os as o\nfrom os import getenv\n"
           "def f():\n    return os.environ['A'], o.getenv('B'), os.environ.get('C')\n"
           "def g():\n    return Settings.from_env()\n")
    tree = ast.parse(src)
    assert len(environment_reads("x.py", tree)) == 4
    assert environment_reads("settings.py", tree) == []
    assert settings_built("x.py", tree) == ["x.py:7 (g)"]
    assert settings_built("fargate_task.py", ast.parse("def main():\n    return Settings.from_env()\n")) == []


def test_the_package_is_where_the_test_looks() -> None:
    assert (PACKAGE / "settings.py").is_file() and Path(PACKAGE / "pgtools.py").is_file()
