// text_format.h: the reference's text layout (scripts/create_dataset.py):
// per split files
//   max_n_context_{C}_max_n_key_{K}_seed_{S}_{train,valid,test}_{inputs,mask}.txt,
// one line per sample, space-separated ids padded with 3 (mask 0) to
// pad_len = (2C)(2K+1)+2, newline-terminated (exactly what Python's print writes).
// Files are written under temporary names beside the final ones and renamed
// only on a committed close, so a partial dataset never carries the final names.
#ifndef HAX_TEXT_FORMAT_H
#define HAX_TEXT_FORMAT_H

#include <stdint.h>

typedef struct text_writer text_writer;

// Opens the six temporaries in dir. Returns NULL with err on failure.
text_writer *text_writer_open(const char *dir, int max_n_context, int max_n_key, uint32_t seed,
                              int pad_len, char *err, int errlen);
// Appends one sample (len <= pad_len tokens) to split 0/1/2 (train/valid/test).
// Returns 0, or -1 (message in text_writer_error).
int text_writer_add(text_writer *w, int split, const int32_t *tokens, const uint8_t *mask, int len);
// commit=1: temporaries flushed, synced and renamed into place; 0: removed
// (never leave partial files under the final names). Frees w. Returns 0 or -1
// (a failed commit removes the temporaries; text_writer_error(NULL) says why).
int text_writer_close(text_writer *w, int commit);
// The last error of w ("" when none); with NULL, that of the last failed close.
const char *text_writer_error(const text_writer *w);
// The final path of one file: kind 0 inputs, 1 mask. Returns snprintf's count.
int text_format_path(char *buf, int buflen, const char *dir, int max_n_context, int max_n_key,
                     uint32_t seed, int split, int kind);

#endif
