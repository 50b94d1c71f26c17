/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The harvest loops: move the bits of the shared dirty log into the
 * migration bitmap, never losing one a backend sets concurrently.
 *
 * All implementations share the empty-log path: the log is scanned in 1 KiB
 * chunks with 16-byte vector loads OR-reduced into one value, and a zero
 * chunk is skipped: one well-predicted branch per KiB, so an empty log runs
 * at memory read bandwidth (the same as a plain sum of all words).  Inside a
 * non-zero chunk, vector compares give a mask of its non-zero words (AVX2
 * where the CPU has it, else SSE2), and only those words are visited, by
 * their bit numbers: no branch per line or per word, so a sparse log (0.1 %
 * dirty: 6 % of the words, 40 % of the lines, in no pattern) does not pay a
 * misprediction per line.  These scan loads are plain loads of memory the
 * backends write concurrently: they are only a hint of where to look (a bit
 * they miss stays in the log for the next harvest).  What is taken out of
 * the log is decided by an atomic operation only, never by a read followed
 * by a separate store.
 *
 * Merged first, cleared after: a word's bits are ORed into the migration
 * bitmap before the atomic operation takes exactly those bits out of the
 * log, never the other way round.  The bitmap lives in a memfd a restart
 * keeps, so whenever the process dies (SIGKILL between any two
 * instructions) each dirty bit is in the log, in the bitmap or in both:
 * none lives only in a register.  A bit in both is harvested again by the
 * successor and counted once (merge counts only bits new to the bitmap).
 * The ordering costs nothing: the exchange it replaces was one locked
 * instruction per word too (docs/performance.md, "Dirty-log harvest").
 *
 *   XCHG   per non-zero word: read, merge, then one 8-byte atomic AND
 *          with the complement of the value read (lock and: a bit a
 *          back-end sets in between stays for the next harvest).  The
 *          name is that of the exchange it was until the ordering above.
 *          Portable.  A locked instruction costs 4 to 7 ns on the x86
 *          parts measured, so a full log runs at 8 bytes per 4 ns or
 *          worse, well below memory bandwidth.
 *   CAS16  x86-64: per 16-byte pair with both words non-zero, the pair
 *          merged, then lock cmpxchg16b of the value merged against 0
 *          (on failure the value it returns is merged and tried in turn);
 *          a pair with one non-zero word takes the XCHG path.  Half the
 *          locked instructions of XCHG on dense logs, the same on sparse
 *          ones; on the AMD EPYC it measured a little faster than XCHG at
 *          10 and 100 % (each cmpxchg16b costs nearly two exchanges
 *          there), so this per-pair choice is the per-density one too.
 *
 * The detached harvest (vhm_log_harvest_detached) shares the scan but takes
 * the words with plain loads and stores (a chunk half with every word
 * non-zero as whole lines): the caller guarantees no back-end writes that
 * log any more.
 *   RTM    x86-64 with usable TSX: per 16-line (1 KiB) chunk that has a
 *          non-zero line, one hardware transaction reads, merges and zeroes
 *          every non-zero line of the chunk.  The transaction is atomic
 *          with respect to the backends' locked ORs (a conflicting write
 *          aborts it); an aborted chunk is redone with XCHG, and after 16
 *          aborts in a row the rest of the call uses XCHG only.
 *
 * In every case each bitmap word receives old | taken and the popcount of
 * the bits new to the bitmap is summed: no per-bit work.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "log/log-priv.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86_64   1
#define TARGET_POPCNT __attribute__((target("popcnt")))
#define TARGET_RTM    __attribute__((target("rtm,popcnt")))
#define TARGET_AVX2   __attribute__((target("avx2,popcnt")))
#else
#define HAVE_X86_64 0
#endif

#define LINE_WORDS           8
#define CHUNK_LINES          16
#define CHUNK_WORDS          (CHUNK_LINES * LINE_WORDS)
#define RTM_MAX_ABORT_STREAK 16
#define PREFETCH_CHUNKS      4 /* chunks ahead: 4 KiB, past what the atomics hold up */

