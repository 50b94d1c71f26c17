/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A real libvirtd for tests: Debian's libvirtd with its own configuration,
 * socket directory and pid file in a fresh directory, the QEMU driver kept
 * out (an empty LIBVIRT_DRIVER_DIR), clients on the test driver through
 * test+unix:///default?socket=DIR/libvirt-sock.  It runs as the test's child
 * and is stopped by its pid.  Failures are negative errnos explained on
 * stderr; nothing here uses cmocka.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct libvirtd_fixture {
        char dir[256]; /* holds everything; removed by libvirtd_fixture_cleanup() */
        char uri[512]; /* test+unix:///default?socket=DIR/sock/libvirt-sock */
        pid_t pid;     /* 0 when not running */
};

/* The libvirtd and virsh binaries (LIBVIRTD, VIRSH in the environment, else Debian's paths); NULL when missing. */
const char *libvirtd_fixture_binary(void);
const char *libvirtd_fixture_virsh(void);

/* Creates the directory and configuration and starts libvirtd; returns once it accepts connections (10 s at most). */
int libvirtd_fixture_start(struct libvirtd_fixture *f);

/* Starts it again in the same directory (after libvirtd_fixture_kill()). */
int libvirtd_fixture_restart(struct libvirtd_fixture *f);

/* Sends sig to libvirtd and waits for it to end (5 s, then SIGKILL). */
int libvirtd_fixture_kill(struct libvirtd_fixture *f, int sig);

/* Stops libvirtd if it runs and removes the directory. */
void libvirtd_fixture_cleanup(struct libvirtd_fixture *f);

/* Runs `virsh -c URI args...` (NULL-terminated); its exit status, or a negative errno. */
int libvirtd_fixture_virsh_run(const struct libvirtd_fixture *f, ...);

/* Defines and starts a test-driver domain with a vhostuser interface; its UUID into uuid (37 bytes). */
int libvirtd_fixture_define_vhostuser_domain(const struct libvirtd_fixture *f, const char *name, char *uuid);
