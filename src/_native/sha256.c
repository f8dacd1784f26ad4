/* SHA-256 for estargz; see sha256.h.  Written from FIPS 180-4 and the
 * instruction set manuals (Intel SDM: SHA256RNDS2/MSG1/MSG2; Arm ARM:
 * SHA256H/H2/SU0/SU1). */
#include "sha256.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define ESGZ_X86 1
#include <cpuid.h>
#include <immintrin.h>
#elif defined(__aarch64__)
#define ESGZ_ARM64 1
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_SHA2
#define HWCAP_SHA2 (1 << 6)
#endif
#endif

typedef void (*block_fn)(uint32_t state[8], const uint8_t *data, size_t blocks);

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t INITIAL_STATE[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* ---- portable C ---------------------------------------------------- */

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void blocks_portable(uint32_t state[8], const uint8_t *data, size_t blocks)
{
    uint32_t w[64];

    while (blocks--) {
        for (int t = 0; t < 16; t++)
            w[t] = load_be32(data + 4 * t);
        for (int t = 16; t < 64; t++) {
            uint32_t s0 = ROTR(w[t - 15], 7) ^ ROTR(w[t - 15], 18) ^ (w[t - 15] >> 3);
            uint32_t s1 = ROTR(w[t - 2], 17) ^ ROTR(w[t - 2], 19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16] + s0 + w[t - 7] + s1;
        }

        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int t = 0; t < 64; t++) {
            uint32_t big1 = ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25);
            uint32_t choose = (e & f) ^ (~e & g);
            uint32_t t1 = h + big1 + choose + K[t] + w[t];
            uint32_t big0 = ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22);
            uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
            uint32_t t2 = big0 + majority;
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        state[0] += a;
        state[1] += b;
        state[2] += c;
        state[3] += d;
        state[4] += e;
        state[5] += f;
        state[6] += g;
        state[7] += h;
        data += ESGZ_SHA256_BLOCK_SIZE;
    }
}

/* ---- x86 SHA extensions ---------------------------------------------
 * SHA256RNDS2 keeps the working variables as two vectors, ABEF and CDGH
 * (highest lane first), and does two rounds per call; MSG1/MSG2 compute
 * the message schedule four words at a time. */

#ifdef ESGZ_X86
#define X86_TARGET __attribute__((target("sha,sse4.1,ssse3")))

/* Four rounds on message group m (words 4g..4g+3). */
#define X86_ROUNDS4(m, g)                                                     \
    do {                                                                      \
        __m128i wk = _mm_add_epi32(                                           \
            (m), _mm_loadu_si128((const __m128i *)&K[4 * (g)]));              \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);                         \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0e)); \
    } while (0)

/* Next schedule group from the previous four: W[t-16..t-13] in m0,
 * W[t-12..t-9] in m1, W[t-8..t-5] in m2, W[t-4..t-1] in m3. */
#define X86_SCHEDULE(m0, m1, m2, m3)                                         \
    _mm_sha256msg2_epu32(                                                     \
        _mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)),                       \
                      _mm_alignr_epi8((m3), (m2), 4)),                        \
        (m3))

