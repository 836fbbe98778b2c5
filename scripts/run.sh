#!/usr/bin/env bash
# The main job: set up if needed, then run an experiment (default: gmm2d) on the CPU.
# Extra arguments go to `smcdiff run`, e.g. `scripts/run.sh gmm2d --device cuda --out results`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/smcdiff run "$@"
