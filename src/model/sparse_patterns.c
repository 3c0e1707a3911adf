// sparse_patterns.c: see sparse_patterns.h.
#include "src/model/sparse_patterns.h"

#include <stdio.h>
#include <string.h>

#include "src/model/model_config.h"

// k_c keys: the window, the sink, the LSH bucket's most recent, the selection.
static int share_k(const hax_model_config *cfg, int max_len) {
    (void)max_len;
    return cfg->k_c;
}
// Every delta-th position up to max_len, delta = data_max_length / k_c.
static int share_dilated(const hax_model_config *cfg, int max_len) {
    return max_len / (cfg->data_max_length / cfg->k_c) + 1;
}
static int share_none(const hax_model_config *cfg, int max_len) {
    (void)cfg, (void)max_len;
    return 0;
}

const hax_sparse_pattern sparse_patterns[SP_N_COMPONENTS] = {
    [SP_SLIDING_WINDOW] = {"sliding_window", SPARSE_SLIDING_WINDOW, "SW", 0, share_k},
    [SP_SINK] = {"sink", SPARSE_SINK, "Sink", 0, share_k},
    [SP_DILATED] = {"dilated", SPARSE_DILATED, "D", SPF_DILATION, share_dilated},
    [SP_SIGN_BIN_LSH] = {"sign_bin_lsh", SPARSE_SIGN_BIN_LSH, "LSH", SPF_LSH, share_k},
    [SP_ARGMAX_LSH] = {"argmax_lsh", SPARSE_ARGMAX_LSH, "ALSH", SPF_LSH, share_k},
    [SP_KEY_SELECTION] = {"key_selection", SPARSE_KEY_SELECTION, "KS", SPF_KS_WEIGHTS, share_k},
    [SP_FULL] = {"full", SPARSE_FULL, "Full", SPF_ALONE | SPF_DENSE, share_none},
};

const hax_sparse_named sparse_named_patterns[] = {
    {SPARSE_SLIDING_WINDOW | SPARSE_SINK, "A"},           // A-shaped
    {SPARSE_SIGN_BIN_LSH | SPARSE_KEY_SELECTION, "HAX"},  // the paper's method
};
const int sparse_n_named_patterns = (int)(sizeof sparse_named_patterns / sizeof sparse_named_patterns[0]);

unsigned sparse_pattern_bits(unsigned flags) {
    unsigned m = 0;
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if (sparse_patterns[c].flags & flags) m |= sparse_patterns[c].bit;
    return m;
}

int sparse_pattern_has(unsigned mask, unsigned flags) { return (mask & sparse_pattern_bits(flags)) != 0; }

// "a, b, c" (the names of the components with any of flags; all for 0),
// joined with sep.
static void names_of(unsigned flags, const char *sep, char *buf, int len) {
    int n = 0;
    buf[0] = 0;
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if (!flags || (sparse_patterns[c].flags & flags))
            n += snprintf(buf + n, n < len ? len - n : 0, "%s%s", n ? sep : "", sparse_patterns[c].name);
}

static int find_component(const char *s, size_t len) {
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if (strlen(sparse_patterns[c].name) == len && strncmp(sparse_patterns[c].name, s, len) == 0) return c;
    return -1;
}

