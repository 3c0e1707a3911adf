// test_safetensors.c: writer/reader round trip, every golden file, and every
// kind of malformed file the reader must refuse.
#include <dirent.h>
#include <stdint.h>
#include <unistd.h>

#include "src/core/common.h"
#include "src/io/safetensors.h"
#include "test.h"

static void test_round_trip(void) {
    float a[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    int64_t ids[4] = {0, -1, (int64_t)1 << 40, 7};
    double loss = 0.123456789012345678;
    int16_t small[3] = {-32768, 0, 32767};
    st_writer *w = st_writer_new();
    st_writer_put(w, "layers.0.mixer.A_log", ST_F32, ST_SHAPE(2, 3), a);
    st_writer_put(w, "input_ids", ST_I64, ST_SHAPE(2, 2), ids);
    st_writer_put(w, "out.loss", ST_F64, 0, NULL, &loss);
    st_writer_put(w, "empty", ST_F32, ST_SHAPE(0, 5), NULL);
    st_writer_put(w, "dbg.allowed", ST_I16, ST_SHAPE(3), small);
    st_writer_meta(w, "hax_case", "{\"name\": \"x\\y\",\n\t\"unicode\": \"\xc3\xa9\"}");
    st_writer_meta(w, "format", "pt");
    char err[512];
    CHECK(st_writer_add(w, "input_ids", ST_F32, ST_SHAPE(1), a, err, sizeof err) != 0, "duplicate name accepted");
    CHECK(st_writer_add(w, "__metadata__", ST_F32, ST_SHAPE(1), a, err, sizeof err) != 0, "reserved name accepted");
    const char *path = "/tmp/hax_test_st_roundtrip.safetensors";
    CHECK(st_writer_write(w, path, err, sizeof err) == 0, "write: %s", err);
    st_writer_free(w);

    st_file *f = st_load(path, err, sizeof err);
    CHECK(f != NULL, "load: %s", err);
    if (!f) return;
    CHECK(f->data_start % 8 == 0, "data starts at %zu, not 8-aligned", f->data_start);
    CHECK(f->n_tensors == 5, "n_tensors %d", f->n_tensors);
    float b[6];
    CHECK(st_read_f32(f, "layers.0.mixer.A_log", b, ST_SHAPE(2, 3), err, sizeof err) == 0, "%s", err);
    CHECK(memcmp(a, b, sizeof a) == 0, "float data differ");
    int64_t ids2[4];
    st_get_i64(f, "input_ids", ids2, ST_SHAPE(2, 2));
    CHECK(memcmp(ids, ids2, sizeof ids) == 0, "int64 data differ");
    const st_tensor *t = st_find(f, "out.loss");
    CHECK(t && t->ndim == 0 && t->dtype == ST_F64 && st_numel(t) == 1, "scalar");
    double l2 = 0;
    if (t) st_tensor_to_f64(t, &l2);
    CHECK(l2 == loss, "f64 scalar %.17g", l2);
    t = st_find(f, "empty");
    CHECK(t && st_numel(t) == 0 && t->begin == t->end, "empty tensor");
    int64_t s64[3];
    st_get_i64(f, "dbg.allowed", s64, ST_SHAPE(3));
    CHECK(s64[0] == -32768 && s64[1] == 0 && s64[2] == 32767, "int16 -> int64: %lld %lld %lld", (long long)s64[0],
          (long long)s64[1], (long long)s64[2]);
    const char *m = st_meta(f, "hax_case");
    CHECK(m && strcmp(m, "{\"name\": \"x\\y\",\n\t\"unicode\": \"\xc3\xa9\"}") == 0, "metadata: %s", m ? m : "(none)");
    CHECK(st_meta(f, "format") && strcmp(st_meta(f, "format"), "pt") == 0, "format metadata");
    CHECK(st_meta(f, "missing") == NULL, "absent metadata");
    CHECK(st_find(f, "missing") == NULL, "absent tensor");
    // A wrong shape names the file, the tensor, what was expected and what was found.
    CHECK(st_read_f32(f, "layers.0.mixer.A_log", b, ST_SHAPE(3, 2), err, sizeof err) != 0, "shape mismatch accepted");
    CHECK(strstr(err, "tensor layers.0.mixer.A_log: expected shape [3,2], found [2,3]") && strstr(err, path), "msg: %s",
          err);
    CHECK(st_read_f32(f, "nope", b, -1, NULL, err, sizeof err) != 0 && strstr(err, "tensor nope"), "msg: %s", err);
    st_close(f);
    unlink(path);
}

static void test_conversions(void) {
    // F16: 1.0, -2.0, 65504, smallest subnormal, inf; BF16: 1.0, -3.0.
    uint16_t h[5] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00};
    uint16_t bf[2] = {0x3f80, 0xc040};
    uint8_t bo[3] = {0, 1, 2};
    int8_t i8[2] = {-128, 127};
    st_writer *w = st_writer_new();
    st_writer_put(w, "h", ST_F16, ST_SHAPE(5), h);
    st_writer_put(w, "bf", ST_BF16, ST_SHAPE(2), bf);
    st_writer_put(w, "b", ST_BOOL, ST_SHAPE(3), bo);
    st_writer_put(w, "i8", ST_I8, ST_SHAPE(2), i8);
    size_t len;
    unsigned char *buf = st_writer_serialize(w, &len);
    st_writer_free(w);
    char err[512];
    st_file *f = st_parse("mem", buf, len, err, sizeof err);
    CHECK(f != NULL, "%s", err);
    if (!f) return;
    float x[5];
    st_get_f32(f, "h", x, ST_SHAPE(5));
    CHECK(x[0] == 1.0f && x[1] == -2.0f && x[2] == 65504.0f && x[3] == ldexpf(1.0f, -24) && isinf(x[4]), "f16: %g %g %g %g %g",
          x[0], x[1], x[2], x[3], x[4]);
    st_get_f32(f, "bf", x, ST_SHAPE(2));
    CHECK(x[0] == 1.0f && x[1] == -3.0f, "bf16: %g %g", x[0], x[1]);
    int64_t y[3];
    st_get_i64(f, "b", y, ST_SHAPE(3));
    CHECK(y[0] == 0 && y[1] == 1 && y[2] == 1, "bool");
    st_get_i64(f, "i8", y, ST_SHAPE(2));
    CHECK(y[0] == -128 && y[1] == 127, "i8");
    st_close(f);
}

