// test_sparse_tiles.c: the sparse branch's tiled kernels of issue 11
// modelled on the CPU (they are compiled but have not run on a GPU yet; both
// must give the bits of the kernels they replace):
//   - tile_bwd_kv_kernel (cuda/sparse/attn_gather.cu, HAX_SPARSE_TILES=kv):
//     the block's rounds over 64 query rows from the smallest next holder of
//     its 64 keys, each warp's scatter passes over 32-entry windows of its 8
//     keys' transposed lists (with tile_next_holder of cuda/sparse/tiles.h),
//     the zeroed d score / P tiles and the products over all 64 rows. Checked:
//     every list entry lands in its tile exactly once, and dK, dV equal the
//     list kernels' sums (holders ascending, one fused multiply-add each) bit
//     for bit, the rows a key does not hold adding 0 * x. The lists have keys
//     with more than 32 holders in one round (the lower-bound path), blocks
//     spanning sequences, and ragged sizes (N 18, E 40; N 32, E 128).
//   - tile_bwd_q_kernel and tile_fwd_kernel (the same file,
//     HAX_SPARSE_TILES=q, fwd; their rounds are the same helpers, rounds_*):
//     blocks of 64 queries walk their keys in rounds of 64 rows from the
//     smallest next key; each pass must take every query's entries once, in
//     list order, in chunks of 32 that are prefixes of the rest of the list,
//     each entry's key row among the rows the round staged.
//   - ks_targets_tile_kernel (cuda/sparse/ks_rank.cu, HAX_KS_TARGETS=tile):
//     with tile_lane_row, each lane takes the rows of the loop t = I + lane,
//     I + lane + 32, ... in the same order, whatever the block's first tile.
// The models follow the kernels' loops (warps one after another: a warp only
// touches its own keys' state and tile columns).
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/sparse/tiles.h"
#include "src/core/common.h"
#include "src/core/rng.h"
#include "test.h"

// ---------------------------------------------------------------- lists

// A packed batch's allowed lists (per query, keys ascending, at most cap) and
// their transposed lists (per key, holders ascending; entries are list slots
// g * cap + i), as cuda/sparse/trans.cu builds them.
typedef struct {
    int n_tok, cap;
    int *cnt, *key;            // [n_tok], [n_tok * cap]
    float *ds, *p;             // [n_tok * cap]
    int *tr_cnt, *tr_off, *tr_ent;
} lists;

static float uniform(hax_rng *r) { return rng_uniform_f(r); }

// Per query: the first `pop` keys of its sequence (popular keys: held by most
// later queries, so more than 32 holders fall in one round), a window of the
// last 6 keys, and random earlier keys, up to cap.
static void make_lists(lists *L, const int *lens, int n_seq, int cap, int pop, hax_rng *r) {
    int n = 0;
    for (int s = 0; s < n_seq; s++) n += lens[s];
    L->n_tok = n, L->cap = cap;
    L->cnt = xcalloc(n, sizeof(int)), L->key = xmalloc(sizeof(int) * n * cap);
    L->ds = xmalloc(sizeof(float) * n * cap), L->p = xmalloc(sizeof(float) * n * cap);
    char *mark = xmalloc(n);
    for (int s = 0, o = 0; s < n_seq; o += lens[s], s++)
        for (int t = 0; t < lens[s]; t++) {
            int g = o + t, c = 0;
            memset(mark + o, 0, t + 1);
            for (int j = 0; j < pop && j <= t; j++)
                if (uniform(r) < 0.9f) mark[o + j] = 1;
            for (int j = t; j >= 0 && j > t - 6; j--) mark[o + j] = 1;
            for (int e = 0; e < 8; e++) mark[o + (int)rng_below(r, (uint32_t)(t + 1))] = 1;
            for (int j = 0; j <= t && c < cap; j++)
                if (mark[o + j]) {
                    size_t sl = (size_t)g * cap + c++;
                    L->key[sl] = o + j;
                    L->ds[sl] = uniform(r) - 0.5f;
                    L->p[sl] = uniform(r);
                }
            L->cnt[g] = c;
        }
    free(mark);
    L->tr_cnt = xcalloc(n, sizeof(int)), L->tr_off = xmalloc(sizeof(int) * n);
    for (int g = 0; g < n; g++)
        for (int i = 0; i < L->cnt[g]; i++) L->tr_cnt[L->key[(size_t)g * cap + i]]++;
    int total = 0;
    for (int j = 0; j < n; j++) L->tr_off[j] = total, total += L->tr_cnt[j];
    L->tr_ent = xmalloc(sizeof(int) * (total > 0 ? total : 1));
    int *fill = xcalloc(n, sizeof(int));
    for (int g = 0; g < n; g++)  // queries ascending: each key's holders ascending
        for (int i = 0; i < L->cnt[g]; i++) {
            int j = L->key[(size_t)g * cap + i];
            L->tr_ent[L->tr_off[j] + fill[j]++] = g * cap + i;
        }
    free(fill);
}

