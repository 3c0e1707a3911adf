// table.c: Markdown, CSV and JSON renderings of an aggregated summary.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/table.h"

static const char *metric_name(hax_metric m) { return m == METRIC_TEST_REFERENCE ? "test_reference" : "test"; }

// "38.0 ± 1.2" (percent, one decimal); "38.0" for one seed.
static void fmt_acc(char *buf, size_t n, double mean, double std) {
    if (isnan(std)) snprintf(buf, n, "%.1f", 100 * mean);
    else snprintf(buf, n, "%.1f ± %.1f", 100 * mean, 100 * std);
}

static const hax_lr_stats *chosen(const hax_arch_stats *a) { return &a->lrs[a->best]; }

// The architecture in a place of one regime's Table 1 (regime: its index).
static const hax_arch_stats *at_place(const hax_summary *s, int regime, int row, int col) {
    for (int a = 0; a < s->n_archs; a++)
        if (s->archs[a].row == row && s->archs[a].col == col && regime_index(s->archs[a].precision) == regime)
            return &s->archs[a];
    return NULL;
}

static void md_paper(FILE *out, int row, int col) {
    double p = table1_paper(row, col);
    if (isnan(p)) fputs(" – |", out);
    else fprintf(out, " %.1f |", p);
}

// ---------------------------------------------------------------------------
// Markdown

static void md_cell(FILE *out, const hax_arch_stats *a) {
    if (!a) {
        fputs(" – |", out);
        return;
    }
    const hax_lr_stats *st = chosen(a);
    char acc[64];
    fmt_acc(acc, sizeof acc, st->test_mean, st->test_std);
    fprintf(out, " %s (%d seed%s, lr %g) |", acc, st->n, st->n == 1 ? "" : "s", st->lr);
}

// One regime's Table 1: mean ± std (seeds, lr) per place, the paper's beside.
static void md_table1(FILE *out, const hax_summary *s, int paper, int regime) {
    fputs("|  |", out);
    for (int c = 0; c < TABLE1_COLS; c++) {
        fprintf(out, " %s |", table1_col_name(c));
        if (paper) fprintf(out, " %s (paper) |", table1_col_name(c));
    }
    fputs("\n|---|", out);
    for (int c = 0; c < TABLE1_COLS * (paper ? 2 : 1); c++) fputs("---|", out);
    fputc('\n', out);
    for (int r = 0; r < TABLE1_ROWS; r++) {
        fprintf(out, "| %s |", table1_row_name(r));
        for (int c = 0; c < TABLE1_COLS; c++) {
            md_cell(out, at_place(s, regime, r, c));
            if (paper) md_paper(out, r, c);
        }
        fputc('\n', out);
    }
}

// Every regime side by side, means ± std only: per column the paper's
// number (with --paper), then ours in each regime.
static void md_by_regime(FILE *out, const hax_summary *s, int paper, const int *reg, int n_reg) {
    fputs("|  |", out);
    for (int c = 0; c < TABLE1_COLS; c++) {
        if (paper) fprintf(out, " %s (paper) |", table1_col_name(c));
        for (int k = 0; k < n_reg; k++) fprintf(out, " %s %s |", table1_col_name(c), regime_name(reg[k]));
    }
    fputs("\n|---|", out);
    for (int c = 0; c < TABLE1_COLS * (n_reg + (paper ? 1 : 0)); c++) fputs("---|", out);
    fputc('\n', out);
    for (int r = 0; r < TABLE1_ROWS; r++) {
        fprintf(out, "| %s |", table1_row_name(r));
        for (int c = 0; c < TABLE1_COLS; c++) {
            if (paper) md_paper(out, r, c);
            for (int k = 0; k < n_reg; k++) {
                const hax_arch_stats *a = at_place(s, reg[k], r, c);
                char acc[64] = "–";
                if (a) fmt_acc(acc, sizeof acc, chosen(a)->test_mean, chosen(a)->test_std);
                fprintf(out, " %s |", acc);
            }
        }
        fputc('\n', out);
    }
}

static void md_others(FILE *out, const hax_summary *s) {
    fputs("| architecture | model | pattern | hidden | test acc (%) | seeds | lr |\n", out);
    fputs("|---|---|---|---|---|---|---|\n", out);
    for (int i = 0; i < s->n_archs; i++) {
        const hax_arch_stats *a = &s->archs[i];
        if (a->row >= 0) continue;
        const hax_lr_stats *st = chosen(a);
        char acc[64], hidden[16];
        fmt_acc(acc, sizeof acc, st->test_mean, st->test_std);
        if (a->hidden_size) snprintf(hidden, sizeof hidden, "%d", a->hidden_size);
        else snprintf(hidden, sizeof hidden, "?");
        fprintf(out, "| %s | %s | %s | %s | %s | %d | %g |\n", a->label, a->model[0] ? a->model : "?",
                a->pattern[0] ? a->pattern : "?", hidden, acc, st->n, st->lr);
    }
}

