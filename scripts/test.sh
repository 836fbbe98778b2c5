#!/usr/bin/env bash
# The test suite: set up if needed, lint, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check smcdiff targets experiments tests
.venv/bin/ruff format --check -q smcdiff targets experiments tests
exec .venv/bin/python -m pytest "$@"
