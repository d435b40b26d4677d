#!/usr/bin/env bash
# Create .venv (if needed) and install corrlib with its notebook and development extras.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# CI and this project's machines pin the torch build they have on disk; elsewhere any torch>=2.1 works.
if [ -n "${CI:-}" ] || [ -f /etc/xdg/pip/constraints.txt ]; then
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import corrlib, torch, papermill, nbval; print(f'corrlib {corrlib.__version__}, torch {torch.__version__}')"
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
# Chapter 06 trains on Fashion-MNIST objects (offline mask source). Debian ships them; install the
# package when we may (root, apt), else say how to get them. Nothing else needs system packages.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ ! -d "${CORRLIB_DATA:-/nonexistent}/FashionMNIST/raw" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }) \
      && echo "installed Debian's dataset-fashion-mnist (chapter 06)" \
      || echo "WARNING: could not install dataset-fashion-mnist; chapter 06 needs Fashion-MNIST (see README, Data)."
  else
    echo "NOTE: chapter 06 needs Fashion-MNIST: 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or" \
         "python -c \"import torchvision; torchvision.datasets.FashionMNIST('\$CORRLIB_DATA', download=True)\"."
  fi
fi
# The browser test (tests/test_browser.py) drives JupyterLab in Chromium with Playwright. Debian's
# chromium is used (Playwright's own download needs its CDN); install it when we may, else the test
# skips and says how.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${CORRLIB_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
      && echo "installed Debian's chromium (the browser test)" \
      || echo "WARNING: could not install chromium; tests/test_browser.py will be skipped."
  else
    echo "NOTE: the browser test needs Chromium: 'sudo apt-get install chromium', or set CORRLIB_CHROMIUM," \
         "or '.venv/bin/playwright install chromium'; without it tests/test_browser.py is skipped."
  fi
fi
