/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A private D-Bus system bus for the tests that run vhostmigd or talk to it
 * (tests/dbus, tests/ops, tests/ctl): tests/dbus/start-bus.sh started and
 * stopped from C, and an sd-bus client on that bus.
 *
 * The script is found through START_BUS (set by meson).  It prints
 * BUS_ADDRESS=, BUS_PID= and BUS_DIR= lines quoted with bash's printf %q;
 * private_bus_start() reads them, private_bus_stop() runs
 * `start-bus.sh --stop PID DIR`.  Nothing here uses cmocka: failures are
 * negative errnos, explained on stderr, for the test to turn into a failed
 * setup or test.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>

struct private_bus {
        char address[512]; /* BUS_ADDRESS: for DBUS_SYSTEM_BUS_ADDRESS or --bus-address */
        pid_t pid;         /* BUS_PID: the dbus-daemon (not our child: private_bus_stop() ends it) */
        char dir[512];     /* BUS_DIR: its configuration, socket and log */
};

/* Runs argv[0] (a path) with argv and waits for it: its wait status, or a negative errno. */
int run_wait(char *const argv[]);

/* A wait status in words ("exit status 1", "killed by signal 9"), or a negative errno's text. */
void describe_status(int status, char *buf, size_t len);

/*
 * Undoes bash's printf %q (backslash escapes, '...' quoting) as start-bus.sh
 * prints its values, into out (len bytes, NUL-terminated).  -EINVAL for an
 * unterminated quote or escape and for $'...' (not needed for what the
 * script prints), -ENOSPC when out is too small.
 */
int shell_unquote(const char *in, char *out, size_t len);

/*
 * Starts a private bus with start-bus.sh (--permissive: no vhostmig policy,
 * anyone may own and call org.vhostmig1) and fills b.  0, or a negative
 * errno with the reason on stderr; a bus half started is stopped again and
 * b left zeroed (b->pid 0: no bus to stop).
 */
int private_bus_start(struct private_bus *b, bool permissive);

/* Stops the bus and removes its directory (start-bus.sh --stop): the script's wait status, non-zero said on stderr. */
int private_bus_stop(const struct private_bus *b);

/*
 * An sd-bus client on address: a bus client, fd passing negotiated, and
 * call_timeout_usec as the method call timeout (0: sd-bus's default).
 * 0 with *out set, or a negative errno (*out untouched).
 */
int private_bus_connect(const char *address, uint64_t call_timeout_usec, sd_bus **out);

/* Whether name has an owner on the bus (org.freedesktop.DBus.NameHasOwner): 0, or a negative errno with *has false. */
int private_bus_name_has_owner(sd_bus *b, const char *name, bool *has);

/*
 * The child's side of starting vhostmigd on a private bus (call it after
 * fork(), never returns): stdin from /dev/null, stdout and stderr appended
 * to log, nothing else inherited, killed with its parent, the bus at
 * address, runtime_dir as RUNTIME_DIRECTORY (PrepareIncoming's default
 * Listen address goes there), no NOTIFY_SOCKET or JOURNAL_STREAM, then bin
 * --config config.  Exit status 126 when the log cannot be opened, 127 when
 * bin cannot be run.
 */
_Noreturn void private_bus_exec_daemon(const char *bin, const char *address, const char *config, const char *log,
                                       const char *runtime_dir);
