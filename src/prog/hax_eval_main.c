// hax-eval: scores a model saved by hax-train (best.safetensors or
// checkpoint.safetensors) on a split of any dataset it can read, on the CPU
// or the GPU, over the MPI ranks it is started with; prints the accuracy
// overall and per (n_c, n_k) cell, and writes the aggregator's SVG figures.
// The pass is hax-train's own (src/train/eval.h): on the run's dataset, with
// the run's rank count and batch size, it gives result.json's test figures
// digit for digit.
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "src/core/common.h"
#include "src/config/config.h"
#include "src/io/dataset.h"
#include "mpi/dist.h"
#include "src/model/sparse_patterns.h"
#include "src/train/eval.h"
#include "src/train/saved.h"
#include "src/train/train.h"
#include "analysis/plot_svg.h"
#ifdef HAX_CUDA
#include <cuda_runtime_api.h>  // device memory in use (the toolkit's header, not cuda/)
#endif

static const char *usage =
    "usage: hax-eval MODEL.safetensors --data DIR [--split test|valid|train] [--batch N]\n"
    "                [--semantics reference|causal] [--output-layer best|final] [--format markdown|csv|json]\n"
    "                [--plot DIR] [--label NAME] [-o FILE] [--device auto|cpu|cuda]\n"
    "\n"
    "Scores the best weights of a hax-train run (best.safetensors, or checkpoint.safetensors) on a split\n"
    "of a dataset, with the run's fixed evaluation hash matrices, and prints the accuracy overall and\n"
    "per (n_c, n_k) cell with the samples and tokens per sample (README \"Evaluating: hax-eval\").\n"
    "\n"
    "  --data DIR            a dataset (hax-datagen) whose ids the model can read\n"
    "  --split S             test (default), valid or train\n"
    "  --batch N             global batch of each forward (default: the run's evaluation batch, as hax-train\n"
    "                        scores, train.eval_batch; fewer on a dataset of longer rows)\n"
    "  --semantics S         the sparse branch's statistics (default: the run's sparse.semantics)\n"
    "  --output-layer L      best (default): the best model's own embedding; final: the last step's\n"
    "                        embedding (the reference's test figure, quirk 1; needs checkpoint.safetensors)\n"
    "  --format F            markdown (default), csv or json\n"
    "  --plot DIR            write acc_vs_n.svg and heatmap_<label>.svg into DIR\n"
    "  --label NAME          the model's name in the figures (default: the run's output.arch)\n"
    "  -o FILE               write the table to FILE instead of stdout\n"
    "  --device D            auto (default: the GPU where the CUDA engine runs the model), cpu or cuda\n"
    "\n"
    "exit status: 0 done, 1 error (file, dataset, a model the data cannot feed), 2 usage\n";

static hax_dist dist;

typedef struct {
    const char *model, *data, *plot, *out, *label;
    int split, batch, semantics, final_layer, format, device;  // semantics -1: the run's; batch 0: the run's
} eval_opts;

enum { FMT_MARKDOWN, FMT_CSV, FMT_JSON };

static void usage_error(const char *fmt, const char *arg) __attribute__((noreturn));
static void usage_error(const char *fmt, const char *arg) {
    if (dist.rank == 0) {
        fprintf(stderr, "hax: ");
        fprintf(stderr, fmt, arg);
        fprintf(stderr, " (see hax-eval --help)\n");
    }
    dist_finalize();
    exit(HAX_EXIT_USAGE);
}

// Index of v in names (NULL-terminated), or a usage error naming opt.
static int pick(const char *opt, const char *v, const char *const *names) {
    for (int i = 0; names[i]; i++)
        if (!strcmp(v, names[i])) return i;
    char msg[256];
    snprintf(msg, sizeof msg, "%s: expected one of", opt);
    for (int i = 0; names[i]; i++) snprintf(msg + strlen(msg), sizeof msg - strlen(msg), " %s", names[i]);
    snprintf(msg + strlen(msg), sizeof msg - strlen(msg), ", found '%%s'");
    usage_error(msg, v);
}

