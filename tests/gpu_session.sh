#!/bin/sh
# Everything GPU in ONE device call of at most 540 s on a 16-core H100 or H200
# machine: a lent machine allows 600 s a call and is given back after about
# 30 s idle, so nothing here relies on a second call finding the first one's
# build. The machine has CUDA and PyTorch but maybe not MPI, HDF5 or cJSON:
# fetch their Debian packages here first (docs/gpu.md),
#
#   (.deps: MPI, HDF5 and cJSON as Debian packages, gathered beforehand; docs/gpu.md)
#
# and make the device call (carry [".deps"], timeout_s 540) with exactly:
#
#   .deps/offline-deps.sh unpack >/dev/null && . .deps/env.sh && sh tests/gpu_session.sh "$OUT"
#
# Steps, each with its own time limit in seconds, every limit cut so that the
# whole ends within LDM_GPU_SESSION_S (default 500: unpacking .deps takes
# some 10 to 20 s of the call's 540) of the start, with the benchmark's time kept
# for it:
#   machine    10  nvidia-smi, nvcc, torch, compute-sanitizer, mpirun
#   configure  60  build-gpu: Release, -DLDM_CUDA=ON, sm_90 only (CMAKE_CUDA_ARCHITECTURES=90)
#   build     240  cmake --build -j (nproc) of only the targets the GPU tests run
#   ops        60  test_device test_ops_cuda test_ops_cuda_conv
#   models     90  test_dit_cuda test_dit_cuda_trainable test_autoencoder_cuda test_distill_cuda
#   nccl       45  test_comm_nccl, one rank (several: tests/gpu_session_multi.sh)
#   cli       150  the cli_* tests labelled cuda (cli_train_cuda_ranks and cli_distill_cuda_ranks only with 2+ GPUs), with
#                  sample, encode, decode and the training pictures on the GPU (gpu_sample_tests.cmake)
#   sanitize  (left) the failed tests of the first failing group again under
#                  compute-sanitizer (memcheck), when it is there
#   bench     100  tests/bench_gpu_vs_pytorch.sh: ldm bench DiT-B/2 bf16 batch 256 against
#                  PyTorch bf16 autocast on the same GPU, with ldm's MFU and the ratio
# The test groups run in that order with LDM_REQUIRE_GPU=1 (a GPU test that
# would skip fails: docs/gpu.md) and stop at the first that fails; the
# benchmark runs whenever ldm was built. Logs: OUT/NN-STEP.log, and
# OUT/summary.txt with one line per step (name, status, seconds). Exit status:
# 0 when every step passed, else 1.
#
# LDM_GPU_SESSION_S: the whole session's time in seconds (default 500).
# LDM_GPU_SESSION_BUILD: the build folder (default build-gpu).
# LDM_GPU_SESSION_CUDA: -DLDM_CUDA's value (default ON; EMULATE tries the
# script itself on a machine without a GPU, on the CPU emulation of CUDA).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
build=${LDM_GPU_SESSION_BUILD:-build-gpu}
session_s=${LDM_GPU_SESSION_S:-500}
cuda_mode=${LDM_GPU_SESSION_CUDA:-ON}
started=$(date +%s)
: > "$out/summary.txt"
failed=0
step_number=0
bench_reserve_s=100
# compute-sanitizer, where the toolkit has it
sanitizer=$(command -v compute-sanitizer 2>/dev/null || true)
[ -n "$sanitizer" ] || for d in "${CUDA_HOME:-/usr/local/cuda}" /usr/local/cuda; do
    [ -x "$d/bin/compute-sanitizer" ] && { sanitizer=$d/bin/compute-sanitizer; break; }
done
export LDM_REQUIRE_GPU=1

elapsed() { echo $(($(date +%s) - started)); }

