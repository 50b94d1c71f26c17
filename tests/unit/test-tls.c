/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * TLS between hosts (migrate/tls.c through vhm_stream_secure): records both
 * ways over loopback TCP, nothing of the token on the wire, a wrong token
 * refused on both ends in words, silent, garbage-sending and plain peers
 * failing within the bound, cancel in the handshake, Unix sockets plain and
 * their peers checked by uid; sealed records gathered and flushed, read in
 * place and by copy.  No fd is left open.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "migrate/stream.h"
#include "migrate/tls.h"
#include "migrate/transport.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"
#include "tests/common/fd-count.h"

#define TIMEOUT_MS 3000u
#define SHORT_MS   300u

static const char TOKEN[] = "00112233445566778899aabbccddeeff";
static const char OTHER[] = "00112233445566778899aabbccddeef0";

/* A connected loopback TCP pair: c (the source's end) and a (the destination's). */
static void tcp_pair(int *c, int *a) {
        char bound[VHM_TRANSPORT_ADDRESS_MAX];
        int lfd;
        assert_int_equal(vhm_transport_listen("tcp:127.0.0.1:0", &lfd, bound, sizeof(bound)), 0);
        uint64_t deadline = vhu_now_usec() + 2000000u;
        assert_int_equal(vhm_transport_connect(bound, deadline, -1, c), 0);
        assert_int_equal(vhm_transport_accept(lfd, deadline, -1, a), 0);
        vhm_transport_listen_close(lfd, bound);
}

/* One end's handshake, run on a thread so that both ends can run at once. */
struct side {
        int fd;
        bool server;
        const char *token, *id;
        unsigned timeout_ms;
        int cancel_fd;
        struct vhm_stream *s;
        int rc;
        char err[512];
        uint64_t took_usec;
        pthread_t th;
};

static void *side_run(void *arg) {
        struct side *x = arg;
        uint64_t t0 = vhu_now_usec();
        x->rc = vhm_stream_new(x->fd, x->timeout_ms, &x->s);
        if (x->rc == 0) {
                if (x->cancel_fd >= 0)
                        vhm_stream_set_cancel_fd(x->s, x->cancel_fd);
                x->rc = vhm_stream_secure(x->s, x->server, x->token, x->id);
                snprintf(x->err, sizeof(x->err), "%s", vhm_stream_error(x->s));
        }
        x->took_usec = vhu_now_usec() - t0;
        return NULL;
}

static void side_start(struct side *x, int fd, bool server, const char *token, unsigned timeout_ms) {
        *x = (struct side){ .fd = fd, .server = server, .token = token, .timeout_ms = timeout_ms, .cancel_fd = -1 };
}

static void side_spawn(struct side *x) {
        assert_int_equal(pthread_create(&x->th, NULL, side_run, x), 0);
}

static void side_join(struct side *x) {
        assert_int_equal(pthread_join(x->th, NULL), 0);
}

static void assert_err(const struct side *x, int rc, const char *words) {
        if (x->rc != rc || !strstr(x->err, words))
                fail_msg("%s: got %d \"%s\", wanted %d \"%s\"", x->server ? "server" : "client", x->rc, x->err, rc,
                         words);
}

static struct vhm_rec_hello sample_hello(void) {
        struct vhm_rec_hello h = { .version = VHM_REC_VERSION, .role = VHM_REC_ROLE_SOURCE, .page_size = 4096 };
        snprintf(h.vm_name, sizeof(h.vm_name), "vm-tls");
        h.nregions = 1;
        h.regions[0] = (struct vhm_rec_region){ .gpa = 0, .size = 1u << 20 };
        return h;
}

static void handshake_pair(struct side *cl, struct side *sv, const char *ctoken, const char *stoken) {
        int c, a;
        tcp_pair(&c, &a);
        side_start(cl, c, false, ctoken, TIMEOUT_MS);
        side_start(sv, a, true, stoken, TIMEOUT_MS);
        cl->id = "mig-test-1";
        side_spawn(sv);
        side_spawn(cl);
        side_join(sv);
        side_join(cl);
}

