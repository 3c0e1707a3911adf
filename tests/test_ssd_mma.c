// test_ssd_mma.c: the tensor-core path of the SSD's chunk products
// (HAX_SSD_MMA=tc, ssd_mm_tc in cuda/ops/ssd_chunk.cuh) modelled on the CPU.
// It runs the fragment index code of cuda/ops/ssd_tc.h (the same functions
// the kernels call) for the 8 warps × 32 lanes of a block, against a model of
// mma.m16n8k8 with tf32 operands written here from the PTX ISA's fragment
// tables ("Matrix Fragments for mma.m16n8k8", .tf32 / .f32), and checks that
// the products of the kernels' shapes and strides (padded shared-memory tiles,
// transposed reads, K not a multiple of 8) equal plain matrix products:
//   - the index functions against values read off the PTX tables;
//   - every output entry owned by exactly one (warp, slot, lane, register),
//     a warp's tiles in the same 16 rows;
//   - the 3xTF32 split (cvt.rna modelled) within 1e-6 of the exact product
//     relative to Σ_k |a_ik b_kj|, and one tf32 product alone not (so the
//     check can fail);
//   - the k order (ssd_tc_k) a permutation, and the fragment loads' shared-
//     memory bank conflicts at the kernels' strides: none for 32- and 64-wide
//     sums, at most 2-way for 16-wide ones (printed beside the natural order's).
// No GPU needed: it proves the layout, not the hardware's rounding.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/ops/ssd_tc.h"
#include "src/core/common.h"
#include "test.h"

#define WARPS SSD_TC_WARPS
#define MAX_SLOTS 4  // 4 × 8 tiles of 16 × 8 (a 64 × 64 output) over 8 warps

// ---------------------------------------------------------------- the instruction's model

// cvt.rna.tf32.f32: the 13 low mantissa bits rounded off, to nearest, ties
// away from zero (the magnitude is rounded: sign-magnitude bits).
static uint32_t tf32_rna(float x) { return (f32_bits(x) + 0x1000u) & ~0x1fffu; }

static void split(float x, uint32_t *hi, uint32_t *lo) {
    *hi = tf32_rna(x);
    *lo = tf32_rna(x - f32_from_bits(*hi));
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d, a, b, d for one warp,
// per the PTX ISA's tables (g = lane >> 2, t = lane % 4):
//   A: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
//   B: b0 (row t, col g), b1 (row t+4, col g)
//   C/D: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
// The sum is formed in double and rounded once (the hardware's own order and
// rounding are not modelled). Returns 0 when the tables did not fill each
// matrix exactly once (a wrong transcription).
static int mma_model(float d[32][4], uint32_t a[32][4], uint32_t b[32][2]) {
    double Am[16][8], Bm[8][8], Cm[16][8];
    int na[16][8] = {{0}}, nb[8][8] = {{0}}, nc[16][8] = {{0}};
    for (int l = 0; l < 32; l++) {
        int g = l >> 2, t = l & 3;
        int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {t, t, t + 4, t + 4};
        int cr[4] = {g, g, g + 8, g + 8}, cc[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int r = 0; r < 4; r++) {
            Am[ar[r]][ac[r]] = f32_from_bits(a[l][r]), na[ar[r]][ac[r]]++;
            Cm[cr[r]][cc[r]] = d[l][r], nc[cr[r]][cc[r]]++;
        }
        Bm[t][g] = f32_from_bits(b[l][0]), nb[t][g]++;
        Bm[t + 4][g] = f32_from_bits(b[l][1]), nb[t + 4][g]++;
    }
    int once = 1;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) once &= na[i][j] == 1 && nc[i][j] == 1 && (i >= 8 || nb[i][j] == 1);
    double D[16][8];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) {
            double s = Cm[i][j];
            for (int k = 0; k < 8; k++) s += Am[i][k] * Bm[k][j];
            D[i][j] = s;
        }
    for (int l = 0; l < 32; l++) {
        int g = l >> 2, t = l & 3;
        d[l][0] = (float)D[g][2 * t], d[l][1] = (float)D[g][2 * t + 1];
        d[l][2] = (float)D[g + 8][2 * t], d[l][3] = (float)D[g + 8][2 * t + 1];
    }
    return once;
}

