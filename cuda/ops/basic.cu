// cuda/ops/basic.cu: see cuda/ops/basic.h. Row ops use one warp per row (d or V spread
// over the lanes); sums over a row are in double like the CPU's.
#include "cuda/ops/basic.h"
#include "cuda/core/common.cuh"
#include "cuda/ops/linear.h"

#define ROW_CHUNK 64    // rows per dw partial: the CPU's value (src/ops/basic.c)
#define WARPS 8         // warps per block of the row kernels
#define ROW_REGS 8      // row values a lane keeps in registers in the forwards (rows up to 256 wide)

// ---------------------------------------------------------------- embedding

// A warp per token (WARPS a block), the lanes over the row.
__global__ static void embedding_fwd_kernel(float *out, const int32_t *ids, const float *W, int n_tok,
                                            int d, int V, int *flag) {
    int t = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (t >= n_tok) return;
    int id = ids[t];
    float *o = out + (size_t)t * d;
    if (id < 0 || id >= V) {
        if (lane == 0) atomicOr(flag, CU_ERR_TOKEN_ID);
        for (int j = lane; j < d; j += 32) o[j] = 0.0f;
        return;
    }
    for (int j = lane; j < d; j += 32) o[j] = W[(size_t)id * d + j];
}

// dW rows are summed per chunk of tokens into part[chunk][v][:], then the
// chunks are added in a fixed order (no atomics: the same bits every run).
// A block takes a chunk and 32 columns; each of its warps adds the dout rows of
// its tokens (a multiple of 32, at least 32: enough that there are at most
// EMB_MAX_CHUNKS chunks, which bounds the workspace), in token order, into its
// own shared rows acc[warp][v][:] (lane = column), and the warps' rows are added
// in warp order. The shared rows take V·128 bytes a warp: as many warps as fit
// the default 48 KB (V 100: 3); past V = 384 the per-id scan below is used.
#define EMB_SMEM 49152
#define EMB_MAX_CHUNKS 512
#define EMB_T 1024      // tokens per chunk of the per-id scan

static int emb_warps(int V) {
    int nw = EMB_SMEM / (V * 32 * (int)sizeof(float));
    return nw > 8 ? 8 : nw;
}

static int emb_per_warp(int n_tok, int V) {
    long per = ((long)n_tok + (long)EMB_MAX_CHUNKS * emb_warps(V) - 1) / ((long)EMB_MAX_CHUNKS * emb_warps(V));
    return per <= 32 ? 32 : (int)((per + 31) / 32 * 32);
}

static int emb_chunks(int n_tok, int V) {
    long per = emb_warps(V) >= 1 ? (long)emb_warps(V) * emb_per_warp(n_tok, V) : EMB_T;
    return (int)((n_tok + per - 1) / per);
}

