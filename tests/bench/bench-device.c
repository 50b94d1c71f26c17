/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * bench-device: how long a device takes to start, and what one acknowledged
 * request costs, against DPDK testpmd.
 *
 * (a) Device start: from vhm_device_connect() (connect, negotiation) through
 *     vhm_device_start() returning (memory table, features, every ring set up
 *     and enabled, status), for 1 and 4 queue pairs; the median of N runs, one
 *     testpmd per queue-pair count, the device freed between runs.  A few
 *     untimed runs first: testpmd's first connections pay for allocations.
 * (b) Request round trip with REPLY_ACK on a negotiated connection: the median
 *     of many SET_VRING_ENABLE (rings running) and SET_VRING_NUM (rings
 *     stopped) requests, 12+8 bytes out and 12+8 bytes (the ack) back, against
 *     the floor: a raw ping-pong of the same 20 bytes each way over a Unix
 *     stream socket pair between this process and a forked child, measured in
 *     the same run, in blocks interleaved with the requests so that background
 *     load (testpmd's forwarding core busy-polls) hits both alike.
 *
 * Usage: bench-device [--quick] [--runs N] [--requests N]
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "migrate/device.h"
#include "migrate/vm.h"
#include "proto/vhost-user-frontend.h"
#include "tests/common/clock.h"
#include "tests/common/guest-device.h"
#include "tests/common/real-backends.h"
#include "daemon/guest/guest.h"

#define MAX_RUNS     1001
#define MAX_REQUESTS 1000000
#define BLOCK        500u /* requests per interleaved block */
#define MSG_BYTES    20u  /* 12-byte header + 8-byte payload */
#define WARMUP_RUNS  3u

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return (x > y) - (x < y);
}

/* Sorts v. */
static uint64_t percentile(uint64_t *v, unsigned n, unsigned pct) {
        qsort(v, n, sizeof(*v), cmp_u64);
        if (pct == 50)
                return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
        unsigned i = (unsigned) (((uint64_t) n * pct + 99) / 100);
        return v[i ? i - 1 : 0];
}

static void die(const char *what, int err) {
        fprintf(stderr, "bench-device: %s: %s\n", what, strerror(err < 0 ? -err : err));
        exit(1);
}

/* ---- keeping off testpmd's forwarding core ----------------------------------------- */

/*
 * testpmd, and this process off its forwarding core: sharing the CPU that
 * lcore busy-polls would cost a scheduler time slice per wake-up
 * (real-backends.h says more).  The echo child forked later inherits it.
 */
static void testpmd_up(struct real_backend *b, unsigned nqp) {
        int e = testpmd_cpus_restore();
        if (e < 0)
                die("sched_setaffinity", e);
        e = start_testpmd(b, nqp, 0);
        if (e < 0)
                die("start_testpmd", e);
        e = testpmd_cpus_avoid_worker();
        if (e < 0)
                die("sched_setaffinity", e);
}

/* ---- a guest and a device on testpmd ------------------------------------------- */

struct rig {
        struct vhm_guest *g;
        struct vhm_vm *vm;
        struct vhm_device *dev;
        unsigned nqp;
};

static void rig_init(struct rig *r, unsigned nqp) {
        memset(r, 0, sizeof(*r));
        r->nqp = nqp;
        struct vhm_guest_config gc = { .mem_size = 16u << 20, .queue_pairs = nqp };
        int e = guest_vm_new("bench", &gc, &r->g, &r->vm);
        if (e < 0)
                die(guest_device_error(), e);
}

static void device_new(struct rig *r, const char *socket) {
        struct vhm_device_config cfg = {
                .socket = socket,
                .features = vhm_guest_driver_features(),
                .queue_pairs = r->nqp,
        };
        int e = guest_device_new(r->vm, r->g, &cfg, &r->dev, NULL);
        if (e < 0)
                die(guest_device_error(), e);
}

static void device_check(struct rig *r, int e, const char *what) {
        if (e < 0) {
                fprintf(stderr, "bench-device: %s: %s (%s)\n", what, strerror(-e), vhm_device_error(r->dev));
                exit(1);
        }
}

static void rig_fini(struct rig *r) {
        vhm_device_free(r->dev);
        vhm_vm_free(r->vm);
        vhm_guest_free(r->g);
}

/* ---- (a) device start -------------------------------------------------------------- */

struct start_result {
        unsigned nqp, runs;
        uint64_t connect_med, total_med, total_min, total_max;
};

