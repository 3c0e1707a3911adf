// cuda/ops/ssd_chunk.cuh: the chunked ("state passing") SSD of cuda/ops/ssd.cu:
// its arguments, the chunk slots, the shared-memory matrix product and the
// chunk-local kernels. tests/test_ssd_chunk.c writes the same algebra in C.
//
// A chunk is up to SSD_Q positions of one sequence. Sequence s's chunk j has
// slot s + seq_off[s]/SSD_Q + j (distinct for every chunk, fewer than
// n_tok/SSD_Q + n_seq: the host sizes grids and buffers by that bound without
// reading seq_off; a block whose slot is no chunk exits). One block of 256
// threads takes a chunk for all heads in order, so G = C·Bᵀ (one group) is
// computed once and dB, dC (sums over heads) are added in head order.
// Everything is fp32 FMAs on shared-memory tiles padded with zeros to
// multiples of 16 (rows of odd length: no bank conflicts).
#ifndef HAX_CU_SSD_CHUNK_CUH
#define HAX_CU_SSD_CHUNK_CUH

#include "cuda/core/common.cuh"
#include "cuda/ops/ssd_tc.h"

#define SSD_Q 64         // positions per chunk
#define SSD_THREADS 256  // a 16 × 16 grid of threads per block
#define SSD_QP (SSD_Q + 1)

struct ssd_args {
    const float *x, *dt, *delta, *B, *C, *dt_bias, *A_log, *D, *dy;
    int ld_x, ld_dt, ld_bc, ld_dy;
    float *y;
    int ld_y;
    float *S, *dec;  // checkpoint: S_in [slot][H][P·N], then e^{a_last} [slot][H]
    float *dx, *ddt, *dB, *dC;
    int ld_dx, ld_ddt, ld_dbc;
    float *dS;    // workspace: dS_loc, then dS_out [slot][H][P·N]
    double *par;  // workspace: [slot][H][3] dA (w.r.t. A), dD, Σ d(dt)
    const int *seq_off;
    int n_seq, n_tok, n_slots, H, P, N;
};

struct ssd_chunk {
    int t0, L;
};

__device__ __forceinline__ int ssd_slot_base(const int *seq_off, int s) { return s + seq_off[s] / SSD_Q; }

// The chunk of slot k (false: no chunk, the block exits).
__device__ __forceinline__ bool ssd_chunk_at(const int *seq_off, int n_seq, int k, ssd_chunk *c) {
    int lo = 0, hi = n_seq - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ssd_slot_base(seq_off, mid) <= k) lo = mid;
        else hi = mid - 1;
    }
    int j = k - ssd_slot_base(seq_off, lo), len = seq_off[lo + 1] - seq_off[lo];
    if (j * SSD_Q >= len) return false;
    c->t0 = seq_off[lo] + j * SSD_Q;
    c->L = min(SSD_Q, len - j * SSD_Q);
    return true;
}

// acc[r][c] += Σ_{k<K} A(i, k)·B(k, j) for this thread's outputs i = ty + 16r,
// j = tx + 16c, with A(i, k) = A[i·ai + k·ak] and B(k, j) = Bm[k·bk + j·bj]
// (every operand in shared memory, padded so all reads are in bounds).
template <int RM, int RC>
__device__ __forceinline__ void ssd_mm(float (&acc)[RM][RC], const float *A, int ai, int ak, const float *Bm, int bk,
                                       int bj, int K) {
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    for (int k = 0; k < K; k++) {
        float av[RM], bv[RC];
#pragma unroll
        for (int r = 0; r < RM; r++) av[r] = A[(ty + 16 * r) * ai + k * ak];
#pragma unroll
        for (int c = 0; c < RC; c++) bv[c] = Bm[k * bk + (tx + 16 * c) * bj];
#pragma unroll
        for (int r = 0; r < RM; r++)
#pragma unroll
            for (int c = 0; c < RC; c++) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
    }
}

template <int RM, int RC>
__device__ __forceinline__ void ssd_zero(float (&acc)[RM][RC]) {
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
        for (int c = 0; c < RC; c++) acc[r][c] = 0.0f;
}

