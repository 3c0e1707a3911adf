// aggregate.c: grouping, learning-rate choice, seed statistics, Table 1
// placement and the footer. See aggregate.h for the rules.
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/aggregate.h"
#include "src/core/common.h"
#include "src/model/model_config.h"

// ---------------------------------------------------------------------------
// Table 1 of the paper (docs/PAPER.md): test accuracy in percent.

static const char *const col_names[TABLE1_COLS] = {"Mamba", "Mamba2"};
static const double paper[TABLE1_ROWS][TABLE1_COLS] = {
    {16.3, 36.6}, {7.8, 19.6}, {18.7, 70.6}, {16.6, 48.6}, {16.4, 49.3},
    {11.6, 13.5}, {36.6, 60.1}, {38.0, 74.3}, {34.5, 59.2}, {6.3, NAN},
};
// The sparse pattern of rows 0..7 (Base and its sparse variants); rows 8 and
// 9 are "Base (2×dim)" and "Samba". A row's name ("+SW+D") and the label
// suffix of its configs/ files ("_swd") come from the pattern's Table 1
// label in src/model/sparse_patterns.h ("SW+D").
#define PATTERN_ROWS 8
static const char *const row_pattern[PATTERN_ROWS] = {
    "none", "dilated", "sliding_window", "sliding_window+dilated", "sliding_window+sink",
    "sign_bin_lsh", "key_selection", "sign_bin_lsh+key_selection",
};

// "sliding_window+sink" -> bits; -1 for a pattern the registry refuses.
static long pattern_mask(const char *pattern) {
    unsigned mask;
    int parts;
    char err[400];
    return sparse_pattern_parse(pattern, &mask, &parts, err, sizeof err) == 0 ? (long)mask : -1;
}

static unsigned row_mask(int row) { return (unsigned)pattern_mask(row_pattern[row]); }

// "+SW+D" (name) and "_swd" (suffix) of a pattern row.
static void row_texts(int row, char *name, char *suffix, int len) {
    char label[20];  // the longest Table 1 label is "SW+D"
    sparse_pattern_label(row_mask(row), label, sizeof label);
    snprintf(name, len, "%s%s", row ? "+" : "Base", label);
    int n = snprintf(suffix, len, "%s", row ? "_" : "");
    for (const char *p = label; *p && n < len - 1; p++)
        if (*p != '+') suffix[n++] = (char)tolower((unsigned char)*p);
    suffix[n] = 0;
}

const char *table1_row_name(int row) {
    static char names[PATTERN_ROWS][32];
    if (row == 8) return "Base (2×dim)";
    if (row == 9) return "Samba";
    if (row < 0 || row >= PATTERN_ROWS) return "?";
    char suffix[32];
    row_texts(row, names[row], suffix, sizeof names[row]);
    return names[row];
}
const char *table1_col_name(int col) { return col >= 0 && col < TABLE1_COLS ? col_names[col] : "?"; }
double table1_paper(int row, int col) {
    return row >= 0 && row < TABLE1_ROWS && col >= 0 && col < TABLE1_COLS ? paper[row][col] : NAN;
}

const char *table1_label(int row, int col) {
    static char buf[TABLE1_ROWS][TABLE1_COLS][48];
    if (row < 0 || row >= TABLE1_ROWS || col < 0 || col >= TABLE1_COLS) return NULL;
    if (row == 9) return col == 0 ? "samba" : NULL;
    char name[32], suffix[32];
    if (row == 8) snprintf(suffix, sizeof suffix, "_2x");
    else row_texts(row, name, suffix, sizeof suffix);
    snprintf(buf[row][col], sizeof buf[row][col], "%s%s", col ? "mamba2" : "mamba", suffix);
    return buf[row][col];
}

