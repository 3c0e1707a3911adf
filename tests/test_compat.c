// test_compat.c: numpy's legacy MT19937 stream, `--compat reference`
// generation (structure, order, uniqueness, the redraw path, exact duplicate
// detection under forced hash collisions) and the reference text layout.
//
//   test_compat                       the unit tests
//   test_compat --dump DIR C K V NTRAIN NTEST SEED [MINC MINK]
//                                     writes the reference text files (for
//                                     tests/test_compat.sh, compared with numpy)
//   test_compat --bench [DIR]         times the default dataset (no-op sink;
//                                     with DIR, also its text layout there)
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/core/common.h"
#include "data-gen/compat.h"
#include "data-gen/mt19937.h"
#include "test.h"
#include "data-gen/text_format.h"

// ---- MT19937 and numpy's draws ----

static void test_mt_known_values(void) {
    mt19937 m;
    mt_seed(&m, 5489);  // the C++ std::mt19937 default seed
    uint32_t first[5] = {3499211612u, 581869302u, 3890346734u, 3586334585u, 545404204u};
    for (int i = 0; i < 5; i++) {
        uint32_t v = mt_next(&m);
        CHECK(v == first[i], "output %d: %u, expected %u", i, v, first[i]);
    }
    for (int i = 5; i < 9999; i++) mt_next(&m);
    uint32_t v = mt_next(&m);
    CHECK(v == 4123659995u, "10000th output %u, expected 4123659995", v);
    CHECK(mt_offset(&m) == 10000, "offset %llu", (unsigned long long)mt_offset(&m));
    // np.random.RandomState(1).randint(0, 2**32, 4, dtype=np.uint32)
    mt_seed(&m, 1);
    uint32_t np1[4] = {1791095845u, 4282876139u, 3093770124u, 4005303368u};
    for (int i = 0; i < 4; i++) {
        v = mt_next(&m);
        CHECK(v == np1[i], "seed 1 output %d: %u, expected %u", i, v, np1[i]);
    }
}

// Values printed by numpy 1.24 (np.random.seed; randint; permutation).
static void test_numpy_draws(void) {
    mt19937 m;
    int32_t out[16];
    mt_seed(&m, 1);
    int32_t ri[12] = {5, 8, 9, 5, 0, 0, 1, 7, 6, 9, 2, 4};  // randint(0, 10, 12): rejection path
    mt_randint(&m, 10, 12, out);
    for (int i = 0; i < 12; i++) CHECK(out[i] == ri[i], "randint[%d] %d, expected %d", i, out[i], ri[i]);
    int32_t p7[7] = {1, 4, 3, 0, 2, 5, 6};
    mt_permutation(&m, 7, out);
    for (int i = 0; i < 7; i++) CHECK(out[i] == p7[i], "permutation(7)[%d] %d, expected %d", i, out[i], p7[i]);
    int32_t p16[16] = {14, 5, 3, 15, 8, 0, 6, 10, 1, 9, 11, 7, 4, 2, 13, 12};
    mt_permutation(&m, 16, out);
    for (int i = 0; i < 16; i++) CHECK(out[i] == p16[i], "permutation(16)[%d] %d, expected %d", i, out[i], p16[i]);
    mt_seed(&m, 4294967295u);
    int32_t r16[6] = {3, 2, 12, 7, 4, 0};
    mt_randint(&m, 16, 6, out);
    for (int i = 0; i < 6; i++) CHECK(out[i] == r16[i], "seed 2^32-1 randint[%d] %d, expected %d", i, out[i], r16[i]);
    CHECK(mt_offset(&m) == 6, "a power-of-two range draws one word per value, offset %llu",
          (unsigned long long)mt_offset(&m));
    int32_t p5[5] = {4, 3, 0, 1, 2};
    mt_permutation(&m, 5, out);
    for (int i = 0; i < 5; i++) CHECK(out[i] == p5[i], "permutation(5)[%d] %d, expected %d", i, out[i], p5[i]);
    uint64_t at = mt_offset(&m);
    mt_randint(&m, 1, 4, out);
    mt_permutation(&m, 1, out);
    CHECK(mt_offset(&m) == at, "randint(0, 1) and permutation(1) draw nothing");
}

