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

template <int RP, int RN>
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
    {
        float acc[4][4];
        ssd_zero(acc);
        ssd_mm(acc, Cs, ldN, 1, Bs, 1, ldN, N);  // G_ij = C_i·B_j
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) Gs[(ty + 16 * r) * QP + tx + 16 * c] = acc[r][c];
    }
    // Sums over heads, in head order, held by the thread that owns the entries.
    float Wsum[4][4], dCacc[4][RN], dBacc[4][RN];
    ssd_zero(Wsum), ssd_zero(dCacc), ssd_zero(dBacc);
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
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < RP; c++) {
                int j = ty + 16 * r, p = tx + 16 * c;
                dxo[r][c] = g.dx && j < L && p < P ? g.dx[(size_t)(t0 + j) * g.ld_dx + h * P + p] : 0.0f;
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
        __syncthreads();
        {
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

#endif