// ---------------------------------------------------------------- the block, as ssd_mm_tc runs it

// The block's accumulators: acc[w][s][lane][r].
typedef float block_acc[WARPS][MAX_SLOTS][32][4];

// ssd_mm_tc for all 8 warps: acc += A·B over KS steps of 8 (k order ssd_tc_k).
// terms 3: the 3xTF32 split (small terms first); 1: a_hi·b_hi alone.
static int mm_tc_model(int MT, int NT, int KS, block_acc acc, const float *A, int ai, int ak, const float *Bm, int bk,
                       int bj, int terms) {
    int ok = 1;
    for (int w = 0; w < WARPS; w++) {
        if (w >= MT * NT) continue;
        int mt = w % MT;
        for (int ks = 0; ks < KS; ks++) {
            uint32_t ah[32][4], al[32][4];
            for (int l = 0; l < 32; l++) {
                float af[4];
                ssd_tc_load_a(af, A, ai, ak, mt, KS, ks, l);
                for (int r = 0; r < 4; r++) split(af[r], &ah[l][r], &al[l][r]);
            }
            for (int s = 0; s < SSD_TC_SLOTS(MT, NT); s++) {
                int tm, tn;
                if (!ssd_tc_tile(MT, NT, w, s, &tm, &tn)) continue;
                ok &= tm == mt;  // one A fragment serves all of a warp's tiles
                uint32_t bh[32][2], bl[32][2];
                for (int l = 0; l < 32; l++) {
                    float bf[2];
                    ssd_tc_load_b(bf, Bm, bk, bj, tn, KS, ks, l);
                    for (int r = 0; r < 2; r++) split(bf[r], &bh[l][r], &bl[l][r]);
                }
                if (terms == 3) {
                    ok &= mma_model(acc[w][s], al, bh);
                    ok &= mma_model(acc[w][s], ah, bl);
                }
                ok &= mma_model(acc[w][s], ah, bh);
            }
        }
    }
    return ok;
}

// ssd_tc_each: the block's accumulators into out[i·ld + j]; counts how often
// each entry is written into hits (expected: once each).
static void tc_each_model(int MT, int NT, block_acc acc, float *out, int ld, int *hits) {
    for (int w = 0; w < WARPS; w++)
        for (int s = 0; s < SSD_TC_SLOTS(MT, NT); s++) {
            int mt, nt;
            if (!ssd_tc_tile(MT, NT, w, s, &mt, &nt)) continue;
            for (int l = 0; l < 32; l++)
                for (int r = 0; r < 4; r++) {
                    int i = 16 * mt + ssd_tc_c_row(l, r), j = 8 * nt + ssd_tc_c_col(l, r);
                    out[i * ld + j] = acc[w][s][l][r];
                    hits[i * ld + j]++;
                }
        }
}

// ---------------------------------------------------------------- tests

