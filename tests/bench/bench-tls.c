/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * bench-tls: 1 GiB from a sender thread to a receiver thread over loopback
 * TCP three ways, interleaved, median of 5 runs each:
 *   raw TCP      send()/recv() of 1 MiB buffers (the baseline);
 *   plain stream the migration stream's records (1 MiB BACKEND_STATE), no TLS;
 *   TLS stream   the same records through vhm_stream_secure() (TLS 1.3,
 *                ECDHE-PSK, X25519, AES-128-GCM).
 * Prints GB/s (1e9 bytes) and the ratio of each to raw TCP, each end's
 * CPU seconds (medians) and the ratio they bound, and the CPU model.  Both ends share this machine's cores, as in a loopback test.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "migrate/stream.h"
#include "migrate/transport.h"
#include "proto/vhost-user-transport.h"

#define TOTAL (1ull << 30)
#define CHUNK (1u << 20)
#define RUNS  5u

static const char TOKEN[] = "0123456789abcdef0123456789abcdef";

enum mode {
        RAW,
        PLAIN,
        TLS,
        NMODES
};
static const char *const mode_name[NMODES] = { "raw TCP", "plain stream", "TLS stream" };

struct end {
        int fd;
        enum mode mode;
        int rc;
        double cpu; /* the thread's CPU seconds (user and system) */
        pthread_t th;
};

