#!/bin/sh
# Shows that the layering check can fail: on a copy of the tree it must pass
# as it is, then fail, naming the file and the arrow, once a model/ file
# includes a data/ header (model may not use data).
# usage: planted_include.sh SOURCE_DIR
set -eu
source_dir=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/docs"
cp "$source_dir/docs/design.md" "$work/docs/"
for layer in base comm checkpoints model data train; do cp -r "$source_dir/$layer" "$work/"; done
checker="$source_dir/tests/layering/check_layering.py"

python3 "$checker" "$work" > "$work/clean.out" || { cat "$work/clean.out"; echo "planted_include: the clean copy fails"; exit 1; }

printf '#include "loader.h"\n' >> "$work/model/ops_norm.c"
status=0
python3 "$checker" "$work" > "$work/planted.out" || status=$?
cat "$work/planted.out"
if [ "$status" -ne 1 ]; then echo "planted_include: the check exited $status on a wrong-way include, expected 1"; exit 1; fi
grep -q '^model/ops_norm.c:[0-9]*: includes loader.h (data): model may use only base, checkpoints/tensors$' "$work/planted.out" ||
    { echo "planted_include: the check did not name model/ops_norm.c -> loader.h"; exit 1; }
echo "planted_include: the check refuses model -> data"