static void free_lists(lists *L) {
    void *f[] = {L->cnt, L->key, L->ds, L->p, L->tr_cnt, L->tr_off, L->tr_ent};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) free(f[i]);
}

// The list kernels' sums (attn_bwd_k_kernel, gather_bwd_kv_kernel): per key,
// holders ascending, dK_j = sum ds Q_t (written), dV_j += sum P dattn_t.
static void kv_lists(float *dK, float *dV, const lists *L, const float *Qm, const float *A, int N, int E) {
    for (int j = 0; j < L->n_tok; j++) {
        for (int c = 0; c < N; c++) {
            float acc = 0.0f;
            for (int e = 0; e < L->tr_cnt[j]; e++) {
                int sl = L->tr_ent[L->tr_off[j] + e], g = sl / L->cap;
                acc = fmaf(L->ds[sl], Qm[(size_t)g * N + c], acc);
            }
            dK[(size_t)j * N + c] = acc;
        }
        for (int c = 0; c < E; c++) {
            float acc = 0.0f;
            for (int e = 0; e < L->tr_cnt[j]; e++) {
                int sl = L->tr_ent[L->tr_off[j] + e], g = sl / L->cap;
                acc = fmaf(L->p[sl], A[(size_t)g * E + c], acc);
            }
            dV[(size_t)j * E + c] += acc;
        }
    }
}

// ---------------------------------------------------------------- the dK/dV tiles' model

typedef struct {
    long writes, rewrites, rounds, passes, whole_windows;
} kv_stats;

