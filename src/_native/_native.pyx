"""Native core of estargz over zlib-ng.

Byte work happens here, without the GIL: gzip members, raw deflate segments
that can be joined into one member, inflating a member at an offset, and
SHA-256.  Python decides what to do with whole buffers; nothing in this
module calls back into Python while it holds no GIL.

Objects that own a zlib-ng or SHA-256 state (:class:`MemberCompressor`,
:class:`MemberWriter`, :class:`GzipReader`, :class:`Sha256`) belong to one
thread at a time: a second thread that calls into an object while it is
busy gets :class:`RuntimeError` instead of a corrupted state.  Use one
object per thread.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from zng cimport (
    Z_BUF_ERROR,
    Z_DATA_ERROR,
    Z_DEFAULT_STRATEGY,
    Z_DEFLATED,
    Z_FINISH,
    Z_MEM_ERROR,
    Z_NEED_DICT,
    Z_NO_FLUSH,
    Z_OK,
    Z_STREAM_END,
    Z_SYNC_FLUSH,
    zlibng_version,
    zng_crc32_combine,
    zng_crc32_z,
    zng_deflate,
    zng_deflateBound,
    zng_deflateEnd,
    zng_deflateInit2,
    zng_deflateReset,
    zng_deflateSetDictionary,
    zng_inflate,
    zng_inflateEnd,
    zng_inflateInit2,
    zng_inflateReset2,
    zng_stream,
)

from estargz.errors import NativeError


cdef extern from "sha256.h" nogil:
    ctypedef struct esgz_sha256:
        uint64_t length
    void esgz_sha256_select()
    const char *esgz_sha256_implementation()
    void esgz_sha256_force_portable(int on)
    void esgz_sha256_init(esgz_sha256 *ctx)
    void esgz_sha256_update(esgz_sha256 *ctx, const uint8_t *data, size_t size)
    void esgz_sha256_update_many(esgz_sha256 **ctx, int count, const uint8_t *data,
                                 size_t size)
    void esgz_sha256_digest(const esgz_sha256 *ctx, uint8_t *out)


esgz_sha256_select()

# Largest piece handed to zlib-ng in one call (its counters are 32-bit).
cdef size_t MAX_STEP = 1 << 30
# Raw deflate window; gzip framing is written here, not by zlib-ng.
cdef int RAW_WINDOW = -15
# Inflate accepts a gzip wrapper only (no zlib, no raw data).
cdef int GZIP_WINDOW = 31
# Scratch space for uncompressed bytes that are skipped, not returned.
cdef size_t SKIP_BUFFER = 1 << 16
# Below this size hashing is cheaper than releasing the GIL.
cdef size_t NOGIL_HASH_MIN = 4096
# inflate_member allocates a result of up to this size before inflating.
cdef Py_ssize_t DIRECT_INFLATE_MAX = 1 << 22

DEFAULT_MAX_OUTPUT = 1 << 28
"""Default cap on the bytes one inflate call may return (256 MiB)."""

GZIP_MAGIC = b"\x1f\x8b\x08"
FINAL_EMPTY_BLOCK = b"\x03\x00"
"""A final, empty fixed-Huffman deflate block: ends a member of segments."""

# What starts a segment handed to MemberCompressor.compress_layer.
cdef enum:
    SEGMENT_START = 0
    SEGMENT_CHUNK = 1
    SEGMENT_LANDMARK = 2
    SEGMENT_CONTINUATION = 3

KIND_START = SEGMENT_START
KIND_CHUNK = SEGMENT_CHUNK
KIND_LANDMARK = SEGMENT_LANDMARK
KIND_CONTINUATION = SEGMENT_CONTINUATION

# Statuses of our own, beside zlib-ng's negative codes.
cdef enum:
    ERR_NOMEM = -1000
    ERR_TRUNCATED = -1001
    ERR_SHORT = -1002
    ERR_NOT_GZIP = -1003
    ERR_OUTPUT_CAP = -1004


cdef struct OutBuf:
    uint8_t *data
    size_t size
    size_t capacity
    # data is the caller's memory: never realloc'd or freed here; growing
    # moves the bytes to memory of our own.
    bint borrowed


cdef int outbuf_reserve(OutBuf *buf, size_t extra) noexcept nogil:
    cdef size_t want = buf.size + extra
    cdef size_t capacity = buf.capacity
    cdef uint8_t *grown
    if want <= capacity:
        return 0
    if capacity < 4096:
        capacity = 4096
    while capacity < want:
        capacity *= 2
    if buf.borrowed:
        grown = <uint8_t *>malloc(capacity)
        if grown != NULL and buf.size:
            memcpy(grown, buf.data, buf.size)
    else:
        grown = <uint8_t *>realloc(buf.data, capacity)
    if grown == NULL:
        return ERR_NOMEM
    buf.data = grown
    buf.capacity = capacity
    buf.borrowed = False
    return 0


cdef int outbuf_zeros(OutBuf *buf, size_t count) noexcept nogil:
    cdef int status = outbuf_reserve(buf, count)
    if status == 0:
        memset(buf.data + buf.size, 0, count)
        buf.size += count
    return status


cdef bytes outbuf_to_bytes(OutBuf *buf):
    """Copy the buffer into a new bytes object and free it."""
    try:
        return PyBytes_FromStringAndSize(<char *>buf.data, buf.size)
    finally:
        free(buf.data)
        buf.data = NULL
        buf.size = buf.capacity = 0


cdef inline size_t clamp(size_t n) noexcept nogil:
    return n if n < MAX_STEP else MAX_STEP


cdef int deflate_all(zng_stream *strm, const uint8_t *src, size_t size, int flush,
                     OutBuf *out) noexcept nogil:
    """Deflate ``size`` bytes into ``out``, ending with ``flush``."""
    cdef size_t done = 0
    cdef size_t step, before_in, before_out
    cdef int mode, ret
    cdef int status = outbuf_reserve(out, zng_deflateBound(strm, size) + 64)
    if status:
        return status
    while True:
        step = clamp(size - done)
        mode = flush if done + step == size else Z_NO_FLUSH
        strm.next_in = src + done
        strm.avail_in = <uint32_t>step
        while True:
            if out.capacity - out.size < 256:
                status = outbuf_reserve(out, 1 << 16)
                if status:
                    return status
            strm.next_out = out.data + out.size
            strm.avail_out = <uint32_t>clamp(out.capacity - out.size)
            before_in = strm.avail_in
            before_out = strm.avail_out
            ret = zng_deflate(strm, mode)
            out.size += before_out - strm.avail_out
            done += before_in - strm.avail_in
            if ret == Z_STREAM_END:
                return 0
            if ret != Z_OK and ret != Z_BUF_ERROR:
                return ret
            if mode == Z_FINISH:
                continue
            if strm.avail_out != 0 and strm.avail_in == 0:
                break
        if done == size:
            return 0


cdef void write_gzip_header(uint8_t *p, int level) noexcept nogil:
    # RFC 1952 member header, 10 bytes:
    #   0-1  ID1 ID2  1f 8b
    #   2    CM       08 (deflate)
    #   3    FLG      00 (no name, comment, extra or header CRC)
    #   4-7  MTIME    0 (reproducible)
    #   8    XFL      2 at level 9, 4 at levels 0-1, else 0 (as Go writes)
    #   9    OS       ff (unknown, as Go writes)
    p[0] = 0x1F
    p[1] = 0x8B
    p[2] = 8
    p[3] = 0
    p[4] = p[5] = p[6] = p[7] = 0
    p[8] = 2 if level == 9 else (4 if level < 2 else 0)
    p[9] = 0xFF


cdef void write_le32(uint8_t *p, uint32_t value) noexcept nogil:
    p[0] = value & 0xFF
    p[1] = (value >> 8) & 0xFF
    p[2] = (value >> 16) & 0xFF
    p[3] = (value >> 24) & 0xFF


cdef int compress_member(zng_stream *strm, int level, const uint8_t *src, size_t size,
                         OutBuf *out) noexcept nogil:
    """Append one complete gzip member holding ``src`` to ``out``."""
    cdef int status = outbuf_reserve(out, 10)
    cdef uint32_t crc
    if status:
        return status
    write_gzip_header(out.data + out.size, level)
    out.size += 10
    zng_deflateReset(strm)
    status = deflate_all(strm, src, size, Z_FINISH, out)
    if status:
        return status
    status = outbuf_reserve(out, 8)
    if status:
        return status
    crc = zng_crc32_z(0, src, size)
    # Trailer: CRC-32 and ISIZE (size modulo 2**32), both little-endian.
    write_le32(out.data + out.size, crc)
    write_le32(out.data + out.size + 4, <uint32_t>size)
    out.size += 8
    return 0


cdef int renew_deflate(zng_stream *strm, int level) noexcept nogil:
    """Replace ``strm`` by a freshly initialised deflate state.

    ``zng_deflateReset`` keeps the window's old bytes (and its high-water
    mark), and the hashes deflate inserts at a sync flush read a byte past
    the data given so far.  A stream that flushes mid-member and carries on,
    or starts from a dictionary, could then depend on what the state
    compressed before; from a fresh state it cannot.  Plain members (one
    Z_FINISH) are unaffected and keep the cheap reset.
    """
    zng_deflateEnd(strm)
    return init_deflate(strm, level)


cdef int init_deflate(zng_stream *strm, int level) noexcept nogil:
    """A fresh raw deflate state in ``strm`` (whatever it held is dropped)."""
    memset(strm, 0, sizeof(zng_stream))
    return zng_deflateInit2(strm, level, Z_DEFLATED, RAW_WINDOW, 8, Z_DEFAULT_STRATEGY)


cdef int start_deflate(zng_stream *strm, bint *ready, int level) except -1:
    """(Re)initialise an object's deflate state; ``ready`` says it holds one."""
    cdef int ret
    if ready[0]:
        zng_deflateEnd(strm)
        ready[0] = False
    ret = init_deflate(strm, level)
    if ret != Z_OK:
        raise make_error(ret, "deflate init", 0, strm.msg)
    ready[0] = True
    return 0


