#!/usr/bin/env bash
# The measurements of README "Why bf16-pure learns slowly" (run from the checkout).
set -eu
O=${OUT:-/tmp/frozen/out}
H=analysis/results/headline/runs
for a in mamba2 mamba2_hax; do
  for p in fp32 bf16-pure; do
    bin/hax-train configs/$a.yaml train.precision=$p train.seed=1 --save-init $O/init_${a}_$p.st >/dev/null
    d=$H/$a; [ $p = bf16-pure ] && d=$H/$a@bf16-pure
    bin/hax-pdiff $O/init_${a}_$p.st $d/lr_0.001/seed_1/checkpoint.safetensors >$O/headline_${a}_${p}_ckpt.txt
    bin/hax-pdiff $O/init_${a}_$p.st $d/lr_0.001/seed_1/best.safetensors >$O/headline_${a}_${p}_best.txt
  done
  # control: another seed's init against the seed-1 run (chance-level identity of random tensors)
  bin/hax-train configs/$a.yaml train.precision=bf16-pure train.seed=2 --save-init $O/init_${a}_bf16-pure_seed2.st >/dev/null
  bin/hax-pdiff --families $O/init_${a}_bf16-pure_seed2.st $H/$a@bf16-pure/lr_0.001/seed_1/checkpoint.safetensors >$O/control_${a}_seed2.txt
done
R=analysis/results/table1/resume
for a in mamba2_d mamba2_swd mamba2_a mamba2_lsh; do
  bin/hax-train configs/$a.yaml train.precision=bf16-pure train.seed=1 --save-init $O/init_${a}_bf16-pure.st >/dev/null
  bin/hax-pdiff $O/init_${a}_bf16-pure.st $R/$a@bf16-pure/lr_0.001/seed_1/checkpoint.safetensors >$O/resume_${a}.txt
done
