/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl's connection to vhostmigd: the bus (system, an address, or a
 * host's over ssh), method calls that start the daemon through bus
 * activation or, for reading, never do, and what a failed call means as an
 * exit code and a message.
 */
#pragma once

#include <stdbool.h>
#include <string.h>

#include <systemd/sd-bus.h>

#include "ctl-bus.h"
#include "daemon/common/bus-api.h"
#include "daemon/common/cleanup.h"

/* Our interfaces are the bus name's: "org.vhostmig1.Vm". */
#define OUR_IFACE_PREFIX VHOSTMIG_BUS_NAME "."

#define streq(a, b) (strcmp((a), (b)) == 0)

struct ctl_conn {
        sd_bus *bus;
        const struct ctl_opts *o;
        const char *verb; /* for messages: "vm create" */
        bool read_only;   /* never start vhostmigd through bus activation */
};

/* Connects as the options say; EXIT_OK or the exit code (said on stderr). */
int conn_open(struct ctl_conn *c, const struct ctl_opts *o, const char *verb, bool read_only);
void conn_close(struct ctl_conn *c);

/* What a call was about, to word "not found" errors; vm NULL for the manager. */
struct target {
        const char *vm;
        int dev; /* -1: the VM itself */
};

/* A method call to vhostmigd, auto-start as the connection says; 0 or a negative errno. */
int conn_new_call(struct ctl_conn *c, sd_bus_message **m, const char *path, const char *iface, const char *member);

/* Sends m; EXIT_OK, or the exit code after saying what went wrong. */
int conn_call(struct ctl_conn *c, const struct target *t, sd_bus_message *m, sd_bus_message **reply);

/* A call with arguments in sd_bus_message_append() form. */
int conn_callv(struct ctl_conn *c, const struct target *t, const char *path, const char *iface, const char *member,
               sd_bus_message **reply, const char *types, ...);

/* A reply that does not read as documented. */
int conn_bad_reply(struct ctl_conn *c, int r);
int conn_oom(struct ctl_conn *c);

/* The exit code for a failed call and its message on stderr. */
int conn_failed(struct ctl_conn *c, const struct target *t, const sd_bus_error *e, int r);

/* Object paths; NULL when out of memory. */
char *vm_path(const char *vm);
char *device_path(const char *vm, unsigned dev);
/* "/org/vhostmig1/vm/NAME[/dev/N]" to its VM name and device number (-1 for the VM). */
bool decode_object(const char *path, char **vm, int *dev);
