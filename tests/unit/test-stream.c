/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The migration stream (migrate/stream.c) and its transports
 * (migrate/transport.c): every record encoded and decoded, every bound
 * refused with an error naming the record, the order a receiver accepts,
 * hostile peers (huge lengths, truncation, garbage, stalls, cancel), the
 * checksum, unix and tcp on loopback, tokens.  No fd is left open.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "migrate/stream.h"
#include "migrate/transport.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"
#include "tests/common/fd-count.h"

#define TIMEOUT_MS 2000u

#define S_CHECK(s, call)                                                                           \
        do {                                                                                       \
                int r_ = (call);                                                                   \
                if (r_ < 0)                                                                        \
                        fail_msg("%s failed: %s (%s)", #call, vhm_stream_error(s), strerror(-r_)); \
        } while (0)

/* The error text names the record (or what else) it is about. */
#define assert_error_names(text, word)                                                 \
        do {                                                                           \
                if (!strstr((text), (word)))                                           \
                        fail_msg("error \"%s\" does not name \"%s\"", (text), (word)); \
        } while (0)

/* Two connected streams: a source end and a destination end. */
struct pair {
        struct vhm_stream *src, *dst;
};

static void pair_open(struct pair *p, unsigned timeout_ms) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(vhm_stream_new(sv[0], timeout_ms, &p->src), 0);
        assert_int_equal(vhm_stream_new(sv[1], timeout_ms, &p->dst), 0);
}

static void pair_close(struct pair *p) {
        vhm_stream_free(p->src);
        vhm_stream_free(p->dst);
}

/* A stream to receive with, and the raw fd of its peer to write anything into. */
static struct vhm_stream *raw_peer(int *peer_fd, unsigned timeout_ms) {
        int sv[2];
        struct vhm_stream *s;
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(vhm_stream_new(sv[0], timeout_ms, &s), 0);
        *peer_fd = sv[1];
        return s;
}

static void put_hdr(uint8_t *b, uint16_t type, uint16_t flags, uint32_t len) {
        uint16_t t = htole16(type), f = htole16(flags);
        uint32_t l = htole32(len);
        memcpy(b, &t, 2);
        memcpy(b + 2, &f, 2);
        memcpy(b + 4, &l, 4);
}

static void write_hdr(int fd, uint16_t type, uint16_t flags, uint32_t len) {
        uint8_t b[8];
        put_hdr(b, type, flags, len);
        assert_int_equal(write(fd, b, 8), 8);
}

static struct vhm_rec_hello sample_hello(void) {
        struct vhm_rec_hello h = {
                .version = VHM_REC_VERSION, .role = VHM_REC_ROLE_SOURCE, .page_size = VHM_REC_PAGE_SIZE, .nregions = 2
        };
        strcpy(h.vm_name, "vm-1.test_x");
        h.regions[0] = (struct vhm_rec_region){ 0, 64 << 10 };
        h.regions[1] = (struct vhm_rec_region){ 1 << 20, 32 << 10 };
        return h;
}

static struct vhm_rec_device sample_device(void) {
        struct vhm_rec_device d = { .index = 1,
                                    .features = 0x1234567890ull,
                                    .protocol_features = 0x8a3,
                                    .queue_pairs = 2,
                                    .mac = { 0x52, 0x54, 0, 1, 2, 3 },
                                    .mtu = 1500,
                                    .nrings = 4 };
        for (unsigned i = 0; i < 4; i++)
                d.rings[i] = (struct vhm_rec_ring){
                        256, 0x1000 * (i + 1), 0x1000 * (i + 1) + 0x100 * 16, 0x1000 * (i + 1) + 0x800, 1, 0xfff0 + i
                };
        return d;
}

/* ---- the table ---- */

static void table_is_complete(void **state) {
        (void) state;
        for (uint16_t t = 1; t < VHM_REC_TYPE_MAX; t++) {
                const struct vhm_rec_info *info = vhm_rec_info(t);
                assert_non_null(info);
                assert_int_equal(info->type, t);
                assert_true(info->min_len <= info->max_len);
                assert_string_equal(vhm_rec_name(t), info->name);
        }
        assert_null(vhm_rec_info(0));
        assert_null(vhm_rec_info(VHM_REC_TYPE_MAX));
        assert_string_equal(vhm_rec_name(999), "unknown");
        assert_int_equal(vhm_rec_info(VHM_REC_COMMITTED)->sender, VHM_REC_FROM_DESTINATION);
        assert_int_equal(vhm_rec_info(VHM_REC_PAGES)->sender, VHM_REC_FROM_SOURCE);
        /* The largest record a peer can make us hold: one full PAGES batch. */
        assert_int_equal(vhm_rec_info(VHM_REC_PAGES)->max_len, 4 + 8 * 256 + 4096 * 256);
}

/* ---- every record, encoded, sent, received, decoded ---- */

static void every_record_round_trips(void **state) {
        (void) state;
        int before = count_open_fds();
        struct pair p;
        pair_open(&p, TIMEOUT_MS);

        struct vhm_rec_hello h = sample_hello(), h2;
        struct vhm_rec_device d = sample_device(), d2;
        struct vhm_rec_end e = { 3, 1, 0xfeedfacecafebeefull }, e2;
        static uint8_t page_a[4096], page_b[4096], zero[4096];
        memset(page_a, 0xa5, sizeof(page_a));
        memset(page_b, 0x5a, sizeof(page_b));
        struct vhm_rec_page pages[3] = { { 0x2000, page_a }, { 0x3000, zero }, { (1 << 20) + 0x1000, page_b } };
        static uint8_t blob[(1u << 20) + 100];
        for (size_t i = 0; i < sizeof(blob); i++)
                blob[i] = (uint8_t) (i * 7);
        char token[33];
        assert_int_equal(vhm_token_new(token), 0);
        unsigned zeros = 0;

        /* A stream of this size fits the socket buffer only in pieces: a thread-free test sends and receives in turn. */
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.src, vhm_stream_send_auth(p.src, token));
        S_CHECK(p.src, vhm_stream_send_pages(p.src, pages, 3, &zeros));
        assert_int_equal(zeros, 1);

        const void *pl;
        uint32_t len;
        char err[256], tok[33];
        assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_HELLO);
        assert_int_equal(vhm_rec_decode_hello(pl, len, &h2, err, sizeof(err)), 0);
        assert_memory_equal(&h, &h2, sizeof(h));
        assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_AUTH);
        assert_int_equal(vhm_rec_decode_auth(pl, len, tok, err, sizeof(err)), 0);
        assert_true(vhm_token_equal(tok, token));
        assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_PAGES);
        struct vhm_rec_pages pg;
        assert_int_equal(vhm_rec_decode_pages(pl, len, &h, &pg, err, sizeof(err)), 0);
        assert_int_equal(pg.count, 3);
        assert_int_equal(pg.zero, 1);
        assert_int_equal(len, 4 + 3 * 8 + 2 * 4096);
        for (uint32_t i = 0; i < 3; i++) {
                uint64_t gpa;
                const void *data;
                vhm_rec_pages_get(&pg, i, &gpa, &data);
                assert_int_equal(gpa, pages[i].gpa);
                if (i == 1)
                        assert_null(data);
                else
                        assert_memory_equal(data, pages[i].data, 4096);
        }

        S_CHECK(p.src, vhm_stream_send_device(p.src, &d));
        assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_DEVICE);
        assert_int_equal(vhm_rec_decode_device(pl, len, &d2, err, sizeof(err)), 0);
        assert_memory_equal(&d, &d2, sizeof(d));

        /* The blob in 1 MiB chunks, then the rest, then the empty record: read it back as it goes. */
        struct vhm_rec_blob b;
        vhm_rec_blob_init(&b);
        pid_t child = fork();
        assert_true(child >= 0);
        if (child == 0) {
                int r = vhm_stream_send_backend_state(p.src, 7, blob, sizeof(blob));
                _exit(r < 0 ? 1 : 0);
        }
        while (!b.complete) {
                assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_BACKEND_STATE);
                uint32_t idx, clen;
                const void *chunk;
                assert_int_equal(vhm_rec_decode_backend_state(pl, len, &idx, &chunk, &clen, err, sizeof(err)), 0);
                assert_int_equal(idx, 7);
                assert_int_equal(vhm_rec_blob_append(&b, idx, chunk, clen, err, sizeof(err)), 0);
        }
        int status;
        assert_int_equal(waitpid(child, &status, 0), child);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_int_equal(b.len, sizeof(blob));
        assert_memory_equal(b.data, blob, sizeof(blob));
        vhm_rec_blob_free(&b);

        S_CHECK(p.src, vhm_stream_send_end(p.src, &e));
        assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_END);
        assert_int_equal(vhm_rec_decode_end(pl, len, &e2, err, sizeof(err)), 0);
        assert_memory_equal(&e, &e2, sizeof(e));

        /* The answers, destination to source. */
        S_CHECK(p.dst, vhm_stream_send_committed(p.dst));
        assert_int_equal(vhm_stream_recv(p.src, &pl, &len), VHM_REC_COMMITTED);
        assert_int_equal(len, 0);
        assert_true(vhm_stream_bytes_received(p.dst) > sizeof(blob));
        assert_int_equal(vhm_stream_bytes_received(p.src), 8);
        pair_close(&p);

        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.dst, vhm_stream_send_aborted(p.dst, "layout mismatch:\n\x01 region 0"));
        assert_int_equal(vhm_stream_recv(p.src, &pl, &len), VHM_REC_ABORTED);
        char reason[VHM_REC_MAX_REASON + 1];
        assert_int_equal(vhm_rec_decode_aborted(pl, len, reason, err, sizeof(err)), 0);
        assert_string_equal(reason, "layout mismatch:?? region 0"); /* control characters do not pass */
        pair_close(&p);
        assert_int_equal(count_open_fds(), before);
}

