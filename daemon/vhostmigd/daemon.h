/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vhostmigd's objects, shared by the Manager, Vm and Device D-Bus code. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "daemon/common/bus-api.h"
#include "daemon/vhostmigd/config.h"
#include "daemon/vhostmigd/messages.h"
#include "daemon/vhostmigd/props.h"
#include "daemon/vhostmigd/worker.h"
#include "migrate/blockers.h"
#include "migrate/device.h"
#include "migrate/logging.h"

struct vm_object;
struct vm_job;
struct restart;
struct restart_vm;

struct daemon {
        sd_event *event;
        sd_bus *bus;
        struct vhostmigd_config cfg;
        struct vm_object *vms; /* list */
        unsigned nvms;
        /* Probe calls, which belong to no VM: one at a time on each, never queued. */
        struct worker probe_workers[CONFIG_MAX_PROBES];
        unsigned nprobe_workers;
        sd_event_source *monitor;
        sd_event_source *shutdown_timer; /* bounds how long shutdown waits for teardowns */
        unsigned vms_tearing_down;       /* destroyed, worker not yet stopped */
        bool shutting_down;

        /* ---- operating the daemon (main.c, log.c): reload, probe pool size ---- */
        const char *config_path; /* as given; NULL: the default, which may be missing */
        /* Started probe workers; those at nprobe_workers and above are retired by the monitor once idle. */
        bool probe_worker_started[CONFIG_MAX_PROBES];
        /* Restart survival (restart.c): the fd store and the state in it. */
        struct restart *restart;
};

/*
 * What D-Bus shows of a device.  The worker writes `snap` after every job
 * (under vm->snap_lock); the loop keeps `loop` itself.  Property getters
 * read both as one struct device_view (device-object.c has the table).
 */
struct device_snapshot {
        char state[16];
        uint64_t features, acked_features, protocol_features, acked_protocol_features;
        uint32_t queue_pairs;
        uint16_t mtu;
        struct prop_u32v ring_indices;
        uint64_t reconnects, refused_peers, requests, request_failures;
        struct prop_strv blockers;
        char error[384]; /* the device's own failure while failed or disconnected */
};

struct device_loop_state {
        char socket[108];
        bool server;
        char type[8]; /* vhm_device_type_name(): "net", "fs", "blk", "other" */
        char mac[18]; /* "" when none was given */
        /* AddDevice's LogSwitchLocked; set before the device's first job, which reads it */
        bool log_switch_locked;
        uint64_t created_usec, state_change_usec, last_error_usec;
        char last_error[384];
};

struct device_view {
        struct device_snapshot w;
        struct device_loop_state l;
};

#define DEVICE_PATH_MAX PROP_PATH_MAX

struct device_object {
        const struct prop_iface *iface; /* first: the property getters find it here */
        struct vm_object *vm;
        unsigned number;
        char path[DEVICE_PATH_MAX]; /* set once the device exists */
        char *socket;
        uint8_t mac[6];
        bool has_mac;
        bool incoming; /* added for an incoming migration: connected, rings not started */
        /* AddDevice with fewer queues than QueuePairs need: the rest come with AddQueues (loop). */
        bool configuring;
        unsigned queues_given, queues_expected;
        struct vhm_device *dev;        /* worker thread only */
        bool worker_configuring;       /* worker thread only: not connected until the last queue */
        unsigned worker_queues_set;    /* worker thread only */
        uint64_t next_reconnect_usec;  /* worker thread only */
        struct device_snapshot snap;   /* under vm->snap_lock */
        struct device_loop_state loop; /* loop only */
        struct device_view published;  /* loop only */
        bool removed;
        unsigned sid;      /* names its fds in the fd store (restart.c); set before its first job */
        sd_bus_slot *slot; /* loop: its vtable at `path` while it is on the bus */
        /* Loop: allocated with AddDevice, so that a device that cannot be published is released regardless. */
        struct vm_job *release_job;
};

