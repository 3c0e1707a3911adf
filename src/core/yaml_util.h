// yaml_util.h: small lookups in libyaml documents (configs, manifests, and
// JSON files, which libyaml reads as YAML flow syntax).
#ifndef HAX_YAML_UTIL_H
#define HAX_YAML_UTIL_H

#include <yaml.h>

// The value node of key in a mapping node, or NULL when map is not a
// mapping or has no such key.
yaml_node_t *hax_yaml_get(yaml_document_t *doc, yaml_node_t *map, const char *key);

// Loads text (len bytes) into doc as yaml_parser_load does, but refuses
// nesting deeper than max_depth collections, checked while parsing: the
// document is composed from the parser's events, which stop at the first
// level too deep, so deep input fails in time linear in its length (libyaml's
// scanner alone is quadratic in the flow depth). Returns 0 (doc to be freed
// with yaml_document_delete; an empty text gives a document without a root),
// or -1 (a syntax error) or -2 (too deep) with "line N: ..." in err and
// nothing to free.
int hax_yaml_load(yaml_document_t *doc, const char *text, size_t len, int max_depth, char *err, int errlen);

#endif
