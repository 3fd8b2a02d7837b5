"""The CommonLayer ships what Lambda imports and nothing that runs elsewhere.

The test runs the layer's real build target (`make build-CommonLayer` in layers/common/) into a temp
folder with PYTHON=true, so the pip step (wheels from PyPI) is a no-op and only the package part is
built: no network, no PostgreSQL. Then:
- everything layers/common/layer-exclude.txt names (the CLI, the local cloud, the demo, the sample
  app, ...) is absent, and the list names what the issue keeps out;
- every pgrunbook module imported by functions/*/app.py, followed transitively through every import
  statement (lazy ones inside functions too: AST, not an import of the code), is in the built layer;
- no shipped module imports moto, cfn-lint or pytest.
"""

from __future__ import annotations

import ast
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import project_root

ROOT = project_root()
COMMON = ROOT / "layers" / "common"
# what the issue names as staying out of Lambda (paths inside pgrunbook/)
MUST_STAY_OUT = {"cli", "demo.py", "demo_data", "localcloud", "sample.py", "sampleapp.py"}
FOREIGN = {"moto", "cfnlint", "pytest"}  # dev dependencies: never imported by a shipped module


def excluded() -> list[str]:
    lines = (COMMON / "layer-exclude.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layer")
    res = subprocess.run(["make", "-s", "-C", str(COMMON), "build-CommonLayer", f"ARTIFACTS_DIR={out}", "PYTHON=true"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    package = out / "python" / "pgrunbook"
    assert (package / "__init__.py").is_file()
    return package


def module_file(base: Path, name: str) -> Path | None:
    path = base.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported(path: Path, module: str) -> Iterator[str]:
    """Every module name an import statement of `path` may load (`from a import b`: a, and a.b if b is
    a submodule); relative imports resolved against `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            yield name
            yield from (f"{name}.{alias.name}" for alias in node.names)


def lambda_imports(base: Path) -> dict[str, str]:
    """pgrunbook modules that functions/*/app.py load, transitively: {module: who imports it}, the
    source tree's modules followed (`base` is where they are looked up)."""
    found: dict[str, str] = {}
    todo = [(name, app.relative_to(ROOT).as_posix())
            for app in sorted((ROOT / "functions").glob("*/app.py")) for name in imported(app, "app")]
    assert todo, "no functions/*/app.py found"
    while todo:
        name, by = todo.pop()
        if name.split(".")[0] != "pgrunbook" or name in found:
            continue
        source = module_file(base, name)
        if source is None:  # `from pgrunbook.x import a_function`: not a module
            continue
        found[name] = by
        parts = name.split(".")
        todo += [(".".join(parts[:i]), name) for i in range(1, len(parts))]  # its packages load first
        todo += [(child, name) for child in imported(source, name)]
    return found


def test_the_exclusion_list_names_what_stays_out() -> None:
    names = excluded()
    assert set(names) >= MUST_STAY_OUT, f"layer-exclude.txt lacks {sorted(MUST_STAY_OUT - set(names))}"
    for name in names:
        assert not name.startswith("/") and ".." not in Path(name).parts, name
        assert (COMMON / "pgrunbook" / name).exists(), f"layer-exclude.txt names {name}, which is not in the package"


def test_local_only_modules_are_not_shipped(layer: Path) -> None:
    for name in sorted(MUST_STAY_OUT | set(excluded())):
        assert not (layer / name).exists(), f"the Lambda layer ships {name}"


def test_every_module_lambda_imports_is_shipped(layer: Path) -> None:
    needed = lambda_imports(COMMON)
    assert "pgrunbook.operations" in needed and "pgrunbook.restore.run" in needed  # the walk reaches the core
    missing = {name: by for name, by in needed.items() if module_file(layer.parent, name) is None}
    assert not missing, "the Lambda layer lacks modules Lambda imports: " + ", ".join(
        f"{name} (imported by {by})" for name, by in sorted(missing.items()))


def test_no_shipped_module_imports_dev_dependencies(layer: Path) -> None:
    assert not (layer.parent / "moto").exists()
    offenders = []
    for path in sorted(layer.rglob("*.py")):
        module = ".".join(path.relative_to(layer.parent).with_suffix("").parts).removesuffix(".__init__")
        offenders += [f"{module} imports {name}" for name in imported(path, module) if name.split(".")[0] in FOREIGN]
    assert not offenders, offenders