/* ---- every bound, refused with the record's name ---- */

static void hello_bounds(void **state) {
        (void) state;
        uint8_t buf[VHM_REC_HELLO_MAX_LEN + 16];
        char err[256];
        struct vhm_rec_hello h = sample_hello(), out;
        int len = vhm_rec_encode_hello(&h, buf, sizeof(buf));
        assert_int_equal(len, 88 + 2 * 16);
        assert_int_equal(vhm_rec_decode_hello(buf, (uint32_t) len, &out, err, sizeof(err)), 0);
        assert_int_equal(vhm_rec_encode_hello(&h, buf, 100), -ENOBUFS);

        struct {
                size_t off;
                uint32_t value;
                unsigned width;
        } faults[] = {
                { 0, 0x58, 1 },         /* magic */
                { 8, 99, 4 },           /* version */
                { 12, 1, 4 },           /* role */
                { 16, 8192, 4 },        /* page size */
                { 20, '/', 1 },         /* a name character */
                { 20, 0, 1 },           /* an empty name */
                { 84, 0, 4 },           /* no regions */
                { 84, 9, 4 },           /* nine regions */
                { 84, 3, 4 },           /* a count that does not match the length */
                { 88 + 8, 0, 4 },       /* an empty region */
                { 88 + 8, 0x800, 4 },   /* a region not page aligned */
                { 88 + 16, 0x8000, 4 }, /* region 1 overlaps region 0 */
        };
        for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++) {
                uint8_t bad[sizeof(buf)];
                memcpy(bad, buf, sizeof(buf));
                uint32_t v = htole32(faults[i].value);
                memcpy(bad + faults[i].off, &v, faults[i].width);
                err[0] = '\0';
                if (vhm_rec_decode_hello(bad, (uint32_t) len, &out, err, sizeof(err)) >= 0)
                        fail_msg("fault %zu was accepted", i);
                assert_error_names(err, "HELLO");
        }
        /* Regions out of order; a name with bytes after its NUL; lengths short and long. */
        struct vhm_rec_hello sw = h;
        sw.regions[0] = h.regions[1];
        sw.regions[1] = h.regions[0];
        assert_int_equal(vhm_rec_check_hello(&sw, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "region 1");
        struct vhm_rec_hello junk = h;
        junk.vm_name[40] = 'x';
        assert_int_equal(vhm_rec_check_hello(&junk, err, sizeof(err)), -EBADMSG);
        assert_int_equal(vhm_rec_decode_hello(buf, 87, &out, err, sizeof(err)), -EBADMSG);
        assert_int_equal(vhm_rec_decode_hello(buf, (uint32_t) len + 16, &out, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "HELLO");
        struct vhm_rec_hello wrap = h;
        wrap.nregions = 1;
        wrap.regions[0] = (struct vhm_rec_region){ UINT64_MAX - 0xfff, 0x2000 };
        assert_int_equal(vhm_rec_check_hello(&wrap, err, sizeof(err)), -EBADMSG);
}

static void pages_bounds(void **state) {
        (void) state;
        struct vhm_rec_hello layout = sample_hello();
        static uint8_t buf[4 + 8 * 257 + 4096 * 2];
        char err[256];
        struct vhm_rec_pages pg;
        uint32_t count = htole32(2);
        uint64_t e0 = htole64(0x1000), e1 = htole64(0x2000 | VHM_REC_PAGE_ZERO);
        memcpy(buf, &count, 4);
        memcpy(buf + 4, &e0, 8);
        memcpy(buf + 12, &e1, 8);
        uint32_t good = 4 + 16 + 4096;
        assert_int_equal(vhm_rec_decode_pages(buf, good, &layout, &pg, err, sizeof(err)), 0);

        /* The length must be exact: a byte more or less is refused. */
        assert_int_equal(vhm_rec_decode_pages(buf, good - 1, &layout, &pg, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "PAGES");
        assert_int_equal(vhm_rec_decode_pages(buf, good + 1, &layout, &pg, err, sizeof(err)), -EBADMSG);
        assert_int_equal(vhm_rec_decode_pages(buf, 3, &layout, &pg, err, sizeof(err)), -EBADMSG);

        uint8_t saved[8];
        memcpy(saved, buf, 8);
        uint32_t counts[] = { 0, 257, 3 };
        for (size_t i = 0; i < 3; i++) {
                uint32_t c = htole32(counts[i]);
                memcpy(buf, &c, 4);
                err[0] = '\0';
                assert_true(vhm_rec_decode_pages(buf, good, &layout, &pg, err, sizeof(err)) < 0);
                assert_error_names(err, "PAGES");
        }
        memcpy(buf, saved, 8);

        uint64_t bad_gpas[] = {
                0x10000,              /* just past region 0 */
                (1 << 20) + 0x8000,   /* just past region 1 */
                0x80000,              /* in the hole */
                UINT64_MAX & ~0xfffu, /* far away */
                0x1000 | 0x4,         /* an unknown flag */
                0x1000 | 0x800,       /* a gpa not page aligned reads as flags */
        };
        for (size_t i = 0; i < sizeof(bad_gpas) / sizeof(bad_gpas[0]); i++) {
                uint64_t v = htole64(bad_gpas[i]);
                memcpy(buf + 4, &v, 8);
                err[0] = '\0';
                if (vhm_rec_decode_pages(buf, good, &layout, &pg, err, sizeof(err)) >= 0)
                        fail_msg("gpa entry 0x%llx was accepted", (unsigned long long) bad_gpas[i]);
                assert_error_names(err, "PAGES");
        }
        /* The last page of a region is inside; the first past it is not. */
        uint64_t last = htole64((1 << 20) + 0x7000);
        memcpy(buf + 4, &last, 8);
        assert_int_equal(vhm_rec_decode_pages(buf, good, &layout, &pg, err, sizeof(err)), 0);
}

static void device_bounds(void **state) {
        (void) state;
        char err[256];
        struct vhm_rec_device d = sample_device(), out;
        uint8_t buf[VHM_REC_DEVICE_MAX_LEN];
        int len = vhm_rec_encode_device(&d, buf, sizeof(buf));
        assert_int_equal(len, 36 + 4 * 36);
        assert_int_equal(vhm_rec_decode_device(buf, (uint32_t) len, &out, err, sizeof(err)), 0);
        assert_int_equal(vhm_rec_decode_device(buf, (uint32_t) len - 1, &out, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "DEVICE 1");
        assert_int_equal(vhm_rec_decode_device(buf, 20, &out, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "DEVICE");

        struct vhm_rec_device faults[12];
        for (unsigned i = 0; i < 12; i++)
                faults[i] = d;
        faults[0].queue_pairs = 0;
        faults[1].queue_pairs = 9, faults[1].nrings = 18;
        faults[2].nrings = 2;
        faults[3].rings[1].size = 3;
        faults[4].rings[2].size = 65536;
        faults[5].rings[0].enabled = 2;
        faults[6].rings[1].desc += 8;
        faults[7].rings[1].used += 2;
        faults[8].rings[3].last_avail = 0x10000;
        faults[9].mtu = 67;
        faults[10].features |= UINT64_C(1) << 34, faults[10].rings[0].last_avail = 300; /* packed: beyond 256 */
        faults[11].rings[2].size = 0;
        for (unsigned i = 0; i < 12; i++) {
                err[0] = '\0';
                if (vhm_rec_check_device(&faults[i], err, sizeof(err)) >= 0)
                        fail_msg("device fault %u was accepted", i);
                assert_error_names(err, "DEVICE 1");
                assert_int_equal(vhm_rec_encode_device(&faults[i], buf, sizeof(buf)), -EINVAL);
        }
        /* More rings than any device has, on the wire. */
        uint32_t many = htole32(17);
        len = vhm_rec_encode_device(&d, buf, sizeof(buf));
        memcpy(buf + 32, &many, 4);
        assert_int_equal(vhm_rec_decode_device(buf, (uint32_t) len, &out, err, sizeof(err)), -EBADMSG);
        /* A queue pair the guest never set up travels as all zero and is fine. */
        struct vhm_rec_device unused = d;
        memset(&unused.rings[2], 0, 2 * sizeof(unused.rings[0]));
        assert_int_equal(vhm_rec_check_device(&unused, err, sizeof(err)), 0);
}

static void small_record_bounds(void **state) {
        (void) state;
        char err[256], tok[33], reason[VHM_REC_MAX_REASON + 1];
        struct vhm_rec_end e;
        uint8_t buf[64] = { 0 };
        assert_int_equal(vhm_rec_decode_end(buf, 23, &e, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "END");
        uint64_t pages = htole64(1), zero = htole64(2);
        memcpy(buf, &pages, 8);
        memcpy(buf + 8, &zero, 8);
        assert_int_equal(vhm_rec_decode_end(buf, 24, &e, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "END");
        struct vhm_rec_end bad = { 1, 2, 0 };
        assert_int_equal(vhm_rec_encode_end(&bad, buf, sizeof(buf)), -EINVAL);

        memset(buf, 'a', 32);
        assert_int_equal(vhm_rec_decode_auth(buf, 32, tok, err, sizeof(err)), 0);
        assert_int_equal(vhm_rec_decode_auth(buf, 31, tok, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "AUTH");
        buf[5] = 'G';
        assert_int_equal(vhm_rec_decode_auth(buf, 32, tok, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "AUTH");

        static char big[VHM_REC_MAX_REASON + 1];
        memset(big, 'x', sizeof(big));
        assert_int_equal(vhm_rec_decode_aborted(big, VHM_REC_MAX_REASON + 1, reason, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "ABORTED");

        uint32_t idx, clen;
        const void *chunk;
        assert_int_equal(vhm_rec_decode_backend_state(buf, 3, &idx, &chunk, &clen, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "BACKEND_STATE");
}

static void blob_bounds(void **state) {
        (void) state;
        char err[256];
        struct vhm_rec_blob b;
        vhm_rec_blob_init(&b);
        static uint8_t chunk[1u << 20];
        assert_int_equal(vhm_rec_blob_append(&b, 2, chunk, 100, err, sizeof(err)), 0);
        assert_int_equal(vhm_rec_blob_append(&b, 3, chunk, 100, err, sizeof(err)), -EBADMSG);
        assert_error_names(err, "BACKEND_STATE 3");
        /* 16 MiB at most: the 17th full chunk is refused, and memory never grew past the bound. */
        int r = 0;
        for (unsigned i = 0; i < 17 && r == 0; i++)
                r = vhm_rec_blob_append(&b, 2, chunk, sizeof(chunk), err, sizeof(err));
        assert_int_equal(r, -EFBIG);
        assert_error_names(err, "BACKEND_STATE 2");
        assert_true(b.cap <= VHM_REC_MAX_BLOB);
        vhm_rec_blob_free(&b);

        vhm_rec_blob_init(&b);
        assert_int_equal(vhm_rec_blob_append(&b, 0, NULL, 0, err, sizeof(err)), 0); /* an empty blob */
        assert_true(b.complete);
        assert_int_equal(vhm_rec_blob_append(&b, 0, chunk, 1, err, sizeof(err)), -EBADMSG);
        vhm_rec_blob_free(&b);
}

/* Senders refuse what a receiver would refuse. */
static void senders_check_records(void **state) {
        (void) state;
        int before = count_open_fds();
        struct pair p;
        pair_open(&p, TIMEOUT_MS);
        struct vhm_rec_hello h = sample_hello();
        h.nregions = 0;
        assert_int_equal(vhm_stream_send_hello(p.src, &h), -EINVAL);
        assert_error_names(vhm_stream_error(p.src), "HELLO");
        assert_int_equal(vhm_stream_send_auth(p.src, "abc"), -EINVAL);
        assert_error_names(vhm_stream_error(p.src), "AUTH");
        struct vhm_rec_page pg = { 0x1001, NULL };
        assert_int_equal(vhm_stream_send_pages(p.src, &pg, 1, NULL), -EINVAL);
        assert_error_names(vhm_stream_error(p.src), "PAGES");
        assert_int_equal(vhm_stream_send_pages(p.src, &pg, 0, NULL), -EINVAL);
        struct vhm_rec_device d = sample_device();
        d.nrings = 3;
        assert_int_equal(vhm_stream_send_device(p.src, &d), -EINVAL);
        assert_error_names(vhm_stream_error(p.src), "DEVICE");
        assert_int_equal(vhm_stream_send(p.src, VHM_REC_END, "x", 1), -EINVAL);
        assert_error_names(vhm_stream_error(p.src), "END");
        assert_int_equal(vhm_stream_send(p.src, 77, NULL, 0), -EINVAL);
        assert_int_equal(vhm_stream_send_backend_state(p.src, 0, NULL, VHM_REC_MAX_BLOB + 1), -EFBIG);
        /* Nothing reached the peer. */
        assert_int_equal(vhm_stream_bytes_sent(p.src), 0);
        pair_close(&p);
        assert_int_equal(count_open_fds(), before);
}

/* ---- order, optional and unknown records ---- */

static int recv_type(struct vhm_stream *s) {
        const void *pl;
        uint32_t len;
        return vhm_stream_recv(s, &pl, &len);
}

static void order_is_enforced(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_rec_hello h = sample_hello();
        static uint8_t page[4096];
        struct vhm_rec_page pg = { 0x1000, page };
        struct vhm_rec_end e = { 0 };
        char token[33];
        assert_int_equal(vhm_token_new(token), 0);
        struct pair p;

        /* PAGES before HELLO; AUTH before HELLO; PAGES before AUTH. */
        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_pages(p.src, &pg, 1, NULL));
        assert_int_equal(recv_type(p.dst), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "PAGES: received before HELLO");
        pair_close(&p);

        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.src, vhm_stream_send_pages(p.src, &pg, 1, NULL));
        assert_int_equal(recv_type(p.dst), VHM_REC_HELLO);
        assert_int_equal(recv_type(p.dst), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "PAGES: received before AUTH");
        pair_close(&p);

        /* Anything after END; HELLO twice. */
        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.src, vhm_stream_send_auth(p.src, token));
        S_CHECK(p.src, vhm_stream_send_end(p.src, &e));
        S_CHECK(p.src, vhm_stream_send_pages(p.src, &pg, 1, NULL));
        assert_int_equal(recv_type(p.dst), VHM_REC_HELLO);
        assert_int_equal(recv_type(p.dst), VHM_REC_AUTH);
        assert_int_equal(recv_type(p.dst), VHM_REC_END);
        assert_int_equal(recv_type(p.dst), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "PAGES: received after");
        pair_close(&p);

        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.src, vhm_stream_send_auth(p.src, token));
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        assert_int_equal(recv_type(p.dst), VHM_REC_HELLO);
        assert_int_equal(recv_type(p.dst), VHM_REC_AUTH);
        assert_int_equal(recv_type(p.dst), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "HELLO");
        pair_close(&p);

        /* A destination's answer sent to a destination; a source's record sent to the source. */
        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_committed(p.src));
        assert_int_equal(recv_type(p.dst), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "COMMITTED");
        pair_close(&p);

        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.dst, vhm_stream_send_end(p.dst, &e));
        assert_int_equal(recv_type(p.src), -EBADMSG);
        assert_error_names(vhm_stream_error(p.src), "END");
        pair_close(&p);

        /* One answer, then nothing. */
        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.dst, vhm_stream_send_aborted(p.dst, "no"));
        S_CHECK(p.dst, vhm_stream_send_committed(p.dst));
        assert_int_equal(recv_type(p.src), VHM_REC_ABORTED);
        assert_int_equal(recv_type(p.src), -EBADMSG);
        assert_error_names(vhm_stream_error(p.src), "COMMITTED");
        pair_close(&p);

        /* The VMM-carried stream: DEVICE and BACKEND_STATE, no HELLO or PAGES. */
        pair_open(&p, TIMEOUT_MS);
        vhm_stream_set_mode(p.dst, VHM_STREAM_DEVICE_STATE);
        struct vhm_rec_device d = sample_device();
        S_CHECK(p.src, vhm_stream_send_device(p.src, &d));
        S_CHECK(p.src, vhm_stream_send_backend_state(p.src, 1, "abc", 3));
        S_CHECK(p.src, vhm_stream_send_pages(p.src, &pg, 1, NULL));
        assert_int_equal(recv_type(p.dst), VHM_REC_DEVICE);
        assert_int_equal(recv_type(p.dst), VHM_REC_BACKEND_STATE);
        assert_int_equal(recv_type(p.dst), VHM_REC_BACKEND_STATE);
        assert_int_equal(recv_type(p.dst), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "PAGES");
        pair_close(&p);
        assert_int_equal(count_open_fds(), before);
}

static void optional_and_unknown_records(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_rec_hello h = sample_hello();
        struct pair p;

        /* An optional record of a type from a newer peer is skipped; what follows arrives. */
        pair_open(&p, TIMEOUT_MS);
        static uint8_t future[5000];
        struct iovec v = { future, sizeof(future) };
        S_CHECK(p.src, vhm_stream_send_raw(p.src, 200, VHM_REC_F_OPTIONAL, &v, 1));
        S_CHECK(p.src, vhm_stream_send_raw(p.src, 201, VHM_REC_F_OPTIONAL, NULL, 0));
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        assert_int_equal(recv_type(p.dst), VHM_REC_HELLO);
        assert_int_equal(vhm_stream_bytes_received(p.dst), 8 + 5000 + 8 + 8 + 88 + 32);
        pair_close(&p);

        /* Mandatory and unknown: refused, naming the type. */
        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_raw(p.src, 200, 0, &v, 1));
        assert_int_equal(recv_type(p.dst), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "type 200");
        pair_close(&p);

        /* Flags nobody defined; an optional unknown record too large to skip. */
        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_raw(p.src, VHM_REC_HELLO, 0x8, NULL, 0));
        assert_int_equal(recv_type(p.dst), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "HELLO");
        pair_close(&p);

        int peer;
        struct vhm_stream *s = raw_peer(&peer, TIMEOUT_MS);
        write_hdr(peer, 300, VHM_REC_F_OPTIONAL, 64u << 20);
        assert_int_equal(recv_type(s), -EMSGSIZE);
        assert_error_names(vhm_stream_error(s), "type 300");
        vhm_stream_free(s);
        close(peer);
        assert_int_equal(count_open_fds(), before);
}

/* ---- hostile peers ---- */

static void huge_lengths_are_refused_unread(void **state) {
        (void) state;
        int before = count_open_fds();
        uint16_t types[] = { VHM_REC_HELLO,  VHM_REC_AUTH,          VHM_REC_PAGES,
                             VHM_REC_DEVICE, VHM_REC_BACKEND_STATE, VHM_REC_END };
        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
                int peer;
                struct vhm_stream *s = raw_peer(&peer, TIMEOUT_MS);
                /* A 4 GiB record with no payload behind it: refused on the header alone, no wait, no allocation. */
                write_hdr(peer, types[i], 0, UINT32_MAX);
                uint64_t t0 = vhu_now_usec();
                assert_int_equal(recv_type(s), -EMSGSIZE);
                assert_true(vhu_now_usec() - t0 < 1000000);
                assert_error_names(vhm_stream_error(s), vhm_rec_name(types[i]));
                assert_int_equal(vhm_stream_bytes_received(s), 8);
                vhm_stream_free(s);
                close(peer);
        }
        /* One byte over the table's maximum, and one under its minimum. */
        int peer;
        struct vhm_stream *s = raw_peer(&peer, TIMEOUT_MS);
        write_hdr(peer, VHM_REC_PAGES, 0, vhm_rec_info(VHM_REC_PAGES)->max_len + 1);
        assert_int_equal(recv_type(s), -EMSGSIZE);
        vhm_stream_free(s);
        close(peer);
        s = raw_peer(&peer, TIMEOUT_MS);
        write_hdr(peer, VHM_REC_HELLO, 0, 10);
        assert_int_equal(recv_type(s), -EBADMSG);
        assert_error_names(vhm_stream_error(s), "HELLO: 10 bytes");
        vhm_stream_free(s);
        close(peer);
        assert_int_equal(count_open_fds(), before);
}

