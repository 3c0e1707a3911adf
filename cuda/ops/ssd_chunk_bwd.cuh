// cuda/ops/ssd_chunk_bwd.cuh: the chunk-local backward of the chunked SSD
// (cuda/ops/ssd_chunk.cuh), given each chunk's input state S_in (g.S) and the
// adjoint of its end state dS_out (g.dS). Per head, with u_j = Δ_j x_j:
//   Ŵ_ij    = (dy_i·u_j) e^{a_i-a_j} (j <= i)          (summed over heads in registers)
//   du_j[p] = Σ_i G_ij e^{a_i-a_j} dy_i[p] + e^{a_last-a_j} Σ_n dS_out[p,n] B_j[n]
//   Z_i[n]  = e^{a_i} Σ_p dy_i[p] S_in[p,n]
//   dC_i   += Σ_h Z_i + Σ_j (Σ_h Ŵ)_ij B_j,  dB_j += Σ_h e^{a_last-a_j} Σ_p u_j[p] dS_out[p,·] + Σ_i (Σ_h Ŵ)_ij C_i
//   da_k    = Σ_j G_kj Ŵ_kj - Σ_i G_ik Ŵ_ik + C_k·Z_k - V_k (+ e^{a_last}⟨dS_out, S_in⟩ + Σ_j V_j at the last)
//   dΔ_j    = Σ_p x_j[p] du_j[p] + A Σ_{k>=j} da_k,   dA += Σ_j Δ_j Σ_{k>=j} da_k
// (tests/test_ssd_chunk.c proves it against the sequential op.)
#ifndef HAX_CU_SSD_CHUNK_BWD_CUH
#define HAX_CU_SSD_CHUNK_BWD_CUH

#include "cuda/ops/ssd_chunk.cuh"

