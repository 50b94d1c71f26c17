/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Dirty logging for one VM: one shared log for all of its devices (as QEMU
 * shares one log between vhost devices), harvested into the VM's migration
 * bitmap.  Devices added, started or reconnected while logging are brought
 * into the log; a memory layout change resizes it without losing a page.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "log/bitmap.h"
#include "migrate/blockers.h"
#include "migrate/device.h"
#include "migrate/vm.h"

#define VHM_LOGGING_MAX_DEVICES 32
/* VMM dirty bitmaps a VM may have. */
#define VHM_LOGGING_MAX_BITMAPS 8

struct vhm_logging;

int vhm_logging_new(struct vhm_vm *vm, struct vhm_logging **out);
/* Stops logging (best effort) and frees the log and the bitmap; the devices stay. */
void vhm_logging_free(struct vhm_logging *l);
const char *vhm_logging_error(const struct vhm_logging *l);

/* A device joins (and, when logging is on, is brought into the log) or leaves. */
int vhm_logging_add_device(struct vhm_logging *l, struct vhm_device *dev);
void vhm_logging_remove_device(struct vhm_logging *l, struct vhm_device *dev);

/*
 * Every reason the VM cannot migrate now, each prefixed with the device's
 * socket; empty when it can.  Reasons appear and disappear as devices come
 * and go.
 */
void vhm_logging_blockers(const struct vhm_logging *l, struct vhm_blockers *out);

/*
 * Allocates the log, hands it to every device (SET_LOG_BASE once each), then
 * switches LOG_ALL and ring logging on.  A blocked VM fails with -EPERM and
 * the reasons in vhm_logging_error().
 */
int vhm_logging_start(struct vhm_logging *l);
/*
 * Restart: logging goes on over the log a previous process started, taken
 * back from its memfd (log_fd, taken in every case; top_gpa what the log
 * was created for), without a request to any back-end.  Every connected
 * device must have been adopted logging and acknowledging that log
 * (vhm_device_adopt); a disconnected one gets it when it reconnects.  The
 * log's bits stay for the next harvest.
 *
 * bitmap_fd (taken in every case; -1 when the previous process kept none)
 * is the previous process's migration bitmap (vhm_logging_bitmap_fd),
 * covering bitmap_pages pages: the pages harvested and not yet sent, kept
 * (vhm_bitmap_adopt's checks; it must cover the log).
 *
 * pages_lost: the previous process held pages that died with it (a retired
 * log a device might still write, an incomplete log; without bitmap_fd, any
 * harvested page), so every harvest marks every page until every device
 * takes a new log (as after a lost retired log).  The VMM bitmaps are added
 * afterwards (vhm_logging_add_bitmap) and not cleared.  -EBUSY when logging
 * is on already, -EINVAL / -EPERM / -EMSGSIZE / -ERANGE with the reason.
 */
int vhm_logging_adopt(struct vhm_logging *l, int log_fd, uint64_t top_gpa, int bitmap_fd, uint64_t bitmap_pages,
                      bool pages_lost);

/* Logs and migration bitmaps besides the adopted ones that a restart may find. */
#define VHM_LOGGING_MAX_KEPT 8

/*
 * vhm_logging_adopt with everything the previous process kept, every fd
 * taken in every case.  other_logs: logs a device may still write besides
 * log_fd (a retired log; a log kept ahead, vhm_logging_set_keep_ahead, that
 * some device may or may not have been given when the process died), any
 * size (the memfd's).  With any, no device need have acknowledged log_fd,
 * and the largest of all the logs becomes the current one: each is
 * harvested atomically with it, each harvest hands the current log to every
 * connected device that has not acknowledged it, and once all have, the
 * others are freed.  More than there are retired slots: pages_lost.
 * other_bitmaps: other copies of the migration bitmap (one a resize moved it
 * to, kept ahead): their bits are ORed into bitmap_fd's (a copy refused by
 * vhm_bitmap_adopt's checks fails the adoption).  Errors as vhm_logging_adopt.
 */
struct vhm_logging_kept {
        int log_fd;
        uint64_t top_gpa;
        int bitmap_fd;
        uint64_t bitmap_pages;
        int other_logs[VHM_LOGGING_MAX_KEPT];
        unsigned nother_logs;
        int other_bitmaps[VHM_LOGGING_MAX_KEPT];
        unsigned nother_bitmaps;
        bool pages_lost;
};
int vhm_logging_adopt_kept(struct vhm_logging *l, const struct vhm_logging_kept *k);

/*
 * Whether a restart would lose pages (vhm_logging_adopt's pages_lost) even
 * with the migration bitmap and the retired logs kept: the log is
 * incomplete already.
 */
bool vhm_logging_holds_pages(const struct vhm_logging *l);
/*
 * The retired logs' fds (vhm_logging_adopt_kept's other_logs for a
 * successor), at most max; how many there are.  The logging keeps them.
 */
unsigned vhm_logging_retired_fds(const struct vhm_logging *l, int *fds, unsigned max);

/*
 * Write-ahead for a restart: keep(userdata, log_fd, bitmap_fd) is called
 * with a log about to be handed to the devices (a resize's new log, a
 * double-buffered harvest's spare) and the migration bitmap's memfd (which
 * a resize may just have moved), before any device is sent SET_LOG_BASE for
 * that log and before a bit is harvested into the moved bitmap, so that a
 * process dying at any instant leaves a successor every fd that holds a
 * dirty bit.  It returns 0 once both are kept; otherwise the log is not
 * handed out: a resize fails with its error, a harvest takes the log
 * atomically instead.  NULL: nothing is kept.
 */