static void records_both_ways(void **state) {
        (void) state;
        int before = count_open_fds();
        struct side cl, sv;
        handshake_pair(&cl, &sv, TOKEN, TOKEN);
        assert_int_equal(cl.rc, 0);
        assert_int_equal(sv.rc, 0);
        assert_true(vhm_stream_is_tls(cl.s) && vhm_stream_is_tls(sv.s));

        /* Source to destination: HELLO, AUTH, a full batch of pages (larger than a TLS record), END. */
        struct vhm_rec_hello h = sample_hello();
        assert_int_equal(vhm_stream_send_hello(cl.s, &h), 0);
        assert_int_equal(vhm_stream_send_auth(cl.s, TOKEN), 0);
        static uint8_t data[VHM_REC_MAX_PAGES_PER_BATCH][4096];
        struct vhm_rec_page pages[VHM_REC_MAX_PAGES_PER_BATCH];
        for (unsigned i = 0; i < VHM_REC_MAX_PAGES_PER_BATCH; i++) {
                memset(data[i], (int) (i % 251) + 1, sizeof(data[i]));
                pages[i] = (struct vhm_rec_page){ .gpa = (uint64_t) i * 4096u, .data = data[i] };
        }
        assert_int_equal(vhm_stream_send_pages(cl.s, pages, VHM_REC_MAX_PAGES_PER_BATCH, NULL), 0);

        const void *p;
        uint32_t len;
        assert_int_equal(vhm_stream_recv(sv.s, &p, &len), VHM_REC_HELLO);
        assert_int_equal(vhm_stream_recv(sv.s, &p, &len), VHM_REC_AUTH);
        assert_int_equal(vhm_stream_recv(sv.s, &p, &len), VHM_REC_PAGES);
        struct vhm_rec_pages pg;
        char err[256];
        assert_int_equal(vhm_rec_decode_pages(p, len, &h, &pg, err, sizeof(err)), 0);
        assert_int_equal(pg.count, VHM_REC_MAX_PAGES_PER_BATCH);
        for (uint32_t i = 0; i < pg.count; i++) {
                uint64_t gpa;
                const void *d;
                vhm_rec_pages_get(&pg, i, &gpa, &d);
                assert_int_equal(gpa, (uint64_t) i * 4096u);
                assert_memory_equal(d, data[i], 4096);
        }
        /* And back: the destination's answer. */
        assert_int_equal(vhm_stream_send_committed(sv.s), 0);
        assert_int_equal(vhm_stream_recv(cl.s, &p, &len), VHM_REC_COMMITTED);

        /* A clean close reads as the peer closing, not as a cut. */
        vhm_stream_free(cl.s);
        assert_int_equal(vhm_stream_recv(sv.s, &p, &len), -ECONNRESET);
        assert_non_null(strstr(vhm_stream_error(sv.s), "closed"));
        vhm_stream_free(sv.s);
        assert_int_equal(count_open_fds(), before);
}

