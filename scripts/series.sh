#!/usr/bin/env bash
# Set up, then run the notebook series at a preset and build the results dashboard.
# Usage: scripts/series.sh [smoke|lab|paper] [OUT_DIR]     (default: lab, results/<preset>)
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-lab}
OUT=${2:-results/$PRESET}
bash scripts/setup.sh
. scripts/data_env.sh
.venv/bin/corrlib series --preset "$PRESET" --out "$OUT"
echo "Dashboard: $OUT/dashboard.md and $OUT/dashboard.png"