X86_TARGET
static void blocks_x86(uint32_t state[8], const uint8_t *data, size_t blocks)
{
    const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abcd = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i efgh = _mm_loadu_si128((const __m128i *)&state[4]);

    /* lanes (low..high) A B C D / E F G H  ->  F E B A / H G D C */
    __m128i badc = _mm_shuffle_epi32(abcd, 0xb1);
    __m128i hgfe = _mm_shuffle_epi32(efgh, 0x1b);
    __m128i abef = _mm_alignr_epi8(badc, hgfe, 8);
    __m128i cdgh = _mm_blend_epi16(hgfe, badc, 0xf0);

    while (blocks--) {
        __m128i saved_abef = abef, saved_cdgh = cdgh;
        const __m128i *in = (const __m128i *)data;
        __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128(in + 0), byteswap);
        __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128(in + 1), byteswap);
        __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128(in + 2), byteswap);
        __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128(in + 3), byteswap);

        X86_ROUNDS4(m0, 0);
        X86_ROUNDS4(m1, 1);
        X86_ROUNDS4(m2, 2);
        X86_ROUNDS4(m3, 3);
        for (int g = 4; g < 16; g += 4) {
            m0 = X86_SCHEDULE(m0, m1, m2, m3);
            X86_ROUNDS4(m0, g);
            m1 = X86_SCHEDULE(m1, m2, m3, m0);
            X86_ROUNDS4(m1, g + 1);
            m2 = X86_SCHEDULE(m2, m3, m0, m1);
            X86_ROUNDS4(m2, g + 2);
            m3 = X86_SCHEDULE(m3, m0, m1, m2);
            X86_ROUNDS4(m3, g + 3);
        }

        abef = _mm_add_epi32(abef, saved_abef);
        cdgh = _mm_add_epi32(cdgh, saved_cdgh);
        data += ESGZ_SHA256_BLOCK_SIZE;
    }

    /* back to A B C D / E F G H */
    __m128i abfe = _mm_shuffle_epi32(abef, 0x1b);
    __m128i ghcd = _mm_shuffle_epi32(cdgh, 0xb1);
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(abfe, ghcd, 0xf0));
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(ghcd, abfe, 8));
}

/* Two states over the same data: the message schedule is shared and the
 * two round chains are independent, so they overlap in the pipeline and two
 * digests cost little more than one. */
#define X86_ROUNDS4_2(m, g)                                                    \
    do {                                                                       \
        __m128i wk = _mm_add_epi32(                                            \
            (m), _mm_loadu_si128((const __m128i *)&K[4 * (g)]));               \
        __m128i wk_hi = _mm_shuffle_epi32(wk, 0x0e);                           \
        cdgh_a = _mm_sha256rnds2_epu32(cdgh_a, abef_a, wk);                    \
        cdgh_b = _mm_sha256rnds2_epu32(cdgh_b, abef_b, wk);                    \
        abef_a = _mm_sha256rnds2_epu32(abef_a, cdgh_a, wk_hi);                 \
        abef_b = _mm_sha256rnds2_epu32(abef_b, cdgh_b, wk_hi);                 \
    } while (0)

X86_TARGET
static void blocks_x86_pair(uint32_t state_a[8], uint32_t state_b[8],
                            const uint8_t *data, size_t blocks)
{
    const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i badc, hgfe;

    badc = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state_a[0]), 0xb1);
    hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state_a[4]), 0x1b);
    __m128i abef_a = _mm_alignr_epi8(badc, hgfe, 8);
    __m128i cdgh_a = _mm_blend_epi16(hgfe, badc, 0xf0);
    badc = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state_b[0]), 0xb1);
    hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state_b[4]), 0x1b);
    __m128i abef_b = _mm_alignr_epi8(badc, hgfe, 8);
    __m128i cdgh_b = _mm_blend_epi16(hgfe, badc, 0xf0);

    while (blocks--) {
        __m128i saved_abef_a = abef_a, saved_cdgh_a = cdgh_a;
        __m128i saved_abef_b = abef_b, saved_cdgh_b = cdgh_b;
        const __m128i *in = (const __m128i *)data;
        __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128(in + 0), byteswap);
        __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128(in + 1), byteswap);
        __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128(in + 2), byteswap);
        __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128(in + 3), byteswap);

        X86_ROUNDS4_2(m0, 0);
        X86_ROUNDS4_2(m1, 1);
        X86_ROUNDS4_2(m2, 2);
        X86_ROUNDS4_2(m3, 3);
        for (int g = 4; g < 16; g += 4) {
            m0 = X86_SCHEDULE(m0, m1, m2, m3);
            X86_ROUNDS4_2(m0, g);
            m1 = X86_SCHEDULE(m1, m2, m3, m0);
            X86_ROUNDS4_2(m1, g + 1);
            m2 = X86_SCHEDULE(m2, m3, m0, m1);
            X86_ROUNDS4_2(m2, g + 2);
            m3 = X86_SCHEDULE(m3, m0, m1, m2);
            X86_ROUNDS4_2(m3, g + 3);
        }

        abef_a = _mm_add_epi32(abef_a, saved_abef_a);
        cdgh_a = _mm_add_epi32(cdgh_a, saved_cdgh_a);
        abef_b = _mm_add_epi32(abef_b, saved_abef_b);
        cdgh_b = _mm_add_epi32(cdgh_b, saved_cdgh_b);
        data += ESGZ_SHA256_BLOCK_SIZE;
    }

    __m128i abfe = _mm_shuffle_epi32(abef_a, 0x1b);
    __m128i ghcd = _mm_shuffle_epi32(cdgh_a, 0xb1);
    _mm_storeu_si128((__m128i *)&state_a[0], _mm_blend_epi16(abfe, ghcd, 0xf0));
    _mm_storeu_si128((__m128i *)&state_a[4], _mm_alignr_epi8(ghcd, abfe, 8));
    abfe = _mm_shuffle_epi32(abef_b, 0x1b);
    ghcd = _mm_shuffle_epi32(cdgh_b, 0xb1);
    _mm_storeu_si128((__m128i *)&state_b[0], _mm_blend_epi16(abfe, ghcd, 0xf0));
    _mm_storeu_si128((__m128i *)&state_b[4], _mm_alignr_epi8(ghcd, abfe, 8));
}

