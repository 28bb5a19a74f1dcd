#!/bin/sh
# The demo, from a fresh Debian 12 machine: the whole latent diffusion pipeline
# on Fashion-MNIST (Debian's dataset-fashion-mnist) in about 15 minutes on 2 CPU
# cores. It installs the packages and builds ldm, then:
#   1. prepare:  the 60,000 training images, padded to 32 x 32
#   2. train-ae: a small KL autoencoder (f = 4, 4 latent channels)
#   3. encode:   every image into an 8 x 8 x 4 latent
#   4. train:    a class-conditional DiT on the latents, with 2 ranks
#   5. sample:   a grid of 8 samples per class, decoded through the autoencoder
# Everything goes to demo/ (runs, pictures); a second run starts over but keeps
# the prepared data set. The configs are the small demo ones; configs/ae-fmnist.json
# and configs/dit-fmnist.json are the longer runs the README's quality numbers
# come from.
set -eu
cd "$(dirname "$0")/.."
./launch/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
./build/ldm version
mkdir -p demo
started=$(date +%s)
stage() { echo; echo "== demo: $* ($(( $(date +%s) - started )) s so far)"; }
ldm2() { LDM=./build/ldm ./launch/local.sh 2 "$@"; }

stage "1/5 prepare Fashion-MNIST"
if [ ! -f demo/fmnist-train.h5 ]; then
  ./build/ldm prepare fashion-mnist --split train --pad 32 --out demo/fmnist-train.h5
fi
if [ ! -f demo/fmnist-test.h5 ]; then
  ./build/ldm prepare fashion-mnist --split test --pad 32 --out demo/fmnist-test.h5
fi
stage "2/5 train the autoencoder"
ldm2 train-ae --config configs/demo-ae.json --data demo/fmnist-train.h5 --val-data demo/fmnist-test.h5 \
  --run demo/ae --force
stage "3/5 encode the images into latents"
ldm2 encode --ae demo/ae --data demo/fmnist-train.h5 --out demo/fmnist-latents.h5 --force
stage "4/5 train the DiT on the latents"
ldm2 train --config configs/demo-dit.json --data demo/fmnist-latents.h5 --run demo/dit --force
stage "5/5 sample"
ldm2 sample --model demo/dit --n 80 --cfg 3 --out demo/samples.png --force
echo
echo "demo: done in $(( $(date +%s) - started )) s. The pictures:"
echo "  demo/samples.png          8 samples per class (rows: T-shirt, trouser, pullover, dress, coat,"
echo "                            sandal, shirt, sneaker, bag, ankle boot), Heun 18 steps, guidance 3"
echo "  demo/dit/samples/         the DiT's samples during training (EMA weights, no guidance)"
echo "  demo/ae/samples/          the autoencoder's reconstructions (top: originals)"
echo "Runs: demo/ae and demo/dit (config.json, metrics.jsonl, checkpoints, model/ema.safetensors)."
