// yaml_util.h: small lookups in libyaml documents (configs, manifests, and
// JSON files, which libyaml reads as YAML flow syntax).
#ifndef HAX_YAML_UTIL_H
#define HAX_YAML_UTIL_H

#include <yaml.h>

// The value node of key in a mapping node, or NULL when map is not a
// mapping or has no such key.
yaml_node_t *hax_yaml_get(yaml_document_t *doc, yaml_node_t *map, const char *key);

#endif
