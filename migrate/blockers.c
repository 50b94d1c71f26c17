/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
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

static const char *const type_names[VHM_DEVICE_TYPE_MAX] = {
        [VHM_DEVICE_TYPE_NET] = "net",
        [VHM_DEVICE_TYPE_FS] = "fs",
        [VHM_DEVICE_TYPE_BLK] = "blk",
        [VHM_DEVICE_TYPE_OTHER] = "other",
};

const char *vhm_device_type_name(enum vhm_device_type t) {
        return (unsigned) t < VHM_DEVICE_TYPE_MAX ? type_names[t] : "unknown";
}

int vhm_device_type_from_name(const char *name, enum vhm_device_type *out) {
        for (unsigned t = 0; name && t < VHM_DEVICE_TYPE_MAX; t++)
                if (strcmp(name, type_names[t]) == 0) {
                        *out = (enum vhm_device_type) t;
                        return 0;
                }
        return -EINVAL;
}

bool vhm_device_type_needs_state(enum vhm_device_type t) {
        return t == VHM_DEVICE_TYPE_FS || t == VHM_DEVICE_TYPE_OTHER;
}

bool vhm_device_state_blocker(enum vhm_device_type t, uint64_t protocol_features, char *why, size_t len) {
        if (!vhm_device_type_needs_state(t) || (protocol_features & VHU_BIT(VHU_PF_DEVICE_STATE)))
                return false;
        /* QEMU's names for the devices, which is how people know them. */
        snprintf(why, len, "%s: the back-end keeps state outside the rings and does not offer DEVICE_STATE",
                 t == VHM_DEVICE_TYPE_FS ? "vhost-user-fs" : "vhost-user device of another type");
        return true;
}

void vhm_device_type_blockers(enum vhm_device_type t, uint64_t features, uint64_t protocol_features,
                              struct vhm_blockers *out) {
        vhm_backend_blockers(features, protocol_features, out);
        char why[VHM_BLOCKER_LEN];
        if (vhm_device_state_blocker(t, protocol_features, why, sizeof(why)))
                add_blocker(out, "%s", why);
}