cdef object make_error(int status, str context, uint64_t offset, const char *zmsg):
    if status == Z_MEM_ERROR or status == ERR_NOMEM:
        return MemoryError(f"{context}: out of memory")
    where = f"at compressed offset {offset}"
    if status == ERR_TRUNCATED:
        text = f"{context}: gzip member is truncated {where}"
    elif status == ERR_NOT_GZIP:
        text = f"{context}: no gzip member starts {where}"
    elif status == Z_DATA_ERROR or status == Z_NEED_DICT:
        detail = zmsg.decode("ascii", "replace") if zmsg != NULL else "invalid data"
        text = f"{context}: corrupt gzip data ({detail}) {where}"
    else:
        text = f"{context}: zlib-ng error {status} {where}"
    code = status if status > ERR_NOMEM else 0
    return NativeError(text, code, offset)


cdef int check_level(int level) except -1:
    if level < 0 or level > 9:
        raise ValueError(f"compression level must be 0-9, got {level}")
    return 0


cdef int enter(bint *busy) except -1:
    if busy[0]:
        raise RuntimeError("this object is in use by another thread")
    busy[0] = True
    return 0


def zlib_ng_version():
    """Return the version string of the zlib-ng library linked in."""
    return zlibng_version().decode("ascii")


def sha256_implementation():
    """Return which SHA-256 block function runs: ``x86-sha``, ``armv8-sha2``
    or ``portable``."""
    return esgz_sha256_implementation().decode("ascii")


def _force_portable_sha256(bint on):
    """Testing hook: use the portable SHA-256 code even on capable CPUs."""
    esgz_sha256_force_portable(on)


def crc32(const uint8_t[::1] data not None, uint32_t value=0):
    """Return the CRC-32 of ``data``, continuing from ``value``.

    Releases the GIL.
    """
    cdef size_t size = data.shape[0]
    cdef const uint8_t *src = &data[0] if size else NULL
    if size:
        # zlib-ng, like zlib, answers 0 for a NULL buffer whatever ``value`` is.
        with nogil:
            value = zng_crc32_z(value, src, size)
    return value


