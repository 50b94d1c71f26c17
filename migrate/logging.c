/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log/dirty-log.h"
#include "migrate/logging.h"

/*
 * Logs a device refused to give up: still harvested until every device has
 * acknowledged the current log (or logging stops).
 *
 * No back-end can make us fault on a log: it is our own memfd, sealed
 * against shrinking and growing (log/dirty-log.c), so a back-end's ftruncate
 * of the fd it was given fails with EPERM (tests/unit/test-device.c proves
 * it).  Log memory is therefore read directly, unlike guest memory.
 */
#define MAX_RETIRED_LOGS 4

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "a VMM bitmap's byte N / 8, bit N % 8 is read as 64-bit word N / 64, bit N % 64: little-endian only"
#endif

/* A VMM's dirty bitmap, mapped shared: the VMM ORs bits in, harvests take them out atomically. */
struct vmm_bitmap {
        uint64_t *words;
        uint64_t nwords;
};

struct vhm_logging {
        struct vhm_vm *vm;
        struct vhm_device *devices[VHM_LOGGING_MAX_DEVICES];
        /* devices[i]'s back-end switches logs under its queue locks (vhm_logging_set_log_switch_locked) */
        bool switch_locked[VHM_LOGGING_MAX_DEVICES];
        unsigned ndevices;
        struct vhm_log *log;
        /* Double-buffered harvests: the all-clear log the next one hands out (same size as log). */
        struct vhm_log *spare;
        uint64_t switched_harvests;
        struct vhm_log *retired[MAX_RETIRED_LOGS];
        unsigned nretired;
        struct vhm_bitmap *bitmap;
        struct vmm_bitmap vmm[VHM_LOGGING_MAX_BITMAPS];
        unsigned nvmm;
        bool active;
        /*
         * A log a device may still have written to was freed (every retired
         * slot was taken): its pages are unknown, so every harvest marks all
         * pages dirty until every device has acknowledged the current log.
         */
        bool incomplete;
        /*
         * Adopted with logs besides the current one (vhm_logging_adopt_kept):
         * a device may be on any of them, so each harvest hands the current
         * one to those that have not acknowledged it until all have.
         */
        bool reconfirm;
        vhm_logging_keep_fn keep_ahead;
        void *keep_data;
        char alloc_failure[160]; /* why the last log could not be allocated */
        char error[2048];
};

__attribute__((format(printf, 3, 4))) static int log_fail(struct vhm_logging *l, int err, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->error, sizeof(l->error), fmt, ap);
        va_end(ap);
        return err;
}

int vhm_logging_new(struct vhm_vm *vm, struct vhm_logging **out) {
        struct vhm_logging *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->vm = vm;
        *out = l;
        return 0;
}

static void free_logs(struct vhm_logging *l) {
        vhm_log_free(l->log);
        l->log = NULL;
        vhm_log_free(l->spare);
        l->spare = NULL;
        for (unsigned i = 0; i < l->nretired; i++)
                vhm_log_free(l->retired[i]);
        l->nretired = 0;
}

void vhm_logging_free_for_handover(struct vhm_logging *l) {
        if (!l)
                return;
        free_logs(l);
        for (unsigned i = 0; i < l->nvmm; i++)
                munmap(l->vmm[i].words, l->vmm[i].nwords * sizeof(uint64_t));
        vhm_bitmap_free(l->bitmap);
        free(l);
}

void vhm_logging_free(struct vhm_logging *l) {
        if (!l)
                return;
        if (l->active)
                (void) vhm_logging_stop(l);
        free_logs(l);
        for (unsigned i = 0; i < l->nvmm; i++)
                munmap(l->vmm[i].words, l->vmm[i].nwords * sizeof(uint64_t));
        vhm_bitmap_free(l->bitmap);
        free(l);
}

const char *vhm_logging_error(const struct vhm_logging *l) {
        return l->error;
}
bool vhm_logging_active(const struct vhm_logging *l) {
        return l->active;
}
struct vhm_bitmap *vhm_logging_bitmap(const struct vhm_logging *l) {
        return l->bitmap;
}
uint64_t vhm_logging_log_size(const struct vhm_logging *l) {
        return l->log ? vhm_log_size_bytes(l->log) : 0;
}
int vhm_logging_log_fd(const struct vhm_logging *l) {
        return l->log ? vhm_log_fd(l->log) : -1;
}
bool vhm_logging_incomplete(const struct vhm_logging *l) {
        return l->incomplete;
}

/* ---- blockers ---------------------------------------------------------------- */

