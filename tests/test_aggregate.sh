#!/usr/bin/env bash
# test_aggregate.sh: hax-aggregate on hand-made result trees (written here by
# a small Python generator in hax-train's result.json format): the full
# Table 1 grid, ties between learning rates, a missing seed, failed and
# running runs, corrupt files, an empty or missing folder, rows outside
# Table 1, csv/json that parse back, chosen lr and statistics equal to a
# recomputation in Python, well-formed SVG plots.
source "$(dirname "$0")/lib.sh"
AGG=${HAX_AGGREGATE:-$BIN/hax-aggregate}  # HAX_AGGREGATE: test another build
PY=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -x "$AGG" ] || { fail "bin/hax-aggregate is built"; finish; exit 1; }

cat >"$tmp/gen.py" <<'EOF'
# Hand-made result.json files, in the format hax-train writes.
import json, os, random
PAT = {"": "none", "_d": "dilated", "_sw": "sliding_window", "_swd": "sliding_window+dilated",
       "_a": "sliding_window+sink", "_lsh": "sign_bin_lsh", "_ks": "key_selection",
       "_hax": "sign_bin_lsh+key_selection", "_2x": "none"}

def table1_archs():
    out = [(m + suf, m, pat, 128 if suf == "_2x" else 64, 2) for m in ("mamba", "mamba2") for suf, pat in PAT.items()]
    return out + [("samba", "samba", "none", 32, 4)]

def cells(rng, base, lo=5, hi=8):
    return [{"n_c": c, "n_k": k, "n": 100, "acc": round(max(0.0, min(1.0, base + 0.2 - 0.005 * c * k + rng.uniform(-0.02, 0.02))), 6)}
            for c in range(lo, hi + 1) for k in range(lo, hi + 1)]

def run(root, label, model, pattern, hidden, layers, lr, seed, valid, test, status="complete",
        test_ref=None, with_cells=True, config=True, rng=None, precision=None, metrics=0):
    rng = rng or random.Random(seed)
    d = os.path.join(root, label, "lr_%g" % lr, "seed_%d" % seed)
    os.makedirs(d, exist_ok=True)
    done = status == "complete"
    r = {"status": status, "message": None, "label": label, "lr": lr, "seed": seed, "steps": 1000, "steps_planned": 1000,
         "best_valid_acc": valid, "best_step": 499, "test_acc": test if done else None,
         "test_acc_reference": (test_ref if test_ref is not None else test) if done else None,
         "valid_cells": cells(rng, valid) if with_cells else []}
    if done and with_cells:
        r["test_cells"] = cells(rng, test)
        r["test_cells_reference"] = cells(rng, test * 0.9)
    r.update({"tokens": 1e6, "git_revision": "abc", "ranks": 1, "wall_time": 1.5, "tokens_per_s": 1000})
    if precision:
        r["precision"] = precision
    if config:
        r["config"] = {"model": {"arch": model, "hidden_size": hidden, "n_layers": layers},
                       "sparse": {"pattern": pattern, "keys": 64},
                       "train": {"seed": seed, "lr": lr}, "output": {"root": root, "arch": label}}
        if precision:
            r["config"]["train"]["precision"] = precision
    with open(os.path.join(d, "result.json"), "w") as f:
        json.dump(r, f, indent=2)
    if metrics:  # hax-train's metrics.csv: a row every 50 steps, validation every 100 (steps 99, 199, ...)
        with open(os.path.join(d, "metrics.csv"), "w") as f:
            f.write("step,loss,gate_loss,train_acc,lr,valid_acc\n")
            for k in range(1, metrics + 1):
                f.write("%d,%.8g,%.8g,%.8g,%.8g,\n" % (100 * k - 50, 4.0 / k, 1.0, 0.01 * k, lr))
                f.write("%d,%.8g,%.8g,%.8g,%.8g,%.8g\n" % (100 * k - 1, 4.0 / k, 1.0, 0.01 * k, lr, valid * k / metrics))
    return os.path.join(d, "result.json")

def grid(root, archs, lrs=(3e-3, 1e-3, 3e-4), seeds=(1, 2, 3), seed=7, precision=None):
    rng = random.Random(seed)
    for label, model, pat, hidden, layers in archs:
        if precision:
            label += "@" + precision
        for lr in lrs:
            for s in seeds:
                v = round(rng.uniform(0.05, 0.9), 6)
                run(root, label, model, pat, hidden, layers, lr, s, v, round(min(1, max(0, v + rng.uniform(-0.05, 0.05))), 6),
                    test_ref=round(v * 0.9, 6), rng=rng, precision=precision)

def recompute(root, metric="test_acc"):
    """The expected table from the files: complete runs only, best mean
    validation accuracy per label, ties (1e-9) to the smaller lr."""
    import glob, statistics
    groups = {}
    for p in sorted(glob.glob(os.path.join(root, "**", "result.json"), recursive=True)):
        try:
            r = json.load(open(p))
        except Exception:
            continue
        if r.get("status") != "complete" or not isinstance(r.get("test_acc"), (int, float)):
            continue
        groups.setdefault(r["label"], {}).setdefault(r["lr"], []).append(r)
    out = {}
    for label, by_lr in groups.items():
        best = None
        for lr in sorted(by_lr):
            m = statistics.mean(r["best_valid_acc"] for r in by_lr[lr])
            if best is None or m > best[1] + 1e-9:
                best = (lr, m)
        rs = by_lr[best[0]]
        t = [r[metric] for r in rs]
        out[label] = {"lr": best[0], "n": len(rs), "mean": 100 * statistics.mean(t),
                      "std": 100 * statistics.stdev(t) if len(t) > 1 else None}
    return out
