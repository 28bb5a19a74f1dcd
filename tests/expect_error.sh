#!/bin/sh
# Runs a command that must fail: checks its exit status and that stderr holds a
# pattern (grep -E), and that the message is short: at most 3 lines besides the
# banner mpirun adds when a rank aborts the job (the block between its lines of
# dashes), which is Open MPI's, not ours.
# Usage: expect_error.sh STATUS PATTERN -- COMMAND ARGS...
set -u
want_status=$1; pattern=$2; shift 3
stderr_file=$(mktemp)
"$@" >/dev/null 2>"$stderr_file"
status=$?
cat "$stderr_file" >&2
ok=1
if [ "$status" != "$want_status" ]; then
  echo "expect_error: exit status $status, expected $want_status" >&2; ok=0
fi
if ! grep -Eq -- "$pattern" "$stderr_file"; then
  echo "expect_error: stderr does not match: $pattern" >&2; ok=0
fi
own_lines=$(awk '/^-----------/ { banner = !banner; next } !banner && NF { n++ } END { print n + 0 }' "$stderr_file")
if [ "$own_lines" -gt 3 ]; then
  echo "expect_error: more than a short message on stderr" >&2; ok=0
fi
rm -f "$stderr_file"
[ "$ok" = 1 ]