def crc32_combine(uint32_t crc1, uint32_t crc2, int64_t size2):
    """Return the CRC-32 of A + B given CRC(A), CRC(B) and len(B)."""
    if size2 < 0:
        raise ValueError("size2 must not be negative")
    return zng_crc32_combine(crc1, crc2, size2)


def gzip_header(int level=9):
    """Return the 10-byte gzip member header this module writes for ``level``."""
    cdef uint8_t header[10]
    check_level(level)
    write_gzip_header(header, level)
    return PyBytes_FromStringAndSize(<char *>header, 10)


cdef int octal_field(const uint8_t *p, Py_ssize_t n, int64_t *out) noexcept nogil:
    """A tar header's octal number field, as ``TarReader._numeric`` reads it
    (spaces and NULs stripped from both ends, cut at a NUL, empty is 0);
    -1 for base-256 or anything but octal digits (the caller's slow path)."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j = n
    cdef Py_ssize_t k
    cdef int64_t value = 0
    if p[0] & 0x80:
        return -1
    while i < j and (p[i] == 32 or p[i] == 0):
        i += 1
    while j > i and (p[j - 1] == 32 or p[j - 1] == 0):
        j -= 1
    k = i
    while k < j and p[k] != 0:
        if p[k] < 48 or p[k] > 55:
            return -1
        value = value * 8 + (p[k] - 48)
        k += 1
    out[0] = value
    return 0


cdef tuple TAR_FIELDS = (
    (124, 12), (100, 8), (108, 8), (116, 8), (136, 12), (329, 8), (337, 8), (148, 8))


def tar_header_numbers(const uint8_t[::1] block not None):
    """The numbers of a 512-byte tar header block in one call: size, mode,
    uid, gid, mtime, devmajor, devminor and the stored checksum (each None
    when the field is not plain octal: base-256 or malformed, left to the
    caller), then the block's unsigned and signed checksums."""
    cdef const uint8_t *p
    cdef Py_ssize_t i
    cdef int64_t value
    cdef int64_t total = 0
    cdef int64_t high = 0
    cdef int64_t field_total = 0
    cdef int64_t field_high = 0
    if block.shape[0] != 512:
        raise ValueError(f"a tar header block has 512 bytes, not {block.shape[0]}")
    p = &block[0]
    for i in range(512):
        total += p[i]
        high += p[i] >= 0x80
    for i in range(148, 156):
        field_total += p[i]
        field_high += p[i] >= 0x80
    unsigned = total - field_total + 8 * 32
    result = []
    for start, length in TAR_FIELDS:
        if octal_field(p + <Py_ssize_t>start, length, &value) == 0:
            result.append(value)
        else:
            result.append(None)
    result.append(unsigned)
    result.append(unsigned - 256 * high + 256 * field_high)
    return tuple(result)


def gzip_trailer(uint32_t crc, uint64_t size):
    """Return the 8-byte gzip member trailer for data of ``size`` bytes."""
    cdef uint8_t trailer[8]
    write_le32(trailer, crc)
    write_le32(trailer + 4, <uint32_t>size)
    return PyBytes_FromStringAndSize(<char *>trailer, 8)


def uninitialised_bytearray(Py_ssize_t size):
    """A bytearray of ``size`` bytes left as the allocator gives them: its
    pages cost memory only once written (``bytearray(size)`` zeroes them)."""
    if size < 0:
        raise ValueError("size must not be negative")
    return PyByteArray_FromStringAndSize(NULL, size)


