#!/usr/bin/env bash
# The Deep Compression results of docs/results/compression.md: train lenet_300_100 and lenet5_caffe on
# Fashion-MNIST, then compress each (4 gradual prune/retrain rounds with the baseline's
# optimizer, 5-bit fc / 8-bit conv weight sharing; per-layer fractions and bits below;
# lenet5_caffe distils from its uncompressed model while it retrains) and evaluate the file.
# A dense control gets the same 12 retraining epochs (and distillation) without pruning: the
# accuracy the extra training alone gives.
# Usage: benchmarks/compress_lenets.sh [OUT_DIR] [SEED]   (default runs/compress 0; the seed sets
# the baselines' initial weights and the order of every run's batches)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/compress}"
seed="${2:-0}"
cnnlab=(.venv/bin/python -m cnnlab)
recipe=(--data fashion-mnist --seed "$seed" --prune-steps 4 --schedule gradual --retrain-epochs 3
  --optimizer adamw --lr 1e-3 --finetune-lr 1e-4)
mkdir -p "$out"

train() {  # MODEL EPOCHS: the uncompressed baseline, final weights (no peeking at the test set)
  [ -d "$out/$1" ] && return  # a finished baseline in OUT_DIR is reused
  rm -rf "$out/$1.partial"  # last.safetensors is written every epoch: train aside, then rename
  "${cnnlab[@]}" train "$1" --data fashion-mnist --seed "$seed" --epochs "$2" --batch-size 128 \
    --optimizer adamw --lr 1e-3 --weight-decay 1e-4 --schedule cosine \
    --no-progress --no-tensorboard --out "$out/$1.partial"
  mv "$out/$1.partial" "$out/$1"
}

compress() {  # MODEL SPARSITY...: prune, retrain, share weights, fine-tune centroids, evaluate
  local model=$1
  shift
  "${cnnlab[@]}" compress "$model" --checkpoint "$out/$model/last.safetensors" "${recipe[@]}" \
    "$@" --finetune-epochs 2 --out "$out/$model.cnz"
  "${cnnlab[@]}" eval "$model" --compressed "$out/$model.cnz" --data fashion-mnist
}

control() {  # MODEL ARGS...: the same retraining at sparsity 0 (its "pruned" stage is the control)
  local model=$1 tmp
  shift
  tmp=$(mktemp -d)
  "${cnnlab[@]}" compress "$model" --checkpoint "$out/$model/last.safetensors" "${recipe[@]}" \
    "$@" --sparsity 0 --finetune-epochs 0 --out "$tmp/dense.cnz" --json |
    .venv/bin/python -c 'import json, sys
s = next(s for s in json.load(sys.stdin)["stages"] if s["stage"] == "pruned")
print("dense control (%s, same retraining, nothing pruned): top-1 %.2f%%" % (sys.argv[1], s["top1"]))' "$model"
  rm -r "$tmp"
}

SECONDS=0
train lenet_300_100 10
# The output layer is the most sensitive (`cnnlab sensitivity`): keep half of it where the paper
# keeps 26%. hidden.fc1 holds 88% of the weights: keep 9.5% of it at 3 bits where the paper keeps
# 8% at 5 bits (more weights, fewer bits each, about the same bytes).
compress lenet_300_100 --sparsity hidden.fc1=0.905 --sparsity hidden.fc2=0.91 --sparsity fc=0.5 \
  --bits hidden.fc1=3
control lenet_300_100
train lenet5_caffe 8
# conv2 is more sensitive than fc1 (`cnnlab sensitivity`): keep 20% of conv2 where the paper
# keeps 12%, and 7.5% of fc1 at 3 bits where it keeps 8% at 5. Distillation from the
# uncompressed model helps here (for lenet_300_100 it did not; docs/results/compression.md).
compress lenet5_caffe --sparsity features.conv1=0.34 --sparsity features.conv2=0.80 \
  --sparsity fc1=0.925 --sparsity fc2=0.81 --bits fc1=3 --distill 0.5
control lenet5_caffe --distill 0.5
echo "compress_lenets: ${SECONDS} s"