EOF
gen() { (cd "$tmp" && $PY -c "import sys; sys.path.insert(0, '.'); from gen import *; $1"); }

# json_check DIR JSONFILE [METRIC]: every architecture's chosen lr, seed count,
# mean and sample std equal the Python recomputation.
json_check() {
    (cd "$tmp" && $PY - "$1" "$2" "${3:-test_acc}" <<'EOF'
import json, sys
sys.path.insert(0, ".")
from gen import recompute
want = recompute(sys.argv[1], sys.argv[3])
got = {a["label"]: a for a in json.load(open(sys.argv[2]))["architectures"]}
assert set(got) == set(want), (sorted(got), sorted(want))
for k, w in want.items():
    g = got[k]
    assert g["chosen_lr"] == w["lr"], (k, g["chosen_lr"], w["lr"])
    assert g["n_seeds"] == w["n"], (k, g["n_seeds"], w["n"])
    assert abs(g["test_mean"] - w["mean"]) < 1e-3, (k, g["test_mean"], w["mean"])
    assert (g["test_std"] is None) == (w["std"] is None) and (w["std"] is None or abs(g["test_std"] - w["std"]) < 1e-3), (k, g["test_std"], w["std"])
EOF
    )
}

# --- The full Table 1 grid plus rows outside it --------------------------------
R=$tmp/full
gen "grid('$R', table1_archs()); grid('$R', [('mamba_full', 'mamba', 'full', 64, 2), ('mamba_h32', 'mamba', 'none', 32, 2), ('mamba2_argmax', 'mamba2', 'argmax_lsh', 64, 2)], seed=11)"
"$AGG" "$R" >"$tmp/full.md" 2>"$tmp/full.err"; rc=$?
[ $rc -eq 0 ] && [ ! -s "$tmp/full.err" ] && ok "full grid: markdown, exit 0, nothing on stderr" || fail "full grid: markdown (exit $rc)"
rows_ok=1
for row in "| Base |" "| +D |" "| +SW |" "| +SW+D |" "| +A |" "| +LSH |" "| +KS |" "| +HAX |" "| Base (2×dim) |" "| Samba |"; do
    grep -qF -- "$row" "$tmp/full.md" || { rows_ok=0; echo "missing row $row"; }
done
[ $rows_ok = 1 ] && ok "full grid: every Table 1 row" || fail "full grid: every Table 1 row"
if grep -q "| Samba | [0-9.]* ± [0-9.]* (3 seeds, lr [0-9.e-]*) | – |" "$tmp/full.md"; then ok "Samba sits in the Mamba column only"
else fail "Samba sits in the Mamba column only"; fi
if grep -q "### Other architectures" "$tmp/full.md" && grep -q "| mamba_full | mamba | full | 64 |" "$tmp/full.md" &&
    grep -q "| mamba_h32 | mamba | none | 32 |" "$tmp/full.md" && grep -q "| mamba2_argmax | mamba2 | argmax_lsh | 64 |" "$tmp/full.md"
then ok "architectures outside Table 1 get rows of their own"; else fail "architectures outside Table 1 get rows of their own"; fi
grep -q "All 198 result files were complete" "$tmp/full.md" && ok "no footer when nothing is missing" || fail "no footer when nothing is missing"
"$AGG" --format json "$R" >"$tmp/full.json"
check "json: chosen lr, seeds, mean and sample std equal a recomputation" json_check "$R" "$tmp/full.json"
"$AGG" --format json --metric test_reference "$R" >"$tmp/ref.json"
check "--metric test_reference: equal a recomputation from test_acc_reference" json_check "$R" "$tmp/ref.json" test_acc_reference
"$AGG" --format csv --paper "$R" >"$tmp/full.csv" 2>"$tmp/csv.err"
check "csv parses back: one row per (architecture, lr), chosen flags match json" $PY - "$tmp/full.csv" "$tmp/full.json" <<'EOF'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
arch = {a["label"]: a for a in json.load(open(sys.argv[2]))["architectures"]}
assert len(rows) == 22 * 3, len(rows)
for r in rows:
    a = arch[r["label"]]
    assert (r["chosen"] == "1") == (float(r["lr"]) == a["chosen_lr"]), r
    assert r["n_seeds"] == "3" and r["seeds"] == "1;2;3", r
    if r["chosen"] == "1":
        assert abs(float(r["test_mean"]) - a["test_mean"]) < 1e-3
