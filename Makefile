# lelastic: every target does its own set-up on a fresh machine.
#   make test       all tests (unit, API, compute, workers, faults, e2e, browser); any warning fails a test
#   make test-fast  the same without the slow ones (pytest -m "not slow": no tests/faults, e2e, browser)
#   make demo       start a stack, run a paper-style job on the digits, print the table
#   make up         run the stack in the foreground (API on http://127.0.0.1:8000/docs)
#   make bench      quick engine benchmark
#   make lint       ruff (lint and format), import-linter's boundaries, mypy
#   make fuzz       longer schemathesis run against the API (FUZZ_EXAMPLES per operation and mode)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Set to a wheel index (e.g. https://download.pytorch.org/whl/cpu) to pick torch's build.
TORCH_INDEX ?=
STAMP  := $(VENV)/.lelastic-installed

.PHONY: install test test-fast demo up bench lint fuzz clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch goes in first and pinned: left to the resolver it would pull a multi-GB CUDA build.
# The stamp is newer than pyproject.toml once installed, so repeated runs skip this.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# The browser tests (tests/browser) drive Debian's Chromium; it is installed here where it is missing
# (as root with the Debian archive reachable). Where it cannot be, those tests fail saying so.
test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) || echo "chromium could not be installed: the browser tests will fail" >&2
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/lelastic demo

up: $(STAMP)
	$(VENV)/bin/lelastic up

bench: $(STAMP)
	$(PY) benchmarks/engine.py --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check service workers tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The property-based test of tests/api/test_fuzz.py with many more examples (no 5xx allowed).
FUZZ_EXAMPLES ?= 500
fuzz: $(STAMP)
	LELASTIC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/api/test_fuzz.py -q -o timeout=3600

clean:
	rm -rf .pytest_cache .ruff_cache lelastic-demo
