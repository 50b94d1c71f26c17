/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The migration stream: versioned records between a source and a destination
 * vhostmigd (and, for a VMM that carries device state itself, into and out of
 * an fd the VMM gives).  Every record is [u16 type][u16 flags][u32 length]
 * then the payload, little-endian.  One table (stream.c) holds the facts of
 * every record type; the receiver checks a header against it before it reads
 * a single payload byte, so memory stays bounded whatever the peer sends.
 * The records are documented in docs/migration.md.
 *
 * Errors are negative errnos with a reason naming the record and the fault:
 * in vhm_stream_error() for the stream's calls, in the caller's buffer for
 * the decoders.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct vhm_vm;

struct vhm_rec_hdr {
        uint16_t type;
        uint16_t flags;
        uint32_t length;
};
#define VHM_REC_HDR_SIZE 8u

/* A receiver skips an unknown type that has this flag; an unknown type without it fails. */
#define VHM_REC_F_OPTIONAL 0x1u

enum vhm_rec_type {
        VHM_REC_HELLO = 1,
        VHM_REC_AUTH = 2,
        VHM_REC_PAGES = 3,
        VHM_REC_DEVICE = 4,
        VHM_REC_BACKEND_STATE = 5,
        VHM_REC_END = 6,
        VHM_REC_COMMITTED = 7,
        VHM_REC_ABORTED = 8,
        VHM_REC_TYPE_MAX
};

#define VHM_REC_MAGIC               "VHMIGRAT" /* 8 bytes on the wire, no NUL */
#define VHM_REC_VERSION             3u         /* 3: the page hash on 32-bit multiplies */
#define VHM_REC_ROLE_SOURCE         0u
#define VHM_REC_PAGE_SIZE           4096u
#define VHM_REC_MAX_REGIONS         8u
#define VHM_REC_NAME_LEN            64u
#define VHM_REC_TOKEN_LEN           32u /* ASCII hex of 16 random bytes */
#define VHM_REC_MAX_PAGES_PER_BATCH 256u
#define VHM_REC_PAGE_ZERO           0x1u   /* page flag: all zero, no data follows */
#define VHM_REC_PAGE_FLAGS_MASK     0xfffu /* the low 12 bits of a page entry are flags */
#define VHM_REC_MAX_RINGS           16u
#define VHM_REC_MAX_QUEUE_PAIRS     (VHM_REC_MAX_RINGS / 2)
#define VHM_REC_MAX_RING_SIZE       32768u
#define VHM_REC_MAX_BLOB            (16u << 20) /* a device's whole BACKEND_STATE */
#define VHM_REC_MAX_BLOB_CHUNK      (1u << 20)  /* one BACKEND_STATE record's data */
#define VHM_REC_MAX_REASON          1024u

/* ---- the table of record facts ---- */

enum vhm_rec_sender {
        VHM_REC_FROM_SOURCE,
        VHM_REC_FROM_DESTINATION,
};

struct vhm_rec_info {
        uint16_t type;
        const char *name;
        uint32_t min_len, max_len;  /* payload bounds */
        bool mandatory;             /* every complete migration stream carries it */
        enum vhm_rec_sender sender; /* who sends it */
};

/* The facts of a known type, or NULL. */
const struct vhm_rec_info *vhm_rec_info(uint16_t type);
/* "HELLO", ..., or "unknown". */
const char *vhm_rec_name(uint16_t type);

/* ---- typed records ---- */

struct vhm_rec_region {
        uint64_t gpa, size;
};

struct vhm_rec_hello {
        uint32_t version;   /* VHM_REC_VERSION */
        uint32_t role;      /* VHM_REC_ROLE_SOURCE */
        uint32_t page_size; /* VHM_REC_PAGE_SIZE */
        char vm_name[VHM_REC_NAME_LEN];
        uint32_t nregions; /* 1..8, sorted by gpa, not overlapping */
        struct vhm_rec_region regions[VHM_REC_MAX_REGIONS];
};

struct vhm_rec_ring {
        uint32_t size; /* power of 2, <= 32768 */
        uint64_t desc, avail, used;
        uint32_t enabled;    /* 0 or 1 */
        uint32_t last_avail; /* GET_VRING_BASE's answer */
};

struct vhm_rec_device {
        uint32_t index;             /* the device's place in the VM */
        uint64_t features;          /* acked virtio features */
        uint64_t protocol_features; /* acked protocol features */
        uint32_t queue_pairs;       /* 1..8 */
        uint8_t mac[6];
        uint16_t mtu;    /* 0: none */
        uint32_t nrings; /* 2 x queue_pairs */
        struct vhm_rec_ring rings[VHM_REC_MAX_RINGS];
};

