// safetensors_convert.c: tensors of any dtype as float, double or int64
// arrays (st_tensor_to_*), and the checked reads of one named tensor
// (st_read_f32, st_get_*). The reader itself: safetensors.c.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/io/safetensors.h"

static float half_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);  // inf, nan
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {  // subnormal: normalise
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

// Element i of t as a double (exact for every dtype except 64-bit integers past 2^53).
static double elem_f64(const st_tensor *t, size_t i) {
    const unsigned char *p = (const unsigned char *)t->data + i * st_dtype_size(t->dtype);
    union { double f64; float f32; int64_t i64; int32_t i32; int16_t i16; int8_t i8;
            uint64_t u64; uint32_t u32; uint16_t u16; uint8_t u8; } u;
    memcpy(&u, p, st_dtype_size(t->dtype));
    switch (t->dtype) {
    case ST_F64: return u.f64;
    case ST_F32: return u.f32;
    case ST_F16: return half_to_f32(u.u16);
    case ST_BF16: { uint32_t b = (uint32_t)u.u16 << 16; float x; memcpy(&x, &b, 4); return x; }
    case ST_I64: return (double)u.i64;
    case ST_I32: return u.i32;
    case ST_I16: return u.i16;
    case ST_I8: return u.i8;
    case ST_U64: return (double)u.u64;
    case ST_U32: return u.u32;
    case ST_U16: return u.u16;
    case ST_U8: return u.u8;
    case ST_BOOL: return u.u8 != 0;
    default: return 0;
    }
}

void st_tensor_to_f32(const st_tensor *t, float *out) {
    size_t n = st_numel(t);
    if (t->dtype == ST_F32) { memcpy(out, t->data, n * 4); return; }
    for (size_t i = 0; i < n; i++) out[i] = (float)elem_f64(t, i);
}

void st_tensor_to_f64(const st_tensor *t, double *out) {
    size_t n = st_numel(t);
    for (size_t i = 0; i < n; i++) out[i] = elem_f64(t, i);
}

void st_tensor_to_i64(const st_tensor *t, int64_t *out) {
    size_t n = st_numel(t);
    if (t->dtype == ST_I64 || t->dtype == ST_U64) { memcpy(out, t->data, n * 8); return; }
    for (size_t i = 0; i < n; i++) out[i] = (int64_t)elem_f64(t, i);
}

const st_tensor *st_find_shaped(const st_file *f, const char *name, int ndim, const int64_t *shape, char *err,
                                int errlen) {
    const st_tensor *t = st_find(f, name);
    if (!t) {
        snprintf(err, errlen, "%s: tensor %s: expected it in the file, found none", f->path, name);
        return NULL;
    }
    if (ndim < 0) return t;
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[160], b[160];
        st_format_shape(a, sizeof a, ndim, shape);
        st_format_shape(b, sizeof b, t->ndim, t->shape);
        snprintf(err, errlen, "%s: tensor %s: expected shape %s, found %s", f->path, name, a, b);
        return NULL;
    }
    return t;
}

int st_read_f32(const st_file *f, const char *name, float *out, int ndim, const int64_t *shape, char *err, int errlen) {
    const st_tensor *t = st_find_shaped(f, name, ndim, shape, err, errlen);
    if (!t) return -1;
    st_tensor_to_f32(t, out);
    return 0;
}

int st_read_i64(const st_file *f, const char *name, int64_t *out, int ndim, const int64_t *shape, char *err,
                int errlen) {
    const st_tensor *t = st_find_shaped(f, name, ndim, shape, err, errlen);
    if (!t) return -1;
    // ids and masks: a floating-point tensor would be truncated silently
    if (t->dtype == ST_F64 || t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
        snprintf(err, errlen, "%s: tensor %s: expected an integer dtype (I64, I32, ...), found %s", f->path, name,
                 st_dtype_name(t->dtype));
        return -1;
    }
    st_tensor_to_i64(t, out);
    return 0;
}

void st_get_f32(const st_file *f, const char *name, float *out, int ndim, const int64_t *shape) {
    char err[512];
    if (st_read_f32(f, name, out, ndim, shape, err, sizeof err) != 0) hax_die("%s", err);
}

void st_get_i64(const st_file *f, const char *name, int64_t *out, int ndim, const int64_t *shape) {
    char err[512];
    if (st_read_i64(f, name, out, ndim, shape, err, sizeof err) != 0) hax_die("%s", err);
}
