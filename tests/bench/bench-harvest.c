/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * bench-harvest: dirty-log harvest speed.
 *
 * For a 1 TiB guest (32 MiB log) at 0%, 0.1%, 10% and 100% of pages dirty,
 * the median of N runs of:
 *   plain  a plain read of the whole log (sum of all words): the memory-read
 *          floor any harvest has to pay;
 *   qemu   a QEMU-shaped harvest: per word, skip zero, exchange non-zero with
 *          0, then visit each set bit with ctz and set that page in the
 *          migration bitmap one by one (vhm_bitmap_set, out of line);
 *   vhm    vhm_log_harvest (atomics; always safe);
 *   detached  vhm_log_harvest_detached (plain loads and stores; the
 *          double-buffered harvest of a log the back-end no longer writes).
 * Before every run the log pattern is copied back in and the bitmap cleared
 * (untimed); the three methods are interleaved run by run so background load
 * hits them alike.  Then vhm_log_harvest for 1, 16, 256 GiB and 1 TiB guests
 * at 0.1%.
 *
 * The log is written through a second MAP_SHARED mapping of the memfd, the
 * way a backend sees it after SET_LOG_BASE.
 *
 * Which harvest production uses (migrate/logging.c): the double-buffered one
 * (detached) when every device of the VM is declared to switch logs under
 * its queue locks, else vhm_log_harvest.  The target lines judge both.
 *
 * Times are wall-clock by default; --cpu-time takes the thread's CPU time
 * instead, which leaves out the time the thread was not running (a shared
 * machine's other jobs preempting it) but not their memory traffic.
 *
 * Usage: bench-harvest [--quick] [--runs N] [--cpu-time]
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "log/dirty-log.h"

#define GiB      (UINT64_C(1) << 30)
#define MAX_RUNS 101

enum method {
        M_PLAIN,
        M_QEMU,
        M_VHM,
        M_QEMU_INLINE,
        M_XCHG,
        M_CAS16,
        M_RTM,
        M_DETACHED,
        M_COUNT
};
static const char *const method_name[M_COUNT] = {
        "plain read", "qemu-shaped", "vhm_log_harvest", "qemu-shaped inline",
        "vhm xchg",   "vhm cas16",   "vhm rtm",         "vhm detached",
};
#define MAIN_METHODS ((1u << M_PLAIN) | (1u << M_QEMU) | (1u << M_VHM) | (1u << M_DETACHED))
#define TARGET_PLAIN 3.0 /* at most this many times the plain read */

struct setup {
        uint64_t top;
        struct vhm_log *log;
        uint64_t *mem; /* the backend's mapping of the log */
        uint64_t nwords;
        uint64_t bytes;
        struct vhm_bitmap *bm;
        uint64_t *pattern; /* what the backend "wrote" */
        uint64_t pattern_bits;
        uint64_t *bm_words; /* plain bitmap words for the inline baseline */
        enum vhm_log_harvest_impl auto_impl;
};

static clockid_t bench_clock = CLOCK_MONOTONIC;

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(bench_clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng_next(void) {
        uint64_t x = rng_state;

        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng_state = x;
        return x * UINT64_C(2685821657736338717);
}

/* Fill with each bit set with probability ppm / 1e6 (exact for 0 and 1e6;
 * for sparse densities, by drawing the gaps between set bits). */
static uint64_t fill_pattern(uint64_t *p, uint64_t nwords, uint32_t ppm) {
        uint64_t nbits = nwords * 64, bits = 0;

        if (ppm >= 1000000) {
                memset(p, 0xff, nwords * 8);
                return nbits;
        }
        memset(p, 0, nwords * 8);
        if (ppm == 0)
                return 0;
        if (ppm >= 50000) {
                for (uint64_t i = 0; i < nbits; i++) {
                        if (rng_next() % 1000000 < ppm) {
                                p[i / 64] |= UINT64_C(1) << (i % 64);
                                bits++;
                        }
                }
                return bits;
        }
        /* sparse: uniform gaps with mean 1e6 / ppm */
        for (uint64_t i = rng_next() % (2000000 / ppm);;) {
                if (i >= nbits)
                        break;
                p[i / 64] |= UINT64_C(1) << (i % 64);
                bits++;
                i += 1 + rng_next() % (2000000 / ppm - 1);
        }
        return bits;
}

static int setup_new(struct setup *s, uint64_t guest_bytes) {
        int r;
        void *m;

        memset(s, 0, sizeof(*s));
        s->top = guest_bytes;
        r = vhm_log_new(guest_bytes, &s->log);
        if (r < 0)
                return r;
        s->auto_impl = vhm_log_get_harvest_impl(s->log);
        s->bytes = vhm_log_size_bytes(s->log);
        s->nwords = s->bytes / 8;
        m = mmap(NULL, s->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vhm_log_fd(s->log), 0);
        if (m == MAP_FAILED)
                return -errno;
        s->mem = m;
        r = vhm_bitmap_new(vhm_log_npages(s->log), &s->bm);
        if (r < 0)
                return r;
        s->pattern = aligned_alloc(64, (s->bytes + 63) / 64 * 64);
        s->bm_words = calloc(s->nwords, sizeof(uint64_t));
        if (!s->pattern || !s->bm_words)
                return -ENOMEM;
        return 0;
}

static void setup_free(struct setup *s) {
        free(s->pattern);
        free(s->bm_words);
        vhm_bitmap_free(s->bm);
        if (s->mem)
                munmap(s->mem, s->bytes);
        vhm_log_free(s->log);
}

/* --- the three methods --------------------------------------------------- */

typedef uint64_t v2u64 __attribute__((vector_size(16)));

static volatile uint64_t sink;

/* Plain read: sum every word, 4 x 16-byte accumulators (SSE2 on x86-64). */
static void run_plain(struct setup *s) {
        const uint64_t *p = s->mem;
        v2u64 a0 = { 0, 0 }, a1 = a0, a2 = a0, a3 = a0;
        uint64_t i = 0, sum;

        for (; i + 8 <= s->nwords; i += 8) {
                v2u64 x0, x1, x2, x3;

                memcpy(&x0, &p[i], 16);
                memcpy(&x1, &p[i + 2], 16);
                memcpy(&x2, &p[i + 4], 16);
                memcpy(&x3, &p[i + 6], 16);
                a0 += x0;
                a1 += x1;
                a2 += x2;
                a3 += x3;
        }
        a0 += a1 + a2 + a3;
        sum = a0[0] + a0[1];
        for (; i < s->nwords; i++)
                sum += p[i];
        sink = sum;
}

/* QEMU-shaped: skip zero words, exchange non-zero ones, then one call per
 * set bit to mark that page in the migration bitmap. */
static void run_qemu(struct setup *s) {
        uint64_t *p = s->mem;

        for (uint64_t i = 0; i < s->nwords; i++) {
                uint64_t v;

                if (!__atomic_load_n(&p[i], __ATOMIC_RELAXED))
                        continue;
                v = __atomic_exchange_n(&p[i], 0, __ATOMIC_ACQ_REL);
                while (v) {
                        unsigned int bit = (unsigned int) __builtin_ctzll(v);

                        v &= v - 1;
                        vhm_bitmap_set(s->bm, i * 64 + bit);
                }
        }
}

/* The same, with the per-page bitmap update inlined into the loop (a
 * stricter baseline than QEMU, whose per-page call does far more). */
static void run_qemu_inline(struct setup *s) {
        uint64_t *p = s->mem;
        uint64_t *bm = s->bm_words;

        for (uint64_t i = 0; i < s->nwords; i++) {
                uint64_t v;

                if (!__atomic_load_n(&p[i], __ATOMIC_RELAXED))
                        continue;
                v = __atomic_exchange_n(&p[i], 0, __ATOMIC_ACQ_REL);
                while (v) {
                        uint64_t page = i * 64 + (unsigned int) __builtin_ctzll(v);

                        v &= v - 1;
                        bm[page / 64] |= UINT64_C(1) << (page % 64);
                }
        }
}

static void harvest_with(struct setup *s, enum vhm_log_harvest_impl impl) {
        uint64_t n;

        if (vhm_log_set_harvest_impl(s->log, impl) < 0 || vhm_log_harvest(s->log, s->bm, &n) < 0)
                abort();
}

static void run_vhm(struct setup *s) {
        harvest_with(s, s->auto_impl);
}

static void run_xchg(struct setup *s) {
        harvest_with(s, VHM_LOG_HARVEST_XCHG);
}

static void run_cas16(struct setup *s) {
        harvest_with(s, VHM_LOG_HARVEST_CAS16);
}

static void run_rtm(struct setup *s) {
        harvest_with(s, VHM_LOG_HARVEST_RTM);
}

/* Double-buffered logging's harvest of the log the back-end left. */
static void run_detached(struct setup *s) {
        uint64_t n;

        if (vhm_log_harvest_detached(s->log, s->bm, &n) < 0)
                abort();
}

static void (*const method_fn[M_COUNT])(struct setup *) = {
        run_plain, run_qemu, run_vhm, run_qemu_inline, run_xchg, run_cas16, run_rtm, run_detached,
};

/* Which of the per-implementation methods this CPU supports. */
static unsigned int impl_methods(struct setup *s) {
        unsigned int mask = (1u << M_QEMU_INLINE) | (1u << M_XCHG);

        if (vhm_log_set_harvest_impl(s->log, VHM_LOG_HARVEST_CAS16) == 0)
                mask |= 1u << M_CAS16;
        if (vhm_log_set_harvest_impl(s->log, VHM_LOG_HARVEST_RTM) == 0)
                mask |= 1u << M_RTM;
        vhm_log_set_harvest_impl(s->log, s->auto_impl);
        return mask;
}

/* Untimed, before every run: the backend's pattern back into the log and
 * the method's bitmap cleared (the same amount of memory for every method). */
static void reset(struct setup *s, int m) {
        memcpy(s->mem, s->pattern, s->bytes);
        if (m == M_QEMU_INLINE)
                memset(s->bm_words, 0, s->nwords * sizeof(uint64_t));
        else
                vhm_bitmap_clear_all(s->bm);
}

static uint64_t harvested_bits(struct setup *s, int m) {
        uint64_t n = 0;

        if (m != M_QEMU_INLINE)
                return vhm_bitmap_count(s->bm);
        for (uint64_t i = 0; i < s->nwords; i++)
                n += (uint64_t) __builtin_popcountll(s->bm_words[i]);
        return n;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

static double median_ms(uint64_t *ns, int n) {
        qsort(ns, (size_t) n, sizeof(ns[0]), cmp_u64);
        if (n % 2)
                return (double) ns[n / 2] / 1e6;
        return ((double) ns[n / 2 - 1] + (double) ns[n / 2]) / 2e6;
}

/* Median time of every method in mask over runs runs, interleaved. */
static void measure(struct setup *s, unsigned int mask, int runs, double med[M_COUNT]) {
        static uint64_t t[M_COUNT][MAX_RUNS];

        /* warm-up: first-touch faults of both mappings and the bitmap */
        for (int m = 0; m < M_COUNT; m++) {
                if (!(mask & (1u << m)))
                        continue;
                reset(s, m);
                method_fn[m](s);
                if (m != M_PLAIN && harvested_bits(s, m) != s->pattern_bits) {
                        fprintf(stderr, "%s harvested %" PRIu64 " pages, %" PRIu64 " were dirty\n", method_name[m],
                                harvested_bits(s, m), s->pattern_bits);
                        exit(1);
                }
        }
        for (int r = 0; r < runs; r++) {
                for (int m = 0; m < M_COUNT; m++) {
                        uint64_t t0;

                        if (!(mask & (1u << m)))
                                continue;
                        reset(s, m);
                        t0 = now_ns();
                        method_fn[m](s);
                        t[m][r] = now_ns() - t0;
                }
        }
        for (int m = 0; m < M_COUNT; m++)
                med[m] = (mask & (1u << m)) ? median_ms(t[m], runs) : 0;
}

static double gbps(uint64_t bytes, double ms) {
        return ms > 0 ? (double) bytes / (ms * 1e6) : 0;
}

static void print_machine(void) {
        FILE *f = fopen("/proc/cpuinfo", "re");
        char line[256];

        if (f) {
                while (fgets(line, sizeof(line), f)) {
                        if (!strncmp(line, "model name", 10)) {
                                char *c = strchr(line, ':');

                                printf("cpu: %s", c ? c + 2 : line);
                                break;
                        }
                }
                fclose(f);
        }
        printf("online cpus: %ld, compiler: %s\n", sysconf(_SC_NPROCESSORS_ONLN), __VERSION__);
}

int main(int argc, char **argv) {
        static const uint32_t densities[] = { 0, 1000, 100000, 1000000 };
        static const char *const density_name[] = { "0%", "0.1%", "10%", "100%" };
        static const uint64_t sweep[] = { 1, 16, 256, 1024 };
        struct setup s;
        double med[4][M_COUNT];
        int runs = 15, r;
        unsigned int impls;
        bool quick = false;

        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--quick")) {
                        quick = true;
                        runs = 3;
                } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
                        runs = atoi(argv[++i]);
                } else if (!strcmp(argv[i], "--cpu-time")) {
                        bench_clock = CLOCK_THREAD_CPUTIME_ID;
                } else {
                        fprintf(stderr, "usage: %s [--quick] [--runs N] [--cpu-time]\n", argv[0]);
                        return 2;
                }
        }
        if (runs < 1 || runs > MAX_RUNS) {
                fprintf(stderr, "--runs must be 1..%d\n", MAX_RUNS);
                return 2;
        }

        print_machine();
        printf("runs per figure: %d (median)%s; %s time\n\n", runs, quick ? ", --quick" : "",
               bench_clock == CLOCK_MONOTONIC ? "wall-clock" : "thread CPU");

        r = setup_new(&s, 1024 * GiB);
        if (r < 0) {
                fprintf(stderr, "setup: %s\n", strerror(-r));
                return 1;
        }
        impls = impl_methods(&s);
        /* auto picks rtm only where cpuid 7 says RTM, not RTM_ALWAYS_ABORT, and a probe transaction committed */
        printf("rtm: %s\n", impls & (1u << M_RTM) ? "usable (a probe transaction committed)"
                                                  : "not usable on this CPU (no TSX, disabled or always aborting)");
        printf("1 TiB guest: %" PRIu64 " pages, log %" PRIu64 " MiB; vhm_log_harvest uses %s"
               " (auto)\n\n",
               vhm_log_npages(s.log), s.bytes >> 20, vhm_log_harvest_impl_name(s.auto_impl));
        printf("%-6s %10s %10s %10s | %8s %8s %8s | %13s %13s | %11s %9s %9s\n", "dirty", "plain ms", "qemu ms",
               "vhm ms", "plain", "qemu", "vhm", "vhm/plain", "qemu/vhm", "detached ms", "det/plain", "qemu/det");
        printf("%-6s %10s %10s %10s | %8s %8s %8s | %13s %13s |\n", "", "", "", "", "GB/s", "GB/s", "GB/s", "", "");
        for (size_t d = 0; d < sizeof(densities) / sizeof(densities[0]); d++) {
                s.pattern_bits = fill_pattern(s.pattern, s.nwords, densities[d]);
                measure(&s, MAIN_METHODS | impls, runs, med[d]);
                printf("%-6s %10.3f %10.3f %10.3f | %8.2f %8.2f %8.2f | %12.2fx %12.1fx | %11.3f %8.2fx %8.1fx\n",
                       density_name[d], med[d][M_PLAIN], med[d][M_QEMU], med[d][M_VHM], gbps(s.bytes, med[d][M_PLAIN]),
                       gbps(s.bytes, med[d][M_QEMU]), gbps(s.bytes, med[d][M_VHM]), med[d][M_VHM] / med[d][M_PLAIN],
                       med[d][M_QEMU] / med[d][M_VHM], med[d][M_DETACHED], med[d][M_DETACHED] / med[d][M_PLAIN],
                       med[d][M_QEMU] / med[d][M_DETACHED]);
                fflush(stdout);
        }
        {
                struct vhm_log_harvest_stats st;

                vhm_log_get_stats(s.log, &st);
                if (st.tx_commits + st.tx_aborts)
                        printf("rtm: %" PRIu64 " chunks by transaction, %" PRIu64
                               " redone with xchg after an abort (%.3f%%)\n",
                               st.tx_commits, st.tx_aborts,
                               100.0 * (double) st.tx_aborts / (double) (st.tx_commits + st.tx_aborts));
        }
        setup_free(&s);

        printf("\nvhm_log_harvest by implementation, 1 TiB guest (median ms; x = qemu-shaped / it):\n");
        printf("%-6s", "dirty");
        for (int m = M_QEMU_INLINE; m < M_COUNT; m++)
                if (impls & (1u << m))
                        printf(" %20s", method_name[m]);
        printf("\n");
        for (size_t d = 0; d < sizeof(densities) / sizeof(densities[0]); d++) {
                printf("%-6s", density_name[d]);
                for (int m = M_QEMU_INLINE; m < M_COUNT; m++)
                        if (impls & (1u << m))
                                printf(" %10.3f (%6.1fx)", med[d][m], med[d][M_QEMU] / med[d][m]);
                printf("\n");
        }

        printf("\ntarget at every density: at most %.1fx the plain read and not slower than qemu-shaped\n",
               TARGET_PLAIN);
        printf("  (production: detached when every device is declared to switch logs under its queue locks,\n"
               "   vhm_log_harvest otherwise)\n");
        for (int m = M_VHM; m <= M_DETACHED; m += M_DETACHED - M_VHM) {
                printf("  %-16s", m == M_VHM ? "vhm_log_harvest" : "vhm detached");
                for (size_t d = 0; d < sizeof(densities) / sizeof(densities[0]); d++) {
                        bool met = med[d][m] <= TARGET_PLAIN * med[d][M_PLAIN] && med[d][m] <= med[d][M_QEMU];

                        printf(" %s %s", density_name[d], met ? "MET" : "MISSED");
                }
                printf("\n");
        }
        printf("\ntargets: empty log vhm/plain <= 2.0: %.2fx %s; full log qemu/vhm >= 20: %.1fx %s\n",
               med[0][M_VHM] / med[0][M_PLAIN], med[0][M_VHM] / med[0][M_PLAIN] <= 2.0 ? "MET" : "MISSED",
               med[3][M_QEMU] / med[3][M_VHM], med[3][M_QEMU] / med[3][M_VHM] >= 20.0 ? "MET" : "MISSED");
        printf("         (full log, against the inline-set baseline: %.1fx)\n", med[3][M_QEMU_INLINE] / med[3][M_VHM]);

        printf("\nguest size sweep at 0.1%% dirty:\n");
        printf("%-8s %10s %10s %10s %10s %10s\n", "guest", "log", "plain ms", "qemu ms", "vhm ms", "vhm GB/s");
        for (size_t g = 0; g < sizeof(sweep) / sizeof(sweep[0]); g++) {
                double m[M_COUNT];
                char logsz[32];

                r = setup_new(&s, sweep[g] * GiB);
                if (r < 0) {
                        fprintf(stderr, "setup: %s\n", strerror(-r));
                        return 1;
                }
                s.pattern_bits = fill_pattern(s.pattern, s.nwords, 1000);
                measure(&s, MAIN_METHODS, runs, m);
                if (s.bytes >= (1u << 20))
                        snprintf(logsz, sizeof(logsz), "%" PRIu64 " MiB", s.bytes >> 20);
                else
                        snprintf(logsz, sizeof(logsz), "%" PRIu64 " KiB", s.bytes >> 10);
                printf("%4" PRIu64 " GiB %10s %10.4f %10.4f %10.4f %10.2f\n", sweep[g], logsz, m[M_PLAIN], m[M_QEMU],
                       m[M_VHM], gbps(s.bytes, m[M_VHM]));
                setup_free(&s);
        }
        return 0;
}