static void add_reason(struct vhm_blockers *out, const char *prefix, const char *reason) {
        if (out->n < VHM_BLOCKERS_MAX)
                snprintf(out->reason[out->n++], VHM_BLOCKER_LEN, "%s%s", prefix, reason);
}

void vhm_logging_blockers(const struct vhm_logging *l, struct vhm_blockers *out) {
        memset(out, 0, sizeof(*out));
        for (unsigned i = 0; i < l->ndevices; i++) {
                struct vhm_blockers b;
                char prefix[160];
                vhm_device_blockers(l->devices[i], &b);
                snprintf(prefix, sizeof(prefix), "%s: ", vhm_device_socket(l->devices[i]));
                for (unsigned j = 0; j < b.n; j++)
                        add_reason(out, prefix, b.reason[j]);
        }
        if (l->alloc_failure[0])
                add_reason(out, "", l->alloc_failure);
}

/* ---- sizing --------------------------------------------------------------------- */

static int required_top(struct vhm_logging *l, uint64_t *top) {
        struct vhm_log_extent regions[VHM_VM_MAX_REGIONS];
        struct vhm_log_extent rings[VHM_LOGGING_MAX_DEVICES * VHM_DEVICE_MAX_QUEUES];
        size_t nregions = vhm_vm_region_count(l->vm), nrings = 0;

        for (unsigned i = 0; i < nregions; i++) {
                const struct vhm_region *r = vhm_vm_region(l->vm, i);
                regions[i] = (struct vhm_log_extent){ r->guest_phys_addr, r->size };
        }
        for (unsigned d = 0; d < l->ndevices; d++) {
                uint64_t gpa[VHM_DEVICE_MAX_QUEUES], bytes[VHM_DEVICE_MAX_QUEUES];
                unsigned n = vhm_device_used_ring_extents(l->devices[d], gpa, bytes, VHM_DEVICE_MAX_QUEUES);
                for (unsigned q = 0; q < n; q++)
                        rings[nrings++] = (struct vhm_log_extent){ gpa[q], bytes[q] };
        }
        int r = vhm_log_required_top(regions, nregions, rings, nrings, top);
        if (r < 0)
                return log_fail(l, r, "cannot size the dirty log: %s", strerror(-r));
        if (*top == 0)
                return log_fail(l, -EINVAL, "cannot size the dirty log: the VM has no memory");
        return 0;
}

/*
 * A migration bitmap of at least npages.  It lives in a memfd so that the
 * pages harvested into it and not yet sent can outlive the process (a
 * restart keeps it in the fd store: vhm_logging_bitmap_fd).
 */
static int ensure_bitmap(struct vhm_logging *l, uint64_t npages) {
        if (!l->bitmap)
                return vhm_bitmap_new_memfd(npages, &l->bitmap);
        int r = vhm_bitmap_set_memfd(l->bitmap, true);
        if (r < 0)
                return r;
        return vhm_bitmap_npages(l->bitmap) >= npages ? 0 : vhm_bitmap_resize(l->bitmap, npages);
}

/* Logging is off: a restart keeps the bitmap only with the log, so no fd is held for it. */
static void bitmap_off(struct vhm_logging *l) {
        if (l->bitmap)
                (void) vhm_bitmap_set_memfd(l->bitmap, false);
}

/* A new log covering the current layout, and a bitmap at least as large. */
static int allocate_log(struct vhm_logging *l, struct vhm_log **out) {
        uint64_t top;
        int r = required_top(l, &top);
        if (r < 0)
                return r;
        r = vhm_log_new(top, out);
        if (r < 0) {
                snprintf(l->alloc_failure, sizeof(l->alloc_failure),
                         "Migration disabled: the dirty log for 0x%" PRIx64
                         " bytes of guest memory cannot be allocated (%s)",
                         top, strerror(-r));
                return log_fail(l, r, "%s", l->alloc_failure);
        }
        l->alloc_failure[0] = '\0';
        uint64_t npages = vhm_log_npages(*out);
        r = ensure_bitmap(l, npages);
        if (r < 0) {
                vhm_log_free(*out);
                *out = NULL;
                return log_fail(l, r, "cannot allocate the migration bitmap: %s", strerror(-r));
        }
        return 0;
}

/* ---- on and off --------------------------------------------------------------------- */

static int blocked(struct vhm_logging *l) {
        struct vhm_blockers b;
        vhm_logging_blockers(l, &b);
        if (b.n == 0)
                return 0;
        size_t used = (size_t) snprintf(l->error, sizeof(l->error), "migration is blocked:");
        for (unsigned i = 0; i < b.n && used < sizeof(l->error); i++)
                used += (size_t) snprintf(l->error + used, sizeof(l->error) - used, " %s", b.reason[i]);
        return -EPERM;
}