__device__ __forceinline__ double ssd_warp_sumd(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Warp 0's last phase of both chunk backwards, for head h: da (double: its
// terms cancel), its reverse cumulative sum, then dΔ into g.ddt (added to
// ddo, the value it held) and this (chunk, head)'s partials of dA_log, dD
// and the dt bias into par[0..2]. v holds the per-position arrays dl, a, rs,
// cs, cz, xdu, V, dyx (SSD_Q floats each, one after another) and then ss[0]
// = <dS_out, S_in>. Lane l takes positions k = 63-2l, 62-2l, whose Δ (before
// the bias) are dtv[0..1].
__device__ __forceinline__ void ssd_bwd_dt(const ssd_args &g, const float *v, int t0, int L, int h, float A,
                                           const float dtv[2], const float ddo[2], float bias, double *par) {
    const float *dl = v, *a = dl + SSD_Q, *rs = a + SSD_Q, *cs = rs + SSD_Q, *cz = cs + SSD_Q;
    const float *xdu = cz + SSD_Q, *Vv = xdu + SSD_Q, *dyx = Vv + SSD_Q, *ss = dyx + SSD_Q;
    int l = threadIdx.x & 31, k0 = SSD_Q - 1 - 2 * l, k1 = k0 - 1;
    double vs = ssd_warp_sumd((double)Vv[k0] + (double)Vv[k1]);
    double d0 = (double)rs[k0] - cs[k0] + cz[k0] - Vv[k0], d1 = (double)rs[k1] - cs[k1] + cz[k1] - Vv[k1];
    double tail = (double)expf(a[L - 1]) * ss[0] + vs;
    if (k0 == L - 1) d0 += tail;
    if (k1 == L - 1) d1 += tail;
    double s = d0 + d1;
    for (int o = 1; o < 32; o <<= 1) {
        double t = __shfl_up_sync(0xffffffffu, s, o);
        if (l >= o) s += t;
    }
    double ex = __shfl_up_sync(0xffffffffu, s, 1);
    if (l == 0) ex = 0.0;
    double rev[2] = {ex + d0, ex + d0 + d1};
    double pA = 0.0, pD = 0.0, pb = 0.0;
    for (int e = 0; e < 2; e++) {
        int kk = e ? k1 : k0;
        if (kk >= L) continue;
        double dd = (double)xdu[kk] + (double)A * rev[e];
        float u = dtv[e] + bias;
        double d_u = dd * (u > 20.0f ? 1.0 : (double)hax_sigmoid(u));
        if (g.ddt) g.ddt[(size_t)(t0 + kk) * g.ld_ddt + h] = ddo[e] + (float)d_u;
        pA += (double)dl[kk] * rev[e];
        pD += (double)dyx[kk];
        pb += d_u;
    }
    pA = ssd_warp_sumd(pA), pD = ssd_warp_sumd(pD), pb = ssd_warp_sumd(pb);
    if (l == 0) par[0] = pA, par[1] = pD, par[2] = pb;
}

// Shared memory of the backward, in floats.
static inline size_t ssd_bwd_smem(int RP, int RN) {
    size_t ldP = 16 * RP + 1, ldN = 16 * RN + 1;
    return sizeof(float) * (3 * SSD_Q * ldN + 3 * SSD_Q * SSD_QP + 4 * SSD_Q * ldP + 2 * 16 * RP * ldN + 9 * SSD_Q + 32);
}

// TC: every product on tensor cores (ssd_mm_tc); the sums over heads (Ŵ, dC,
// dB) and dx's old values are then held in the mma's accumulator layout, and
// each epilogue is the FMA path's, walking that layout (ssd_tc_each).
template <int RP, int RN, bool TC>
__global__ static void __launch_bounds__(SSD_THREADS) ssd_bwd_kernel(ssd_args g) {
    ssd_chunk ch;
    if (!ssd_chunk_at(g.seq_off, g.n_seq, blockIdx.x, &ch)) return;
    extern __shared__ float sm[];
    const int ldP = 16 * RP + 1, ldN = 16 * RN + 1, QP = SSD_QP;
    float *Bs = sm, *Cs = Bs + SSD_Q * ldN, *Zs = Cs + SSD_Q * ldN;
    float *Gs = Zs + SSD_Q * ldN, *Ws = Gs + SSD_Q * QP, *Ms = Ws + SSD_Q * QP;
    float *X = Ms + SSD_Q * QP, *dY = X + SSD_Q * ldP, *dU = dY + SSD_Q * ldP, *eR = dU + SSD_Q * ldP;
    float *Si = eR + SSD_Q * ldP, *dSo = Si + 16 * RP * ldN;
    float *dl = dSo + 16 * RP * ldN, *a = dl + SSD_Q, *rs = a + SSD_Q, *cs = rs + SSD_Q, *cz = cs + SSD_Q;
    float *xdu = cz + SSD_Q, *Vv = xdu + SSD_Q, *dyx = Vv + SSD_Q, *ss = dyx + SSD_Q;
    int P = g.P, N = g.N, PN = P * N, t0 = ch.t0, L = ch.L, tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    ssd_load(Bs, ldN, SSD_Q, 16 * RN, g.B, g.ld_bc, t0, 0, L, N);
    ssd_load(Cs, ldN, SSD_Q, 16 * RN, g.C, g.ld_bc, t0, 0, L, N);
    __syncthreads();
    ssd_gram<RN, TC>(Gs, Cs, Bs, N);
    // Sums over heads, in head order, held by the thread that owns the entries
    // (TC: the t* ones, in the mma's layout; the unused set is optimised away).
    float Wsum[4][4], dCacc[4][RN], dBacc[4][RN];
    ssd_tc_acc<4, 8> tWsum;
    ssd_tc_acc<4, 2 * RN> tdC, tdB;
    if constexpr (TC) ssd_tc_zero(tWsum), ssd_tc_zero(tdC), ssd_tc_zero(tdB);
    else ssd_zero(Wsum), ssd_zero(dCacc), ssd_zero(dBacc);
    // Every global value a head needs is read in its first phase, with the
    // tiles (loads are not moved across barriers): the head waits on memory
    // once. The gradients' old values too; the stores add to them.
    int l = threadIdx.x & 31, k0 = SSD_Q - 1 - 2 * l, k1 = k0 - 1;  // warp 0's positions in the da phase
    for (int h = 0; h < g.H; h++) {
        size_t st = ((size_t)blockIdx.x * g.H + h) * PN;
        ssd_load(X, ldP, SSD_Q, 16 * RP, g.x, g.ld_x, t0, h * P, L, P);
        ssd_load(dY, ldP, SSD_Q, 16 * RP, g.dy, g.ld_dy, t0, h * P, L, P);
        ssd_load(Si, ldN, 16 * RP, 16 * RN, g.S + st, N, 0, 0, P, N);
        ssd_load(dSo, ldN, 16 * RP, 16 * RN, g.dS + st, N, 0, 0, P, N);
        float Dh = g.D[h], dxo[4][RP], dtv[2] = {0.0f, 0.0f}, ddo[2] = {0.0f, 0.0f}, bias = 0.0f;
        ssd_tc_acc<4, 2 * RP> tdxo;
        if constexpr (TC) {
            ssd_tc_each<4, 2 * RP>([&](int s, int r, int j, int p) {
                tdxo.v[s][r] = g.dx && j < L && p < P ? g.dx[(size_t)(t0 + j) * g.ld_dx + h * P + p] : 0.0f;
            });
        } else {
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < RP; c++) {
                    int j = ty + 16 * r, p = tx + 16 * c;
                    dxo[r][c] = g.dx && j < L && p < P ? g.dx[(size_t)(t0 + j) * g.ld_dx + h * P + p] : 0.0f;
                }
        }
        if (threadIdx.x < 32) {
            bias = g.dt_bias[h];
            for (int e = 0; e < 2; e++) {
                int kk = e ? k1 : k0;
                if (kk >= L) continue;
                dtv[e] = g.dt[(size_t)(t0 + kk) * g.ld_dt + h];
                if (g.ddt) ddo[e] = g.ddt[(size_t)(t0 + kk) * g.ld_ddt + h];
            }
        }
        float A = ssd_load_a(g, dl, a, t0, L, h);
        __syncthreads();
        float al = a[L - 1];
        if constexpr (TC) {
            ssd_tc_acc<4, 8> w;
            ssd_tc_zero(w);
            ssd_mm_tc<4, 8, 2 * RP>(w, dY, ldP, 1, X, 1, ldP);  // dy_i·x_j
            ssd_tc_each<4, 8>([&](int s, int r, int i, int j) {
                float e = j <= i ? expf(a[i] - a[j]) : 0.0f;
                float wh = w.v[s][r] * e * dl[j];
                Ws[i * QP + j] = wh;
                tWsum.v[s][r] += wh;
                Ms[i * QP + j] = Gs[i * QP + j] * e;
            });
            ssd_tc_acc<4, 2 * RN> z, k;
            ssd_tc_zero(z), ssd_tc_zero(k);
            ssd_mm_tc<4, 2 * RN, 2 * RP>(z, dY, ldP, 1, Si, ldN, 1);
            ssd_mm_tc<4, 2 * RN, 2 * RP>(k, X, ldP, 1, dSo, ldN, 1);
            ssd_tc_each<4, 2 * RN>([&](int s, int r, int i, int n) {
                float zz = expf(a[i]) * z.v[s][r];
                Zs[i * ldN + n] = zz;
                tdC.v[s][r] += zz;
                tdB.v[s][r] += expf(al - a[i]) * (dl[i] * k.v[s][r]);
            });
        } else {
            {
                // Ŵ (and the masked decay of G, for du).
                float w[4][4];
                ssd_zero(w);
                ssd_mm(w, dY, ldP, 1, X, 1, ldP, P);  // dy_i·x_j
#pragma unroll
                for (int r = 0; r < 4; r++)
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        int i = ty + 16 * r, j = tx + 16 * c;
                        float e = j <= i ? expf(a[i] - a[j]) : 0.0f;
                        float wh = w[r][c] * e * dl[j];
                        Ws[i * QP + j] = wh;
                        Wsum[r][c] += wh;
                        Ms[i * QP + j] = Gs[i * QP + j] * e;
                    }
            }
            {
                // Z, and dB's dS_out part.
                float z[4][RN], k[4][RN];
                ssd_zero(z), ssd_zero(k);
                ssd_mm(z, dY, ldP, 1, Si, ldN, 1, P);
                ssd_mm(k, X, ldP, 1, dSo, ldN, 1, P);
#pragma unroll
                for (int r = 0; r < 4; r++)
#pragma unroll
                    for (int c = 0; c < RN; c++) {
                        int i = ty + 16 * r, n = tx + 16 * c;
                        float zz = expf(a[i]) * z[r][c];
                        Zs[i * ldN + n] = zz;
                        dCacc[r][c] += zz;
                        dBacc[r][c] += expf(al - a[i]) * (dl[i] * k[r][c]);
                    }
            }
        }
        __syncthreads();
        if constexpr (TC) {
            // du = Mᵀ dy + e^{a_last-a_j} R, R_j[p] = Σ_n B_j[n] dS_out[p,n]; dx.
            ssd_tc_acc<4, 2 * RP> m, rr;
            ssd_tc_zero(m), ssd_tc_zero(rr);
            ssd_mm_tc<4, 2 * RP, SSD_Q / 8>(m, Ms, 1, QP, dY, ldP, 1);
            ssd_mm_tc<4, 2 * RP, 2 * RN>(rr, Bs, ldN, 1, dSo, 1, ldN);
            ssd_tc_each<4, 2 * RP>([&](int s, int r, int j, int p) {
                float er = expf(al - a[j]) * rr.v[s][r], du = m.v[s][r] + er;
                dU[j * ldP + p] = du;
                eR[j * ldP + p] = er;
                if (g.dx && j < L && p < P)
                    g.dx[(size_t)(t0 + j) * g.ld_dx + h * P + p] = tdxo.v[s][r] + (dl[j] * du + Dh * dY[j * ldP + p]);
            });
        } else {
            // du = Mᵀ dy + e^{a_last-a_j} R, R_j[p] = Σ_n B_j[n] dS_out[p,n]; dx.
            float m[4][RP], rr[4][RP];
            ssd_zero(m), ssd_zero(rr);
            ssd_mm(m, Ms, 1, QP, dY, ldP, 1, L);
            ssd_mm(rr, Bs, ldN, 1, dSo, 1, ldN, N);
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int c = 0; c < RP; c++) {
                    int j = ty + 16 * r, p = tx + 16 * c;
                    float er = expf(al - a[j]) * rr[r][c], du = m[r][c] + er;
                    dU[j * ldP + p] = du;
                    eR[j * ldP + p] = er;
                    if (g.dx && j < L && p < P)
                        g.dx[(size_t)(t0 + j) * g.ld_dx + h * P + p] = dxo[r][c] + (dl[j] * du + Dh * dY[j * ldP + p]);
                }
        }
        __syncthreads();
        // Per-position sums (each in a fixed order).
        int k = threadIdx.x & 63, part = threadIdx.x >> 6;
        if (part == 0) {
            float s = 0.0f;
            for (int j = 0; j <= k; j++) s += Gs[k * QP + j] * Ws[k * QP + j];
            rs[k] = s;
        } else if (part == 1) {
            float s = 0.0f;
            for (int i = k; i < SSD_Q; i++) s += Gs[i * QP + k] * Ws[i * QP + k];
            cs[k] = s;
        } else if (part == 2) {
            float c1 = 0.0f, c2 = 0.0f, c3 = 0.0f, c4 = 0.0f;
            for (int n = 0; n < N; n++) c1 += Cs[k * ldN + n] * Zs[k * ldN + n];
            for (int p = 0; p < P; p++) {
                float xv = X[k * ldP + p];
                c2 += xv * dU[k * ldP + p];
                c3 += xv * eR[k * ldP + p];
                c4 += xv * dY[k * ldP + p];
            }
            cz[k] = c1, xdu[k] = c2, Vv[k] = dl[k] * c3, dyx[k] = c4;
        } else if (threadIdx.x < 224) {
            float s = 0.0f;
            for (int q = threadIdx.x - 192; q < PN; q += 32) s += dSo[(q / N) * ldN + q % N] * Si[(q / N) * ldN + q % N];
            s = cu_warp_sumf(s);
            if (threadIdx.x == 192) ss[0] = s;
        }
        __syncthreads();
        if (threadIdx.x < 32) ssd_bwd_dt(g, dl, t0, L, h, A, dtv, ddo, bias, g.par + ((size_t)blockIdx.x * g.H + h) * 3);
        __syncthreads();
    }
    // dC += Σ_h Z + Wsum·B, dB += Σ_h (dS_out part) + Wsumᵀ·C, in this chunk's rows.
    if constexpr (TC) {
        ssd_tc_each<4, 8>([&](int s, int r, int i, int j) { Ws[i * QP + j] = tWsum.v[s][r]; });
        __syncthreads();
        ssd_mm_tc<4, 2 * RN, SSD_Q / 8>(tdC, Ws, QP, 1, Bs, ldN, 1);
        ssd_mm_tc<4, 2 * RN, SSD_Q / 8>(tdB, Ws, 1, QP, Cs, ldN, 1);
        ssd_tc_each<4, 2 * RN>([&](int s, int r, int i, int n) {
            if (i >= L || n >= N) return;
            if (g.dC) g.dC[(size_t)(t0 + i) * g.ld_dbc + n] += tdC.v[s][r];
            if (g.dB) g.dB[(size_t)(t0 + i) * g.ld_dbc + n] += tdB.v[s][r];
        });
    } else {
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) Ws[(ty + 16 * r) * QP + tx + 16 * c] = Wsum[r][c];
        __syncthreads();
        ssd_mm(dCacc, Ws, QP, 1, Bs, ldN, 1, L);
        ssd_mm(dBacc, Ws, 1, QP, Cs, ldN, 1, L);
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < RN; c++) {
                int i = ty + 16 * r, n = tx + 16 * c;
                if (i >= L || n >= N) continue;
                if (g.dC) g.dC[(size_t)(t0 + i) * g.ld_dbc + n] += dCacc[r][c];
                if (g.dB) g.dB[(size_t)(t0 + i) * g.ld_dbc + n] += dBacc[r][c];
            }
    }
}

