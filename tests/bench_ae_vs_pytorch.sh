#!/usr/bin/env bash
# Compare ldm's CPU autoencoder training step with PyTorch's (PyPI's diffusers
# AutoencoderKL of the same shape), on the same threads (2 unless told), in fp32
# and in bf16 (ldm's train.precision=bf16 against torch.autocast(bfloat16)).
#
#   tests/bench_ae_vs_pytorch.sh [--steps N] [--warmup W] [--repeats R]
#                                [--precision both|fp32|bf16] [--threads T (default 2)]
#                                [--config F (default configs/ae-fmnist.json)] [--batch B (default 32)]
#                                [--python PY] [--ldm PATH (default build/ldm)]
#
# Run from the repository root. Builds build/ldm if it is missing (and no --ldm is given). For each of R rounds and
# each precision P it runs, one after the other (interleaved, so that a shared machine's load
# falls on both alike),
#   LDM bench --model ae --config F --set train.batch_size=B --set train.precision=P
#             --steps N --warmup W
#   PY tests/bench_ae_pytorch.py --config F --batch B --precision P --steps N --warmup W
# (the same step: encode, posterior mean, decode, reconstruction + kl_beta KL, backward,
# AdamW), prints every result line, then per precision the best images/s of each side over
# the rounds and "ratio P (ldm / pytorch): R", the same ratio of CPU time per step (the
# work, steadier than the wall clock where other processes share the cores), and the median
# of the rounds' own ratios (a round's two runs are next to each other in time, so a machine
# whose speed drifts moves both alike).
#
# PyTorch: PY (default .venv-bench/bin/python, else /work/main/.venv-bench/bin/python) must
# import torch and diffusers (pip install torch diffusers). Not part of ctest: it takes
# minutes and its result depends on the machine.
set -euo pipefail

steps=5
warmup=1
repeats=3
which_precision=both
threads=2
batch=32
config=configs/ae-fmnist.json
python=
ldm=

usage() {
    echo "usage: $0 [--steps N] [--warmup W] [--repeats R] [--precision both|fp32|bf16] [--threads T] [--config F] [--batch B] [--python PY] [--ldm PATH]" >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
        --steps)  [ $# -ge 2 ] || usage; steps=$2; shift 2 ;;
        --warmup) [ $# -ge 2 ] || usage; warmup=$2; shift 2 ;;
        --repeats) [ $# -ge 2 ] || usage; repeats=$2; shift 2 ;;
        --precision) [ $# -ge 2 ] || usage; which_precision=$2; shift 2 ;;
        --threads) [ $# -ge 2 ] || usage; threads=$2; shift 2 ;;
        --config) [ $# -ge 2 ] || usage; config=$2; shift 2 ;;
        --batch) [ $# -ge 2 ] || usage; batch=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || usage; python=$2; shift 2 ;;
        --ldm) [ $# -ge 2 ] || usage; ldm=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "$0: unknown argument '$1'" >&2; usage ;;
    esac
done
case "$steps$warmup$threads$repeats$batch" in *[!0-9]*|'') echo "$0: --steps, --warmup, --threads, --repeats and --batch take integers" >&2; exit 2 ;; esac
case "$which_precision" in both|fp32|bf16) ;; *) echo "$0: --precision takes both, fp32 or bf16" >&2; exit 2 ;; esac
if [ ! -f CMakeLists.txt ] || [ ! -f tests/bench_ae_pytorch.py ]; then
    echo "$0: run from the repository root" >&2
    exit 2
fi
if [ ! -f "$config" ]; then
    echo "$0: --config $config: no such file" >&2
    exit 2
fi
if [ -z "$python" ]; then
    for candidate in .venv-bench/bin/python /work/main/.venv-bench/bin/python; do
        if [ -x "$candidate" ]; then python=$candidate; break; fi
    done
fi
if [ -z "$python" ] || ! "$python" -c 'import torch, diffusers' 2>/dev/null; then
    echo "$0: no Python with torch and diffusers (--python PY; pip install torch diffusers)" >&2
    exit 2
fi

# Both sides on the same threads; OPENBLAS_CORETYPE unset so that OpenBLAS picks the real
# CPU's kernels (as tests/bench_vs_pytorch.sh).
unset OPENBLAS_CORETYPE
export OMP_NUM_THREADS=$threads
export OPENBLAS_NUM_THREADS=$threads
export MKL_NUM_THREADS=$threads

