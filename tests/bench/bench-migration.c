/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * bench-migration: a guest's memory through the migration engine
 * (migrate/migration.h), beside a raw copy of the same bytes over the same
 * transport in the same run.
 *
 * Two VMs of --mem MiB (default 1024) in sealed memfds; every page of the
 * source holds data (no zero page: the worst case for the stream).  For
 * unix: and tcp:127.0.0.1 (loopback; the engine runs TLS 1.3 there), the
 * median of --runs runs (default 3), interleaved, of:
 *   raw        write() of the source's memory into the socket, a reader
 *              thread discarding it: the transport's floor (plain TCP);
 *   stop-copy  vhm_migrate_to -> vhm_migrate_incoming (no devices): pages
 *              read through the guarded path, PAGES records, written through
 *              vhm_vm_write, both checksums, END, COMMITTED;
 *   pre-copy   the same live (dirty logging on, round 0, a round that finds
 *              nothing dirty, pre-switchover, the source's checksum of the
 *              whole memory at the switchover).
 * The destination runs on a second thread; both ends share this machine's
 * cores, as they would not across two hosts.
 *
 * Then the same guest under traffic: a writer thread (the guest's vCPU)
 * dirties --dirty-mbs MB/s (default 100) of pages spread over the guest,
 * marking the VMM dirty bitmap registered with vhm_logging_add_bitmap, and
 * pauses at pre-switchover (MigrateContinue); rounds, total time, downtime,
 * bytes, against a stop-and-copy of the same guest in the same run, over
 * unix:.
 *
 * Then the downtime of a VM with 2 devices x 4 queue pairs, from the pause
 * (vhm_migrate_to called, vCPUs paused) to the destination running with
 * SEND_RARP sent (vhm_migrate_incoming returned), median and p90 of
 * --downtime-runs runs (default 7) over a socketpair, with a guest of
 * --downtime-mem MiB (default 64; stop-and-copy moves it inside the
 * downtime).  Device 0 is on DPDK testpmd (source and destination on its two
 * vhost ports, restarted for every run); testpmd has no third and fourth
 * port, so device 1 is on the project's test back-end (one for each side).
 * Also the switchover alone: END received to running plus RARP (checksum
 * verified, 16 rings restored).
 *
 * The live case: pre-copy with both devices running (dirty logging through
 * both back-ends), from the pause (pre-switchover: no VMM dirty bitmap, so
 * stopping the rings is the pause) to the destination running with SEND_RARP
 * sent; the guest's size is out of the downtime.
 *
 * First the page hash alone (--hash-only: nothing else), each implementation
 * against the previous version's hash, in cache and from memory.
 *
 * Usage: bench-migration [--quick] [--mem MiB] [--runs N] [--downtime-runs N] [--downtime-mem MiB]
 *                        [--dirty-mbs MB/s] [--throughput-only] [--only unix|tcp] [--hash-only]
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <sys/eventfd.h>
#include <sys/socket.h>

#include "migrate/logging.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "migrate/transport.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"
#include "tests/backend/test-backend.h"
#include "tests/common/clock.h"
#include "tests/common/guest-device.h"
#include "tests/common/real-backends.h"

#define MiB      (UINT64_C(1) << 20)
#define MAX_RUNS 15
#define TOKEN    "00112233445566778899aabbccddeeff"

struct vm_mem {
        int fd;
        struct vhm_vm *vm;
        uint8_t *map;           /* the bench's own view, to fill and to copy raw */
        struct vhm_logging *lg; /* source: for pre-copy */
};

static int vm_mem_new(const char *name, uint64_t size, bool fill, struct vm_mem *m) {
        m->fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (m->fd < 0 || ftruncate(m->fd, (off_t) size) < 0 || fcntl(m->fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return -errno;
        m->map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
        if (m->map == MAP_FAILED)
                return -errno;
        /* Every page allocated up front: the first run must not pay the page faults for all. */
        for (uint64_t off = 0; off < size; off += 8) {
                uint64_t v = fill ? off * UINT64_C(0x9e3779b97f4a7c15) + 1 : 0;
                memcpy(m->map + off, &v, 8);
        }
        int r = vhm_vm_new(name, &m->vm);
        struct vhm_region_spec spec = { .fd = m->fd, .guest_phys_addr = 0, .size = size };
        return r < 0 ? r : vhm_vm_add_region(m->vm, &spec);
}

static void vm_mem_free(struct vm_mem *m, uint64_t size) {
        vhm_logging_free(m->lg);
        vhm_vm_free(m->vm);
        if (m->map && m->map != MAP_FAILED)
                munmap(m->map, size);
        if (m->fd >= 0)
                close(m->fd);
}

/* ---- the receiving end ------------------------------------------------------------ */

struct receiver {
        pthread_t thread;
        int listen_fd;
        bool migrate; /* else: raw, read and discard */
        struct vhm_vm *vm;
        struct vhm_migration_stats st;
        uint64_t bytes;
        uint64_t end_ns; /* vhm_migrate_incoming returned: running (and RARP sent) */
        double cpu;      /* the thread's CPU seconds (user and system) */
        int rc;
};

/* CPU seconds this thread ran: what a run costs whatever else the machine runs. */
static double thread_cpu(void) {
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* The last run_with()'s CPU seconds, sending and receiving end, and the process's page faults in it. */
static double last_cpu_src, last_cpu_dst, last_faults;

/* Page faults of the whole process so far (minor and major): first touches of guest memory show here. */
static double process_faults(void) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return (double) ru.ru_minflt + (double) ru.ru_majflt;
}

static void *receive_timed(struct receiver *rx, int fd);

static void *receive(void *arg) {
        struct receiver *rx = arg;
        double c0 = thread_cpu();
        int fd;
        rx->rc = vhm_transport_accept(rx->listen_fd, vhu_now_usec() + 10000000u, -1, &fd);
        if (rx->rc == 0)
                receive_timed(rx, fd);
        rx->cpu = thread_cpu() - c0;
        return NULL;
}

static void *receive_timed(struct receiver *rx, int fd) {
        if (rx->migrate) {
                rx->rc = vhm_migrate_incoming(rx->vm, NULL, 0, fd, TOKEN, 0, &rx->st);
                rx->end_ns = now_ns();
                return NULL;
        }
        int flags = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        static _Thread_local uint8_t buf[1 << 20];
        ssize_t k;
        while ((k = read(fd, buf, sizeof(buf))) > 0)
                rx->bytes += (uint64_t) k;
        close(fd);
        return NULL;
}

static int raw_send(int fd, const uint8_t *p, uint64_t size) {
        int flags = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        for (uint64_t off = 0; off < size;) {
                ssize_t k = write(fd, p + off, size - off > MiB ? MiB : size - off);
                if (k < 0 && errno != EINTR)
                        return -errno;
                if (k > 0)
                        off += (uint64_t) k;
        }
        return 0;
}

enum mode {
        RAW,
        STOP_COPY,
        PRE_COPY,
};

/*
 * One run: seconds, or a negative value on failure.  o: the source's options
 * (NULL: those of the mode); sst, dst_st, end_ns (may be NULL): what each end
 * reported and when the destination returned.
 */
static double run_with(const char *address, enum mode mode, struct vm_mem *src, struct vm_mem *dst, uint64_t size,
                       const struct vhm_migrate_options *o, struct vhm_migration_stats *sst,
                       struct vhm_migration_stats *dst_st, uint64_t *end_ns) {
        bool migrate = mode != RAW;
        char bound[VHM_TRANSPORT_ADDRESS_MAX];
        struct receiver rx = { .migrate = migrate, .vm = dst->vm };
        int r = vhm_transport_listen(address, &rx.listen_fd, bound, sizeof(bound));
        if (r < 0) {
                fprintf(stderr, "listen %s: %s\n", address, strerror(-r));
                return -1;
        }
        if (pthread_create(&rx.thread, NULL, receive, &rx) != 0) {
                vhm_transport_listen_close(rx.listen_fd, bound);
                return -1;
        }
        int fd = -1;
        uint64_t t0 = now_ns();
        double c0 = thread_cpu(), f0 = process_faults();
        r = vhm_transport_connect(bound, vhu_now_usec() + 10000000u, -1, &fd);
        struct vhm_migration_stats st;
        /*
         * Pre-copy: round 0, a round that finds nothing dirty, the switchover,
         * forced at the latest after those two: this measures throughput, not
         * convergence.
         */
        struct vhm_migrate_options mode_o = { .live = mode == PRE_COPY,
                                              .max_rounds = 2,
                                              .force_switchover = mode == PRE_COPY };
        if (r == 0 && migrate) {
                r = vhm_migrate_to(src->vm, src->lg, NULL, 0, fd, TOKEN, o ? o : &mode_o, &st);
        } else if (r == 0) {
                r = raw_send(fd, src->map, size);
                close(fd);
        }
        last_cpu_src = thread_cpu() - c0;
        pthread_join(rx.thread, NULL);
        double secs = (double) (now_ns() - t0) / 1e9;
        last_cpu_dst = rx.cpu;
        last_faults = process_faults() - f0;
        vhm_transport_listen_close(rx.listen_fd, bound);
        if (r < 0 || rx.rc < 0) {
                fprintf(stderr, "%s %s: %s / %s\n", address, migrate ? "migration" : "raw",
                        migrate ? st.error : strerror(-r), migrate ? rx.st.error : strerror(-rx.rc));
                return -1;
        }
        if (!migrate && rx.bytes != size)
                return -1;
        if (sst)
                *sst = st;
        if (dst_st)
                *dst_st = rx.st;
        if (end_ns)
                *end_ns = rx.end_ns;
        return secs;
}

static double run_once(const char *address, enum mode mode, struct vm_mem *src, struct vm_mem *dst, uint64_t size) {
        return run_with(address, mode, src, dst, size, NULL, NULL, NULL, NULL);
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

static double median(double *v, unsigned n) {
        qsort(v, n, sizeof(*v), cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/*
 * CPU seconds of each end (median), whatever else shares the machine; the
 * busier end bounds a pipelined copy where each end has its own CPU (two
 * hosts), so raw's busier end over the engine's is the ratio it would reach.
 */
static void print_cpu(const char *const names[2], double cpu[2][3][2], double faults[2][3], uint64_t mem_mib) {
        printf("\nCPU seconds per end (median): sending / receiving; bound = raw's busier end / the engine's\n");
        printf("%-18s %15s %15s %8s %15s %8s\n", "transport", "raw", "stop-copy", "bound", "pre-copy", "bound");
        for (unsigned a = 0; a < 2; a++) {
                double busy[3];
                for (unsigned m = 0; m < 3; m++)
                        busy[m] = cpu[a][m][0] > cpu[a][m][1] ? cpu[a][m][0] : cpu[a][m][1];
                printf("%-18s %7.3f/%-7.3f %7.3f/%-7.3f %8.2f %7.3f/%-7.3f %8.2f\n", names[a], cpu[a][RAW][0],
                       cpu[a][RAW][1], cpu[a][STOP_COPY][0], cpu[a][STOP_COPY][1], busy[RAW] / busy[STOP_COPY],
                       cpu[a][PRE_COPY][0], cpu[a][PRE_COPY][1], busy[RAW] / busy[PRE_COPY]);
        }
        printf("(%" PRIu64 " MiB each)\n", mem_mib);
        printf("page faults per run (median, the whole process): raw / stop-copy / pre-copy\n");
        for (unsigned a = 0; a < 2; a++)
                printf("%-18s %10.0f %10.0f %10.0f\n", names[a], faults[a][RAW], faults[a][STOP_COPY],
                       faults[a][PRE_COPY]);
}

/*
 * The source's checksum of the whole memory at a live switchover (inside the
 * downtime): one thread against one per CPU, the same value, medians.
 */
static int checksum_pass(struct vm_mem *src, uint64_t mem_mib, unsigned runs) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        unsigned n = cpus > 1 ? (unsigned) cpus : 1u;
        double one[MAX_RUNS], all[MAX_RUNS];
        for (unsigned i = 0; i < runs; i++) {
                uint64_t a, b, t0 = now_ns();
                int r = vhm_memory_checksum(src->vm, &a);
                uint64_t t1 = now_ns();
                if (r == 0)
                        r = vhm_memory_checksum_threads(src->vm, n, &b);
                uint64_t t2 = now_ns();
                if (r < 0 || a != b) {
                        fprintf(stderr, "checksum: %s\n", r < 0 ? strerror(-r) : "the threaded value differs");
                        return 1;
                }
                one[i] = (double) (t1 - t0) / 1e6;
                all[i] = (double) (t2 - t1) / 1e6;
        }
        double m1 = median(one, runs), mn = median(all, runs);
        printf("\nchecksum of the %" PRIu64
               " MiB guest (the live switchover's pass): 1 thread %.1f ms, %u threads %.1f ms"
               " (x%.2f)\n",
               mem_mib, m1, n, mn, m1 / mn);
        return 0;
}

/*
 * The page hash alone, each implementation against the version-2 hash (four
 * chains of 64-bit multiply-xor, copied here as the baseline): GB/s over a
 * 512 KiB buffer hashed again and again (in cache) and over --mem MiB hashed
 * once (from memory), medians of 5, thread CPU time.
 */
#define V2_PRIME UINT64_C(0x9e3779b97f4a7c15)
static uint64_t v2_mix(uint64_t h, uint64_t v) {
        h = (h ^ v) * V2_PRIME;
        return h ^ (h >> 29);
}
static uint64_t v2_page(const void *page, bool *zero, enum vhm_checksum_impl impl) {
        (void) impl;
        const uint8_t *p = page;
        uint64_t a = 1, b = 2, c = 3, d = 4, any = 0;
        for (unsigned i = 0; i < 512; i += 4) {
                uint64_t w[4];
                memcpy(w, p + 8u * i, sizeof(w));
                a = (a ^ w[0]) * V2_PRIME, b = (b ^ w[1]) * V2_PRIME;
                c = (c ^ w[2]) * V2_PRIME, d = (d ^ w[3]) * V2_PRIME;
                any |= w[0] | w[1] | w[2] | w[3];
        }
        if (zero)
                *zero = any == 0;
        return v2_mix(v2_mix(v2_mix(v2_mix(0, a), b), c), d);
}

typedef uint64_t (*page_hash_fn)(const void *, bool *, enum vhm_checksum_impl);

/* GB/s of one pass of `fn` over len bytes, `times` times; *sink keeps the work. */
static double hash_gbs(page_hash_fn fn, enum vhm_checksum_impl impl, const uint8_t *buf, size_t len, unsigned times,
                       uint64_t *sink) {
        struct timespec a, b;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
        for (unsigned t = 0; t < times; t++)
                for (size_t off = 0; off < len; off += 4096)
                        *sink += fn(buf + off, NULL, impl);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
        double s = (double) (b.tv_sec - a.tv_sec) + (double) (b.tv_nsec - a.tv_nsec) / 1e9;
        return (double) len * times / s / 1e9;
}

static int hash_bench(uint64_t mem_mib) {
        enum {
                RUNS = 5,
                CACHE = 512u << 10
        };
        size_t big = (size_t) mem_mib * MiB;
        uint8_t *buf = mmap(NULL, big, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (buf == MAP_FAILED)
                return 1;
        for (size_t i = 0; i < big; i += 8) {
                uint64_t w = i * V2_PRIME;
                memcpy(buf + i, &w, 8);
        }
        const struct {
                const char *name;
                page_hash_fn fn;
                enum vhm_checksum_impl impl;
        } h[] = { { "v2 (64-bit multiply chains)", v2_page, VHM_CHECKSUM_SCALAR },
                  { "v3 scalar", vhm_checksum_page_impl, VHM_CHECKSUM_SCALAR },
                  { "v3 SSE2", vhm_checksum_page_impl, VHM_CHECKSUM_SSE2 },
                  { "v3 AVX2 (if the CPU has it)", vhm_checksum_page_impl, VHM_CHECKSUM_AVX2 } };
        double in[4][RUNS], out[4][RUNS];
        uint64_t sink = 0;
        for (unsigned r = 0; r < RUNS; r++)
                for (unsigned k = 0; k < 4; k++) { /* interleaved: a change of load hits all alike */
                        in[k][r] = hash_gbs(h[k].fn, h[k].impl, buf, CACHE, 256, &sink);
                        out[k][r] = hash_gbs(h[k].fn, h[k].impl, buf, big, 1, &sink);
                }
        munmap(buf, big);
        double in0 = median(in[0], RUNS), out0 = median(out[0], RUNS);
        printf("\npage hash, GB/s (thread CPU time, median of %u; ratio to v2; sink %" PRIx64 "):\n", RUNS,
               sink & 0xff);
        printf("%-30s %10s %8s %12s %8s\n", "", "in cache", "ratio", "from memory", "ratio");
        for (unsigned k = 0; k < 4; k++) {
                double i = median(in[k], RUNS), o = median(out[k], RUNS);
                printf("%-30s %10.2f %8.2f %12.2f %8.2f\n", h[k].name, i, i / in0, o, o / out0);
        }
        return 0;
}

/* ---- the guest under traffic ----------------------------------------------------------- */

static void sleep_ns(uint64_t ns) {
        struct timespec ts = { (time_t) (ns / 1000000000u), (long) (ns % 1000000000u) };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* The guest's vCPU: dirties pages at a steady rate, marks each in the VMM bitmap, pauses when asked. */
struct writer {
        pthread_t thread;
        uint8_t *map;
        uint64_t *bitmap;
        uint64_t pages, per_ms, written;
        int pause_req, paused, stop; /* atomics */
};

static void *writer_run(void *arg) {
        struct writer *w = arg;
        uint64_t next = 0, t = now_ns();
        while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
                if (__atomic_load_n(&w->pause_req, __ATOMIC_ACQUIRE)) {
                        __atomic_store_n(&w->paused, 1, __ATOMIC_RELEASE);
                        continue;
                }
                for (uint64_t k = 0; k < w->per_ms; k++) {
                        /* A prime stride: the writes spread over the whole guest. */
                        next = (next + 7919) % w->pages;
                        uint64_t v = ++w->written;
                        memcpy(w->map + next * 4096 + (v % 512) * 8, &v, 8);
                        /* Written, then marked: a harvest that clears the bit reads the new data. */
                        __atomic_fetch_or(&w->bitmap[next / 64], UINT64_C(1) << (next % 64), __ATOMIC_RELEASE);
                }
                t += 1000000u;
                uint64_t now = now_ns();
                if (t > now)
                        sleep_ns(t - now);
                else if (now - t > 100000000u)
                        t = now; /* starved (2 shared CPUs): the rate restarts from now */
        }
        return NULL;
}

struct live_pause {
        struct writer *w;
        int continue_fd;
        uint64_t pause_ns;
};

/* pre-switchover: the vCPU stops, then the VMM says so (MigrateContinue); the downtime starts here. */
static void live_pause_progress(const struct vhm_migration_stats *st, void *opaque) {
        struct live_pause *lp = opaque;
        if (st->state != VHM_MIGRATION_PRE_SWITCHOVER || lp->pause_ns)
                return;
        __atomic_store_n(&lp->w->pause_req, 1, __ATOMIC_RELEASE);
        while (!__atomic_load_n(&lp->w->paused, __ATOMIC_ACQUIRE))
                sleep_ns(10000);
        lp->pause_ns = now_ns();
        uint64_t one = 1;
        if (write(lp->continue_fd, &one, sizeof(one)) != (ssize_t) sizeof(one))
                perror("continue");
}

static int bitmap_register(struct vm_mem *src, uint64_t size, uint64_t **bitmap, size_t *len) {
        *len = ((size / 4096 + 63) / 64) * 8;
        int fd = memfd_create("vmm-dirty", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, (off_t) *len) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return -errno;
        *bitmap = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        int r = *bitmap == MAP_FAILED ? -errno : vhm_logging_add_bitmap(src->lg, fd);
        close(fd);
        if (r < 0)
                fprintf(stderr, "dirty bitmap: %s\n", vhm_logging_error(src->lg));
        return r;
}

/* One live migration with the writer running: 0, or a negative errno. */
static int traffic_run(const char *address, struct vm_mem *src, struct vm_mem *dst, uint64_t size, uint64_t *bitmap,
                       uint64_t per_ms, double *secs, double *down_ms, struct vhm_migration_stats *st,
                       struct vhm_migration_stats *dst_st) {
        struct writer w = { .map = src->map, .bitmap = bitmap, .pages = size / 4096, .per_ms = per_ms };
        struct live_pause lp = { .w = &w, .continue_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
        if (lp.continue_fd < 0 || pthread_create(&w.thread, NULL, writer_run, &w) != 0)
                return -errno;
        struct vhm_migrate_options o = {
                .live = true, .continue_fd = lp.continue_fd, .progress = live_pause_progress, .opaque = &lp
        };
        uint64_t end_ns = 0;
        *secs = run_with(address, PRE_COPY, src, dst, size, &o, st, dst_st, &end_ns);
        __atomic_store_n(&w.stop, 1, __ATOMIC_RELEASE);
        pthread_join(w.thread, NULL);
        close(lp.continue_fd);
        if (*secs < 0 || !lp.pause_ns)
                return -EIO;
        *down_ms = (double) (end_ns - lp.pause_ns) / 1e6;
        return 0;
}

static int under_traffic(const char *address, struct vm_mem *src, struct vm_mem *dst, uint64_t size, uint64_t dirty_mbs,
                         unsigned runs) {
        uint64_t *bitmap = NULL;
        size_t len = 0;
        int r = bitmap_register(src, size, &bitmap, &len);
        if (r < 0)
                return 1;
        uint64_t per_ms = dirty_mbs * 1000000u / 4096u / 1000u;
        printf("\n%" PRIu64 " MiB guest, a vCPU dirtying %" PRIu64 " MB/s (%" PRIu64
               " pages/ms) over all of it, unix:, %u run(s)\n",
               size / MiB, dirty_mbs, per_ms, runs);
        printf("%-4s %7s %9s %12s %12s %12s %10s %12s\n", "run", "rounds", "total s", "downtime ms", "(engine ms)",
               "pages sent", "GB sent", "stop-copy s");
        double tot[MAX_RUNS], down[MAX_RUNS], sc[MAX_RUNS];
        for (unsigned i = 0; r == 0 && i < runs; i++) {
                struct vhm_migration_stats st, dst_st;
                sc[i] = run_once(address, STOP_COPY, src, dst, size);
                r = sc[i] < 0 ? -EIO
                              : traffic_run(address, src, dst, size, bitmap, per_ms, &tot[i], &down[i], &st, &dst_st);
                if (r == 0)
                        printf("%-4u %7" PRIu64 " %9.3f %12.1f %12" PRIu64 " %12" PRIu64 " %10.2f %12.3f\n", i,
                               st.round + 1, tot[i], down[i], dst_st.downtime_ms, st.pages_transferred,
                               (double) st.bytes_transferred / 1e9, sc[i]);
        }
        munmap(bitmap, len);
        if (r < 0) {
                fprintf(stderr, "under traffic: %s\n", strerror(-r));
                return 1;
        }
        printf("median: total %.3f s, downtime %.1f ms; stop-and-copy %.3f s (all of it downtime)\n", median(tot, runs),
               median(down, runs), median(sc, runs));
        return 0;
}

/* ---- downtime: 2 devices x 4 queue pairs ---------------------------------------------- */

#define DT_QP   4u /* per device */
#define DT_DEVS 2u

struct dt_side {
        struct vhm_guest *g; /* source only */
        struct vhm_vm *vm;
        int memfd; /* destination only */
        struct vhm_device *dev[DT_DEVS];
        int efd[DT_DEVS][4 * DT_QP];
        struct vhm_logging *lg; /* source, live: both devices' dirty log */
};

static void dt_side_free(struct dt_side *s) {
        vhm_logging_free(s->lg);
        for (unsigned d = 0; d < DT_DEVS; d++) {
                vhm_device_free(s->dev[d]);
                for (unsigned i = 0; i < 4 * DT_QP; i++)
                        if (s->efd[d][i] >= 0)
                                close(s->efd[d][i]);
        }
        vhm_vm_free(s->vm);
        vhm_guest_free(s->g);
        if (s->memfd >= 0)
                close(s->memfd);
}

static void dt_side_init(struct dt_side *s) {
        memset(s, 0, sizeof(*s));
        s->memfd = -1;
        for (unsigned d = 0; d < DT_DEVS; d++)
                for (unsigned i = 0; i < 4 * DT_QP; i++)
                        s->efd[d][i] = -1;
}

/* Device d on the guest's queue pairs 4d..4d+3; the destination's with eventfds of its own. */
static int dt_device(struct dt_side *s, const struct vhm_guest *layout, unsigned d, const char *socket, bool incoming) {
        struct vhm_device_config cfg = { .socket = socket,
                                         .features = vhm_guest_driver_features() | VHU_BIT(VHU_VF_NET_MQ),
                                         .queue_pairs = DT_QP,
                                         .timeout_ms = 5000,
                                         .incoming = incoming };
        int r = vhm_device_new(s->vm, &cfg, &s->dev[d]);
        for (unsigned q = 0; r == 0 && q < 2 * DT_QP; q++) {
                struct vhm_guest_queue_layout l;
                r = vhm_guest_queue_layout(layout, 2 * DT_QP * d + q, &l);
                if (r == 0 && incoming) {
                        l.kick_fd = s->efd[d][2 * q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                        l.call_fd = s->efd[d][2 * q + 1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                }
                struct vhm_queue_spec spec = { .size = l.num,
                                               .desc_gpa = l.desc_gpa,
                                               .avail_gpa = l.avail_gpa,
                                               .used_gpa = l.used_gpa,
                                               .kick_fd = l.kick_fd,
                                               .call_fd = l.call_fd };
                if (r == 0)
                        r = vhm_device_set_queue(s->dev[d], q, &spec);
        }
        if (r == 0)
                r = vhm_device_connect(s->dev[d]);
        if (r == 0 && !incoming)
                r = vhm_device_start(s->dev[d]);
        if (r < 0)
                fprintf(stderr, "device %u at %s: %s\n", d, socket, s->dev[d] ? vhm_device_error(s->dev[d]) : "");
        return r;
}

static int dt_source(struct dt_side *s, uint64_t mem, const char *const sockets[DT_DEVS]) {
        struct vhm_guest_config gc = { .mem_size = mem, .queue_pairs = DT_DEVS * DT_QP };
        int r = guest_vm_new("source", &gc, &s->g, &s->vm);
        for (unsigned d = 0; r == 0 && d < DT_DEVS; d++)
                r = dt_device(s, s->g, d, sockets[d], false);
        return r;
}

static int dt_destination(struct dt_side *s, const struct vhm_guest *layout, uint64_t mem,
                          const char *const sockets[DT_DEVS]) {
        s->memfd = memfd_create("destination", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (s->memfd < 0 || ftruncate(s->memfd, (off_t) mem) < 0 || fcntl(s->memfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return -errno;
        int r = vhm_vm_new("destination", &s->vm);
        struct vhm_region_spec spec = { .fd = s->memfd, .guest_phys_addr = 0, .size = mem };
        if (r == 0)
                r = vhm_vm_add_region(s->vm, &spec);
        for (unsigned d = 0; r == 0 && d < DT_DEVS; d++)
                r = dt_device(s, layout, d, sockets[d], true);
        return r;
}

struct dt_incoming {
        pthread_t thread;
        int fd, rc;
        struct dt_side *dst;
        uint64_t switchover_ns;
        struct vhm_migration_stats st;
};

static void dt_progress(const struct vhm_migration_stats *st, void *opaque) {
        struct dt_incoming *in = opaque;
        if (st->state == VHM_MIGRATION_SWITCHOVER && !in->switchover_ns)
                in->switchover_ns = now_ns();
}

static void *dt_incoming_run(void *arg) {
        struct dt_incoming *in = arg;
        struct vhm_migrate_options o = { .progress = dt_progress, .opaque = in };
        in->rc = vhm_migrate_incoming_opts(in->dst->vm, in->dst->dev, DT_DEVS, in->fd, TOKEN, 0, &o, &in->st);
        return NULL;
}

/* Live: no VMM dirty bitmap, so entering pre-switchover (the rings stop next) is the pause. */
static void dt_source_progress(const struct vhm_migration_stats *st, void *opaque) {
        uint64_t *pause_ns = opaque;
        if (st->state == VHM_MIGRATION_PRE_SWITCHOVER && !*pause_ns)
                *pause_ns = now_ns();
}

static int dt_logging(struct dt_side *src) {
        int r = vhm_logging_new(src->vm, &src->lg);
        for (unsigned d = 0; r == 0 && d < DT_DEVS; d++)
                r = vhm_logging_add_device(src->lg, src->dev[d]);
        if (r < 0)
                fprintf(stderr, "logging: %s\n", src->lg ? vhm_logging_error(src->lg) : strerror(-r));
        return r;
}

/* One migration: the downtime and the switchover in ms, or a negative errno. */
static int dt_migrate(struct dt_side *src, struct dt_side *dst, bool live, double *down_ms, double *switch_ms,
                      uint64_t *rarp) {
        if (live && dt_logging(src) < 0)
                return -EIO;
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        struct dt_incoming in = { .fd = sv[1], .dst = dst };
        if (pthread_create(&in.thread, NULL, dt_incoming_run, &in) != 0) {
                close(sv[0]);
                close(sv[1]);
                return -EAGAIN;
        }
        struct vhm_migration_stats st;
        uint64_t pause = now_ns(), live_pause = 0;
        struct vhm_migrate_options o = { .live = live, .progress = dt_source_progress, .opaque = &live_pause };
        int r = vhm_migrate_to(src->vm, src->lg, src->dev, DT_DEVS, sv[0], TOKEN, &o, &st);
        pthread_join(in.thread, NULL);
        uint64_t running = now_ns();
        if (live)
                pause = live_pause;
        if (r < 0 || in.rc < 0) {
                fprintf(stderr, "migration: %s / %s\n", st.error, in.st.error);
                return r < 0 ? r : in.rc;
        }
        /* The destination returns once its devices run and SEND_RARP went out. */
        *down_ms = (double) (running - pause) / 1e6;
        *switch_ms = (double) (running - in.switchover_ns) / 1e6;
        *rarp = in.st.rarp_sent;
        return 0;
}

/* The test back-ends of device 1, serving run after run. */
static int dt_test_backends(char dir[], pid_t pid[2], char sock[2][96]) {
        if (!mkdtemp(dir))
                return -errno;
        for (unsigned i = 0; i < 2; i++) {
                struct tb_config c;
                tb_config_init(&c);
                c.max_connections = 0;
                snprintf(sock[i], sizeof(sock[i]), "%s/tb%u", dir, i);
                int r = tb_spawn_listen(&c, sock[i], &pid[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int dt_run(uint64_t mem, const char *tb_sock[2], bool live, double *down, double *sw, uint64_t *rarp) {
        struct real_backend be;
        real_backend_init(&be);
        (void) testpmd_cpus_restore();
        int r = start_testpmd(&be, DT_QP, TESTPMD_TWO_PORTS);
        if (r == 0)
                r = testpmd_cpus_avoid_worker();
        struct dt_side src, dst;
        dt_side_init(&src);
        dt_side_init(&dst);
        const char *src_sockets[DT_DEVS] = { be.socket, tb_sock[0] },
                   *dst_sockets[DT_DEVS] = { be.socket2, tb_sock[1] };
        if (r == 0)
                r = dt_source(&src, mem, src_sockets);
        if (r == 0)
                r = dt_destination(&dst, src.g, mem, dst_sockets);
        if (r == 0)
                r = dt_migrate(&src, &dst, live, down, sw, rarp);
        dt_side_free(&dst);
        dt_side_free(&src);
        stop_backend(&be);
        return r;
}

static double percentile(double *v, unsigned n, unsigned pct) {
        qsort(v, n, sizeof(*v), cmp_double);
        unsigned i = (n * pct + 99) / 100; /* nearest rank */
        return v[i ? i - 1 : 0];
}

static void print_cpu_model(void) {
        FILE *f = fopen("/proc/cpuinfo", "re");
        char line[256];
        while (f && fgets(line, sizeof(line), f))
                if (!strncmp(line, "model name", 10)) {
                        char *colon = strchr(line, ':');
                        printf("CPU: %s", colon ? colon + 2 : line);
                        break;
                }
        if (f)
                fclose(f);
        printf("CPUs online: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
}

static int downtime(uint64_t mem_mib, unsigned runs) {
        if (testpmd_cpus_init() < 0 || !backend_available(TESTPMD_BIN)) {
                fprintf(stderr, "downtime: needs %s\n", TESTPMD_BIN);
                return 1;
        }
        char dir[] = "/tmp/vhostmig-bench-dt-XXXXXX", sock[2][96];
        pid_t pid[2] = { 0, 0 };
        int r = dt_test_backends(dir, pid, sock);
        const char *tb_sock[2] = { sock[0], sock[1] };
        double down[MAX_RUNS], sw[MAX_RUNS], ldown[MAX_RUNS], lsw[MAX_RUNS];
        uint64_t rarp = 0, lrarp = 0;
        for (unsigned i = 0; r == 0 && i < runs; i++) {
                r = dt_run(mem_mib * MiB, tb_sock, false, &down[i], &sw[i], &rarp);
                if (r == 0)
                        r = dt_run(mem_mib * MiB, tb_sock, true, &ldown[i], &lsw[i], &lrarp);
        }
        for (unsigned i = 0; i < 2; i++) {
                if (pid[i] > 0)
                        (void) tb_stop(pid[i]);
                unlink(sock[i]);
        }
        rmdir(dir);
        (void) testpmd_cpus_restore();
        if (r < 0) {
                fprintf(stderr, "downtime: %s\n", strerror(-r));
                return 1;
        }
        printf("\ndowntime, %u devices x %u queue pairs (testpmd + test back-end), %" PRIu64
               " MiB guest, %u runs each, interleaved, RARP sent %" PRIu64 " (stop-and-copy) %" PRIu64 " (live)\n",
               DT_DEVS, DT_QP, mem_mib, runs, rarp, lrarp);
        printf("%-52s %10s %10s\n", "", "median ms", "p90 ms");
        printf("%-52s %10.1f %10.1f\n", "stop-and-copy: pause -> destination running + RARP", median(down, runs),
               percentile(down, runs, 90));
        printf("%-52s %10.1f %10.1f\n", "stop-and-copy: END -> running + RARP (switchover)", median(sw, runs),
               percentile(sw, runs, 90));
        printf("%-52s %10.1f %10.1f\n", "live: pre-switchover -> destination running + RARP", median(ldown, runs),
               percentile(ldown, runs, 90));
        printf("%-52s %10.1f %10.1f\n", "live: END -> running + RARP (switchover)", median(lsw, runs),
               percentile(lsw, runs, 90));
        return 0;
}

int main(int argc, char **argv) {
        uint64_t mem_mib = 1024, dt_mem_mib = 64, dirty_mbs = 100;
        bool throughput_only = false, hash_only = false;
        int only = -1; /* --only unix|tcp: that transport alone */
        unsigned runs = 3, dt_runs = 7;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--quick")) {
                        mem_mib = 256;
                        runs = 1;
                        dt_runs = 3;
                } else if (!strcmp(argv[i], "--downtime-runs") && i + 1 < argc) {
                        dt_runs = (unsigned) strtoul(argv[++i], NULL, 10);
                } else if (!strcmp(argv[i], "--downtime-mem") && i + 1 < argc) {
                        dt_mem_mib = strtoull(argv[++i], NULL, 10);
                } else if (!strcmp(argv[i], "--mem") && i + 1 < argc) {
                        mem_mib = strtoull(argv[++i], NULL, 10);
                } else if (!strcmp(argv[i], "--hash-only")) {
                        hash_only = true;
                } else if (!strcmp(argv[i], "--throughput-only")) {
                        throughput_only = true;
                } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
                        i++;
                        only = !strcmp(argv[i], "unix") ? 0 : !strcmp(argv[i], "tcp") ? 1 : -2;
                } else if (!strcmp(argv[i], "--dirty-mbs") && i + 1 < argc) {
                        dirty_mbs = strtoull(argv[++i], NULL, 10);
                } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
                        runs = (unsigned) strtoul(argv[++i], NULL, 10);
                } else {
                        fprintf(stderr,
                                "usage: %s [--quick] [--mem MiB] [--runs N] [--downtime-runs N] [--downtime-mem MiB] "
                                "[--dirty-mbs MB/s] [--throughput-only] [--only unix|tcp] [--hash-only]\n",
                                argv[0]);
                        return 2;
                }
        }
        if (!mem_mib || !runs || runs > MAX_RUNS || !dt_mem_mib || !dt_runs || dt_runs > MAX_RUNS || only == -2)
                return 2;
        setvbuf(stdout, NULL, _IONBF, 0);
        print_cpu_model();
        if (hash_bench(mem_mib) || hash_only)
                return hash_only ? 0 : 1;
        uint64_t size = mem_mib * MiB;
        struct vm_mem src = { .fd = -1 }, dst = { .fd = -1 };
        int r = vm_mem_new("source", size, true, &src);
        if (r == 0)
                r = vm_mem_new("destination", size, false, &dst);
        if (r == 0)
                r = vhm_logging_new(src.vm, &src.lg);
        if (r < 0) {
                fprintf(stderr, "guest memory: %s\n", strerror(-r));
                return 1;
        }
        char dir[] = "/tmp/vhostmig-bench-XXXXXX", unix_addr[96];
        if (!mkdtemp(dir))
                return 1;
        snprintf(unix_addr, sizeof(unix_addr), "unix:%s/migration", dir);
        const char *addresses[] = { unix_addr, "tcp:127.0.0.1:0" };
        const char *names[] = { "unix", "tcp+TLS (loopback)" };

        printf("a %" PRIu64 " MiB guest (no zero page), median of %u interleaved run(s); ratio = raw s / s\n", mem_mib,
               runs);
        printf("%-18s %8s %10s %11s %8s %11s %8s\n", "transport", "raw s", "raw MiB/s", "stop-copy s", "ratio",
               "pre-copy s", "ratio");
        double cpu_med[2][3][2], faults_med[2][3];
        /* Warm-up, not counted: the engine's own mappings of both guests fault their pages in once. */
        int status = run_once(unix_addr, STOP_COPY, &src, &dst, size) < 0;
        for (unsigned a = 0; status == 0 && a < 2; a++) {
                if (only >= 0 && a != (unsigned) only) {
                        memset(cpu_med[a], 0, sizeof(cpu_med[a]));
                        memset(faults_med[a], 0, sizeof(faults_med[a]));
                        continue;
                }
                double raw[MAX_RUNS], sc[MAX_RUNS], pc[MAX_RUNS], cpu[3][2][MAX_RUNS], flt[3][MAX_RUNS];
                for (unsigned i = 0; i < runs; i++) {
                        raw[i] = run_once(addresses[a], RAW, &src, &dst, size);
                        cpu[RAW][0][i] = last_cpu_src, cpu[RAW][1][i] = last_cpu_dst, flt[RAW][i] = last_faults;
                        sc[i] = run_once(addresses[a], STOP_COPY, &src, &dst, size);
                        cpu[STOP_COPY][0][i] = last_cpu_src, cpu[STOP_COPY][1][i] = last_cpu_dst;
                        flt[STOP_COPY][i] = last_faults;
                        pc[i] = run_once(addresses[a], PRE_COPY, &src, &dst, size);
                        cpu[PRE_COPY][0][i] = last_cpu_src, cpu[PRE_COPY][1][i] = last_cpu_dst;
                        flt[PRE_COPY][i] = last_faults;
                        if (raw[i] < 0 || sc[i] < 0 || pc[i] < 0)
                                status = 1;
                }
                if (status)
                        break;
                for (unsigned m = 0; m < 3; m++) {
                        for (unsigned e = 0; e < 2; e++)
                                cpu_med[a][m][e] = median(cpu[m][e], runs);
                        faults_med[a][m] = median(flt[m], runs);
                }
                double rs = median(raw, runs), ss = median(sc, runs), ps = median(pc, runs);
                printf("%-18s %8.3f %10.0f %11.3f %8.2f %11.3f %8.2f\n", names[a], rs, (double) mem_mib / rs, ss,
                       rs / ss, ps, rs / ps);
        }
        if (status == 0)
                print_cpu(names, cpu_med, faults_med, mem_mib);
        if (status == 0)
                status = checksum_pass(&src, mem_mib, runs);
        if (status == 0 && !throughput_only)
                status = under_traffic(unix_addr, &src, &dst, size, dirty_mbs, runs);
        rmdir(dir);
        vm_mem_free(&src, size);
        vm_mem_free(&dst, size);
        if (status == 0 && !throughput_only)
                status = downtime(dt_mem_mib, dt_runs);
        return status;
}