static void truncated_and_garbage(void **state) {
        (void) state;
        int before = count_open_fds();
        int peer;
        /* A header that promises 216 bytes, 100 of them, then the peer goes. */
        struct vhm_stream *s = raw_peer(&peer, TIMEOUT_MS);
        write_hdr(peer, VHM_REC_HELLO, 0, 216);
        uint8_t junk[100] = { 0 };
        assert_int_equal(write(peer, junk, sizeof(junk)), 100);
        close(peer);
        assert_int_equal(recv_type(s), -ECONNRESET);
        assert_error_names(vhm_stream_error(s), "HELLO: the peer closed");
        vhm_stream_free(s);

        /* Half a header. */
        s = raw_peer(&peer, TIMEOUT_MS);
        assert_int_equal(write(peer, junk, 5), 5);
        close(peer);
        assert_int_equal(recv_type(s), -ECONNRESET);
        assert_error_names(vhm_stream_error(s), "record header");
        vhm_stream_free(s);

        /* Garbage: whatever it is, the first header is refused or the stream ends; never a crash. */
        uint64_t x = 0x243f6a8885a308d3ull;
        for (unsigned round = 0; round < 200; round++) {
                s = raw_peer(&peer, TIMEOUT_MS);
                uint8_t g[256];
                for (size_t i = 0; i < sizeof(g); i++) {
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        g[i] = (uint8_t) x;
                }
                assert_int_equal(write(peer, g, sizeof(g)), (ssize_t) sizeof(g));
                close(peer);
                int r;
                while ((r = recv_type(s)) > 0)
                        ;
                assert_true(r == -EBADMSG || r == -EMSGSIZE || r == -ECONNRESET);
                assert_true(vhm_stream_error(s)[0] != '\0');
                vhm_stream_free(s);
        }
        assert_int_equal(count_open_fds(), before);
}

