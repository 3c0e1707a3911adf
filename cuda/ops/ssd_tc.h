// cuda/ops/ssd_tc.h: where the tensor-core path of the SSD's chunk products
// (HAX_SSD_MMA=tc, ssd_mm_tc in cuda/ops/ssd_chunk.cuh) finds each value of an
// mma.m16n8k8 (tf32 operands, f32 accumulators). Plain C as well as CUDA, so
// that tests/test_ssd_mma.c runs this same index code on the CPU against a
// model of the instruction.
//
// PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32 operands and .f32
// accumulators, lane l of the warp, g = l >> 2 (groupID), t = l & 3
// (threadID_in_group):
//   A, 16 × 8 (row):   a0 (g, t)     a1 (g + 8, t)  a2 (g, t + 4)  a3 (g + 8, t + 4)
//   B,  8 × 8 (col):   b0 (k t, n g) b1 (k t + 4, n g)
//   C, D, 16 × 8:      c0 (g, 2t)    c1 (g, 2t + 1) c2 (g + 8, 2t) c3 (g + 8, 2t + 1)
//
// An output of MT × NT such tiles (16 rows × 8 columns each) is shared by a
// block's 8 warps: warp w takes tiles q = w, w + 8, w + 16, ... (slot s holds
// q = w + 8s), tile q at tile row q % MT and tile column q / MT. With MT
// dividing 8 every tile of a warp lies in the same 16 rows, so one A fragment
// per k step serves all of them.
//
// The k order: a product runs KS steps of 8 over K' = 8·KS values of k (K'
// = the operands' padded width, or SSD_Q for sums over positions: the tiles
// are zero beyond the true K), and slot c of step s (the fragment's column c
// of A, row c of B) takes k = ssd_tc_k(KS, s, c), a permutation of 0..K'-1
// (any order gives the same product; only the summation order changes). It
// spreads a step's k so that the lanes' loads fall on distinct banks: with
// the tiles' leading dimensions (≡ 1 mod 32, or 17) a lane's word address is
// g·ld + k or k·ld + g, and k = s + 8t (+ 32 for slots 4..7) at KS 8, s + 8t
// + 4h at KS 4 put the 32 lanes of a load on 32 banks; at KS 2 (a 16-wide
// operand) two lanes share a bank. In natural order (k = 8s + c) the same
// loads would take up to 4 wavefronts (tests/test_ssd_mma.c counts them).
#ifndef HAX_CU_SSD_TC_H
#define HAX_CU_SSD_TC_H

#ifdef __CUDACC__
#define SSD_TC_FN __host__ __device__ static inline
#else
#define SSD_TC_FN static inline
#endif

#define SSD_TC_WARPS 8                                                         // warps of a block (SSD_THREADS / 32)
#define SSD_TC_SLOTS(MT, NT) (((MT) * (NT) + SSD_TC_WARPS - 1) / SSD_TC_WARPS)  // tiles per warp, at most

// Row and column within the A tile of register r (0..3) of lane l.
SSD_TC_FN int ssd_tc_a_row(int l, int r) { return (l >> 2) + 8 * (r & 1); }
SSD_TC_FN int ssd_tc_a_col(int l, int r) { return (l & 3) + 4 * (r >> 1); }
// Row (k) of register r (0..1) of lane l in the B tile, and its column.
SSD_TC_FN int ssd_tc_b_row(int l, int r) { return (l & 3) + 4 * r; }
SSD_TC_FN int ssd_tc_b_col(int l) { return l >> 2; }
// Row and column within the C/D tile of accumulator r (0..3) of lane l.
SSD_TC_FN int ssd_tc_c_row(int l, int r) { return (l >> 2) + 8 * (r >> 1); }
SSD_TC_FN int ssd_tc_c_col(int l, int r) { return 2 * (l & 3) + (r & 1); }

// k of slot c (0..7) of step s (0..KS-1), KS = 1, 2, 4 or 8; t = c % 4, h = c / 4.
SSD_TC_FN int ssd_tc_k(int KS, int s, int c) {
    int t = c & 3, h = c >> 2;
    return KS >= 8 ? s + 8 * t + 32 * h : s + KS * h + 2 * KS * t;
}

// Warp w's tile in slot s of an MT × NT output: 1 and its tile row, column;
// 0 when the warp has no tile there.
SSD_TC_FN int ssd_tc_tile(int MT, int NT, int w, int s, int *mt, int *nt) {
    int q = w + SSD_TC_WARPS * s;
    if (q >= MT * NT) return 0;
    *mt = q % MT, *nt = q / MT;
    return 1;
}

// Word offsets of lane l's A fragment (tile row mt, step s of KS), where
// A(i, k) = A[i·ai + k·ak], and of its B fragment (tile column nt), where
// B(k, j) = Bm[k·bk + j·bj].
SSD_TC_FN int ssd_tc_a_at(int ai, int ak, int mt, int KS, int s, int l, int r) {
    return (16 * mt + ssd_tc_a_row(l, r)) * ai + ssd_tc_k(KS, s, ssd_tc_a_col(l, r)) * ak;
}
SSD_TC_FN int ssd_tc_b_at(int bk, int bj, int nt, int KS, int s, int l, int r) {
    return ssd_tc_k(KS, s, ssd_tc_b_row(l, r)) * bk + (8 * nt + ssd_tc_b_col(l)) * bj;
}

SSD_TC_FN void ssd_tc_load_a(float a[4], const float *A, int ai, int ak, int mt, int KS, int s, int l) {
    for (int r = 0; r < 4; r++) a[r] = A[ssd_tc_a_at(ai, ak, mt, KS, s, l, r)];
}
SSD_TC_FN void ssd_tc_load_b(float b[2], const float *Bm, int bk, int bj, int nt, int KS, int s, int l) {
    for (int r = 0; r < 2; r++) b[r] = Bm[ssd_tc_b_at(bk, bj, nt, KS, s, l, r)];
}

#endif