# limit BUDGET RESERVE: BUDGET, cut so that RESERVE seconds stay before the end.
limit() {
    left=$((session_s - $(elapsed) - $2))
    if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# step NAME BUDGET RESERVE COMMAND: runs COMMAND (sh -c) within limit BUDGET
# RESERVE, its output to OUT/NN-NAME.log and its tail to stdout; returns its status.
step() {
    name=$1 budget=$2 reserve=$3
    shift 3
    step_number=$((step_number + 1))
    log=$out/$(printf %02d "$step_number")-$name.log
    seconds=$(limit "$budget" "$reserve")
    if [ "$seconds" -lt 5 ]; then
        echo "== $name: not run: the session's $session_s s are spent" | tee "$log"
        echo "$name not-run 0" >> "$out/summary.txt"
        failed=1
        return 124
    fi
    echo "== $name (at most $seconds s, $(elapsed) s into the session)"
    t0=$(date +%s)
    timeout -k 10 "$seconds" sh -c "$*" > "$log" 2>&1
    status=$?
    took=$(($(date +%s) - t0))
    tail -n 25 "$log"
    [ "$status" = 124 ] && echo "== $name: cut at its limit of $seconds s" | tee -a "$log"
    echo "== $name: exit status $status in $took s"
    echo "$name $status $took" >> "$out/summary.txt"
    [ "$status" = 0 ] || failed=1
    return "$status"
}

# The interpreter for the test scripts: the first with numpy (the device's
# Debian python3 may lack it where PyTorch's has it).
test_python() {
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import numpy' 2>/dev/null; then command -v "$p"; return; fi
    done
    command -v python3
}

# NCCL as pip installs it beside PyTorch (nvidia/nccl/{include,lib}, with
# libnccl.so.2 and no libnccl.so), for a toolkit that has none of its own:
# "-DNCCL_LIBRARY=... -DNCCL_INCLUDE_DIR=..." or nothing.
nccl_hints() {
    if ldconfig -p 2>/dev/null | grep -q 'libnccl[.]so ' || [ -f "${CUDA_HOME:-/usr/local/cuda}/lib64/libnccl.so" ]; then
        return 0 # the toolkit's or the system's
    fi
    dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null) || return 0
    for lib in "$dir"/lib/libnccl.so "$dir"/lib/libnccl.so.2; do
        if [ -f "$lib" ] && [ -f "$dir/include/nccl.h" ]; then
            echo "-DNCCL_LIBRARY=$lib -DNCCL_INCLUDE_DIR=$dir/include"
            return 0
        fi
    done
}

gpu_count() { nvidia-smi -L 2>/dev/null | grep -c '^GPU '; }

# group NAME BUDGET CTEST_ARGS: one group of GPU tests through ctest; on
# failure its failed tests again under compute-sanitizer (within what is left
# before the benchmark), and the session's tests stop there.
group() {
    name=$1 budget=$2
    shift 2
    step "$name" "$budget" "$bench_reserve_s" "cd '$build' && ctest $* -j 4 --output-on-failure --timeout 300" && return 0
    cp "$build/Testing/Temporary/LastTestsFailed.log" "$out/$name-failed.txt" 2>/dev/null
    if [ -z "$sanitizer" ]; then
        echo "== $name: no compute-sanitizer on this machine: no rerun under it"
    elif [ -s "$out/$name-failed.txt" ]; then
        step "$name-sanitize" 100000 "$bench_reserve_s" \
            "$(test_python) tests/gpu_session_sanitize.py '$build' '$sanitizer' '$out/$name-sanitize' \$(cut -d: -f2 '$out/$name-failed.txt')"
    fi
    return 1
}

main() {
    step machine 10 0 "nvidia-smi; nvcc --version | tail -n 2; python3 -c 'import torch; print(\"torch\", torch.__version__, torch.cuda.is_available())'; \
echo \"compute-sanitizer: ${sanitizer:-none}\"; command -v mpirun; nproc"
    gpus=$(gpu_count)
    echo "GPUs: $gpus"
    built=0
    step configure 60 "$bench_reserve_s" "cmake -S . -B '$build' -DCMAKE_BUILD_TYPE=Release -DLDM_CUDA=$cuda_mode \
-DCMAKE_CUDA_ARCHITECTURES=90 -DLDM_SYSTEM_PYTHON=$(test_python) $(nccl_hints)" &&
    step build 240 "$bench_reserve_s" "cmake --build '$build' -j $(nproc) --target ldm ldm_poisoned_gradient test_device \
test_ops_cuda test_ops_cuda_conv test_dit_cuda test_dit_cuda_trainable test_autoencoder_cuda test_distill_cuda \
test_comm_nccl" && built=1
    if [ "$built" = 1 ]; then
        # the 2-rank scenario needs a GPU for each rank (else it would fail here)
        except_ranks="-E '_ranks\$'"
        [ "${gpus:-0}" -ge 2 ] && except_ranks=
        group ops 60 "-R '^(test_device|test_ops_cuda|test_ops_cuda_conv)\$'" &&
        group models 90 "-R '^(test_dit_cuda|test_dit_cuda_trainable|test_autoencoder_cuda|test_distill_cuda)\$'" &&
        group nccl 45 "-R '^test_comm_nccl\$'" &&
        group cli 150 "-L cuda -R '^cli_' $except_ranks"
    fi
    if [ -x "$build/ldm" ]; then
        step bench 100 0 "LDM='$build/ldm' PYTHON=python3 bash tests/bench_gpu_vs_pytorch.sh --steps 10 --warmup 3"
    fi
    echo "gpu session: $(elapsed) s; $( [ $failed = 0 ] && echo 'every step passed' || echo 'FAILED' ); logs in $out"
    cat "$out/summary.txt"
    return $failed
}

# tests/gpu_session_multi.sh reads the functions above and runs its own main.
[ "${LDM_GPU_SESSION_LIBRARY:-0}" = 1 ] || { main; exit $?; }
