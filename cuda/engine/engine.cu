// cuda/engine/engine.cu: the CUDA backend (see cuda/engine/engine.h): device
// weights and gradients, the hooks around the shared engine, the
// device-resident training ops and the whole-step CUDA graph. The model's
// forward and backward are the shared engine's (src/engine/engine.c) on the
// op table of cuda/engine/ops.cu.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/core/common.cuh"
#include "cuda/engine/engine.h"
#include "cuda/engine/internal.h"
#include "cuda/ops/adamw.h"

#define CU_MAX_GRAPHS 64  // graphs kept (one per padded batch shape)
#define CU_BUCKET 256     // graph steps pad the packed positions to a multiple of this
#define CU_SLOTS HAX_STEPS_IN_FLIGHT

// A padded batch in pinned memory (uploaded from asynchronously) and its capacities.
typedef struct {
    hax_batch b;
    int cap_tok, cap_seq;
} cu_padded;

// What one asynchronous step copies, in pinned memory: its scalars up, its figures down.
typedef struct {
    float ce_scale;
    cuda_adamw_hp hp;
    double ce_sum;
    double gate[HAX_MAX_LAYERS];
    int bad;  // the sticky non-finite flag after the step
    int err;  // the kernels' error flag (cu_error_flag) after the step
} cu_step_io;

// One asynchronous step (step_begin .. step_end) and what it needs until it has run.
typedef struct {
    cu_padded pad;
    cu_step_io *io;
    int *correct, *count;  // pinned [cap_out]
    int cap_out;
    int n_seq, global_n_seq;  // of the batch as given
    double ce_count;
    cudaEvent_t start, end;
    int busy;
} cu_slot;

typedef struct {
    float *w, *gr;            // device parameters and gradients [n_floats]
    int resident;             // 1 after push: the device weights are the master copy
    float *am, *av;           // device AdamW moments [n_floats] (resident mode)
    cuda_adamw_hp *hp;        // device AdamW scalars of the current step
    int *flag;                // device finiteness flag
    float *host_g;            // host staging of the gradients
    // graph steps: the batch padded to a bucket, the CE scale on the device,
    // and the graphs captured per padded shape
    cu_padded pad;
    float *ce_scale;
    int *sticky;              // device: set once a step's gradients were not finite (never cleared)
    cu_slot slots[CU_SLOTS];  // asynchronous steps, ticket % CU_SLOTS
    int next_ticket, end_ticket;
    cuda_adamw_hp hp_host;
    float ce_scale_host;
    struct { int n, n_seq, global_n_seq, model_len; void *exec; } graphs[CU_MAX_GRAPHS];
    int n_graphs, graph_launches;
} cu_impl;

static cu_impl *impl_of(const hax_engine *e) { return (cu_impl *)e->impl; }
static void padded_free(cu_padded *p);

static void graphs_free(cu_impl *c) {
    for (int i = 0; i < c->n_graphs; i++) cuda_graph_free(c->graphs[i].exec);
    c->n_graphs = 0;
}

// ---------------------------------------------------------------- hooks

static void cu_before_forward(hax_engine *e) {
    // bf16-pure GEMMs on TF32 tensor cores (exact for bf16 inputs: cuda_gemm_tf32);
    // set at every forward, since a program may hold engines of several regimes.
    cuda_gemm_tf32(e->model->cfg.precision == PREC_BF16_PURE);
    if (!impl_of(e)->resident) cuda_upload(impl_of(e)->w, e->model->data, sizeof(float) * e->model->n_floats);
}

static void cu_after_backward(hax_engine *e) {
    cu_impl *c = impl_of(e);
    hax_model *m = e->model;
    if (c->resident) return;  // the gradients stay on the device
    cuda_download(c->host_g, c->gr, sizeof(float) * m->n_floats);
    cuda_sync();
    for (size_t i = 0; i < m->n_floats; i++) m->grad[i] += c->host_g[i];
}

// Captured steps point into the old buffers.
static void cu_before_realloc(hax_engine *e) {
    cuda_sync();
    graphs_free(impl_of(e));
}

static void cu_destroy(hax_engine *e) {
    cu_impl *c = impl_of(e);
    cuda_sync();
    graphs_free(c);
    cuda_free(c->w), cuda_free(c->gr), cuda_free(c->am), cuda_free(c->av), cuda_free(c->hp), cuda_free(c->flag);
    cuda_free(c->ce_scale), cuda_free(c->sticky);
    padded_free(&c->pad);
    for (int k = 0; k < CU_SLOTS; k++) {
        cu_slot *sl = &c->slots[k];
        padded_free(&sl->pad);
        cuda_host_free(sl->io), cuda_host_free(sl->correct), cuda_host_free(sl->count);
        CUDA_CHECK(cudaEventDestroy(sl->start));
        CUDA_CHECK(cudaEventDestroy(sl->end));
    }
    free(c->host_g), free(c);
}

