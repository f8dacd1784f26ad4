# The part of zlib-ng's native API that estargz uses, declared once.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t


cdef extern from "zlib-ng.h" nogil:
    const char *ZLIBNG_VERSION

    ctypedef struct zng_stream:
        const uint8_t *next_in
        uint32_t avail_in
        size_t total_in
        uint8_t *next_out
        uint32_t avail_out
        size_t total_out
        const char *msg
        void *zalloc
        void *zfree
        void *opaque

    enum:
        Z_NO_FLUSH
        Z_SYNC_FLUSH
        Z_FINISH
        Z_OK
        Z_STREAM_END
        Z_NEED_DICT
        Z_STREAM_ERROR
        Z_DATA_ERROR
        Z_MEM_ERROR
        Z_BUF_ERROR
        Z_DEFLATED
        Z_DEFAULT_STRATEGY

    const char *zlibng_version()

    int32_t zng_deflateInit2(zng_stream *strm, int32_t level, int32_t method,
                             int32_t windowBits, int32_t memLevel,
                             int32_t strategy)
    int32_t zng_deflate(zng_stream *strm, int32_t flush)
    int32_t zng_deflateReset(zng_stream *strm)
    int32_t zng_deflateSetDictionary(zng_stream *strm, const uint8_t *dictionary,
                                     uint32_t dictLength)
    int32_t zng_deflateEnd(zng_stream *strm)
    unsigned long zng_deflateBound(zng_stream *strm, unsigned long sourceLen)

    int32_t zng_inflateInit2(zng_stream *strm, int32_t windowBits)
    int32_t zng_inflate(zng_stream *strm, int32_t flush)
    int32_t zng_inflateReset2(zng_stream *strm, int32_t windowBits)
    int32_t zng_inflateEnd(zng_stream *strm)

    uint32_t zng_crc32_z(uint32_t crc, const uint8_t *buf, size_t len)
    uint32_t zng_crc32_combine(uint32_t crc1, uint32_t crc2, int64_t len2)