static void test_index_functions_match_ptx_tables(void) {
    // Lane 0 (g 0, t 0), lane 5 (g 1, t 1), lane 31 (g 7, t 3), read off the PTX figures.
    struct { int l, r, row, col; } a[] = {{0, 0, 0, 0}, {0, 1, 8, 0}, {0, 2, 0, 4}, {0, 3, 8, 4},
                                          {5, 0, 1, 1}, {5, 1, 9, 1}, {5, 2, 1, 5}, {5, 3, 9, 5}, {31, 3, 15, 7}};
    for (size_t q = 0; q < sizeof a / sizeof a[0]; q++)
        CHECK(ssd_tc_a_row(a[q].l, a[q].r) == a[q].row && ssd_tc_a_col(a[q].l, a[q].r) == a[q].col,
              "A: lane %d a%d: expected (%d, %d), found (%d, %d)", a[q].l, a[q].r, a[q].row, a[q].col,
              ssd_tc_a_row(a[q].l, a[q].r), ssd_tc_a_col(a[q].l, a[q].r));
    struct { int l, r, k, n; } b[] = {{0, 0, 0, 0}, {0, 1, 4, 0}, {5, 0, 1, 1}, {5, 1, 5, 1}, {31, 1, 7, 7}};
    for (size_t q = 0; q < sizeof b / sizeof b[0]; q++)
        CHECK(ssd_tc_b_row(b[q].l, b[q].r) == b[q].k && ssd_tc_b_col(b[q].l) == b[q].n,
              "B: lane %d b%d: expected (k %d, n %d), found (k %d, n %d)", b[q].l, b[q].r, b[q].k, b[q].n,
              ssd_tc_b_row(b[q].l, b[q].r), ssd_tc_b_col(b[q].l));
    struct { int l, r, row, col; } c[] = {{0, 0, 0, 0}, {0, 1, 0, 1}, {0, 2, 8, 0}, {0, 3, 8, 1},
                                          {5, 0, 1, 2}, {5, 1, 1, 3}, {5, 2, 9, 2}, {5, 3, 9, 3}, {31, 3, 15, 7}};
    for (size_t q = 0; q < sizeof c / sizeof c[0]; q++)
        CHECK(ssd_tc_c_row(c[q].l, c[q].r) == c[q].row && ssd_tc_c_col(c[q].l, c[q].r) == c[q].col,
              "C: lane %d c%d: expected (%d, %d), found (%d, %d)", c[q].l, c[q].r, c[q].row, c[q].col,
              ssd_tc_c_row(c[q].l, c[q].r), ssd_tc_c_col(c[q].l, c[q].r));
    // tf32 rounding: 1 + 2^-11 is a tie (away from zero: up), 1 + 2^-12 rounds down.
    CHECK(f32_from_bits(tf32_rna(1.0f + 0x1p-11f)) == 1.0f + 0x1p-10f, "tf32(1 + 2^-11): expected 1 + 2^-10");
    CHECK(f32_from_bits(tf32_rna(-1.0f - 0x1p-11f)) == -1.0f - 0x1p-10f, "tf32(-1 - 2^-11): expected -1 - 2^-10");
    CHECK(f32_from_bits(tf32_rna(1.0f + 0x1p-12f)) == 1.0f, "tf32(1 + 2^-12): expected 1");
}

// The k order: for each KS a permutation of 0..8·KS-1.
static void test_k_order_is_a_permutation(void) {
    for (int KS = 1; KS <= 8; KS *= 2) {
        int seen[64] = {0}, ok = 1;
        for (int s = 0; s < KS; s++)
            for (int c = 0; c < 8; c++) {
                int k = ssd_tc_k(KS, s, c);
                if (k < 0 || k >= 8 * KS) ok = 0;
                else seen[k]++;
            }
        for (int k = 0; k < 8 * KS; k++) ok &= seen[k] == 1;
        CHECK(ok, "ssd_tc_k(%d, ., .): expected each k of 0..%d once", KS, 8 * KS - 1);
    }
}

// Wavefronts of one shared-memory load of the 32 lanes' word offsets: the
// most distinct words that fall on one of the 32 banks.
static int wavefronts(const int at[32]) {
    int most = 1;
    for (int b = 0; b < 32; b++) {
        int words[32], n = 0;
        for (int l = 0; l < 32; l++) {
            if (((at[l] % 32) + 32) % 32 != b) continue;
            int dup = 0;
            for (int q = 0; q < n; q++) dup |= words[q] == at[l];
            if (!dup) words[n++] = at[l];
        }
        if (n > most) most = n;
    }
    return most;
}

// The fragment loads of one product (all warps, steps, tiles): total and
// worst wavefronts, in ssd_tc_k's order (natural 0) or in natural order
// (k = 8s + c, natural 1).
static void bank_count(int MT, int NT, int KS, int ai, int ak, int bk, int bj, int natural, int *total, int *worst) {
    *total = 0, *worst = 0;
    for (int w = 0; w < WARPS && w < MT * NT; w++)
        for (int ks = 0; ks < KS; ks++) {
            for (int r = 0; r < 4; r++) {
                int at[32];
                for (int l = 0; l < 32; l++)
                    at[l] = natural ? (16 * (w % MT) + ssd_tc_a_row(l, r)) * ai + (8 * ks + ssd_tc_a_col(l, r)) * ak
                                    : ssd_tc_a_at(ai, ak, w % MT, KS, ks, l, r);
                int f = wavefronts(at);
                *total += f, *worst = f > *worst ? f : *worst;
            }
            for (int s = 0; s < SSD_TC_SLOTS(MT, NT); s++) {
                int mt, nt;
                if (!ssd_tc_tile(MT, NT, w, s, &mt, &nt)) continue;
                for (int r = 0; r < 2; r++) {
                    int at[32];
                    for (int l = 0; l < 32; l++)
                        at[l] = natural ? (8 * ks + ssd_tc_b_row(l, r)) * bk + (8 * nt + ssd_tc_b_col(l)) * bj
                                        : ssd_tc_b_at(bk, bj, nt, KS, ks, l, r);
                    int f = wavefronts(at);
                    *total += f, *worst = f > *worst ? f : *worst;
                }
            }
        }
}