// ---------------------------------------------------------------- the fast backward
// ssd_bwd_fast_kernel: the same algebra as ssd_bwd_kernel, with every output
// formed by the same operations in the same order (so the same bits), laid
// out for fewer shared-memory accesses and fewer block-wide waits (the old
// kernel stays, HAX_SCAN_KERNELS=old: cuda/ops/scan.h):
//  - the products give each thread one output row and a quarter of its
//    columns (ssd_mm_row): per k one scalar load of A (8 rows a warp, one
//    wavefront) and vector loads of B's row k, 1 + CW/4 loads for CW FMAs
//    instead of the 16 × 16 grid's RM + RC loads for RM·RC FMAs (1.25 loads
//    per FMA for du and R); the B operands that the grid read by columns
//    (xᵀ, Bᵀ, dS_outᵀ) get a transposed copy when they are loaded;
//  - the per-position sums (over j, n, p: rs, cz, xdu, V, dyx; cs over i) are
//    chains passed along the 4 lanes of a row (ssd_chain), in the old loops'
//    order, from registers where the product left them;
//  - e^{a_i}, e^{a_last-a_i} once per position (the old kernel called expf per
//    output entry, with the same argument);
//  - the next head's global reads are issued before this head's products (into
//    registers), so the wait on memory overlaps compute; 3 barriers a head
//    instead of 6;
//  - the dΔ phase (ssd_bwd_dt, one warp) runs for up to 8 heads at once after
//    them, warp w taking head w, instead of one warp while 7 wait, per head.

