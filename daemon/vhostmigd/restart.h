/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Restart without disturbing running VMs, as vhostmigd does it: the state
 * store (state-store.h) fed from every VM's worker, the VMs rebuilt from it
 * on start, and SIGTERM handing them over to the next process.
 *
 * Saving.  After every job the VM's worker captures what a successor needs
 * (restart_capture): each fd that cannot be recreated, kept in the fd store
 * at once under a name of its own, and the VM's part of the state as JSON,
 * handed to the loop.  The loop publishes the whole state at most once per
 * loop iteration (a deferred event source), then removes from the store the
 * fds the published state no longer names.  A name ends in a number no
 * other fd of the daemon had ("vm.NAME.dev.ID.conn.N"), so a replaced fd
 * never shares its name with the one it replaces: the state always names
 * fds that are in the store, whenever the process dies.
 *
 * Restoring (restart_restore, before the bus name is taken): every VM, its
 * logging and its devices rebuilt from the verified state without a request
 * to a back-end; a state that cannot be trusted is refused (one line) and
 * every fd it came with closed and removed from the store.
 */
#pragma once

#include <stdbool.h>

#include <json-c/json.h>

struct daemon;
struct device_object;
struct vm_object;

/* Worker-owned and loop-owned restart data of one VM (restart.c). */
struct restart_vm;

int restart_new(struct daemon *d);
void restart_free(struct daemon *d);
/* NOTIFY_SOCKET is set: fds and the state go to the store. */
bool restart_enabled(const struct daemon *d);

int restart_vm_new(struct vm_object *o);
void restart_vm_free(struct vm_object *o);

/* Worker, after every job: the VM's fds kept, its state handed to the loop. */
void restart_capture(struct vm_object *o);
/* Worker, DestroyVm: every fd the VM kept is to go from the store. */
void restart_vm_released(struct vm_object *o);
/* Worker: the device is about to close its back-end connection itself (a reconnect): the store lets it go now. */
void restart_device_dropping_connection(struct vm_object *o, const struct device_object *d);
/* Worker, AddDirtyBitmap succeeded: the VMM's bitmap memfd (taken) is kept for a successor. */
void restart_bitmap_added(struct vm_object *o, int fd);

/* Loop: the number a new device's fds are named by (never reused in the VM). */
unsigned restart_vm_next_sid(struct vm_object *o);
/* Loop, a job done: publish when its capture found a change. */
void restart_vm_changed(struct vm_object *o);
/* Loop: the VM's state may have changed; published at the end of this loop iteration. */
void restart_changed(struct daemon *d);
/* Loop: the VM object goes (teardown): what it still had to remove from the store moves to the daemon. */
void restart_vm_gone(struct vm_object *o);
/* Loop: publish now when anything changed. */
void restart_flush(struct daemon *d);

/* Loop, on start, before the bus name: 0 (with or without VMs restored), < 0 only without memory. */
int restart_restore(struct daemon *d);

/* Loop, SIGTERM: whether the VMs are kept for the next start (the store is in use). */
bool restart_keeps_vms(const struct daemon *d);
/* Loop: every VM's worker stopped, the state published, the VMs freed without a request. */
void restart_handover(struct daemon *d);