static struct start_result bench_start(unsigned nqp, unsigned runs) {
        struct real_backend b;
        testpmd_up(&b, nqp);
        struct rig r;
        rig_init(&r, nqp);
        static uint64_t total[MAX_RUNS], conn[MAX_RUNS];
        for (unsigned i = 0; i < WARMUP_RUNS + runs; i++) {
                device_new(&r, b.socket);
                uint64_t t0 = now_ns();
                device_check(&r, vhm_device_connect(r.dev), "vhm_device_connect");
                uint64_t t1 = now_ns();
                device_check(&r, vhm_device_start(r.dev), "vhm_device_start");
                uint64_t t2 = now_ns();
                if (i >= WARMUP_RUNS) {
                        conn[i - WARMUP_RUNS] = t1 - t0;
                        total[i - WARMUP_RUNS] = t2 - t0;
                }
                vhm_device_free(r.dev);
                r.dev = NULL;
        }
        rig_fini(&r);
        stop_backend(&b);

        struct start_result s = { .nqp = nqp, .runs = runs };
        s.connect_med = percentile(conn, runs, 50);
        s.total_med = percentile(total, runs, 50);
        s.total_min = total[0];
        s.total_max = total[runs - 1];
        return s;
}

/* ---- (b) round trips --------------------------------------------------------------- */

/* The other end of the raw ping-pong: echo MSG_BYTES at a time until EOF. */
static void echo_child(int fd) {
        uint8_t buf[MSG_BYTES];
        for (;;) {
                size_t got = 0;
                while (got < sizeof(buf)) {
                        ssize_t n = read(fd, buf + got, sizeof(buf) - got);
                        if (n <= 0)
                                _exit(n == 0 ? 0 : 1);
                        got += (size_t) n;
                }
                if (write(fd, buf, sizeof(buf)) != (ssize_t) sizeof(buf))
                        _exit(1);
        }
}

static void raw_round_trip(int fd) {
        uint8_t msg[MSG_BYTES] = { 18, 0, 0, 0, 0x9, 0, 0, 0, 8, 0, 0, 0 };
        if (write(fd, msg, sizeof(msg)) != (ssize_t) sizeof(msg))
                die("raw write", errno);
        size_t got = 0;
        while (got < sizeof(msg)) {
                ssize_t n = read(fd, msg + got, sizeof(msg) - got);
                if (n <= 0)
                        die("raw read", n == 0 ? EPIPE : errno);
                got += (size_t) n;
        }
}

struct rtt_result {
        unsigned n;
        uint64_t enable_med, enable_p90, num_med, num_p90, raw_med, raw_p90;
};

enum request_kind {
        REQ_ENABLE,
        REQ_NUM
};

/*
 * n requests of one kind and n raw round trips, in interleaved blocks;
 * per-call latencies into req[] and raw[].
 */
static void measure(struct vhu_conn *c, enum request_kind kind, unsigned ring_size, int raw_fd, unsigned n,
                    uint64_t *req, uint64_t *raw) {
        for (unsigned done = 0; done < n; done += BLOCK) {
                unsigned m = n - done < BLOCK ? n - done : BLOCK;
                for (unsigned i = 0; i < m; i++) {
                        uint64_t t0 = now_ns();
                        int e = kind == REQ_ENABLE ? vhu_set_vring_enable(c, 0, true)
                                                   : vhu_set_vring_num(c, 0, ring_size);
                        uint64_t t1 = now_ns();
                        if (e < 0) {
                                fprintf(stderr, "bench-device: request: %s\n", vhu_conn_error(c));
                                exit(1);
                        }
                        req[done + i] = t1 - t0;
                }
                for (unsigned i = 0; i < m; i++) {
                        uint64_t t0 = now_ns();
                        raw_round_trip(raw_fd);
                        raw[done + i] = now_ns() - t0;
                }
        }
}

static struct rtt_result bench_rtt(unsigned n) {
        struct real_backend b;
        testpmd_up(&b, 1);
        struct rig r;
        rig_init(&r, 1);
        device_new(&r, b.socket);
        device_check(&r, vhm_device_connect(r.dev), "vhm_device_connect");
        device_check(&r, vhm_device_start(r.dev), "vhm_device_start");
        struct vhu_conn *c = vhm_device_conn(r.dev);
        if (!vhu_conn_has_protocol_feature(c, VHU_PF_REPLY_ACK)) {
                fprintf(stderr, "bench-device: testpmd did not negotiate REPLY_ACK\n");
                exit(1);
        }

        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                die("socketpair", errno);
        pid_t child = fork();
        if (child < 0)
                die("fork", errno);
        if (child == 0) {
                close(sv[0]);
                echo_child(sv[1]);
        }
        close(sv[1]);

