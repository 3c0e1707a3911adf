// hax-datagen: generates (or verifies) the multi-query joint-recall dataset.
// An MPI program: without a launcher it runs as one rank; under mpirun or
// srun the ranks share the work and the output is the same byte for byte.
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/core/common.h"
#include "data-gen/datagen.h"

static const char *usage =
    "usage: hax-datagen --out DIR [options]        generate a dataset\n"
    "       hax-datagen --verify DIR               check a dataset (checksums, structure, uniqueness, counts)\n"
    "\n"
    "Generates the multi-query joint-recall dataset of scripts/create_dataset.py: per split (train, valid,\n"
    "test) and per cell (n_c, n_k), n_c in MIN..MAX contexts and n_k in MIN..MAX keys, the given number of\n"
    "unique samples, the cell cycling fastest. Run it under mpirun/srun to share the work among ranks.\n"
    "\n"
    "options (defaults are the reference's; its underscore spellings, e.g. --max_n_context, work too):\n"
    "  --out DIR                  output folder (created; shards + manifest.yaml, written last); alias --data-dir\n"
    "  --max-n-context N          largest number of contexts (16)\n"
    "  --max-n-key N              largest number of keys per context (16)\n"
    "  --min-n-context N          smallest number of contexts (5)\n"
    "  --min-n-key N              smallest number of keys (5)\n"
    "  --n-value N                number of distinct values |V| (16)\n"
    "  --n-train-per-cell N       training samples per cell (10000); alias --n-train-per-context-key\n"
    "  --n-test-per-cell N        validation and test samples per cell (100); alias --n-test-per-context-key\n"
    "  --n-valid-per-cell N       validation samples per cell (default: the test count)\n"
    "  --seed N                   seed (1)\n"
    "  --levels W                 context levels (Appendix C): 1 = associative recall (keys only), 2 = joint\n"
    "                             recall (default), W > 2 = W-1 nested context levels then the keys\n"
    "  --level-sizes A:B,C:D,...  MIN:MAX of every level, outermost first, keys last (overrides the n-context\n"
    "                             and n-key options; default: the context range for every context level)\n"
    "  --id-layout A:B:...        token ids laid out for these level maxima (outermost first, keys last; each\n"
    "                             at least the level's maximum size): e.g. 32:32 gives a 5..16 dataset the ids\n"
    "                             of 32x32 tables, so one model reads both (default: the maximum sizes)\n"
    "  --format shards|text|both  shards (default), the reference's text files, or both\n"
    "  --compat reference         the reference's exact samples (numpy's MT19937 stream, --seed as\n"
    "                             np.random.seed); sequential by nature: rank 0 does all the work\n"
    "  --shard-size N             samples per shard file (32768)\n"
    "  --force                    replace an existing dataset in DIR\n"
    "  --verify DIR               re-read DIR and check it; exit status 1 when anything is wrong\n"
    "  --help                     this text\n";

static int g_rank;

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...) {
    if (g_rank == 0) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "hax: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, " (see hax-datagen --help)\n");
        va_end(ap);
    }
    MPI_Finalize();
    exit(HAX_EXIT_USAGE);
}

static int64_t parse_int(const char *opt, const char *v, int64_t lo, int64_t hi) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        usage_error("%s: expected an integer in %" PRId64 "..%" PRId64 ", found '%s'", opt, lo, hi, v);
    return x;
}

// --id-layout 32:32
static int parse_id_layout(const char *v, int *out) {
    int n = 0;
    const char *s = v;
    for (;;) {
        if (n == HAX_MAX_LEVELS) usage_error("--id-layout: expected at most %d levels, found more in '%s'", HAX_MAX_LEVELS, v);
        char *end;
        errno = 0;
        long a = strtol(s, &end, 10);
        if (errno || end == s || (*end != ':' && *end) || a < 1 || a > 65535)
            usage_error("--id-layout: expected MAX:MAX:... (one maximum in 1..65535 per level), found '%s'", v);
        out[n++] = (int)a;
        if (!*end) return n;
        s = end + 1;
    }
}