static void stall_and_cancel(void **state) {
        (void) state;
        int before = count_open_fds();
        int peer;
        /* A peer that sends half a record and stalls: the call's deadline ends it. */
        struct vhm_stream *s = raw_peer(&peer, 200);
        write_hdr(peer, VHM_REC_HELLO, 0, 104);
        uint64_t t0 = vhu_now_usec();
        assert_int_equal(recv_type(s), -ETIMEDOUT);
        uint64_t took = vhu_now_usec() - t0;
        assert_true(took >= 190000 && took < 5000000);
        assert_error_names(vhm_stream_error(s), "HELLO: timed out");
        vhm_stream_free(s);
        close(peer);

        /* An absolute deadline (a token's expiry) ends a wait the per-call timeout would allow. */
        s = raw_peer(&peer, 0);
        vhm_stream_set_deadline(s, vhu_now_usec() + 150000);
        assert_int_equal(recv_type(s), -ETIMEDOUT);
        vhm_stream_free(s);
        close(peer);

        /* A peer that never reads: the sender's deadline ends a write that cannot go on. */
        s = raw_peer(&peer, 200);
        static uint8_t page[4096];
        memset(page, 1, sizeof(page));
        struct vhm_rec_page pages[256];
        for (unsigned i = 0; i < 256; i++)
                pages[i] = (struct vhm_rec_page){ 0x1000 * (uint64_t) i, page };
        int r = 0;
        for (unsigned i = 0; i < 64 && r == 0; i++)
                r = vhm_stream_send_pages(s, pages, 256, NULL);
        assert_int_equal(r, -ETIMEDOUT);
        assert_error_names(vhm_stream_error(s), "PAGES: timed out writing");
        vhm_stream_free(s);
        close(peer);

        /* The cancel fd: a blocked receive and a blocked send end with -ECANCELED, and so does the next call. */
        int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        assert_true(efd >= 0);
        s = raw_peer(&peer, 5000);
        vhm_stream_set_cancel_fd(s, efd);
        pid_t child = fork();
        assert_true(child >= 0);
        if (child == 0) {
                usleep(100000);
                uint64_t one = 1;
                _exit(write(efd, &one, 8) == 8 ? 0 : 1);
        }
        assert_int_equal(recv_type(s), -ECANCELED);
        assert_error_names(vhm_stream_error(s), "cancelled");
        int status;
        assert_int_equal(waitpid(child, &status, 0), child);
        assert_int_equal(vhm_stream_send_committed(s), -ECANCELED);
        vhm_stream_free(s);
        close(peer);
        close(efd);
        assert_int_equal(count_open_fds(), before);
}

/* ---- the checksum, and pages into a VM ---- */