/* The sample layout as a VM: 1 MiB at 0 in a sealed memfd. */
static struct vhm_vm *sample_vm(const char *name) {
        int fd = memfd_create("tls-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 1 << 20), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new(name, &vm), 0);
        struct vhm_region_spec spec = { fd, 0, 1 << 20, 0 };
        assert_int_equal(vhm_vm_add_region(vm, &spec), 0);
        close(fd);
        return vm;
}

/*
 * Guest pages over TLS (vhm_stream_send_vm_pages: staged through the guard
 * for GnuTLS; vhm_stream_recv_vm: decrypted, then written in): two full
 * batches, one all data (a run longer than a TLS record), one mixed with
 * zero pages and a gpa listed twice; the same image at both ends.
 */
/* The landed hook over TLS: whole pages, at most 256 KiB a call; what it was handed in all. */
struct landed_sum {
        uint64_t bytes;
        bool misshapen;
};

static int sum_landed(uint64_t gpa, size_t len, void *arg) {
        struct landed_sum *l = arg;
        l->misshapen |= gpa % 4096 || len % 4096 || len == 0 || len > (256u << 10);
        l->bytes += len;
        return 0;
}

static void vm_pages_over_tls(void **state) {
        (void) state;
        int before = count_open_fds();
        struct side cl, sv;
        handshake_pair(&cl, &sv, TOKEN, TOKEN);
        assert_int_equal(cl.rc, 0);
        assert_int_equal(sv.rc, 0);
        struct vhm_vm *src = sample_vm("src"), *dst = sample_vm("dst");
        static uint8_t page[4096];
        for (unsigned i = 0; i < 256; i++) {
                memset(page, i % 5 ? (int) (i % 251) + 1 : 0, sizeof(page));
                assert_int_equal(vhm_vm_write(src, (uint64_t) i * 4096u, page, sizeof(page)), 0);
        }
        memset(page, 0xee, sizeof(page));
        assert_int_equal(vhm_vm_write(dst, 0, page, sizeof(page)), 0);
        struct vhm_rec_vm_page pages[VHM_REC_MAX_PAGES_PER_BATCH];
        for (unsigned i = 0; i < VHM_REC_MAX_PAGES_PER_BATCH; i++)
                pages[i] = (struct vhm_rec_vm_page){ (uint64_t) i * 4096u, false }; /* zero pages as data too */
        struct vhm_rec_hello h = sample_hello();
        assert_int_equal(vhm_stream_send_hello(cl.s, &h), 0);
        assert_int_equal(vhm_stream_send_auth(cl.s, TOKEN), 0);
        assert_int_equal(vhm_stream_send_vm_pages(cl.s, src, pages, VHM_REC_MAX_PAGES_PER_BATCH), 0);
        for (unsigned i = 0; i < VHM_REC_MAX_PAGES_PER_BATCH; i++)
                pages[i] = (struct vhm_rec_vm_page){ (uint64_t) i * 4096u, i % 5 == 0 };
        pages[7] = (struct vhm_rec_vm_page){ 0, false }; /* page 0 again, with its (zero) data */
        assert_int_equal(vhm_stream_send_vm_pages(cl.s, src, pages, VHM_REC_MAX_PAGES_PER_BATCH), 0);
        const void *p;
        uint32_t len;
        struct vhm_rec_pages pg;
        assert_int_equal(vhm_stream_recv_vm(sv.s, dst, &h, &p, &len, &pg), VHM_REC_HELLO);
        assert_int_equal(vhm_stream_recv_vm(sv.s, dst, &h, &p, &len, &pg), VHM_REC_AUTH);
        struct landed_sum landed = { 0, false };
        vhm_stream_set_landed_hook(sv.s, sum_landed, &landed);
        assert_int_equal(vhm_stream_recv_vm(sv.s, dst, &h, &p, &len, &pg), VHM_REC_PAGES);
        assert_int_equal(pg.zero, 0);
        /* Every page of the record went to the hook as it landed, in whole pages. */
        assert_int_equal(landed.bytes, (uint64_t) VHM_REC_MAX_PAGES_PER_BATCH * 4096u);
        assert_false(landed.misshapen);
        assert_int_equal(vhm_stream_recv_vm(sv.s, dst, &h, &p, &len, &pg), VHM_REC_PAGES);
        assert_int_equal(pg.zero, 52); /* pages 0, 5, ..., 255 */
        page[0] = 1;
        assert_int_equal(vhm_vm_read(dst, 0, page, sizeof(page)), 0);
        assert_int_equal(page[0], 0);
        /* Page 7 was not sent (page 0 took its place): the rest of the image is the source's. */
        memset(page, 0, sizeof(page));
        assert_int_equal(vhm_vm_write(dst, 7 * 4096u, page, sizeof(page)), 0);
        assert_int_equal(vhm_vm_write(src, 7 * 4096u, page, sizeof(page)), 0);
        uint64_t a, b;
        assert_int_equal(vhm_memory_checksum(src, &a), 0);
        assert_int_equal(vhm_memory_checksum(dst, &b), 0);
        assert_int_equal(a, b);
        vhm_stream_free(cl.s);
        vhm_stream_free(sv.s);
        vhm_vm_free(src);
        vhm_vm_free(dst);
        assert_int_equal(count_open_fds(), before);
}

/* The server learns the client's migration id; the token never crosses the wire, the id does. */
/* A VM of 1 MiB in a tmpfs file (it cannot be sealed), cut to its first half; NULL when there is no /dev/shm. */
static struct vhm_vm *cut_vm(const char *name) {
        int fd = open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0)
                return NULL;
        assert_int_equal(ftruncate(fd, 1 << 20), 0);
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new(name, &vm), 0);
        struct vhm_region_spec spec = { fd, 0, 1 << 20, 0 };
        assert_int_equal(vhm_vm_add_region(vm, &spec), 0);
        assert_int_equal(ftruncate(fd, 1 << 19), 0);
        close(fd);
        return vm;
}