VHM_FORCE_INLINE uint64_t rd(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
}

typedef uint64_t v2u64 __attribute__((vector_size(16)));

VHM_FORCE_INLINE uint64_t line_or(const uint64_t *l) {
        v2u64 a, b, c, d;

        memcpy(&a, &l[0], 16);
        memcpy(&b, &l[2], 16);
        memcpy(&c, &l[4], 16);
        memcpy(&d, &l[6], 16);
        a |= b | c | d;
        return a[0] | a[1];
}

/* OR of a whole chunk (CHUNK_LINES lines), for skipping empty chunks. */
VHM_FORCE_INLINE uint64_t chunk_or(const uint64_t *l) {
        v2u64 a = { 0, 0 }, b = a, c = a, d = a;

        for (unsigned int k = 0; k < CHUNK_WORDS; k += LINE_WORDS) {
                v2u64 w, x, y, z;

                memcpy(&w, &l[k], 16);
                memcpy(&x, &l[k + 2], 16);
                memcpy(&y, &l[k + 4], 16);
                memcpy(&z, &l[k + 6], 16);
                a |= w;
                b |= x;
                c |= y;
                d |= z;
        }
        a |= b | c | d;
        return a[0] | a[1];
}

/*
 * A locked instruction waits for every earlier load, and later loads wait for
 * it: without this, each chunk's misses start only after the previous chunk's
 * atomics, and a sparse log (a few exchanges per chunk) runs at memory latency
 * instead of bandwidth.  Prefetches issued before the atomics are in flight
 * while they run.
 */
VHM_FORCE_INLINE void prefetch_chunk(const uint64_t *c) {
        for (unsigned int k = 0; k < CHUNK_WORDS; k += LINE_WORDS)
                __builtin_prefetch(&c[k], 0, 3);
}

/*
 * The same for the bitmap, for writing.  A locked instruction also waits
 * until every earlier store has left the store buffer, so a merge into a
 * bitmap line not yet owned made the next exchange wait for that line:
 * at 0.1 % dirty one memory latency per dirty word, in series.  Owned
 * ahead, the merges do not hold the exchanges up (measured on the AMD EPYC:
 * 0.1 % about 10 to 30 % faster, under load the most; 10 and 100 % level).
 */
VHM_FORCE_INLINE void prefetch_chunk_write(const uint64_t *c) {
        for (unsigned int k = 0; k < CHUNK_WORDS; k += LINE_WORDS)
                __builtin_prefetch(&c[k], 1, 3);
}

/* OR v (already in CPU bit order) into a bitmap word; bits new to it. */
VHM_FORCE_INLINE uint64_t merge(uint64_t *bw, uint64_t v) {
        uint64_t b = *bw;

        *bw = b | v;
        return (uint64_t) __builtin_popcountll(v & ~b);
}

/*
 * Merge the value read, then clear exactly its bits (release: the merge's
 * store is not moved past it).  Only we clear bits, so the word still holds
 * every bit of v.
 */
VHM_FORCE_INLINE uint64_t take_value(uint64_t *lw, uint64_t *bw, uint64_t v) {
        uint64_t fresh = merge(bw, VHM_LOG_TO_CPU(v));

        __atomic_fetch_and(lw, ~v, __ATOMIC_RELEASE);
        return fresh;
}

VHM_FORCE_INLINE uint64_t take_word_xchg(uint64_t *lw, uint64_t *bw) {
        uint64_t v = rd(lw);

        return v ? take_value(lw, bw, v) : 0;
}

VHM_FORCE_INLINE uint64_t take_line_xchg(uint64_t *l, uint64_t *b) {
        uint64_t fresh = 0;

        for (unsigned int j = 0; j < LINE_WORDS; j++)
                fresh += take_word_xchg(&l[j], &b[j]);
        return fresh;
}

VHM_FORCE_INLINE uint64_t tail_xchg(uint64_t *log, uint64_t *bm, uint64_t i, uint64_t n) {
        uint64_t fresh = 0;

        for (; i < n; i++)
                fresh += take_word_xchg(&log[i], &bm[i]);
        return fresh;
}