assert [r["paper"] for r in rows if r["label"] == "mamba2_hax"] == ["74.3000"] * 3
assert [r["paper"] for r in rows if r["label"] == "mamba_full"] == [""] * 3
assert [r["table1_row"] for r in rows if r["label"] == "mamba_2x"][0] == "Base (2×dim)"
EOF
[ ! -s "$tmp/csv.err" ] && ok "csv: empty footer on stderr" || fail "csv: empty footer on stderr ($(head -n 2 "$tmp/csv.err"))"
"$AGG" --paper "$R" >"$tmp/paper.md"
if grep -q "| Mamba (paper) |" "$tmp/paper.md" && grep -qE "^\| \+HAX \| [0-9.]+ ± [0-9.]+ \(3 seeds, lr [0-9.e-]+\) \| 38\.0 \| [0-9.]+ ± [0-9.]+ \(3 seeds, lr [0-9.e-]+\) \| 74\.3 \|$" "$tmp/paper.md"
then ok "--paper: the paper's numbers beside ours"; else fail "--paper: the paper's numbers beside ours"; fi
check "json --paper parses; mamba_hax paper 38.0, mamba_full null" $PY -c "
import json, sys, subprocess
d = json.loads(subprocess.run(['$AGG', '--format', 'json', '--paper', '$R'], capture_output=True, check=True).stdout)
a = {x['label']: x for x in d['architectures']}
assert a['mamba_hax']['paper'] == 38.0 and a['mamba_full']['paper'] is None and a['samba']['table1_column'] == 'Mamba'
assert d['incomplete'] == [] and d['missing'] == [] and d['unreadable'] == []"

# Progress on a large tree: on a terminal (script gives stderr a pty) a
# "searching:" count on stderr, erased afterwards; the table itself unchanged.
if command -v script >/dev/null; then
    script -qec "'$AGG' '$R' >'$tmp/tty.md'" "$tmp/tty.log" >/dev/null 2>&1
    if grep -q "searching: [0-9]* result files so far" "$tmp/tty.log" && grep -q $'\r\033\[K' "$tmp/tty.log" &&
        cmp -s "$tmp/tty.md" "$tmp/full.md"; then ok "progress on a terminal: a count on stderr, the same table"
    else fail "progress on a terminal: a count on stderr, the same table ($(tr '\r' '\n' <"$tmp/tty.log" | head -n 3))"; fi
    grep -q "searching" "$tmp/full.err" && fail "no progress when stderr is not a terminal" || ok "no progress when stderr is not a terminal"
else
    fail "script (util-linux) not found: the progress count is untested"
fi

# --- Plots ------------------------------------------------------------------
"$AGG" --plot "$tmp/plots" "$R" >/dev/null 2>"$tmp/plot.err"
check "--plot: 22 heatmaps + acc_vs_n.svg, well-formed, one line per architecture" $PY - "$tmp/plots" <<'EOF'
import os, sys, xml.etree.ElementTree as ET
d = sys.argv[1]
files = sorted(os.listdir(d))
assert len(files) == 23 and "acc_vs_n.svg" in files and "heatmap_mamba2_hax.svg" in files, files
assert not [f for f in files if not f.endswith(".svg")], files   # no temporary files left
ns = "{http://www.w3.org/2000/svg}"
for f in files:
    root = ET.parse(os.path.join(d, f)).getroot()
    assert root.tag == ns + "svg", f
    assert root.findall(ns + "text"), f
line = ET.parse(os.path.join(d, "acc_vs_n.svg")).getroot()
assert len(line.findall(ns + "polyline")) == 22
heat = ET.parse(os.path.join(d, "heatmap_mamba_hax.svg")).getroot()
assert len([r for r in heat.findall(ns + "rect") if r.get("width") == r.get("height") and r.get("fill", "").startswith("#")]) >= 16
EOF
check_fails "--plot into a file path fails with one line" "plot" "$AGG" --plot "$tmp/full.md" "$R"

# --- Ties, a missing seed, failed and running runs ----------------------------
T=$tmp/ties
gen "
for s in (1, 2, 3):
    run('$T', 'mamba_hax', 'mamba', 'sign_bin_lsh+key_selection', 64, 2, 3e-3, s, 0.6, 0.5 + s / 100)
    run('$T', 'mamba_hax', 'mamba', 'sign_bin_lsh+key_selection', 64, 2, 1e-3, s, 0.6, 0.4 + s / 100)
    run('$T', 'mamba_hax', 'mamba', 'sign_bin_lsh+key_selection', 64, 2, 3e-4, s, 0.3, 0.9)
# equal means from different values: a tie too; the smaller lr wins
run('$T', 'mamba2_sw', 'mamba2', 'sliding_window', 64, 2, 3e-3, 1, 0.5, 0.1)
run('$T', 'mamba2_sw', 'mamba2', 'sliding_window', 64, 2, 3e-3, 2, 0.7, 0.1)
run('$T', 'mamba2_sw', 'mamba2', 'sliding_window', 64, 2, 1e-3, 1, 0.6, 0.2)
run('$T', 'mamba2_sw', 'mamba2', 'sliding_window', 64, 2, 1e-3, 2, 0.6, 0.2)
# mamba: seed 3 missing at lr 1e-3, failed at 3e-3; a running run at 3e-4
for s in (1, 2, 3):
    run('$T', 'mamba', 'mamba', 'none', 64, 2, 3e-4, s, 0.2, 0.2)