static void parse_args(int argc, char **argv, eval_opts *o) {
    static const char *const splits[] = {"train", "valid", "test", NULL};
    static const char *const sems[] = {"reference", "causal", NULL};
    static const char *const layers[] = {"best", "final", NULL};
    static const char *const fmts[] = {"markdown", "csv", "json", NULL};
    static const char *const devs[] = {"auto", "cpu", "cuda", NULL};
    memset(o, 0, sizeof *o);
    o->split = SPLIT_TEST;
    o->semantics = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (dist.rank == 0) fputs(usage, stdout);
            dist_finalize();
            exit(HAX_EXIT_OK);
        }
        if (a[0] != '-') {
            if (o->model) usage_error("expected one MODEL.safetensors, found a second one: '%s'", a);
            o->model = a;
            continue;
        }
        if (i + 1 >= argc) usage_error("%s: expected a value, found none", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--data")) o->data = v;
        else if (!strcmp(a, "--split")) o->split = pick(a, v, splits);
        else if (!strcmp(a, "--semantics")) o->semantics = pick(a, v, sems);
        else if (!strcmp(a, "--output-layer")) o->final_layer = pick(a, v, layers);
        else if (!strcmp(a, "--format")) o->format = pick(a, v, fmts);
        else if (!strcmp(a, "--device")) o->device = pick(a, v, devs);
        else if (!strcmp(a, "--plot")) o->plot = v;
        else if (!strcmp(a, "--label")) o->label = v;
        else if (!strcmp(a, "-o")) o->out = v;
        else if (!strcmp(a, "--batch")) {
            char *end = NULL;
            long n = strtol(v, &end, 10);
            if (!v[0] || *end || n < 1 || n > (1 << 24)) usage_error("--batch: expected a count >= 1, found '%s'", v);
            o->batch = (int)n;
        } else {
            usage_error("unknown option '%s'", a);
        }
    }
    if (!o->model) usage_error("%sexpected a MODEL.safetensors argument, found none", "");
    if (!o->data) usage_error("%s--data: expected a dataset folder, found none", "");
}

// ---------------------------------------------------------------- setup

// The dataset: opened, its checksums checked (shared among ranks).
static hax_dataset *open_data(const char *dir) {
    char err[2048] = "";
    hax_dataset *ds = dataset_open(dir, err, sizeof err);
    train_check_all(&dist, ds == NULL, err, HAX_EXIT_ERROR);
    int bad = dataset_check_checksums(ds, dist.rank, dist.size, err, sizeof err) != 0;
    train_check_all(&dist, bad, err, HAX_EXIT_ERROR);
    return ds;
}

// cpu or cuda for --device (auto: cuda where this build, a device and the
// CUDA engine run the model); every rank must agree.
static const char *pick_backend(int device, const hax_model_config *mc) {
    char why[256] = "", err[512] = "";
    int cuda = device != 1 && engine_backend_available("cuda", mc, why, sizeof why);
    if (device == 2 && !cuda)
        snprintf(err, sizeof err, "--device: expected a model, machine and build the CUDA backend runs, found %s "
                 "(use --device auto or cpu)", why);
    train_check_all(&dist, err[0] != 0, err, HAX_EXIT_ERROR);
    train_check_all(&dist, dist_allreduce_max_int(cuda) != cuda,
                    "--device: auto chose cuda on some ranks and cpu on others (use --device cpu or cuda)",
                    HAX_EXIT_ERROR);
    return cuda ? "cuda" : "cpu";
}

// --batch's default: the run's evaluation batch (config_eval_batch), so its
// test figures come out as hax-train's; on a dataset of longer rows, fewer
// sequences, so that a forward holds no more positions than the run's did
// (rows of 65,794 tokens would otherwise make forwards of 16.8 M positions).
static int default_batch(const hax_config *c, const hax_dataset *ds) {
    int64_t batch = config_eval_batch(c), run_len = data_pad_len(&c->data.gen), len = dataset_pad_len(ds);
    if (len > run_len) batch = batch * run_len / len;
    return batch > 1 ? (int)batch : 1;
}

// OpenMP threads as hax-train: the node's cores shared among its ranks, at
// most one per 4096 tokens of a batch slice (unless OMP_NUM_THREADS is set).
static void set_threads(int batch, const hax_dataset *ds) {
    if (getenv("OMP_NUM_THREADS")) return;
    int n = omp_get_num_procs() / (dist.local_size > 0 ? dist.local_size : 1);
    int64_t by_work = (int64_t)((batch + dist.size - 1) / dist.size) * (dataset_pad_len(ds) - 1) / 4096;
    if (n > by_work) n = (int)by_work;
    omp_set_num_threads(n < 1 ? 1 : n);
}

// ---------------------------------------------------------------- output

