// checksum.h: CRC-32C (Castagnoli), used for dataset shards and checkpoints.
#ifndef HAX_CHECKSUM_H
#define HAX_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

// crc = hax_crc32c(0, buf, n) for one buffer; pass the previous value to
// continue over several buffers.
uint32_t hax_crc32c(uint32_t crc, const void *buf, size_t n);

#endif
