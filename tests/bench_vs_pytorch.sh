#!/usr/bin/env bash
# Compare ldm's CPU DiT-S training step with PyTorch's, on the same threads (2 unless told),
# in fp32 and in bf16 (ldm's train.precision=bf16 against torch.autocast(bfloat16)).
#
#   tests/bench_vs_pytorch.sh [--steps N] [--warmup W] [--repeats R (default 1)]
#                             [--torch both|pypi|debian]
#                             [--precision both|fp32|bf16] [--threads T (default 2)]
#                             [--openblas-coretype NAME] [--gemm-time] [--gemm-shapes]
#
# Run from the repository root. Builds build/ldm if it is missing, runs for each precision P
#   build/ldm bench --config configs/dit-s.json --set train.batch_size=32 --set train.precision=P
#             --steps N --warmup W
# and tests/bench_dit_pytorch.py --precision P (same model, batch 32, forward + weighted MSE +
# backward + AdamW), then prints the result lines and "ratio P (ldm / pytorch T): R" of
# images/s for each precision and PyTorch T measured. With --repeats R it runs R such rounds
# one after the other and ends with, per precision and PyTorch, the ratio of the best
# images/s of each side and the median of the rounds' own ratios (each round's two runs
# are next to each other in time, so a machine whose speed drifts, as a shared virtual
# machine's does by 25% from one minute to the next, moves both alike).
#
# PyTorch: by default both PyPI's current torch, in the virtual environment .venv-bench
# (created here on first use; PyPI's torch is a large CUDA build, several GB, only its
# CPU side is used), and Debian's python3-torch (1.13) in /usr/bin/python3; --torch pypi or
# --torch debian measures one.
# --openblas-coretype NAME runs ldm with OPENBLAS_CORETYPE=NAME (e.g. SkylakeX): on a
# virtual CPU that OpenBLAS does not recognise (one reporting "Intel(R) Xeon(R) Processor")
# it falls back to generic kernels about 5x slower in fp32, whatever AVX-512 the CPU has.
# --gemm-time also profiles each PyTorch run (tests/bench_dit_pytorch.py --profile-gemm)
# and prints, per round and precision, the time per step inside the linear layers'
# matrix products on both sides (ldm's "gemm forward" + "gemm backward" phases, PyTorch's
# aten::mm/addmm self time) and PyTorch's step over ldm's GEMM time: the ratio ldm would
# reach if nothing but its linear layers' GEMMs took time (the ceiling its GEMM library sets).
# --gemm-shapes times no step: each round runs `build/ldm bench --model gemm` and
# tests/bench_dit_pytorch.py --gemm-shapes (one DiT-S block's twelve linear-layer
# products alone, fp32, at batch x 64 rows, --steps calls after --warmup, best of 3
# rounds of calls) and prints, product by product, both sides' ms and PyTorch's time
# over ldm's (above 1: ldm's GEMM library is faster at that product), then the
# block's totals; with --repeats R the median of the rounds' total ratios.
# Not part of ctest: it takes minutes and its result depends on the machine.
set -euo pipefail

steps=10
warmup=2
repeats=1
which_torch=both
which_precision=both
threads=2
batch=32
ldm_coretype=
gemm_time=0
gemm_shapes=0

usage() { echo "usage: $0 [--steps N] [--warmup W] [--repeats R] [--torch both|pypi|debian] [--precision both|fp32|bf16] [--threads T] [--openblas-coretype NAME] [--gemm-time] [--gemm-shapes]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --steps)  [ $# -ge 2 ] || usage; steps=$2; shift 2 ;;
        --warmup) [ $# -ge 2 ] || usage; warmup=$2; shift 2 ;;
        --repeats) [ $# -ge 2 ] || usage; repeats=$2; shift 2 ;;
        --torch)  [ $# -ge 2 ] || usage; which_torch=$2; shift 2 ;;
        --precision) [ $# -ge 2 ] || usage; which_precision=$2; shift 2 ;;
        --threads) [ $# -ge 2 ] || usage; threads=$2; shift 2 ;;
        --openblas-coretype) [ $# -ge 2 ] || usage; ldm_coretype=$2; shift 2 ;;
        --gemm-time) gemm_time=1; shift ;;
        --gemm-shapes) gemm_shapes=1; shift ;;
        -h|--help) usage ;;
        *) echo "$0: unknown argument '$1'" >&2; usage ;;
    esac
done
case "$steps$warmup$threads$repeats" in *[!0-9]*|'') echo "$0: --steps, --warmup, --repeats and --threads take integers" >&2; exit 2 ;; esac
case "$which_torch" in both|pypi|debian) ;; *) echo "$0: --torch takes both, pypi or debian" >&2; exit 2 ;; esac
case "$which_precision" in both|fp32|bf16) ;; *) echo "$0: --precision takes both, fp32 or bf16" >&2; exit 2 ;; esac

if [ ! -f CMakeLists.txt ] || [ ! -f tests/bench_dit_pytorch.py ]; then
    echo "$0: run from the repository root" >&2
    exit 2
