// test_sparse_patterns.c: the table of sparse-pattern components
// (src/model/sparse_patterns.h) is complete and consistent, every pattern of
// configs/ and every accepted combination round-trips name -> mask -> name,
// malformed pattern strings are refused with one line, and the capacities and
// labels the backends and the aggregator read come from the table. (The CUDA
// rules are checked when cuda/sparse compiles: cu_rule<C> has no body for a
// component without one.)
#include <dirent.h>

#include "src/config/config.h"
#include "src/core/common.h"
#include "src/model/model_config.h"
#include "src/sparse/sparse.h"
#include "test.h"

static int popcount(unsigned m) {
    int n = 0;
    for (; m; m &= m - 1) n++;
    return n;
}

static void test_table_complete(void) {
    for (int c = 0; c < SP_N_COMPONENTS; c++) {
        const hax_sparse_pattern *p = &sparse_patterns[c];
        CHECK(p->name && p->name[0], "component %d: no name", c);
        if (!p->name) continue;
        CHECK(p->bit == 1u << c, "%s: bit %#x, expected %#x", p->name, p->bit, 1u << c);
        CHECK(p->label && p->label[0], "%s: no label", p->name);
        CHECK(p->row_share != NULL, "%s: no row share", p->name);
        CHECK(!strchr(p->name, '+') && strcmp(p->name, "none") != 0, "%s: not usable in a pattern", p->name);
        int dense = (p->flags & SPF_DENSE) != 0;
        CHECK(sparse_component_has_cpu_rule(c) == !dense, "%s: CPU rule %d for a %s component", p->name,
              sparse_component_has_cpu_rule(c), dense ? "dense" : "list");
        for (int d = 0; d < c; d++) {
            CHECK(strcmp(p->name, sparse_patterns[d].name) != 0, "%s: name twice", p->name);
            CHECK(strcmp(p->label, sparse_patterns[d].label) != 0, "%s: label '%s' twice", p->name, p->label);
        }
    }
    CHECK(!sparse_component_has_cpu_rule(-1) && !sparse_component_has_cpu_rule(SP_N_COMPONENTS), "rule range");
    for (int i = 0; i < sparse_n_named_patterns; i++) {
        char err[400];
        unsigned m;
        int parts;
        char name[128];
        sparse_pattern_name(sparse_named_patterns[i].mask, name, sizeof name);
        CHECK(sparse_pattern_parse(name, &m, &parts, err, sizeof err) == 0 && m == sparse_named_patterns[i].mask,
              "named pattern %s ('%s') is not a valid pattern", sparse_named_patterns[i].label, name);
    }
}

// Parses name and checks the round trip; returns the mask (0 if refused).
static unsigned round_trip(const char *name) {
    unsigned m = 0;
    int parts = 0;
    char err[400], back[128];
    int rc = sparse_pattern_parse(name, &m, &parts, err, sizeof err);
    CHECK(rc == 0, "'%s' refused: %s", name, err);
    if (rc != 0) return 0;
    CHECK(parts == popcount(m), "'%s': %d parts, mask %#x", name, parts, m);
    sparse_pattern_name(m, back, sizeof back);
    CHECK(strcmp(back, name) == 0, "'%s' -> %#x -> '%s'", name, m, back);
    return m;
}

static void test_config_patterns_round_trip(void) {
    const char *readme[] = {"none", "dilated", "sliding_window", "sliding_window+dilated", "sliding_window+sink",
                            "sign_bin_lsh", "key_selection", "sign_bin_lsh+key_selection", "full", "argmax_lsh"};
    for (size_t i = 0; i < sizeof readme / sizeof readme[0]; i++) round_trip(readme[i]);
    DIR *d = opendir("configs");
    CHECK(d != NULL, "cannot open configs/");
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0 || strncmp(e->d_name, "grid_", 5) == 0) continue;
        char path[512], err[512];
        snprintf(path, sizeof path, "configs/%s", e->d_name);
        hax_config c;
        if (config_load(&c, path, NULL, 0, err, sizeof err) != 0) {
            CHECK(0, "%s", err);
            continue;
        }
        unsigned m = round_trip(c.model.sparse_arch[0] ? c.model.sparse_arch : "none");
        CHECK(m == c.model.sparse_mask, "%s: mask %#x, config %#x", path, m, c.model.sparse_mask);
        n++;
    }
    if (d) closedir(d);
    CHECK(n >= 19, "only %d configs", n);
}

// Every set of components: the canonical name parses back to it, or is
// refused for a rule of the table (an alone component with others, two LSH kinds).
static void test_every_combination(void) {
    int ok = 0;
    for (unsigned m = 1; m < 1u << SP_N_COMPONENTS; m++) {
        char name[256], err[400];
        sparse_pattern_name(m, name, sizeof name);
        unsigned back;
        int parts;
        int alone = sparse_pattern_has(m, SPF_ALONE) && popcount(m) > 1;
        int two_lsh = popcount(m & sparse_pattern_bits(SPF_LSH)) > 1;
        int rc = sparse_pattern_parse(name, &back, &parts, err, sizeof err);
        CHECK((rc != 0) == (alone || two_lsh), "'%s': rc %d (alone %d, two LSH %d): %s", name, rc, alone, two_lsh,
              rc ? err : "");
        if (rc == 0) {
            ok++;
            round_trip(name);
        } else {
            CHECK(!strchr(err, '\n') && strstr(err, name), "'%s': %s", name, err);
        }
    }
    printf("     %d accepted patterns of %d sets of components\n", ok, (1 << SP_N_COMPONENTS) - 1);
}