/* CPU seconds this thread ran: what a run costs whatever else shares the machine. */
static double thread_cpu(void) {
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int raw_send(int fd, const uint8_t *buf) {
        for (uint64_t sent = 0; sent < TOTAL;) {
                ssize_t w = send(fd, buf, CHUNK, MSG_NOSIGNAL);
                if (w < 0 && (errno == EAGAIN || errno == EINTR))
                        continue; /* the fd is blocking here; kept for safety */
                if (w < 0)
                        return -errno;
                sent += (uint64_t) w;
        }
        return 0;
}

static int raw_recv(int fd, uint8_t *buf) {
        for (uint64_t got = 0; got < TOTAL;) {
                ssize_t n = recv(fd, buf, CHUNK, 0);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        continue;
                if (n <= 0)
                        return n < 0 ? -errno : -ECONNRESET;
                got += (uint64_t) n;
        }
        return 0;
}

static int stream_open(struct end *e, bool server, struct vhm_stream **s) {
        int r = vhm_stream_new(e->fd, 10000, s);
        if (r < 0)
                return r;
        vhm_stream_set_mode(*s, VHM_STREAM_DEVICE_STATE);
        if (e->mode == TLS && (r = vhm_stream_secure(*s, server, TOKEN, "mig-bench")) < 0)
                fprintf(stderr, "bench-tls: %s\n", vhm_stream_error(*s));
        return r;
}

/* BACKEND_STATE records of 1 MiB (the device index, then the chunk): the stream's largest. */
static int stream_send(struct end *e, uint8_t *buf) {
        struct vhm_stream *s;
        int r = stream_open(e, false, &s);
        uint32_t index = 0;
        for (uint64_t sent = 0; r == 0 && sent < TOTAL; sent += CHUNK) {
                struct iovec v[2] = { { &index, sizeof(index) }, { buf, CHUNK } };
                r = vhm_stream_sendv(s, VHM_REC_BACKEND_STATE, v, 2);
        }
        if (r < 0)
                fprintf(stderr, "bench-tls: send: %s\n", vhm_stream_error(s));
        vhm_stream_free(s);
        return r;
}

static int stream_recv(struct end *e) {
        struct vhm_stream *s;
        int r = stream_open(e, true, &s);
        for (uint64_t got = 0; r == 0 && got < TOTAL;) {
                const void *p;
                uint32_t len;
                int t = vhm_stream_recv(s, &p, &len);
                if (t < 0)
                        r = t;
                else
                        got += len - sizeof(uint32_t);
        }
        if (r < 0)
                fprintf(stderr, "bench-tls: recv: %s\n", vhm_stream_error(s));
        vhm_stream_free(s);
        return r;
}

static void *receiver(void *arg) {
        struct end *e = arg;
        double c0 = thread_cpu();
        uint8_t *buf = malloc(CHUNK);
        e->rc = !buf ? -ENOMEM : e->mode == RAW ? raw_recv(e->fd, buf) : stream_recv(e);
        if (e->mode == RAW)
                close(e->fd);
        free(buf);
        e->cpu = thread_cpu() - c0;
        return NULL;
}

/* One GiB: its seconds, or a negative value on failure; cpu[0], cpu[1]: the sender's and the receiver's CPU seconds. */
static double run_once(enum mode mode, uint8_t *buf, double cpu[2]) {
        char bound[VHM_TRANSPORT_ADDRESS_MAX];
        int lfd, c, a;
        if (vhm_transport_listen("tcp:127.0.0.1:0", &lfd, bound, sizeof(bound)) < 0)
                return -1;
        uint64_t deadline = vhu_now_usec() + 2000000u;
        int r = vhm_transport_connect(bound, deadline, -1, &c);
        if (r == 0 && (r = vhm_transport_accept(lfd, deadline, -1, &a)) < 0)
                close(c);
        vhm_transport_listen_close(lfd, bound);
        if (r < 0)
                return -1;
        if (mode == RAW) {
                /* The baseline blocks, as a plain copy would (the transport's sockets do not). */
                (void) fcntl(c, F_SETFL, fcntl(c, F_GETFL) & ~O_NONBLOCK);
                (void) fcntl(a, F_SETFL, fcntl(a, F_GETFL) & ~O_NONBLOCK);
        }
        struct end rx = { .fd = a, .mode = mode };
        uint64_t t0 = vhu_now_usec();
        if (pthread_create(&rx.th, NULL, receiver, &rx) != 0) {
                close(a);
                close(c);
                return -1;
        }
        struct end tx = { .fd = c, .mode = mode };
        double c0 = thread_cpu();
        tx.rc = mode == RAW ? raw_send(c, buf) : stream_send(&tx, buf);
        if (mode == RAW)
                close(c);
        cpu[0] = thread_cpu() - c0;
        pthread_join(rx.th, NULL);
        cpu[1] = rx.cpu;
        double secs = (double) (vhu_now_usec() - t0) / 1e6;
        return tx.rc < 0 || rx.rc < 0 ? -1 : secs;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

static void print_cpu_model(void) {
        FILE *f = fopen("/proc/cpuinfo", "re");
        char line[256];
        while (f && fgets(line, sizeof(line), f))
                if (strncmp(line, "model name", 10) == 0) {
                        const char *colon = strchr(line, ':');
                        printf("CPU: %s", colon ? colon + 2 : line);
                        break;
                }
        if (f)
                fclose(f);
        printf("online CPUs: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
}

int main(int argc, char **argv) {
        /* --only tls: that mode alone (with raw TCP, the baseline), for a profile of it. */
        bool tls_only = argc == 3 && !strcmp(argv[1], "--only") && !strcmp(argv[2], "tls");
        if (argc > 1 && !tls_only) {
                fprintf(stderr, "usage: %s [--only tls]\n", argv[0]);
                return 2;
        }
        uint8_t *buf = malloc(CHUNK);
        if (!buf)
                return 1;
        /* Not zeros: nothing on the way may take a shortcut on them. */
        for (size_t i = 0; i < CHUNK; i++)
                buf[i] = (uint8_t) (i * 131u + 7u);
        double secs[NMODES][RUNS], cpu[NMODES][2][RUNS];
        for (unsigned run = 0; run < RUNS; run++)
                for (int m = 0; m < NMODES; m++) {
                        double c[2] = { 0, 0 };
                        secs[m][run] = tls_only && m == PLAIN ? 1 : run_once((enum mode) m, buf, c);
                        cpu[m][0][run] = c[0], cpu[m][1][run] = c[1];
                        if (secs[m][run] < 0) {
                                fprintf(stderr, "bench-tls: %s run %u failed\n", mode_name[m], run);
                                free(buf);
                                return 1;
                        }
                }
        free(buf);
        print_cpu_model();
        printf("1 GiB over loopback TCP, median of %u interleaved runs\n", RUNS);
        /*
         * CPU seconds per end as well: the wall clock moves with whatever
         * else runs here; the busier end bounds a copy where each end has a
         * CPU of its own, so raw's busier end over a mode's is its ratio there.
         */
        printf("%-14s %10s %10s %17s %8s\n", "", "GB/s", "x raw TCP", "CPU s send/recv", "bound");
        double gbs[NMODES], busy[NMODES];
        for (int m = 0; m < NMODES; m++) {
                qsort(secs[m], RUNS, sizeof(double), cmp_double);
                qsort(cpu[m][0], RUNS, sizeof(double), cmp_double);
                qsort(cpu[m][1], RUNS, sizeof(double), cmp_double);
                double cs = cpu[m][0][RUNS / 2], cr = cpu[m][1][RUNS / 2];
                busy[m] = cs > cr ? cs : cr;
                gbs[m] = (double) TOTAL / secs[m][RUNS / 2] / 1e9;
                printf("%-14s %10.2f %10.2f %8.3f/%-8.3f %8.2f\n", mode_name[m], gbs[m], gbs[m] / gbs[RAW], cs, cr,
                       busy[RAW] / busy[m]);
        }
        printf("TLS stream / plain stream: %.2f\n", gbs[TLS] / gbs[PLAIN]);
        return 0;
}
