// hax-aggregate: results tree -> the paper's Table 1 (and plots).
//
//   hax-aggregate [--format markdown|csv|json] [--paper] [--plot DIR] [--curves LABELS]
//                 [--metric test|test_reference] [--precision P] [--output FILE]
//                 [--stale-after SECONDS] [--incomplete-ok] RESULTS_DIR
//
// Reads every result.json under RESULTS_DIR, averages complete runs over
// seeds per (architecture label, lr), picks each architecture's lr by mean
// validation accuracy and prints the table on stdout, one Table 1 per
// precision regime (or the one --precision names). Exit 0 when something
// was aggregated (a footer may list what was not), 1 when nothing was (or
// the folder is missing), 2 for a bad command line. With --incomplete-ok, a
// folder of runs none of which is complete yet (the 400,000-step headline
// runs, preempted at 40,000) is not an error: the footer lists them with how
// far they got, and --plot draws their curves.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "analysis/aggregate.h"
#include "analysis/curves.h"
#include "src/core/common.h"
#include "analysis/plot_svg.h"
#include "analysis/results.h"
#include "analysis/table.h"

static void usage(FILE *out) {
    fputs("usage: hax-aggregate [--format markdown|csv|json] [--paper] [--plot DIR] [--curves LABELS]\n"
          "                     [--metric test|test_reference] [--precision P] [--output FILE] [--stale-after SECONDS]\n"
          "                     [--incomplete-ok] RESULTS_DIR\n"
          "  Reads RESULTS_DIR/**/result.json, averages complete runs over seeds, picks each\n"
          "  architecture's learning rate by mean validation accuracy (ties: the smaller lr)\n"
          "  and prints the paper's Table 1 (test accuracy %, mean ± sample std) on stdout,\n"
          "  one per precision regime (fp32, bf16-pure, bf16) present.\n"
          "  --format   markdown (default), csv (one row per architecture and lr; the footer\n"
          "             goes to stderr) or json (everything, footer included)\n"
          "  --paper    add the paper's Table 1 numbers beside ours\n"
          "  --plot DIR write acc_vs_n.svg and heatmap_<label>.svg into DIR, and from each run's\n"
          "             metrics.csv curves.svg (validation accuracy against step, one line per run)\n"
          "             and curves_<label>.svg per architecture with runs in several regimes\n"
          "  --curves   the runs of curves.svg: comma-separated labels (mamba2_hax: every regime;\n"
          "             mamba2_hax@bf16-pure: that one); default: every run\n"
          "  --metric   test (default: test_acc) or test_reference (test_acc_reference,\n"
          "             the reference code's figure)\n"
          "  --output   write the table into FILE atomically instead of stdout (an existing\n"
          "             FILE is kept when nothing can be aggregated)\n"
          "  --precision fp32, bf16 or bf16-pure: only this regime's Table 1 (the other\n"
          "             regimes' runs are listed below it); default: one Table 1 per regime\n"
          "  --stale-after  a 'running' result.json whose heartbeat (unix seconds) is older\n"
          "             than this is reported as 'stale': no live process (default 900; 0: never)\n"
          "  --incomplete-ok  no complete run is not an error when some runs are incomplete\n"
          "             (preempted, running, failed): the table lists them with the steps done and\n"
          "             their best validation accuracy, and --plot draws their curves (exit 0)\n",
          out);
}

