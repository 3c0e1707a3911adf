// train.c: the training loop of train.h — steps, validation, the best
// model, the test pass, signals — on every rank of the run.
//
// One step (MODEL.md §8.2-8.5): this rank's slice of global batch s-1; the
// GLOBAL count of scored positions is all-reduced before the forward (the CE
// normaliser), the batch size is the global one (accuracy and ranking loss),
// so every rank's loss is its share of the single-rank loss; gradients are
// summed over ranks; AdamW with the warm-up schedule updates every parameter.
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/core/common.h"
#include "mpi/dist_nccl.h"
#include "src/ops/basic.h"
#include "src/train/internal.h"
#include "src/train/eval_set.h"
#include "src/train/init.h"
#include "src/train/prefetch.h"

// ---------------------------------------------------------------- signals

static volatile sig_atomic_t stop_flag = 0;

static void on_stop(int sig) {
    (void)sig;
    stop_flag = 1;
}

void train_install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

int train_stop_requested(void) { return stop_flag != 0; }

// ---------------------------------------------------------------- one step

// Global figures of a step (every rank holds the same values).
typedef struct {
    double loss, gate, acc, total, tokens;
    int finite;  // loss and every gradient finite
} step_stats;

// 1 when the steps run asynchronously (step_begin / step_end): one rank on
// a device with whole-step graphs (HAX_CUDA_GRAPH=0 turns them off).
static int async_steps(const train_ctx *t) {
    const hax_device_ops *dev = t->eng->be->dev;
    const char *genv = getenv("HAX_CUDA_GRAPH");
    return dev && dev->step_begin && t->d->size == 1 && !(genv && !strcmp(genv, "0"));
}

// The step's figures from this rank's result r (summed over ranks).
static void step_figures(train_ctx *t, const hax_fwd_result *r, double tokens, step_stats *st) {
    double v[4] = {r->loss, r->gate_loss, r->acc, r->total_loss};
    if (t->d->size > 1) dist_allreduce_sum_f64(v, 4);
    st->loss = v[0];
    st->gate = v[1];
    st->acc = v[2];
    st->total = v[3];
    st->tokens = tokens;
    st->finite = isfinite(st->total) && isfinite(st->loss);
}

// One synchronous step s on batch b (n_scored: its scored positions): the
// forward and backward, the gradients summed over ranks (AdamW: the caller's).
static void train_step(train_ctx *t, int64_t s, const hax_batch *b, double n_scored, step_stats *st) {
    const hax_config *cfg = t->cfg;
    hax_model *m = &t->model;
    double counts[2] = {n_scored, (double)b->n_tok};  // scored positions, tokens
    if (t->d->size > 1) dist_allreduce_sum_f64(counts, 2);

    const hax_device_ops *dev = t->eng->be->dev;
    if (!dev) model_zero_grad(m);
    hax_fwd_result r;
    memset(&r, 0, sizeof r);
    int poison = s == t->o->nan_at_step && t->d->rank == 0;  // test hook
    hax_fwd_opts fo = {.train = 1, .seed = cfg->train.seed, .step = (uint32_t)s, .ce_count = counts[0],
                       .inject = NULL};
    if (b->n_seq > 0) {
        engine_forward(t->eng, b, &fo, &r);
        engine_backward(t->eng);  // on a device backend: zeroes, then fills the device gradients
    } else if (dev) {
        dev->zero_grad(t->eng);  // this rank adds nothing
    }
    if (dev) {
        if (poison) dev->grad_finite(t->eng, 1);
        if (t->d->size > 1) dist_nccl_allreduce_sum_f32(t->nccl, dev->grad_buffer(t->eng), m->n_floats);
    } else {
        if (poison) m->grad[0] = NAN;
        if (t->d->size > 1) dist_allreduce_sum_f32(m->grad, m->n_floats);
    }
    step_figures(t, &r, counts[1], st);
    if (dev) st->finite = st->finite && dev->grad_finite(t->eng, 0);
    for (size_t i = 0; !dev && st->finite && i < m->n_floats; i++)
        if (!isfinite(m->grad[i])) st->finite = 0;
}