// ---------------------------------------------------------------- graph steps

static void padded_free(cu_padded *p) {
    cuda_host_free(p->b.inputs), cuda_host_free(p->b.labels), cuda_host_free(p->b.loss_mask);
    cuda_host_free(p->b.seq_off);
    memset(p, 0, sizeof *p);
}

// pd->b = b plus one sequence of padding (token 0, label 0, unscored) that
// brings the positions to a multiple of CU_BUCKET. The padding adds exact
// zeros to every gradient (its CE gradient rows are zero) and its sequence
// scores nothing, so only summation orders change. With the sparse branch
// the padding is cut into sequences of at most model_len positions (the
// branch's statistics assume no longer one) and gets no ranking candidates
// (mixer_inputs), so it adds nothing to the ranking loss either.
static void pad_batch(cu_padded *pd, const hax_model_config *cfg, const hax_batch *b) {
    int n = b->n_tok, np = (n + CU_BUCKET - 1) / CU_BUCKET * CU_BUCKET;
    if (np == 0) np = CU_BUCKET;
    int piece = cfg->sparse_mask && b->model_len > 0 ? b->model_len : CU_BUCKET;
    int n_pad_seq = (np - n + piece - 1) / piece;
    int ns = b->n_seq + n_pad_seq;
    hax_batch *p = &pd->b;
    if (np > pd->cap_tok || ns + 1 > pd->cap_seq) {
        int cap_tok = np > pd->cap_tok ? np : pd->cap_tok, cap_seq = ns + 1 > pd->cap_seq ? ns + 1 : pd->cap_seq;
        padded_free(pd);
        pd->cap_tok = cap_tok, pd->cap_seq = cap_seq;
        p->inputs = (int32_t *)cuda_host_alloc(sizeof(int32_t) * cap_tok);
        p->labels = (int32_t *)cuda_host_alloc(sizeof(int32_t) * cap_tok);
        p->loss_mask = (uint8_t *)cuda_host_alloc(cap_tok);
        p->seq_off = (int *)cuda_host_alloc(sizeof(int) * (cap_seq + 1));
    }
    memcpy(p->inputs, b->inputs, sizeof(int32_t) * n);
    memcpy(p->labels, b->labels, sizeof(int32_t) * n);
    if (b->loss_mask) memcpy(p->loss_mask, b->loss_mask, n);
    else memset(p->loss_mask, 1, n);
    memset(p->inputs + n, 0, sizeof(int32_t) * (np - n));
    memset(p->labels + n, 0, sizeof(int32_t) * (np - n));
    memset(p->loss_mask + n, 0, np - n);
    memcpy(p->seq_off, b->seq_off, sizeof(int) * (b->n_seq + 1));
    for (int s = b->n_seq + 1; s <= ns; s++) p->seq_off[s] = p->seq_off[s - 1] + piece < np ? p->seq_off[s - 1] + piece : np;
    p->n_tok = np, p->n_seq = ns;
    p->global_n_seq = b->global_n_seq;
    p->model_len = b->model_len;
}

// Before AdamW: once the sticky flag is set (this step's gradients, or an
// earlier step's, were not finite) the step leaves the weights as they are:
// zero gradients, no decay, no step (the moments stay finite).
__global__ static void guard_kernel(float *g, size_t n, const int *sticky, cuda_adamw_hp *hp) {
    if (!*sticky) return;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) g[i] = 0.0f;
    if (i == 0) hp->k.decay = 1.0f, hp->k.neg_step_size = 0.0f;
}

// The kernels of one whole step: forward, backward, AdamW.
static void step_enqueue(hax_engine *e) {
    cu_impl *c = impl_of(e);
    size_t n = e->model->n_floats;
    engine_run_forward(e);
    engine_run_backward(e, c->ce_scale);
    cuda_check_finite(c->sticky, c->gr, n);
    if (n > 0) {
        guard_kernel<<<cu_blocks((long)n, 256), 256, 0, cu_stream()>>>(c->gr, n, c->sticky, c->hp);
        CUDA_LAUNCHED();
    }
    cuda_adamw_step(c->w, c->gr, c->am, c->av, n, c->hp);
}

