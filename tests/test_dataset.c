// test_dataset.c: the dataset reader (src/io/dataset.c, src/io/dataset_batch.c):
// parameters and layout, shard round trip (8- and 16-bit ids), batches in
// the reference's order, rank independence, shuffling, the evaluation
// iterator, the structure check, and damaged datasets.
#include <mpi.h>
#include <stdint.h>
#include <unistd.h>

#include "src/core/common.h"
#include "data-gen/datagen.h"
#include "src/io/dataset.h"
#include "dataset_tmp.h"
#include "test.h"

static void test_params(void) {
    hax_data_params p;
    params_small(&p, 16);
    p.min_size[0] = p.min_size[1] = 5;
    p.max_size[0] = p.max_size[1] = 16;
    char err[256];
    CHECK(data_params_check(&p, err, sizeof err) == 0, "%s", err);
    CHECK(data_pad_len(&p) == 1058, "pad_len %lld", (long long)data_pad_len(&p));
    int s55[2] = {5, 5};
    CHECK(data_sample_len(&p, s55) == 112, "5x5 length %lld", (long long)data_sample_len(&p, s55));
    CHECK(data_level_base(&p, 0) == 42 && data_level_base(&p, 1) == 26, "bases %d %d", data_level_base(&p, 0),
          data_level_base(&p, 1));
    CHECK(data_n_cells(&p) == 144 && data_token_bytes(&p) == 1, "cells/bytes");
    int sz[2];
    data_cell_of(&p, 13, sz);  // the 14th sample: n_c 6, n_k 6 (the key cycles fastest)
    CHECK(sz[0] == 6 && sz[1] == 6, "cell of 13: %dx%d", sz[0], sz[1]);
    data_cell_of(&p, 144 + 11, sz);
    CHECK(sz[0] == 5 && sz[1] == 16, "cell of 155: %dx%d", sz[0], sz[1]);
    p.n_value = 300;
    CHECK(data_token_bytes(&p) == 2, "n_value 300 needs 16-bit ids");
    p.n_value = 65530;
    CHECK(data_params_check(&p, err, sizeof err) != 0 && strstr(err, "16-bit"), "65530 values: %s", err);
    p.n_value = 16;
    p.max_size[1] = 4;
    CHECK(data_params_check(&p, err, sizeof err) != 0 && strstr(err, "maximum"), "max < min: %s", err);
}

// Every stored sample equals the generator's, and the structure check passes.
static void roundtrip(const char *dir, const hax_data_params *p) {
    char err[512];
    hax_dataset *ds = dataset_open(dir, err, sizeof err);
    CHECK(ds != NULL, "open: %s", err);
    if (!ds) return;
    CHECK(dataset_check_checksums(ds, 0, 1, err, sizeof err) == 0, "checksums: %s", err);
    sample_ctx c;
    sample_ctx_init(&c, p);
    int pad = dataset_pad_len(ds), bad = 0;
    int32_t *t = xmalloc((size_t)pad * 8), *g = xmalloc((size_t)pad * 8);
    uint8_t *m = xmalloc((size_t)pad), *gm = xmalloc((size_t)pad);
    for (int s = 0; s < HAX_N_SPLITS; s++)
        for (int64_t i = 0; i < dataset_size(ds, s); i++) {
            int sizes[HAX_MAX_LEVELS], want[HAX_MAX_LEVELS];
            int len = dataset_sample(ds, s, i, t, m, sizes);
            data_cell_of(p, i, want);
            int n = sample_generate(&c, want, s, i, dataset_sample_attempt(ds, s, i), g, gm);
            if (n != len || memcmp(t, g, (size_t)n * 4) || memcmp(m, gm, (size_t)n) || sizes[0] != want[0] ||
                sizes[1] != want[1] || sample_check(&c, sizes, t, m, len, err, sizeof err))
                bad++;
        }
    CHECK(bad == 0, "%d samples differ from the generator", bad);
    free(t), free(g), free(m), free(gm);
    sample_ctx_free(&c);
    dataset_close(ds);
}