cdef class MemberCompressor:
    """Compress buffers into gzip members or raw deflate segments.

    One raw deflate state is allocated here and reset, never re-created,
    between members: a layer holds thousands of tiny files.

    :param level: compression level, 0-9
    """

    cdef zng_stream strm
    cdef readonly int level
    cdef bint ready
    cdef bint busy

    def __cinit__(self, *args, **kwargs):
        memset(&self.strm, 0, sizeof(zng_stream))

    def __init__(self, int level=9):
        check_level(level)
        enter(&self.busy)
        try:
            start_deflate(&self.strm, &self.ready, level)
            self.level = level
        finally:
            self.busy = False

    def __dealloc__(self):
        if self.ready:
            zng_deflateEnd(&self.strm)

    def compress(self, const uint8_t[::1] data not None):
        """Return one complete gzip member holding ``data``.

        Releases the GIL.
        """
        cdef size_t size = data.shape[0]
        cdef const uint8_t *src = &data[0] if size else NULL
        cdef OutBuf out
        cdef int status
        memset(&out, 0, sizeof(OutBuf))
        enter(&self.busy)
        try:
            with nogil:
                status = compress_member(&self.strm, self.level, src, size, &out)
            if status:
                free(out.data)
                raise make_error(status, "compress", 0, self.strm.msg)
            return outbuf_to_bytes(&out)
        finally:
            self.busy = False

    def compress_segment(self, const uint8_t[::1] data not None, dictionary=None,
                         bint last=False):
        """Return ``(segment, crc)``: ``data`` as raw deflate, and its CRC-32.

        The segment starts from a fresh state (primed with the last 32 KiB of
        ``dictionary`` when given) and ends on a byte boundary with a sync
        flush, so segments compressed independently, on any thread, can be
        concatenated into one member: a gzip header, the segments, then
        :data:`FINAL_EMPTY_BLOCK` (unless the last segment was made with
        ``last=True``) and a trailer whose CRC comes from :func:`crc32_combine`.
        A segment primed with a dictionary is only valid right after the
        bytes of that dictionary in the same member.

        Releases the GIL.
        """
        cdef size_t size = data.shape[0]
        cdef const uint8_t *src = &data[0] if size else NULL
        cdef const uint8_t[::1] primer
        cdef size_t primer_size = 0
        cdef const uint8_t *primer_ptr = NULL
        cdef OutBuf out
        cdef int status = 0
        cdef uint32_t crc
        if dictionary is not None:
            primer = dictionary
            primer_size = primer.shape[0]
            if primer_size:
                primer_ptr = &primer[0]
            if primer_size > 32768:
                primer_ptr += primer_size - 32768
                primer_size = 32768
        memset(&out, 0, sizeof(OutBuf))
        enter(&self.busy)
        try:
            with nogil:
                if primer_size:
                    status = renew_deflate(&self.strm, self.level)
                    if status == Z_OK:
                        status = zng_deflateSetDictionary(&self.strm, primer_ptr,
                                                          <uint32_t>primer_size)
                else:
                    zng_deflateReset(&self.strm)
                if status == Z_OK:
                    status = deflate_all(&self.strm, src, size,
                                         Z_FINISH if last else Z_SYNC_FLUSH, &out)
                crc = zng_crc32_z(0, src, size)
            if status:
                free(out.data)
                raise make_error(status, "compress segment", 0, self.strm.msg)
            return outbuf_to_bytes(&out), crc
        finally:
            self.busy = False

    def compress_layer(self, const uint8_t[::1] data not None, Py_ssize_t begin,
                       const uint64_t[::1] ends not None,
                       const uint8_t[::1] kinds not None,
                       uint64_t min_chunk_size, bint open_at_end,
                       const uint64_t[::1] hash_spans=None, into=None,
                       bint framed=False):
        """Compress a batch of a layer's stream into gzip member bodies, choosing
        where members start as Go's writer does.  Releases the GIL.

        Segment ``i`` is ``data[ends[i-1]:ends[i]]``, the first starting at
        ``begin``.  ``kinds[i]`` says what starts it: :data:`KIND_START`
        (the stream's first bytes), :data:`KIND_CHUNK`, :data:`KIND_LANDMARK`
        (a chunk that always opens a member) or :data:`KIND_CONTINUATION`
        (more of the same member).  A chunk opens
        a new member when the open one already holds ``min_chunk_size``
        compressed bytes, measured after a sync flush as Go does; with 0 every
        chunk opens one.  Each member is one deflate stream.  A batch that
        starts with a continuation carries on a member from the previous
        batch, primed with the 32 KiB before ``begin``; with ``open_at_end``
        the last member is left open (sync flush) for the next batch.

        :returns: ``(compressed, pieces, positions, digests)``.  ``pieces``
            holds, per piece of a member, four native uint64 values: the end
            of its bytes in ``compressed``, its uncompressed size, its CRC-32
            and flags (1: it starts a member, 2: it ends one).  ``positions``
            holds two uint64 values per segment: the piece it lies in and its
            uncompressed offset inside that piece.  ``digests`` has 32 bytes
            per ``(start, end)`` pair of ``hash_spans``.

        ``into``, a writable buffer, receives the compressed bytes when they
        fit (``compressed`` is then a memoryview of it), else they come back
        as new bytes.  With ``framed`` a piece that starts a member begins
        with the gzip header and one that ends a member ends with 8 zero
        bytes, room for the trailer the caller fills in (the member's CRC may
        take pieces of other batches): the bytes are then the blob's own.
        """
        cdef size_t count = ends.shape[0]
        cdef size_t total = data.shape[0]
        cdef const uint8_t *base = &data[0] if total else NULL
        cdef size_t spans = 0
        cdef const uint64_t *span = NULL
        cdef uint64_t *pieces = NULL
        cdef uint64_t *positions = NULL
        cdef uint8_t *digests = NULL
        cdef esgz_sha256 hasher
        cdef OutBuf outbuf
        cdef OutBuf *out = &outbuf
        cdef uint8_t[::1] target
        cdef size_t i, start, end, dict_start
        cdef size_t piece_count = 0
        cdef size_t piece_out_start = 0
        cdef uint64_t piece_usize = 0
        cdef uint32_t piece_crc = 0
        cdef uint64_t piece_flags = 0
        cdef bint piece_open = False
        cdef bint opens
        cdef int kind
        cdef int status = 0
        if <size_t>kinds.shape[0] != count:
            raise ValueError("kinds must have one entry per segment")
        if begin < 0 or <size_t>begin > total:
            raise ValueError(f"begin {begin} is outside the data")
        start = begin
        for i in range(count):
            if ends[i] < start or ends[i] > total:
                raise ValueError(
                    f"segment {i} ends at {ends[i]}, outside {start}..{total}")
            if kinds[i] > SEGMENT_CONTINUATION:
                raise ValueError(f"segment {i} has unknown kind {kinds[i]}")
            start = ends[i]
        if count and kinds[0] == SEGMENT_CONTINUATION and begin == 0:
            raise ValueError("a continuation needs the bytes before it")
        if hash_spans is not None and hash_spans.shape[0]:
            if hash_spans.shape[0] % 2:
                raise ValueError("hash_spans must hold (start, end) pairs")
            spans = hash_spans.shape[0] // 2
            span = &hash_spans[0]
            for i in range(spans):
                if span[2 * i] > span[2 * i + 1] or span[2 * i + 1] > total:
                    raise ValueError(f"hash span {i} is outside the data")
        # At most one piece per segment.
        pieces = <uint64_t *>malloc((count + (count == 0)) * 4 * sizeof(uint64_t))
        positions = <uint64_t *>malloc((count + (count == 0)) * 2 * sizeof(uint64_t))
        digests = <uint8_t *>malloc((spans + (spans == 0)) * 32)
        if pieces == NULL or positions == NULL or digests == NULL:
            free(pieces)
            free(positions)
            free(digests)
            raise MemoryError()
        memset(out, 0, sizeof(OutBuf))
        if into is not None:
            target = into
            if target.shape[0]:
                out.data = &target[0]
                out.capacity = target.shape[0]
                out.borrowed = True
        enter(&self.busy)
        try:
            with nogil:
                if not out.borrowed:
                    status = outbuf_reserve(
                        out,
                        zng_deflateBound(&self.strm, total - begin) + 32 * count + 64)
                start = begin
                for i in range(count):
                    if status:
                        break
                    end = ends[i]
                    kind = kinds[i]
                    if (not piece_open or kind == SEGMENT_START
                            or kind == SEGMENT_LANDMARK
                            or (kind == SEGMENT_CHUNK and min_chunk_size == 0)):
                        opens = True
                    elif kind == SEGMENT_CHUNK:
                        # Go's rule: flush, then compare the member's size.
                        status = deflate_all(&self.strm, NULL, 0, Z_SYNC_FLUSH, out)
                        opens = 10 + out.size - piece_out_start >= min_chunk_size
                    else:
                        opens = False
                    if status:
                        break
                    if opens or not piece_open:
                        if piece_open:
                            status = deflate_all(&self.strm, NULL, 0, Z_FINISH, out)
                            if status == 0 and framed:
                                status = outbuf_zeros(out, 8)
                            if status:
                                break
                            pieces[4 * piece_count] = out.size
                            pieces[4 * piece_count + 1] = piece_usize
                            pieces[4 * piece_count + 2] = piece_crc
                            pieces[4 * piece_count + 3] = piece_flags | 2
                            piece_count += 1
                        if min_chunk_size or kind == SEGMENT_CONTINUATION:
                            status = renew_deflate(&self.strm, self.level)
                            if status:
                                break
                        else:
                            zng_deflateReset(&self.strm)
                        if framed and kind != SEGMENT_CONTINUATION:
                            status = outbuf_reserve(out, 10)
                            if status:
                                break
                            write_gzip_header(out.data + out.size, self.level)
                            out.size += 10
                        piece_open = True
                        piece_out_start = out.size
                        piece_usize = 0
                        piece_crc = 0
                        piece_flags = 1
                        if kind == SEGMENT_CONTINUATION:
                            # Carries on a member begun in the previous batch.
                            piece_flags = 0
                            dict_start = start - 32768 if start > 32768 else 0
                            status = zng_deflateSetDictionary(
                                &self.strm, base + dict_start,
                                <uint32_t>(start - dict_start))
                    if status:
                        break
                    positions[2 * i] = piece_count
                    positions[2 * i + 1] = piece_usize
                    status = deflate_all(&self.strm, base + start, end - start,
                                         Z_NO_FLUSH, out)
                    if end > start:
                        piece_crc = zng_crc32_z(piece_crc, base + start, end - start)
                    piece_usize += end - start
                    start = end
                if status == 0 and piece_open:
                    status = deflate_all(
                        &self.strm, NULL, 0,
                        Z_SYNC_FLUSH if open_at_end else Z_FINISH, out)
                    if status == 0 and framed and not open_at_end:
                        status = outbuf_zeros(out, 8)
                    pieces[4 * piece_count] = out.size
                    pieces[4 * piece_count + 1] = piece_usize
                    pieces[4 * piece_count + 2] = piece_crc
                    pieces[4 * piece_count + 3] = (
                        piece_flags | (0 if open_at_end else 2))
                    piece_count += 1
                if status == 0:
                    for i in range(spans):
                        esgz_sha256_init(&hasher)
                        esgz_sha256_update(&hasher, base + span[2 * i],
                                           span[2 * i + 1] - span[2 * i])
                        esgz_sha256_digest(&hasher, digests + 32 * i)
            if status:
                raise make_error(status, "compress layer batch", 0, self.strm.msg)
            if out.borrowed:
                compressed = memoryview(into)[:out.size]
            else:
                compressed = PyBytes_FromStringAndSize(<char *>out.data, out.size)
            return (
                compressed,
                PyBytes_FromStringAndSize(<char *>pieces,
                                          piece_count * 4 * sizeof(uint64_t)),
                PyBytes_FromStringAndSize(<char *>positions,
                                          count * 2 * sizeof(uint64_t)),
                PyBytes_FromStringAndSize(<char *>digests, spans * 32),
            )
        finally:
            self.busy = False
            if not out.borrowed:
                free(out.data)
            free(pieces)
            free(positions)
            free(digests)