__global__ static void embedding_part_kernel(float *part, const float *dout, const int32_t *ids, int n_tok,
                                             int d, int V, int per_warp) {
    extern __shared__ float acc[];  // [warps][V][32]
    int nw = blockDim.x / 32, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    int chunk = blockIdx.x, j = blockIdx.y * 32 + lane;
    float *mine = acc + (size_t)w * V * 32;
    for (int v = 0; v < V; v++) mine[v * 32 + lane] = 0.0f;
    long ta = ((long)chunk * nw + w) * per_warp, te = ta + per_warp < n_tok ? ta + per_warp : n_tok;
    for (long t0 = ta; t0 < te; t0 += 32) {  // 32 tokens at a time: lane l holds the id of token t0 + l
        int tb = (int)(t0 + 32 < te ? t0 + 32 : te);
        int my_id = t0 + lane < tb ? ids[t0 + lane] : -1;
        for (int t = (int)t0; t < tb; t += 8) {
            float val[8];
            int id[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {  // the loads first (in flight together), then the adds
                id[u] = __shfl_sync(0xffffffffu, my_id, (t - (int)t0 + u) & 31);
                val[u] = j < d && t + u < tb ? dout[(size_t)(t + u) * d + j] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < 8; u++)
                if (t + u < tb && id[u] >= 0 && id[u] < V) mine[id[u] * 32 + lane] += val[u];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < V * 32; i += blockDim.x) {
        int v = i / 32, col = blockIdx.y * 32 + i % 32;
        if (col >= d) continue;
        float s = 0.0f;
        for (int k = 0; k < nw; k++) s += acc[(size_t)k * V * 32 + i];
        part[((size_t)chunk * V + v) * d + col] = s;
    }
}

// The per-id scan (large V): block (v, chunk) adds the dout rows of the chunk's
// tokens with id v, in token order.
__global__ static void embedding_scan_kernel(float *part, const float *dout, const int32_t *ids, int n_tok,
                                             int d, int V) {
    __shared__ int32_t tile[EMB_T];
    int v = blockIdx.x, chunk = blockIdx.y, t0 = chunk * EMB_T;
    int nt = n_tok - t0 < EMB_T ? n_tok - t0 : EMB_T;
    for (int i = threadIdx.x; i < nt; i += blockDim.x) tile[i] = ids[t0 + i];
    __syncthreads();
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < nt; i++)
            if (tile[i] == v) acc += dout[(size_t)(t0 + i) * d + j];
        part[((size_t)chunk * V + v) * d + j] = acc;
    }
}

// dW[i] += Σ_ch part[ch][i] (double): 32 entries (x) × 32 lanes over the
// chunks (y, each in chunk order), the lanes combined in a fixed tree.
__global__ static void embedding_sum_kernel(float *dW, const float *part, int n_chunk, int n) {
    __shared__ double acc[32][33];
    int x = threadIdx.x, y = threadIdx.y, i = blockIdx.x * 32 + x;
    double a = 0.0;
    if (i < n)
#pragma unroll 4
        for (int ch = y; ch < n_chunk; ch += 32) a += part[(size_t)ch * n + i];
    acc[y][x] = a;
    __syncthreads();
    for (int h = 16; h > 0; h /= 2) {
        if (y < h) acc[y][x] += acc[y + h][x];
        __syncthreads();
    }
    if (y == 0 && i < n) dW[i] += (float)acc[0][x];
}

extern "C" void cuda_embedding_forward(float *out, const int32_t *ids, const float *W_emb, int n_tok,
                                       int d, int V) {
    if (n_tok == 0) return;
    embedding_fwd_kernel<<<cu_blocks(n_tok, WARPS), WARPS * 32, 0, cu_stream()>>>(out, ids, W_emb, n_tok, d, V,
                                                                                 cu_error_flag());
    CUDA_LAUNCHED();
}

// Sized for every batch up to n_tok positions: emb_chunks is not monotone in
// n_tok (it peaks at EMB_MAX_CHUNKS where the tokens per warp leave 32), so the
// bound is the chunks of 32 tokens a warp, at most EMB_MAX_CHUNKS.
extern "C" size_t cuda_embedding_workspace_bytes(int n_tok, int d, int V) {
    long chunks = emb_chunks(n_tok, V);
    if (emb_warps(V) >= 1) {
        long per = 32L * emb_warps(V), most = (n_tok + per - 1) / per;
        chunks = most < EMB_MAX_CHUNKS ? most : EMB_MAX_CHUNKS;
    }
    return (size_t)chunks * V * d * sizeof(float);
}

