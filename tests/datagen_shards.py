#!/usr/bin/env python3
"""datagen_shards.py: an independent reader of hax-datagen's shard format
(the README's byte-by-byte description, not the C code), for tests.

  datagen_shards.py check DIR       structure of every sample, counts per cell, uniqueness
  datagen_shards.py ids DIR        the token ids met at each level (after check's structure checks),
                                    one line per level: "level L: ids LO..HI", then "values: LO..HI"
  datagen_shards.py text DIR OUT    the reference's text files (padded ids / mask per split)
  datagen_shards.py damage DIR FILE KIND I [J]
                                    changes samples I, J (within shard FILE) and reseals the
                                    checksums, so that only --verify's deeper checks can notice:
                                    copy (J := I), swap (I <-> J), answer (I's last answer),
                                    cell (I's stored cell)

Only the standard library: the test runs wherever python3 is.
"""
import os
import re
import struct
import sys
from collections import Counter

HEADER = struct.Struct("<8sIIIIQIIIIQQ4Q4Q4IIII")  # 160 bytes: see the README
SPLITS = ("train", "valid", "test")
BOS, PAD, SEP, BIAS = 1, 3, 4, 10


def manifest(d):
    text = open(os.path.join(d, "manifest.yaml")).read()
    m = {}
    for key in ("levels", "n_value", "n_train_per_cell", "n_valid_per_cell", "n_test_per_cell", "seed",
                "pad_len", "token_bytes", "shard_size"):
        m[key] = int(re.search(r"^%s: (\d+)$" % key, text, re.M).group(1))
    for key in ("min_sizes", "max_sizes"):
        m[key] = [int(x) for x in re.search(r"^%s: \[(.*)\]$" % key, text, re.M).group(1).split(",")]
    # id_layout (optional): the level maxima the ids are laid out for; absent: max_sizes
    lay = re.search(r"^id_layout: \[(.*)\]$", text, re.M)
    m["id_layout"] = [int(x) for x in lay.group(1).split(",")] if lay else m["max_sizes"]
    m["shards"] = re.findall(r"\{file: ([a-z]+-\d+\.bin), first: (\d+), n_samples: (\d+)", text)
    return m


def read_shard(path, levels):
    data = open(path, "rb").read()
    h = HEADER.unpack_from(data, 0)
    magic, version, header_bytes, split, index, first, n, tb, lv, pad_len, n_tok, seed = h[:12]
    off, size = h[12:16], h[16:20]
    meta_stride = h[24]
    assert magic == b"HAXSHARD" and version == 1 and header_bytes == 160 and lv == levels, path
    offsets = struct.unpack_from("<%dQ" % (n + 1), data, off[0])
    toks = struct.unpack_from("<%d%s" % (n_tok, "B" if tb == 1 else "H"), data, off[1])
    maskbytes = data[off[2]:off[2] + size[2]]
    samples = []
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        t = list(toks[a:b])
        mk = [(maskbytes[p >> 3] >> (p & 7)) & 1 for p in range(a, b)]
        meta = struct.unpack_from("<%dH" % (levels + 1), data, off[3] + i * meta_stride)
        samples.append((t, mk, list(meta[:levels]), meta[levels]))
    return SPLITS[split], first, samples


def crc32c(data):
    """CRC-32C (Castagnoli, reflected, as src/core/checksum.h)."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def damage(d, name, kind, i, j=None):
    """Changes sample i (and j) of one shard, then recomputes the section and
    header checksums and the manifest's, so the files look intact."""
    path = os.path.join(d, name)
    data = bytearray(open(path, "rb").read())
    h = HEADER.unpack_from(data, 0)
    n, tb, levels = h[6], h[7], h[8]
    off, size, meta_stride = h[12:16], h[16:20], h[24]
    offsets = struct.unpack_from("<%dQ" % (n + 1), data, off[0])

    def span(k):  # byte range of sample k's tokens
        return off[1] + offsets[k] * tb, off[1] + offsets[k + 1] * tb

    a, b = span(i)
    if kind in ("copy", "swap"):
        c, e = span(j)
        assert e - c == b - a, "samples %d and %d differ in length" % (i, j)
        si, sj = bytes(data[a:b]), bytes(data[c:e])
        data[c:e] = si
        if kind == "swap":
            data[a:b] = sj
    elif kind == "answer":
        nv = int(re.search(r"^n_value: (\d+)$", open(os.path.join(d, "manifest.yaml")).read(), re.M).group(1))
        last = b - tb
        v = int.from_bytes(data[last:b], "little") - BIAS
        data[last:b] = (BIAS + (v + 1) % nv).to_bytes(tb, "little")
    elif kind == "reserved":  # a header byte that must be zero
        data[150] = 1
    elif kind == "token":  # an id far above the dataset's largest (last token of sample i)
        data[b - tb:b] = (250 if tb == 1 else 65000).to_bytes(tb, "little")
    elif kind == "cell":
        m0 = off[3] + i * meta_stride
        data[m0:m0 + 2] = (struct.unpack_from("<H", data, m0)[0] + 1).to_bytes(2, "little")
    else:
        raise SystemExit("damage: unknown kind %s" % kind)
    for k in range(4):
        struct.pack_into("<I", data, 128 + 4 * k, crc32c(data[off[k]:off[k] + size[k]]))
    hcrc = crc32c(data[:156])
    struct.pack_into("<I", data, 156, hcrc)
    open(path, "wb").write(data)
    mpath = os.path.join(d, "manifest.yaml")
    text = open(mpath).read()
    text, n_sub = re.subn(r"(\{file: %s,[^}]*crc32c: )0x[0-9a-f]+" % re.escape(name), r"\g<1>0x%08x" % hcrc, text)
    assert n_sub == 1, "manifest entry of %s" % name
    open(mpath, "w").write(text)


