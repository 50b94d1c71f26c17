/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Migration bitmap: plain uint64_t words, one bit per 4 KiB guest page.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log/bitmap.h"
#include "log/log-priv.h"

static uint64_t words_for(uint64_t npages) {
        return (npages + 63) / 64;
}

/* calloc(0) may return NULL; always keep one word so words is never NULL. */
static size_t alloc_words(uint64_t nwords) {
        return nwords ? (size_t) nwords : 1;
}

int vhm_bitmap_new(uint64_t npages, struct vhm_bitmap **out) {
        struct vhm_bitmap *bm;

        if (!out)
                return -EINVAL;
        *out = NULL;
        if (npages > VHM_BITMAP_MAX_PAGES)
                return -ERANGE;

        bm = calloc(1, sizeof(*bm));
        if (!bm)
                return -ENOMEM;
        bm->npages = npages;
        bm->nwords = words_for(npages);
        bm->words = calloc(alloc_words(bm->nwords), sizeof(uint64_t));
        if (!bm->words) {
                free(bm);
                return -ENOMEM;
        }
        *out = bm;
        return 0;
}

void vhm_bitmap_free(struct vhm_bitmap *bm) {
        if (!bm)
                return;
        free(bm->words);
        free(bm);
}

uint64_t vhm_bitmap_npages(const struct vhm_bitmap *bm) {
        return bm->npages;
}

int vhm_bitmap_set(struct vhm_bitmap *bm, uint64_t page) {
        if (page >= bm->npages)
                return -ERANGE;
        bm->words[page / 64] |= UINT64_C(1) << (page % 64);
        return 0;
}

int vhm_bitmap_clear(struct vhm_bitmap *bm, uint64_t page) {
        if (page >= bm->npages)
                return -ERANGE;
        bm->words[page / 64] &= ~(UINT64_C(1) << (page % 64));
        return 0;
}

bool vhm_bitmap_test(const struct vhm_bitmap *bm, uint64_t page) {
        if (page >= bm->npages)
                return false;
        return (bm->words[page / 64] >> (page % 64)) & 1;
}

static bool range_ok(const struct vhm_bitmap *bm, uint64_t first, uint64_t count) {
        return first <= bm->npages && count <= bm->npages - first;
}

/* Bits [lo, hi) of a word, 0 <= lo < hi <= 64. */
static uint64_t bits_mask(unsigned int lo, unsigned int hi) {
        uint64_t upto_hi = hi == 64 ? ~UINT64_C(0) : (UINT64_C(1) << hi) - 1;

        return upto_hi & ~((UINT64_C(1) << lo) - 1);
}

static void fill_range(struct vhm_bitmap *bm, uint64_t first, uint64_t count, bool set) {
        uint64_t end = first + count;
        uint64_t w = first / 64, wend = (end - 1) / 64;
        uint64_t m;

        if (w == wend) {
                m = bits_mask((unsigned int) (first % 64), (unsigned int) ((end - 1) % 64) + 1);
                if (set)
                        bm->words[w] |= m;
                else
                        bm->words[w] &= ~m;
                return;
        }
        /* head word */
        m = bits_mask((unsigned int) (first % 64), 64);
        if (set)
                bm->words[w] |= m;
        else
                bm->words[w] &= ~m;
        /* whole words */
        if (wend > w + 1)
                memset(&bm->words[w + 1], set ? 0xff : 0, (size_t) (wend - w - 1) * sizeof(uint64_t));
        /* tail word */
        m = bits_mask(0, (unsigned int) ((end - 1) % 64) + 1);
        if (set)
                bm->words[wend] |= m;
        else
                bm->words[wend] &= ~m;
}

int vhm_bitmap_set_range(struct vhm_bitmap *bm, uint64_t first, uint64_t count) {
        if (!range_ok(bm, first, count))
                return -ERANGE;
        if (count)
                fill_range(bm, first, count, true);
        return 0;
}