// Enqueues the step of bd (b padded by pad_batch): prepare (uploads), the
// step's scalars (host copies ce_scale, hp; start recorded after them), then
// the graph of its shape (captured the first time: run as is, then recorded).
static void step_launch(hax_engine *e, const hax_batch *bd, const hax_batch *b, const hax_fwd_opts *o,
                        const float *ce_scale, const cuda_adamw_hp *hp, cudaEvent_t start) {
    cu_impl *c = impl_of(e);
    // sizes (a reallocation drops every graph), uploads the padded batch and
    // this step's hash matrices and candidates
    engine_run_prepare(e, bd, b, o);
    cuda_upload(c->ce_scale, ce_scale, sizeof(float));
    cuda_adamw_set(c->hp, hp);
    if (start) CUDA_CHECK(cudaEventRecord(start, cu_stream()));
    int g = 0;
    // the key: every host value a capture bakes in (sizes, the gate scale's
    // global_n_seq, the branch's model_len)
    while (g < c->n_graphs && (c->graphs[g].n != bd->n_tok || c->graphs[g].n_seq != bd->n_seq ||
                               c->graphs[g].global_n_seq != bd->global_n_seq ||
                               c->graphs[g].model_len != bd->model_len))
        g++;
    if (g < c->n_graphs) {
        cuda_graph_launch(c->graphs[g].exec);
        c->graph_launches++;
    } else {
        // First time at this shape: run it as is, then record it for next time.
        step_enqueue(e);
        if (c->n_graphs == CU_MAX_GRAPHS) graphs_free(c);
        cuda_graph_begin();
        step_enqueue(e);
        c->graphs[c->n_graphs].n = bd->n_tok;
        c->graphs[c->n_graphs].n_seq = bd->n_seq;
        c->graphs[c->n_graphs].global_n_seq = bd->global_n_seq;
        c->graphs[c->n_graphs].model_len = bd->model_len;
        c->graphs[c->n_graphs].exec = cuda_graph_end();
        c->n_graphs++;
    }
}

// The CE normaliser of a step: o->ce_count, else b's scored positions.
static double step_ce_count(const hax_batch *b, const hax_fwd_opts *o) {
    double ce_count = o->ce_count;
    if (ce_count <= 0) {
        ce_count = 0;
        for (int i = 0; i < b->n_tok; i++) ce_count += b->loss_mask ? b->loss_mask[i] != 0 : 1;
    }
    return ce_count;
}

static void cu_train_step(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_adamw *opt, double lr,
                          hax_fwd_result *r) {
    cu_impl *c = impl_of(e);
    hax_model *m = e->model;
    if (!c->resident) hax_die("engine_cuda_train_step: expected resident weights (push first), found none");
    pad_batch(&c->pad, &m->cfg, b);
    double ce_count = step_ce_count(b, o);
    c->ce_scale_host = hax_ce_grad_scale(m->cfg.precision == PREC_BF16_PURE, ce_count);
    opt->step++;
    cuda_adamw_hp_make(&c->hp_host, lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, opt->step);
    c->hp_host.bf16_pure = opt->bf16_pure;
    step_launch(e, &c->pad.b, b, o, &c->ce_scale_host, &c->hp_host, NULL);
    engine_run_collect(e, o, r);
    e->core->ce_count = ce_count;
    r->loss = ce_count > 0 ? r->ce_sum / ce_count : 0;
    r->total_loss = r->loss + m->cfg.gate_loss_weight * r->gate_loss;
}

// ---------------------------------------------------------------- asynchronous steps

static void slot_reserve_out(cu_slot *sl, int n_seq) {
    if (!sl->io) sl->io = (cu_step_io *)cuda_host_alloc(sizeof(cu_step_io));
    if (n_seq <= sl->cap_out && sl->correct) return;
    cuda_host_free(sl->correct), cuda_host_free(sl->count);
    sl->cap_out = n_seq > 1 ? n_seq : 1;
    sl->correct = (int *)cuda_host_alloc(sizeof(int) * sl->cap_out);
    sl->count = (int *)cuda_host_alloc(sizeof(int) * sl->cap_out);
}

