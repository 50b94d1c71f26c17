/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl's D-Bus side: the verbs that drive vhostmigd (docs/dbus-api.md)
 * and print what it answers, as text or as JSON.  vhostmigctl.c parses and
 * validates the command line; everything here gets well-formed arguments.
 * Each ctl_*() returns the process exit code and has said on stderr what
 * went wrong when it is not EXIT_OK.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <json-c/json.h>

#include "migrate/device.h"
#include "migrate/vm.h"

/* Exit codes, documented in vhostmigctl(1) and --help. */
enum {
        EXIT_OK = 0,
        EXIT_BACKEND = 1,          /* the daemon or a back-end failed, or the daemon is not there */
        EXIT_USAGE = 2,
        EXIT_DENIED = 3,           /* org.freedesktop.DBus.Error.AccessDenied */
        EXIT_NOT_FOUND = 4,        /* no such VM or device */
};

/* vhostmigctl's own options, set by main() (and --json by every verb). */
extern bool arg_json;
extern const char *arg_bus_address;        /* NULL: the system bus */

json_object *hex_json(uint64_t v);
json_object *feature_names_json(uint64_t bits, bool protocol);

/* A region of guest memory for CreateVm; fd is open O_RDWR. */
struct ctl_region {
        const char *file;
        int fd;
        uint64_t gpa, size, offset;
};

/* A queue for AddDevice, in vhost-user order (RX 0, TX 0, RX 1, ...). */
struct ctl_queue {
        uint32_t size;
        uint64_t desc, avail, used;
        int kick_fd, call_fd;
};

struct ctl_device {
        const char *socket;        /* absolute */
        bool server;
        uint64_t features;
        uint32_t queue_pairs;
        const char *mac;           /* xx:xx:xx:xx:xx:xx */
        uint16_t mtu;              /* 0: unset */
        unsigned n_queues;         /* 2 * queue_pairs */
        struct ctl_queue queues[VHM_DEVICE_MAX_QUEUES];
};

int ctl_status(void);
int ctl_list(void);
int ctl_show(const char *vm);
int ctl_vm_create(const char *vm, const struct ctl_region *regions, unsigned n);
int ctl_vm_destroy(const char *vm);
int ctl_device_add(const char *vm, const struct ctl_device *dev);
int ctl_device_remove(const char *vm, unsigned dev);
int ctl_logging_start(const char *vm);
int ctl_logging_stop(const char *vm);
int ctl_logging_harvest(const char *vm);
/* dev < 0: every device of the VM. */
int ctl_announce(const char *vm, int dev);
int ctl_reconnect(const char *vm, unsigned dev);
/* vm NULL: everything; runs until SIGINT or SIGTERM. */
int ctl_watch(const char *vm);