// CW floats from p (16-byte aligned when CW is a multiple of 4).
template <int CW>
__device__ __forceinline__ void ssd_ldv(float (&v)[CW], const float *p) {
    if constexpr (CW % 4 == 0) {
#pragma unroll
        for (int c = 0; c < CW; c += 4) {
            float4 t = *reinterpret_cast<const float4 *>(p + c);
            v[c] = t.x, v[c + 1] = t.y, v[c + 2] = t.z, v[c + 3] = t.w;
        }
    } else {
#pragma unroll
        for (int c = 0; c < CW; c++) v[c] = p[c];
    }
}

// acc[c] += Σ_{k<K} A[k·ak]·B[k·ldb + c] (c < CW) in k order: one output row
// of this thread; A points at its row's operand, B at its first column.
template <int CW>
__device__ __forceinline__ void ssd_mm_row(float (&acc)[CW], const float *A, int ak, const float *B, int ldb, int K) {
#pragma unroll 2
    for (int k = 0; k < K; k++) {
        float av = A[k * ak], bv[CW];
        ssd_ldv(bv, B + k * ldb);
#pragma unroll
        for (int c = 0; c < CW; c++) acc[c] = fmaf(av, bv[c], acc[c]);
    }
}

// Two products sharing A (Ŵ's dy·xᵀ and Z's dy·S_in).
template <int C1, int C2>
__device__ __forceinline__ void ssd_mm_row2(float (&a1)[C1], float (&a2)[C2], const float *A, const float *B1, int ld1,
                                            const float *B2, int ld2, int K) {
#pragma unroll 2
    for (int k = 0; k < K; k++) {
        float av = A[k], b1[C1], b2[C2];
        ssd_ldv(b1, B1 + k * ld1);
        ssd_ldv(b2, B2 + k * ld2);
#pragma unroll
        for (int c = 0; c < C1; c++) a1[c] = fmaf(av, b1[c], a1[c]);
#pragma unroll
        for (int c = 0; c < C2; c++) a2[c] = fmaf(av, b2[c], a2[c]);
    }
}

