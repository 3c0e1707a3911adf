#!/usr/bin/env bash
# test_published.sh: every published results folder (analysis/results/*/ and
# analysis/examples/*/ holding runs/ and tables/) has exactly the tables and
# plots that analysis/publish.sh makes from its committed runs, byte for
# byte; and the check catches a hand-edited table or plot, a stale or a
# missing file and an edited result.json (on a copy), which publish.sh then
# repairs; in a folder of runs not complete yet too (their progress in the
# footer, their curves).
source "$(dirname "$0")/lib.sh"
PUB=$ROOT/analysis/publish.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=/usr/bin/python3
[ -x "$BIN/hax-aggregate" ] || { fail "bin/hax-aggregate is built"; finish; exit 1; }

dirs=()
for d in "$ROOT"/analysis/results/*/ "$ROOT"/analysis/examples/*/; do
    [ -d "$d/runs" ] && [ -d "$d/tables" ] && dirs+=("${d%/}")
done
[ ${#dirs[@]} -gt 0 ] && ok "published folders: ${#dirs[@]}" || fail "at least one published folder (runs/ and tables/)"
for d in "${dirs[@]}"; do
    out=$(bash "$PUB" --check "$d" 2>&1); rc=$?
    [ $rc -eq 0 ] && ok "${d#"$ROOT"/}: tables and plots equal what its runs make" ||
        fail "${d#"$ROOT"/}: tables and plots equal what its runs make: $out (run analysis/publish.sh ${d#"$ROOT"/})"
done

# --- The check catches every kind of drift (on a copy) ----------------------------
# The copy: the first folder with a complete run (a number in its Table 1);
# a folder of runs not complete yet (analysis/results/headline) has none.
full="" partial=""
for d in "${dirs[@]}"; do
    if grep -q '^  "n_runs": 0,$' "$d/tables/table.json"; then [ -n "$partial" ] || partial=$d
    else [ -n "$full" ] || full=$d; fi
done
[ -n "$full" ] && ok "a published folder with complete runs: ${full#"$ROOT"/}" || { fail "a published folder with complete runs"; finish; exit 1; }
C=$tmp/copy
cp -r "$full" "$C"
# expect_drift NAME PATTERN: --check exits 1 with a line matching PATTERN; publish.sh
# then rewrites the folder and --check passes again.
expect_drift() {
    local out rc
    out=$(bash "$PUB" --check "$C" 2>&1); rc=$?
    if [ $rc -eq 1 ] && printf '%s' "$out" | grep -Eq -- "$2"; then ok "$1"; else fail "$1 (exit $rc: $out)"; fi
    bash "$PUB" "$C" >/dev/null 2>&1 && bash "$PUB" --check "$C" >/dev/null 2>&1 || fail "$1: publish.sh repairs it"
}
bash "$PUB" --check "$C" >/dev/null && ok "a copy checks as the original" || fail "a copy checks as the original"
# our first figure in a Table 1 cell ("35.4 (1 seed, lr 0.003)" or "35.4 ± 1.2 (3 seeds, ...") becomes 99.9
$PY - "$C/tables/table.md" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
u = re.sub(r"\| [0-9]+\.[0-9]( ± [0-9]+\.[0-9])? \([0-9]+ seeds?, lr", lambda m: "| 99.9" + m.group(0)[m.group(0).index(" ", 2):], t, count=1)
assert u != t
open(sys.argv[1], "w").write(u)
EOF
expect_drift "a hand-edited number in table.md" "copy/tables/table.md: differs from what runs/ makes"
first_svg=$(ls "$C/plots" | head -n 1)
sed -i 's/stroke="#e4e4e4"/stroke="#e4e4e5"/' "$C/plots/$first_svg"
expect_drift "an edited plot" "copy/plots/$first_svg: differs"
echo '<svg/>' >"$C/plots/old_figure.svg"
expect_drift "a figure that the runs no longer make" "copy/plots/old_figure.svg: expected no such file"
rm "$C/tables/table.csv"
expect_drift "a missing table" "copy/tables/table.csv: expected the committed file, found none"
# the Table 1 by the reference's test figure: made beside table.md, and checked as it is
for d in "${dirs[@]}"; do
    grep -q '^Test accuracy (%, metric test_reference)' "$d/tables/table_reference.md" &&
        ok "${d#"$ROOT"/}: table_reference.md, by the reference's test figure" ||
        fail "${d#"$ROOT"/}: table_reference.md, by the reference's test figure"
done
r=$(find "$C/runs" -name result.json | sort | head -n 1)
sed -i 's/^  "test_acc_reference": 0\.[0-9]*/  "test_acc_reference": 0.987654/' "$r"
expect_drift "an edited test_acc_reference (table_reference.md changes)" "copy/tables/table_reference.md: differs"
sed -i 's/^  "test_acc": 0\.[0-9]/  "test_acc": 0.9/' "$r"
sed -i 's/^  "test_acc": 0\.9[0-9]*,$/  "test_acc": 0.987654,/' "$r"
expect_drift "an edited result.json (the tables change)" "copy/tables/table.(md|csv|json): differs"
# edit_last_valid FOLDER: the last row of the first metrics.csv under FOLDER/runs
# gets validation accuracy 0.5 (the curves change)
edit_last_valid() {
    local m
    m=$(find "$1/runs" -name metrics.csv | sort | head -n 1)
    sed -i '$s/,\([0-9.]*\)$/,0.5/' "$m"
    printf '%s\n' "$(tail -n 1 "$m")" | grep -q ',0.5$' || sed -i '$s/$/0.5/' "$m"
}
edit_last_valid "$C"
expect_drift "an edited metrics.csv (the curves change)" "copy/plots/curves.*: differs"

# --- A folder of runs none of which is complete yet (on a copy) -----------------
# (publish.sh passes hax-aggregate --incomplete-ok): the footer's progress of
# each run and its curve are checked as the numbers of complete runs are.
if [ -n "$partial" ]; then
    rm -rf "$C" && cp -r "$partial" "$C"
    bash "$PUB" --check "$C" >/dev/null && ok "a copy of ${partial#"$ROOT"/} checks as the original" ||
        fail "a copy of ${partial#"$ROOT"/} checks as the original"
    check "${partial#"$ROOT"/}: table.md lists its runs as incomplete, with their steps" \
        grep -q '^- `runs/.*/result.json`: preempted (step [0-9]* of [0-9]*, best validation accuracy' "$C/tables/table.md"
    r=$(find "$C/runs" -name result.json | sort | head -n 1)
    sed -i 's/^  "best_valid_acc": 0\.[0-9]*,$/  "best_valid_acc": 0.987654,/' "$r"
    expect_drift "incomplete runs: an edited best_valid_acc (the footer changes)" "copy/tables/table.(md|json): differs"
    sed -i 's/^  "steps": [0-9]*,$/  "steps": 12345,/' "$r"
    expect_drift "incomplete runs: an edited steps (the footer and the legend change)" "copy/(tables/table.(md|json)|plots/curves.*): differs"
    edit_last_valid "$C"
    expect_drift "incomplete runs: an edited metrics.csv (the curves change)" "copy/plots/curves.*: differs"
fi

# --- The command line ---------------------------------------------------------
check_fails "publish.sh on a folder without runs/: exit 1" "expected a published results folder with runs/" bash "$PUB" "$tmp"
out=$(bash "$PUB" 2>&1); rc=$?
[ $rc -eq 2 ] && printf '%s' "$out" | grep -q "expected a results folder" && ok "publish.sh without a folder: exit 2" ||
    fail "publish.sh without a folder: exit 2 (exit $rc)"
finish