static void assert_names(const char *err, const char *words) {
        if (!strstr(err, words))
                fail_msg("\"%s\" does not name \"%s\"", err, words);
}

/*
 * Memory cut under a TLS stream: the source copies pages out a chunk at a
 * time and fails with -EIO naming the first chunk that is gone (after the
 * chunks before it went out); the destination writes decrypted pages in
 * place and fails with -EIO naming the page; no SIGBUS, nothing left open.
 */
static void vm_pages_over_tls_cut(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_vm *src = cut_vm("cut-src");
        if (!src)
                skip();
        struct vhm_vm *dst = cut_vm("cut-dst"), *whole = sample_vm("whole");
        assert_non_null(dst);
        struct vhm_rec_hello h = sample_hello();
        struct side cl, sv;
        handshake_pair(&cl, &sv, TOKEN, TOKEN);
        assert_int_equal(cl.rc, 0);
        assert_int_equal(sv.rc, 0);
        assert_int_equal(vhm_stream_send_hello(cl.s, &h), 0);
        assert_int_equal(vhm_stream_send_auth(cl.s, TOKEN), 0);
        /* 0x40000..0x7ffff are backed (four chunks), 0x80000 on are gone. */
        struct vhm_rec_vm_page pages[128];
        for (unsigned i = 0; i < 128; i++)
                pages[i] = (struct vhm_rec_vm_page){ 0x40000u + (uint64_t) i * 4096u, false };
        assert_int_equal(vhm_stream_send_vm_pages(cl.s, src, pages, 128), -EIO);
        assert_names(vhm_stream_error(cl.s), "no longer backed");
        assert_names(vhm_stream_error(cl.s), "0x80000");
        vhm_stream_free(cl.s);
        vhm_stream_free(sv.s);

        /* A sound source, a destination whose memory is gone past the cut. */
        handshake_pair(&cl, &sv, TOKEN, TOKEN);
        assert_int_equal(cl.rc, 0);
        assert_int_equal(sv.rc, 0);
        static uint8_t page[4096];
        memset(page, 0x5a, sizeof(page));
        assert_int_equal(vhm_vm_write(whole, 0x1000, page, sizeof(page)), 0);
        assert_int_equal(vhm_vm_write(whole, 0x90000, page, sizeof(page)), 0);
        struct vhm_rec_vm_page into[2] = { { 0x1000, false }, { 0x90000, false } };
        assert_int_equal(vhm_stream_send_hello(cl.s, &h), 0);
        assert_int_equal(vhm_stream_send_auth(cl.s, TOKEN), 0);
        assert_int_equal(vhm_stream_send_vm_pages(cl.s, whole, into, 2), 0);
        const void *p;
        uint32_t len;
        struct vhm_rec_pages pg;
        assert_int_equal(vhm_stream_recv_vm(sv.s, dst, &h, &p, &len, &pg), VHM_REC_HELLO);
        assert_int_equal(vhm_stream_recv_vm(sv.s, dst, &h, &p, &len, &pg), VHM_REC_AUTH);
        assert_int_equal(vhm_stream_recv_vm(sv.s, dst, &h, &p, &len, &pg), -EIO);
        assert_names(vhm_stream_error(sv.s), "no longer backed");
        assert_names(vhm_stream_error(sv.s), "0x90000");
        memset(page, 0, sizeof(page));
        assert_int_equal(vhm_vm_read(dst, 0x1000, page, sizeof(page)), 0);
        assert_int_equal(page[0], 0x5a); /* the page before the cut went in */
        vhm_stream_free(cl.s);
        vhm_stream_free(sv.s);
        vhm_vm_free(src);
        vhm_vm_free(dst);
        vhm_vm_free(whole);
        assert_int_equal(count_open_fds(), before);
}

struct raw_tls {
        int fd;
        enum vhm_tls_role role;
        const char *token, *id;
        struct vhm_tls *t;
        int rc;
        char err[256];
        pthread_t th;
};

static void *raw_tls_run(void *arg) {
        struct raw_tls *x = arg;
        x->rc = vhm_tls_handshake(x->fd, x->role, x->token, x->id, vhu_now_usec() + 500000u, -1, &x->t, x->err,
                                  sizeof(x->err));
        return NULL;
}