static void test_roundtrip(void) {
    hax_data_params p;
    params_small(&p, 16);
    roundtrip(make_dataset("rt8", &p, 50), &p);
    params_small(&p, 300);  // ids beyond 255: uint16 tokens
    p.n_per_cell[SPLIT_TRAIN] = 3;
    const char *dir = make_dataset("rt16", &p, 7);
    roundtrip(dir, &p);
    char err[256];
    hax_dataset *ds = dataset_open(dir, err, sizeof err);
    CHECK(ds && dataset_shard(ds, 0, 0)->h.token_bytes == 2, "16-bit shard");
    dataset_close(ds);
}

static void test_sample_check(void) {
    hax_data_params p;
    params_small(&p, 16);
    sample_ctx c;
    sample_ctx_init(&c, &p);
    int32_t t[200];
    uint8_t m[200];
    int sizes[2] = {3, 4};
    char err[256];
    int len = sample_generate(&c, sizes, 0, 7, 0, t, m);
    CHECK(len == data_sample_len(&p, sizes), "len %d", len);
    CHECK(sample_check(&c, sizes, t, m, len, err, sizeof err) == 0, "%s", err);
    // Every inquiry value changed in turn must be caught; so must a moved mask bit.
    int caught = 0, tried = 0;
    for (int i = len / 2; i < len; i++)
        if (i > 0 && m[i - 1]) {
            t[i] = TOK_BIAS + (t[i] - TOK_BIAS + 1) % 16;
            tried++;
            caught += sample_check(&c, sizes, t, m, len, err, sizeof err) != 0;
            t[i] = TOK_BIAS + (t[i] - TOK_BIAS + 15) % 16;
        }
    CHECK(tried == 12 && caught == tried, "answers: %d of %d caught", caught, tried);
    m[len - 1] = 1;
    CHECK(sample_check(&c, sizes, t, m, len, err, sizeof err) != 0 && strstr(err, "mask"), "mask: %s", err);
    m[len - 1] = 0;
    int32_t keep = t[1];
    t[1] = t[1 + 2 * sizes[1] + 1];  // a context token repeated
    CHECK(sample_check(&c, sizes, t, m, len, err, sizeof err) != 0, "repeated context not caught");
    t[1] = keep;
    CHECK(sample_check(&c, sizes, t, m, len - 1, err, sizeof err) != 0, "short sample not caught");
    sample_ctx_free(&c);
}

// Batch b holds samples 64b.. in stored order: inputs tok[:-1] (pads removed),
// labels tok[1:] (3 after the end), mask, cells.
static void test_batches_reference_order(void) {
    hax_data_params p;
    params_small(&p, 16);
    char err[256];
    hax_dataset *ds = dataset_open(make_dataset("rt8", &p, 50), err, sizeof err);
    CHECK(ds != NULL, "%s", err);
    if (!ds) return;
    hax_batch b;
    dataset_batch_alloc(ds, 64, &b);
    int pad = dataset_pad_len(ds);
    CHECK(dataset_batches_per_epoch(ds, SPLIT_TRAIN, 64) == 3, "180 samples: 3 batches");
    int32_t t[128];
    uint8_t m[128];
    int bad = 0, full_seen = 0;
    for (int64_t batch = 0; batch < 6; batch++) {
        int64_t epoch = dataset_batch(ds, SPLIT_TRAIN, batch, 64, 0, 1, &b);
        int want_n = batch % 3 == 2 ? 52 : 64;
        CHECK(epoch == batch / 3 && b.n_seq == want_n && b.global_n_seq == want_n && b.first_seq == 0,
              "batch %lld: epoch %lld, %d seqs", (long long)batch, (long long)epoch, b.n_seq);
        CHECK(b.model_len == pad - 1, "model_len %d", b.model_len);
        for (int k = 0; k < b.n_seq; k++) {
            int64_t idx = (batch % 3) * 64 + k;
            int sizes[2];
            int len = dataset_sample(ds, SPLIT_TRAIN, idx, t, m, sizes);
            int n_in = len < pad - 1 ? len : pad - 1;
            full_seen |= len == pad;
            const int32_t *in = b.inputs + b.seq_off[k], *lab = b.labels + b.seq_off[k];
            const uint8_t *lm = b.loss_mask + b.seq_off[k];
            if (b.sample_idx[k] != idx || b.seq_off[k + 1] - b.seq_off[k] != n_in || b.n_context[k] != sizes[0] ||
                b.n_key[k] != sizes[1])
                bad++;
            for (int j = 0; j < n_in; j++)
                if (in[j] != t[j] || lab[j] != (j + 1 < len ? t[j + 1] : TOK_PAD) || lm[j] != m[j]) bad++;
        }
    }
    CHECK(full_seen, "no full-length sample (the 4x4 cell has pad_len tokens)");
    CHECK(bad == 0, "%d mismatches against the stored samples", bad);
    hax_batch_free(&b);
    dataset_close(ds);
}

