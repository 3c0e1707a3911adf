// config_fields.h: the table of config fields shared by config.c (values,
// overrides), config_load.c (YAML) and config_print.c (printing,
// comparison). Internal to them.
#ifndef HAX_CONFIG_FIELDS_H
#define HAX_CONFIG_FIELDS_H

#include <stddef.h>

#include "src/config/config.h"

typedef enum {
    F_INT,     // int
    F_I64,     // int64_t
    F_U64,     // uint64_t
    F_FLOAT,   // float
    F_DOUBLE,  // double
    F_BOOL,    // int 0/1
    F_STR,     // char[size]
    F_ENUM,    // int (an enum), named by names[]
    F_INTLIST, // int[size], the count given by data.gen.levels
    F_PATTERN, // the sparse pattern: char[size] (sparse_arch), checked by model_config_set_sparse
} cfg_type;

typedef struct {
    const char *section, *name;
    cfg_type type;
    size_t off;                 // offset in hax_config
    size_t size;                // F_STR/F_PATTERN: buffer size; F_INTLIST: capacity
    double lo, hi;              // allowed range (numbers, list entries, string length)
    int lo_open;                // 1: lo itself is excluded (a positive float)
    const char *const *names;   // F_ENUM: value names, NULL-terminated
} cfg_field;

extern const cfg_field cfg_fields[];
extern const int cfg_n_fields;

// (config.c, for config_load.c) The field section.name or NULL; the names of
// a section's fields ("a, b, c") for messages; sets field f of c from its text
// (0, or -1 with the reason in err).
const cfg_field *cfg_find_field(const char *section, const char *name);
void cfg_field_names(const char *section, char *buf, size_t n);
int cfg_set_value(hax_config *c, const cfg_field *f, const char *s, char *err, int errlen);
// 1 when s is a section of the config (model, sparse, data, train, output).
int cfg_known_section(const char *s);

#endif
