// gate.c: see gate.h (moved from src/engine/mixer_mamba*.c unchanged).
#include "src/ops/gate.h"

#include <stdlib.h>

#include "src/core/common.h"
#include "src/ops/basic.h"

// Rows per partial of the E-vector gradient (fixed, so the sum never depends
// on the thread count).
#define ROW_CHUNK 64

void mamba_gate_forward(float *o, const float *y, const float *xz, const float *attn, const float *Ev, int n_tok,
                        int E) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n_tok; t++) {
        const float *z = xz + (size_t)t * 2 * E + E;
        for (int c = 0; c < E; c++) {
            size_t i = (size_t)t * E + c;
            float g = hax_silu(z[c]);
            o[i] = y[i] * g;
            if (attn) o[i] += attn[i] * Ev[c] * g;
        }
    }
}

void mamba_gate_backward(float *dy, float *dxz, float *dattn, float *dEv, const float *do_, const float *y,
                         const float *xz, const float *attn, const float *Ev, int n_tok, int E) {
    int n_chunk = (n_tok + ROW_CHUNK - 1) / ROW_CHUNK;
    double *part = attn && dEv ? xcalloc((size_t)n_chunk * E, sizeof(double)) : NULL;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < n_chunk; ch++) {
        int t1 = (ch + 1) * ROW_CHUNK < n_tok ? (ch + 1) * ROW_CHUNK : n_tok;
        for (int t = ch * ROW_CHUNK; t < t1; t++) {
            const float *z = xz + (size_t)t * 2 * E + E;
            float *dz = dxz + (size_t)t * 2 * E + E;
            for (int c = 0; c < E; c++) {
                size_t i = (size_t)t * E + c;
                float g = hax_silu(z[c]), dg = hax_dsilu(z[c]);
                float v = y[i];
                if (attn) {
                    v += attn[i] * Ev[c];
                    if (dattn) dattn[i] += do_[i] * Ev[c] * g;
                    if (part) part[(size_t)ch * E + c] += (double)do_[i] * attn[i] * g;
                }
                dy[i] = do_[i] * g;
                dz[c] = do_[i] * v * dg;
            }
        }
    }
    if (part) add_partials(dEv, part, n_chunk, E);
    free(part);
}

void add_attn_forward(float *y, const float *attn, const float *Ev, int n_tok, int E) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n_tok; t++)
        for (int c = 0; c < E; c++) y[(size_t)t * E + c] += attn[(size_t)t * E + c] * Ev[c];
}

void add_attn_backward(float *dattn, float *dEv, const float *dy, const float *attn, const float *Ev, int n_tok,
                       int E) {
    if (dattn) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < n_tok; t++)
            for (int c = 0; c < E; c++) dattn[(size_t)t * E + c] += dy[(size_t)t * E + c] * Ev[c];
    }
    if (dEv) {
        // Serial sum over positions: cheap, and independent of the thread count.
        double *acc = xcalloc((size_t)E, sizeof(double));
        for (int t = 0; t < n_tok; t++)
            for (int c = 0; c < E; c++) acc[c] += (double)dy[(size_t)t * E + c] * attn[(size_t)t * E + c];
        for (int c = 0; c < E; c++) dEv[c] += (float)acc[c];
        free(acc);
    }
}
