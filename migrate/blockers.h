/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Migratability: what stops a VM whose device uses a given back-end from
 * being live-migrated, in words a person can act on.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VHM_BLOCKERS_MAX 16
#define VHM_BLOCKER_LEN  256

/*
 * What kind of device a back-end serves.  It decides whether the rings and
 * guest memory carry all of the device's state: a net or blk back-end resumes
 * from the ring indices alone; a vhost-user-fs back-end (virtiofsd) keeps its
 * open files and inodes in its own process, and a device of a type we do not
 * know may keep anything, so those migrate only with the back-end's own state
 * (the DEVICE_STATE protocol feature, carried as BACKEND_STATE records).
 */
enum vhm_device_type {
        VHM_DEVICE_TYPE_NET = 0, /* the default: a zeroed configuration is a net device */
        VHM_DEVICE_TYPE_FS,
        VHM_DEVICE_TYPE_BLK,
        VHM_DEVICE_TYPE_OTHER,
        VHM_DEVICE_TYPE_MAX
};

/* "net", "fs", "blk", "other". */
const char *vhm_device_type_name(enum vhm_device_type t);
/* From those names; -EINVAL for anything else. */
int vhm_device_type_from_name(const char *name, enum vhm_device_type *out);
/* The back-end of such a device keeps state outside the rings (fs, other). */
bool vhm_device_type_needs_state(enum vhm_device_type t);

struct vhm_blockers {
        unsigned n;
        char reason[VHM_BLOCKERS_MAX][VHM_BLOCKER_LEN];
};

/*
 * Fills `out` from a back-end's offered virtio features and its negotiated
 * protocol features.  Dirty logging needs PROTOCOL_FEATURES, LOG_SHMFD and
 * LOG_ALL; a back-end missing any of them cannot report the guest pages it
 * writes, so its VM must not migrate.
 */
void vhm_backend_blockers(uint64_t features, uint64_t protocol_features, struct vhm_blockers *out);

/*
 * The same for a device of type t: a type whose back-end keeps state outside
 * the rings is also blocked unless that back-end negotiated DEVICE_STATE
 * ("vhost-user-fs: the back-end keeps state outside the rings and does not
 * offer DEVICE_STATE").  The destination's back-end must negotiate it too.
 */
void vhm_device_type_blockers(enum vhm_device_type t, uint64_t features, uint64_t protocol_features,
                              struct vhm_blockers *out);

/*
 * Only the state blocker (what a stop-and-copy migration, which needs no
 * dirty log, must still refuse): true and the reason in `why` when blocked.
 */
bool vhm_device_state_blocker(enum vhm_device_type t, uint64_t protocol_features, char *why, size_t len);
