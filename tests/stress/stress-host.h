/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One "host" of the stress tests and the scale benchmark: a private D-Bus
 * system bus (tests/common/private-bus.c) with its own vhostmigd, started
 * from a JSON configuration and stopped by pid, and what a leak would show
 * in the daemon: its resident memory and its open fds.
 */
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>

#include "tests/common/private-bus.h"

struct stress_host {
        char name[16];
        char dir[64]; /* the daemon's RUNTIME_DIRECTORY, its configuration and log */
        char config[128], log[128];
        struct private_bus bus;
        pid_t daemon; /* -1: not running */
        sd_bus *c;    /* the test's client on that bus */
};

/*
 * A bus, then vhostmigd (the path in $VHOSTMIGD) with config_json as its
 * configuration, waiting until it owns org.vhostmig1.  0, or a negative
 * errno with the reason on stderr; what was started is stopped again by
 * stress_host_stop(), which is safe on a half-started host.
 */
int stress_host_start(struct stress_host *h, const char *name, const char *config_json, uint64_t call_timeout_usec);

/* SIGTERM (SIGKILL after 10 s), the bus stopped, the directory removed; the
 * daemon's log copied to stderr when `dump_log`.  0 when vhostmigd exited 0. */
int stress_host_stop(struct stress_host *h, int dump_log);

/* VmRSS of pid in KiB (/proc/PID/status), or a negative errno. */
long stress_rss_kib(pid_t pid);

/* The CPU model (/proc/cpuinfo "model name"), into buf. */
void stress_cpu_model(char *buf, size_t len);
