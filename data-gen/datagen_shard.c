// datagen_shard.c: builds one shard in memory and writes it (format in src/io/dataset.h).
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/core/checksum.h"
#include "src/core/common.h"
#include "data-gen/datagen.h"

void shard_writer_init(shard_writer *w, const hax_data_params *p, uint32_t cap_samples) {
    memset(w, 0, sizeof *w);
    w->p = p;
    w->token_bytes = data_token_bytes(p);
    w->meta_stride = 2 * (p->levels + 1);
    w->pad_len = (uint32_t)data_pad_len(p);
    w->cap = cap_samples;
    uint64_t cap_tok = (uint64_t)cap_samples * w->pad_len;
    w->off = xmalloc(((size_t)cap_samples + 1) * sizeof(uint64_t));
    w->tok = xmalloc((size_t)cap_tok * (size_t)w->token_bytes);
    w->mask = xmalloc((size_t)(cap_tok + 7) / 8);
    w->meta = xmalloc((size_t)cap_samples * (size_t)w->meta_stride);
}

void shard_writer_free(shard_writer *w) {
    free(w->off);
    free(w->tok);
    free(w->mask);
    free(w->meta);
    memset(w, 0, sizeof *w);
}

void shard_writer_reset(shard_writer *w, int split, int index, uint64_t first_index) {
    memset(&w->info, 0, sizeof w->info);
    w->info.split = (uint32_t)split;
    w->info.index = (uint32_t)index;
    w->info.first_index = first_index;
    w->off[0] = 0;
}

void shard_writer_add(shard_writer *w, const int32_t *tok, const uint8_t *mask, int len, const int *sizes,
                      int attempt) {
    if (w->info.n_samples >= w->cap) hax_die("shard writer: more than %u samples in one shard", w->cap);
    uint64_t at = w->info.n_tokens;
    if (w->token_bytes == 1) {
        uint8_t *t = w->tok + at;
        for (int j = 0; j < len; j++) t[j] = (uint8_t)tok[j];
    } else {
        for (int j = 0; j < len; j++) {
            uint16_t v = (uint16_t)tok[j];
            memcpy(w->tok + 2 * (at + (uint64_t)j), &v, 2);
        }
    }
    // Mask bits, one per token; bytes are cleared as the stream reaches them.
    for (int j = 0; j < len; j++) {
        uint64_t p = at + (uint64_t)j;
        if ((p & 7) == 0) w->mask[p >> 3] = 0;
        w->mask[p >> 3] |= (uint8_t)((mask[j] & 1) << (p & 7));
    }
    uint8_t *meta = w->meta + (size_t)w->info.n_samples * (size_t)w->meta_stride;
    for (int l = 0; l < w->p->levels; l++) {
        uint16_t v = (uint16_t)sizes[l];
        memcpy(meta + 2 * l, &v, 2);
    }
    uint16_t a = (uint16_t)attempt;
    memcpy(meta + 2 * w->p->levels, &a, 2);
    w->info.n_tokens += (uint64_t)len;
    w->info.n_samples++;
    w->off[w->info.n_samples] = w->info.n_tokens;
}

void shard_file_name(char *buf, int buflen, int split, int index) {
    snprintf(buf, (size_t)buflen, "%s-%05d.bin", hax_split_names[split], index);
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int shard_writer_write(shard_writer *w, const char *path, char *err, int errlen) {
    hax_shard_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, HAX_SHARD_MAGIC, 8);
    h.version = HAX_SHARD_VERSION;
    h.header_bytes = sizeof h;
    h.split = w->info.split;
    h.shard_index = w->info.index;
    h.first_index = w->info.first_index;
    h.n_samples = w->info.n_samples;
    h.token_bytes = (uint32_t)w->token_bytes;
    h.levels = (uint32_t)w->p->levels;
    h.pad_len = w->pad_len;
    h.n_tokens = w->info.n_tokens;
    h.seed = w->p->seed;
    h.meta_stride = (uint32_t)w->meta_stride;
    const void *sec[HAX_N_SECTIONS] = {w->off, w->tok, w->mask, w->meta};
    uint64_t bytes[HAX_N_SECTIONS] = {((uint64_t)h.n_samples + 1) * 8, h.n_tokens * h.token_bytes,
                                      (h.n_tokens + 7) / 8, (uint64_t)h.n_samples * h.meta_stride};
    uint64_t at = sizeof h;
    for (int k = 0; k < HAX_N_SECTIONS; k++) {
        h.sec_offset[k] = at;
        h.sec_bytes[k] = bytes[k];
        h.sec_crc[k] = hax_crc32c(0, sec[k], bytes[k]);
        at = (at + bytes[k] + 7) & ~(uint64_t)7;
    }
    h.header_crc = hax_crc32c(0, &h, offsetof(hax_shard_header, header_crc));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        snprintf(err, (size_t)errlen, "%s: cannot create: %s", path, strerror(errno));
        return -1;
    }
    static const uint8_t zeros[8] = {0};
    int rc = write_all(fd, &h, sizeof h);
    for (int k = 0; k < HAX_N_SECTIONS && rc == 0; k++) {
        rc = write_all(fd, sec[k], bytes[k]);
        uint64_t pad = (8 - (bytes[k] & 7)) & 7;
        if (rc == 0 && pad) rc = write_all(fd, zeros, pad);
    }
    if (rc == 0) rc = fdatasync(fd);
    if (close(fd) != 0) rc = -1;
    if (rc) {
        snprintf(err, (size_t)errlen, "%s: cannot write: %s", path, strerror(errno));
        unlink(path);
        return -1;
    }
    w->info.bytes = at;
    w->info.crc = h.header_crc;
    return 0;
}
