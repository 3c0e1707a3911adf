// config_load.c: loading a config from YAML (libyaml documents through the
// bounded hax_yaml_load, so every node carries its line): one file's walk
// over its sections and fields, and the chain of `base:` files, applied from
// the deepest base up, then the overrides. The fields, values and checks are
// config.c's.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "src/config/config.h"
#include "src/config/config_fields.h"
#include "src/core/common.h"
#include "src/core/yaml_util.h"

#define arch_names hax_arch_names  // src/model/arch.h

// ---------------------------------------------------------------- YAML

typedef struct {
    yaml_document_t *doc;
    const char *name;
    char *err;
    int errlen;
} ydoc;

static const char *node_kind(const yaml_node_t *n) {
    if (!n) return "nothing";
    switch (n->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_SCALAR_NODE: return "a scalar";
    default: return "an empty node";
    }
}

static int line_of(const yaml_node_t *n) { return n ? (int)n->start_mark.line + 1 : 0; }

static const char *scalar(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

// Applies one "key: value" of a section.
static int apply_node(ydoc *y, hax_config *c, const char *section, yaml_node_t *key, yaml_node_t *val) {
    const char *name = scalar(key);
    const cfg_field *f = cfg_find_field(section, name);
    if (!f) {
        char names[1024];
        cfg_field_names(section, names, sizeof names);
        return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected a field of %s (%s), found unknown key '%s'", y->name,
                   line_of(key), section, name, section, names, name);
    }
    char text[512], why[400];
    if (f->type == F_INTLIST && val->type == YAML_SEQUENCE_NODE) {
        text[0] = 0;
        for (yaml_node_item_t *it = val->data.sequence.items.start; it < val->data.sequence.items.top; it++) {
            yaml_node_t *e = yaml_document_get_node(y->doc, *it);
            if (!e || e->type != YAML_SCALAR_NODE)
                return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected a list of integers, found %s in it", y->name,
                           line_of(e ? e : val), section, name, node_kind(e));
            snprintf(text + strlen(text), sizeof text - strlen(text), "%s%s", text[0] ? "," : "", scalar(e));
        }
    } else if (val->type != YAML_SCALAR_NODE) {
        return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected %s, found %s", y->name, line_of(val), section, name,
                   f->type == F_INTLIST ? "a list of integers" : "a single value", node_kind(val));
    } else {
        if (strlen(scalar(val)) >= sizeof text)
            return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected a value of at most %zu characters, found %zu", y->name,
                       line_of(val), section, name, sizeof text - 1, strlen(scalar(val)));
        strcpy(text, scalar(val));
    }
    if (cfg_set_value(c, f, text, why, sizeof why) != 0)
        return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: %s", y->name, line_of(val), section, name, why);
    return 0;
}

// The pair before p in root whose key is the same scalar as p's, or NULL.
static yaml_node_t *earlier_key(ydoc *y, yaml_node_t *root, yaml_node_pair_t *p) {
    const char *key = scalar(yaml_document_get_node(y->doc, p->key));
    for (yaml_node_pair_t *q = root->data.mapping.pairs.start; q < p; q++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, q->key);
        if (k->type == YAML_SCALAR_NODE && strcmp(scalar(k), key) == 0) return k;
    }
    return NULL;
}

// "base: FILE": a non-empty scalar, given once.
static int check_base(ydoc *y, yaml_node_t *root, yaml_node_pair_t *p) {
    yaml_node_t *k = yaml_document_get_node(y->doc, p->key), *v = yaml_document_get_node(y->doc, p->value);
    yaml_node_t *first = earlier_key(y, root, p);
    if (first)
        return hax_errf(y->err, y->errlen, "%s:%d: base: expected once, found it again (first at line %d)", y->name,
                        line_of(k), line_of(first));
    if (v->type != YAML_SCALAR_NODE || !*scalar(v))
        return hax_errf(y->err, y->errlen, "%s:%d: base: expected a file name, found %s", y->name, line_of(v),
                        v->type == YAML_SCALAR_NODE ? "nothing" : node_kind(v));
    return 0;
}

// Checks one section's fields (scalar keys, each once) and, with c != NULL, applies them.
static int walk_section(ydoc *y, hax_config *c, const char *section, yaml_node_t *v) {
    for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
        yaml_node_t *fk = yaml_document_get_node(y->doc, q->key), *fv = yaml_document_get_node(y->doc, q->value);
        if (fk->type != YAML_SCALAR_NODE)
            return hax_errf(y->err, y->errlen, "%s:%d: %s: expected a field name, found %s", y->name, line_of(fk), section,
                            node_kind(fk));
        yaml_node_t *first = earlier_key(y, v, q);
        if (first)
            return hax_errf(y->err, y->errlen, "%s:%d: %s.%s: expected each field once, found it again (first at line %d)",
                            y->name, line_of(fk), section, scalar(fk), line_of(first));
        if (c && apply_node(y, c, section, fk, fv) != 0) return -1;
    }
    return 0;
}

