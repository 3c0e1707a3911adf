// plot_svg.c: the line plot (accuracy vs n) and the per-architecture
// heatmaps as plain SVG: axes, ticks, labels, legend, colour bar.
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "analysis/plot_svg.h"
#include "analysis/curves.h"

static void xml_text(FILE *out, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", out); break;
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '"': fputs("&quot;", out); break;
        default: fputc(*s, out);
        }
    }
}

// A tick spacing of 1, 2 or 5 times a power of ten giving about `count` ticks.
static double nice_step(double range, int count) {
    double raw = range / count, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

// Twenty colours: ten distinguishable ones (the accuracy-vs-n lines use
// these; beyond ten they also change their dash), then ten lighter ones (the
// validation curves use all twenty).
static const char *const palette[20] = {"#1f5fa8", "#d9531e", "#2e9e44", "#c0392b", "#7b4fb0", "#8c5a3c", "#d14fa0",
                                        "#555555", "#a8a81c", "#17a5b8", "#7fa6d6", "#f2a36b", "#86cf8f", "#ea8c84",
                                        "#b9a0d6", "#c49c84", "#ee9fcf", "#a5a5a5", "#d6d66a", "#7fd3df"};
// Dashes: Table 1 places take col + 2 * regime (Mamba fp32 solid, Mamba2
// fp32 dashed, then the bf16-pure and bf16 pairs); others cycle the first 3.
static const char *const dashes[6] = {"", "6,3", "2,3", "10,3,2,3", "1,3", "14,4"};

int plot_curve(const hax_cells *cells, int **n_out, double **acc_out) {
    int *n = xmalloc((size_t)(cells->n ? cells->n : 1) * sizeof *n), *cnt = xcalloc((size_t)(cells->n ? cells->n : 1), sizeof *cnt);
    double *acc = xcalloc((size_t)(cells->n ? cells->n : 1), sizeof *acc);
    int m = 0;
    for (int i = 0; i < cells->n; i++) {
        // one-level data (associative recall) has no contexts: n_c 0 counts as 1
        int v = (cells->v[i].n_c ? cells->v[i].n_c : 1) * cells->v[i].n_k, k = 0;
        while (k < m && n[k] != v) k++;
        if (k == m) n[m++] = v;
        acc[k] += cells->v[i].acc;
        cnt[k]++;
    }
    for (int k = 0; k < m; k++) acc[k] /= cnt[k];
    // insertion sort by n (a few hundred points at most)
    for (int i = 1; i < m; i++)
        for (int j = i; j > 0 && n[j - 1] > n[j]; j--) {
            int t = n[j]; n[j] = n[j - 1]; n[j - 1] = t;
            double u = acc[j]; acc[j] = acc[j - 1]; acc[j - 1] = u;
        }
    free(cnt);
    *n_out = n;
    *acc_out = acc;
    return m;
}

static void svg_begin(FILE *out, int w, int h) {
    fprintf(out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"12\">\n"
            "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
            w, h, w, h, w, h);
}

// ---------------------------------------------------------------------------
// Accuracy against n

enum { LW = 960, LH = 560, L_LEFT = 70, L_RIGHT = 250, L_TOP = 50, L_BOTTOM = 60 };

// The frame of an accuracy plot: the plot area at (left, top), pw × ph,
// accuracy 0..100 % upwards with a grid line every 10, x from x0 to x1 with a
// grid line and a tick every step (labels "%g", or "25k" for whole thousands
// when k_ticks), the x title at x_title_y and the y title beside the axis.
static void accuracy_axes(FILE *out, int left, int top, int pw, int ph, double x0, double x1, double step,
                          int k_ticks, const char *x_title, int x_title_y, const char *y_title) {
#define XPOS(v) (left + ((v) - x0) / (x1 - x0) * pw)
#define YPOS(p) (top + ph - (p) / 100.0 * ph)
    for (double p = 0; p <= 100.001; p += 10) {
        fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", left, YPOS(p),
                left + pw, YPOS(p));
        fprintf(out, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", left - 6, YPOS(p) + 4, p);
    }
    for (double v = x0; v <= x1 + step / 2; v += step) {
        char t[32];
        if (k_ticks && v >= 1000 && fmod(v, 1000) == 0) snprintf(t, sizeof t, "%gk", v / 1000);
        else snprintf(t, sizeof t, "%g", v);
        fprintf(out, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e4e4e4\"/>\n", XPOS(v), top, XPOS(v),
                top + ph);
        fprintf(out, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", XPOS(v), top + ph + 18, t);
    }
#undef XPOS
#undef YPOS
    fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", left, top,
            pw, ph);
    fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", left + pw / 2, x_title_y, x_title);
    fprintf(out, "<text x=\"18\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 18 %d)\">%s</text>\n",
            top + ph / 2, top + ph / 2, y_title);
}

static void line_plot(FILE *out, const hax_summary *s) {
    int pw = LW - L_LEFT - L_RIGHT, ph = LH - L_TOP - L_BOTTOM;
    int nmin = 1 << 30, nmax = 0;
    for (int a = 0; a < s->n_archs; a++) {
        const hax_cells *c = &s->archs[a].lrs[s->archs[a].best].cells;
        for (int i = 0; i < c->n; i++) {
            int v = (c->v[i].n_c ? c->v[i].n_c : 1) * c->v[i].n_k;
            if (v < nmin) nmin = v;
            if (v > nmax) nmax = v;
        }
    }
    double step = nice_step(nmax > nmin ? nmax - nmin : 1, 8);
    double x0 = floor(nmin / step) * step, x1 = ceil(nmax / step) * step;
    if (x1 <= x0) x1 = x0 + step;
#define XPOS(v) (L_LEFT + ((v) - x0) / (x1 - x0) * pw)
#define YPOS(p) (L_TOP + ph - (p) / 100.0 * ph)
    svg_begin(out, LW, LH);
    fprintf(out, "<text x=\"%d\" y=\"28\" font-size=\"15\" text-anchor=\"middle\">Test accuracy against table size "
                 "n = n_c·n_k (best lr, mean over seeds)</text>\n",
            L_LEFT + pw / 2);
    accuracy_axes(out, L_LEFT, L_TOP, pw, ph, x0, x1, step, 0, "table size n = n_c · n_k", LH - 18,
                  "test accuracy (%)");
    // one line per architecture, and its legend entry
    int shown = 0;
    for (int a = 0; a < s->n_archs; a++) {
        const hax_arch_stats *A = &s->archs[a];
        int *n;
        double *acc;
        int m = plot_curve(&A->lrs[A->best].cells, &n, &acc);
        if (m) {
            // Table 1 rows share a colour across Mamba (solid) and Mamba2
            // (dashed); other architectures take the next colour, and a new
            // dash every ten.
            const char *col = palette[(A->row >= 0 ? A->row : shown) % 10];
            int reg = regime_index(A->precision);
            const char *dash = dashes[A->row >= 0 ? A->col + 2 * (reg > 0 ? reg : 0) : (shown / 10) % 3];
            fprintf(out, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s%s%s points=\"", col,
                    *dash ? " stroke-dasharray=\"" : "", dash, *dash ? "\"" : "");
            for (int i = 0; i < m; i++) fprintf(out, "%s%.1f,%.1f", i ? " " : "", XPOS(n[i]), YPOS(100 * acc[i]));
            fputs("\"/>\n", out);
            for (int i = 0; i < m; i++)
                fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n", XPOS(n[i]), YPOS(100 * acc[i]),
                        col);
            int ly = L_TOP + 8 + 20 * shown, lx = L_LEFT + pw + 16;
            fprintf(out, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s%s%s/>\n", lx,
                    ly, lx + 28, ly, col, *dash ? " stroke-dasharray=\"" : "", dash, *dash ? "\"" : "");
            fprintf(out, "<text x=\"%d\" y=\"%d\">", lx + 36, ly + 4);
            xml_text(out, A->label);
            fputs("</text>\n", out);
            shown++;
        }
        free(n);
        free(acc);
    }
#undef XPOS
#undef YPOS
    fputs("</svg>\n", out);
}

