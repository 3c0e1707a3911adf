// src/train/internal.h: the state shared by train.c (the loop), eval.c (evaluation),
// src/train/ckpt.c (checkpoint, best.safetensors) and src/train/report.c
// (result.json, metrics.csv, progress). Internal to those files.
#ifndef HAX_TRAIN_INTERNAL_H
#define HAX_TRAIN_INTERNAL_H

#include <stdint.h>

#include "src/ops/adamw.h"
#include "src/io/batch.h"
#include "src/io/safetensors.h"
#include "src/engine/engine.h"
#include "src/model/model.h"
#include "src/train/eval.h"
#include "src/train/train.h"

// Columns of a metrics row (metrics.csv and the checkpoint's "metrics" tensor).
enum { M_STEP, M_LOSS, M_GATE, M_ACC, M_LR, M_VALID, M_COLS };

// A training step begun on the device and not ended yet (asynchronous steps).
typedef struct {
    int64_t s;      // the step
    int ticket;     // hax_device_ops.step_begin's
    double tokens;  // its batch's positions
} train_inflight;

struct eval_set;

// Everything the loop carries from step to step. The fields marked (ckpt)
// are saved in the resume checkpoint; the rest is rebuilt on start.
typedef struct {
    const train_opts *o;
    const hax_config *cfg;
    const hax_dist *d;
    hax_model model;
    hax_engine *eng;
    struct hax_nccl *nccl;  // the device gradient all-reduce (CUDA backend only)
    hax_adamw opt;          // (ckpt) moments and step count
    hax_batch batch;        // the evaluation passes' scratch (for config_eval_batch sequences)
    int nc, nk;             // per-cell table dimensions

    int64_t step;           // (ckpt) optimizer steps done
    int64_t eval_draws;     // (ckpt) evaluation batches so far (redraw index when eval_fixed_hash is off)
    int have_best;          // (ckpt)
    double best_acc;        // (ckpt) best validation accuracy (strict >, from 0)
    int64_t best_step;      // (ckpt)
    float *best;            // (ckpt) [n_floats] the best model's weights
    train_eval best_valid;  // (ckpt) its validation pass (per cell)
    double last_valid;      // (ckpt) the latest validation accuracy (NAN: none yet)
    double *rows;           // (ckpt) metrics rows [n_rows][M_COLS]
    int64_t n_rows, cap_rows;
    double run_sum[4];      // (ckpt) loss, gate, acc sums and steps since the last row
    double tokens;          // (ckpt) tokens trained on (global, all sessions)
    double wall_before;     // (ckpt metadata) seconds of earlier sessions
    double train_before;    // (ckpt metadata) seconds of training steps in earlier sessions

    double t0, train_s;     // this session's start, seconds spent in training steps
    double engine_s;        // of train_s: in the engine (device time of asynchronous steps)
    train_inflight inflight[HAX_STEPS_IN_FLIGHT];  // steps begun, oldest at inflight_head
    int inflight_head, n_inflight;
    struct eval_set *valid_set;  // the validation split's batches, assembled at the first validation
    double valid_s, valid_build_s;  // seconds in validation passes (this session), of them assembling valid_set
    int n_valid;                    // validation passes (this session)
    double tokens0;         // tokens at the session's start
    int64_t step0;          // step at the session's start
    int64_t last_ckpt;      // step of the latest checkpoint written (-1: none)
    double last_result;     // hax_now() of the latest result.json write (its heartbeat)
    char git_rev[64];
} train_ctx;

// ---- evaluation (src/train/eval.c) ----
// One pass over a split with the model's current weights (evaluation mode:
// no ranking loss, the evaluation hash matrices). With alt_emb, each batch is
// also scored with logits hf · alt_embᵀ into ev_alt (quirk 1's test figure). Through eval_run (eval.h).
void train_evaluate(train_ctx *t, int split, const float *alt_emb, train_eval *ev, train_eval *ev_alt);

// ---- checkpoint and best model (src/train/ckpt.c) ----
// Writes checkpoint.safetensors (rank 0; the other ranks return). 0 or -1 with err.
// Adds every parameter of m, its values from the flat buffer buf (laid out as
// m->data), to w as F32 tensors named prefix + the parameter's name.
int train_add_params(st_writer *w, const hax_model *m, const char *prefix, const float *buf, char *err, int errlen);
int train_ckpt_write(train_ctx *t, char *err, int errlen);
// Loads <run_dir>/checkpoint.safetensors into t when it exists (every rank
// reads it). Returns 1 when loaded, 0 when there is none, -1 with err when it
// is corrupt or belongs to another config.
int train_ckpt_load(train_ctx *t, char *err, int errlen);
// Writes best.safetensors from t->best (rank 0). 0 or -1 with err.
int train_best_write(train_ctx *t, char *err, int errlen);

// ---- records (src/train/report.c) ----
// result.json with this status ("running", "complete", "failed", "preempted");
// test figures may be NULL (not run yet), message may be NULL. Rank 0 only.
typedef struct {
    double acc, acc_ref;             // ours and the reference-style figure
    const train_eval *ev, *ev_ref;   // per-cell
    double final_valid;              // the final weights' validation (NAN: not run)
} train_test;
int train_write_result(train_ctx *t, const char *status, const train_test *test, const char *message, char *err,
                       int errlen);
int train_write_metrics(train_ctx *t, char *err, int errlen);
// Appends a metrics row.
void train_add_row(train_ctx *t, const double row[M_COLS]);
// The git revision of the source tree the program was built from ("unknown"),
// or HAX_GIT_REVISION where set (checked: a commit, optionally -dirty).
void train_git_revision(char *buf, size_t n);
// Seconds of wall time over all sessions.
double train_wall(const train_ctx *t);

// A running run rewrites result.json (its "heartbeat") at least this often.
#define HAX_HEARTBEAT_S 60
#endif