extern "C" void cuda_embedding_backward(float *dW_emb, const float *dout, const int32_t *ids, int n_tok,
                                        int d, int V, void *work) {
    if (n_tok == 0 || V <= 0 || d <= 0) return;
    int n_chunk = emb_chunks(n_tok, V), nw = emb_warps(V);
    if (nw >= 1) {
        dim3 grid(n_chunk, cu_blocks(d, 32));
        embedding_part_kernel<<<grid, nw * 32, (size_t)nw * V * 32 * sizeof(float), cu_stream()>>>(
            (float *)work, dout, ids, n_tok, d, V, emb_per_warp(n_tok, V));
    } else {
        int threads = d < 128 ? (d + 31) / 32 * 32 : 128;
        embedding_scan_kernel<<<dim3(V, n_chunk), threads, 0, cu_stream()>>>((float *)work, dout, ids, n_tok, d, V);
    }
    CUDA_LAUNCHED();
    embedding_sum_kernel<<<cu_blocks((long)V * d, 32), dim3(32, 32), 0, cu_stream()>>>(dW_emb, (const float *)work,
                                                                                       n_chunk, V * d);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- RMSNorm

// Forward of one row per warp; with residual != NULL, s = x + residual first
// (the fused add), and the norm is of s.
__global__ static void rmsnorm_fwd_kernel(float *out, float *s, float *rstd, const float *x,
                                          const float *residual, const float *w, int n, int d, float eps) {
    int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    size_t o = (size_t)row * d;
    float v[ROW_REGS];  // this lane's first ROW_REGS values (j = lane + 32m), the rest reloaded
    double ss = 0.0;
#pragma unroll
    for (int m = 0; m < ROW_REGS; m++) {
        int j = lane + 32 * m;
        v[m] = j < d ? x[o + j] : 0.0f;
        if (residual && j < d) v[m] += residual[o + j];
    }
#pragma unroll
    for (int m = 0; m < ROW_REGS; m++) {
        int j = lane + 32 * m;
        if (residual && j < d) s[o + j] = v[m];
        ss += (double)v[m] * v[m];  // 0 past d
    }
    for (int j = lane + 32 * ROW_REGS; j < d; j += 32) {
        float u = x[o + j];
        if (residual) {
            u += residual[o + j];
            s[o + j] = u;
        }
        ss += (double)u * u;
    }
    ss = cu_warp_sum(ss);
    float r = (float)(1.0 / sqrt(ss / d + eps));
    if (rstd && lane == 0) rstd[row] = r;
#pragma unroll
    for (int m = 0; m < ROW_REGS; m++) {
        int j = lane + 32 * m;
        if (j < d) out[o + j] = v[m] * r * w[j];
    }
    const float *src = residual ? s : x;
    for (int j = lane + 32 * ROW_REGS; j < d; j += 32) out[o + j] = src[o + j] * r * w[j];
}

// The fused backwards (RMSNorm, gated RMSNorm) take BWD_ROWS rows a block,
// BWD_ROWS / WARPS consecutive rows a warp, and with part != NULL also write the
// block's dw partial part[block, :] (double; each warp's rows in order into its
// shared row, then the warps' rows in warp order), so dout and x are read once.
// Rows wider than NORM_PMAX (WARPS·d doubles of shared memory) take the
// separate partial kernels below.
#define BWD_ROWS 32
#define NORM_PMAX 768

// The block's partial from the warps' shared rows acc[WARPS][d].
__device__ static void bwd_part_store(double *part, const double *acc, int d) {
    __syncthreads();
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        double s = 0.0;
        for (int k = 0; k < WARPS; k++) s += acc[(size_t)k * d + j];
        part[(size_t)blockIdx.x * d + j] = s;
    }
}

// g = r·(dy·w − x·r²·mean(dy·w·x)) (+ ds); dx += g, dres += g (either NULL; they
// may be one buffer: this lane adds twice); part: Σ_rows dy·x·r.
__global__ static void rmsnorm_bwd_kernel(double *part, float *dx, float *dres, const float *dout, const float *ds,
                                          const float *x, const float *rstd, const float *w, int n, int d) {
    extern __shared__ double pacc[];  // [WARPS][d] with part
    int wp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = blockIdx.x * BWD_ROWS + wp * (BWD_ROWS / WARPS);
    double *mine = pacc + (size_t)wp * d;
    if (part)
        for (int j = lane; j < d; j += 32) mine[j] = 0.0;
    for (int row = r0; row < r0 + BWD_ROWS / WARPS && row < n; row++) {
        size_t o = (size_t)row * d;
        float r = rstd[row];
        double dot = 0.0;
        for (int j = lane; j < d; j += 32) dot += (double)dout[o + j] * w[j] * x[o + j];
        dot = cu_warp_sum(dot);
        float c = (float)(dot / d) * r * r;
        for (int j = lane; j < d; j += 32) {
            float dy = dout[o + j], xv = x[o + j];
            float g = r * (dy * w[j] - xv * c);
            if (part) mine[j] += (double)dy * xv * r;
            if (ds) g += ds[o + j];
            if (dx) dx[o + j] += g;
            if (dres) dres[o + j] += g;
        }
    }
    if (part) bwd_part_store(part, pacc, d);
}

