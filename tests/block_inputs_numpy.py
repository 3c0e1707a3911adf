"""block_inputs_numpy.py: checks, with numpy alone, what hax-check --emit wrote
as the block inputs of a case (tests/test_ref_bf16.sh): that
dbg.layers.0.hidden_in is the embedding rows of the inputs (padding rows
zero), that norm_f of dbg.norm_f.hidden_in is out.last_hidden_state (within
one bf16 ulp: float64 here, float32 in hax, each rounded to bf16 at the end),
and that every layer's input differs from the one before (the accessor reads
each layer's own buffer). Prints one line; exits 1 on a mismatch.

usage: python3 block_inputs_numpy.py CASE.safetensors [--ref]
--ref: a file of the reference (tests/ref/ref_golden_bf16.py), whose padding
positions hold the pad token's rows: those are not checked.
"""
import json
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def load(path):
    """The tensors, and the norms' epsilon from the config in the metadata."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    cfg = json.loads(head["__metadata__"]["hax_case"])["config"]
    eps = cfg.get("norm_eps", cfg.get("layer_norm_epsilon"))  # fla's Samba / Mamba names (case.c)
    if eps is None:
        sys.exit("%s: metadata hax_case: config: expected norm_eps or layer_norm_epsilon" % path)
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + s:8 + n + e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out, float(eps)


def ulps(a, b):
    """bf16 ulps between float32 arrays of bf16 values (monotone bit order)."""
    def ordered(x):
        i = x.astype(np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7fffffff), i)
    return np.abs(ordered(a) - ordered(b)) >> 16


def bf16(x):
    """Round-to-nearest-even float32 -> bf16 values, as float32."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000
    return u.astype(np.uint32).view(np.float32)


def main():
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--ref"]):
        sys.exit(__doc__.strip().splitlines()[-3])
    path, ref = sys.argv[1], sys.argv[2:] == ["--ref"]
    t, eps = load(path)
    ids = t["input_ids"][:, :-1]
    lens = [int(np.argmax(np.append(r, 3) == 3)) for r in ids]  # case.c: pads (3) only at the end
    names = sorted((k for k in t if k.startswith("dbg.layers.") and k.endswith(".hidden_in")),
                   key=lambda k: int(k.split(".")[2])) + ["dbg.norm_f.hidden_in"]
    if len(names) < 3 or names[0] != "dbg.layers.0.hidden_in" or names[-1] not in t:
        sys.exit("%s: expected dbg.layers.{0..}.hidden_in and dbg.norm_f.hidden_in, found %s" % (path, names))
    E = t["embeddings.weight"]
    h0 = t[names[0]]
    for b, n in enumerate(lens):
        if not np.array_equal(h0[b, :n], E[ids[b, :n]]):
            sys.exit("%s: dbg.layers.0.hidden_in row %d: not the embedding rows of its inputs" % (path, b))
        if not ref and np.any(h0[b, n:] != 0):
            sys.exit("%s: dbg.layers.0.hidden_in row %d: padding positions not zero" % (path, b))
    for prev, cur in zip(names, names[1:]):
        if np.array_equal(t[prev], t[cur]):
            sys.exit("%s: %s equals %s" % (path, cur, prev))
    x = t["dbg.norm_f.hidden_in"].astype(np.float64)
    y = bf16(x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * t["norm_f.weight"].astype(np.float64))
    h = t["out.last_hidden_state"]
    worst = max(int(ulps(y[b, :n], h[b, :n]).max()) for b, n in enumerate(lens))
    if worst > 1:
        sys.exit("%s: norm_f(dbg.norm_f.hidden_in) is %d bf16 ulps from out.last_hidden_state" % (path, worst))
    print("%s: %d block inputs: layer 0 = embeddings, norm_f(last) = out.last_hidden_state within %d ulp "
          "(eps %g), rows %s" % (path.split("/")[-1], len(names), worst, eps, lens))


if __name__ == "__main__":
    main()