int table1_place(const char *label, const char *model, const char *pattern, int hidden_size, int n_layers,
                 int sparse_keys, int *row, int *col) {
    if (!model[0]) {  // no config: the label decides (without its "@<precision>")
        size_t n = strcspn(label, "@");
        for (int r = 0; r < TABLE1_ROWS; r++)
            for (int c = 0; c < TABLE1_COLS; c++)
                if (table1_label(r, c) && strlen(table1_label(r, c)) == n && strncmp(label, table1_label(r, c), n) == 0) {
                    *row = r;
                    *col = c;
                    return 1;
                }
        return 0;
    }
    long mask = pattern_mask(pattern);
    if (mask < 0) return 0;
    if (strcmp(model, "samba") == 0) {
        // The reference config has hidden 32, the paper's text says 64.
        if (mask != 0 || (hidden_size && hidden_size != 32 && hidden_size != 64) || (n_layers && n_layers != 4))
            return 0;
        *row = 9;
        *col = 0;
        return 1;
    }
    int c = strcmp(model, "mamba") == 0 ? 0 : strcmp(model, "mamba2") == 0 ? 1 : -1;
    if (c < 0 || (n_layers && n_layers != 2)) return 0;
    if (mask && sparse_keys && sparse_keys != 64) return 0;
    if (mask == 0 && hidden_size == 128) {
        *row = 8;
        *col = c;
        return 1;
    }
    if (hidden_size && hidden_size != 64) return 0;
    for (int r = 0; r < PATTERN_ROWS; r++)
        if ((long)row_mask(r) == mask) {
            *row = r;
            *col = c;
            return 1;
        }
    return 0;
}

// ---------------------------------------------------------------------------

void summary_note(hax_note **v, int *n, const char *path, const char *fmt, ...) {
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    *v = xrealloc(*v, (size_t)(*n + 1) * sizeof **v);
    (*v)[*n].path = xstrdup(path);
    (*v)[*n].text = xstrdup(text);
    (*v)[*n].detail = NULL;
    (*n)++;
}

// How far an incomplete run got, from what its result.json says: "step 40000
// of 400000, best validation accuracy 32.94% at step 39999"; NULL when it
// says nothing of it (no steps and no validation yet).
static char *run_progress(const hax_run *r) {
    char buf[256] = "";
    int n = 0;
    if (r->steps >= 0 && r->steps_planned >= 0)
        n = snprintf(buf, sizeof buf, "step %lld of %lld", (long long)r->steps, (long long)r->steps_planned);
    else if (r->steps >= 0)
        n = snprintf(buf, sizeof buf, "step %lld", (long long)r->steps);
    if (!isnan(r->best_valid_acc)) {
        n += snprintf(buf + n, sizeof buf - (size_t)n, "%sbest validation accuracy %.2f%%", n ? ", " : "",
                      100 * r->best_valid_acc);
        if (r->best_step >= 0) snprintf(buf + n, sizeof buf - (size_t)n, " at step %lld", (long long)r->best_step);
    }
    return buf[0] ? xstrdup(buf) : NULL;
}

static void notes_free(hax_note *v, int n) {
    for (int i = 0; i < n; i++) {
        free(v[i].path);
        free(v[i].text);
        free(v[i].detail);
    }
    free(v);
}

void summary_free(hax_summary *s) {
    for (int a = 0; a < s->n_archs; a++) {
        for (int l = 0; l < s->archs[a].n_lrs; l++) {
            free(s->archs[a].lrs[l].seeds);
            free(s->archs[a].lrs[l].cells.v);
        }
        free(s->archs[a].lrs);
    }
    free(s->archs);
    notes_free(s->unreadable, s->n_unreadable);
    notes_free(s->incomplete, s->n_incomplete);
    notes_free(s->missing, s->n_missing);
    memset(s, 0, sizeof *s);
}

// ---------------------------------------------------------------------------
// Statistics

static double metric_of(const hax_run *r, hax_metric m) {
    return m == METRIC_TEST_REFERENCE ? r->test_acc_reference : r->test_acc;
}