// ---------------------------------------------------------------------------
// Heatmap over (n_c, n_k)

// Dark blue -> teal -> yellow, by linear interpolation between three anchors.
static void heat_colour(double t, int rgb[3]) {
    static const int anchor[3][3] = {{68, 1, 84}, {33, 145, 140}, {253, 231, 37}};
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    int i = t < 0.5 ? 0 : 1;
    double f = (t - 0.5 * i) * 2;
    for (int c = 0; c < 3; c++) rgb[c] = (int)lround(anchor[i][c] + f * (anchor[i + 1][c] - anchor[i][c]));
}

static void heatmap(FILE *out, const hax_arch_stats *A) {
    const hax_lr_stats *st = &A->lrs[A->best];
    const hax_cells *c = &st->cells;
    int cmin = 1 << 30, cmax = 0, kmin = 1 << 30, kmax = 0;
    for (int i = 0; i < c->n; i++) {
        if (c->v[i].n_c < cmin) cmin = c->v[i].n_c;
        if (c->v[i].n_c > cmax) cmax = c->v[i].n_c;
        if (c->v[i].n_k < kmin) kmin = c->v[i].n_k;
        if (c->v[i].n_k > kmax) kmax = c->v[i].n_k;
    }
    int nx = kmax - kmin + 1, ny = cmax - cmin + 1;
    int big = nx > ny ? nx : ny, cell = 480 / big;
    if (cell > 48) cell = 48;
    if (cell < 4) cell = 4;
    int left = 80, top = 60, pw = nx * cell, ph = ny * cell;
    int w = left + pw + 110, h = top + ph + 60;
    svg_begin(out, w, h);
    fprintf(out, "<text x=\"%d\" y=\"24\" font-size=\"14\" text-anchor=\"middle\">", left + pw / 2);
    xml_text(out, A->label);
    fprintf(out, ": test accuracy (%%) per cell</text>\n<text x=\"%d\" y=\"42\" text-anchor=\"middle\" "
                 "fill=\"#444\">lr %g, %d seed%s</text>\n",
            left + pw / 2, st->lr, st->n, st->n == 1 ? "" : "s");
    fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#cccccc\"/>\n", left, top, pw, ph);
    for (int i = 0; i < c->n; i++) {
        int x = left + (c->v[i].n_k - kmin) * cell, y = top + (c->v[i].n_c - cmin) * cell, rgb[3];
        heat_colour(c->v[i].acc, rgb);
        fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#%02x%02x%02x\"/>\n", x, y, cell, cell,
                rgb[0], rgb[1], rgb[2]);
        if (cell >= 22)
            fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"%d\" fill=\"%s\">%.0f</text>\n",
                    x + cell / 2, y + cell / 2 + 4, cell >= 30 ? 11 : 9, c->v[i].acc > 0.6 ? "black" : "white",
                    100 * c->v[i].acc);
    }
    fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", left, top, pw,
            ph);
    int every = cell >= 16 ? 1 : (16 + cell - 1) / cell;  // label every tick when there is room
    for (int k = kmin; k <= kmax; k++)
        if ((k - kmin) % every == 0)
            fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%d</text>\n", left + (k - kmin) * cell + cell / 2,
                    top + ph + 16, k);
    for (int cc = cmin; cc <= cmax; cc++)
        if ((cc - cmin) % every == 0)
            fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%d</text>\n", left - 6,
                    top + (cc - cmin) * cell + cell / 2 + 4, cc);
    fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">n_k (keys per context)</text>\n", left + pw / 2,
            top + ph + 38);
    fprintf(out, "<text x=\"24\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 24 %d)\">n_c (contexts)</text>\n",
            top + ph / 2, top + ph / 2);
    // colour bar, 0..100 %
    int bx = left + pw + 30, bh = ph < 120 ? 120 : ph, steps = 50;
    for (int i = 0; i < steps; i++) {
        int rgb[3];
        heat_colour(1 - (i + 0.5) / steps, rgb);
        fprintf(out, "<rect x=\"%d\" y=\"%.2f\" width=\"16\" height=\"%.2f\" fill=\"#%02x%02x%02x\"/>\n", bx,
                top + (double)bh * i / steps, (double)bh / steps + 0.5, rgb[0], rgb[1], rgb[2]);
    }
    fprintf(out, "<rect x=\"%d\" y=\"%d\" width=\"16\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", bx, top, bh);
    for (int p = 0; p <= 100; p += 25)
        fprintf(out, "<text x=\"%d\" y=\"%.1f\">%d</text>\n", bx + 22, top + bh - bh * p / 100.0 + 4, p);
    fputs("</svg>\n", out);
}

