// dataset.c: dataset parameters, shard mapping and checks, manifest parsing,
// sample access. Batches are in dataset_batch.c.
#include "src/io/dataset.h"
#include "src/core/yaml_util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "src/core/checksum.h"
#include "src/core/common.h"
#include "src/io/dataset_internal.h"

const char *const hax_split_names[HAX_N_SPLITS] = {"train", "valid", "test"};

// ---------------------------------------------------------------- parameters

// How many distinct samples the smallest cell has, as a natural log: the
// value tables times the orders of every block in both parts.
static double log_distinct(const hax_data_params *p) {
    double lg = 0, blocks = 1;
    for (int l = 0; l < p->levels; l++) {
        lg += 2 * blocks * lgamma(p->min_size[l] + 1.0);
        blocks *= p->min_size[l];
    }
    return lg + blocks * log((double)p->n_value);
}

// The id layout: none (all 0), or one maximum per level, each at least the
// level's max size; the compat generator has the reference's layout only.
static int check_id_layout(const hax_data_params *p, char *err, int errlen) {
    int n = 0;
    while (n < HAX_MAX_LEVELS && p->id_max[n] > 0) n++;
    if (n == 0) return 0;
    if (n != p->levels)
        return hax_errf(err, errlen, "id_layout: expected %d maxima (one per level), found %d", p->levels, n);
    if (p->compat && data_has_id_layout(p))
        return hax_errf(err, errlen, "id_layout: expected none with the compat generator (the reference's layout), "
                        "found one");
    for (int l = 0; l < p->levels; l++)
        if (p->id_max[l] < p->max_size[l] || p->id_max[l] > 65535)
            return hax_errf(err, errlen, "id_layout[%d]: expected %d..65535 (at least the level's maximum size), "
                            "found %d", l, p->max_size[l], p->id_max[l]);
    return 0;
}

int data_params_check(const hax_data_params *p, char *err, int errlen) {
    if (p->levels < 1 || p->levels > HAX_MAX_LEVELS)
        return hax_errf(err, errlen, "levels: expected 1..%d, found %d", HAX_MAX_LEVELS, p->levels);
    for (int l = 0; l < p->levels; l++) {
        if (p->min_size[l] < 1)
            return hax_errf(err, errlen, "level %d minimum: expected >= 1, found %d", l + 1, p->min_size[l]);
        if (p->max_size[l] < p->min_size[l])
            return hax_errf(err, errlen, "level %d maximum: expected >= its minimum %d, found %d", l + 1,
                        p->min_size[l], p->max_size[l]);
        if (p->max_size[l] > 65535)
            return hax_errf(err, errlen, "level %d maximum: expected <= 65535, found %d", l + 1, p->max_size[l]);
    }
    if (p->n_value < 1 || p->n_value > 65535)
        return hax_errf(err, errlen, "n_value: expected 1..65535, found %d", p->n_value);
    for (int s = 0; s < HAX_N_SPLITS; s++)
        if (p->n_per_cell[s] < 0 || p->n_per_cell[s] > ((int64_t)1 << 40))
            return hax_errf(err, errlen, "%s samples per cell: expected 0..2^40, found %" PRId64, hax_split_names[s],
                        p->n_per_cell[s]);
    if (check_id_layout(p, err, errlen)) return -1;
    int64_t top = TOK_BIAS + (int64_t)p->n_value;
    for (int l = 0; l < p->levels; l++) top += data_layout_max(p, l);
    if (top - 1 > 65535)
        return hax_errf(err, errlen, "token ids: the largest id %" PRId64 " does not fit the 16-bit token type "
                    "(n_value + the level maxima of the id layout must be at most 65526)", top - 1);
    // Sample length, computed in doubles first so that the products cannot overflow.
    double len = 2, prod = 1;
    for (int l = 0; l < p->levels; l++) { prod *= p->max_size[l]; len += 2 * prod; }
    len += 2 * prod;
    if (len > 1e9)
        return hax_errf(err, errlen, "level maxima: a sample of the largest cell would have %.0f tokens (at most 1e9)", len);
    double cells = (double)data_n_cells(p);
    for (int s = 0; s < HAX_N_SPLITS; s++)
        if (cells * (double)p->n_per_cell[s] > 4e12)
            return hax_errf(err, errlen, "%s split: %.0f samples is too many (at most 4e12)", hax_split_names[s],
                        cells * (double)p->n_per_cell[s]);
    int64_t per_cell = p->n_per_cell[0] + p->n_per_cell[1] + p->n_per_cell[2];
    if (per_cell > 0 && log((double)per_cell) > log_distinct(p) + 1e-9)
        return hax_errf(err, errlen, "samples per cell: the smallest cell has only %.0f distinct samples, fewer than "
                    "the %" PRId64 " (train + valid + test) that must be unique; lower the counts or raise the "
                    "minimum sizes", exp(log_distinct(p)), per_cell);
    return 0;
}