// A non-finite step s stops the run: result.json says failed, the last
// checkpoint is kept as it is.
static void check_finite(train_ctx *t, int64_t s, const step_stats *st) {
    if (st->finite) return;
    char err[2048] = "";
    if (t->d->rank == 0) {
        snprintf(err, sizeof err,
                 "step %lld: non-finite loss or gradient (loss %g, total %g); stopped, the last good checkpoint "
                 "(step %lld) is kept in %s",
                 (long long)s, st->loss, st->total, (long long)t->last_ckpt, t->o->run_dir);
        char e2[1024];
        train_write_result(t, "failed", NULL, err, e2, sizeof e2);
    }
    train_check_all(t->d, 1, err, HAX_EXIT_ERROR);  // result.json says failed already
}

// Step s is done: its figures join the loop's counters.
static void account(train_ctx *t, int64_t s, const step_stats *st) {
    t->step = s;
    t->tokens += st->tokens;
    t->run_sum[0] += st->loss;
    t->run_sum[1] += st->gate;
    t->run_sum[2] += st->acc;
    t->run_sum[3] += 1;
}

// Ends the oldest step in flight (waits for it on the device), then checks
// and counts it as the synchronous loop does.
static void end_oldest(train_ctx *t) {
    train_inflight *f = &t->inflight[t->inflight_head];
    double ms = 0;
    hax_fwd_result r;
    int grads_ok = t->eng->be->dev->step_end(t->eng, f->ticket, &r, &ms);
    t->engine_s += ms * 1e-3;
    step_stats st;
    step_figures(t, &r, f->tokens, &st);
    st.finite = st.finite && grads_ok;
    t->inflight_head = (t->inflight_head + 1) % HAX_STEPS_IN_FLIGHT;
    t->n_inflight--;
    check_finite(t, f->s, &st);
    account(t, f->s, &st);
}

// Ends every step in flight: t->step and the counters are then current
// (before anything reads them: rows, validation, checkpoints, result.json).
// The wait counts as training time.
static void drain(train_ctx *t) {
    if (t->n_inflight == 0) return;
    double t0 = hax_now();
    while (t->n_inflight > 0) end_oldest(t);
    t->train_s += hax_now() - t0;
}

// Step s, asynchronously: begun on the device (after ending the oldest step
// when HAX_STEPS_IN_FLIGHT are in flight), ended later by drain / end_oldest.
static void begin_step(train_ctx *t, int64_t s, const hax_batch *b, double n_scored, double lr) {
    if (t->n_inflight == HAX_STEPS_IN_FLIGHT) end_oldest(t);
    const hax_config *cfg = t->cfg;
    hax_fwd_opts fo = {.train = 1, .seed = cfg->train.seed, .step = (uint32_t)s, .ce_count = n_scored,
                       .inject = NULL};
    int poison = s == t->o->nan_at_step;  // test hook: the step counts as non-finite
    train_inflight *f = &t->inflight[(t->inflight_head + t->n_inflight) % HAX_STEPS_IN_FLIGHT];
    f->s = s;
    f->tokens = (double)b->n_tok;
    f->ticket = t->eng->be->dev->step_begin(t->eng, b, &fo, &t->opt, lr, poison);
    t->n_inflight++;
}

// ---------------------------------------------------------------- validation

// Device backends keep the weights (and moments) on the device: these bring
// the host copies up to date (pull) or send them back (push). No-ops on the CPU.
static void dev_pull(train_ctx *t, int moments) {
    if (t->eng->be->dev) t->eng->be->dev->pull(t->eng, moments ? &t->opt : NULL);
}
static void dev_push(train_ctx *t, int moments) {
    if (t->eng->be->dev) t->eng->be->dev->push(t->eng, moments ? &t->opt : NULL);
}

// Stops every rank when any rank failed (msg: this rank's reason). Before
// exiting, rank 0 marks the run "failed" in result.json with the reason (its
// own, or which rank failed), where the run folder exists: an aggregator
// then never sees a dead run as running. The write may itself fail (a full
// disk); the message on stderr is then the only trace.
static void train_fail_all(train_ctx *t, int failed, const char *msg) {
    int r = train_failed_rank(t->d, failed);
    if (r < 0) return;
    if (t->d->rank == 0 && access(t->o->run_dir, F_OK) == 0) {
        char why[2200], e2[1024];
        if (r == 0) snprintf(why, sizeof why, "%s", msg);
        else snprintf(why, sizeof why, "rank %d failed (its message is on its stderr)", r);
        train_write_result(t, "failed", NULL, why, e2, sizeof e2);
    }
    train_exit_failed(t->d, r, msg, HAX_EXIT_ERROR);
}

// Stops every rank when rank 0 failed to write a file.
static void check_write(train_ctx *t, int rc, const char *err) { train_fail_all(t, rc != 0, err); }