#define X86_ROUNDS4_3(m, g)                                                    \
    do {                                                                       \
        __m128i wk = _mm_add_epi32(                                            \
            (m), _mm_loadu_si128((const __m128i *)&K[4 * (g)]));               \
        __m128i wk_hi = _mm_shuffle_epi32(wk, 0x0e);                           \
        cdgh_a = _mm_sha256rnds2_epu32(cdgh_a, abef_a, wk);                    \
        cdgh_b = _mm_sha256rnds2_epu32(cdgh_b, abef_b, wk);                    \
        cdgh_c = _mm_sha256rnds2_epu32(cdgh_c, abef_c, wk);                    \
        abef_a = _mm_sha256rnds2_epu32(abef_a, cdgh_a, wk_hi);                 \
        abef_b = _mm_sha256rnds2_epu32(abef_b, cdgh_b, wk_hi);                 \
        abef_c = _mm_sha256rnds2_epu32(abef_c, cdgh_c, wk_hi);                 \
    } while (0)

#define X86_LOAD_STATE(state, abef, cdgh)                                      \
    do {                                                                       \
        __m128i badc_ = _mm_shuffle_epi32(                                     \
            _mm_loadu_si128((const __m128i *)&(state)[0]), 0xb1);              \
        __m128i hgfe_ = _mm_shuffle_epi32(                                     \
            _mm_loadu_si128((const __m128i *)&(state)[4]), 0x1b);              \
        abef = _mm_alignr_epi8(badc_, hgfe_, 8);                               \
        cdgh = _mm_blend_epi16(hgfe_, badc_, 0xf0);                            \
    } while (0)

#define X86_STORE_STATE(state, abef, cdgh)                                     \
    do {                                                                       \
        __m128i abfe_ = _mm_shuffle_epi32(abef, 0x1b);                         \
        __m128i ghcd_ = _mm_shuffle_epi32(cdgh, 0xb1);                         \
        _mm_storeu_si128((__m128i *)&(state)[0], _mm_blend_epi16(abfe_, ghcd_, 0xf0)); \
        _mm_storeu_si128((__m128i *)&(state)[4], _mm_alignr_epi8(ghcd_, abfe_, 8));   \
    } while (0)