// part[ch, j] = Σ_{rows i of chunk ch} dy[i, j]·x[i, j]·r[i] (double, rows in order).
__global__ static void rmsnorm_dw_part_kernel(double *part, const float *dout, const float *x,
                                              const float *rstd, int n, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x, ch = blockIdx.y;
    if (j >= d) return;
    double acc = 0.0;
    int i1 = (ch + 1) * ROW_CHUNK < n ? (ch + 1) * ROW_CHUNK : n;
    for (int i = ch * ROW_CHUNK; i < i1; i++) acc += (double)dout[(size_t)i * d + j] * x[(size_t)i * d + j] * rstd[i];
    part[(size_t)ch * d + j] = acc;
}

// The dw partials: per BWD_ROWS rows (fused) or per ROW_CHUNK rows (wide rows).
extern "C" size_t cuda_norm_workspace_bytes(int n, int d) {
    return (size_t)((n + BWD_ROWS - 1) / BWD_ROWS) * d * sizeof(double);
}

static void norm_dw(float *dw, const float *dout, const float *x, const float *rstd, int n, int d, void *work) {
    int n_chunk = (n + ROW_CHUNK - 1) / ROW_CHUNK;
    dim3 grid(cu_blocks(d, 64), n_chunk);
    rmsnorm_dw_part_kernel<<<grid, 64, 0, cu_stream()>>>((double *)work, dout, x, rstd, n, d);
    CUDA_LAUNCHED();
    cu_add_chunk_partials(dw, (const double *)work, n_chunk, d);
}

static void norm_backward(float *dx, float *dres, float *dw, const float *dout, const float *ds, const float *x,
                          const float *rstd, const float *w, int n, int d, void *work) {
    int fused = dw && d <= NORM_PMAX, n_blk = cu_blocks(n, BWD_ROWS);
    if (dx || dres || fused) {
        size_t smem = fused ? (size_t)WARPS * d * sizeof(double) : 0;
        rmsnorm_bwd_kernel<<<n_blk, WARPS * 32, smem, cu_stream()>>>(fused ? (double *)work : NULL, dx, dres, dout,
                                                                     ds, x, rstd, w, n, d);
        CUDA_LAUNCHED();
    }
    if (fused) cu_add_chunk_partials(dw, (const double *)work, n_blk, d);
    else if (dw) norm_dw(dw, dout, x, rstd, n, d, work);
}

extern "C" void cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int n, int d,
                                     float eps) {
    if (n == 0) return;
    rmsnorm_fwd_kernel<<<cu_blocks(n, WARPS), WARPS * 32, 0, cu_stream()>>>(out, NULL, rstd, x, NULL, w, n, d, eps);
    CUDA_LAUNCHED();
}

extern "C" void cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                                      const float *rstd, const float *w, int n, int d, void *work) {
    if (n == 0) return;
    norm_backward(dx, NULL, dw, dout, NULL, x, rstd, w, n, d, work);
}

extern "C" void cuda_add_rmsnorm_forward(float *out, float *s, float *rstd, const float *x,
                                         const float *residual, const float *w, int n, int d, float eps) {
    if (n == 0) return;
    rmsnorm_fwd_kernel<<<cu_blocks(n, WARPS), WARPS * 32, 0, cu_stream()>>>(out, s, rstd, x, residual, w, n, d, eps);
    CUDA_LAUNCHED();
}

