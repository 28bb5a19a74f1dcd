#!/bin/sh
# The GPU tests that need two or more GPUs, in ONE device call of at most 540 s
# on a machine with several (tests/gpu_session.sh is the one-GPU session; this
# uses its steps, limits and logs). Prepared here as for that one
# (.deps: MPI, HDF5 and cJSON as Debian packages, gathered beforehand; docs/gpu.md), then the device call
# (carry [".deps"], timeout_s 540):
#
#   .deps/offline-deps.sh unpack >/dev/null && . .deps/env.sh && sh tests/gpu_session_multi.sh "$OUT"
#
# Steps: machine, configure, build (as gpu_session.sh), then with
# LDM_REQUIRE_GPU=1, stopping at the first group that fails (its failed tests
# again under compute-sanitizer):
#   nccl-ranks  test_comm_nccl under mpirun on 2 ranks, and on 4 or 8 when the
#               machine has that many GPUs (a power of two: the exact means of
#               the test), one GPU each: NCCL mean all-reduce, buckets in
#               slices behind a stalled compute stream, the same bits on every rank
#   cli-ranks   cli_train_cuda_ranks: 2 GPU ranks with NCCL slices during the
#               backward pass = 1 GPU rank = 1 rank accumulating; a poisoned
#               gradient skipped by both; cli_distill_cuda_ranks: the same for
#               ldm distill's student
#   single      the one-GPU groups of gpu_session.sh (ops, models, nccl, cli),
#               with what time is left
# Exit status: 0 when every step passed, else 1.
set -u
out=${1:?usage: gpu_session_multi.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
LDM_GPU_SESSION_LIBRARY=1
# shellcheck source=tests/gpu_session.sh
. "$here/gpu_session.sh"
# no benchmark here: the groups may use the whole session
bench_reserve_s=0

mpirun_np() { # mpirun_np N: the group's command for test_comm_nccl on N ranks
    echo "mpirun --oversubscribe -x LDM_REQUIRE_GPU -np $1 '$build/tests/test_comm_nccl'"
}

main_multi() {
    step machine 10 0 "nvidia-smi; nvcc --version | tail -n 2; echo \"compute-sanitizer: ${sanitizer:-none}\"; \
command -v mpirun; nproc"
    gpus=$(gpu_count)
    echo "GPUs: $gpus"
    if [ "${gpus:-0}" -lt 2 ]; then
        echo "gpu session multi: FAILED: this machine has ${gpus:-0} GPU(s); the multi-GPU session needs 2 or more" |
            tee -a "$out/summary.txt"
        return 1
    fi
    built=0
    step configure 60 0 "cmake -S . -B '$build' -DCMAKE_BUILD_TYPE=Release -DLDM_CUDA=$cuda_mode \
-DCMAKE_CUDA_ARCHITECTURES=90 -DLDM_SYSTEM_PYTHON=$(test_python) $(nccl_hints)" &&
    step build 240 0 "cmake --build '$build' -j $(nproc) --target ldm ldm_poisoned_gradient test_device \
test_ops_cuda test_ops_cuda_conv test_dit_cuda test_dit_cuda_trainable test_autoencoder_cuda test_distill_cuda \
test_comm_nccl" && built=1
    [ "$built" = 1 ] || return 1
    nccl="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM; $(mpirun_np 2)"
    for n in 4 8; do [ "$gpus" -ge "$n" ] && nccl="$nccl && $(mpirun_np "$n")"; done
    if step nccl-ranks 90 0 "$nccl"; then
        group cli-ranks 150 "-R '^cli_(train|distill)_cuda_ranks\$'" &&
        group ops 60 "-R '^(test_device|test_ops_cuda|test_ops_cuda_conv)\$'" &&
        group models 90 "-R '^(test_dit_cuda|test_dit_cuda_trainable|test_autoencoder_cuda|test_distill_cuda)\$'" &&
        group nccl 45 "-R '^test_comm_nccl\$'" &&
        group cli 150 "-L cuda -R '^cli_'"
    fi
    echo "gpu session multi: $(elapsed) s; $([ $failed = 0 ] && echo 'every step passed' || echo 'FAILED'); logs in $out"
    cat "$out/summary.txt"
    return $failed
}

main_multi
exit $?