struct vhm_rec_end {
        uint64_t pages;      /* pages sent (zero pages included) */
        uint64_t zero_pages; /* of which were zero */
        uint64_t checksum;   /* vhm_memory_checksum() of the final image */
        /*
         * Microseconds from the source's pause to END going out: the
         * destination adds its own part (END to running) for the downtime.
         */
        uint64_t downtime_usec;
};

/* One page to send: data NULL (or all zero) travels as the ZERO flag. */
struct vhm_rec_page {
        uint64_t gpa;
        const void *data;
};

/* A received PAGES record, validated; it points into the stream's buffer. */
struct vhm_rec_pages {
        uint32_t count, zero;
        const uint8_t *entries; /* count x u64 */
        const uint8_t *data;    /* (count - zero) x 4096 */
};

/* HELLO for this VM: its name and its regions in gpa order. */
int vhm_rec_hello_from_vm(const struct vhm_vm *vm, struct vhm_rec_hello *out);
/* 0 when the HELLO's layout is the VM's; -EINVAL and the first difference in err otherwise. */
int vhm_rec_hello_matches_vm(const struct vhm_rec_hello *h, const struct vhm_vm *vm, char *err, size_t errlen);

/*
 * Decoders: check every field of a payload received with that type and fill
 * *out; -EBADMSG (or -EINVAL) with the record and field in err otherwise.
 */
int vhm_rec_decode_hello(const void *p, uint32_t len, struct vhm_rec_hello *out, char *err, size_t errlen);
/* token gets the 32 hex characters and a NUL; anything but [0-9a-f] is refused. */
int vhm_rec_decode_auth(const void *p, uint32_t len, char token[VHM_REC_TOKEN_LEN + 1], char *err, size_t errlen);
/* Every gpa is page aligned and inside `layout`'s regions; the length matches exactly. */
int vhm_rec_decode_pages(const void *p, uint32_t len, const struct vhm_rec_hello *layout, struct vhm_rec_pages *out,
                         char *err, size_t errlen);
/* Page i of a decoded batch: its gpa and its data (NULL for a zero page). */
void vhm_rec_pages_get(const struct vhm_rec_pages *pg, uint32_t i, uint64_t *gpa, const void **data);
/* Writes a decoded batch into guest memory through vhm_vm_write (zero pages as zeros). */
int vhm_rec_pages_write(const struct vhm_rec_pages *pg, struct vhm_vm *vm, char *err, size_t errlen);
int vhm_rec_decode_device(const void *p, uint32_t len, struct vhm_rec_device *out, char *err, size_t errlen);
/* The device index and this chunk (len 0: the device's blob is complete). */
int vhm_rec_decode_backend_state(const void *p, uint32_t len, uint32_t *index, const void **chunk, uint32_t *chunk_len,
                                 char *err, size_t errlen);
int vhm_rec_decode_end(const void *p, uint32_t len, struct vhm_rec_end *out, char *err, size_t errlen);
/* reason gets the text (printable characters only, others as '?') and a NUL. */
int vhm_rec_decode_aborted(const void *p, uint32_t len, char reason[VHM_REC_MAX_REASON + 1], char *err, size_t errlen);

/* Checks a record the encoders would send (the same rules as the decoders). */
int vhm_rec_check_hello(const struct vhm_rec_hello *h, char *err, size_t errlen);
int vhm_rec_check_device(const struct vhm_rec_device *d, char *err, size_t errlen);

/* Encoders into a buffer: the payload's length, or -ENOBUFS / -EINVAL. */
#define VHM_REC_HELLO_MAX_LEN  (88u + 16u * VHM_REC_MAX_REGIONS)
#define VHM_REC_DEVICE_MAX_LEN (36u + 36u * VHM_REC_MAX_RINGS)
#define VHM_REC_END_LEN        32u
int vhm_rec_encode_hello(const struct vhm_rec_hello *h, void *buf, size_t cap);
int vhm_rec_encode_device(const struct vhm_rec_device *d, void *buf, size_t cap);
int vhm_rec_encode_end(const struct vhm_rec_end *e, void *buf, size_t cap);

/*
 * A device's BACKEND_STATE blob as it arrives in chunks: one device at a
 * time, at most VHM_REC_MAX_BLOB bytes, complete at its empty chunk.
 */
struct vhm_rec_blob {
        uint32_t index;
        bool started, complete;
        uint8_t *data;
        size_t len, cap;
};
void vhm_rec_blob_init(struct vhm_rec_blob *b);
void vhm_rec_blob_free(struct vhm_rec_blob *b);
/* Appends a decoded chunk; -EBADMSG for another device's chunk mid-blob, -EFBIG beyond 16 MiB. */
int vhm_rec_blob_append(struct vhm_rec_blob *b, uint32_t index, const void *chunk, uint32_t len, char *err,
                        size_t errlen);