int vhm_bitmap_clear_range(struct vhm_bitmap *bm, uint64_t first, uint64_t count) {
        if (!range_ok(bm, first, count))
                return -ERANGE;
        if (count)
                fill_range(bm, first, count, false);
        return 0;
}

VHM_FORCE_INLINE uint64_t count_words(const uint64_t *w, uint64_t n) {
        uint64_t c0 = 0, c1 = 0, i = 0;

        for (; i + 2 <= n; i += 2) {
                c0 += (uint64_t) __builtin_popcountll(w[i]);
                c1 += (uint64_t) __builtin_popcountll(w[i + 1]);
        }
        if (i < n)
                c0 += (uint64_t) __builtin_popcountll(w[i]);
        return c0 + c1;
}

static uint64_t count_words_generic(const uint64_t *w, uint64_t n) {
        return count_words(w, n);
}

#if defined(__x86_64__)
__attribute__((target("popcnt"))) static uint64_t count_words_popcnt(const uint64_t *w, uint64_t n) {
        return count_words(w, n);
}
#endif

uint64_t vhm_bitmap_count(const struct vhm_bitmap *bm) {
#if defined(__x86_64__)
        if (vhm_log_priv_cpu()->popcnt)
                return count_words_popcnt(bm->words, bm->nwords);
#endif
        return count_words_generic(bm->words, bm->nwords);
}

void vhm_bitmap_clear_all(struct vhm_bitmap *bm) {
        memset(bm->words, 0, alloc_words(bm->nwords) * sizeof(uint64_t));
}

int vhm_bitmap_resize(struct vhm_bitmap *bm, uint64_t npages) {
        uint64_t nwords;

        if (npages > VHM_BITMAP_MAX_PAGES)
                return -ERANGE;
        nwords = words_for(npages);

        if (nwords != bm->nwords) {
                uint64_t *nw = realloc(bm->words, alloc_words(nwords) * sizeof(uint64_t));

                if (!nw)
                        return -ENOMEM;
                if (nwords > bm->nwords)
                        memset(&nw[bm->nwords], 0, (size_t) (nwords - bm->nwords) * sizeof(uint64_t));
                bm->words = nw;
        }
        /* When shrinking, drop the bits past the new end of the (new) last word. */
        if (npages < bm->npages && nwords)
                bm->words[nwords - 1] &= vhm_last_word_mask(npages);
        if (!nwords)
                bm->words[0] = 0;
        bm->npages = npages;
        bm->nwords = nwords;
        return 0;
}

void vhm_bitmap_iter_init(struct vhm_bitmap_iter *it, const struct vhm_bitmap *bm, uint64_t start) {
        it->bm = bm;
        it->pos = start;
}

/* First page >= pos whose bit equals want (pages past npages count as clear);
 * returns npages if there is none. */
static uint64_t find_next(const struct vhm_bitmap *bm, uint64_t pos, bool want) {
        uint64_t flip = want ? 0 : ~UINT64_C(0);
        uint64_t i, w;

        if (pos >= bm->npages)
                return bm->npages;
        i = pos / 64;
        w = (bm->words[i] ^ flip) & (~UINT64_C(0) << (pos % 64));
        while (!w) {
                if (++i >= bm->nwords)
                        return bm->npages;
                w = bm->words[i] ^ flip;
        }
        pos = i * 64 + (uint64_t) __builtin_ctzll(w);
        return pos < bm->npages ? pos : bm->npages;
}

bool vhm_bitmap_iter_next(struct vhm_bitmap_iter *it, uint64_t *first, uint64_t *count) {
        const struct vhm_bitmap *bm = it->bm;
        uint64_t s, e;

        s = find_next(bm, it->pos, true);
        if (s >= bm->npages) {
                it->pos = bm->npages;
                return false;
        }
        e = find_next(bm, s + 1, false);
        *first = s;
        *count = e - s;
        it->pos = e;
        return true;
}