static int join_device(struct vhm_logging *l, struct vhm_device *dev) {
        int r = vhm_device_set_log(dev, vhm_log_fd(l->log), vhm_log_size_bytes(l->log));
        if (r == 0)
                r = vhm_device_set_logging(dev, true);
        if (r < 0)
                return log_fail(l, r, "%s", vhm_device_error(dev));
        return 0;
}

static void leave_device(struct vhm_device *dev) {
        (void) vhm_device_set_logging(dev, false);
        (void) vhm_device_set_log(dev, -1, 0);
}

/* Bits from before logging describe nothing a migration needs: round 0 reads every page after this. */
static void clear_vmm_bitmaps(struct vhm_logging *l) {
        for (unsigned i = 0; i < l->nvmm; i++)
                for (uint64_t w = 0; w < l->vmm[i].nwords; w++)
                        if (__atomic_load_n(&l->vmm[i].words[w], __ATOMIC_RELAXED))
                                (void) __atomic_exchange_n(&l->vmm[i].words[w], 0, __ATOMIC_ACQ_REL);
}

int vhm_logging_start(struct vhm_logging *l) {
        if (l->active)
                return 0;
        int r = blocked(l);
        if (r < 0)
                return r;
        r = allocate_log(l, &l->log);
        if (r < 0) {
                bitmap_off(l);
                return r;
        }
        for (unsigned i = 0; i < l->ndevices; i++) {
                r = join_device(l, l->devices[i]);
                if (r < 0) {
                        /* Undo in reverse what was done, so no device logs into a log about to go. */
                        for (unsigned j = i + 1; j-- > 0;)
                                leave_device(l->devices[j]);
                        free_logs(l);
                        bitmap_off(l);
                        return r;
                }
        }
        clear_vmm_bitmaps(l);
        l->active = true;
        return 0;
}

/* Each connected device logs into the log the new process took back. */
static int check_adopted_devices(struct vhm_logging *l, const struct vhm_log *log) {
        for (unsigned i = 0; i < l->ndevices; i++) {
                struct vhm_device *dev = l->devices[i];
                if (!vhm_device_conn(dev))
                        continue;
                if (!vhm_device_logging(dev) || !vhm_device_log_acknowledged(dev, vhm_log_fd(log)))
                        return log_fail(l, -EINVAL, "%s: was not logging into the dirty log taken back",
                                        vhm_device_socket(dev));
        }
        return 0;
}

/* The migration bitmap a previous process kept (fd taken), covering at least the log's npages. */
static int adopt_bitmap(struct vhm_logging *l, int fd, uint64_t pages, uint64_t npages) {
        struct vhm_bitmap *bm;
        int r = vhm_bitmap_adopt(fd, pages, &bm);
        if (r < 0)
                return log_fail(l, r, "the migration bitmap to take back for %" PRIu64 " pages: %s", pages,
                                r == -EMSGSIZE ? "not of that size"
                                : r == -EPERM  ? "not sealed against resizing, or sealed against writing"
                                               : strerror(-r));
        if (vhm_bitmap_npages(bm) < npages) {
                vhm_bitmap_free(bm);
                return log_fail(l, -ERANGE,
                                "the migration bitmap taken back covers %" PRIu64 " pages, the log %" PRIu64, pages,
                                npages);
        }
        vhm_bitmap_free(l->bitmap);
        l->bitmap = bm;
        return 0;
}

static void retire_log(struct vhm_logging *l, struct vhm_log *old);

static void close_kept(const struct vhm_logging_kept *k) {
        if (k->log_fd >= 0)
                close(k->log_fd);
        if (k->bitmap_fd >= 0)
                close(k->bitmap_fd);
        for (unsigned i = 0; i < k->nother_logs && i < VHM_LOGGING_MAX_KEPT; i++)
                close(k->other_logs[i]);
        for (unsigned i = 0; i < k->nother_bitmaps && i < VHM_LOGGING_MAX_KEPT; i++)
                close(k->other_bitmaps[i]);
}

/* A log kept whole: what it was made for follows from its memfd's size. */
static int adopt_other_log(struct vhm_logging *l, int fd, struct vhm_log **out) {
        struct stat st;
        if (fstat(fd, &st) < 0 || st.st_size <= 0 ||
            (uint64_t) st.st_size > VHM_LOG_MAX_TOP_GPA / (8 * VHM_PAGE_SIZE)) {
                close(fd);
                return log_fail(l, -EINVAL, "a kept dirty log: not a memfd of a log's size");
        }
        int r = vhm_log_adopt(fd, (uint64_t) st.st_size * 8 * VHM_PAGE_SIZE, out);
        if (r < 0)
                return log_fail(l, r, "a kept dirty log of %" PRIu64 " bytes: %s", (uint64_t) st.st_size, strerror(-r));
        return 0;
}