extern "C" void cuda_add_rmsnorm_backward(float *dx, float *dresidual, float *dw, const float *dout,
                                          const float *ds, const float *s, const float *rstd,
                                          const float *w, int n, int d, void *work) {
    if (n == 0) return;
    norm_backward(dx, dresidual, dw, dout, ds, s, rstd, w, n, d, work);
}

// ---------------------------------------------------------------- logits

extern "C" void cuda_logits_forward(float *logits, const float *h, const float *W_emb, int n, int d, int V) {
    cuda_linear_forward(logits, V, h, d, W_emb, NULL, n, d, V);
}

extern "C" void cuda_logits_backward(float *dh, float *dW_emb, const float *dlogits, const float *h,
                                     const float *W_emb, int n, int d, int V) {
    cuda_linear_backward(dh, d, dW_emb, NULL, dlogits, V, h, d, W_emb, n, d, V);
}

// ---------------------------------------------------------------- cross-entropy

// log Σ exp(l) (max taken out, in double) of one row, and its first argmax;
// every lane of the warp gets both.
__device__ static double row_lse(const float *l, int V, int lane, int *argmax) {
    float best = -INFINITY;
    int am = 0x7fffffff;
    for (int v = lane; v < V; v += 32)
        if (l[v] > best || am == 0x7fffffff) best = l[v], am = v;
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oa = __shfl_xor_sync(0xffffffffu, am, o);
        if (ob > best || (ob == best && oa < am)) best = ob, am = oa;
    }
    double sum = 0.0;
    for (int v = lane; v < V; v += 32) sum += exp((double)l[v] - (double)best);
    sum = cu_warp_sum(sum);
    *argmax = am;
    return (double)best + log(sum);
}

// Per position: tok_loss[t] = lse − l[label], tok_ok[t] = argmax == label
// (−1 at unscored positions).
__global__ static void ce_rows_kernel(double *tok_loss, int *tok_ok, const float *logits,
                                      const int32_t *labels, const uint8_t *mask, int n_tok, int V,
                                      int *flag) {
    int t = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (t >= n_tok) return;
    if (mask && !mask[t]) {
        if (lane == 0) tok_ok[t] = -1;
        return;
    }
    int lab = labels[t];
    if (lab < 0 || lab >= V) {
        if (lane == 0) atomicOr(flag, CU_ERR_LABEL), tok_ok[t] = -1;
        return;
    }
    const float *l = logits + (size_t)t * V;
    int am;
    double lse = row_lse(l, V, lane, &am);
    if (lane == 0) {
        tok_loss[t] = lse - (double)l[lab];
        tok_ok[t] = am == lab;
    }
}

// Per sequence, one block of CE_SEQ_THREADS: thread i takes positions i, i +
// CE_SEQ_THREADS, ...; the threads' sums meet in a fixed order (a butterfly
// per warp, then the warps in order): deterministic.
#define CE_SEQ_THREADS 256

__global__ static void ce_seq_kernel(double *seq_loss, int *correct, int *count, const double *tok_loss,
                                     const int *tok_ok, const int *seq_off, int n_seq) {
    __shared__ double w_loss[CE_SEQ_THREADS / 32];
    __shared__ int w_ok[CE_SEQ_THREADS / 32], w_scored[CE_SEQ_THREADS / 32];
    int s = blockIdx.x, lane = threadIdx.x % 32, wp = threadIdx.x / 32;
    if (s >= n_seq) return;
    double acc = 0.0;
    int n_ok = 0, n_scored = 0;
    for (int t = seq_off[s] + threadIdx.x; t < seq_off[s + 1]; t += CE_SEQ_THREADS) {
        if (tok_ok[t] < 0) continue;
        acc += tok_loss[t];
        n_ok += tok_ok[t];
        n_scored++;
    }
    acc = cu_warp_sum(acc);
    for (int o = 16; o > 0; o >>= 1) {
        n_ok += __shfl_xor_sync(0xffffffffu, n_ok, o);
        n_scored += __shfl_xor_sync(0xffffffffu, n_scored, o);
    }
    if (lane == 0) w_loss[wp] = acc, w_ok[wp] = n_ok, w_scored[wp] = n_scored;
    __syncthreads();
    if (threadIdx.x) return;
    acc = 0.0, n_ok = 0, n_scored = 0;
    for (int k = 0; k < CE_SEQ_THREADS / 32; k++) acc += w_loss[k], n_ok += w_ok[k], n_scored += w_scored[k];
    seq_loss[s] = acc;
    if (correct) correct[s] = n_ok;
    if (count) count[s] = n_scored;
}