// Checks the document's shape (a mapping of known sections and base, each
// section a mapping with scalar keys, no key twice) and, with c != NULL,
// applies its fields (base is the caller's).
static int walk(ydoc *y, hax_config *c) {
    yaml_node_t *root = yaml_document_get_root_node(y->doc);
    if (!root || root->type != YAML_MAPPING_NODE)
        return hax_errf(y->err, y->errlen, "%s:%d: expected a mapping of the sections model, sparse, data, train, output; found %s",
                   y->name, line_of(root) ? line_of(root) : 1, node_kind(root));
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key), *v = yaml_document_get_node(y->doc, p->value);
        if (k->type == YAML_SCALAR_NODE && strcmp(scalar(k), "base") == 0) {
            if (check_base(y, root, p) != 0) return -1;
            continue;
        }
        if (k->type != YAML_SCALAR_NODE || !cfg_known_section(scalar(k)))
            return hax_errf(y->err, y->errlen,
                            "%s:%d: expected a section among model, sparse, data, train, output or the key base; found %s%s%s",
                            y->name, line_of(k), k->type == YAML_SCALAR_NODE ? "unknown key '" : node_kind(k),
                            k->type == YAML_SCALAR_NODE ? scalar(k) : "", k->type == YAML_SCALAR_NODE ? "'" : "");
        if (earlier_key(y, root, p))
            return hax_errf(y->err, y->errlen, "%s:%d: %s: expected each section once, found it again", y->name,
                       line_of(k), scalar(k));
        if (v->type != YAML_MAPPING_NODE) {
            if (v->type == YAML_SCALAR_NODE && !*scalar(v)) continue;  // "section:" with nothing under it
            return hax_errf(y->err, y->errlen, "%s:%d: %s: expected a mapping of fields, found %s", y->name, line_of(v),
                       scalar(k), node_kind(v));
        }
        if (walk_section(y, c, scalar(k), v) != 0) return -1;
    }
    return 0;
}

// The value node of the document's base key (checked by walk), or NULL.
static yaml_node_t *doc_base(ydoc *y) {
    yaml_node_t *root = yaml_document_get_root_node(y->doc);
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++)
        if (strcmp(scalar(yaml_document_get_node(y->doc, p->key)), "base") == 0)
            return yaml_document_get_node(y->doc, p->value);
    return NULL;
}

// model.arch as the document gives it (-1 when absent or not a known name).
static int doc_arch(ydoc *y) {
    yaml_node_t *root = yaml_document_get_root_node(y->doc);
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key), *v = yaml_document_get_node(y->doc, p->value);
        if (strcmp(scalar(k), "model") != 0 || v->type != YAML_MAPPING_NODE) continue;
        for (yaml_node_pair_t *q = v->data.mapping.pairs.start; q < v->data.mapping.pairs.top; q++) {
            yaml_node_t *fk = yaml_document_get_node(y->doc, q->key), *fv = yaml_document_get_node(y->doc, q->value);
            if (strcmp(scalar(fk), "arch") == 0 && fv->type == YAML_SCALAR_NODE)
                for (int i = 0; arch_names[i]; i++)
                    if (strcmp(scalar(fv), arch_names[i]) == 0) return i;
        }
    }
    return -1;
}

// ---------------------------------------------------------------- base files

// A config and its bases: f[0] the file loaded, f[1] its base, f[2] the
// base's base, ... (CONFIG_MAX_BASES at most).
#define CONFIG_MAX_BASES 8

typedef struct {
    char *name;            // its path, for messages and as the folder of its own base
    char *real;            // realpath (NULL for text with no file behind it), to find cycles
    yaml_document_t doc;
} chain_file;

typedef struct {
    chain_file f[CONFIG_MAX_BASES + 1];
    int n;
} config_chain;

static void chain_free(config_chain *ch) {
    for (int i = 0; i < ch->n; i++) {
        yaml_document_delete(&ch->f[i].doc);
        free(ch->f[i].name);
        free(ch->f[i].real);
    }
    ch->n = 0;
}

static ydoc chain_ydoc(config_chain *ch, int i, char *err, int errlen) {
    return (ydoc){&ch->f[i].doc, ch->f[i].name, err, errlen};
}

// Parses text as the chain's next file and checks its shape. 0 or -1.
static int chain_push(config_chain *ch, const char *name, const char *text, size_t len, char *err, int errlen) {
    chain_file *f = &ch->f[ch->n];
    char e[512];
    // bounded: nesting deeper than HAX_MAX_DEPTH is refused while parsing (linear time)
    int rc = hax_yaml_load(&f->doc, text, len, HAX_MAX_DEPTH, e, sizeof e);
    if (rc != 0) {
        int line = 1;
        const char *why = e;
        if (sscanf(e, "line %d: ", &line) == 1) why = strchr(e, ':') + 2;
        if (rc == -1) return hax_errf(err, errlen, "%s:%d: expected valid YAML, found a syntax error: %s", name, line, why);
        return hax_errf(err, errlen, "%s:%d: %s", name, line, why);
    }
    f->name = xstrdup(name);
    f->real = realpath(name, NULL);
    ch->n++;
    ydoc y = chain_ydoc(ch, ch->n - 1, err, errlen);
    return walk(&y, NULL);
}