// ---------------------------------------------------------------- tensor cores (HAX_SSD_MMA=tc)
// The same products on tensor cores: mma.m16n8k8 with tf32 operands and f32
// accumulators, each operand split in two tf32 values (x = hi + lo, hi =
// tf32(x), lo = tf32(x - hi), the subtraction exact) and three products
// added, the small ones first: acc += a_lo·b_hi, += a_hi·b_lo, += a_hi·b_hi
// ("3xTF32": a_lo·b_lo, about 2^-22 of a term, is left out), so the result
// keeps about fp32's accuracy; not fp32's bits (the tensor core adds 8
// products and the accumulator in its own order): HAX_SSD_MMA=fma, the
// default, keeps the FMA path above. Deterministic: a fixed k order, no atomics.
//
// Fragments are loaded per lane straight from the shared-memory tiles with
// their strides (cuda/ops/ssd_tc.h), so the tiles keep the FMA path's layout.
// With their odd leading dimensions a fragment in natural k order would take
// up to 4-way bank conflicts; the k order of ssd_tc_k spreads a step's k
// instead (conflict-free for K' 32 and 64, 2-way for 16-wide operands). Each
// product runs over the operands' padded width K' (16·RP, 16·RN) or all SSD_Q
// positions (the tiles are zero past the chunk's L): a chunk shorter than 64
// costs as much as a full one in these products.
//
// The accumulators are in the mma's C layout, not acc[r][c]'s 16 × 16 grid:
// each product's epilogue is written a second time for the tc path, walking
// the thread's fragment entries with their (row, column) (ssd_tc_each): no
// shared-memory hand-off, no extra barrier; the price is a second copy of
// each epilogue's few lines in the kernels.

// A warp's accumulators of an MT × NT-tile output (ssd_tc.h): v[s][r] is
// register r of the tile in slot s.
template <int MT, int NT>
struct ssd_tc_acc {
    float v[SSD_TC_SLOTS(MT, NT)][4];
};

template <int MT, int NT>
__device__ __forceinline__ void ssd_tc_zero(ssd_tc_acc<MT, NT> &acc) {
#pragma unroll
    for (int s = 0; s < SSD_TC_SLOTS(MT, NT); s++)
#pragma unroll
        for (int r = 0; r < 4; r++) acc.v[s][r] = 0.0f;
}

// x = hi + lo, both tf32 (cvt.rna: round to nearest, ties away from zero).
__device__ __forceinline__ void ssd_tf32_split(float x, unsigned &hi, unsigned &lo) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    hi = lo = 0u;
    __trap();  // tf32 mma needs sm_80 (the Makefile builds CUDA_ARCH sm_90)
#else
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(hi) : "f"(x));
    float rest = x - __uint_as_float(hi);
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(lo) : "f"(rest));
#endif
}

// d += a·b over one 16 × 8 × 8 tile, the whole warp.
__device__ __forceinline__ void ssd_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// acc += Σ_{k<8·KS} A(i, k)·B(k, j) over this warp's tiles, A(i, k) = A[i·ai + k·ak],
// B(k, j) = Bm[k·bk + j·bj], in KS steps of 8 (k order: ssd_tc_k). The callers'
// tiles are zero (in A or B, the other finite) from the true K up to 8·KS.
// Called by all threads (mma.sync: whole warps; a warp without a tile returns).
template <int MT, int NT, int KS>
__device__ __forceinline__ void ssd_mm_tc(ssd_tc_acc<MT, NT> &acc, const float *A, int ai, int ak, const float *Bm,
                                          int bk, int bj) {
    static_assert(SSD_TC_WARPS % MT == 0, "a warp's tiles must share their rows (one A fragment per k step)");
    static_assert(KS == 1 || KS == 2 || KS == 4 || KS == 8, "ssd_tc_k: 1, 2, 4 or 8 steps");
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
    if (w >= MT * NT) return;
    int mt = w % MT;
#pragma unroll 2
    for (int ks = 0; ks < KS; ks++) {
        float af[4];
        unsigned ah[4], al[4];
        ssd_tc_load_a(af, A, ai, ak, mt, KS, ks, l);
#pragma unroll
        for (int r = 0; r < 4; r++) ssd_tf32_split(af[r], ah[r], al[r]);
#pragma unroll
        for (int s = 0; s < SSD_TC_SLOTS(MT, NT); s++) {
            int tm, tn;
            if (!ssd_tc_tile(MT, NT, w, s, &tm, &tn)) continue;
            float bf[2];
            unsigned bh[2], bl[2];
            ssd_tc_load_b(bf, Bm, bk, bj, tn, KS, ks, l);
#pragma unroll
            for (int r = 0; r < 2; r++) ssd_tf32_split(bf[r], bh[r], bl[r]);
            ssd_mma(acc.v[s], al, bh);  // the small terms first
            ssd_mma(acc.v[s], ah, bl);
            ssd_mma(acc.v[s], ah, bh);
        }
    }
}

