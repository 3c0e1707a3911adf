// test_train_engine.c: the outputs hax-train's evaluation reads (hidden
// states, logits, hash matrices) come through the shared engine
// (engine_hidden / engine_logits / engine_hash): on the CPU backend they are
// the CPU engine's own buffers; on a backend whose memory is not the host's
// (here the CPU's op table marked so, as CUDA's is) they are host copies of
// the same values.
#include <string.h>

#include "src/core/common.h"
#include "src/engine/engine.h"
#include "src/engine/internal.h"
#include "src/engine/case.h"
#include "src/model/model.h"
#include "src/io/safetensors.h"
#include "golden_engine.h"
#include "test.h"

#define CASE "mamba_sign_bin_lsh__key_selection"  // tests/golden/CASE.safetensors

// An evaluation forward, as train.c's evaluate runs it (fixed hash draw 0).
static void eval_forward(golden_engine *x) {
    hax_fwd_opts o = {.train = 0, .seed = 3, .step = 0, .ce_count = 0, .inject = NULL};
    hax_fwd_result r;
    engine_forward(x->e, &x->b, &o, &r);
}

static void test_cpu_outputs_through_table(void) {
    golden_engine x;
    golden_engine_load(&x, CASE, 0, 0, 0, 0);  // an engine for the case's batch
    eval_forward(&x);
    CHECK(x.e->be->ops->host, "the CPU backend's memory is the host's");
    CHECK(engine_hidden(x.e) == engine_cpu_hidden(x.e), "engine_hidden is the CPU hidden state");
    CHECK(engine_logits(x.e) == engine_cpu_logits(x.e), "engine_logits is the CPU logits");
    CHECK(engine_hidden(x.e) != engine_logits(x.e), "hidden and logits are different buffers");
    int lsh_layers = 0;
    for (int l = 0; l < x.m.cfg.n_layers; l++) {
        CHECK(engine_hash(x.e, l) == engine_cpu_hash(x.e, l), "layer %d: engine_hash is the CPU hash matrix", l);
        lsh_layers += engine_hash(x.e, l) != NULL;
    }
    CHECK(lsh_layers > 0, "an LSH case draws hash matrices in evaluation");
    golden_engine_free(&x);
}

// The CPU kernels behind a table that says its memory is not the host's: the
// outputs are copies (other buffers) of the same numbers.
static void test_device_style_outputs(void) {
    golden_engine x;
    golden_engine_load(&x, CASE, 0, 0, 0, 0);  // an engine for the case's batch
    eval_forward(&x);
    hax_ops ops = *hax_cpu_ops();
    ops.name = "copy", ops.host = 0;
    hax_backend be = {.name = "copy", .ops = &ops};
    hax_engine *e = engine_new(&be, &x.m, x.m.data, x.m.grad, NULL, x.b.n_tok, x.b.n_seq, x.c.L);
    hax_fwd_opts o = {.train = 0, .seed = 3, .step = 0, .ce_count = 0, .inject = NULL};
    hax_fwd_result r;
    engine_forward(e, &x.b, &o, &r);
    size_t nd = (size_t)x.b.n_tok * x.m.cfg.hidden_size, nv = (size_t)x.b.n_tok * x.m.cfg.vocab_size;
    CHECK(engine_hidden(e) != engine_cpu_hidden(x.e), "engine_hidden is a host copy");
    CHECK(!memcmp(engine_hidden(e), engine_cpu_hidden(x.e), sizeof(float) * nd), "of the same hidden state");
    CHECK(engine_logits(e) != engine_cpu_logits(x.e), "engine_logits is a host copy");
    CHECK(!memcmp(engine_logits(e), engine_cpu_logits(x.e), sizeof(float) * nv), "of the same logits");
    size_t nh = (size_t)x.m.cfg.state_size * x.m.cfg.num_hash;
    for (int l = 0; l < x.m.cfg.n_layers; l++)
        CHECK(engine_hash(e, l) && !memcmp(engine_hash(e, l), engine_cpu_hash(x.e, l), sizeof(float) * nh),
              "layer %d: the same hash matrix", l);
    engine_free(e);
    golden_engine_free(&x);
}

int main(void) {
    RUN(test_cpu_outputs_through_table);
    RUN(test_device_style_outputs);
    return test_summary();
}