// Mean and sample std (divisor n-1; NaN for n < 2), summed in double.
static void mean_std(const double *x, int n, double *mean, double *std) {
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++) s += x[i];
    *mean = n ? s / n : NAN;
    for (int i = 0; i < n; i++) ss += (x[i] - *mean) * (x[i] - *mean);
    *std = n >= 2 ? sqrt(ss / (n - 1)) : NAN;
}

static int cmp_cell(const void *a, const void *b) {
    const hax_cell_acc *x = a, *y = b;
    if (x->n_c != y->n_c) return x->n_c < y->n_c ? -1 : 1;
    return x->n_k < y->n_k ? -1 : x->n_k > y->n_k;
}

// Per-cell means over the runs that report the cell.
static void cell_means(const hax_run *const *runs, int n, hax_metric metric, hax_cells *out) {
    hax_cells sum = {NULL, 0};
    int *count = NULL;
    for (int i = 0; i < n; i++) {
        const hax_cells *cells = metric == METRIC_TEST_REFERENCE ? &runs[i]->test_ref_cells : &runs[i]->test_cells;
        for (int j = 0; j < cells->n; j++) {
            const hax_cell_acc *c = &cells->v[j];
            int k = 0;
            while (k < sum.n && (sum.v[k].n_c != c->n_c || sum.v[k].n_k != c->n_k)) k++;
            if (k == sum.n) {
                sum.v = xrealloc(sum.v, (size_t)(sum.n + 1) * sizeof *sum.v);
                count = xrealloc(count, (size_t)(sum.n + 1) * sizeof *count);
                sum.v[k] = (hax_cell_acc){c->n_c, c->n_k, 0};
                count[k] = 0;
                sum.n++;
            }
            sum.v[k].acc += c->acc;
            count[k]++;
        }
    }
    for (int k = 0; k < sum.n; k++) sum.v[k].acc /= count[k];
    if (sum.n) qsort(sum.v, (size_t)sum.n, sizeof *sum.v, cmp_cell);
    free(count);
    *out = sum;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Means within this distance (of fractions) tie.
#define LR_TIE 1e-9

static void choose_lr(hax_arch_stats *a) {
    a->best = 0;
    for (int l = 1; l < a->n_lrs; l++)  // ascending lr: a tie keeps the smaller
        if (a->lrs[l].valid_mean > a->lrs[a->best].valid_mean + LR_TIE) a->best = l;
}

// One architecture from its complete, distinct runs (all with this label).
static void arch_stats(hax_arch_stats *a, const hax_run *const *runs, int n, hax_metric metric) {
    const hax_run *r0 = runs[0];
    snprintf(a->label, sizeof a->label, "%s", r0->label);
    snprintf(a->model, sizeof a->model, "%s", r0->model);
    snprintf(a->pattern, sizeof a->pattern, "%s", r0->pattern);
    a->hidden_size = r0->hidden_size;
    a->n_layers = r0->n_layers;
    a->sparse_keys = r0->sparse_keys;
    double *lrs = xmalloc((size_t)n * sizeof *lrs);
    int n_lrs = 0;
    for (int i = 0; i < n; i++) {
        int k = 0;
        while (k < n_lrs && lrs[k] != runs[i]->lr) k++;
        if (k == n_lrs) lrs[n_lrs++] = runs[i]->lr;
    }
    qsort(lrs, (size_t)n_lrs, sizeof *lrs, cmp_double);
    a->lrs = xcalloc((size_t)n_lrs, sizeof *a->lrs);
    a->n_lrs = n_lrs;
    const hax_run **sel = xmalloc((size_t)n * sizeof *sel);
    double *valid = xmalloc((size_t)n * sizeof *valid), *test = xmalloc((size_t)n * sizeof *test);
    for (int l = 0; l < n_lrs; l++) {
        hax_lr_stats *st = &a->lrs[l];
        int m = 0;
        for (int i = 0; i < n; i++)
            if (runs[i]->lr == lrs[l]) sel[m++] = runs[i];
        st->lr = lrs[l];
        st->n = m;
        st->seeds = xmalloc((size_t)m * sizeof *st->seeds);
        // Sum in seed order, so the means do not depend on the walk order.
        for (int i = 0; i < m; i++) st->seeds[i] = sel[i]->seed;
        qsort(st->seeds, (size_t)m, sizeof *st->seeds, cmp_u64);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++)
                if (sel[j]->seed == st->seeds[i]) {
                    valid[i] = sel[j]->best_valid_acc;
                    test[i] = metric_of(sel[j], metric);
                }
        mean_std(valid, m, &st->valid_mean, &st->valid_std);
        mean_std(test, m, &st->test_mean, &st->test_std);
        cell_means(sel, m, metric, &st->cells);
    }
    choose_lr(a);
    free(lrs);
    free(sel);
    free(valid);
    free(test);
}

