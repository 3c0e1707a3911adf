// test_train_prefetch.c: hax-train's batch prefetcher (src/train/prefetch.c):
// the batches it fills ahead on its thread equal dataset_batch's, across
// epochs with shuffling, for a rank's slice, from a resume point, while the
// main thread reads another split of the same dataset (an evaluation pass);
// and it stops cleanly before its end.
#include <mpi.h>
#include <stdint.h>
#include <unistd.h>

#include "src/core/common.h"
#include "data-gen/datagen.h"
#include "src/io/dataset.h"
#include "src/train/prefetch.h"
#include "dataset_tmp.h"
#include "test.h"

static const char *data_dir;

static hax_dataset *open_data(int shuffle) {
    char err[512];
    hax_dataset *ds = dataset_open(data_dir, err, sizeof err);
    if (!ds) hax_die("%s", err);
    dataset_set_shuffle(ds, shuffle, 7);
    return ds;
}

// 1 when a and b hold the same batch.
static int same_batch(const hax_batch *a, const hax_batch *b) {
    if (a->n_seq != b->n_seq || a->n_tok != b->n_tok || a->global_n_seq != b->global_n_seq ||
        a->first_seq != b->first_seq || a->model_len != b->model_len)
        return 0;
    size_t nt = (size_t)a->n_tok, ns = (size_t)a->n_seq;
    return !memcmp(a->seq_off, b->seq_off, (ns + 1) * sizeof(int)) &&
           !memcmp(a->inputs, b->inputs, nt * sizeof(int32_t)) && !memcmp(a->labels, b->labels, nt * sizeof(int32_t)) &&
           !memcmp(a->loss_mask, b->loss_mask, nt) && !memcmp(a->sample_idx, b->sample_idx, ns * sizeof(int64_t)) &&
           !memcmp(a->n_context, b->n_context, ns * sizeof(int)) && !memcmp(a->n_key, b->n_key, ns * sizeof(int));
}

// Takes batches first .. end-1 (rank of n_ranks) and compares each with a
// second handle's dataset_batch; between takes, reads the validation split
// of the prefetcher's dataset with the iterator and compares it too.
static void run_case(int shuffle, int rank, int n_ranks, int64_t first, int64_t end) {
    hax_dataset *ds = open_data(shuffle), *ref = open_data(shuffle);
    hax_batch want, got_v, want_v;
    dataset_batch_alloc(ref, 64, &want);
    dataset_batch_alloc(ds, 64, &got_v);
    dataset_batch_alloc(ref, 64, &want_v);
    train_prefetch *pf = prefetch_start(ds, 64, rank, n_ranks, first, end);
    int bad = 0, bad_scored = 0, bad_valid = 0;
    for (int64_t i = first; i < end; i++) {
        double n_scored = -1;
        const hax_batch *b = prefetch_take(pf, i, &n_scored);
        dataset_batch(ref, SPLIT_TRAIN, i, 64, rank, n_ranks, &want);
        bad += !same_batch(b, &want);
        double n = 0;
        for (int k = 0; k < want.n_tok; k++) n += want.loss_mask[k] != 0;
        bad_scored += n != n_scored;
        prefetch_release(pf);
        if (i % 4 == 0) {  // an evaluation pass while the thread fills the next batches
            dataset_iter it, it_ref;
            dataset_iter_begin(&it, ds, SPLIT_VALID, 8, rank, n_ranks);
            dataset_iter_begin(&it_ref, ref, SPLIT_VALID, 8, rank, n_ranks);
            while (dataset_iter_next(&it, &got_v) && dataset_iter_next(&it_ref, &want_v))
                bad_valid += !same_batch(&got_v, &want_v);
        }
    }
    CHECK(bad == 0 && bad_scored == 0 && bad_valid == 0,
          "shuffle %d rank %d/%d batches %lld..%lld: %d batches, %d scored counts, %d validation batches differ",
          shuffle, rank, n_ranks, (long long)first, (long long)end - 1, bad, bad_scored, bad_valid);
    prefetch_free(pf);
    hax_batch_free(&want), hax_batch_free(&got_v), hax_batch_free(&want_v);
    dataset_close(ds), dataset_close(ref);
}

static void test_prefetch_equals_dataset_batch(void) {
    run_case(0, 0, 1, 0, 10);  // the stored order, over three epochs
    run_case(1, 0, 1, 0, 14);  // shuffled per epoch
    run_case(1, 1, 2, 0, 9);   // a rank's slice
    run_case(1, 2, 3, 0, 7);
    run_case(1, 0, 1, 5, 12);  // resumed at batch 5 (mid-epoch)
}

static void test_prefetch_stops_early(void) {
    hax_dataset *ds = open_data(1);
    train_prefetch *pf = prefetch_start(ds, 64, 0, 1, 0, 1000);
    const hax_batch *b = prefetch_take(pf, 0, NULL);
    CHECK(b->n_seq == 64, "first batch: %d sequences", b->n_seq);
    prefetch_release(pf);
    usleep(20000);  // the thread has filled ahead and waits for a free slot
    prefetch_free(pf);
    pf = prefetch_start(ds, 64, 0, 1, 5, 5);  // nothing to fill (a resumed complete run)
    prefetch_free(pf);
    dataset_close(ds);
}

int main(int argc, char **argv) {
    tmp_root_begin(&argc, &argv, "hax_test_prefetch");
    hax_data_params p;
    params_small(&p, 16);  // 180 train samples: batches of 64, 64, 52 per epoch
    data_dir = make_dataset("data", &p, 50);
    RUN(test_prefetch_equals_dataset_batch);
    RUN(test_prefetch_stops_early);
    return tmp_root_end();
}
