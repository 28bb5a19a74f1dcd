#!/usr/bin/env bash
# Compare ldm's DiT-B/2 training step on one GPU with PyTorch's on the same GPU.
#
#   tests/bench_gpu_vs_pytorch.sh [--steps N] [--warmup W] [--batch B] [--precision bf16|fp32]
#
# Run from the repository root on a machine with an NVIDIA GPU. Runs
#   build/ldm bench --config configs/dit-b2.json --device cuda --steps N --warmup W
# and
#   python3 tests/bench_dit_pytorch.py --config configs/dit-b2.json --device cuda --precision bf16
#       --batch 256 --steps N --warmup W --peak-tflops P
# (the same model, batch and step: forward, EDM MSE, backward, AdamW; PyTorch in bf16 autocast
# with fp32 master weights, as ldm's bf16 keeps fp32 masters), then prints both result lines,
# "ratio (ldm / pytorch): R" of images/s and ldm's MFU. P is the dense peak that ldm took its MFU
# against (peak_tflops= in its line: ldm's table by GPU name, or LDM_PEAK_TFLOPS), so that both
# MFUs have the same denominator. --batch and --precision change both sides alike.
#
# Environment: LDM, the ldm to run (default build/ldm, configured with -DLDM_CUDA=ON and built
# when missing); PYTHON, an interpreter whose torch has CUDA (default python3; nothing is
# installed here, unlike tests/bench_vs_pytorch.sh); LDM_PEAK_TFLOPS, the GPU's dense peak in
# TFLOP/s for a GPU that ldm's table does not know (ldm reads it).
# Ends with exit status 2 and one line when there is no GPU, when ldm has no CUDA, or when
# PYTHON has no torch with CUDA. Not part of ctest: it takes minutes and its result depends on
# the machine.
set -euo pipefail

steps=20
warmup=5
batch=256
precision=bf16
config=configs/dit-b2.json

usage() { echo "usage: $0 [--steps N] [--warmup W] [--batch B] [--precision bf16|fp32]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --steps)     [ $# -ge 2 ] || usage; steps=$2; shift 2 ;;
        --warmup)    [ $# -ge 2 ] || usage; warmup=$2; shift 2 ;;
        --batch)     [ $# -ge 2 ] || usage; batch=$2; shift 2 ;;
        --precision) [ $# -ge 2 ] || usage; precision=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "$0: unknown argument '$1'" >&2; usage ;;
    esac
done
case "$steps$warmup$batch" in *[!0-9]*|'') echo "$0: --steps, --warmup and --batch take integers" >&2; exit 2 ;; esac
# Both sides take these; fp16 would compare ldm's loss-scaled fp16 with PyTorch's bf16.
case "$precision" in bf16|fp32) ;; *) echo "$0: --precision takes bf16 or fp32" >&2; exit 2 ;; esac

if [ ! -f CMakeLists.txt ] || [ ! -f tests/bench_dit_pytorch.py ] || [ ! -f "$config" ]; then
    echo "$0: run from the repository root" >&2
    exit 2
fi

# The GPU, by name: the one CUDA numbers first (the first of CUDA_VISIBLE_DEVICES when set).
gpu_index=${CUDA_VISIBLE_DEVICES:-0}
gpu_index=${gpu_index%%,*}
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "$0: no NVIDIA GPU on this machine (no nvidia-smi)" >&2
    exit 2
fi
if ! gpu=$(nvidia-smi -i "$gpu_index" --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) ||
        [ -z "$gpu" ]; then
    echo "$0: no NVIDIA GPU on this machine (nvidia-smi -i $gpu_index finds none)" >&2
    exit 2
fi

py=${PYTHON:-python3}
if ! "$py" -c 'import sys, numpy, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "$0: $py has no torch with CUDA (or no numpy); set PYTHON to an interpreter that has" >&2
    exit 2
fi

ldm=${LDM:-build/ldm}
if [ ! -x "$ldm" ]; then
    if [ -n "${LDM:-}" ]; then
        echo "$0: LDM=$ldm is not an executable" >&2
        exit 2
    fi
    echo "== building ldm (Release, CUDA)"
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLDM_CUDA=ON
    cmake --build build -j "$(nproc)" --target ldm
fi

echo "== $gpu: ldm bench ($config, batch $batch, $precision, steps=$steps warmup=$warmup)"
# ldm refuses --device cuda with one line of its own (a CPU build, no device): pass it on.
set +e
ldm_out=$("$ldm" bench --config "$config" --set train.batch_size="$batch" --set train.precision="$precision" \
          --device cuda --steps "$steps" --warmup "$warmup")
status=$?
set -e
[ -z "$ldm_out" ] || printf '%s\n' "$ldm_out"
[ "$status" = 0 ] || { echo "$0: ldm bench failed (exit status $status)" >&2; exit "$status"; }
ldm_line=$(printf '%s\n' "$ldm_out" | grep '^bench: images_per_s=' | tail -n 1 || true)
if [ -z "$ldm_line" ]; then
    echo "$0: no 'bench: images_per_s=' line from ldm" >&2
    exit 1
fi

# field NAME LINE: the value of NAME=... in LINE (empty when absent).
field() { printf '%s\n' "$2" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
peak=$(field peak_tflops "$ldm_line")
ldm_mfu=$(field mfu "$ldm_line")

echo "== $gpu: pytorch ($py)"
pt_out=$("$py" tests/bench_dit_pytorch.py --config "$config" --device cuda --precision "$precision" \
         --batch "$batch" --steps "$steps" --warmup "$warmup" --peak-tflops "${peak:-0}")
pt_line=$(printf '%s\n' "$pt_out" | grep '^pytorch:' | tail -n 1 || true)

ldm_ips=$(field images_per_s "$ldm_line")
pt_ips=$(field images_per_s "$pt_line")
if [ -z "$ldm_ips" ] || [ -z "$pt_ips" ]; then
    echo "$0: could not parse images_per_s from:" >&2
    printf '  %s\n  %s\n' "$ldm_line" "$pt_out" >&2
    exit 1
fi
echo "$ldm_line"
echo "$pt_line"
awk -v a="$ldm_ips" -v b="$pt_ips" 'BEGIN { printf "ratio (ldm / pytorch): %.2f\n", a / b }'
if [ -n "$ldm_mfu" ]; then
    echo "ldm mfu: $ldm_mfu of $peak TFLOP/s dense $precision ($gpu)"
else
    echo "ldm mfu: unknown: ldm has no peak for '$gpu' (set LDM_PEAK_TFLOPS)"
fi
