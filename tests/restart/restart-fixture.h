/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the adoption tests share: a temporary directory with the test
 * back-end's socket and record, a guest and its VM, the previous process's
 * device (old) and the one that adopts its connection (dev).  One fixture per
 * test program, `fx`; what a test adds (its log or logging) it frees before
 * restart_fx_teardown().
 */
#pragma once

#include <sys/types.h>

struct vhm_device;
struct vhm_guest;
struct vhm_vm;

#define RESTART_FX_QUEUE_PAIRS 2

struct restart_fx {
        char dir[64], socket[128], record[128];
        pid_t pid;
        struct vhm_guest *g;
        struct vhm_vm *vm;
        struct vhm_device *old, *dev;
        int fds_before;
};

extern struct restart_fx fx;

/* cmocka setup: the directory /tmp/vhostmig-PREFIX-XXXXXX, the fd count; -1 when it cannot be made. */
int restart_fx_setup(const char *prefix);
/* The devices, the VM and the guest freed, the back-end stopped, the files removed. */
void restart_fx_teardown(void);

/* A device on the fixture's socket, as the previous process and the adopting one configure it. */
struct vhm_device *restart_fx_new_device(void);
/* The test back-end listening (one connection), a guest VM called NAME and fx.old running on it. */
void restart_fx_running_device(const char *name);
/* Requests the back-end has received so far: one record line each, other lines aside. */
unsigned restart_fx_requests_recorded(void);