/* Another copy of the migration bitmap (fd taken): its bits ORed in, the bitmap grown to cover it first. */
static int merge_other_bitmap(struct vhm_logging *l, int fd) {
        struct stat st;
        struct vhm_bitmap *bm = NULL;
        int r = -EINVAL;
        if (fstat(fd, &st) < 0 || st.st_size <= 0 || (uint64_t) st.st_size > VHM_BITMAP_MAX_PAGES / 8)
                close(fd);
        else /* bits past the pages it was made for are clear: as many pages as it has bits */
                r = vhm_bitmap_adopt(fd, (uint64_t) st.st_size * 8, &bm);
        if (r == 0 && vhm_bitmap_npages(bm) > vhm_bitmap_npages(l->bitmap))
                r = vhm_bitmap_resize(l->bitmap, vhm_bitmap_npages(bm));
        if (r == 0)
                r = vhm_bitmap_or(l->bitmap, bm);
        vhm_bitmap_free(bm);
        return r < 0 ? log_fail(l, r, "a kept copy of the migration bitmap: %s", strerror(-r)) : 0;
}

/*
 * The logs taken back, into logs[0..*n), the largest first; each fd taken;
 * stops at the first refused.  *npages: what log_fd's log covers.
 */
static int adopt_logs(struct vhm_logging *l, const struct vhm_logging_kept *k, struct vhm_log **logs, unsigned *n,
                      uint64_t *npages) {
        int r = vhm_log_adopt(k->log_fd, k->top_gpa, &logs[0]);
        if (r < 0)
                r = log_fail(l, r, "the dirty log to take back for 0x%" PRIx64 " bytes of guest memory: %s", k->top_gpa,
                             r == -EMSGSIZE ? "not of that size" : strerror(-r));
        *n = r == 0;
        *npages = r == 0 ? vhm_log_npages(logs[0]) : 0;
        for (unsigned i = 0; i < k->nother_logs; i++) {
                if (r < 0)
                        close(k->other_logs[i]);
                else if ((r = adopt_other_log(l, k->other_logs[i], &logs[*n])) == 0)
                        ++*n;
        }
        /* The largest first: it covers what any of them did, so no device is ever handed a smaller log. */
        for (unsigned i = 1; i < *n; i++)
                if (vhm_log_npages(logs[i]) > vhm_log_npages(logs[0])) {
                        struct vhm_log *t = logs[0];
                        logs[0] = logs[i];
                        logs[i] = t;
                }
        return r;
}

/*
 * The migration bitmap kept (fd taken; it must cover `covers`, its log's
 * pages), or a new one, grown to npages, with the other copies ORed in.
 */
static int adopt_bitmaps(struct vhm_logging *l, const struct vhm_logging_kept *k, uint64_t covers, uint64_t npages,
                         int r) {
        if (r == 0 && k->bitmap_fd >= 0)
                r = adopt_bitmap(l, k->bitmap_fd, k->bitmap_pages, covers);
        else if (k->bitmap_fd >= 0)
                close(k->bitmap_fd);
        if (r == 0 && (r = ensure_bitmap(l, npages)) < 0)
                log_fail(l, r, "cannot allocate the migration bitmap: %s", strerror(-r));
        for (unsigned i = 0; i < k->nother_bitmaps; i++) {
                if (r < 0)
                        close(k->other_bitmaps[i]);
                else
                        r = merge_other_bitmap(l, k->other_bitmaps[i]);
        }
        return r;
}

