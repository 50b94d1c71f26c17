/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Migration bitmap: plain uint64_t words, one bit per 4 KiB guest page.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log/bitmap.h"
#include "log/log-priv.h"

#define BITMAP_MEMFD_NAME "vhostmig-migration-bitmap"
/* A memfd bitmap's size never changes under its mapping: a resize makes a new one. */
#define BITMAP_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

/*
 * Every bitmap is allocated as one of these, so that a bitmap kept in a
 * memfd (to outlive the process) needs no field in the layout log/'s
 * harvest loops share (log-priv.h).
 */
struct bitmap_box {
        struct vhm_bitmap bm;
        int fd; /* -1: words are malloc'd; else a MAP_SHARED mapping of this memfd */
};

static struct bitmap_box *box_of(const struct vhm_bitmap *bm) {
        return (struct bitmap_box *) ((char *) bm - offsetof(struct bitmap_box, bm));
}

static uint64_t words_for(uint64_t npages) {
        return (npages + 63) / 64;
}

/* calloc(0) may return NULL; always keep one word so words is never NULL. */
static size_t alloc_words(uint64_t nwords) {
        return nwords ? (size_t) nwords : 1;
}

static size_t memfd_bytes(uint64_t nwords) {
        return alloc_words(nwords) * sizeof(uint64_t);
}

int vhm_bitmap_new(uint64_t npages, struct vhm_bitmap **out) {
        struct vhm_bitmap *bm;

        if (!out)
                return -EINVAL;
        *out = NULL;
        if (npages > VHM_BITMAP_MAX_PAGES)
                return -ERANGE;

        struct bitmap_box *box = calloc(1, sizeof(*box));
        if (!box)
                return -ENOMEM;
        box->fd = -1;
        bm = &box->bm;
        bm->npages = npages;
        bm->nwords = words_for(npages);
        bm->words = calloc(alloc_words(bm->nwords), sizeof(uint64_t));
        if (!bm->words) {
                free(box);
                return -ENOMEM;
        }
        *out = bm;
        return 0;
}