static void test_mt_skip(void) {
    mt19937 a, b;
    mt_seed(&a, 7);
    mt_seed(&b, 7);
    uint64_t targets[4] = {0, 5, 623 + 624, 3 * 624 + 100};
    for (int t = 0; t < 4; t++) {
        while (mt_offset(&a) < targets[t]) mt_next(&a);
        mt_skip_to(&b, targets[t]);
        CHECK(mt_offset(&b) == targets[t], "skip to %llu: at %llu", (unsigned long long)targets[t],
              (unsigned long long)mt_offset(&b));
        uint32_t x = mt_next(&a), y = mt_next(&b);
        CHECK(x == y, "after skip to %llu: %u vs %u", (unsigned long long)targets[t], x, y);
    }
}

static void test_permutation_uniform(void) {
    // Every one of the 24 orders of 4 should come up about equally often.
    mt19937 m;
    mt_seed(&m, 11);
    int counts[256] = {0};
    int32_t p[4];
    for (int r = 0; r < 24000; r++) {
        mt_permutation(&m, 4, p);
        int seen = 0, code = 0;
        for (int i = 0; i < 4; i++) {
            seen |= 1 << p[i];
            code = code * 4 + p[i];
        }
        CHECK(seen == 15, "not a permutation");
        counts[code]++;
    }
    int distinct = 0, lo = 1 << 30, hi = 0;
    for (int c = 0; c < 256; c++)
        if (counts[c]) {
            distinct++;
            if (counts[c] < lo) lo = counts[c];
            if (counts[c] > hi) hi = counts[c];
        }
    CHECK(distinct == 24 && lo > 800 && hi < 1200, "%d orders, counts %d..%d", distinct, lo, hi);
}

// ---- generation ----

typedef struct {
    int64_t n;
    int32_t *tok;  // all samples, each padded to pad_len
    int *len, *split, *nc, *nk;
    int64_t *index;
    int pad_len, cap;
    int64_t abort_at;  // sink returns -1 at this sample (or never: -1)
} collect;

static int collect_sink(void *ctx, int split, int64_t index, int n_c, int n_k, const int32_t *tokens,
                        const uint8_t *mask, int len) {
    collect *c = ctx;
    if (c->n == c->abort_at) return -1;
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 256;
        c->tok = xrealloc(c->tok, (size_t)c->cap * c->pad_len * sizeof(int32_t));
        c->len = xrealloc(c->len, (size_t)c->cap * sizeof(int));
        c->split = xrealloc(c->split, (size_t)c->cap * sizeof(int));
        c->nc = xrealloc(c->nc, (size_t)c->cap * sizeof(int));
        c->nk = xrealloc(c->nk, (size_t)c->cap * sizeof(int));
        c->index = xrealloc(c->index, (size_t)c->cap * sizeof(int64_t));
    }
    int32_t *t = c->tok + (size_t)c->n * c->pad_len;
    for (int i = 0; i < c->pad_len; i++) t[i] = i < len ? tokens[i] : COMPAT_PAD;
    // The mask must be 1 exactly at inquiry keys; checked here once per sample.
    int sep = 1 + n_c * (1 + 2 * n_k);
    for (int i = 0; i < len; i++) {
        int in_inquiry = i > sep, r = (i - sep - 1) % (1 + 2 * n_k);
        int want = in_inquiry && r >= 1 && (r - 1) % 2 == 0;
        if (mask[i] != want) {
            fprintf(stderr, "  mask[%d] = %d, expected %d\n", i, mask[i], want);
            return -1;
        }
    }
    c->len[c->n] = len;
    c->split[c->n] = split;
    c->nc[c->n] = n_c;
    c->nk[c->n] = n_k;
    c->index[c->n] = index;
    c->n++;
    return 0;
}

static void collect_free(collect *c) {
    free(c->tok);
    free(c->len);
    free(c->split);
    free(c->nc);
    free(c->nk);
    free(c->index);
}