int64_t data_n_cells(const hax_data_params *p) {
    int64_t n = 1;
    for (int l = 0; l < p->levels; l++) n *= (int64_t)(p->max_size[l] - p->min_size[l] + 1);
    return n;
}

int64_t data_split_size(const hax_data_params *p, int split) { return data_n_cells(p) * p->n_per_cell[split]; }

void data_cell_of(const hax_data_params *p, int64_t index, int *sizes) {
    int64_t c = index % data_n_cells(p);
    for (int l = p->levels - 1; l >= 0; l--) {
        int64_t range = p->max_size[l] - p->min_size[l] + 1;
        sizes[l] = p->min_size[l] + (int)(c % range);
        c /= range;
    }
}

int64_t data_sample_len(const hax_data_params *p, const int *sizes) {
    int64_t len = 2, prod = 1;
    for (int l = 0; l < p->levels; l++) {
        prod *= sizes[l];
        len += 2 * prod;  // level-l tokens in the information and the inquiry part
    }
    return len + 2 * prod;  // the values (answers) in both parts
}

int64_t data_pad_len(const hax_data_params *p) { return data_sample_len(p, p->max_size); }

int data_layout_max(const hax_data_params *p, int level) {
    return p->id_max[level] > 0 ? p->id_max[level] : p->max_size[level];
}

int data_has_id_layout(const hax_data_params *p) {
    for (int l = 0; l < p->levels; l++)
        if (data_layout_max(p, l) != p->max_size[l]) return 1;
    return 0;
}

int data_level_base(const hax_data_params *p, int level) {
    int base = TOK_BIAS + p->n_value;
    for (int l = p->levels - 1; l > level; l--) base += data_layout_max(p, l);
    return base;
}

int data_max_token(const hax_data_params *p) { return data_level_base(p, 0) + data_layout_max(p, 0) - 1; }

int data_token_bytes(const hax_data_params *p) { return data_max_token(p) <= 255 ? 1 : 2; }

// ---------------------------------------------------------------- shards

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