run('$T', 'mamba', 'mamba', 'none', 64, 2, 1e-3, 1, 0.5, 0.45)
run('$T', 'mamba', 'mamba', 'none', 64, 2, 1e-3, 2, 0.5, 0.55)
run('$T', 'mamba', 'mamba', 'none', 64, 2, 3e-3, 1, 0.1, 0.1)
run('$T', 'mamba', 'mamba', 'none', 64, 2, 3e-3, 2, 0.1, 0.1)
run('$T', 'mamba', 'mamba', 'none', 64, 2, 3e-3, 3, 0.99, 0.99, status='failed')
run('$T', 'mamba', 'mamba', 'none', 64, 2, 3e-4, 4, 0.99, 0.99, status='running')
"
"$AGG" --format json "$T" >"$tmp/ties.json" 2>"$tmp/ties.err"
check "ties/missing/failed: json equals a recomputation" json_check "$T" "$tmp/ties.json"
check "exact tie goes to the smaller lr; equal means of different values tie too" $PY -c "
import json
a = {x['label']: x for x in json.load(open('$tmp/ties.json'))['architectures']}
assert a['mamba_hax']['chosen_lr'] == 1e-3 and abs(a['mamba_hax']['test_mean'] - 42.0) < 1e-9, a['mamba_hax']
assert a['mamba2_sw']['chosen_lr'] == 1e-3, a['mamba2_sw']"
check "failed and running runs are not averaged: mamba at lr 1e-3 from 2 seeds, std of (45, 55)" $PY -c "
import json
d = json.load(open('$tmp/ties.json'))
m = {x['label']: x for x in d['architectures']}['mamba']
assert m['chosen_lr'] == 1e-3 and m['n_seeds'] == 2 and m['seeds'] == [1, 2], m
assert abs(m['test_mean'] - 50) < 1e-9 and abs(m['test_std'] - 7.0711) < 1e-3, m
lr3 = [l for l in m['lrs'] if l['lr'] == 3e-3][0]
assert lr3['n_seeds'] == 2 and abs(lr3['valid_mean'] - 10) < 1e-9, lr3
st = sorted((i['path'].split('/')[-3], i['status']) for i in d['incomplete'])
assert st == [('lr_0.0003', 'running'), ('lr_0.003', 'failed')], st"
"$AGG" "$T" >"$tmp/ties.md"
if grep -q "Incomplete or failed runs (2)" "$tmp/ties.md" && grep -q "mamba/lr_0.003/seed_3/result.json\`: failed" "$tmp/ties.md" &&
    grep -q "mamba/lr_0.0003/seed_4/result.json\`: running" "$tmp/ties.md"
then ok "footer lists the failed and the running run"; else fail "footer lists the failed and the running run"; fi
if grep -q "\`mamba\`: lr 0.001: seed 3 missing" "$tmp/ties.md" && grep -q "\`mamba\`: lr 0.003: seed 3 missing" "$tmp/ties.md" &&
    grep -q "\`mamba2_sw\`: lr 0.001: 2 seeds, fewer than the usual 3" "$tmp/ties.md"
then ok "footer lists missing seeds (absent at one lr, fewer than usual)"; else fail "footer lists missing seeds"; cat "$tmp/ties.md"; fi

# --- Corrupt and mistyped files ------------------------------------------------
C=$tmp/corrupt
gen "
for s in (1, 2):
    run('$C', 'mamba_ks', 'mamba', 'key_selection', 64, 2, 1e-3, s, 0.5, 0.3 + s / 10)
run('$C', 'mamba_ks', 'mamba', 'key_selection', 64, 2, 1e-3, 3, 0.5, 0.9)
run('$C', 'mamba_ks', 'mamba', 'key_selection', 64, 2, 1e-3, 4, 0.5, 0.9)
run('$C', 'mamba_ks', 'mamba', 'key_selection', 64, 2, 1e-3, 5, 0.5, 0.9)
run('$C', 'mamba_ks', 'mamba', 'key_selection', 64, 2, 1e-3, 6, 0.5, 0.9)
run('$C', 'mamba_ks', 'mamba', 'key_selection', 64, 2, 1e-3, 7, 0.5, 0.9)
run('$C', 'mamba_ks', 'mamba', 'key_selection', 64, 2, 1e-3, 8, 0.5, 0.9)
"
d=$C/mamba_ks/lr_0.001
head -c 300 "$d/seed_3/result.json" >"$d/seed_3/tmp" && mv "$d/seed_3/tmp" "$d/seed_3/result.json"   # truncated
printf '\x00\x01binary\xff' >"$d/seed_4/result.json"                                                 # binary
sed -i 's/"test_acc": 0.9/"test_acc": "abc"/' "$d/seed_5/result.json"                                 # mistyped
sed -i 's/"test_acc": 0.9/"test_acc": 37.5/' "$d/seed_6/result.json"                                  # percent, out of range
sed -i 's/"status": "complete"/"state": "complete"/' "$d/seed_7/result.json"                          # no status
sed -i 's/"test_acc": 0.9/"test_acc": null/' "$d/seed_8/result.json"                                  # null in a complete run
mkdir -p "$C/copy/lr_0.001/seed_1" && cp "$d/seed_1/result.json" "$C/copy/lr_0.001/seed_1/"          # duplicate
"$AGG" --format json "$C" >"$tmp/corrupt.json" 2>"$tmp/corrupt.err"; rc=$?
[ $rc -eq 0 ] && ok "corrupt files: still exit 0" || fail "corrupt files: still exit 0 (exit $rc)"
check "corrupt files: the rest aggregate (2 seeds, mean 45)" $PY -c "
import json
d = json.load(open('$tmp/corrupt.json'))
a = d['architectures']
assert len(a) == 1 and a[0]['n_seeds'] == 2 and abs(a[0]['test_mean'] - 45) < 1e-9, a"
check "corrupt files: each reported with its path and reason" $PY -c "
import json
u = {x['path'].split('/')[-2]: x['reason'] for x in json.load(open('$tmp/corrupt.json'))['unreadable']}
assert len(u) == 7, u
assert 'syntax error' in u['seed_3'], u['seed_3']
assert 'NUL' in u['seed_4'] or 'syntax' in u['seed_4'] or 'JSON' in u['seed_4'], u['seed_4']
assert u['seed_5'].startswith('test_acc: expected a number in [0, 1], found the string'), u['seed_5']
assert u['seed_6'] == \"test_acc: expected a number in [0, 1], found '37.5'\", u['seed_6']
assert u['seed_7'].startswith('status: expected complete|running|failed|preempted, found nothing'), u['seed_7']
assert u['seed_8'].startswith('test_acc: expected a number in [0, 1], found nothing'), u['seed_8']
assert u['seed_1'].startswith('duplicate of '), u['seed_1']"
"$AGG" --format csv "$C" >/dev/null 2>"$tmp/corrupt.err"
[ "$(grep -c '^hax-aggregate: unreadable: ' "$tmp/corrupt.err")" = 7 ] && ok "csv: footer on stderr" || fail "csv: footer on stderr"