int vhm_logging_adopt_kept(struct vhm_logging *l, const struct vhm_logging_kept *k) {
        struct vhm_log *logs[1 + VHM_LOGGING_MAX_KEPT] = { NULL };
        unsigned n = 0;
        uint64_t covers = 0;
        if (l->active || k->nother_logs > VHM_LOGGING_MAX_KEPT || k->nother_bitmaps > VHM_LOGGING_MAX_KEPT) {
                close_kept(k);
                return l->active ? log_fail(l, -EBUSY, "logging is on already: no log to take back")
                                 : log_fail(l, -E2BIG, "more than %u kept logs or bitmaps", VHM_LOGGING_MAX_KEPT);
        }
        int r = adopt_logs(l, k, logs, &n, &covers);
        uint64_t need;
        if (r == 0 && (r = required_top(l, &need)) == 0 &&
            vhm_log_npages(logs[0]) < (need + VHM_PAGE_SIZE - 1) / VHM_PAGE_SIZE)
                r = log_fail(l, -ERANGE, "the dirty log taken back covers 0x%" PRIx64 " bytes, the VM needs 0x%" PRIx64,
                             vhm_log_npages(logs[0]) * VHM_PAGE_SIZE, need);
        /* With one log every connected device was on it; with more, the first harvests settle them. */
        if (r == 0 && n == 1)
                r = check_adopted_devices(l, logs[0]);
        r = adopt_bitmaps(l, k, covers, r == 0 ? vhm_log_npages(logs[0]) : 0, r);
        if (r < 0) {
                for (unsigned i = 0; i < n; i++)
                        vhm_log_free(logs[i]);
                bitmap_off(l);
                return r;
        }
        l->log = logs[0];
        for (unsigned i = 1; i < n; i++)
                retire_log(l, logs[i]); /* past the slots: freed, and the log marked incomplete */
        l->reconfirm = n > 1;
        l->active = true;
        l->incomplete = l->incomplete || k->pages_lost;
        return 0;
}

int vhm_logging_adopt(struct vhm_logging *l, int log_fd, uint64_t top_gpa, int bitmap_fd, uint64_t bitmap_pages,
                      bool pages_lost) {
        struct vhm_logging_kept k = {
                .log_fd = log_fd,
                .top_gpa = top_gpa,
                .bitmap_fd = bitmap_fd,
                .bitmap_pages = bitmap_pages,
                .pages_lost = pages_lost,
        };
        return vhm_logging_adopt_kept(l, &k);
}

bool vhm_logging_holds_pages(const struct vhm_logging *l) {
        /* The migration bitmap and the retired logs are not among them: their memfds outlive the process. */
        return l->incomplete;
}

unsigned vhm_logging_retired_fds(const struct vhm_logging *l, int *fds, unsigned max) {
        for (unsigned i = 0; i < l->nretired && i < max; i++)
                fds[i] = vhm_log_fd(l->retired[i]);
        return l->nretired;
}

int vhm_logging_bitmap_fd(const struct vhm_logging *l) {
        return l->bitmap ? vhm_bitmap_fd(l->bitmap) : -1;
}

int vhm_logging_stop(struct vhm_logging *l) {
        if (!l->active)
                return 0;
        int first_error = 0;
        for (unsigned i = l->ndevices; i-- > 0;) {
                struct vhm_device *dev = l->devices[i];
                int r = vhm_device_set_logging(dev, false);
                if (r < 0 && !first_error)
                        first_error = log_fail(l, r, "%s", vhm_device_error(dev));
                (void) vhm_device_set_log(dev, -1, 0);
        }
        /* What the back-ends logged until now still counts. */
        (void) vhm_logging_harvest(l, NULL);
        free_logs(l);
        bitmap_off(l);
        l->active = false;
        l->incomplete = false;
        l->reconfirm = false;
        return first_error;
}

/* ---- devices --------------------------------------------------------------------- */

int vhm_logging_add_device(struct vhm_logging *l, struct vhm_device *dev) {
        if (l->ndevices >= VHM_LOGGING_MAX_DEVICES)
                return log_fail(l, -E2BIG, "a VM has at most %u devices", VHM_LOGGING_MAX_DEVICES);
        for (unsigned i = 0; i < l->ndevices; i++)
                if (l->devices[i] == dev)
                        return log_fail(l, -EEXIST, "%s: already added", vhm_device_socket(dev));
        l->switch_locked[l->ndevices] = false;
        l->devices[l->ndevices++] = dev;
        if (!l->active)
                return 0;
        /* Its rings may lie past the current log: grow first, then bring it in. */
        int r = vhm_logging_resize(l);
        if (r == 0)
                r = join_device(l, dev);
        if (r < 0) {
                l->ndevices--;
                leave_device(dev);
        }
        return r;
}

void vhm_logging_remove_device(struct vhm_logging *l, struct vhm_device *dev) {
        for (unsigned i = 0; i < l->ndevices; i++) {
                if (l->devices[i] != dev)
                        continue;
                if (l->active)
                        leave_device(dev);
                memmove(&l->devices[i], &l->devices[i + 1], (l->ndevices - i - 1) * sizeof(l->devices[0]));
                memmove(&l->switch_locked[i], &l->switch_locked[i + 1],
                        (l->ndevices - i - 1) * sizeof(l->switch_locked[0]));
                l->ndevices--;
                return;
        }
}

/* ---- harvest and resize ------------------------------------------------------------- */