static float urand(unsigned *st) {
    *st = *st * 1664525u + 1013904223u;
    return (float)((*st >> 8) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

// A padded tile rows × ld of random values, zero at row >= zr or column >= zc
// (as ssd_load leaves it), exactly its size on the heap (ASan sees overreads).
static float *tile(int rows, int ld, int zr, int zc, unsigned *st) {
    float *t = xmalloc(sizeof(float) * (size_t)rows * ld);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < ld; j++) t[i * ld + j] = i < zr && j < zc ? urand(st) : 0.0f;
    return t;
}

typedef struct {
    const char *what;
    int MT, NT;             // output tiles of 16 × 8
    int a_rows, a_ld, ai, ak, a_zr, a_zc;  // A's tile and A(i, k) = A[i·ai + k·ak], zero from row a_zr / column a_zc
    int b_rows, b_ld, bk, bj, b_zr, b_zc;  // B's tile and B(k, j) = B[k·bk + j·bj]
    int KS;                 // steps of 8 (K' = 8·KS)
} mm_case;

// One product of the kernels' shapes: the 3xTF32 model against the exact
// product (and one tf32 term against it, which must be far worse).
static void check_case(const mm_case *c, unsigned seed) {
    unsigned st = seed;
    float *A = tile(c->a_rows, c->a_ld, c->a_zr, c->a_zc, &st), *B = tile(c->b_rows, c->b_ld, c->b_zr, c->b_zc, &st);
    int M = 16 * c->MT, Nc = 8 * c->NT;
    static block_acc acc;
    float *out = xmalloc(sizeof(float) * M * Nc);
    int *hits = xmalloc(sizeof(int) * M * Nc);
    double worst[2] = {0.0, 0.0};
    for (int pass = 0; pass < 2; pass++) {
        int terms = pass == 0 ? 3 : 1;
        memset(acc, 0, sizeof acc);
        memset(hits, 0, sizeof(int) * M * Nc);
        int ok = mm_tc_model(c->MT, c->NT, c->KS, acc, A, c->ai, c->ak, B, c->bk, c->bj, terms);
        CHECK(ok, "%s: the mma tables did not fill each matrix once, or a warp's tiles are not in one row band", c->what);
        tc_each_model(c->MT, c->NT, acc, out, Nc, hits);
        int once = 1;
        for (int q = 0; q < M * Nc; q++) once &= hits[q] == 1;
        CHECK(once, "%s: expected every output entry from exactly one lane and register", c->what);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < Nc; j++) {
                double s = 0.0, mag = 0.0;
                for (int k = 0; k < 8 * c->KS; k++) {
                    double p = (double)A[i * c->ai + k * c->ak] * B[k * c->bk + j * c->bj];
                    s += p, mag += fabs(p);
                }
                double e = fabs(out[i * Nc + j] - s) / (mag > 0 ? mag : 1.0);
                if (e > worst[pass]) worst[pass] = e;
            }
    }
    int tot, most, tot_nat, most_nat;
    bank_count(c->MT, c->NT, c->KS, c->ai, c->ak, c->bk, c->bj, 0, &tot, &most);
    bank_count(c->MT, c->NT, c->KS, c->ai, c->ak, c->bk, c->bj, 1, &tot_nat, &most_nat);
    printf("    %-34s 3xTF32 %.1e (one tf32 product %.1e); load wavefronts %d, worst %d-way (natural k order %d, %d-way)\n",
           c->what, worst[0], worst[1], tot, most, tot_nat, most_nat);
    CHECK(worst[0] <= 1e-6, "%s: 3xTF32 error %.2e above 1e-6 of Σ|a·b|", c->what, worst[0]);
    CHECK(worst[1] > 1e-5, "%s: one tf32 product alone within %.2e: the check cannot tell", c->what, worst[1]);
    CHECK(most <= (c->KS >= 4 ? 1 : 2), "%s: fragment loads %d-way bank-conflicted (K' %d)", c->what, most, 8 * c->KS);
    free(A), free(B), free(out), free(hits);
}