/* ---- the checksum of a memory image ---- */

/*
 * Page by page in gpa order: each 4096-byte page hashed over its
 * little-endian 8-byte words, each word keyed by its position, put through
 * two Feistel rounds of 32x32->64 squares and summed into eight lanes
 * (vhm_checksum_page; stream.c has the construction), the page hashes
 * folded in order by a 64-bit multiply-xor (vhm_checksum_fold).  vhm_memory_checksum reads
 * every region through vhm_vm_read so a truncated file is an error (-EIO,
 * reason in vhm_vm_error()) rather than a SIGBUS.
 */
#define VHM_CHECKSUM_INIT UINT64_C(0xcbf29ce484222325)
/* A page's hash; *zero (may be NULL) says whether it is all zero.  Any one word changed changes it. */
uint64_t vhm_checksum_page(const void *page, bool *zero);
/* The same value by a given implementation (AVX2 falls back to SSE2 on a CPU without it): tests, benchmarks. */
enum vhm_checksum_impl {
        VHM_CHECKSUM_SCALAR,
        VHM_CHECKSUM_SSE2,
        VHM_CHECKSUM_AVX2,
};
uint64_t vhm_checksum_page_impl(const void *page, bool *zero, enum vhm_checksum_impl impl);
uint64_t vhm_checksum_fold(uint64_t h, uint64_t page_hash);
/* Folds len bytes into h: whole pages, so split a buffer only at page boundaries (a shorter tail goes by words). */
uint64_t vhm_checksum_update(uint64_t h, const void *buf, size_t len);
int vhm_memory_checksum(struct vhm_vm *vm, uint64_t *out);
/*
 * The same value, the pages hashed by up to `threads` threads (at most 8),
 * each over a slice, folded in order on the caller's thread; 8 bytes a page
 * of memory for the hashes (without it, or with one thread, as above).
 */
#define VHM_CHECKSUM_MAX_THREADS 8u
int vhm_memory_checksum_threads(struct vhm_vm *vm, unsigned threads, uint64_t *out);
/*
 * The same pass in the background, the caller free meanwhile (the source
 * sends its last pages while the frozen memory is hashed).  A started job
 * must be finished: that waits for it, gives the checksum and frees it.
 */
struct vhm_checksum_job;
int vhm_memory_checksum_start(struct vhm_vm *vm, unsigned threads, struct vhm_checksum_job **out);
int vhm_memory_checksum_finish(struct vhm_checksum_job *job, uint64_t *out);
/*
 * The first `pages` pages in the same order hashed as vhm_memory_checksum_threads
 * hashes them (same threads, same reads), the hashes dropped: a sample of
 * that pass's speed, for an estimate of it over the whole memory.  *pages
 * becomes the count hashed (fewer when memory is smaller).
 */
int vhm_memory_hash_sample(struct vhm_vm *vm, unsigned threads, uint64_t *pages);

/* ---- the stream ---- */

struct vhm_stream;

/*
 * Takes the fd (a socket, pipe or file; made non-blocking) whatever happens.
 * timeout_ms bounds each send and receive call (0: unbounded).
 */
int vhm_stream_new(int fd, unsigned timeout_ms, struct vhm_stream **out);
void vhm_stream_free(struct vhm_stream *s);
int vhm_stream_fd(const struct vhm_stream *s);
const char *vhm_stream_error(const struct vhm_stream *s);
uint64_t vhm_stream_bytes_sent(const struct vhm_stream *s);
uint64_t vhm_stream_bytes_received(const struct vhm_stream *s);

/*
 * Secures a stream that crosses hosts, before its first record: on a TCP
 * socket, TLS 1.3 with the token (32 hex characters) as pre-shared key and
 * `id` (NULL: a random one) as the client's identity (migrate/tls.h); the
 * handshake is bounded like any call (timeout, deadline, cancel fd) and a
 * failure names its cause ("TLS: ...").  On a Unix socket, pipe or file it
 * does nothing: those never leave the host.  server: the accepting end.
 */
int vhm_stream_secure(struct vhm_stream *s, bool server, const char *token, const char *id);
/* True once vhm_stream_secure() ran TLS on the stream. */
bool vhm_stream_is_tls(const struct vhm_stream *s);

/* A wake fd (eventfd): while it is readable, every blocking call fails with -ECANCELED. */
void vhm_stream_set_cancel_fd(struct vhm_stream *s, int fd);
/* An absolute deadline (vhu_now_usec() clock) over every call as well; 0: none. */
void vhm_stream_set_deadline(struct vhm_stream *s, uint64_t deadline_usec);

