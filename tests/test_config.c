// test_config.c: every file in configs/ loads with the paper's settings, the
// printed config reads back equal, overrides work, base files chain, and bad
// configs and overrides are refused with "file:line: field: expected ...,
// found ...".
#include <dirent.h>
#include <stdlib.h>

#include "src/core/common.h"
#include "src/config/config.h"
#include "src/config/config_fields.h"
#include "test.h"

static const char *configs_dir(void) {
    const char *d = getenv("HAX_CONFIGS");
    return d ? d : "configs";
}

static int load_named(hax_config *c, const char *stem, char *err, int errlen) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.yaml", configs_dir(), stem);
    return config_load(c, path, NULL, 0, err, errlen);
}

static void check_round_trip(const hax_config *c, const char *name) {
    char *text = config_to_string(c);
    hax_config back;
    char err[512];
    int rc = config_load_text(&back, "printed", text, strlen(text), NULL, 0, err, sizeof err);
    CHECK(rc == 0, "%s: printed config does not load: %s\n%s", name, err, text);
    if (rc == 0) {
        CHECK(config_equal(c, &back), "%s: printed config reads back different", name);
        char *again = config_to_string(&back);
        CHECK(strcmp(text, again) == 0, "%s: printing twice differs", name);
        free(again);
    }
    free(text);
}

static void test_every_config(void) {
    DIR *d = opendir(configs_dir());
    CHECK(d != NULL, "cannot open %s", configs_dir());
    if (!d) return;
    int n_paper = 0, n_tiny = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0) continue;
        if (strncmp(e->d_name, "grid_", 5) == 0) continue;  // sweep grids, not run configs
        char stem[256], err[512];
        snprintf(stem, sizeof stem, "%.*s", (int)(l - 5), e->d_name);
        hax_config c;
        int rc = load_named(&c, stem, err, sizeof err);
        CHECK(rc == 0, "%s", err);
        if (rc != 0) continue;
        int tiny = strncmp(stem, "tiny", 4) == 0;  // tiny*: small CPU configs, not the paper's settings
        n_tiny += tiny;
        n_paper += !tiny;
        char want[300];  // the Table 1 configs train in bf16-pure (their labels end in @bf16-pure), tiny ones in fp32
        snprintf(want, sizeof want, "%s%s", stem, tiny ? "" : "@bf16-pure");
        CHECK(strcmp(c.output.arch, want) == 0, "%s: output.arch '%s', expected '%s'", stem, c.output.arch, want);
        CHECK(c.train.precision == (tiny ? PREC_FP32 : PREC_BF16_PURE), "%s: train.precision %s", stem,
              config_precision_name(c.train.precision));
        if (!tiny) {  // the paper's settings
            CHECK(c.train.batch_size == 64 && c.train.steps == 400000 && c.train.warmup == 5000 &&
                      c.train.valid_every == 500,
                  "%s: batch %d steps %lld warmup %lld valid %lld", stem, c.train.batch_size, (long long)c.train.steps,
                  (long long)c.train.warmup, (long long)c.train.valid_every);
            CHECK(c.model.sparse_keys == 64 && c.model.num_hash == 8 && c.model.gate_loss_weight == 0.1f &&
                      c.model.data_max_length == 2048 && c.model.semantics == SEMANTICS_REFERENCE,
                  "%s: sparse settings", stem);
            CHECK(c.data.gen.max_size[0] == 16 && c.data.gen.max_size[1] == 16 && c.data.gen.n_per_cell[0] == 10000,
                  "%s: dataset", stem);
            CHECK(c.model.vocab_size == 100 && c.train.beta2 == 0.999 && c.train.weight_decay == 0.01, "%s: vocab/adamw",
                  stem);
        }
        check_round_trip(&c, stem);
    }
    closedir(d);
    CHECK(n_paper == 19, "%d paper configs loaded, expected 19 (9 mamba, 9 mamba2, samba)", n_paper);
    CHECK(n_tiny >= 1, "no tiny config loaded");
}

