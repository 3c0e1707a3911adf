#!/usr/bin/env bash
# README "Why bf16-pure learns slowly", step 3: resume copies of the 40,000-step
# headline checkpoints on the CPU for N steps, one checkpoint per step, and
# compare consecutive checkpoints with hax-pdiff. Run from the checkout.
# Usage: resume.sh ARCH PRECISION LR N
set -eu
a=$1 p=$2 lr=$3 n=$4
R=${WORK:-/tmp/frozen/R3} O=${OUT:-/tmp/frozen/out3} DATA=${DATA:-/tmp/frozen/data/joint_recall}
label=$a; [ "$p" = bf16-pure ] && label=$a@bf16-pure
run=$R/$label/lr_$lr/seed_1
mkdir -p "$(dirname "$run")" "$O"
rm -rf "$run"
cp -r analysis/results/headline/runs/$label/lr_0.001/seed_1 "$run"
if [ "$lr" != 0.001 ]; then
    # the copy's stored config says lr 0.001: rewrite it (this copy only), else hax-train refuses to resume
    python3 - "$run/checkpoint.safetensors" "$lr" <<'PY'
import json, struct, sys
path, lr = sys.argv[1:]
b = open(path, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
c = h["__metadata__"]["config"]
assert "\n  lr: 0.001\n" in c
h["__metadata__"]["config"] = c.replace("\n  lr: 0.001\n", "\n  lr: %s\n" % lr)
hdr = json.dumps(h).encode()
hdr += b" " * (-len(hdr) % 8)
open(path, "wb").write(struct.pack("<Q", len(hdr)) + hdr + b[8 + n:])
PY
fi
tag=${label}_lr$lr
cp "$run/checkpoint.safetensors" "$O/${tag}_40000.st"
for k in $(seq 40001 $((40000 + n))); do
    rc=0
    bin/hax-train configs/$a.yaml train.precision=$p train.lr=$lr train.steps=400000 train.valid_every=1000 \
        data.path=$DATA train.device=cpu --results $R --stop-after-step $k >"$O/${tag}_$k.log" 2>&1 || rc=$?
    [ $rc -eq 3 ] || { echo "step $k: exit $rc"; tail -3 "$O/${tag}_$k.log"; exit 1; }
    grep -q "resuming .* at step $((k - 1))" "$O/${tag}_$k.log"
    cp "$run/checkpoint.safetensors" "$O/${tag}_$k.st"
    bin/hax-pdiff --families "$O/${tag}_$((k - 1)).st" "$O/${tag}_$k.st" >"$O/${tag}_step$k.txt"
done
bin/hax-pdiff --families "$O/${tag}_40000.st" "$O/${tag}_$((40000 + n)).st" >"$O/${tag}_steps40000-$((40000 + n)).txt"