// NS running sums of a row chained along its 4 lanes (lane q = threadIdx.x & 3
// holds the q-th quarter of the terms): lane 0 adds its terms, hands the sums
// to lane 1, and so on, so each sum is formed in one sequence, first term
// to last (the order of the old kernel's per-position loops). part(s) adds
// this lane's terms to s[]; every lane of the row returns the sums.
template <int NS, typename F>
__device__ __forceinline__ void ssd_chain(float (&s)[NS], F part) {
    int q = threadIdx.x & 3, base = threadIdx.x & 28;
#pragma unroll
    for (int k = 0; k < NS; k++) s[k] = 0.0f;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        if (q == r) part(s);
#pragma unroll
        for (int k = 0; k < NS; k++) s[k] = __shfl_sync(0xffffffffu, s[k], base + r);
    }
}

// Shared-memory geometry of the fast backward (floats). Row-major tiles read
// with scalar A loads of 8 rows a warp have a leading dimension of width + 4
// (rows 8 apart in banks, 16-byte aligned for the vector loads); the 64 × 64
// matrices read by columns (cs) keep 65.
template <int RP, int RN>
struct ssd_fast_geo {
    static constexpr int PP = 16 * RP, NP = 16 * RN, QP = SSD_QP;
    static constexpr int ldX = PP + 4, ldXt = SSD_Q + 4, ldS = NP + 4, ldST = PP + 4, ldB = NP + 4;
    static constexpr int CWn = NP / 4, CWp = PP / 4;  // a thread's columns of N- and P-wide outputs
    static constexpr int HV = 8 * SSD_Q + 4;          // a head's dΔ-phase arrays (ssd_bwd_dt's v)
    static constexpr int oB = 0, oC = oB + SSD_Q * ldB, oG = oC + SSD_Q * ldB, oW = oG + SSD_Q * QP;
    static constexpr int oM = oW + SSD_Q * QP, oX = oM + SSD_Q * QP, oY = oX + SSD_Q * ldX, oXt = oY + SSD_Q * ldX;
    static constexpr int oSi = oXt + PP * ldXt, oSo = oSi + PP * ldS, oSoT = oSo + PP * ldS, oEa = oSoT + NP * ldST;
    static constexpr int oEd = oEa + SSD_Q, oHV = oEd + SSD_Q, total = oHV + 8 * HV;
    static_assert(NP * ldXt <= 2 * SSD_Q * QP, "Bᵀ must fit in the Ŵ and M tiles");
};

static inline size_t ssd_bwd_fast_smem(int RP, int RN) {
    switch (RP * 10 + RN) {
    case 11: return sizeof(float) * ssd_fast_geo<1, 1>::total;
    case 12: return sizeof(float) * ssd_fast_geo<1, 2>::total;
    case 14: return sizeof(float) * ssd_fast_geo<1, 4>::total;
    case 21: return sizeof(float) * ssd_fast_geo<2, 1>::total;
    case 22: return sizeof(float) * ssd_fast_geo<2, 2>::total;
    case 24: return sizeof(float) * ssd_fast_geo<2, 4>::total;
    case 41: return sizeof(float) * ssd_fast_geo<4, 1>::total;
    case 42: return sizeof(float) * ssd_fast_geo<4, 2>::total;
    default: return sizeof(float) * ssd_fast_geo<4, 4>::total;
    }
}