// --level-sizes 5:16,5:16
static int parse_level_sizes(const char *v, int *min, int *max) {
    int n = 0;
    const char *s = v;
    while (*s) {
        if (n == HAX_MAX_LEVELS) usage_error("--level-sizes: expected at most %d levels, found more in '%s'", HAX_MAX_LEVELS, v);
        char *end;
        long a = strtol(s, &end, 10);
        if (end == s || *end != ':') usage_error("--level-sizes: expected MIN:MAX,MIN:MAX,..., found '%s'", v);
        s = end + 1;
        long b = strtol(s, &end, 10);
        if (end == s || (*end != ',' && *end)) usage_error("--level-sizes: expected MIN:MAX,MIN:MAX,..., found '%s'", v);
        if (a < 1 || b > 65535) usage_error("--level-sizes: expected sizes in 1..65535, found '%s'", v);
        min[n] = (int)a;
        max[n++] = (int)b;
        s = *end ? end + 1 : end;
        if (*end && !*s) usage_error("--level-sizes: expected MIN:MAX after the last ',', found the end in '%s'", v);
    }
    if (n == 0) usage_error("--level-sizes: expected MIN:MAX,..., found '%s'", v);
    return n;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, n_ranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n_ranks);
    g_rank = rank;

    datagen_opts o = {.shard_size = 32768, .format = FORMAT_SHARDS};
    int max_c = 16, max_k = 16, min_c = 5, min_k = 5, levels = 2, n_level_sizes = 0;
    int lmin[HAX_MAX_LEVELS], lmax[HAX_MAX_LEVELS], layout[HAX_MAX_LEVELS] = {0}, n_layout = 0;
    int64_t n_train = 10000, n_test = 100, n_valid = -1, seed = 1, n_value = 16;
    const char *verify = NULL, *compat = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            if (rank == 0) fputs(usage, stdout);
            MPI_Finalize();
            return 0;
        }
        if (strcmp(a, "--force") == 0) {
            o.force = 1;
            continue;
        }
        if (strncmp(a, "--force=", 8) == 0) usage_error("--force: expected no value, found '%s'", a + 8);
        if (strncmp(a, "--", 2) != 0) usage_error("unexpected argument '%s'", a);
        // --name value or --name=value
        char name[64];
        const char *v, *eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a), a);
            v = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
            v = i + 1 < argc ? argv[++i] : NULL;
        }
        // The reference's spellings work too: --max_n_context, --data_dir.
        for (char *q = name; *q; q++)
            if (*q == '_') *q = '-';
        if (strcmp(name, "--data-dir") == 0) snprintf(name, sizeof name, "--out");
        static const char *known[] = {"--out", "--max-n-context", "--max-n-key", "--min-n-context", "--min-n-key",
                                      "--n-value", "--n-train-per-cell", "--n-train-per-context-key",
                                      "--n-test-per-cell", "--n-test-per-context-key", "--n-valid-per-cell",
                                      "--seed", "--levels", "--level-sizes", "--id-layout", "--format", "--compat",
                                      "--shard-size", "--verify", NULL};
        int k = 0;
        while (known[k] && strcmp(known[k], name) != 0) k++;
        if (!known[k]) usage_error("unknown option '%s'", name);
        if (!v) usage_error("%s: expected a value, found the end of the command line", name);
        if (strcmp(name, "--out") == 0) o.out = v;
        else if (strcmp(name, "--max-n-context") == 0) max_c = (int)parse_int(name, v, 1, 65535);
        else if (strcmp(name, "--max-n-key") == 0) max_k = (int)parse_int(name, v, 1, 65535);
        else if (strcmp(name, "--min-n-context") == 0) min_c = (int)parse_int(name, v, 1, 65535);
        else if (strcmp(name, "--min-n-key") == 0) min_k = (int)parse_int(name, v, 1, 65535);
        else if (strcmp(name, "--n-value") == 0) n_value = parse_int(name, v, 1, 65535);
        else if (strncmp(name, "--n-train", 9) == 0) n_train = parse_int(name, v, 0, (int64_t)1 << 40);
        else if (strncmp(name, "--n-test", 8) == 0) n_test = parse_int(name, v, 0, (int64_t)1 << 40);
        else if (strcmp(name, "--n-valid-per-cell") == 0) n_valid = parse_int(name, v, 0, (int64_t)1 << 40);
        else if (strcmp(name, "--seed") == 0) seed = parse_int(name, v, 0, INT64_MAX);
        else if (strcmp(name, "--levels") == 0) levels = (int)parse_int(name, v, 1, HAX_MAX_LEVELS);
        else if (strcmp(name, "--level-sizes") == 0) n_level_sizes = parse_level_sizes(v, lmin, lmax);
        else if (strcmp(name, "--id-layout") == 0) n_layout = parse_id_layout(v, layout);
        else if (strcmp(name, "--shard-size") == 0) o.shard_size = parse_int(name, v, 1, (int64_t)1 << 24);
        else if (strcmp(name, "--verify") == 0) verify = v;
        else if (strcmp(name, "--compat") == 0) {
            if (strcmp(v, "reference") != 0) usage_error("--compat: expected 'reference', found '%s'", v);
            compat = v;
        } else if (strcmp(name, "--format") == 0) {
            if (strcmp(v, "shards") == 0) o.format = FORMAT_SHARDS;
            else if (strcmp(v, "text") == 0) o.format = FORMAT_TEXT;
            else if (strcmp(v, "both") == 0) o.format = FORMAT_SHARDS | FORMAT_TEXT;
            else usage_error("--format: expected shards, text or both, found '%s'", v);
        }
    }
    if (verify) {
        if (o.out) usage_error("--verify and --out: expected one of them, found both");
        int status = datagen_verify(verify, rank, n_ranks);
        MPI_Finalize();
        return status;
    }
    if (!o.out) usage_error("--out: expected an output folder, found none");

    hax_data_params *p = &o.p;
    p->levels = levels;
    if (n_level_sizes) {
        if (n_level_sizes != levels)
            usage_error("--level-sizes: expected %d levels (--levels), found %d", levels, n_level_sizes);
        memcpy(p->min_size, lmin, sizeof lmin);
        memcpy(p->max_size, lmax, sizeof lmax);
    } else {
        for (int l = 0; l + 1 < levels; l++) {
            p->min_size[l] = min_c;
            p->max_size[l] = max_c;
        }
        p->min_size[levels - 1] = min_k;
        p->max_size[levels - 1] = max_k;
    }
    p->n_value = (int)n_value;
    p->n_per_cell[SPLIT_TRAIN] = n_train;
    p->n_per_cell[SPLIT_VALID] = n_valid >= 0 ? n_valid : n_test;
    p->n_per_cell[SPLIT_TEST] = n_test;
    p->seed = (uint64_t)seed;
    p->compat = compat != NULL;
    if (n_layout) {
        if (n_layout != levels) usage_error("--id-layout: expected %d maxima (--levels), found %d", levels, n_layout);
        if (p->compat) usage_error("--id-layout: expected no --compat reference (the reference's own layout), found both");
        if (o.format & FORMAT_TEXT)
            usage_error("--id-layout: expected --format shards (the reference's text files have its own layout), found text");
        memcpy(p->id_max, layout, sizeof layout);
    }
    char err[512];
    if (data_params_check(p, err, sizeof err)) usage_error("%s", err);
    // Refused now rather than after the generation: the uniqueness gather
    // and --verify count samples in MPI's int.
    int64_t n_all = 0;
    for (int s = 0; s < HAX_N_SPLITS; s++) n_all += data_split_size(p, s);
    if (n_all > INT32_MAX)
        usage_error("samples: expected at most %d in the three splits together, found %" PRId64, INT32_MAX, n_all);
    if (p->compat) {
        if (levels != 2) usage_error("--compat reference: expected --levels 2 (the reference's layout), found %d", levels);
        if (seed > UINT32_MAX) usage_error("--compat reference: --seed: expected 0..4294967295 (numpy), found %" PRId64, seed);
        if (p->n_per_cell[SPLIT_VALID] != n_test)
            usage_error("--compat reference: --n-valid-per-cell: expected the test count %" PRId64 ", found %" PRId64,
                        n_test, p->n_per_cell[SPLIT_VALID]);
    }
    // The shard being written is held in memory: keep it under 2 GiB.
    double shard_bytes = (double)o.shard_size * (double)data_pad_len(p) * (data_token_bytes(p) + 0.125);
    if (shard_bytes > 2147483648.0)
        usage_error("--shard-size: %" PRId64 " samples of up to %" PRId64 " tokens exceed 2 GiB per shard; expected at "
                    "most %.0f", o.shard_size, data_pad_len(p),
                    floor(2147483648.0 / ((double)data_pad_len(p) * (data_token_bytes(p) + 0.125))));
    if (o.format & FORMAT_TEXT) {
        int64_t pad = data_pad_len(p);
        if (pad > 100000000) usage_error("--format text: padded lines of %" PRId64 " tokens are too long", pad);
    }
    o.progress = rank == 0 && hax_stderr_is_tty();
    int status = datagen_run(&o, rank, n_ranks);
    MPI_Finalize();
    return status;
}
