// cuda/ops/ssd_chunk_bwd2.cuh: the chunk-local SSD backward of
// cuda/ops/ssd_chunk_bwd.cuh (same algebra, see there) reorganised as one
// block per (chunk, head) instead of one block per chunk for all heads in
// turn: 8x the blocks and a chain of barriers per block 8x shorter (the old
// kernel's single-warp phases left the SM idle with 2 blocks resident).
// The sums over heads (dB, dC) go through a thread-block cluster: the H
// blocks of a chunk form one cluster (cluster dims 1 × H, H <= 8), each keeps
// its Ŵ, Z and dS_out parts of dB in shared memory, and after a cluster
// barrier block h sums rows of them over the heads in head order (distributed
// shared memory reads, no atomics) and finishes dC, dB for those rows.
// G = C·Bᵀ stays in registers (each thread owns the same (i, j) entries of G
// and Ŵ); the per-position sums over j (rs), n (cz) and p (xdu, V, dyx) are
// half-warp trees on those registers.
#ifndef HAX_CU_SSD_CHUNK_BWD2_CUH
#define HAX_CU_SSD_CHUNK_BWD2_CUH

#include <cooperative_groups.h>

#include "cuda/ops/ssd_chunk_bwd.cuh"

#define SSD2_MAX_H 8  // heads of one cluster (the portable cluster size)
#define SSD2_ROWS 8   // rows of a chunk one block finishes at a time in the cross-head pass

// Sum over the 16 lanes of this half-warp (fixed tree; every lane gets it).
__device__ __forceinline__ float ssd_half_sum(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Shared memory of ssd_bwd2_kernel, in bytes: B, C, Z, K [64][ldN]; Ŵ, M
// [64][65]; x, dy [64][ldP]; S_in, dS_out [16RP][ldN]; column partials
// [16][64]; nine per-position vectors (and ss).
static inline size_t ssd_bwd2_smem(int RP, int RN) {
    size_t ldP = 16 * RP + 1, ldN = 16 * RN + 1;
    return sizeof(float) * (4 * SSD_Q * ldN + 2 * SSD_Q * SSD_QP + 2 * SSD_Q * ldP + 2 * 16 * RP * ldN + 16 * SSD_Q +
                            8 * SSD_Q + 32);
}

template <int RP, int RN>
__global__ static void __launch_bounds__(SSD_THREADS, 2) ssd_bwd2_kernel(ssd_args g) {
    ssd_chunk ch;
    if (!ssd_chunk_at(g.seq_off, g.n_seq, blockIdx.x, &ch)) return;  // the whole cluster (one slot) leaves
    cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    extern __shared__ float sm[];
    const int ldP = 16 * RP + 1, ldN = 16 * RN + 1, QP = SSD_QP;
    float *Bs = sm, *Cs = Bs + SSD_Q * ldN, *Zp = Cs + SSD_Q * ldN, *Kp = Zp + SSD_Q * ldN;
    float *Ws = Kp + SSD_Q * ldN, *Ms = Ws + SSD_Q * QP, *X = Ms + SSD_Q * QP, *dY = X + SSD_Q * ldP;
    float *Si = dY + SSD_Q * ldP, *dSo = Si + 16 * RP * ldN, *colp = dSo + 16 * RP * ldN;
    float *dl = colp + 16 * SSD_Q, *a = dl + SSD_Q, *rs = a + SSD_Q, *cs = rs + SSD_Q, *cz = cs + SSD_Q;
    float *xdu = cz + SSD_Q, *Vv = xdu + SSD_Q, *dyx = Vv + SSD_Q, *ss = dyx + SSD_Q;
    int h = blockIdx.y, H = g.H, P = g.P, N = g.N, PN = P * N, t0 = ch.t0, L = ch.L;
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    size_t st = ((size_t)blockIdx.x * H + h) * PN;
    // Every global value is read in this first phase (one wait on memory).
    ssd_load(Bs, ldN, SSD_Q, 16 * RN, g.B, g.ld_bc, t0, 0, L, N);
    ssd_load(Cs, ldN, SSD_Q, 16 * RN, g.C, g.ld_bc, t0, 0, L, N);
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
    int l = threadIdx.x & 31, k0 = SSD_Q - 1 - 2 * l, k1 = k0 - 1;  // warp 0's positions in the da phase
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
        // G (registers), Ŵ and the masked decay of G (shared), rs = Σ_j G Ŵ
        // (half-warp rows), column partials of G Ŵ (per ty, summed below).
        float G[4][4], w[4][4], csum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        ssd_zero(G), ssd_zero(w);
        ssd_mm(G, Cs, ldN, 1, Bs, 1, ldN, N);  // G_ij = C_i·B_j
        ssd_mm(w, dY, ldP, 1, X, 1, ldP, P);   // dy_i·x_j
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = ty + 16 * r;
            float rsum = 0.0f;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int j = tx + 16 * c;
                float e = j <= i ? expf(a[i] - a[j]) : 0.0f;
                float wh = w[r][c] * e * dl[j], gw = G[r][c] * wh;
                Ws[i * QP + j] = wh;
                Ms[i * QP + j] = G[r][c] * e;
                rsum += gw;
                csum[c] += gw;
            }
            rsum = ssd_half_sum(rsum);
            if (tx == 0) rs[i] = rsum;
        }
