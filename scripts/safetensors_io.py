"""The safetensors reading and atomic writing shared by the weight scripts
(average_weights.py, add_fourier.py): F32 tensors only, as nesf writes them."""
import json
import os
import struct
import sys
import tempfile

import numpy as np


def read(path):
    """Returns (header dict, raw data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        return header, f.read()


def tensors(header, data, who):
    """Yields (name, float32 array) of every tensor, in file order; exits
    with a message naming `who` on another dtype."""
    for name, t in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                          key=lambda kv: kv[1]["data_offsets"][0]):
        if t["dtype"] != "F32":
            sys.exit(f"{who}: {name}: dtype {t['dtype']} (only F32)")
        lo, hi = t["data_offsets"]
        yield name, np.frombuffer(data[lo:hi], dtype="<f4").reshape(t["shape"])


def write(path, meta, arrays):
    """Writes {name: array} (in that order, as float32) with metadata meta
    to a temp file beside path, then renames it over path."""
    out_header, blobs, off = {"__metadata__": meta}, [], 0
    for k, v in arrays.items():
        b = np.ascontiguousarray(v, dtype="<f4").tobytes()
        out_header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(out_header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".st-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hj)) + hj)
            for b in blobs:
                f.write(b)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