static int run_collect(const compat_params *p, int min_c, int min_k, collect *c, compat_stats *st) {
    memset(c, 0, sizeof *c);
    c->pad_len = compat_pad_len(p->max_n_context, p->max_n_key);
    c->abort_at = -1;
    char err[256] = "";
    int rc = compat_generate_ex(p, min_c, min_k, st, collect_sink, c, err, sizeof err);
    if (rc) fprintf(stderr, "  compat_generate_ex: %s\n", err);
    return rc;
}

// Checks one sample's structure: BOS, contexts (a permutation) each with a
// permutation of keys and values, SEP, then every (context, key) again in a
// fresh order with the same value.
static int check_structure(const compat_params *p, const int32_t *t, int len, int n_c, int n_k) {
    const int32_t key0 = COMPAT_BIAS + p->n_value, ctx0 = key0 + p->max_n_key;
    if (len != 2 + 2 * n_c * (1 + 2 * n_k) || t[0] != COMPAT_BOS) return 0;
    int32_t table[64 * 64];
    if (n_c > 64 || n_k > 64) return 0;
    int at = 1;
    for (int part = 0; part < 2; part++) {
        if (part == 1 && t[at++] != COMPAT_SEP) return 0;
        uint64_t ctx_seen = 0;
        for (int a = 0; a < n_c; a++) {
            int i = t[at++] - ctx0;
            if (i < 0 || i >= n_c || (ctx_seen >> i & 1)) return 0;
            ctx_seen |= 1ull << i;
            uint64_t key_seen = 0;
            for (int b = 0; b < n_k; b++) {
                int j = t[at++] - key0, v = t[at++] - COMPAT_BIAS;
                if (j < 0 || j >= n_k || (key_seen >> j & 1) || v < 0 || v >= p->n_value) return 0;
                key_seen |= 1ull << j;
                if (part == 0) table[i * 64 + j] = v;
                else if (table[i * 64 + j] != v) return 0;
            }
        }
    }
    return at == len;
}

static int64_t count_equal_pairs(const collect *c) {
    int64_t pairs = 0;
    for (int64_t a = 0; a < c->n; a++)
        for (int64_t b = a + 1; b < c->n; b++)
            if (c->len[a] == c->len[b] &&
                memcmp(c->tok + a * c->pad_len, c->tok + b * c->pad_len, (size_t)c->pad_len * 4) == 0)
                pairs++;
    return pairs;
}

static void test_generate_order_and_structure(void) {
    compat_params p = {.max_n_context = 6, .max_n_key = 7, .n_value = 10, .n_train_per_cell = 3,
                       .n_test_per_cell = 2, .seed = 3};
    collect c;
    compat_stats st;
    CHECK(run_collect(&p, 5, 5, &c, &st) == 0, "generation failed");
    int ncells = 2 * 3;
    CHECK(c.n == ncells * (3 + 2 + 2), "%lld samples", (long long)c.n);
    CHECK(st.samples == c.n && st.redraws == 0 && st.words > 0, "stats %lld %lld %llu", (long long)st.samples,
          (long long)st.redraws, (unsigned long long)st.words);
    int bad = 0;
    for (int64_t s = 0; s < c.n; s++) {
        int split = s < 18 ? 0 : s < 30 ? 1 : 2;
        int64_t index = split == 0 ? s : split == 1 ? s - 18 : s - 30;
        int cell = (int)(index % ncells);
        if (c.split[s] != split || c.index[s] != index || c.nc[s] != 5 + cell / 3 || c.nk[s] != 5 + cell % 3) bad++;
        else if (!check_structure(&p, c.tok + s * c.pad_len, c.len[s], c.nc[s], c.nk[s])) bad++;
    }
    CHECK(bad == 0, "%d samples out of order or malformed", bad);
    CHECK(count_equal_pairs(&c) == 0, "equal samples");
    collect_free(&c);
}

