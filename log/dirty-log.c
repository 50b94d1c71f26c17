/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Shared dirty log (memfd, sealed, MAP_SHARED) and its harvest into the
 * migration bitmap.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log/dirty-log.h"
#include "log/log-priv.h"

#define LOG_MEMFD_NAME "vhostmig-dirty-log"

int vhm_log_required_top(const struct vhm_log_extent *regions, size_t nregions, const struct vhm_log_extent *used_rings,
                         size_t nrings, uint64_t *top) {
        const struct vhm_log_extent *sets[2] = { regions, used_rings };
        size_t counts[2] = { nregions, nrings };
        uint64_t max = 0;

        if (!top || (nregions && !regions) || (nrings && !used_rings) || (nregions == 0 && nrings == 0))
                return -EINVAL;

        for (int s = 0; s < 2; s++) {
                for (size_t i = 0; i < counts[s]; i++) {
                        const struct vhm_log_extent *e = &sets[s][i];
                        uint64_t end;

                        if (e->size == 0)
                                return -EINVAL;
                        if (__builtin_add_overflow(e->gpa, e->size, &end))
                                return -EOVERFLOW;
                        if (end > max)
                                max = end;
                }
        }
        *top = max;
        return 0;
}

static enum vhm_log_harvest_impl best_impl(void) {
        const struct vhm_log_cpu *cpu = vhm_log_priv_cpu();

        if (cpu->rtm)
                return VHM_LOG_HARVEST_RTM;
        if (cpu->cx16 && cpu->popcnt)
                return VHM_LOG_HARVEST_CAS16;
        return VHM_LOG_HARVEST_XCHG;
}

