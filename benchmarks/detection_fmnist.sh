#!/usr/bin/env bash
# SSDLite + MobileNetV2 on the generated Fashion-MNIST detection set, as docs/results/detection.md
# records it: a 1-channel MobileNetV2 classifier on Fashion-MNIST (the backbone's start), the
# detection set, the detector's training (timed by the run's own train_seconds), COCO mAP on the
# held-out val canvases, and the detectors' latency against torchvision's SSDLite.
# Usage: benchmarks/detection_fmnist.sh [WORK_DIR]   (default runs/detection; needs .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/detection}"
cnnlab=.venv/bin/cnnlab
mkdir -p "$work"

[ -e "$work/classifier/last.json" ] || "$cnnlab" train mobilenet_v2 --data fashion-mnist \
    --in-chans 1 --img-size 32 --epochs 4 --out "$work/classifier" --no-progress
[ -d "$work/data" ] || "$cnnlab" data make-detection "$work/data" --n-train 10000 --n-val 500 \
    --seed 0
"$cnnlab" train ssdlite_mobilenet_v2 --data "$work/data" --out "$work/ssdlite" --img-size 160 \
    --batch-size 32 --lr 0.03 --epochs 7 --augment --init-from "$work/classifier"
"$cnnlab" eval ssdlite_mobilenet_v2 --checkpoint "$work/ssdlite" --data "$work/data"
for model in ssdlite_mobilenet_v2 ssdlite_mobilenet_v1; do
    "$cnnlab" bench "$model" --vs torchvision --backend eager,fused,onnxruntime --repeats 10 \
        --no-train
done