        uint64_t *req = calloc(n, sizeof(*req));
        uint64_t *raw = calloc(2 * (size_t) n, sizeof(*raw));
        if (!req || !raw)
                die("calloc", ENOMEM);
        struct rtt_result res = { .n = n };
        unsigned ring_size = vhm_guest_ring_size(r.g);

        /* Warm-up of both paths. */
        measure(c, REQ_ENABLE, ring_size, sv[0], BLOCK, req, raw);

        /* Running rings: re-enabling an enabled ring changes nothing but is acknowledged. */
        measure(c, REQ_ENABLE, ring_size, sv[0], n, req, raw);
        res.enable_p90 = percentile(req, n, 90);
        res.enable_med = percentile(req, n, 50);

        /* Stopped rings: SET_VRING_NUM as a restart sends it, same size each time. */
        device_check(&r, vhm_device_stop(r.dev), "vhm_device_stop");
        c = vhm_device_conn(r.dev);
        measure(c, REQ_NUM, ring_size, sv[0], n, req, raw + n);
        res.num_p90 = percentile(req, n, 90);
        res.num_med = percentile(req, n, 50);
        res.raw_p90 = percentile(raw, 2 * n, 90);
        res.raw_med = percentile(raw, 2 * n, 50);

        close(sv[0]);
        int status;
        waitpid(child, &status, 0);
        free(req);
        free(raw);
        rig_fini(&r);
        stop_backend(&b);
        return res;
}

int main(int argc, char **argv) {
        bool quick = false;
        int runs = 21, requests = 20000;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--quick")) {
                        quick = true;
                        runs = 11;
                        requests = 2000;
                } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
                        runs = atoi(argv[++i]);
                } else if (!strcmp(argv[i], "--requests") && i + 1 < argc) {
                        requests = atoi(argv[++i]);
                } else {
                        fprintf(stderr, "usage: %s [--quick] [--runs N] [--requests N]\n", argv[0]);
                        return 2;
                }
        }
        if (runs < 1 || runs > MAX_RUNS - 1 || requests < 1 || requests > MAX_REQUESTS) {
                fprintf(stderr, "bench-device: runs 1..%d, requests 1..%d\n", MAX_RUNS - 1, MAX_REQUESTS);
                return 2;
        }
        if (!backend_available(TESTPMD_BIN)) {
                fprintf(stderr, "bench-device: %s is not installed\n", TESTPMD_BIN);
                return 1;
        }
        int e = testpmd_cpus_init();
        if (e < 0)
                die("sched_getaffinity", e);
        /* A child that dies must not take us with it through a write on its socket. */
        signal(SIGPIPE, SIG_IGN);

        printf("bench-device: DPDK testpmd (%s), %d runs per start figure, %d requests per round-trip figure%s\n\n",
               TESTPMD_BIN, runs, requests, quick ? " (--quick)" : "");

        struct start_result st[2];
        st[0] = bench_start(1, (unsigned) runs);
        st[1] = bench_start(4, (unsigned) runs);
        printf("Device start: vhm_device_connect (connect + negotiation) through vhm_device_start returning\n");
        printf("%-12s %14s %14s %12s %12s\n", "queue pairs", "connect (ms)", "total (ms)", "min (ms)", "max (ms)");
        for (unsigned i = 0; i < 2; i++)
                printf("%-12u %14.3f %14.3f %12.3f %12.3f\n", st[i].nqp, st[i].connect_med / 1e6, st[i].total_med / 1e6,
                       st[i].total_min / 1e6, st[i].total_max / 1e6);
        printf("(medians of %d runs; 4 vs 1 queue pairs: %.2fx)\n\n", runs,
               (double) st[1].total_med / (double) st[0].total_med);

        struct rtt_result rt = bench_rtt((unsigned) requests);
        printf("Request round trip with REPLY_ACK (12+8 bytes out, 12+8 back)\n");
        printf("%-44s %12s %12s %8s\n", "", "median (us)", "p90 (us)", "ratio");
        printf("%-44s %12.2f %12.2f %8.2f\n", "SET_VRING_ENABLE, testpmd, rings running", rt.enable_med / 1e3,
               rt.enable_p90 / 1e3, (double) rt.enable_med / (double) rt.raw_med);
        printf("%-44s %12.2f %12.2f %8.2f\n", "SET_VRING_NUM, testpmd, rings stopped", rt.num_med / 1e3,
               rt.num_p90 / 1e3, (double) rt.num_med / (double) rt.raw_med);
        printf("%-44s %12.2f %12.2f %8.2f\n", "raw Unix socket ping-pong, 20 B each way", rt.raw_med / 1e3,
               rt.raw_p90 / 1e3, 1.0);
        printf("(medians of %u requests each; ratio = median / raw median)\n", rt.n);
        return 0;
}
