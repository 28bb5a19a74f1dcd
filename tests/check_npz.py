#!/usr/bin/env python3
"""Reads the archives of tests/test_npz_writer.c back with numpy and zipfile:
the arrays' dtypes, shapes and values; stored entries with matching CRCs in
the central directory and in each local header; zip64.npz with every size and
offset in zip64 fields and zip64 end records (what an archive past 4 GiB has).

usage: check_npz.py DIR
"""
import struct
import sys
import zipfile

import numpy as np


def check(path, all_zip64):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert names == ["arr_0.npy", "arr_1.npy", "empty.npy"], names
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist()), "compressed entries"
        assert z.testzip() is None, "a CRC does not match the data"
        infos = z.infolist()
    with open(path, "rb") as f:
        data = f.read()
    for i in infos:
        local = data[i.header_offset: i.header_offset + 30]
        assert local[:4] == b"PK\x03\x04", f"{i.filename}: no local header at {i.header_offset}"
        assert local[14:18] == struct.pack("<I", i.CRC), f"{i.filename}: local CRC differs from the central one"
    end = data.rindex(b"PK\x05\x06")
    directory_size, directory_offset = struct.unpack("<II", data[end + 12: end + 20])
    if all_zip64:
        assert (directory_size, directory_offset) == (0xFFFFFFFF, 0xFFFFFFFF), "no zip64 end record used"
        assert data[end - 20: end - 16] == b"PK\x06\x07", "no zip64 end locator"
        central = data.index(b"PK\x01\x02")
        assert data[central + 20: central + 28] == b"\xff" * 8, "central sizes not in zip64 fields"
    else:
        assert data[end - 20: end - 16] != b"PK\x06\x07", "a zip64 end record in a small archive"
    # As the ADM evaluation suite streams arr_0: the entry's .npy v1.0 header read in place.
    with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as entry:
        assert np.lib.format.read_magic(entry) == (1, 0), "not a .npy v1.0 header"
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(entry)
        assert (shape, fortran_order, dtype) == ((3, 4, 5, 3), False, np.uint8), (shape, fortran_order, dtype)
        assert (entry.tell() if entry.seekable() else 64) % 64 == 0, "the data does not start at a multiple of 64"
    npz = np.load(path)
    want = ((7 * np.arange(3 * 4 * 5 * 3) + 1) % 256).astype(np.uint8).reshape(3, 4, 5, 3)
    assert npz["arr_0"].dtype == np.uint8 and np.array_equal(npz["arr_0"], want), npz["arr_0"]
    assert npz["arr_1"].dtype == np.int64 and list(npz["arr_1"]) == [5, -2, 1 << 40], npz["arr_1"]
    assert npz["empty"].dtype == np.float32 and npz["empty"].shape == (0,), npz["empty"]
    print(f"{path}: arrays, CRCs and {'zip64 ' if all_zip64 else ''}layout as numpy reads them")


def main():
    top = sys.argv[1]
    check(f"{top}/plain.npz", False)
    check(f"{top}/zip64.npz", True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
