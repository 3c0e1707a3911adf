// check_util.h: helpers of bin/hax-check — reading golden tensors (checked
// shape and dtype kind), LSH bucket flips, the bf16-pure comparison
// (elements counted in bf16 ulps, bounds from the reference's own noise) and
// writing what the engine computed back in the golden format (--emit).
#ifndef HAX_PROG_CHECK_UTIL_H
#define HAX_PROG_CHECK_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "src/engine/case.h"
#include "src/engine/engine.h"
#include "src/io/safetensors.h"

// A golden tensor, or NULL when the file lacks it. One that is there must
// have the shape [s0, s1, s2][0..ndim) and a dtype of the expected kind
// (floating point, or integer for ids and buckets); otherwise dies with one
// line naming it, before reading any of its values.
const st_tensor *golden_tensor(const st_file *f, const char *name, int integer, int ndim, int64_t s0, int64_t s1,
                               int64_t s2);
// The same tensor converted (float32 / int64, caller frees), or NULL when absent.
float *golden_f32(const st_file *f, const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2);
int64_t *golden_i64(const st_file *f, const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2);

// A command-line number strictly between lo and hi; exits with usage status
// and one line naming flag and range otherwise.
double parse_number(const char *flag, const char *s, double lo, double hi, const char *range);

// ---- LSH bucket flips
// The golden buckets `name` ([B, L]) packed as int32 [n_tok]; NULL when absent.
int32_t *golden_buckets(const st_file *f, const hax_case *c, const char *name, int n_tok);
// Rows where ours differ from the golden buckets; *n_tol of them differ only
// by sign bits (or argmax choices) whose golden projection (proj_name) is
// within eps_rel of the row norm of a tie: a float32 flip (1e-5), not an
// error (bf16-pure: every flip, INFINITY). where gets the first tolerated one.
int bucket_mismatch(const st_file *f, const hax_case *c, const int32_t *ours, const int32_t *gold, const char *proj_name,
                    int h, int argmax, int n_tok, double eps_rel, int *n_tol, char *where, size_t wlen);

// ---- bf16-pure comparison (hax-check --precision bf16-pure)
//
// Two tensors of bf16 values compared element by element: equal, one bf16
// ulp apart, more than one (and the largest distance), plus the normwise
// relative difference. A tensor passes when both its normwise difference and
// its count of elements more than one ulp apart are within bounds. Without a
// noise file the bounds are the floors (BF16_REL_FLOOR: every element up to
// one ulp off, 2^-8 to 2^-7 of it; BF16_BEYOND_FRAC of the elements
// further); with one
// (the same case made by the reference's other kernel path) they are
// factor x the reference's own difference, where that is larger.
#define BF16_REL_FLOOR 0.0078125         // 2^-7
#define BF16_SCALAR_REL_FLOOR 0.0078125  // 2^-7: a bf16 scalar, one ulp
#define BF16_BEYOND_FRAC 0.01
#define BF16_ACC_FLOOR 0.02           // accuracy: about two argmax flips in a short sample

typedef struct {
    long n, equal, one, beyond, max_ulps, not_bf16;  // not_bf16: elements of ours with low 16 bits set
    long unit;  // "one" counts elements 1..unit ulps apart, "beyond" those further
    double rel;
} bf16_stats;

// unit: 1, or 2 for AdamW's second moment. After one step that is
// (1 - beta2) g^2: a gradient one ulp off (within BF16_REL_FLOOR) is two ulps
// off there. Where one element dominates a small tensor, its normwise
// difference is that element's: on 2026-12-07 Mamba+HAX's layer-0
// dt_proj.bias (one gradient element 8x the next, hax 1 ulp off it, 4.4e-3)
// and Mamba2's layer-1 A_log (8 elements) failed a one-ulp floor with
// gradients within theirs.
void bf16_stats_of(bf16_stats *s, const float *ours, const float *gold, size_t n, long unit);

// Verdict of ours (s) against the golden, the noise (the reference's other
// path against the same golden) may be NULL. The normwise floor is s->unit
// ulps: s->unit x BF16_REL_FLOOR.
// Writes the relative bound to *rel_bound and a one-line note (counts and
// bounds) to note.
int bf16_verdict(const bf16_stats *s, const bf16_stats *noise, double factor, double *rel_bound, char *note,
                 size_t note_len);

// Rounds x[0..n) to bf16 in place; returns how many values changed.
long bf16_round_count(float *x, size_t n);

// The golden name of the residual stream entering block `layer`
// ("dbg.layers.L.hidden_in"), or norm_f's input ("dbg.norm_f.hidden_in")
// where layer == n_layers.
void block_input_name(char *buf, size_t len, int layer, int n_layers);

// ---- --emit: the engine's results for a case, in the golden format
typedef struct {
    const hax_case *c;
    const hax_model *m;                // weights before the AdamW step, gradients
    const hax_batch *b;
    const float *hidden, *logits;      // packed [n_tok, d], [n_tok, V]
    float *const *block_in;            // [n_layers + 1] packed [n_tok, d] (engine_block_input)
    const hax_fwd_result *r;
    int bf16_pure;                     // rand.* floats rounded to bf16, AdamW in bf16-pure
    const hax_engine *cpu;             // the CPU engine (its LSH buckets are written), or NULL
} check_emit_in;

// Writes path: the parameters, input_ids, loss_mask and rand.* tensors of src,
// out.*, the block inputs (dbg.layers.*.hidden_in, dbg.norm_f.hidden_in), the
// LSH buckets used (dbg.layers.*.{q,k}_bucket), grad.*, and one AdamW step (adamw.*, adamw.exp_avg.*,
// adamw.exp_avg_sq.*) from zero moments; metadata hax_case of src with
// "precision" added. Dies with one line on a write error.
void check_emit(const char *path, const st_file *src, const check_emit_in *in);

#endif