/* Three states over the same data (a layer's diffID, a chunk and its file). */
X86_TARGET
static void blocks_x86_triple(uint32_t state_a[8], uint32_t state_b[8],
                              uint32_t state_c[8], const uint8_t *data, size_t blocks)
{
    const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abef_a, cdgh_a, abef_b, cdgh_b, abef_c, cdgh_c;

    X86_LOAD_STATE(state_a, abef_a, cdgh_a);
    X86_LOAD_STATE(state_b, abef_b, cdgh_b);
    X86_LOAD_STATE(state_c, abef_c, cdgh_c);
    while (blocks--) {
        __m128i saved_abef_a = abef_a, saved_cdgh_a = cdgh_a;
        __m128i saved_abef_b = abef_b, saved_cdgh_b = cdgh_b;
        __m128i saved_abef_c = abef_c, saved_cdgh_c = cdgh_c;
        const __m128i *in = (const __m128i *)data;
        __m128i m0 = _mm_shuffle_epi8(_mm_loadu_si128(in + 0), byteswap);
        __m128i m1 = _mm_shuffle_epi8(_mm_loadu_si128(in + 1), byteswap);
        __m128i m2 = _mm_shuffle_epi8(_mm_loadu_si128(in + 2), byteswap);
        __m128i m3 = _mm_shuffle_epi8(_mm_loadu_si128(in + 3), byteswap);

        X86_ROUNDS4_3(m0, 0);
        X86_ROUNDS4_3(m1, 1);
        X86_ROUNDS4_3(m2, 2);
        X86_ROUNDS4_3(m3, 3);
        for (int g = 4; g < 16; g += 4) {
            m0 = X86_SCHEDULE(m0, m1, m2, m3);
            X86_ROUNDS4_3(m0, g);
            m1 = X86_SCHEDULE(m1, m2, m3, m0);
            X86_ROUNDS4_3(m1, g + 1);
            m2 = X86_SCHEDULE(m2, m3, m0, m1);
            X86_ROUNDS4_3(m2, g + 2);
            m3 = X86_SCHEDULE(m3, m0, m1, m2);
            X86_ROUNDS4_3(m3, g + 3);
        }

        abef_a = _mm_add_epi32(abef_a, saved_abef_a);
        cdgh_a = _mm_add_epi32(cdgh_a, saved_cdgh_a);
        abef_b = _mm_add_epi32(abef_b, saved_abef_b);
        cdgh_b = _mm_add_epi32(cdgh_b, saved_cdgh_b);
        abef_c = _mm_add_epi32(abef_c, saved_abef_c);
        cdgh_c = _mm_add_epi32(cdgh_c, saved_cdgh_c);
        data += ESGZ_SHA256_BLOCK_SIZE;
    }
    X86_STORE_STATE(state_a, abef_a, cdgh_a);
    X86_STORE_STATE(state_b, abef_b, cdgh_b);
    X86_STORE_STATE(state_c, abef_c, cdgh_c);
}

static int x86_has_sha(void)
{
    unsigned int eax, ebx, ecx, edx;

    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    int ssse3 = (ecx >> 9) & 1, sse41 = (ecx >> 19) & 1;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    return ssse3 && sse41 && ((ebx >> 29) & 1);
}
#endif

/* ---- ARMv8 SHA-2 instructions ---------------------------------------
 * SHA256H/SHA256H2 do four rounds on ABCD and EFGH; SU0/SU1 extend the
 * message schedule four words at a time. */

#ifdef ESGZ_ARM64
#define ARM_TARGET __attribute__((target("+crypto")))