static void test_golden_files(void) {
    DIR *d = opendir(test_golden_dir());
    CHECK(d != NULL, "cannot open %s", test_golden_dir());
    if (!d) return;
    int n_files = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!test_ends_with(e->d_name, ".safetensors")) continue;
        char path[1024], err[512];
        snprintf(path, sizeof path, "%s/%s", test_golden_dir(), e->d_name);
        st_file *f = st_load(path, err, sizeof err);
        CHECK(f != NULL, "%s", err);
        if (!f) continue;
        n_files++;
        const st_tensor *emb = st_find(f, "embeddings.weight");
        CHECK(emb && emb->dtype == ST_F32 && emb->ndim == 2 && emb->shape[0] == 100, "%s: embeddings.weight", path);
        int64_t d_expect = strncmp(e->d_name, "paper_", 6) == 0 ? 64 : 16;
        CHECK(emb && emb->shape[1] == d_expect, "%s: hidden %lld, expected %lld", path, emb ? (long long)emb->shape[1] : -1LL,
              (long long)d_expect);
        const char *meta = st_meta(f, "hax_case");
        CHECK(meta && strstr(meta, "base_arch"), "%s: __metadata__ hax_case missing", path);
        const st_tensor *ids = st_find(f, "input_ids");
        CHECK(ids && ids->dtype == ST_I64 && ids->ndim == 2, "%s: input_ids", path);
        const st_tensor *loss = st_find(f, "out.loss");
        CHECK(loss && loss->dtype == ST_F64 && loss->ndim == 0, "%s: out.loss scalar f64", path);
        CHECK(st_find(f, "grad.embeddings.weight") && st_find(f, "adamw.embeddings.weight"), "%s: grad/adamw", path);
        if (strcmp(e->d_name, "paper_mamba_hax.safetensors") == 0) {
            const st_tensor *ak = st_find(f, "dbg.layers.0.allowed_keys");
            CHECK(ak && ak->dtype == ST_I16 && ak->ndim == 3 && ak->shape[2] == 64, "paper allowed_keys i16 [B,L,64]");
            CHECK(ids && ids->shape[1] == 1058, "paper input_ids length");
        }
        if (strcmp(e->d_name, "mamba_base.safetensors") == 0) {
            float A[32 * 8];
            CHECK(st_read_f32(f, "layers.0.mixer.A_log", A, ST_SHAPE(32, 8), err, sizeof err) == 0, "%s", err);
            CHECK(fabsf(A[3] - logf(4.0f)) < 1e-6f, "A_log[0,3] = %g, expected ln 4", A[3]);
        }
        st_close(f);
    }
    closedir(d);
    CHECK(n_files == 23, "found %d golden files, expected 23", n_files);
}

