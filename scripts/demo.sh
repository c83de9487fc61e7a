#!/usr/bin/env bash
# The README's demo: set up .venv if needed, build and list the whole zoo, get Fashion-MNIST,
# train Caffe's LeNet (20-50-500, the LeNet Deep Compression prunes) on the CPU for four
# epochs, evaluate it on the 10,000 test images and print top-1 / top-5 with the wall-clock
# time (the goal: >= 91% in under a minute on 2 cores).
# Usage: scripts/demo.sh [OUT_DIR]        (default runs/demo-lenet, replaced on each run)
# DEMO_EPOCHS (default 4) and DEMO_ARGS (extra `cnnlab train` flags, e.g. "--limit 2000")
# shorten it for a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup.sh
py=.venv/bin/python
out="${1:-runs/demo-lenet}"

scripts/get-fashion-mnist.sh

echo "== the zoo: every model built once, its parameters and MACs counted"
"$py" -m cnnlab models

echo
echo "== Caffe's LeNet (LeCun et al. 1998's ideas, Caffe's 20-50-500 sizes) on Fashion-MNIST"
rm -rf "$out"
SECONDS=0
# shellcheck disable=SC2086  # DEMO_ARGS is a list of flags
"$py" -m cnnlab train lenet5_caffe --data fashion-mnist --epochs "${DEMO_EPOCHS:-4}" \
  --batch-size 128 --optimizer sgd --lr 0.08 --weight-decay 5e-4 --schedule onecycle \
  --label-smoothing 0.1 \
  --no-progress --out "$out" ${DEMO_ARGS:-}
echo
echo "== evaluation of the final weights on the 10,000 test images"
"$py" -m cnnlab eval lenet5_caffe --checkpoint "$out/last.safetensors" --data fashion-mnist \
  --plot "$out/confusion.png"
echo
echo "demo: train + eval took ${SECONDS} s on $(getconf _NPROCESSORS_ONLN) CPU core(s); run folder $out"
