// sparse_patterns.h: the one table of sparse-pattern components. A pattern is
// a '+'-joined set of components ("sliding_window+sink"); each component is
// one row here: its name in configs, its bit in hax_model_config.sparse_mask,
// its label in Table 1 / hax-aggregate, its requirements and its share of a
// query's list capacity. Config parsing, model_config_validate, both
// backends' config checks, sparse_row_cap and the aggregator's labels all
// read this table.
//
// The rules that list a query's allowed keys of a component live with the
// backends, in arrays indexed by the same hax_sparse_component:
// src/sparse/masks.c (CPU) and cuda/sparse/internal.cuh (CUDA, checked at
// compile time). Adding a component: docs/HOWTO.md.
#ifndef HAX_SPARSE_PATTERNS_H
#define HAX_SPARSE_PATTERNS_H

#ifdef __cplusplus
extern "C" {
#endif

struct hax_model_config;

// The components, in table order (a pattern's canonical name lists its
// components in this order).
typedef enum {
    SP_SLIDING_WINDOW,
    SP_SINK,
    SP_DILATED,
    SP_SIGN_BIN_LSH,
    SP_ARGMAX_LSH,
    SP_KEY_SELECTION,
    SP_FULL,
    SP_N_COMPONENTS
} hax_sparse_component;

// A component's bit in sparse_mask: 1 << its index.
enum {
    SPARSE_SLIDING_WINDOW = 1u << SP_SLIDING_WINDOW,
    SPARSE_SINK = 1u << SP_SINK,
    SPARSE_DILATED = 1u << SP_DILATED,
    SPARSE_SIGN_BIN_LSH = 1u << SP_SIGN_BIN_LSH,
    SPARSE_ARGMAX_LSH = 1u << SP_ARGMAX_LSH,
    SPARSE_KEY_SELECTION = 1u << SP_KEY_SELECTION,
    SPARSE_FULL = 1u << SP_FULL,  // dense causal attention; never combined with others
};

// Requirements and properties of a component (flags of its row).
enum {
    SPF_ALONE = 1 << 0,     // never combined with another component
    SPF_LSH = 1 << 1,       // an LSH kind: at most one per pattern; needs a hash matrix, hash_bits 1..30
    SPF_KS_WEIGHTS = 1 << 2,// needs the key-selection weights (dx_proj_*), and candidates in training
    SPF_DILATION = 1 << 3,  // needs data_max_length >= k_c (a dilation data_max_length / k_c >= 1)
    SPF_DENSE = 1 << 4,     // keeps no key lists (every j <= t): no list rule in the backends
};

typedef struct {
    const char *name;   // in a pattern string
    unsigned bit;       // SPARSE_*
    const char *label;  // Table 1 / hax-aggregate label ("SW", "D", ...)
    unsigned flags;     // SPF_*
    // Its share of a query's list capacity for sequences of up to max_len
    // positions (an upper bound of the keys it adds); 0 for a dense component.
    int (*row_share)(const struct hax_model_config *cfg, int max_len);
} hax_sparse_pattern;

extern const hax_sparse_pattern sparse_patterns[SP_N_COMPONENTS];

// Whole patterns with a label of their own in Table 1 ("A", "HAX"); other
// patterns are labelled by their components' labels joined with '+'.
typedef struct {
    unsigned mask;
    const char *label;
} hax_sparse_named;
extern const hax_sparse_named sparse_named_patterns[];
extern const int sparse_n_named_patterns;

// Parses "sliding_window+sink" ("" or "none": mask 0) into its mask and
// number of parts. Refuses, with one line in err (what was expected, what was
// found), an empty part ('+', 'a+', '+a', 'a++b'), an unknown or repeated
// component, an SPF_ALONE component with others, two LSH kinds. Returns 0 or -1.
int sparse_pattern_parse(const char *pattern, unsigned *mask, int *parts, char *err, int errlen);

// The canonical name of mask (components in table order; "none" for 0).
void sparse_pattern_name(unsigned mask, char *buf, int len);

// The Table 1 label of mask ("SW+D", "A", "HAX"; "" for 0).
void sparse_pattern_label(unsigned mask, char *buf, int len);

// The union of the bits of the components with any of the flags SPF_*.
unsigned sparse_pattern_bits(unsigned flags);

// Whether mask has a component with any of the flags SPF_*.
int sparse_pattern_has(unsigned mask, unsigned flags);

// The run-time requirements of cfg's pattern that the backends check before
// allocating (k_c >= 1, hash_bits, the dilation, one LSH kind, the alone
// components). Returns 0, or -1 with one line in err (no prefix).
int sparse_pattern_check(const struct hax_model_config *cfg, char *err, int errlen);

// The components' per-row capacity of cfg's pattern for sequences of up to
// max_len positions: the sum of the components' row_share, at least 1 (a
// dense pattern keeps no lists). Both backends size their lists with it.
int sparse_row_cap(const struct hax_model_config *cfg, int max_len);

#ifdef __cplusplus
}
#endif

#endif
