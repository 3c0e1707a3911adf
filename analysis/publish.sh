#!/usr/bin/env bash
# publish.sh [--check] DIR...: a published results folder's tables and plots,
# made from its runs by hax-aggregate, so that they can never drift from
# their data.
#
#   DIR/runs/<arch>/lr_<lr>/seed_<seed>/result.json, metrics.csv  the runs (committed)
#   DIR/tables/table.md, table.csv, table.json                    made here (committed)
#   DIR/tables/table_reference.md     the same Table 1 by the reference's test figure
#        (test_acc_reference: the best weights' hidden states times the final step's
#        embedding, quirk 1), as the paper's numbers were scored
#   DIR/plots/*.svg                                               made here (committed)
#   DIR/curves                                                    optional: the labels of
#        plots/curves.svg, comma-separated, on one line (hax-aggregate --curves)
#
#   analysis/publish.sh analysis/results/table1          (re)make tables/ and plots/
#   analysis/publish.sh --check analysis/results/table1  make them aside and compare byte for byte
#
# The tables are hax-aggregate --paper --stale-after 0 (no dependence on the
# clock) --incomplete-ok (a folder of runs not complete yet, such as the
# 400,000-step headline runs preempted on the way, is published: the tables
# list each run with the steps done and its best validation accuracy, the
# plots draw its curve) in markdown, csv and json, run inside DIR on "runs",
# so the paths in them do not depend on where the checkout is. Writing replaces tables/ and
# plots/ whole (a figure that is no longer made disappears). --check exits
# 1 and names every file that differs, is missing or is not made any more.
# Environment: HAX_AGGREGATE (default: bin/hax-aggregate of this checkout).
set -u

fail() { echo "publish.sh: error: $*" >&2; exit 1; }
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
agg=${HAX_AGGREGATE:-$root/bin/hax-aggregate}
check=0
dirs=()
for a in "$@"; do
    case $a in
    -h | --help) sed -n '2,/^set -u/p' "$0" | grep -v '^set -u' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --check) check=1 ;;
    -*) echo "publish.sh: unknown option '$a' (expected --check or --help)" >&2; exit 2 ;;
    *) dirs+=("$a") ;;
    esac
done
[ ${#dirs[@]} -gt 0 ] || { echo "publish.sh: expected a results folder (DIR with runs/), found none" >&2; exit 2; }
[ -x "$agg" ] || fail "$agg: expected the hax-aggregate program (run make), found none"

# make DIR OUT: the tables and plots of DIR/runs into OUT/tables, OUT/plots.
make_into() {
    local dir=$1 out=$2 sel=() f
    if [ -f "$dir/curves" ]; then
        local labels
        labels=$(tr -d ' \n' <"$dir/curves")
        [ -n "$labels" ] && sel=(--curves "$labels")
    fi
    mkdir -p "$out/tables" || return 1
    (
        cd "$dir" || exit 1
        "$agg" --paper --stale-after 0 --incomplete-ok --plot "$out/plots" "${sel[@]+"${sel[@]}"}" --output "$out/tables/table.md" runs &&
            "$agg" --paper --stale-after 0 --incomplete-ok --format csv --output "$out/tables/table.csv" runs 2>/dev/null &&
            "$agg" --paper --stale-after 0 --incomplete-ok --format json --output "$out/tables/table.json" runs &&
            "$agg" --paper --stale-after 0 --incomplete-ok --metric test_reference --output "$out/tables/table_reference.md" runs
    ) 2> >(grep -v '^hax-aggregate: wrote ' >&2)
}

status=0
for dir in "${dirs[@]}"; do
    dir=${dir%/}
    [ -d "$dir/runs" ] || fail "$dir: expected a published results folder with runs/, found no runs/ folder"
    abs=$(cd "$dir" && pwd)
    tmp=$(mktemp -d) || fail "cannot create a temporary folder"
    if ! make_into "$abs" "$tmp"; then
        rm -rf "$tmp"
        fail "$dir: hax-aggregate failed on runs/ (message above)"
    fi
    if [ $check = 0 ]; then
        rm -rf "$abs/tables" "$abs/plots"
        mv "$tmp/tables" "$abs/tables" && { [ ! -d "$tmp/plots" ] || mv "$tmp/plots" "$abs/plots"; } ||
            fail "$dir: cannot move the new tables and plots in"
        echo "publish.sh: $dir: wrote $(ls "$abs/tables" | wc -l) tables and $(ls "$abs/plots" 2>/dev/null | wc -l) plots"
        rm -rf "$tmp"
        continue
    fi
    bad=0
    for sub in tables plots; do
        for f in "$tmp/$sub"/*; do
            [ -f "$f" ] || continue
            name=$sub/$(basename "$f")
            if [ ! -f "$abs/$name" ]; then echo "publish.sh: $dir/$name: expected the committed file, found none"; bad=1
            elif ! cmp -s "$f" "$abs/$name"; then
                echo "publish.sh: $dir/$name: differs from what runs/ makes ($(cmp "$f" "$abs/$name" 2>&1 | sed 's/^.*differ: //'))"
                bad=1
            fi
        done
        for f in "$abs/$sub"/*; do
            [ -e "$f" ] || continue
            name=$sub/$(basename "$f")
            [ -f "$tmp/$name" ] || { echo "publish.sh: $dir/$name: expected no such file, found one that runs/ does not make"; bad=1; }
        done
    done
    rm -rf "$tmp"
    if [ $bad = 0 ]; then echo "publish.sh: $dir: tables and plots equal what runs/ makes"; else status=1; fi
done
exit $status
