#!/bin/sh
# get_tests.sh OUTDIR: the two projects' own kernel tests at the tags the
# extensions are built from (mamba v2.2.4 tests/ops/test_selective_scan.py,
# causal-conv1d v1.5.0.post8 tests/test_causal_conv1d.py), their dtype lists
# cut to what build.sh builds (kernel_tests.patch: fp16 and complex out, bf16
# added to the selective scan's input types), into OUTDIR/tests.
set -eu
OUT=$1; HERE=$(cd "$(dirname "$0")" && pwd)
MAMBA=${MAMBA:-/work/.mirror/state-spaces+mamba/repo}
CC1D=${CC1D:-/work/.mirror/Dao-AILab+causal-conv1d/repo}
mkdir -p "$OUT/tests"
git --git-dir="$MAMBA" show v2.2.4:tests/ops/test_selective_scan.py > "$OUT/tests/test_selective_scan.py"
git --git-dir="$CC1D" show v1.5.0.post8:tests/test_causal_conv1d.py > "$OUT/tests/test_causal_conv1d.py"
patch -p1 -d "$OUT" < "$HERE/kernel_tests.patch"
