/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The monotonic clock and short sleeps, as the tests and benchmarks use them. */
#pragma once

#include <errno.h>
#include <stdint.h>
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
