#!/bin/sh
# What a session that is lent a GPU machine runs there, in one call (the
# machine has CUDA and PyTorch but maybe not MPI, HDF5 or cJSON: see the
# developers' guide on .deps):
#
#   .deps/offline-deps.sh unpack && . .deps/env.sh && sh tests/gpu_session.sh "$OUT" [STEP...]
#
# STEP: the numbers of the steps to run (default all). A device call is
# limited to 10 minutes, so run 1 2 3 in one call and 4 5 in the next (the
# build stays on the machine while it is held).
#
# 1. what the machine is (nvidia-smi, nvcc, torch);
# 2. a build with the CUDA backend (-DLDM_CUDA=ON) in build-gpu;
# 3. every test of the GPU code paths on the GPU (ctest -L cuda): the ops
#    against the CPU ops, the DiT against the PyTorch fixtures, the trainable
#    and parameter store, NCCL, `ldm train` on the GPU (the 2-rank tests skip
#    on a machine with one GPU);
# 4. the benchmark against PyTorch on DiT-B/2, bf16, batch 256
#    (tests/bench_gpu_vs_pytorch.sh), and the tiny bench on CPU and GPU.
# Each step's output goes to OUT_DIR/NN-step.log as well as to stdout; a step
# that fails does not stop the later ones. Exit status: the number of steps
# that failed.
set -u
out=${1:-gpu-session}
[ $# -gt 0 ] && shift
only=" $* "
mkdir -p "$out"
cd "$(dirname "$0")/.."
jobs=$(nproc)
failed=0

step() { # step NAME LIMIT_S COMMAND...
    name=$1 limit=$2
    shift 2
    number=${name%%-*}
    number=${number#0}
    if [ "$only" != "  " ] && ! printf '%s' "$only" | grep -q " $number "; then return 0; fi
    echo "== $name"
    timeout "$limit" sh -c "$*" > "$out/$name.log" 2>&1
    status=$?
    tail -n 40 "$out/$name.log"
    echo "== $name: exit status $status"
    [ $status = 0 ] || failed=$((failed + 1))
}

step 01-machine 60 "nvidia-smi; nvcc --version | tail -n 2; python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available())'"
step 02-build 400 "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DLDM_CUDA=ON && cmake --build build-gpu -j $jobs"
step 03-ctest-cuda 600 "cd build-gpu && ctest -L cuda -j 4 --output-on-failure --timeout 300"
step 04-bench-tiny 120 "for d in cpu cuda; do build-gpu/ldm bench --config configs/tiny.json --set train.precision=fp32 --device \$d --steps 3 --warmup 0; done"
step 05-bench-vs-pytorch 600 "LDM=build-gpu/ldm bash tests/bench_gpu_vs_pytorch.sh --steps 20 --warmup 5"
echo "gpu session: $failed step(s) failed; logs in $out"
exit $failed