// tile_bwd_kv_kernel, block by block (Qm: the queries' Q rows [n_tok, N], A:
// dattn [n_tok, E]). fault (test_kv_faults): 1 the tiles not zeroed between
// rounds, 2 a list advanced one entry too far after a partial window.
static void kv_tiles(float *dK, float *dV, const lists *L, const float *Qm, const float *A, int N, int E,
                     kv_stats *st, int fault) {
    int n_tok = L->n_tok, cap = L->cap;
    static float S[TILE_Q * TILE_LD], P[TILE_Q * TILE_LD], As[TILE_Q * TILE_E], Qs[TILE_Q * TILE_N];
    static float dk[TILE_K][TILE_N], dv[TILE_K][TILE_E];
    for (int j0 = 0; j0 < n_tok; j0 += TILE_K) {
        int at[TILE_K], left[TILE_K], next[TILE_K];
        for (int k = 0; k < TILE_K; k++) {
            int j = j0 + k;
            at[k] = j < n_tok ? L->tr_off[j] : 0, left[k] = j < n_tok ? L->tr_cnt[j] : 0;
            next[k] = left[k] > 0 ? L->tr_ent[at[k]] / cap : INT_MAX;
        }
        memset(dk, 0, sizeof dk), memset(dv, 0, sizeof dv);
        for (;;) {
            int cs = INT_MAX;
            for (int k = 0; k < TILE_K; k++) cs = next[k] < cs ? next[k] : cs;
            if (cs == INT_MAX) break;
            st->rounds++;
            if (fault != 1) memset(S, 0, sizeof S), memset(P, 0, sizeof P);
            uint64_t used = 0;
            for (int w = 0; w < TILE_WARPS; w++)
                for (;;) {  // the warp's passes
                    int slot[TILE_KEYS_W][32];
                    unsigned act = 0;
                    for (int k = 0; k < TILE_KEYS_W; k++) {
                        int key = w * TILE_KEYS_W + k, on = next[key] < cs + TILE_Q;
                        act |= (unsigned)on << k;
                        for (int l = 0; l < 32; l++)
                            slot[k][l] = on && l < left[key] ? L->tr_ent[at[key] + l] : -1;
                    }
                    if (!act) break;
                    st->passes++;
                    for (int k = 0; k < TILE_KEYS_W; k++) {
                        if (!(act >> k & 1)) continue;
                        int key = w * TILE_KEYS_W + k, g[32], n = 0, prefix = 1;
                        for (int l = 0; l < 32; l++) {
                            g[l] = slot[k][l] >= 0 ? slot[k][l] / cap : INT_MAX;
                            int in = g[l] < cs + TILE_Q;
                            CHECK(g[l] >= cs, "round at %d: holder %d of key %d below it", cs, g[l], j0 + key);
                            if (in) {
                                int r = g[l] - cs;
                                st->rewrites += S[r * TILE_LD + key] != 0.0f || P[r * TILE_LD + key] != 0.0f;
                                S[r * TILE_LD + key] = L->ds[slot[k][l]], P[r * TILE_LD + key] = L->p[slot[k][l]];
                                used |= 1ull << r;
                                st->writes++;
                            }
                            prefix &= !in || n == l;  // the lanes taken are 0 .. n-1
                            n += in;
                        }
                        CHECK(prefix, "key %d: the entries of the round are not a prefix of its window", j0 + key);
                        st->whole_windows += n == 32;
                        int lf = left[key] - n, nxt = tile_next_holder(n, g[n % 32], g[31]);
                        if (fault == 2 && n > 0 && n < 32 && lf > 0) {
                            at[key]++, lf--;
                            nxt = lf > 0 ? L->tr_ent[at[key] + n] / cap : INT_MAX;
                        }
                        at[key] += n, left[key] = lf, next[key] = lf > 0 ? nxt : INT_MAX;
                    }
                }
            for (int r = 0; r < TILE_Q; r++) {
                int u = (int)(used >> r & 1);
                for (int c = 0; c < TILE_E; c++) As[r * TILE_E + c] = u && c < E ? A[(size_t)(cs + r) * E + c] : 0.0f;
                for (int c = 0; c < TILE_N; c++) Qs[r * TILE_N + c] = u && c < N ? Qm[(size_t)(cs + r) * N + c] : 0.0f;
            }
            for (int r = 0; r < TILE_Q; r++)
                for (int k = 0; k < TILE_K; k++) {
                    float s = S[r * TILE_LD + k], p = P[r * TILE_LD + k];
                    for (int c = 0; c < TILE_E; c++) dv[k][c] = fmaf(p, As[r * TILE_E + c], dv[k][c]);
                    for (int c = 0; c < TILE_N; c++) dk[k][c] = fmaf(s, Qs[r * TILE_N + c], dk[k][c]);
                }
        }
        for (int k = 0; k < TILE_K && j0 + k < n_tok; k++) {
            for (int c = 0; c < N; c++) dK[(size_t)(j0 + k) * N + c] = dk[k][c];
            for (int c = 0; c < E; c++) dV[(size_t)(j0 + k) * E + c] += dv[k][c];
        }
    }
}

static long differing(const float *a, const float *b, size_t n) {
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(a + i, b + i, sizeof(float)) != 0;
    return bad;
}

typedef struct {
    long entries, bad_k, bad_v;
    kv_stats st;
} kv_result;

// One batch of lists, dK/dV by the lists and by the tiles' model: the counts.
static kv_result kv_run(const int *lens, int n_seq, int cap, int pop, int N, int E, uint64_t seed, int fault) {
    hax_rng r;
    rng_init(&r, seed, 0, 0, 0, 0);
    lists L;
    make_lists(&L, lens, n_seq, cap, pop, &r);
    int n = L.n_tok;
    long entries = 0;
    for (int g = 0; g < n; g++) entries += L.cnt[g];
    float *Qm = xmalloc(sizeof(float) * n * N), *A = xmalloc(sizeof(float) * n * E);
    for (size_t i = 0; i < (size_t)n * N; i++) Qm[i] = uniform(&r) * 2.0f - 1.0f;
    for (size_t i = 0; i < (size_t)n * E; i++) A[i] = uniform(&r) * 2.0f - 1.0f;
    float *dK1 = xmalloc(sizeof(float) * n * N), *dK2 = xmalloc(sizeof(float) * n * N);
    float *dV1 = xmalloc(sizeof(float) * n * E), *dV2 = xmalloc(sizeof(float) * n * E);
    for (size_t i = 0; i < (size_t)n * E; i++) dV1[i] = dV2[i] = uniform(&r);  // dV accumulates
    kv_result res = {entries, 0, 0, {0}};
    kv_lists(dK1, dV1, &L, Qm, A, N, E);
    kv_tiles(dK2, dV2, &L, Qm, A, N, E, &res.st, fault);
    res.bad_k = differing(dK1, dK2, (size_t)n * N), res.bad_v = differing(dV1, dV2, (size_t)n * E);
    kv_stats *st = &res.st;
    printf("    %s%d tokens, N %d, E %d: %ld entries written %ld times (%ld twice), %ld rounds, %ld passes, %ld whole "
           "windows; differing dK %ld, dV %ld\n", fault ? "fault: " : "", n, N, E, entries, st->writes,
           st->rewrites, st->rounds, st->passes, st->whole_windows, res.bad_k, res.bad_v);
    void *f[] = {Qm, A, dK1, dK2, dV1, dV2};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) free(f[i]);
    free_lists(&L);
    return res;
}

