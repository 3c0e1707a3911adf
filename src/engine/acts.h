// acts.h: a table of named tensors (llm.c's fill_in_parameter_sizes, for
// activations): each entry is a pointer slot and a size in floats; the
// layout assigns the slots consecutive pieces of one buffer (or only counts
// the floats), every piece starting at a multiple of `align` floats.
#ifndef HAX_ENGINE_ACTS_H
#define HAX_ENGINE_ACTS_H

#include <stddef.h>

typedef struct {
    const char *name;
    float **slot;
    size_t n;
} hax_act;

typedef struct {
    hax_act *v;
    int n, cap;
} hax_act_table;

void acts_add(hax_act_table *t, const char *name, float **slot, size_t n);
// Floats the table takes; assigns the slots into base when base != NULL.
size_t acts_layout(const hax_act_table *t, float *base, int align);
void acts_clear(hax_act_table *t);
// acts_layout, then acts_clear: the floats the table took.
size_t acts_layout_clear(hax_act_table *t, float *base, int align);

#endif
