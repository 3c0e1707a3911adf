// model_config.h: everything that decides a model's shape and semantics.
// Filled from a training config (src/config/config.c) or from a golden file's
// metadata (hax-check); read by the parameter table, the ops and the loop.
#ifndef HAX_MODEL_CONFIG_H
#define HAX_MODEL_CONFIG_H

#include "src/model/arch.h"             // hax_arch and the table of architectures
#include "src/model/sparse_patterns.h"  // the components of a sparse pattern (SPARSE_* bits)


typedef enum {
    SEMANTICS_REFERENCE = 0,  // the reference: sequence-wide statistics counting pads, empty rows uniform over L
    SEMANTICS_CAUSAL = 1,     // the paper: causal per-token statistics, empty rows contribute nothing
} hax_semantics;

// The numeric regime of a run (train.precision; README "Precision"):
//   PREC_FP32      float32 everywhere (the default; hax's engine before issue 10)
//   PREC_BF16      mixed: fp32 weights, AdamW state and elementwise work, GEMM
//                  inputs rounded to bf16 (fp32 accumulation), emulated
//   PREC_BF16_PURE the reference's regime (MODEL.md §0 "Precision", §8.5): every
//                  tensor the reference materialises rounded to bf16, emulated by
//                  rounding fp32 values to nearest-even where it rounds
typedef enum { PREC_FP32 = 0, PREC_BF16 = 1, PREC_BF16_PURE = 2 } hax_precision;

typedef struct hax_model_config {
    hax_arch arch;
    int vocab_size;        // V (100)
    int hidden_size;       // d
    int n_layers;
    int state_size;        // N
    int intermediate_size; // E = expand * d
    int conv_kernel;       // K (4)
    int time_step_rank;    // R (Mamba)
    int n_heads;           // H (Mamba2)
    int head_dim;          // P (Mamba2); E = H * P
    float norm_eps;        // 1e-5
    float initializer_range;
    int rescale_prenorm_residual;  // Mamba2: out_proj init divided by sqrt(n_layers)
    float time_step_min, time_step_max, time_step_floor;

    // Samba: attention at odd layers (1, 3, ...), Mamba mixers at even ones.
    int attn_heads;        // 4
    int attn_kv_heads;     // 4 (must equal attn_heads)
    int window_size;       // 64: keys t-window+1 .. t
    float rope_theta;      // 10000
    int mlp_hidden;        // GatedMLP width (256)

    // The sparse branch (Enhanced Mamba / Mamba2); sparse_mask == 0: none.
    char sparse_arch[64];  // e.g. "sign_bin_lsh+key_selection"
    unsigned sparse_mask;  // SPARSE_* bits
    int sparse_parts;      // number of '+'-separated parts
    int sparse_keys;       // k in total (64)
    int k_c;               // keys per component = sparse_keys / sparse_parts
    int num_hash;          // h sign bits (8)
    int data_max_length;   // 2048: the dilation is data_max_length / k_c
    float gate_loss_weight;// alpha (0.1)
    hax_semantics semantics;
    // Not a model field: the engine's copy of train.precision (config_finalize
    // sets it; a config built otherwise, hax-check's, stays PREC_FP32).
    hax_precision precision;
} hax_model_config;

// Parses a sparse pattern name ("sliding_window+sink", ...; "" or "none" for
// none) into cfg->sparse_arch/sparse_mask/sparse_parts/k_c. Returns 0, or -1
// with a message in err (what was expected, what was found).
int model_config_set_sparse(hax_model_config *cfg, const char *pattern, char *err, int errlen);

// Checks sizes and combinations; returns 0 or -1 with a message in err.
int model_config_validate(const hax_model_config *cfg, char *err, int errlen);

// The reference configs of Table 1 (mamba.json, mamba2.json, *_double_size.json,
// samba.json) with the paper's sparse settings. pattern may be NULL.
void model_config_reference(hax_model_config *cfg, hax_arch arch, int double_size, const char *pattern);

#endif