static int memfd_of(uint64_t size) {
        int fd = memfd_create("stream-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        return fd;
}

/* The sample layout: 64 KiB at 0 and 32 KiB at 1 MiB, added in the opposite order. */
static struct vhm_vm *sample_vm(const char *name) {
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new(name, &vm), 0);
        int hi = memfd_of(32 << 10), lo = memfd_of(64 << 10);
        struct vhm_region_spec a = { hi, 1 << 20, 32 << 10, 0 }, b = { lo, 0, 64 << 10, 0 };
        assert_int_equal(vhm_vm_add_region(vm, &a), 0);
        assert_int_equal(vhm_vm_add_region(vm, &b), 0);
        close(hi);
        close(lo);
        return vm;
}

/* Memory cut under the threaded checksum: -EIO from a slice's thread, no SIGBUS, nothing left behind. */
static void threaded_checksum_of_truncated_memory(void **state) {
        (void) state;
        int before = count_open_fds();
        int fd = open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0)
                skip();
        assert_int_equal(ftruncate(fd, 1 << 20), 0);
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new("cut", &vm), 0);
        struct vhm_region_spec spec = { fd, 0, 1 << 20, 0 };
        assert_int_equal(vhm_vm_add_region(vm, &spec), 0);
        uint64_t sum = 0;
        assert_int_equal(vhm_memory_checksum_threads(vm, 4, &sum), 0);
        /* The last quarter (the last slice's thread) is gone. */
        assert_int_equal(ftruncate(fd, 3 << 18), 0);
        assert_int_equal(vhm_memory_checksum_threads(vm, 4, &sum), -EIO);
        vhm_vm_free(vm);
        close(fd);
        assert_int_equal(count_open_fds(), before);
}

/*
 * Every implementation of the page hash gives the same value and the same
 * zero answer (the two ends may run different CPUs), on pages of every kind;
 * a word written to each of many values, anywhere, changes the hash, and so
 * do two words swapped (a key per position).
 */
static void page_checksum_implementations_agree(void **state) {
        (void) state;
        static uint8_t page[4096];
        uint64_t x = 0x243f6a8885a308d3u;
        for (unsigned kind = 0; kind < 4; kind++) {
                for (size_t i = 0; i < sizeof(page); i += 8) {
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        uint64_t w = kind == 0 ? 0 : kind == 1 ? x : kind == 2 ? ~UINT64_C(0) : (i / 8) << 32;
                        memcpy(page + i, &w, 8);
                }
                bool z0, z1, z2;
                uint64_t h = vhm_checksum_page_impl(page, &z0, VHM_CHECKSUM_SCALAR);
                assert_int_equal(vhm_checksum_page_impl(page, &z1, VHM_CHECKSUM_SSE2), h);
                assert_int_equal(vhm_checksum_page_impl(page, &z2, VHM_CHECKSUM_AVX2), h);
                assert_int_equal(vhm_checksum_page(page, NULL), h);
                assert_true(z0 == (kind == 0) && z1 == z0 && z2 == z0);
        }
        uint64_t h = vhm_checksum_page(page, NULL);
        for (unsigned w = 0; w < 512; w++) {
                uint64_t old;
                memcpy(&old, page + 8u * w, 8);
                for (unsigned k = 0; k < 16; k++) {
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        uint64_t v = k == 0     ? old + 1
                                     : k == 1   ? old ^ (UINT64_C(1) << 63)
                                     : k == 2   ? ~old
                                     : x == old ? x + 1
                                                : x;
                        memcpy(page + 8u * w, &v, 8);
                        assert_int_not_equal(vhm_checksum_page_impl(page, NULL, VHM_CHECKSUM_SCALAR), h);
                        assert_int_not_equal(vhm_checksum_page(page, NULL), h);
                }
                memcpy(page + 8u * w, &old, 8);
        }
        for (unsigned w = 0; w + 8 < 512; w += 37) { /* the same lane, 8 words apart */
                uint64_t a, b;
                memcpy(&a, page + 8u * w, 8);
                memcpy(&b, page + 8u * (w + 8), 8);
                memcpy(page + 8u * w, &b, 8);
                memcpy(page + 8u * (w + 8), &a, 8);
                assert_int_not_equal(vhm_checksum_page(page, NULL), h);
                memcpy(page + 8u * w, &a, 8);
                memcpy(page + 8u * (w + 8), &b, 8);
        }
        assert_int_equal(vhm_checksum_page(page, NULL), h);
}

/* Any one word changed, anywhere in a page, changes its hash; buffers split at pages fold alike. */
static void page_checksum_sees_every_word(void **state) {
        (void) state;
        static uint8_t page[3 * 4096];
        for (size_t i = 0; i < sizeof(page); i++)
                page[i] = (uint8_t) ((i * 7u + 1u) ^ (i >> 12) * 91u); /* three different pages */
        bool zero = true;
        uint64_t h = vhm_checksum_page(page, &zero);
        assert_false(zero);
        for (unsigned w = 0; w < 512; w++)
                for (unsigned bit = 0; bit < 64; bit += 21) {
                        page[8u * w + bit / 8] ^= (uint8_t) (1u << (bit % 8));
                        assert_int_not_equal(vhm_checksum_page(page, NULL), h);
                        page[8u * w + bit / 8] ^= (uint8_t) (1u << (bit % 8));
                }
        assert_int_equal(vhm_checksum_page(page, NULL), h);
        /* Two pages swapped: the fold is ordered. */
        uint64_t whole = vhm_checksum_update(VHM_CHECKSUM_INIT, page, sizeof(page));
        uint64_t split = vhm_checksum_update(vhm_checksum_update(VHM_CHECKSUM_INIT, page, 4096), page + 4096, 8192);
        assert_int_equal(whole, split);
        uint64_t swapped = vhm_checksum_fold(vhm_checksum_fold(VHM_CHECKSUM_INIT, vhm_checksum_page(page + 4096, NULL)),
                                             vhm_checksum_page(page, NULL));
        assert_int_not_equal(swapped, vhm_checksum_update(VHM_CHECKSUM_INIT, page, 8192));
        /* A single non-zero byte anywhere makes a page non-zero. */
        static uint8_t z[4096];
        for (unsigned i = 0; i < sizeof(z); i += 509) {
                z[i] = 1;
                vhm_checksum_page(z, &zero);
                assert_false(zero);
                z[i] = 0;
        }
        vhm_checksum_page(z, &zero);
        assert_true(zero);
}