#if HAVE_X86_64
/* 16-byte aligned pair of log words. */
struct pair {
        uint64_t w[2];
} __attribute__((aligned(16)));

/*
 * lock cmpxchg16b: if *p == {*lo, *hi}, store {0, 0} and return true; else
 * load the current value into *lo, *hi and return false.
 */
VHM_FORCE_INLINE bool cas16_zero(uint64_t *p, uint64_t *lo, uint64_t *hi) {
        bool ok;

        __asm__ __volatile__("lock cmpxchg16b %1"
                             : "=@ccz"(ok), "+m"(*(struct pair *) (void *) p), "+a"(*lo), "+d"(*hi)
                             : "b"(UINT64_C(0)), "c"(UINT64_C(0))
                             : "memory");
        return ok;
}

/*
 * Per aligned pair, the atomic that fits what was read: a pair with one
 * non-zero word costs one 8-byte exchange (sparse logs); a pair with two
 * costs one 16-byte compare-exchange instead of two exchanges (dense logs).
 * A locked instruction costs the same whatever its width, so this is the
 * fewest locked instructions at every density.
 */
VHM_FORCE_INLINE uint64_t take_pair_cas16(uint64_t *l, uint64_t *b) {
        uint64_t lo = rd(&l[0]), hi = rd(&l[1]);

        uint64_t fresh = 0;

        if (!hi)
                return lo ? take_value(&l[0], &b[0], lo) : 0;
        if (!lo)
                return take_value(&l[1], &b[1], hi);
        /* Merged before the pair is cleared; a failed exchange returns what is there now, merged next. */
        do
                fresh += merge(&b[0], VHM_LOG_TO_CPU(lo)) + merge(&b[1], VHM_LOG_TO_CPU(hi));
        while (!cas16_zero(l, &lo, &hi));
        return fresh;
}

VHM_FORCE_INLINE uint64_t take_line_cas16(uint64_t *l, uint64_t *b) {
        uint64_t fresh = 0;

        for (unsigned int j = 0; j < LINE_WORDS; j += 2)
                fresh += take_pair_cas16(&l[j], &b[j]);
        return fresh;
}

#else
/* Never called off x86-64 (CAS16 is refused there); keeps body_lines whole. */
VHM_FORCE_INLINE uint64_t take_pair_cas16(uint64_t *l, uint64_t *b) {
        return take_word_xchg(&l[0], &b[0]) + take_word_xchg(&l[1], &b[1]);
}

VHM_FORCE_INLINE uint64_t take_line_cas16(uint64_t *l, uint64_t *b) {
        return take_line_xchg(l, b);
}
#endif

/*
 * Which words of a 64-word half chunk are non-zero, one bit each (plain
 * loads: a hint, see above).  Branch-free, so that what follows branches once
 * per dirty word and once per half chunk, not once per line and per pair:
 * on a sparse log (0.1 %: 40 % of the lines hold a set bit, in no pattern)
 * those per-line branches mispredict about as often as they are taken, and
 * tripled the mispredictions of the QEMU-shaped word loop, costing more than
 * the per-bit work it does and this harvest does not.
 */
#if HAVE_X86_64
VHM_FORCE_INLINE uint64_t nonzero_mask_sse2(const uint64_t *l) {
        const __m128i zero = _mm_setzero_si128();
        uint64_t zmask = 0;

        for (unsigned int k = 0; k < 64; k += 2) {
                __m128i w = _mm_loadu_si128((const __m128i *) (const void *) &l[k]);
                __m128i eq = _mm_cmpeq_epi32(w, zero);

                /* a 64-bit lane is zero when both its 32-bit halves are */
                eq = _mm_and_si128(eq, _mm_shuffle_epi32(eq, _MM_SHUFFLE(2, 3, 0, 1)));
                zmask |= (uint64_t) _mm_movemask_pd(_mm_castsi128_pd(eq)) << k;
        }
        return ~zmask;
}

