"""The README's "A tour of the API with curl" runs as written against `lelastic up`: its shell blocks,
in order, with only the API's address (and the interpreter) swapped for the test stack's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.factories import REPO_ROOT, RunningStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECTION = "## A tour of the API with curl"


def tour_script(readme: str, api: str) -> str:
    """The section's ```sh blocks joined, pointed at `api`, with the variables it sets printed at the end."""
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 5, "the tour lost its shell blocks"
    script = "\n".join(blocks)
    assert "API=http://127.0.0.1:8000" in script and ".venv/bin/python" in script
    script = script.replace("API=http://127.0.0.1:8000", f"API={api}").replace(".venv/bin/python", sys.executable)
    return "set -u\n" + script + '\necho; echo "TOUR T=$T JOB=$JOB LONG=$LONG DATASET=$DATASET"\n'


@pytest.mark.skipif(shutil.which("curl") is None, reason="the tour needs curl")
def test_the_readme_curl_tour_runs_as_written(stack: RunningStack) -> None:
    script = tour_script((REPO_ROOT / "README.md").read_text(), stack.url)
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    found = re.search(r"^TOUR T=(\S+) JOB=(\w+) LONG=(\w+) DATASET=(\w+)$", run.stdout, flags=re.M)
    assert found, run.stdout[-2000:]
    folder, job, long_job, dataset = Path(found[1]), found[2], found[3], found[4]
    try:
        assert '"status":"succeeded"' in run.stdout.replace(" ", ""), "the event stream ended without success"
        similarity = np.load(folder / "similarity.npy")
        assert similarity.shape == (100, 100) and np.isfinite(similarity).all()  # classes 0 and 1: 50 + 50
        head = (folder / "similarity-head.bin").read_bytes()
        assert head == (folder / "similarity.npy").read_bytes()[:128]
        assert "HTTP/1.1 206" in run.stdout
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            result = http.get(f"/v1/jobs/{job}/result").json()
            assert set(result["metrics"]) >= {"accuracy", "ari", "nmi"}, result
            assert http.get(f"/v1/datasets/{dataset}").status_code == 200
            assert http.get(f"/v1/jobs/{long_job}").status_code == 404, "the canceled job was not purged"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