// Validates the current weights after step s; keeps them as the best when
// strictly better (JR:171). Returns 1 when they became the best.
static int validate(train_ctx *t, int64_t s, train_eval *ev) {
    train_evaluate(t, SPLIT_VALID, NULL, ev, NULL);
    t->last_valid = ev->acc;
    int better = ev->acc > t->best_acc;
    if (better) {
        dev_pull(t, 0);
        memcpy(t->best, t->model.data, t->model.n_floats * sizeof(float));
        t->best_acc = ev->acc;
        t->best_step = s;
        t->have_best = 1;
        train_eval_copy(&t->best_valid, ev);
        char err[1024] = "";
        int rc = t->d->rank == 0 ? train_best_write(t, err, sizeof err) : 0;
        check_write(t, rc, err);
    }
    if (t->d->rank == 0) {
        printf("valid step %lld: acc %.4f (best %.4f at step %lld)\n", (long long)s, ev->acc, t->best_acc,
               (long long)t->best_step);
        fflush(stdout);
    }
    return better;
}

// ---------------------------------------------------------------- setup

static void ctx_init(train_ctx *t, const train_opts *o) {
    memset(t, 0, sizeof *t);
    t->o = o;
    t->cfg = o->cfg;
    t->d = o->dist;
    const hax_config *cfg = o->cfg;
    const hax_data_params *p = dataset_params(o->ds);
    t->nc = (p->levels >= 2 ? p->max_size[p->levels - 2] : 1) + 1;
    t->nk = p->max_size[p->levels - 1] + 1;

    model_build(&t->model, &cfg->model);
    train_init_weights(&t->model, cfg);  // train.init_from replaces them on a fresh start (train_run)
    const hax_train_config *tc = &cfg->train;
    adamw_init(&t->opt, t->model.n_floats, tc->beta1, tc->beta2, tc->eps, tc->weight_decay);
    t->opt.bf16_pure = tc->precision == PREC_BF16_PURE;
    dataset_set_shuffle(o->ds, o->cfg->data.shuffle, tc->seed);
    dataset_batch_alloc(o->ds, config_eval_batch(cfg), &t->batch);  // the evaluation passes' scratch
    // Sized for the training batches; the first validation grows the engine
    // to the largest evaluation batch (engine_reserve, eval.h), of the
    // validation split's actual lengths, not evaluation batch x max_len.
    int max_len = dataset_pad_len(o->ds) - 1;
    int max_seq = (tc->batch_size + t->d->size - 1) / t->d->size;
    const char *backend = o->use_cuda ? "cuda" : "cpu";
    t->eng = engine_create(backend, &t->model, t->d->local_rank, max_seq * max_len, max_seq, max_len);
    if (t->eng->be->dev) {
        t->nccl = dist_nccl_create(t->d, t->eng->be->dev->stream(t->eng));
        if (t->d->rank == 0 && t->d->size > 1) {
            printf("hax-train: gradients summed through %s\n", dist_nccl_mode(t->nccl));
            fflush(stdout);
        }
    }

    t->best = xcalloc(t->model.n_floats, sizeof(float));
    train_eval_alloc(&t->best_valid, t->nc, t->nk);
    t->last_valid = NAN;
    t->last_ckpt = -1;
    if (t->d->rank == 0) train_git_revision(t->git_rev, sizeof t->git_rev);
    dist_bcast(t->git_rev, sizeof t->git_rev);
}

static void ctx_free(train_ctx *t) {
    if (t->nccl) dist_nccl_free(t->nccl);
    eval_set_free(t->valid_set);  // the engine's memory
    engine_free(t->eng);
    adamw_free(&t->opt);
    hax_batch_free(&t->batch);
    model_free(&t->model);
    train_eval_free(&t->best_valid);
    free(t->best);
    free(t->rows);
}

// A fresh start with train.init_from: every rank replaces hax's initial
// weights (drawn all the same, so the random streams are as without it) by the
// file's, and the ranks check that they hold the same bits.
static void init_from(train_ctx *t) {
    const char *path = t->cfg->train.init_from;
    char err[2048] = "";
    int ignored = train_load_init(&t->model, path, t->cfg->train.precision, err, sizeof err);
    train_check_all(t->d, ignored < 0, err, HAX_EXIT_ERROR);
    int same = dist_all_equal(t->model.data, t->model.n_floats * sizeof(float));
    snprintf(err, sizeof err, "train.init_from: %s: expected the same weights on every rank, found other bytes on "
             "some rank (is the file the same on every node?)", path);
    train_check_all(t->d, !same, err, HAX_EXIT_ERROR);
    if (t->d->rank == 0) {
        printf("hax-train: initial weights from %s (%d parameters", path, t->model.n_params);
        if (ignored > 0) printf("; %d evaluation hash matrices in it ignored", ignored);
        printf(")\n");
        fflush(stdout);
    }
}

