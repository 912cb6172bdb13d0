"""The prepared GPU run (benchmarks/device_check.sh) and the wheels it installs on a machine without
network access (benchmarks/device_wheels.py): what lelastic imports must be carried or already there,
and the script's steps must fit one 10-minute command."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.factories import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import device_wheels  # noqa: E402

SCRIPT = REPO_ROOT / "benchmarks" / "device_check.sh"
#: What the test suite itself imports on top of lelastic's extras (tests/conftest.py, TestClient).
TEST_ROOTS = ("pytest", "pytest-timeout", "pyyaml", "httpx2")


def runtime_roots() -> list[str]:
    """The requirement names of lelastic's base dependencies, its api and worker extras, and the tests'."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["api"]]
    lines += project["optional-dependencies"]["worker"]
    return [Requirement(line).name for line in lines] + list(TEST_ROOTS)


def needed_on_machine(roots: list[str], preinstalled: set[str]) -> set[str]:
    """Canonical names of every package the roots need, following installed metadata, but not into the
    dependencies of preinstalled packages (those come with them)."""
    seen: set[str] = set()
    pending = [canonicalize_name(name) for name in roots]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in preinstalled:
            continue
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return seen


def test_every_runtime_dependency_is_carried_or_preinstalled() -> None:
    preinstalled = {canonicalize_name(name) for name in device_wheels.PREINSTALLED}
    carried = {canonicalize_name(name) for name in device_wheels.CARRIED}
    missing = needed_on_machine(runtime_roots(), preinstalled) - preinstalled - carried
    assert not missing, f"add these to CARRIED or PREINSTALLED in benchmarks/device_wheels.py: {sorted(missing)}"
    assert not carried & preinstalled


def test_the_closure_follows_metadata() -> None:
    """The walk itself: rq brings croniter and click; torch's own dependencies are not followed."""
    needed = needed_on_machine(["rq", "torch"], {"torch"})
    assert {"rq", "redis", "croniter", "click", "torch"} <= needed
    assert "sympy" not in needed  # a dependency of torch, which comes with it


def test_carried_wheels_are_pinned_to_the_installed_versions() -> None:
    pins = device_wheels.pinned()
    assert len(pins) == len(device_wheels.CARRIED)
    assert f"rq=={metadata.version('rq')}" in pins
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", pin) for pin in pins)


def step_limits() -> dict[str, int]:
    """Each step's time limit in seconds, read from the script's run_step lines (the last of two
    alternatives of a step counts once)."""
    return {m[1]: int(m[2]) for m in re.finditer(r"run_step (\w+) (\d+) ", SCRIPT.read_text())}


def test_the_script_parses_and_its_steps_fit_one_command() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    limits = step_limits()
    assert set(limits) == {"tests", "engine", "demo", "sharded"}
    assert sum(limits.values()) <= 590, limits  # one device command runs at most 600 s


@pytest.mark.parametrize("name", ["tests", "engine", "demo", "sharded"])
def test_each_step_is_documented_in_the_scripts_header(name: str) -> None:
    header = "".join(line for line in SCRIPT.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert re.search(rf"^#\s+{name}\s", header, re.M), name