/*
 * The same in a quarter of the instructions, where the CPU has AVX2.  Not
 * always_inline: the callers without AVX2 hold a dead call to it, which
 * always_inline would refuse; the AVX2 callers inline it.
 */
static inline __attribute__((target("avx2"))) uint64_t nonzero_mask_avx2(const uint64_t *l) {
        const __m256i zero = _mm256_setzero_si256();
        uint64_t zmask = 0;

        for (unsigned int k = 0; k < 64; k += 4) {
                __m256i w = _mm256_loadu_si256((const __m256i *) (const void *) &l[k]);

                zmask |= (uint64_t) _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(w, zero))) << k;
        }
        return ~zmask;
}

VHM_FORCE_INLINE uint64_t nonzero_mask(const uint64_t *l, bool avx2) {
        return avx2 ? nonzero_mask_avx2(l) : nonzero_mask_sse2(l);
}
#else
VHM_FORCE_INLINE uint64_t nonzero_mask(const uint64_t *l, bool avx2) {
        uint64_t mask = 0;

        (void) avx2;
        for (unsigned int k = 0; k < 64; k++)
                mask |= (uint64_t) (l[k] != 0) << k;
        return mask;
}
#endif

/* Take the words of mask: each was non-zero when read and only we clear bits, so no locked instruction is wasted. */
VHM_FORCE_INLINE uint64_t take_mask_xchg(uint64_t *l, uint64_t *b, uint64_t mask) {
        uint64_t fresh = 0;

        while (mask) {
                unsigned int k = (unsigned int) __builtin_ctzll(mask);

                mask &= mask - 1;
                fresh += take_value(&l[k], &b[k], rd(&l[k]));
        }
        return fresh;
}

#define EVEN_BITS UINT64_C(0x5555555555555555)

/*
 * Aligned pairs with both words non-zero take one 16-byte compare-exchange,
 * the other non-zero words one exchange each: the fewest locked instructions.
 */
VHM_FORCE_INLINE uint64_t take_mask_cas16(uint64_t *l, uint64_t *b, uint64_t mask) {
        uint64_t both = mask & (mask >> 1) & EVEN_BITS;
        uint64_t fresh = take_mask_xchg(l, b, mask & ~(both | both << 1));

        while (both) {
                unsigned int k = (unsigned int) __builtin_ctzll(both);

                both &= both - 1;
                fresh += take_pair_cas16(&l[k], &b[k]);
        }
        return fresh;
}

/*
 * Walk [0, n): skip all-zero 1 KiB chunks; in the others, take exactly the
 * non-zero words with the exchange (cas16 false) or per pair the 16-byte
 * compare-exchange (cas16 true).  `cas16` and `avx2` (the mask's vector width,
 * x86-64 only) are constants at every call site.
 */
VHM_FORCE_INLINE uint64_t body_lines(uint64_t *log, uint64_t *bm, uint64_t n, bool cas16, bool avx2) {
        uint64_t fresh = 0, i = 0;

        for (; i + CHUNK_WORDS <= n; i += CHUNK_WORDS) {
                if (__builtin_expect(chunk_or(&log[i]) == 0, 1))
                        continue;
                if (i + (PREFETCH_CHUNKS + 1) * CHUNK_WORDS <= n) {
                        prefetch_chunk(&log[i + PREFETCH_CHUNKS * CHUNK_WORDS]);
                        prefetch_chunk_write(&bm[i + PREFETCH_CHUNKS * CHUNK_WORDS]);
                }
                for (unsigned int h = 0; h < CHUNK_WORDS; h += 64) {
                        uint64_t *l = &log[i + h], *b = &bm[i + h];
                        uint64_t mask = nonzero_mask(l, avx2);

                        fresh += cas16 ? take_mask_cas16(l, b, mask) : take_mask_xchg(l, b, mask);
                }
        }
        for (; i + LINE_WORDS <= n; i += LINE_WORDS) {
                if (line_or(&log[i]))
                        fresh += cas16 ? take_line_cas16(&log[i], &bm[i]) : take_line_xchg(&log[i], &bm[i]);
        }
        return fresh + tail_xchg(log, bm, i, n);
}