int shard_open(hax_shard *s, const char *path, uint64_t expect_bytes, char *err, int errlen) {
    memset(s, 0, sizeof *s);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // a FIFO must not block
    if (fd < 0) return hax_errf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return hax_errf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return hax_errf(err, errlen, "%s: expected a regular file, found %s", path,
                        S_ISDIR(st.st_mode) ? "a folder" : S_ISFIFO(st.st_mode) ? "a FIFO" : "a device or special file");
    }
    uint64_t size = (uint64_t)st.st_size;
    if (expect_bytes > 0 && size != expect_bytes) {
        close(fd);
        return hax_errf(err, errlen, "%s: expected %" PRIu64 " bytes (manifest), found %" PRIu64 "%s", path,
                    expect_bytes, size, size < expect_bytes ? ": truncated" : "");
    }
    if (size < sizeof(hax_shard_header)) {
        close(fd);
        return hax_errf(err, errlen, "%s: expected a shard header of %zu bytes, found a file of %" PRIu64 " bytes",
                    path, sizeof(hax_shard_header), size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return hax_errf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
    s->path = xstrdup(path);
    s->map = map;
    s->map_bytes = size;
    memcpy(&s->h, map, sizeof s->h);
    const hax_shard_header *h = &s->h;
    char why[160] = "";
    if (memcmp(h->magic, HAX_SHARD_MAGIC, 8) != 0)
        snprintf(why, sizeof why, "magic: expected \"%s\", found other bytes (not a hax shard)", HAX_SHARD_MAGIC);
    else if (h->version != HAX_SHARD_VERSION)
        snprintf(why, sizeof why, "version: expected %d, found %u", HAX_SHARD_VERSION, h->version);
    else if (h->header_bytes != sizeof(hax_shard_header))
        snprintf(why, sizeof why, "header_bytes: expected %zu, found %u", sizeof(hax_shard_header), h->header_bytes);
    else if (hax_crc32c(0, h, offsetof(hax_shard_header, header_crc)) != h->header_crc)
        snprintf(why, sizeof why, "header checksum mismatch (corrupted header)");
    else if (h->reserved[0] != 0 || h->reserved[1] != 0)
        snprintf(why, sizeof why, "reserved bytes 148..155: expected zero, found 0x%08x 0x%08x", h->reserved[0],
                 h->reserved[1]);
    else if (h->token_bytes != 1 && h->token_bytes != 2)
        snprintf(why, sizeof why, "token_bytes: expected 1 or 2, found %u", h->token_bytes);
    else if (h->levels < 1 || h->levels > HAX_MAX_LEVELS || h->meta_stride != 2 * (h->levels + 1))
        snprintf(why, sizeof why, "levels/meta_stride: expected 1..%d and 2*(levels+1), found %u/%u",
                 HAX_MAX_LEVELS, h->levels, h->meta_stride);
    if (!why[0]) {
        uint64_t want[HAX_N_SECTIONS] = {((uint64_t)h->n_samples + 1) * 8, h->n_tokens * h->token_bytes,
                                         (h->n_tokens + 7) / 8, (uint64_t)h->n_samples * h->meta_stride};
        uint64_t at = sizeof(hax_shard_header);
        for (int k = 0; k < HAX_N_SECTIONS && !why[0]; k++) {
            if (h->sec_offset[k] != at || h->sec_bytes[k] != want[k])
                snprintf(why, sizeof why, "section %d: expected offset %" PRIu64 " and %" PRIu64
                         " bytes, found %" PRIu64 " and %" PRIu64, k, at, want[k], h->sec_offset[k], h->sec_bytes[k]);
            at = align8(at + want[k]);
        }
        if (!why[0] && at != size)
            snprintf(why, sizeof why, "expected %" PRIu64 " bytes from the header, found %" PRIu64 "%s", at, size,
                     size < at ? ": truncated" : "");
    }
    if (!why[0]) {
        s->off = (const uint64_t *)(s->map + h->sec_offset[SEC_OFFSETS]);
        s->tok = s->map + h->sec_offset[SEC_TOKENS];
        s->mask = s->map + h->sec_offset[SEC_MASK];
        s->meta = s->map + h->sec_offset[SEC_META];
        if (s->off[0] != 0 || s->off[h->n_samples] != h->n_tokens) snprintf(why, sizeof why, "offsets: bad ends");
        for (uint32_t i = 0; i < h->n_samples && !why[0]; i++)
            if (s->off[i + 1] < s->off[i] + 2 || s->off[i + 1] - s->off[i] > h->pad_len)
                snprintf(why, sizeof why, "offsets: sample %u has length %" PRId64 " (expected 2..%u)", i,
                         (int64_t)(s->off[i + 1] - s->off[i]), h->pad_len);
    }
    s->split = (int)h->split;
    s->index = (int)h->shard_index;
    if (why[0]) {
        hax_errf(err, errlen, "%s: %s", path, why);
        shard_close(s);
        return -1;
    }
    return 0;
}

void shard_close(hax_shard *s) {
    if (s->map) munmap((void *)s->map, s->map_bytes);
    free(s->path);
    memset(s, 0, sizeof *s);
}

int shard_check_crc(const hax_shard *s, char *err, int errlen) {
    static const char *names[HAX_N_SECTIONS] = {"offsets", "tokens", "mask", "meta"};
    for (int k = 0; k < HAX_N_SECTIONS; k++) {
        uint32_t c = hax_crc32c(0, s->map + s->h.sec_offset[k], s->h.sec_bytes[k]);
        if (c != s->h.sec_crc[k])
            return hax_errf(err, errlen, "%s: %s section (bytes %" PRIu64 "..%" PRIu64 "): checksum expected 0x%08x, "
                        "found 0x%08x (corrupted)", s->path, names[k], s->h.sec_offset[k],
                        s->h.sec_offset[k] + s->h.sec_bytes[k], s->h.sec_crc[k], c);
    }
    return 0;
}

// ---------------------------------------------------------------- manifest

typedef struct {
    yaml_document_t doc;
    const char *path;
    char *err;
    int errlen;
} manifest_doc;

static yaml_node_t *map_get(manifest_doc *m, yaml_node_t *map, const char *key) {
    return hax_yaml_get(&m->doc, map, key);
}

static int line_of(yaml_node_t *n) { return n ? (int)n->start_mark.line + 1 : 0; }

static int parse_i64(manifest_doc *m, yaml_node_t *n, const char *field, int64_t lo, int64_t hi, int64_t *out) {
    if (!n || n->type != YAML_SCALAR_NODE)
        return hax_errf(m->err, m->errlen, "%s:%d: field %s: expected an integer, found %s", m->path, line_of(n),
                    field, n ? "a list or mapping" : "nothing (missing)");
    const char *v = (const char *)n->data.scalar.value;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 0);
    if (errno || end == v || *end || x < lo || x > hi)
        return hax_errf(m->err, m->errlen, "%s:%d: field %s: expected an integer in %" PRId64 "..%" PRId64
                    ", found '%s'", m->path, line_of(n), field, lo, hi, v);
    *out = x;
    return 0;
}