// ---------------------------------------------------------------------------
// The footer's missing seeds and learning rates.

static int has_seed(const hax_lr_stats *st, uint64_t seed) {
    for (int i = 0; i < st->n; i++)
        if (st->seeds[i] == seed) return 1;
    return 0;
}

static void find_missing(hax_summary *s) {
    // The most common number of seeds over all (architecture, lr) groups;
    // a tie goes to the larger count.
    int max_n = 0;
    for (int a = 0; a < s->n_archs; a++)
        for (int l = 0; l < s->archs[a].n_lrs; l++)
            if (s->archs[a].lrs[l].n > max_n) max_n = s->archs[a].lrs[l].n;
    int *hist = xcalloc((size_t)max_n + 1, sizeof *hist), mode = 0;
    for (int a = 0; a < s->n_archs; a++)
        for (int l = 0; l < s->archs[a].n_lrs; l++) hist[s->archs[a].lrs[l].n]++;
    for (int k = 1; k <= max_n; k++)
        if (hist[k] >= hist[mode]) mode = k;
    free(hist);

    // Every learning rate any architecture has.
    double *all = NULL;
    int n_all = 0;
    for (int a = 0; a < s->n_archs; a++)
        for (int l = 0; l < s->archs[a].n_lrs; l++) {
            int k = 0;
            while (k < n_all && all[k] != s->archs[a].lrs[l].lr) k++;
            if (k == n_all) {
                all = xrealloc(all, (size_t)(n_all + 1) * sizeof *all);
                all[n_all++] = s->archs[a].lrs[l].lr;
            }
        }
    if (n_all) qsort(all, (size_t)n_all, sizeof *all, cmp_double);

    for (int a = 0; a < s->n_archs; a++) {
        hax_arch_stats *A = &s->archs[a];
        for (int k = 0; k < n_all; k++) {
            int l = 0;
            while (l < A->n_lrs && A->lrs[l].lr != all[k]) l++;
            if (l == A->n_lrs) summary_note(&s->missing, &s->n_missing, A->label, "lr %g: no complete run", all[k]);
        }
        // Every seed of this architecture, at any learning rate.
        uint64_t *seeds = NULL;
        int n_seeds = 0;
        for (int l = 0; l < A->n_lrs; l++)
            for (int i = 0; i < A->lrs[l].n; i++) {
                int k = 0;
                while (k < n_seeds && seeds[k] != A->lrs[l].seeds[i]) k++;
                if (k < n_seeds) continue;
                seeds = xrealloc(seeds, (size_t)(n_seeds + 1) * sizeof *seeds);
                seeds[n_seeds++] = A->lrs[l].seeds[i];
            }
        if (n_seeds) qsort(seeds, (size_t)n_seeds, sizeof *seeds, cmp_u64);
        for (int l = 0; l < A->n_lrs; l++) {
            hax_lr_stats *st = &A->lrs[l];
            char list[512] = "";
            size_t len = 0;
            for (int k = 0; k < n_seeds; k++) {
                if (has_seed(st, seeds[k])) continue;
                char item[32];
                int w = snprintf(item, sizeof item, "%s%llu", len ? ", " : "", (unsigned long long)seeds[k]);
                if (len + (size_t)w < sizeof list) {
                    memcpy(list + len, item, (size_t)w + 1);
                    len += (size_t)w;
                }
            }
            if (len)
                summary_note(&s->missing, &s->n_missing, A->label, "lr %g: seed %s missing (present at another lr)",
                             st->lr, list);
            else if (st->n < mode)
                summary_note(&s->missing, &s->n_missing, A->label, "lr %g: %d seed%s, fewer than the usual %d", st->lr,
                             st->n, st->n == 1 ? "" : "s", mode);
        }
        free(seeds);
    }
    free(all);
}

