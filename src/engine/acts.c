// acts.c: see acts.h.
#include "src/engine/acts.h"

#include <stdlib.h>

#include "src/core/common.h"

void acts_add(hax_act_table *t, const char *name, float **slot, size_t n) {
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->v = xrealloc(t->v, sizeof(hax_act) * (size_t)t->cap);
    }
    t->v[t->n++] = (hax_act){name, slot, n};
}

size_t acts_layout(const hax_act_table *t, float *base, int align) {
    size_t off = 0, a = align > 0 ? (size_t)align : 1;
    for (int i = 0; i < t->n; i++) {
        if (base) *t->v[i].slot = base + off;
        off += (t->v[i].n + a - 1) / a * a;
    }
    return off;
}

void acts_clear(hax_act_table *t) {
    free(t->v);
    t->v = NULL;
    t->n = t->cap = 0;
}

size_t acts_layout_clear(hax_act_table *t, float *base, int align) {
    size_t n = acts_layout(t, base, align);
    acts_clear(t);
    return n;
}