# --- No config: label, lr and seed from the folders ----------------------------
N=$tmp/noconfig
gen "
run('$N', 'mamba2_hax', '', '', 0, 0, 3e-3, 1, 0.7, 0.6, config=False, with_cells=False)
run('$N', 'mamba2_hax', '', '', 0, 0, 3e-3, 2, 0.7, 0.8, config=False, with_cells=False)"
sed -i '/"label"/d; /"lr"/d; /"seed"/d' "$N"/mamba2_hax/lr_0.003/seed_*/result.json
"$AGG" "$N" >"$tmp/noconfig.md" 2>"$tmp/noconfig.err"
if grep -qE "^\| \+HAX \| – \| 70\.0 ± 14\.1 \(2 seeds, lr 0\.003\) \|$" "$tmp/noconfig.md"; then ok "without a config: label, lr, seed from the folders; placed by label"
else fail "without a config: label, lr, seed from the folders"; cat "$tmp/noconfig.md"; fi
"$AGG" --plot "$tmp/noplots" "$N" >/dev/null 2>"$tmp/noplot.err"
grep -q "no run reports per-cell accuracies" "$tmp/noplot.err" && ok "--plot without per-cell accuracies: a warning" || fail "--plot without per-cell accuracies: a warning"

# --- --output: written atomically; kept when nothing can be aggregated ----------
"$AGG" --format json --output "$tmp/out.json" "$R" >"$tmp/out.stdout"
if [ ! -s "$tmp/out.stdout" ] && cmp -s "$tmp/out.json" "$tmp/full.json"; then ok "--output FILE: the same table, nothing on stdout"
else fail "--output FILE: the same table, nothing on stdout"; fi
mkdir -p "$tmp/empty2"
"$AGG" --output "$tmp/out.json" "$tmp/empty2" 2>/dev/null
[ $? -eq 1 ] && cmp -s "$tmp/out.json" "$tmp/full.json" && ok "--output: a good table is not replaced when nothing aggregates" ||
    fail "--output: a good table is not replaced when nothing aggregates"
check_fails "--output into a missing folder: one line" "out.md: cannot write the table" "$AGG" --output "$tmp/no/such/out.md" "$R"

# --- jobs/aggregate.sh (the sweep's last job), run by hand -----------------------
if HAX_ROOT=$ROOT bash "$ROOT/jobs/aggregate.sh" "$T" >"$tmp/job.out" 2>&1 &&
    "$AGG" --paper "$T" | cmp -s - "$T/table.md" && "$AGG" --format json "$T" | cmp -s - "$T/table.json" &&
    "$AGG" --format csv "$T" 2>/dev/null | cmp -s - "$T/table.csv" && [ -s "$T/plots/acc_vs_n.svg" ]
then ok "aggregate.sh: table.md (--paper), table.csv, table.json and plots/ next to the results"
else fail "aggregate.sh: tables and plots next to the results ($(tail -n 2 "$tmp/job.out"))"; fi
rm -f "$T"/*/lr_*/seed_*/result.json
check_fails "aggregate.sh: nothing left to aggregate: one line" "expected result.json files under the folder, found none" \
    env HAX_ROOT="$ROOT" bash "$ROOT/jobs/aggregate.sh" "$T"
check "aggregate.sh: the earlier table.md is kept" grep -q "Incomplete or failed runs (2)" "$T/table.md"
check_fails "aggregate.sh: a missing results folder" "nope: expected the sweep's results folder, found none" \
    env HAX_ROOT="$ROOT" bash "$ROOT/jobs/aggregate.sh" "$tmp/nope"

