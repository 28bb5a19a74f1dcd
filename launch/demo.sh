#!/bin/sh
# The demo, from a fresh Debian 12 machine: installs the packages, builds ldm,
# converts Fashion-MNIST (Debian's dataset-fashion-mnist) into an ldm data set,
# and trains a small pixel-space DiT on it with 2 ranks for a couple of minutes.
# Later issues grow this into the whole pipeline (autoencoder, latents, sampling).
set -eu
cd "$(dirname "$0")/.."
./launch/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
./build/ldm version
mkdir -p demo
if [ ! -f demo/fmnist-train.h5 ]; then
  ./build/ldm prepare fashion-mnist --split train --pad 32 --out demo/fmnist-train.h5
fi
LDM=./build/ldm ./launch/local.sh 2 train --config configs/fmnist-pixels.json \
  --data demo/fmnist-train.h5 --run demo/run --force
echo "demo: the run is in demo/run: config.json, metrics.jsonl (loss per step, binned by noise level),"
echo "      model.safetensors and ema.safetensors (DiT names; they load into PyTorch DiT code)"