static void test_malformed_refused(void) {
    const char *bad[] = {"+", "++", "sign_bin_lsh+", "+key_selection", "sign_bin_lsh++key_selection",
                         "sign_bin_lsh+argmax_lsh", "full+sink", "sink+sink", "lsh"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        hax_model_config cfg = {0};
        cfg.sparse_keys = 64;
        char err[400] = "";
        int rc = model_config_set_sparse(&cfg, bad[i], err, sizeof err);
        CHECK(rc != 0, "'%s' accepted (mask %#x)", bad[i], cfg.sparse_mask);
        CHECK(err[0] && !strchr(err, '\n') && strstr(err, "expected") && strstr(err, bad[i]),
              "'%s': not one clear line: '%s'", bad[i], err);
        // through a config override: one line naming the override
        char ov[64], err2[600];
        snprintf(ov, sizeof ov, "sparse.pattern=%s", bad[i]);
        const char *ovs[] = {ov};
        hax_config c;
        rc = config_load_text(&c, "t.yaml", "train:\n  lr: 0.1\n", strlen("train:\n  lr: 0.1\n"), ovs, 1, err2, sizeof err2);
        CHECK(rc != 0 && !strchr(err2, '\n') && strstr(err2, "sparse.pattern"), "override '%s': rc %d '%s'", ov, rc,
              err2);
    }
    char err[400];
    hax_model_config cfg = {0};
    CHECK(model_config_set_sparse(&cfg, "sign_bin_lsh+", err, sizeof err) != 0 && strstr(err, "empty part"),
          "'sign_bin_lsh+': %s", err);
}

// sparse_row_cap and the requirement checks read the table.
static void test_caps_and_requirements(void) {
    hax_model_config cfg = {0};
    char err[400];
    cfg.sparse_keys = 64, cfg.num_hash = 8, cfg.data_max_length = 2048;
    CHECK(model_config_set_sparse(&cfg, "sign_bin_lsh+key_selection", err, sizeof err) == 0, "%s", err);
    CHECK(sparse_row_cap(&cfg, 500) == 64, "HAX cap %d", sparse_row_cap(&cfg, 500));
    CHECK(sparse_pattern_check(&cfg, err, sizeof err) == 0, "HAX: %s", err);
    CHECK(model_config_set_sparse(&cfg, "sliding_window+dilated", err, sizeof err) == 0, "%s", err);
    CHECK(sparse_row_cap(&cfg, 500) == 32 + 500 / 64 + 1, "SW+D cap %d", sparse_row_cap(&cfg, 500));
    CHECK(model_config_set_sparse(&cfg, "full", err, sizeof err) == 0, "%s", err);
    CHECK(sparse_row_cap(&cfg, 500) == 1, "full cap %d", sparse_row_cap(&cfg, 500));
    CHECK(model_config_set_sparse(&cfg, "dilated", err, sizeof err) == 0, "%s", err);
    cfg.data_max_length = 10;
    CHECK(sparse_pattern_check(&cfg, err, sizeof err) != 0 && strstr(err, "data_max_length"), "dilation: %s", err);
    cfg.sparse_mask = SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH, cfg.k_c = 4;
    snprintf(cfg.sparse_arch, sizeof cfg.sparse_arch, "sign_bin_lsh+argmax_lsh");
    CHECK(sparse_pattern_check(&cfg, err, sizeof err) != 0 &&
              strstr(err, "sign_bin_lsh and argmax_lsh together are not supported"),
          "two LSH: %s", err);
    cfg.sparse_mask = SPARSE_FULL | SPARSE_SINK;
    CHECK(sparse_pattern_check(&cfg, err, sizeof err) != 0 && strstr(err, "'full' cannot be combined"), "full: %s",
          err);
}

static void test_labels(void) {
    struct {
        const char *pattern, *label;
    } want[] = {{"none", ""},  {"dilated", "D"},           {"sliding_window", "SW"},
                {"sliding_window+dilated", "SW+D"},           {"sliding_window+sink", "A"},
                {"sign_bin_lsh", "LSH"},                      {"key_selection", "KS"},
                {"sign_bin_lsh+key_selection", "HAX"}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        unsigned m;
        int parts;
        char err[400], label[64];
        CHECK(sparse_pattern_parse(want[i].pattern, &m, &parts, err, sizeof err) == 0, "%s", err);
        sparse_pattern_label(m, label, sizeof label);
        CHECK(strcmp(label, want[i].label) == 0, "%s: label '%s', expected '%s'", want[i].pattern, label,
              want[i].label);
    }
}

int main(void) {
    RUN(test_table_complete);
    RUN(test_config_patterns_round_trip);
    RUN(test_every_combination);
    RUN(test_malformed_refused);
    RUN(test_caps_and_requirements);
    RUN(test_labels);
    return test_summary();
}
