#!/bin/sh
# Ranks that end at the same moment must end normally: on 2, 3 and 4 ranks,
# `ldm version` (init, the watch's ring, goodbyes, finalize) with each rank
# pausing inside its goodbye (LDM_TEST_WATCH_BYE_PAUSE_MS), so that every
# neighbour's goodbye crosses its own. Each job must exit 0 with no line about a
# lost or stalled rank.
# Usage: watch_goodbye.sh WORK, with LDM (the program) and LDM_MPIRUN (mpirun
# with its options) in the environment.
set -u
work=$1
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
fail() { echo "FAIL: $*" >&2; exit 1; }
for ranks in 2 3 4; do
  for pause in 0 200; do
    LDM_TEST_WATCH_BYE_PAUSE_MS=$pause $LDM_MPIRUN -np $ranks "$LDM" version > out.txt 2> err.txt
    code=$?
    [ $code -eq 0 ] || { cat err.txt >&2; fail "$ranks ranks, pause $pause ms: exit status $code"; }
    ! grep -E "lost rank|no sign of life" err.txt || fail "$ranks ranks, pause $pause ms: a rank was reported"
    [ "$(grep -c '^ldm ' out.txt)" -eq $ranks ] || { cat out.txt >&2; fail "$ranks ranks: expected $ranks version lines"; }
  done
done
echo "watch_goodbye: 2, 3 and 4 ranks ended normally with crossing goodbyes"
