// test_aggregate.c: the aggregator's parts in C: every configs/ file of
// Table 1 lands in its own place (and tiny.yaml outside), result.json
// parsing in every accepted shape and its refusals, statistics, the tie
// rule, two labels claiming one place, one Table 1 per precision regime,
// the accuracy-vs-n curve, and metrics.csv's validation curves.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/aggregate.h"
#include "analysis/curves.h"
#include "src/core/common.h"
#include "src/config/config.h"
#include "analysis/plot_svg.h"
#include "analysis/results.h"
#include "test.h"

static const char *configs_dir(void) {
    const char *d = getenv("HAX_CONFIGS");
    return d ? d : "configs";
}

// The place a loaded config gets from its model fields.
static int place_of(const hax_config *c, int *row, int *col) {
    return table1_place(c->output.arch, config_arch_name(c->model.arch), c->model.sparse_arch, c->model.hidden_size,
                        c->model.n_layers, c->model.sparse_keys, row, col);
}

static void test_configs_place(void) {
    int seen[TABLE1_ROWS][TABLE1_COLS] = {{0}};
    for (int r = 0; r < TABLE1_ROWS; r++)
        for (int c = 0; c < TABLE1_COLS; c++) {
            const char *label = table1_label(r, c);
            if (!label) continue;
            char path[1024], err[512];
            snprintf(path, sizeof path, "%s/%s.yaml", configs_dir(), label);
            hax_config cfg;
            int rc = config_load(&cfg, path, NULL, 0, err, sizeof err);
            CHECK(rc == 0, "%s: %s", path, err);
            if (rc) continue;
            char want[300];  // the Table 1 configs train in bf16-pure: their labels end in @bf16-pure
            snprintf(want, sizeof want, "%s@bf16-pure", label);
            CHECK(strcmp(cfg.output.arch, want) == 0, "%s: output.arch '%s', expected '%s'", path, cfg.output.arch, want);
            int pr = -1, pc = -1;
            CHECK(place_of(&cfg, &pr, &pc) && pr == r && pc == c, "%s: placed at (%d, %d), expected (%s, %s)", path, pr,
                  pc, table1_row_name(r), table1_col_name(c));
            if (pr >= 0 && pc >= 0) seen[pr][pc]++;
            // by label alone (a result.json without its config)
            pr = pc = -1;
            CHECK(table1_place(label, "", "", 0, 0, 0, &pr, &pc) && pr == r && pc == c, "label %s placed at (%d, %d)",
                  label, pr, pc);
        }
    int n = 0;
    for (int r = 0; r < TABLE1_ROWS; r++)
        for (int c = 0; c < TABLE1_COLS; c++) n += seen[r][c] == 1;
    CHECK(n == 19, "19 architectures fill 19 distinct places, found %d", n);
    CHECK(isnan(table1_paper(9, 1)) && table1_paper(7, 1) == 74.3 && table1_paper(0, 0) == 16.3, "paper numbers");

    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/tiny.yaml", configs_dir());
    hax_config cfg;
    CHECK(config_load(&cfg, path, NULL, 0, err, sizeof err) == 0, "tiny.yaml: %s", err);
    int r, c;
    CHECK(!place_of(&cfg, &r, &c), "tiny (hidden 16) must be outside Table 1");
    // other patterns and sizes stay outside
    CHECK(!table1_place("x", "mamba", "full", 64, 2, 64, &r, &c), "full is not in Table 1");
    CHECK(!table1_place("x", "mamba2", "argmax_lsh", 64, 2, 64, &r, &c), "argmax_lsh is not in Table 1");
    CHECK(!table1_place("x", "mamba", "sign_bin_lsh", 64, 2, 32, &r, &c), "k = 32 is not Table 1's k = 64");
    CHECK(!table1_place("x", "mamba", "none", 64, 4, 0, &r, &c), "4 layers are not Table 1's 2");
    CHECK(!table1_place("x", "mamba", "sliding_window", 128, 2, 64, &r, &c), "2x dim exists only for Base");
    CHECK(table1_place("x", "mamba2", "dilated+sliding_window", 64, 2, 64, &r, &c) && r == 3 && c == 1,
          "pattern order does not matter (+SW+D)");
    CHECK(!table1_place("x", "mamba", "sliding_window+bogus", 64, 2, 64, &r, &c), "unknown pattern component");
}