// One warp: lane l adds the sequences l, l+32, ... in order, then a butterfly.
__global__ static void ce_total_kernel(double *loss, const double *seq_loss, int n_seq) {
    double total = 0.0;
    for (int s = threadIdx.x; s < n_seq; s += 32) total += seq_loss[s];
    total = cu_warp_sum(total);
    if (threadIdx.x == 0) *loss = total;
}

extern "C" size_t cuda_ce_workspace_bytes(int n_tok, int n_seq) {
    return (size_t)n_tok * (sizeof(double) + sizeof(int)) + (size_t)n_seq * sizeof(double) + 16;
}

extern "C" void cuda_ce_forward(double *loss, int *correct, int *count, const float *logits,
                                const int32_t *labels, const uint8_t *mask, const int *seq_off, int n_seq,
                                int n_tok, int V, void *work) {
    double *tok_loss = (double *)work, *seq_loss = tok_loss + n_tok;
    int *tok_ok = (int *)(seq_loss + n_seq);
    if (n_tok > 0) {
        ce_rows_kernel<<<cu_blocks(n_tok, WARPS), WARPS * 32, 0, cu_stream()>>>(tok_loss, tok_ok, logits, labels,
                                                                               mask, n_tok, V, cu_error_flag());
        CUDA_LAUNCHED();
    }
    if (n_seq > 0) {
        ce_seq_kernel<<<n_seq, CE_SEQ_THREADS, 0, cu_stream()>>>(seq_loss, correct, count, tok_loss, tok_ok, seq_off,
                                                                 n_seq);
        CUDA_LAUNCHED();
    }
    ce_total_kernel<<<1, 32, 0, cu_stream()>>>(loss, seq_loss, n_seq);
    CUDA_LAUNCHED();
}

