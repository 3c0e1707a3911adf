// yaml_util.c: see yaml_util.h.
#include "src/core/yaml_util.h"

#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"

// The deepest nesting hax_yaml_load accepts, whatever its caller asks.
#define HAX_MAX_DEPTH_LIMIT 256

yaml_node_t *hax_yaml_get(yaml_document_t *doc, yaml_node_t *map, const char *key) {
    if (!map || map->type != YAML_MAPPING_NODE) return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strcmp((const char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

// ---------------------------------------------------------------- bounded loading

typedef struct {
    yaml_document_t *doc;
    int stack[HAX_MAX_DEPTH_LIMIT];  // the open collections' node ids
    int key_pending[HAX_MAX_DEPTH_LIMIT];  // a mapping's key id waiting for its value (0: none)
    int depth;
    yaml_char_t **anchors;  // anchor names and their node ids, for aliases
    int *anchor_ids, n_anchors, cap_anchors;
} yl_state;

// Attaches node id to the open collection (or makes it the root).
static int yl_attach(yl_state *s, int id) {
    if (s->depth == 0) return 1;
    int top = s->stack[s->depth - 1];
    yaml_node_t *n = yaml_document_get_node(s->doc, top);
    if (n->type == YAML_SEQUENCE_NODE) return yaml_document_append_sequence_item(s->doc, top, id);
    if (!s->key_pending[s->depth - 1]) {
        s->key_pending[s->depth - 1] = id;
        return 1;
    }
    int ok = yaml_document_append_mapping_pair(s->doc, top, s->key_pending[s->depth - 1], id);
    s->key_pending[s->depth - 1] = 0;
    return ok;
}

static void yl_anchor(yl_state *s, yaml_char_t *anchor, int id) {
    if (!anchor) return;
    if (s->n_anchors == s->cap_anchors) {
        s->cap_anchors = s->cap_anchors ? 2 * s->cap_anchors : 8;
        s->anchors = xrealloc(s->anchors, sizeof *s->anchors * (size_t)s->cap_anchors);
        s->anchor_ids = xrealloc(s->anchor_ids, sizeof *s->anchor_ids * (size_t)s->cap_anchors);
    }
    s->anchors[s->n_anchors] = (yaml_char_t *)xstrdup((const char *)anchor);
    s->anchor_ids[s->n_anchors++] = id;
}

static int yl_alias(yl_state *s, const yaml_char_t *anchor) {
    for (int i = s->n_anchors - 1; i >= 0; i--)
        if (strcmp((const char *)s->anchors[i], (const char *)anchor) == 0) return s->anchor_ids[i];
    return 0;
}

// Where a node is in the text (yaml_document_add_* leave the marks at zero;
// messages cite node lines).
static void yl_mark(yl_state *s, int id, const yaml_event_t *e) {
    yaml_node_t *n = yaml_document_get_node(s->doc, id);
    n->start_mark = e->start_mark;
    n->end_mark = e->end_mark;
}

// One event: 1 go on, 0 document done, -1 error, -2 too deep (err set).
static int yl_event(yl_state *s, yaml_event_t *e, int max_depth, char *err, int errlen) {
    int line = (int)e->start_mark.line + 1, id = 0;
    switch (e->type) {
    case YAML_SCALAR_EVENT:
        id = yaml_document_add_scalar(s->doc, e->data.scalar.tag, e->data.scalar.value, (int)e->data.scalar.length,
                                      e->data.scalar.style);
        yl_anchor(s, e->data.scalar.anchor, id);
        break;
    case YAML_ALIAS_EVENT:
        id = yl_alias(s, e->data.alias.anchor);
        if (!id) return hax_errf(err, errlen, "line %d: expected a defined anchor, found alias '%s'", line,
                                 (const char *)e->data.alias.anchor);
        break;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        if (s->depth >= max_depth) {
            hax_errf(err, errlen, "line %d: expected nesting at most %d levels deep, found deeper", line, max_depth);
            return -2;
        }
        id = e->type == YAML_SEQUENCE_START_EVENT
                 ? yaml_document_add_sequence(s->doc, e->data.sequence_start.tag, e->data.sequence_start.style)
                 : yaml_document_add_mapping(s->doc, e->data.mapping_start.tag, e->data.mapping_start.style);
        yl_anchor(s, e->type == YAML_SEQUENCE_START_EVENT ? e->data.sequence_start.anchor : e->data.mapping_start.anchor, id);
        if (!id || !yl_attach(s, id)) return hax_errf(err, errlen, "line %d: out of memory", line);
        yl_mark(s, id, e);
        s->stack[s->depth] = id;
        s->key_pending[s->depth++] = 0;
        return 1;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        yaml_document_get_node(s->doc, s->stack[--s->depth])->end_mark = e->end_mark;
        return 1;
    case YAML_DOCUMENT_END_EVENT:
    case YAML_STREAM_END_EVENT:
        return 0;
    default:
        return 1;
    }
    if (!id || !yl_attach(s, id)) return hax_errf(err, errlen, "line %d: out of memory", line);
    if (e->type == YAML_SCALAR_EVENT) yl_mark(s, id, e);
    return 1;
}

int hax_yaml_load(yaml_document_t *doc, const char *text, size_t len, int max_depth, char *err, int errlen) {
    if (max_depth > HAX_MAX_DEPTH_LIMIT) max_depth = HAX_MAX_DEPTH_LIMIT;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return hax_errf(err, errlen, "line 1: out of memory");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_document_initialize(doc, NULL, NULL, NULL, 1, 1)) {
        yaml_parser_delete(&p);
        return hax_errf(err, errlen, "line 1: out of memory");
    }
    yl_state s = {.doc = doc};
    int rc = 1;
    while (rc == 1) {
        yaml_event_t e;
        if (!yaml_parser_parse(&p, &e)) {
            rc = hax_errf(err, errlen, "line %d: %s%s%s", (int)p.problem_mark.line + 1,
                          p.problem ? p.problem : "syntax error", p.context ? " " : "", p.context ? p.context : "");
            break;
        }
        rc = yl_event(&s, &e, max_depth, err, errlen);
        yaml_event_delete(&e);
    }
    for (int i = 0; i < s.n_anchors; i++) free(s.anchors[i]);
    free(s.anchors);
    free(s.anchor_ids);
    yaml_parser_delete(&p);
    if (rc < 0) {
        yaml_document_delete(doc);
        return rc;
    }
    return 0;
}
