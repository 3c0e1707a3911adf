// cuda/sparse/ks_rank.cu: key selection on the GPU, part 2: the ranking-loss
// candidates (the CPU's Philox stream and sampler, on the device), the
// ranking targets, the pairwise loss and its backward. See cuda/sparse/ks.h.
#include "cuda/core/common.cuh"
#include "cuda/sparse/ks.h"
#include "cuda/sparse/ks_common.cuh"
#include "cuda/sparse/tiles.h"
#include "cuda/sparse/rng.cuh"

// ---------------------------------------------------------------- candidates

// One warp per sequence. Floyd's algorithm (a uniform min(n, k_c)-subset of
// 0..n-1) with the CPU's draws in the CPU's order: every lane runs the same
// generator, so all lanes draw the same t; the "seen before" test is a warp
// vote over the picks so far (shared memory). The picks are distinct, so the
// ascending order is a rank sort: pick a goes to slot #{picks < pick a}.
__global__ static void ks_sample_kernel(int *cand, const int *seq_off, const int64_t *sample_id,
                                        int k_c, uint64_t seed, uint32_t step, uint32_t layer) {
    extern __shared__ int pick[];  // [k_c]
    int s = blockIdx.x, lane = threadIdx.x;
    int n = seq_off[s + 1] - seq_off[s];
    int m = n < k_c ? n : k_c;
    int *out = cand + (size_t)s * k_c;
    cu_rng r;
    cu_rng_init(&r, seed, RNG_KS, step, layer, (uint32_t)sample_id[s]);
    for (int j = n - m, k = 0; j < n; j++, k++) {
        int t = (int)cu_rng_below(&r, (uint32_t)j + 1);
        bool seen = false;
        for (int i = lane; i < k; i += 32) seen |= pick[i] == t;
        seen = __any_sync(0xffffffffu, seen);
        if (lane == 0) pick[k] = seen ? j : t;
        __syncwarp();
    }
    for (int a = lane; a < m; a += 32) {
        int v = pick[a], rank = 0;
        for (int b = 0; b < m; b++) rank += pick[b] < v;
        out[rank] = v;
    }
    for (int i = m + lane; i < k_c; i += 32) out[i] = -1;
}

