"""The Dockerfiles, docker-compose.yml, Makefile and README agree with the code they describe.

No Docker engine is needed: the files are parsed and checked against the `lelastic` argparse parser
and the `Settings` fields.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from service.cli.main import API_KEY_ENV, URL_ENV, build_parser
from service.contract.settings import Settings
from tests.factories import REPO_ROOT as ROOT
from tests.factories import subcommands

DOCKERFILES = {"api": ROOT / "docker" / "api.Dockerfile", "worker": ROOT / "docker" / "worker.Dockerfile"}
SETTINGS_VARS = {f"LELASTIC_{name.upper()}" for name in Settings.model_fields} | {URL_ENV, API_KEY_ENV}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") and not pending:
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, rest = pending.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def command_words(value: str | list[str]) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    value = value.strip()
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def check_lelastic_command(words: list[str]) -> None:
    """The words run `lelastic <a real subcommand>` with options that subcommand accepts."""
    assert words[0] == "lelastic", words
    assert words[1] in subcommands(build_parser()), words
    build_parser().parse_args(words[1:])  # exits (fails the test) on an unknown option


# -------------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_cmd_is_a_real_subcommand(image):
    cmds = [rest for keyword, rest in instructions(DOCKERFILES[image]) if keyword == "CMD"]
    assert len(cmds) == 1
    words = command_words(cmds[0])
    check_lelastic_command(words)
    assert words[1] == image


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_env_vars_are_settings(image):
    text = DOCKERFILES[image].read_text()
    used = set(re.findall(r"\bLELASTIC_[A-Z0-9_]+", text))
    assert used, "the image sets LELASTIC_DATA_DIR at least"
    assert used <= SETTINGS_VARS


def test_api_image_installs_only_the_api_extra():
    steps = [rest for keyword, rest in instructions(DOCKERFILES["api"]) if keyword == "RUN"]
    installs = [step for step in steps if "pip install" in step]
    assert installs and all("[api]" in step for step in installs)
    text = " ".join(steps).lower()
    for forbidden in ("torch", "[worker]", "[all]", "[dev]"):
        assert forbidden not in text
    froms = [rest for keyword, rest in instructions(DOCKERFILES["api"]) if keyword == "FROM"]
    assert froms == ["python:3.11-slim"]
    healthchecks = [rest for keyword, rest in instructions(DOCKERFILES["api"]) if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/healthz" in healthchecks[0]


def test_worker_image_takes_a_base_and_a_torch_index():
    steps = instructions(DOCKERFILES["worker"])
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for keyword, rest in steps if keyword == "ARG"}
    assert args["BASE"].startswith("nvidia/cuda:") and "TORCH_INDEX" in args
    assert ("FROM", "${BASE}") in steps
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert "[worker]" in runs and "${TORCH_INDEX}" in runs


def test_api_command_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, service.cli.main, service.api.app; sys.exit('torch' in sys.modules or 'sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ----------------------------------------------------------------------------------------- compose


def test_compose_services_and_healthchecks(compose):
    services = compose["services"]
    assert set(services) >= {"redis", "api", "worker"}
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in command_words(redis["command"]) and "yes" in command_words(redis["command"])
    assert "redis-cli" in " ".join(command_words(redis["healthcheck"]["test"]))
    assert "${REDIS_PASSWORD:?" in redis["environment"]["REDISCLI_AUTH"], "the healthcheck must authenticate"
    assert "/healthz" in " ".join(command_words(services["api"]["healthcheck"]["test"]))
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_commands_and_env_vars(compose):
    for name in ("api", "worker"):
        service = compose["services"][name]
        words = command_words(service["command"])
        check_lelastic_command(words)
        assert words[1] == name
        env = service["environment"]
        assert set(env) <= SETTINGS_VARS
        assert env["LELASTIC_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert env["LELASTIC_REDIS_URL"].endswith("@redis:6379/0")


def test_compose_redis_requires_a_password_and_is_not_published(compose):
    """Only the compose network reaches Redis, and even there a client needs the password."""
    redis = compose["services"]["redis"]
    words = command_words(redis["command"])
    assert words[words.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert "ports" not in redis


def test_compose_shares_the_data_volume_at_the_data_dir(compose):
    mounts = {}
    for name in ("api", "worker"):
        service = compose["services"][name]
        data_dir = service["environment"]["LELASTIC_DATA_DIR"]
        volumes = dict(volume.split(":")[:2] for volume in service["volumes"])
        sources = [source for source, target in volumes.items() if target == data_dir]
        assert len(sources) == 1, f"{name}: nothing mounted at {data_dir}"
        mounts[name] = sources[0]
    assert mounts["api"] == mounts["worker"]
    assert mounts["api"] in compose["volumes"], "a named volume"


def test_compose_worker_reserves_a_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices)


# ------------------------------------------------------------------------------ Makefile, CI, README


def test_makefile_targets_and_torch_first():
    text = (ROOT / "Makefile").read_text()
    for target in ("test", "test-fast", "demo", "up", "bench", "lint"):
        assert re.search(rf"^{target}:", text, re.M), target
    torch_at = text.index("pip install torch==")
    assert torch_at < text.index("pip install -e '.[dev]'")
    assert ".venv/bin/python -m pytest -q" in text.replace("$(PY)", ".venv/bin/python")
    assert 'pytest -q -m "not slow"' in text, "make test-fast leaves the slow tests out"


def test_ci_runs_make_test_strictly():
    text = (ROOT / ".ci" / "run").read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text and "make test" in text


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_readme_configuration_table_lists_exactly_the_settings():
    rows = re.findall(r"^\|\s*`(LELASTIC_[A-Z0-9_]+)`\s*\|", readme(), re.M)
    assert len(rows) == len(set(rows)), "a setting is listed twice"
    assert set(rows) == SETTINGS_VARS


def test_readme_env_vars_commands_and_placeholders():
    text = readme()
    assert set(re.findall(r"\bLELASTIC_[A-Z0-9_]+", text)) <= SETTINGS_VARS
    for needle in ("make demo", "make test"):
        assert needle in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert figures, "the README shows no figure"
    for figure in figures:
        assert (ROOT / figure).is_file(), f"README shows {figure}, which does not exist"
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)
    commands = [line.split("#")[0] for block in blocks for line in block.splitlines() if line.startswith("lelastic ")]
    assert len(commands) >= 4
    for line in commands:
        check_lelastic_command(shlex.split(line))