// ---------------------------------------------------------------- progress

static void fmt_duration(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e9) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
}

static void print_progress(const train_ctx *t, const double row[M_COLS]) {
    if (t->d->rank != 0) return;
    int64_t done = t->step - t->step0;
    double tps = t->train_s > 0 ? (t->tokens - t->tokens0) / t->train_s : 0;
    double eta = done > 0 ? t->train_s / done * (double)(t->cfg->train.steps - t->step) : -1;
    char e[32];
    fmt_duration(e, sizeof e, eta);
    printf("step %lld/%lld | loss %.4f | gate %.4f | acc %.4f | lr %.3e | %.0f tok/s | ETA %s\n",
           (long long)t->step, (long long)t->cfg->train.steps, row[M_LOSS], row[M_GATE], row[M_ACC], row[M_LR],
           tps, e);
    fflush(stdout);
}

// This session's time per step: in the loop (steps, waits for the batches
// and the device, the host's work), in the engine (device backends with
// asynchronous steps: the steps' time on the device; else the host's time in
// forward, backward and AdamW), and the rest: the host's share. Then the
// validation passes' mean time (the first one's assembly of the split apart).
static void print_step_split(const train_ctx *t) {
    int64_t done = t->step - t->step0;
    if (done > 0) {
        double loop = t->train_s / done * 1e3, eng = t->engine_s / done * 1e3;
        printf("hax-train: %.3f ms per step in the loop, %.3f ms in the engine%s, %.3f ms (%.1f%%) else\n", loop,
               eng, async_steps(t) ? " (device)" : "", loop - eng, loop > 0 ? 100.0 * (loop - eng) / loop : 0.0);
    }
    if (t->n_valid > 0)
        printf("hax-train: %d validation passes, %.3f s each (assembling the split once: %.3f s)\n", t->n_valid,
               (t->valid_s - t->valid_build_s) / t->n_valid, t->valid_build_s);
    fflush(stdout);
}

// Closes the metrics interval at step s (means since the last row).
static void close_row(train_ctx *t, int64_t s, double lr, double valid) {
    double n = t->run_sum[3] > 0 ? t->run_sum[3] : 1;
    double row[M_COLS] = {(double)s, t->run_sum[0] / n, t->run_sum[1] / n, t->run_sum[2] / n, lr, valid};
    train_add_row(t, row);
    memset(t->run_sum, 0, sizeof t->run_sum);
    print_progress(t, row);
}

// Checkpoint + metrics.csv + result.json (status) on rank 0; collective error check.
static void save_state(train_ctx *t, const char *status) {
    char err[1024] = "";
    int rc = 0;
    dev_pull(t, 1);
    if (t->d->rank == 0) {
        rc = train_ckpt_write(t, err, sizeof err);
        if (!rc) rc = train_write_metrics(t, err, sizeof err);
        if (!rc) rc = train_write_result(t, status, NULL, NULL, err, sizeof err);
    }
    check_write(t, rc, err);
    t->last_ckpt = t->step;
}

// ---------------------------------------------------------------- the end