static void checksum_and_pages_into_a_vm(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_vm *src = sample_vm("src"), *dst = sample_vm("dst");
        char err[256];

        /* HELLO of a VM: its regions in gpa order; the other VM's layout matches. */
        struct vhm_rec_hello h;
        assert_int_equal(vhm_rec_hello_from_vm(src, &h), 0);
        struct vhm_rec_hello expect = sample_hello();
        strcpy(expect.vm_name, "src");
        memset(expect.vm_name + 4, 0, sizeof(expect.vm_name) - 4);
        assert_memory_equal(&h, &expect, sizeof(h));
        assert_int_equal(vhm_rec_hello_matches_vm(&h, dst, err, sizeof(err)), 0);
        struct vhm_rec_hello other = h;
        other.regions[1].size += 4096;
        assert_int_equal(vhm_rec_hello_matches_vm(&other, dst, err, sizeof(err)), -EINVAL);
        assert_error_names(err, "layout mismatch");

        /* The checksum of an all-zero image: 24 zero pages folded in order. */
        static const uint8_t zero_page[4096];
        bool is_zero = false;
        uint64_t sum, by_hand = VHM_CHECKSUM_INIT, zero_hash = vhm_checksum_page(zero_page, &is_zero);
        assert_true(is_zero);
        for (unsigned i = 0; i < (96u << 10) / 4096; i++)
                by_hand = vhm_checksum_fold(by_hand, zero_hash);
        assert_int_equal(vhm_memory_checksum(src, &sum), 0);
        assert_int_equal(sum, by_hand);

        /* Source memory with a pattern in both regions. */
        static uint8_t page[4096];
        for (unsigned i = 0; i < 24; i++) {
                uint64_t gpa = i < 16 ? 0x1000u * i : (1u << 20) + 0x1000u * (i - 16);
                memset(page, i % 3 ? (int) (i + 1) : 0, sizeof(page));
                assert_int_equal(vhm_vm_write(src, gpa, page, sizeof(page)), 0);
        }
        uint64_t src_sum, dst_sum;
        assert_int_equal(vhm_memory_checksum(src, &src_sum), 0);
        assert_int_not_equal(src_sum, sum);
        /* The threaded pass gives the same value however the 24 pages are sliced (across both regions). */
        for (unsigned t = 1; t <= 9; t++) {
                uint64_t threaded = 0;
                assert_int_equal(vhm_memory_checksum_threads(src, t, &threaded), 0);
                assert_int_equal(threaded, src_sum);
        }

        /* Every page over a stream, written at the destination; the checksums agree. */
        struct pair p;
        pair_open(&p, TIMEOUT_MS);
        static uint8_t pages_data[24][4096];
        struct vhm_rec_page pages[24];
        for (unsigned i = 0; i < 24; i++) {
                uint64_t gpa = i < 16 ? 0x1000u * i : (1u << 20) + 0x1000u * (i - 16);
                assert_int_equal(vhm_vm_read(src, gpa, pages_data[i], 4096), 0);
                pages[i] = (struct vhm_rec_page){ gpa, pages_data[i] };
        }
        unsigned zeros;
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        char token[33];
        assert_int_equal(vhm_token_new(token), 0);
        S_CHECK(p.src, vhm_stream_send_auth(p.src, token));
        S_CHECK(p.src, vhm_stream_send_pages(p.src, pages, 24, &zeros));
        assert_int_equal(zeros, 8);
        const void *pl;
        uint32_t len;
        assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_HELLO);
        assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_AUTH);
        assert_int_equal(vhm_stream_recv(p.dst, &pl, &len), VHM_REC_PAGES);
        struct vhm_rec_pages pg;
        assert_int_equal(vhm_rec_decode_pages(pl, len, &h, &pg, err, sizeof(err)), 0);
        /* The destination's memory is not zero where the source's zero pages go: they are written too. */
        memset(page, 0xee, sizeof(page));
        assert_int_equal(vhm_vm_write(dst, 0, page, sizeof(page)), 0);
        assert_int_equal(vhm_rec_pages_write(&pg, dst, err, sizeof(err)), 0);
        assert_int_equal(vhm_memory_checksum(dst, &dst_sum), 0);
        assert_int_equal(dst_sum, src_sum);
        pair_close(&p);

        /* A batch the decoder accepted for a bigger layout fails cleanly in a smaller VM. */
        struct vhm_rec_hello big = h;
        big.regions[1].size = 64 << 10;
        uint8_t rec[4 + 8];
        uint32_t one = htole32(1);
        uint64_t entry = htole64(((1u << 20) + 0x9000) | VHM_REC_PAGE_ZERO);
        memcpy(rec, &one, 4);
        memcpy(rec + 4, &entry, 8);
        assert_int_equal(vhm_rec_decode_pages(rec, sizeof(rec), &big, &pg, err, sizeof(err)), 0);
        assert_true(vhm_rec_pages_write(&pg, dst, err, sizeof(err)) < 0);
        assert_error_names(err, "PAGES");

        vhm_vm_free(src);
        vhm_vm_free(dst);
        assert_int_equal(count_open_fds(), before);
}

static uint64_t sample_gpa(unsigned i) {
        return i < 16 ? 0x1000u * i : (1u << 20) + 0x1000u * (i - 16);
}

/*
 * Pages sent from guest memory and received into it without a copy in user
 * space (vhm_stream_send_vm_pages, vhm_stream_recv_vm): the same image at
 * both ends, zero pages zeroed, a gpa listed twice ending as its last entry
 * says, across both regions.
 */
static void vm_pages_in_place(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_vm *src = sample_vm("src"), *dst = sample_vm("dst");
        static uint8_t page[4096];
        for (unsigned i = 0; i < 24; i++) {
                memset(page, i % 3 ? (int) (i + 1) : 0, sizeof(page));
                assert_int_equal(vhm_vm_write(src, sample_gpa(i), page, sizeof(page)), 0);
        }
        /* The destination holds data where the source's zero pages and page 1 go. */
        memset(page, 0xee, sizeof(page));
        assert_int_equal(vhm_vm_write(dst, 0, page, sizeof(page)), 0);
        assert_int_equal(vhm_vm_write(dst, 0x3000, page, sizeof(page)), 0);
        /* Page 1 first as a zero page, then with its data: the data must win. */
        struct vhm_rec_vm_page pages[25] = { { sample_gpa(1), true } };
        for (unsigned i = 0; i < 24; i++)
                pages[i + 1] = (struct vhm_rec_vm_page){ sample_gpa(i), i % 3 == 0 };
        struct vhm_rec_hello h;
        assert_int_equal(vhm_rec_hello_from_vm(src, &h), 0);
        struct pair p;
        pair_open(&p, TIMEOUT_MS);
        char token[33];
        assert_int_equal(vhm_token_new(token), 0);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.src, vhm_stream_send_auth(p.src, token));
        S_CHECK(p.src, vhm_stream_send_vm_pages(p.src, src, pages, 25));
        const void *pl;
        uint32_t len;
        struct vhm_rec_pages pg = { 0 };
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_HELLO);
        assert_int_equal(pg.count, 0);
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_AUTH);
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_PAGES);
        assert_int_equal(pg.count, 25);
        assert_int_equal(pg.zero, 9);
        assert_null(pg.data);
        assert_int_equal(len, 4u + 8u * 25u);
        assert_int_equal(vhm_stream_bytes_received(p.dst), vhm_stream_bytes_sent(p.src));
        uint64_t src_sum, dst_sum;
        assert_int_equal(vhm_memory_checksum(src, &src_sum), 0);
        assert_int_equal(vhm_memory_checksum(dst, &dst_sum), 0);
        assert_int_equal(dst_sum, src_sum);

        /* A page outside the receiver's layout is refused before any data is read into memory. */
        struct vhm_rec_hello small = h;
        small.regions[1].size = 4096;
        struct vhm_rec_vm_page far = { (1u << 20) + 0x2000, false };
        memset(page, 0x55, sizeof(page));
        assert_int_equal(vhm_vm_write(src, far.gpa, page, sizeof(page)), 0);
        S_CHECK(p.src, vhm_stream_send_vm_pages(p.src, src, &far, 1));
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &small, &pl, &len, &pg), -EBADMSG);
        assert_error_names(vhm_stream_error(p.dst), "outside the memory layout");
        assert_int_equal(vhm_vm_read(dst, far.gpa, page, sizeof(page)), 0);
        assert_int_equal(page[0], 0);
        /* Unaligned and too many pages are the sender's mistakes, refused before anything goes out. */
        struct vhm_rec_vm_page odd = { 0x10, false };
        assert_int_equal(vhm_stream_send_vm_pages(p.src, src, &odd, 1), -EINVAL);
        assert_int_equal(vhm_stream_send_vm_pages(p.src, src, pages, 0), -EINVAL);
        struct vhm_rec_vm_page outside = { 0x80000, false };
        assert_int_equal(vhm_stream_send_vm_pages(p.src, src, &outside, 1), -EFAULT);
        assert_error_names(vhm_stream_error(p.src), "outside guest memory");
        pair_close(&p);
        vhm_vm_free(src);
        vhm_vm_free(dst);
        assert_int_equal(count_open_fds(), before);
}

/* Touches every page, the last first; keeps the first byte. */
static void read_first_byte(const void *p, size_t len, void *arg) {
        const volatile uint8_t *b = p;
        for (size_t off = len; off >= 4096; off -= 4096)
                (void) b[off - 4096];
        *(uint8_t *) arg = b[0];
}

/* A VM of 1 MiB in a tmpfs file (it cannot be sealed), cut to its first half; NULL when there is no /dev/shm. */
static struct vhm_vm *cut_vm(const char *name, int *fd) {
        *fd = open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (*fd < 0)
                return NULL;
        assert_int_equal(ftruncate(*fd, 1 << 20), 0);
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new(name, &vm), 0);
        struct vhm_region_spec spec = { *fd, 0, 1 << 20, 0 };
        assert_int_equal(vhm_vm_add_region(vm, &spec), 0);
        assert_int_equal(ftruncate(*fd, 1 << 19), 0);
        return vm;
}

/*
 * Memory cut under the kernel's copies and the guarded pass: every call
 * fails with -EIO and the guarded path's reason, no SIGBUS, nothing left
 * open; memory still backed works as before.
 */
