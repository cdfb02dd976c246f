# fl-stream: `make demo` runs the relay + a federated simulation; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch comes first and pinned: on these machines both wheels lie on disk (see README).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

# Keep Ray on loopback, and stop `flwr run` from re-installing dependencies on every run.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install lint test test-faults demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The end-to-end fault tests (tests/test_faults.py: minutes of real flwr runs) run apart.
test: install
	$(PY) -m pytest -m "not faults" $(PYTEST_ARGS)

test-faults: install
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

demo: install
	$(PY) scripts/demo.py

bench: install
	$(PY) benchmarks/sender_overhead.py
	$(PY) benchmarks/relay_fanout.py
	$(PY) benchmarks/fl_overhead.py
	$(PY) benchmarks/dashboard_scale.py
	$(PY) benchmarks/soak.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