/*
 * Which records the stream accepts, in which order:
 *
 * VHM_STREAM_MIGRATION (the default): a stream that has sent a source record
 * is the source's and accepts one COMMITTED or ABORTED, then nothing; one
 * that has not is the destination's and accepts HELLO, then AUTH, then PAGES,
 * DEVICE and BACKEND_STATE in any order, then END, then nothing.
 *
 * VHM_STREAM_DEVICE_STATE (the VMM-carried variant): DEVICE and BACKEND_STATE
 * in any order, then optionally END, then nothing.
 */
enum vhm_stream_mode {
        VHM_STREAM_MIGRATION,
        VHM_STREAM_DEVICE_STATE,
};
void vhm_stream_set_mode(struct vhm_stream *s, enum vhm_stream_mode mode);

/* Sends one record; its type must be known and len within the table's bounds. */
int vhm_stream_send(struct vhm_stream *s, uint16_t type, const void *payload, uint32_t len);
int vhm_stream_sendv(struct vhm_stream *s, uint16_t type, const struct iovec *iov, unsigned n);
/* The same with header flags (VHM_REC_F_OPTIONAL), for any type: what a newer peer would send. */
int vhm_stream_send_raw(struct vhm_stream *s, uint16_t type, uint16_t flags, const struct iovec *iov, unsigned n);

/*
 * Receives the next record: the header is checked against the table (type
 * known or optional, length in bounds, order) before the payload is read
 * into the stream's buffer.  Returns the type; *payload and *len stay valid
 * until the next call.  Optional unknown records are skipped.  -ECONNRESET
 * when the peer closed, -ETIMEDOUT, -ECANCELED, -EBADMSG (refused record).
 */
int vhm_stream_recv(struct vhm_stream *s, const void **payload, uint32_t *len);
/*
 * The same, but PAGES goes straight into `vm`: the count and page list are
 * read and checked against `layout` (every gpa inside, the length exact)
 * before any data, then each run of data pages is read in place (plain: the
 * kernel's copy; TLS: one guarded write) and zero pages are zeroed, in the
 * record's order.  *pg describes the batch (data NULL); *payload and *len
 * are its count and page list.  A page no longer backed: -EIO and the
 * guarded path's reason.  Other records as vhm_stream_recv (pg untouched).
 */
int vhm_stream_recv_vm(struct vhm_stream *s, struct vhm_vm *vm, const struct vhm_rec_hello *layout,
                       const void **payload, uint32_t *len, struct vhm_rec_pages *pg);

/*
 * Called by vhm_stream_recv_vm as PAGES data lands in guest memory, in the
 * record's order: each run of data pages in pieces of at most 256 KiB
 * (whole pages, read one piece at a time so that the hook finds them in
 * cache), each zero page once zeroed.  A gpa listed twice is handed over
 * twice, in order.  A negative errno fails the receive with it.  NULL: none.
 */
typedef int (*vhm_stream_landed_fn)(uint64_t gpa, size_t len, void *arg);
void vhm_stream_set_landed_hook(struct vhm_stream *s, vhm_stream_landed_fn fn, void *arg);

/* Typed senders; each checks its record first. */
int vhm_stream_send_hello(struct vhm_stream *s, const struct vhm_rec_hello *h);
int vhm_stream_send_auth(struct vhm_stream *s, const char *token);
/* 1..256 pages; a page whose data is NULL or all zero goes as a ZERO flag.  *zero (may be NULL) counts them. */
int vhm_stream_send_pages(struct vhm_stream *s, const struct vhm_rec_page *pages, unsigned count, unsigned *zero);
/* A page of guest memory to send: its gpa and whether the caller found it all zero (sent as the flag). */
struct vhm_rec_vm_page {
        uint64_t gpa;
        bool zero;
};
/*
 * 1..256 pages of `vm` without a copy in user space: on a plain stream the
 * kernel copies them from the VM's mapping (vhm_vm_kernel_iov); over TLS
 * they go through one guarded copy.  A page that is no longer backed fails
 * with -EIO and the guarded path's reason; the stream is then unusable.
 */
int vhm_stream_send_vm_pages(struct vhm_stream *s, struct vhm_vm *vm, const struct vhm_rec_vm_page *pages,
                             unsigned count);
int vhm_stream_send_device(struct vhm_stream *s, const struct vhm_rec_device *d);
/* The whole blob of one device in chunks of at most 1 MiB, then the empty record. */
int vhm_stream_send_backend_state(struct vhm_stream *s, uint32_t index, const void *blob, size_t len);
int vhm_stream_send_end(struct vhm_stream *s, const struct vhm_rec_end *e);
int vhm_stream_send_committed(struct vhm_stream *s);
/* The reason is cut at 1024 bytes. */
int vhm_stream_send_aborted(struct vhm_stream *s, const char *reason);

/* True when a 4096-byte page is all zero. */
bool vhm_page_is_zero(const void *page);