static void vm_pages_of_truncated_memory(void **state) {
        (void) state;
        int before = count_open_fds(), fd_src, fd_dst;
        struct vhm_vm *src = cut_vm("cut-src", &fd_src);
        if (!src)
                skip();
        struct vhm_vm *dst = cut_vm("cut-dst", &fd_dst);
        uint8_t byte = 1;
        assert_int_equal(vhm_vm_visit(src, 0x1000, 4096, read_first_byte, &byte), 0);
        assert_int_equal(byte, 0);
        assert_int_equal(vhm_vm_visit(src, 0x7f000, 0x2000, read_first_byte, &byte), -EIO);
        assert_error_names(vhm_vm_error(src), "no longer backed");
        assert_int_equal(vhm_vm_visit(src, 0xff000, 0x2000, read_first_byte, &byte), -EFAULT);
        struct iovec v;
        assert_int_equal(vhm_vm_kernel_iov(src, 0xff000, 0x2000, &v), -EFAULT);

        struct vhm_rec_hello h;
        assert_int_equal(vhm_rec_hello_from_vm(src, &h), 0);
        struct pair p;
        pair_open(&p, TIMEOUT_MS);
        char token[33];
        assert_int_equal(vhm_token_new(token), 0);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.src, vhm_stream_send_auth(p.src, token));
        const void *pl;
        uint32_t len;
        struct vhm_rec_pages pg;
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_HELLO);
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_AUTH);
        /* Sending: the page past the cut is named. */
        struct vhm_rec_vm_page gone[2] = { { 0x7f000, false }, { 0x80000, false } };
        assert_int_equal(vhm_stream_send_vm_pages(p.src, src, gone, 2), -EIO);
        assert_error_names(vhm_stream_error(p.src), "no longer backed");
        assert_error_names(vhm_stream_error(p.src), "0x80000");
        pair_close(&p);

        /* Receiving into the cut: a sound sender, a destination whose memory is gone. */
        struct vhm_vm *whole = sample_vm("whole");
        struct vhm_rec_hello wh;
        assert_int_equal(vhm_rec_hello_from_vm(whole, &wh), 0);
        h.regions[0].size = 1 << 20;
        pair_open(&p, TIMEOUT_MS);
        S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
        S_CHECK(p.src, vhm_stream_send_auth(p.src, token));
        uint8_t data[4096];
        memset(data, 0x5a, sizeof(data));
        struct vhm_rec_page into[2] = { { 0x1000, data }, { 0x90000, data } };
        S_CHECK(p.src, vhm_stream_send_pages(p.src, into, 2, NULL));
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_HELLO);
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_AUTH);
        assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), -EIO);
        assert_error_names(vhm_stream_error(p.dst), "no longer backed");
        assert_error_names(vhm_stream_error(p.dst), "0x90000");
        /* The page before the cut went in. */
        assert_int_equal(vhm_vm_read(dst, 0x1000, data, sizeof(data)), 0);
        assert_int_equal(data[0], 0x5a);
        pair_close(&p);
        vhm_vm_free(whole);
        vhm_vm_free(src);
        vhm_vm_free(dst);
        close(fd_src);
        close(fd_dst);
        assert_int_equal(count_open_fds(), before);
}

/* ---- transports ---- */

static void exchange(int a, int b) {
        struct vhm_stream *sa, *sb;
        assert_int_equal(vhm_stream_new(a, TIMEOUT_MS, &sa), 0);
        assert_int_equal(vhm_stream_new(b, TIMEOUT_MS, &sb), 0);
        struct vhm_rec_hello h = sample_hello();
        S_CHECK(sa, vhm_stream_send_hello(sa, &h));
        assert_int_equal(recv_type(sb), VHM_REC_HELLO);
        vhm_stream_free(sa);
        vhm_stream_free(sb);
}

static void unix_transport(void **state) {
        (void) state;
        int before = count_open_fds();
        char dir[] = "/tmp/vhm-stream-XXXXXX", addr[256], bound[VHM_TRANSPORT_ADDRESS_MAX];
        assert_non_null(mkdtemp(dir));
        snprintf(addr, sizeof(addr), "unix:%s/mig.sock", dir);
        int lfd, c, a;
        assert_int_equal(vhm_transport_listen(addr, &lfd, bound, sizeof(bound)), 0);
        assert_string_equal(bound, addr);
        struct stat st;
        assert_int_equal(stat(addr + 5, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);

        uint64_t deadline = vhu_now_usec() + 2000000;
        assert_int_equal(vhm_transport_connect(addr, deadline, -1, &c), 0);
        assert_int_equal(vhm_transport_accept(lfd, deadline, -1, &a), 0);
        exchange(c, a);

        /* Accept with nobody coming: the deadline; with the cancel fd: cancelled. */
        uint64_t t0 = vhu_now_usec();
        assert_int_equal(vhm_transport_accept(lfd, t0 + 100000, -1, &a), -ETIMEDOUT);
        assert_true(vhu_now_usec() - t0 >= 90000);
        int efd = eventfd(1, EFD_CLOEXEC);
        assert_int_equal(vhm_transport_accept(lfd, 0, efd, &a), -ECANCELED);

        /* A listener whose backlog is full never accepts: connect is bounded, and cancellable. */
        int conns[64], nconns = 0;
        for (;;) {
                int fd;
                int r = vhm_transport_connect(addr, vhu_now_usec() + 50000, -1, &fd);
                if (r < 0) {
                        assert_int_equal(r, -ETIMEDOUT);
                        break;
                }
                assert_true(nconns < 64);
                conns[nconns++] = fd;
        }
        t0 = vhu_now_usec();
        assert_int_equal(vhm_transport_connect(addr, t0 + 200000, -1, &c), -ETIMEDOUT);
        uint64_t took = vhu_now_usec() - t0;
        assert_true(took >= 190000 && took < 5000000);
        assert_int_equal(vhm_transport_connect(addr, 0, efd, &c), -ECANCELED);
        for (int i = 0; i < nconns; i++)
                close(conns[i]);
        close(efd);
        /* Somebody listens there already (the check connects: done last, as that connection stays queued). */
        int lfd2;
        assert_int_equal(vhm_transport_listen(addr, &lfd2, NULL, 0), -EADDRINUSE);

        vhm_transport_listen_close(lfd, bound);
        assert_int_equal(access(addr + 5, F_OK), -1);
        /* Nobody there. */
        assert_int_equal(vhm_transport_connect(addr, vhu_now_usec() + 1000000, -1, &c), -ENOENT);
        assert_int_equal(rmdir(dir), 0);
        assert_int_equal(count_open_fds(), before);
}

static void tcp_transport(void **state) {
        (void) state;
        int before = count_open_fds();
        char bound[VHM_TRANSPORT_ADDRESS_MAX];
        int lfd, c, a;
        /* Port 0: the kernel picks one and `bound` says which. */
        assert_int_equal(vhm_transport_listen("tcp:127.0.0.1:0", &lfd, bound, sizeof(bound)), 0);
        assert_true(strncmp(bound, "tcp:127.0.0.1:", 14) == 0);
        int port = atoi(bound + 14);
        assert_true(port > 0 && port < 65536);
        uint64_t deadline = vhu_now_usec() + 2000000;
        assert_int_equal(vhm_transport_connect(bound, deadline, -1, &c), 0);
        assert_int_equal(vhm_transport_accept(lfd, deadline, -1, &a), 0);
        exchange(c, a);
        vhm_transport_listen_close(lfd, bound);

        /* The same port, now closed: refused at once. */
        assert_int_equal(vhm_transport_connect(bound, vhu_now_usec() + 2000000, -1, &c), -ECONNREFUSED);

        /* IPv6 loopback, where the host has it. */
        if (vhm_transport_listen("tcp:[::1]:0", &lfd, bound, sizeof(bound)) == 0) {
                assert_true(strncmp(bound, "tcp:[::1]:", 10) == 0);
                assert_int_equal(vhm_transport_connect(bound, vhu_now_usec() + 2000000, -1, &c), 0);
                assert_int_equal(vhm_transport_accept(lfd, vhu_now_usec() + 2000000, -1, &a), 0);
                exchange(c, a);
                vhm_transport_listen_close(lfd, bound);
        }
        /* A name resolves. */
        assert_int_equal(vhm_transport_listen("tcp:localhost:0", &lfd, bound, sizeof(bound)), 0);
        vhm_transport_listen_close(lfd, bound);
        assert_int_equal(count_open_fds(), before);
}

static void bad_addresses(void **state) {
        (void) state;
        int before = count_open_fds();
        const char *bad[] = { "",
                              "foo",
                              "unix:",
                              "udp:127.0.0.1:5",
                              "tcp:127.0.0.1",
                              "tcp::80",
                              "tcp:127.0.0.1:",
                              "tcp:127.0.0.1:65536",
                              "tcp:127.0.0.1:8x",
                              "tcp:[::1:80",
                              "tcp:::1:80",
                              "tcp:[]:80",
                              "vsock:3:5",
                              "tcp:127.0.0.1:-1" };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int fd = -1;
                if (vhm_transport_listen(bad[i], &fd, NULL, 0) != -EINVAL)
                        fail_msg("listen accepted \"%s\"", bad[i]);
                if (vhm_transport_connect(bad[i], vhu_now_usec() + 100000, -1, &fd) != -EINVAL)
                        fail_msg("connect accepted \"%s\"", bad[i]);
        }
        int fd;
        assert_int_equal(vhm_transport_listen(NULL, &fd, NULL, 0), -EINVAL);
        char longpath[200];
        memset(longpath, 'a', sizeof(longpath) - 1);
        longpath[sizeof(longpath) - 1] = '\0';
        memcpy(longpath, "unix:/", 6);
        assert_int_equal(vhm_transport_listen(longpath, &fd, NULL, 0), -EINVAL);
        assert_int_equal(count_open_fds(), before);
}

