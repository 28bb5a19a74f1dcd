#!/usr/bin/env python3
"""Checks that the source folders depend on each other only in the intended
direction: every `#include "name.h"` of a file in one layer must name a header
that lives in the same layer or in one the layer may use.

The layers and their allowed arrows are read from the table in docs/design.md
(the lines between "<!-- layers -->" and "<!-- /layers -->"), so the document
and the check cannot drift apart. A header that exists in no layer (a system or
library header found by a quoted include) is ignored.

usage: check_layering.py [ROOT]   (ROOT: the repository, default: this file's)
Exit status: 0 when every arrow runs the right way, 1 with one line per wrong
arrow ("model/dit.c includes comm.h (comm): model may use base, ..."), 2 when
the table cannot be read."""
import os
import re
import sys

SOURCE_SUFFIXES = (".c", ".h", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
ROW = re.compile(r"^\|\s*`([^`]+)/`\s*\|.*\|\s*([^|]*?)\s*\|$")


def read_layers(root):
    path = os.path.join(root, "docs", "design.md")
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as error:
        sys.exit(f"check_layering: cannot read {path}: {error.strerror}")
    match = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", text, re.S)
    if not match:
        print(f"check_layering: {path}: no table between <!-- layers --> and <!-- /layers -->", file=sys.stderr)
        sys.exit(2)
    layers = {}
    for line in match.group(1).splitlines():
        row = ROW.match(line.strip())
        if not row:
            continue
        uses = [u.strip().strip("`").rstrip("/") for u in row.group(2).split(",") if u.strip() not in ("", "-", "nothing")]
        layers[row.group(1)] = uses
    if not layers:
        print(f"check_layering: {path}: the layer table has no rows", file=sys.stderr)
        sys.exit(2)
    for layer, uses in layers.items():
        for used in uses:
            if used not in layers:
                print(f"check_layering: {path}: layer {layer} uses {used}, which is not a layer", file=sys.stderr)
                sys.exit(2)
    return layers


def layer_of(relative_dir, layers):
    """The deepest layer folder that holds relative_dir (model/cuda -> model)."""
    parts = relative_dir.split("/")
    for n in range(len(parts), 0, -1):
        candidate = "/".join(parts[:n])
        if candidate in layers:
            return candidate
    return None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
    layers = read_layers(root)
    files = {}    # relative path -> layer, for every source file in a layer
    headers = {}  # header base name -> set of layers that hold one of that name
    for layer in layers:
        for directory, subdirs, names in os.walk(os.path.join(root, layer)):
            relative_dir = os.path.relpath(directory, root)
            owner = layer_of(relative_dir, layers)
            if owner != layer:
                continue  # a sub-layer's own files are walked under it
            for name in names:
                if name.endswith(SOURCE_SUFFIXES):
                    files[os.path.join(relative_dir, name)] = layer
                    if name.endswith((".h", ".cuh")):
                        headers.setdefault(name, set()).add(layer)
    wrong = 0
    for path, layer in sorted(files.items()):
        allowed = set(layers[layer]) | {layer}
        with open(os.path.join(root, path), encoding="utf-8", errors="replace") as source:
            for number, line in enumerate(source, 1):
                match = INCLUDE.match(line)
                if not match:
                    continue
                name = os.path.basename(match.group(1))
                owners = headers.get(name)
                if not owners or owners & allowed:
                    continue
                wrong += 1
                uses = ", ".join(layers[layer]) or "nothing"
                print(f"{path}:{number}: includes {name} ({', '.join(sorted(owners))}): "
                      f"{layer} may use only {uses}")
    if wrong:
        print(f"check_layering: {wrong} include(s) run the wrong way (the arrows: docs/design.md)")
        return 1
    print(f"check_layering: {len(files)} files in {len(layers)} layers, every include runs the right way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
