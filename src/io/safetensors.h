// safetensors.h: reading and writing the safetensors format (golden vectors,
// checkpoints, best.safetensors). A file is: u64 little-endian header length
// n, n bytes of JSON {"name": {"dtype", "shape", "data_offsets"}, ...,
// "__metadata__": {str: str}}, then the tensor data, contiguous, in any order.
//
// The reader is strict: anything malformed (truncated file, bad JSON, unknown
// dtype, offsets that overlap, leave gaps or run past the data, a size that is
// not shape x dtype size, duplicate names) is refused with one line naming the
// file and the tensor or field.
#ifndef HAX_SAFETENSORS_H
#define HAX_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIM 8
// st_load refuses larger files (and anything but a regular file); headers
// are at most HAX_MAX_TEXT_BYTES (src/core/common.h).
#define ST_MAX_FILE_BYTES ((size_t)16 << 30)

typedef enum {
    ST_F64, ST_F32, ST_F16, ST_BF16,
    ST_I64, ST_I32, ST_I16, ST_I8,
    ST_U64, ST_U32, ST_U16, ST_U8,
    ST_BOOL,
    ST_N_DTYPES
} st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;                      // 0 for a scalar
    int64_t shape[ST_MAX_DIM];
    size_t begin, end;             // byte offsets within the data section
    const void *data;              // points into the file's buffer (unaligned in general)
} st_tensor;

typedef struct {
    char *path;
    unsigned char *buf;            // the whole file
    size_t len;
    size_t data_start;             // 8 + header length
    int n_tensors;
    st_tensor *tensors;            // in header order
    int n_meta;
    char **meta_keys, **meta_vals; // __metadata__ (absent: n_meta = 0)
} st_file;

// Bytes per element and the format's name ("F32", ...) of a dtype.
size_t st_dtype_size(st_dtype dt);
const char *st_dtype_name(st_dtype dt);
// The dtype of a name; returns -1 for an unknown one.
int st_dtype_parse(const char *name);

// Number of elements (1 for a scalar).
size_t st_numel(const st_tensor *t);

// Reads and checks a file. Returns NULL with a one-line message in err
// ("PATH: tensor X: ..."), or the file (free with st_close).
st_file *st_load(const char *path, char *err, int errlen);
// Parses a file already in memory (buf is taken over and freed by st_close).
st_file *st_parse(const char *path, unsigned char *buf, size_t len, char *err, int errlen);
// Same as st_load, but dies with the message.
st_file *st_open(const char *path);
void st_close(st_file *f);

// Lookup by name; NULL when absent.
const st_tensor *st_find(const st_file *f, const char *name);
// A __metadata__ value; NULL when absent.
const char *st_meta(const st_file *f, const char *key);

// Converts a tensor of any numeric dtype to float32 / int64 (out holds numel).
// Float -> int64 truncates toward zero; used for id tensors that are integer anyway.
void st_tensor_to_f32(const st_tensor *t, float *out);
void st_tensor_to_i64(const st_tensor *t, int64_t *out);
// Converts to float64 (losses stored as F64 scalars keep their precision).
void st_tensor_to_f64(const st_tensor *t, double *out);

// Lookup with a shape check: NULL with a message ("PATH: tensor X: expected
// shape [a,b], found [c,d]" or "...: expected it in the file, found none")
// when absent or of another shape. ndim < 0 skips the check.
const st_tensor *st_find_shaped(const st_file *f, const char *name, int ndim, const int64_t *shape, char *err,
                                int errlen);

// Reads tensor `name` into out with a shape check. ndim < 0 skips the check
// (out must hold numel elements). st_read_i64 also refuses a floating-point
// dtype (ids and masks are integers). Returns 0, or -1 with a message such as
// "PATH: tensor X: expected shape [a,b], found [c,d]" or "...: not found".
int st_read_f32(const st_file *f, const char *name, float *out, int ndim, const int64_t *shape, char *err,
                int errlen);
int st_read_i64(const st_file *f, const char *name, int64_t *out, int ndim, const int64_t *shape, char *err,
                int errlen);
// Dying versions of the two.
void st_get_f32(const st_file *f, const char *name, float *out, int ndim, const int64_t *shape);
void st_get_i64(const st_file *f, const char *name, int64_t *out, int ndim, const int64_t *shape);

// ST_SHAPE(a, b, ...) expands to the two arguments `ndim, shape`:
//   st_get_f32(f, "embeddings.weight", w, ST_SHAPE(100, 64));
#define ST_SHAPE(...)                                                           \
    (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]) { __VA_ARGS__ }

// Formats a shape as "[a,b,c]" into buf.
void st_format_shape(char *buf, size_t n, int ndim, const int64_t *shape);

// ---- writer ----
// Tensors are written in the order added; data pointers are not copied and
// must stay valid until st_writer_write. Metadata values are plain strings.
typedef struct st_writer st_writer;

st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
// Adds a tensor; returns 0, or -1 with a message for a duplicate name, a
// bad shape or a name that is empty or starts with "__".
int st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape, const void *data,
                  char *err, int errlen);
// Dies instead of returning an error.
void st_writer_put(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape, const void *data);
// Sets (or replaces) a __metadata__ entry.
void st_writer_meta(st_writer *w, const char *key, const char *value);
// Serialises into one buffer (header padded with spaces to a multiple of 8).
unsigned char *st_writer_serialize(const st_writer *w, size_t *len);
// Writes atomically (temporary file, fsync, rename): a crash never leaves a
// partial file under path. Returns 0, or -1 with a message in err.
int st_writer_write(const st_writer *w, const char *path, char *err, int errlen);

#endif
