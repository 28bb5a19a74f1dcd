#!/bin/sh
# The demo, from a fresh Debian 12 machine: installs the packages, builds ldm,
# and runs the main job on the small built-in default. For now the main job is
# `ldm bench` on configs/tiny.json (training steps of a small DiT on the CPU);
# later issues grow this into the whole prepare / train / sample pipeline.
set -eu
cd "$(dirname "$0")/.."
./launch/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
./build/ldm version
./build/ldm bench --config configs/tiny.json --steps 20