# --- Nothing to aggregate -------------------------------------------------------
mkdir -p "$tmp/empty/sub"
check_fails "empty folder: exit 1, one line" "empty: expected result.json files under the folder, found none" "$AGG" "$tmp/empty"
check_fails "missing folder: exit 1, one line" "nope: expected a results folder" "$AGG" "$tmp/nope"
mkdir -p "$tmp/bad/x/lr_0.001/seed_1" && echo '{"status": ' >"$tmp/bad/x/lr_0.001/seed_1/result.json"
"$AGG" "$tmp/bad" >/dev/null 2>"$tmp/bad.err"; rc=$?
[ $rc -eq 1 ] && [ "$(wc -l <"$tmp/bad.err")" -eq 1 ] &&
    grep -q "found none (1 files: 0 incomplete, 1 unreadable; first: .*seed_1/result.json: .*syntax error" "$tmp/bad.err" &&
    ok "only unreadable files: exit 1, one line with the count and the first reason" || fail "only unreadable files: exit 1 (exit $rc: $(cat "$tmp/bad.err"))"
gen "run('$tmp/running', 'mamba', 'mamba', 'none', 64, 2, 1e-3, 1, 0.5, 0.5, status='running')"
check_fails "only running runs: exit 1" "found none \(1 files: 1 incomplete" "$AGG" "$tmp/running"
"$AGG" --format xml "$R" >/dev/null 2>&1; [ $? -eq 2 ] && ok "bad --format: exit 2" || fail "bad --format: exit 2"
"$AGG" --metric best "$R" >/dev/null 2>&1; [ $? -eq 2 ] && ok "bad --metric: exit 2" || fail "bad --metric: exit 2"
"$AGG" >/dev/null 2>&1; [ $? -eq 2 ] && ok "no folder: usage, exit 2" || fail "no folder: usage, exit 2"
# Table 1 per regime: the fp32 grid and the same architectures in bf16-pure
# (labels NAME@bf16-pure) in one tree; --precision picks the regime Table 1
# holds, the other regime's runs are listed below it, never averaged in.
P=$tmp/prec
gen "grid('$P', table1_archs()); grid('$P', table1_archs(), seed=13, precision='bf16-pure')"
"$AGG" --format json --precision fp32 "$P" >"$tmp/p32.json" 2>/dev/null
"$AGG" --format json --precision bf16-pure "$P" >"$tmp/pbf.json" 2>/dev/null
check "--precision: Table 1 holds one regime, the other listed below it" $PY - "$tmp/p32.json" "$tmp/pbf.json" "$P" "$tmp" <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[4])
from gen import recompute
d32, dbf = (json.load(open(f)) for f in sys.argv[1:3])
assert d32["precision"] == "fp32" and dbf["precision"] == "bf16-pure", (d32["precision"], dbf["precision"])
assert d32["regimes"] == ["fp32"] and dbf["regimes"] == ["bf16-pure"], (d32["regimes"], dbf["regimes"])
a32 = {a["label"]: a for a in d32["architectures"]}
abf = {a["label"]: a for a in dbf["architectures"]}
assert a32["mamba2_hax"]["table1_row"] and a32["mamba2_hax@bf16-pure"]["table1_row"] is None
assert abf["mamba2_hax@bf16-pure"]["table1_row"] == a32["mamba2_hax"]["table1_row"]
assert abf["mamba2_hax"]["table1_row"] is None
assert sum(1 for a in dbf["architectures"] if a["table1_row"]) == 19, "19 Table 1 places in bf16-pure"
want = recompute(sys.argv[3])
for label, a in abf.items():
    assert abs(a["test_mean"] - want[label]["mean"]) < 1e-3 and a["chosen_lr"] == want[label]["lr"], label
EOF
check "--precision fp16 is a usage error" test "$("$AGG" --precision fp16 "$P" >/dev/null 2>&1; echo $?)" -eq 2

# Without --precision: one Table 1 per regime, each from its own runs only,
# in markdown (side by side and one by one), csv and json alike.
"$AGG" --format json --paper "$P" >"$tmp/pall.json" 2>/dev/null
"$AGG" --format csv --paper "$P" >"$tmp/pall.csv" 2>/dev/null
"$AGG" --paper "$P" >"$tmp/pall.md" 2>/dev/null
check "no --precision: a Table 1 per regime (json, csv, markdown agree; never averaged together)" \
    $PY - "$tmp/pall.json" "$tmp/pall.csv" "$tmp/pall.md" "$P" "$tmp" <<'EOF'
import csv, json, re, sys
sys.path.insert(0, sys.argv[5])
from gen import recompute
d = json.load(open(sys.argv[1]))
assert d["precision"] is None and d["regimes"] == ["fp32", "bf16-pure"], (d["precision"], d["regimes"])
a = {x["label"]: x for x in d["architectures"]}
assert len(a) == 38 and all(x["table1_row"] for x in a.values()), "38 placed architectures"
for label, w in recompute(sys.argv[4]).items():
    x = a[label]
    assert x["precision"] == ("bf16-pure" if label.endswith("@bf16-pure") else "fp32"), label
    assert x["n_seeds"] == 3 and abs(x["test_mean"] - w["mean"]) < 1e-3 and x["chosen_lr"] == w["lr"], label
