#!/usr/bin/env python3
"""Copies a golden outputs.safetensors keeping only what the CUDA golden test compares
(`latents` and, under Dummy Forcing, `assignment`) plus the metadata, so the golden cases fit a
device call's carry limit.

    python3 scripts/slim-golden.py SRC DST
"""
import json
import struct
import sys

src, dst = sys.argv[1], sys.argv[2]
b = open(src, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
out, data = {}, b""
for k in ("latents", "assignment"):
    if k in h:
        lo, hi = h[k]["data_offsets"]
        out[k] = dict(h[k], data_offsets=[len(data), len(data) + hi - lo])
        data += b[8 + n + lo:8 + n + hi]
if "__metadata__" in h:
    out["__metadata__"] = h["__metadata__"]
hj = json.dumps(out).encode()
hj += b" " * (-len(hj) % 8)  # the data starts 8-byte aligned
open(dst, "wb").write(struct.pack("<Q", len(hj)) + hj + data)