fi

# Both sides on the same threads. The test guide pins OPENBLAS_CORETYPE (for
# reproducible numerics across machines) but allows benchmarks to unset it, so that
# OpenBLAS (ldm's, and Debian torch's) picks the kernels of the real CPU; a timing taken
# with a pinned older core type would understate the machine.
unset OPENBLAS_CORETYPE
export OMP_NUM_THREADS=$threads
export OPENBLAS_NUM_THREADS=$threads
export MKL_NUM_THREADS=$threads

if [ ! -x build/ldm ]; then
    echo "== building ldm (Release)"
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
    cmake --build build -j2
fi

# python_for pypi|debian: prints the interpreter with that torch, creating the venv if needed.
python_for() {
    if [ "$1" = pypi ]; then
        if [ ! -x .venv-bench/bin/python ] || ! .venv-bench/bin/python -c 'import torch, numpy' 2>/dev/null; then
            echo "== creating .venv-bench with PyPI's torch (large download)" >&2
            python3 -m venv .venv-bench >&2
            .venv-bench/bin/pip install torch numpy >&2
        fi
        echo .venv-bench/bin/python
    else
        if ! /usr/bin/python3 -c 'import torch, numpy' 2>/dev/null; then
            echo "$0: /usr/bin/python3 has no torch/numpy (apt-get install python3-torch python3-numpy)" >&2
            exit 2
        fi
        echo /usr/bin/python3
    fi
}

ips() { printf '%s\n' "$1" | sed -n 's/.*images_per_s=\([0-9.eE+-]*\).*/\1/p'; }
case "$which_torch" in both) torches="pypi debian" ;; *) torches=$which_torch ;; esac

if [ "$gemm_shapes" = 1 ]; then
    declare -A shape_ratios
    for round in $(seq 1 "$repeats"); do
        echo "== round $round: ldm bench --model gemm (steps=$steps warmup=$warmup batch=$batch threads=$threads)"
        ldm_out=$(env ${ldm_coretype:+OPENBLAS_CORETYPE=$ldm_coretype} build/ldm bench --model gemm \
                  --config configs/dit-s.json --set train.batch_size=$batch --steps "$steps" --warmup "$warmup")
        for torch in $torches; do
            py=$(python_for "$torch")
            echo "== round $round: pytorch ($torch) --gemm-shapes"
            pt_out=$("$py" tests/bench_dit_pytorch.py --gemm-shapes --steps "$steps" --warmup "$warmup" \
                      --batch "$batch" --threads "$threads")
            # "bench: gemm NAME PRODUCT ... ms=X" against "pytorch_gemm: NAME PRODUCT ... ms=Y", by name
            table=$(printf '%s\n%s\n' "$ldm_out" "$pt_out" | awk -v t="$torch" '
                /^bench: gemm [a-z0-9]+ / { split($8, m, "="); ldm[$3 " " $4] = m[2]; order[++n] = $3 " " $4 }
                /^bench: gemm_total / { split($3, m, "="); ldm_total = m[2] }
                /^pytorch_gemm: / { split($7, m, "="); pt[$2 " " $3] = m[2] }
                /^pytorch_gemm_total: / { split($2, m, "="); pt_total = m[2] }
                END {
                    if (n != 12 || ldm_total == "" || pt_total == "") { print "incomplete"; exit }
                    for (i = 1; i <= n; i++) {
                        k = order[i]
                        if (pt[k] == "") { print "incomplete"; exit }
                        printf "gemm_shape %-14s ldm %8.3f ms, pytorch %s %8.3f ms; pytorch / ldm %.2f\n", k, ldm[k], t, pt[k], pt[k] / ldm[k]
                    }
                    printf "gemm_shape total (a block): ldm %.2f ms, pytorch %s %.2f ms; pytorch / ldm %.2f\n", ldm_total, t, pt_total, pt_total / ldm_total
                }')
            if printf '%s\n' "$table" | grep -q '^incomplete'; then
                printf '%s\n%s\n' "$ldm_out" "$pt_out" >&2
                echo "$0: the product lines of ldm and pytorch $torch do not match" >&2
                exit 1
            fi
            printf '%s\n' "$table"
            ratio=$(printf '%s\n' "$table" | sed -n 's/^gemm_shape total.*pytorch \/ ldm \([0-9.]*\)$/\1/p')
            shape_ratios[$torch]="${shape_ratios[$torch]:+${shape_ratios[$torch]} }$ratio"
        done
    done
    if [ "$repeats" -gt 1 ]; then
        for torch in $torches; do
            median=$(printf '%s\n' ${shape_ratios[$torch]} | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
            echo "== $repeats rounds: a block's products, pytorch $torch's time / ldm's: median $median (rounds: ${shape_ratios[$torch]})"
        done
    fi
    exit 0
fi
case "$which_precision" in both) precisions="fp32 bf16" ;; *) precisions=$which_precision ;; esac
results=""
declare -A best_ldm best_pt round_ratios
for round in $(seq 1 "$repeats"); do
for precision in $precisions; do
    echo "== round $round: ldm bench ($precision, steps=$steps warmup=$warmup batch=$batch threads=$threads)"
    ldm_out=$(env ${ldm_coretype:+OPENBLAS_CORETYPE=$ldm_coretype} build/ldm bench --config configs/dit-s.json --set train.batch_size=$batch \
              --set train.precision=$precision --steps "$steps" --warmup "$warmup")
    ldm_line=$(printf '%s\n' "$ldm_out" | grep '^bench: images_per_s' | tail -n 1 || true)
    if [ -z "$ldm_line" ]; then
        printf '%s\n' "$ldm_out" >&2
        echo "$0: no 'bench: images_per_s' line from ldm" >&2
        exit 1
    fi
    ldm_ips=$(ips "$ldm_line")
    # ms per step (wall) of the forward and backward GEMM phases of ldm's profile
    ldm_gemm_ms=$(printf '%s\n' "$ldm_out" | awk '/^bench: +gemm (forward|backward) / { t += $4 } END { printf "%.1f", t }')
    results="$results$ldm_line
