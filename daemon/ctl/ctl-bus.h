/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl's D-Bus side: the verbs that drive vhostmigd (docs/dbus-api.md)
 * and print what it answers, as text or as JSON.  vhostmigctl.c parses and
 * validates the command line; everything here gets well-formed arguments
 * and the options in a struct ctl_opts (no globals between files).
 * Each ctl_*() returns the process exit code and has said on stderr what
 * went wrong when it is not EXIT_OK.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "daemon/common/bus-api.h"
#include "migrate/device.h"
#include "migrate/vm.h"

/*
 * Exit codes, documented in vhostmigctl(1) and --help: LSB's for init
 * scripts where one applies, as systemctl uses them.
 */
enum {
        EXIT_OK = 0,
        EXIT_FAILED = 1,      /* the daemon or a back-end failed the request, or the bus is unreachable */
        EXIT_USAGE = 2,       /* a bad command line, or an argument the daemon refused (InvalidArgs) */
        EXIT_DENIED = 4,      /* insufficient privilege: org.freedesktop.DBus.Error.AccessDenied */
        EXIT_NOT_FOUND = 5,   /* no such VM or device (systemctl: no such unit) */
        EXIT_NOT_RUNNING = 7, /* vhostmigd is not running: nothing owns org.vhostmig1 */
};

/*
 * A stock system bus carries at most VHOSTMIG_BUS_MAX_FDS (16) fds in one
 * message; vhostmigctl never sends more (device add splits its queues over
 * AddDevice and AddQueues, 4 queue pairs a call).
 */
#define CTL_QUEUES_PER_CALL ((unsigned) (VHOSTMIG_BUS_MAX_FDS / VHOSTMIG_FDS_PER_QUEUE))

/* The options every daemon verb takes. */
struct ctl_opts {
        bool json;               /* one JSON document (watch: one a line) */
        bool legend;             /* column headers and hints; off with --no-legend / -q */
        bool quiet;              /* -q: no messages on success, only what was asked for */
        const char *bus_address; /* NULL: the system bus */
        const char *host;        /* -H [USER@]HOST: the system bus there, over ssh */
};

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
        const char *socket; /* absolute */
        bool server;
        uint64_t features;
        uint32_t queue_pairs;
        const char *mac;   /* xx:xx:xx:xx:xx:xx, or NULL: none */
        uint16_t mtu;      /* 0: unset */
        bool incoming;     /* connect and negotiate only, for an incoming migration */
        const char *type;  /* VHOSTMIG_DEVICE_TYPE_*, or NULL: the daemon's default (net) */
        unsigned n_queues; /* 2 * queue_pairs */
        struct ctl_queue queues[VHM_DEVICE_MAX_QUEUES];
        /* --log-switch-locked: the back-end switches logs under its queue locks */
        bool log_switch_locked;
};

/* Read-only: these never start vhostmigd through bus activation. */
int ctl_status(const struct ctl_opts *o);
int ctl_list(const struct ctl_opts *o);
int ctl_show(const struct ctl_opts *o, const char *vm);
/* vm NULL: everything; runs until SIGINT or SIGTERM. */
int ctl_watch(const struct ctl_opts *o, const char *vm);
/* Manager.Probe: a back-end probed by the daemon (with -H, on that host). */
int ctl_probe_remote(const struct ctl_opts *o, const char *socket, bool server, unsigned timeout_ms);

int ctl_vm_create(const struct ctl_opts *o, const char *vm, const struct ctl_region *regions, unsigned n);
int ctl_vm_destroy(const struct ctl_opts *o, const char *vm);
int ctl_device_add(const struct ctl_opts *o, const char *vm, const struct ctl_device *dev);
int ctl_device_remove(const struct ctl_opts *o, const char *vm, unsigned dev);
int ctl_logging_start(const struct ctl_opts *o, const char *vm);
int ctl_logging_stop(const struct ctl_opts *o, const char *vm);
int ctl_logging_harvest(const struct ctl_opts *o, const char *vm);
/* dev < 0: every device of the VM. */
int ctl_announce(const struct ctl_opts *o, const char *vm, int dev);
int ctl_reconnect(const struct ctl_opts *o, const char *vm, unsigned dev);

/* Migration: PrepareIncoming (listen NULL: the daemon's default), MigrateTo, the migration properties, Cancel. */
int ctl_migrate_incoming(const struct ctl_opts *o, const char *vm, const char *listen);
/* MigrateTo's arguments and options; a tuning value is sent only when given (else the daemon's default). */
struct ctl_migrate {
        const char *to, *token;
        bool wait; /* until MigrationState is final, with progress; EXIT_FAILED unless "completed" */
        bool live;
        bool force_switchover;
        bool has_max_downtime, has_max_bandwidth, has_max_rounds, has_pause_timeout;
        uint32_t max_downtime_ms, max_rounds, pause_timeout_ms;
        uint64_t max_bandwidth; /* bytes/s, 0: unlimited */
};
int ctl_migrate_start(const struct ctl_opts *o, const char *vm, const struct ctl_migrate *m);
/* MigrateContinue: the VMM paused its vCPUs, the source leaves pre-switchover. */
int ctl_migrate_continue(const struct ctl_opts *o, const char *vm);
int ctl_migrate_status(const struct ctl_opts *o, const char *vm);
int ctl_migrate_cancel(const struct ctl_opts *o, const char *vm);
/* SaveDeviceState into FILE (created 0600 or truncated), LoadDeviceState from FILE; the figures shown after. */
int ctl_migrate_save_state(const struct ctl_opts *o, const char *vm, const char *file);
int ctl_migrate_load_state(const struct ctl_opts *o, const char *vm, const char *file);