// ---------------------------------------------------------------------------

static int cmp_run_ptr(const void *a, const void *b) {
    const hax_run *x = *(const hax_run *const *)a, *y = *(const hax_run *const *)b;
    int c = strcmp(x->label, y->label);
    if (c) return c;
    if (x->lr != y->lr) return x->lr < y->lr ? -1 : 1;
    if (x->seed != y->seed) return x->seed < y->seed ? -1 : 1;
    return strcmp(x->path, y->path);
}

static int cmp_arch(const void *a, const void *b) {
    const hax_arch_stats *x = a, *y = b;
    int px = x->row >= 0, py = y->row >= 0;
    if (px != py) return py - px;  // Table 1 places first, regime by regime
    int rx = regime_index(x->precision), ry = regime_index(y->precision);
    if (px && rx != ry) return rx - ry;
    if (px && x->row != y->row) return x->row - y->row;
    if (px && x->col != y->col) return x->col - y->col;
    return strcmp(x->label, y->label);
}

// Whether two runs of one label describe the same architecture.
static int same_arch(const hax_run *a, const hax_run *b) {
    return strcmp(a->model, b->model) == 0 && strcmp(a->pattern, b->pattern) == 0 && a->hidden_size == b->hidden_size &&
           a->n_layers == b->n_layers && a->sparse_keys == b->sparse_keys;
}

// A run's regime: its train.precision, fp32 when not given.
static const char *regime(const char *precision) { return precision[0] ? precision : "fp32"; }

static const char *const regime_names[N_REGIMES] = {"fp32", "bf16-pure", "bf16"};

const char *regime_name(int i) { return i >= 0 && i < N_REGIMES ? regime_names[i] : "?"; }

int regime_index(const char *precision) {
    for (int i = 0; i < N_REGIMES; i++)
        if (strcmp(regime(precision), regime_names[i]) == 0) return i;
    return -1;
}

int summary_regimes(const hax_summary *s, int out[N_REGIMES]) {
    if (s->precision[0]) {
        out[0] = regime_index(s->precision);
        return 1;
    }
    int n = 0;
    for (int i = 0; i < N_REGIMES; i++)
        for (int a = 0; a < s->n_archs; a++)
            if (s->archs[a].row >= 0 && regime_index(s->archs[a].precision) == i) {
                out[n++] = i;
                break;
            }
    if (!n) out[n++] = 0;
    return n;
}

// 1 when label is the canonical Table 1 label canon, or canon with its
// regime's "@<precision>" suffix (mamba2_hax@bf16-pure).
static int is_canon(const char *label, const char *canon) {
    size_t n = strlen(canon);
    return strncmp(label, canon, n) == 0 && (label[n] == 0 || label[n] == '@');
}