static int get_i64(manifest_doc *m, yaml_node_t *map, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    yaml_node_t *n = map_get(m, map, key);
    if (!n) return hax_errf(m->err, m->errlen, "%s:%d: field %s: missing", m->path, line_of(map), key);
    return parse_i64(m, n, key, lo, hi, out);
}

static int get_int(manifest_doc *m, yaml_node_t *map, const char *key, int lo, int hi, int *out) {
    int64_t x;
    if (get_i64(m, map, key, lo, hi, &x)) return -1;
    *out = (int)x;
    return 0;
}

static const char *get_str(manifest_doc *m, yaml_node_t *map, const char *key) {
    yaml_node_t *n = map_get(m, map, key);
    if (!n || n->type != YAML_SCALAR_NODE) {
        hax_errf(m->err, m->errlen, "%s:%d: field %s: expected a string, found %s", m->path, line_of(n ? n : map), key,
             n ? "a list or mapping" : "nothing (missing)");
        return NULL;
    }
    return (const char *)n->data.scalar.value;
}

static int get_int_list(manifest_doc *m, yaml_node_t *map, const char *key, int n_want, int *out) {
    yaml_node_t *n = map_get(m, map, key);
    if (!n || n->type != YAML_SEQUENCE_NODE)
        return hax_errf(m->err, m->errlen, "%s:%d: field %s: expected a list of %d integers, found %s", m->path,
                    line_of(n ? n : map), key, n_want, n ? "a scalar or mapping" : "nothing (missing)");
    int count = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count != n_want)
        return hax_errf(m->err, m->errlen, "%s:%d: field %s: expected %d entries (levels), found %d", m->path,
                    line_of(n), key, n_want, count);
    for (int i = 0; i < count; i++) {
        int64_t x;
        if (parse_i64(m, yaml_document_get_node(&m->doc, n->data.sequence.items.start[i]), key, 0, 65535, &x))
            return -1;
        out[i] = (int)x;
    }
    return 0;
}