int main(int argc, char **argv) {
    const char *format = "markdown", *plot_dir = NULL, *dir = NULL, *output = NULL, *curves_sel = NULL;
    int paper = 0, incomplete_ok = 0;
    double stale_after = 900;
    hax_summary s;
    memset(&s, 0, sizeof s);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--paper") == 0) {
            paper = 1;
        } else if (strcmp(a, "--incomplete-ok") == 0) {
            incomplete_ok = 1;
        } else if (strcmp(a, "--format") == 0 && has_value) {
            format = argv[++i];
            if (strcmp(format, "markdown") && strcmp(format, "csv") && strcmp(format, "json"))
                hax_die_code(HAX_EXIT_USAGE, "--format: expected markdown, csv or json, found '%s'", format);
        } else if ((strcmp(a, "--output") == 0 || strcmp(a, "-o") == 0) && has_value) {
            output = argv[++i];
        } else if (strcmp(a, "--plot") == 0 && has_value) {
            plot_dir = argv[++i];
        } else if (strcmp(a, "--curves") == 0 && has_value) {
            curves_sel = argv[++i];
            if (!curves_sel[0] || curves_sel[0] == ',' || strstr(curves_sel, ",,") ||
                curves_sel[strlen(curves_sel) - 1] == ',')
                hax_die_code(HAX_EXIT_USAGE, "--curves: expected comma-separated labels, found '%s'", curves_sel);
        } else if (strcmp(a, "--metric") == 0 && has_value) {
            const char *m = argv[++i];
            if (strcmp(m, "test") == 0) s.metric = METRIC_TEST;
            else if (strcmp(m, "test_reference") == 0) s.metric = METRIC_TEST_REFERENCE;
            else hax_die_code(HAX_EXIT_USAGE, "--metric: expected test or test_reference, found '%s'", m);
        } else if (strcmp(a, "--precision") == 0 && has_value) {
            const char *p = argv[++i];
            if (strcmp(p, "fp32") && strcmp(p, "bf16") && strcmp(p, "bf16-pure"))
                hax_die_code(HAX_EXIT_USAGE, "--precision: expected fp32, bf16 or bf16-pure, found '%s'", p);
            snprintf(s.precision, sizeof s.precision, "%s", p);
        } else if (strcmp(a, "--stale-after") == 0 && has_value) {
            const char *v = argv[++i];
            char *end;
            stale_after = strtod(v, &end);
            if (!v[0] || *end || !(stale_after >= 0 && stale_after <= 1e9))
                hax_die_code(HAX_EXIT_USAGE, "--stale-after: expected seconds in [0, 1e9], found '%s'", v);
        } else if (a[0] == '-' && a[1]) {
            hax_die_code(HAX_EXIT_USAGE, "%s: expected --format, --paper, --plot DIR, --curves, --metric, --output FILE, "
                         "--precision P, --stale-after SECONDS, --incomplete-ok or --help%s", a,
                         has_value ? "" : " (or a missing value)");
        } else if (dir) {
            hax_die_code(HAX_EXIT_USAGE, "expected one RESULTS_DIR, found '%s' and '%s'", dir, a);
        } else {
            dir = a;
        }
    }
    if (!dir) {
        usage(stderr);
        return HAX_EXIT_USAGE;
    }
    if (curves_sel && !plot_dir) hax_die_code(HAX_EXIT_USAGE, "--curves: expected --plot DIR with it, found none");

    int tty = hax_stderr_is_tty();
    char err[1024];
    char **paths;
    int n = results_find(dir, &paths, tty, err, sizeof err);
    if (n < 0) hax_die("%s", err);
    hax_run *runs = xcalloc((size_t)(n ? n : 1), sizeof *runs);
    int n_read = 0;
    double t0 = hax_now(), last = t0;
    for (int i = 0; i < n; i++) {
        if (tty && hax_now() - last > 0.2) {  // progress on a large tree
            fprintf(stderr, "\r\033[Kreading result files: %d/%d", i, n);
            last = hax_now();
        }
        if (results_read_file(paths[i], &runs[n_read], err, sizeof err) == 0)
            results_mark_stale(&runs[n_read++], (double)time(NULL), stale_after);
        else {
            summary_note(&s.unreadable, &s.n_unreadable, paths[i], "%s", err);
            results_run_free(&runs[n_read]);
        }
        free(paths[i]);
    }
    if (tty && last > t0) fputs("\r\033[K", stderr);
    free(paths);
    s.n_files = n;
    aggregate_runs(runs, n_read, &s);
    // Only incomplete runs (and --incomplete-ok): tables of the footer alone, and their curves.
    int only_incomplete = s.n_archs == 0 && incomplete_ok && s.n_incomplete > 0;
    hax_curves curves = {NULL, 0};
    if (plot_dir && (s.n_archs || only_incomplete)) curves_load(runs, n_read, curves_sel, &curves);
    for (int i = 0; i < n_read; i++) results_run_free(&runs[i]);
    free(runs);

    if (s.n_archs == 0 && !only_incomplete) {  // one line: the counts and the first file not averaged
        if (n == 0) hax_die("%s: expected result.json files under the folder, found none", dir);
        const hax_note *first = s.n_unreadable ? &s.unreadable[0] : s.n_incomplete ? &s.incomplete[0] : NULL;
        hax_die("%s: expected at least one complete, readable result.json, found none (%d files: %d incomplete, %d "
                "unreadable%s%s%s%s)",
                dir, n, s.n_incomplete, s.n_unreadable, first ? "; first: " : "", first ? first->path : "",
                first ? ": " : "", first ? first->text : "");
    }
    // The table goes to memory first: --output writes it whole or not at all.
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) hax_die("cannot allocate the table");
    if (strcmp(format, "csv") == 0) {
        table_csv(mem, &s, paper);
        table_footer_lines(stderr, &s, "hax-aggregate: ");
    } else if (strcmp(format, "json") == 0) {
        table_json(mem, &s, paper);
    } else {
        table_markdown(mem, &s, paper);
    }
    fclose(mem);
    if (output) {
        if (hax_write_file_atomic(output, text, len) != 0) hax_die("%s: cannot write the table: %s", output, strerror(errno));
    } else if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
        hax_die("stdout: cannot write the table");
    }
    free(text);
    if (plot_dir) {
        int w = plot_write_all(plot_dir, &s, err, sizeof err);
        if (w < 0) hax_die("--plot: %s", err);
        int wc = plot_write_curves(plot_dir, &curves, err, sizeof err);
        if (wc < 0) hax_die("--plot: %s", err);
        if (w == 0 && s.n_archs)  // incomplete runs have no test cells: nothing to warn of
            hax_warn("--plot %s: no run reports per-cell accuracies; no heatmap written", plot_dir);
        if (wc == 0) hax_warn("--plot %s: no run has validation rows in a metrics.csv; no curve written", plot_dir);
        if (w + wc) fprintf(stderr, "hax-aggregate: wrote %d figure%s into %s\n", w + wc, w + wc == 1 ? "" : "s", plot_dir);
    }
    curves_free(&curves);
    summary_free(&s);
    return 0;
}