// A head's global inputs, read into registers a head ahead: x and dy tiles
// (element e = threadIdx.x + 256u of the 64 × PP tile), S_in and dS_out
// (of the PP × NP tile), warp 0's Δ at positions 2l, 2l+1, and A_log.
template <int RP, int RN>
struct ssd_fetch {
    float x[4 * RP], dy[4 * RP], si[RP * RN], so[RP * RN], dl[2], alog;
};

template <int RP, int RN>
__device__ __forceinline__ void ssd_fetch_head(const ssd_args &g, ssd_fetch<RP, RN> &f, int h, int t0, int L) {
    using Geo = ssd_fast_geo<RP, RN>;
    int P = g.P, N = g.N;
#pragma unroll
    for (int u = 0; u < 4 * RP; u++) {
        int e = threadIdx.x + SSD_THREADS * u, i = e / Geo::PP, p = e % Geo::PP;
        bool in = i < L && p < P;
        f.x[u] = in ? g.x[(size_t)(t0 + i) * g.ld_x + h * P + p] : 0.0f;
        f.dy[u] = in ? g.dy[(size_t)(t0 + i) * g.ld_dy + h * P + p] : 0.0f;
    }
    size_t st = ((size_t)blockIdx.x * g.H + h) * P * N;
#pragma unroll
    for (int u = 0; u < RP * RN; u++) {
        int e = threadIdx.x + SSD_THREADS * u, p = e / Geo::NP, n = e % Geo::NP;
        bool in = p < P && n < N;
        f.si[u] = in ? g.S[st + p * N + n] : 0.0f;
        f.so[u] = in ? g.dS[st + p * N + n] : 0.0f;
    }
    f.alog = 0.0f, f.dl[0] = f.dl[1] = 0.0f;
    if (threadIdx.x < 32) {
        int l = threadIdx.x;
        f.alog = g.A_log[h];
        f.dl[0] = 2 * l < L ? g.delta[(size_t)(t0 + 2 * l) * g.H + h] : 0.0f;
        f.dl[1] = 2 * l + 1 < L ? g.delta[(size_t)(t0 + 2 * l + 1) * g.H + h] : 0.0f;
    }
}

// The fetched head into shared memory (x, xᵀ, dy, S_in, dS_out, dS_outᵀ), and
// warp 0: a (the cumulative sum, as ssd_cumsum), e^{a_i}, e^{a_last-a_i}, Δ.
// Returns A = -e^{A_log} in warp 0.
template <int RP, int RN>
__device__ __forceinline__ float ssd_fill_head(const ssd_fetch<RP, RN> &f, float *sm, float *hv, int L) {
    using Geo = ssd_fast_geo<RP, RN>;
#pragma unroll
    for (int u = 0; u < 4 * RP; u++) {
        int e = threadIdx.x + SSD_THREADS * u, i = e / Geo::PP, p = e % Geo::PP;
        sm[Geo::oX + i * Geo::ldX + p] = f.x[u];
        sm[Geo::oXt + p * Geo::ldXt + i] = f.x[u];
        sm[Geo::oY + i * Geo::ldX + p] = f.dy[u];
    }
#pragma unroll
    for (int u = 0; u < RP * RN; u++) {
        int e = threadIdx.x + SSD_THREADS * u, p = e / Geo::NP, n = e % Geo::NP;
        sm[Geo::oSi + p * Geo::ldS + n] = f.si[u];
        sm[Geo::oSo + p * Geo::ldS + n] = f.so[u];
        sm[Geo::oSoT + n * Geo::ldST + p] = f.so[u];
    }
    float A = 0.0f;
    if (threadIdx.x < 32) {
        int l = threadIdx.x;
        float *dl = hv, *a = hv + SSD_Q, *ea = sm + Geo::oEa, *ed = sm + Geo::oEd;
        A = -expf(f.alog);
        // ssd_cumsum on the values in registers
        float v0 = f.dl[0] * A, v1 = f.dl[1] * A, s = v0 + v1;
        for (int o = 1; o < 32; o <<= 1) {
            float t = __shfl_up_sync(0xffffffffu, s, o);
            if (l >= o) s += t;
        }
        float ex = __shfl_up_sync(0xffffffffu, s, 1);
        if (l == 0) ex = 0.0f;
        float a0 = ex + v0, a1 = (ex + v0) + v1;
        float al = __shfl_sync(0xffffffffu, (L - 1) & 1 ? a1 : a0, (L - 1) >> 1);
        dl[2 * l] = f.dl[0], dl[2 * l + 1] = f.dl[1];
        a[2 * l] = a0, a[2 * l + 1] = a1;
        ea[2 * l] = expf(a0), ea[2 * l + 1] = expf(a1);
        ed[2 * l] = expf(al - a0), ed[2 * l + 1] = expf(al - a1);
    }
    return A;
}

