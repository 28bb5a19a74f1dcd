"""Checks a run's TensorBoard events (RUN/tb/events.out.tfevents.*) against its
metrics.jsonl: every line's step is there once, with a scalar for each of its
numbers (NAME; a boolean as 0/1; an array's numbers as NAME/i; null and strings
left out) equal to the number rounded to float32, and nothing else; each
picture RUN/samples/step-N.png of a logged step is the image "samples" at step
N with the file's bytes, width and height. The files are read two ways:

  --reader own          this script's own TFRecord and protobuf reader (the
                        standard library only): every record's length and
                        masked CRC32C checked, no bytes after the last record
  --reader tensorboard  PyPI tensorboard's reader (its record reader checks the
                        CRCs) and its EventAccumulator's view of the scalars

Usage: check_tensorboard.py --reader own|tensorboard RUN
Exit status 0 when everything matches, 1 with the first difference named.
"""

import argparse
import glob
import json
import math
import os
import re
import struct
import sys


def fail(message):
    print("check_tensorboard: FAIL: " + message, file=sys.stderr)
    sys.exit(1)


# ---- the own reader -------------------------------------------------------------

def crc32c(data):
    crc = 0xFFFFFFFF
    table = crc32c.table
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


crc32c.table = _table()


def masked_crc(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    data = open(path, "rb").read()
    at = 0
    while at < len(data):
        if len(data) - at < 12:
            fail("%s: %d bytes after the last record" % (path, len(data) - at))
        length, = struct.unpack_from("<Q", data, at)
        length_crc, = struct.unpack_from("<I", data, at + 8)
        if length_crc != masked_crc(data[at:at + 8]):
            fail("%s: record at byte %d: the length's CRC is wrong" % (path, at))
        if at + 12 + length + 4 > len(data):
            fail("%s: record at byte %d: cut short" % (path, at))
        body = data[at + 12:at + 12 + length]
        body_crc, = struct.unpack_from("<I", data, at + 12 + length)
        if body_crc != masked_crc(body):
            fail("%s: record at byte %d: the data's CRC is wrong" % (path, at))
        yield body
        at += 12 + length + 4


def varint(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields(data):
    """(field number, wire type, value) of a message: ints, bytes, or raw 4/8 bytes."""
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(data, at)
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        elif wire == 2:
            length, at = varint(data, at)
            value, at = data[at:at + length], at + length
        else:
            fail("wire type %d in a message" % wire)
        yield number, wire, value


def parse_event(body):
    """{'wall_time', 'step', 'file_version', 'values': [(tag, float or None, image dict or None)]}"""
    event = {"step": 0, "file_version": None, "values": [], "wall_time": None}
    for number, wire, value in fields(body):
        if number == 1 and wire == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2 and wire == 0:
            event["step"] = value
        elif number == 3 and wire == 2:
            event["file_version"] = value.decode()
        elif number == 5 and wire == 2:
            for n, w, v in fields(value):
                if n != 1 or w != 2:
                    fail("a Summary field other than value: %d" % n)
                tag, simple, image = None, None, None
                for n2, w2, v2 in fields(v):
                    if n2 == 1:
                        tag = v2.decode()
                    elif n2 == 2 and w2 == 5:
                        simple = struct.unpack("<f", v2)[0]
                    elif n2 == 4 and w2 == 2:
                        image = {}
                        for n3, _, v3 in fields(v2):
                            image[{1: "height", 2: "width", 3: "colorspace", 4: "encoded"}[n3]] = v3
                event["values"].append((tag, simple, image))
        else:
            fail("an Event field %d (wire type %d) this writer does not write" % (number, wire))
    return event


def read_own(path):
    return [parse_event(body) for body in records(path)]


# ---- PyPI tensorboard's reader ------------------------------------------------------------

def read_tensorboard(path):
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    events = []
    for raw in RawEventFileLoader(path).Load():
        e = event_pb2.Event.FromString(raw)
        values = []
        for v in e.summary.value:
            kind = v.WhichOneof("value")
            image = None
            if kind == "image":
                image = {"height": v.image.height, "width": v.image.width, "colorspace": v.image.colorspace,
                         "encoded": v.image.encoded_image_string}
            elif kind != "simple_value":
                fail("%s: step %d: value %s holds %s" % (path, e.step, v.tag, kind))
            values.append((v.tag, v.simple_value if kind == "simple_value" else None, image))
        events.append({"step": e.step, "file_version": e.file_version or None, "values": values,
                       "wall_time": e.wall_time})
    return events


# ---- the comparison ----------------------------------------------------------------------

def float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected_scalars(record):
    out = {}
    for name, value in record.items():
        if name == "step":
            continue
        items = [(name, value)] if not isinstance(value, list) else [("%s/%d" % (name, i), v) for i, v in enumerate(value)]
        for tag, v in items:
            if isinstance(v, bool):
                out[tag] = 1.0 if v else 0.0
            elif isinstance(v, (int, float)):
                out[tag] = float32(float(v))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reader", choices=["own", "tensorboard"], required=True)
    parser.add_argument("run")
    args = parser.parse_args()
    read = read_own if args.reader == "own" else read_tensorboard

    lines = [json.loads(line) for line in open(os.path.join(args.run, "metrics.jsonl"))]
    if not lines:
        fail("metrics.jsonl is empty")
    files = sorted(glob.glob(os.path.join(args.run, "tb", "events.out.tfevents.*")))
    if not files:
        fail("no events file in %s/tb" % args.run)
    scalars, images = {}, {}  # step -> {tag: value}; step -> image
    for path in files:
        events = read(path)
        if not events or events[0]["file_version"] != "brain.Event:2":
            fail("%s: the first record is not file_version brain.Event:2" % path)
        for e in events[1:]:
            if e["file_version"] is not None or e["wall_time"] is None:
                fail("%s: step %d: an event without a wall time, or a second file_version" % (path, e["step"]))
            for tag, simple, image in e["values"]:
                if image is not None:
                    if tag != "samples" or e["step"] in images:
                        fail("%s: step %d: image %s twice or under another tag" % (path, e["step"], tag))
                    images[e["step"]] = image
                    continue
                step_scalars = scalars.setdefault(e["step"], {})
                if tag in step_scalars:
                    fail("%s: step %d: scalar %s written twice (a step repeated after a resume?)" % (path, e["step"], tag))
                step_scalars[tag] = simple

    steps = [record["step"] for record in lines]
    if sorted(scalars) != steps:
        fail("steps in the events %s, in metrics.jsonl %s" % (sorted(scalars), steps))
    count = 0
    for record in lines:
        want, got = expected_scalars(record), scalars[record["step"]]
        if sorted(want) != sorted(got):
            fail("step %d: tags %s, metrics.jsonl gives %s" % (record["step"], sorted(got), sorted(want)))
        for tag in want:
            if not (want[tag] == got[tag] or (math.isnan(want[tag]) and math.isnan(got[tag]))):
                fail("step %d: %s is %r, metrics.jsonl gives %r" % (record["step"], tag, got[tag], want[tag]))
            count += 1

    pictures = {}
    for path in glob.glob(os.path.join(args.run, "samples", "step-*.png")):
        step = int(re.search(r"step-(\d+)[.]png$", path).group(1))
        if step in scalars:
            pictures[step] = path
    if sorted(pictures) != sorted(images):
        fail("images at steps %s, pictures in samples/ at %s" % (sorted(images), sorted(pictures)))
    for step, path in pictures.items():
        png = open(path, "rb").read()
        width, height = struct.unpack(">II", png[16:24])
        image = images[step]
        if image["encoded"] != png or image["width"] != width or image["height"] != height:
            fail("step %d: the image is not %s (%dx%d)" % (step, path, width, height))
        if image["colorspace"] not in (1, 3):
            fail("step %d: colorspace %d" % (step, image["colorspace"]))

    if args.reader == "tensorboard":
        from tensorboard.backend.event_processing import event_accumulator
        accumulator = event_accumulator.EventAccumulator(
            os.path.join(args.run, "tb"), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
        accumulator.Reload()
        shown = [s.step for s in accumulator.Scalars("loss")]
        if shown != steps:
            fail("TensorBoard's EventAccumulator shows loss at steps %s, metrics.jsonl has %s" % (shown, steps))
        if images and [i.step for i in accumulator.Images("samples")] != sorted(images):
            fail("TensorBoard's EventAccumulator shows other image steps")

    print("check_tensorboard: %s reader: %d events file(s), %d steps, %d scalars and %d image(s) match metrics.jsonl"
          % (args.reader, len(files), len(steps), count, len(images)))


if __name__ == "__main__":
    main()
