/* The ceiling of a throughput benchmark: zlib-ng alone, in C.
 *
 * Compresses (raw deflate, one fresh-by-reset state per thread) or inflates
 * (gzip members) the very pieces a benchmark hands to estargz, on the same
 * number of threads, with no framing, hashing or I/O inside the timed part.
 * Pieces are taken from a shared counter, so threads stay busy to the end.
 *
 *   ceiling deflate LEVEL THREADS ROUNDS DATA SIZES
 *   ceiling inflate 0     THREADS ROUNDS DATA SIZES
 *
 * The "-sha" modes (deflate-sha, inflate-sha) add the hashing an eStargz
 * writer or verifier cannot skip, with estargz's own SHA-256: every piece's
 * digest (chunkDigest); for deflate-sha also the digest of each compressed
 * piece (the blob digest's share) and one sequential digest of all the
 * uncompressed bytes (the diffID), done by the first thread before it
 * joins the others.
 *
 * DATA holds the pieces back to back.  SIZES has one line per piece: its
 * size in DATA, and for inflate also its uncompressed size.  Prints one JSON
 * object: the best round's seconds, the uncompressed bytes and the
 * compressed bytes of one round.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sha256.h"
#include "zlib-ng.h"

typedef struct {
    const uint8_t *data;
    size_t size;
    size_t out_size; /* inflate: uncompressed size */
} piece_t;

static piece_t *pieces;
static size_t piece_count;
static int mode_inflate;
static int mode_sha;
static int level;
static const uint8_t *all_data;
static size_t all_size;
static atomic_size_t next_piece;
static atomic_size_t produced_total;

static void die(const char *what)
{
    fprintf(stderr, "ceiling: %s\n", what);
    exit(1);
}

static void *worker(void *arg)
{
    uint8_t digest[ESGZ_SHA256_DIGEST_SIZE];
    esgz_sha256 hash;
    if (mode_sha && !mode_inflate && *(int *)arg == 0) {
        esgz_sha256_init(&hash);
        esgz_sha256_update(&hash, all_data, all_size);
        esgz_sha256_digest(&hash, digest);
    }
    zng_stream strm;
    size_t capacity = 1 << 16;
    uint8_t *out = malloc(capacity);
    size_t produced = 0;

    memset(&strm, 0, sizeof(strm));
    if (mode_inflate ? zng_inflateInit2(&strm, 31) != Z_OK
                     : zng_deflateInit2(&strm, level, Z_DEFLATED, -15, 8,
                                        Z_DEFAULT_STRATEGY) != Z_OK)
        die("init failed");
    for (;;) {
        size_t i = atomic_fetch_add(&next_piece, 1);
        if (i >= piece_count)
            break;
        size_t need = mode_inflate ? pieces[i].out_size + 1
                                   : zng_deflateBound(&strm, pieces[i].size) + 64;
        if (need > capacity) {
            capacity = need;
            out = realloc(out, capacity);
        }
        strm.next_in = pieces[i].data;
        strm.avail_in = (uint32_t)pieces[i].size;
        strm.next_out = out;
        strm.avail_out = (uint32_t)capacity;
        if (mode_inflate) {
            zng_inflateReset2(&strm, 31);
            if (zng_inflate(&strm, Z_FINISH) != Z_STREAM_END)
                die("inflate did not reach the member end");
        } else {
            zng_deflateReset(&strm);
            if (zng_deflate(&strm, Z_FINISH) != Z_STREAM_END)
                die("deflate did not finish");
        }
        produced += capacity - strm.avail_out;
        if (mode_sha) {
            const uint8_t *plain = mode_inflate ? out : pieces[i].data;
            size_t plain_size = mode_inflate ? pieces[i].out_size : pieces[i].size;
            const uint8_t *packed = mode_inflate ? pieces[i].data : out;
            size_t packed_size = mode_inflate ? pieces[i].size : capacity - strm.avail_out;
            esgz_sha256_init(&hash);
            esgz_sha256_update(&hash, plain, plain_size);
            esgz_sha256_digest(&hash, digest);
            if (!mode_inflate) {
                esgz_sha256_init(&hash);
                esgz_sha256_update(&hash, packed, packed_size);
                esgz_sha256_digest(&hash, digest);
            }
        }
    }
    if (mode_inflate)
        zng_inflateEnd(&strm);
    else
        zng_deflateEnd(&strm);
    free(out);
    atomic_fetch_add(&produced_total, produced);
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 7)
        die("usage: ceiling deflate|inflate LEVEL THREADS ROUNDS DATA SIZES");
    mode_inflate = strncmp(argv[1], "inflate", 7) == 0;
    mode_sha = strstr(argv[1], "-sha") != NULL;
    esgz_sha256_select();
    level = atoi(argv[2]);
    int threads = atoi(argv[3]);
    int rounds = atoi(argv[4]);
    if (threads < 1 || rounds < 1)
        die("THREADS and ROUNDS must be positive");

    FILE *f = fopen(argv[5], "rb");
    if (!f)
        die("cannot open DATA");
    fseek(f, 0, SEEK_END);
    long data_size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc(data_size ? data_size : 1);
    if (fread(data, 1, data_size, f) != (size_t)data_size)
        die("short read of DATA");
    fclose(f);

    FILE *s = fopen(argv[6], "r");
    if (!s)
        die("cannot open SIZES");
    size_t capacity = 1024, offset = 0, in_total = 0;
    pieces = malloc(capacity * sizeof(piece_t));
    unsigned long long a, b = 0;
    while (mode_inflate ? fscanf(s, "%llu %llu", &a, &b) == 2 : fscanf(s, "%llu", &a) == 1) {
        if (piece_count == capacity)
            pieces = realloc(pieces, (capacity *= 2) * sizeof(piece_t));
        if (offset + a > (size_t)data_size)
            die("SIZES runs past the end of DATA");
        pieces[piece_count].data = data + offset;
        pieces[piece_count].size = a;
        pieces[piece_count].out_size = b;
        in_total += mode_inflate ? b : a;
        offset += a;
        piece_count++;
    }
    fclose(s);
    if (!mode_inflate) {
        all_data = data;
        all_size = offset;
    }

    double best = 1e30;
    size_t out_total = 0;
    pthread_t *ids = malloc(threads * sizeof(pthread_t));
    int *numbers = malloc(threads * sizeof(int));
    for (int r = 0; r < rounds; r++) {
        atomic_store(&next_piece, 0);
        atomic_store(&produced_total, 0);
        double start = now();
        for (int t = 0; t < threads; t++) {
            numbers[t] = t;
            pthread_create(&ids[t], NULL, worker, &numbers[t]);
        }
        for (int t = 0; t < threads; t++)
            pthread_join(ids[t], NULL);
        double took = now() - start;
        if (took < best)
            best = took;
        out_total = atomic_load(&produced_total);
    }
    printf("{\"seconds\": %.9f, \"uncompressed_bytes\": %zu, \"compressed_bytes\": %zu, "
           "\"pieces\": %zu, \"threads\": %d, \"level\": %d, \"mode\": \"%s\"}\n",
           best, in_total, mode_inflate ? (size_t)data_size : out_total, piece_count,
           threads, level, argv[1]);
    return 0;
}
