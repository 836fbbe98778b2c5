#!/usr/bin/env bash
# The test suite: set up if needed, lint, build the docs, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check smcdiff targets experiments tests docs/_ext
.venv/bin/ruff format --check -q smcdiff targets experiments tests docs/_ext
# The documentation site must build without a warning (API pages from the docstrings); into site/.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
# Two worker processes of one thread each (SMCDIFF_TEST_WORKERS=0: no workers, e.g. for -x / pdb).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
WORKERS="${SMCDIFF_TEST_WORKERS:-2}"
if [ "$WORKERS" = "0" ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$WORKERS" "$@"
