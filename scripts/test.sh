#!/usr/bin/env bash
# Set up, then run ruff (lint and format), the layer contract (import-linter), the unit and real-data tests, and every notebook under nbval at the smoke preset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/data_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/python -m pytest -q
CORRLIB_PRESET=smoke TQDM_DISABLE=1 .venv/bin/python -m pytest --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks -q -p no:cacheprovider