cdef class MemberWriter:
    """Write one gzip member in pieces: :meth:`write` many times, then
    :meth:`finish`.  After :meth:`finish` the writer starts a new member.

    :param level: compression level, 0-9
    """

    cdef zng_stream strm
    cdef readonly int level
    cdef bint ready
    cdef bint busy
    cdef bint started
    cdef uint32_t crc
    cdef uint64_t consumed
    cdef uint64_t produced

    def __cinit__(self, *args, **kwargs):
        memset(&self.strm, 0, sizeof(zng_stream))

    def __init__(self, int level=9):
        check_level(level)
        enter(&self.busy)
        try:
            start_deflate(&self.strm, &self.ready, level)
            self.level = level
        finally:
            self.busy = False

    def __dealloc__(self):
        if self.ready:
            zng_deflateEnd(&self.strm)

    @property
    def uncompressed_size(self):
        """Bytes written into the current member so far."""
        return self.consumed

    @property
    def compressed_size(self):
        """Bytes of the current member returned so far, header included."""
        return self.produced

    cdef bytes _run(self, const uint8_t *src, size_t size, int flush):
        cdef OutBuf out
        cdef int status = 0
        memset(&out, 0, sizeof(OutBuf))
        enter(&self.busy)
        try:
            with nogil:
                if not self.started:
                    status = outbuf_reserve(&out, 10)
                    if not status:
                        write_gzip_header(out.data, self.level)
                        out.size = 10
                if not status:
                    status = deflate_all(&self.strm, src, size, flush, &out)
                if not status and size:
                    self.crc = zng_crc32_z(self.crc, src, size)
                if not status and flush == Z_FINISH:
                    status = outbuf_reserve(&out, 8)
                    if not status:
                        write_le32(out.data + out.size, self.crc)
                        write_le32(out.data + out.size + 4,
                                   <uint32_t>(self.consumed + size))
                        out.size += 8
            if status:
                free(out.data)
                raise make_error(status, "member writer", self.produced,
                                 self.strm.msg)
            self.started = True
            self.consumed += size
            self.produced += out.size
            return outbuf_to_bytes(&out)
        finally:
            self.busy = False

    def write(self, const uint8_t[::1] data not None):
        """Compress ``data`` into the member; return the bytes ready so far.

        Releases the GIL.
        """
        cdef size_t size = data.shape[0]
        return self._run(&data[0] if size else NULL, size, Z_NO_FLUSH)

    def flush(self):
        """Sync-flush: return pending bytes, ending on a byte boundary."""
        return self._run(NULL, 0, Z_SYNC_FLUSH)

    def finish(self):
        """End the member: return its last bytes and trailer, then reset."""
        tail = self._run(NULL, 0, Z_FINISH)
        # Fresh, not reset: a member written with flush() in between must not
        # shape the next one (see renew_deflate).
        enter(&self.busy)
        try:
            status = renew_deflate(&self.strm, self.level)
            if status != Z_OK:
                self.ready = False
                raise make_error(status, "deflate init", 0, self.strm.msg)
        finally:
            self.busy = False
        self.started = False
        self.crc = 0
        self.consumed = 0
        self.produced = 0
        return tail