// Builds a file from a header text and n data bytes, parses it and expects a
// failure whose message contains want.
static void expect_bad(const char *header, size_t n_data, const char *want) {
    size_t hl = strlen(header), len = 8 + hl + n_data;
    unsigned char *buf = xcalloc(len + 1, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    char err[512] = "";
    st_file *f = st_parse("bad.safetensors", buf, len, err, sizeof err);
    CHECK(f == NULL, "accepted: %s", header);
    CHECK(strstr(err, want) && strncmp(err, "bad.safetensors: ", 17) == 0, "header %s: message '%s' lacks '%s'", header,
          err, want);
    if (f) st_close(f);
}

#define T(name, rest) "\"" name "\":{" rest "}"

static void test_bad_files(void) {
    // Sanity: the helper builds valid files too.
    {
        const char *h = "{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") "}";
        size_t hl = strlen(h), len = 8 + hl + 8;
        unsigned char *buf = xcalloc(len, 1);
        for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
        memcpy(buf + 8, h, hl);
        char err[512];
        st_file *f = st_parse("ok", buf, len, err, sizeof err);
        CHECK(f != NULL, "valid file refused: %s", err);
        st_close(f);
    }
    const char *a8 = T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]");
    char h[1024];
    // Malformed JSON.
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "expected ',' or '}'");
    expect_bad("{\"a\" {\"dtype\":\"F32\"}}", 0, "expected ':'");
    expect_bad("[1,2]", 0, "expected '{' opening the header");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,],\"data_offsets\":[0,8]}}", 8, "expected a non-negative integer");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "expected a non-negative integer");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "fraction");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8, "only spaces after");
    expect_bad("{\"a\\q\":{}}", 0, "expected an escape");
    expect_bad("{\"a", 0, "expected the end of the string");
    // Fields.
    expect_bad("{" T("a", "\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]") "}", 8, "tensor a: dtype: expected one of");
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"data_offsets\":[0,8]") "}", 8, "tensor a: expected the field shape");
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1") "}", 8, "found 'x'");
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") "}", 8,
               "found a second 'dtype'");
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]") "}", 8, "expected [begin, end]");
    // Duplicate names.
    snprintf(h, sizeof h, "{%s,%s}", a8, a8);
    expect_bad(h, 16, "tensor a: expected unique tensor names");
    // Size not shape x dtype.
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]") "}", 8,
               "tensor a: expected 12 bytes (F32 [3])");
    // Out of range (past the data).
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") "}", 4, "run past the data");
    // Overlap and gap.
    snprintf(h, sizeof h, "{%s,%s}", a8, T("b", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]"));
    expect_bad(h, 12, "tensor b: data_offsets [4,12] overlap tensor a");
    snprintf(h, sizeof h, "{%s,%s}", a8, T("b", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]"));
    expect_bad(h, 16, "tensor b: data_offsets [12,16] leave a gap");
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]") "}", 12, "leave a gap");
    // Trailing bytes not covered by any tensor.
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") "}", 12, "data: expected 8 bytes");
    // Metadata must be strings, once, with unique keys.
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, "a string value for __metadata__ key 'k'");
    expect_bad("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "found 'k' twice");
    expect_bad("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "found a second");
}

static void test_truncated_files(void) {
    // A real golden file cut short, and a header length past the end.
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/mamba_base.safetensors", test_golden_dir());
    size_t len;
    char *buf = hax_read_file(path, &len);
    CHECK(buf != NULL, "cannot read %s", path);
    if (!buf) return;
    char tmp[64];  // per process: several test runs may share /tmp
    snprintf(tmp, sizeof tmp, "/tmp/hax_test_st_trunc.%d.safetensors", (int)getpid());
    CHECK(hax_write_file_atomic(tmp, buf, len / 2) == 0, "write tmp");
    st_file *f = st_load(tmp, err, sizeof err);
    CHECK(f == NULL && strstr(err, tmp) && strstr(err, "truncated"), "half file: %s", err);
    st_close(f);
    CHECK(hax_write_file_atomic(tmp, buf, 5) == 0, "write tmp");
    f = st_load(tmp, err, sizeof err);
    CHECK(f == NULL && strstr(err, "expected at least 8 bytes"), "5 bytes: %s", err);
    st_close(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (unsigned char)buf[i];
    CHECK(hax_write_file_atomic(tmp, buf, 8 + hl / 2) == 0, "write tmp");
    f = st_load(tmp, err, sizeof err);
    CHECK(f == NULL && strstr(err, "header length"), "cut header: %s", err);
    st_close(f);
    // A flipped byte inside the header's JSON.
    char *p = memchr(buf + 8, ':', hl);
    if (p) *p = ';';
    CHECK(hax_write_file_atomic(tmp, buf, len) == 0, "write tmp");
    f = st_load(tmp, err, sizeof err);
    CHECK(f == NULL && strstr(err, "expected"), "corrupt header: %s", err);
    st_close(f);
    f = st_load("/tmp/hax_no_such_file.safetensors", err, sizeof err);
    CHECK(f == NULL && strstr(err, "cannot read"), "missing file: %s", err);
    unlink(tmp);
    free(buf);
}

int main(void) {
    RUN(test_round_trip);
    RUN(test_conversions);
    RUN(test_golden_files);
    RUN(test_bad_files);
    RUN(test_truncated_files);
    return test_summary();
}