// One warp per row. fp32: (softmax − onehot) · scale. bf16-pure
// (ce_backward_bf16, src/ops/basic.c): the same max, the same double sum
// rounded to float once, expf and one FMA at the label (the reference's
// log_softmax backward, contracted by nvcc). scale_dev, when not NULL,
// replaces scale (a graph step's normaliser).
__global__ static void ce_bwd_kernel(float *dl, const float *logits, const int32_t *labels,
                                     const uint8_t *mask, int n_tok, int V, float scale, const float *scale_dev,
                                     int bf16, int *flag) {
    int t = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (t >= n_tok) return;
    float *d = dl + (size_t)t * V;
    int lab = labels[t];
    if ((mask && !mask[t]) || lab < 0 || lab >= V) {
        if (lane == 0 && !(mask && !mask[t])) atomicOr(flag, CU_ERR_LABEL);
        for (int v = lane; v < V; v += 32) d[v] = 0.0f;
        return;
    }
    if (scale_dev) scale = *scale_dev;
    const float *l = logits + (size_t)t * V;
    if (!bf16) {
        int am;
        double lse = row_lse(l, V, lane, &am);
        for (int v = lane; v < V; v += 32) {
            float g = (float)exp((double)l[v] - lse) * scale;
            d[v] = v == lab ? g - scale : g;
        }
        return;
    }
    float mx = -INFINITY;
    for (int v = lane; v < V; v += 32) mx = fmaxf(mx, l[v]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    double sum = 0.0;
    for (int v = lane; v < V; v += 32) sum += exp((double)(l[v] - mx));
    sum = cu_warp_sum(sum);
    float log_sum = (float)log(sum);
    for (int v = lane; v < V; v += 32) {
        float p = expf(hax_bf16_round(__fsub_rn(l[v] - mx, log_sum)));
        d[v] = hax_bf16_round(v == lab ? __fmaf_rn(p, scale, -scale) : __fmul_rn(p, scale));
    }
}

static void ce_bwd_launch(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                          int n_tok, int V, float scale, const float *scale_dev, int bf16) {
    if (n_tok == 0) return;
    ce_bwd_kernel<<<cu_blocks(n_tok, WARPS), WARPS * 32, 0, cu_stream()>>>(dlogits, logits, labels, mask, n_tok, V,
                                                                          scale, scale_dev, bf16, cu_error_flag());
    CUDA_LAUNCHED();
}

extern "C" void cuda_ce_backward(float *dlogits, const float *logits, const int32_t *labels,
                                 const uint8_t *mask, int n_tok, int V, float scale) {
    ce_bwd_launch(dlogits, logits, labels, mask, n_tok, V, scale, NULL, 0);
}

extern "C" void cuda_ce_backward_bf16(float *dlogits, const float *logits, const int32_t *labels,
                                      const uint8_t *mask, int n_tok, int V, float scale, const float *scale_dev) {
    ce_bwd_launch(dlogits, logits, labels, mask, n_tok, V, scale, scale_dev, 1);
}

// ---------------------------------------------------------------- gated RMSNorm

__device__ __forceinline__ float gated_v(float y, float z) { return y * (z * hax_sigmoid(z)); }

__global__ static void gated_fwd_kernel(float *out, int ld_out, float *rstd, const float *y, int ld_y,
                                        const float *z, int ld_z, const float *w, int n, int E, float eps) {
    int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    const float *yt = y + (size_t)row * ld_y, *zt = z + (size_t)row * ld_z;
    float *ot = out + (size_t)row * ld_out;
    float v[ROW_REGS];  // as rmsnorm_fwd_kernel
    double ss = 0.0;
#pragma unroll
    for (int m = 0; m < ROW_REGS; m++) {
        int c = lane + 32 * m;
        v[m] = c < E ? gated_v(yt[c], zt[c]) : 0.0f;
        ss += (double)v[m] * v[m];
    }
    for (int c = lane + 32 * ROW_REGS; c < E; c += 32) {
        float u = gated_v(yt[c], zt[c]);
        ss += (double)u * u;
    }
    ss = cu_warp_sum(ss);
    float r = (float)(1.0 / sqrt(ss / E + (double)eps));
    if (rstd && lane == 0) rstd[row] = r;
#pragma unroll
    for (int m = 0; m < ROW_REGS; m++) {
        int c = lane + 32 * m;
        if (c < E) ot[c] = v[m] * r * w[c];
    }
    for (int c = lane + 32 * ROW_REGS; c < E; c += 32) ot[c] = gated_v(yt[c], zt[c]) * r * w[c];
}

// dv = r·w·do − v·r³/E·Σ_j w_j do_j v_j; dy += dv·silu(z); dz += dv·y·silu'(z);
// part: Σ_rows do·v·r (BWD_ROWS rows a block, as rmsnorm_bwd_kernel).
__global__ static void gated_bwd_kernel(double *part, float *dy, int ld_dy, float *dz, int ld_dz, const float *dout,
                                        int ld_dout, const float *rstd, const float *y, int ld_y,
                                        const float *z, int ld_z, const float *w, int n, int E) {
    extern __shared__ double pacc[];  // [WARPS][E] with part
    int wp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = blockIdx.x * BWD_ROWS + wp * (BWD_ROWS / WARPS);
    double *mine = pacc + (size_t)wp * E;
    if (part)
        for (int c = lane; c < E; c += 32) mine[c] = 0.0;
    for (int row = r0; row < r0 + BWD_ROWS / WARPS && row < n; row++) {
        const float *yt = y + (size_t)row * ld_y, *zt = z + (size_t)row * ld_z, *dot = dout + (size_t)row * ld_dout;
        float r = rstd[row];
        double s = 0.0;
        for (int c = lane; c < E; c += 32) s += (double)w[c] * dot[c] * gated_v(yt[c], zt[c]);
        s = cu_warp_sum(s);
        float k = (float)(s * (double)r * r * r / E);
        for (int c = lane; c < E; c += 32) {
            float zc = zt[c], yc = yt[c], doc = dot[c];
            float sg = hax_sigmoid(zc), sl = zc * sg, v = yc * sl;
            float dv = r * w[c] * doc - v * k;
            if (part) mine[c] += (double)doc * v * r;
            if (dy) dy[(size_t)row * ld_dy + c] += dv * sl;
            if (dz) dz[(size_t)row * ld_dz + c] += dv * yc * sg * (1.0f + zc * (1.0f - sg));
        }
    }
    if (part) bwd_part_store(part, pacc, E);
}

// part[ch, c] = Σ_{rows of chunk ch} do·v·r (double, rows in order).
__global__ static void gated_dw_part_kernel(double *part, const float *dout, int ld_dout, const float *rstd,
                                            const float *y, int ld_y, const float *z, int ld_z, int n, int E) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, ch = blockIdx.y;
    if (c >= E) return;
    double acc = 0.0;
    int i1 = (ch + 1) * ROW_CHUNK < n ? (ch + 1) * ROW_CHUNK : n;
    for (int i = ch * ROW_CHUNK; i < i1; i++)
        acc += (double)dout[(size_t)i * ld_dout + c] * gated_v(y[(size_t)i * ld_y + c], z[(size_t)i * ld_z + c]) * rstd[i];
    part[(size_t)ch * E + c] = acc;
}