static int parse_params(manifest_doc *m, yaml_node_t *root, hax_dataset *ds) {
    hax_data_params *p = &ds->p;
    memset(p, 0, sizeof *p);
    const char *format = get_str(m, root, "format");
    if (!format) return -1;
    if (strcmp(format, "hax-dataset") != 0)
        return hax_errf(m->err, m->errlen, "%s: field format: expected hax-dataset, found '%s'", m->path, format);
    int version;
    if (get_int(m, root, "version", 0, 1000, &version)) return -1;
    if (version != HAX_SHARD_VERSION)
        return hax_errf(m->err, m->errlen, "%s: field version: expected %d, found %d", m->path, HAX_SHARD_VERSION,
                    version);
    const char *gen = get_str(m, root, "generator");
    if (!gen) return -1;
    if (strcmp(gen, "default") == 0) p->compat = 0;
    else if (strcmp(gen, "compat-reference") == 0) p->compat = 1;
    else return hax_errf(m->err, m->errlen, "%s: field generator: expected default or compat-reference, found '%s'",
                     m->path, gen);
    int64_t seed;
    if (get_int(m, root, "levels", 1, HAX_MAX_LEVELS, &p->levels) ||
        get_int_list(m, root, "min_sizes", p->levels, p->min_size) ||
        get_int_list(m, root, "max_sizes", p->levels, p->max_size) ||
        get_int(m, root, "n_value", 1, 65535, &p->n_value) ||
        get_i64(m, root, "n_train_per_cell", 0, INT64_MAX, &p->n_per_cell[SPLIT_TRAIN]) ||
        get_i64(m, root, "n_valid_per_cell", 0, INT64_MAX, &p->n_per_cell[SPLIT_VALID]) ||
        get_i64(m, root, "n_test_per_cell", 0, INT64_MAX, &p->n_per_cell[SPLIT_TEST]) ||
        get_i64(m, root, "seed", 0, INT64_MAX, &seed) ||
        get_int(m, root, "pad_len", 2, 1000000000, &ds->pad_len) ||
        get_int(m, root, "token_bytes", 1, 2, &ds->token_bytes) ||
        get_i64(m, root, "shard_size", 1, UINT32_MAX, &ds->shard_size))
        return -1;
    p->seed = (uint64_t)seed;
    if (map_get(m, root, "id_layout") && get_int_list(m, root, "id_layout", p->levels, p->id_max)) return -1;
    char why[200];
    if (data_params_check(p, why, sizeof why))
        return hax_errf(m->err, m->errlen, "%s: %s", m->path, why);
    if (ds->pad_len != data_pad_len(p))
        return hax_errf(m->err, m->errlen, "%s: field pad_len: expected %" PRId64 " from the level maxima, found %d",
                    m->path, data_pad_len(p), ds->pad_len);
    if (ds->token_bytes != data_token_bytes(p))
        return hax_errf(m->err, m->errlen, "%s: field token_bytes: expected %d for ids up to %d, found %d", m->path,
                    data_token_bytes(p), data_max_token(p), ds->token_bytes);
    int bases[HAX_MAX_LEVELS];
    if (get_int_list(m, root, "level_bases", p->levels, bases)) return -1;
    for (int l = 0; l < p->levels; l++)
        if (bases[l] != data_level_base(p, l))
            return hax_errf(m->err, m->errlen, "%s: field level_bases[%d]: expected %d from n_value and the level maxima "
                            "(or id_layout), found %d", m->path, l, data_level_base(p, l), bases[l]);
    return 0;
}