// ---------------------------------------------------------------------------

static int parse(const char *path, const char *text, hax_run *r, char *err, int errlen) {
    return results_read_text(path, text, strlen(text), r, err, errlen);
}

static void test_read_shapes(void) {
    char err[512];
    hax_run r;
    // hax-train's shape: config object, list cells
    const char *a = "{\"status\": \"complete\", \"label\": \"ignored\", \"best_valid_acc\": 0.25, \"best_step\": 499,"
                    " \"test_acc\": 0.5, \"test_acc_reference\": 0.4, \"extra\": {\"x\": [1, 2]},"
                    " \"test_cells\": [{\"n_c\": 5, \"n_k\": 7, \"n\": 100, \"acc\": 0.75}, {\"n_c\": 6, \"n_k\": 5, \"acc\": 1}],"
                    " \"config\": {\"model\": {\"arch\": \"mamba2\", \"hidden_size\": 64, \"n_layers\": 2},"
                    " \"sparse\": {\"pattern\": \"sliding_window\", \"keys\": 64}, \"train\": {\"lr\": 0.003, \"seed\": 7},"
                    " \"output\": {\"arch\": \"mamba2_sw\"}}}";
    CHECK(parse("x/result.json", a, &r, err, sizeof err) == 0, "a: %s", err);
    CHECK(r.status == RUN_COMPLETE && strcmp(r.label, "mamba2_sw") == 0 && strcmp(r.model, "mamba2") == 0 &&
              strcmp(r.pattern, "sliding_window") == 0 && r.hidden_size == 64 && r.n_layers == 2 && r.sparse_keys == 64,
          "a: architecture fields (label %s)", r.label);
    CHECK(r.lr == 0.003 && r.seed == 7 && r.best_valid_acc == 0.25 && r.test_acc == 0.5 && r.test_acc_reference == 0.4 &&
              r.best_step == 499,
          "a: numbers");
    CHECK(r.test_cells.n == 2 && r.test_cells.v[0].n_c == 5 && r.test_cells.v[0].n_k == 7 && r.test_cells.v[1].acc == 1,
          "a: cells");
    results_run_free(&r);

    // config embedded as YAML text; cells as a mapping; label, lr, seed from folders
    const char *b = "{\"status\": \"complete\", \"best_valid_acc\": 0.3, \"test_acc\": 0.2,"
                    " \"per_cell\": {\"test\": {\"5x6\": 0.5, \"7,8\": 0.25}},"
                    " \"config\": \"model:\\n  arch: mamba\\n  hidden_size: 128\\nsparse:\\n  pattern: none\\n\"}";
    CHECK(parse("res/mamba_2x/lr_0.0003/seed_3/result.json", b, &r, err, sizeof err) == 0, "b: %s", err);
    CHECK(strcmp(r.label, "mamba_2x") == 0 && r.lr == 3e-4 && r.seed == 3 && r.hidden_size == 128 &&
              strcmp(r.model, "mamba") == 0 && strcmp(r.pattern, "none") == 0,
          "b: folder fallbacks and YAML config (label %s lr %g seed %llu)", r.label, r.lr, (unsigned long long)r.seed);
    CHECK(r.test_cells.n == 2 && r.test_cells.v[1].n_c == 7 && r.test_cells.v[1].n_k == 8 && r.test_cells.v[1].acc == 0.25,
          "b: mapping cells");
    results_run_free(&r);

    // one "cells" list holding both splits; a running run with null metrics
    const char *c = "{\"status\": \"running\", \"label\": \"l\", \"lr\": 1e-3, \"seed\": 1, \"best_valid_acc\": null,"
                    " \"test_acc\": null, \"cells\": [{\"n_c\": 2, \"n_k\": 3, \"valid_acc\": 0.1, \"test_acc\": 0.2}]}";
    CHECK(parse("result.json", c, &r, err, sizeof err) == 0, "c: %s", err);
    CHECK(r.status == RUN_RUNNING && isnan(r.test_acc) && r.valid_cells.n == 1 && r.test_cells.n == 1 &&
              r.valid_cells.v[0].acc == 0.1 && r.test_cells.v[0].acc == 0.2,
          "c: combined cells, null metrics");
    CHECK(r.steps == -1 && r.steps_planned == -1, "c: no steps: -1 (found %lld, %lld)", (long long)r.steps,
          (long long)r.steps_planned);
    results_run_free(&r);

    // a preempted run: how far it got (steps of steps_planned)
    const char *d = "{\"status\": \"preempted\", \"label\": \"l\", \"lr\": 1e-3, \"seed\": 1, \"steps\": 40000,"
                    " \"steps_planned\": 400000, \"best_valid_acc\": 0.25, \"best_step\": 39999, \"test_acc\": null}";
    CHECK(parse("result.json", d, &r, err, sizeof err) == 0, "d: %s", err);
    CHECK(r.status == RUN_PREEMPTED && r.steps == 40000 && r.steps_planned == 400000 && r.best_step == 39999,
          "d: steps %lld of %lld", (long long)r.steps, (long long)r.steps_planned);
    results_run_free(&r);
}

