/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: a migration source that sends anything.  The input is the
 * byte stream a destination receives (after a first byte of flags); a peer
 * thread writes it into a socket and closes it.  The destination's receive
 * loop parses HELLO, AUTH, PAGES, DEVICE, BACKEND_STATE and END against a
 * small VM (two sealed memfd regions: 64 KiB at 0, 32 KiB at 1 MiB), writes
 * pages through vhm_vm_write or, as the engine does, has the stream read
 * them in place (vhm_stream_recv_vm; the first byte's second bit picks),
 * assembles blobs, checks END's checksum and
 * answers COMMITTED or ABORTED, as vhostmigd's destination does.  Whatever
 * the bytes: no crash, no hang, no leaked fd or memory, and memory bounded
 * by the record table (a PAGES batch, a 16 MiB blob).
 *
 * fuzz_stream_one() returns how many records were accepted, plus
 * FUZZ_STREAM_COMMITTED when the stream was committed.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migrate/stream.h"
#include "migrate/transport.h"
#include "migrate/vm.h"
#include "tests/fuzz/fuzz.h"

#define TIMEOUT_MS  1000u
#define MAX_DEVICES 4u

static const char fuzz_token[] = "0123456789abcdef0123456789abcdef";

static const struct vhm_rec_region fuzz_layout[2] = {
        { 0, 64u << 10 },
        { 1u << 20, 32u << 10 },
};

struct peer {
        int fd;
        const uint8_t *data;
        size_t size;
};

static void *peer_main(void *arg) {
        struct peer *p = arg;
        size_t off = 0;
        while (off < p->size) {
                ssize_t n = send(p->fd, p->data + off, p->size - off, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break; /* the destination gave up and closed: fine */
                off += (size_t) n;
        }
        /* As a source does: wait for the answer, until the destination closes. */
        shutdown(p->fd, SHUT_WR);
        char answer[256];
        for (;;) {
                ssize_t n = read(p->fd, answer, sizeof(answer));
                if (n == 0 || (n < 0 && errno != EINTR))
                        break;
        }
        close(p->fd);
        return NULL;
}

static struct vhm_vm *fuzz_vm(void) {
        struct vhm_vm *vm;
        if (vhm_vm_new("fuzz-dst", &vm) < 0)
                return NULL;
        for (unsigned i = 0; i < 2; i++) {
                int fd = memfd_create("fuzz-stream", MFD_CLOEXEC | MFD_ALLOW_SEALING);
                bool ok = fd >= 0 && ftruncate(fd, (off_t) fuzz_layout[i].size) == 0 &&
                          fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0;
                struct vhm_region_spec spec = { fd, fuzz_layout[i].gpa, fuzz_layout[i].size, 0 };
                ok = ok && vhm_vm_add_region(vm, &spec) == 0;
                if (fd >= 0)
                        close(fd);
                if (!ok) {
                        vhm_vm_free(vm);
                        return NULL;
                }
        }
        return vm;
}

/* What the destination knows between records. */
struct dest {
        struct vhm_vm *vm;
        struct vhm_rec_hello layout;
        struct vhm_rec_blob blob;
        bool strict_token;
        bool in_place;               /* PAGES through vhm_stream_recv_vm once HELLO is in */
        bool have_layout;            /* HELLO decoded and matching */
        struct vhm_rec_pages landed; /* the batch vhm_stream_recv_vm wrote (count 0: none) */
        bool device_seen[MAX_DEVICES];
        uint64_t pages;
        char err[512];
};

static int on_device(struct dest *d, const void *p, uint32_t len) {
        struct vhm_rec_device dev;
        int r = vhm_rec_decode_device(p, len, &dev, d->err, sizeof(d->err));
        if (r < 0)
                return r;
        if (dev.index >= MAX_DEVICES || d->device_seen[dev.index]) {
                snprintf(d->err, sizeof(d->err), "DEVICE %u: unknown or repeated", dev.index);
                return -EBADMSG;
        }
        d->device_seen[dev.index] = true;
        return 0;
}

static int on_backend_state(struct dest *d, const void *p, uint32_t len) {
        uint32_t index, clen;
        const void *chunk;
        int r = vhm_rec_decode_backend_state(p, len, &index, &chunk, &clen, d->err, sizeof(d->err));
        if (r < 0)
                return r;
        r = vhm_rec_blob_append(&d->blob, index, chunk, clen, d->err, sizeof(d->err));
        if (r < 0 || !d->blob.complete)
                return r;
        /* Complete: a destination hands it to the back-end; here it is dropped and the next may start. */
        vhm_rec_blob_free(&d->blob);
        return 0;
}

static int on_end(struct dest *d, const void *p, uint32_t len) {
        struct vhm_rec_end end;
        uint64_t sum;
        int r = vhm_rec_decode_end(p, len, &end, d->err, sizeof(d->err));
        if (r < 0)
                return r;
        if (d->blob.started) {
                snprintf(d->err, sizeof(d->err), "END: device %u's BACKEND_STATE is incomplete", d->blob.index);
                return -EBADMSG;
        }
        r = vhm_memory_checksum(d->vm, &sum);
        if (r < 0 || sum != end.checksum || end.pages != d->pages) {
                snprintf(d->err, sizeof(d->err), "END: the memory image differs from the source's");
                return -EBADMSG;
        }
        return 0;
}

/* One record; 1 when the stream is complete. */
static int on_record(struct dest *d, int type, const void *p, uint32_t len) {
        char token[VHM_REC_TOKEN_LEN + 1];
        struct vhm_rec_pages pg;
        int r;
        switch (type) {
        case VHM_REC_HELLO:
                r = vhm_rec_decode_hello(p, len, &d->layout, d->err, sizeof(d->err));
                if (r == 0)
                        r = vhm_rec_hello_matches_vm(&d->layout, d->vm, d->err, sizeof(d->err));
                d->have_layout = r == 0;
                return r;
        case VHM_REC_AUTH:
                r = vhm_rec_decode_auth(p, len, token, d->err, sizeof(d->err));
                if (r == 0 && d->strict_token && !vhm_token_equal(token, fuzz_token))
                        r = -EACCES;
                return r;
        case VHM_REC_PAGES:
                if (d->landed.count) {
                        d->pages += d->landed.count;
                        return 0;
                }
                r = vhm_rec_decode_pages(p, len, &d->layout, &pg, d->err, sizeof(d->err));
                if (r == 0)
                        r = vhm_rec_pages_write(&pg, d->vm, d->err, sizeof(d->err));
                d->pages += r == 0 ? pg.count : 0;
                return r;
        case VHM_REC_DEVICE:
                return on_device(d, p, len);
        case VHM_REC_BACKEND_STATE:
                return on_backend_state(d, p, len);
        case VHM_REC_END:
                r = on_end(d, p, len);
                return r < 0 ? r : 1;
        default:
                /* The stream's order rules let no destination's record through. */
                abort();
        }
}

int fuzz_stream_one(const uint8_t *data, size_t size) {
        struct dest d = { .strict_token = size > 0 && (data[0] & 1), .in_place = size > 0 && (data[0] & 2) };
        int sv[2], accepted = 0;
        if (size > 0)
                data++, size--;
        d.vm = fuzz_vm();
        if (!d.vm)
                abort();
        vhm_rec_blob_init(&d.blob);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                abort();
        struct peer peer = { sv[1], data, size };
        pthread_t thread;
        if (pthread_create(&thread, NULL, peer_main, &peer) != 0)
                abort();
        struct vhm_stream *s;
        if (vhm_stream_new(sv[0], TIMEOUT_MS, &s) < 0)
                abort();
        for (;;) {
                const void *p;
                uint32_t len;
                d.landed.count = 0;
                int type = d.in_place && d.have_layout ? vhm_stream_recv_vm(s, d.vm, &d.layout, &p, &len, &d.landed)
                                                       : vhm_stream_recv(s, &p, &len);
                if (type < 0) {
                        vhm_stream_send_aborted(s, vhm_stream_error(s));
                        break;
                }
                int r = on_record(&d, type, p, len);
                if (r < 0) {
                        vhm_stream_send_aborted(s, d.err);
                        break;
                }
                accepted++;
                if (r == 1) {
                        if (vhm_stream_send_committed(s) == 0)
                                accepted += FUZZ_STREAM_COMMITTED;
                        break;
                }
        }
        /* Closing our end unblocks a peer still writing. */
        vhm_stream_free(s);
        pthread_join(thread, NULL);
        vhm_rec_blob_free(&d.blob);
        vhm_vm_free(d.vm);
        return accepted;
}

/* ---- a well-behaved source's stream, for the smoke test's seeds ---- */

struct out {
        uint8_t *buf;
        size_t len, cap;
};

static void emit(struct out *o, uint16_t type, const void *payload, uint32_t len) {
        if (o->len + VHM_REC_HDR_SIZE + len > o->cap)
                return;
        uint16_t t = htole16(type), f = 0;
        uint32_t l = htole32(len);
        memcpy(o->buf + o->len, &t, 2);
        memcpy(o->buf + o->len + 2, &f, 2);
        memcpy(o->buf + o->len + 4, &l, 4);
        if (len)
                memcpy(o->buf + o->len + 8, payload, len);
        o->len += VHM_REC_HDR_SIZE + len;
}

static uint64_t next(uint64_t *x) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        return *x;
}

static void emit_pages(struct out *o, uint64_t *seed, uint8_t *image, unsigned npages, uint64_t *sent) {
        static uint8_t rec[4 + 8 * 8 + 4096 * 8];
        unsigned count = 1 + (unsigned) (next(seed) % 8);
        uint32_t c = htole32(count);
        memcpy(rec, &c, 4);
        for (unsigned i = 0; i < count; i++) {
                unsigned page = (unsigned) (next(seed) % npages);
                uint64_t gpa = page < 16 ? 0x1000u * page : (1u << 20) + 0x1000u * (page - 16);
                bool zero = next(seed) % 3 == 0;
                uint64_t e = htole64(gpa | (zero ? VHM_REC_PAGE_ZERO : 0));
                memcpy(rec + 4 + 8 * i, &e, 8);
                uint8_t *dst = image + 4096u * page;
                if (zero) {
                        memset(dst, 0, 4096);
                        continue;
                }
                memset(dst, (int) (next(seed) & 0xff), 4096);
                dst[next(seed) % 4096] ^= 0x5a;
        }
        /* Data in entry order, taken from the image after the whole batch (a page may repeat: the last copy wins). */
        size_t off = 4 + 8u * count;
        for (unsigned i = 0; i < count; i++) {
                uint64_t e;
                memcpy(&e, rec + 4 + 8 * i, 8);
                e = le64toh(e);
                if (e & VHM_REC_PAGE_ZERO)
                        continue;
                uint64_t gpa = e & ~(uint64_t) VHM_REC_PAGE_FLAGS_MASK;
                unsigned page = gpa < (1u << 20) ? (unsigned) (gpa / 4096)
                                                 : 16 + (unsigned) ((gpa - (1u << 20)) / 4096);
                memcpy(rec + off, image + 4096u * page, 4096);
                off += 4096;
        }
        emit(o, VHM_REC_PAGES, rec, (uint32_t) off);
        *sent += count;
}

size_t fuzz_stream_sample(uint8_t *buf, size_t cap, uint64_t seed) {
        enum {
                NPAGES = 24
        };
        static uint8_t image[NPAGES * 4096];
        struct out o = { buf, 0, cap };
        if (cap < 1)
                return 0;
        seed |= 1;
        memset(image, 0, sizeof(image));
        buf[0] = 1; /* the token is checked */
        o.len = 1;

        struct vhm_rec_hello h = {
                .version = VHM_REC_VERSION, .role = VHM_REC_ROLE_SOURCE, .page_size = VHM_REC_PAGE_SIZE, .nregions = 2
        };
        snprintf(h.vm_name, sizeof(h.vm_name), "fuzz-src");
        memcpy(h.regions, fuzz_layout, sizeof(fuzz_layout));
        uint8_t rec[VHM_REC_HELLO_MAX_LEN + VHM_REC_DEVICE_MAX_LEN];
        emit(&o, VHM_REC_HELLO, rec, (uint32_t) vhm_rec_encode_hello(&h, rec, sizeof(rec)));
        emit(&o, VHM_REC_AUTH, fuzz_token, VHM_REC_TOKEN_LEN);

        uint64_t sent = 0;
        unsigned batches = 1 + (unsigned) (next(&seed) % 3);
        for (unsigned i = 0; i < batches; i++)
                emit_pages(&o, &seed, image, NPAGES, &sent);

        unsigned ndev = 1 + (unsigned) (next(&seed) % 2);
        for (unsigned i = 0; i < ndev; i++) {
                struct vhm_rec_device dev = { .index = i,
                                              .features = next(&seed) & ~(UINT64_C(1) << 34),
                                              .queue_pairs = 1 + (uint32_t) (next(&seed) % 4),
                                              .mtu = 1500 };
                dev.nrings = 2 * dev.queue_pairs;
                for (uint32_t k = 0; k < dev.nrings; k++)
                        dev.rings[k] = (struct vhm_rec_ring){ 256,    0x4000, 0x5000,
                                                              0x6000, 1,      (uint32_t) (next(&seed) & 0xffff) };
                emit(&o, VHM_REC_DEVICE, rec, (uint32_t) vhm_rec_encode_device(&dev, rec, sizeof(rec)));
                /* A blob of a few bytes in one or two chunks, then its end. */
                uint8_t chunk[4 + 64];
                uint32_t idx = htole32(i);
                memcpy(chunk, &idx, 4);
                memset(chunk + 4, 0x33, 64);
                unsigned nchunks = (unsigned) (next(&seed) % 3);
                for (unsigned k = 0; k < nchunks; k++)
                        emit(&o, VHM_REC_BACKEND_STATE, chunk, 4 + (uint32_t) (next(&seed) % 65));
                emit(&o, VHM_REC_BACKEND_STATE, chunk, 4);
        }

        /* The image covers the whole VM (16 + 8 pages), region 0 first: the destination's checksum. */
        struct vhm_rec_end end = { .pages = sent,
                                   .checksum = vhm_checksum_update(VHM_CHECKSUM_INIT, image, sizeof(image)) };
        emit(&o, VHM_REC_END, rec, (uint32_t) vhm_rec_encode_end(&end, rec, sizeof(rec)));
        return o.len;
}