// Concatenating every rank's slice gives the one-rank batch, for 1..5 ranks.
static void test_rank_independence(void) {
    hax_data_params p;
    params_small(&p, 16);
    char err[256];
    hax_dataset *ds = dataset_open(make_dataset("rt8", &p, 50), err, sizeof err);
    if (!ds) return;
    dataset_set_shuffle(ds, 1, 99);
    hax_batch one, part;
    dataset_batch_alloc(ds, 64, &one);
    dataset_batch_alloc(ds, 64, &part);
    int bad = 0;
    for (int64_t batch = 0; batch < 6; batch++) {
        dataset_batch(ds, SPLIT_TRAIN, batch, 64, 0, 1, &one);
        for (int R = 2; R <= 5; R++) {
            int seq = 0, tok = 0;
            for (int r = 0; r < R; r++) {
                dataset_batch(ds, SPLIT_TRAIN, batch, 64, r, R, &part);
                if (part.first_seq != seq || part.global_n_seq != one.n_seq) bad++;
                for (int k = 0; k < part.n_seq; k++)
                    if (part.sample_idx[k] != one.sample_idx[seq + k]) bad++;
                if (memcmp(part.inputs, one.inputs + tok, (size_t)part.n_tok * 4) ||
                    memcmp(part.labels, one.labels + tok, (size_t)part.n_tok * 4) ||
                    memcmp(part.loss_mask, one.loss_mask + tok, (size_t)part.n_tok))
                    bad++;
                seq += part.n_seq;
                tok += part.n_tok;
            }
            if (seq != one.n_seq || tok != one.n_tok) bad++;
        }
    }
    CHECK(bad == 0, "%d differences between rank slices and the whole batch", bad);
    hax_batch_free(&one);
    hax_batch_free(&part);
    dataset_close(ds);
}

// A shuffled epoch visits every sample once; epochs differ; the same seed
// gives the same order, another seed another; evaluation splits keep the
// stored order.
static void test_shuffle(void) {
    hax_data_params p;
    params_small(&p, 16);
    char err[256];
    const char *dir = make_dataset("rt8", &p, 50);
    hax_dataset *a = dataset_open(dir, err, sizeof err), *b2 = dataset_open(dir, err, sizeof err);
    if (!a || !b2) return;
    dataset_set_shuffle(a, 1, 5);
    dataset_set_shuffle(b2, 1, 5);
    hax_batch b, c;
    dataset_batch_alloc(a, 64, &b);
    dataset_batch_alloc(a, 64, &c);
    int64_t order[2][180];
    int bad = 0;
    for (int64_t batch = 0; batch < 6; batch++) {
        dataset_batch(a, SPLIT_TRAIN, batch, 64, 0, 1, &b);
        dataset_batch(b2, SPLIT_TRAIN, batch, 64, 0, 1, &c);
        for (int k = 0; k < b.n_seq; k++) {
            order[batch / 3][(batch % 3) * 64 + k] = b.sample_idx[k];
            if (c.sample_idx[k] != b.sample_idx[k]) bad++;
        }
    }
    CHECK(bad == 0, "same seed, different order");
    int seen[2][180] = {{0}}, moved = 0, same = 0;
    for (int e = 0; e < 2; e++)
        for (int i = 0; i < 180; i++) seen[e][order[e][i]]++;
    for (int i = 0; i < 180; i++) {
        if (seen[0][i] != 1 || seen[1][i] != 1) bad++;
        moved += order[0][i] != i;
        same += order[0][i] == order[1][i];
    }
    CHECK(bad == 0, "an epoch must visit every sample once");
    CHECK(moved > 150 && same < 20, "shuffle too weak: %d moved, %d equal across epochs", moved, same);
    // Another shuffle seed, another order (the epoch-0 first batch).
    dataset_set_shuffle(b2, 1, 6);
    dataset_batch(b2, SPLIT_TRAIN, 0, 64, 0, 1, &c);
    int differ = 0;
    for (int k = 0; k < c.n_seq; k++) differ += c.sample_idx[k] != order[0][k];
    CHECK(differ > 50, "seeds 5 and 6 give nearly the same order (%d of 64 differ)", differ);
    dataset_batch(a, SPLIT_VALID, 0, 64, 0, 1, &b);
    CHECK(b.sample_idx[0] == 0 && b.sample_idx[29] == 29, "validation is not shuffled");
    hax_batch_free(&b);
    hax_batch_free(&c);
    dataset_close(a);
    dataset_close(b2);
}