static void md_lrs(FILE *out, const hax_summary *s) {
    fputs("| architecture | lr | seeds | valid acc (%) | test acc (%) | chosen |\n", out);
    fputs("|---|---|---|---|---|---|\n", out);
    for (int i = 0; i < s->n_archs; i++) {
        const hax_arch_stats *a = &s->archs[i];
        for (int l = 0; l < a->n_lrs; l++) {
            const hax_lr_stats *st = &a->lrs[l];
            char valid[64], test[64], seeds[256] = "";
            size_t len = 0;
            for (int k = 0; k < st->n && len + 24 < sizeof seeds; k++)
                len += (size_t)snprintf(seeds + len, sizeof seeds - len, "%s%llu", k ? "," : "",
                                        (unsigned long long)st->seeds[k]);
            fmt_acc(valid, sizeof valid, st->valid_mean, st->valid_std);
            fmt_acc(test, sizeof test, st->test_mean, st->test_std);
            fprintf(out, "| %s | %g | %d (%s) | %s | %s | %s |\n", a->label, st->lr, st->n, seeds, valid, test,
                    l == a->best ? "yes" : "");
        }
    }
}

static void md_notes(FILE *out, const char *title, const hax_note *v, int n) {
    if (!n) return;
    fprintf(out, "\n%s (%d):\n\n", title, n);
    for (int i = 0; i < n; i++) {
        fprintf(out, "- `%s`: %s", v[i].path, v[i].text);
        if (v[i].detail) fprintf(out, " (%s)", v[i].detail);
        fputc('\n', out);
    }
}

void table_markdown(FILE *out, const hax_summary *s, int paper) {
    int placed = 0, others = 0;
    for (int a = 0; a < s->n_archs; a++) {
        if (s->archs[a].row >= 0) placed++;
        else others++;
    }
    int reg[N_REGIMES], n_reg = summary_regimes(s, reg);
    fprintf(out, "Test accuracy (%%, metric %s): mean ± sample std (n-1) over seeds, at the learning rate with the best "
                 "mean validation accuracy (ties: the smaller lr). %d complete runs of %d result files. ",
            metric_name(s->metric), s->n_runs, s->n_files);
    if (s->n_runs == 0) {  // hax-aggregate --incomplete-ok
        fputs("No run is complete yet, so Table 1 has none of ours; the runs are listed below with how far they "
              "got.\n", out);
    } else if (n_reg == 1) {
        fprintf(out, "Table 1 holds the %s runs.\n", regime_name(reg[0]));
    } else {
        fputs("One Table 1 per precision regime (never averaged together):", out);
        for (int k = 0; k < n_reg; k++) fprintf(out, "%s %s", k ? "," : "", regime_name(reg[k]));
        fputs(".\n", out);
    }
    if ((placed || paper) && n_reg == 1) {
        fputs("\n### Table 1\n\n", out);
        md_table1(out, s, paper, reg[0]);
    } else if (placed || paper) {
        fputs("\n### Table 1 by regime\n\n", out);
        md_by_regime(out, s, paper, reg, n_reg);
        for (int k = 0; k < n_reg; k++) {
            fprintf(out, "\n### Table 1: %s\n\n", regime_name(reg[k]));
            md_table1(out, s, paper, reg[k]);
        }
    }
    if (others) {
        fputs("\n### Other architectures\n\n", out);
        md_others(out, s);
    }
    fputs("\n### Every learning rate\n\n", out);
    md_lrs(out, s);
    if (!s->n_incomplete && !s->n_missing && !s->n_unreadable) {
        fprintf(out, "\nAll %d result files were complete and averaged; no seed is missing.\n", s->n_files);
        return;
    }
    fputs("\n### Not averaged\n", out);
    md_notes(out, "Incomplete or failed runs", s->incomplete, s->n_incomplete);
    md_notes(out, "Missing seeds or learning rates", s->missing, s->n_missing);
    md_notes(out, "Unreadable result files", s->unreadable, s->n_unreadable);
}