// f(s, r, i, j) for each accumulator v[s][r] of this thread in an MT × NT-tile
// output, (i, j) its row and column.
template <int MT, int NT, typename F>
__device__ __forceinline__ void ssd_tc_each(F f) {
    int w = threadIdx.x >> 5, l = threadIdx.x & 31;
#pragma unroll
    for (int s = 0; s < SSD_TC_SLOTS(MT, NT); s++) {
        int mt, nt;
        if (!ssd_tc_tile(MT, NT, w, s, &mt, &nt)) continue;
#pragma unroll
        for (int r = 0; r < 4; r++) f(s, r, 16 * mt + ssd_tc_c_row(l, r), 8 * nt + ssd_tc_c_col(l, r));
    }
}

// G_ij = C_i·B_j over a chunk's positions i, j (Cs, Bs: [SSD_Q][16·RN + 1]
// tiles, N features) into Gs [SSD_Q][SSD_QP]: the forward's and the
// backward's chunk kernels both start from it. TC: on tensor cores.
template <int RN, bool TC>
__device__ __forceinline__ void ssd_gram(float *Gs, const float *Cs, const float *Bs, int N) {
    const int ldN = 16 * RN + 1;
    if constexpr (TC) {
        ssd_tc_acc<4, 8> acc;
        ssd_tc_zero(acc);
        ssd_mm_tc<4, 8, 2 * RN>(acc, Cs, ldN, 1, Bs, 1, ldN);
        ssd_tc_each<4, 8>([&](int s, int r, int i, int j) { Gs[i * SSD_QP + j] = acc.v[s][r]; });
    } else {
        int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
        float acc[4][4];
        ssd_zero(acc);
        ssd_mm(acc, Cs, ldN, 1, Bs, 1, ldN, N);
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) Gs[(ty + 16 * r) * SSD_QP + tx + 16 * c] = acc[r][c];
    }
}

// rows × cols of a global matrix (row t0 + i, column col0 + j) into a shared
// [R][ld] tile, zero outside L rows and cols columns (R·16 ≥ rows).
__device__ __forceinline__ void ssd_load(float *dst, int ld, int R, int W, const float *src, int ld_src, int t0,
                                         int col0, int L, int cols) {
    for (int q = threadIdx.x; q < R * W; q += blockDim.x) {
        int i = q / W, j = q % W;
        dst[i * ld + j] = i < L && j < cols ? src[(size_t)(t0 + i) * ld_src + col0 + j] : 0.0f;
    }
}

// Warp 0: a[i] = Σ_{j<=i} dl[j]·A over the chunk (fixed shuffle tree).
__device__ __forceinline__ void ssd_cumsum(float *a, const float *dl, float A) {
    int l = threadIdx.x;
    float v0 = dl[2 * l] * A, v1 = dl[2 * l + 1] * A, s = v0 + v1;
    for (int o = 1; o < 32; o <<= 1) {
        float t = __shfl_up_sync(0xffffffffu, s, o);
        if (l >= o) s += t;
    }
    float ex = __shfl_up_sync(0xffffffffu, s, 1);
    if (l == 0) ex = 0.0f;
    a[2 * l] = ex + v0;
    a[2 * l + 1] = (ex + v0) + v1;
}

