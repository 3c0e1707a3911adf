#!/usr/bin/env bash
# test_grid.sh: bin/hax-grid (the grid file and the array index -> run
# mapping) and jobs/sweep.sh's checks and sbatch commands (--dry-run), with no
# Slurm needed. The real cluster run is tests/test_sweep.sh.
source "$(dirname "$0")/lib.sh"
G=$BIN/hax-grid
tmp=$(mktemp -d /tmp/hax_grid.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# ---- the two grids of the repo
check "table1 grid has 171 runs" test "$($G "$ROOT/configs/grid_table1.yaml" --size)" = 171
check "tiny grid has 16 runs" test "$($G "$ROOT/configs/grid_tiny.yaml" --size)" = 16
check "table1 grid passes --check" $G "$ROOT/configs/grid_table1.yaml" --check
check "tiny grid passes --check" $G "$ROOT/configs/grid_tiny.yaml" --check
n_dirs=$($G "$ROOT/configs/grid_table1.yaml" --list | tail -n +2 | awk '{print $5}' | sort -u | wc -l)
check "table1: 171 distinct run folders" test "$n_dirs" = 171
n_arch=$($G "$ROOT/configs/grid_table1.yaml" --list | tail -n +2 | awk '{print $2}' | sort -u | wc -l)
check "table1: 19 architectures" test "$n_arch" = 19

# ---- the mapping: seed fastest, then lr, then config
cat >"$tmp/g.yaml" <<'EOF'
configs: [a.yaml, b.yaml]
lrs: [3e-3, 1e-3, 3e-4]
seeds: [7, 8]
overrides: [train.steps=10, train.warmup=1]
EOF
for c in a b; do
    sed "s/arch: tiny/arch: tiny_$c/" "$ROOT/configs/tiny.yaml" | sed "s#path: data/tiny#path: $tmp/data#" >"$tmp/$c.yaml"
done
check "size = 2 x 3 x 2" test "$($G "$tmp/g.yaml" --size)" = 12
ok_map=1
for ((i = 0; i < 12; i++)); do
    want_c=$([ $((i / 6)) -eq 0 ] && echo a || echo b)
    lrs=(3e-3 1e-3 3e-4) seeds=(7 8)
    want="$tmp/$want_c.yaml train.steps=10 train.warmup=1 train.lr=${lrs[$(((i / 2) % 3))]} train.seed=${seeds[$((i % 2))]}"
    got=$($G "$tmp/g.yaml" --args $i | tr '\n' ' ')
    [ "$got" = "$want " ] || { ok_map=0; echo "  run $i: expected '$want', found '$got'"; }
done
check "--args follows seed, lr, config order for every index" test $ok_map = 1
check "--dir of run 11" test "$($G "$tmp/g.yaml" --results /r --dir 11)" = /r/tiny_b/lr_0.0003/seed_8
check "--dir of run 0 (output.root from the config)" test "$($G "$tmp/g.yaml" --dir 0)" = results/tiny_a/lr_0.003/seed_7
check "--datasets: one folder with its generator options" test \
    "$($G "$tmp/g.yaml" --datasets)" = "$tmp/data	--levels 2 --level-sizes 2:6,2:6 --n-value 16 --n-train-per-cell 400 --n-valid-per-cell 20 --n-test-per-cell 20 --seed 1"
check_fails "index past the end" "run index: expected an integer in 0..11, found '12'" $G "$tmp/g.yaml" --args 12
check_fails "negative index" "expected an integer in 0..11" $G "$tmp/g.yaml" --args -1
check_fails "no command" "expected a grid file and a command" $G "$tmp/g.yaml"

# ---- refusals: one line naming file, line, key, expected and found
bad() {  # bad NAME PATTERN YAML
    printf '%s\n' "$3" >"$tmp/bad.yaml"
    check_fails "$1" "$2" $G "$tmp/bad.yaml" --check
}
bad "unknown key" "bad.yaml:3: expected a key among configs, lrs, seeds, overrides; found 'seed'" \
    $'configs: [a.yaml]\nlrs: [1e-3]\nseed: [1]'
bad "missing seeds" "seeds: expected a list, found no such key" $'configs: [a.yaml]\nlrs: [1e-3]'
bad "lr not a number" "bad.yaml:2: lrs: expected a learning rate in \(0, 1\], found 'fast'" \
    $'configs: [a.yaml]\nlrs: [fast]\nseeds: [1]'
bad "lr above 1" "lrs: expected a learning rate in \(0, 1\], found '2'" $'configs: [a.yaml]\nlrs: [2]\nseeds: [1]'
bad "same lr twice (3e-3 = 0.003)" "lrs: expected each value once, found '0.003' again \(as '3e-3'\)" \
    $'configs: [a.yaml]\nlrs: [3e-3, 0.003]\nseeds: [1]'
bad "negative seed" "seeds: expected an integer >= 0, found '-1'" $'configs: [a.yaml]\nlrs: [1e-3]\nseeds: [-1]'
bad "empty configs" "configs: expected at least one entry, found an empty list" $'configs: []\nlrs: [1e-3]\nseeds: [1]'
bad "lrs not a list" "bad.yaml:2: lrs: expected a list, found a single value" $'configs: [a.yaml]\nlrs: 1e-3\nseeds: [1]'
bad "key twice" "bad.yaml:4: lrs: expected once, found it again \(first at line 2\)" \
    $'configs: [a.yaml]\nlrs: [1e-3]\nseeds: [1]\nlrs: [1e-3]'
bad "override without =" "overrides: expected section.field=value, found 'train.steps'" \
    $'configs: [a.yaml]\nlrs: [1e-3]\nseeds: [1]\noverrides: [train.steps]'
bad "YAML syntax" "bad.yaml: expected valid YAML, found a syntax error at line [0-9]+" $'configs: [a.yaml\nlrs: [1e-3]'
bad "missing config file" "nope.yaml: cannot read" $'configs: [nope.yaml]\nlrs: [1e-3]\nseeds: [1]'
bad "bad override value" "override 'train.steps=many'" \
    $'configs: [a.yaml]\nlrs: [1e-3]\nseeds: [1]\noverrides: [train.steps=many]'
sed 's/arch: tiny_b/arch: tiny_a/' "$tmp/b.yaml" >"$tmp/b2.yaml"
bad "two configs, one run folder" "expected a run folder each, found both writing to results/tiny_a/lr_0.001/seed_1" \
    $'configs: [a.yaml, b2.yaml]\nlrs: [1e-3]\nseeds: [1]'
sed 's/n_value: 16/n_value: 12/' "$tmp/b.yaml" >"$tmp/b3.yaml"
bad "two configs, one data folder, two datasets" "data.path $tmp/data: expected one dataset per folder" \
    $'configs: [a.yaml, b3.yaml]\nlrs: [1e-3]\nseeds: [1]'

# ---- sweep.sh: settings reach sbatch; nothing is submitted when a check fails
out=$(cd "$tmp" && HAX_THROTTLE=3 HAX_GPUS_PER_TASK=1 bash "$ROOT/jobs/sweep.sh" --dry-run -p gpu -A proj \
    --runs-per-task 4 --time 2:00:00 --signal-time 300 "$tmp/g.yaml" "$tmp/res" 2>&1)
line=$(printf '%s\n' "$out" | grep 'would run: sbatch .*jobs/train.sh')
for want in --partition=gpu --account=proj --array=0-2%3 --requeue --signal=B:USR1@300 --time=2:00:00 --gpus=1 \
    --ntasks=4 --open-mode=append "--output=$tmp/res/logs/train_%A_%a.log" --dependency=afterok:DRY-datagen; do
    case " $line " in *" $want "*) ok "dry run: train array has $want" ;; *) fail "dry run: train array lacks $want: $line" ;; esac
