// src/sparse/masks.c: the allowed keys of every query, as the union (logical OR)
// of the pattern's components (MODEL.md §5.3; golden README Q4-Q6), per
// component k_c = sparse_keys / parts keys:
//   sliding_window  t - k_c < j <= t            (k_c keys including t)
//   sink            j < k_c and j <= t
//   dilated         j mod delta == delta - 1 and j <= t, delta = data_max_length / k_c
//   *_lsh           k_bucket[j] == q_bucket[t] and j <= t, the k_c most recent
//   key_selection   the cumulative top-k of src/sparse/ks.h (ks->sel)
// Each query's list is built from the sorted component lists by merging, so
// the cost is O(row size) per query; no L x L mask exists anywhere.
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/sparse/internal.h"

// out = sorted union of the sorted lists a and b (no duplicates inside either).
static int merge_union(int *out, const int *a, int na, const int *b, int nb) {
    int i = 0, j = 0, n = 0;
    while (i < na && j < nb) {
        if (a[i] < b[j]) out[n++] = a[i++];
        else if (b[j] < a[i]) out[n++] = b[j++];
        else { out[n++] = a[i++]; j++; }
    }
    while (i < na) out[n++] = a[i++];
    while (j < nb) out[n++] = b[j++];
    return n;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

// First index i in srt[0..n) with srt[i] >= key.
static int lower_bound(const int64_t *srt, int n, int64_t key) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (srt[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// The k_c most recent keys j <= t in bucket b, ascending (srt: the sequence's
// keys sorted by (bucket, position)).
static int lsh_keys(int *out, const int64_t *srt, int n, int32_t b, int t, int k_c) {
    int64_t base = (int64_t)b << 32;
    int lo = lower_bound(srt, n, base), hi = lower_bound(srt, n, base + t + 1);
    if (hi - lo > k_c) lo = hi - k_c;
    for (int i = lo; i < hi; i++) out[i - lo] = (int)(srt[i] & 0xffffffff);
    return hi - lo;
}

// Adds the component list c[0..nc) to the row held in *cur (count *ncur),
// using spare as the output and swapping the two buffers.
static void add_component(int **cur, int *ncur, int **spare, const int *c, int nc) {
    if (nc == 0) return;
    *ncur = merge_union(*spare, *cur, *ncur, c, nc);
    int *tmp = *cur;
    *cur = *spare;
    *spare = tmp;
}

// ---- the CPU rules: the allowed keys of one component for query t (local)
// of a sequence starting at packed row o with n positions, ascending, into
// out (at most its row_share); returns their count. One per component of
// src/model/sparse_patterns.h, in its order; NULL for a dense one.
typedef struct {
    const hax_sparse_state *st;
    const hax_model_config *cfg;
    int o, n, t;
} rule_query;
typedef int (*sparse_rule)(const rule_query *q, int *out);

static int rule_sliding_window(const rule_query *q, int *out) {
    int k = q->cfg->k_c, t = q->t, j0 = t - k + 1 > 0 ? t - k + 1 : 0, nc = t - j0 + 1;
    for (int j = 0; j < nc; j++) out[j] = j0 + j;
    return nc;
}

static int rule_sink(const rule_query *q, int *out) {
    int k = q->cfg->k_c, nc = q->t + 1 < k ? q->t + 1 : k;
    for (int j = 0; j < nc; j++) out[j] = j;
    return nc;
}

static int rule_dilated(const rule_query *q, int *out) {
    int delta = q->cfg->data_max_length / q->cfg->k_c, nc = 0;
    for (int j = delta - 1; j <= q->t; j += delta) out[nc++] = j;
    return nc;
}

// Both LSH kinds: the k_c most recent keys in the query's bucket.
static int rule_lsh(const rule_query *q, int *out) {
    const hax_sparse_state *st = q->st;
    return lsh_keys(out, st->lsh_sorted + q->o, q->n, st->q_bucket[q->o + q->t], q->t, q->cfg->k_c);
}

static int rule_key_selection(const rule_query *q, int *out) {
    int k = q->cfg->k_c, nc;
    const int *sel = q->st->ks->sel + (size_t)(q->o + q->t) * k;
    for (nc = 0; nc < k && sel[nc] >= 0; nc++) out[nc] = sel[nc];
    return nc;
}

static const sparse_rule cpu_rules[] = {
    [SP_SLIDING_WINDOW] = rule_sliding_window,
    [SP_SINK] = rule_sink,
    [SP_DILATED] = rule_dilated,
    [SP_SIGN_BIN_LSH] = rule_lsh,
    [SP_ARGMAX_LSH] = rule_lsh,
    [SP_KEY_SELECTION] = rule_key_selection,
    [SP_FULL] = NULL,  // dense: no lists
};
_Static_assert(sizeof cpu_rules / sizeof cpu_rules[0] == SP_N_COMPONENTS,
               "every component of src/model/sparse_patterns.h needs its CPU rule here");

int sparse_component_has_cpu_rule(int c) {
    return c >= 0 && c < SP_N_COMPONENTS && cpu_rules[c] != NULL;
}

// Builds the allowed list of query t (local) of a sequence starting at o:
// the union of its components' lists.
static int build_row(int *row, const hax_sparse_state *st, const hax_model_config *cfg, int o,
                     int n, int t, int *bufa, int *bufb, int *comp) {
    rule_query q = {st, cfg, o, n, t};
    int ncur = 0;
    int *cur = bufa, *spare = bufb;
    for (int c = 0; c < SP_N_COMPONENTS; c++)
        if ((cfg->sparse_mask & sparse_patterns[c].bit) && cpu_rules[c])
            add_component(&cur, &ncur, &spare, comp, cpu_rules[c](&q, comp));
    memcpy(row, cur, sizeof(int) * ncur);
    return ncur;
}

int sparse_build_union(hax_sparse_state *st, const hax_model_config *cfg, const int *seq_off,
                       int n_seq) {
    int n_tok = seq_off[n_seq], cap = st->row_cap;
    if (sparse_pattern_has(cfg->sparse_mask, SPF_LSH)) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            int o = seq_off[s], n = seq_off[s + 1] - o;
            int64_t *srt = st->lsh_sorted + o;
            for (int j = 0; j < n; j++) srt[j] = ((int64_t)st->k_bucket[o + j] << 32) | j;
            qsort(srt, n, sizeof(int64_t), cmp_i64);
        }
    }
    // rows at a fixed stride first (in parallel), their sizes in allow_off[g + 1]
#pragma omp parallel
    {
        int *scratch = xmalloc(sizeof(int) * 3 * (size_t)cap);
#pragma omp for schedule(static)
        for (int g = 0; g < n_tok; g++) {
            int s = sparse_seq_of(seq_off, n_seq, g), o = seq_off[s];
            st->allow_off[g + 1] = build_row(st->allow_key + (size_t)g * cap, st, cfg, o,
                                             seq_off[s + 1] - o, g - o, scratch, scratch + cap,
                                             scratch + 2 * cap);
        }
        free(scratch);
    }
    // then packed: compacting forward never overwrites a row not yet moved
    int empty = 0;
    st->allow_off[0] = 0;
    for (int g = 0; g < n_tok; g++) {
        int cnt = st->allow_off[g + 1];
        if (cnt == 0) empty = 1;
        if (st->allow_off[g] != g * cap)
            memmove(st->allow_key + st->allow_off[g], st->allow_key + (size_t)g * cap,
                    sizeof(int) * cnt);
        st->allow_off[g + 1] = st->allow_off[g] + cnt;
    }
    return empty;
}