/*
 * A detached log (see vhm_log_harvest_detached): no back-end writes it any
 * more, so each non-empty line is read, merged and zeroed with plain loads
 * and stores: no locked instruction at any density.
 */
VHM_FORCE_INLINE uint64_t take_line_plain(uint64_t *l, uint64_t *b) {
        uint64_t fresh = 0;

        for (unsigned int j = 0; j < LINE_WORDS; j++)
                fresh += merge(&b[j], VHM_LOG_TO_CPU(l[j]));
        memset(l, 0, LINE_WORDS * sizeof(l[0]));
        return fresh;
}

/* The words of mask, read, merged and zeroed with plain loads and stores; a full mask without branches. */
VHM_FORCE_INLINE uint64_t take_mask_plain(uint64_t *l, uint64_t *b, uint64_t mask) {
        uint64_t fresh = 0;

        if (mask == ~UINT64_C(0)) {
                for (unsigned int k = 0; k < 64; k += LINE_WORDS)
                        fresh += take_line_plain(&l[k], &b[k]);
                return fresh;
        }
        while (mask) {
                unsigned int k = (unsigned int) __builtin_ctzll(mask);

                mask &= mask - 1;
                fresh += merge(&b[k], VHM_LOG_TO_CPU(l[k]));
                l[k] = 0;
        }
        return fresh;
}

VHM_FORCE_INLINE uint64_t body_plain(uint64_t *log, uint64_t *bm, uint64_t n, bool avx2) {
        uint64_t fresh = 0, i = 0;

        for (; i + CHUNK_WORDS <= n; i += CHUNK_WORDS) {
                if (__builtin_expect(chunk_or(&log[i]) == 0, 1))
                        continue;
                /* without locked instructions too, the stores wait less for lines owned ahead */
                if (i + (PREFETCH_CHUNKS + 1) * CHUNK_WORDS <= n) {
                        prefetch_chunk_write(&log[i + PREFETCH_CHUNKS * CHUNK_WORDS]);
                        prefetch_chunk_write(&bm[i + PREFETCH_CHUNKS * CHUNK_WORDS]);
                }
                for (unsigned int h = 0; h < CHUNK_WORDS; h += 64)
                        fresh += take_mask_plain(&log[i + h], &bm[i + h], nonzero_mask(&log[i + h], avx2));
        }
        for (; i < n; i++) {
                fresh += merge(&bm[i], VHM_LOG_TO_CPU(log[i]));
                log[i] = 0;
        }
        return fresh;
}

static uint64_t harvest_plain_generic(uint64_t *log, uint64_t *bm, uint64_t n) {
        return body_plain(log, bm, n, false);
}

static uint64_t harvest_xchg_generic(uint64_t *log, uint64_t *bm, uint64_t n) {
        return body_lines(log, bm, n, false, false);
}

#if HAVE_X86_64
TARGET_POPCNT static uint64_t harvest_xchg_popcnt(uint64_t *log, uint64_t *bm, uint64_t n) {
        return body_lines(log, bm, n, false, false);
}

TARGET_AVX2 static uint64_t harvest_xchg_avx2(uint64_t *log, uint64_t *bm, uint64_t n) {
        return body_lines(log, bm, n, false, true);
}

TARGET_POPCNT static uint64_t harvest_plain_popcnt(uint64_t *log, uint64_t *bm, uint64_t n) {
        return body_plain(log, bm, n, false);
}

TARGET_AVX2 static uint64_t harvest_plain_avx2(uint64_t *log, uint64_t *bm, uint64_t n) {
        return body_plain(log, bm, n, true);
}

TARGET_POPCNT static uint64_t harvest_cas16(uint64_t *log, uint64_t *bm, uint64_t n) {
        return body_lines(log, bm, n, true, false);
}

TARGET_AVX2 static uint64_t harvest_cas16_avx2(uint64_t *log, uint64_t *bm, uint64_t n) {
        return body_lines(log, bm, n, true, true);
}