extern "C" void cuda_ks_sample_candidates(int *cand, const int *seq_off, int n_seq,
                                          const int64_t *sample_id, int k_c, uint64_t seed,
                                          uint32_t step, uint32_t layer) {
    if (n_seq <= 0) return;
    if (k_c < 1 || (size_t)k_c * sizeof(int) > 48 * 1024)
        hax_die("cu_sparse_ks: candidates: k_c: expected 1..%d, found %d", 12 * 1024, k_c);
    ks_sample_kernel<<<n_seq, 32, sizeof(int) * (size_t)k_c, cu_stream()>>>(cand, seq_off, sample_id,
                                                                           k_c, seed, step, layer);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- helpers

// Number of candidates of a row: the entries before the first -1.
__device__ static int ks_count(const int *row, int k_c) {
    int m = 0;
    while (m < k_c && row[m] >= 0) m++;
    return m;
}

// Slot a of a row of m candidates is usable: a position below n not seen in
// an earlier slot. Otherwise sets the error flag (the CPU dies there).
__device__ static bool ks_slot_ok(const int *row, int a, int n, int *err) {
    int v = row[a];
    bool ok = v >= 0 && v < n;
    for (int b = 0; ok && b < a; b++) ok = row[b] != v;
    if (!ok) atomicOr(err, CU_ERR_KS);
    return ok;
}

// Every candidate of the row lies inside the sequence (a bad row was flagged
// by ks_check_kernel; it is skipped rather than read out of bounds).
__device__ static bool ks_row_inside(const int *row, int m, int n) {
    for (int a = 0; a < m; a++)
        if (row[a] >= n) return false;
    return true;
}

// The loss terms hax_sigmoid_d, hax_rank_target, hax_bce_logits: src/core/scalar.h
// (included by cuda/core/common.cuh), shared with src/sparse/ks.c.

// ---------------------------------------------------------------- targets

// One warp per (sequence, slot): lanes take the queries t = I + lane, + 32,
// ... and sum sigmoid(Q_t . K_I) in double; the lane sums are added by a
// fixed shuffle tree. Entries after the first -1 must be -1 (else the flag).
__global__ static void ks_targets_kernel(double *y, const float *K, int ldk, const float *Q, int ldq,
                                         const int *cand, const int *seq_off, int n_seq,
                                         int model_len, int N, int k_c, int causal, int *err) {
    long slot = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (slot >= (long)n_seq * k_c) return;
    int s = (int)(slot / k_c), a = (int)(slot % k_c);
    int o = seq_off[s], n = seq_off[s + 1] - o;
    const int *row = cand + (size_t)s * k_c;
    int m = ks_count(row, k_c);
    if (a >= m) {
        if (lane == 0) {
            if (row[a] >= 0) atomicOr(err, CU_ERR_KS);
            y[slot] = 0.0;
        }
        return;
    }
    bool ok = ks_slot_ok(row, a, n, err) && (causal || model_len >= n);
    if (!ok) {
        if (lane == 0) {
            atomicOr(err, CU_ERR_KS);
            y[slot] = 0.0;
        }
        return;
    }
    int I = row[a];
    const float *k = K + (size_t)(o + I) * ldk;
    double sum = 0.0;
    for (int t = I + lane; t < n; t += 32) {
        const float *q = Q + (size_t)(o + t) * ldq;
        double dot = 0.0;
        for (int i = 0; i < N; i++) dot += (double)q[i] * (double)k[i];
        sum += hax_sigmoid_d(dot);
    }
    sum = cu_warp_sum(sum);
    // Quirk 5: each pad query (Q = 0) adds sigmoid(0) = 0.5.
    if (!causal) sum += 0.5 * (double)(model_len - n);
    if (lane == 0) y[slot] = sum;
}

extern "C" void cuda_ks_rank_targets(double *y, const float *K, int ldk, const float *Q, int ldq,
                                     const int *cand, const int *seq_off, int n_seq, int model_len,
                                     int N, int k_c, hax_semantics sem) {
    long slots = (long)n_seq * k_c;
    if (slots <= 0) return;
    ks_targets_kernel<<<cu_blocks(slots * 32, 128), 128, 0, cu_stream()>>>(
        y, K, ldk, Q, ldq, cand, seq_off, n_seq, model_len, N, k_c, sem == SEMANTICS_CAUSAL, cu_error_flag());
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- loss

extern "C" size_t cuda_ks_loss_workspace_bytes(int n_seq) {
    return sizeof(double) * (size_t)(n_seq > 0 ? n_seq : 1);
}

// One block per sequence: thread a sums its row of pairs over b in order
// (as the CPU), thread 0 adds the rows in order: loss_s[s] = mean over the
// m^2 pairs, the diagonal included (quirk 8).
__global__ static void ks_loss_seq_kernel(double *loss_s, const float *score, const double *y,
                                          const int *cand, const int *seq_off, int k_c) {
    extern __shared__ double row_sum[];  // [k_c]
    int s = blockIdx.x;
    int o = seq_off[s];
    const int *I = cand + (size_t)s * k_c;
    const double *ys = y + (size_t)s * k_c;
    const float *x = score + o;
    int m = ks_count(I, k_c);
    if (!ks_row_inside(I, m, seq_off[s + 1] - o)) m = 0;
    for (int a = threadIdx.x; a < m; a += blockDim.x) {
        double l = 0.0;
        for (int b = 0; b < m; b++)
            l += hax_bce_logits((double)x[I[a]] - (double)x[I[b]], hax_rank_target(ys[a], ys[b]));
        row_sum[a] = l;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double l = 0.0;
        for (int a = 0; a < m; a++) l += row_sum[a];
        loss_s[s] = m > 0 ? l / ((double)m * m) : 0.0;
    }
}

__global__ static void ks_loss_total_kernel(double *loss, const double *loss_s, int n_seq) {
    double total = 0.0;
    for (int s = 0; s < n_seq; s++) total += loss_s[s];
    *loss = total;
}

// Flags bad rows (checked once here; the loss kernels trust the slots).
__global__ static void ks_check_kernel(const int *cand, const int *seq_off, int n_seq, int k_c,
                                       int *err) {
    long slot = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (slot >= (long)n_seq * k_c) return;
    int s = (int)(slot / k_c), a = (int)(slot % k_c);
    const int *row = cand + (size_t)s * k_c;
    int m = ks_count(row, k_c);
    if (a < m) ks_slot_ok(row, a, seq_off[s + 1] - seq_off[s], err);
    else if (row[a] >= 0) atomicOr(err, CU_ERR_KS);
}

extern "C" void cuda_ks_rank_loss_pairs(double *loss, const float *score, const double *y,
                                        const int *cand, const int *seq_off, int n_seq, int k_c,
                                        void *work) {
    if (n_seq <= 0) {
        cuda_zero(loss, sizeof(double));
        return;
    }
    long slots = (long)n_seq * k_c;
    ks_check_kernel<<<cu_blocks(slots, 256), 256, 0, cu_stream()>>>(cand, seq_off, n_seq, k_c,
                                                                   cu_error_flag());
    CUDA_LAUNCHED();
    double *loss_s = (double *)work;
    ks_loss_seq_kernel<<<n_seq, 64, sizeof(double) * (size_t)k_c, cu_stream()>>>(loss_s, score, y,
                                                                                cand, seq_off, k_c);
    CUDA_LAUNCHED();
    ks_loss_total_kernel<<<1, 1, 0, cu_stream()>>>(loss, loss_s, n_seq);
    CUDA_LAUNCHED();
}

// d/dx_a of the mean = (2/m^2) sum_b (sigmoid(x_a - x_b) - T_ab), b in order.
__global__ static void ks_loss_backward_kernel(float *dscore, const float *score, const double *y,
                                               const int *cand, const int *seq_off, int k_c,
                                               float scale) {
    int s = blockIdx.x;
    int o = seq_off[s];
    const int *I = cand + (size_t)s * k_c;
    const double *ys = y + (size_t)s * k_c;
    const float *x = score + o;
    int m = ks_count(I, k_c);
    if (m == 0 || !ks_row_inside(I, m, seq_off[s + 1] - o)) return;
    double c = 2.0 * (double)scale / ((double)m * m);
    for (int a = threadIdx.x; a < m; a += blockDim.x) {
        double g = 0.0;
        for (int b = 0; b < m; b++)
            g += hax_sigmoid_d((double)x[I[a]] - (double)x[I[b]]) - hax_rank_target(ys[a], ys[b]);
        dscore[o + I[a]] += (float)(c * g);
    }
}

extern "C" void cuda_ks_rank_loss_backward(float *dscore, const float *score, const double *y,
                                           const int *cand, const int *seq_off, int n_seq, int k_c,
                                           float scale) {
    if (n_seq <= 0) return;
    ks_loss_backward_kernel<<<n_seq, 64, 0, cu_stream()>>>(dscore, score, y, cand, seq_off, k_c,
                                                           scale);
    CUDA_LAUNCHED();
}

// rows[s * k_c + a] = seq_off[s] + cand[s, a] for a usable slot, else -1.
__global__ static void ks_rows_kernel(int *rows, const int *cand, const int *seq_off, int n_seq,
                                      int k_c) {
    long slot = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (slot >= (long)n_seq * k_c) return;
    int s = (int)(slot / k_c), a = (int)(slot % k_c);
    const int *row = cand + (size_t)s * k_c;
    int n = seq_off[s + 1] - seq_off[s];
    bool on = a < ks_count(row, k_c) && row[a] < n;
    rows[slot] = on ? seq_off[s] + row[a] : -1;
}

extern "C" void cuda_ks_candidate_rows(int *rows, const int *cand, const int *seq_off, int n_seq,
                                       int k_c) {
    long slots = (long)n_seq * k_c;
    if (slots <= 0) return;
    ks_rows_kernel<<<cu_blocks(slots, 256), 256, 0, cu_stream()>>>(rows, cand, seq_off, n_seq, k_c);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- bf16-pure (ks.h)

// ks_targets_kernel with the bf16 ops of ks_rank_targets_bf16: a_tm =
// R(Q_t . K_I) (the dot in double, i in order, as the CPU: bf16 products are
// exact, so fused multiply-adds change nothing), s = R(sigmoid(a)), the lane
// sums of s added by the warp tree, y = R(sum + 0.5 n_pad).
__global__ static void ks_targets_bf16_kernel(double *y, const float *K, int ldk, const float *Q, int ldq,
                                              const int *cand, const int *seq_off, int n_seq, int model_len, int N,
                                              int k_c, int causal, int *err) {
    long slot = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (slot >= (long)n_seq * k_c) return;
    int s = (int)(slot / k_c), a = (int)(slot % k_c);
    int o = seq_off[s], n = seq_off[s + 1] - o;
    const int *row = cand + (size_t)s * k_c;
    int m = ks_count(row, k_c);
    if (a >= m) {
        if (lane == 0) {
            if (row[a] >= 0) atomicOr(err, CU_ERR_KS);
            y[slot] = 0.0;
        }
        return;
    }
    bool ok = ks_slot_ok(row, a, n, err) && (causal || model_len >= n);
    if (!ok) {
        if (lane == 0) {
            atomicOr(err, CU_ERR_KS);
            y[slot] = 0.0;
        }
        return;
    }
    int I = row[a];
    const float *k = K + (size_t)(o + I) * ldk;
    double sum = 0.0;
    for (int t = I + lane; t < n; t += 32) {
        const float *q = Q + (size_t)(o + t) * ldq;
        double dot = 0.0;
        for (int i = 0; i < N; i++) dot = __dadd_rn(dot, __dmul_rn((double)q[i], (double)k[i]));
        sum += hax_bf16_round(hax_sigmoid(hax_bf16_round((float)dot)));
    }
    sum = cu_warp_sum(sum);
    if (!causal) sum += 0.5 * (double)(model_len - n);  // quirk 5
    if (lane == 0) y[slot] = hax_bf16_round((float)sum);
}

extern "C" void cuda_ks_rank_targets_bf16(double *y, const float *K, int ldk, const float *Q, int ldq,
                                          const int *cand, const int *seq_off, int n_seq, int model_len, int N,
                                          int k_c, hax_semantics sem) {
    long slots = (long)n_seq * k_c;
    if (slots <= 0) return;
    ks_targets_bf16_kernel<<<cu_blocks(slots * 32, 128), 128, 0, cu_stream()>>>(
        y, K, ldk, Q, ldq, cand, seq_off, n_seq, model_len, N, k_c, sem == SEMANTICS_CAUSAL, cu_error_flag());
    CUDA_LAUNCHED();
}

// ks_loss_seq_kernel with the bf16 term (src/core/scalar.h hax_bce_term_bf16).
__global__ static void ks_loss_seq_bf16_kernel(double *loss_s, const float *score, const double *y,
                                               const int *cand, const int *seq_off, int k_c) {
    extern __shared__ double row_sum_bf16[];  // [k_c]
    int s = blockIdx.x;
    int o = seq_off[s];
    const int *I = cand + (size_t)s * k_c;
    const double *ys = y + (size_t)s * k_c;
    const float *x = score + o;
    int m = ks_count(I, k_c);
    if (!ks_row_inside(I, m, seq_off[s + 1] - o)) m = 0;
    for (int a = threadIdx.x; a < m; a += blockDim.x) {
        double l = 0.0;
        for (int b = 0; b < m; b++) l += hax_bce_term_bf16(x[I[a]], x[I[b]], ys[a], ys[b]);
        row_sum_bf16[a] = l;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double l = 0.0;
        for (int a = 0; a < m; a++) l += row_sum_bf16[a];
        loss_s[s] = m > 0 ? l / ((double)m * m) : 0.0;
    }
}

extern "C" void cuda_ks_rank_loss_pairs_bf16(double *loss, const float *score, const double *y, const int *cand,
                                             const int *seq_off, int n_seq, int k_c, void *work) {
    if (n_seq <= 0) {
        cuda_zero(loss, sizeof(double));
        return;
    }
    long slots = (long)n_seq * k_c;
    ks_check_kernel<<<cu_blocks(slots, 256), 256, 0, cu_stream()>>>(cand, seq_off, n_seq, k_c, cu_error_flag());
    CUDA_LAUNCHED();
    double *loss_s = (double *)work;
    ks_loss_seq_bf16_kernel<<<n_seq, 64, sizeof(double) * (size_t)k_c, cu_stream()>>>(loss_s, score, y, cand,
                                                                                     seq_off, k_c);
    CUDA_LAUNCHED();
    ks_loss_total_kernel<<<1, 1, 0, cu_stream()>>>(loss, loss_s, n_seq);
    CUDA_LAUNCHED();
}

// ks_rank_loss_backward_bf16: thread a sums its row and column of d loss /
// d P (src/core/scalar.h hax_bce_dpair_bf16) in double, b in order.
__global__ static void ks_loss_backward_bf16_kernel(float *dscore, const float *score, const double *y,
                                                    const int *cand, const int *seq_off, int k_c, float scale) {
    int s = blockIdx.x;
    int o = seq_off[s];
    const int *I = cand + (size_t)s * k_c;
    const double *ys = y + (size_t)s * k_c;
    const float *x = score + o;
    int m = ks_count(I, k_c);
    if (m == 0 || !ks_row_inside(I, m, seq_off[s + 1] - o)) return;
    float inv_m2 = 1.0f / (float)(m * m);
    for (int a = threadIdx.x; a < m; a += blockDim.x) {
        double row = 0.0, col = 0.0;
        for (int b = 0; b < m; b++) {
            row += hax_bce_dpair_bf16(x[I[a]], x[I[b]], ys[a], ys[b], scale, inv_m2);
            col += hax_bce_dpair_bf16(x[I[b]], x[I[a]], ys[b], ys[a], scale, inv_m2);
        }
        dscore[o + I[a]] += hax_bf16_round(hax_bf16_round((float)row) + hax_bf16_round((float)-col));
    }
}

extern "C" void cuda_ks_rank_loss_backward_bf16(float *dscore, const float *score, const double *y,
                                                const int *cand, const int *seq_off, int n_seq, int k_c,
                                                float scale) {
    if (n_seq <= 0) return;
    ks_loss_backward_bf16_kernel<<<n_seq, 64, 0, cu_stream()>>>(dscore, score, y, cand, seq_off, k_c, scale);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- the new kernels (HAX_SPARSE_KS=new)
//
// The loss above is one block of 64 threads per sequence, each thread adding
// its candidate's k_c pair terms (an exp and a log1p in double each) one
// after another: 2 warps on each of 64 SMs, latency-bound. Here a warp takes
// one candidate: its lanes form 32 pair terms at once, then the terms are
// added in b order by shuffles (the same sum in the same order). The
// backward likewise (a warp per candidate), with the candidate rows'
// gathers of cuda_ks_mlp_backward in the same kernel. The targets kernel
// also copies the candidates into the state, finds each sequence's usable
// count (which the check, loss and row kernels above each looked for, one
// load at a time), and its row checks are warp-parallel.

// ks_count by one warp: the entries before the first -1.
__device__ static int ks_count_warp(const int *row, int k_c, int lane) {
    for (int base = 0; base < k_c; base += 32) {
        unsigned neg = __ballot_sync(0xffffffffu, base + lane < k_c && row[base + lane] < 0);
        if (neg) return base + __ffs(neg) - 1;
    }
    return k_c;
}

// ks_slot_ok by one warp, without the flag: 0 <= row[a] < n, not in an earlier slot.
__device__ static bool ks_slot_ok_warp(const int *row, int a, int n, int lane) {
    int v = row[a];
    bool dup = false;
    for (int b = lane; b < a; b += 32) dup |= row[b] == v;
    return v >= 0 && v < n && !__any_sync(0xffffffffu, dup);
}

// ks_row_inside by one warp.
__device__ static bool ks_row_inside_warp(const int *row, int m, int n, int lane) {
    bool out = false;
    for (int a = lane; a < m; a += 32) out |= row[a] >= n;
    return !__any_sync(0xffffffffu, out);
}

// The checks of candidate slot (s, a) for its target, by one warp:
// cand_copy[slot] = row[a] (cand_copy may be NULL), *cand_m_s = the usable
// count of the row (for a == 0; 0 if a position lies outside the sequence),
// and for a slot that adds nothing (unused, or bad: bit CU_ERR_KS) y[slot] =
// 0. Returns the candidate's position, or -1 for such a slot.
__device__ static int ks_target_slot(double *y, int *cand_copy, int *cand_m_s, const int *row, long slot, int a,
                                     int k_c, int n, int model_len, int causal, int *err, int lane) {
    if (cand_copy && lane == 0) cand_copy[slot] = row[a];
    int m = ks_count_warp(row, k_c, lane);
    if (a == 0) {
        bool inside = ks_row_inside_warp(row, m, n, lane);
        if (lane == 0) *cand_m_s = inside ? m : 0;
    }
    bool unused = a >= m;
    if (unused || !(ks_slot_ok_warp(row, a, n, lane) && (causal || model_len >= n))) {
        if (lane == 0) {
            if (!unused || row[a] >= 0) atomicOr(err, CU_ERR_KS);
            y[slot] = 0.0;
        }
        return -1;
    }
    return row[a];
}

// One query row's term of a target: sigmoid(q . k) in double, features in
// order (bf16-pure: a product then a sum, each rounded, and the score and
// sigmoid rounded to bf16, as ks_targets_bf16_kernel; fp32: ks_targets_kernel's
// dot += q k, fused by nvcc).
template <int BF16>
__device__ __forceinline__ double ks_target_term(const float *q, const float *k, int N) {
    double dot = 0.0;
    if constexpr (BF16) {
        for (int i = 0; i < N; i++) dot = __dadd_rn(dot, __dmul_rn((double)q[i], (double)k[i]));
        return hax_bf16_round(hax_sigmoid(hax_bf16_round((float)dot)));
    } else {
        for (int i = 0; i < N; i++) dot = __fma_rn((double)q[i], (double)k[i], dot);
        return hax_sigmoid_d(dot);
    }
}

// ks_targets_kernel / ks_targets_bf16_kernel (the same sums), plus:
// cand_copy[slot] = cand[slot] (cand_copy may be NULL), and cand_m[s] = the usable count of row s
// (0 if a position lies outside the sequence: the loss then skips it). The
// flags of ks_check_kernel are a subset of this kernel's.
template <int BF16>
__global__ static void ks_targets_new_kernel(double *y, int *cand_copy, int *cand_m, const float *K, int ldk,
                                             const float *Q, int ldq, const int *cand, const int *seq_off, int n_seq,
                                             int model_len, int N, int k_c, int causal, int *err) {
    long slot = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (slot >= (long)n_seq * k_c) return;
    int s = (int)(slot / k_c), a = (int)(slot % k_c);
    int o = seq_off[s], n = seq_off[s + 1] - o;
    int I = ks_target_slot(y, cand_copy, cand_m + s, cand + (size_t)s * k_c, slot, a, k_c, n, model_len, causal, err,
                           lane);
    if (I < 0) return;
    const float *k = K + (size_t)(o + I) * ldk;
    double sum = 0.0;
    for (int t = I + lane; t < n; t += 32) sum += ks_target_term<BF16>(Q + (size_t)(o + t) * ldq, k, N);
    sum = cu_warp_sum(sum);
    if (!causal) sum += 0.5 * (double)(model_len - n);  // quirk 5 (exact: a multiple of 0.5)
    if (lane == 0) y[slot] = BF16 ? (double)hax_bf16_round((float)sum) : sum;
}

// ks_targets_new_kernel's sums with the query rows staged in shared memory.
// There each lane reads another query row, one scalar per feature, so every
// load instruction touches 32 rows (32 cache lines), the L1 serving one line
// a cycle. Here a block takes KS_TG_WARPS candidates of one sequence (a warp
// each) and walks the sequence's rows in tiles of 32 from the smallest of
// their positions; each tile is staged once (coalesced) for all of them, at
// an odd row stride so the 32 lanes' reads of one feature fall on 32 banks.
// Lane l of candidate a still takes the rows t = I + l + 32 m in ascending
// order (each tile holds exactly one of them), with the same products in the
// same order, so y is ks_targets_new_kernel's bit for bit.
template <int BF16>
__global__ static void __launch_bounds__(32 * KS_TG_WARPS)
    ks_targets_tile_kernel(double *y, int *cand_copy, int *cand_m, const float *K, int ldk, const float *Q, int ldq,
                           const int *cand, const int *seq_off, int model_len, int N, int k_c, int causal, int *err) {
    __shared__ float qs[32 * (KS_MAX_N + 1)], ks[KS_TG_WARPS * KS_MAX_N];
    __shared__ int first[KS_TG_WARPS];
    int s = blockIdx.x, w = threadIdx.x / 32, lane = threadIdx.x % 32, a = blockIdx.y * KS_TG_WARPS + w;
    int o = seq_off[s], n = seq_off[s + 1] - o, NP = N | 1;
    long slot = (long)s * k_c + a;
    int I = INT_MAX;  // this warp's candidate position, INT_MAX when it adds nothing
    if (a < k_c) {
        int v = ks_target_slot(y, cand_copy, cand_m + s, cand + (size_t)s * k_c, slot, a, k_c, n, model_len, causal,
                               err, lane);
        if (v >= 0) {
            I = v;
            for (int i = lane; i < N; i += 32) ks[w * N + i] = K[(size_t)(o + I) * ldk + i];
        }
    }
    if (lane == 0) first[w] = I;
    __syncthreads();
    int t0 = INT_MAX;
    for (int i = 0; i < KS_TG_WARPS; i++) t0 = min(t0, first[i]);
    double sum = 0.0;
    for (; t0 < n; t0 += 32) {  // t0 == INT_MAX: no candidate of the block adds anything
        for (int i = threadIdx.x; i < 32 * N; i += 32 * KS_TG_WARPS) {
            int r = i / N, f = i % N;
            qs[r * NP + f] = t0 + r < n ? Q[(size_t)(o + t0 + r) * ldq + f] : 0.0f;
        }
        __syncthreads();
        int t = tile_lane_row(I, t0, lane);  // (meaningful for I < INT_MAX)
        if (I != INT_MAX && t >= I && t < n) sum += ks_target_term<BF16>(qs + (t - t0) * NP, ks + w * N, N);
        __syncthreads();  // the tile is rewritten next
    }
    if (I == INT_MAX) return;
    sum = cu_warp_sum(sum);
    if (!causal) sum += 0.5 * (double)(model_len - n);  // quirk 5 (exact: a multiple of 0.5)
    if (lane == 0) y[slot] = BF16 ? (double)hax_bf16_round((float)sum) : sum;
}

// One pair's loss term, as ks_loss_seq_kernel / ks_loss_seq_bf16_kernel add it.
template <int BF16>
__device__ __forceinline__ double ks_pair_term(float xa, float xb, double ya, double yb) {
    if (BF16) return hax_bce_term_bf16(xa, xb, ya, yb);
    return hax_bce_logits((double)xa - (double)xb, hax_rank_target(ya, yb));
}

// Block (s, y), warp w: candidate a = 8y + w of sequence s: row_loss[s, a] =
// the sum over b of its pair terms, b in order (lanes form 32 terms, the
// shuffles hand them to the sum one by one).
template <int BF16>
__global__ static void ks_loss_rows_kernel(double *row_loss, const float *score, const double *y, const int *cand,
                                           const int *cand_m, const int *seq_off, int k_c) {
    int s = blockIdx.x, a = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32, m = cand_m[s];
    if (a >= m) return;
    const int *I = cand + (size_t)s * k_c;
    const double *ys = y + (size_t)s * k_c;
    const float *x = score + seq_off[s];
    float xa = x[I[a]];
    double ya = ys[a], l = 0.0;
    for (int b0 = 0; b0 < m; b0 += 32) {
        int b = b0 + lane;
        double term = b < m ? ks_pair_term<BF16>(xa, x[I[b]], ya, ys[b]) : 0.0;
        for (int j = 0; j < 32 && b0 + j < m; j++) l += __shfl_sync(0xffffffffu, term, j);
    }
    if (lane == 0) row_loss[(size_t)s * k_c + a] = l;
}

// One block: loss_s[s] = the mean over sequence s's m^2 pairs (its rows
// added in order), then *loss = the sum over s in order (ks_loss_seq_kernel's
// thread 0, then ks_loss_total_kernel).
__global__ static void ks_loss_finish_kernel(double *loss, double *loss_s, const double *row_loss, const int *cand_m,
                                             int n_seq, int k_c) {
    for (int s = threadIdx.x; s < n_seq; s += blockDim.x) {
        int m = cand_m[s];
        double l = 0.0;
        for (int a = 0; a < m; a++) l += row_loss[(size_t)s * k_c + a];
        loss_s[s] = m > 0 ? l / ((double)m * m) : 0.0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int s = 0; s < n_seq; s++) total += loss_s[s];
        *loss = total;
    }
}

// The targets y of the state's n_seq x k_c candidate slots (and cand_copy,
// cand_m), by one warp per candidate or by the staged tiles (st->targets_warp).
template <int BF16>
static void ks_targets_launch(cuda_ks_state *st, int *copy, const float *K, int ldk, const float *Q, int ldq,
                              const int *cand, int model_len, int causal) {
    int n_seq = st->n_seq, k_c = st->k_c;
    cudaStream_t sm = cu_stream();
    if (st->targets_warp)
        ks_targets_new_kernel<BF16><<<cu_blocks((long)n_seq * k_c * 32, 128), 128, 0, sm>>>(
            st->y, copy, st->cand_m, K, ldk, Q, ldq, cand, st->seq_off, n_seq, model_len, st->N, k_c, causal,
            cu_error_flag());
    else
        ks_targets_tile_kernel<BF16><<<dim3(n_seq, cu_blocks(k_c, KS_TG_WARPS)), 32 * KS_TG_WARPS, 0, sm>>>(
            st->y, copy, st->cand_m, K, ldk, Q, ldq, cand, st->seq_off, model_len, st->N, k_c, causal,
            cu_error_flag());
    CUDA_LAUNCHED();
}

extern "C" void cuda_ks_targets_loss(cuda_ks_state *st, const float *K, int ldk, const float *Q, int ldq,
                                     const int *cand, int model_len, hax_semantics sem) {
    int n_seq = st->n_seq, k_c = st->k_c, causal = sem == SEMANTICS_CAUSAL;
    long slots = (long)n_seq * k_c;
    int *copy = cand == st->cand ? NULL : st->cand;
    cudaStream_t sm = cu_stream();
    if (slots <= 0) {
        cuda_zero(st->loss, sizeof(double));
        return;
    }
    if (st->bf16) ks_targets_launch<1>(st, copy, K, ldk, Q, ldq, cand, model_len, causal);
    else ks_targets_launch<0>(st, copy, K, ldk, Q, ldq, cand, model_len, causal);
    dim3 grid(n_seq, cu_blocks(k_c, 8));
    if (st->bf16)
        ks_loss_rows_kernel<1><<<grid, 256, 0, sm>>>(st->row_loss, st->score, st->y, st->cand, st->cand_m,
                                                    st->seq_off, k_c);
    else
        ks_loss_rows_kernel<0><<<grid, 256, 0, sm>>>(st->row_loss, st->score, st->y, st->cand, st->cand_m,
                                                    st->seq_off, k_c);
    CUDA_LAUNCHED();
    ks_loss_finish_kernel<<<1, 256, 0, sm>>>(st->loss, (double *)st->work, st->row_loss, st->cand_m, n_seq, k_c);
    CUDA_LAUNCHED();
}

// A warp per candidate slot (s, a): rows[slot] (ks_rows_kernel), the row's
// d score = 0 + the loss backward's value (ks_loss_backward_kernel /
// ks_loss_backward_bf16_kernel: the sums over b in order; 0 for a sequence
// whose row lies partly outside it) into dscore and ds[slot], and the
// gathers of cuda_ks_mlp_backward: Tg, h1g, h2g = the row's T, h1, h2 (0 for
// an unused slot), dh1 = dh2 = 0.
template <int BF16>
__global__ static void ks_loss_backward_gather_kernel(float *dscore, float *ds, int *rows, float *Tg, float *h1g,
                                                      float *h2g, float *dh1, float *dh2, const float *T,
                                                      const float *h1, const float *h2, const float *score,
                                                      const double *y, const int *cand, const int *cand_m,
                                                      const int *seq_off, int n_seq, int k_c, int D, float scale) {
    long slot = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (slot >= (long)n_seq * k_c) return;
    int s = (int)(slot / k_c), a = (int)(slot % k_c);
    int o = seq_off[s], n = seq_off[s + 1] - o, m = cand_m[s];
    const int *I = cand + (size_t)s * k_c;
    bool on = a < ks_count_warp(I, k_c, lane) && I[a] < n;
    float v = 0.0f;
    if (on && m > 0) {  // then a < m
        const double *ys = y + (size_t)s * k_c;
        const float *x = score + o;
        float xa = x[I[a]];
        double ya = ys[a];
        if (BF16) {
            float inv_m2 = 1.0f / (float)(m * m);
            double r = 0.0, c = 0.0;
            for (int b0 = 0; b0 < m; b0 += 32) {
                int b = b0 + lane;
                float xb = b < m ? x[I[b]] : 0.0f;
                double yb = b < m ? ys[b] : 0.0;
                float tr = b < m ? hax_bce_dpair_bf16(xa, xb, ya, yb, scale, inv_m2) : 0.0f;
                float tc = b < m ? hax_bce_dpair_bf16(xb, xa, yb, ya, scale, inv_m2) : 0.0f;
                for (int j = 0; j < 32 && b0 + j < m; j++) {
                    r += __shfl_sync(0xffffffffu, tr, j);
                    c += __shfl_sync(0xffffffffu, tc, j);
                }
            }
            v = 0.0f + hax_bf16_round(hax_bf16_round((float)r) + hax_bf16_round((float)-c));
        } else {
            double c = 2.0 * (double)scale / ((double)m * m), g = 0.0;
            for (int b0 = 0; b0 < m; b0 += 32) {
                int b = b0 + lane;
                double term = b < m ? hax_sigmoid_d((double)xa - (double)x[I[b]]) - hax_rank_target(ya, ys[b]) : 0.0;
                for (int j = 0; j < 32 && b0 + j < m; j++) g += __shfl_sync(0xffffffffu, term, j);
            }
            v = 0.0f + (float)(c * g);
        }
    }
    int i = on ? o + I[a] : -1;
    if (lane == 0) {
        rows[slot] = i;
        ds[slot] = v;
        if (on) dscore[i] = v;
    }
    size_t src = (size_t)(on ? i : 0) * D, dst = (size_t)slot * D;
    for (int k = lane; k < D; k += 32) {
        Tg[dst + k] = on ? T[src + k] : 0.0f;
        h1g[dst + k] = on ? h1[src + k] : 0.0f;
        h2g[dst + k] = on ? h2[src + k] : 0.0f;
        dh1[dst + k] = 0.0f;
        dh2[dst + k] = 0.0f;
    }
}

extern "C" void cuda_ks_loss_backward_gather(cuda_ks_state *st, float scale, float *Tg, float *h1g, float *h2g,
                                             float *dh1, float *dh2, float *ds) {
    long slots = (long)st->n_seq * st->k_c;
    if (slots <= 0) return;
    int blocks = cu_blocks(slots * 32, 256), D = 2 * st->N;
    if (st->bf16)
        ks_loss_backward_gather_kernel<1><<<blocks, 256, 0, cu_stream()>>>(
            st->dscore, ds, st->rows, Tg, h1g, h2g, dh1, dh2, st->T, st->h1, st->h2, st->score, st->y, st->cand,
            st->cand_m, st->seq_off, st->n_seq, st->k_c, D, scale);
    else
        ks_loss_backward_gather_kernel<0><<<blocks, 256, 0, cu_stream()>>>(
            st->dscore, ds, st->rows, Tg, h1g, h2g, dh1, dh2, st->T, st->h1, st->h2, st->score, st->y, st->cand,
            st->cand_m, st->seq_off, st->n_seq, st->k_c, D, scale);
    CUDA_LAUNCHED();
}