/* Every device has been handed the current log and its back-end acknowledged it. */
static bool all_on_current_log(const struct vhm_logging *l) {
        for (unsigned i = 0; i < l->ndevices; i++)
                if (!vhm_device_log_acknowledged(l->devices[i], vhm_log_fd(l->log)))
                        return false;
        return true;
}

static void free_retired(struct vhm_logging *l) {
        for (unsigned i = 0; i < l->nretired; i++)
                vhm_log_free(l->retired[i]);
        l->nretired = 0;
}

/* The bits of one word taken out of a VMM bitmap, into the migration bitmap. */
static uint64_t merge_word(struct vhm_bitmap *bm, uint64_t w, uint64_t bits) {
        uint64_t npages = vhm_bitmap_npages(bm), fresh = 0;
        while (bits) {
                uint64_t page = w * 64 + (uint64_t) __builtin_ctzll(bits);
                bits &= bits - 1;
                if (page < npages && !vhm_bitmap_test(bm, page)) {
                        (void) vhm_bitmap_set(bm, page);
                        fresh++;
                }
        }
        return fresh;
}

/*
 * Plain reads find the non-zero words; only an atomic AND of the bits
 * already merged takes them out, so a bit the VMM sets meanwhile is taken
 * now or stays for the next harvest, and a process dying between the two
 * leaves the bits in both (log/harvest.c orders its words the same way).
 * log/'s harvest works on its own logs only, so this is a word loop of its
 * own.
 */
static void harvest_vmm_bitmaps(struct vhm_logging *l, uint64_t *new_pages) {
        *new_pages = 0;
        uint64_t span_words = ((vhm_vm_top_gpa(l->vm) + VHM_PAGE_SIZE - 1) / VHM_PAGE_SIZE + 63) / 64;
        for (unsigned i = 0; i < l->nvmm; i++) {
                const struct vmm_bitmap *b = &l->vmm[i];
                for (uint64_t w = 0; w < b->nwords; w++) {
                        uint64_t bits = __atomic_load_n(&b->words[w], __ATOMIC_ACQUIRE);
                        if (!bits)
                                continue;
                        /* Merged first, then exactly those bits cleared: they are never only in a register. */
                        *new_pages += merge_word(l->bitmap, w, bits);
                        __atomic_fetch_and(&b->words[w], ~bits, __ATOMIC_RELEASE);
                }
                if (b->nwords < span_words) {
                        /* Memory past the VMM's bitmap was added: what its vCPUs write there is unknown. */
                        l->incomplete = true;
                        log_fail(l, 0, "VMM dirty bitmap %u no longer covers guest memory: every page counts as dirty",
                                 i);
                }
        }
}

/*
 * A log some device may still write to after it was replaced: kept and
 * harvested (atomically) until every device has acknowledged the current one.
 */
static void retire_log(struct vhm_logging *l, struct vhm_log *old) {
        if (l->nretired < MAX_RETIRED_LOGS) {
                l->retired[l->nretired++] = old;
                return;
        }
        /* No slot left: a page written there from now on is unknown. Never silently. */
        vhm_log_free(old);
        l->incomplete = true;
        size_t used = strlen(l->error);
        snprintf(l->error + used, sizeof(l->error) - used,
                 "; every retired-log slot is taken, so the"
                 " dirty log is incomplete until every device takes the current log: every page"
                 " counts as dirty");
}

/* The log about to be handed out, and the bitmap, kept for a successor first (vhm_logging_set_keep_ahead). */
static int keep_ahead(struct vhm_logging *l, const struct vhm_log *log) {
        if (!l->keep_ahead)
                return 0;
        int r = l->keep_ahead(l->keep_data, vhm_log_fd(log), vhm_bitmap_fd(l->bitmap));
        return r < 0 ? log_fail(l, r, "the new dirty log cannot be kept for a restart: %s", strerror(-r)) : 0;
}

/*
 * Double-buffered only where it cannot lose a page: every device declared to
 * switch logs under its queue locks, each on the current log now (so each
 * will answer the next SET_LOG_BASE only once it writes the new log), and no
 * older log still around.
 */
static bool can_switch(const struct vhm_logging *l, bool settled) {
        if (!l->active || !l->ndevices || !settled || l->nretired || l->incomplete)
                return false;
        for (unsigned i = 0; i < l->ndevices; i++)
                if (!l->switch_locked[i])
                        return false;
        return true;
}

/*
 * Hands every device the spare (all clear) log, then reads the one they left
 * with plain loads and stores: once they all answered, none writes it.  If
 * one did not take the spare, the old log is taken atomically instead and
 * retired.  Returns 1 when the harvest switched, 0 when it did not (the
 * spare could not be allocated: the caller harvests atomically), or a
 * negative errno.
 */
