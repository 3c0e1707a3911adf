// src/train/report.c: the human- and machine-readable record of a run —
// result.json, metrics.csv — and the collective checks of hax-train's inputs.
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "src/core/common.h"
#include "src/train/internal.h"

int train_failed_rank(const hax_dist *d, int failed) {
    // max over ranks of (size - rank) among the failed ones: the lowest failed rank
    int who = dist_allreduce_max_int(failed ? d->size - d->rank : 0);
    return who ? d->size - who : -1;
}

void train_exit_failed(const hax_dist *d, int failed_rank, const char *msg, int code) {
    if (failed_rank == d->rank) {
        fprintf(stderr, "hax: %s\n", msg);
        fflush(stderr);
    }
    dist_barrier();
    dist_finalize();
    exit(code);
}

void train_check_all(const hax_dist *d, int failed, const char *msg, int code) {
    int r = train_failed_rank(d, failed);
    if (r >= 0) train_exit_failed(d, r, msg, code);
}

double train_wall(const train_ctx *t) { return t->wall_before + (t->t0 > 0 ? hax_now() - t->t0 : 0); }

void train_add_row(train_ctx *t, const double row[M_COLS]) {
    if (t->n_rows == t->cap_rows) {
        t->cap_rows = t->cap_rows ? 2 * t->cap_rows : 64;
        t->rows = xrealloc(t->rows, (size_t)t->cap_rows * M_COLS * sizeof(double));
    }
    memcpy(t->rows + (size_t)t->n_rows * M_COLS, row, M_COLS * sizeof(double));
    t->n_rows++;
}

// ---------------------------------------------------------------- JSON