static int parse_split(manifest_doc *m, yaml_node_t *splits, int s, hax_dataset *ds) {
    const char *name = hax_split_names[s];
    yaml_node_t *sp = map_get(m, splits, name);
    if (!sp || sp->type != YAML_MAPPING_NODE)
        return hax_errf(m->err, m->errlen, "%s:%d: field splits.%s: expected a mapping, found %s", m->path,
                    line_of(sp ? sp : splits), name, sp ? "something else" : "nothing (missing)");
    int64_t n, n_tok;
    if (get_i64(m, sp, "n_samples", 0, INT64_MAX, &n) || get_i64(m, sp, "n_tokens", 0, INT64_MAX, &n_tok)) return -1;
    int64_t want = data_split_size(&ds->p, s);
    if (n != want)
        return hax_errf(m->err, m->errlen, "%s:%d: field splits.%s.n_samples: expected %" PRId64
                    " (cells x samples per cell), found %" PRId64, m->path, line_of(sp), name, want, n);
    ds->n[s] = n;
    yaml_node_t *list = map_get(m, sp, "shards");
    if (!list || list->type != YAML_SEQUENCE_NODE)
        return hax_errf(m->err, m->errlen, "%s:%d: field splits.%s.shards: expected a list", m->path, line_of(sp), name);
    int count = (int)(list->data.sequence.items.top - list->data.sequence.items.start);
    int64_t want_shards = (n + ds->shard_size - 1) / ds->shard_size;
    if (count != want_shards)
        return hax_errf(m->err, m->errlen, "%s:%d: field splits.%s.shards: expected %" PRId64 " shards of %" PRId64
                    " samples, found %d", m->path, line_of(list), name, want_shards, ds->shard_size, count);
    ds->n_shards[s] = count;
    ds->shards[s] = xcalloc((size_t)count + 1, sizeof(hax_shard));
    int64_t tok_sum = 0;
    for (int i = 0; i < count; i++) {
        yaml_node_t *e = yaml_document_get_node(&m->doc, list->data.sequence.items.start[i]);
        const char *file = get_str(m, e, "file");
        int64_t ns, nt, bytes, crc, first;
        if (!file || get_i64(m, e, "first", 0, INT64_MAX, &first) || get_i64(m, e, "n_samples", 0, UINT32_MAX, &ns) || get_i64(m, e, "n_tokens", 0, INT64_MAX, &nt) ||
            get_i64(m, e, "bytes", 1, INT64_MAX, &bytes) || get_i64(m, e, "crc32c", 0, UINT32_MAX, &crc))
            return -1;
        int64_t want_ns = i + 1 < count ? ds->shard_size : n - (int64_t)i * ds->shard_size;
        if (ns != want_ns)
            return hax_errf(m->err, m->errlen, "%s:%d: shard %s: n_samples: expected %" PRId64 ", found %" PRId64,
                        m->path, line_of(e), file, want_ns, ns);
        if (first != (int64_t)i * ds->shard_size)
            return hax_errf(m->err, m->errlen, "%s:%d: shard %s: first: expected %" PRId64 " (shard %d of %" PRId64
                            " samples), found %" PRId64, m->path, line_of(e), file, (int64_t)i * ds->shard_size, i,
                            ds->shard_size, first);
        if (strchr(file, '/'))
            return hax_errf(m->err, m->errlen, "%s:%d: shard file '%s': expected a plain file name", m->path,
                        line_of(e), file);
        size_t plen = strlen(ds->dir) + strlen(file) + 2;
        char *path = xmalloc(plen);
        snprintf(path, plen, "%s/%s", ds->dir, file);
        hax_shard *sh = &ds->shards[s][i];
        int rc = shard_open(sh, path, (uint64_t)bytes, m->err, m->errlen);
        free(path);
        if (rc) return -1;
        const hax_shard_header *h = &sh->h;
        if (h->header_crc != (uint32_t)crc)
            return hax_errf(m->err, m->errlen, "%s: header checksum 0x%08x differs from the manifest's 0x%08x "
                        "(a shard of another dataset?)", sh->path, h->header_crc, (uint32_t)crc);
        if (h->split != (uint32_t)s || h->shard_index != (uint32_t)i || h->first_index != (uint64_t)i * ds->shard_size ||
            h->n_samples != ns || h->n_tokens != (uint64_t)nt || h->token_bytes != (uint32_t)ds->token_bytes ||
            h->levels != (uint32_t)ds->p.levels || h->pad_len != (uint32_t)ds->pad_len || h->seed != ds->p.seed)
            return hax_errf(m->err, m->errlen, "%s: header (split %u, shard %u, first %" PRIu64 ", %u samples, %" PRIu64
                        " tokens) disagrees with the manifest (split %s, shard %d, %" PRId64 " samples, %" PRId64
                        " tokens)", sh->path, h->split, h->shard_index, h->first_index, h->n_samples, h->n_tokens,
                        name, i, ns, nt);
        tok_sum += nt;
    }
    if (tok_sum != n_tok)
        return hax_errf(m->err, m->errlen, "%s: field splits.%s.n_tokens: expected the shards' sum %" PRId64
                    ", found %" PRId64, m->path, name, tok_sum, n_tok);
    ds->n_tokens[s] = n_tok;
    return 0;
}