// ---------------------------------------------------------------------------
// Validation accuracy against step (metrics.csv), one line per run

enum { CW = 1060, C_LEFT = 70, C_RIGHT = 420, C_TOP = 50, C_BOTTOM = 60, C_PH = 450, C_ROW = 17 };

typedef struct {
    const hax_curves *c;
    const int *idx;  // the curves drawn: indices into c
    int n;
    char title[256];
} curve_set;

static void curve_plot(FILE *out, const curve_set *cs) {
    int pw = CW - C_LEFT - C_RIGHT, ph = C_PH;
    int h = C_TOP + ph + C_BOTTOM, legend_h = C_TOP + 8 + C_ROW * cs->n + 20;
    if (legend_h > h) h = legend_h;
    double xmax = 1;
    for (int k = 0; k < cs->n; k++) {
        const hax_curve *c = &cs->c->v[cs->idx[k]];
        if (c->v[c->n - 1].step > xmax) xmax = (double)c->v[c->n - 1].step;
    }
    double step = nice_step(xmax, 8), x1 = ceil(xmax / step) * step;
#define XPOS(v) (C_LEFT + (v) / x1 * pw)
#define YPOS(p) (C_TOP + ph - (p) / 100.0 * ph)
    svg_begin(out, CW, h);
    fprintf(out, "<text x=\"%d\" y=\"28\" font-size=\"15\" text-anchor=\"middle\">", C_LEFT + pw / 2);
    xml_text(out, cs->title);
    fputs("</text>\n", out);
    accuracy_axes(out, C_LEFT, C_TOP, pw, ph, 0, x1, step, 1, "training step", C_TOP + ph + 42,
                  "validation accuracy (%)");
    // A colour per (architecture, lr, seed), in order of appearance; the
    // regime picks the dash (fp32 solid, bf16-pure dashed, bf16 dotted).
    int *key = xmalloc((size_t)(cs->n ? cs->n : 1) * sizeof *key), n_keys = 0;
    for (int k = 0; k < cs->n; k++) {
        const hax_curve *c = &cs->c->v[cs->idx[k]];
        int j = 0;
        while (j < k && !(strcmp(cs->c->v[cs->idx[j]].base, c->base) == 0 && cs->c->v[cs->idx[j]].lr == c->lr &&
                          cs->c->v[cs->idx[j]].seed == c->seed))
            j++;
        key[k] = j < k ? key[j] : n_keys++;
        const char *col = palette[key[k] % 20];
        int reg = regime_index(c->precision);
        const char *dash = dashes[reg > 0 ? reg : 0];
        fprintf(out, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\"%s%s%s points=\"", col,
                *dash ? " stroke-dasharray=\"" : "", dash, *dash ? "\"" : "");
        for (int i = 0; i < c->n; i++)
            fprintf(out, "%s%.1f,%.1f", i ? " " : "", XPOS((double)c->v[i].step), YPOS(100 * c->v[i].acc));
        fputs("\"/>\n", out);
        if (c->n <= 60)  // markers while they stay apart
            for (int i = 0; i < c->n; i++)
                fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2\" fill=\"%s\"/>\n", XPOS((double)c->v[i].step),
                        YPOS(100 * c->v[i].acc), col);
        int ly = C_TOP + 8 + C_ROW * k, lx = C_LEFT + pw + 16;
        fprintf(out, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s%s%s/>\n", lx, ly,
                lx + 28, ly, col, *dash ? " stroke-dasharray=\"" : "", dash, *dash ? "\"" : "");
        char name[320];
        curve_name(c, name, sizeof name);
        fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"11\">", lx + 36, ly + 4);
        xml_text(out, name);
        fputs("</text>\n", out);
    }
    free(key);
