// test_arch.c: the table of architectures (src/model/arch.h) is complete and
// consistent: every row has a name that parses back, a title, a reference
// config that validates, builders for its mixers; the per-layer mixer and the
// parameter table follow the row (Samba: attention at odd layers, an MLP and
// mixer_norm; Mamba / Mamba2: no MLP).
#include "src/core/common.h"
#include "src/model/model.h"
#include "test.h"

static void test_table_complete(void) {
    CHECK(hax_arch_names[HAX_N_ARCHS] == NULL, "names not NULL-terminated");
    char list[128];
    arch_name_list(list, sizeof list);
    CHECK(strcmp(list, "mamba, mamba2 or samba") == 0, "name list '%s'", list);
    for (int a = 0; a < HAX_N_ARCHS; a++) {
        const hax_arch_info *r = arch_info((hax_arch)a);
        CHECK(r && hax_arch_names[a] && r->title && r->norm_name && r->golden_eps && r->reference,
              "arch %d: an empty field", a);
        if (!r || !hax_arch_names[a]) continue;
        CHECK(arch_from_name(hax_arch_names[a]) == a, "%s: name does not parse back", hax_arch_names[a]);
        CHECK(strcmp(arch_name((hax_arch)a), hax_arch_names[a]) == 0, "%s: arch_name", hax_arch_names[a]);
        CHECK(r->ssm == MIXER_MAMBA || r->ssm == MIXER_MAMBA2, "%s: ssm mixer %d", hax_arch_names[a], r->ssm);
        for (int d = 0; d < a; d++) CHECK(strcmp(hax_arch_names[a], hax_arch_names[d]) != 0, "name twice");
        hax_model_config c;
        model_config_reference(&c, (hax_arch)a, 0, r->sparse_ok ? "sign_bin_lsh+key_selection" : NULL);
        char err[256];
        CHECK(model_config_validate(&c, err, sizeof err) == 0, "%s reference: %s", hax_arch_names[a], err);
        hax_model m;
        model_build(&m, &c);
        for (int l = 0; l < c.n_layers; l++) {
            hax_mixer_kind k = arch_layer_mixer(&c, l);
            CHECK((k == MIXER_ATTN) == (r->attn_every && l % r->attn_every == r->attn_every - 1),
                  "%s layer %d: mixer %d", hax_arch_names[a], l, k);
            CHECK(m.layers[l].is_attn == (k == MIXER_ATTN), "%s layer %d: is_attn", hax_arch_names[a], l);
            char name[96];
            snprintf(name, sizeof name, "layers.%d.%s.weight", l, r->norm_name);
            CHECK(model_find(&m, name) >= 0, "%s: no %s", hax_arch_names[a], name);
            snprintf(name, sizeof name, "layers.%d.mlp.gate_proj.weight", l);
            CHECK((model_find(&m, name) >= 0) == r->has_mlp, "%s: %s", hax_arch_names[a], name);
            snprintf(name, sizeof name, "layers.%d.mixer.q_proj.weight", l);
            CHECK((model_find(&m, name) >= 0) == (k == MIXER_ATTN), "%s: %s", hax_arch_names[a], name);
        }
        CHECK(arch_has_mlp(&c) == r->has_mlp && arch_ssm_mixer(&c) == r->ssm, "%s: helpers", hax_arch_names[a]);
        model_free(&m);
    }
    CHECK(arch_info(HAX_N_ARCHS) == NULL && arch_from_name("mamba3") < 0, "outside the table");
}

// A non-sparse architecture refuses a pattern, naming itself.
static void test_sparse_refused(void) {
    for (int a = 0; a < HAX_N_ARCHS; a++) {
        hax_model_config c;
        model_config_reference(&c, (hax_arch)a, 0, "sliding_window");
        char err[256] = "";
        int rc = model_config_validate(&c, err, sizeof err);
        CHECK((rc != 0) == !hax_archs[a].sparse_ok, "%s: rc %d %s", hax_arch_names[a], rc, err);
        if (rc) CHECK(strstr(err, "expected none for") && strstr(err, hax_arch_names[a]), "%s", err);
    }
}

int main(void) {
    RUN(test_table_complete);
    RUN(test_sparse_refused);
    return test_summary();
}