// Each refusal names the field; expect is a prefix of the message.
static void refuse(const char *name, const char *text, const char *expect) {
    char err[512] = "";
    hax_run r;
    int rc = parse("result.json", text, &r, err, sizeof err);
    CHECK(rc == -1 && strncmp(err, expect, strlen(expect)) == 0, "%s: rc %d, message '%s', expected '%s...'", name, rc,
          err, expect);
    results_run_free(&r);
}

static void test_read_refusals(void) {
#define BASE "\"label\": \"l\", \"lr\": 0.001, \"seed\": 1, "
    refuse("not JSON", "{\"status\": ", "result.json: expected valid JSON, found a syntax error");
    refuse("empty", "", "result.json: expected a JSON object, found an empty file");
    refuse("a list", "[1, 2]", "expected a JSON object at the top");
    refuse("no status", "{" BASE "\"test_acc\": 0.5}", "status: expected complete|running|failed|preempted, found nothing");
    refuse("odd status", "{" BASE "\"status\": \"done\"}", "status: expected complete|running|failed|preempted, found 'done'");
    refuse("status a number", "{" BASE "\"status\": 3}", "status: expected complete|running|failed|preempted, found '3'");
    refuse("no test_acc", "{" BASE "\"status\": \"complete\", \"best_valid_acc\": 0.5}",
           "test_acc: expected a number in [0, 1], found nothing");
    refuse("null valid", "{" BASE "\"status\": \"complete\", \"best_valid_acc\": null, \"test_acc\": 0.5}",
           "best_valid_acc: expected a number in [0, 1], found nothing");
    refuse("quoted number", "{" BASE "\"status\": \"complete\", \"best_valid_acc\": \"0.5\", \"test_acc\": 0.5}",
           "best_valid_acc: expected a number in [0, 1], found the string '0.5'");
    refuse("percent", "{" BASE "\"status\": \"complete\", \"best_valid_acc\": 0.5, \"test_acc\": 50}",
           "test_acc: expected a number in [0, 1], found '50'");
    refuse("a list value", "{" BASE "\"status\": \"complete\", \"best_valid_acc\": [0.5], \"test_acc\": 0.5}",
           "best_valid_acc: expected a number in [0, 1], found a list");
    refuse("no lr", "{\"label\": \"l\", \"seed\": 1, \"status\": \"failed\"}", "train.lr: expected a positive number");
    refuse("no seed", "{\"label\": \"l\", \"lr\": 0.1, \"status\": \"failed\"}", "train.seed: expected an integer");
    refuse("no label", "{\"lr\": 0.1, \"seed\": 1, \"status\": \"failed\"}", "config.output.arch: expected the architecture");
    refuse("seed not integer", "{\"label\": \"l\", \"lr\": 0.1, \"seed\": 1.5, \"status\": \"failed\"}",
           "seed: expected an integer");
    refuse("hidden a string", "{" BASE "\"status\": \"failed\", \"config\": {\"model\": {\"hidden_size\": \"big\"}}}",
           "model.hidden_size: expected an integer");
    refuse("config a list", "{" BASE "\"status\": \"failed\", \"config\": [1]}", "config: expected an object");
    refuse("bad cell", "{" BASE "\"status\": \"failed\", \"test_cells\": [{\"n_c\": 2, \"acc\": 0.5}]}",
           "test_cells[0]: expected integer fields n_c and n_k");
    refuse("cell acc > 1", "{" BASE "\"status\": \"failed\", \"valid_cells\": [{\"n_c\": 2, \"n_k\": 2, \"acc\": 2}]}",
           "valid_cells[0].acc: expected a number in [0, 1]");
    refuse("bad cell key", "{" BASE "\"status\": \"failed\", \"test_cells\": {\"5by6\": 0.5}}",
           "test_cells: expected keys 'N_CxN_K'");
    refuse("steps_planned negative", "{" BASE "\"status\": \"preempted\", \"steps_planned\": -5}",
           "steps_planned: expected an integer in [0, ");
#undef BASE
}

