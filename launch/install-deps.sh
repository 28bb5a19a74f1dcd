#!/bin/sh
# Installs the Debian 12 packages ldm needs to build, test and run on the CPU.
# Idempotent: packages already present are skipped, so a second run is quick.
# Runs as root (CI, containers) or through sudo for a normal user.
# iproute2 and util-linux (ip netns, unshare) build the test cluster of network
# namespaces (launch/cluster.sh). Set LDM_WITH_TORCH=1 to also install Debian's
# PyTorch: the fixture generator, the export check and the sample evaluator of
# tests/ use it (tests/run.sh sets it; the committed fixtures need no PyTorch).
# python3-venv: tests/run.sh makes .venv-tests with PyPI's tensorboard in it.
# clang-14 with libFuzzer builds the fuzz targets (tests/fuzz/run.sh, -DLDM_FUZZ=ON).
set -eu

packages="build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
  libcjson-dev libopenblas-dev libdnnl-dev libpng-dev libturbojpeg0-dev zlib1g-dev libomp-dev
  dataset-fashion-mnist python3 python3-numpy python3-h5py python3-pil python3-venv iproute2 util-linux
  clang-14 libfuzzer-14-dev libclang-rt-14-dev"
if [ "${LDM_WITH_TORCH:-0}" = 1 ]; then
  packages="$packages python3-torch"
fi

missing=""
for p in $packages; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing="$missing $p"
  fi
done
if [ -z "$missing" ]; then
  echo "install-deps: all packages present"
  exit 0
fi

if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
echo "install-deps: installing$missing"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
