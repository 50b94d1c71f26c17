/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VM jobs: what a method call (or the monitor, or a teardown) asks a VM's
 * worker to do.  Each kind is one struct job_ops:
 *
 *   run    on the VM's worker thread: the vhost-user work, the only place
 *          that touches the vhm_* objects;
 *   done   on the event loop, when run is over: publish or discard what it
 *          made (may still fail the job); NULL when there is nothing to do;
 *   reply  on the event loop: the method's answer on success; NULL for an
 *          empty one.
 *
 * jobs.c does the rest for every kind: queueing, refreshing the snapshot
 * after run, logging a failure, LastError, the error answer, and
 * PropertiesChanged.  Adding a job is one struct job_ops and its functions.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "daemon/vhostmigd/daemon.h"

struct job_ops {
        const char *name; /* for messages */
        void (*run)(struct vm_job *j);
        void (*done)(struct vm_job *j);
        int (*reply)(struct vm_job *j);
        bool device_method; /* LastError goes to the device, not the VM */
        bool releases_vm;   /* the VM is gone after run: no snapshot, no publish */
};

struct vm_job {
        struct worker_job base;
        const struct job_ops *ops;
        struct vm_object *vm;
        struct device_object *device; /* the device it concerns, or NULL */
        sd_bus_message *call;         /* answered when the job is done; NULL for internal jobs */
        int result;
        const char *error_name; /* D-Bus error for a failure */
        uint32_t request;       /* the vhost-user request that failed, if one did */
        bool free_device;       /* the device object is the job's to free when done */
        /*
         * The request timeout when the job was made: SIGHUP may change the
         * configuration on the loop while the worker runs, so the worker
         * never reads it.
         */
        unsigned timeout_ms;
        char error[512];

        /* What a kind needs beyond that; each kind uses its own member. */
        union {
                struct { /* AddDevice, AddQueues */
                        struct vhm_device_config config;
                        struct config_uid_list uids; /* config.allowed_uids points here */
                        struct vhm_queue_spec queues[VHM_DEVICE_MAX_QUEUES];
                        unsigned first, n; /* queue indices first..first+n-1 */
                        bool last;         /* the device is complete: connect and start */
                } add;
                struct {
                        uint64_t new_pages, dirty_pages;
                } harvest;
                struct {                  /* PrepareIncoming, MigrateTo, SaveDeviceState, LoadDeviceState */
                        bool destination; /* PrepareIncoming, LoadDeviceState */
                        char address[128];
                        char token[33];
                        int listen_fd;   /* PrepareIncoming: the job's to close */
                        int state_fd;    /* Save/LoadDeviceState: the caller's fd (a copy), the engine's */
                        int cancel_fd;   /* an eventfd the loop writes to cancel; the job's to close */
                        int continue_fd; /* MigrateTo: the eventfd MigrateContinue writes; the job's */
                        /* MigrateTo: live pre-copy and its tuning (0: the engine's defaults). */
                        bool live, force_switchover;
                        unsigned max_downtime_ms, max_rounds, pause_timeout_ms;
                        uint64_t max_bandwidth;
                        uint64_t token_deadline; /* PrepareIncoming: CLOCK_MONOTONIC µs */
                        unsigned timeout_ms;     /* how long the peer may stall the stream */
                } migrate;
                int bitmap_fd; /* AddDirtyBitmap: a copy of the caller's memfd, the job's to close */
                uint32_t sent; /* Announce */
                uint16_t mtu;  /* SetMtu */
        } u;
};

/* A job for `o`, answering `call` (referenced) when done; NULL without memory. */
struct vm_job *job_new(struct vm_object *o, const struct job_ops *ops, sd_bus_message *call);
/* Queues it on the VM's worker, behind whatever runs there. */
void job_submit(struct vm_job *j);
/* A job that never ran (the method refused it on the loop). */
void job_free(struct vm_job *j);
/* Records the failure (worker or loop side); returns err. */
int job_fail(struct vm_job *j, int err, const char *error_name, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Between the object files (vm-object.c, device-object.c). */
void vm_refresh(struct vm_object *o);                           /* worker: the snapshot from the vhm_* objects */
void vm_publish(struct vm_object *o);                           /* loop: PropertiesChanged for what differs */
void vm_set_last_error(struct vm_object *o, const char *error); /* loop; "" clears */
/* Loop: a method on the VM refused before any job; `error` (when set) becomes LastError.  Returns r. */
int vm_refused(struct vm_object *o, const sd_bus_error *error, int r);
void vm_schedule_teardown(struct vm_object *o);                                /* loop: once the destroy job is done */
void running_add(struct vm_object *o, struct device_object *d);                /* worker */
void running_remove(struct vm_object *o, struct device_object *d);             /* worker */
void device_snapshot_fill(struct device_object *d, struct device_snapshot *s); /* worker */
void device_publish(struct device_object *d, struct device_view *now);         /* loop */
void device_set_last_error(struct device_object *d, const char *error);        /* loop; "" clears */
void device_object_free(struct device_object *d);
/* Loop: add to / take out of the devices D-Bus shows. */
void device_array_add(struct vm_object *o, struct device_object *d);
void device_array_remove(struct vm_object *o, struct device_object *d);
struct device_object *device_of_vm(struct vm_object *o, const char *path);

/* Migration (migration-object.c): Vm methods, and what the property table reads. */
int method_prepare_incoming(sd_bus_message *m, void *userdata, sd_bus_error *error);
int method_migrate_to(sd_bus_message *m, void *userdata, sd_bus_error *error);
int method_cancel_migration(sd_bus_message *m, void *userdata, sd_bus_error *error);
int method_migrate_continue(sd_bus_message *m, void *userdata, sd_bus_error *error);
int method_save_device_state(sd_bus_message *m, void *userdata, sd_bus_error *error);
int method_load_device_state(sd_bus_message *m, void *userdata, sd_bus_error *error);
void migration_view_init(struct vm_object *o);
/* Loop: releases what a VM's migration holds (the VM is being destroyed). */
void migration_object_free(struct vm_object *o);
/* Loop: asks the running migration, if any, to stop (every phase before END); false when none runs. */
bool migration_cancel(struct vm_object *o);

extern const struct prop_iface device_iface;
extern const sd_bus_vtable device_vtable[];
/* org.vhostmig1.Vm methods that concern devices (device-object.c). */
int method_add_device(sd_bus_message *m, void *userdata, sd_bus_error *error);
int method_remove_device(sd_bus_message *m, void *userdata, sd_bus_error *error);