extern "C" void cuda_gated_norm_forward(float *out, int ld_out, float *rstd, const float *y, int ld_y,
                                        const float *z, int ld_z, const float *w, int n, int E, float eps) {
    if (n == 0) return;
    gated_fwd_kernel<<<cu_blocks(n, WARPS), WARPS * 32, 0, cu_stream()>>>(out, ld_out, rstd, y, ld_y, z, ld_z, w,
                                                                         n, E, eps);
    CUDA_LAUNCHED();
}

extern "C" void cuda_gated_norm_backward(float *dy, int ld_dy, float *dz, int ld_dz, float *dw, const float *dout,
                                         int ld_dout, const float *rstd, const float *y, int ld_y,
                                         const float *z, int ld_z, const float *w, int n, int E, void *work) {
    if (n == 0) return;
    int fused = dw && E <= NORM_PMAX, n_blk = cu_blocks(n, BWD_ROWS);
    if (dy || dz || fused) {
        size_t smem = fused ? (size_t)WARPS * E * sizeof(double) : 0;
        gated_bwd_kernel<<<n_blk, WARPS * 32, smem, cu_stream()>>>(fused ? (double *)work : NULL, dy, ld_dy, dz, ld_dz,
                                                                   dout, ld_dout, rstd, y, ld_y, z, ld_z, w, n, E);
        CUDA_LAUNCHED();
    }
    if (fused) {
        cu_add_chunk_partials(dw, (const double *)work, n_blk, E);
    } else if (dw) {
        int n_chunk = (n + ROW_CHUNK - 1) / ROW_CHUNK;
        dim3 grid(cu_blocks(E, 64), n_chunk);
        gated_dw_part_kernel<<<grid, 64, 0, cu_stream()>>>((double *)work, dout, ld_dout, rstd, y, ld_y, z, ld_z, n, E);
        CUDA_LAUNCHED();
        cu_add_chunk_partials(dw, (const double *)work, n_chunk, E);
    }
}
