/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "migrate/blockers.h"
#include "proto/vhost-user.h"

__attribute__((format(printf, 2, 3))) static void add_blocker(struct vhm_blockers *out, const char *fmt, ...) {
        if (out->n >= VHM_BLOCKERS_MAX)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(out->reason[out->n++], VHM_BLOCKER_LEN, fmt, ap);
        va_end(ap);
}

void vhm_backend_blockers(uint64_t features, uint64_t protocol_features, struct vhm_blockers *out) {
        memset(out, 0, sizeof(*out));

        /* Without protocol features there is no LOG_SHMFD to ask about: one reason says it all. */
        if (!(features & VHU_BIT(VHU_VF_PROTOCOL_FEATURES)))
                add_blocker(out, "Migration disabled: vhost-user backend lacks VHOST_USER_F_PROTOCOL_FEATURES "
                                 "(so it cannot share a dirty log; upgrade or reconfigure the backend)");
        else if (!(protocol_features & VHU_BIT(VHU_PF_LOG_SHMFD)))
                add_blocker(out,
                            "Migration disabled: vhost-user backend lacks VHOST_USER_PROTOCOL_F_LOG_SHMFD feature.");

        if (!(features & VHU_BIT(VHU_VF_LOG_ALL)))
                add_blocker(out, "Migration disabled: vhost-user backend lacks VHOST_F_LOG_ALL "
                                 "(it cannot log the guest pages it writes)");
}