static void test_generate_deterministic(void) {
    compat_params p = {.max_n_context = 5, .max_n_key = 6, .n_value = 16, .n_train_per_cell = 4,
                       .n_test_per_cell = 1, .seed = 9};
    collect a, b;
    run_collect(&p, 5, 5, &a, NULL);
    run_collect(&p, 5, 5, &b, NULL);
    CHECK(a.n == b.n && memcmp(a.tok, b.tok, (size_t)a.n * a.pad_len * 4) == 0, "two runs differ");
    collect_free(&b);
    p.seed = 10;
    run_collect(&p, 5, 5, &b, NULL);
    CHECK(a.n == b.n && memcmp(a.tok, b.tok, (size_t)a.pad_len * 4) != 0, "seeds 9 and 10 give the same first sample");
    collect_free(&a);
    collect_free(&b);
}

// Tiny cells (min 1x2 with 2 values: 16 distinct samples in the 1x2 cell)
// make equal draws frequent: every one must be redrawn, none kept twice.
static void test_redraw_path(void) {
    compat_params p = {.max_n_context = 2, .max_n_key = 3, .n_value = 2, .n_train_per_cell = 8,
                       .n_test_per_cell = 2, .seed = 1};
    collect c;
    compat_stats st;
    CHECK(run_collect(&p, 1, 2, &c, &st) == 0, "generation failed");
    CHECK(c.n == 4 * 12, "%lld samples", (long long)c.n);
    CHECK(st.redraws > 0, "no redraws happened");
    CHECK(count_equal_pairs(&c) == 0, "equal samples kept");
    int bad = 0;
    for (int64_t s = 0; s < c.n; s++)
        if (!check_structure(&p, c.tok + s * c.pad_len, c.len[s], c.nc[s], c.nk[s])) bad++;
    CHECK(bad == 0, "%d malformed samples", bad);
    // n_value 1: randint draws nothing; the 1x2 cell has exactly 4 samples, all asked.
    compat_params q = {.max_n_context = 1, .max_n_key = 2, .n_value = 1, .n_train_per_cell = 2,
                       .n_test_per_cell = 1, .seed = 5};
    collect d;
    CHECK(run_collect(&q, 1, 2, &d, &st) == 0, "n_value 1 failed");
    CHECK(d.n == 4 && count_equal_pairs(&d) == 0, "%lld samples", (long long)d.n);
    collect_free(&c);
    collect_free(&d);
}

// With hashes cut to a few bits almost every lookup meets a foreign sample
// with the same hash; the output must still equal the normal run exactly
// (a collision never drops or duplicates a sample). Short checkpoint spacing
// also exercises replay from many checkpoints.
static void test_hash_collisions_exact(void) {
    compat_params p = {.max_n_context = 2, .max_n_key = 3, .n_value = 2, .n_train_per_cell = 8,
                       .n_test_per_cell = 2, .seed = 2};
    compat_params q = {.max_n_context = 6, .max_n_key = 5, .n_value = 3, .n_train_per_cell = 60,
                       .n_test_per_cell = 5, .seed = 4};
    const compat_params *ps[2] = {&p, &q};
    int mins[2] = {1, 5};
    for (int k = 0; k < 2; k++) {
        collect a, b;
        compat_stats sa, sb;
        run_collect(ps[k], mins[k], mins[k] == 1 ? 2 : 5, &a, &sa);
        compat_set_test_hooks(3, 1000);
        run_collect(ps[k], mins[k], mins[k] == 1 ? 2 : 5, &b, &sb);
        compat_set_test_hooks(64, 0);
        CHECK(a.n == b.n && a.n > 0 && memcmp(a.tok, b.tok, (size_t)a.n * a.pad_len * 4) == 0,
              "case %d: weak hashes changed the output", k);
        CHECK(sa.redraws == sb.redraws && sa.words == sb.words, "case %d: redraws %lld vs %lld", k,
              (long long)sa.redraws, (long long)sb.redraws);
        CHECK(k == 0 || sa.words > 10000, "case %d: only %llu words: too few checkpoints", k,
              (unsigned long long)sa.words);
        collect_free(&a);
        collect_free(&b);
    }
}