// Final validation (unless the reference's steps already covered the last
// step), then the test pass on the best model: ours (by test_output_layer)
// and the reference-style figure (the reference's best model, i.e. without
// the final validation, scored with the final step's embedding: quirk 1).
static void finish(train_ctx *t, train_test *test, train_eval *ev_ours, train_eval *ev_ref) {
    const hax_config *cfg = t->cfg;
    hax_model *m = &t->model;
    size_t bytes = m->n_floats * sizeof(float);
    int64_t steps = cfg->train.steps;
    float *ref_best = NULL;  // the reference's best, when the final validation replaced it
    int ref_have = t->have_best;
    test->final_valid = NAN;
    if (steps > 0 && (steps + 1) % cfg->train.valid_every == 0) {
        test->final_valid = t->last_valid;  // validated at the last step already
    } else if (cfg->train.validate_final && steps > 0) {
        if (t->have_best) {
            ref_best = xmalloc(bytes);
            memcpy(ref_best, t->best, bytes);
        }
        train_eval ev;
        train_eval_alloc(&ev, t->nc, t->nk);
        if (!validate(t, steps, &ev)) {
            free(ref_best);
            ref_best = NULL;
        }
        test->final_valid = ev.acc;
        train_eval_free(&ev);
    }
    if (!t->have_best && t->d->rank == 0) {
        hax_warn("no validation accuracy above 0 (MODEL.md quirk 19): testing the final weights");
    }

    float *final_w = xmalloc(bytes);
    dev_pull(t, 0);
    memcpy(final_w, m->data, bytes);
    const float *final_emb = final_w + m->params[m->embeddings].offset;
    const float *ours_w = t->have_best ? t->best : final_w;
    const float *ref_w = ref_best ? ref_best : (ref_have ? t->best : final_w);
    train_eval ev_own;  // the best model with its own embedding
    train_eval_alloc(&ev_own, t->nc, t->nk);
    memcpy(m->data, ours_w, bytes);
    dev_push(t, 0);
    train_evaluate(t, SPLIT_TEST, final_emb, &ev_own, ev_ref);  // ev_ref: the best's hf x the final embedding
    if (cfg->train.test_output_layer == TEST_OUTPUT_BEST) train_eval_copy(ev_ours, &ev_own);
    else train_eval_copy(ev_ours, ev_ref);
    if (ref_w != ours_w) {  // the reference's best differs from ours: score it too
        memcpy(m->data, ref_w, bytes);
        dev_push(t, 0);
        train_evaluate(t, SPLIT_TEST, final_emb, &ev_own, ev_ref);
    }
    memcpy(m->data, final_w, bytes);
    dev_push(t, 0);
    test->acc = ev_ours->acc;
    test->acc_ref = ev_ref->acc;
    test->ev = ev_ours;
    test->ev_ref = ev_ref;
    if (!t->have_best) {  // best.safetensors holds the final weights then
        memcpy(t->best, final_w, bytes);
        t->best_step = steps;
        char err[1024] = "";
        int rc = t->d->rank == 0 ? train_best_write(t, err, sizeof err) : 0;
        check_write(t, rc, err);
    }
    train_eval_free(&ev_own);
    free(final_w);
    free(ref_best);
}

// ---------------------------------------------------------------- the loop

