#!/bin/sh
# Builds selective_scan_cuda (mamba_ssm v2.2.4, bf16/fp32 inputs, real weights)
# and causal_conv1d_cuda (causal-conv1d v1.5.0.post8, bf16/fp32) for sm_90, Python 3.12,
# torch 2.11.0+cu130, on a machine without GPU. See README.txt.
# Usage: build.sh WORKDIR OUTDIR   (PY: a python3.12 with torch 2.11.0 and ninja)
set -eu
W=$1; OUT=$(mkdir -p "$2" && cd "$2" && pwd); HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-python3}
MAMBA=${MAMBA:-/work/.mirror/state-spaces+mamba/repo}
CC1D=${CC1D:-/work/.mirror/Dao-AILab+causal-conv1d/repo}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2}
rm -rf "$W/ss" "$W/cc"; mkdir -p "$W/ss" "$W/cc" "$OUT"
git --git-dir="$MAMBA" archive v2.2.4 csrc/selective_scan | tar -x -C "$W/ss"
(cd "$W/ss" && mv csrc/selective_scan src && rmdir csrc && patch -p3 -d src < "$HERE/selective_scan_bf16_fp32.patch")
git --git-dir="$CC1D" archive v1.5.0.post8 csrc causal_conv1d | tar -x -C "$W/cc"
(cd "$W/cc" && patch -p1 < "$HERE/causal_conv1d_bf16_fp32.patch")
build() {  # $1 name, $2 work dir, $3 src dir, $4.. sources
    n=$1; d=$2; s=$3; shift 3
    (cd "$d" && EXT_NAME=$n EXT_SRC=$s EXT_SOURCES="$*" \
        /usr/bin/time -f "$n: %e s wall" "$PY" "$HERE/setup_ext.py" build_ext --build-lib "$OUT" > build_$n.log 2>&1) \
        || { tail -30 "$d/build_$n.log"; exit 1; }
    tail -1 "$d/build_$n.log"
}
build selective_scan_cuda "$W/ss" src selective_scan.cpp selective_scan_fwd_fp32.cu selective_scan_fwd_bf16.cu \
    selective_scan_bwd_fp32_real.cu selective_scan_bwd_bf16_real.cu
build causal_conv1d_cuda "$W/cc" csrc causal_conv1d.cpp causal_conv1d_fwd.cu causal_conv1d_bwd.cu causal_conv1d_update.cu
cp -r "$W/cc/causal_conv1d" "$OUT/"          # the package's Python interface (causal_conv1d_fn)
strip --strip-unneeded "$OUT"/*.so
ls -l "$OUT"/*.so