/* A new sealed memfd of nwords words (at least one), all clear, mapped shared. */
static int memfd_words(uint64_t nwords, int *fd_out, uint64_t **words_out) {
        size_t bytes = memfd_bytes(nwords);
        int fd = memfd_create(BITMAP_MEMFD_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        int r = 0;

        if (fd < 0)
                return -errno;
        if (ftruncate(fd, (off_t) bytes) < 0 || fcntl(fd, F_ADD_SEALS, BITMAP_SEALS) < 0)
                r = -errno;
        void *p = r < 0 ? MAP_FAILED : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (r == 0 && p == MAP_FAILED)
                r = -errno;
        if (r < 0) {
                close(fd);
                return r;
        }
        *fd_out = fd;
        *words_out = p;
        return 0;
}

/* A box around words already mapped from fd. */
static int box_mapped(uint64_t npages, int fd, uint64_t *words, struct vhm_bitmap **out) {
        struct bitmap_box *box = calloc(1, sizeof(*box));

        if (!box)
                return -ENOMEM;
        box->fd = fd;
        box->bm = (struct vhm_bitmap){ .npages = npages, .nwords = words_for(npages), .words = words };
        *out = &box->bm;
        return 0;
}

int vhm_bitmap_new_memfd(uint64_t npages, struct vhm_bitmap **out) {
        uint64_t *words;
        int fd, r;

        if (!out)
                return -EINVAL;
        *out = NULL;
        if (npages > VHM_BITMAP_MAX_PAGES)
                return -ERANGE;
        r = memfd_words(words_for(npages), &fd, &words);
        if (r < 0)
                return r;
        r = box_mapped(npages, fd, words, out);
        if (r < 0) {
                munmap(words, memfd_bytes(words_for(npages)));
                close(fd);
        }
        return r;
}

/* What vhm_bitmap_new_memfd makes: a memfd sealed against resizing, writable, of the size npages need. */
static int check_adopted(int fd, uint64_t npages) {
        struct stat st;
        int seals = fcntl(fd, F_GET_SEALS);

        if (seals < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                return -EINVAL;
        if ((seals & BITMAP_SEALS) != BITMAP_SEALS || (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)))
                return -EPERM;
        if ((uint64_t) st.st_size != memfd_bytes(words_for(npages)))
                return -EMSGSIZE;
        return 0;
}

int vhm_bitmap_adopt(int fd, uint64_t npages, struct vhm_bitmap **out) {
        uint64_t nwords = words_for(npages);
        int r = -EINVAL;

        if (out)
                *out = NULL;
        if (fd < 0)
                return -EINVAL;
        if (out)
                r = npages > VHM_BITMAP_MAX_PAGES ? -ERANGE : check_adopted(fd, npages);
        void *p = r < 0 ? MAP_FAILED : mmap(NULL, memfd_bytes(nwords), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (r == 0 && p == MAP_FAILED)
                r = -errno;
        if (r == 0 && (r = box_mapped(npages, fd, p, out)) < 0)
                munmap(p, memfd_bytes(nwords));
        if (r < 0) {
                close(fd);
                return r;
        }
        /* Pages past the end do not exist: the invariant holds whatever the memfd held there. */
        if (nwords)
                (*out)->words[nwords - 1] &= vhm_last_word_mask(npages);
        else
                (*out)->words[0] = 0;
        return 0;
}

int vhm_bitmap_set_memfd(struct vhm_bitmap *bm, bool memfd) {
        struct bitmap_box *box = box_of(bm);
        size_t bytes = memfd_bytes(bm->nwords);
        uint64_t *words;
        int fd = -1;

        if (memfd == (box->fd >= 0))
                return 0;
        if (memfd) {
                int r = memfd_words(bm->nwords, &fd, &words);
                if (r < 0)
                        return r;
        } else if (!(words = malloc(bytes)))
                return -ENOMEM;
        memcpy(words, bm->words, bytes);
        if (box->fd >= 0) {
                munmap(bm->words, bytes);
                close(box->fd);
        } else
                free(bm->words);
        box->fd = fd;
        bm->words = words;
        return 0;
}

int vhm_bitmap_fd(const struct vhm_bitmap *bm) {
        return box_of(bm)->fd;
}

void vhm_bitmap_free(struct vhm_bitmap *bm) {
        if (!bm)
                return;
        struct bitmap_box *box = box_of(bm);
        if (box->fd >= 0) {
                munmap(bm->words, memfd_bytes(bm->nwords));
                close(box->fd);
        } else
                free(bm->words);
        free(box);
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

int vhm_bitmap_or(struct vhm_bitmap *into, const struct vhm_bitmap *from) {
        if (from->npages > into->npages)
                return -ERANGE;
        for (uint64_t w = 0; w < from->nwords; w++)
                into->words[w] |= from->words[w]; /* from's bits past its npages are 0 */
        return 0;
}

/*
 * A memfd bitmap is sealed against resizing (whoever holds the fd relies on
 * its size), so it moves to a new memfd: a new fd, which a caller keeping
 * the fd elsewhere must keep instead of the old one.
 */
static int remap_memfd(struct vhm_bitmap *bm, uint64_t nwords) {
        uint64_t *words;
        int fd, r = memfd_words(nwords, &fd, &words);

        if (r < 0)
                return r;
        memcpy(words, bm->words, (size_t) (nwords < bm->nwords ? nwords : bm->nwords) * sizeof(uint64_t));
        munmap(bm->words, memfd_bytes(bm->nwords));
        close(box_of(bm)->fd);
        box_of(bm)->fd = fd;
        bm->words = words;
        return 0;
}

int vhm_bitmap_resize(struct vhm_bitmap *bm, uint64_t npages) {
        uint64_t nwords;

        if (npages > VHM_BITMAP_MAX_PAGES)
                return -ERANGE;
        nwords = words_for(npages);

        if (nwords != bm->nwords && box_of(bm)->fd >= 0) {
                int r = remap_memfd(bm, nwords);
                if (r < 0)
                        return r;
        } else if (nwords != bm->nwords) {
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