cdef int inflate_step(zng_stream *strm, const uint8_t *src, size_t src_size,
                      size_t *consumed, uint8_t *dst, size_t dst_size,
                      size_t *produced, bint *ended) noexcept nogil:
    """Inflate from ``src[consumed:]`` into ``dst[produced:]``.

    Returns when ``dst`` is full, the input is used up or the member ends
    (``ended`` set); a status other than 0 is an error.
    """
    cdef size_t before_in, before_out
    cdef int ret
    ended[0] = False
    while produced[0] < dst_size:
        strm.next_in = src + consumed[0]
        strm.avail_in = <uint32_t>clamp(src_size - consumed[0])
        strm.next_out = dst + produced[0]
        strm.avail_out = <uint32_t>clamp(dst_size - produced[0])
        before_in = strm.avail_in
        before_out = strm.avail_out
        ret = zng_inflate(strm, Z_NO_FLUSH)
        consumed[0] += before_in - strm.avail_in
        produced[0] += before_out - strm.avail_out
        if ret == Z_STREAM_END:
            ended[0] = True
            return 0
        if ret == Z_BUF_ERROR:
            return 0
        if ret != Z_OK:
            return ret
        if strm.avail_in == 0 and strm.avail_out != 0 and consumed[0] == src_size:
            return 0
    return 0


cdef int inflate_range(zng_stream *strm, const uint8_t *src, size_t src_size,
                       size_t *consumed, size_t skip, uint8_t *dst,
                       size_t want, size_t *produced, bint *ended) noexcept nogil:
    """Inflate one member from ``src``: discard ``skip`` bytes, then fill
    ``dst`` with up to ``want`` bytes.  Stops early only at the member's end
    or when the input runs out."""
    cdef uint8_t *scratch
    cdef size_t skipped = 0, got
    cdef int status
    ended[0] = False
    produced[0] = 0
    if skip:
        scratch = <uint8_t *>malloc(SKIP_BUFFER)
        if scratch == NULL:
            return ERR_NOMEM
        while skipped < skip:
            got = 0
            status = inflate_step(strm, src, src_size, consumed, scratch,
                                  min(SKIP_BUFFER, skip - skipped), &got, ended)
            skipped += got
            if status or ended[0] or (got == 0):
                break
        free(scratch)
        if status:
            return status
        if skipped < skip:
            return ERR_SHORT if ended[0] else ERR_TRUNCATED
    if want:
        return inflate_step(strm, src, src_size, consumed, dst, want, produced, ended)
    return 0


cdef int check_gzip_magic(const uint8_t *src, size_t size) noexcept nogil:
    if size < 3:
        return ERR_TRUNCATED if size == 0 or src[0] == 0x1F else ERR_NOT_GZIP
    if src[0] != 0x1F or src[1] != 0x8B or src[2] != 8:
        return ERR_NOT_GZIP
    return 0


def inflate_member(const uint8_t[::1] data not None, Py_ssize_t offset=0,
                   Py_ssize_t skip=0,
                   Py_ssize_t size=-1, Py_ssize_t max_output=DEFAULT_MAX_OUTPUT,
                   uint64_t base=0):
    """Inflate the gzip member that starts at ``data[offset]``.

    The first ``skip`` uncompressed bytes (a chunk's ``innerOffset``) are
    discarded; the next ``size`` bytes are returned.  With ``size=-1`` the
    rest of the member is returned and its CRC-32 and length are checked.
    ``data`` must hold the member up to the last byte needed.

    :param max_output: the most bytes this call may return; a member that
        inflates to more raises instead of exhausting memory
    :raises NativeError: corrupt or truncated data, a member shorter than
        ``skip + size``, or output beyond ``max_output``; the error's
        ``offset`` is the position reached in ``data``, plus ``base``
        (where ``data`` starts in a blob, so messages name blob offsets)

    Releases the GIL.
    """
    cdef size_t total = data.shape[0]
    cdef const uint8_t *src
    cdef size_t consumed = 0, produced = 0
    cdef zng_stream strm
    cdef bint ended = False
    cdef int status = 0
    cdef OutBuf out
    cdef bytes result
    cdef uint8_t *dst
    cdef size_t limit
    if offset < 0 or <size_t>offset > total:
        raise ValueError(f"offset {offset} is outside the {total}-byte buffer")
    if skip < 0:
        raise ValueError("skip must not be negative")
    if size < -1:
        raise ValueError("size must be -1 (the rest of the member) or more")
    if max_output < 0:
        raise ValueError("max_output must not be negative")
    if size > max_output:
        raise NativeError(
            f"inflate: {size} bytes requested, more than the cap of {max_output}",
            0, offset)
    if size == 0:
        return b""
    src = &data[0] + offset
    total -= offset
    status = check_gzip_magic(src, total)
    if status:
        raise make_error(status, "inflate", offset, NULL)

    memset(&strm, 0, sizeof(zng_stream))
    status = zng_inflateInit2(&strm, GZIP_WINDOW)
    if status != Z_OK:
        raise make_error(status, "inflate init", offset, strm.msg)
    try:
        if 0 < size <= DIRECT_INFLATE_MAX:
            # The common case, a chunk: straight into the result.
            result = PyBytes_FromStringAndSize(NULL, size)
            dst = <uint8_t *>PyBytes_AS_STRING(result)
            with nogil:
                status = inflate_range(&strm, src, total, &consumed, skip, dst,
                                       size, &produced, &ended)
            if status == 0 and produced < <size_t>size:
                status = ERR_SHORT if ended or consumed < total else ERR_TRUNCATED
            if status == ERR_SHORT:
                raise NativeError(
                    f"inflate: gzip member at offset {base + offset} ends before "
                    f"uncompressed byte {skip + size} (skip {skip}, size {size})",
                    0, base + offset + consumed)
            if status:
                raise make_error(status, "inflate", base + offset + consumed, strm.msg)
            return result

        # The rest of the member (capped), or a large ``size``: the buffer
        # grows with what the member really holds, never with what the
        # caller (a TOC, say) claims.
        limit = <size_t>size if size > 0 else <size_t>max_output + 1
        memset(&out, 0, sizeof(OutBuf))
        try:
            with nogil:
                status = inflate_range(&strm, src, total, &consumed, skip, NULL, 0,
                                       &produced, &ended)
                while status == 0 and not ended and out.size < limit:
                    status = outbuf_reserve(
                        &out, min(<size_t>1 << 20, limit - out.size))
                    if status:
                        break
                    produced = out.size
                    status = inflate_step(&strm, src, total, &consumed, out.data,
                                          min(out.capacity, limit),
                                          &produced, &ended)
                    if status == 0 and produced == out.size and not ended:
                        status = ERR_TRUNCATED
                    out.size = produced
            if status == 0 and size > 0 and out.size < limit:
                status = ERR_SHORT if ended or consumed < total else ERR_TRUNCATED
                if status == ERR_SHORT:
                    raise NativeError(
                        f"inflate: gzip member at offset {base + offset} ends before "
                        f"uncompressed byte {skip + size} (skip {skip}, size {size})",
                        0, base + offset + consumed)
            if status == 0 and size < 0 and out.size > <size_t>max_output:
                status = ERR_OUTPUT_CAP
            if status == ERR_SHORT:
                raise NativeError(
                    f"inflate: gzip member at offset {base + offset} ends before "
                    f"uncompressed byte {skip}", 0, base + offset + consumed)
            if status == ERR_OUTPUT_CAP:
                raise NativeError(
                    f"inflate: gzip member at offset {base + offset} inflates to "
                    f"more than the cap of {max_output} bytes",
                    0, base + offset + consumed)
            if status:
                raise make_error(status, "inflate", base + offset + consumed, strm.msg)
            return outbuf_to_bytes(&out)
        finally:
            free(out.data)
    finally:
        zng_inflateEnd(&strm)