static void test_sink_abort_and_bad_params(void) {
    compat_params p = {.max_n_context = 5, .max_n_key = 5, .n_value = 16, .n_train_per_cell = 10,
                       .n_test_per_cell = 1, .seed = 1};
    collect c = {0};
    c.pad_len = compat_pad_len(5, 5);
    c.abort_at = 4;
    char err[256] = "";
    CHECK(compat_generate(&p, collect_sink, &c, err, sizeof err) == -1 && c.n == 4, "abort not honoured");
    CHECK(strstr(err, "train sample 4") != NULL, "err: %s", err);
    collect_free(&c);
    struct {
        compat_params p;
        int min_c, min_k;
        const char *want;
    } bad[] = {
        {{4, 16, 16, 10, 1, 1}, 5, 5, "max_n_context"},
        {{16, 3, 16, 10, 1, 1}, 5, 5, "max_n_key"},
        {{16, 16, 0, 10, 1, 1}, 5, 5, "n_value"},
        {{16, 16, 16, -1, 1, 1}, 5, 5, "samples per cell"},
        {{16, 16, 2147483640, 10, 1, 1}, 5, 5, "token ids"},
        {{1, 1, 3, 2, 1, 1}, 1, 1, "never finish"},  // 1x1 cell: 3 samples, 4 asked
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        int rc = compat_generate_ex(&bad[i].p, bad[i].min_c, bad[i].min_k, NULL, NULL, NULL, err, sizeof err);
        CHECK(rc == -1 && strstr(err, bad[i].want), "case %zu: rc %d, err '%s'", i, rc, err);
    }
    // exactly all 3 samples of the 1x1 cell: allowed, and terminates
    compat_params ok = {1, 1, 3, 1, 1, 1};
    CHECK(compat_generate_ex(&ok, 1, 1, NULL, NULL, NULL, err, sizeof err) == 0, "%s", err);
}

// ---- text layout ----

static char *slurp(const char *path, size_t *n) {
    char *s = hax_read_file(path, n);
    return s;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    if (d) closedir(d);
    return n;
}

static void test_text_writer(void) {
    char dir[] = "/tmp/hax_test_compat_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char err[512] = "";
    text_writer *w = text_writer_open(dir, 2, 3, 77, 6, err, sizeof err);
    CHECK(w != NULL, "open: %s", err);
    if (!w) return;
    int32_t t1[4] = {1, 12, 345, 4};
    uint8_t m1[4] = {0, 1, 0, 0};
    int32_t t2[6] = {1, 2, 3, 4, 5, 6};
    uint8_t m2[6] = {1, 1, 1, 1, 1, 1};
    CHECK(text_writer_add(w, 0, t1, m1, 4) == 0, "add");
    CHECK(text_writer_add(w, 0, t2, m2, 6) == 0, "add");
    CHECK(text_writer_add(w, 2, t1, m1, 1) == 0, "add");
    CHECK(text_writer_add(w, 1, t2, m2, 7) == -1 && strstr(text_writer_error(w), "tokens"), "too long accepted");
    CHECK(count_entries(dir) == 6, "%d files before close (temporaries expected)", count_entries(dir));
    char path[512];
    text_format_path(path, sizeof path, dir, 2, 3, 77, 0, 0);
    CHECK(access(path, F_OK) != 0, "final name exists before commit");
    CHECK(text_writer_close(w, 1) == 0, "close: %s", text_writer_error(NULL));
    const char *want[3][2] = {{"1 12 345 4 3 3\n1 2 3 4 5 6\n", "0 1 0 0 0 0\n1 1 1 1 1 1\n"},
                              {"", ""},
                              {"1 3 3 3 3 3\n", "0 0 0 0 0 0\n"}};
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 2; k++) {
            text_format_path(path, sizeof path, dir, 2, 3, 77, s, k);
            size_t n = 0;
            char *got = slurp(path, &n);
            CHECK(got && n == strlen(want[s][k]) && memcmp(got, want[s][k], n) == 0, "%s: '%s'", path,
                  got ? got : "(missing)");
            free(got);
        }
    CHECK(strstr(path, "max_n_context_2_max_n_key_3_seed_77_test_mask.txt") != NULL, "name %s", path);
    CHECK(count_entries(dir) == 6, "%d files after commit", count_entries(dir));
    // An aborted writer leaves nothing, not even the earlier final files touched.
    w = text_writer_open(dir, 9, 9, 1, 400, err, sizeof err);
    CHECK(w && text_writer_add(w, 0, t1, m1, 4) == 0, "second writer");
    if (w) text_writer_close(w, 0);
    CHECK(count_entries(dir) == 6, "%d files after an aborted writer", count_entries(dir));
    for (int s = 0; s < 3; s++)
        for (int k = 0; k < 2; k++) {
            text_format_path(path, sizeof path, dir, 2, 3, 77, s, k);
            unlink(path);
        }
    rmdir(dir);
    w = text_writer_open("/nonexistent/hax", 2, 3, 77, 6, err, sizeof err);
    CHECK(w == NULL && strstr(err, "/nonexistent/hax/max_n_context_2"), "err: %s", err);
}