// The shortest decimal form that reads back to v (result.json's form).
static void fmt_num(char *buf, size_t n, double v) {
    if (!isfinite(v)) {
        snprintf(buf, n, "null");
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

// Tokens of a sample of cell (c, k) (one or two levels; 0 where unknown).
static int64_t cell_tokens(const hax_data_params *p, int c, int k) {
    int sizes[2] = {c, k};
    if (p->levels == 1) return data_sample_len(p, &k);
    return p->levels == 2 ? data_sample_len(p, sizes) : 0;
}

typedef struct {
    const eval_opts *o;
    const saved_model *sm;
    const hax_data_params *p;
    const char *backend;
    int batch;                            // the global batch of each forward
    double tok_per_s, host_mib, dev_mib;  // dev_mib < 0: no device
} report;

static void put_header(FILE *f, const report *r, const train_eval *ev) {
    const hax_config *c = &r->sm->cfg;
    char acc[40], pat[96];
    fmt_num(acc, sizeof acc, ev->acc);
    sparse_pattern_name(c->model.sparse_mask, pat, sizeof pat);
    fprintf(f, "hax-eval: %s (%s, %s, %s, step %lld) on %s, split %s: output layer %s, semantics %s, device %s, "
            "%d rank%s, batch %d\n", r->o->model, c->output.arch, config_arch_name(c->model.arch), pat,
            (long long)r->sm->best_step, r->o->data, hax_split_names[r->o->split], r->o->final_layer ? "final" : "best",
            config_semantics_name(r->sm->model.cfg.semantics), r->backend, dist.size, dist.size == 1 ? "" : "s",
            r->batch);
    fprintf(f, "accuracy %s over %.0f samples (chance %.4f)\n", acc, ev->n, 1.0 / r->p->n_value);
}

static void put_perf(FILE *f, const report *r) {
    fprintf(f, "eval: %.0f tokens/s, peak host memory %.0f MiB", r->tok_per_s, r->host_mib);
    if (r->dev_mib >= 0) fprintf(f, ", device memory in use %.0f MiB", r->dev_mib);
    fputc('\n', f);
}

static void write_table(FILE *f, const report *r, const train_eval *ev) {
    int fmt = r->o->format;
    if (fmt == FMT_MARKDOWN) {
        put_header(f, r, ev);
        fputs("\n| n_c | n_k | samples | tokens/sample | accuracy |\n|---:|---:|---:|---:|---:|\n", f);
    } else if (fmt == FMT_CSV) {
        fputs("n_c,n_k,samples,tokens_per_sample,acc\n", f);
    } else {
        char acc[40];
        fmt_num(acc, sizeof acc, ev->acc);
        fprintf(f, "{\n  \"model\": \"%s\",\n  \"data\": \"%s\",\n  \"split\": \"%s\",\n  \"output_layer\": \"%s\","
                "\n  \"step\": %lld,\n  \"batch\": %d,\n  \"acc\": %s,\n  \"n\": %.0f,\n  \"tokens_per_s\": %.0f,"
                "\n  \"peak_host_mib\": %.0f,\n  \"cells\": [", r->o->model, r->o->data, hax_split_names[r->o->split],
                r->o->final_layer ? "final" : "best", (long long)r->sm->best_step, r->batch, acc, ev->n, r->tok_per_s,
                r->host_mib);
    }
    int first = 1;
    for (int c = 0; c < ev->nc; c++)
        for (int k = 0; k < ev->nk; k++) {
            double n = ev->cnt[(size_t)c * ev->nk + k];
            if (n <= 0) continue;
            double a = ev->sum[(size_t)c * ev->nk + k] / n;
            int cc = r->p->levels == 1 ? 0 : c;  // one level: no contexts
            long long tok = (long long)cell_tokens(r->p, c, k);
            char acc[40];
            fmt_num(acc, sizeof acc, a);
            if (fmt == FMT_MARKDOWN) fprintf(f, "| %d | %d | %.0f | %lld | %.4f |\n", cc, k, n, tok, a);
            else if (fmt == FMT_CSV) fprintf(f, "%d,%d,%.0f,%lld,%s\n", cc, k, n, tok, acc);
            else fprintf(f, "%s\n    {\"n_c\": %d, \"n_k\": %d, \"n\": %.0f, \"tokens\": %lld, \"acc\": %s}",
                         first ? "" : ",", cc, k, n, tok, acc);
            first = 0;
        }
    if (fmt == FMT_MARKDOWN) {
        fputc('\n', f);
        put_perf(f, r);
    } else if (fmt == FMT_JSON) {
        fputs("\n  ]\n}\n", f);
    }
}

// The aggregator's figures for this one model: acc_vs_n.svg, heatmap_<label>.svg.
static int write_plots(const report *r, const train_eval *ev, char *err, int errlen) {
    hax_cells cells = {xcalloc((size_t)ev->nc * ev->nk, sizeof(hax_cell_acc)), 0};
    for (int c = 0; c < ev->nc; c++)
        for (int k = 0; k < ev->nk; k++) {
            double n = ev->cnt[(size_t)c * ev->nk + k];
            if (n > 0)
                cells.v[cells.n++] = (hax_cell_acc){r->p->levels == 1 ? 0 : c, k, ev->sum[(size_t)c * ev->nk + k] / n};
        }
    hax_lr_stats lr = {.lr = r->sm->cfg.train.lr, .n = 1, .cells = cells};
    hax_arch_stats a = {.row = -1, .col = -1, .lrs = &lr, .n_lrs = 1, .best = 0};
    snprintf(a.label, sizeof a.label, "%.127s", r->o->label ? r->o->label : r->sm->cfg.output.arch);
    hax_summary s = {.archs = &a, .n_archs = 1};
    int rc = plot_write_all(r->o->plot, &s, err, errlen);
    free(cells.v);
    return rc < 0 ? -1 : 0;
}

// A dataset within the model's id layout whose tables are larger than the
// training ones (length generalisation): one note on stderr, rank 0, naming
// every level that grew and its ids (in the model's layout) that training never
// showed, so their embeddings are still the initial ones.
static void note_larger_tables(const hax_data_params *trained, const hax_data_params *data, const char *name) {
    if (dist.rank != 0) return;
    char list[512] = "";
    size_t len = 0;
    for (int l = 0; l < data->levels && len < sizeof list; l++) {
        if (data->max_size[l] <= trained->max_size[l]) continue;
        const char *lv = l == data->levels - 1 ? "keys" : (l == data->levels - 2 ? "contexts" : "outer contexts");
        int base = data_level_base(trained, l);
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s up to %d (training maxima %d: ids %d..%d)",
                                len ? ", " : "", lv, data->max_size[l], trained->max_size[l],
                                base + trained->max_size[l], base + data->max_size[l] - 1);
    }
    if (len)
        hax_warn("%s: tables larger than the training ones, within the model's id layout: %s; ids that were never "
                 "seen in training keep their initial embeddings", name, list);
}

// ---------------------------------------------------------------- main

int main(int argc, char **argv) {
    dist_init(&dist, &argc, &argv);
    eval_opts o;
    parse_args(argc, argv, &o);
    char err[2048] = "";
    saved_model sm;
    int bad = saved_model_load(&sm, o.model, err, sizeof err) != 0;
    train_check_all(&dist, bad, err, HAX_EXIT_ERROR);
    if (o.final_layer && !sm.final_emb)
        snprintf(err, sizeof err, "%s: --output-layer final: expected a checkpoint.safetensors (it keeps the last "
                 "step's embedding), found a best.safetensors", o.model);
    train_check_all(&dist, err[0] != 0, err, HAX_EXIT_ERROR);
    if (o.semantics >= 0) sm.cfg.model.semantics = sm.model.cfg.semantics = (hax_semantics)o.semantics;

    hax_dataset *ds = open_data(o.data);
    const hax_data_params *p = dataset_params(ds);
    int32_t *id_map = NULL;
    int n_ids = 0;
    bad = saved_id_map(&sm.cfg.data.gen, p, sm.cfg.model.vocab_size, o.data, &id_map, &n_ids, err, sizeof err);
    train_check_all(&dist, bad, err, HAX_EXIT_ERROR);
    note_larger_tables(&sm.cfg.data.gen, p, o.data);
    if (dataset_size(ds, o.split) == 0)
        snprintf(err, sizeof err, "%s: splits.%s: expected samples, found none", o.data, hax_split_names[o.split]);
    train_check_all(&dist, err[0] != 0, err, HAX_EXIT_ERROR);
    if (dist.rank == 0 && sm.ref_best_replaced && o.final_layer)
        hax_warn("%s: the final validation (step %lld) replaced the best: result.json's test_acc_reference scores "
                 "the reference's best before it, which the checkpoint does not keep", o.model,
                 (long long)sm.best_step);
    if (dist.rank == 0 && !sm.cfg.train.eval_fixed_hash)
        hax_warn("%s: the run redrew the evaluation hash matrices per batch (eval_fixed_hash: false); scored "
                 "with the fixed draw 0", o.model);

    int batch = o.batch ? o.batch : default_batch(&sm.cfg, ds);
    set_threads(batch, ds);
    const char *backend = pick_backend(o.device, &sm.cfg.model);
    hax_batch b;
    dataset_batch_alloc(ds, batch, &b);
    // one sequence of the model length now: eval_run grows the engine to the
    // split's largest batch (its actual lengths) before the first forward
    int max_len = dataset_pad_len(ds) - 1;
    hax_engine *eng = engine_create(backend, &sm.model, dist.local_rank, max_len, 1, max_len);
    if (eng->be->dev) eng->be->dev->push(eng, NULL);  // weights resident on the device
    hax_inject inj;
    memset(&inj, 0, sizeof inj);
    int injected = 0;
    for (int l = 0; l < HAX_MAX_LAYERS; l++) injected |= (inj.hash[l] = sm.hash[l]) != NULL;

    int64_t draws = 0;
    eval_pass ep = {.eng = eng, .ds = ds, .d = &dist, .batch = &b, .batch_size = batch, .draw_batch = batch,
                    .vocab = sm.cfg.model.vocab_size, .hidden = sm.cfg.model.hidden_size, .seed = sm.cfg.train.seed,
                    .fixed_hash = 1, .draws = &draws, .inject = injected ? &inj : NULL, .id_map = id_map,
                    .n_ids = n_ids};
    int nc = 1;
    for (int l = 0; l + 1 < p->levels; l++) nc *= p->max_size[l];
    train_eval ev, ev_alt;
    train_eval_alloc(&ev, nc + 1, p->max_size[p->levels - 1] + 1);
    train_eval_alloc(&ev_alt, nc + 1, p->max_size[p->levels - 1] + 1);
    eval_run(&ep, o.split, o.final_layer ? sm.final_emb : NULL, &ev, o.final_layer ? &ev_alt : NULL);
    const train_eval *res = o.final_layer ? &ev_alt : &ev;

    // throughput over all ranks (their tokens over the slowest one's time), peak memory of the largest rank
    double perf[2] = {ep.tokens, 0};
    dist_allreduce_sum_f64(perf, 1);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    report r = {.o = &o, .sm = &sm, .p = p, .backend = backend, .batch = batch, .dev_mib = -1};
    r.host_mib = dist_allreduce_max_int((int)(ru.ru_maxrss / 1024));
    int ms = dist_allreduce_max_int((int)(ep.seconds * 1000 + 0.5));
    r.tok_per_s = perf[0] / (ms > 0 ? ms / 1000.0 : 1e-3);
#ifdef HAX_CUDA
    size_t free_b = 0, total_b = 0;
    if (eng->be->dev && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
        r.dev_mib = dist_allreduce_max_int((int)((total_b - free_b) >> 20));
#endif

    int rc = 0;
    if (dist.rank == 0) {
        FILE *f = o.out ? fopen(o.out, "w") : stdout;
        if (!f) {
            snprintf(err, sizeof err, "%s: -o: cannot write: %s", o.out, strerror(errno));
        } else {
            write_table(f, &r, res);
            if (f != stdout && fclose(f)) snprintf(err, sizeof err, "%s: -o: cannot write: %s", o.out, strerror(errno));
        }
        if (!err[0] && o.out) {  // a one-line summary beside the file
            char acc[40];
            fmt_num(acc, sizeof acc, res->acc);
            printf("hax-eval: accuracy %s over %.0f samples -> %s\n", acc, res->n, o.out);
        }
        if (!err[0] && o.format != FMT_MARKDOWN && !o.out) put_perf(stderr, &r);
        if (!err[0] && o.plot) write_plots(&r, res, err, sizeof err);
        if (!err[0] && o.plot) printf("hax-eval: figures in %s\n", o.plot);
        fflush(stdout);
        rc = err[0] != 0;
    }
    train_check_all(&dist, rc, err, HAX_EXIT_ERROR);
    train_eval_free(&ev);
    train_eval_free(&ev_alt);
    engine_free(eng);
    hax_batch_free(&b);
    free(id_map);
    dataset_close(ds);
    saved_model_free(&sm);
    dist_finalize();
    return HAX_EXIT_OK;
}
