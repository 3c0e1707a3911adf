#!/usr/bin/env python3
"""test_train_safetensors.py FILE: checks, with the standard library only and
independently of hax's own reader, that FILE obeys the rules the safetensors
package (safetensors.torch.load_file) enforces before PyTorch gets a tensor:
an 8-byte little-endian header length, a JSON object header, string-to-string
__metadata__, known dtypes, byte ranges that match dtype x shape and tile the
data buffer exactly (in order, no gap, no overlap), and finite F32 values.
Prints one line per problem and exits 1, or prints a summary and exits 0."""
import json
import math
import struct
import sys

SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
         "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


def check(path):
    data = open(path, "rb").read()
    if len(data) < 8:
        return [f"{path}: expected at least 8 bytes, found {len(data)}"]
    n = struct.unpack("<Q", data[:8])[0]
    if 8 + n > len(data):
        return [f"{path}: header length {n} runs past the end of the file ({len(data)} bytes)"]
    raw = data[8:8 + n]
    if not raw.startswith(b"{"):
        return [f"{path}: expected the header to start with '{{', found {raw[:1]!r}"]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return [f"{path}: expected a UTF-8 JSON header, found: {e}"]
    problems = []
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        problems.append(f"{path}: __metadata__: expected a map of strings to strings")
    buf = data[8 + n:]
    spans = []
    for name, t in header.items():
        dtype, shape, off = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if dtype not in SIZES:
            problems.append(f"{path}: {name}: expected a safetensors dtype, found {dtype!r}")
            continue
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            problems.append(f"{path}: {name}: expected a shape of non-negative integers, found {shape!r}")
            continue
        if not (isinstance(off, list) and len(off) == 2 and all(isinstance(o, int) for o in off) and off[0] <= off[1]):
            problems.append(f"{path}: {name}: expected data_offsets [begin, end], found {off!r}")
            continue
        want = math.prod(shape) * SIZES[dtype]
        if off[1] - off[0] != want:
            problems.append(f"{path}: {name}: expected {want} bytes ({dtype} {shape}), found {off[1] - off[0]}")
        spans.append((off[0], off[1], name))
        if dtype == "F32" and off[1] <= len(buf):
            vals = struct.unpack(f"<{math.prod(shape)}f", buf[off[0]:off[1]])
            if not all(math.isfinite(v) for v in vals):
                problems.append(f"{path}: {name}: expected finite values, found a NaN or infinity")
    end = 0
    for b, e, name in sorted(spans):
        if b != end:
            problems.append(f"{path}: {name}: expected its data at byte {end} (no gap or overlap), found {b}")
        end = e
    if end != len(buf):
        problems.append(f"{path}: expected the tensors to cover the {len(buf)}-byte data buffer, found {end} bytes")
    if not problems:
        print(f"{path}: {len(spans)} tensors, {len(meta)} metadata entries, {len(buf)} data bytes")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: test_train_safetensors.py FILE.safetensors")
    errs = check(sys.argv[1])
    for line in errs:
        print(line)
    sys.exit(1 if errs else 0)
