/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Internal to log/: object layouts shared between its files, CPU feature
 * detection and the harvest loops.  Not for other layers.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "log/bitmap.h"
#include "log/dirty-log.h"

struct vhm_bitmap {
        uint64_t npages;
        uint64_t nwords; /* ceil(npages / 64) */
        uint64_t *words; /* max(nwords, 1) words; bits >= npages are always 0 */
};

struct vhm_log {
        int fd;
        uint64_t npages;                /* ceil(top_gpa / 4096) */
        uint64_t nwords;                /* ceil(npages / 64) */
        uint64_t *words;                /* MAP_SHARED mapping of nwords * 8 bytes, page aligned */
        enum vhm_log_harvest_impl impl; /* resolved, never AUTO */
        struct vhm_log_harvest_stats stats;
};

#define VHM_FORCE_INLINE static inline __attribute__((always_inline))

/* Mask of the valid bits in the last word of a bitmap of npages pages. */
static inline uint64_t vhm_last_word_mask(uint64_t npages) {
        unsigned int r = (unsigned int) (npages & 63);

        return r ? (UINT64_C(1) << r) - 1 : ~UINT64_C(0);
}

/* CPU features (x86 only; all false elsewhere), detected once. */
struct vhm_log_cpu {
        bool popcnt;
        bool cx16; /* lock cmpxchg16b */
        bool rtm;  /* TSX RTM present, not always-abort, and a probe committed */
        bool avx2; /* and popcnt: the harvest's non-zero word masks, 4 words per compare */
};
const struct vhm_log_cpu *vhm_log_priv_cpu(void);
/*
 * For log/'s tests: false makes the harvest build its masks with SSE2 where
 * the CPU has AVX2, so both paths are tested on one machine; true restores
 * what the CPU has.  Not thread-safe: call with no harvest running.
 */
void vhm_log_priv_use_avx2(bool use);

/*
 * Harvest log words [0, n) into bm words [0, n) with the given
 * implementation (never AUTO; the caller checked the CPU supports it).
 * Returns the number of bits newly set in bm; updates *stats.
 */
uint64_t vhm_log_priv_harvest(enum vhm_log_harvest_impl impl, uint64_t *log, uint64_t *bm, uint64_t n,
                              struct vhm_log_harvest_stats *stats);

/* The same for a log no back-end writes any more: plain loads and stores. */
uint64_t vhm_log_priv_harvest_detached(uint64_t *log, uint64_t *bm, uint64_t n);

/*
 * The log is byte-oriented (page p is bit p % 8 of byte p / 8); the bitmap
 * is word-oriented (bit p % 64 of word p / 64).  On little-endian hosts the
 * two agree; on big-endian ones a log word is byte-swapped on the way in.
 */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define VHM_LOG_TO_CPU(v) (v)
#else
#define VHM_LOG_TO_CPU(v) __builtin_bswap64(v)
#endif
#define VHM_CPU_TO_LOG(v) VHM_LOG_TO_CPU(v)