ARM_TARGET
static void blocks_arm64(uint32_t state[8], const uint8_t *data, size_t blocks)
{
    uint32x4_t abcd = vld1q_u32(&state[0]);
    uint32x4_t efgh = vld1q_u32(&state[4]);

    while (blocks--) {
        uint32x4_t saved_abcd = abcd, saved_efgh = efgh;
        uint32x4_t m[4];
        for (int i = 0; i < 4; i++)
            m[i] = vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(data + 16 * i)));

        for (int g = 0; g < 16; g++) {
            if (g >= 4) {
                uint32x4_t partial = vsha256su0q_u32(m[g & 3], m[(g + 1) & 3]);
                m[g & 3] = vsha256su1q_u32(partial, m[(g + 2) & 3], m[(g + 3) & 3]);
            }
            uint32x4_t wk = vaddq_u32(m[g & 3], vld1q_u32(&K[4 * g]));
            uint32x4_t previous_abcd = abcd;
            abcd = vsha256hq_u32(abcd, efgh, wk);
            efgh = vsha256h2q_u32(efgh, previous_abcd, wk);
        }

        abcd = vaddq_u32(abcd, saved_abcd);
        efgh = vaddq_u32(efgh, saved_efgh);
        data += ESGZ_SHA256_BLOCK_SIZE;
    }
    vst1q_u32(&state[0], abcd);
    vst1q_u32(&state[4], efgh);
}
#endif

/* ---- dispatch ------------------------------------------------------- */

typedef void (*pair_fn)(uint32_t a[8], uint32_t b[8], const uint8_t *data, size_t blocks);
typedef void (*triple_fn)(uint32_t a[8], uint32_t b[8], uint32_t c[8], const uint8_t *data,
                          size_t blocks);

static void pair_by_blocks(uint32_t a[8], uint32_t b[8], const uint8_t *data, size_t blocks);
static void triple_by_blocks(uint32_t a[8], uint32_t b[8], uint32_t c[8], const uint8_t *data,
                             size_t blocks);

static block_fn selected_blocks = blocks_portable;
static pair_fn selected_pair = pair_by_blocks;
static pair_fn hardware_pair = NULL;
static triple_fn selected_triple = triple_by_blocks;
static triple_fn hardware_triple = NULL;
static block_fn hardware_blocks = NULL;
static const char *selected_name = "portable";

void esgz_sha256_select(void)
{
#ifdef ESGZ_X86
    if (x86_has_sha()) {
        hardware_blocks = blocks_x86;
        hardware_pair = blocks_x86_pair;
        hardware_triple = blocks_x86_triple;
        selected_name = "x86-sha";
    }
#endif
#ifdef ESGZ_ARM64
    if (getauxval(AT_HWCAP) & HWCAP_SHA2) {
        hardware_blocks = blocks_arm64;
        selected_name = "armv8-sha2";
    }
#endif
    if (hardware_blocks)
        selected_blocks = hardware_blocks;
    if (hardware_pair)
        selected_pair = hardware_pair;
    if (hardware_triple)
        selected_triple = hardware_triple;
}

static void triple_by_blocks(uint32_t a[8], uint32_t b[8], uint32_t c[8], const uint8_t *data,
                             size_t blocks)
{
    selected_pair(a, b, data, blocks);
    selected_blocks(c, data, blocks);
}

static void pair_by_blocks(uint32_t a[8], uint32_t b[8], const uint8_t *data, size_t blocks)
{
    selected_blocks(a, data, blocks);
    selected_blocks(b, data, blocks);
}

const char *esgz_sha256_implementation(void)
{
    return selected_blocks == blocks_portable ? "portable" : selected_name;
}

void esgz_sha256_force_portable(int on)
{
    selected_blocks = (on || !hardware_blocks) ? blocks_portable : hardware_blocks;
    selected_pair = (on || !hardware_pair) ? pair_by_blocks : hardware_pair;
    selected_triple = (on || !hardware_triple) ? triple_by_blocks : hardware_triple;
}

void esgz_sha256_init(esgz_sha256 *ctx)
{
    memcpy(ctx->state, INITIAL_STATE, sizeof(INITIAL_STATE));
    ctx->length = 0;
    ctx->buffered = 0;
}

