#!/usr/bin/env python3
"""compat_numpy.py: the reference's joint-recall text files, drawn with numpy.

Test-side oracle for `hax-datagen --compat reference`: draws the samples of
DeepGraphLearning/HAX scripts/create_dataset.py with numpy's legacy global
RandomState (np.random.seed, np.random.randint, np.random.permutation, in the
order that script calls them) and writes its six text files. Independent of
the C code; used by tests/test_compat.sh with small parameters.

--min_n_context/--min_n_key (5 in the reference) allow tiny cells, where
equal samples are frequent, to exercise the redraw path.
"""
import argparse
import os
import sys

import numpy as np

BOS, PAD, SEP, BIAS = 1, 3, 4, 10


def one_sample(n_c, n_k, a):
    """Tokens and mask of one joint-recall sample with n_c contexts of n_k keys."""
    values = np.random.randint(0, a.n_value, (n_c, n_k))
    key_id = lambda j: BIAS + a.n_value + j
    ctx_id = lambda i: BIAS + a.n_value + a.max_n_key + i
    toks, mask = [BOS], [0]
    for inquiry in (0, 1):
        if inquiry:
            toks.append(SEP)
            mask.append(0)
        for i in np.random.permutation(n_c):
            toks.append(ctx_id(i))
            mask.append(0)
            for j in np.random.permutation(n_k):
                toks += [key_id(j), BIAS + values[i][j]]
                mask += [inquiry, 0]
    return toks, mask


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--max_n_context", type=int, default=16)
    ap.add_argument("--max_n_key", type=int, default=16)
    ap.add_argument("--n_value", type=int, default=16)
    ap.add_argument("--n_train", type=int, default=10000)
    ap.add_argument("--n_test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min_n_context", type=int, default=5)
    ap.add_argument("--min_n_key", type=int, default=5)
    a = ap.parse_args()

    pad_len = 2 * a.max_n_context * (2 * a.max_n_key + 1) + 2
    np.random.seed(a.seed)
    seen = set()
    redraws = 0
    stem = f"max_n_context_{a.max_n_context}_max_n_key_{a.max_n_key}_seed_{a.seed}"
    for split, count in (("train", a.n_train), ("valid", a.n_test), ("test", a.n_test)):
        lines_in, lines_mask = [], []
        for _ in range(count):
            for n_c in range(a.min_n_context, a.max_n_context + 1):
                for n_k in range(a.min_n_key, a.max_n_key + 1):
                    while True:
                        toks, mask = one_sample(n_c, n_k, a)
                        assert len(toks) <= pad_len
                        pad = pad_len - len(toks)
                        line = " ".join(str(t) for t in toks + [PAD] * pad)
                        if line not in seen:
                            break
                        redraws += 1
                    seen.add(line)
                    lines_in.append(line)
                    lines_mask.append(" ".join(str(m) for m in mask + [0] * pad))
        for kind, lines in (("inputs", lines_in), ("mask", lines_mask)):
            with open(os.path.join(a.out, f"{stem}_{split}_{kind}.txt"), "w") as f:
                for line in lines:
                    print(line, file=f)
    print(f"redraws {redraws}")


if __name__ == "__main__":
    sys.exit(main())