// ---------------------------------------------------------------------------

static hax_run mk(const char *label, double lr, uint64_t seed, double valid, double test) {
    hax_run r;
    memset(&r, 0, sizeof r);
    snprintf(r.path, sizeof r.path, "%s/lr_%g/seed_%llu/result.json", label, lr, (unsigned long long)seed);
    snprintf(r.label, sizeof r.label, "%s", label);
    snprintf(r.status_name, sizeof r.status_name, "complete");
    r.lr = lr;
    r.seed = seed;
    r.best_valid_acc = valid;
    r.test_acc = test;
    r.test_acc_reference = NAN;
    return r;
}

static const hax_arch_stats *find(const hax_summary *s, const char *label) {
    for (int a = 0; a < s->n_archs; a++)
        if (strcmp(s->archs[a].label, label) == 0) return &s->archs[a];
    return NULL;
}

static void test_statistics(void) {
    hax_run runs[16];
    int n = 0;
    // mamba_ks: lr 1e-3 wins (valid 0.6 vs 0.5 vs 0.6-1e-6)
    runs[n++] = mk("mamba_ks", 1e-3, 1, 0.6, 0.1);
    runs[n++] = mk("mamba_ks", 1e-3, 2, 0.6, 0.2);
    runs[n++] = mk("mamba_ks", 1e-3, 3, 0.6, 0.6);
    runs[n++] = mk("mamba_ks", 3e-3, 1, 0.5, 0.9);
    runs[n++] = mk("mamba_ks", 3e-4, 1, 0.6 - 1e-6, 0.9);
    // mamba2: a tie within 1e-9 -> the smaller lr
    runs[n++] = mk("mamba2", 3e-3, 1, 0.7, 0.3);
    runs[n++] = mk("mamba2", 1e-3, 1, 0.7 + 1e-12, 0.4);
    // a label that claims mamba_ks's place with a config of its own
    runs[n++] = mk("my_ks", 1e-3, 1, 0.9, 0.9);
    snprintf(runs[n - 1].model, 16, "mamba");
    snprintf(runs[n - 1].pattern, 64, "key_selection");
    runs[n - 1].hidden_size = 64;
    hax_summary s;
    memset(&s, 0, sizeof s);
    aggregate_runs(runs, n, &s);
    const hax_arch_stats *ks = find(&s, "mamba_ks"), *m2 = find(&s, "mamba2"), *my = find(&s, "my_ks");
    CHECK(s.n_archs == 3 && ks && m2 && my && s.n_runs == 8, "3 architectures, 8 runs (found %d, %d)", s.n_archs, s.n_runs);
    if (!ks || !m2 || !my) return;
    const hax_lr_stats *st = &ks->lrs[ks->best];
    CHECK(ks->n_lrs == 3 && st->lr == 1e-3 && st->n == 3, "mamba_ks: chosen lr %g (n %d)", st->lr, st->n);
    CHECK(fabs(st->test_mean - 0.3) < 1e-12 && fabs(st->test_std - sqrt(0.07)) < 1e-12,
          "mamba_ks: mean %.15g std %.15g, expected 0.3 and sqrt(0.07) (sample std)", st->test_mean, st->test_std);
    CHECK(isnan(ks->lrs[0].test_std) && ks->lrs[0].lr == 3e-4, "one seed: std undefined; lrs ascending");
    CHECK(m2->lrs[m2->best].lr == 1e-3, "mamba2: a tie within 1e-9 goes to the smaller lr, got %g", m2->lrs[m2->best].lr);
    CHECK(ks->row == 6 && ks->col == 0 && m2->row == 0 && m2->col == 1 && my->row == -1,
          "places: mamba_ks (%d,%d) mamba2 (%d,%d) my_ks %d", ks->row, ks->col, m2->row, m2->col, my->row);
    CHECK(s.archs[0].row == 0 && s.archs[1].row == 6 && strcmp(s.archs[2].label, "my_ks") == 0,
          "order: Table 1 places, then the others");
    int conflict = 0, fewer = 0;
    for (int i = 0; i < s.n_missing; i++) {
        conflict += strcmp(s.missing[i].path, "my_ks") == 0 && strstr(s.missing[i].text, "same Table 1 place") != NULL;
        fewer += strcmp(s.missing[i].path, "mamba_ks") == 0 && strstr(s.missing[i].text, "seed 2, 3 missing") != NULL;
    }
    CHECK(conflict == 1, "my_ks: a footer note about the shared place");
    CHECK(fewer == 2, "mamba_ks: seeds 2, 3 missing at two lrs (%d)", fewer);
    summary_free(&s);

    // a duplicate (label, lr, seed) is not averaged twice; a config that
    // differs within one label is refused
    n = 0;
    runs[n++] = mk("a", 1e-3, 1, 0.5, 0.5);
    runs[n++] = mk("a", 1e-3, 1, 0.5, 0.1);
    runs[n++] = mk("a", 1e-3, 2, 0.5, 0.3);
    snprintf(runs[n - 1].model, 16, "mamba2");
    memset(&s, 0, sizeof s);
    aggregate_runs(runs, n, &s);
    CHECK(s.n_archs == 1 && s.archs[0].lrs[0].n == 1 && s.n_unreadable == 2, "duplicate and mixed config: %d archs, %d notes",
          s.n_archs, s.n_unreadable);
    summary_free(&s);

    // incomplete runs only: nothing averaged; each footer note says how far
    // the run got (what --incomplete-ok publishes), or nothing when unknown
    n = 0;
    runs[n] = mk("mamba2_hax", 1e-3, 1, 0.3936, NAN);
    snprintf(runs[n].status_name, sizeof runs[n].status_name, "preempted");
    runs[n].status = RUN_PREEMPTED;
    runs[n].steps = 40000;
    runs[n].steps_planned = 400000;
    runs[n++].best_step = 39999;
    runs[n] = mk("mamba2", 1e-3, 1, NAN, NAN);
    snprintf(runs[n].status_name, sizeof runs[n].status_name, "running");
    runs[n].status = RUN_RUNNING;
    runs[n].steps = runs[n].steps_planned = runs[n].best_step = -1;
    n++;
    memset(&s, 0, sizeof s);
    aggregate_runs(runs, n, &s);
    CHECK(s.n_archs == 0 && s.n_runs == 0 && s.n_incomplete == 2, "incomplete only: %d archs, %d incomplete", s.n_archs,
          s.n_incomplete);
    if (s.n_incomplete == 2) {
        const char *want = "step 40000 of 400000, best validation accuracy 39.36% at step 39999";
        CHECK(strcmp(s.incomplete[0].text, "preempted") == 0 && s.incomplete[0].detail &&
                  strcmp(s.incomplete[0].detail, want) == 0,
              "preempted: '%s' (%s), expected 'preempted' (%s)", s.incomplete[0].text,
              s.incomplete[0].detail ? s.incomplete[0].detail : "none", want);
        CHECK(strcmp(s.incomplete[1].text, "running") == 0 && !s.incomplete[1].detail, "running, nothing known: no detail");
    }
    summary_free(&s);
}