static void kv_case(const int *lens, int n_seq, int cap, int pop, int N, int E, uint64_t seed) {
    kv_result r = kv_run(lens, n_seq, cap, pop, N, E, seed, 0);
    CHECK(r.st.writes == r.entries && r.st.rewrites == 0, "%ld entries, %ld writes, %ld twice", r.entries,
          r.st.writes, r.st.rewrites);
    CHECK(r.bad_k == 0 && r.bad_v == 0, "tiles vs lists: %ld dK, %ld dV elements differ", r.bad_k, r.bad_v);
    if (pop >= 40) CHECK(r.st.whole_windows > 0, "no key had a whole window in one round: the lower bound untested");
}

static const int k_lens[] = {1, 5, 64, 65, 130, 300, 77, 500, 2, 129};

static void test_kv_tiles(void) {
    const int *lens = k_lens;
    int n_seq = (int)(sizeof(k_lens) / sizeof(k_lens[0]));
    kv_case(lens, n_seq, 48, 40, 18, 40, 11);   // popular keys: 40 per sequence
    kv_case(lens, n_seq, 64, 4, 32, 128, 12);   // the paper's N and E
    kv_case(lens, n_seq, 24, 0, 7, 3, 13);      // short lists, tiny rows
}

// The checks can fail: tiles left unzeroed between rounds add earlier
// rounds' entries again, and a list that skips an entry loses it; each must
// show as differing bits (and the second as missing writes).
static void test_kv_faults(void) {
    int n_seq = (int)(sizeof(k_lens) / sizeof(k_lens[0]));
    kv_result a = kv_run(k_lens, n_seq, 48, 40, 18, 40, 11, 1), b = kv_run(k_lens, n_seq, 48, 40, 18, 40, 11, 2);
    CHECK(a.bad_k > 0 && a.bad_v > 0, "unzeroed tiles not seen: %ld dK, %ld dV differ", a.bad_k, a.bad_v);
    CHECK(b.bad_k > 0 && b.st.writes < b.entries, "a skipped entry not seen: %ld dK differ, %ld of %ld written",
          b.bad_k, b.st.writes, b.entries);
}

// ---------------------------------------------------------------- the dQ rounds' model

