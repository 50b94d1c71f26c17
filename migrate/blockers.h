/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Migratability: what stops a VM whose device uses a given back-end from
 * being live-migrated, in words a person can act on.
 */
#pragma once

#include <stdint.h>

#define VHM_BLOCKERS_MAX 16
#define VHM_BLOCKER_LEN  256

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