#undef XPOS
#undef YPOS
    fputs("</svg>\n", out);
}

// ---------------------------------------------------------------------------

// Writes what fn draws into path atomically.
static int write_svg(const char *path, void (*fn)(FILE *, const void *), const void *arg, char *err, int errlen) {
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    if (!mem) return hax_errf(err, errlen, "%s: cannot allocate: %s", path, strerror(errno));
    fn(mem, arg);
    fclose(mem);
    int rc = hax_write_file_atomic(path, buf, len);
    free(buf);
    if (rc) return hax_errf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    return 0;
}

static void draw_lines(FILE *out, const void *s) { line_plot(out, s); }
static void draw_curves(FILE *out, const void *cs) { curve_plot(out, cs); }
static void draw_heatmap(FILE *out, const void *a) { heatmap(out, a); }

// A label in a file name: letters, digits and . _ + - only.
static void file_name(const char *label, char *name, size_t len) {
    size_t i;
    for (i = 0; label[i] && i < len - 1; i++) {
        char ch = label[i];
        int keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || strchr("._+-", ch);
        name[i] = keep ? ch : '_';
    }
    name[i] = 0;
}

int plot_write_curves(const char *dir, const hax_curves *c, char *err, int errlen) {
    if (!c->n) return 0;
    if (hax_mkdir_p(dir)) return hax_errf(err, errlen, "%s: cannot create the plot folder: %s", dir, strerror(errno));
    char path[2048];
    int *idx = xmalloc((size_t)c->n * sizeof *idx), written = 0, n_sel = 0, rc = 0;
    for (int k = 0; k < c->n; k++)
        if (c->v[k].selected) idx[n_sel++] = k;
    curve_set cs = {c, idx, n_sel, "Validation accuracy against training step (metrics.csv)"};
    if (n_sel) {
        snprintf(path, sizeof path, "%s/curves.svg", dir);
        rc = write_svg(path, draw_curves, &cs, err, errlen);
        written += rc == 0;
    }
    for (int k = 0; k < c->n; k++) idx[k] = k;
    // One file per architecture whose runs span several regimes (the curves
    // are sorted by architecture, so its runs are adjacent).
    for (int a = 0; a < c->n && rc == 0;) {
        int b = a, multi = 0;
        while (b < c->n && strcmp(c->v[b].base, c->v[a].base) == 0) multi |= strcmp(c->v[b++].precision, c->v[a].precision);
        if (multi) {
            char name[160];
            cs.idx = idx + a;
            cs.n = b - a;
            snprintf(cs.title, sizeof cs.title, "%s: validation accuracy against training step, by precision regime",
                     c->v[a].base);
            file_name(c->v[a].base, name, sizeof name);
            snprintf(path, sizeof path, "%s/curves_%s.svg", dir, name);
            rc = write_svg(path, draw_curves, &cs, err, errlen);
            written += rc == 0;
        }
        a = b;
    }
    free(idx);
    return rc ? -1 : written;
}

int plot_write_all(const char *dir, const hax_summary *s, char *err, int errlen) {
    if (hax_mkdir_p(dir)) return hax_errf(err, errlen, "%s: cannot create the plot folder: %s", dir, strerror(errno));
    char path[2048];
    int written = 0, with_cells = 0;
    for (int a = 0; a < s->n_archs; a++) {
        const hax_arch_stats *A = &s->archs[a];
        if (!A->lrs[A->best].cells.n) continue;
        with_cells++;
        char name[160];
        file_name(A->label, name, sizeof name);
        snprintf(path, sizeof path, "%s/heatmap_%s.svg", dir, name);
        if (write_svg(path, draw_heatmap, A, err, errlen)) return -1;
        written++;
    }
    if (with_cells) {
        snprintf(path, sizeof path, "%s/acc_vs_n.svg", dir);
        if (write_svg(path, draw_lines, s, err, errlen)) return -1;
        written++;
    }
    return written;
}