static void test_config_values(void) {
    hax_config c;
    char err[512];
    CHECK(load_named(&c, "mamba_hax", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.arch == ARCH_MAMBA && c.model.hidden_size == 64 && c.model.intermediate_size == 128 &&
              c.model.state_size == 16,
          "mamba_hax model");
    CHECK(c.model.sparse_mask == (SPARSE_SIGN_BIN_LSH | SPARSE_KEY_SELECTION) && c.model.k_c == 32 &&
              strcmp(c.model.sparse_arch, "sign_bin_lsh+key_selection") == 0,
          "mamba_hax sparse: mask %x k_c %d", c.model.sparse_mask, c.model.k_c);
    CHECK(load_named(&c, "mamba2_2x", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.arch == ARCH_MAMBA2 && c.model.hidden_size == 128 && c.model.head_dim == 32 && c.model.n_heads == 8 &&
              c.model.state_size == 32 && c.model.sparse_mask == 0,
          "mamba2_2x");
    CHECK(load_named(&c, "mamba", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.hidden_size == 64 && c.model.sparse_mask == 0, "mamba base d=64");
    CHECK(load_named(&c, "mamba_2x", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.hidden_size == 128 && c.model.intermediate_size == 256, "mamba_2x");
    CHECK(load_named(&c, "mamba2_swd", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.sparse_mask == (SPARSE_SLIDING_WINDOW | SPARSE_DILATED) && c.model.k_c == 32, "mamba2_swd");
    CHECK(load_named(&c, "mamba_a", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.sparse_mask == (SPARSE_SLIDING_WINDOW | SPARSE_SINK), "mamba_a");
    CHECK(load_named(&c, "mamba_d", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.sparse_mask == SPARSE_DILATED && c.model.k_c == 64, "mamba_d");
    CHECK(load_named(&c, "samba", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.arch == ARCH_SAMBA && c.model.hidden_size == 32 && c.model.n_layers == 4 && c.model.attn_heads == 4 &&
              c.model.window_size == 64 && c.model.mlp_hidden == 256 && c.model.initializer_range == 0.02f,
          "samba");
    CHECK(load_named(&c, "tiny", err, sizeof err) == 0, "%s", err);
    CHECK(c.data.generate && strcmp(c.data.path, "data/tiny") == 0 && c.data.gen.max_size[0] == 6 &&
              c.data.gen.max_size[1] == 6 && c.model.hidden_size == 16 && c.train.device == DEVICE_CPU,
          "tiny");
}

// config_eval_batch: train.eval_batch (default 256), batch_size for 0, and
// batch_size for an LSH pattern whose evaluation matrices are redrawn per
// batch (eval_fixed_hash false); other patterns keep eval_batch then.
static void test_eval_batch(void) {
    static const struct {
        const char *text;
        int want;
    } cases[] = {
        {"train:\n  batch_size: 64\n", 256},
        {"train:\n  batch_size: 64\n  eval_batch: 0\n", 64},
        {"train:\n  batch_size: 64\n  eval_batch: 64\n", 64},
        {"train:\n  batch_size: 64\n  eval_batch: 100\n", 100},
        {"train:\n  batch_size: 512\n  eval_batch: 16\n", 16},
        {"sparse:\n  pattern: sign_bin_lsh+key_selection\ntrain:\n  batch_size: 64\n  eval_fixed_hash: false\n", 64},
        {"sparse:\n  pattern: argmax_lsh\ntrain:\n  batch_size: 32\n  eval_fixed_hash: false\n", 32},
        {"sparse:\n  pattern: sign_bin_lsh\ntrain:\n  batch_size: 32\n", 256},
        {"sparse:\n  pattern: key_selection\ntrain:\n  batch_size: 32\n  eval_fixed_hash: false\n", 256},
        {"train:\n  batch_size: 32\n  eval_fixed_hash: false\n", 256},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        hax_config c;
        char err[512] = "";
        CHECK(config_load_text(&c, "eb.yaml", cases[i].text, strlen(cases[i].text), NULL, 0, err, sizeof err) == 0,
              "%s", err);
        CHECK(config_eval_batch(&c) == cases[i].want, "case %zu: eval batch %d, expected %d", i, config_eval_batch(&c),
              cases[i].want);
    }
    hax_config c;
    char err[512] = "";
    const char *ov[] = {"train.eval_batch=48"};
    CHECK(config_load(&c, "configs/mamba2_hax.yaml", ov, 1, err, sizeof err) == 0, "%s", err);
    CHECK(c.train.eval_batch == 48 && config_eval_batch(&c) == 48, "override: %d", c.train.eval_batch);
    CHECK(config_load(&c, "configs/mamba2_hax.yaml", NULL, 0, err, sizeof err) == 0, "%s", err);
    CHECK(c.train.eval_batch == 256 && config_eval_batch(&c) == 256, "mamba2_hax: %d", c.train.eval_batch);
}

// Every row of Table 1 by name: its base architecture, width and sparse
// pattern, and every model and sparse field equal to the reference config
// (model_config_reference: mamba.json, mamba2.json, *_double_size.json,
// samba.json, the paper's k = 64, h = 8, alpha = 0.1).
static void test_table1_rows(void) {
    static const struct {
        const char *stem;
        hax_arch arch;
        int double_size;
        const char *pattern;
    } rows[] = {
        {"mamba", ARCH_MAMBA, 0, ""},
        {"mamba_2x", ARCH_MAMBA, 1, ""},
        {"mamba_d", ARCH_MAMBA, 0, "dilated"},
        {"mamba_sw", ARCH_MAMBA, 0, "sliding_window"},
        {"mamba_swd", ARCH_MAMBA, 0, "sliding_window+dilated"},
        {"mamba_a", ARCH_MAMBA, 0, "sliding_window+sink"},
        {"mamba_lsh", ARCH_MAMBA, 0, "sign_bin_lsh"},
        {"mamba_ks", ARCH_MAMBA, 0, "key_selection"},
        {"mamba_hax", ARCH_MAMBA, 0, "sign_bin_lsh+key_selection"},
        {"mamba2", ARCH_MAMBA2, 0, ""},
        {"mamba2_2x", ARCH_MAMBA2, 1, ""},
        {"mamba2_d", ARCH_MAMBA2, 0, "dilated"},
        {"mamba2_sw", ARCH_MAMBA2, 0, "sliding_window"},
        {"mamba2_swd", ARCH_MAMBA2, 0, "sliding_window+dilated"},
        {"mamba2_a", ARCH_MAMBA2, 0, "sliding_window+sink"},
        {"mamba2_lsh", ARCH_MAMBA2, 0, "sign_bin_lsh"},
        {"mamba2_ks", ARCH_MAMBA2, 0, "key_selection"},
        {"mamba2_hax", ARCH_MAMBA2, 0, "sign_bin_lsh+key_selection"},
        {"samba", ARCH_SAMBA, 0, ""},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        hax_config c, ref;
        char err[512];
        int rc = load_named(&c, rows[i].stem, err, sizeof err);
        CHECK(rc == 0, "%s: %s", rows[i].stem, err);
        if (rc) continue;
        CHECK(c.model.arch == rows[i].arch && strcmp(c.model.sparse_arch, rows[i].pattern) == 0,
              "%s: arch %s pattern '%s'", rows[i].stem, config_arch_name(c.model.arch), c.model.sparse_arch);
        ref = c;
        model_config_reference(&ref.model, rows[i].arch, rows[i].double_size, rows[i].pattern);
        char diff[1024];
        config_first_difference(&ref, &c, "the reference config", rows[i].stem, diff, sizeof diff);
        CHECK(diff[0] == 0, "%s: %s", rows[i].stem, diff);
        CHECK(c.train.lr == 0.002 && c.train.seed == 1 && c.data.shuffle == 0 && c.train.test_output_layer == TEST_OUTPUT_BEST,
              "%s: lr, seed, order, test output", rows[i].stem);
    }
}

// config_first_difference names the first differing field with both values.
static void test_first_difference(void) {
    hax_config a, b;
    config_defaults(&a);
    b = a;
    char diff[256] = "x";
    config_first_difference(&a, &b, "A", "B", diff, sizeof diff);
    CHECK(diff[0] == 0, "equal configs: '%s'", diff);
    b.train.lr = 0.004;
    b.train.seed = 7;
    snprintf(b.data.path, sizeof b.data.path, "elsewhere");
    config_first_difference(&a, &b, "A", "B", diff, sizeof diff);
    CHECK(strcmp(diff, "data.path: A has \"data/joint_recall\", B has \"elsewhere\"") == 0, "diff '%s'", diff);
    b = a;
    b.train.lr = 0.004;
    config_first_difference(&a, &b, "rank 0", "rank 1", diff, sizeof diff);
    CHECK(strcmp(diff, "train.lr: rank 0 has 0.002, rank 1 has 0.004") == 0, "diff '%s'", diff);
}

static void test_overrides(void) {
    hax_config c;
    char err[512];
    const char *ov[] = {"train.lr=3e-4", "train.seed=2", "sparse.semantics=causal", "data.max_sizes=[16,12]"};
    char path[1024];
    snprintf(path, sizeof path, "%s/mamba_hax.yaml", configs_dir());
    CHECK(config_load(&c, path, ov, 4, err, sizeof err) == 0, "%s", err);
    CHECK(c.train.lr == 3e-4 && c.train.seed == 2 && c.model.semantics == SEMANTICS_CAUSAL && c.data.gen.max_size[1] == 12,
          "override values");
    char dir[1024];
    config_run_dir(&c, dir, sizeof dir);
    CHECK(strcmp(dir, "results/mamba_hax@bf16-pure/lr_0.0003/seed_2") == 0, "run dir %s", dir);
    // The architecture named by an override decides the model defaults.
    const char *ov2[] = {"model.arch=mamba2"};
    CHECK(config_load_text(&c, "t.yaml", "train:\n  seed: 3\n", 17, ov2, 1, err, sizeof err) == 0, "%s", err);
    CHECK(c.model.arch == ARCH_MAMBA2 && c.model.n_heads == 8 && c.model.state_size == 32 && c.train.seed == 3,
          "mamba2 defaults by override");
    // A config with only a section header takes every default.
    CHECK(config_load_text(&c, "t.yaml", "train:\n", 7, NULL, 0, err, sizeof err) == 0, "%s", err);
    CHECK(c.train.lr == 0.002 && c.model.hidden_size == 64 && strcmp(c.output.arch, "mamba") == 0, "defaults");
    const char *ov3[] = {"sparse.pattern=sliding_window"};
    CHECK(config_load_text(&c, "t.yaml", "train:\n", 7, ov3, 1, err, sizeof err) == 0, "%s", err);
    CHECK(strcmp(c.output.arch, "mamba+sliding_window") == 0 && c.model.k_c == 64, "derived label %s", c.output.arch);
}

// Loads text (as "bad.yaml") with optional overrides and expects an error
// whose message contains want.
static void expect_error(const char *text, const char *override, const char *want) {
    hax_config c;
    char err[512] = "";
    const char *ov[1] = {override};
    int rc = config_load_text(&c, "bad.yaml", text, strlen(text), ov, override ? 1 : 0, err, sizeof err);
    CHECK(rc != 0, "accepted: %s %s", text, override ? override : "");
    CHECK(strstr(err, want) != NULL, "config:\n%s\noverride %s\nmessage '%s' lacks '%s'", text, override ? override : "-",
          err, want);
    CHECK(strchr(err, '\n') == NULL, "message is not one line: %s", err);
}

static void test_bad_configs(void) {
    expect_error("model:\n  arch: [mamba\n", NULL, "bad.yaml:3: expected valid YAML");
    expect_error("model:\n\tarch: mamba\n", NULL, "bad.yaml:2: expected valid YAML");
    expect_error("- 1\n- 2\n", NULL, "bad.yaml:1: expected a mapping of the sections");
    expect_error("", NULL, "bad.yaml:1: expected a mapping of the sections");
    expect_error("training:\n  lr: 1\n", NULL, "bad.yaml:1: expected a section among model, sparse, data, train, output "
                                               "or the key base; found unknown key 'training'");
    expect_error("train:\n  lr: 0.001\n  lrr: 1\n", NULL, "bad.yaml:3: train.lrr: expected a field of train (seed, lr,");
    expect_error("train:\n  lr: abc\n", NULL, "bad.yaml:2: train.lr: expected a number, found 'abc'");
    expect_error("train:\n  lr: {a: 1}\n", NULL, "bad.yaml:2: train.lr: expected a single value, found a mapping");
    expect_error("train:\n  batch_size: 6.5\n", NULL, "bad.yaml:2: train.batch_size: expected an integer in 1..1048576, found '6.5'");
    expect_error("train:\n  batch_size: 0\n", NULL, "bad.yaml:2: train.batch_size: expected an integer in 1..1048576, found 0");
    expect_error("train:\n  eval_batch: -1\n", NULL, "bad.yaml:2: train.eval_batch: expected an integer in 0..1048576, found -1");
    expect_error("train:\n  eval_batch: 2.5\n", NULL, "bad.yaml:2: train.eval_batch: expected an integer in 0..1048576, found '2.5'");
    expect_error("train:\n  eval_batch: 1048577\n", NULL, "train.eval_batch: expected an integer in 0..1048576, found 1048577");
    expect_error("train:\n", "train.eval_batch=many", "override 'train.eval_batch=many': expected an integer in 0..1048576, found 'many'");
    expect_error("train:\n  lr: -0.1\n", NULL, "bad.yaml:2: train.lr: expected a number in (0, 1], found -0.1");
    expect_error("train:\n  seed: -1\n", NULL, "train.seed: expected a non-negative integer, found '-1'");
    expect_error("sparse:\n  hash_bits: 31\n", NULL, "bad.yaml:2: sparse.hash_bits: expected an integer in 1..30, found 31");
    expect_error("data:\n  shuffle: yes\n", NULL, "bad.yaml:2: data.shuffle: expected true or false, found 'yes'");
    expect_error("train:\n  device: tpu\n", NULL, "train.device: expected auto, cpu or cuda, found 'tpu'");
    expect_error("model:\n  arch: mamba3\n", NULL, "bad.yaml:2: model.arch: expected mamba, mamba2 or samba, found 'mamba3'");
    expect_error("train:\n  lr: 1\ntrain:\n  seed: 1\n", NULL, "bad.yaml:3: train: expected each section once");
    expect_error("train:\n  lr: 0.1\n  lr: 0.2\n", NULL, "bad.yaml:3: train.lr: expected each field once, found it again (first at line 2)");
    expect_error("train: 5\n", NULL, "bad.yaml:1: train: expected a mapping of fields, found a scalar");
    expect_error("data:\n  min_sizes: [5, x]\n", NULL, "bad.yaml:2: data.min_sizes: expected an integer in 1..65535, found 'x'");
    expect_error("data:\n  min_sizes: [5, 5, 5]\n", NULL, "data.min_sizes, data.max_sizes: expected 2 entries each");
    expect_error("data:\n  max_sizes: [60, 16]\n", NULL, "model.vocab_size: expected more than the dataset's largest token id");
    expect_error("output:\n  arch: a/b\n", NULL, "bad.yaml:2: output.arch: expected a label of letters");
    expect_error("data:\n  path: \"\"\n", NULL, "bad.yaml:2: data.path: expected a string of 1..511 characters, found 0");
    {  // a run shorter than its warm-up loads, as the reference's (--step below --warmup_step)
        hax_config c;
        char err[512] = "";
        const char *txt = "train:\n  steps: 100\n  warmup: 200\n";
        CHECK(config_load_text(&c, "short.yaml", txt, strlen(txt), NULL, 0, err, sizeof err) == 0, "%s", err);
        CHECK(c.train.steps == 100 && c.train.warmup == 200, "steps %lld warmup %lld", (long long)c.train.steps,
              (long long)c.train.warmup);
    }
    // Sparse patterns and budgets.
    expect_error("sparse:\n  pattern: sliding_windows\n", NULL,
                 "bad.yaml:2: sparse.pattern: expected '+'-joined parts among sliding_window");
    expect_error("sparse:\n  pattern: full+sink\n", NULL, "expected 'full' alone");
    expect_error("sparse:\n  pattern: sliding_window+sink+dilated\n  keys: 64\n", NULL,
                 "sparse.keys: expected a multiple of the 3 parts of 'sliding_window+sink+dilated', found 64");
    expect_error("model:\n  arch: samba\nsparse:\n  pattern: sliding_window\n", NULL, "sparse.pattern: expected none for samba");
    expect_error("model:\n  arch: mamba2\n  head_dim: 10\n", NULL, "model.n_heads x model.head_dim: expected to equal");
    // Overrides.
    expect_error("train:\n  lr: 0.1\n", "train.lr=abc", "override 'train.lr=abc': expected a number, found 'abc'");
    expect_error("train:\n  lr: 0.1\n", "train.lr", "override 'train.lr': expected section.field=value");
    expect_error("train:\n  lr: 0.1\n", "lr=3", "override 'lr=3': expected section.field=value");
    expect_error("train:\n  lr: 0.1\n", "train.rate=3", "override 'train.rate=3': expected a field of train");
    expect_error("train:\n  lr: 0.1\n", "optim.lr=3", "override 'optim.lr=3': expected a section among");
    expect_error("train:\n  lr: 0.1\n", "sparse.pattern=lsh", "override 'sparse.pattern=lsh': expected '+'-joined parts");
    expect_error("sparse:\n  pattern: sign_bin_lsh+key_selection\n", "sparse.keys=63", "sparse.keys: expected a multiple of the 2 parts");
    // Missing file.
    hax_config c;
    char err[512];
    CHECK(config_load(&c, "/tmp/hax_no_such_config.yaml", NULL, 0, err, sizeof err) != 0 &&
              strstr(err, "/tmp/hax_no_such_config.yaml: cannot read"),
          "missing file: %s", err);
}

// ---------------------------------------------------------------- base files

// tests/configs_full/ holds, for each configs/ file that names a base, its
// fully written form from before base: existed. Both resolve to the same
// config, printed the same.
static void test_based_configs_match_full_copies(void) {
    const char *full_dir = "tests/configs_full";
    DIR *d = opendir(full_dir);
    CHECK(d != NULL, "cannot open %s", full_dir);
    if (!d) return;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0) continue;
        char full_path[1024], based_path[1024], err[512], diff[1024];
        snprintf(full_path, sizeof full_path, "%s/%s", full_dir, e->d_name);
        snprintf(based_path, sizeof based_path, "%s/%s", configs_dir(), e->d_name);
        char *text = hax_read_file(based_path, NULL);
        CHECK(text && (strncmp(text, "base:", 5) == 0 || strstr(text, "\nbase:")), "%s names no base", based_path);
        free(text);
        hax_config full, based;
        int rc = config_load(&full, full_path, NULL, 0, err, sizeof err);
        CHECK(rc == 0, "%s", err);
        rc |= config_load(&based, based_path, NULL, 0, err, sizeof err);
        CHECK(rc == 0, "%s", err);
        if (rc) continue;
        n++;
        config_first_difference(&full, &based, full_path, based_path, diff, sizeof diff);
        CHECK(diff[0] == 0 && config_equal(&full, &based), "%s", diff);
        char *a = config_to_string(&full), *b = config_to_string(&based);
        CHECK(strcmp(a, b) == 0, "%s and %s print differently", full_path, based_path);
        free(a);
        free(b);
    }
    closedir(d);
    CHECK(n == 19, "%d based configs compared, expected 19 (16 Table 1 variants, 3 tiny)", n);
}

// A temporary folder for the base-file tests, and files in it.
static char tmp_dir[64];

static void tmp_put(const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    char *slash = strrchr(path, '/');
    *slash = 0;
    hax_mkdir_p(path);
    *slash = '/';
    CHECK(hax_write_file_atomic(path, text, strlen(text)) == 0, "cannot write %s", path);
}

static int tmp_load(hax_config *c, const char *name, const char *override, char *err, int errlen) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    const char *ov[1] = {override};
    return config_load(c, path, ov, override ? 1 : 0, err, errlen);
}

// Loading name fails with exactly the message want (a format with one %s, the folder).
static void expect_tmp_error(const char *name, const char *want) {
    hax_config c;
    char err[512] = "", full[512];
    snprintf(full, sizeof full, want, tmp_dir);
    CHECK(tmp_load(&c, name, NULL, err, sizeof err) != 0, "%s accepted", name);
    CHECK(strcmp(err, full) == 0, "%s: message\n  '%s', expected\n  '%s'", name, err, full);
}

static void tmp_begin(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/hax_test_config.XXXXXX");
    if (!mkdtemp(tmp_dir)) hax_die("mkdtemp failed");
}

static void tmp_end(void) {
    CHECK(test_remove_dir(tmp_dir), "rm -rf %s", tmp_dir);
}

// A base is loaded first (paths relative to the including file's folder),
// the including file's fields override it, the command line overrides both;
// the model defaults come from the nearest model.arch of the chain.
static void test_base_chain(void) {
    tmp_begin();
    tmp_put("low.yaml", "model:\n  arch: mamba2\ntrain:\n  lr: 0.1\n  seed: 5\n  steps: 1000\n  warmup: 10\n");
    tmp_put("sub/mid.yaml", "base: ../low.yaml\ntrain:\n  lr: 0.2\n");
    tmp_put("top.yaml", "# a comment\nbase: sub/mid.yaml\ntrain:\n  lr: 0.3\n");
    hax_config c;
    char err[512];
    CHECK(tmp_load(&c, "top.yaml", NULL, err, sizeof err) == 0, "%s", err);
    CHECK(c.train.lr == 0.3 && c.train.seed == 5 && c.train.steps == 1000, "top: lr %g seed %llu", c.train.lr,
          (unsigned long long)c.train.seed);
    CHECK(c.model.arch == ARCH_MAMBA2 && c.model.n_heads == 8 && c.model.state_size == 32, "mamba2 defaults from the base");
    CHECK(tmp_load(&c, "top.yaml", "train.lr=0.4", err, sizeof err) == 0 && c.train.lr == 0.4, "override: %s", err);
    CHECK(tmp_load(&c, "sub/mid.yaml", NULL, err, sizeof err) == 0 && c.train.lr == 0.2, "mid: %s", err);
    check_round_trip(&c, "sub/mid.yaml");
    char *text = config_to_string(&c);
    CHECK(strstr(text, "base") == NULL, "the printed config names a base:\n%s", text);
    free(text);
    // The nearest model.arch decides the model defaults; an override beats the files.
    tmp_put("mamba_top.yaml", "base: low.yaml\nmodel:\n  arch: mamba\n");
    CHECK(tmp_load(&c, "mamba_top.yaml", NULL, err, sizeof err) == 0, "%s", err);
    CHECK(c.model.arch == ARCH_MAMBA && c.model.state_size == 16 && c.model.n_heads == 0, "mamba over a mamba2 base");
    tmp_put("samba_mid.yaml", "base: low.yaml\nmodel:\n  arch: samba\n");
    tmp_put("samba_top.yaml", "base: samba_mid.yaml\n");
    CHECK(tmp_load(&c, "samba_top.yaml", NULL, err, sizeof err) == 0, "%s", err);
    CHECK(c.model.arch == ARCH_SAMBA && c.model.attn_heads == 4 && c.model.n_layers == 4, "samba from the nearest base");
    CHECK(tmp_load(&c, "samba_top.yaml", "model.arch=mamba2", err, sizeof err) == 0, "%s", err);
    CHECK(c.model.arch == ARCH_MAMBA2 && c.model.n_heads == 8 && c.model.attn_heads == 0, "mamba2 by override");
    // Text in memory: base is relative to the folder of its name.
    char name[128];
    snprintf(name, sizeof name, "%s/in_memory.yaml", tmp_dir);
    CHECK(config_load_text(&c, name, "base: low.yaml\n", 15, NULL, 0, err, sizeof err) == 0 && c.train.lr == 0.1, "%s", err);
    // 8 nested bases load; a 9th is refused.
    for (int i = 0; i <= 9; i++) {
        char file[32], body[64];
        snprintf(file, sizeof file, "c%d.yaml", i);
        if (i < 9) snprintf(body, sizeof body, "base: c%d.yaml\n", i + 1);
        else snprintf(body, sizeof body, "train:\n  seed: 9\n");
        tmp_put(file, body);
    }
    CHECK(tmp_load(&c, "c1.yaml", NULL, err, sizeof err) == 0 && c.train.seed == 9, "8 bases: %s", err);
    expect_tmp_error("c0.yaml", "%s/c8.yaml:1: base: expected at most 8 nested base files, found more at 'c9.yaml'");
    tmp_end();
}

static void test_base_errors(void) {
    tmp_begin();
    tmp_put("low.yaml", "train:\n  lr: 0.1\n");
    tmp_put("x.yaml", "base: nope.yaml\n");
    expect_tmp_error("x.yaml", "%s/x.yaml:1: base: cannot read 'nope.yaml': No such file or directory");
    tmp_put("sub/low.yaml", "train:\n  lr: 0.1\n");
    tmp_put("folder.yaml", "train:\n  seed: 2\nbase: sub\n");
    expect_tmp_error("folder.yaml", "%s/folder.yaml:3: base: cannot read 'sub': expected a regular file, found a folder");
    tmp_put("a.yaml", "base: b.yaml\n");
    tmp_put("b.yaml", "train:\n  lr: 0.1\nbase: ./a.yaml\n");
    expect_tmp_error("a.yaml", "%s/b.yaml:3: base: include cycle through './a.yaml'");
    tmp_put("self.yaml", "base: self.yaml\n");
    expect_tmp_error("self.yaml", "%s/self.yaml:1: base: include cycle through 'self.yaml'");
    // An error in a base names the base file.
    tmp_put("bad_low.yaml", "train:\n  lr: abc\n");
    tmp_put("bad_top.yaml", "base: bad_low.yaml\n");
    expect_tmp_error("bad_top.yaml", "%s/bad_low.yaml:2: train.lr: expected a number, found 'abc'");
    tmp_put("syntax_low.yaml", "train:\n  lr: [1\n");
    tmp_put("syntax_top.yaml", "base: syntax_low.yaml\n");
    hax_config c;
    char err[512], want[256];
    snprintf(want, sizeof want, "%s/syntax_low.yaml:3: expected valid YAML", tmp_dir);
    CHECK(tmp_load(&c, "syntax_top.yaml", NULL, err, sizeof err) != 0 && strstr(err, want) == err, "syntax: %s", err);
    // A field given in the base and in the including file is fine; twice in one file is not.
    tmp_put("dup.yaml", "base: low.yaml\ntrain:\n  lr: 0.2\n  lr: 0.3\n");
    expect_tmp_error("dup.yaml", "%s/dup.yaml:4: train.lr: expected each field once, found it again (first at line 3)");
    tmp_end();
    // The key itself (checked before any base is read).
    expect_error("base: [a.yaml]\n", NULL, "bad.yaml:1: base: expected a file name, found a list");
    expect_error("base:\n  file: a.yaml\n", NULL, "bad.yaml:2: base: expected a file name, found a mapping");
    expect_error("base:\ntrain:\n  lr: 0.1\n", NULL, "bad.yaml:1: base: expected a file name, found nothing");
    expect_error("base: a.yaml\ntrain:\n  lr: 0.1\nbase: b.yaml\n", NULL,
                 "bad.yaml:4: base: expected once, found it again (first at line 1)");
    expect_error("bse: a.yaml\n", NULL, "bad.yaml:1: expected a section among model, sparse, data, train, output or the key "
                                        "base; found unknown key 'bse'");
}

// The README's "Configs" section documents every field (its tables name
// each one in backquotes, under the section's own table).
static void test_readme_documents_fields(void) {
    size_t len = 0;
    char *readme = hax_read_file("README.md", &len);
    CHECK(readme != NULL, "cannot read README.md");
    if (!readme) return;
    char *start = strstr(readme, "\n## Configs\n");
    CHECK(start != NULL, "README.md has no '## Configs' section");
    if (!start) {
        free(readme);
        return;
    }
    char *end = strstr(start + 1, "\n## ");
    if (end) *end = 0;
    for (int i = 0; i < cfg_n_fields; i++) {
        char head[64], name[80];
        snprintf(head, sizeof head, "**`%s`**", cfg_fields[i].section);
        snprintf(name, sizeof name, "`%s`", cfg_fields[i].name);
        const char *sec = strstr(start, head);
        CHECK(sec != NULL, "README Configs: no table for section %s", cfg_fields[i].section);
        if (!sec) continue;
        const char *next = strstr(sec + strlen(head), "\n**`");  // the next section's table
        const char *hit = strstr(sec, name);
        CHECK(hit && (!next || hit < next), "README Configs: %s.%s is not documented", cfg_fields[i].section,
              cfg_fields[i].name);
    }
    free(readme);
}

int main(void) {
    RUN(test_every_config);
    RUN(test_config_values);
    RUN(test_eval_batch);
    RUN(test_table1_rows);
    RUN(test_first_difference);
    RUN(test_overrides);
    RUN(test_bad_configs);
    RUN(test_based_configs_match_full_copies);
    RUN(test_base_chain);
    RUN(test_base_errors);
    RUN(test_readme_documents_fields);
    return test_summary();
}