static void test_iterator(void) {
    hax_data_params p;
    params_small(&p, 16);
    char err[256];
    hax_dataset *ds = dataset_open(make_dataset("rt8", &p, 50), err, sizeof err);
    if (!ds) return;
    hax_batch b;
    dataset_batch_alloc(ds, 8, &b);
    int count[30] = {0}, bad = 0;
    for (int r = 0; r < 3; r++) {
        dataset_iter it;
        dataset_iter_begin(&it, ds, SPLIT_VALID, 8, r, 3);
        int64_t prev = -1;
        while (dataset_iter_next(&it, &b))
            for (int k = 0; k < b.n_seq; k++) {
                if (b.sample_idx[k] <= prev) bad++;
                prev = b.sample_idx[k];
                count[b.sample_idx[k]]++;
            }
    }
    for (int i = 0; i < 30; i++) bad += count[i] != 1;
    CHECK(bad == 0, "3 ranks must cover the 30 validation samples once each, in order");
    hax_batch_free(&b);
    dataset_close(ds);
}

static int copy_dir(const char *from, const char *to) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", to, from, to);
    return system(cmd);
}

static void test_damage(void) {
    hax_data_params p;
    params_small(&p, 16);
    const char *dir = make_dataset("rt8", &p, 50);
    char bad_dir[600], path[700], err[512];
    snprintf(bad_dir, sizeof bad_dir, "%s/damaged", root);
    CHECK(copy_dir(dir, bad_dir) == 0, "copy");
    snprintf(path, sizeof path, "%s/train-00001.bin", bad_dir);
    CHECK(truncate(path, 1000) == 0, "truncate");
    hax_dataset *ds = dataset_open(bad_dir, err, sizeof err);
    CHECK(!ds && strstr(err, "train-00001.bin") && strstr(err, "truncated"), "truncated: %s", err);
    dataset_close(ds);

    CHECK(copy_dir(dir, bad_dir) == 0, "copy");
    FILE *f = fopen(path, "r+b");
    fseek(f, 700, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, 700, SEEK_SET);
    fputc(ch ^ 0x10, f);
    fclose(f);
    ds = dataset_open(bad_dir, err, sizeof err);
    CHECK(ds != NULL, "a body flip is found by the checksums, not at open: %s", err);
    if (ds) {
        CHECK(dataset_check_checksums(ds, 0, 1, err, sizeof err) != 0 && strstr(err, "corrupted") &&
              strstr(err, "train-00001.bin"), "flip: %s", err);
        dataset_close(ds);
    }

    CHECK(copy_dir(dir, bad_dir) == 0, "copy");
    snprintf(path, sizeof path, "%s/manifest.yaml", bad_dir);
    char *text = hax_read_file(path, NULL);
    char *at = strstr(text, "n_samples: 180");
    if (at) at[11] = '7';  // 170
    hax_write_file_atomic(path, text, strlen(text));
    free(text);
    ds = dataset_open(bad_dir, err, sizeof err);
    CHECK(!ds && strstr(err, "n_samples: expected 180"), "manifest count: %s", err);
    dataset_close(ds);
    ds = dataset_open("/nonexistent/hax", err, sizeof err);
    CHECK(!ds && strstr(err, "manifest.yaml"), "missing: %s", err);
    dataset_close(ds);
}

int main(int argc, char **argv) {
    tmp_root_begin(&argc, &argv, "hax_test_dataset");
    RUN(test_params);
    RUN(test_roundtrip);
    RUN(test_sample_check);
    RUN(test_batches_reference_order);
    RUN(test_rank_independence);
    RUN(test_shuffle);
    RUN(test_iterator);
    RUN(test_damage);
    return tmp_root_end();
}