def cell_of(m, idx):
    ranges = [hi - lo + 1 for lo, hi in zip(m["min_sizes"], m["max_sizes"])]
    n_cells = 1
    for r in ranges:
        n_cells *= r
    c = idx % n_cells
    sizes = [0] * m["levels"]
    for l in reversed(range(m["levels"])):
        sizes[l] = m["min_sizes"][l] + c % ranges[l]
        c //= ranges[l]
    return sizes, n_cells


def check_sample(m, t, mk, sizes, met=None):
    """The multi-level layout: BOS, blocks, SEP, blocks again in fresh orders.
    met (optional): a dict level -> set of ids met; "v" -> values."""
    w, nv = m["levels"], m["n_value"]
    base = [0] * w
    b = BIAS + nv
    for l in reversed(range(w)):
        base[l] = b
        b += m["id_layout"][l]
    pos = [0]
    table = {}

    def part(level, prefix, inquiry):
        seen = set()
        for _ in range(sizes[level]):
            i = t[pos[0]] - base[level]
            assert 0 <= i < sizes[level] and i not in seen, "level %d id at %d" % (level, pos[0])
            seen.add(i)
            if met is not None:
                met.setdefault(level, set()).add(t[pos[0]])
            last = level == w - 1
            assert mk[pos[0]] == (1 if last and inquiry else 0), "mask at %d" % pos[0]
            pos[0] += 1
            key = prefix + (i,)
            if last:
                v = t[pos[0]] - BIAS
                assert 0 <= v < nv and mk[pos[0]] == 0, "value at %d" % pos[0]
                if met is not None:
                    met.setdefault("v", set()).add(t[pos[0]])
                if inquiry:
                    assert table[key] == v, "answer at %d" % pos[0]
                else:
                    table[key] = v
                pos[0] += 1
            else:
                part(level + 1, key, inquiry)

    assert t[0] == BOS and mk[0] == 0
    pos[0] = 1
    part(0, (), 0)
    assert t[pos[0]] == SEP
    pos[0] += 1
    part(0, (), 1)
    assert pos[0] == len(t), "length"


def load(d):
    m = manifest(d)
    out = {s: [] for s in SPLITS}
    for f, first, n in m["shards"]:
        split, hfirst, samples = read_shard(os.path.join(d, f), m["levels"])
        assert hfirst == int(first) and len(samples) == int(n), f
        out[split] += samples
    return m, out


def check(d, met=None):
    m, data = load(d)
    seen = set()
    for split in SPLITS:
        per_cell = m["n_%s_per_cell" % split]
        counts = Counter()
        for idx, (t, mk, sizes, attempt) in enumerate(data[split]):
            want, n_cells = cell_of(m, idx)
            assert sizes == want, "%s %d: cell %s, expected %s" % (split, idx, sizes, want)
            check_sample(m, t, mk, sizes, met)
            key = bytes(struct.pack("<%dH" % len(t), *t))
            assert key not in seen, "%s %d: repeated sample" % (split, idx)
            seen.add(key)
            counts[tuple(sizes)] += 1
        n_cells = cell_of(m, 0)[1]
        assert len(data[split]) == n_cells * per_cell, split
        assert len(counts) == (n_cells if per_cell else 0) and all(c == per_cell for c in counts.values()), split
    print("ok: %d samples, %d levels" % (sum(len(v) for v in data.values()), m["levels"]))


def ids(d):
    met = {}
    check(d, met)
    for level in sorted(k for k in met if k != "v"):
        print("level %d: ids %d..%d" % (level, min(met[level]), max(met[level])))
    print("values: %d..%d" % (min(met["v"]), max(met["v"])))


def text(d, out):
    m, data = load(d)
    c, k = m["max_sizes"][0], m["max_sizes"][-1]
    for split in SPLITS:
        name = "max_n_context_%d_max_n_key_%d_seed_%d_%s_" % (c, k, m["seed"], split)
        with open(os.path.join(out, name + "inputs.txt"), "w") as fi, open(os.path.join(out, name + "mask.txt"), "w") as fm:
            for t, mk, _, _ in data[split]:
                pad = m["pad_len"] - len(t)
                fi.write(" ".join(map(str, t + [PAD] * pad)) + "\n")
                fm.write(" ".join(map(str, mk + [0] * pad)) + "\n")


if __name__ == "__main__":
    try:
        if sys.argv[1] == "check":
            check(sys.argv[2])
        elif sys.argv[1] == "ids":
            ids(sys.argv[2])
        elif sys.argv[1] == "text":
            text(sys.argv[2], sys.argv[3])
        elif sys.argv[1] == "damage":
            damage(sys.argv[2], sys.argv[3], sys.argv[4], *map(int, sys.argv[5:7]))
        else:
            raise SystemExit("usage: datagen_shards.py check DIR | text DIR OUT | damage DIR FILE KIND I [J]")
    except AssertionError as e:
        print("FAIL: %s" % e)
        sys.exit(1)
