// check_util.c: see check_util.h.
#include "src/prog/check_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/ops/adamw.h"
#include "src/sparse/sparse.h"

static int is_float_dtype(st_dtype dt) { return dt == ST_F64 || dt == ST_F32 || dt == ST_F16 || dt == ST_BF16; }

const st_tensor *golden_tensor(const st_file *f, const char *name, int integer, int ndim, int64_t s0, int64_t s1,
                               int64_t s2) {
    if (!st_find(f, name)) return NULL;
    int64_t shape[3] = {s0, s1, s2};
    char err[512];
    const st_tensor *t = st_find_shaped(f, name, ndim, shape, err, sizeof err);
    if (!t) hax_die("%s", err);
    if (integer == is_float_dtype(t->dtype) || t->dtype == ST_BOOL)
        hax_die("%s: tensor %s: expected %s dtype, found %s", f->path, name,
                integer ? "an integer (I64, I32, I16, ...)" : "a floating-point (F32, F64, ...)",
                st_dtype_name(t->dtype));
    return t;
}

float *golden_f32(const st_file *f, const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2) {
    const st_tensor *t = golden_tensor(f, name, 0, ndim, s0, s1, s2);
    if (!t) return NULL;
    size_t n = st_numel(t);
    float *out = xmalloc(sizeof(float) * (n ? n : 1));
    st_tensor_to_f32(t, out);
    return out;
}

int64_t *golden_i64(const st_file *f, const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2) {
    const st_tensor *t = golden_tensor(f, name, 1, ndim, s0, s1, s2);
    if (!t) return NULL;
    size_t n = st_numel(t);
    int64_t *out = xmalloc(sizeof(int64_t) * (n ? n : 1));
    st_tensor_to_i64(t, out);
    return out;
}

double parse_number(const char *flag, const char *s, double lo, double hi, const char *range) {
    char *end;
    double v = s ? strtod(s, &end) : 0;
    if (!s || end == s || *end || !(v > lo) || !(v < hi)) {
        fprintf(stderr, "hax: hax-check: %s: expected a number %s, found '%s'\n", flag, range, s ? s : "");
        exit(HAX_EXIT_USAGE);
    }
    return v;
}

// ---------------------------------------------------------------- LSH bucket flips

// Golden buckets of layer l packed as int32 [n_tok]; NULL when absent.
int32_t *golden_buckets(const st_file *f, const hax_case *c, const char *name, int n_tok) {
    int64_t *g = golden_i64(f, name, 2, c->B, c->L, 0);
    if (!g) return NULL;
    int32_t *p = xmalloc(sizeof(int32_t) * n_tok);
    size_t k = 0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->len[b]; t++) p[k++] = (int32_t)g[(size_t)b * c->L + t];
    free(g);
    return p;
}

// Whether our bucket `ours` of a row differs from the golden one only by sign
// bits (sign_bin) or argmax choices whose golden projection is within
// eps_rel of the row norm of a tie (golden README: a float32 flip, not an
// error).
static int flip_tolerated(const float *proj, int h, int32_t gold, int32_t ours, int argmax, double eps_rel) {
    double norm = 0;
    for (int i = 0; i < h; i++) norm += (double)proj[i] * proj[i];
    norm = sqrt(norm);
    double eps = eps_rel * (norm > 0 ? norm : 1);
    if (argmax) return ours >= 0 && ours < h && fabs((double)proj[gold] - proj[ours]) <= eps;
    for (int i = 0; i < h; i++)
        if (((gold ^ ours) >> i & 1) && fabs(proj[i]) > eps) return 0;
    return 1;
}

