// cuda/engine/internal.h: what the CUDA backend's two files share: the shared
// engine's internals (C linkage) and the op table of ops.cu.
#ifndef HAX_CU_ENGINE_INTERNAL_H
#define HAX_CU_ENGINE_INTERNAL_H

#ifdef __cplusplus
extern "C" {
#endif

#include "src/engine/internal.h"

// The CUDA op table (cuda/engine/ops.cu).
const hax_ops *hax_cuda_ops(void);

#ifdef __cplusplus
}
#endif

#endif
