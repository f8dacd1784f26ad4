/* SHA-256 (FIPS 180-4) for estargz: incremental, reentrant, no global state
 * beyond the block function chosen once at start-up.
 *
 * The block function uses the x86 SHA extensions or the ARMv8 SHA-2
 * instructions when the CPU has them, and portable C otherwise.  Nothing
 * here touches Python, so every function may run without the GIL.
 */
#ifndef ESTARGZ_SHA256_H
#define ESTARGZ_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define ESGZ_SHA256_DIGEST_SIZE 32
#define ESGZ_SHA256_BLOCK_SIZE 64

typedef struct {
    uint32_t state[8];
    uint64_t length;   /* bytes hashed so far */
    size_t buffered;   /* bytes waiting in block */
    uint8_t block[ESGZ_SHA256_BLOCK_SIZE];
} esgz_sha256;

/* Pick the block function for this CPU; safe to call more than once. */
void esgz_sha256_select(void);
/* Name of the block function in use: "x86-sha", "armv8-sha2" or "portable". */
const char *esgz_sha256_implementation(void);
/* Force the portable block function (tests compare both paths). */
void esgz_sha256_force_portable(int on);

void esgz_sha256_init(esgz_sha256 *ctx);
void esgz_sha256_update(esgz_sha256 *ctx, const uint8_t *data, size_t size);
/* Update up to three contexts with the same bytes, in one pass when the
 * CPU allows (more than three are updated one after another). */
void esgz_sha256_update_many(esgz_sha256 **ctx, int count, const uint8_t *data,
                             size_t size);
/* Writes the digest; ctx is left unchanged, so hashing may continue. */
void esgz_sha256_digest(const esgz_sha256 *ctx, uint8_t out[ESGZ_SHA256_DIGEST_SIZE]);

#endif
