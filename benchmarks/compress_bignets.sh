#!/usr/bin/env bash
# The big-network rows of docs/results/compression.md: resnet18 and mobilenet_v2 trained on
# Fashion-MNIST (28x28 padded to 32x32, one input channel) on the 2-core CPU, then one
# prune/retrain round, trained quantization (conv 8 / fc 5 bits) and one fine-tuning epoch.
# vgg16_bn runs only when named: at ~14 img/s here it gets one epoch on the first 15,000
# training images, and its compression retrains and evaluates its stages on the first 5,000
# images of each split (the stored file is then evaluated on all 10,000); a real run needs a GPU.
# Usage: benchmarks/compress_bignets.sh [OUT_DIR] [MODEL...]   (default runs/bignets resnet18 mobilenet_v2)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bignets}"
shift || true
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(resnet18 mobilenet_v2)
cnnlab=(.venv/bin/python -m cnnlab)
data=(--data fashion-mnist --batch-size 128)
mkdir -p "$out"

train() {  # MODEL ARGS...: the uncompressed baseline (a baseline already in OUT_DIR is reused)
  local model=$1
  shift
  [ -d "$out/$model" ] && return
  rm -rf "$out/$model.partial"  # last.safetensors is written every epoch: train aside, then rename
  "${cnnlab[@]}" train "$model" "${data[@]}" --img-size 32 "$@" --no-progress --no-tensorboard \
    --out "$out/$model.partial"
  mv "$out/$model.partial" "$out/$model"
}

compress() {  # MODEL ARGS...: one pruning round + 1 retraining epoch, 8/5-bit sharing, 1 fine-tuning epoch
  local model=$1
  shift  # the input size (32) comes from the checkpoint, and eval takes it from the .cnz file
  "${cnnlab[@]}" compress "$model" --checkpoint "$out/$model/last.safetensors" "${data[@]}" "$@" \
    --prune-steps 1 --retrain-epochs 1 --lr 0.01 --finetune-epochs 1 --out "$out/$model.cnz"
}

SECONDS=0
for model in "${models[@]}"; do
  case $model in
    resnet18)
      train resnet18 --epochs 3 --optimizer sgd --lr 0.1 --weight-decay 5e-4 --schedule onecycle
      # 80% of every conv; the 1-channel stem and the classifier keep half.
      compress resnet18 --sparsity 0.8 --sparsity conv1.conv=0.5 --sparsity fc=0.5 ;;
    mobilenet_v2)
      train mobilenet_v2 --epochs 3 --optimizer adamw --lr 2e-3 --weight-decay 0.05 --schedule cosine
      # 1x1 convs lose 60%; the 3x3 depthwise filters (9 weights per channel) only 30%.
      compress mobilenet_v2 --sparsity 0.6 --sparsity 'blocks.*.conv.1.conv=0.3' \
        --sparsity blocks.0.conv.0.conv=0.3 --sparsity stem.conv=0.3 ;;
    vgg16_bn)
      train vgg16_bn --limit 15000 --epochs 1 --batch-size 64 --optimizer sgd --lr 0.01 \
        --weight-decay 5e-4 --schedule onecycle
      # The paper's VGG-16 pattern (Table 4): fc6/fc7 keep 4%, fc8 23%, the convs 22-58%.
      # SGD would move fc6's centroids (128,451 weights each) by lr x the sum of their members'
      # gradients, many times their spacing: its codebooks are fine-tuned with AdamW instead.
      compress vgg16_bn --limit 5000 --sparsity 0.6 --sparsity features.conv1_1=0.4 \
        --sparsity 'classifier.fc[67]=0.96' --sparsity classifier.fc8=0.77 \
        --finetune-optimizer adamw --finetune-lr 1e-4 ;;
    *) echo "unknown model $model" >&2; exit 2 ;;
  esac
  "${cnnlab[@]}" eval "$model" --compressed "$out/$model.cnz" "${data[@]}"
done
echo "compress_bignets: ${SECONDS} s"