/* A client (naming itself id) and a server on a connected pair, their handshakes run at once; both must succeed. */
static void raw_handshake_pair(int c, int a, const char *id, struct raw_tls *sc, struct raw_tls *ss) {
        *sc = (struct raw_tls){ .fd = c, .role = VHM_TLS_CLIENT, .token = TOKEN, .id = id };
        *ss = (struct raw_tls){ .fd = a, .role = VHM_TLS_SERVER, .token = TOKEN };
        assert_int_equal(pthread_create(&ss->th, NULL, raw_tls_run, ss), 0);
        assert_int_equal(pthread_create(&sc->th, NULL, raw_tls_run, sc), 0);
        assert_int_equal(pthread_join(ss->th, NULL), 0);
        assert_int_equal(pthread_join(sc->th, NULL), 0);
        assert_int_equal(ss->rc, 0);
        assert_int_equal(sc->rc, 0);
}

static bool contains(const uint8_t *hay, size_t n, const void *needle, size_t k) {
        return memmem(hay, n, needle, k) != NULL;
}

static void identity_not_token(void **state) {
        (void) state;
        int before = count_open_fds();
        int c, a;
        tcp_pair(&c, &a);
        struct raw_tls cl = { .fd = c, .role = VHM_TLS_CLIENT, .token = TOKEN, .id = "mig-4242" };
        assert_int_equal(pthread_create(&cl.th, NULL, raw_tls_run, &cl), 0);
        /* Read the ClientHello as an eavesdropper would, then say nothing: the client gives up in time. */
        uint8_t hello[4096];
        size_t n = 0;
        struct pollfd pf = { .fd = a, .events = POLLIN };
        while (n < sizeof(hello) && poll(&pf, 1, 200) > 0) {
                ssize_t k = read(a, hello + n, sizeof(hello) - n);
                if (k <= 0)
                        break;
                n += (size_t) k;
        }
        assert_int_equal(pthread_join(cl.th, NULL), 0);
        assert_int_equal(cl.rc, -ETIMEDOUT);
        assert_non_null(strstr(cl.err, "TLS: handshake timed out"));
        assert_true(n > 100 && hello[0] == 0x16); /* a TLS handshake record */
        const uint8_t key[] = { 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff };
        assert_true(contains(hello, n, "mig-4242", 8));
        assert_false(contains(hello, n, TOKEN, 32));
        assert_false(contains(hello, n, key, sizeof(key)));
        close(a);
        close(c);

        /* A real pair: the server reports the id and what was negotiated. */
        tcp_pair(&c, &a);
        struct raw_tls sc, ss;
        raw_handshake_pair(c, a, "mig-77", &sc, &ss);
        assert_string_equal(vhm_tls_peer_id(ss.t), "mig-77");
        char desc[128];
        vhm_tls_describe(ss.t, desc, sizeof(desc));
        assert_string_equal(desc, "TLS1.3 ECDHE-PSK X25519 AES-128-GCM");
        vhm_tls_free(ss.t);
        vhm_tls_free(sc.t);
        close(a);
        close(c);
        assert_int_equal(count_open_fds(), before);
}

/* The byte at offset i of the stream the gather test sends. */
static uint8_t pattern(size_t i) {
        return (uint8_t) (i * 7u + (i >> 13));
}

/* The receiving end of the gather test: in place (peek, part of a record) and by copy, in turn. */
struct gather_rx {
        struct vhm_tls *t;
        int fd;
        size_t total, got;
        uint64_t deadline;
        bool bad_byte, pending_seen;
        pthread_t th;
};

static bool rx_wait(struct gather_rx *x) {
        struct pollfd p = { .fd = x->fd, .events = vhm_tls_events(x->t) };
        uint64_t now = vhu_now_usec();
        return now < x->deadline && poll(&p, 1, (int) ((x->deadline - now) / 1000u) + 1) > 0;
}

