# tests/device/stages.sh: a session's work on the lent GPU machine as stages (test-side tool,
# run by the device tool in the checkout's root: `BUDGET=SECONDS bash tests/device/stages.sh`,
# carry [".deps", "carry"]). A stage done on this (still warm) machine is skipped (marker
# results/stages/NAME); a stage starts only if its estimate fits the time left of the call
# (BUDGET, default 575 s); after each stage everything under $R/ is packed into $OUT/r.tgz, so a
# call cut by its limit still returns what finished (the tool returns at most ~8 files).
# Needs: .deps (libyaml, README "Build and test on a GPU machine"); for the reference goldens
# carry/{wheels,ext,hax,mamba} (tests/ref/README.md); for the fp32 bit check an older build's
# sources in carry/base (git archive REV minus tests/golden, tests/ref, analysis/examples).
# GRID_CONFIGS / GRID_REGIMES / GRID_LRS (default 1e-3) pick the Table 1 runs that fill the rest of the call (NOGRID=1: none);
# HEADLINE_STOP=N starts the headline runs (below; HEADLINE_CONFIGS, HEADLINE_REGIMES, HEADLINE_LRS pick them, default
# mamba2 and mamba2_hax, fp32,bf16-pure, 1e-3: the 2026-12-07 runs; bf16-pure at 3e-3 is the rate that trains, README Results); SKIP="a b" skips stages a and b; the curve stage trains from each carry/init/*.safetensors too.
# GRID_BG=1 starts the grid in the background right after the timing stages (bench_eval, scanfast, ssdtc,
# kvtile, ksv4, tcskip, convsub, windowtile, batch, profile: PROFILE_CONFIGS="config:regime ...", stalls: STALLS="name:config:regex[:VAR=V,VAR=V] ..."),
# so it trains while the other stages run (run_gpu, the training checks, memcheck, racecheck).
set -u
T0=$SECONDS; BUDGET=${BUDGET:-575}
# each starts its own MPS control daemon: one driver at a time on the GPU
[ -n "${GRID_BG:-}" ] && [ -n "${HEADLINE_STOP:-}" ] && { echo "stages.sh: GRID_BG and HEADLINE_STOP: expected one of them, found both"; exit 2; }
export NCCL_NVLS_ENABLE=0
# REV=<commit>: the tree's commit, for result.json's git_revision (this machine's .git is the
# session start's, so rev-parse here names an older commit; give REV=$(git rev-parse --short=12 HEAD)
# as the call's text, with -dirty for uncommitted changes)
[ -z "${REV:-}" ] || export HAX_GIT_REVISION=$REV
# R lives in an ignored folder: the device tool mirrors the checkout on every call and removes
# untracked paths that are not in it (an $R/ at the root was gone by the next call).
R=$PWD/results/R; rm -rf $R; mkdir -p $R results/stages
log() { echo "[$((SECONDS - T0)) s] $*" | tee -a $R/timeline.txt; }
left() { echo $((BUDGET - (SECONDS - T0))); }
want() { case " ${SKIP:-} " in *" $1 "*) return 1;; esac; [ ! -e results/stages/$1 ] && [ "$(left)" -gt "$2" ] && log "stage $1 (left $(left) s)"; }
# pack: the small files into $OUT/r.tgz (a file over the tool's size limit does not come back at
# all), the runs' weights and checkpoints apart into $OUT/w.tgz. The reference goldens (R/ref, tens
# of MB) stay on the machine: with them w.tgz was over the limit on 2026-12-07 and did not come
# back at all, checkpoints included; their comparisons come back in r.tgz.
# One pack at a time (flock, where the machine has it): with REF_BG the reference stage packs from
# its own process.
pack_now() {
  tar czf $OUT/r.tgz -C results --exclude='*.safetensors' R
  # only the folders that exist (a missing one made tar, and so the whole call, exit 2)
  local w=() d; for d in R/runs R/headline; do [ -d results/$d ] && w+=($d); done
  [ ${#w[@]} = 0 ] || tar czf $OUT/w.tgz -C results "${w[@]}"
}
pack() { if command -v flock > /dev/null; then (flock 9; pack_now) 9> results/.pack.lock; else pack_now; fi; }
done_() { touch results/stages/$1; log "stage $1 done"; pack; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $R/gpu.txt
# resume: a fresh machine continues the committed runs (analysis/results/*/README.md) when they
# come with their checkpoints (a call may leave them out of the working tree for the carry limit);
# a warm machine keeps its own folders
resume() {  # resume FROM TO: each run of FROM that TO lacks, if complete or with its checkpoint
  local f d n=0
  for f in "$1"/*/*/*/result.json; do
    [ -e "$f" ] || continue
    d=${f%/result.json}
    grep -q '^  "status": "complete",$' "$f" || [ -e "$d/checkpoint.safetensors" ] || continue
    d=${d#"$1"/}; [ -d "$2/$d" ] && continue
    mkdir -p "$2/$d" && cp -r "$1/$d"/. "$2/$d"/ && n=$((n + 1))
  done
  [ $n = 0 ] || log "from $1: $n runs into $2"
}
[ -z "${HEADLINE_STOP:-}" ] || resume analysis/results/headline/runs results/headline
[ -n "${NOGRID:-}" ] || { resume analysis/results/table1/runs results/table1; resume analysis/results/table1/resume results/table1; }
M="make -j12 CC=mpicc BLAS=none YAML_PREFIX=$PWD/.deps/usr"
# carry/base.tgz: carry/base packed (the carry limit)
[ -f carry/base.tgz ] && [ ! -d carry/base ] && mkdir -p carry/base && tar xzf carry/base.tgz -C carry/base
$M all > $R/make.log 2>&1 || { tail -30 $R/make.log; pack; exit 1; }
log built
if [ ! -e results/stages/datagen ]; then
  (bin/hax-datagen --out data/joint_recall > results/datagen.log 2>&1; bin/hax-datagen --out data/ref --compat reference >> results/datagen.log 2>&1; touch results/stages/datagen) &
fi
if [ -d carry/wheels ] && [ ! -e results/stages/pip ]; then
  # every wheel without dependency resolution: hf_xet (4 MB, which huggingface_hub asks for but
  # never imports here) and numpy (16 MB; the machines have numpy 2.5) can then stay behind
  (P="python3 -m pip install -q --no-index --target /tmp/site"
   $P --no-deps carry/wheels/*.whl && touch results/stages/pip) > results/pip.log 2>&1 &
fi
# the reference's bf16-pure goldens (issue 10) and hax-check against them; REF_BG=1 runs this stage
# beside the others (it needs about 300 s: the reference's Triton kernels compile)
ref_stage() {
  for i in $(seq 90); do [ -e results/stages/pip ] && break; sleep 2; done
  [ -e results/stages/pip ] || { log "ref: no pip"; return; }
  mkdir -p $R/ref; export PYTHONPATH=/tmp/site
  python3 tests/ref/cumsum_bf16.py > $R/cumsum_bf16.txt 2>&1  # hax's HAX_KS_CUMSUM_BF16_ACC default against the GPU's torch
  Rr="python3 tests/ref/ref_golden_bf16.py --out $R/ref"
  $Rr --path triton --ext carry/ext > $R/ref_triton.txt 2> $R/ref_triton.err; log "triton rc=$?"
  $Rr --path torch --against $R/ref > $R/ref_torch.txt 2> $R/ref_torch.err; log "torch rc=$?"
  # a third run of the reference: its torch path on the CPU (other GEMM kernels and sums in every
  # layer, where the two GPU paths may share a kernel and then differ nowhere)
  python3 tests/ref/ref_golden_bf16.py --out $R/refcpu --path torch --device cpu > $R/ref_cpu.txt 2> $R/ref_cpu.err; log "torch cpu rc=$?"
  grep "worst of" $R/ref_torch.txt | head -40 > $R/worst.txt
  # the goldens come back for study here (each tgz at most 16 MiB)
  for c in samba mamba_hax mamba2_base mamba2_hax; do tar czf $OUT/ref_$c.tgz -C $R ref/$c.torch.safetensors ref/$c.triton.safetensors refcpu/$c.torch.safetensors
    [ $(stat -c %s $OUT/ref_$c.tgz) -lt 16000000 ] || rm -f $OUT/ref_$c.tgz; done
  # refcheck FILE LABEL CASE BACKEND NOISE...: hax-check of CASE against its Triton golden, the bounds
  # from the NOISE files (other runs of the reference), into $R/FILE and a line of summary.txt
  refcheck() {
    local out=$1 label=$2 c=$3 be=$4 n nz=(); shift 4
    for n in "$@"; do nz+=(--noise "$n"); done
    bin/hax-check --precision bf16-pure --backend $be "${nz[@]}" $R/ref/$c.triton.safetensors > $R/$out 2>&1
    echo "$label rc=$? $(tail -n 1 $R/$out)" | tee -a $R/summary.txt
  }
  mkdir -p $R/emit
  for c in mamba2_base mamba2_hax mamba_hax samba; do for be in cpu cuda; do
    refcheck hax_${c}_$be.txt "$c $be" $c $be $R/ref/$c.torch.safetensors
    # the CUDA engine's own tensors (--emit, a run of its own: with it the LSH buckets are the
    # engine's, not the golden's flips), so that later rules can be applied without a GPU
    [ $be != cuda ] || bin/hax-check --precision bf16-pure --backend cuda --emit $R/emit/${c}_cuda.safetensors \
      $R/ref/$c.triton.safetensors > $R/emit/${c}_cuda.log 2>&1
    # the CPU run as a second noise only for the models without the branch: with it, the CPU run's
    # own key selections and the Enhanced Mamba layer put it 2-5x further from hax than the GPU
    # paths are from each other (tests/ref/README.md), which would loosen the HAX models' bounds
    case $c in mamba2_base|samba) ;; *) continue ;; esac
    refcheck hax2_${c}_$be.txt "$c $be, both noises:" $c $be $R/ref/$c.torch.safetensors $R/refcpu/$c.torch.safetensors
    # Samba: a third run of the reference whose GEMMs sum in another order (its torch path on an
    # AVX-512 BF16 CPU, made on the development machine: tests/ref/README.md, "Samba's forward gap
    # is one near-tie"), carried as carry/refnoise/samba.*.safetensors.gz
    n3=$(ls carry/refnoise/$c.*.safetensors.gz 2>/dev/null | head -n 1)
    [ -n "$n3" ] || continue
    mkdir -p $R/refnoise; [ -e $R/refnoise/$c.safetensors ] || gunzip -c $n3 > $R/refnoise/$c.safetensors
    refcheck hax3_${c}_$be.txt "$c $be, three noises:" $c $be $R/ref/$c.torch.safetensors $R/refcpu/$c.torch.safetensors \
      $R/refnoise/$c.safetensors; done; done
  tar czf $OUT/emit_cuda.tgz -C $R emit/mamba2_base_cuda.safetensors emit/mamba2_hax_cuda.safetensors \
    emit/mamba_hax_cuda.safetensors emit/samba_cuda.safetensors 2>/dev/null
  [ $(stat -c %s $OUT/emit_cuda.tgz) -lt 16000000 ] || rm -f $OUT/emit_cuda.tgz
  done_ ref
}
REF_PID=""
if [ -n "${REF_BG:-}" ] && want ref 300; then ref_stage & REF_PID=$!; fi
if want bench_eval 150; then
  build/gpu/gpu_sparse --lengths 256x1024,64x4096,16x16384,4x65536 > $R/lengths.txt 2>&1
  # hax-eval per length with the long-sequence kernels (BENCH_EVAL_LONG="old new": both, one after the other)
  for v in ${BENCH_EVAL_LONG:-new}; do HAX_SPARSE_LONG=$v tests/bench_eval_gpu.sh > $R/bench_eval_long_$v.txt 2>&1; done
  done_ bench_eval
fi
# the timing stages run before anything trains in the background
if want scanfast 200; then
  build/gpu/gpu_scans > $R/gpu_scans.txt 2>&1; log "gpu_scans: $(tail -n 1 $R/gpu_scans.txt)"
  build/gpu/gpu_sparse > $R/gpu_sparse.txt 2>&1; log "gpu_sparse: $(tail -n 1 $R/gpu_sparse.txt)"
  for v in old new; do HAX_SCAN_KERNELS=$v HAX_SPARSE_ATTN=$v build/gpu/bench_gpu --only mamba,mamba2,mamba_hax,mamba2_hax --precision fp32 --eval 0 --reps 30 > $R/bench_fast_$v.txt 2>&1; done
  done_ scanfast
fi
# aside NAME PATCH|- [MAKE ARGS...]: a copy of the tree in /tmp/NAME, PATCH applied (- none), then $M with the
# args there (make log in $R/NAME_make.log); false when the patch or the build fails. A stage that changes
# only compile flags names the files they reach with make's -W: make does not see a flag change.
aside() {
  local n=$1 p=$2; shift 2
  rm -rf /tmp/$n && cp -a . /tmp/$n && (cd /tmp/$n && { [ "$p" = - ] || git apply "$p"; } && $M "$@") > $R/${n}_make.log 2>&1
}
# the SSD's chunk products on tensor cores (HAX_SSD_MMA=tc, cuda/ops/ssd.h) against the FMA path: gpu_scans'
# checks of both against the CPU op and of tc against fma, TIME ssd fwd|bwd fma|tc lines at the paper size, then
# Mamba2's and Mamba2+HAX's whole steps with each, fp32 and bf16-pure, one after the other
if want ssdtc 150; then
  timeout $(( $(left) - 60 )) build/gpu/gpu_scans > $R/gpu_scans_ssdtc.txt 2>&1
  log "ssdtc: gpu_scans: $(tail -n 1 $R/gpu_scans_ssdtc.txt); $(awk '/^TIME ssd (fwd|bwd) (fma|tc) /{printf "%s %s %s ms; ", $3, $4, $(NF-1)}' $R/gpu_scans_ssdtc.txt)"
  for p in fp32 bf16-pure; do for v in fma tc; do HAX_SSD_MMA=$v timeout $(( $(left) - 60 )) build/gpu/bench_gpu --only mamba2,mamba2_hax \
    --precision $p --eval 0 --reps 30 > $R/bench_ssdtc_${v}_$p.txt 2>&1; done; done
  done_ ssdtc
fi
# the attention's gathers by tiles (HAX_SPARSE_TILES=kv|q|fwd|all, cuda/sparse/attn_gather.cu) against the lists:
# gpu_sparse's bit checks (dK/dV, dQ, forward and all tiles, each vs the lists, on every pattern) and its GATHERS
# tile line at the paper size, then the whole steps of the sparse rows: fp32 with none, kv, q, fwd and all,
# bf16-pure with none and all, one after the other
if want kvtile 150; then
  timeout $(( $(left) - 60 )) build/gpu/gpu_sparse > $R/gpu_sparse_kvtile.txt 2>&1
  log "kvtile: gpu_sparse: $(tail -n 1 $R/gpu_sparse_kvtile.txt); $(grep -c 'tiles vs lists' $R/gpu_sparse_kvtile.txt) tile checks"
  for pv in fp32:none fp32:kv fp32:q fp32:fwd fp32:all bf16-pure:none bf16-pure:all; do p=${pv%%:*}; v=${pv#*:}
    HAX_SPARSE_TILES=$v timeout $(( $(left) - 60 )) build/gpu/bench_gpu --only mamba2_hax,mamba_hax,mamba2_ks,mamba2_a,mamba2_swd \
      --precision $p --eval 0 --reps 30 > $R/bench_tiles_${v}_$p.txt 2>&1; done
  done_ kvtile
fi
# ksv4: key selection's targets, one warp per candidate, reading the query rows as float4
# (tests/device/patches/ks_targets_v4.patch, the same sums; not in main until measured), against main's warp
# kernel and its shared-memory tiles (HAX_KS_TARGETS=warp|tile, warp the default until measured): gpu_sparse_ks' checks and
# TIME lines (its "TIME ks targets+loss warp" is the patched kernel in the copy), then bench_gpu mamba2_hax and
# mamba_hax fp32: main tile, main warp, v4 warp
if want ksv4 120; then
  timeout 60 build/gpu/gpu_sparse_ks > $R/ksv4_ks_main.txt 2>&1
  for v in tile warp; do HAX_KS_TARGETS=$v timeout 30 build/gpu/bench_gpu --only mamba2_hax,mamba_hax --precision fp32 --eval 0 \
    --reps 30 > $R/ksv4_bench_main_$v.txt 2>&1; done
  if aside ksv4 tests/device/patches/ks_targets_v4.patch build/gpu/gpu_sparse_ks build/gpu/bench_gpu; then
    (cd /tmp/ksv4 && timeout 60 build/gpu/gpu_sparse_ks > $R/ksv4_ks_v4.txt 2>&1
     HAX_KS_TARGETS=warp timeout 30 build/gpu/bench_gpu --only mamba2_hax,mamba_hax --precision fp32 --eval 0 --reps 30 \
       > $R/ksv4_bench_v4_warp.txt 2>&1)
  else log "ksv4: build failed ($(tail -n 1 $R/ksv4_make.log))"; fi
  log "ksv4: gpu_sparse_ks main: $(tail -n 1 $R/ksv4_ks_main.txt), v4: $(tail -n 1 $R/ksv4_ks_v4.txt 2>/dev/null); main $(grep -h 'TIME ks targets' $R/ksv4_ks_main.txt | head -n 1); v4 $(grep -h 'TIME ks targets' $R/ksv4_ks_v4.txt 2>/dev/null | head -n 1)"
  done_ ksv4
fi
# A/B builds aside (issue 11), each in a copy of the tree under /tmp, timed against this tree's build:
# tcskip: the tc SSD skipping an mma whose operands' lo halves are all zero (warp vote; bf16-valued operands
# need one mma, not three), tests/device/patches/ssd_tc_skip.patch, not in main until measured: gpu_scans'
# checks and TIME lines, then bench_gpu mamba2,mamba2_hax with HAX_SSD_MMA=tc, fp32 and bf16-pure;
# convsub: the conv backward with CONV_SUB 8 threads per (chunk, channel), not 4: gpu_ops' conv TIME lines
if want tcskip 120; then
  if aside tcskip tests/device/patches/ssd_tc_skip.patch build/gpu/gpu_scans build/gpu/bench_gpu; then
    (cd /tmp/tcskip && timeout 60 build/gpu/gpu_scans > $R/tcskip_scans.txt 2>&1)
    for p in fp32 bf16-pure; do (cd /tmp/tcskip && HAX_SSD_MMA=tc timeout 40 build/gpu/bench_gpu --only mamba2,mamba2_hax \
      --precision $p --eval 0 --reps 30 > $R/tcskip_bench_$p.txt 2>&1); done
    log "tcskip: gpu_scans: $(tail -n 1 $R/tcskip_scans.txt); $(awk '/^TIME ssd (fwd|bwd) (fma|tc) /{printf "%s %s %s ms; ", $3, $4, $(NF-1)}' $R/tcskip_scans.txt)"
  else log "tcskip: build failed ($(tail -n 1 $R/tcskip_make.log))"; fi
  done_ tcskip
fi
if want convsub 60; then
  # NVCCFLAGS: the Makefile's default, plus the define
  if aside convsub - -W cuda/ops/conv.cu NVCCFLAGS="-O3 -std=c++17 -arch=sm_90 -Xcompiler -Wall,-Wextra,-Werror -I. -DCONV_SUB=8" build/gpu/gpu_ops; then
    timeout 30 build/gpu/gpu_ops > $R/convsub_4.txt 2>&1; (cd /tmp/convsub && timeout 30 build/gpu/gpu_ops > $R/convsub_8.txt 2>&1)
    log "convsub: 4: $(grep -h 'TIME conv+silu bwd' $R/convsub_4.txt | tr -s ' '); 8: $(grep -h 'TIME conv+silu bwd' $R/convsub_8.txt | tr -s ' '); $(tail -n 1 $R/convsub_8.txt)"
  else log "convsub: build failed ($(tail -n 1 $R/convsub_make.log))"; fi
  done_ convsub
fi
# the tiled window attention (HAX_WINDOW_ATTN=tiled, cuda/ops/attn.cu) against today's kernels: gpu_ops'
# old-vs-tiled bit checks and TIME attn fwd|dq|dkv old|tiled lines at the paper size, then Samba's whole
# steps with each, one after the other
if want windowtile 150; then
  timeout $(( $(left) - 60 )) build/gpu/gpu_ops > $R/gpu_ops_window.txt 2>&1; log "gpu_ops: $(tail -n 1 $R/gpu_ops_window.txt)"
  for p in fp32 bf16-pure; do for v in old tiled; do HAX_WINDOW_ATTN=$v timeout $(( $(left) - 60 )) build/gpu/bench_gpu --only samba --precision $p \
    --eval 0 --reps 30 > $R/bench_window_${v}_$p.txt 2>&1; done; done
  done_ windowtile
fi
# the step against its batch (bench_gpu --batch): what one process training several runs of an
# architecture as one batched model could gain at most (issue 11), and the batch-512 step of issue 15
if want batch 100; then
  for b in 64 128 256 512; do timeout $(( $(left) - 60 )) build/gpu/bench_gpu --only mamba2,mamba2_hax,mamba_hax,samba --precision fp32 \
    --eval 0 --reps 20 --batch $b > $R/bench_batch_$b.txt 2>&1; done
  done_ batch
fi
# Nsight Compute: on PATH, else where the toolkit or its own installer puts it (stages profile, stalls)
ncu_bin() { command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1; }
if want profile 100; then
  PROF=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -n 1)
  log "nsys: $PROF"
  for c in mamba2_hax:fp32 mamba2:fp32 mamba_hax:fp32 samba:fp32 mamba2_hax:bf16-pure; do
    n=${c%%:*}; p=${c#*:}
    [ -n "$PROF" ] && $PROF profile -o $R/prof_${n}_$p --force-overwrite true build/gpu/bench_gpu --only $n --precision $p --reps 30 --eval 0 > $R/prof_${n}_$p.log 2>&1 &&
      $PROF stats -r cuda_gpu_kern_sum -f csv -o $R/kern_${n}_$p $R/prof_${n}_$p.nsys-rep > /dev/null 2>&1
  done
  # no Nsight Systems on the lent machines so far: Nsight Compute's per-kernel durations instead
  # (every kernel replayed for its metric: slow, so 3 steps of each config)
  NCU=$(ncu_bin)
  if [ -z "$PROF" ] && [ -n "$NCU" ]; then for c in ${PROFILE_CONFIGS:-mamba2_hax:fp32 mamba2:fp32 mamba_hax:fp32 samba:fp32}; do
    n=${c%%:*}; p=${c#*:}
    timeout 60 $NCU --metrics gpu__time_duration.sum --csv --print-units base build/gpu/bench_gpu --only $n --precision $p \
      --reps 3 --eval 0 > $R/ncu_${n}_$p.csv 2> $R/ncu_${n}_$p.err
    python3 tests/device/ncu_sum.py $R/ncu_${n}_$p.csv 6 > $R/ncu_${n}_$p.txt 2>&1; done; fi  # 3 warm-up + 3 steps
  rm -f $R/*.nsys-rep $R/*.sqlite; done_ profile
fi
# why the largest kernels run below both roofs (issue 11): Nsight Compute's sections (throughput, occupancy,
# warp states, memory, schedulers) for the 4 first launches of each kernel family, whole text in $R/stalls/,
# the lines that answer "smem- or latency-bound?" in $R/stalls/summary.txt. STALLS="name:config:regex[:VAR=V,VAR=V] ..."
if want stalls 120; then
  NCU=$(ncu_bin); mkdir -p $R/stalls
  S="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SchedulerStats"
  for c in ${STALLS:-ssd:mamba2:ssd_.*_kernel ssdtc:mamba2:ssd_.*_kernel:HAX_SSD_MMA=tc branch:mamba2_hax:attn_bwd_k_kernel|attn_bwd_q|gather_fwd|ks_targets tile:mamba2_hax:tile_bwd|ks_targets_tile:HAX_SPARSE_TILES=all,HAX_KS_TARGETS=tile conv:mamba2:conv_bwd_kernel|gated_bwd_kernel|rmsnorm_bwd scan:mamba:chunk_bwd}; do
    IFS=: read -r n cf rx ev <<< "$c"
    [ -n "$NCU" ] && [ "$(left)" -gt 70 ] || break
    env ${ev//,/ } timeout 60 $NCU $S -k "regex:$rx" -c 4 build/gpu/bench_gpu --only $cf --precision fp32 --eval 0 --reps 1 > $R/stalls/$n.txt 2>&1
    { echo "== $n ($cf, $rx ${ev:-})"; grep -E "^  [A-Za-z_].*\(|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Compute \(SM\) Throughput|Memory Throughput|Shared Memory|L1/TEX Hit|L2 Hit|Issued Warp Per|No Eligible|Block Limit|Warp Cycles Per Issued" $R/stalls/$n.txt; } >> $R/stalls/summary.txt
  done
  log "stalls: ncu $NCU, $(grep -c '^==' $R/stalls/summary.txt 2>/dev/null) families"; done_ stalls
fi
# the reduced Table 1 grid (issue 12): GRID_CONFIGS x GRID_REGIMES, 30,000 steps, 4 at a time under
# MPS, a driver in the background with a time limit 40 s before the call's end (then checkpoints);
# GRID_BG=1 starts it here, after the timing stages above, so it trains while the checks below run;
# otherwise it takes the rest of the call after them.
GR=results/table1
gr_alive() { local p; p=$(cat $GR/.table1_local/driver.pid 2>/dev/null) && kill -0 "$p" 2>/dev/null; }
grid_start() {
  while [ ! -e results/stages/datagen ]; do sleep 2; done
  local TL=$(( $(left) - 40 )); log "grid, time limit $TL"
  jobs/table1_local.sh --steps 30000 --configs ${GRID_CONFIGS:-configs/mamba_a.yaml,configs/mamba_lsh.yaml,configs/mamba_ks.yaml,configs/mamba_hax.yaml,configs/mamba_2x.yaml} \
    --regimes ${GRID_REGIMES:-fp32} --lrs ${GRID_LRS:-1e-3} --jobs 4 --mps --background --time-limit $TL \
    --train-args "data.path=data/joint_recall train.valid_every=1000" $GR > $R/grid.log 2>&1
  log "grid: $(tail -n 1 $R/grid.log)"
}
if [ -n "${GRID_BG:-}" ] && [ -z "${NOGRID:-}" ] && ! gr_alive && [ "$(left)" -gt 90 ]; then grid_start; fi
# the full GPU suite (make test-gpu) with the default kernels, then the training checks
# each stage below is cut 60 s before the call's end (on 2026-12-07 run_gpu beside the grid and the
# reference stage took the whole call and nothing after it came back)
# A suite that does not pass (or was cut) trains nothing in this call: the grid's runs are resumed
# across calls, so a broken build would go on into the published results. No stage marker then,
# so a later call on the warm machine runs the suite again before any grid.
if want run_gpu 150; then
  timeout $(( $(left) - 60 )) tests/run_gpu.sh ${RUN_GPU_ARGS:---quick} > $R/run_gpu.txt 2>&1; log "run_gpu: $(tail -n 1 $R/run_gpu.txt)"
  if tail -n 1 $R/run_gpu.txt | grep -Eq '^[0-9]+ passed, 0 failed$'; then done_ run_gpu; else log "run_gpu did not pass: no grid in this call"; NOGRID=1; pack; fi
fi
# the headline runs (issue 12: Mamba2 and Mamba2+HAX at the paper's 400,000-step schedule, fp32 and
# bf16-pure; issue 10's 40,000-step curves) train in the background from here on, HEADLINE_STOP
# steps at most (--stop-after-step), while the stages below run; the grid takes the rest of the call.
HL=results/headline
hl_alive() { local p; p=$(cat $HL/.table1_local/driver.pid 2>/dev/null) && kill -0 "$p" 2>/dev/null; }
if [ -n "${HEADLINE_STOP:-}" ] && [ ! -e results/stages/headline ] && ! hl_alive; then
  while [ ! -e results/stages/datagen ]; do sleep 2; done
  jobs/table1_local.sh --steps 400000 --configs ${HEADLINE_CONFIGS:-configs/mamba2.yaml,configs/mamba2_hax.yaml} \
    --regimes ${HEADLINE_REGIMES:-fp32,bf16-pure} --lrs ${HEADLINE_LRS:-1e-3} --jobs 4 --mps --background --train-args "data.path=data/joint_recall train.valid_every=1000 --stop-after-step $HEADLINE_STOP" \
    $HL > $R/headline_start.txt 2>&1
  log "headline: $(tail -n 1 $R/headline_start.txt)"
fi
if want curve 120; then
  while [ ! -e results/stages/datagen ]; do sleep 2; done
  C="bin/hax-train configs/mamba2_hax.yaml data.path=data/ref data.compat=true train.lr=1e-3 train.steps=2500 train.log_every=100 train.precision=bf16-pure train.device=cuda"
  $C train.seed=2 --results $R/curve2 > $R/curve_bf16_seed2.log 2>&1
  for f in carry/init/*.safetensors; do [ -e "$f" ] || continue; n=$(basename $f .safetensors)
    $C train.init_from=$f --results $R/curve_$n > $R/curve_bf16_$n.log 2>&1; done
  rm -f $R/curve*/*/*/*/*.safetensors; done_ curve
fi
if [ -z "${REF_BG:-}" ] && want ref 330; then ref_stage; fi
if want gpu_train 150; then
  [ -d carry/base ] && (cd carry/base && $M bin/hax-train > $R/make_base.log 2>&1)
  HAX_BASE_BIN=$PWD/carry/base/bin timeout $(( $(left) - 60 )) tests/gpu_train.sh > $R/gpu_train.txt 2>&1; log "gpu_train: $(tail -n 1 $R/gpu_train.txt)"; done_ gpu_train
fi
if want det 90 && [ -d carry/base ]; then
  [ -x carry/base/bin/hax-train ] || (cd carry/base && $M bin/hax-train > $R/make_base.log 2>&1)
  for r in det1 det2; do bin/hax-train configs/tiny.yaml train.device=cuda train.steps=300 --results $R/$r > $R/$r.log 2>&1; done
  HAX_SCAN_KERNELS=old HAX_SPARSE_ATTN=old HAX_SPARSE_KS=old bin/hax-train configs/tiny.yaml train.device=cuda train.steps=300 --results $R/detold > $R/detold.log 2>&1
  carry/base/bin/hax-train configs/tiny.yaml train.device=cuda train.steps=300 --results $R/detbase > $R/detbase.log 2>&1
  d=tiny/lr_0.003/seed_1
  for r in det2 detbase detold; do
    echo "== det1 vs $r" >> $R/det.txt
    cmp $R/det1/$d/metrics.csv $R/$r/$d/metrics.csv >> $R/det.txt 2>&1 && echo "metrics identical" >> $R/det.txt
    diff $R/det1/$d/metrics.csv $R/$r/$d/metrics.csv | head -6 >> $R/det.txt
    python3 tests/device/cmp_st.py $R/det1/$d/best.safetensors $R/$r/$d/best.safetensors >> $R/det.txt 2>&1
  done
  rm -rf $R/det1 $R/det2 $R/detold $R/detbase/*/*/*/*.safetensors; done_ det
fi
# gpu_sparse under compute-sanitizer memcheck (its variant checks run the never-run tile kernels through
# cu_sparse_state.tiles and the targets' other way, whatever the defaults); racecheck: the stage below
if want memcheck 150; then
  timeout $(( $(left) - 30 )) compute-sanitizer --tool memcheck build/gpu/gpu_sparse --quick > $R/memcheck.txt 2>&1
  log "memcheck: $(tail -n 2 $R/memcheck.txt | tr '\n' ' ')"; done_ memcheck
fi
if want racecheck 100; then compute-sanitizer --tool racecheck build/gpu/gpu_sparse --quick > $R/racecheck.txt 2>&1; log "racecheck: $(tail -n 2 $R/racecheck.txt | tr '\n' ' ')"; done_ racecheck; fi
while hl_alive && [ "$(left)" -gt 45 ]; do sleep 10; done
if [ -d $HL ]; then
  hl_alive || { [ -e results/stages/headline ] || log "headline runs stopped"; touch results/stages/headline; }
  jobs/table1_local.sh --status $HL > $R/headline_status.txt 2>&1
  jobs/table1_local.sh --collect $R/headline --with-checkpoint --with-best --with-logs $HL >> $R/headline_status.txt 2>&1
  pack
fi
if [ -z "${NOGRID:-}" ] && [ "$(left)" -gt 90 ] && ! gr_alive; then
  [ -n "${GRID_BG:-}" ] || grid_start
fi
# the reference stage beside the others: waited for until 15 s before the call's end, then left running
while [ -n "$REF_PID" ] && kill -0 $REF_PID 2>/dev/null && [ "$(left)" -gt 15 ]; do sleep 2; done
while gr_alive; do sleep 5; done
if [ -d $GR ]; then
  jobs/table1_local.sh --status $GR > $R/grid_status.txt 2>&1
  jobs/table1_local.sh --collect $R/runs --with-checkpoint --with-logs $GR >> $R/grid_status.txt 2>&1
fi
log end; pack