cdef class GzipReader:
    """Read the uncompressed bytes of a multi-member gzip file object.

    The source is read in blocks of ``block_size`` bytes, so memory stays
    bounded whatever the stream's size.  One :meth:`readinto` never crosses
    a member boundary, which lets callers see where members start
    (:attr:`member_offset`).  Trailing NUL bytes after the last member are
    ignored, as gzip(1) does (unless ``allow_padding`` is false, as Go's
    gzip reader has it); anything else there is an error.

    :param source: a binary file object (``readinto`` or ``read``)
    :param offset: compressed offset of the source's first byte, added to
        every offset reported
    """

    cdef object source
    cdef bytearray inbuf
    cdef object inview
    cdef size_t in_pos
    cdef size_t in_len
    cdef zng_stream strm
    cdef bint ready
    cdef bint busy
    cdef bint in_member
    cdef bint source_done
    cdef bint allow_padding
    cdef bint in_padding
    cdef uint64_t base
    cdef uint64_t consumed_before
    cdef readonly uint64_t member_offset
    cdef readonly uint64_t member_uncompressed_offset
    cdef readonly uint64_t members
    cdef readonly uint64_t uncompressed_offset

    def __cinit__(self, *args, **kwargs):
        memset(&self.strm, 0, sizeof(zng_stream))

    def __init__(self, source, *, Py_ssize_t block_size=1 << 18, uint64_t offset=0,
                 bint allow_padding=True):
        if self.ready:
            raise RuntimeError("GzipReader is already initialised")
        if block_size < 64:
            raise ValueError("block_size must be at least 64")
        self.source = source
        self.inbuf = bytearray(block_size)
        self.inview = memoryview(self.inbuf)
        self.base = offset
        self.allow_padding = allow_padding
        cdef int ret = zng_inflateInit2(&self.strm, GZIP_WINDOW)
        if ret != Z_OK:
            raise make_error(ret, "inflate init", 0, self.strm.msg)
        self.ready = True

    def __dealloc__(self):
        if self.ready:
            zng_inflateEnd(&self.strm)

    @property
    def compressed_offset(self):
        """Compressed offset of the next byte the reader will inflate."""
        return self.base + self.consumed_before + self.in_pos

    @property
    def at_member_end(self):
        """True when the bytes read so far end exactly at a member's end."""
        return not self.in_member

    cdef bint refill(self) except -1:
        """Move unread input to the front and read more; False at EOF."""
        cdef size_t left = self.in_len - self.in_pos
        cdef char *buf = PyByteArray_AS_STRING(self.inbuf)
        cdef Py_ssize_t got
        if self.source_done:
            return False
        if left and self.in_pos:
            memcpy(buf, buf + self.in_pos, left)
        self.consumed_before += self.in_pos
        self.in_pos = 0
        self.in_len = left
        cdef Py_ssize_t room = len(self.inbuf) - left
        reader = getattr(self.source, "readinto", None)
        if reader is not None:
            n = reader(self.inview[left:])
            if n is not None and not (0 <= n <= room):
                raise ValueError(
                    f"the source's readinto returned {n!r} for a {room}-byte buffer")
            got = 0 if n is None else n
        else:
            block = self.source.read(room)
            got = len(block)
            if got > room:
                raise ValueError(
                    f"the source's read returned {got} bytes, {room} were asked for")
            self.inview[left:left + got] = block
        if got <= 0:
            self.source_done = True
            return False
        self.in_len += got
        return True

    cdef int start_member(self) except -1:
        """Position at the next member; return 0 at a clean end of input."""
        cdef const uint8_t *buf
        cdef size_t i
        while True:
            if self.in_pos == self.in_len and not self.refill():
                return 0
            buf = <const uint8_t *>PyByteArray_AS_STRING(self.inbuf)
            if self.in_padding or (buf[self.in_pos] == 0 and self.allow_padding):
                # NUL padding after the last member is tolerated (gzip(1)
                # takes it), nothing else: once it begins, only NULs may
                # follow, to the end, whatever the read blocks.
                self.in_padding = True
                i = self.in_pos
                while i < self.in_len and buf[i] == 0:
                    i += 1
                if i < self.in_len:
                    self.in_pos = i
                    raise make_error(ERR_NOT_GZIP, "gzip stream",
                                     self.compressed_offset, NULL)
                self.in_pos = i
                continue
            if self.in_len - self.in_pos < 3 and self.refill():
                continue
            status = check_gzip_magic(buf + self.in_pos, self.in_len - self.in_pos)
            if status:
                raise make_error(status, "gzip stream", self.compressed_offset, NULL)
            zng_inflateReset2(&self.strm, GZIP_WINDOW)
            self.in_member = True
            self.member_offset = self.compressed_offset
            self.member_uncompressed_offset = self.uncompressed_offset
            return 1

    def readinto(self, buffer):
        """Fill ``buffer`` with uncompressed bytes; return the count, 0 at EOF.

        Releases the GIL while inflating.
        """
        if buffer is None:
            raise TypeError("readinto needs a writable buffer, not None")
        cdef uint8_t[::1] target = buffer
        cdef size_t want = target.shape[0]
        cdef size_t produced = 0
        cdef size_t consumed
        cdef bint ended = False
        cdef int status = 0
        cdef const uint8_t *src
        if not self.ready:
            raise RuntimeError("GzipReader.__init__ was not called")
        if want == 0:
            return 0
        enter(&self.busy)
        try:
            while True:
                if not self.in_member and not self.start_member():
                    return 0
                if self.in_pos == self.in_len and not self.refill():
                    raise make_error(ERR_TRUNCATED, "gzip stream",
                                     self.compressed_offset, NULL)
                src = <const uint8_t *>PyByteArray_AS_STRING(self.inbuf)
                consumed = self.in_pos
                with nogil:
                    status = inflate_step(&self.strm, src, self.in_len, &consumed,
                                          &target[0], want, &produced, &ended)
                self.in_pos = consumed
                if status:
                    raise make_error(status, "gzip stream", self.compressed_offset,
                                     self.strm.msg)
                self.uncompressed_offset += produced
                if ended:
                    self.in_member = False
                    self.members += 1
                if produced:
                    return produced
        finally:
            self.busy = False

    def read(self, Py_ssize_t size=-1):
        """Return up to ``size`` uncompressed bytes (all with -1); b"" at EOF.

        A positive ``size`` may return fewer bytes at a member boundary.
        """
        if size < 0:
            parts = []
            while True:
                part = self.read(1 << 20)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        chunk = bytearray(size)
        n = self.readinto(chunk)
        del chunk[n:]
        return bytes(chunk)