static int cu_step_begin(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_adamw *opt, double lr,
                         int poison) {
    cu_impl *c = impl_of(e);
    hax_model *m = e->model;
    const hax_ops *ops = e->core->ops;
    if (!c->resident) hax_die("engine_cuda step_begin: expected resident weights (push first), found none");
    int ticket = c->next_ticket;
    cu_slot *sl = &c->slots[ticket % CU_SLOTS];
    if (sl->busy)
        hax_die("engine_cuda step_begin: expected at most %d steps in flight, found %d", CU_SLOTS,
                c->next_ticket - c->end_ticket + 1);
    // the slot's previous step has ended: its pinned buffers are free
    pad_batch(&sl->pad, &m->cfg, b);
    slot_reserve_out(sl, b->n_seq);
    cu_step_io *io = sl->io;
    sl->ce_count = step_ce_count(b, o);
    sl->n_seq = b->n_seq, sl->global_n_seq = b->global_n_seq;
    io->ce_scale = hax_ce_grad_scale(m->cfg.precision == PREC_BF16_PURE, sl->ce_count);
    opt->step++;
    cuda_adamw_hp_make(&io->hp, lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, opt->step);
    io->hp.bf16_pure = opt->bf16_pure;
    if (poison) {  // the test hook: this step counts as non-finite
        static const int one = 1;
        cuda_upload(c->sticky, &one, sizeof(int));
    }
    step_launch(e, &sl->pad.b, b, o, &io->ce_scale, &io->hp, sl->start);
    // the figures, as engine_run_collect downloads them, without waiting
    cuda_download(&io->ce_sum, e->core->loss, sizeof(double));
    cuda_download(sl->correct, e->core->correct, sizeof(int) * b->n_seq);
    cuda_download(sl->count, e->core->count, sizeof(int) * b->n_seq);
    if (m->cfg.sparse_mask)
        for (int l = 0; l < m->cfg.n_layers; l++)
            cuda_download(&io->gate[l], ops->sparse_gate_loss(e->core->L[l].sp), sizeof(double));
    cuda_download(&io->bad, c->sticky, sizeof(int));
    cuda_download(&io->err, cu_error_flag(), sizeof(int));
    CUDA_CHECK(cudaEventRecord(sl->end, cu_stream()));
    sl->busy = 1;
    e->core->ce_count = sl->ce_count;
    c->next_ticket++;
    return ticket;
}

static int cu_step_end(hax_engine *e, int ticket, hax_fwd_result *r, double *device_ms) {
    cu_impl *c = impl_of(e);
    cu_slot *sl = &c->slots[ticket % CU_SLOTS];
    if (ticket != c->end_ticket || !sl->busy)
        hax_die("engine_cuda step_end: expected ticket %d (steps end in order), found %d", c->end_ticket, ticket);
    CUDA_CHECK(cudaEventSynchronize(sl->end));
    if (sl->io->err) cuda_sync();  // dies with the kernels' message
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, sl->start, sl->end));
    if (device_ms) *device_ms = ms;
    const hax_model_config *cfg = &e->model->cfg;
    engine_result(cfg, sl->n_seq, sl->global_n_seq, sl->io->ce_sum, sl->correct, sl->count, sl->io->gate,
                  sl->ce_count, r);
    sl->busy = 0;
    c->end_ticket++;
    return !sl->io->bad;
}

static void *cu_host_alloc(size_t bytes) { return cuda_host_alloc(bytes); }
static void cu_host_free(void *p) { cuda_host_free(p); }

extern "C" void engine_cuda_train_step(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_adamw *opt,
                                       double lr, hax_fwd_result *r) {
    cu_train_step(e, b, o, opt, lr, r);
}

extern "C" int engine_cuda_graph_launches(const hax_engine *e) { return impl_of(e)->graph_launches; }

extern "C" const struct cu_sparse_state *engine_cuda_sparse(const hax_engine *e, int layer) {
    return (const struct cu_sparse_state *)e->core->L[layer].sp;
}

// ---------------------------------------------------------------- device-resident training

static void cu_push(hax_engine *e, const hax_adamw *opt) {
    cu_impl *c = impl_of(e);
    size_t bytes = sizeof(float) * e->model->n_floats;
    cuda_upload(c->w, e->model->data, bytes);
    if (opt) {
        cuda_upload(c->am, opt->m, bytes);
        cuda_upload(c->av, opt->v, bytes);
    }
    cuda_sync();
    c->resident = 1;
}

static void cu_pull(hax_engine *e, hax_adamw *opt) {
    cu_impl *c = impl_of(e);
    size_t bytes = sizeof(float) * e->model->n_floats;
    cuda_download(e->model->data, c->w, bytes);
    if (opt) {
        cuda_download(opt->m, c->am, bytes);
        cuda_download(opt->v, c->av, bytes);
    }
    cuda_sync();
}

static float *cu_grad_buffer(hax_engine *e) { return impl_of(e)->gr; }

static void cu_zero_grad(hax_engine *e) { cuda_zero(impl_of(e)->gr, sizeof(float) * e->model->n_floats); }

static int cu_grad_finite(hax_engine *e, int poison) {
    cu_impl *c = impl_of(e);
    static const float nan_value = NAN;
    if (poison) cuda_upload(c->gr, &nan_value, sizeof(float));
    cuda_zero(c->flag, sizeof(int));
    cuda_check_finite(c->flag, c->gr, e->model->n_floats);
    int bad = 0;
    cuda_download(&bad, c->flag, sizeof(int));
    cuda_sync();
    return !bad;
}