void esgz_sha256_update(esgz_sha256 *ctx, const uint8_t *data, size_t size)
{
    block_fn blocks_of = selected_blocks;

    ctx->length += size;
    if (ctx->buffered) {
        size_t take = ESGZ_SHA256_BLOCK_SIZE - ctx->buffered;
        if (take > size)
            take = size;
        memcpy(ctx->block + ctx->buffered, data, take);
        ctx->buffered += take;
        data += take;
        size -= take;
        if (ctx->buffered < ESGZ_SHA256_BLOCK_SIZE)
            return;
        blocks_of(ctx->state, ctx->block, 1);
        ctx->buffered = 0;
    }
    size_t whole = size / ESGZ_SHA256_BLOCK_SIZE;
    if (whole) {
        blocks_of(ctx->state, data, whole);
        data += whole * ESGZ_SHA256_BLOCK_SIZE;
        size -= whole * ESGZ_SHA256_BLOCK_SIZE;
    }
    if (size) {
        memcpy(ctx->block, data, size);
        ctx->buffered = size;
    }
}

void esgz_sha256_digest(const esgz_sha256 *ctx, uint8_t out[ESGZ_SHA256_DIGEST_SIZE])
{
    uint32_t state[8];
    uint8_t tail[2 * ESGZ_SHA256_BLOCK_SIZE];
    size_t tail_size;
    uint64_t bits = ctx->length * 8;

    /* Padding: 0x80, zeros, then the bit length as a 64-bit big-endian
     * number, ending on a block boundary. */
    memcpy(state, ctx->state, sizeof(state));
    memset(tail, 0, sizeof(tail));
    memcpy(tail, ctx->block, ctx->buffered);
    tail[ctx->buffered] = 0x80;
    tail_size = ctx->buffered + 9 <= ESGZ_SHA256_BLOCK_SIZE ? ESGZ_SHA256_BLOCK_SIZE
                                                            : 2 * ESGZ_SHA256_BLOCK_SIZE;
    for (int i = 0; i < 8; i++)
        tail[tail_size - 1 - i] = (uint8_t)(bits >> (8 * i));
    selected_blocks(state, tail, tail_size / ESGZ_SHA256_BLOCK_SIZE);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(state[i] >> 24);
        out[4 * i + 1] = (uint8_t)(state[i] >> 16);
        out[4 * i + 2] = (uint8_t)(state[i] >> 8);
        out[4 * i + 3] = (uint8_t)state[i];
    }
}

/* Feed ``size`` bytes to one, two or three contexts at once.  Contexts
 * may hold different partial blocks; whole blocks that all of them take
 * from the same input go through the pair or triple function, the rest
 * through the ordinary update. */
void esgz_sha256_update_many(esgz_sha256 **ctx, int count, const uint8_t *data, size_t size)
{
    int aligned = 1;
    for (int i = 1; i < count; i++)
        aligned &= ctx[i]->buffered == ctx[0]->buffered;
    if (count == 1 || count > 3 || !aligned) {
        for (int i = 0; i < count; i++)
            esgz_sha256_update(ctx[i], data, size);
        return;
    }
    if (ctx[0]->buffered) {
        size_t take = ESGZ_SHA256_BLOCK_SIZE - ctx[0]->buffered;
        if (take > size)
            take = size;
        for (int i = 0; i < count; i++)
            esgz_sha256_update(ctx[i], data, take);
        data += take;
        size -= take;
    }
    size_t whole = size / ESGZ_SHA256_BLOCK_SIZE;
    if (whole) {
        if (count == 2)
            selected_pair(ctx[0]->state, ctx[1]->state, data, whole);
        else
            selected_triple(ctx[0]->state, ctx[1]->state, ctx[2]->state, data, whole);
        for (int i = 0; i < count; i++)
            ctx[i]->length += whole * ESGZ_SHA256_BLOCK_SIZE;
        data += whole * ESGZ_SHA256_BLOCK_SIZE;
        size -= whole * ESGZ_SHA256_BLOCK_SIZE;
    }
    if (size) {
        for (int i = 0; i < count; i++)
            esgz_sha256_update(ctx[i], data, size);
    }
}