int train_run(const train_opts *o) {
    train_ctx t;
    ctx_init(&t, o);
    const hax_config *cfg = o->cfg;
    const hax_train_config *tc = &cfg->train;
    int root = t.d->rank == 0;
    char err[2048] = "";

    int loaded = 0;
    if (!o->force) {
        loaded = train_ckpt_load(&t, err, sizeof err);
        // a refused checkpoint (another config, corrupt) leaves the folder as it
        // was: that run is still resumable with the right config, not failed
        train_check_all(t.d, loaded < 0, err, HAX_EXIT_ERROR);
    }
    if (!loaded && tc->init_from[0]) init_from(&t);
    dev_push(&t, 1);  // a device backend trains from here on its own copies
    if (root) {
        int rc = hax_mkdir_p(o->run_dir);
        if (rc) snprintf(err, sizeof err, "%s: cannot create the results folder: %s", o->run_dir, strerror(errno));
        else train_remove_stale_tmp(o->run_dir);  // leftovers of a killed run, before anything is written
        if (!rc) rc = train_write_result(&t, "running", NULL, NULL, err, sizeof err);
        check_write(&t, rc, err);
    } else {
        check_write(&t, 0, "");
    }
    t.t0 = hax_now();
    t.step0 = t.step;
    t.tokens0 = t.tokens;
    if (root) {
        if (loaded) printf("hax-train: resuming %s at step %lld\n", o->run_dir, (long long)t.step);
        printf("hax-train: %zu parameters, %d rank%s, steps %lld, results in %s\n", t.model.n_floats, t.d->size,
               t.d->size == 1 ? "" : "s", (long long)tc->steps, o->run_dir);
        fflush(stdout);
    }

    train_eval ev;
    train_eval_alloc(&ev, t.nc, t.nk);
    // the batches of steps t.step+1 .. steps (batch s-1 for step s), filled ahead
    train_prefetch *pf = prefetch_start(o->ds, tc->batch_size, t.d->rank, t.d->size, t.step, tc->steps);
    int async = async_steps(&t);
    for (int64_t s = t.step + 1; s <= tc->steps; s++) {
        double ts = hax_now(), n_scored = 0;
        const hax_batch *b = prefetch_take(pf, s - 1, &n_scored);
        double lr = adamw_schedule_lr(tc->lr, s, tc->warmup);
        if (async) {
            begin_step(&t, s, b, n_scored, lr);  // returns before the device has run it
            prefetch_release(pf);
        } else {
            double te = hax_now();
            step_stats st;
            train_step(&t, s, b, n_scored, &st);
            prefetch_release(pf);
            check_finite(&t, s, &st);
            if (t.eng->be->dev) t.eng->be->dev->adamw_step(t.eng, &t.opt, lr);
            else adamw_step(&t.opt, t.model.data, t.model.grad, lr);
            account(&t, s, &st);
            t.engine_s += hax_now() - te;
        }
        t.train_s += hax_now() - ts;
        if (o->slow_step > 0) usleep((useconds_t)(o->slow_step * 1e6));

        // Whatever reads the counters or the weights ends the steps in flight first.
        int val = (s + 1) % tc->valid_every == 0;  // the reference's (step+1) % valid_step
        if (val) drain(&t), validate(&t, s, &ev);
        if (s % tc->log_every == 0 || val || s == tc->steps) drain(&t), close_row(&t, s, lr, val ? ev.acc : NAN);
        if (o->stop_after_step == s && root) raise(SIGTERM);
        int stop = dist_allreduce_max_int(train_stop_requested());
        int periodic = tc->checkpoint_every > 0 && s % tc->checkpoint_every == 0;  // 0: only on stop and at the end
        if (stop || periodic) {
            drain(&t);
            save_state(&t, stop ? "preempted" : "running");
        } else if (root && (val || hax_now() - t.last_result >= HAX_HEARTBEAT_S)) {
            drain(&t);
            train_write_result(&t, "running", NULL, NULL, err, sizeof err);  // rank 0 alone: no collective
            // (a write that fails here, a full disk, is caught collectively at the next checkpoint)
        }
        if (stop) {
            if (root) {
                printf("hax-train: stopped by a signal after step %lld; checkpoint written, exit %d (requeue "
                       "resumes)\n", (long long)s, HAX_EXIT_PREEMPTED);
                fflush(stdout);
            }
            prefetch_free(pf);
            train_eval_free(&ev);
            ctx_free(&t);
            return HAX_EXIT_PREEMPTED;
        }
    }
    drain(&t);
    prefetch_free(pf);
    train_eval_free(&ev);

    train_test test;
    train_eval ev_ours, ev_ref;
    train_eval_alloc(&ev_ours, t.nc, t.nk);
    train_eval_alloc(&ev_ref, t.nc, t.nk);
    finish(&t, &test, &ev_ours, &ev_ref);
    int rc = 0;
    dev_pull(&t, 1);
    if (root) {
        rc = train_ckpt_write(&t, err, sizeof err);
        if (!rc) rc = train_write_metrics(&t, err, sizeof err);
        if (!rc) rc = train_write_result(&t, "complete", &test, NULL, err, sizeof err);
    }
    check_write(&t, rc, err);
    if (root) print_step_split(&t);
    if (root) {
        double wall = train_wall(&t), tr = t.train_before + t.train_s;
        printf("hax-train: done: %lld steps, %.1f s (%.0f tok/s); best valid acc %.4f at step %lld; test acc "
               "%.4f (reference-style %.4f) -> %s\n",
               (long long)t.step, wall, tr > 0 ? t.tokens / tr : 0.0, t.best_acc, (long long)t.best_step, test.acc,
               test.acc_ref, o->run_dir);
        fflush(stdout);
    }
    train_eval_free(&ev_ours);
    train_eval_free(&ev_ref);
    ctx_free(&t);
    return HAX_EXIT_OK;
}

// ---------------------------------------------------------------- backend choice

int train_pick_device(const hax_config *cfg, char *why, int why_len) {
    hax_device want = cfg->train.device;
    if (want == DEVICE_CPU) return 0;
    char reason[200] = "";
    if (engine_backend_available("cuda", &cfg->model, reason, sizeof reason)) return 1;
    if (want == DEVICE_AUTO) return 0;
    snprintf(why, (size_t)why_len, "train.device: expected a model, machine and build the CUDA backend runs, found "
             "%s (use device: auto or cpu)", reason);
    return -1;
}
