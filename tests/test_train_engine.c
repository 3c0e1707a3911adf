// test_train_engine.c: the outputs hax-train's evaluation reads (hidden
// states, logits, hash matrices) come through the backend table
// (engine_hidden / engine_logits / engine_hash), so a CUDA backend can
// provide them: on the CPU backend they are the CPU engine's own buffers, and
// a table whose accessors return other buffers is what the engine_* calls
// return.
#include "src/core/common.h"
#include "src/engine/engine.h"
#include "src/engine/case.h"
#include "src/model/model.h"
#include "src/io/safetensors.h"
#include "test.h"

#define CASE "tests/golden/mamba_sign_bin_lsh__key_selection.safetensors"

typedef struct {
    hax_model m;
    hax_case c;
    hax_batch b;
    hax_engine *e;
} loaded;

static void load(loaded *x) {
    st_file *f = st_open(CASE);
    case_load(&x->c, f);
    model_build(&x->m, &x->c.cfg);
    case_load_params(&x->m, f);
    st_close(f);
    case_batch(&x->c, &x->b);
    x->e = engine_cpu_create(&x->m, x->b.n_tok, x->b.n_seq, x->c.L);
}

static void unload(loaded *x) {
    engine_free(x->e);
    hax_batch_free(&x->b);
    model_free(&x->m);
    case_free(&x->c);
}

// An evaluation forward, as train.c's evaluate runs it (fixed hash draw 0).
static void eval_forward(loaded *x) {
    hax_fwd_opts o = {.train = 0, .seed = 3, .step = 0, .ce_count = 0, .inject = NULL};
    hax_fwd_result r;
    engine_forward(x->e, &x->b, &o, &r);
}

static void test_cpu_outputs_through_table(void) {
    loaded x;
    load(&x);
    eval_forward(&x);
    CHECK(x.e->be->hidden && x.e->be->logits && x.e->be->hash, "the CPU table fills every output accessor");
    CHECK(engine_hidden(x.e) == engine_cpu_hidden(x.e), "engine_hidden is the CPU hidden state");
    CHECK(engine_logits(x.e) == engine_cpu_logits(x.e), "engine_logits is the CPU logits");
    CHECK(engine_hidden(x.e) != engine_logits(x.e), "hidden and logits are different buffers");
    int lsh_layers = 0;
    for (int l = 0; l < x.m.cfg.n_layers; l++) {
        CHECK(engine_hash(x.e, l) == engine_cpu_hash(x.e, l), "layer %d: engine_hash is the CPU hash matrix", l);
        lsh_layers += engine_hash(x.e, l) != NULL;
    }
    CHECK(lsh_layers > 0, "an LSH case draws hash matrices in evaluation");
    unload(&x);
}

// A backend table of our own: the engine_* accessors return what it says,
// not the CPU engine's buffers.
static float fake_hidden[4], fake_logits[4], fake_hash[4];
static const float *other_hidden(hax_engine *e) { (void)e; return fake_hidden; }
static const float *other_logits(hax_engine *e) { (void)e; return fake_logits; }
static const float *other_hash(hax_engine *e, int layer) { (void)e; return layer == 0 ? fake_hash : NULL; }

static void test_other_table(void) {
    loaded x;
    load(&x);
    eval_forward(&x);
    const hax_backend *cpu = x.e->be;
    hax_backend other = *cpu;
    other.name = "other";
    other.hidden = other_hidden;
    other.logits = other_logits;
    other.hash = other_hash;
    x.e->be = &other;
    CHECK(engine_hidden(x.e) == fake_hidden, "engine_hidden dispatches through the table");
    CHECK(engine_logits(x.e) == fake_logits, "engine_logits dispatches through the table");
    CHECK(engine_hash(x.e, 0) == fake_hash && engine_hash(x.e, 1) == NULL, "engine_hash dispatches through the table");
    x.e->be = cpu;  // the CPU destroy frees the CPU state
    unload(&x);
}

int main(void) {
    RUN(test_cpu_outputs_through_table);
    RUN(test_other_table);
    return test_summary();
}
