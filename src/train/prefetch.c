// src/train/prefetch.c: see prefetch.h. A ring of PF_DEPTH batches: the
// thread fills index i into slot i % PF_DEPTH once index i - PF_DEPTH was
// released; the loop takes them in order.
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include "src/core/common.h"
#include "src/train/prefetch.h"

#define PF_DEPTH 4  // batches filled ahead

struct train_prefetch {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    hax_dataset *ds;
    int global_batch, rank, n_ranks;
    int64_t filled;    // indices < filled are ready
    int64_t released;  // indices < released were given back
    int64_t taken;     // the next index to take
    int64_t end;
    int stop;
    hax_batch ring[PF_DEPTH];
    double n_scored[PF_DEPTH];
};

static void *prefetch_main(void *arg) {
    train_prefetch *pf = arg;
    pthread_mutex_lock(&pf->mu);
    for (;;) {
        while (!pf->stop && pf->filled < pf->end && pf->filled - pf->released >= PF_DEPTH)
            pthread_cond_wait(&pf->cv, &pf->mu);
        if (pf->stop || pf->filled >= pf->end) break;
        int64_t i = pf->filled;
        pthread_mutex_unlock(&pf->mu);
        // the slot of i - PF_DEPTH was released: the loop no longer reads it
        hax_batch *b = &pf->ring[i % PF_DEPTH];
        dataset_batch(pf->ds, SPLIT_TRAIN, i, pf->global_batch, pf->rank, pf->n_ranks, b);
        double n = 0;
        for (int k = 0; k < b->n_tok; k++) n += b->loss_mask[k] != 0;
        pthread_mutex_lock(&pf->mu);
        pf->n_scored[i % PF_DEPTH] = n;
        pf->filled = i + 1;
        pthread_cond_broadcast(&pf->cv);
    }
    pthread_mutex_unlock(&pf->mu);
    return NULL;
}

train_prefetch *prefetch_start(hax_dataset *ds, int global_batch, int rank, int n_ranks, int64_t first,
                               int64_t end) {
    train_prefetch *pf = xcalloc(1, sizeof *pf);
    pf->ds = ds;
    pf->global_batch = global_batch, pf->rank = rank, pf->n_ranks = n_ranks;
    pf->filled = pf->released = pf->taken = first;
    pf->end = end > first ? end : first;
    for (int k = 0; k < PF_DEPTH; k++) dataset_batch_alloc(ds, global_batch, &pf->ring[k]);
    pthread_mutex_init(&pf->mu, NULL);
    pthread_cond_init(&pf->cv, NULL);
    // the thread blocks every signal: SIGTERM / SIGUSR1 reach the loop's thread
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&pf->thread, NULL, prefetch_main, pf);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) hax_die("hax-train: batch prefetcher: expected a new thread, found pthread_create error %d", rc);
    return pf;
}

const hax_batch *prefetch_take(train_prefetch *pf, int64_t index, double *n_scored) {
    if (index != pf->taken || index >= pf->end || pf->released != pf->taken)
        hax_die("hax-train: batch prefetcher: expected batch %lld (of %lld, the previous one released), found a "
                "request for %lld", (long long)pf->taken, (long long)pf->end, (long long)index);
    pthread_mutex_lock(&pf->mu);
    while (pf->filled <= index) pthread_cond_wait(&pf->cv, &pf->mu);
    pthread_mutex_unlock(&pf->mu);
    pf->taken = index + 1;
    if (n_scored) *n_scored = pf->n_scored[index % PF_DEPTH];
    return &pf->ring[index % PF_DEPTH];
}

void prefetch_release(train_prefetch *pf) {
    pthread_mutex_lock(&pf->mu);
    pf->released = pf->taken;
    pthread_cond_broadcast(&pf->cv);
    pthread_mutex_unlock(&pf->mu);
}

void prefetch_free(train_prefetch *pf) {
    if (!pf) return;
    pthread_mutex_lock(&pf->mu);
    pf->stop = 1;
    pthread_cond_broadcast(&pf->cv);
    pthread_mutex_unlock(&pf->mu);
    pthread_join(pf->thread, NULL);
    pthread_mutex_destroy(&pf->mu);
    pthread_cond_destroy(&pf->cv);
    for (int k = 0; k < PF_DEPTH; k++) hax_batch_free(&pf->ring[k]);
    free(pf);
}