// Checks one layer's buckets (q or k) against the golden ones: returns the
// number of mismatching rows, and in *n_tol how many of them are tolerated.
int bucket_mismatch(const st_file *f, const hax_case *c, const int32_t *ours, const int32_t *gold, const char *proj_name,
                     int h, int argmax, int n_tok, double eps_rel, int *n_tol, char *where, size_t wlen) {
    float *proj = golden_f32(f, proj_name, 3, c->B, c->L, h);
    float *pp = NULL;
    if (proj) {
        pp = xmalloc(sizeof(float) * (size_t)n_tok * h);
        case_pack_rows_f32(c, proj, h, pp);
    }
    int bad = 0;
    *n_tol = 0;
    for (int t = 0; t < n_tok; t++) {
        if (ours[t] == gold[t]) continue;
        bad++;
        if (isinf(eps_rel) || (pp && flip_tolerated(pp + (size_t)t * h, h, gold[t], ours[t], argmax, eps_rel))) {
            (*n_tol)++;
            if (where[0] == 0) snprintf(where, wlen, "packed row %d: bucket %d vs golden %d", t, ours[t], gold[t]);
        }
    }
    free(proj);
    free(pp);
    return bad;
}

// ---------------------------------------------------------------- bf16 ulps

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

// Monotone in f, -0 and +0 both 0: bf16 values are multiples of 2^16 apart.
static int64_t ordered(float f) {
    uint32_t u = bits(f);
    return (u >> 31) ? -(int64_t)(u & 0x7fffffffu) : (int64_t)u;
}

void bf16_stats_of(bf16_stats *s, const float *ours, const float *gold, size_t n, long unit) {
    memset(s, 0, sizeof *s);
    s->unit = unit;
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)ours[i] - gold[i];
        num += d * d;
        den += (double)gold[i] * gold[i];
        s->n++;
        s->not_bf16 += (bits(ours[i]) & 0xffffu) != 0 && ours[i] == ours[i];
        if (bits(ours[i]) == bits(gold[i]) || ours[i] == gold[i]) {  // ±0 equal
            s->equal++;
            continue;
        }
        int64_t dd = ordered(ours[i]) - ordered(gold[i]);
        // NaN against a number, or values off the bf16 grid: at least 2 ulps
        long u = ours[i] != ours[i] || gold[i] != gold[i] ? 1L << 30 : (long)((dd < 0 ? -dd : dd) >> 16);
        if (u < 1) u = 1;
        if (u <= unit) s->one++;
        else s->beyond++;
        if (u > s->max_ulps) s->max_ulps = u;
    }
    s->rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (isnan(s->rel)) s->rel = INFINITY;
}

int bf16_verdict(const bf16_stats *s, const bf16_stats *noise, double factor, double *rel_bound, char *note,
                 size_t note_len) {
    double rb = s->unit * BF16_REL_FLOOR;  // s->unit ulps (check_util.h)
    long bb = (long)ceil(BF16_BEYOND_FRAC * s->n);
    if (noise) {
        rb = fmax(rb, factor * noise->rel);
        if (factor * noise->beyond > bb) bb = (long)ceil(factor * noise->beyond);
    }
    *rel_bound = rb;
    int ok = s->rel <= rb && s->beyond <= bb && s->not_bf16 == 0;
    const char *one = s->unit > 1 ? "1..2 ulps" : "1 ulp";
    const char *beyond = s->unit > 1 ? ">2 ulps" : ">1 ulp";
    int k = snprintf(note, note_len, "equal %ld/%ld, %s %ld, %s %ld (max %ld) bound %ld", s->equal, s->n, one,
                     s->one, beyond, s->beyond, s->max_ulps, bb);
    if (noise && k > 0 && (size_t)k < note_len)
        k += snprintf(note + k, note_len - k, "; reference paths: rel %.2e, %s %ld (max %ld)", noise->rel, beyond,
                      noise->beyond, noise->max_ulps);
    if (s->not_bf16 && k > 0 && (size_t)k < note_len)
        snprintf(note + k, note_len - k, "; %ld values not bf16", s->not_bf16);
    return ok;
}