done
check "dry run: aggregation after the array" grep -q 'would run: sbatch .*--dependency=afterany:DRY-train .*jobs/aggregate.sh' <<<"$out"
check "dry run: datagen submitted for the missing dataset" grep -q 'would run: sbatch .*jobs/datagen.sh' <<<"$out"
# An existing dataset is checked against the configs before anything is queued.
mkdir -p "$tmp/data" && : >"$tmp/data/manifest.yaml"
check_fails "sweep: an unreadable existing dataset stops it before sbatch" \
    "a.yaml: data.path: expected a usable existing dataset, found: .*manifest.yaml" \
    bash "$ROOT/jobs/sweep.sh" --dry-run "$tmp/g.yaml" "$tmp/res"
IFS=$'\t' read -r dg_dir dg_opts <<<"$($G "$tmp/g.yaml" --datasets)"
read -r -a dg_opts <<<"$dg_opts"
$BIN/hax-datagen --out "$dg_dir" --force "${dg_opts[@]}" --n-value 12 >/dev/null
check_fails "sweep: an existing dataset made with other options stops it before sbatch" \
    "a.yaml: data.path: expected a usable existing dataset, found: $tmp/data: n_value: the config expects 16, the dataset has 12" \
    bash "$ROOT/jobs/sweep.sh" --dry-run "$tmp/g.yaml" "$tmp/res"