int vhm_log_new(uint64_t top_gpa, struct vhm_log **out) {
        struct vhm_log *log;
        size_t bytes;
        void *p;
        int r;

        if (!out)
                return -EINVAL;
        *out = NULL;
        if (top_gpa == 0)
                return -EINVAL;
        if (top_gpa > VHM_LOG_MAX_TOP_GPA)
                return -ERANGE;

        log = calloc(1, sizeof(*log));
        if (!log)
                return -ENOMEM;
        log->fd = -1;
        log->npages = (top_gpa + VHM_PAGE_SIZE - 1) >> VHM_PAGE_SHIFT;
        log->nwords = (log->npages + 63) / 64;
        bytes = (size_t) log->nwords * sizeof(uint64_t);

        log->fd = memfd_create(LOG_MEMFD_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (log->fd < 0)
                goto fail_errno;
        if (ftruncate(log->fd, (off_t) bytes) < 0)
                goto fail_errno;
        if (fcntl(log->fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0)
                goto fail_errno;
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, log->fd, 0);
        if (p == MAP_FAILED)
                goto fail_errno;
        log->words = p;
        log->impl = best_impl();
        *out = log;
        return 0;

fail_errno:
        r = -errno;
        if (log->fd >= 0)
                close(log->fd);
        free(log);
        return r;
}

/* The fd is a memfd sealed as vhm_log_new seals it, of the size a log of npages has. */
static int check_adopted_memfd(int fd, uint64_t bytes) {
        const int seals = F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL;
        struct stat st;
        int have = fcntl(fd, F_GET_SEALS);

        if (have < 0 || (have & seals) != seals || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                return -EINVAL;
        if ((uint64_t) st.st_size != bytes)
                return -EMSGSIZE;
        return 0;
}

int vhm_log_adopt(int fd, uint64_t top_gpa, struct vhm_log **out) {
        struct vhm_log *log = NULL;
        int r = -EINVAL;

        if (out)
                *out = NULL;
        if (fd < 0)
                return -EINVAL;
        if (!out || top_gpa == 0)
                r = -EINVAL;
        else if (top_gpa > VHM_LOG_MAX_TOP_GPA)
                r = -ERANGE;
        else if (!(log = calloc(1, sizeof(*log))))
                r = -ENOMEM;
        if (!log)
                goto fail;
        log->npages = (top_gpa + VHM_PAGE_SIZE - 1) >> VHM_PAGE_SHIFT;
        log->nwords = (log->npages + 63) / 64;
        size_t bytes = (size_t) log->nwords * sizeof(uint64_t);
        r = check_adopted_memfd(fd, bytes);
        if (r < 0)
                goto fail;
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
                r = -errno;
                goto fail;
        }
        log->fd = fd;
        log->words = p;
        log->impl = best_impl();
        *out = log;
        return 0;

fail:
        free(log);
        close(fd);
        return r;
}

void vhm_log_free(struct vhm_log *log) {
        if (!log)
                return;
        if (log->words)
                munmap(log->words, (size_t) log->nwords * sizeof(uint64_t));
        if (log->fd >= 0)
                close(log->fd);
        free(log);
}

int vhm_log_fd(const struct vhm_log *log) {
        return log->fd;
}

uint64_t vhm_log_size_bytes(const struct vhm_log *log) {
        return log->nwords * sizeof(uint64_t);
}

uint64_t vhm_log_npages(const struct vhm_log *log) {
        return log->npages;
}

int vhm_log_set_harvest_impl(struct vhm_log *log, enum vhm_log_harvest_impl impl) {
        const struct vhm_log_cpu *cpu = vhm_log_priv_cpu();

        switch (impl) {
        case VHM_LOG_HARVEST_AUTO:
                impl = best_impl();
                break;
        case VHM_LOG_HARVEST_XCHG:
                break;
        case VHM_LOG_HARVEST_CAS16:
                if (!cpu->cx16 || !cpu->popcnt)
                        return -EOPNOTSUPP;
                break;
        case VHM_LOG_HARVEST_RTM:
                if (!cpu->rtm)
                        return -EOPNOTSUPP;
                break;
        default:
                return -EINVAL;
        }
        log->impl = impl;
        return 0;
}

enum vhm_log_harvest_impl vhm_log_get_harvest_impl(const struct vhm_log *log) {
        return log->impl;
}

const char *vhm_log_harvest_impl_name(enum vhm_log_harvest_impl impl) {
        switch (impl) {
        case VHM_LOG_HARVEST_AUTO:
                return "auto";
        case VHM_LOG_HARVEST_XCHG:
                return "xchg";
        case VHM_LOG_HARVEST_CAS16:
                return "cas16";
        case VHM_LOG_HARVEST_RTM:
                return "rtm";
        }
        return "?";
}

void vhm_log_get_stats(const struct vhm_log *log, struct vhm_log_harvest_stats *stats) {
        *stats = log->stats;
}

static int harvest(struct vhm_log *log, struct vhm_bitmap *into, uint64_t *pages_harvested, bool detached) {
        uint64_t fresh, n = log->nwords;

        if (into->npages < log->npages)
                return -ERANGE;

        /* If the bitmap ends inside the log's last word, that word is taken
         * separately so bits past the bitmap's end are dropped, not merged. */
        if (into->npages < n * 64)
                n--;

        if (detached)
                fresh = vhm_log_priv_harvest_detached(log->words, into->words, n);
        else
                fresh = vhm_log_priv_harvest(log->impl, log->words, into->words, n, &log->stats);

        if (n < log->nwords && __atomic_load_n(&log->words[n], __ATOMIC_RELAXED)) {
                uint64_t v = VHM_LOG_TO_CPU(__atomic_exchange_n(&log->words[n], 0, __ATOMIC_RELAXED));
                uint64_t b = into->words[n];

                v &= vhm_last_word_mask(into->npages);
                into->words[n] = b | v;
                fresh += (uint64_t) __builtin_popcountll(v & ~b);
        }

        /* Pairs with the backends' release ordering of page writes before
         * their log OR: the caller reads harvested pages after this. */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        log->stats.harvests++;
        log->stats.pages += fresh;
        if (pages_harvested)
                *pages_harvested = fresh;
        return 0;
}

int vhm_log_harvest(struct vhm_log *log, struct vhm_bitmap *into, uint64_t *pages_harvested) {
        return harvest(log, into, pages_harvested, false);
}

int vhm_log_harvest_detached(struct vhm_log *log, struct vhm_bitmap *into, uint64_t *pages_harvested) {
        return harvest(log, into, pages_harvested, true);
}

int vhm_log_mark_page(struct vhm_log *log, uint64_t page) {
        uint8_t *bytes = (uint8_t *) log->words;

        if (page >= log->nwords * 64)
                return -ERANGE;
        __atomic_fetch_or(&bytes[page / 8], (uint8_t) (1u << (page % 8)), __ATOMIC_RELEASE);
        return 0;
}

int vhm_log_mark_range(struct vhm_log *log, uint64_t first, uint64_t count) {
        uint64_t end;

        if (__builtin_add_overflow(first, count, &end) || end > log->nwords * 64)
                return -ERANGE;
        while (first < end) {
                unsigned int lo = (unsigned int) (first % 64);
                uint64_t take = 64 - lo;
                uint64_t m;

                if (take > end - first)
                        take = end - first;
                m = (take == 64 ? ~UINT64_C(0) : ((UINT64_C(1) << take) - 1)) << lo;
                __atomic_fetch_or(&log->words[first / 64], VHM_CPU_TO_LOG(m), __ATOMIC_RELEASE);
                first += take;
        }
        return 0;
}
