/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Helpers shared by the log/ unit tests (header-only, static functions). */
#ifndef VHM_TESTS_LOG_UTIL_H
#define VHM_TESTS_LOG_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include "tests/common/fd-count.h"

/* xorshift64*: small, deterministic, good enough for test patterns. */
struct test_rng {
        uint64_t s;
};

static inline uint64_t rng_next(struct test_rng *r) {
        uint64_t x = r->s;

        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r->s = x;
        return x * UINT64_C(2685821657736338717);
}

/* Uniform in [0, n), n > 0 (modulo bias is irrelevant here). */
static inline uint64_t rng_below(struct test_rng *r, uint64_t n) {
        return rng_next(r) % n;
}

/* A word with each bit set with probability ppm / 1e6. */
static inline uint64_t rng_word_density(struct test_rng *r, uint32_t ppm) {
        uint64_t w = 0;

        if (ppm >= 1000000)
                return ~UINT64_C(0);
        if (ppm == 0)
                return 0;
        for (int b = 0; b < 64; b++)
                if (rng_below(r, 1000000) < ppm)
                        w |= UINT64_C(1) << b;
        return w;
}

/* Lines of /proc/self/maps; with a needle, only lines containing it. */
static inline int count_maps(const char *needle) {
        FILE *f = fopen("/proc/self/maps", "re");
        char line[4096];
        int n = 0;

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (!needle || strstr(line, needle))
                        n++;
        fclose(f);
        return n;
}

/* Map a log's memfd the way a backend does after SET_LOG_BASE. */
static inline uint8_t *backend_map(int fd, uint64_t size) {
        void *p = mmap(NULL, (size_t) size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

        return p == MAP_FAILED ? NULL : p;
}

#endif