#pragma unroll
        for (int c = 0; c < 4; c++) colp[ty * SSD_Q + tx + 16 * c] = csum[c];
    }
    {
        // Z (this head's part of dC), dB's dS_out part, cz = C·Z per position.
        float z[4][RN], k[4][RN];
        ssd_zero(z), ssd_zero(k);
        ssd_mm(z, dY, ldP, 1, Si, ldN, 1, P);
        ssd_mm(k, X, ldP, 1, dSo, ldN, 1, P);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = ty + 16 * r;
            float ea = expf(a[i]), eb = expf(al - a[i]), czs = 0.0f;
#pragma unroll
            for (int c = 0; c < RN; c++) {
                int n = tx + 16 * c;
                float zz = ea * z[r][c];
                Zp[i * ldN + n] = zz;
                Kp[i * ldN + n] = eb * (dl[i] * k[r][c]);
                czs += Cs[i * ldN + n] * zz;
            }
            czs = ssd_half_sum(czs);
            if (tx == 0) cz[i] = czs;
        }
    }
    if (threadIdx.x >= SSD_THREADS - 32) {  // the last warp: ⟨dS_out, S_in⟩
        float s = 0.0f;
        for (int q = threadIdx.x & 31; q < PN; q += 32) s += dSo[(q / N) * ldN + q % N] * Si[(q / N) * ldN + q % N];
        s = cu_warp_sumf(s);
        if ((threadIdx.x & 31) == 0) ss[0] = s;
    }
    __syncthreads();
    if (threadIdx.x < SSD_Q) {
        float s = 0.0f;
        for (int y = 0; y < 16; y++) s += colp[y * SSD_Q + threadIdx.x];
        cs[threadIdx.x] = s;
    }
    {
        // du = Mᵀ dy + e^{a_last-a_j} R, R_j[p] = Σ_n B_j[n] dS_out[p,n]; dx;
        // the per-position sums over p of x·du, x·(e R) and x·dy.
        float m[4][RP], rr[4][RP];
        ssd_zero(m), ssd_zero(rr);
        ssd_mm(m, Ms, 1, QP, dY, ldP, 1, L);
        ssd_mm(rr, Bs, ldN, 1, dSo, 1, ldN, N);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int j = ty + 16 * r;
            float eb = expf(al - a[j]), c2 = 0.0f, c3 = 0.0f, c4 = 0.0f;
#pragma unroll
            for (int c = 0; c < RP; c++) {
                int p = tx + 16 * c;
                float er = eb * rr[r][c], du = m[r][c] + er, xv = X[j * ldP + p], dyv = dY[j * ldP + p];
                if (g.dx && j < L && p < P)
                    g.dx[(size_t)(t0 + j) * g.ld_dx + h * P + p] = dxo[r][c] + (dl[j] * du + Dh * dyv);
                c2 += xv * du, c3 += xv * er, c4 += xv * dyv;
            }
            c2 = ssd_half_sum(c2), c3 = ssd_half_sum(c3), c4 = ssd_half_sum(c4);
            if (tx == 0) xdu[j] = c2, Vv[j] = dl[j] * c3, dyx[j] = c4;
        }
    }
    __syncthreads();
    if (threadIdx.x < 32) ssd_bwd_dt(g, dl, t0, L, h, A, dtv, ddo, bias, g.par + ((size_t)blockIdx.x * H + h) * 3);
    // Cross-head pass: every head's Ŵ, Z and K are complete. Block h takes
    // the row units u = h, h + H, ... of the chunk: dC_i = Σ_h Z_i + Σ_j
    // Wsum_ij B_j and dB_j = Σ_h K_j + Σ_i Wsum_ij C_i, Wsum = Σ_h Ŵ (head
    // order, from 0: the old kernel's order). M's space holds the unit's
    // rows of Wsum [8][QP] and its columns [64][9].
    cluster.sync();
    float *Wr = Ms, *Wc = Ms + SSD2_ROWS * QP;
    int ri = threadIdx.x >> 5, ln = threadIdx.x & 31;
    for (int u = h; u < SSD_Q / SSD2_ROWS && u * SSD2_ROWS < L; u += H) {
        int r0 = u * SSD2_ROWS;
        for (int q = threadIdx.x; q < SSD2_ROWS * SSD_Q; q += blockDim.x) {
            int rw = q / SSD_Q, jw = q % SSD_Q, ic = q / SSD2_ROWS, jc = q % SSD2_ROWS;
            float sr = 0.0f, sc = 0.0f;
            for (int hh = 0; hh < H; hh++) {
                const float *W = cluster.map_shared_rank(Ws, hh);
                sr += W[(r0 + rw) * QP + jw];
                sc += W[ic * QP + r0 + jc];
            }
            Wr[rw * QP + jw] = sr;
            Wc[ic * (SSD2_ROWS + 1) + jc] = sc;
        }
        __syncthreads();
        int i = r0 + ri;
#pragma unroll
        for (int c = 0; c < (16 * RN + 31) / 32; c++) {
            int n = ln + 32 * c;
            if (i >= L || n >= N) continue;
            float dc = 0.0f, db = 0.0f;
            for (int hh = 0; hh < H; hh++) {
                dc += cluster.map_shared_rank(Zp, hh)[i * ldN + n];
                db += cluster.map_shared_rank(Kp, hh)[i * ldN + n];
            }
            for (int j = 0; j < L; j++) dc = fmaf(Wr[ri * QP + j], Bs[j * ldN + n], dc);
            for (int k = 0; k < L; k++) db = fmaf(Wc[k * (SSD2_ROWS + 1) + ri], Cs[k * ldN + n], db);
            if (g.dC) g.dC[(size_t)(t0 + i) * g.ld_dbc + n] += dc;
            if (g.dB) g.dB[(size_t)(t0 + i) * g.ld_dbc + n] += db;
        }
        __syncthreads();
    }
    cluster.sync();  // no block leaves while another may still read its shared memory
}

#endif
