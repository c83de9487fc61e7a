#!/usr/bin/env bash
# Sets up .venv with the test and export extras (and Fashion-MNIST where it can), checks
# style, runs the whole test suite (slow end-to-end tests included) on two processes. Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c "import cnnlab, pytest, onnxruntime, timm" 2>/dev/null \
  || scripts/setup.sh dev,export
scripts/get-fashion-mnist.sh  # real images for the experiments' quick runs
.venv/bin/ruff check src tests scripts benchmarks
.venv/bin/python -m pytest -n 2 -q "$@"