static void test_kernel_products(void) {
    // The products of ssd_chunk.cuh / ssd_chunk_bwd.cuh, at P 16, N 32
    // (ldP 17, ldN 33, QP 65) and at P 40, N 20 (RP 4, RN 2: ldP 65, ldN 33),
    // with chunk lengths L of 64 and 37 (K = L, not a multiple of 8).
    const mm_case cases[] = {
        // G = C·Bᵀ: A = Cs (ldN, 1), B(n, j) = Bs[j·ldN + n], K' = 16·RN
        {"G = C·B^T (N 32)", 4, 8, 64, 33, 33, 1, 64, 32, 64, 33, 1, 33, 64, 32, 4},
        {"G = C·B^T (N 20, L 37)", 4, 8, 64, 33, 33, 1, 37, 20, 64, 33, 1, 33, 37, 20, 4},
        // S_loc = Xᵀ·V: A(p, i) = X[i·ldP + p], B = V (ldN, 1), all 64 positions
        {"S_loc = X^T·B (P 16, N 32)", 1, 4, 64, 17, 1, 17, 64, 16, 64, 33, 33, 1, 64, 32, 8},
        {"S_loc = X^T·B (P 40, N 20, L 37)", 4, 4, 64, 65, 1, 65, 37, 40, 64, 33, 33, 1, 37, 20, 8},
        // y's Ms·X: A = Ms (QP, 1), B = X (ldP, 1), all 64 positions
        {"y: M·X (P 16, L 37)", 4, 2, 64, 65, 65, 1, 64, 37, 64, 17, 17, 1, 37, 16, 8},
        // y's C·S_inᵀ: A = Cs, B(n, p) = Si[p·ldN + n], K' = 16·RN
        {"y: C·S_in^T (P 40, N 20)", 4, 8, 64, 33, 33, 1, 64, 20, 64, 33, 1, 33, 40, 20, 4},
        // du's Mᵀ·dy: A(j, i) = Ms[i·QP + j], B = dY, all 64 positions
        {"du: M^T·dy (P 16, L 64)", 4, 2, 64, 65, 1, 65, 64, 64, 64, 17, 17, 1, 64, 16, 8},
        // Ŵ's dy·xᵀ: A = dY (ldP, 1), B(p, j) = X[j·ldP + p], K' = 16·RP
        {"W: dy·x^T (P 40)", 4, 8, 64, 65, 65, 1, 64, 40, 64, 65, 1, 65, 64, 40, 8},
        {"W: dy·x^T (P 16)", 4, 8, 64, 17, 17, 1, 64, 16, 64, 17, 1, 17, 64, 16, 2},
        // Z's dy·S_in: A = dY, B = Si (ldN, 1), K' = 16·RP
        {"Z: dy·S_in (P 16, N 32)", 4, 4, 64, 17, 17, 1, 64, 16, 16, 33, 33, 1, 16, 32, 2},
        // dB += Ŵᵀ·C: A(j, i) = Ws[i·QP + j], B = Cs, all 64 positions
        {"dB: W^T·C (N 32, L 37)", 4, 4, 64, 65, 1, 65, 37, 37, 64, 33, 33, 1, 37, 32, 8},
    };
    for (size_t q = 0; q < sizeof cases / sizeof cases[0]; q++) check_case(&cases[q], 1000u + (unsigned)q);
}

int main(void) {
    RUN(test_index_functions_match_ptx_tables);
    RUN(test_k_order_is_a_permutation);
    RUN(test_kernel_products);
    return test_summary();
}
