#!/bin/sh
# The whole test suite, from a fresh Debian 12 machine: installs the packages,
# builds (with CUDA when nvcc is there), runs every test with ctest, then builds
# again with AddressSanitizer + UndefinedBehaviorSanitizer and runs the tests
# there too, and last builds the CUDA code for the CPU emulation
# (tests/cuda_emulation/) and runs the tests of the GPU code paths there, which
# a machine without a GPU otherwise skips. `.ci/run` runs exactly this.
set -eu
cd "$(dirname "$0")/.."
# PyTorch (Debian's) too: the export test loads checkpoints of ldm train into
# the PyTorch DiT, so that CI checks it rather than skipping it.
LDM_WITH_TORCH=1 ./launch/install-deps.sh
jobs=$(nproc)
# PyPI's tensorboard, whose event reader checks the RUN/tb/ files that ldm
# writes (cli_tensorboard_pypi_reader, registered by the option below).
[ -x .venv-tests/bin/python3 ] || python3 -m venv --system-site-packages .venv-tests
.venv-tests/bin/python3 -m pip install -q tensorboard==2.21.0
# CI runs as root: the full-disk tests mount their tmpfs there, and must not
# pass by skipping (tests/full_disk_scenarios.sh).
export LDM_REQUIRE_MOUNT=1

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLDM_TEST_TENSORBOARD_PYTHON="$PWD/.venv-tests/bin/python3"
cmake --build build -j "$jobs"
(cd build && ctest --output-on-failure)

# The sanitizer build leaves CUDA out: the release build above already compiles it.
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DLDM_SANITIZE=ON -DLDM_CUDA=OFF
cmake --build build-sanitize -j "$jobs"
(cd build-sanitize && ctest --output-on-failure)

# The GPU code paths (ctest label cuda) on the CPU emulation of CUDA.
cmake -S . -B build-emulate -DCMAKE_BUILD_TYPE=Release -DLDM_CUDA=EMULATE
cmake --build build-emulate -j "$jobs"
# Two at a time: the emulation is single-threaded, and the longest test (training
# on the emulated GPU) would otherwise leave a core idle for minutes.
(cd build-emulate && ctest -L cuda -j "$jobs" --output-on-failure)
# The parsers of user-supplied bytes under libFuzzer (clang-14, ASan, UBSan),
# 15 s each on their seed corpora and regression inputs (tests/fuzz/run.sh).
tests/fuzz/run.sh 15
echo "tests: all passed (release, sanitizer and CUDA-emulation builds, fuzz targets)"