hax_dataset *dataset_open(const char *dir, char *err, int errlen) {
    hax_dataset *ds = xcalloc(1, sizeof *ds);
    ds->dir = xstrdup(dir);
    ds->perm_epoch = -1;
    size_t plen = strlen(dir) + 16;
    char *path = xmalloc(plen);
    snprintf(path, plen, "%s/manifest.yaml", dir);
    size_t len;
    char e[512];
    char *text = hax_read_file_max(path, HAX_MAX_TEXT_BYTES, &len, e, sizeof e);
    if (!text) {
        if (strstr(e, ": cannot read: ")) hax_errf(err, errlen, "%s (not a hax dataset, or an unfinished one)", e);
        else hax_errf(err, errlen, "%s", e);
        free(path);
        dataset_close(ds);
        return NULL;
    }
    manifest_doc m = {.path = path, .err = err, .errlen = errlen};
    int rc = -1, yrc = hax_yaml_load(&m.doc, text, len, HAX_MAX_DEPTH, e, sizeof e);
    if (yrc == -1) {
        hax_errf(err, errlen, "%s: not valid YAML: %s", path, e);
    } else if (yrc) {
        hax_errf(err, errlen, "%s: %s", path, e);
    } else {
        yaml_node_t *root = yaml_document_get_root_node(&m.doc);
        if (!root || root->type != YAML_MAPPING_NODE) {
            hax_errf(err, errlen, "%s: expected a mapping at the top, found %s", path, root ? "something else" : "nothing");
        } else if (parse_params(&m, root, ds) == 0) {
            yaml_node_t *splits = map_get(&m, root, "splits");
            rc = 0;
            for (int s = 0; s < HAX_N_SPLITS && rc == 0; s++) rc = parse_split(&m, splits, s, ds);
        }
        yaml_document_delete(&m.doc);
    }
    free(text);
    free(path);
    if (rc) {
        dataset_close(ds);
        return NULL;
    }
    return ds;
}

void dataset_close(hax_dataset *ds) {
    if (!ds) return;
    for (int s = 0; s < HAX_N_SPLITS; s++) {
        if (!ds->shards[s]) continue;
        for (int i = 0; i < ds->n_shards[s] + 1; i++) shard_close(&ds->shards[s][i]);
        free(ds->shards[s]);
    }
    free(ds->perm);
    free(ds->scratch_tok);
    free(ds->scratch_mask);
    free(ds->dir);
    free(ds);
}

const hax_data_params *dataset_params(const hax_dataset *ds) { return &ds->p; }
int64_t dataset_size(const hax_dataset *ds, int split) { return ds->n[split]; }
int dataset_pad_len(const hax_dataset *ds) { return ds->pad_len; }
int dataset_n_shards(const hax_dataset *ds, int split) { return ds->n_shards[split]; }
const hax_shard *dataset_shard(const hax_dataset *ds, int split, int i) { return &ds->shards[split][i]; }