template <int RP, int RN>
__global__ static void __launch_bounds__(SSD_THREADS, RP * RN <= 2 ? 2 : 1) ssd_bwd_fast_kernel(ssd_args g) {
    using Geo = ssd_fast_geo<RP, RN>;
    constexpr int NP = Geo::NP, QP = Geo::QP, CWn = Geo::CWn, CWp = Geo::CWp;
    constexpr int ldX = Geo::ldX, ldXt = Geo::ldXt, ldS = Geo::ldS, ldST = Geo::ldST, ldB = Geo::ldB;
    ssd_chunk ch;
    if (!ssd_chunk_at(g.seq_off, g.n_seq, blockIdx.x, &ch)) return;
    extern __shared__ float sm[];
    float *Bs = sm + Geo::oB, *Cs = sm + Geo::oC, *Gs = sm + Geo::oG, *Ws = sm + Geo::oW, *Ms = sm + Geo::oM;
    float *X = sm + Geo::oX, *dY = sm + Geo::oY, *Xt = sm + Geo::oXt, *Si = sm + Geo::oSi, *dSo = sm + Geo::oSo;
    float *dSoT = sm + Geo::oSoT, *ea = sm + Geo::oEa, *ed = sm + Geo::oEd, *hvs = sm + Geo::oHV;
    int P = g.P, N = g.N, H = g.H, t0 = ch.t0, L = ch.L;
    int row = threadIdx.x >> 2, q = threadIdx.x & 3, warp = threadIdx.x >> 5;
    ssd_fetch<RP, RN> f;
    ssd_fetch_head(g, f, 0, t0, L);
    // B, C (row-major) and Bᵀ (in the Ŵ, M tiles until G is formed); G = C·Bᵀ.
    for (int e = threadIdx.x; e < SSD_Q * NP; e += SSD_THREADS) {
        int i = e / NP, n = e % NP;
        bool in = i < L && n < N;
        float b = in ? g.B[(size_t)(t0 + i) * g.ld_bc + n] : 0.0f, c = in ? g.C[(size_t)(t0 + i) * g.ld_bc + n] : 0.0f;
        Bs[i * ldB + n] = b, Cs[i * ldB + n] = c, Ws[n * ldXt + i] = b;
    }
    __syncthreads();
    {
        float acc[16] = {};
        ssd_mm_row(acc, Cs + row * ldB, 1, Ws + q * 16, ldXt, N);  // G_ij = C_i·B_j
#pragma unroll
        for (int c = 0; c < 16; c++) Gs[row * QP + q * 16 + c] = acc[c];
    }
    // Sums over heads, in head order, for this thread's row: Σ Ŵ (columns
    // q·16..), dC and dB (columns q·CWn..).
    float Wsum[16] = {}, dCacc[CWn] = {}, dBacc[CWn] = {};
    for (int h = 0; h < H; h++) {
        float *hv = hvs + (h % 8) * Geo::HV;  // dl, a, rs, cs, cz, xdu, V, dyx, ss of this head
        float *dl = hv, *a = dl + SSD_Q, *rs = a + SSD_Q, *cs = rs + SSD_Q, *cz = cs + SSD_Q;
        float *xdu = cz + SSD_Q, *Vv = xdu + SSD_Q, *dyx = Vv + SSD_Q, *ss = dyx + SSD_Q;
        __syncthreads();  // the previous head (and G's use of Bᵀ) is done with the tiles
        ssd_fill_head(f, sm, hv, L);
        __syncthreads();
        // This head's late reads (dx's old values, D): in flight during the products.
        float dxo[CWp], Dh = g.D[h];
#pragma unroll
        for (int c = 0; c < CWp; c++) {
            int p = q * CWp + c;
            dxo[c] = g.dx && row < L && p < P ? g.dx[(size_t)(t0 + row) * g.ld_dx + h * P + p] : 0.0f;
        }
        {
            // Ŵ (rows of dy·xᵀ), Z (dy·S_in) and dB's dS_out part (x·dS_out).
            float w[16] = {}, z[CWn] = {}, k[CWn] = {};
            ssd_mm_row2(w, z, dY + row * ldX, Xt + q * 16, ldXt, Si + q * CWn, ldS, P);
            ssd_mm_row(k, X + row * ldX, 1, dSo + q * CWn, ldS, P);
            int i = row;
            float ai = a[i];
#pragma unroll
            for (int c = 0; c < 16; c++) {
                int j = q * 16 + c;
                float e = j <= i ? expf(ai - a[j]) : 0.0f;
                float wh = w[c] * e * dl[j];
                Ws[i * QP + j] = wh;
                Wsum[c] += wh;
                Ms[i * QP + j] = Gs[i * QP + j] * e;
                w[c] = wh;
            }
#pragma unroll
            for (int c = 0; c < CWn; c++) {
                float zz = ea[i] * z[c];
                dCacc[c] += zz;
                z[c] = zz;
                dBacc[c] += ed[i] * (dl[i] * k[c]);
            }
            // rs_i = Σ_{j<=i} G_ij Ŵ_ij, cz_i = Σ_n C_i[n] Z_i[n], dyx_i = Σ_p x_i[p] dy_i[p]
            float s3[3];
            ssd_chain(s3, [&](float (&s)[3]) {
#pragma unroll
                for (int c = 0; c < 16; c++)
                    if (q * 16 + c <= i) s[0] += Gs[i * QP + q * 16 + c] * w[c];
#pragma unroll
                for (int c = 0; c < CWn; c++)
                    if (q * CWn + c < N) s[1] += Cs[i * ldB + q * CWn + c] * z[c];
#pragma unroll
                for (int c = 0; c < CWp; c++)
                    if (q * CWp + c < P) s[2] += X[i * ldX + q * CWp + c] * dY[i * ldX + q * CWp + c];
            });
            if (q == 0) rs[i] = s3[0], cz[i] = s3[1], dyx[i] = s3[2];
        }
        if (warp == 7) {  // ss = <dS_out, S_in> (the old kernel's lane order and warp sum)
            float s = 0.0f;
            for (int e = threadIdx.x - 224; e < P * N; e += 32) s += dSo[(e / N) * ldS + e % N] * Si[(e / N) * ldS + e % N];
            s = cu_warp_sumf(s);
            if (threadIdx.x == 224) ss[0] = s;
        }
        __syncthreads();
        // The next head's inputs: in flight during du's products (issued here,
        // not earlier, where Ŵ's registers are live).
        if (h + 1 < H) ssd_fetch_head(g, f, h + 1, t0, L);
        {
            // du = Mᵀ dy + e^{a_last-a_j} R, R_j[p] = Σ_n B_j[n] dS_out[p,n]; dx.
            int j = row;
            float m[CWp] = {}, rr[CWp] = {}, du[CWp], er[CWp];
            ssd_mm_row(m, Ms + j, QP, dY + q * CWp, ldX, L);
            ssd_mm_row(rr, Bs + j * ldB, 1, dSoT + q * CWp, ldST, N);
#pragma unroll
            for (int c = 0; c < CWp; c++) {
                int p = q * CWp + c;
                er[c] = ed[j] * rr[c], du[c] = m[c] + er[c];
                if (g.dx && j < L && p < P)
                    g.dx[(size_t)(t0 + j) * g.ld_dx + h * P + p] = dxo[c] + (dl[j] * du[c] + Dh * dY[j * ldX + p]);
            }
            // xdu_j = Σ_p x_j[p] du_j[p], V_j = Δ_j Σ_p x_j[p] (e^{a_last-a_j} R_j[p]), cs_j = Σ_{i>=j} G_ij Ŵ_ij
            float s3[3];
            ssd_chain(s3, [&](float (&s)[3]) {
#pragma unroll
                for (int c = 0; c < CWp; c++) {
                    int p = q * CWp + c;
                    if (p < P) {
                        float xv = X[j * ldX + p];
                        s[0] += xv * du[c];
                        s[1] += xv * er[c];
                    }
                }
                for (int i = max(j, q * 16); i < q * 16 + 16; i++) s[2] += Gs[i * QP + j] * Ws[i * QP + j];
            });
            if (q == 0) xdu[j] = s3[0], Vv[j] = dl[j] * s3[1], cs[j] = s3[2];
        }
        if (h % 8 == 7 || h == H - 1) {
            // The dΔ phase of this group of heads, warp w taking head h0 + w.
            __syncthreads();
            int h0 = h - h % 8, hw = h0 + warp;
            if (hw <= h) {
                int l = threadIdx.x & 31, k0 = SSD_Q - 1 - 2 * l, k1 = k0 - 1;
                float dtv[2] = {0.0f, 0.0f}, ddo[2] = {0.0f, 0.0f}, bias = g.dt_bias[hw], A = -expf(g.A_log[hw]);
                for (int e = 0; e < 2; e++) {
                    int kk = e ? k1 : k0;
                    if (kk >= L) continue;
                    dtv[e] = g.dt[(size_t)(t0 + kk) * g.ld_dt + hw];
                    if (g.ddt) ddo[e] = g.ddt[(size_t)(t0 + kk) * g.ld_ddt + hw];
                }
                ssd_bwd_dt(g, hvs + warp * Geo::HV, t0, L, hw, A, dtv, ddo, bias,
                           g.par + ((size_t)blockIdx.x * H + hw) * 3);
            }
        }
    }
    // dC += Σ_h Z + Wsum·B, dB += Σ_h (dS_out part) + Wsumᵀ·C, in this chunk's rows.
    __syncthreads();
#pragma unroll
    for (int c = 0; c < 16; c++) Ws[row * QP + q * 16 + c] = Wsum[c];
    __syncthreads();
    ssd_mm_row(dCacc, Ws + row * QP, 1, Bs + q * CWn, ldB, L);
    ssd_mm_row(dBacc, Ws + row, QP, Cs + q * CWn, ldB, L);
#pragma unroll
    for (int c = 0; c < CWn; c++) {
        int n = q * CWn + c;
        if (row >= L || n >= N) continue;
        if (g.dC) g.dC[(size_t)(t0 + row) * g.ld_dbc + n] += dCacc[c];
        if (g.dB) g.dB[(size_t)(t0 + row) * g.ld_dbc + n] += dBacc[c];
    }
}

#endif
