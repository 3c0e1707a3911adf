#!/usr/bin/env python3
"""fuzz_mutate.py SEED N SRC OUTDIR [EXT]: writes N seeded mutations of SRC
into OUTDIR/000000.EXT ... Each applies 1-4 of: flip bytes, insert random or
structural bytes, delete or duplicate a range, truncate, replace a number by
an object, nest deeply. Same seed, same files."""
import os, random, sys

seed, n, src, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ext = sys.argv[5] if len(sys.argv) > 5 else "bin"
data = open(src, "rb").read()
rng = random.Random(seed)
TOKENS = [b"{", b"}", b"[", b"]", b":", b",", b"\"", b"\n", b"  ", b"-", b"null", b"{}", b"[]", b"1e999", b"-1",
          b"nan", b"0x", b"&a", b"*a", b"!!str", b"\x00", b"\xff", b"18446744073709551616", b"%", b"\t"]


def mutate(d):
    d = bytearray(d)
    for _ in range(rng.randint(1, 4)):
        k = rng.randrange(9)
        p = rng.randrange(len(d) + 1) if d else 0
        if k == 0 and d:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                d[rng.randrange(len(d))] = rng.randrange(256)
        elif k == 1:  # structural token
            d[p:p] = rng.choice(TOKENS)
        elif k == 2:  # random bytes
            d[p:p] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif k == 3 and d:  # delete a range
            d[p:p + rng.randint(1, 64)] = b""
        elif k == 4 and d:  # duplicate a range
            q = rng.randrange(len(d))
            d[p:p] = d[q:q + rng.randint(1, 256)]
        elif k == 5 and d:  # truncate
            del d[rng.randrange(len(d)):]
        elif k == 6:  # a digit run replaced by an object
            digits = [i for i in range(min(len(d), 1 << 16)) if 48 <= d[i] <= 57]
            if digits:
                i = rng.choice(digits)
                j = i
                while j < len(d) and 48 <= d[j] <= 57:
                    j += 1
                d[i:j] = rng.choice([b"{}", b"[]", b"\"x\"", b"null", b"-0", b"99999999999999999999"])
        elif k == 7:  # deep nesting
            depth = rng.choice([100, 1000, 100000])
            d[p:p] = rng.choice([b"[", b"{a: "]) * depth
        else:  # a byte of the header (safetensors length, shard magic)
            if len(d) > 8:
                d[rng.randrange(8)] = rng.randrange(256)
    return bytes(d)


os.makedirs(out, exist_ok=True)
for i in range(n):
    open(os.path.join(out, "%06d.%s" % (i, ext)), "wb").write(mutate(data))