static void *gather_rx_run(void *arg) {
        struct gather_rx *x = arg;
        char err[256];
        uint8_t buf[7000];
        for (unsigned turn = 0; x->got < x->total; turn++) {
                const uint8_t *p = buf;
                ssize_t k;
                if (turn % 2) {
                        const void *q;
                        k = vhm_tls_peek(x->t, &q, err, sizeof(err));
                        p = q;
                        if (k > 1000) {
                                /* Part of the record: the rest stays in the session and counts as pending. */
                                k = 1000;
                                x->pending_seen |= vhm_tls_pending(x->t) > 0;
                        }
                } else {
                        k = vhm_tls_read(x->t, buf, sizeof(buf), err, sizeof(err));
                }
                if (k == -EAGAIN && rx_wait(x))
                        continue;
                if (k <= 0)
                        return NULL;
                for (ssize_t i = 0; i < k; i++)
                        x->bad_byte |= p[i] != pattern(x->got + (size_t) i);
                if (turn % 2)
                        vhm_tls_consume(x->t, (size_t) k);
                x->got += (size_t) k;
        }
        return NULL;
}

/* Writes data[from, to) in two pieces, the first a multiple of `unit` bytes, then flushes. */
static void write_flush(struct vhm_tls *t, int fd, const uint8_t *data, size_t from, size_t to, size_t unit) {
        char err[256];
        int r;
        while (from < to) {
                size_t first = (to - from) / 3 / unit * unit;
                struct iovec v[2] = { { (void *) (data + from), first },
                                      { (void *) (data + from + first), to - from - first } };
                ssize_t k = vhm_tls_writev(t, v, 2, err, sizeof(err));
                struct pollfd p = { .fd = fd, .events = vhm_tls_events(t) };
                if (k == -EAGAIN) {
                        assert_true(poll(&p, 1, 2000) > 0);
                        continue;
                }
                assert_true(k > 0);
                from += (size_t) k;
        }
        while ((r = vhm_tls_flush(t, err, sizeof(err))) == -EAGAIN) {
                struct pollfd p = { .fd = fd, .events = vhm_tls_events(t) };
                assert_true(poll(&p, 1, 2000) > 0);
        }
        assert_int_equal(r, 0);
}

/*
 * Sealed records gather before they go on the wire; a flush sends them all,
 * so everything written arrives, in order, once vhm_tls_flush() returned 0
 * (a record left in the gather buffer would never arrive).  Received in
 * place (vhm_tls_peek, a record taken in parts) and by copy, interleaved.
 */
static void gather_and_peek(void **state) {
        (void) state;
        int before = count_open_fds();
        int c, a;
        tcp_pair(&c, &a);
        struct raw_tls sc, ss;
        raw_handshake_pair(c, a, "mig-gather", &sc, &ss);

        /*
         * More than the gather buffer holds: pieces of odd sizes (records
         * staged), a flush; then whole records only (none staged, so the
         * flush has nothing but the gathered records to send), a flush.
         */
        enum {
                ODD = (250u << 10) + 5u,
                TOTAL = ODD + 40u * 16384u
        };
        uint8_t *data = malloc(TOTAL);
        assert_non_null(data);
        for (size_t i = 0; i < TOTAL; i++)
                data[i] = pattern(i);
        struct gather_rx rx = { .t = ss.t, .fd = a, .total = TOTAL, .deadline = vhu_now_usec() + 5000000u };
        assert_int_equal(pthread_create(&rx.th, NULL, gather_rx_run, &rx), 0);
        write_flush(sc.t, c, data, 0, ODD, 3);
        write_flush(sc.t, c, data, ODD, TOTAL, 16384);
        assert_int_equal(pthread_join(rx.th, NULL), 0);
        assert_int_equal(rx.got, TOTAL);
        assert_false(rx.bad_byte);
        assert_true(rx.pending_seen);
        free(data);
        vhm_tls_free(ss.t);
        vhm_tls_free(sc.t);
        close(a);
        close(c);
        assert_int_equal(count_open_fds(), before);
}

static void wrong_token(void **state) {
        (void) state;
        int before = count_open_fds();
        struct side cl, sv;
        handshake_pair(&cl, &sv, OTHER, TOKEN);
        assert_err(&sv, -EACCES, "TLS: the peer does not hold the token (illegal parameter)");
        assert_err(&cl, -EACCES, "TLS: the peer does not hold the token (illegal parameter)");
        /* Refused at once by the alert, not by a timeout. */
        assert_true(cl.took_usec < 1000000u && sv.took_usec < 1000000u);
        assert_false(vhm_stream_is_tls(cl.s) || vhm_stream_is_tls(sv.s));
        vhm_stream_free(cl.s);
        vhm_stream_free(sv.s);

        /* A token that is not 32 hex characters is refused before anything is sent. */
        int c, a;
        tcp_pair(&c, &a);
        struct vhm_stream *s;
        assert_int_equal(vhm_stream_new(c, TIMEOUT_MS, &s), 0);
        assert_int_equal(vhm_stream_secure(s, false, "not-a-token", NULL), -EINVAL);
        assert_non_null(strstr(vhm_stream_error(s), "32 hex"));
        vhm_stream_free(s);
        close(a);
        assert_int_equal(count_open_fds(), before);
}