// ---- modes for the shell test and the benchmark ----

typedef struct {
    text_writer *w;
} dump_ctx;

static int dump_sink(void *ctx, int split, int64_t index, int n_c, int n_k, const int32_t *tokens,
                     const uint8_t *mask, int len) {
    (void)index, (void)n_c, (void)n_k;
    return text_writer_add(((dump_ctx *)ctx)->w, split, tokens, mask, len);
}

static int noop_sink(void *ctx, int split, int64_t index, int n_c, int n_k, const int32_t *tokens,
                     const uint8_t *mask, int len) {
    (void)split, (void)index, (void)n_c, (void)n_k, (void)mask;
    *(int64_t *)ctx += tokens[len - 1];
    return 0;
}

static int run_dump(const char *dir, const compat_params *p, int min_c, int min_k) {
    char err[512] = "";
    dump_ctx d = {text_writer_open(dir, p->max_n_context, p->max_n_key, p->seed,
                                   compat_pad_len(p->max_n_context, p->max_n_key), err, sizeof err)};
    if (!d.w) hax_die("%s", err);
    compat_stats st;
    double t0 = hax_now();
    if (compat_generate_ex(p, min_c, min_k, &st, dump_sink, &d, err, sizeof err)) {
        const char *why = text_writer_error(d.w)[0] ? text_writer_error(d.w) : err;
        text_writer_close(d.w, 0);
        hax_die("%s", why);
    }
    if (text_writer_close(d.w, 1)) hax_die("%s", text_writer_error(NULL));
    printf("redraws %lld\nsamples %lld words %llu seconds %.3f\n", (long long)st.redraws, (long long)st.samples,
           (unsigned long long)st.words, hax_now() - t0);
    return 0;
}

static int run_bench(const char *dir) {
    compat_params p = {16, 16, 16, 10000, 100, 1};
    compat_stats st;
    char err[512];
    int64_t sum = 0;
    double t0 = hax_now();
    if (compat_generate_ex(&p, 5, 5, &st, noop_sink, &sum, err, sizeof err)) hax_die("%s", err);
    double dt = hax_now() - t0;
    printf("compat default dataset, no-op sink: %lld samples, %lld redraws, %llu words, %.2f s, %.0f samples/s\n",
           (long long)st.samples, (long long)st.redraws, (unsigned long long)st.words, dt, st.samples / dt);
    if (dir) {
        t0 = hax_now();
        run_dump(dir, &p, 5, 5);
        printf("compat default dataset, text layout in %s: %.2f s\n", dir, hax_now() - t0);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 9 && strcmp(argv[1], "--dump") == 0) {
        compat_params p = {atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoll(argv[6]), atoll(argv[7]),
                           (uint32_t)strtoul(argv[8], NULL, 10)};
        int min_c = argc > 9 ? atoi(argv[9]) : 5, min_k = argc > 10 ? atoi(argv[10]) : 5;
        return run_dump(argv[2], &p, min_c, min_k);
    }
    if (argc >= 2 && strcmp(argv[1], "--bench") == 0) return run_bench(argc > 2 ? argv[2] : NULL);
    RUN(test_mt_known_values);
    RUN(test_numpy_draws);
    RUN(test_mt_skip);
    RUN(test_permutation_uniform);
    RUN(test_generate_order_and_structure);
    RUN(test_generate_deterministic);
    RUN(test_redraw_path);
    RUN(test_hash_collisions_exact);
    RUN(test_sink_abort_and_bad_params);
    RUN(test_text_writer);
    return test_summary();
}