typedef int (*vhm_logging_keep_fn)(void *userdata, int log_fd, int bitmap_fd);
void vhm_logging_set_keep_ahead(struct vhm_logging *l, vhm_logging_keep_fn keep, void *userdata);
/*
 * The migration bitmap's memfd (-1 before logging first started); the
 * logging keeps it.  A resize of the log may move the bitmap to a new memfd.
 */
int vhm_logging_bitmap_fd(const struct vhm_logging *l);

/*
 * A process handing its VM over to its successor (a restart): frees the
 * logging without a request to any device and without a harvest, so the
 * log's bits stay for the successor (vhm_logging_adopt) to find.
 */
void vhm_logging_free_for_handover(struct vhm_logging *l);

/* Undoes start in reverse; the devices keep running.  A final harvest keeps what was logged. */
int vhm_logging_stop(struct vhm_logging *l);
bool vhm_logging_active(const struct vhm_logging *l);

/*
 * Fetch-and-clears the log (and any log retired by a resize) and every VMM
 * bitmap into the migration bitmap: each word's bits are ORed into the
 * bitmap before exactly those bits are cleared where they came from, so a
 * process dying at any instant leaves every dirty bit in a log, a VMM
 * bitmap or the migration bitmap's memfd.
 * While the log is incomplete (below), every page of the bitmap is set and
 * *new_pages is the bitmap's size.
 */
int vhm_logging_harvest(struct vhm_logging *l, uint64_t *new_pages);
struct vhm_bitmap *vhm_logging_bitmap(const struct vhm_logging *l);

/*
 * Re-sizes the log to the current memory layout: the new log goes to every
 * device first; the old one is harvested and freed only once every device
 * acknowledged the new one.  A no-op when the size still fits.
 */
int vhm_logging_resize(struct vhm_logging *l);

/*
 * The VM's memory layout changed: resize the log (when logging), then send
 * every device the new memory table.  Returns the first error; every device
 * is tried.
 */
int vhm_logging_memory_changed(struct vhm_logging *l);

/*
 * A VMM's dirty bitmap (pages its vCPUs write while logging is on), in the
 * vhost log's format: bit N (byte N / 8, bit N % 8) is guest-physical page
 * N of 4 KiB.  It must be a memfd sealed against shrinking, writable, and
 * cover the VM's guest-physical span (every region's end); otherwise -EINVAL,
 * -EPERM or -ERANGE with the reason in vhm_logging_error().  memfd stays the
 * caller's (the logging keeps a shared mapping of it).  Every harvest takes
 * its bits out atomically (a bit the VMM sets meanwhile stays for the next)
 * and merges them into the migration bitmap; logging start clears it.  A
 * bitmap no longer covering the span (memory added) makes each harvest mark
 * every page.
 */
int vhm_logging_add_bitmap(struct vhm_logging *l, int memfd);
/* How many VMM bitmaps are registered. */
unsigned vhm_logging_bitmap_sources(const struct vhm_logging *l);

/*
 * Double-buffered harvests.  A back-end that switches logs under the locks
 * its queues write the log under writes nothing to the old log once it has
 * answered SET_LOG_BASE: DPDK's vhost library (SET_LOG_BASE runs with every
 * ring's access_lock held and is answered before they are released) and
 * virtiofsd 7.2 (under its dispatch write lock).  When every device of the
 * VM is declared so, connected and on the current log, each harvest hands
 * every device a second, all-clear log of the same size and then reads the
 * one they left with plain loads and stores (vhm_log_harvest_detached): no
 * locked instruction per dirty word, at the price of one SET_LOG_BASE round
 * trip per device and harvest and a second log in memory.  A device that
 * does not take the new log leaves the old one retired and harvested
 * atomically, as after a failed resize; harvests then stay atomic until
 * every device is on the current log again.
 *
 * Off for every device until declared: a back-end that swaps its log pointer
 * without a lock (generic libvhost-user) may OR into the old log after its
 * answer, and that page would be lost.  The caller declares it from its own
 * configuration; nothing a back-end says is trusted for it.  Returns 0, or
 * -ENOENT when dev was not added.
 */
int vhm_logging_set_log_switch_locked(struct vhm_logging *l, struct vhm_device *dev, bool locked);
/* What vhm_logging_set_log_switch_locked declared for dev (false for a device not added). */
bool vhm_logging_log_switch_locked(const struct vhm_logging *l, const struct vhm_device *dev);
/* Harvests that switched logs (double-buffered), since the logging was created. */
uint64_t vhm_logging_switched_harvests(const struct vhm_logging *l);

/* The current log's size in bytes (0 when not logging). */
uint64_t vhm_logging_log_size(const struct vhm_logging *l);
/* The current log's fd (-1 when not logging); the logging keeps it. */
int vhm_logging_log_fd(const struct vhm_logging *l);

/*
 * True when a log a device may still write to had to be freed (more devices
 * refused resizes than there are retired-log slots): what it held is lost,
 * so until every device has acknowledged the current log each harvest marks
 * every page dirty and the migration resends everything.  For the service to
 * show; cleared by the first harvest after every device acknowledged.
 */
bool vhm_logging_incomplete(const struct vhm_logging *l);