/* One end against a raw peer that does `act` on its fd; the end must fail with rc and words, in time. */
static void against_raw(bool server, void (*act)(int fd), int rc, const char *words) {
        int c, a;
        tcp_pair(&c, &a);
        struct side x;
        side_start(&x, server ? a : c, server, TOKEN, SHORT_MS);
        side_spawn(&x);
        act(server ? c : a);
        side_join(&x);
        assert_err(&x, rc, words);
        assert_true(x.took_usec < 5u * SHORT_MS * 1000u);
        vhm_stream_free(x.s);
        close(server ? c : a);
}

static void act_silent(int fd) {
        (void) fd;
}

static void act_garbage(int fd) {
        uint8_t junk[512];
        for (size_t i = 0; i < sizeof(junk); i++)
                junk[i] = (uint8_t) (i * 37u + 11u);
        assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t) sizeof(junk));
}

static void act_http(int fd) {
        const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_int_equal(write(fd, req, sizeof(req) - 1), (ssize_t) sizeof(req) - 1);
}

/* A plain Migration I source: HELLO straight away, in clear. */
static void act_plain_records(int fd) {
        int dup_fd = dup(fd);
        struct vhm_stream *s;
        assert_int_equal(vhm_stream_new(dup_fd, SHORT_MS, &s), 0);
        struct vhm_rec_hello h = sample_hello();
        assert_int_equal(vhm_stream_send_hello(s, &h), 0);
        vhm_stream_free(s);
}

static void act_close(int fd) {
        shutdown(fd, SHUT_RDWR);
}

static void hostile_peers(void **state) {
        (void) state;
        int before = count_open_fds();
        against_raw(true, act_silent, -ETIMEDOUT, "TLS: handshake timed out");
        against_raw(false, act_silent, -ETIMEDOUT, "TLS: handshake timed out");
        against_raw(true, act_garbage, -EPROTO, "TLS: the peer does not speak TLS 1.3");
        against_raw(false, act_garbage, -EPROTO, "TLS: the peer does not speak TLS 1.3");
        against_raw(true, act_http, -EPROTO, "TLS: the peer does not speak TLS 1.3");
        against_raw(true, act_plain_records, -EPROTO, "TLS: the peer does not speak TLS 1.3");
        against_raw(true, act_close, -ECONNRESET, "TLS: the peer closed the connection");
        against_raw(false, act_close, -ECONNRESET, "TLS: the peer closed the connection");
        assert_int_equal(count_open_fds(), before);
}

/* A TLS source against a plain (Migration I) destination: both sides fail, neither hangs. */
static void tls_to_plain(void **state) {
        (void) state;
        int before = count_open_fds();
        int c, a;
        tcp_pair(&c, &a);
        struct side cl;
        side_start(&cl, c, false, TOKEN, SHORT_MS);
        side_spawn(&cl);
        struct vhm_stream *plain;
        assert_int_equal(vhm_stream_new(a, SHORT_MS, &plain), 0);
        const void *p;
        uint32_t len;
        assert_true(vhm_stream_recv(plain, &p, &len) < 0);
        vhm_stream_free(plain);
        side_join(&cl);
        assert_true(cl.rc == -ECONNRESET || cl.rc == -ETIMEDOUT);
        assert_non_null(strstr(cl.err, "TLS: "));
        vhm_stream_free(cl.s);
        assert_int_equal(count_open_fds(), before);
}

