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

int sparse_row_cap(const hax_model_config *cfg, int max_len) {
    unsigned m = cfg->sparse_mask;
    int k = cfg->k_c, cap = 0;
    if (m & SPARSE_SLIDING_WINDOW) cap += k;
    if (m & SPARSE_SINK) cap += k;
    if (m & SPARSE_SIGN_BIN_LSH) cap += k;
    if (m & SPARSE_ARGMAX_LSH) cap += k;
    if (m & SPARSE_KEY_SELECTION) cap += k;
    if (m & SPARSE_DILATED) cap += max_len / (cfg->data_max_length / k) + 1;
    return cap > 0 ? cap : 1;
}

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

// Builds the allowed list of query t (local) of a sequence starting at o.
static int build_row(int *row, const hax_sparse_state *st, const hax_model_config *cfg, int o,
                     int n, int t, int *bufa, int *bufb, int *comp) {
    unsigned m = cfg->sparse_mask;
    int k = cfg->k_c, nc, ncur = 0;
    int *cur = bufa, *spare = bufb;
    if (m & SPARSE_SINK) {
        nc = t + 1 < k ? t + 1 : k;
        for (int j = 0; j < nc; j++) comp[j] = j;
        add_component(&cur, &ncur, &spare, comp, nc);
    }
    if (m & SPARSE_DILATED) {
        int delta = cfg->data_max_length / k;
        nc = 0;
        for (int j = delta - 1; j <= t; j += delta) comp[nc++] = j;
        add_component(&cur, &ncur, &spare, comp, nc);
    }
    if (m & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) {
        nc = lsh_keys(comp, st->lsh_sorted + o, n, st->q_bucket[o + t], t, k);
        add_component(&cur, &ncur, &spare, comp, nc);
    }
    if (m & SPARSE_KEY_SELECTION) {
        const int *sel = st->ks->sel + (size_t)(o + t) * k;
        for (nc = 0; nc < k && sel[nc] >= 0; nc++) comp[nc] = sel[nc];
        add_component(&cur, &ncur, &spare, comp, nc);
    }
    if (m & SPARSE_SLIDING_WINDOW) {
        int j0 = t - k + 1 > 0 ? t - k + 1 : 0;
        nc = t - j0 + 1;
        for (int j = 0; j < nc; j++) comp[j] = j0 + j;
        add_component(&cur, &ncur, &spare, comp, nc);
    }
    memcpy(row, cur, sizeof(int) * ncur);
    return ncur;
}

int sparse_build_union(hax_sparse_state *st, const hax_model_config *cfg, const int *seq_off,
                       int n_seq) {
    int n_tok = seq_off[n_seq], cap = st->row_cap;
    if (cfg->sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) {
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
