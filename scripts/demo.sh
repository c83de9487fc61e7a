#!/usr/bin/env bash
# The README's demo: set up .venv if needed, build and list the whole zoo, get Fashion-MNIST,
# train LeNet-5 on the CPU for a few epochs, evaluate it on the 10,000 test images and print
# top-1 / top-5 with the wall-clock time.
# Usage: scripts/demo.sh [OUT_DIR]        (default runs/demo-lenet5, replaced on each run)
# DEMO_EPOCHS (default 8) and DEMO_ARGS (extra `cnnlab train` flags, e.g. "--limit 2000")
# shorten it for a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup.sh
py=.venv/bin/python
out="${1:-runs/demo-lenet5}"

scripts/get-fashion-mnist.sh

echo "== the zoo: every model built once, its parameters and MACs counted"
"$py" -m cnnlab models

echo
echo "== LeNet-5 on Fashion-MNIST (28x28 centred in 32x32, as LeCun et al. 1998 Sec. II-A)"
rm -rf "$out"
SECONDS=0
# shellcheck disable=SC2086  # DEMO_ARGS is a list of flags
"$py" -m cnnlab train lenet5 --data fashion-mnist --epochs "${DEMO_EPOCHS:-8}" \
  --batch-size 128 --optimizer sgd --lr 0.1 --weight-decay 5e-4 --schedule onecycle \
  --no-progress --out "$out" ${DEMO_ARGS:-}
echo
echo "== evaluation of the final weights on the 10,000 test images"
"$py" -m cnnlab eval lenet5 --checkpoint "$out/last.safetensors" --data fashion-mnist \
  --plot "$out/confusion.png"
echo
echo "demo: train + eval took ${SECONDS} s on $(getconf _NPROCESSORS_ONLN) CPU core(s); run folder $out"
