#!/usr/bin/env bash
# Creates .venv with PyTorch and cnnlab (editable) plus the extras named in $CNNLAB_EXTRAS.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh dev,export
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
py=.venv/bin/python
"$py" -m pip install -q --upgrade pip
# The PyTorch pair that this machine carries on disk; pyproject keeps the range open (torch>=2.10).
"$py" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
if [ -n "$extras" ]; then
  "$py" -m pip install -q -e ".[${extras}]"
else
  "$py" -m pip install -q -e .
fi
