// backends.c: the backend registry of engine.h. The CPU backend is always
// built; the CUDA one where the build defines HAX_CUDA (nvcc found), whose
// factory cuda/engine/engine.cu defines. This is the one place that knows
// which backends a build has: src never includes cuda/.
#include <stdio.h>
#include <string.h>

#include "src/core/common.h"
#include "src/engine/internal.h"

static int cpu_available(const hax_model_config *cfg, char *why, int why_len) {
    (void)cfg, (void)why, (void)why_len;
    return 1;
}

static hax_engine *cpu_create(hax_model *m, int local_rank, int max_tok, int max_seq, int max_len) {
    (void)local_rank;
    return engine_cpu_create(m, max_tok, max_seq, max_len);
}

static const hax_backend_factory cpu_factory = {"cpu", cpu_available, cpu_create};

#ifdef HAX_CUDA
extern const hax_backend_factory hax_cuda_backend_factory;
#endif

static const hax_backend_factory *find(const char *name) {
    if (!strcmp(name, "cpu")) return &cpu_factory;
#ifdef HAX_CUDA
    if (!strcmp(name, hax_cuda_backend_factory.name)) return &hax_cuda_backend_factory;
#endif
    return NULL;
}

int engine_backend_available(const char *name, const hax_model_config *cfg, char *why, int why_len) {
    const hax_backend_factory *f = find(name);
    if (!f) {
        if (why) snprintf(why, (size_t)why_len, "this build has no %s backend (CUDA needs nvcc at build time)", name);
        return 0;
    }
    return f->available(cfg, why, why_len);
}

hax_engine *engine_create(const char *name, hax_model *m, int local_rank, int max_tok, int max_seq, int max_len) {
    const hax_backend_factory *f = find(name);
    if (!f) hax_die("engine: expected a backend this build has (cpu%s), found %s",
#ifdef HAX_CUDA
                    ", cuda",
#else
                    "",
#endif
                    name);
    return f->create(m, local_rank, max_tok, max_seq, max_len);
}