struct vm_snapshot {
        uint64_t memory_size;
        bool blocked;
        struct prop_strv blockers;
        bool logging;
        bool log_incomplete; /* a log was lost: harvests resend everything */
        uint64_t log_size, dirty_pages;
        uint32_t dirty_bitmaps; /* VMM dirty bitmaps registered (AddDirtyBitmap) */
};

struct vm_loop_state {
        char name[64];
        uint32_t page_size;
        struct prop_pathv devices;
        uint64_t harvests;
        uint64_t created_usec, state_change_usec, last_error_usec;
        char last_error[512];
        /* The libvirt domain it is bound to (CreateVm's LibvirtDomain): a lowercase UUID, a name, or "". */
        char libvirt_domain[256];
        uint64_t libvirt_downtime_ms; /* the last JOB_COMPLETED's downtime libvirt reported */
};

/*
 * A VM's migration as D-Bus shows it.  Written under snap_lock by the loop
 * (a migration begins, is cancelled) and by the worker (its progress, while
 * the migration job runs, and its outcome): a migration is one long job, so
 * it cannot wait for the snapshot refresh that follows a job.
 */
struct vm_migration_view {
        char state[24]; /* VHOSTMIG_MIGRATION_STATE_* */
        char role[16];  /* VHOSTMIG_ROLE_* */
        uint64_t pages_total, pages_transferred, zero_pages, bytes_transferred;
        uint64_t downtime_ms, total_ms;
        uint32_t rarp_sent;
        uint64_t checksum; /* of the final memory image the migration carried (END's) */
        /* Live pre-copy (0 otherwise), as the engine's stats name them. */
        uint64_t round, pages_remaining, dirty_rate, bandwidth, expected_downtime_ms, setup_ms;
        char error[512];
};

struct vm_view {
        struct vm_snapshot w;
        struct vm_loop_state l;
        struct vm_migration_view m;
};

struct vm_object {
        const struct prop_iface *iface; /* first: the property getters find it here */
        struct daemon *daemon;
        struct vm_object *next;
        char *name;
        char *path;
        struct vhm_vm *vm;           /* worker thread only, once created */
        struct vhm_logging *logging; /* worker thread only */
        /* The devices D-Bus shows (loop thread; changed under snap_lock). */
        struct device_object *devices[VHM_LOGGING_MAX_DEVICES];
        unsigned ndevices;
        unsigned devices_adding; /* AddDevice jobs queued: they count against the limit too */
        /*
         * The devices the worker runs (worker thread only).  A device joins
         * here when its AddDevice job succeeds, before the loop publishes it,
         * so a DestroyVm queued right behind it still releases it.
         */
        struct device_object *running[VHM_LOGGING_MAX_DEVICES];
        unsigned nrunning;
        unsigned next_device_number;
        struct worker worker;
        /* Allocated with the VM, so that destroying it never depends on memory. */
        struct vm_job *destroy_job;
        bool monitor_queued;
        bool destroying;

        /* Migration (migration-object.c). */
        struct vm_migration_view migration; /* under snap_lock */
        bool migrating;                     /* loop: a migration job is queued or runs */
        int migration_cancel_fd;            /* loop: the running migration's eventfd, -1 when none */
        int migration_continue_fd;          /* loop: its MigrateContinue eventfd (the job's), -1 when none */
        bool migrated_away;                 /* worker: the devices went to the destination (or may have): hands off */
        bool departed;                      /* loop: the same, known when the MigrateTo job is done */
        sd_event_source *migration_timer;   /* loop: publishes progress while a migration runs */
        /*
         * The worker writes migration_wake_fd when MigrationState changes, so
         * that the loop publishes it at once rather than at the next tick
         * (still no more often than the throttle allows).  Both loop-owned,
         * -1 / NULL while no migration runs.
         */
        int migration_wake_fd;
        sd_event_source *migration_wake;
        uint64_t migration_published_usec; /* loop: CLOCK_MONOTONIC of the last progress publish */
        /*
         * Loop: an Announce sent frames after the last completed incoming
         * migration, identified by its checksum: the destination's
         * RESUMED_MIGRATED need not announce again.
         */
        bool announced_after_migration;
        uint64_t announced_checksum;

