#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with torch and smcdiff (editable, with the
# test, docs, diffusers and triton extras: pytest, ruff, mkdocs, diffusers for its adapter tests,
# triton for the kernels' tests under its CPU interpreter).
# Torch comes first and pinned by SMCDIFF_TORCH (default torch==2.13.0: on CI machines pip takes the
# local CPU build; elsewhere it comes from PyPI). Set SMCDIFF_TORCH to another spec, e.g. a CUDA
# build, or pre-install torch in the venv: smcdiff itself only asks for torch>=2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SMCDIFF_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "${SMCDIFF_TORCH:-torch==2.13.0}"
fi
stamp="$VENV/.smcdiff-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[test,docs,diffusers,triton]"
  touch "$stamp"
fi