// The shortest decimal form that reads back to v; null for NaN and infinities.
static void put_num(FILE *f, double v) {
    if (!isfinite(v)) {
        fputs("null", f);
        return;
    }
    char buf[40];
    if (v == floor(v) && fabs(v) < 1e15) {
        fprintf(f, "%.0f", v);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
    fputs(buf, f);
}

static void put_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n && s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

// A scalar of config_print's YAML as JSON: numbers, booleans and flow lists
// as they are, quoted strings re-escaped, bare words quoted.
static void put_yaml_scalar(FILE *f, const char *v, size_t n) {
    while (n > 0 && v[0] == ' ') v++, n--;
    char buf[HAX_PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%.*s", (int)n, v);
    char *end = NULL;
    double x = strtod(buf, &end);
    if (n == 0) {
        fputs("null", f);
    } else if (end && *end == 0 && end != buf && isfinite(x)) {
        put_num(f, x);  // one canonical JSON number form
    } else if (!strcmp(buf, "true") || !strcmp(buf, "false") || buf[0] == '[') {
        fputs(buf, f);
    } else if (buf[0] == '"' && n >= 2 && buf[n - 1] == '"') {
        // config_print escapes '"' and '\' with a backslash and control bytes as \xNN
        char out[HAX_PATH_MAX + 64];
        size_t k = 0;
        for (size_t i = 1; i + 1 < n && k + 1 < sizeof out; i++) {
            if (buf[i] == '\\' && buf[i + 1] == 'x' && i + 3 < n) {
                char hex[3] = {buf[i + 2], buf[i + 3], 0};
                out[k++] = (char)strtol(hex, NULL, 16);
                i += 3;
            } else if (buf[i] == '\\' && i + 2 < n) {
                out[k++] = buf[++i];
            } else {
                out[k++] = buf[i];
            }
        }
        put_str(f, out, k);
    } else {
        put_str(f, buf, n);
    }
}

// The resolved config (config_print's two-level YAML) as a JSON object.
static void put_config(FILE *f, const char *yaml) {
    int in_section = 0, first_field = 1;
    fputc('{', f);
    for (const char *l = yaml; *l;) {
        const char *e = strchr(l, '\n');
        size_t len = e ? (size_t)(e - l) : strlen(l);
        const char *colon = memchr(l, ':', len);
        if (colon && l[0] != ' ') {
            fprintf(f, "%s\n    ", in_section ? "}," : "");
            put_str(f, l, (size_t)(colon - l));
            fputs(": {", f);
            in_section = 1;
            first_field = 1;
        } else if (colon) {
            const char *k = l;
            while (*k == ' ') k++;
            fputs(first_field ? "" : ", ", f);
            put_str(f, k, (size_t)(colon - k));
            fputs(": ", f);
            put_yaml_scalar(f, colon + 1, len - (size_t)(colon + 1 - l));
            first_field = 0;
        }
        l += len + (e ? 1 : 0);
    }
    fputs(in_section ? "}}" : "}", f);
}

static void put_cells(FILE *f, const train_eval *ev) {
    fputc('[', f);
    int first = 1;
    for (int c = 0; c < ev->nc; c++)
        for (int k = 0; k < ev->nk; k++) {
            double n = ev->cnt[(size_t)c * ev->nk + k];
            if (n <= 0) continue;
            fprintf(f, "%s\n    {\"n_c\": %d, \"n_k\": %d, \"n\": %.0f, \"acc\": ", first ? "" : ",", c, k, n);
            put_num(f, ev->sum[(size_t)c * ev->nk + k] / n);
            fputc('}', f);
            first = 0;
        }
    fputs(first ? "]" : "\n  ]", f);
}

// Closes the memory stream f (over buf, len) and writes its text to
// <run_dir>/<file> atomically; frees buf.
static int write_stream(const train_ctx *t, FILE *f, char *const *buf, const size_t *len, const char *file, char *err,
                        int errlen) {
    fclose(f);
    char path[HAX_PATH_MAX + 320];
    snprintf(path, sizeof path, "%s/%s", t->o->run_dir, file);
    int rc = 0;
    if (hax_write_file_atomic(path, *buf, *len)) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        rc = -1;
    }
    free(*buf);
    return rc;
}

int train_write_result(train_ctx *t, const char *status, const train_test *test, const char *message, char *err,
                       int errlen) {
    const hax_config *c = t->cfg;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) hax_die("result.json: cannot open a memory stream");
    double wall = train_wall(t), tr = t->train_before + t->train_s;
    fprintf(f, "{\n  \"status\": \"%s\",\n  \"message\": ", status);
    // unix seconds of this write: hax-aggregate tells a live "running" run
    // (rewritten at least every HAX_HEARTBEAT_S) from a killed one (--stale-after)
    t->last_result = hax_now();
    if (message) put_str(f, message, strlen(message));
    else fputs("null", f);
    fprintf(f, ",\n  \"heartbeat\": %lld", (long long)time(NULL));
    fputs(",\n  \"label\": ", f);
    put_str(f, c->output.arch, strlen(c->output.arch));
    fprintf(f, ",\n  \"precision\": \"%s\"", config_precision_name(c->train.precision));
    fputs(",\n  \"lr\": ", f);
    put_num(f, c->train.lr);
    fprintf(f, ",\n  \"seed\": %llu", (unsigned long long)c->train.seed);
    fprintf(f, ",\n  \"steps\": %lld,\n  \"steps_planned\": %lld", (long long)t->step, (long long)c->train.steps);
    fputs(",\n  \"best_valid_acc\": ", f);
    put_num(f, t->have_best ? t->best_acc : (t->step > 0 ? 0.0 : NAN));
    fprintf(f, ",\n  \"best_step\": %lld", (long long)t->best_step);
    fputs(",\n  \"last_valid_acc\": ", f);
    put_num(f, t->last_valid);
    fputs(",\n  \"final_valid_acc\": ", f);
    put_num(f, test ? test->final_valid : NAN);
    fputs(",\n  \"test_acc\": ", f);
    put_num(f, test ? test->acc : NAN);
    fputs(",\n  \"test_acc_reference\": ", f);
    put_num(f, test ? test->acc_ref : NAN);
    fprintf(f, ",\n  \"test_output_layer\": \"%s\"",
            c->train.test_output_layer == TEST_OUTPUT_BEST ? "best" : "final");
    fputs(",\n  \"valid_cells\": ", f);
    put_cells(f, &t->best_valid);
    if (test) {
        fputs(",\n  \"test_cells\": ", f);
        put_cells(f, test->ev);
        fputs(",\n  \"test_cells_reference\": ", f);
        put_cells(f, test->ev_ref);
    }
    fputs(",\n  \"tokens\": ", f);
    put_num(f, t->tokens);
    fprintf(f, ",\n  \"git_revision\": \"%s\"", t->git_rev[0] ? t->git_rev : "unknown");
    // Lines that differ between identical runs (timing, rank count) follow.
    fprintf(f, ",\n  \"ranks\": %d", t->d->size);
    // the global batch of the evaluation forwards (config_eval_batch): on the
    // GPU the figures may differ with it at rounding level (README "Configs")
    fprintf(f, ",\n  \"eval_batch\": %d", config_eval_batch(c));
    fputs(",\n  \"wall_time\": ", f);
    put_num(f, round(wall * 1000) / 1000);
    fputs(",\n  \"tokens_per_s\": ", f);
    put_num(f, tr > 0 ? round(t->tokens / tr) : 0);
    fputs(",\n  \"config\": ", f);
    put_config(f, t->o->config_text);
    fputs("\n}\n", f);
    return write_stream(t, f, &buf, &len, "result.json", err, errlen);
}

int train_write_metrics(train_ctx *t, char *err, int errlen) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) hax_die("metrics.csv: cannot open a memory stream");
    fputs("step,loss,gate_loss,train_acc,lr,valid_acc\n", f);
    for (int64_t i = 0; i < t->n_rows; i++) {
        const double *r = t->rows + (size_t)i * M_COLS;
        fprintf(f, "%lld,%.8g,%.8g,%.8g,%.8g,", (long long)r[M_STEP], r[M_LOSS], r[M_GATE], r[M_ACC], r[M_LR]);
        if (isfinite(r[M_VALID])) fprintf(f, "%.8g", r[M_VALID]);
        fputc('\n', f);
    }
    return write_stream(t, f, &buf, &len, "metrics.csv", err, errlen);
}