static void tokens(void **state) {
        (void) state;
        char a[33], b[33];
        assert_int_equal(vhm_token_new(a), 0);
        assert_int_equal(vhm_token_new(b), 0);
        assert_int_equal(strlen(a), 32);
        assert_int_equal(strspn(a, "0123456789abcdef"), 32);
        assert_string_not_equal(a, b);
        assert_true(vhm_token_equal(a, a));
        char c[33];
        memcpy(c, a, 33);
        assert_true(vhm_token_equal(a, c));
        for (int i = 0; i < 32; i += 31) {
                c[i] = c[i] == '0' ? '1' : '0';
                assert_false(vhm_token_equal(a, c));
                c[i] = a[i];
        }
        char longer[40];
        snprintf(longer, sizeof(longer), "%sx", a);
        assert_false(vhm_token_equal(a, longer));
        assert_false(vhm_token_equal(longer, a));
        assert_false(vhm_token_equal(a, "abc"));
        assert_false(vhm_token_equal(a, NULL));
        assert_false(vhm_token_equal(NULL, NULL));
        assert_false(vhm_token_equal("", ""));
        /* 128 random bits each time: 1000 tokens, no two alike. */
        static char seen[1000][33];
        for (int i = 0; i < 1000; i++) {
                assert_int_equal(vhm_token_new(seen[i]), 0);
                for (int k = 0; k < i; k++)
                        assert_string_not_equal(seen[i], seen[k]);
        }
}

/* What the landed hook saw: each call's gpa and length, and whether those pages already held the source's data. */
struct landed_log {
        struct vhm_vm *dst, *src;
        unsigned n, fail_at;
        uint64_t gpa[16];
        size_t len[16];
        bool stale;
};

static int log_landed(uint64_t gpa, size_t len, void *arg) {
        struct landed_log *l = arg;
        if (l->n == l->fail_at)
                return -ENOTRECOVERABLE;
        if (l->n < 16)
                l->gpa[l->n] = gpa, l->len[l->n] = len;
        l->n++;
        static uint8_t a[256u << 10], b[256u << 10];
        assert_true(len <= sizeof(a));
        assert_int_equal(vhm_vm_read(l->dst, gpa, a, len), 0);
        assert_int_equal(vhm_vm_read(l->src, gpa, b, len), 0);
        l->stale |= memcmp(a, b, len) != 0;
        return 0;
}

struct page_sender {
        struct vhm_stream *s;
        struct vhm_vm *vm;
        struct vhm_rec_vm_page pages[VHM_REC_MAX_PAGES_PER_BATCH];
        unsigned count;
        int rc;
        pthread_t th;
};

static void *send_pages_run(void *arg) {
        struct page_sender *x = arg;
        x->rc = vhm_stream_send_vm_pages(x->s, x->vm, x->pages, x->count);
        return NULL;
}

/* One region of 1 MiB at gpa 0; every page's words distinct. */
static struct vhm_vm *mib_vm(const char *name, bool fill) {
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new(name, &vm), 0);
        int fd = memfd_of(1 << 20);
        struct vhm_region_spec r = { fd, 0, 1 << 20, 0 };
        assert_int_equal(vhm_vm_add_region(vm, &r), 0);
        close(fd);
        for (uint64_t off = 0; fill && off < (1u << 20); off += 8) {
                uint64_t w = off * 0x9e3779b97f4a7c15ull + 1;
                assert_int_equal(vhm_vm_write(vm, off, &w, 8), 0);
        }
        return vm;
}

/*
 * The landed hook sees a PAGES record's data as it lands, in the record's
 * order: a run of 160 pages in pieces of 256 KiB at most, each zero page,
 * a gpa listed twice twice; every piece already holds the source's data
 * when the hook sees it.  A hook that fails fails the receive in words.
 */
static void landed_hook(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_vm *src = mib_vm("landed-src", true), *dst = mib_vm("landed-dst", false);
        static const uint8_t zero[4096];
        assert_int_equal(vhm_vm_write(src, 0xf0000, zero, sizeof(zero)), 0); /* sent as a zero page */
        struct vhm_rec_hello h;
        assert_int_equal(vhm_rec_hello_from_vm(src, &h), 0);
        for (unsigned round = 0; round < 2; round++) {
                struct pair p;
                pair_open(&p, TIMEOUT_MS);
                struct landed_log log = { .dst = dst, .src = src, .fail_at = round ? 1 : ~0u };
                vhm_stream_set_landed_hook(p.dst, log_landed, &log);
                char token[33];
                assert_int_equal(vhm_token_new(token), 0);
                S_CHECK(p.src, vhm_stream_send_hello(p.src, &h));
                S_CHECK(p.src, vhm_stream_send_auth(p.src, token));
                struct page_sender tx = { .s = p.src, .vm = src, .count = 163 };
                for (unsigned i = 0; i < 160; i++)
                        tx.pages[i] = (struct vhm_rec_vm_page){ (uint64_t) i * 4096u, false };
                tx.pages[160] = (struct vhm_rec_vm_page){ 0xf0000, true };
                tx.pages[161] = (struct vhm_rec_vm_page){ 0xf1000, false };
                tx.pages[162] = (struct vhm_rec_vm_page){ 0x1000, false }; /* listed twice */
                assert_int_equal(pthread_create(&tx.th, NULL, send_pages_run, &tx), 0);
                const void *pl;
                uint32_t len;
                struct vhm_rec_pages pg;
                assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_HELLO);
                assert_int_equal(vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg), VHM_REC_AUTH);
                int r = vhm_stream_recv_vm(p.dst, dst, &h, &pl, &len, &pg);
                if (round == 1) {
                        /* The second piece's hook fails: the receive fails with its error, in words. */
                        assert_int_equal(r, -ENOTRECOVERABLE);
                        assert_error_names(vhm_stream_error(p.dst), "landed hook");
                        assert_error_names(vhm_stream_error(p.dst), "0x40000");
                        vhm_stream_free(p.dst); /* a sender still writing fails, one done is done */
                        assert_int_equal(pthread_join(tx.th, NULL), 0);
                        vhm_stream_free(p.src);
                        break;
                }
                assert_int_equal(r, VHM_REC_PAGES);
                assert_int_equal(pthread_join(tx.th, NULL), 0);
                assert_int_equal(tx.rc, 0);
                const uint64_t want_gpa[] = { 0, 0x40000, 0x80000, 0xf0000, 0xf1000, 0x1000 };
                const size_t want_len[] = { 256u << 10, 256u << 10, 128u << 10, 4096, 4096, 4096 };
                assert_int_equal(log.n, 6);
                for (unsigned i = 0; i < 6; i++) {
                        assert_int_equal(log.gpa[i], want_gpa[i]);
                        assert_int_equal(log.len[i], want_len[i]);
                }
                assert_false(log.stale);
                pair_close(&p);
        }
        vhm_vm_free(src);
        vhm_vm_free(dst);
        assert_int_equal(count_open_fds(), before);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(table_is_complete),
                cmocka_unit_test(every_record_round_trips),
                cmocka_unit_test(hello_bounds),
                cmocka_unit_test(pages_bounds),
                cmocka_unit_test(device_bounds),
                cmocka_unit_test(small_record_bounds),
                cmocka_unit_test(blob_bounds),
                cmocka_unit_test(senders_check_records),
                cmocka_unit_test(order_is_enforced),
                cmocka_unit_test(optional_and_unknown_records),
                cmocka_unit_test(huge_lengths_are_refused_unread),
                cmocka_unit_test(truncated_and_garbage),
                cmocka_unit_test(stall_and_cancel),
                cmocka_unit_test(page_checksum_sees_every_word),
                cmocka_unit_test(page_checksum_implementations_agree),
                cmocka_unit_test(threaded_checksum_of_truncated_memory),
                cmocka_unit_test(checksum_and_pages_into_a_vm),
                cmocka_unit_test(vm_pages_in_place),
                cmocka_unit_test(vm_pages_of_truncated_memory),
                cmocka_unit_test(landed_hook),
                cmocka_unit_test(unix_transport),
                cmocka_unit_test(tcp_transport),
                cmocka_unit_test(bad_addresses),
                cmocka_unit_test(tokens),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
