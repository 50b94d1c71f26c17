/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tests/common/guest-device.h"

static _Thread_local char error[256];

/* Remembers why `r` (a call's return, not 0) failed; a negative errno to return. */
__attribute__((format(printf, 2, 3))) static int failed(int r, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error, sizeof(error), fmt, ap);
        va_end(ap);
        return r < 0 ? r : -EPROTO;
}

const char *guest_device_error(void) {
        return error;
}

int guest_vm_new(const char *name, const struct vhm_guest_config *gc, struct vhm_guest **g, struct vhm_vm **vm) {
        *g = NULL;
        *vm = NULL;
        int r = vhm_guest_create(gc, g);
        if (r != 0)
                return failed(r, "vhm_guest_create returned %d", r);
        r = vhm_vm_new(name, vm);
        if (r != 0)
                return failed(r, "vhm_vm_new(%s) returned %d", name, r);
        struct vhm_region_spec region = {
                .fd = vhm_guest_mem_fd(*g),
                .guest_phys_addr = 0,
                .size = vhm_guest_mem_size(*g),
        };
        r = vhm_vm_add_region(*vm, &region);
        if (r != 0)
                return failed(r, "vhm_vm_add_region: %s", vhm_vm_error(*vm));
        return 0;
}

int guest_device_new(struct vhm_vm *vm, struct vhm_guest *g, const struct vhm_device_config *cfg,
                     struct vhm_device **dev, uint64_t *used_gpa) {
        struct vhm_device_config c = *cfg;
        vhm_guest_mac(g, c.mac);
        *dev = NULL;
        int r = vhm_device_new(vm, &c, dev);
        if (r != 0)
                return failed(r, "vhm_device_new(%s) returned %d", c.socket, r);
        for (unsigned q = 0; q < 2 * c.queue_pairs; q++) {
                struct vhm_guest_queue_layout l;
                r = vhm_guest_queue_layout(g, q, &l);
                if (r != 0)
                        return failed(r, "vhm_guest_queue_layout(%u) returned %d", q, r);
                struct vhm_queue_spec spec = {
                        .size = l.num,
                        .desc_gpa = l.desc_gpa,
                        .avail_gpa = l.avail_gpa,
                        .used_gpa = l.used_gpa,
                        .kick_fd = l.kick_fd,
                        .call_fd = l.call_fd,
                };
                r = vhm_device_set_queue(*dev, q, &spec);
                if (r < 0)
                        return failed(r, "vhm_device_set_queue(%u): %s", q, vhm_device_error(*dev));
                if (used_gpa)
                        used_gpa[q] = l.used_gpa;
        }
        return 0;
}