int train_remove_stale_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    char path[HAX_PATH_MAX + 320];
    while ((e = readdir(d)) != NULL) {
        const char *t = strstr(e->d_name, ".tmp.");
        while (t && strstr(t + 1, ".tmp.")) t = strstr(t + 1, ".tmp.");  // the last one
        if (!t || t == e->d_name) continue;
        char *end;
        long pid = strtol(t + 5, &end, 10);
        if (*end || pid <= 0 || t[5] < '0' || t[5] > '9' || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode) || difftime(time(NULL), st.st_mtime) < 60) continue;
        if (unlink(path) == 0) {
            printf("hax-train: removed %s, a temporary file of process %ld, which is gone\n", path, pid);
            removed++;
        }
    }
    closedir(d);
    return removed;
}

int train_result_complete(const char *run_dir) {
    char path[HAX_PATH_MAX + 320];
    snprintf(path, sizeof path, "%s/result.json", run_dir);
    size_t len = 0;
    char err[512];
    char *s = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, err, sizeof err);  // never /dev/zero or a FIFO
    if (!s) return 0;
    int done = strstr(s, "\"status\": \"complete\"") != NULL;
    free(s);
    return done;
}

// ---------------------------------------------------------------- inputs

int train_check_dataset(const hax_dataset *ds, const hax_data_params *want, const char *dir, char *err,
                        int errlen) {
    const hax_data_params *p = dataset_params(ds);
#define DIFF(field, fmt, a, b)                                                                                  \
    do {                                                                                                        \
        snprintf(err, errlen, "%s: %s: the config expects " fmt ", the dataset has " fmt                        \
                 " (regenerate it or fix the data section)", dir, field, a, b);                                 \
        return -1;                                                                                              \
    } while (0)
    if (p->levels != want->levels) DIFF("levels", "%d", want->levels, p->levels);
    for (int l = 0; l < p->levels; l++) {
        if (p->min_size[l] != want->min_size[l]) DIFF("min_sizes (by level)", "%d", want->min_size[l], p->min_size[l]);
        if (p->max_size[l] != want->max_size[l]) DIFF("max_sizes (by level)", "%d", want->max_size[l], p->max_size[l]);
    }
    for (int l = 0; l < p->levels; l++)
        if (data_layout_max(p, l) != data_layout_max(want, l))
            DIFF("id_layout (by level)", "%d", data_layout_max(want, l), data_layout_max(p, l));
    if (p->n_value != want->n_value) DIFF("n_value", "%d", want->n_value, p->n_value);
    static const char *const per[HAX_N_SPLITS] = {"train_per_cell", "valid_per_cell", "test_per_cell"};
    for (int s = 0; s < HAX_N_SPLITS; s++)
        if (p->n_per_cell[s] != want->n_per_cell[s])
            DIFF(per[s], "%lld", (long long)want->n_per_cell[s], (long long)p->n_per_cell[s]);
    if (p->seed != want->seed) DIFF("seed", "%llu", (unsigned long long)want->seed, (unsigned long long)p->seed);
    if (p->compat != want->compat) DIFF("compat", "%d", want->compat, p->compat);
#undef DIFF
    return 0;
}

// HAX_GIT_REVISION, when set: the revision of a copy of the tree whose .git is
// not its own (the lent GPU machines get the working tree with the .git of the
// session's start, so rev-parse there names an older commit, "-dirty").
// src/train/train.h.
int train_env_git_revision(char *buf, size_t n) {
    const char *v = getenv("HAX_GIT_REVISION");
    if (!v) return 0;
    size_t hex = strspn(v, "0123456789abcdef");
    if (hex < 7 || hex > 40 || (v[hex] && strcmp(v + hex, "-dirty") != 0))
        hax_die("HAX_GIT_REVISION: expected a commit (7 to 40 hex digits, optionally -dirty), found '%s'", v);
    snprintf(buf, n, "%s", v);
    return 1;
}

void train_git_revision(char *buf, size_t n) {
    if (train_env_git_revision(buf, n)) return;
    snprintf(buf, n, "unknown");
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return;
    exe[len] = 0;
    // bin/hax-train -> the source tree above bin/
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash) return;
        *slash = 0;
    }
    if (strchr(exe, '\'')) return;
    char cmd[PATH_MAX + 128];
    snprintf(cmd, sizeof cmd, "git -C '%s' rev-parse --short=12 HEAD 2>/dev/null", exe);
    FILE *p = popen(cmd, "r");
    if (!p) return;
    char rev[64] = "";
    if (fgets(rev, sizeof rev, p)) rev[strcspn(rev, "\r\n")] = 0;
    pclose(p);
    if (!rev[0]) return;
    snprintf(cmd, sizeof cmd, "git -C '%s' status --porcelain --untracked-files=no 2>/dev/null", exe);
    p = popen(cmd, "r");
    int dirty = 0;
    if (p) {
        char line[8];
        dirty = fgets(line, sizeof line, p) != NULL;
        pclose(p);
    }
    snprintf(buf, n, "%s%s", rev, dirty ? "-dirty" : "");
}
