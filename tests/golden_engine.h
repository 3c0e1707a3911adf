// golden_engine.h: a golden case (tests/golden/NAME.safetensors, read by
// src/engine/case.h) loaded with its model, its batch and a CPU engine, for
// the engine tests (test_model.c, test_precision_inside.c,
// test_train_engine.c).
#ifndef HAX_TESTS_GOLDEN_ENGINE_H
#define HAX_TESTS_GOLDEN_ENGINE_H

#include <stdio.h>

#include "src/engine/case.h"
#include "src/engine/engine.h"
#include "src/io/batch.h"
#include "src/io/safetensors.h"
#include "src/model/model.h"

typedef struct {
    hax_model m;
    hax_case c;
    hax_batch b;
    hax_engine *e;
} golden_engine;

// Loads tests/golden/NAME.safetensors (causal: in causal semantics), builds
// its model with the file's parameters and the case's batch, and a CPU
// engine for max_tok positions in max_seq sequences of up to max_len; with
// max_tok 0, for the case's batch.
static inline void golden_engine_load(golden_engine *x, const char *name, int causal, int max_tok, int max_seq,
                                      int max_len) {
    char path[512];
    snprintf(path, sizeof path, "tests/golden/%s.safetensors", name);
    st_file *f = st_open(path);
    case_load(&x->c, f);
    if (causal) x->c.cfg.semantics = SEMANTICS_CAUSAL;
    model_build(&x->m, &x->c.cfg);
    case_load_params(&x->m, f);
    st_close(f);
    case_batch(&x->c, &x->b);
    if (max_tok == 0) max_tok = x->b.n_tok, max_seq = x->b.n_seq, max_len = x->c.L;
    x->e = engine_cpu_create(&x->m, max_tok, max_seq, max_len);
}

static inline void golden_engine_free(golden_engine *x) {
    engine_free(x->e);
    hax_batch_free(&x->b);
    model_free(&x->m);
    case_free(&x->c);
}

#endif
