#!/bin/sh
# Runs ldm as N ranks on this machine: launch/local.sh N COMMAND [options...]
# e.g.  launch/local.sh 2 train --config configs/tiny.json --data data/synthetic.h5 --run runs/tiny
# Safe as root (containers, CI): Open MPI refuses root unless told, and more
# ranks than cores need --oversubscribe. Ranks are not bound to cores, so OpenMP
# threads of several ranks share the machine. LDM names the program (default:
# build/ldm beside this folder); MPIRUN the launcher (default: mpirun).
set -eu
if [ $# -lt 2 ]; then
  echo "usage: $0 RANKS COMMAND [options...]" >&2
  exit 2
fi
ranks=$1; shift
case "$ranks" in
  ''|*[!0-9]*|0) echo "$0: RANKS must be a positive integer, got '$ranks'" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")/.." && pwd)
ldm=${LDM:-$here/build/ldm}
[ -x "$ldm" ] || { echo "$0: $ldm is not built (cmake -S . -B build && cmake --build build)" >&2; exit 2; }
root_flags=""
if [ "$(id -u)" = 0 ]; then root_flags="--allow-run-as-root"; fi
# Each rank gets an equal share of the cores for its OpenMP threads.
cores=$(nproc)
threads=$(( cores / ranks )); [ "$threads" -ge 1 ] || threads=1
# shellcheck disable=SC2086
exec ${MPIRUN:-mpirun} $root_flags --oversubscribe --bind-to none -np "$ranks" \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}" "$ldm" "$@"