def inflate_stream(const uint8_t[::1] data not None,
                   Py_ssize_t max_output=DEFAULT_MAX_OUTPUT):
    """Inflate a whole multi-member gzip stream held in ``data``.

    Every member's CRC-32 and length are checked; NUL padding after the last
    member is ignored.

    :raises NativeError: corrupt or truncated data, or more than
        ``max_output`` bytes of output

    Releases the GIL.
    """
    import io
    if max_output < 0:
        raise ValueError("max_output must not be negative")
    block = max(64, min(data.shape[0], 1 << 20))
    reader = GzipReader(io.BytesIO(data), block_size=block)
    parts = []
    total = 0
    while True:
        part = reader.read(min(1 << 20, max_output - total + 1))
        if not part:
            return b"".join(parts)
        total += len(part)
        if total > max_output:
            raise NativeError(
                f"inflate: gzip stream inflates to more than the cap of "
                f"{max_output} bytes", 0, reader.compressed_offset)
        parts.append(part)


cdef class Sha256:
    """Incremental SHA-256, the same interface as ``hashlib.sha256``.

    Uses the CPU's SHA instructions when it has them.  :meth:`update`
    releases the GIL for buffers of 4 KiB and more.
    """

    cdef esgz_sha256 ctx
    cdef bint busy

    name = "sha256"
    digest_size = 32
    block_size = 64

    def __cinit__(self, data=None):
        esgz_sha256_init(&self.ctx)

    def __init__(self, data=None):
        if data is not None:
            self.update(data)

    def update(self, const uint8_t[::1] data not None):
        """Hash ``data`` after everything hashed so far."""
        cdef size_t size = data.shape[0]
        if size == 0:
            return
        enter(&self.busy)
        try:
            if size >= NOGIL_HASH_MIN:
                with nogil:
                    esgz_sha256_update(&self.ctx, &data[0], size)
            else:
                esgz_sha256_update(&self.ctx, &data[0], size)
        finally:
            self.busy = False

    def update_with(self, Sha256 other not None, const uint8_t[::1] data not None,
                    Sha256 third=None):
        """Hash ``data`` into this state, ``other`` (and ``third``) in one pass.

        The CPU's SHA instructions run the round chains side by side, so this
        costs much less than separate :meth:`update` calls.
        """
        cdef size_t size = data.shape[0]
        cdef esgz_sha256 *states[3]
        cdef int count = 2 if third is None else 3
        if size == 0:
            return
        if other is self or third is self or (third is not None and third is other):
            raise ValueError("update_with needs different states")
        states[0] = &self.ctx
        states[1] = &other.ctx
        if third is not None:
            states[2] = &third.ctx
        enter(&self.busy)
        try:
            enter(&other.busy)
            try:
                if third is not None:
                    enter(&third.busy)
                try:
                    if size >= NOGIL_HASH_MIN:
                        with nogil:
                            esgz_sha256_update_many(states, count, &data[0], size)
                    else:
                        esgz_sha256_update_many(states, count, &data[0], size)
                finally:
                    if third is not None:
                        third.busy = False
            finally:
                other.busy = False
        finally:
            self.busy = False

    def digest(self):
        """Return the 32-byte digest of everything hashed so far."""
        cdef uint8_t out[32]
        enter(&self.busy)
        esgz_sha256_digest(&self.ctx, out)
        self.busy = False
        return PyBytes_FromStringAndSize(<char *>out, 32)

    def hexdigest(self):
        """Return the digest as 64 lowercase hex digits."""
        return self.digest().hex()

    def copy(self):
        """Return an independent copy of this hash state."""
        cdef Sha256 other = Sha256.__new__(Sha256)
        enter(&self.busy)
        other.ctx = self.ctx
        self.busy = False
        return other

    @property
    def length(self):
        """Bytes hashed so far."""
        return self.ctx.length