if [ -z "$ldm" ]; then
    ldm=build/ldm
    if [ ! -x build/ldm ]; then
        echo "== building ldm (Release)"
        cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
        cmake --build build -j2
    fi
elif [ ! -x "$ldm" ]; then
    echo "$0: --ldm $ldm: not an executable" >&2
    exit 2
fi

field() { printf '%s\n' "$2" | sed -n "s/.* $1=\([0-9.eE+-]*\).*/\1/p"; }
case "$which_precision" in both) precisions="fp32 bf16" ;; *) precisions=$which_precision ;; esac
declare -A best_ldm best_pt cpu_ldm cpu_pt round_ratios
for round in $(seq 1 "$repeats"); do
    for precision in $precisions; do
        echo "== round $round, $precision: ldm bench --model ae (steps=$steps warmup=$warmup batch=$batch threads=$threads)"
        ldm_out=$("$ldm" bench --model ae --config "$config" --set train.batch_size=$batch \
                  --set train.precision=$precision --steps "$steps" --warmup "$warmup")
        ldm_line=$(printf '%s\n' "$ldm_out" | grep '^bench: images_per_s' | tail -n 1 || true)
        if [ -z "$ldm_line" ]; then
            printf '%s\n' "$ldm_out" >&2
            echo "$0: no 'bench: images_per_s' line from ldm" >&2
            exit 1
        fi
        echo "$ldm_line"
        echo "== round $round, $precision: pytorch (diffusers AutoencoderKL)"
        pt_line=$("$python" tests/bench_ae_pytorch.py --config "$config" --steps "$steps" --warmup "$warmup" \
                  --batch "$batch" --threads "$threads" --precision "$precision" | grep '^pytorch:' | tail -n 1)
        echo "$pt_line"
        l=$(field images_per_s " $ldm_line"); p=$(field images_per_s " $pt_line")
        lc=$(field cpu_ms_per_step " $ldm_line"); pc=$(field cpu_ms_per_step " $pt_line")
        if [ -z "$l" ] || [ -z "$p" ] || [ -z "$lc" ] || [ -z "$pc" ]; then
            echo "$0: could not parse images_per_s / cpu_ms_per_step from:" >&2
            printf '  %s\n  %s\n' "$ldm_line" "$pt_line" >&2
            exit 1
        fi
        ratio=$(awk -v a="$l" -v b="$p" 'BEGIN { printf "%.2f", a / b }')
        round_ratios[$precision]="${round_ratios[$precision]:+${round_ratios[$precision]} }$ratio"
        best_ldm[$precision]=$(awk -v a="$l" -v b="${best_ldm[$precision]:-0}" 'BEGIN { print (a > b ? a : b) }')
        best_pt[$precision]=$(awk -v a="$p" -v b="${best_pt[$precision]:-0}" 'BEGIN { print (a > b ? a : b) }')
        cpu_ldm[$precision]=$(awk -v a="$lc" -v b="${cpu_ldm[$precision]:-1e30}" 'BEGIN { print (a < b ? a : b) }')
        cpu_pt[$precision]=$(awk -v a="$pc" -v b="${cpu_pt[$precision]:-1e30}" 'BEGIN { print (a < b ? a : b) }')
    done
done
echo "== best of $repeats rounds (batch $batch, $threads threads, $config)"
for precision in $precisions; do
    median=$(printf '%s\n' ${round_ratios[$precision]} | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
    awk -v a="${best_ldm[$precision]}" -v b="${best_pt[$precision]}" -v c="${cpu_ldm[$precision]}" \
        -v d="${cpu_pt[$precision]}" -v p="$precision" -v m="$median" -v r="${round_ratios[$precision]}" \
        'BEGIN { printf "%s: ldm %.2f images/s, pytorch %.2f images/s; ratio %s (ldm / pytorch): %.2f; cpu ms per step ldm %.1f, pytorch %.1f, ratio of cpu time (pytorch / ldm): %.2f; median of the rounds'"'"' ratios %.2f (rounds: %s)\n", p, a, b, p, a / b, c, d, d / c, m, r }'
done
