// probe.c: read-only views of the last forward's activations for any backend
// (engine.h), for hax-check's layer-by-layer comparison. Nothing here runs
// an op or changes a buffer: it copies what engine.c's forward left.
#include "src/core/common.h"
#include "src/engine/internal.h"

void engine_block_input(hax_engine *e, int layer, float *out, int n_tok) {
    eng_core *c = e->core;
    const hax_model_config *cfg = &e->model->cfg;
    if (!c->run) hax_die("engine_block_input: called before engine_forward");
    if (layer < 0 || layer > cfg->n_layers || n_tok < 0 || n_tok > c->run->n_tok)
        hax_die("engine_block_input: expected layer 0..%d and at most %d rows, found layer %d, %d rows",
                cfg->n_layers, c->run->n_tok, layer, n_tok);
    // the forward writes block l's output into the next block's input, the
    // last one's into hlast (norm_f's input); backward only reads them
    const float *src = layer < cfg->n_layers ? c->L[layer].hin : c->hlast;
    c->ops->download(out, src, sizeof(float) * (size_t)n_tok * cfg->hidden_size);
    c->ops->sync();
}