        pthread_mutex_t snap_lock;
        struct vm_snapshot snap;   /* under snap_lock */
        struct vm_loop_state loop; /* loop only */
        struct vm_view published;  /* loop only */

        struct restart_vm *restart; /* restart.c: what the fd store holds of this VM */
        bool worker_stopped;        /* handed over: the worker was stopped already */
        sd_bus_slot *slot;          /* loop: its vtable at `path` while it is on the bus */
};

/* Messages (log.c): to the journal under systemd, else to stderr; messages above `level` are dropped. */
void daemon_log_init(int level);
void daemon_log_set_level(int level);
int daemon_log_get_level(void);
/* org.freedesktop.LogControl1 at /org/freedesktop/LogControl1 (log.c). */
int log_control_register(struct daemon *d);
/*
 * `message_id`: one of messages.h for an event, or NULL; `vm`, `device`: who
 * it concerns, or NULL; `request`: the vhost-user request a failure
 * concerns, or VHU_REQ_NONE (0).
 */
void daemon_log_full(int priority, const char *message_id, const struct vm_object *vm, const char *device,
                     uint32_t request, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
#define daemon_log(priority, vm, device, ...) daemon_log_full(priority, NULL, vm, device, 0, __VA_ARGS__)
#define daemon_log_event(priority, message_id, vm, device, ...) \
        daemon_log_full(priority, message_id, vm, device, 0, __VA_ARGS__)
void daemon_update_status(struct daemon *d);

/* The Manager (manager.c). */
int manager_register(struct daemon *d);

/* object-manager.c: org.freedesktop.DBus.ObjectManager at the root path. */
int object_manager_register(struct daemon *d);
/* Only root may change state: the bus policy says so, and this holds on a permissive bus too. */
int daemon_check_root(sd_bus_message *m, sd_bus_error *error);

/* VMs (vm-object.c). */
/* `libvirt_domain`: the domain it is bound to (validated, a UUID in lowercase), or "". */
int vm_object_create(struct daemon *d, const char *name, const char *libvirt_domain, struct vhm_vm *vm,
                     struct vm_object **out);
void vm_object_destroy(struct vm_object *o, sd_bus_message *reply_to);
struct vm_object *vm_object_by_name(struct daemon *d, const char *name);
void vm_object_queue_monitor(struct vm_object *o);
/* Loop: an Announce or a Harvest for the daemon itself (no caller); -ENOMEM, or 0 once queued. */
int vm_object_announce(struct vm_object *o);
int vm_object_harvest(struct vm_object *o);
/* Loop, after CreateVm: its worker captures it for the fd store (restart.c). */
void vm_object_queue_capture(struct vm_object *o);
/* Loop, restart: the restored VM's views published as they are now (its worker is idle). */
void vm_object_restored(struct vm_object *o);
/*
 * Loop, restart: a migration under way ended with the previous process: a
 * source's devices resume from the used rings (as after a reconnect), a
 * destination's incoming devices are dropped.
 */
void vm_object_after_failed_migration(struct vm_object *o, bool destination);
/* Loop: the VM freed without a request (its devices and log for the next process), unpublished. */
void vm_object_hand_over(struct vm_object *o);
/* Loop, restart: a device made from its saved configuration (not published yet), or -errno. */
int device_object_restore(struct vm_object *o, const struct vhm_device_config *cfg, unsigned sid, unsigned number,
                          uint64_t created_usec, struct device_object **out);
/* Loop, restart: published (ok) with its number, or freed without a request. */
void device_object_restored(struct vm_object *o, struct device_object *d, bool ok);
/* Loop: true when the VM is bound to libvirt domain `uuid` or `name` (either may be NULL). */
bool vm_object_bound_to(const struct vm_object *o, const char *uuid, const char *name);

/*
 * Loop (migration-object.c): what MigrateContinue does, for the daemon
 * itself: 0 when the migration was waiting in pre-switchover and was told
 * to go on, else -ESRCH (or another negative errno) with `why` saying why not.
 */
int migration_continue(struct vm_object *o, char *why, size_t len);