static void test_curve(void) {
    hax_cell_acc v[] = {{2, 4, 0.5}, {4, 2, 0.7}, {1, 3, 0.9}, {3, 3, 0.1}, {8, 1, 0.3}};
    hax_cells c = {v, 5};
    int *n;
    double *acc;
    int m = plot_curve(&c, &n, &acc);
    CHECK(m == 3 && n[0] == 3 && n[1] == 8 && n[2] == 9, "curve points n = 3, 8, 9");
    CHECK(m == 3 && fabs(acc[0] - 0.9) < 1e-12 && fabs(acc[1] - 0.5) < 1e-12 && fabs(acc[2] - 0.1) < 1e-12,
          "same-n cells averaged: %g %g %g", acc[0], acc[1], acc[2]);
    free(n);
    free(acc);
}

// Two regimes of the same architectures: each its own Table 1 (same
// places), never one average; --precision keeps one and lists the other.
static void test_regimes(void) {
    hax_run runs[4];
    runs[0] = mk("mamba2_hax", 1e-3, 1, 0.5, 0.5);
    runs[1] = mk("mamba2_hax@bf16-pure", 1e-3, 1, 0.3, 0.2);
    runs[2] = mk("mamba2_hax@bf16-pure", 1e-3, 2, 0.3, 0.4);
    runs[3] = mk("mamba2", 1e-3, 1, 0.3, 0.1);
    for (int i = 0; i < 4; i++) snprintf(runs[i].precision, 16, "%s", i == 1 || i == 2 ? "bf16-pure" : "fp32");
    hax_summary s;
    memset(&s, 0, sizeof s);
    aggregate_runs(runs, 4, &s);
    const hax_arch_stats *f = find(&s, "mamba2_hax"), *b = find(&s, "mamba2_hax@bf16-pure");
    CHECK(s.n_archs == 3 && f && b, "3 architectures (found %d)", s.n_archs);
    if (!f || !b) return;
    CHECK(f->row == 7 && f->col == 1 && b->row == 7 && b->col == 1 && strcmp(b->precision, "bf16-pure") == 0,
          "both regimes placed at +HAX, Mamba2 (fp32 %d,%d; bf16-pure %d,%d)", f->row, f->col, b->row, b->col);
    CHECK(f->lrs[0].n == 1 && b->lrs[0].n == 2 && fabs(b->lrs[0].test_mean - 0.3) < 1e-12,
          "never averaged together: fp32 1 run, bf16-pure 2 runs (mean %g)", b->lrs[0].test_mean);
    CHECK(s.n_missing == 0 || strstr(s.missing[0].text, "same Table 1 place") == NULL, "no shared-place note");
    int reg[N_REGIMES], n = summary_regimes(&s, reg);
    CHECK(n == 2 && reg[0] == 0 && reg[1] == 1, "regimes: fp32 then bf16-pure (%d)", n);
    CHECK(strcmp(s.archs[0].label, "mamba2") == 0 && strcmp(s.archs[1].label, "mamba2_hax") == 0 &&
              strcmp(s.archs[2].label, "mamba2_hax@bf16-pure") == 0,
          "order: fp32's places, then bf16-pure's");
    summary_free(&s);
    memset(&s, 0, sizeof s);
    snprintf(s.precision, sizeof s.precision, "bf16-pure");
    aggregate_runs(runs, 4, &s);
    f = find(&s, "mamba2_hax");
    b = find(&s, "mamba2_hax@bf16-pure");
    CHECK(f && b && f->row == -1 && b->row == 7, "--precision bf16-pure: only its Table 1");
    n = summary_regimes(&s, reg);
    CHECK(n == 1 && reg[0] == 1, "--precision: one regime");
    summary_free(&s);
    CHECK(regime_index("") == 0 && regime_index("bf16") == 2 && regime_index("fp16") == -1, "regime_index");
}

