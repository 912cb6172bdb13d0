"""The code passes the project's linter and formatter (ruff, configured in pyproject.toml), and the test
suite keeps its layout: what tests share is in tests/factories.py (plain helpers) and in conftest.py
files (fixtures); no test module imports another test module or a conftest."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import REPO_ROOT

TESTS = REPO_ROOT / "tests"
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
#: The one module of tests/ that other test code may import.
SHARED = "tests.factories"


@pytest.mark.parametrize(
    "command", [["check", "."], ["format", "--check", "service", "workers", "tests", "benchmarks"]]
)
def test_ruff(command):
    assert RUFF is not None, f"ruff is not installed next to {sys.executable} (it is in the dev extra)"
    result = subprocess.run([RUFF, *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of everything the code of `module` imports, anywhere in it; relative imports
    resolved, and `from a import b` read as a.b (b may be a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def test_no_test_code_imports_a_test_module_or_a_conftest():
    files = sorted(TESTS.rglob("*.py"))
    assert TESTS / "factories.py" in files and len(files) > 20
    wrong = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
        for path in files
        for line, name in imported_modules(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
        if (name == "tests" or name.startswith("tests.")) and not (name == SHARED or name.startswith(SHARED + "."))
    ]
    assert not wrong, "shared helpers go to tests/factories.py, fixtures to a conftest.py:\n" + "\n".join(wrong)


def test_the_import_check_sees_every_form_of_import():
    assert module_name(TESTS / "api" / "test_jobs_api.py") == "tests.api.test_jobs_api"
    assert module_name(TESTS / "faults" / "__init__.py") == "tests.faults"
    source = "import tests.api.test_auth\nfrom . import conftest\nfrom ..faults import x\n"
    source += "def f():\n    from tests.factories import y\n"
    names = [name for _, name in imported_modules(source, "tests.api.test_jobs_api")]
    assert names == ["tests.api.test_auth", "tests.api.conftest", "tests.faults.x", "tests.factories.y"]
    assert [name for _, name in imported_modules("from . import z", "tests.faults", is_package=True)] == [
        "tests.faults.z"
    ]


def test_fixtures_are_defined_in_conftest_files_only():
    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "conftest.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for decorator in node.decorator_list:
                    target = decorator.func if isinstance(decorator, ast.Call) else decorator
                    if ast.unparse(target) in ("pytest.fixture", "fixture"):
                        wrong.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}")
    assert not wrong, "fixtures go to the conftest.py of their folder:\n" + "\n".join(wrong)
