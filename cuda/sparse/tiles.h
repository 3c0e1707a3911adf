// cuda/sparse/tiles.h: the shapes and the two index rules of the sparse
// branch's tiled kernels (issue 11): dK/dV by dense tiles and dQ by staged
// key rounds (tile_bwd_kv_kernel, tile_bwd_q_kernel in
// cuda/sparse/attn_gather.cu, HAX_SPARSE_TILES) and key selection's targets
// from staged query rows (ks_targets_tile_kernel, cuda/sparse/ks_rank.cu,
// HAX_KS_TARGETS=tile). Plain C as well as CUDA, so
// that tests/test_sparse_tiles.c runs the same rules on the CPU in a model of
// each kernel's rounds.
#ifndef HAX_CU_SPARSE_TILES_H
#define HAX_CU_SPARSE_TILES_H

#include <limits.h>

#ifdef __CUDACC__
#define SP_TILE_FN __host__ __device__ static inline
#else
#define SP_TILE_FN static inline
#endif

// dK/dV: a block's keys and the query rows of a round (dQ: the key rows of a
// round, TILE_K, staged TILE_E and TILE_N wide); the d score and P
// tiles' row stride (4 floats of padding, so the scatter's writes of one key,
// rows from all lanes, meet at most 4 to a bank, and a row stays 16-byte
// aligned); the staged dattn and Q widths (E <= 128, N <= 32); the keys each of
// the 8 warps scatters.
#define TILE_K 64
#define TILE_Q 64
#define TILE_LD (TILE_K + 4)
#define TILE_E 128
#define TILE_N 32
#define TILE_WARPS 8
#define TILE_KEYS_W (TILE_K / TILE_WARPS)

// A key's next holder after a window of 32 list entries of which the first n
// fell in the round (holders ascending): the first entry not taken (g_n, the
// holder of lane n, INT_MAX past the list's end); after a whole window (n =
// 32) the entry after it is not loaded, so only a lower bound, the last
// holder + 1. The round's start, the smallest next holder of the block's keys,
// is then at most every key's true next holder.
SP_TILE_FN int tile_next_holder(int n, int g_n, int g_last) { return n < 32 ? g_n : g_last + 1; }

// Key selection's targets: candidates (a warp each) per block.
#define KS_TG_WARPS 8

// The row of a tile [t0, t0 + 32) that lane `lane` of the candidate at I
// takes: the one t = I + lane (mod 32), as in the loop t = I + lane, I + lane
// + 32, ... (each tile holds exactly one of them; rows t < I add nothing).
SP_TILE_FN int tile_lane_row(int I, int t0, int lane) { return t0 + (((I - t0) % 32 + 32 + lane) % 32); }

#endif
