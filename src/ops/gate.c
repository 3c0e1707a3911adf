// gate.c: see gate.h (moved from src/engine/mixer_mamba*.c unchanged; the
// bf16 forms added for bf16-pure).
#include "src/ops/gate.h"

#include <stdlib.h>

#include "src/core/common.h"
#include "src/ops/basic.h"

// Rows per partial of the E-vector gradient (fixed, so the sum never depends
// on the thread count).
#define ROW_CHUNK 64

#define R hax_bf16_round

void mamba_gate_forward(float *o, const float *y, const float *xz, const float *attn, const float *Ev, int n_tok,
                        int E, int bf16) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n_tok; t++) {
        const float *z = xz + (size_t)t * 2 * E + E;
        for (int c = 0; c < E; c++) {
            size_t i = (size_t)t * E + c;
            float g = hax_silu(z[c]);
            if (bf16) {
                float v = R(y[i] * g);
                if (attn) v = R(v + R(R(attn[i] * Ev[c]) * R(g)));
                o[i] = v;
                continue;
            }
            o[i] = y[i] * g;
            if (attn) o[i] += attn[i] * Ev[c] * g;
        }
    }
}

// One element of the bf16 backward (gate.h): dy, dz, the dattn share and the
// dEv product (returned through *prod).
static inline void gate_bwd_bf16(float *dy, float *dz, float *dattn, float *prod, float d, float y, float z,
                                 const float *attn, float Ev) {
    float g = hax_silu(z), dg = hax_dsilu(z);
    *dy = d * g;
    // the scan kernel's dz reads its saved bf16 output y (mamba_ssm's
    // selective_scan backward: dz = dout · out · silu'(z), out stored bf16)
    float dz_scan = R(d * R(y) * dg);
    if (!attn) {
        *dz = dz_scan;
        return;
    }
    float t1 = R(*attn * Ev), dt1 = R(d * R(g)), dsz = R(d * t1);
    if (dattn) *dattn = R(*dattn + R(dt1 * Ev));
    *prod = R(dt1 * *attn);
    *dz = R(dz_scan + R(dsz * dg));
}

void mamba_gate_backward(float *dy, float *dxz, float *dattn, float *dEv, const float *do_, const float *y,
                         const float *xz, const float *attn, const float *Ev, int n_tok, int E, int bf16) {
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
                if (bf16) {
                    float prod = 0;
                    gate_bwd_bf16(dy + i, dz + c, dattn ? dattn + i : NULL, &prod, do_[i], y[i], z[c],
                                  attn ? attn + i : NULL, attn ? Ev[c] : 0.0f);
                    if (part) part[(size_t)ch * E + c] += prod;
                    continue;
                }
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

void add_attn_forward(float *y, const float *attn, const float *Ev, int n_tok, int E, int bf16) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n_tok; t++)
        for (int c = 0; c < E; c++) {
            size_t i = (size_t)t * E + c;
            if (bf16) y[i] = R(y[i] + R(attn[i] * Ev[c]));
            else y[i] += attn[i] * Ev[c];
        }
}

void add_attn_backward(float *dattn, float *dEv, const float *dy, const float *attn, const float *Ev, int n_tok,
                       int E, int bf16) {
    if (dattn) {
#pragma omp parallel for schedule(static)
        for (int t = 0; t < n_tok; t++)
            for (int c = 0; c < E; c++) {
                size_t i = (size_t)t * E + c;
                if (bf16) dattn[i] = R(dattn[i] + R(dy[i] * Ev[c]));
                else dattn[i] += dy[i] * Ev[c];
            }
    }
    if (dEv) {
        // Serial sum over positions: cheap, and independent of the thread count.
        double *acc = xcalloc((size_t)E, sizeof(double));
        for (int t = 0; t < n_tok; t++)
            for (int c = 0; c < E; c++) {
                size_t i = (size_t)t * E + c;
                acc[c] += bf16 ? (double)R(dy[i] * attn[i]) : (double)dy[i] * attn[i];
            }
        for (int c = 0; c < E; c++) dEv[c] += (float)acc[c];
        free(acc);
    }
}