rows = list(csv.DictReader(open(sys.argv[2])))
assert len(rows) == 38 * 3 and {r["precision"] for r in rows} == {"fp32", "bf16-pure"}
assert all(r["table1_row"] for r in rows) and all(r["paper"] for r in rows if not r["label"].startswith("samba"))
md = open(sys.argv[3]).read()
for h in ("### Table 1 by regime", "### Table 1: fp32", "### Table 1: bf16-pure"):
    assert h in md, h
assert "One Table 1 per precision regime (never averaged together): fp32, bf16-pure." in md
assert "### Other architectures" not in md
head = "|  | Mamba (paper) | Mamba fp32 | Mamba bf16-pure | Mamba2 (paper) | Mamba2 fp32 | Mamba2 bf16-pure |"
assert head in md, head
def acc(x):
    return "%.1f ± %.1f" % (x["test_mean"], x["test_std"])
want = "| +HAX | 38.0 | %s | %s | 74.3 | %s | %s |" % (acc(a["mamba_hax"]), acc(a["mamba_hax@bf16-pure"]),
                                                     acc(a["mamba2_hax"]), acc(a["mamba2_hax@bf16-pure"]))
assert want in md, want
sec = md.split("### Table 1: bf16-pure")[1].split("###")[0]
assert re.search(r"\| \+HAX \| %s \(3 seeds, lr [0-9.e-]+\) \| 38\.0 \|" % re.escape(acc(a["mamba_hax@bf16-pure"])), sec)
EOF

# --- Validation curves from metrics.csv ------------------------------------------
V=$tmp/curves
gen "
for p in (None, 'bf16-pure'):
    for s in (1, 2):
        run('$V', 'mamba2_hax' + ('@' + p if p else ''), 'mamba2', 'sign_bin_lsh+key_selection', 64, 2, 1e-3, s, 0.6, 0.5, precision=p, metrics=4)
run('$V', 'mamba2', 'mamba2', 'none', 64, 2, 1e-3, 1, 0.3, 0.3, metrics=3)
run('$V', 'mamba2', 'mamba2', 'none', 64, 2, 1e-3, 2, 0.3, 0.3, status='preempted', metrics=2)
run('$V', 'mamba', 'mamba', 'none', 64, 2, 1e-3, 1, 0.3, 0.3, metrics=2)
run('$V', 'mamba', 'mamba', 'none', 64, 2, 1e-3, 2, 0.3, 0.3, metrics=2)
run('$V', 'mamba', 'mamba', 'none', 64, 2, 1e-3, 3, 0.3, 0.3)
"
sed -i 's/^199,\(.*\),0\.3$/199,\1,abc/' "$V/mamba/lr_0.001/seed_2/metrics.csv"
"$AGG" --plot "$tmp/vplots" "$V" >/dev/null 2>"$tmp/v.err"; rc=$?
[ $rc -eq 0 ] && ok "curves: exit 0 with a malformed and a missing metrics.csv" || fail "curves: exit 0 (exit $rc)"
if grep -q "^hax: warning: .*mamba/lr_0.001/seed_2/metrics.csv: line 5: valid_acc: expected a number in \[0, 1\] or nothing, found 'abc'; no curve for this run$" "$tmp/v.err" &&
    grep -q "^hax: warning: --plot: 1 run without a metrics.csv beside result.json (first: .*mamba/lr_0.001/seed_3/result.json); no curve for it$" "$tmp/v.err"
then ok "curves: one warning line per malformed metrics.csv, one for the missing ones"; else fail "curves: warnings ($(cat "$tmp/v.err"))"; fi
check "curves.svg: one line per run with the validation points; curves_mamba2_hax.svg for its two regimes" \
    $PY - "$tmp/vplots" <<'EOF'
import os, sys, xml.etree.ElementTree as ET
d = sys.argv[1]
ns = "{http://www.w3.org/2000/svg}"
files = sorted(f for f in os.listdir(d) if f.startswith("curves"))
assert files == ["curves.svg", "curves_mamba2_hax.svg"], files
def lines(f):
    root = ET.parse(os.path.join(d, f)).getroot()
    texts = [t.text for t in root.findall(ns + "text")]
    return [(p.get("points").split(), p.get("stroke-dasharray")) for p in root.findall(ns + "polyline")], texts
pl, texts = lines("curves.svg")
want = ["mamba@fp32, lr 0.001, seed 1", "mamba2@fp32, lr 0.001, seed 1", "mamba2@fp32, lr 0.001, seed 2, preempted at step 1000",
        "mamba2_hax@fp32, lr 0.001, seed 1", "mamba2_hax@fp32, lr 0.001, seed 2",
        "mamba2_hax@bf16-pure, lr 0.001, seed 1", "mamba2_hax@bf16-pure, lr 0.001, seed 2"]
