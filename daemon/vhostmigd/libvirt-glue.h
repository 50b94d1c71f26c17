/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The libvirt watcher as vhostmigd sees it: started from the configuration,
 * its connection state for the Manager's properties, and what each domain
 * event does to the VMs bound to that domain.  One watcher per process.
 * Built without libvirt, the watcher is "disabled" and a configured URI is
 * reported as an error.
 */
#pragma once

#include <stdint.h>

struct daemon;

/* Starts the watcher when the configuration names a URI; a failure is logged and kept as the last error. */
void daemon_libvirt_start(struct daemon *d);

/* Stops it (bounded: a thread stuck in libvirt is left behind, see libvirt_watch_stop()). */
void daemon_libvirt_stop(void);

struct daemon_libvirt_status {
        const char *uri;        /* "" when the watcher is off */
        const char *connection; /* "disabled", "connecting", "connected", "disconnected" */
        char last_error[512];
        uint64_t last_error_usec; /* CLOCK_REALTIME, 0: none */
};

void daemon_libvirt_status(struct daemon_libvirt_status *out);