"
    best_ldm[$precision]=$(awk -v a="$ldm_ips" -v b="${best_ldm[$precision]:-0}" 'BEGIN { print (a > b ? a : b) }')
    for torch in $torches; do
        py=$(python_for "$torch")
        echo "== round $round: pytorch ($torch, $precision)"
        pt_out=$("$py" tests/bench_dit_pytorch.py --steps "$steps" --warmup "$warmup" \
                  --batch "$batch" --threads "$threads" --precision "$precision" \
                  $([ "$gemm_time" = 1 ] && echo --profile-gemm) 2>/dev/null)
        pt_line=$(printf '%s\n' "$pt_out" | grep '^pytorch:' | tail -n 1 || true)
        pt_ips=$(ips "$pt_line")
        if [ -z "$ldm_ips" ] || [ -z "$pt_ips" ]; then
            echo "$0: could not parse images_per_s from:" >&2
            printf '  %s\n  %s\n' "$ldm_line" "$pt_line" >&2
            exit 1
        fi
        key="$precision $torch"
        best_pt[$key]=$(awk -v a="$pt_ips" -v b="${best_pt[$key]:-0}" 'BEGIN { print (a > b ? a : b) }')
        ratio=$(awk -v a="$ldm_ips" -v b="$pt_ips" 'BEGIN { printf "%.2f", a / b }')
        round_ratios[$key]="${round_ratios[$key]:+${round_ratios[$key]} }$ratio"
        results="$results$pt_line
ratio $precision (ldm / pytorch $torch): $ratio
"
        if [ "$gemm_time" = 1 ]; then
            pt_gemm_line=$(printf '%s\n' "$pt_out" | grep '^pytorch_gemm:' | tail -n 1 || true)
            pt_gemm_ms=$(printf '%s\n' "$pt_gemm_line" | sed -n 's/.*linear_ms=\([0-9.]*\).*/\1/p')
            pt_step_ms=$(printf '%s\n' "$pt_line" | sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p')
            ldm_step_ms=$(printf '%s\n' "$ldm_line" | sed -n 's/.*ms_per_step=\([0-9.]*\).*/\1/p')
            if [ -z "$pt_gemm_ms" ] || [ -z "$ldm_gemm_ms" ] || [ "$ldm_gemm_ms" = 0.0 ]; then
                echo "$0: no GEMM times from the profiles (ldm '$ldm_gemm_ms', pytorch '$pt_gemm_line')" >&2
                exit 1
            fi
            results="$results$pt_gemm_line
$(awk -v p="$precision" -v t="$torch" -v lg="$ldm_gemm_ms" -v ls="$ldm_step_ms" -v pg="$pt_gemm_ms" -v ps="$pt_step_ms" \
    'BEGIN { printf "gemm %s (ms a step in the linear layers'"'"' products): ldm %.0f of %.0f, pytorch %s %.0f of %.0f; pytorch'"'"'s GEMMs / ldm'"'"'s %.2f; ceiling (pytorch'"'"'s step / ldm'"'"'s GEMMs) %.2f", p, lg, ls, t, pg, ps, pg / lg, ps / lg }')
"
        fi
    done
done
done
printf '%s' "$results"
if [ "$repeats" -gt 1 ]; then
    echo "== $repeats rounds (batch $batch, $threads threads)"
    for precision in $precisions; do
        for torch in $torches; do
            key="$precision $torch"
            median=$(printf '%s\n' ${round_ratios[$key]} | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
            awk -v a="${best_ldm[$precision]}" -v b="${best_pt[$key]}" -v p="$precision" -v t="$torch" -v m="$median" \
                -v r="${round_ratios[$key]}" \
                'BEGIN { printf "%s: best ldm %.2f images/s, best pytorch %s %.2f; ratio of the bests %.2f; median of the rounds'"'"' ratios %.2f (rounds: %s)\n", p, a, t, b, a / b, m, r }'
        done
    done
fi