long bf16_round_count(float *x, size_t n) {
    long changed = 0;
    for (size_t i = 0; i < n; i++) {
        float r = hax_bf16_round(x[i]);
        changed += bits(r) != bits(x[i]);
        x[i] = r;
    }
    return changed;
}

void block_input_name(char *buf, size_t len, int layer, int n_layers) {
    if (layer < n_layers) snprintf(buf, len, "dbg.layers.%d.hidden_in", layer);
    else snprintf(buf, len, "dbg.norm_f.hidden_in");
}

// ---------------------------------------------------------------- --emit

// Packed rows [n_tok, C] back to [B, L, C], zeros at padding positions.
static float *unpack_rows(const hax_case *c, const float *packed, int C) {
    float *out = xcalloc((size_t)c->B * c->L * C, sizeof(float));
    size_t k = 0;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->len[b]; t++, k++)
            memcpy(out + ((size_t)b * c->L + t) * C, packed + k * C, sizeof(float) * C);
    return out;
}

typedef struct {
    void *p[4096];
    int n;
} owned;  // buffers that must outlive st_writer_write

static void *keep(owned *o, void *p) {
    if (o->n == (int)(sizeof o->p / sizeof o->p[0])) hax_die("hax-check --emit: more than %d tensors", o->n);
    o->p[o->n++] = p;
    return p;
}

// "adamw.exp_avg.NAME" etc.: names are built into kept buffers.
static const char *name2(owned *o, const char *prefix, const char *name) {
    size_t n = strlen(prefix) + strlen(name) + 1;
    char *s = keep(o, xmalloc(n));
    snprintf(s, n, "%s%s", prefix, name);
    return s;
}

static void put_scalar(st_writer *w, owned *o, const char *name, double v) {
    double *p = keep(o, xmalloc(sizeof(double)));
    *p = v;
    st_writer_put(w, name, ST_F64, 0, NULL, p);
}

// A parameter-shaped tensor (hax_param shapes are int).
static void put_param(st_writer *w, const char *name, const hax_param *p, const float *data) {
    int64_t sh[3] = {p->shape[0], p->shape[1], p->shape[2]};
    st_writer_put(w, name, ST_F32, p->ndim, sh, data);
}

// The step of the file's AdamW from zero moments, in the run's regime.
static void emit_adamw(st_writer *w, owned *o, const check_emit_in *in) {
    const hax_model *m = in->m;
    const hax_case *c = in->c;
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        float *pw = keep(o, xmalloc(sizeof(float) * p->numel));
        float *mo = keep(o, xcalloc(p->numel, sizeof(float)));
        float *va = keep(o, xcalloc(p->numel, sizeof(float)));
        memcpy(pw, model_w(m, i), sizeof(float) * p->numel);
        (in->bf16_pure ? adamw_bf16_update : adamw_update)(pw, model_g(m, i), mo, va, p->numel, c->lr, c->beta1,
                                                           c->beta2, c->eps, c->weight_decay, 1);
        put_param(w, name2(o, "adamw.", p->name), p, pw);
        put_param(w, name2(o, "adamw.exp_avg.", p->name), p, mo);
        put_param(w, name2(o, "adamw.exp_avg_sq.", p->name), p, va);
    }
}

