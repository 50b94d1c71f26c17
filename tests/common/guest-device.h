/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The synthetic guest (tests/guest/guest.h) wired to the migration code as a
 * VMM would: its memory as the region at gpa 0 of a VM (migrate/vm.h), and a
 * device (migrate/device.h) with the guest's MAC whose queues are the guest's
 * rings.  For the tests and the benchmarks alike: the functions return 0 or a
 * negative errno, and guest_device_error() says which call failed and why
 * (cmocka tests wrap them in GD_CHECK, tests/common/check.h).
 */
#pragma once

#include <stdint.h>

#include "migrate/device.h"
#include "migrate/vm.h"
#include "daemon/guest/guest.h"

/*
 * A guest made with gc (NULL: all defaults) and a VM called `name` holding
 * its memory at gpa 0.  On failure what was made is still in *g and *vm,
 * for the caller's usual clean-up.
 */
int guest_vm_new(const char *name, const struct vhm_guest_config *gc, struct vhm_guest **g, struct vhm_vm **vm);

/*
 * A device of vm configured by cfg, but with the guest's MAC, whose queues
 * 0 .. 2*cfg->queue_pairs-1 are the guest's rings.  used_gpa, when not NULL,
 * receives each queue's used ring (the log_guest_addr a back-end is given).
 * On failure a device that was made is still in *dev.
 */
int guest_device_new(struct vhm_vm *vm, struct vhm_guest *g, const struct vhm_device_config *cfg,
                     struct vhm_device **dev, uint64_t *used_gpa);

/* Why the last of the calls above failed (this thread's). */
const char *guest_device_error(void);
