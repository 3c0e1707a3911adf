// config_print.c: the resolved config as YAML (read back by config_load to an
// equal config) and field-by-field comparison.
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/config/config.h"
#include "src/config/config_fields.h"

// The shortest %g form that reads back to the same value.
static void fmt_double(char *buf, size_t n, double v) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

static void fmt_float(char *buf, size_t n, float v) {
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, n, "%.*g", p, (double)v);
        if ((float)strtod(buf, NULL) == v) return;
    }
}

static void print_quoted(FILE *out, const char *s) {
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(out, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(out, "\\x%02x", (unsigned char)*s);
        else fputc(*s, out);
    }
    fputc('"', out);
}

static int intlist_len(const int *v, size_t cap) {
    size_t n = 0;
    while (n < cap && v[n]) n++;
    return (int)n;
}

static void print_value(FILE *out, const hax_config *c, const cfg_field *f) {
    const char *p = (const char *)c + f->off;
    char buf[64];
    switch (f->type) {
    case F_INT: fprintf(out, "%d", *(const int *)p); break;
    case F_I64: fprintf(out, "%lld", (long long)*(const int64_t *)p); break;
    case F_U64: fprintf(out, "%llu", (unsigned long long)*(const uint64_t *)p); break;
    case F_FLOAT: fmt_float(buf, sizeof buf, *(const float *)p); fputs(buf, out); break;
    case F_DOUBLE: fmt_double(buf, sizeof buf, *(const double *)p); fputs(buf, out); break;
    case F_BOOL: fputs(*(const int *)p ? "true" : "false", out); break;
    case F_ENUM: fputs(f->names[*(const int *)p], out); break;
    case F_STR: print_quoted(out, p); break;
    case F_PATTERN: fputs(*p ? p : "none", out); break;
    case F_INTLIST: {
        const int *v = (const int *)p;
        int n = intlist_len(v, f->size);
        fputc('[', out);
        for (int i = 0; i < n; i++) fprintf(out, "%s%d", i ? ", " : "", v[i]);
        fputc(']', out);
        break;
    }
    }
}

void config_print(FILE *out, const hax_config *c) {
    const char *section = "";
    for (int i = 0; i < cfg_n_fields; i++) {
        const cfg_field *f = &cfg_fields[i];
        if (strcmp(f->section, section) != 0) {
            section = f->section;
            fprintf(out, "%s:\n", section);
        }
        // An empty list (data.id_layout unset) is left out: absent reads back as empty.
        if (f->type == F_INTLIST && intlist_len((const int *)((const char *)c + f->off), f->size) == 0) continue;
        fprintf(out, "  %s: ", f->name);
        print_value(out, c, f);
        fputc('\n', out);
    }
}

char *config_to_string(const hax_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) hax_die("config: cannot open a memory stream");
    config_print(f, c);
    fclose(f);
    return buf;
}

static int field_equal(const hax_config *a, const hax_config *b, const cfg_field *f) {
    const char *p = (const char *)a + f->off, *q = (const char *)b + f->off;
    switch (f->type) {
    case F_INT: case F_BOOL: case F_ENUM: return *(const int *)p == *(const int *)q;
    case F_I64: return *(const int64_t *)p == *(const int64_t *)q;
    case F_U64: return *(const uint64_t *)p == *(const uint64_t *)q;
    case F_FLOAT: return *(const float *)p == *(const float *)q;
    case F_DOUBLE: return *(const double *)p == *(const double *)q;
    case F_STR: case F_PATTERN: return strcmp(p, q) == 0;
    case F_INTLIST: {
        const int *u = (const int *)p, *v = (const int *)q;
        int n = intlist_len(u, f->size);
        return n == intlist_len(v, f->size) && memcmp(u, v, sizeof(int) * n) == 0;
    }
    }
    return 0;
}

// One field's value as config_print writes it.
static void value_string(const hax_config *c, const cfg_field *f, char *buf, size_t n) {
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (!out) hax_die("config: cannot open a memory stream");
    print_value(out, c, f);
    fclose(out);
    snprintf(buf, n, "%s", text);
    free(text);
}

void config_first_difference(const hax_config *a, const hax_config *b, const char *label_a, const char *label_b,
                             char *out, size_t n) {
    out[0] = 0;
    for (int i = 0; i < cfg_n_fields; i++) {
        const cfg_field *f = &cfg_fields[i];
        if (field_equal(a, b, f)) continue;
        char va[HAX_PATH_MAX + 8], vb[HAX_PATH_MAX + 8];
        value_string(a, f, va, sizeof va);
        value_string(b, f, vb, sizeof vb);
        snprintf(out, n, "%s.%s: %s has %s, %s has %s", f->section, f->name, label_a, va, label_b, vb);
        return;
    }
}

int config_equal(const hax_config *a, const hax_config *b) {
    for (int i = 0; i < cfg_n_fields; i++)
        if (!field_equal(a, b, &cfg_fields[i])) return 0;
    // derived fields
    return a->model.sparse_mask == b->model.sparse_mask && a->model.sparse_parts == b->model.sparse_parts &&
           a->model.k_c == b->model.k_c;
}
