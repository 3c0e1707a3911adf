// batch.h: a packed batch of variable-length sequences, as the data reader
// yields it and every backend consumes it. No pad position is stored.
#ifndef HAX_BATCH_H
#define HAX_BATCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_seq;             // sequences held here (this rank's part of the global batch)
    int n_tok;             // packed model positions: sum of the sequences' input lengths
    int *seq_off;          // [n_seq + 1] start of each sequence in the packed arrays
    int32_t *inputs;       // [n_tok] input token ids (the reference's tok[:, :-1], pads removed)
    int32_t *labels;       // [n_tok] the next token (tok[:, 1:]); 3 (pad) after a row's end
    uint8_t *loss_mask;    // [n_tok] 1 at inquiry keys: the positions scored by loss and accuracy
    int64_t *sample_idx;   // [n_seq] global index of the sample within its split
    int *n_context;        // [n_seq] the sample's cell (n_c, n_k), for per-cell accuracy
    int *n_key;            // [n_seq]
    int model_len;         // the reference's padded model length L (pad_len - 1: 1057 by default);
                           // reference semantics count pad positions in sequence statistics
    int global_n_seq;      // sequences in the global batch, over all ranks (normalisers)
    int first_seq;         // global position of this rank's first sequence within the batch
} hax_batch;

// Zeroes a batch and gives it arrays for up to max_seq sequences and max_tok
// positions (the per-sequence ones zeroed); the caller sets the counts and
// fills them. Free with hax_batch_free.
void hax_batch_alloc(hax_batch *b, int max_seq, size_t max_tok);

// Frees the arrays of a batch that owns them (the reader's and the golden
// loader's batches) and zeroes it.
void hax_batch_free(hax_batch *b);

#endif