// 1 when the file at path is already in the chain.
static int chain_has(const config_chain *ch, const char *path) {
    char *real = realpath(path, NULL);
    int found = 0;
    for (int i = 0; real && i < ch->n; i++) found |= ch->f[i].real && strcmp(ch->f[i].real, real) == 0;
    free(real);
    return found;
}

// The reason part of hax_read_file_max's "PATH: reason" message.
static const char *base_why(const char *msg, const char *path) {
    size_t n = strlen(path);
    const char *why = strncmp(msg, path, n) == 0 && msg[n] == ':' ? msg + n + 2 : msg;
    return strncmp(why, "cannot read: ", 13) == 0 ? why + 13 : why;
}

// Loads the base that v (the base key's value in the chain's last file) names. 0 or -1.
static int chain_load_base(config_chain *ch, yaml_node_t *v, char *err, int errlen) {
    const char *including = ch->f[ch->n - 1].name, *base = scalar(v);
    char *path = hax_path_beside(including, base);
    size_t len;
    char why[600];
    char *text = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, why, sizeof why);
    int rc = 0;
    if (!text)
        rc = hax_errf(err, errlen, "%s:%d: base: cannot read '%s': %s", including, line_of(v), base, base_why(why, path));
    else if (chain_has(ch, path))
        rc = hax_errf(err, errlen, "%s:%d: base: include cycle through '%s'", including, line_of(v), base);
    else if (ch->n > CONFIG_MAX_BASES)
        rc = hax_errf(err, errlen, "%s:%d: base: expected at most %d nested base files, found more at '%s'", including,
                      line_of(v), CONFIG_MAX_BASES, base);
    else
        rc = chain_push(ch, path, text, len, err, errlen);
    free(text);
    free(path);
    return rc;
}

// Loads the base of the chain's last file, then that one's base, and so on. 0 or -1.
static int chain_load_bases(config_chain *ch, char *err, int errlen) {
    for (;;) {
        ydoc y = chain_ydoc(ch, ch->n - 1, err, errlen);
        yaml_node_t *v = doc_base(&y);
        if (!v) return 0;
        if (chain_load_base(ch, v, err, errlen) != 0) return -1;
    }
}

// The architecture whose reference config gives the model defaults: the
// last model.arch override, else the nearest file of the chain that names one.
static int chain_arch(config_chain *ch, const char *const *overrides, int n_over) {
    int arch = -1;
    for (int i = 0; i < ch->n && arch < 0; i++) {
        ydoc y = chain_ydoc(ch, i, NULL, 0);
        arch = doc_arch(&y);
    }
    for (int i = 0; i < n_over; i++)
        for (int a = 0; arch_names[a]; a++) {
            char want[32];
            snprintf(want, sizeof want, "model.arch=%s", arch_names[a]);
            if (strcmp(overrides[i], want) == 0) arch = a;
        }
    return arch;
}

// Defaults, then the files from the deepest base to the one loaded.
static int chain_apply(config_chain *ch, hax_config *c, const char *const *overrides, int n_over, char *err, int errlen) {
    int arch = chain_arch(ch, overrides, n_over);
    config_defaults(c);
    if (arch > 0) model_config_reference(&c->model, (hax_arch)arch, 0, NULL);
    for (int i = ch->n - 1; i >= 0; i--) {
        ydoc y = chain_ydoc(ch, i, err, errlen);
        if (walk(&y, c) != 0) return -1;
    }
    return 0;
}

int config_load_text(hax_config *c, const char *name, const char *text, size_t len, const char *const *overrides,
                     int n_over, char *err, int errlen) {
    config_chain ch = {.n = 0};
    int rc = chain_push(&ch, name, text, len, err, errlen);
    if (rc == 0) rc = chain_load_bases(&ch, err, errlen);
    if (rc == 0) rc = chain_apply(&ch, c, overrides, n_over, err, errlen);
    chain_free(&ch);
    for (int i = 0; rc == 0 && i < n_over; i++) rc = config_override(c, overrides[i], err, errlen);
    if (rc == 0) {
        char why[400];
        if (config_finalize(c, why, sizeof why) != 0) rc = hax_errf(err, errlen, "%s: %s", name, why);
    }
    return rc;
}

int config_load(hax_config *c, const char *path, const char *const *overrides, int n_over, char *err, int errlen) {
    size_t len;
    // bounded: a regular file of at most HAX_MAX_TEXT_BYTES (no FIFO, no /dev/zero)
    char *text = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, err, errlen);
    if (!text) return -1;
    int rc = config_load_text(c, path, text, len, overrides, n_over, err, errlen);
    free(text);
    return rc;
}