static int switch_and_harvest(struct vhm_logging *l, uint64_t *n) {
        if (!l->spare && vhm_log_new(vhm_log_npages(l->log) * VHM_PAGE_SIZE, &l->spare) < 0)
                return 0;
        if (keep_ahead(l, l->spare) < 0)
                return 0;
        bool all_moved = true;
        for (unsigned i = 0; i < l->ndevices; i++)
                if (vhm_device_set_log(l->devices[i], vhm_log_fd(l->spare), vhm_log_size_bytes(l->spare)) < 0) {
                        all_moved = false;
                        log_fail(l, -EIO, "%s", vhm_device_error(l->devices[i]));
                }
        struct vhm_log *old = l->log;
        l->log = l->spare;
        l->spare = NULL;
        int r;
        if (all_moved) {
                r = vhm_log_harvest_detached(old, l->bitmap, n);
                l->spare = old; /* all clear again: the next harvest hands it out */
                l->switched_harvests++;
        } else {
                r = vhm_log_harvest(old, l->bitmap, n);
                retire_log(l, old);
        }
        return r < 0 ? log_fail(l, r, "harvest: %s", strerror(-r)) : 1;
}

/*
 * After a restart that found more than one log: the current one to each
 * connected device that has not acknowledged it (a failure leaves that
 * device unsettled, tried again next time).
 */
static void reconfirm(struct vhm_logging *l) {
        if (!l->reconfirm)
                return;
        for (unsigned i = 0; i < l->ndevices; i++) {
                struct vhm_device *dev = l->devices[i];
                if (vhm_device_conn(dev) && !vhm_device_log_acknowledged(dev, vhm_log_fd(l->log)) &&
                    vhm_device_set_log(dev, vhm_log_fd(l->log), vhm_log_size_bytes(l->log)) < 0)
                        log_fail(l, -EIO, "%s", vhm_device_error(dev));
        }
}

int vhm_logging_harvest(struct vhm_logging *l, uint64_t *new_pages) {
        uint64_t total = 0, n;
        if (!l->log)
                return log_fail(l, -ENODATA, "logging is off");
        reconfirm(l);
        /* Looked at first: what a back-end wrote before acknowledging is in this harvest. */
        bool settled = all_on_current_log(l);
        int r = can_switch(l, settled) ? switch_and_harvest(l, &n) : 0;
        if (r < 0)
                return r;
        if (r == 0) {
                r = vhm_log_harvest(l->log, l->bitmap, &n);
                if (r < 0)
                        return log_fail(l, r, "harvest: %s", strerror(-r));
        } else {
                /* A device that did not take the spare left a retired log behind, to keep. */
                settled = l->nretired == 0;
        }
        total += n;
        for (unsigned i = 0; i < l->nretired; i++) {
                r = vhm_log_harvest(l->retired[i], l->bitmap, &n);
                if (r < 0)
                        return log_fail(l, r, "harvest (retired log): %s", strerror(-r));
                total += n;
        }
        harvest_vmm_bitmaps(l, &n);
        total += n;
        if (l->incomplete) {
                /* Pages were lost with a freed log: only resending everything is safe. */
                total = vhm_bitmap_npages(l->bitmap);
                (void) vhm_bitmap_set_range(l->bitmap, 0, total);
        }
        /* Nobody writes to an older log any more: those harvested last time are done with. */
        if (settled) {
                free_retired(l);
                l->incomplete = false;
                l->reconfirm = false;
        }
        if (new_pages)
                *new_pages = total;
        return 0;
}

int vhm_logging_resize(struct vhm_logging *l) {
        if (!l->active)
                return 0;
        uint64_t top;
        int r = required_top(l, &top);
        if (r < 0)
                return r;
        if ((top + VHM_PAGE_SIZE - 1) / VHM_PAGE_SIZE <= vhm_log_npages(l->log))
                return 0;

        struct vhm_log *fresh;
        r = allocate_log(l, &fresh);
        if (r < 0)
                return r;
        /* Write-ahead: a successor must find the new log (and the bitmap allocate_log may have moved) first. */
        if ((r = keep_ahead(l, fresh)) < 0) {
                vhm_log_free(fresh);
                return r;
        }
        /* The new log to everyone first (SET_LOG_BASE is acknowledged by its reply). */
        bool all_moved = true;
        for (unsigned i = 0; i < l->ndevices; i++)
                if (vhm_device_set_log(l->devices[i], vhm_log_fd(fresh), vhm_log_size_bytes(fresh)) < 0) {
                        all_moved = false;
                        log_fail(l, -EIO, "%s", vhm_device_error(l->devices[i]));
                }
        struct vhm_log *old = l->log;
        l->log = fresh;
        /* The spare has the old size: the next double-buffered harvest makes one of the new. */
        vhm_log_free(l->spare);
        l->spare = NULL;
        /* Only then the old one: harvested last, freed unless a device may still write to it. */
        uint64_t n;
        (void) vhm_log_harvest(old, l->bitmap, &n);
        if (all_moved)
                vhm_log_free(old);
        else
                retire_log(l, old);
        return all_moved ? 0 : -EIO;
}

