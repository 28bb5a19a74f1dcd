"""Bad --init files for tests/init_scenarios.sh, made from a good one (an ldm
run's model.safetensors, F32) with the standard library alone:

  missing.safetensors     without blocks.1.mlp.fc2.bias
  misshapen.safetensors   y_embedder.embedding_table.weight with one row fewer
  pos-embed.safetensors   pos_embed of another embedding (its sin and cos halves swapped)
  unknown.safetensors     one tensor more, extra.weight
  bf16.safetensors        every tensor rounded to bf16 (accepted: pos_embed within bf16 rounding)

usage: make_bad_init_weights.py GOOD.safetensors OUT_DIR
"""
import json
import os
import struct
import sys


def read(path):
    data = open(path, "rb").read()
    n, = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n:]
    return {name: (entry["dtype"], entry["shape"], body[entry["data_offsets"][0]:entry["data_offsets"][1]])
            for name, entry in header.items()}


def write(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, blob) in sorted(tensors.items()):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    good, out = sys.argv[1:3]
    tensors = read(good)
    os.makedirs(out, exist_ok=True)

    missing = dict(tensors)
    del missing["blocks.1.mlp.fc2.bias"]
    write(os.path.join(out, "missing.safetensors"), missing)

    misshapen = dict(tensors)
    dtype, shape, blob = tensors["y_embedder.embedding_table.weight"]
    row = 4 * shape[1]
    misshapen["y_embedder.embedding_table.weight"] = (dtype, [shape[0] - 1, shape[1]], blob[:len(blob) - row])
    write(os.path.join(out, "misshapen.safetensors"), misshapen)

    swapped = dict(tensors)
    dtype, shape, blob = tensors["pos_embed"]
    width = shape[2]  # (1, T, D): each token's [sin | cos] halves of its two axes, swapped
    values = struct.unpack("<%df" % (len(blob) // 4), blob)
    rows = [values[i:i + width] for i in range(0, len(values), width)]
    half = width // 4
    rows = [r[half:2 * half] + r[:half] + r[3 * half:] + r[2 * half:3 * half] for r in rows]
    swapped["pos_embed"] = (dtype, shape, struct.pack("<%df" % len(values), *[v for r in rows for v in r]))
    write(os.path.join(out, "pos-embed.safetensors"), swapped)

    unknown = dict(tensors)
    unknown["extra.weight"] = ("F32", [2], struct.pack("<2f", 1.0, 2.0))
    write(os.path.join(out, "unknown.safetensors"), unknown)

    bf16 = {}
    for name, (dtype, shape, blob) in tensors.items():
        words = struct.unpack("<%dI" % (len(blob) // 4), blob)
        # round to nearest even on the upper 16 bits
        halves = [((w + 0x7FFF + ((w >> 16) & 1)) >> 16) & 0xFFFF for w in words]
        bf16[name] = ("BF16", shape, struct.pack("<%dH" % len(halves), *halves))
    write(os.path.join(out, "bf16.safetensors"), bf16)


if __name__ == "__main__":
    main()
