// datagen_run.c: generating a dataset over MPI ranks.
//
// The shards of all three splits form one list in global order (train,
// valid, test); each rank takes a contiguous run of shards with about the
// same number of samples. A sample is a pure function of (seed, split,
// index, attempt), so the bytes do not depend on the number of ranks.
// Uniqueness across the splits: rank 0 gathers every sample's 128-bit hash;
// a sample whose hash equals an earlier sample's (earlier in global order)
// is redrawn with the next attempt, and this repeats until no two are equal.
// Files go to a temporary folder inside the output; rank 0 moves them into
// place and writes manifest.yaml last.
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "src/core/common.h"
#include "data-gen/compat.h"
#include "data-gen/datagen.h"
#include "data-gen/text_format.h"

typedef struct {
    int split, index;
    int64_t first;  // split index of the first sample
    uint32_t n;
    int64_t gpos;   // global position of the first sample (train, valid, test concatenated)
} shard_plan;

typedef struct {
    const datagen_opts *o;
    int rank, n_ranks;
    char out[4096], tmp[4096];
    shard_plan *plan;
    int n_plan, my_lo, my_hi;        // my shards: plan[my_lo .. my_hi)
    int64_t n_total, g_lo, g_hi;     // all samples; mine: [g_lo, g_hi)
    shard_info *info;                // [n_plan]: mine filled here, all on rank 0 after the gather
    int64_t redrawn;                 // samples drawn again for uniqueness (all rounds)
    double t0;
} run_ctx;

static int64_t split_offset(const hax_data_params *p, int split) {
    int64_t g = 0;
    for (int s = 0; s < split; s++) g += data_split_size(p, s);
    return g;
}

// Rank k takes the shards that start in samples [N k / R, N (k+1) / R):
// plan[*lo .. *hi). Every rank computes every rank's share alike.
static void rank_shards(const run_ctx *r, int k, int *lo, int *hi) {
    int64_t g_lo = r->n_total * k / r->n_ranks, g_hi = r->n_total * (k + 1) / r->n_ranks;
    int a = 0;
    while (a < r->n_plan && r->plan[a].gpos < g_lo) a++;
    int b = a;
    while (b < r->n_plan && r->plan[b].gpos < g_hi) b++;
    *lo = a;
    *hi = b;
}

// Global position of the first sample of plan[j] (n_total past the end).
static int64_t plan_gpos(const run_ctx *r, int j) { return j < r->n_plan ? r->plan[j].gpos : r->n_total; }

static void make_plan(run_ctx *r) {
    const hax_data_params *p = &r->o->p;
    int64_t ss = r->o->shard_size, n = 0;
    for (int s = 0; s < HAX_N_SPLITS; s++) n += (data_split_size(p, s) + ss - 1) / ss;
    r->plan = xcalloc((size_t)n + 1, sizeof(shard_plan));
    r->n_plan = 0;
    for (int s = 0; s < HAX_N_SPLITS; s++) {
        int64_t size = data_split_size(p, s), base = split_offset(p, s);
        for (int64_t first = 0, i = 0; first < size; first += ss, i++) {
            shard_plan *sp = &r->plan[r->n_plan++];
            sp->split = s;
            sp->index = (int)i;
            sp->first = first;
            sp->n = (uint32_t)(size - first < ss ? size - first : ss);
            sp->gpos = base + first;
        }
    }
    r->n_total = split_offset(p, HAX_N_SPLITS);
    rank_shards(r, r->rank, &r->my_lo, &r->my_hi);
    r->g_lo = plan_gpos(r, r->my_lo);
    r->g_hi = plan_gpos(r, r->my_hi);
    r->info = xcalloc((size_t)r->n_plan + 1, sizeof(shard_info));
}

// Samples of rank k (from the plan, which every rank computes alike).
static int64_t rank_count(run_ctx *r, int k, int64_t *first) {
    int a, b;
    rank_shards(r, k, &a, &b);
    *first = plan_gpos(r, a);
    return plan_gpos(r, b) - *first;
}

