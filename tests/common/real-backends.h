/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Starting and stopping the real back-ends the tests run against: DPDK
 * testpmd with a net_vhost port and QEMU's virtiofsd.  Each is a child of
 * the test, stopped by pid, its socket and files removed afterwards.
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

/* Filled by start_*(); real_backend_init() for one not started yet. */
struct real_backend {
        pid_t pid;
        int stdin_fd; /* testpmd exits when its stdin reaches EOF: we hold it open */
        char dir[64]; /* private directory for the socket and logs */
        char socket[128];
        char log[128];
        char dpdk_prefix[32]; /* testpmd's runtime directory under /var/run/dpdk */
        int listen_fd;        /* client-mode testpmd: the socket we listen on, or -1 */
        char socket2[128];    /* TESTPMD_TWO_PORTS: the second vhost port's socket */
};

enum testpmd_flags {
        TESTPMD_NULL_PORT = 1 << 0, /* a net_null second port floods the guest's receive rings */
        TESTPMD_CLIENT = 1 << 1,    /* testpmd connects to us (b->listen_fd), like OVS dpdkvhostuserclient */
        /*
         * A second vhost port at b->socket2, also looped (macswap): a
         * migration's source and destination ports on one testpmd.  Server
         * mode only.
         */
        TESTPMD_TWO_PORTS = 1 << 2,
};

#define TESTPMD_BIN   "/usr/bin/dpdk-testpmd"
#define VIRTIOFSD_BIN "/usr/lib/qemu/virtiofsd"

/* Nothing running, nothing to remove: stop_backend() on it is a no-op. */
void real_backend_init(struct real_backend *b);

/*
 * testpmd in macswap/loop mode with `queues` queue pairs on one vhost port
 * (so every frame the guest sends comes back to it).  Returns 0 once the
 * socket exists (server mode) or once testpmd runs with our listening socket
 * in b->listen_fd (TESTPMD_CLIENT), or a negative errno.
 */
int start_testpmd(struct real_backend *b, unsigned queues, unsigned flags);

/* virtiofsd sharing a fresh empty directory. */
int start_virtiofsd(struct real_backend *b);

/*
 * The same in a given directory, as a supervisor restarts a back-end: after
 * stop_backend() removed it, `dir` (a copy of the old b->dir) is made again
 * and the new back-end listens at the same socket path, so a device
 * configured with it finds the new one.  stop_backend() cleans up as usual.
 */
int start_testpmd_at(struct real_backend *b, const char *dir, unsigned queues, unsigned flags);
int start_virtiofsd_at(struct real_backend *b, const char *dir);

/* SIGTERM, wait (SIGKILL after a grace period), remove socket, logs and directory. */
void stop_backend(struct real_backend *b);

/* Waits for the process to exit on its own (virtiofsd does after its client leaves). */
bool backend_exited(struct real_backend *b, unsigned timeout_ms);

/* True when the binary is installed; tests fail (not skip) when it is missing. */
bool backend_available(const char *bin);

/*
 * testpmd's EAL takes the CPUs it inherits as lcores: the first for its main
 * thread (and its control threads: vhost-events), the second for the
 * forwarding lcore, which busy-polls.  A process that busy-polls on that same
 * CPU takes turns with it a scheduler time slice at a time, and the echo rate
 * drops from millions to thousands of frames a second.  So once testpmd runs
 * the caller keeps off that CPU; before starting another testpmd (which
 * inherits the caller's affinity) it lets go again.
 *
 * testpmd_cpus_init() saves the CPUs this process may use (call it once,
 * first); testpmd_cpus_avoid_worker() leaves out the second of them (no-op
 * with fewer than two); testpmd_cpus_restore() allows all of them again.
 * 0 or a negative errno.
 */
int testpmd_cpus_init(void);
int testpmd_cpus_avoid_worker(void);
int testpmd_cpus_restore(void);