void table_footer_lines(FILE *out, const hax_summary *s, const char *prefix) {
    for (int i = 0; i < s->n_incomplete; i++) {
        const hax_note *v = &s->incomplete[i];
        fprintf(out, "%sincomplete: %s: %s", prefix, v->path, v->text);
        if (v->detail) fprintf(out, " (%s)", v->detail);
        fputc('\n', out);
    }
    for (int i = 0; i < s->n_missing; i++)
        fprintf(out, "%smissing: %s: %s\n", prefix, s->missing[i].path, s->missing[i].text);
    for (int i = 0; i < s->n_unreadable; i++)
        fprintf(out, "%sunreadable: %s: %s\n", prefix, s->unreadable[i].path, s->unreadable[i].text);
}

// ---------------------------------------------------------------------------
// CSV: one row per (architecture, learning rate); percent with 4 decimals;
// an undefined std is an empty field. Labels never hold commas or quotes in
// practice, but are quoted when they do.

static void csv_str(FILE *out, const char *s) {
    if (!strpbrk(s, ",\"\n")) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '"') fputc('"', out);
        fputc(*s, out);
    }
    fputc('"', out);
}

static void csv_num(FILE *out, double v, double scale) {
    if (!isnan(v)) fprintf(out, "%.4f", scale * v);
}

// The four figures of one (architecture, lr), in the order and with the names
// of the csv columns and json fields.
enum { N_FIGURES = 4 };
static const char *const figure_names[N_FIGURES] = {"valid_mean", "valid_std", "test_mean", "test_std"};

static void figures(const hax_lr_stats *st, double v[N_FIGURES]) {
    v[0] = st->valid_mean;
    v[1] = st->valid_std;
    v[2] = st->test_mean;
    v[3] = st->test_std;
}

void table_csv(FILE *out, const hax_summary *s, int paper) {
    fputs("label,precision,table1_row,table1_column,model,pattern,hidden_size,lr,chosen,n_seeds,seeds", out);
    for (int k = 0; k < N_FIGURES; k++) fprintf(out, ",%s", figure_names[k]);
    fputs(paper ? ",paper\n" : "\n", out);
    for (int i = 0; i < s->n_archs; i++) {
        const hax_arch_stats *a = &s->archs[i];
        for (int l = 0; l < a->n_lrs; l++) {
            const hax_lr_stats *st = &a->lrs[l];
            csv_str(out, a->label);
            fprintf(out, ",%s,", a->precision);
            if (a->row >= 0) csv_str(out, table1_row_name(a->row));
            fputc(',', out);
            if (a->row >= 0) fputs(table1_col_name(a->col), out);
            fputc(',', out);
            csv_str(out, a->model);
            fputc(',', out);
            csv_str(out, a->pattern);
            fputc(',', out);
            if (a->hidden_size) fprintf(out, "%d", a->hidden_size);
            fprintf(out, ",%g,%d,%d,", st->lr, l == a->best, st->n);
            for (int k = 0; k < st->n; k++) fprintf(out, "%s%llu", k ? ";" : "", (unsigned long long)st->seeds[k]);
            double v[N_FIGURES];
            figures(st, v);
            for (int k = 0; k < N_FIGURES; k++) {
                fputc(',', out);
                csv_num(out, v[k], 100);
            }
            if (paper) {
                fputc(',', out);
                csv_num(out, table1_paper(a->row, a->col), 1);
            }
            fputc('\n', out);
        }
    }
}

// ---------------------------------------------------------------------------
// JSON

static void json_str(FILE *out, const char *s) {
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c < 0x20) fprintf(out, "\\u%04x", c);
        else fputc(c, out);
    }
    fputc('"', out);
}

// The shortest %g form that reads back to v (learning rates: 0.003, not
// 0.0030000000000000001).
static void json_exact(FILE *out, double v) {
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
    fputs(buf, out);
}

static void json_num(FILE *out, double v, double scale) {
    if (isnan(v)) fputs("null", out);
    else fprintf(out, "%.4f", scale * v);
}

static void json_seeds(FILE *out, const hax_lr_stats *st) {
    fputc('[', out);
    for (int k = 0; k < st->n; k++) fprintf(out, "%s%llu", k ? ", " : "", (unsigned long long)st->seeds[k]);
    fputc(']', out);
}

static void json_stats(FILE *out, const hax_lr_stats *st) {
    fputs("\"lr\": ", out);
    json_exact(out, st->lr);
    fprintf(out, ", \"n_seeds\": %d, \"seeds\": ", st->n);
    json_seeds(out, st);
    double v[N_FIGURES];
    figures(st, v);
    for (int k = 0; k < N_FIGURES; k++) {
        fprintf(out, ", \"%s\": ", figure_names[k]);
        json_num(out, v[k], 100);
    }
}

