/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The monotonic clock and short sleeps, as the tests and benchmarks use them. */
#pragma once

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static inline uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static inline uint64_t now_ms(void) {
        return now_ns() / 1000000u;
}

/* Sleeps the whole time, even when a signal interrupts it. */
static inline void sleep_ms(unsigned ms) {
        struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/*
 * How much slower than a normal run this one is meant to be: a whole number
 * from $VHOSTMIG_TEST_TIME_SCALE (1 when unset or not a number from 1 to
 * 100).  tests/valgrind-wrap.sh sets it to 10, as test-valgrind multiplies
 * meson's timeouts by 10: under memcheck the tests and the daemon run 10 to
 * 50 times slower, and a deadline meant for a normal run is missed there.
 * Every wait with a deadline that a slow run may miss takes it through
 * scaled_ms(); the normal and ASan runs keep the deadlines as written.
 */
static inline unsigned test_time_scale(void) {
        const char *s = getenv("VHOSTMIG_TEST_TIME_SCALE");
        char *end;
        unsigned long n = s ? strtoul(s, &end, 10) : 1;
        return s && (!*s || *end || n < 1 || n > 100) ? 1 : (unsigned) n;
}

static inline uint64_t scaled_ms(uint64_t ms) {
        return ms * test_time_scale();
}

/*
 * The maximum downtime (ms) of a live migration a test expects to converge.
 * The engine counts the switchover's checksum of the whole memory in its
 * expected downtime, and memcheck slows that hash far more than it slows a
 * wait: 43 times (bench-migration --hash-only, AVX2, 0.86 against 0.02 GB/s
 * on an AMD EPYC), before the load of a shared machine.  So a slow run
 * scales it by the square of the time scale (300 ms becomes 30 s under
 * valgrind-wrap.sh), kept within MigrateTo's bound of 3600000; a normal or
 * ASan run gives the engine ms as written.  Tests that expect a migration
 * not to converge keep their limit as it is.
 */
static inline unsigned scaled_downtime_ms(unsigned ms) {
        uint64_t scale = test_time_scale(), v = (uint64_t) ms * scale * scale;
        return v > 3600000u ? 3600000u : (unsigned) v;
}