legend = [t for t in texts if "lr 0.001" in t]
assert legend == want, legend
assert [len(p) for p, _ in pl] == [2, 3, 2, 4, 4, 4, 4], [len(p) for p, _ in pl]
assert [dash for _, dash in pl][-2:] == ["6,3", "6,3"] and pl[0][1] is None, "bf16-pure dashed, fp32 solid"
pl2, texts2 = lines("curves_mamba2_hax.svg")
assert len(pl2) == 4 and any("by precision regime" in t for t in texts2), texts2
# the last validation point of mamba2_hax, seed 1: 60 % (the plot is 450 px high from y = 50)
x, y = map(float, pl[3][0][-1].split(","))
assert abs(y - (50 + 450 - 0.6 * 450)) < 0.06, y
EOF
"$AGG" --plot "$tmp/vsel" --curves mamba2_hax@bf16-pure,mamba "$V" >/dev/null 2>/dev/null
check "--curves: only the chosen runs in curves.svg (a plain label takes every regime)" $PY -c "
import xml.etree.ElementTree as ET
r = ET.parse('$tmp/vsel/curves.svg').getroot()
n = len(r.findall('{http://www.w3.org/2000/svg}polyline'))
assert n == 3, n"
"$AGG" --plot "$tmp/vnone" --curves nosuch "$V" >/dev/null 2>"$tmp/vnone.err"
if grep -q "warning: --curves nosuch: no run with validation rows matches; no curves.svg" "$tmp/vnone.err" &&
    [ ! -e "$tmp/vnone/curves.svg" ] && [ -e "$tmp/vnone/curves_mamba2_hax.svg" ]
then ok "--curves matching nothing: a warning, no curves.svg, the per-architecture files still"; else fail "--curves matching nothing"; fi
rm "$V/mamba/lr_0.001/seed_2/metrics.csv" && mkfifo "$V/mamba/lr_0.001/seed_2/metrics.csv"
timeout 10 "$AGG" --plot "$tmp/vfifo" "$V" >/dev/null 2>"$tmp/vfifo.err"; rc=$?
[ $rc -eq 0 ] && grep -q "seed_2/metrics.csv: expected a regular file, found a FIFO; no curve for this run" "$tmp/vfifo.err" &&
    ok "a FIFO metrics.csv: a warning, no hang" || fail "a FIFO metrics.csv (exit $rc: $(cat "$tmp/vfifo.err"))"
# --- Only incomplete runs: --incomplete-ok publishes them ------------------------
# (the 400,000-step headline runs, preempted at 40,000: their curves and how
# far each got, no Table 1 average)
I=$tmp/incomplete
gen "
for p in (None, 'bf16-pure'):
    f = run('$I', 'mamba2' + ('@' + p if p else ''), 'mamba2', 'none', 64, 2, 1e-3, 1, 0.3, 0.3, status='preempted',
            precision=p, metrics=3)
    r = json.load(open(f))
    r.update(steps=300, steps_planned=4000, best_step=299)
    json.dump(r, open(f, 'w'))
"
check_refused "only preempted runs, without --incomplete-ok: exit 1, one line" "found none \(2 files: 2 incomplete" "$AGG" "$I"
"$AGG" --incomplete-ok --paper --plot "$tmp/iplots" --output "$tmp/i.md" "$I" 2>"$tmp/i.err"; rc=$?
check "--incomplete-ok: exit 0 (exit $rc: $(grep -v wrote "$tmp/i.err"))" test $rc -eq 0
if grep -q "0 complete runs of 2 result files. No run is complete yet" "$tmp/i.md" &&
    grep -q "^Incomplete or failed runs (2):" "$tmp/i.md" &&
    grep -qF 'mamba2/lr_0.001/seed_1/result.json`: preempted (step 300 of 4000, best validation accuracy 30.00% at step 299)' "$tmp/i.md" &&
    grep -qF 'mamba2@bf16-pure/lr_0.001/seed_1/result.json`: preempted (step 300 of 4000, best validation accuracy 30.00% at step 299)' "$tmp/i.md"
then ok "--incomplete-ok: the table says none is complete and lists each run with how far it got"
else fail "--incomplete-ok: the table lists the runs"; cat "$tmp/i.md"; fi
check "--incomplete-ok: curves.svg and curves_mamba2.svg, no heatmap; no warning on stderr" \
    test "$(ls "$tmp/iplots" | tr '\n' ' ')" = "curves.svg curves_mamba2.svg " -a -z "$(grep -v 'wrote 2 figures' "$tmp/i.err")"
check "--incomplete-ok: the legend names the runs as preempted" grep -q "mamba2@bf16-pure, lr 0.001, seed 1, preempted at step 300" "$tmp/iplots/curves.svg"
"$AGG" --incomplete-ok --format json "$I" >"$tmp/i.json" 2>/dev/null
check "--incomplete-ok json: status and progress of each incomplete run" $PY -c "
import json
d = json.load(open('$tmp/i.json'))
assert d['n_runs'] == 0 and d['architectures'] == [], d
got = sorted((i['status'], i['progress']) for i in d['incomplete'])
assert got == [('preempted', 'step 300 of 4000, best validation accuracy 30.00% at step 299')] * 2, got"
check_fails "--incomplete-ok with only unreadable files: still exit 1" "found none \(1 files: 0 incomplete, 1 unreadable" \
    "$AGG" --incomplete-ok "$tmp/bad"

check_fails "--curves without --plot: exit 2" "--curves: expected --plot DIR with it" "$AGG" --curves mamba "$V"
check_fails "--curves with an empty label: exit 2" "--curves: expected comma-separated labels, found 'a,,b'" "$AGG" --plot "$tmp/x" --curves a,,b "$V"

finish
