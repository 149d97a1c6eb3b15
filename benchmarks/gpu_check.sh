#!/usr/bin/env bash
# `make gpu-check`: run benchmarks/gpu_check.py with a Python whose torch sees the GPU.
#
# A GPU machine with a network gets the project's virtual environment (`make setup`). A GPU
# machine without one (the lent test machines) uses its own Python, which holds a CUDA torch,
# and installs what it lacks from the wheels `make gpu-assets` put in .gpu/wheels (carried along).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${GPU_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
  elif python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY=python3
  else
    make setup
    PY=.venv/bin/python
  fi
fi
# What this Python lacks of ours comes from the carried wheels, else from the package index.
NEEDED="nnsight gguf graphviz jsonschema networkx scipy pandas tqdm yaml safetensors transformers accelerate hypothesis pytest"
missing=$("$PY" -c "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))" $NEEDED)
if [ -n "$missing" ]; then
  echo "gpu-check: installing what $PY lacks: $missing" >&2
  SITE="${TMPDIR:-/tmp}/circuit-engine-site"
  if [ -d .gpu/wheels ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/wheels/*.whl
  else
    "$PY" -m pip install -q --target "$SITE" nnsight gguf graphviz jsonschema
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