// tile_bwd_q_kernel's rounds (the lists' keys here are global rows: the
// kernel adds the sequence's first row to its stored positions): for blocks
// of 64 queries, both passes. Returns the number of entries taken out of
// order, taken twice or missed, plus those whose key row the round did not
// stage; counts rounds and chunks of 32. fault 1: the rounds' last row never
// marked for staging.
static long q_rounds(const lists *L, long *rounds, long *chunks, int fault) {
    const int QQ = 64;
    long bad = 0;
    for (int g0 = 0; g0 < L->n_tok; g0 += QQ)
        for (int pass = 0; pass < 2; pass++) {
            int pos[64], next[64];
            for (int q = 0; q < QQ; q++) {
                int g = g0 + q, c = g < L->n_tok ? L->cnt[g] : 0;
                pos[q] = 0, next[q] = c > 0 ? L->key[(size_t)g * L->cap] : INT_MAX;
            }
            for (;;) {
                int ks = INT_MAX;
                for (int q = 0; q < QQ; q++) ks = next[q] < ks ? next[q] : ks;
                if (ks == INT_MAX) break;
                int end = ks + TILE_K;
                (*rounds)++;
                uint64_t used = 0;
                for (int q = 0; q < QQ; q++) {
                    int g = g0 + q;
                    if (next[q] >= end) continue;
                    for (int i = pos[q]; i < L->cnt[g]; i++) {
                        int r = L->key[(size_t)g * L->cap + i] - ks;
                        if (r >= TILE_K) break;
                        if (!(fault == 1 && r == TILE_K - 1)) used |= 1ull << r;
                    }
                }
                for (int q = 0; q < QQ; q++) {
                    int g = g0 + q, cnt = g < L->n_tok ? L->cnt[g] : 0;
                    if (next[q] >= end) continue;
                    for (;;) {  // 32 lanes: entry pos + lane
                        int nb = 0, prefix = 1;
                        for (int l = 0; l < 32; l++) {
                            int i = pos[q] + l, kl = i < cnt ? L->key[(size_t)g * L->cap + i] : INT_MAX, in = kl < end;
                            prefix &= !in || nb == l;
                            if (in) bad += kl < ks || !(used >> (kl - ks) & 1);  // a row not staged
                            nb += in;
                        }
                        bad += !prefix;
                        if (nb == 0) break;
                        (*chunks)++;
                        pos[q] += nb;
                        if (nb < 32) break;
                    }
                    next[q] = pos[q] < cnt ? L->key[(size_t)g * L->cap + pos[q]] : INT_MAX;
                }
            }
            for (int q = 0; q < QQ && g0 + q < L->n_tok; q++) bad += pos[q] != L->cnt[g0 + q];  // every entry, once
        }
    return bad;
}

static void test_q_rounds(void) {
    int n_seq = (int)(sizeof(k_lens) / sizeof(k_lens[0]));
    int caps[3] = {48, 128, 24}, pops[3] = {40, 4, 0};
    for (int c = 0; c < 3; c++) {
        hax_rng r;
        rng_init(&r, 31 + c, 0, 0, 0, 0);
        lists L;
        make_lists(&L, k_lens, n_seq, caps[c], pops[c], &r);
        long rounds = 0, chunks = 0, rf = 0, cf = 0;
        long bad = q_rounds(&L, &rounds, &chunks, 0), bad_fault = q_rounds(&L, &rf, &cf, 1);
        printf("    cap %d: %ld rounds, %ld chunks of 32, %ld entries wrong; with the last row unstaged: %ld\n",
               caps[c], rounds, chunks, bad, bad_fault);
        CHECK(bad == 0, "dQ rounds: %ld entries missed, repeated, out of order or unstaged", bad);
        CHECK(bad_fault > 0, "an unstaged row not seen");
        free_lists(&L);
    }
}

// ---------------------------------------------------------------- the targets' rows

// ks_targets_tile_kernel: the block's tiles start at the smallest position t0
// of its candidates and step by 32; lane l of the candidate at I takes
// tile_lane_row(I, t0, l) when it lies in [I, n). The rows each lane takes,
// in order, must be the loop's t = I + l, I + l + 32, ... < n.
static void test_target_rows(void) {
    hax_rng r;
    rng_init(&r, 21, 0, 0, 0, 0);
    long cases = 0, bad = 0;
    for (int trial = 0; trial < 4000; trial++) {
        int n = 1 + (int)rng_below(&r, 700), I = (int)rng_below(&r, (uint32_t)n);
        int t0 = trial % 3 == 0 ? I : (int)rng_below(&r, (uint32_t)(I + 1));  // the block's first row
        for (int l = 0; l < 32; l++) {
            int want = I + l, ok = 1;
            for (int t = t0; t < n; t += 32) {
                int row = tile_lane_row(I, t, l);
                ok &= row >= t && row < t + 32 && (row - I - l) % 32 == 0;
                if (row >= I && row < n) ok &= row == want, want += 32;
            }
            ok &= want >= n;  // every row of the loop was taken
            bad += !ok, cases++;
        }
    }
    printf("    %ld (candidate, lane) cases, %ld with other rows or another order\n", cases, bad);
    CHECK(bad == 0, "%ld of %ld lanes take other rows than the loop", bad, cases);
}

int main(void) {
    RUN(test_kv_tiles);
    RUN(test_kv_faults);
    RUN(test_q_rounds);
    RUN(test_target_rows);
    return test_summary();
}