// k3: the key of the notes' detail (NULL: not written; null where a note has none).
static void json_notes(FILE *out, const char *name, const char *k1, const char *k2, const char *k3, const hax_note *v,
                       int n) {
    fprintf(out, "  \"%s\": [", name);
    for (int i = 0; i < n; i++) {
        fprintf(out, "%s\n    {\"%s\": ", i ? "," : "", k1);
        json_str(out, v[i].path);
        fprintf(out, ", \"%s\": ", k2);
        json_str(out, v[i].text);
        if (k3) {
            fprintf(out, ", \"%s\": ", k3);
            if (v[i].detail) json_str(out, v[i].detail);
            else fputs("null", out);
        }
        fputc('}', out);
    }
    fputs(n ? "\n  ]" : "]", out);
}

static void json_arch(FILE *out, const hax_arch_stats *a, int paper) {
    const hax_lr_stats *st = chosen(a);
    fputs("    {\"label\": ", out);
    json_str(out, a->label);
    fputs(", \"model\": ", out);
    json_str(out, a->model);
    fputs(", \"pattern\": ", out);
    json_str(out, a->pattern);
    fputs(", \"precision\": ", out);
    json_str(out, a->precision);
    fprintf(out, ", \"hidden_size\": %d,\n     \"table1_row\": ", a->hidden_size);
    if (a->row >= 0) json_str(out, table1_row_name(a->row));
    else fputs("null", out);
    fputs(", \"table1_column\": ", out);
    if (a->row >= 0) json_str(out, table1_col_name(a->col));
    else fputs("null", out);
    if (paper) {
        fputs(", \"paper\": ", out);
        json_num(out, table1_paper(a->row, a->col), 1);
    }
    fputs(",\n     \"chosen_lr\": ", out);
    json_exact(out, st->lr);
    fputs(", ", out);
    json_stats(out, st);
    fputs(",\n     \"lrs\": [", out);
    for (int l = 0; l < a->n_lrs; l++) {
        fprintf(out, "%s\n       {", l ? "," : "");
        json_stats(out, &a->lrs[l]);
        fputc('}', out);
    }
    fputs("],\n     \"cells\": [", out);
    for (int k = 0; k < st->cells.n; k++)
        fprintf(out, "%s{\"n_c\": %d, \"n_k\": %d, \"test_acc\": %.4f}", k ? ", " : "", st->cells.v[k].n_c,
                st->cells.v[k].n_k, 100 * st->cells.v[k].acc);
    fputs("]}", out);
}

void table_json(FILE *out, const hax_summary *s, int paper) {
    // precision: the regime asked for (--precision), else null; regimes: those
    // with a Table 1 (architectures placed in it have table1_row set)
    int reg[N_REGIMES], n_reg = summary_regimes(s, reg);
    fprintf(out, "{\n  \"metric\": \"%s\",\n  \"precision\": ", metric_name(s->metric));
    if (s->precision[0]) fprintf(out, "\"%s\"", s->precision);
    else fputs("null", out);
    fputs(",\n  \"regimes\": [", out);
    for (int k = 0; k < n_reg; k++) fprintf(out, "%s\"%s\"", k ? ", " : "", regime_name(reg[k]));
    fputs("],\n  \"unit\": \"percent\",\n  \"std\": \"sample (n-1)\",\n", out);
    fputs("  \"lr_rule\": \"best mean best_valid_acc over seeds; ties (within 1e-9) go to the smaller lr\",\n", out);
    fprintf(out, "  \"n_files\": %d,\n  \"n_runs\": %d,\n  \"architectures\": [", s->n_files, s->n_runs);
    for (int i = 0; i < s->n_archs; i++) {
        fputs(i ? ",\n" : "\n", out);
        json_arch(out, &s->archs[i], paper);
    }
    fputs(s->n_archs ? "\n  ],\n" : "],\n", out);
    json_notes(out, "incomplete", "path", "status", "progress", s->incomplete, s->n_incomplete);
    fputs(",\n", out);
    json_notes(out, "missing", "label", "what", NULL, s->missing, s->n_missing);
    fputs(",\n", out);
    json_notes(out, "unreadable", "path", "reason", NULL, s->unreadable, s->n_unreadable);
    fputs("\n}\n", out);
}