int sparse_pattern_parse(const char *pattern, unsigned *mask, int *parts, char *err, int errlen) {
    char names[256];
    *mask = 0;
    *parts = 0;
    if (!pattern || !*pattern || strcmp(pattern, "none") == 0) return 0;
    names_of(0, ", ", names, sizeof names);
    for (const char *p = pattern;; p++) {
        size_t len = strcspn(p, "+");
        if (len == 0) {
            snprintf(err, errlen, "expected '+'-joined parts among %s; found an empty part in '%s'", names,
                     pattern);
            return -1;
        }
        int c = find_component(p, len);
        if (c < 0) {
            snprintf(err, errlen, "expected '+'-joined parts among %s; found '%.*s' in '%s'", names, (int)len, p,
                     pattern);
            return -1;
        }
        if (*mask & sparse_patterns[c].bit) {
            snprintf(err, errlen, "expected each part once, found '%s' twice in '%s'", sparse_patterns[c].name,
                     pattern);
            return -1;
        }
        *mask |= sparse_patterns[c].bit;
        (*parts)++;
        p += len;
        if (!*p) break;
    }
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if ((sparse_patterns[c].flags & SPF_ALONE) && (*mask & sparse_patterns[c].bit) && *parts > 1) {
            snprintf(err, errlen, "expected '%s' alone, found '%s'", sparse_patterns[c].name, pattern);
            return -1;
        }
    unsigned lsh = *mask & sparse_pattern_bits(SPF_LSH);
    if (lsh & (lsh - 1)) {
        names_of(SPF_LSH, ", ", names, sizeof names);
        snprintf(err, errlen, "expected at most one of %s, found '%s'", names, pattern);
        return -1;
    }
    return 0;
}

void sparse_pattern_name(unsigned mask, char *buf, int len) {
    int n = snprintf(buf, len, "%s", mask ? "" : "none");
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if (mask & sparse_patterns[c].bit)
            n += snprintf(buf + n, n < len ? len - n : 0, "%s%s", n ? "+" : "", sparse_patterns[c].name);
}

void sparse_pattern_label(unsigned mask, char *buf, int len) {
    for (int i = 0; i < sparse_n_named_patterns; i++)
        if (sparse_named_patterns[i].mask == mask) {
            snprintf(buf, len, "%s", sparse_named_patterns[i].label);
            return;
        }
    int n = snprintf(buf, len, "%s", "");
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if (mask & sparse_patterns[c].bit)
            n += snprintf(buf + n, n < len ? len - n : 0, "%s%s", n ? "+" : "", sparse_patterns[c].label);
}

int sparse_pattern_check(const hax_model_config *cfg, char *err, int errlen) {
    unsigned m = cfg->sparse_mask;
    if (m == 0) {
        snprintf(err, errlen, "sparse_arch: expected a pattern, found none");
        return -1;
    }
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if ((sparse_patterns[c].flags & SPF_ALONE) && (m & sparse_patterns[c].bit) && m != sparse_patterns[c].bit) {
            snprintf(err, errlen, "sparse_arch '%s': '%s' cannot be combined with other components", cfg->sparse_arch,
                     sparse_patterns[c].name);
            return -1;
        }
    if (sparse_pattern_has(m, SPF_DENSE)) return 0;
    if (cfg->k_c < 1) {
        snprintf(err, errlen, "k_c (sparse_keys / parts): expected >= 1, found %d", cfg->k_c);
        return -1;
    }
    unsigned lsh = m & sparse_pattern_bits(SPF_LSH);
    if (lsh & (lsh - 1)) {
        char names[128];
        names_of(SPF_LSH, " and ", names, sizeof names);
        snprintf(err, errlen, "sparse_arch '%s': %s together are not supported", cfg->sparse_arch, names);
        return -1;
    }
    if (lsh && (cfg->num_hash < 1 || cfg->num_hash > 30)) {
        snprintf(err, errlen, "num_hash: expected 1..30, found %d", cfg->num_hash);
        return -1;
    }
    if (sparse_pattern_has(m, SPF_DILATION) && cfg->data_max_length / cfg->k_c < 1) {
        snprintf(err, errlen, "data_max_length: expected >= k_c = %d for a dilation >= 1, found %d", cfg->k_c,
                 cfg->data_max_length);
        return -1;
    }
    return 0;
}

int sparse_row_cap(const hax_model_config *cfg, int max_len) {
    int cap = 0;
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if (cfg->sparse_mask & sparse_patterns[c].bit) cap += sparse_patterns[c].row_share(cfg, max_len);
    return cap > 0 ? cap : 1;
}
