// arch.h: the one table of base architectures. Each row says what the rest
// of the suite needs to know about an architecture: its name (configs,
// golden files, output labels), its d=64 reference config (the README's
// Configs table), which mixer each layer runs, whether every layer has an
// MLP sublayer, whether the sparse branch may be attached, and the names its
// parameter table and golden metadata use. Adding one: docs/HOWTO.md.
#ifndef HAX_ARCH_H
#define HAX_ARCH_H

#ifdef __cplusplus
extern "C" {
#endif

struct hax_model_config;

typedef enum { ARCH_MAMBA = 0, ARCH_MAMBA2 = 1, ARCH_SAMBA = 2, HAX_N_ARCHS } hax_arch;

// What a layer's mixer is.
typedef enum {
    MIXER_MAMBA,   // the Mamba selective scan (fla MambaMixer)
    MIXER_MAMBA2,  // the Mamba-2 SSD (fla Mamba2Mixer)
    MIXER_ATTN,    // sliding-window attention with RoPE (Samba)
} hax_mixer_kind;

typedef struct {
    const char *title;        // in messages ("Samba")
    hax_mixer_kind ssm;       // the mixer of its state-space layers
    int attn_every;           // 0: none; 2: attention at the odd layers 1, 3, ... (Samba)
    int has_mlp;              // a GatedMLP sublayer after every mixer, with its own norm
    int sparse_ok;            // the sparse branch (Enhanced mixers) may be attached
    const char *norm_name;    // the pre-mixer RMSNorm in the parameter table: layers.i.<norm_name>.weight
    const char *golden_eps;   // the golden config's key of norm_eps
    // The model fields of its reference config (d=64; double_size: d=128),
    // over the common defaults of model_config_reference.
    void (*reference)(struct hax_model_config *c, int double_size);
} hax_arch_info;

extern const hax_arch_info hax_archs[HAX_N_ARCHS];
// The names, indexed by hax_arch, NULL-terminated (the config's enum list).
extern const char *const hax_arch_names[HAX_N_ARCHS + 1];

// The row of a (NULL outside the table) and its name ("?" outside).
const hax_arch_info *arch_info(hax_arch a);
const char *arch_name(hax_arch a);
// The architecture called name, or -1.
int arch_from_name(const char *name);
// "mamba, mamba2 or samba" (for messages).
void arch_name_list(char *buf, int len);

// Layer l's mixer, whether layers have an MLP sublayer, the SSM mixer kind
// (for the engines: no ARCH_ comparisons needed).
hax_mixer_kind arch_layer_mixer(const struct hax_model_config *cfg, int l);
int arch_has_mlp(const struct hax_model_config *cfg);
hax_mixer_kind arch_ssm_mixer(const struct hax_model_config *cfg);

#ifdef __cplusplus
}
#endif

#endif