// Δ of the chunk for head h (zero past L) and a; callers synchronise after.
// A_log is read before the barrier, so its load overlaps Δ's (and the
// caller's tile loads issued before this call): one wait on memory per head.
// Returns A = -e^{A_log[h]} in warp 0 (0 elsewhere).
__device__ __forceinline__ float ssd_load_a(const ssd_args &g, float *dl, float *a, int t0, int L, int h) {
    float A = 0.0f;
    if (threadIdx.x < 32) A = g.A_log[h];
    if (threadIdx.x < SSD_Q) dl[threadIdx.x] = (int)threadIdx.x < L ? g.delta[(size_t)(t0 + threadIdx.x) * g.H + h] : 0.0f;
    __syncthreads();
    if (threadIdx.x < 32) {
        A = -expf(A);
        ssd_cumsum(a, dl, A);
    }
    return A;
}

// The chunk's own end state (forward, BWD false) or its state adjoint (BWD):
//   S_loc[p,n]  = Σ_j e^{a_last-a_j} Δ_j x_j[p] B_j[n]    (into g.S, and g.dec = e^{a_last})
//   dS_loc[p,n] = Σ_i e^{a_i} dy_i[p] C_i[n]              (into g.dS)
// TC: the product on tensor cores (ssd_mm_tc; RP × 2·RN tiles of 16 × 8, so
// at the paper's P 16, N 32 four warps work and four wait).
template <int RP, int RN, bool BWD, bool TC>
__global__ static void __launch_bounds__(SSD_THREADS) ssd_state_kernel(ssd_args g) {
    ssd_chunk ch;
    if (!ssd_chunk_at(g.seq_off, g.n_seq, blockIdx.x, &ch)) return;
    extern __shared__ float sm[];
    const int ldP = 16 * RP + 1, ldN = 16 * RN + 1;
    float *V = sm, *X = V + SSD_Q * ldN, *dl = X + SSD_Q * ldP, *a = dl + SSD_Q;
    int P = g.P, N = g.N, PN = P * N, t0 = ch.t0, L = ch.L;
    ssd_load(V, ldN, SSD_Q, 16 * RN, BWD ? g.C : g.B, g.ld_bc, t0, 0, L, N);
    for (int h = 0; h < g.H; h++) {
        ssd_load(X, ldP, SSD_Q, 16 * RP, BWD ? g.dy : g.x, BWD ? g.ld_dy : g.ld_x, t0, h * P, L, P);
        ssd_load_a(g, dl, a, t0, L, h);
        __syncthreads();
        float al = a[L - 1];
        for (int q = threadIdx.x; q < L * P; q += blockDim.x) {
            int i = q / P, p = q % P;
            X[i * ldP + p] *= BWD ? expf(a[i]) : expf(al - a[i]) * dl[i];
        }
        __syncthreads();
        float *out = (BWD ? g.dS : g.S) + ((size_t)blockIdx.x * g.H + h) * PN;
        if constexpr (TC) {
            ssd_tc_acc<RP, 2 * RN> acc;
            ssd_tc_zero(acc);
            ssd_mm_tc<RP, 2 * RN, SSD_Q / 8>(acc, X, 1, ldP, V, ldN, 1);  // A(p, i) = X[i][p], all SSD_Q positions
            ssd_tc_each<RP, 2 * RN>([&](int s, int r, int p, int n) {
                if (p < P && n < N) out[p * N + n] = acc.v[s][r];
            });
        } else {
            float acc[RP][RN];
            ssd_zero(acc);
            ssd_mm(acc, X, 1, ldP, V, ldN, 1, L);  // A(p, i) = X[i][p]
            int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
            for (int r = 0; r < RP; r++)
#pragma unroll
                for (int c = 0; c < RN; c++) {
                    int p = ty + 16 * r, n = tx + 16 * c;
                    if (p < P && n < N) out[p * N + n] = acc[r][c];
                }
        }
        if (!BWD && threadIdx.x == 0) g.dec[(size_t)blockIdx.x * g.H + h] = expf(al);
        __syncthreads();
    }
}

static inline size_t ssd_state_smem(int RP, int RN) {
    return sizeof(float) * ((size_t)SSD_Q * (16 * RN + 1) + (size_t)SSD_Q * (16 * RP + 1) + 2 * SSD_Q);
}