TARGET_RTM static uint64_t harvest_rtm(uint64_t *log, uint64_t *bm, uint64_t n, struct vhm_log_harvest_stats *stats) {
        uint64_t fresh = 0, i = 0, commits = 0, aborts = 0;
        unsigned int streak = 0;
        bool use_tx = true;

        for (; i + CHUNK_WORDS <= n; i += CHUNK_WORDS) {
                uint64_t *l = &log[i], *b = &bm[i];
                uint32_t mask = 0, m;

                if (__builtin_expect(chunk_or(l) == 0, 1))
                        continue;
                for (unsigned int k = 0; k < CHUNK_LINES; k++)
                        mask |= (uint32_t) (line_or(&l[k * LINE_WORDS]) != 0) << k;
                if (!mask)
                        continue; /* cannot happen (only we clear bits); keeps ctz defined */

                if (use_tx) {
                        uint64_t f = 0;

                        if (_xbegin() == _XBEGIN_STARTED) {
                                /* nothing read before the transaction is reused in it */
                                __asm__ __volatile__("" ::: "memory");
                                m = mask;
                                do {
                                        unsigned int k = (unsigned int) __builtin_ctz(m);
                                        uint64_t *lk = &l[k * LINE_WORDS], *bk = &b[k * LINE_WORDS];

                                        m &= m - 1;
                                        for (unsigned int j = 0; j < LINE_WORDS; j++) {
                                                f += merge(&bk[j], VHM_LOG_TO_CPU(rd(&lk[j])));
                                                __atomic_store_n(&lk[j], 0, __ATOMIC_RELAXED);
                                        }
                                } while (m);
                                _xend();
                                fresh += f;
                                commits++;
                                streak = 0;
                                continue;
                        }
                        /* Aborted: nothing of the transaction happened.  A
                         * backend writing the chunk, an interrupt, a first touch
                         * of a bitmap page: redo this chunk with exchanges. */
                        aborts++;
                        if (++streak >= RTM_MAX_ABORT_STREAK)
                                use_tx = false;
                }
                m = mask;
                do {
                        unsigned int k = (unsigned int) __builtin_ctz(m);

                        m &= m - 1;
                        fresh += take_line_xchg(&l[k * LINE_WORDS], &b[k * LINE_WORDS]);
                } while (m);
        }
        stats->tx_commits += commits;
        stats->tx_aborts += aborts;
        /* the last partial chunk */
        return fresh + body_lines(&log[i], &bm[i], n - i, false, false);
}
#endif /* HAVE_X86_64 */

uint64_t vhm_log_priv_harvest(enum vhm_log_harvest_impl impl, uint64_t *log, uint64_t *bm, uint64_t n,
                              struct vhm_log_harvest_stats *stats) {
#if HAVE_X86_64
        switch (impl) {
        case VHM_LOG_HARVEST_RTM:
                return harvest_rtm(log, bm, n, stats);
        case VHM_LOG_HARVEST_CAS16:
                if (vhm_log_priv_cpu()->avx2)
                        return harvest_cas16_avx2(log, bm, n);
                return harvest_cas16(log, bm, n);
        default:
                if (vhm_log_priv_cpu()->avx2)
                        return harvest_xchg_avx2(log, bm, n);
                if (vhm_log_priv_cpu()->popcnt)
                        return harvest_xchg_popcnt(log, bm, n);
                return harvest_xchg_generic(log, bm, n);
        }
#else
        (void) impl;
        (void) stats;
        return harvest_xchg_generic(log, bm, n);
#endif
}

uint64_t vhm_log_priv_harvest_detached(uint64_t *log, uint64_t *bm, uint64_t n) {
#if HAVE_X86_64
        if (vhm_log_priv_cpu()->avx2)
                return harvest_plain_avx2(log, bm, n);
        if (vhm_log_priv_cpu()->popcnt)
                return harvest_plain_popcnt(log, bm, n);
#endif
        return harvest_plain_generic(log, bm, n);
}
