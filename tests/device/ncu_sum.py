#!/usr/bin/env python3
# tests/device/ncu_sum.py: the per-kernel breakdown of a Nsight Compute CSV (test-side tool).
# usage: ncu_sum.py FILE.csv [STEPS]  where FILE.csv comes from
#   ncu --metrics gpu__time_duration.sum --csv --print-units base build/gpu/bench_gpu --only NAME --reps R --eval 0
# (tests/device/stages.sh, stage profile). Prints each kernel's total time, launches and share, the
# heaviest first, and the sum; with STEPS (bench_gpu's steps: its 3 warm-up steps + R) also per step.
import csv, re, sys
from collections import defaultdict


def rows(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own log lines before the table
    return csv.DictReader(lines)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: ncu_sum.py FILE.csv [STEPS]")
    steps = float(sys.argv[2]) if len(sys.argv) == 3 else 0.0
    total_ns, launches = defaultdict(float), defaultdict(int)
    for r in rows(sys.argv[1]):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = re.sub(r"^void |[(<].*", "", r["Kernel Name"]).strip()  # drop void, arguments, template parameters
        total_ns[name] += float(r["Metric Value"].replace(",", ""))
        launches[name] += 1
    if not total_ns:
        sys.exit(f"{sys.argv[1]}: expected rows of gpu__time_duration.sum, found none")
    grand = sum(total_ns.values())
    per = f"  {'ms/step':>8}" if steps else ""
    print(f"{'kernel':48} {'total ms':>9} {'launches':>8} {'share':>6}{per}")
    for name, ns in sorted(total_ns.items(), key=lambda kv: -kv[1]):
        extra = f"  {ns / 1e6 / steps:8.3f}" if steps else ""
        print(f"{name[:48]:48} {ns / 1e6:9.3f} {launches[name]:8d} {100 * ns / grand:5.1f}%{extra}")
    extra = f"  {grand / 1e6 / steps:8.3f}" if steps else ""
    print(f"{'all kernels':48} {grand / 1e6:9.3f} {sum(launches.values()):8d} {100.0:5.1f}%{extra}")


if __name__ == "__main__":
    main()