// metrics.csv as hax-train writes it, and each refusal's message.
static void test_metrics(void) {
    hax_point *v;
    char err[512];
    const char *ok = "step,loss,gate_loss,train_acc,lr,valid_acc\n"
                     "50,4.5,1.2,0.01,0.001,\n99,4.1,1.1,0.02,0.001,0.125\n100,4,1,0.03,0.001,\n\n"
                     "199,3.9,1,0.05,0.001,1\n";
    int n = metrics_read_text(ok, strlen(ok), &v, err, sizeof err);
    CHECK(n == 2 && v[0].step == 99 && v[0].acc == 0.125 && v[1].step == 199 && v[1].acc == 1,
          "validation rows only: %d (%s)", n, n < 0 ? err : "");
    free(v);
    n = metrics_read_text("step,valid_acc\n", 15, &v, err, sizeof err);
    CHECK(n == 0 && !v, "no validation yet: 0 points");
    static const struct {
        const char *text, *expect;
    } bad[] = {
        {"", "line 1: expected a header with the columns step and valid_acc"},
        {"step,loss\n1,2\n", "line 1: expected a header with the columns step and valid_acc"},
        {"step,valid_acc\n1,0.5,7\n", "line 2: expected 2 comma-separated fields, found 3"},
        {"step,valid_acc\n5,0.5\n5,0.6\n", "line 3: step: expected an integer above 5 (the row before), found '5'"},
        {"step,valid_acc\nx,0.5\n", "line 2: step: expected an integer above -1"},
        {"step,valid_acc\n1,\n\n2,50\n", "line 4: valid_acc: expected a number in [0, 1] or nothing, found '50'"},
        {"step,valid_acc\n1,nan\n", "line 2: valid_acc: expected a number in [0, 1] or nothing, found 'nan'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        n = metrics_read_text(bad[i].text, strlen(bad[i].text), &v, err, sizeof err);
        CHECK(n == -1 && !v && strncmp(err, bad[i].expect, strlen(bad[i].expect)) == 0, "bad %zu: %d '%s', expected '%s'",
              i, n, err, bad[i].expect);
    }
    CHECK(metrics_read_text("step,valid_acc\n\0", 16, &v, err, sizeof err) == -1 && strstr(err, "NUL"), "NUL byte");
    CHECK(metrics_read_file("/nonexistent/metrics.csv", &v, err, sizeof err) == -1 && strcmp(err, "missing") == 0,
          "a missing file says so");
    hax_curve c;
    memset(&c, 0, sizeof c);
    snprintf(c.base, sizeof c.base, "mamba2_hax");
    snprintf(c.precision, sizeof c.precision, "bf16-pure");
    snprintf(c.status, sizeof c.status, "preempted");
    c.lr = 1e-3;
    c.seed = 2;
    c.steps = 12000;
    char name[200];
    curve_name(&c, name, sizeof name);
    CHECK(strcmp(name, "mamba2_hax@bf16-pure, lr 0.001, seed 2, preempted at step 12000") == 0, "curve_name: %s", name);
}

int main(void) {
    RUN(test_configs_place);
    RUN(test_read_shapes);
    RUN(test_read_refusals);
    RUN(test_statistics);
    RUN(test_curve);
    RUN(test_regimes);
    RUN(test_metrics);
    return test_summary();
}