void aggregate_runs(const hax_run *runs, int n_runs, hax_summary *s) {
    const hax_run **ok = xmalloc((size_t)(n_runs ? n_runs : 1) * sizeof *ok);
    int n_ok = 0;
    for (int i = 0; i < n_runs; i++) {
        const hax_run *r = &runs[i];
        if (r->status != RUN_COMPLETE) {
            summary_note(&s->incomplete, &s->n_incomplete, r->path, "%s", r->status_name);
            s->incomplete[s->n_incomplete - 1].detail = run_progress(r);
        }
        else if (s->metric == METRIC_TEST_REFERENCE && isnan(r->test_acc_reference))
            summary_note(&s->unreadable, &s->n_unreadable, r->path,
                         "test_acc_reference: expected a number in [0, 1] (--metric test_reference), found nothing");
        else
            ok[n_ok++] = r;
    }
    if (n_ok) qsort(ok, (size_t)n_ok, sizeof *ok, cmp_run_ptr);
    // Drop duplicates of (label, lr, seed) and runs whose config differs
    // from the first run of their label.
    int m = 0;
    for (int i = 0; i < n_ok; i++) {
        const hax_run *r = ok[i];
        int first = m > 0 ? m - 1 : -1;
        while (first > 0 && strcmp(ok[first - 1]->label, r->label) == 0) first--;
        if (m > 0 && strcmp(ok[m - 1]->label, r->label) == 0 && ok[m - 1]->lr == r->lr && ok[m - 1]->seed == r->seed)
            summary_note(&s->unreadable, &s->n_unreadable, r->path, "duplicate of %s (same label, lr and seed)",
                         ok[m - 1]->path);
        else if (first >= 0 && strcmp(ok[first]->label, r->label) == 0 && !same_arch(ok[first], r))
            summary_note(&s->unreadable, &s->n_unreadable, r->path,
                         "config: model/pattern/size differ from %s, which has the same label '%s'", ok[first]->path,
                         r->label);
        else
            ok[m++] = r;
    }
    s->n_runs = m;
    // One architecture per label.
    for (int i = 0; i < m;) {
        int j = i;
        while (j < m && strcmp(ok[j]->label, ok[i]->label) == 0) j++;
        s->archs = xrealloc(s->archs, (size_t)(s->n_archs + 1) * sizeof *s->archs);
        hax_arch_stats *a = &s->archs[s->n_archs++];
        memset(a, 0, sizeof *a);
        arch_stats(a, ok + i, j - i, s->metric);
        snprintf(a->precision, sizeof a->precision, "%s", regime(ok[i]->precision));
        // Each regime has its own Table 1; with s->precision set, only that
        // one, and the others' runs are listed by label below it.
        if ((s->precision[0] && strcmp(a->precision, s->precision) != 0) ||
            !table1_place(a->label, a->model, a->pattern, a->hidden_size, a->n_layers, a->sparse_keys, &a->row,
                          &a->col))
            a->row = a->col = -1;
        i = j;
    }
    free(ok);
    // Two labels in one Table 1 place: the canonical label (or else the
    // first by name) keeps it; the other is listed below the table.
    for (int a = 0; a < s->n_archs; a++)
        for (int b = 0; b < s->n_archs; b++) {
            hax_arch_stats *A = &s->archs[a], *B = &s->archs[b];
            if (a == b || A->row < 0 || A->row != B->row || A->col != B->col || strcmp(A->precision, B->precision))
                continue;
            const char *canon = table1_label(A->row, A->col);
            int a_canon = is_canon(A->label, canon), b_canon = is_canon(B->label, canon);
            int a_wins = a_canon || (!b_canon && strcmp(A->label, B->label) < 0);
            hax_arch_stats *loser = a_wins ? B : A, *winner = a_wins ? A : B;
            summary_note(&s->missing, &s->n_missing, loser->label, "same Table 1 place (%s, %s) as '%s': listed below",
                         table1_row_name(loser->row), table1_col_name(loser->col), winner->label);
            loser->row = loser->col = -1;
        }
    if (s->n_archs) qsort(s->archs, (size_t)s->n_archs, sizeof *s->archs, cmp_arch);
    find_missing(s);
}