static void progress(run_ctx *r, const char *what, int64_t done, int64_t total) {
    if (!r->o->progress || r->rank != 0 || total <= 0) return;
    if (done != total && done % 4096 != 0) return;
    fprintf(stderr, "\r%s: %5.1f%% (%" PRId64 " / %" PRId64 " samples on rank 0, %.1f s)%s", what,
            100.0 * (double)done / (double)total, done, total, hax_now() - r->t0, done == total ? "\n" : "");
}

void datagen_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hax: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

// ---------------------------------------------------------------- preflight

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// Rank 0's temporary folder, removed at exit when a failure (hax_die) ends
// the run before remove_tmp.
static char tmp_at_exit[4096];

// Removes a temporary folder and the files in it.
static void remove_dir_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[8192];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static void remove_tmp(run_ctx *r) {
    remove_dir_files(r->tmp);
    tmp_at_exit[0] = 0;
}

static void remove_tmp_at_exit(void) {
    if (tmp_at_exit[0]) remove_dir_files(tmp_at_exit);
}

// Temporary folders .hax-datagen-tmp-PID of runs that are gone: the process
// no longer exists here and the folder has not changed for 10 minutes (a
// folder shared with another node may belong to a live run there, which
// writes a shard every few seconds). Each removal says so in one line.
static void remove_stale_tmps(const char *out) {
    DIR *d = opendir(out);
    if (!d) return;
    struct dirent *e;
    char path[8192];
    while ((e = readdir(d)) != NULL) {
        const char *pfx = ".hax-datagen-tmp-";
        if (strncmp(e->d_name, pfx, strlen(pfx)) != 0) continue;
        char *end;
        long pid = strtol(e->d_name + strlen(pfx), &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
        snprintf(path, sizeof path, "%s/%s", out, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || difftime(time(NULL), st.st_mtime) < 600) continue;
        remove_dir_files(path);
        fprintf(stderr, "hax-datagen: removed %s, the temporary folder of process %ld, which is gone\n", path, pid);
    }
    closedir(d);
}

// Rank 0: checks the output folder and creates the temporary one. Returns 0
// or -1 with err.
static int preflight(run_ctx *r, char *err, int errlen) {
    const datagen_opts *o = r->o;
    struct stat st;
    if (stat(o->out, &st) == 0 && !S_ISDIR(st.st_mode))
        return snprintf(err, (size_t)errlen, "--out %s: expected a folder, found a file", o->out), -1;
    if (hax_mkdir_p(o->out) != 0)
        return snprintf(err, (size_t)errlen, "--out %s: cannot create the folder: %s", o->out, strerror(errno)), -1;
    char path[8192];
    snprintf(path, sizeof path, "%s/manifest.yaml", o->out);
    if (!o->force && (o->format & FORMAT_SHARDS) && exists(path))
        return snprintf(err, (size_t)errlen, "--out %s: already holds a dataset (manifest.yaml); "
                        "use --force to replace it", o->out), -1;
    if (!o->force && (o->format & FORMAT_TEXT)) {
        text_format_path(path, sizeof path, o->out, o->p.max_size[0], o->p.max_size[o->p.levels - 1],
                         (uint32_t)o->p.seed, 0, 0);
        if (exists(path))
            return snprintf(err, (size_t)errlen, "--out %s: already holds a text dataset (%s); use --force to "
                            "replace it", o->out, path), -1;
    }
    remove_stale_tmps(o->out);
    snprintf(r->tmp, sizeof r->tmp, "%s/.hax-datagen-tmp-%ld", o->out, (long)getpid());
    if (mkdir(r->tmp, 0755) != 0)
        return snprintf(err, (size_t)errlen, "--out %s: cannot write there (creating %s: %s)", o->out, r->tmp,
                        strerror(errno)), -1;
    snprintf(tmp_at_exit, sizeof tmp_at_exit, "%s", r->tmp);
    atexit(remove_tmp_at_exit);
    return 0;
}

// ---------------------------------------------------------------- default generator

static void write_shard_or_die(run_ctx *r, shard_writer *w) {
    char name[64], path[8192], err[512];
    shard_file_name(name, sizeof name, (int)w->info.split, (int)w->info.index);
    snprintf(path, sizeof path, "%s/%s", r->tmp, name);
    if (shard_writer_write(w, path, err, sizeof err)) hax_die("%s", err);
}

// Generates shard j of the plan; attempts[k] (may be NULL: all 0) are its samples' attempts.
static void build_shard(run_ctx *r, sample_ctx *c, shard_writer *w, int j, const uint16_t *attempts,
                        uint64_t (*hashes)[2], int32_t *tok, uint8_t *mask, int64_t *done, int64_t total) {
    const shard_plan *sp = &r->plan[j];
    shard_writer_reset(w, sp->split, sp->index, (uint64_t)sp->first);
    for (uint32_t i = 0; i < sp->n; i++) {
        int64_t idx = sp->first + i;
        int sizes[HAX_MAX_LEVELS];
        data_cell_of(&r->o->p, idx, sizes);
        int a = attempts ? attempts[i] : 0;
        int len = sample_generate(c, sizes, sp->split, idx, a, tok, mask);
        if (hashes) sample_hash(tok, len, hashes[i]);
        shard_writer_add(w, tok, mask, len, sizes, a);
        if (done) progress(r, "generating", ++*done, total);
    }
    write_shard_or_die(r, w);
    r->info[j] = w->info;
}

static int generate_default(run_ctx *r) {
    const hax_data_params *p = &r->o->p;
    sample_ctx c;
    sample_ctx_init(&c, p);
    shard_writer w;
    shard_writer_init(&w, p, (uint32_t)r->o->shard_size);
    int64_t pad = data_pad_len(p), my_n = r->g_hi - r->g_lo;
    int32_t *tok = xmalloc((size_t)pad * sizeof(int32_t));
    uint8_t *mask = xmalloc((size_t)pad);
    uint64_t(*hashes)[2] = xmalloc((size_t)(my_n + 1) * sizeof *hashes);
    uint16_t *attempts = xcalloc((size_t)my_n + 1, sizeof(uint16_t));
    uint8_t *dirty = xcalloc((size_t)r->n_plan + 1, 1);
    int64_t done = 0;
    for (int j = r->my_lo; j < r->my_hi; j++)
        build_shard(r, &c, &w, j, NULL, hashes + (r->plan[j].gpos - r->g_lo), tok, mask, &done, my_n);

    // Uniqueness rounds.
    MPI_Datatype h128;
    MPI_Type_contiguous(2, MPI_UINT64_T, &h128);
    MPI_Type_commit(&h128);
    int *counts = xcalloc((size_t)r->n_ranks, sizeof(int)), *displs = xcalloc((size_t)r->n_ranks, sizeof(int));
    for (int k = 0; k < r->n_ranks; k++) {
        int64_t first, cnt = rank_count(r, k, &first);
        if (first > INT32_MAX || cnt > INT32_MAX) hax_die("more than 2^31 samples: not supported");
        counts[k] = (int)cnt;
        displs[k] = (int)first;
    }
    uint64_t(*all)[2] = r->rank == 0 ? xmalloc((size_t)(r->n_total + 1) * sizeof *all) : NULL;
    int status = 0;
    for (int round = 0;; round++) {
        MPI_Gatherv(hashes, (int)my_n, h128, all, counts, displs, h128, 0, MPI_COMM_WORLD);
        int64_t n_rep = 0, *rep = NULL;
        if (r->rank == 0) rep = hash_repeats((const uint64_t(*)[2])all, r->n_total, &n_rep, NULL);
        MPI_Bcast(&n_rep, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
        if (n_rep == 0) {
            free(rep);
            break;
        }
        if (n_rep > INT32_MAX) hax_die("too many repeated samples (%" PRId64 ")", n_rep);
        if (r->rank != 0) rep = xmalloc((size_t)n_rep * sizeof(int64_t));
        MPI_Bcast(rep, (int)n_rep, MPI_INT64_T, 0, MPI_COMM_WORLD);
        int stuck = 0;
        int j = r->my_lo;
        for (int64_t q = 0; q < n_rep; q++) {
            int64_t g = rep[q];
            if (g < r->g_lo || g >= r->g_hi) continue;
            while (r->plan[j].gpos + r->plan[j].n <= g) j++;
            int64_t k = g - r->g_lo, idx = r->plan[j].first + (g - r->plan[j].gpos);
            if (attempts[k] == HAX_MAX_ATTEMPT) {
                if (!stuck)
                    datagen_error("%s sample %" PRId64 ": still equal to an earlier sample after %d redraws (the cells "
                             "are too small for the counts asked)", hax_split_names[r->plan[j].split], idx,
                             HAX_MAX_ATTEMPT);
                stuck = 1;
                continue;
            }
            attempts[k]++;
            int sizes[HAX_MAX_LEVELS];
            data_cell_of(p, idx, sizes);
            int len = sample_generate(&c, sizes, r->plan[j].split, idx, attempts[k], tok, mask);
            sample_hash(tok, len, hashes[k]);
            dirty[j] = 1;
        }
        free(rep);
        MPI_Allreduce(MPI_IN_PLACE, &stuck, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (stuck) {
            status = HAX_EXIT_ERROR;
            break;
        }
        r->redrawn += n_rep;
        if (r->rank == 0 && r->o->progress)
            fprintf(stderr, "uniqueness round %d: %" PRId64 " samples redrawn\n", round + 1, n_rep);
    }
    // Shards with redrawn samples are generated again with their final attempts.
    for (int j = r->my_lo; j < r->my_hi && status == 0; j++)
        if (dirty[j])
            build_shard(r, &c, &w, j, attempts + (r->plan[j].gpos - r->g_lo), NULL, tok, mask, NULL, 0);
    MPI_Type_free(&h128);
    free(all);
    free(counts);
    free(displs);
    free(hashes);
    free(attempts);
    free(dirty);
    free(tok);
    free(mask);
    shard_writer_free(&w);
    sample_ctx_free(&c);
    return status;
}

// ---------------------------------------------------------------- --compat reference

typedef struct {
    run_ctx *r;
    shard_writer w;
    int split, index;  // the shard being filled (-1: none)
    int64_t done;
    char err[512];
} compat_sink_ctx;

static int compat_flush(compat_sink_ctx *s) {
    if (s->split < 0 || s->w.info.n_samples == 0) return 0;
    char name[64], path[8192];
    shard_file_name(name, sizeof name, s->split, s->index);
    snprintf(path, sizeof path, "%s/%s", s->r->tmp, name);
    if (shard_writer_write(&s->w, path, s->err, sizeof s->err)) return -1;
    for (int j = 0; j < s->r->n_plan; j++)
        if (s->r->plan[j].split == s->split && s->r->plan[j].index == s->index) s->r->info[j] = s->w.info;
    return 0;
}

static int compat_sink_fn(void *ctx, int split, int64_t index, int n_c, int n_k, const int32_t *tokens,
                          const uint8_t *mask, int len) {
    compat_sink_ctx *s = ctx;
    const datagen_opts *o = s->r->o;
    int sizes[HAX_MAX_LEVELS];
    data_cell_of(&o->p, index, sizes);
    if (sizes[0] != n_c || sizes[1] != n_k) {
        snprintf(s->err, sizeof s->err, "compat generator: %s sample %" PRId64 " has cell %dx%d, expected %dx%d",
                 hax_split_names[split], index, n_c, n_k, sizes[0], sizes[1]);
        return -1;
    }
    if (index % o->shard_size == 0) {
        if (compat_flush(s)) return -1;
        s->split = split;
        s->index = (int)(index / o->shard_size);
        shard_writer_reset(&s->w, split, s->index, (uint64_t)index);
    }
    shard_writer_add(&s->w, tokens, mask, len, sizes, 0);
    progress(s->r, "generating (compat reference)", ++s->done, s->r->n_total);
    return 0;
}

static int generate_compat(run_ctx *r) {
    const hax_data_params *p = &r->o->p;
    int status = 0;
    if (r->rank == 0) {
        compat_params cp = {.max_n_context = p->max_size[0], .max_n_key = p->max_size[1], .n_value = p->n_value,
                            .n_train_per_cell = p->n_per_cell[SPLIT_TRAIN],
                            .n_test_per_cell = p->n_per_cell[SPLIT_TEST], .seed = (uint32_t)p->seed};
        compat_sink_ctx s = {.r = r, .split = -1};
        shard_writer_init(&s.w, p, (uint32_t)r->o->shard_size);
        char err[512] = "";
        int rc = compat_generate_ex(&cp, p->min_size[0], p->min_size[1], NULL, compat_sink_fn, &s, err, sizeof err);
        if (rc == 0) rc = compat_flush(&s);
        if (rc) {
            datagen_error("%s", s.err[0] ? s.err : err);
            status = HAX_EXIT_ERROR;
        }
        shard_writer_free(&s.w);
    }
    MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return status;
}

// ---------------------------------------------------------------- commit (rank 0)

static int write_text(run_ctx *r, uint64_t *bytes) {
    const hax_data_params *p = &r->o->p;
    char err[512];
    hax_dataset *ds = dataset_open(r->tmp, err, sizeof err);
    if (!ds) return datagen_error("%s", err), -1;
    int pad = dataset_pad_len(ds);
    int max_c = p->max_size[0], max_k = p->max_size[p->levels - 1];
    text_writer *tw = text_writer_open(r->out, max_c, max_k, (uint32_t)p->seed, pad, err, sizeof err);
    if (!tw) {
        dataset_close(ds);
        return datagen_error("%s", err), -1;
    }
    int32_t *tok = xmalloc((size_t)pad * sizeof(int32_t));
    uint8_t *mask = xmalloc((size_t)pad);
    int rc = 0;
    for (int s = 0; s < HAX_N_SPLITS && rc == 0; s++)
        for (int64_t i = 0; i < dataset_size(ds, s) && rc == 0; i++) {
            int len = dataset_sample(ds, s, i, tok, mask, NULL);
            rc = text_writer_add(tw, s, tok, mask, len);
            if (rc) datagen_error("%s", text_writer_error(tw));
        }
    free(tok);
    free(mask);
    dataset_close(ds);
    if (text_writer_close(tw, rc == 0) != 0) {
        if (rc == 0) datagen_error("%s", text_writer_error(NULL));
        return -1;
    }
    if (rc) return -1;
    for (int s = 0; s < HAX_N_SPLITS; s++)
        for (int kind = 0; kind < 2; kind++) {
            char path[8192];
            struct stat st;
            text_format_path(path, sizeof path, r->out, max_c, max_k, (uint32_t)p->seed, s, kind);
            if (stat(path, &st) == 0) *bytes += (uint64_t)st.st_size;
        }
    return 0;
}

static int is_shard_name(const char *n) {
    for (int s = 0; s < HAX_N_SPLITS; s++) {
        size_t k = strlen(hax_split_names[s]);
        if (strncmp(n, hax_split_names[s], k) == 0 && n[k] == '-' && strlen(n) >= k + 5 &&
            strcmp(n + strlen(n) - 4, ".bin") == 0)
            return 1;
    }
    return 0;
}

static int commit(run_ctx *r, uint64_t *bytes) {
    const datagen_opts *o = r->o;
    char path[8192], dst[8192];
    char *text = manifest_text(&o->p, o->shard_size, r->info, r->n_plan);
    snprintf(path, sizeof path, "%s/manifest.yaml", r->tmp);
    int rc = hax_write_file_atomic(path, text, strlen(text));
    free(text);
    if (rc) return datagen_error("%s: cannot write: %s", path, strerror(errno)), -1;
    if ((o->format & FORMAT_TEXT) && write_text(r, bytes)) return -1;
    if (!(o->format & FORMAT_SHARDS)) return 0;
    // The old dataset stops being one (its manifest goes first), then the
    // new shards move in, then the new manifest makes the folder complete.
    snprintf(dst, sizeof dst, "%s/manifest.yaml", r->out);
    if (unlink(dst) != 0 && errno != ENOENT) return datagen_error("%s: cannot remove: %s", dst, strerror(errno)), -1;
    DIR *d = opendir(r->out);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (is_shard_name(e->d_name)) {
                snprintf(dst, sizeof dst, "%s/%s", r->out, e->d_name);
                unlink(dst);
            }
        closedir(d);
    }
    for (int j = 0; j < r->n_plan; j++) {
        char name[64];
        shard_file_name(name, sizeof name, r->plan[j].split, r->plan[j].index);
        snprintf(path, sizeof path, "%s/%s", r->tmp, name);
        snprintf(dst, sizeof dst, "%s/%s", r->out, name);
        if (rename(path, dst) != 0) return datagen_error("%s: cannot move to %s: %s", path, dst, strerror(errno)), -1;
        *bytes += r->info[j].bytes;
    }
    snprintf(path, sizeof path, "%s/manifest.yaml", r->tmp);
    snprintf(dst, sizeof dst, "%s/manifest.yaml", r->out);
    if (rename(path, dst) != 0) return datagen_error("%s: cannot move to %s: %s", path, dst, strerror(errno)), -1;
    struct stat st;
    if (stat(dst, &st) == 0) *bytes += (uint64_t)st.st_size;
    return 0;
}

// ---------------------------------------------------------------- the run

int datagen_run(const datagen_opts *o, int rank, int n_ranks) {
    run_ctx r = {.o = o, .rank = rank, .n_ranks = n_ranks, .t0 = hax_now()};
    snprintf(r.out, sizeof r.out, "%s", o->out);
    int status = 0;
    char err[20000] = "";
    if (rank == 0 && preflight(&r, err, sizeof err)) status = HAX_EXIT_ERROR;
    MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (status) {
        if (rank == 0) datagen_error("%s", err);
        return status;
    }
    MPI_Bcast(r.tmp, sizeof r.tmp, MPI_CHAR, 0, MPI_COMM_WORLD);
    make_plan(&r);
    status = o->p.compat ? generate_compat(&r) : generate_default(&r);
    // Every rank's shard_info reaches rank 0 (compat: rank 0 has them all).
    if (status == 0 && !o->p.compat) {
        int *counts = xcalloc((size_t)n_ranks, sizeof(int)), *displs = xcalloc((size_t)n_ranks, sizeof(int));
        for (int k = 0; k < n_ranks; k++) {
            int a, b;
            rank_shards(&r, k, &a, &b);
            counts[k] = (b - a) * (int)sizeof(shard_info);
            displs[k] = a * (int)sizeof(shard_info);
        }
        if (rank == 0)
            MPI_Gatherv(MPI_IN_PLACE, 0, MPI_BYTE, r.info, counts, displs, MPI_BYTE, 0, MPI_COMM_WORLD);
        else
            MPI_Gatherv(r.info + r.my_lo, counts[rank], MPI_BYTE, NULL, NULL, NULL, MPI_BYTE, 0, MPI_COMM_WORLD);
        free(counts);
        free(displs);
    }
    uint64_t bytes = 0;
    if (rank == 0) {
        if (status == 0 && commit(&r, &bytes)) status = HAX_EXIT_ERROR;
        remove_tmp(&r);
    }
    MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rank == 0 && status == 0) {
        uint64_t n_tok = 0;
        for (int j = 0; j < r.n_plan; j++) n_tok += r.info[j].n_tokens;
        double dt = hax_now() - r.t0;
        printf("hax-datagen: %" PRId64 " samples, %" PRIu64 " tokens, %" PRIu64 " bytes in %.2f s (%.0f samples/s, "
               "%d rank%s) -> %s", r.n_total, n_tok, bytes, dt, dt > 0 ? (double)r.n_total / dt : 0.0, n_ranks,
               n_ranks == 1 ? "" : "s", o->out);
        if (r.redrawn) printf("; %" PRId64 " redraws for uniqueness", r.redrawn);
        printf("\n");
        fflush(stdout);
    }
    free(r.plan);
    free(r.info);
    return status;
}