// The outputs of a chunk from its input state S_in (in g.S):
//   y_i[p] = Σ_{j<=i} G_ij e^{a_i-a_j} Δ_j x_j[p] + e^{a_i} Σ_n C_i[n] S_in[p,n] + D x_i[p]
// TC: G and both y products on tensor cores (ssd_mm_tc).
template <int RP, int RN, bool TC>
__global__ static void __launch_bounds__(SSD_THREADS) ssd_out_kernel(ssd_args g) {
    ssd_chunk ch;
    if (!ssd_chunk_at(g.seq_off, g.n_seq, blockIdx.x, &ch)) return;
    extern __shared__ float sm[];
    const int ldP = 16 * RP + 1, ldN = 16 * RN + 1;
    float *Bs = sm, *Cs = Bs + SSD_Q * ldN, *Gs = Cs + SSD_Q * ldN, *Ms = Gs + SSD_Q * SSD_QP;
    float *X = Ms + SSD_Q * SSD_QP, *Si = X + SSD_Q * ldP, *dl = Si + 16 * RP * ldN, *a = dl + SSD_Q;
    int P = g.P, N = g.N, t0 = ch.t0, L = ch.L, tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    ssd_load(Bs, ldN, SSD_Q, 16 * RN, g.B, g.ld_bc, t0, 0, L, N);
    ssd_load(Cs, ldN, SSD_Q, 16 * RN, g.C, g.ld_bc, t0, 0, L, N);
    __syncthreads();
    ssd_gram<RN, TC>(Gs, Cs, Bs, N);
    for (int h = 0; h < g.H; h++) {
        ssd_load(X, ldP, SSD_Q, 16 * RP, g.x, g.ld_x, t0, h * P, L, P);
        ssd_load(Si, ldN, 16 * RP, 16 * RN, g.S + ((size_t)blockIdx.x * g.H + h) * P * N, N, 0, 0, P, N);
        float Dh = g.D[h];  // (read with the tiles)
        ssd_load_a(g, dl, a, t0, L, h);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int i = ty + 16 * r, j = tx + 16 * c;
                Ms[i * SSD_QP + j] = j <= i ? Gs[i * SSD_QP + j] * expf(a[i] - a[j]) * dl[j] : 0.0f;
            }
        __syncthreads();
        if constexpr (TC) {
            ssd_tc_acc<4, 2 * RP> yi, yo;
            ssd_tc_zero(yi), ssd_tc_zero(yo);
            ssd_mm_tc<4, 2 * RP, SSD_Q / 8>(yi, Ms, SSD_QP, 1, X, ldP, 1);
            ssd_mm_tc<4, 2 * RP, 2 * RN>(yo, Cs, ldN, 1, Si, 1, ldN);  // B(n, p) = S_in[p][n]
            ssd_tc_each<4, 2 * RP>([&](int s, int r, int i, int p) {
                if (i < L && p < P)
                    g.y[(size_t)(t0 + i) * g.ld_y + h * P + p] = yi.v[s][r] + expf(a[i]) * yo.v[s][r] + Dh * X[i * ldP + p];
            });
        } else {
            float yi[4][RP], yo[4][RP];
            ssd_zero(yi), ssd_zero(yo);
            ssd_mm(yi, Ms, SSD_QP, 1, X, ldP, 1, L);
            ssd_mm(yo, Cs, ldN, 1, Si, 1, ldN, N);  // B(n, p) = S_in[p][n]
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < RP; c++) {
                    int i = ty + 16 * r, p = tx + 16 * c;
                    if (i < L && p < P)
                        g.y[(size_t)(t0 + i) * g.ld_y + h * P + p] = yi[r][c] + expf(a[i]) * yo[r][c] + Dh * X[i * ldP + p];
                }
        }
        __syncthreads();
    }
}

static inline size_t ssd_out_smem(int RP, int RN) {
    size_t ldP = 16 * RP + 1, ldN = 16 * RN + 1;
    return sizeof(float) * (2 * SSD_Q * ldN + 2 * SSD_Q * SSD_QP + SSD_Q * ldP + 16 * RP * ldN + 2 * SSD_Q);
}

#endif