static void cu_adamw(hax_engine *e, hax_adamw *opt, double lr) {
    cu_impl *c = impl_of(e);
    opt->step++;
    cuda_adamw_hp_make(&c->hp_host, lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, opt->step);
    c->hp_host.bf16_pure = opt->bf16_pure;
    cuda_adamw_set(c->hp, &c->hp_host);
    cuda_adamw_step(c->w, c->gr, c->am, c->av, e->model->n_floats, c->hp);
}

static void *cu_stream_of(hax_engine *e) {
    (void)e;
    return cuda_stream_handle();
}

static const hax_device_ops cuda_dev_ops = {cu_push,      cu_pull,       cu_grad_buffer, cu_zero_grad,
                                            cu_grad_finite, cu_adamw,  cu_stream_of,
                                            cu_step_begin, cu_step_end, cu_host_alloc,  cu_host_free};

static hax_backend make_backend(void) {
    hax_backend b = {};
    b.name = "cuda", b.ops = hax_cuda_ops(), b.dev = &cuda_dev_ops, b.backward_sets_grads = 1;
    b.before_forward = cu_before_forward, b.after_backward = cu_after_backward;
    b.before_realloc = cu_before_realloc, b.destroy = cu_destroy;
    return b;
}

// ---------------------------------------------------------------- creation, registry

extern "C" int engine_cuda_supports(const hax_model_config *cfg, char *why, int why_len) {
    const char *no = NULL;
    int d = cfg->hidden_size, H = cfg->attn_heads;
    if (!arch_info(cfg->arch))
        no = "arch: expected one of the architecture table (src/model/arch.h)";
    else if (arch_info(cfg->arch)->attn_every && (H <= 0 || d % H != 0 || d / H > 128 || (d / H) % 2 != 0))
        no = "attn_heads: expected a head size hidden_size / attn_heads that is even and at most 128";
    else if ((cfg->sparse_mask & SPARSE_KEY_SELECTION) && cfg->state_size > 128)
        no = "state_size: expected at most 128 with key_selection";
    if (no && why) snprintf(why, why_len, "%s", no);
    return no == NULL;
}

extern "C" hax_engine *engine_cuda_create(hax_model *m, int max_tok, int max_seq, int max_len) {
    static const hax_backend cuda_backend = make_backend();
    char why[160];
    if (!engine_cuda_supports(&m->cfg, why, sizeof why)) hax_die("engine cuda: %s", why);
    cu_impl *c = (cu_impl *)xcalloc(1, sizeof *c);
    size_t bytes = sizeof(float) * m->n_floats;
    c->w = (float *)cuda_malloc(bytes);
    c->gr = (float *)cuda_malloc(bytes);
    c->host_g = (float *)xmalloc(bytes);
    c->am = (float *)cuda_malloc(bytes);
    c->av = (float *)cuda_malloc(bytes);
    cuda_zero(c->am, bytes);
    cuda_zero(c->av, bytes);
    c->hp = (cuda_adamw_hp *)cuda_malloc(sizeof(cuda_adamw_hp));
    c->flag = (int *)cuda_malloc(sizeof(int));
    c->ce_scale = (float *)cuda_malloc(sizeof(float));
    c->sticky = (int *)cuda_malloc(sizeof(int));
    cuda_zero(c->sticky, sizeof(int));
    for (int k = 0; k < CU_SLOTS; k++) {
        CUDA_CHECK(cudaEventCreate(&c->slots[k].start));
        CUDA_CHECK(cudaEventCreate(&c->slots[k].end));
    }
    return engine_new(&cuda_backend, m, c->w, c->gr, c, max_tok, max_seq, max_len);
}

// The registry's entry (src/engine/backends.c): a device is needed and the
// model must be one the kernels take; each rank takes local_rank modulo the
// visible devices.
static int cu_available(const hax_model_config *cfg, char *why, int why_len) {
    if (cuda_device_count() <= 0) {
        if (why) snprintf(why, why_len, "no CUDA device is visible");
        return 0;
    }
    return engine_cuda_supports(cfg, why, why_len);
}

static hax_engine *cu_create_for_rank(hax_model *m, int local_rank, int max_tok, int max_seq, int max_len) {
    cuda_init(local_rank % cuda_device_count());
    return engine_cuda_create(m, max_tok, max_seq, max_len);
}

extern "C" const hax_backend_factory hax_cuda_backend_factory = {"cuda", cu_available, cu_create_for_rank};