// One pass over a shard: every sample has its cell (the reference's order),
// the length of that cell, and token ids up to the dataset's largest.
int shard_check_samples(const hax_shard *sh, const hax_data_params *p, char *err, int errlen) {
    int max_tok = data_max_token(p);
    const char *split = sh->split < HAX_N_SPLITS ? hax_split_names[sh->split] : "?";
    for (uint32_t i = 0; i < sh->h.n_samples; i++) {
        int64_t idx = (int64_t)sh->h.first_index + i;
        int sizes[HAX_MAX_LEVELS], want[HAX_MAX_LEVELS];
        uint64_t a = sh->off[i], b = sh->off[i + 1];
        shard_sample(sh, i, NULL, NULL, sizes, NULL);
        data_cell_of(p, idx, want);
        if (memcmp(sizes, want, (size_t)p->levels * sizeof(int)) != 0)
            return hax_errf(err, errlen, "%s: %s sample %" PRId64 ": expected cell %dx%d (the reference's order), "
                            "found %dx%d", sh->path, split, idx, want[0], p->levels > 1 ? want[1] : 0, sizes[0],
                            p->levels > 1 ? sizes[1] : 0);
        if ((int64_t)(b - a) != data_sample_len(p, sizes))
            return hax_errf(err, errlen, "%s: %s sample %" PRId64 ": expected %" PRId64 " tokens for its cell, found %"
                            PRIu64, sh->path, split, idx, data_sample_len(p, sizes), b - a);
        for (uint64_t q = a; q < b; q++) {
            int t = sh->h.token_bytes == 1 ? sh->tok[q] : (int)(sh->tok[2 * q] | sh->tok[2 * q + 1] << 8);
            if (t > max_tok)
                return hax_errf(err, errlen, "%s: %s sample %" PRId64 ": expected token ids up to %d, found %d at "
                                "position %" PRIu64, sh->path, split, idx, max_tok, t, q - a);
        }
    }
    return 0;
}

int dataset_check_checksums(const hax_dataset *ds, int rank, int n_ranks, char *err, int errlen) {
    int k = 0;
    for (int s = 0; s < HAX_N_SPLITS; s++)
        for (int i = 0; i < ds->n_shards[s]; i++, k++)
            if (k % n_ranks == rank && (shard_check_crc(&ds->shards[s][i], err, errlen) ||
                                        shard_check_samples(&ds->shards[s][i], &ds->p, err, errlen)))
                return -1;
    return 0;
}

// ---------------------------------------------------------------- samples

int shard_sample(const hax_shard *sh, uint32_t i, int32_t *tokens, uint8_t *mask, int *sizes, int *attempt) {
    uint64_t a = sh->off[i], b = sh->off[i + 1];
    int len = (int)(b - a);
    if (tokens) {
        if (sh->h.token_bytes == 1) {
            const uint8_t *t = sh->tok + a;
            for (int j = 0; j < len; j++) tokens[j] = t[j];
        } else {
            for (int j = 0; j < len; j++) {
                uint16_t v;
                memcpy(&v, sh->tok + 2 * (a + (uint64_t)j), 2);
                tokens[j] = v;
            }
        }
    }
    if (mask)
        for (int j = 0; j < len; j++) {
            uint64_t p = a + (uint64_t)j;
            mask[j] = (sh->mask[p >> 3] >> (p & 7)) & 1;
        }
    const uint8_t *meta = sh->meta + (uint64_t)i * sh->h.meta_stride;
    if (sizes)
        for (uint32_t l = 0; l < sh->h.levels; l++) {
            uint16_t v;
            memcpy(&v, meta + 2 * l, 2);
            sizes[l] = v;
        }
    if (attempt) {
        uint16_t v;
        memcpy(&v, meta + 2 * sh->h.levels, 2);
        *attempt = v;
    }
    return len;
}

static const hax_shard *locate(const hax_dataset *ds, int split, int64_t index, uint32_t *local) {
    if (index < 0 || index >= ds->n[split])
        hax_die("dataset %s: %s sample %" PRId64 ": expected an index below %" PRId64, ds->dir,
                hax_split_names[split], index, ds->n[split]);
    *local = (uint32_t)(index % ds->shard_size);
    return &ds->shards[split][index / ds->shard_size];
}

int dataset_sample(const hax_dataset *ds, int split, int64_t index, int32_t *tokens, uint8_t *mask, int *sizes) {
    uint32_t i;
    const hax_shard *sh = locate(ds, split, index, &i);
    return shard_sample(sh, i, tokens, mask, sizes, NULL);
}

int dataset_sample_attempt(const hax_dataset *ds, int split, int64_t index) {
    uint32_t i;
    int attempt;
    const hax_shard *sh = locate(ds, split, index, &i);
    shard_sample(sh, i, NULL, NULL, NULL, &attempt);
    return attempt;
}