$BIN/hax-datagen --out "$dg_dir" --force "${dg_opts[@]}" >/dev/null
out=$(cd "$tmp" && HAX_GPUS_PER_TASK=0 bash "$ROOT/jobs/sweep.sh" --dry-run "$tmp/g.yaml" "$tmp/res" 2>&1)
check "dry run: the matching dataset is found present" grep -q "dataset $tmp/data: present" <<<"$out"
check "dry run: no datagen when the dataset exists" test "$(grep -c 'jobs/datagen.sh' <<<"$out")" = 0
check "dry run: 12 tasks, no GPU, no dependency" grep -q -- '--array=0-11%32 .*--cpus-per-task=2 --output' <<<"$out"
check "dry run: CPU-only asks no GPU" test "$(grep -c -- '--gpus' <<<"$out")" = 0
check_fails "sweep: a bad grid stops it before sbatch" "the grid does not pass hax-grid --check" \
    bash "$ROOT/jobs/sweep.sh" --dry-run "$tmp/bad.yaml" "$tmp/res"
check_fails "sweep (not a dry run): a bad grid stops it before sbatch" "the grid does not pass hax-grid --check" \
    bash "$ROOT/jobs/sweep.sh" "$tmp/bad.yaml" "$tmp/res_refused"
check "a refused sweep leaves no results folder; a dry run makes none" test ! -e "$tmp/res_refused" -a ! -e "$tmp/res"
check_fails "sweep: no grid file" "nope.yaml: expected a grid file" bash "$ROOT/jobs/sweep.sh" --dry-run "$tmp/nope.yaml"
mkdir -p "$tmp/fake/jobs" && cp "$ROOT"/jobs/*.sh "$tmp/fake/jobs/"
check_fails "sweep: programs not built" "bin/hax-grid: expected the built program, found none" \
    env HAX_ROOT="$tmp/fake" bash "$ROOT/jobs/sweep.sh" --dry-run "$tmp/g.yaml"
check_fails "sweep: bad setting" "throttle: expected a whole number, found 'many'" \
    bash "$ROOT/jobs/sweep.sh" --dry-run --throttle many "$tmp/g.yaml"
check_fails "sweep: unknown option" "unknown option '--gpu'" bash "$ROOT/jobs/sweep.sh" --gpu 1
# ---- datagen.sh and train.sh check their inputs before doing anything
check_fails "datagen.sh: a missing grid" "nope.yaml: the grid does not load" \
    env HAX_ROOT="$ROOT" bash "$ROOT/jobs/datagen.sh" "$tmp/nope.yaml"
check_fails "train.sh: not an array task" "SLURM_ARRAY_TASK_ID: expected an array task index" \
    env -u SLURM_ARRAY_TASK_ID HAX_ROOT="$ROOT" bash "$ROOT/jobs/train.sh" "$tmp/g.yaml" "$tmp/res_t"
check_fails "train.sh: a task past the grid's end" "array task 12: expected runs below 12" \
    env HAX_ROOT="$ROOT" SLURM_ARRAY_TASK_ID=12 bash "$ROOT/jobs/train.sh" "$tmp/g.yaml" "$tmp/res_t"
check_fails "train.sh: programs not built" "bin/hax-grid: expected the hax program" \
    env HAX_ROOT="$tmp/fake" SLURM_ARRAY_TASK_ID=0 bash "$ROOT/jobs/train.sh" "$tmp/g.yaml" "$tmp/res_t"
if ! command -v nvidia-cuda-mps-control >/dev/null; then  # a node without NVIDIA's driver utilities
    check_fails "train.sh: HAX_MPS=1 without MPS" "HAX_MPS=1: expected nvidia-cuda-mps-control" \
        env HAX_ROOT="$ROOT" SLURM_ARRAY_TASK_ID=0 HAX_MPS=1 bash "$ROOT/jobs/train.sh" "$tmp/g.yaml" "$tmp/res_t"
fi
check "train.sh: nothing written by a refused task" test ! -e "$tmp/res_t"
check_fails "sweep: --mps with one run per task" "--mps: expected --runs-per-task above 1" \
    bash "$ROOT/jobs/sweep.sh" --dry-run --mps "$tmp/g.yaml" "$tmp/res_m"
if ! command -v sbatch >/dev/null; then
    check_fails "sweep: no sbatch" "sbatch: expected Slurm's client" bash "$ROOT/jobs/sweep.sh" "$tmp/g.yaml"
fi
finish
