/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vhostmigd's objects, shared by the Manager, Vm and Device D-Bus code. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "daemon/vhostmigd/config.h"
#include "daemon/vhostmigd/messages.h"
#include "daemon/vhostmigd/worker.h"
#include "migrate/blockers.h"
#include "migrate/device.h"
#include "migrate/logging.h"

#define VHOSTMIG_BUS_NAME    "org.vhostmig1"
#define VHOSTMIG_ROOT_PATH   "/org/vhostmig1"
#define VHOSTMIG_VM_PREFIX   "/org/vhostmig1/vm"
#define VHOSTMIG_ERROR(name) "org.vhostmig1.Error." name

struct vm_object;
struct vm_job;

struct daemon {
        sd_event *event;
        sd_bus *bus;
        struct vhostmigd_config cfg;
        struct vm_object *vms;          /* list */
        unsigned nvms;
        /* Probe calls, which belong to no VM: one at a time on each, never queued. */
        struct worker probe_workers[CONFIG_MAX_PROBES];
        unsigned nprobe_workers;
        sd_event_source *monitor;
        sd_event_source *shutdown_timer;   /* bounds how long shutdown waits for teardowns */
        unsigned vms_tearing_down;      /* destroyed, worker not yet stopped */
        bool shutting_down;

        /* ---- operating the daemon (main.c, log.c): reload, probe pool size ---- */
        const char *config_path;        /* as given; NULL: the default, which may be missing */
        /* Started probe workers; those at nprobe_workers and above are retired by the monitor once idle. */
        bool probe_worker_started[CONFIG_MAX_PROBES];
};

/* What D-Bus shows of a device: written by the VM's worker, read by the loop. */
struct device_snapshot {
        enum vhm_device_state state;
        uint64_t features, acked_features, protocol_features, acked_protocol_features;
        unsigned queue_pairs;
        uint16_t mtu;
        unsigned ring_indices[VHM_DEVICE_MAX_QUEUES];
        unsigned nrings;
        uint64_t reconnects;
        uint64_t refused_peers;
        char blocker[VHM_BLOCKERS_MAX * 64];
        char last_error[384];
};

/* /org/vhostmig1/vm/NAME/dev/N: the encoded name is at most 3 x 63 bytes. */
#define DEVICE_PATH_MAX 256

struct device_object {
        struct vm_object *vm;
        unsigned number;
        char path[DEVICE_PATH_MAX];     /* set once the device exists */
        char *socket;
        bool server;
        char mac[18];
        struct vhm_device *dev;         /* worker thread only */
        uint64_t next_reconnect_usec;   /* worker thread only */
        struct device_snapshot snap, published;   /* under vm->snap_lock / loop only */
        bool removed;
};

struct vm_snapshot {
        uint64_t memory_size;
        bool blocked;
        char blockers[VHM_BLOCKERS_MAX][VHM_BLOCKER_LEN];
        unsigned nblockers;
        bool logging;
        bool log_incomplete;            /* a log was lost: harvests resend everything */
        uint64_t log_size, dirty_pages, harvests;
        char last_error[512];
};

struct vm_object {
        struct daemon *daemon;
        struct vm_object *next;
        char *name;
        char *path;
        struct vhm_vm *vm;              /* worker thread only, once created */
        struct vhm_logging *logging;    /* worker thread only */
        /* The devices D-Bus shows (loop thread; changed under snap_lock). */
        struct device_object *devices[VHM_LOGGING_MAX_DEVICES];
        unsigned ndevices;
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

        pthread_mutex_t snap_lock;
        struct vm_snapshot snap, published;
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
/* Only root may change state: the bus policy says so, and this holds on a permissive bus too. */
int daemon_check_root(sd_bus_message *m, sd_bus_error *error);

/* VMs and devices (bus-vm.c). */
int vm_object_create(struct daemon *d, const char *name, struct vhm_vm *vm, struct vm_object **out);
void vm_object_destroy(struct vm_object *o, sd_bus_message *reply_to);
struct vm_object *vm_object_by_name(struct daemon *d, const char *name);
int vm_objects_register(struct daemon *d);
void vm_object_queue_monitor(struct vm_object *o);