static void cancel_handshake(void **state) {
        (void) state;
        int before = count_open_fds();
        int c, a;
        tcp_pair(&c, &a);
        int efd = eventfd(0, EFD_CLOEXEC);
        assert_true(efd >= 0);
        struct side x;
        side_start(&x, a, true, TOKEN, 0); /* no timeout: only the cancel ends it */
        x.cancel_fd = efd;
        side_spawn(&x);
        usleep(100000);
        uint64_t one = 1;
        assert_int_equal(write(efd, &one, sizeof(one)), (ssize_t) sizeof(one));
        side_join(&x);
        assert_err(&x, -ECANCELED, "TLS: handshake cancelled");
        assert_true(x.took_usec < 2000000u);
        vhm_stream_free(x.s);
        close(c);

        /* The deadline of the stream bounds the handshake as well (a peer that never answers). */
        tcp_pair(&c, &a);
        struct vhm_stream *s;
        assert_int_equal(vhm_stream_new(c, 0, &s), 0);
        vhm_stream_set_deadline(s, vhu_now_usec() + 200000u);
        uint64_t t0 = vhu_now_usec();
        assert_int_equal(vhm_stream_secure(s, false, TOKEN, NULL), -ETIMEDOUT);
        assert_true(vhu_now_usec() - t0 < 2000000u);
        vhm_stream_free(s);
        close(a);
        close(efd);
        assert_int_equal(count_open_fds(), before);
}

/* unix: stays plain; a peer of another uid is dropped at accept. */
static void unix_plain_and_peer_uid(void **state) {
        (void) state;
        int before = count_open_fds();
        char dir[] = "/tmp/vhm-tls-XXXXXX", addr[256], bound[VHM_TRANSPORT_ADDRESS_MAX];
        assert_non_null(mkdtemp(dir));
        snprintf(addr, sizeof(addr), "unix:%s/mig.sock", dir);
        int lfd, c, a;
        assert_int_equal(vhm_transport_listen(addr, &lfd, bound, sizeof(bound)), 0);
        uint64_t deadline = vhu_now_usec() + 2000000u;
        assert_int_equal(vhm_transport_connect(addr, deadline, -1, &c), 0);
        assert_int_equal(vhm_transport_accept(lfd, deadline, -1, &a), 0);
        struct vhm_stream *sc, *sa;
        assert_int_equal(vhm_stream_new(c, TIMEOUT_MS, &sc), 0);
        assert_int_equal(vhm_stream_new(a, TIMEOUT_MS, &sa), 0);
        assert_int_equal(vhm_stream_secure(sc, false, TOKEN, NULL), 0);
        assert_int_equal(vhm_stream_secure(sa, true, TOKEN, NULL), 0);
        assert_false(vhm_stream_is_tls(sc) || vhm_stream_is_tls(sa));
        vhm_stream_free(sc);
        vhm_stream_free(sa);

        if (geteuid() == 0) {
                /* A child as nobody connects (the socket opened to it for the test): it is closed unheard. */
                assert_int_equal(chmod(addr + 5, 0666), 0);
                assert_int_equal(chmod(dir, 0755), 0);
                pid_t pid = fork();
                assert_true(pid >= 0);
                if (pid == 0) {
                        int fd;
                        if (setgid(65534) < 0 || setuid(65534) < 0)
                                _exit(2);
                        if (vhm_transport_connect(addr, vhu_now_usec() + 1000000u, -1, &fd) < 0)
                                _exit(3);
                        char b;
                        struct pollfd pf = { .fd = fd, .events = POLLIN };
                        /* Closed by the listener: EOF (0) well before 2 s. */
                        _exit(poll(&pf, 1, 2000) == 1 && read(fd, &b, 1) == 0 ? 0 : 4);
                }
                assert_int_equal(vhm_transport_accept(lfd, vhu_now_usec() + 500000u, -1, &a), -ETIMEDOUT);
                int status;
                assert_int_equal(waitpid(pid, &status, 0), pid);
                assert_true(WIFEXITED(status));
                assert_int_equal(WEXITSTATUS(status), 0);
        }
        vhm_transport_listen_close(lfd, bound);
        assert_int_equal(rmdir(dir), 0);
        assert_int_equal(count_open_fds(), before);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(records_both_ways),  cmocka_unit_test(vm_pages_over_tls),
                cmocka_unit_test(identity_not_token), cmocka_unit_test(wrong_token),
                cmocka_unit_test(hostile_peers),      cmocka_unit_test(tls_to_plain),
                cmocka_unit_test(cancel_handshake),   cmocka_unit_test(unix_plain_and_peer_uid),
                cmocka_unit_test(gather_and_peek),    cmocka_unit_test(vm_pages_over_tls_cut),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
