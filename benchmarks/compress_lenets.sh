#!/usr/bin/env bash
# The Deep Compression results of docs/compression.md: train lenet_300_100 and lenet5_caffe on
# Fashion-MNIST, evaluate the final weights, then compress each to the paper's per-layer
# sparsities (Han et al. 2015, Table 1 and 2) with 5-bit fc / 8-bit conv weight sharing.
# Usage: benchmarks/compress_lenets.sh [OUT_DIR]     (default runs/compress)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/compress}"
cnnlab=(.venv/bin/python -m cnnlab)
mkdir -p "$out"

train() {  # MODEL EPOCHS: the uncompressed baseline, final weights (no peeking at the test set)
  "${cnnlab[@]}" train "$1" --data fashion-mnist --epochs "$2" --batch-size 128 \
    --optimizer adamw --lr 1e-3 --weight-decay 1e-4 --schedule cosine \
    --no-progress --no-tensorboard --out "$out/$1"
}

compress() {  # MODEL SPARSITY...: four prune/retrain rounds on the cubic ramp, then trained quantization
  local model=$1
  shift
  "${cnnlab[@]}" compress "$model" --checkpoint "$out/$model/last.safetensors" \
    --data fashion-mnist "$@" --prune-steps 4 --schedule gradual --retrain-epochs 3 --lr 0.05 \
    --finetune-epochs 2 \
    --out "$out/$model.cnz"
  "${cnnlab[@]}" eval "$model" --compressed "$out/$model.cnz" --data fashion-mnist | head -3
}

SECONDS=0
# A baseline already in OUT_DIR is reused.
[ -e "$out/lenet_300_100/last.safetensors" ] || train lenet_300_100 10
compress lenet_300_100 --sparsity hidden.fc1=0.92 --sparsity hidden.fc2=0.91 --sparsity fc=0.74
[ -e "$out/lenet5_caffe/last.safetensors" ] || train lenet5_caffe 8
compress lenet5_caffe --sparsity features.conv1=0.34 --sparsity features.conv2=0.88 \
  --sparsity fc1=0.92 --sparsity fc2=0.81
echo "compress_lenets: ${SECONDS} s"