int vhm_logging_memory_changed(struct vhm_logging *l) {
        /* The log first: a back-end must never be told of memory its log does not cover. */
        int first_error = vhm_logging_resize(l);
        for (unsigned i = 0; i < l->ndevices; i++) {
                int r = vhm_device_sync_memory(l->devices[i]);
                if (r < 0 && first_error == 0)
                        first_error = log_fail(l, r, "%s", vhm_device_error(l->devices[i]));
        }
        return first_error;
}

/* ---- VMM dirty bitmaps ---------------------------------------------------------------- */

bool vhm_logging_log_switch_locked(const struct vhm_logging *l, const struct vhm_device *dev) {
        for (unsigned i = 0; i < l->ndevices; i++)
                if (l->devices[i] == dev)
                        return l->switch_locked[i];
        return false;
}

void vhm_logging_set_keep_ahead(struct vhm_logging *l, vhm_logging_keep_fn keep, void *userdata) {
        l->keep_ahead = keep;
        l->keep_data = userdata;
}

int vhm_logging_set_log_switch_locked(struct vhm_logging *l, struct vhm_device *dev, bool locked) {
        for (unsigned i = 0; i < l->ndevices; i++) {
                if (l->devices[i] == dev) {
                        l->switch_locked[i] = locked;
                        return 0;
                }
        }
        return log_fail(l, -ENOENT, "%s: not a device of this VM's logging", vhm_device_socket(dev));
}

uint64_t vhm_logging_switched_harvests(const struct vhm_logging *l) {
        return l->switched_harvests;
}

unsigned vhm_logging_bitmap_sources(const struct vhm_logging *l) {
        return l->nvmm;
}

/* A memfd the VMM cannot shrink under our mapping, large enough for `need` bytes. */
static int check_bitmap_fd(struct vhm_logging *l, int memfd, uint64_t need) {
        int seals = fcntl(memfd, F_GET_SEALS);
        if (seals < 0)
                return log_fail(l, -EINVAL, "the dirty bitmap is not a memfd (F_GET_SEALS: %s)", strerror(errno));
        if (!(seals & F_SEAL_SHRINK))
                return log_fail(l, -EPERM, "the dirty bitmap's memfd must be sealed against shrinking (F_SEAL_SHRINK)");
        if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
                return log_fail(l, -EPERM, "the dirty bitmap's memfd is sealed against writing: harvests clear it");
        struct stat sb;
        if (fstat(memfd, &sb) < 0)
                return log_fail(l, -errno, "the dirty bitmap: fstat: %s", strerror(errno));
        if ((uint64_t) sb.st_size < need)
                return log_fail(l, -ERANGE,
                                "the dirty bitmap is %" PRIu64 " bytes; guest memory up to 0x%" PRIx64
                                " needs %" PRIu64,
                                (uint64_t) sb.st_size, vhm_vm_top_gpa(l->vm), need);
        return 0;
}

int vhm_logging_add_bitmap(struct vhm_logging *l, int memfd) {
        if (l->nvmm >= VHM_LOGGING_MAX_BITMAPS)
                return log_fail(l, -E2BIG, "a VM has at most %u VMM dirty bitmaps", VHM_LOGGING_MAX_BITMAPS);
        uint64_t top = vhm_vm_top_gpa(l->vm);
        if (!top)
                return log_fail(l, -EINVAL, "the VM has no memory for a dirty bitmap to cover");
        uint64_t npages = (top + VHM_PAGE_SIZE - 1) / VHM_PAGE_SIZE, nwords = (npages + 63) / 64;
        int r = check_bitmap_fd(l, memfd, nwords * sizeof(uint64_t));
        if (r < 0)
                return r;
        void *p = mmap(NULL, nwords * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (p == MAP_FAILED)
                return log_fail(l, -errno, "cannot map the dirty bitmap: %s", strerror(errno));
        l->vmm[l->nvmm++] = (struct vmm_bitmap){ .words = p, .nwords = nwords };
        return 0;
}