void check_emit(const char *path, const st_file *src, const check_emit_in *in) {
    const hax_case *c = in->c;
    const hax_model *m = in->m;
    st_writer *w = st_writer_new();
    owned *o = xcalloc(1, sizeof *o);
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        put_param(w, p->name, p, model_w(m, i));
    }
    for (int i = 0; i < src->n_tensors; i++) {  // the inputs: batch and random draws
        const st_tensor *t = &src->tensors[i];
        int draw = strncmp(t->name, "rand.", 5) == 0;
        if (!draw && strcmp(t->name, "input_ids") != 0 && strcmp(t->name, "loss_mask") != 0) continue;
        if (draw && is_float_dtype(t->dtype)) {
            float *v = keep(o, xmalloc(sizeof(float) * (st_numel(t) ? st_numel(t) : 1)));
            st_tensor_to_f32(t, v);
            if (in->bf16_pure) bf16_round_count(v, st_numel(t));
            st_writer_put(w, t->name, ST_F32, t->ndim, t->shape, v);
        } else {
            int64_t *v = keep(o, xmalloc(sizeof(int64_t) * (st_numel(t) ? st_numel(t) : 1)));
            st_tensor_to_i64(t, v);
            st_writer_put(w, t->name, ST_I64, t->ndim, t->shape, v);
        }
    }
    int64_t sh[3] = {c->B, c->L, m->cfg.hidden_size};
    st_writer_put(w, "out.last_hidden_state", ST_F32, 3, sh, keep(o, unpack_rows(c, in->hidden, (int)sh[2])));
    for (int l = 0; l <= m->cfg.n_layers; l++) {
        char nm[64];
        block_input_name(nm, sizeof nm, l, m->cfg.n_layers);
        st_writer_put(w, nm, ST_F32, 3, sh, keep(o, unpack_rows(c, in->block_in[l], (int)sh[2])));
    }
    sh[2] = m->cfg.vocab_size;
    st_writer_put(w, "out.logits", ST_F32, 3, sh, keep(o, unpack_rows(c, in->logits, (int)sh[2])));
    int lsh = in->cpu && sparse_pattern_has(m->cfg.sparse_mask, SPF_LSH);
    for (int l = 0; lsh && l < m->cfg.n_layers; l++) {  // the buckets used (injected or computed)
        const hax_sparse_state *st = engine_cpu_sparse(in->cpu, l);
        if (!st || !st->q_bucket || !st->k_bucket) continue;
        for (int qk = 0; qk < 2; qk++) {
            int64_t *v = keep(o, xcalloc((size_t)c->B * c->L, sizeof(int64_t))), sh2[2] = {c->B, c->L};
            const int32_t *bk = qk ? (st->force_k_bucket ? st->force_k_bucket : st->k_bucket)
                                   : (st->force_q_bucket ? st->force_q_bucket : st->q_bucket);
            size_t k = 0;
            for (int s = 0; s < c->B; s++)
                for (int t = 0; t < c->len[s]; t++) v[(size_t)s * c->L + t] = bk[k++];
            char nm[64];
            snprintf(nm, sizeof nm, "dbg.layers.%d.%s_bucket", l, qk ? "k" : "q");
            st_writer_put(w, nm, ST_I64, 2, sh2, v);
        }
    }
    put_scalar(w, o, "out.loss", in->r->loss);
    put_scalar(w, o, "out.gate_loss", in->r->gate_loss);
    put_scalar(w, o, "out.total_loss", in->r->total_loss);
    put_scalar(w, o, "out.acc", in->r->acc);
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        put_param(w, name2(o, "grad.", p->name), p, model_g(m, i));
    }
    emit_adamw(w, o, in);
    // metadata: the source's, with the regime (unless it names one already)
    const char *meta = st_meta(src, "hax_case");
    const char *brace = meta ? strchr(meta, '{') : NULL;
    if (!brace) hax_die("%s: __metadata__ hax_case: expected a JSON object", src->path);
    char *nm = keep(o, xmalloc(strlen(meta) + 64));
    if (strstr(meta, "\"precision\""))
        strcpy(nm, meta);
    else
        sprintf(nm, "{\"precision\": \"%s\", %s", in->bf16_pure ? "bf16-pure" : "fp32", brace + 1);
    st_writer_meta(w, "hax_case", nm);
    char err[512];
    if (st_writer_write(w, path, err, sizeof err) != 0) hax_die("hax-check --emit: %s", err);
    st_writer_free(w);
    for (int i = 0; i < o->n; i++) free(o->p[i]);
    free(o);
}
