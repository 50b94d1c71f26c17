/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The org.vhostmig1.Vm objects: lifecycle, properties, and the methods on
 * the VM as a whole (dirty logging, harvests, announcements).  AddDevice and
 * RemoveDevice are in device-object.c, with the devices.
 *
 * Threads: each VM's vhm_* objects belong to its worker.  A method call is
 * checked on the event loop, turned into a job (jobs.h), run on the worker,
 * and answered on the event loop when the job completes.  The worker
 * refreshes a snapshot after every job; property getters read the snapshot;
 * the loop compares it with what it last published and emits
 * PropertiesChanged for what differs (props.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "daemon/common/cleanup.h"
#include "daemon/vhostmigd/bus-util.h"
#include "daemon/vhostmigd/jobs.h"
#include "daemon/vhostmigd/restart.h"
#include "proto/vhost-user-transport.h"

/* ---- properties ------------------------------------------------------------------------ */

/* The table of org.vhostmig1.Vm's properties: name, D-Bus type, field of struct vm_view, const or not. */
#define VM_PROPERTIES(X)                                         \
        X(Name, S, l.name, CONST)                                \
        X(MemorySize, T, w.memory_size, CHANGE)                  \
        X(PageSize, U, l.page_size, CONST)                       \
        X(Devices, AO, l.devices, CHANGE)                        \
        X(MigrationBlocked, B, w.blocked, CHANGE)                \
        X(MigrationBlockers, AS, w.blockers, CHANGE)             \
        X(Logging, B, w.logging, CHANGE)                         \
        X(LogIncomplete, B, w.log_incomplete, CHANGE)            \
        X(LogSize, T, w.log_size, CHANGE)                        \
        X(DirtyPages, T, w.dirty_pages, CHANGE)                  \
        X(Harvests, T, l.harvests, CHANGE)                       \
        X(CreatedTimestamp, T, l.created_usec, CHANGE)           \
        X(StateChangeTimestamp, T, l.state_change_usec, CHANGE)  \
        X(LastError, S, l.last_error, CHANGE)                    \
        X(LastErrorTimestamp, T, l.last_error_usec, CHANGE)      \
        X(MigrationState, S, m.state, CHANGE)                    \
        X(Role, S, m.role, CHANGE)                               \
        X(PagesTotal, T, m.pages_total, CHANGE)                  \
        X(PagesTransferred, T, m.pages_transferred, CHANGE)      \
        X(ZeroPages, T, m.zero_pages, CHANGE)                    \
        X(BytesTransferred, T, m.bytes_transferred, CHANGE)      \
        X(DowntimeMs, T, m.downtime_ms, CHANGE)                  \
        X(TotalMs, T, m.total_ms, CHANGE)                        \
        X(RarpSent, U, m.rarp_sent, CHANGE)                      \
        X(MigrationChecksum, T, m.checksum, CHANGE)              \
        X(MigrationError, S, m.error, CHANGE)                    \
        X(DirtyBitmaps, U, w.dirty_bitmaps, CHANGE)              \
        X(Round, T, m.round, CHANGE)                             \
        X(PagesRemaining, T, m.pages_remaining, CHANGE)          \
        X(DirtyRate, T, m.dirty_rate, CHANGE)                    \
        X(Bandwidth, T, m.bandwidth, CHANGE)                     \
        X(ExpectedDowntimeMs, T, m.expected_downtime_ms, CHANGE) \
        X(SetupMs, T, m.setup_ms, CHANGE)                        \
        X(LibvirtDomain, S, l.libvirt_domain, CONST)             \
        X(LibvirtDowntimeMs, T, l.libvirt_downtime_ms, CHANGE)

#define PROPS_VIEW struct vm_view
static const struct prop_def vm_props[] = { VM_PROPERTIES(PROPS_DEF) };
VM_PROPERTIES(PROPS_CHECK)
#undef PROPS_VIEW

static void vm_read_view(const void *object, void *out) {
        const struct vm_object *o = object;
        struct vm_view *v = out;
        pthread_mutex_lock((pthread_mutex_t *) &o->snap_lock);
        PROPS_COPY_EXCEPT(&v->w, &o->snap, blockers);
        prop_strv_copy(&v->w.blockers, &o->snap.blockers);
        v->m = o->migration;
        pthread_mutex_unlock((pthread_mutex_t *) &o->snap_lock);
        PROPS_COPY_EXCEPT(&v->l, &o->loop, devices);
        /* The device list is the loop's own: D-Bus shows the devices that exist now. */
        v->l.devices.n = o->ndevices;
        _Static_assert(DEVICE_PATH_MAX <= PROP_PATH_MAX, "a device's path fits the Devices property");
        for (unsigned i = 0; i < o->ndevices; i++) {
                const char *path = o->devices[i]->path;
                memcpy(v->l.devices.v[i], path, strlen(path) + 1);
        }
}

static const struct prop_iface vm_iface = {
        .interface = VHOSTMIG_VM_INTERFACE,
        .props = vm_props,
        .n = sizeof(vm_props) / sizeof(vm_props[0]),
        .view_size = sizeof(struct vm_view),
        .read_view = vm_read_view,
};

/* ---- snapshots (worker side) and publishing (loop side) ------------------------------------ */

void running_add(struct vm_object *o, struct device_object *d) {
        o->running[o->nrunning++] = d;
}

void running_remove(struct vm_object *o, struct device_object *d) {
        for (unsigned i = 0; i < o->nrunning; i++)
                if (o->running[i] == d) {
                        memmove(&o->running[i], &o->running[i + 1], (o->nrunning - i - 1) * sizeof(o->running[0]));
                        o->nrunning--;
                        return;
                }
}

static void vm_snapshot_fill(struct vm_object *o, struct vm_snapshot *s) {
        memset(s, 0, sizeof(*s));
        if (o->vm)
                s->memory_size = vhm_vm_memory_size(o->vm);
        if (!o->logging)
                return;
        struct vhm_blockers b;
        vhm_logging_blockers(o->logging, &b);
        s->blockers.n = b.n;
        memcpy(s->blockers.v, b.reason, sizeof(b.reason));
        s->blocked = b.n > 0;
        s->logging = vhm_logging_active(o->logging);
        s->log_incomplete = vhm_logging_incomplete(o->logging);
        s->log_size = vhm_logging_log_size(o->logging);
        struct vhm_bitmap *bm = vhm_logging_bitmap(o->logging);
        s->dirty_pages = bm ? vhm_bitmap_count(bm) : 0;
        s->dirty_bitmaps = vhm_logging_bitmap_sources(o->logging);
}

/* Whether the VM can migrate changed: say so once, with the reasons. */
static void log_blocked_change(const struct vm_object *o, bool was_blocked, const struct vm_snapshot *now) {
        if (now->blocked == was_blocked)
                return;
        if (!now->blocked) {
                daemon_log_event(LOG_NOTICE, VHOSTMIG_MESSAGE_MIGRATION_UNBLOCKED, o, NULL, "migration possible again");
                return;
        }
        char reasons[1024] = "";
        size_t used = 0;
        for (unsigned i = 0; i < now->blockers.n && used < sizeof(reasons); i++)
                used += (size_t) snprintf(reasons + used, sizeof(reasons) - used, "%s%s", i ? "; " : "",
                                          now->blockers.v[i]);
        daemon_log_event(LOG_NOTICE, VHOSTMIG_MESSAGE_MIGRATION_BLOCKED, o, NULL, "migration blocked: %s", reasons);
}

void vm_refresh(struct vm_object *o) {
        /* Large (a device's is several KiB): on the heap, and without memory the old snapshot stays. */
        _cleanup_free_ struct vm_snapshot *s = malloc(sizeof(*s));
        _cleanup_free_ struct device_snapshot *ds = calloc(VHM_LOGGING_MAX_DEVICES, sizeof(*ds));
        if (!s || !ds)
                return;
        vm_snapshot_fill(o, s);
        unsigned n = o->nrunning;
        for (unsigned i = 0; i < n; i++)
                device_snapshot_fill(o->running[i], &ds[i]);

        pthread_mutex_lock(&o->snap_lock);
        bool was_blocked = o->snap.blocked;
        o->snap = *s;
        for (unsigned i = 0; i < n; i++)
                o->running[i]->snap = ds[i];
        pthread_mutex_unlock(&o->snap_lock);
        log_blocked_change(o, was_blocked, s);
}

void vm_set_last_error(struct vm_object *o, const char *error) {
        if (strcmp(o->loop.last_error, error) == 0 && !error[0])
                return;
        snprintf(o->loop.last_error, sizeof(o->loop.last_error), "%s", error);
        o->loop.last_error_usec = error[0] ? props_now_usec() : 0;
}

/* Paths compare as strings: a view holds only what is used of each (props.h). */
static bool devices_equal(const struct prop_pathv *a, const struct prop_pathv *b) {
        if (a->n != b->n)
                return false;
        for (unsigned i = 0; i < a->n; i++)
                if (strcmp(a->v[i], b->v[i]) != 0)
                        return false;
        return true;
}

/* StateChangeTimestamp follows Logging and the device set. */
static void note_state_change(struct vm_object *o, const struct vm_view *was, struct vm_view *now) {
        bool devices_changed = !devices_equal(&was->l.devices, &now->l.devices);
        if (was->w.logging != now->w.logging || devices_changed)
                now->l.state_change_usec = o->loop.state_change_usec = props_now_usec();
}

void vm_publish(struct vm_object *o) {
        _cleanup_free_ struct vm_view *now = malloc(sizeof(*now));
        _cleanup_free_ struct device_view *dnow = malloc(VHM_LOGGING_MAX_DEVICES * sizeof(*dnow));
        if (!now || !dnow)
                return; /* the next publish catches up */
        vm_read_view(o, now);
        note_state_change(o, &o->published, now);
        const char *changed[sizeof(vm_props) / sizeof(vm_props[0]) + 1];
        unsigned c = props_diff(&vm_iface, &o->published, now, changed);
        o->published = *now;
        if (c > 0 && !o->destroying)
                (void) sd_bus_emit_properties_changed_strv(o->daemon->bus, o->path, VHOSTMIG_VM_INTERFACE,
                                                           (char **) changed);
        for (unsigned i = 0; i < o->ndevices; i++) {
                device_iface.read_view(o->devices[i], &dnow[i]);
                device_publish(o->devices[i], &dnow[i]);
        }
}

/* A method refused on the loop: `error` (set) is the caller's answer and becomes the VM's LastError. */
int vm_refused(struct vm_object *o, const sd_bus_error *error, int r) {
        if (!sd_bus_error_is_set(error))
                return r;
        vm_set_last_error(o, error->message ? error->message : error->name);
        /*
         * While a migration publishes its progress, refused calls do not add
         * signals of their own (a caller could otherwise defeat the throttle):
         * the next tick carries LastError, and a read shows it at once.
         */
        if (!o->migration_timer)
                vm_publish(o);
        return r;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static int vm_object_add_vtable(struct vm_object *o); /* on the bus, below the vtable */

struct vm_object *vm_object_by_name(struct daemon *d, const char *name) {
        for (struct vm_object *o = d->vms; o; o = o->next)
                if (strcmp(o->name, name) == 0 && !o->destroying)
                        return o;
        return NULL;
}

static const struct job_ops job_destroy;

static void vm_object_free(struct vm_object *o) {
        if (!o)
                return;
        sd_bus_slot_unref(o->slot);
        job_free(o->destroy_job);
        migration_object_free(o);
        restart_vm_free(o);
        vhm_logging_free(o->logging);
        free(o->path);
        free(o->name);
        free(o);
}

static int vm_object_new(struct daemon *d, const char *name, struct vhm_vm *vm, struct vm_object **out) {
        struct vm_object *o = calloc(1, sizeof(*o));
        if (!o)
                return -ENOMEM;
        o->iface = &vm_iface;
        o->daemon = d;
        o->migration_cancel_fd = o->migration_continue_fd = o->migration_wake_fd = -1;
        o->name = strdup(name);
        int r = o->name ? sd_bus_path_encode(VHOSTMIG_VM_PREFIX, name, &o->path) : -ENOMEM;
        if (r >= 0)
                r = vhm_logging_new(vm, &o->logging);
        if (r >= 0)
                r = restart_vm_new(o);
        if (r >= 0 && !(o->destroy_job = job_new(o, &job_destroy, NULL)))
                r = -ENOMEM;
        if (r < 0) {
                vm_object_free(o);
                return r;
        }
        snprintf(o->loop.name, sizeof(o->loop.name), "%s", name);
        o->loop.page_size = VHOSTMIG_PAGE_SIZE;
        migration_view_init(o);
        o->loop.created_usec = o->loop.state_change_usec = props_now_usec();
        o->snap.memory_size = vhm_vm_memory_size(vm);
        *out = o;
        return 0;
}

int vm_object_create(struct daemon *d, const char *name, const char *libvirt_domain, struct vhm_vm *vm,
                     struct vm_object **out) {
        struct vm_object *o;
        int r = vm_object_new(d, name, vm, &o);
        if (r < 0)
                return r;
        snprintf(o->loop.libvirt_domain, sizeof(o->loop.libvirt_domain), "%s", libvirt_domain);
        pthread_mutex_init(&o->snap_lock, NULL);
        char thread_name[16];
        snprintf(thread_name, sizeof(thread_name), "vm-%.12s", name);
        r = vm_object_add_vtable(o);
        if (r >= 0)
                r = worker_start(&o->worker, d->event, thread_name);
        if (r < 0) {
                pthread_mutex_destroy(&o->snap_lock);
                vm_object_free(o);
                return r;
        }
        o->vm = vm;
        vm_read_view(o, &o->published);
        o->next = d->vms;
        d->vms = o;
        d->nvms++;
        *out = o;
        (void) sd_bus_emit_object_added(d->bus, o->path);
        (void) sd_bus_emit_properties_changed(d->bus, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "Vms", NULL);
        daemon_update_status(d);
        return 0;
}

static int teardown_vm(sd_event_source *s, void *userdata) {
        struct vm_object *o = userdata;
        struct daemon *d = o->daemon;
        sd_event_source_unref(s);
        worker_stop(&o->worker);
        d->vms_tearing_down--;
        for (unsigned i = 0; i < o->ndevices; i++)
                device_object_free(o->devices[i]);
        pthread_mutex_destroy(&o->snap_lock);
        daemon_log_event(LOG_INFO, VHOSTMIG_MESSAGE_VM_DESTROYED, o, NULL, "VM destroyed");
        restart_vm_gone(o);
        vm_object_free(o);
        daemon_update_status(d);
        /* Exit once the last VM is released, not the first. */
        if (d->shutting_down && !d->vms && d->vms_tearing_down == 0)
                sd_event_exit(d->event, 0);
        return 0;
}

void vm_schedule_teardown(struct vm_object *o) {
        /* The worker's own completion is still on the stack: free it after this callback. */
        (void) sd_event_add_defer(o->daemon->event, NULL, teardown_vm, o);
}

void vm_object_destroy(struct vm_object *o, sd_bus_message *reply_to) {
        struct daemon *d = o->daemon;
        /* Signal while the objects can still be found, so the signals name their interfaces. */
        for (unsigned i = 0; i < o->ndevices; i++) {
                struct device_object *dev = o->devices[i];
                (void) sd_bus_emit_object_removed(d->bus, dev->path);
                dev->slot = sd_bus_slot_unref(dev->slot);
                dev->removed = true;
        }
        (void) sd_bus_emit_object_removed(d->bus, o->path);
        o->slot = sd_bus_slot_unref(o->slot);
        o->destroying = true;
        d->vms_tearing_down++;
        for (struct vm_object **p = &d->vms; *p; p = &(*p)->next)
                if (*p == o) {
                        *p = o->next;
                        break;
                }
        d->nvms--;
        (void) sd_bus_emit_properties_changed(d->bus, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "Vms", NULL);
        /* A migration job would hold the teardown back as long as its peer stalls: cancel it. */
        migration_cancel(o);
        /* Behind whatever the worker is doing: the teardown never races a running job. */
        struct vm_job *j = o->destroy_job;
        o->destroy_job = NULL;
        j->call = reply_to ? sd_bus_message_ref(reply_to) : NULL;
        job_submit(j);
}

/* ---- jobs on the VM as a whole ----------------------------------------------------------------- */

static void run_destroy(struct vm_job *j) {
        struct vm_object *o = j->vm;
        restart_vm_released(o);
        vhm_logging_free(o->logging); /* stops logging first */
        o->logging = NULL;
        for (unsigned i = 0; i < o->nrunning; i++) {
                vhm_device_free(o->running[i]->dev);
                o->running[i]->dev = NULL;
        }
        o->nrunning = 0;
        vhm_vm_free(o->vm);
        o->vm = NULL;
}

static void done_destroy(struct vm_job *j) {
        vm_schedule_teardown(j->vm);
}

static const struct job_ops job_destroy = {
        .name = "DestroyVm",
        .run = run_destroy,
        .done = done_destroy,
        .releases_vm = true,
};

static void run_start_logging(struct vm_job *j) {
        int r = vhm_logging_start(j->vm->logging);
        if (r == -EPERM)
                job_fail(j, r, VHOSTMIG_ERROR_MIGRATION_BLOCKED, "%s", vhm_logging_error(j->vm->logging));
        else if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", vhm_logging_error(j->vm->logging));
}

static void done_logging(struct vm_job *j) {
        if (j->result == 0)
                daemon_log_event(LOG_INFO,
                                 j->ops->run == run_start_logging ? VHOSTMIG_MESSAGE_LOGGING_STARTED
                                                                  : VHOSTMIG_MESSAGE_LOGGING_STOPPED,
                                 j->vm, NULL, "%s", j->ops->run == run_start_logging ? "logging on" : "logging off");
}

static const struct job_ops job_start_logging = {
        .name = "StartLogging",
        .run = run_start_logging,
        .done = done_logging,
};

static void run_stop_logging(struct vm_job *j) {
        int r = vhm_logging_stop(j->vm->logging);
        if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", vhm_logging_error(j->vm->logging));
}

static const struct job_ops job_stop_logging = {
        .name = "StopLogging",
        .run = run_stop_logging,
        .done = done_logging,
};

static void run_harvest(struct vm_job *j) {
        int r = vhm_logging_harvest(j->vm->logging, &j->u.harvest.new_pages);
        if (r == -ENODATA) {
                job_fail(j, r, VHOSTMIG_ERROR_INVALID_STATE, "logging is off: call StartLogging first");
                return;
        }
        if (r < 0) {
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", vhm_logging_error(j->vm->logging));
                return;
        }
        j->u.harvest.dirty_pages = vhm_bitmap_count(vhm_logging_bitmap(j->vm->logging));
}

static void done_harvest(struct vm_job *j) {
        if (j->result == 0)
                j->vm->loop.harvests++;
}

static int reply_harvest(struct vm_job *j) {
        return sd_bus_reply_method_return(j->call, "tt", j->u.harvest.new_pages, j->u.harvest.dirty_pages);
}

static const struct job_ops job_harvest = {
        .name = "Harvest",
        .run = run_harvest,
        .done = done_harvest,
        .reply = reply_harvest,
};

static void run_announce(struct vm_job *j) {
        for (unsigned i = 0; i < j->vm->nrunning; i++) {
                struct device_object *d = j->vm->running[i];
                /* A device without a MAC has nothing to announce (Device.Announce says NotSupported). */
                if (!d->dev || !d->has_mac || d->worker_configuring || !vhm_device_needs_rarp(d->dev))
                        continue;
                if (vhm_device_announce(d->dev) < 0) {
                        job_fail(j, -EIO, VHOSTMIG_ERROR_BACKEND, "%s", vhm_device_error(d->dev));
                        j->request = vhm_device_error_request(d->dev);
                        return;
                }
                j->u.sent++;
        }
}

/* Frames sent after a completed incoming migration: libvirt's RESUMED_MIGRATED need not announce again. */
static void done_announce(struct vm_job *j) {
        struct vm_object *o = j->vm;
        if (j->result < 0 || j->u.sent == 0)
                return;
        pthread_mutex_lock(&o->snap_lock);
        bool after = strcmp(o->migration.role, VHOSTMIG_ROLE_DESTINATION) == 0 &&
                     strcmp(o->migration.state, VHOSTMIG_MIGRATION_STATE_COMPLETED) == 0;
        uint64_t checksum = o->migration.checksum;
        pthread_mutex_unlock(&o->snap_lock);
        if (!after)
                return;
        o->announced_after_migration = true;
        o->announced_checksum = checksum;
        if (!j->call)
                daemon_log(LOG_INFO, o, NULL, "announced on %u device(s)", j->u.sent);
}

static int reply_announce(struct vm_job *j) {
        return sd_bus_reply_method_return(j->call, "u", j->u.sent);
}

static const struct job_ops job_announce = {
        .name = "Announce",
        .run = run_announce,
        .done = done_announce,
        .reply = reply_announce,
};

/*
 * A VMM dirty bitmap.  The logging maps it (the mapping is what it keeps),
 * so the job's copy of the fd goes as soon as that is done.  The logging
 * exists from CreateVm on, so a bitmap may come before StartLogging or any
 * device; logging start (StartLogging or a live MigrateTo) clears it.
 */
static void run_add_bitmap(struct vm_job *j) {
        int r = vhm_logging_add_bitmap(j->vm->logging, j->u.bitmap_fd);
        /* The logging keeps its mapping only; a successor after a restart needs the memfd itself. */
        if (r >= 0)
                restart_bitmap_added(j->vm, j->u.bitmap_fd);
        else
                close(j->u.bitmap_fd);
        j->u.bitmap_fd = -1;
        if (r == -E2BIG)
                job_fail(j, r, VHOSTMIG_ERROR_LIMITS_EXCEEDED, "%s", vhm_logging_error(j->vm->logging));
        else if (r == -EINVAL || r == -EPERM || r == -ERANGE || r == -EACCES)
                job_fail(j, r, SD_BUS_ERROR_INVALID_ARGS, "memfd: %s", vhm_logging_error(j->vm->logging));
        else if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", vhm_logging_error(j->vm->logging));
}

static const struct job_ops job_add_bitmap = {
        .name = "AddDirtyBitmap",
        .run = run_add_bitmap,
};

/* Connection checks and reconnection attempts with each device's back-off. */
static void monitor_device(struct vm_job *j, struct device_object *d, uint64_t now) {
        uint64_t channel_failures = vhm_device_stats(d->dev)->channel_failures;
        enum vhm_device_state before = vhm_device_state(d->dev);
        bool connected = before != VHM_DEVICE_DISCONNECTED && vhm_device_poll_connection(d->dev) > 0;
        if (vhm_device_stats(d->dev)->channel_failures != channel_failures)
                daemon_log(LOG_WARNING, j->vm, d->socket, "back-end channel closed: %s", vhm_device_error(d->dev));
        if (connected)
                return;
        if (before != VHM_DEVICE_DISCONNECTED)
                daemon_log_event(LOG_WARNING, VHOSTMIG_MESSAGE_DEVICE_DISCONNECTED, j->vm, d->socket,
                                 "back-end disconnected");
        if (vhm_device_state(d->dev) != VHM_DEVICE_DISCONNECTED || now < d->next_reconnect_usec)
                return;
        /* Server mode waits briefly for the back-end; client mode fails fast. */
        int r = vhm_device_reconnect(d->dev, 10);
        if (r == 0)
                daemon_log_event(LOG_NOTICE, VHOSTMIG_MESSAGE_DEVICE_RECONNECTED, j->vm, d->socket,
                                 "back-end reconnected");
        else if (r == -EPERM)
                daemon_log_event(LOG_WARNING, VHOSTMIG_MESSAGE_PEER_REFUSED, j->vm, d->socket,
                                 "refused a back-end peer: %s", vhm_device_error(d->dev));
        else if (r != -EAGAIN)
                daemon_log_full(LOG_WARNING, NULL, j->vm, d->socket, vhm_device_error_request(d->dev),
                                "reconnection failed: %s", vhm_device_error(d->dev));
        d->next_reconnect_usec = now + (uint64_t) vhm_device_reconnect_delay_ms(d->dev) * 1000u;
}

static void run_monitor(struct vm_job *j) {
        uint64_t now = vhu_now_usec();
        /* Migrated devices belong to the destination now (or may): never reconnected from here. */
        if (j->vm->migrated_away)
                return;
        for (unsigned i = 0; i < j->vm->nrunning; i++) {
                struct device_object *d = j->vm->running[i];
                /* A device still waiting for its queues has no connection to check. */
                if (d->dev && !d->worker_configuring)
                        monitor_device(j, d, now);
        }
}

static void done_monitor(struct vm_job *j) {
        j->vm->monitor_queued = false;
}

static const struct job_ops job_monitor = {
        .name = "monitor",
        .run = run_monitor,
        .done = done_monitor,
};

void vm_object_queue_monitor(struct vm_object *o) {
        if (o->destroying || o->monitor_queued || worker_pending(&o->worker) > 0)
                return;
        struct vm_job *j = job_new(o, &job_monitor, NULL);
        if (!j)
                return;
        o->monitor_queued = true;
        job_submit(j);
}

/* ---- restart (restart.c) ------------------------------------------------------------------------ */

/* Nothing to do: the capture after every job is the point (the VM's memory goes to the fd store). */
static void run_capture(struct vm_job *j) {
        (void) j;
}

static const struct job_ops job_capture = {
        .name = "capture",
        .run = run_capture,
};

void vm_object_queue_capture(struct vm_object *o) {
        struct vm_job *j = restart_enabled(o->daemon) ? job_new(o, &job_capture, NULL) : NULL;
        if (j)
                job_submit(j);
}

void vm_object_restored(struct vm_object *o) {
        vm_refresh(o);
        vm_read_view(o, &o->published);
        for (unsigned i = 0; i < o->ndevices; i++)
                device_iface.read_view(o->devices[i], &o->devices[i]->published);
}

void vm_object_hand_over(struct vm_object *o) {
        struct daemon *d = o->daemon;
        if (!o->worker_stopped)
                worker_stop(&o->worker);
        for (struct vm_object **p = &d->vms; *p; p = &(*p)->next)
                if (*p == o) {
                        *p = o->next;
                        break;
                }
        d->nvms--;
        vhm_logging_free_for_handover(o->logging);
        o->logging = NULL;
        for (unsigned i = 0; i < o->nrunning; i++) {
                vhm_device_free_for_handover(o->running[i]->dev);
                o->running[i]->dev = NULL;
        }
        o->nrunning = 0;
        for (unsigned i = 0; i < o->ndevices; i++)
                device_object_free(o->devices[i]);
        vhm_vm_free(o->vm);
        o->vm = NULL;
        pthread_mutex_destroy(&o->snap_lock);
        vm_object_free(o);
}

/* ---- what the daemon asks of a VM itself (libvirt's events) ------------------------------------ */

static int queue_internal(struct vm_object *o, const struct job_ops *ops) {
        if (o->destroying)
                return -ESRCH;
        struct vm_job *j = job_new(o, ops, NULL);
        if (!j)
                return -ENOMEM;
        job_submit(j);
        return 0;
}

int vm_object_announce(struct vm_object *o) {
        return queue_internal(o, &job_announce);
}

int vm_object_harvest(struct vm_object *o) {
        return queue_internal(o, &job_harvest);
}

bool vm_object_bound_to(const struct vm_object *o, const char *uuid, const char *name) {
        const char *bound = o->loop.libvirt_domain;
        if (!bound[0] || o->destroying)
                return false;
        return (uuid && strcmp(bound, uuid) == 0) || (name && strcmp(bound, name) == 0);
}

/* ---- methods ----------------------------------------------------------------------------------- */

/* Methods whose arguments were read (or that have none) and that become one job. */
static int queue_job(sd_bus_message *m, struct vm_object *o, const struct job_ops *ops) {
        struct vm_job *j = job_new(o, ops, m);
        if (!j)
                return -ENOMEM;
        job_submit(j);
        return 1;
}

static int method_start_logging(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        /* No option is defined yet: every key is refused, naming it. */
        r = bus_read_options(m, NULL, 0, NULL, NULL, error);
        if (r < 0)
                return vm_refused(o, error, r);
        return queue_job(m, o, &job_start_logging);
}

/* The caller's memfd, a copy of our own: the message's goes with it. */
static int read_bitmap_fd(sd_bus_message *m, int *out, sd_bus_error *error) {
        int fd;
        int r = sd_bus_message_read(m, "h", &fd);
        if (r < 0)
                return r;
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "memfd: %s", strerror(errno));
        if ((flags & O_ACCMODE) == O_RDONLY)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS,
                                "memfd: open read-only, and harvests clear the bits they take");
        *out = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (*out < 0)
                return bus_fail(error, SD_BUS_ERROR_LIMITS_EXCEEDED, "memfd: cannot keep a copy: %s", strerror(errno));
        return 0;
}

static int add_dirty_bitmap(sd_bus_message *m, struct vm_object *o, sd_bus_error *error) {
        int fd = -1;
        int r = read_bitmap_fd(m, &fd, error);
        if (r >= 0)
                r = bus_read_options(m, NULL, 0, NULL, NULL, error);
        /* The engine reads the bitmaps while it migrates: the set stays as it was when the migration began. */
        if (r >= 0 && o->migrating)
                r = bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE, "a migration of VM %s is running", o->name);
        struct vm_job *j = r >= 0 ? job_new(o, &job_add_bitmap, m) : NULL;
        if (r >= 0 && !j)
                r = -ENOMEM;
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                return r;
        }
        j->u.bitmap_fd = fd;
        job_submit(j);
        return 1;
}

static int method_add_dirty_bitmap(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        r = add_dirty_bitmap(m, o, error);
        return r < 0 ? vm_refused(o, error, r) : r;
}

static int method_simple(sd_bus_message *m, struct vm_object *o, const struct job_ops *ops, sd_bus_error *error) {
        int r = daemon_check_root(m, error);
        return r < 0 ? r : queue_job(m, o, ops);
}

static int method_stop_logging(sd_bus_message *m, void *u, sd_bus_error *e) {
        return method_simple(m, u, &job_stop_logging, e);
}

static int method_harvest(sd_bus_message *m, void *u, sd_bus_error *e) {
        return method_simple(m, u, &job_harvest, e);
}

static int method_announce(sd_bus_message *m, void *u, sd_bus_error *e) {
        return method_simple(m, u, &job_announce, e);
}

static const sd_bus_vtable vm_vtable[] = {
        SD_BUS_VTABLE_START(0),
        VM_PROPERTIES(PROPS_VTABLE)
                SD_BUS_METHOD_WITH_ARGS("AddDevice", SD_BUS_ARGS("s", socket, "a(uttthh)", queues, "a{sv}", options),
                                        SD_BUS_RESULT("o", device), method_add_device, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("RemoveDevice", SD_BUS_ARGS("o", device), SD_BUS_NO_RESULT, method_remove_device,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("StartLogging", SD_BUS_ARGS("a{sv}", options), SD_BUS_NO_RESULT, method_start_logging,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("StopLogging", NULL, NULL, method_stop_logging, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Harvest", SD_BUS_NO_ARGS, SD_BUS_RESULT("t", new_pages, "t", dirty_pages),
                                method_harvest, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Announce", SD_BUS_NO_ARGS, SD_BUS_RESULT("u", sent), method_announce,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("PrepareIncoming", SD_BUS_ARGS("a{sv}", options),
                                SD_BUS_RESULT("s", address, "s", token), method_prepare_incoming,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("MigrateTo", SD_BUS_ARGS("s", address, "s", token, "a{sv}", options), SD_BUS_NO_RESULT,
                                method_migrate_to, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("CancelMigration", NULL, NULL, method_cancel_migration, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("MigrateContinue", SD_BUS_ARGS("a{sv}", options), SD_BUS_NO_RESULT,
                                method_migrate_continue, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AddDirtyBitmap", SD_BUS_ARGS("h", memfd, "a{sv}", options), SD_BUS_NO_RESULT,
                                method_add_dirty_bitmap, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SaveDeviceState", SD_BUS_ARGS("h", fd, "a{sv}", options), SD_BUS_NO_RESULT,
                                method_save_device_state, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("LoadDeviceState", SD_BUS_ARGS("h", fd, "a{sv}", options), SD_BUS_NO_RESULT,
                                method_load_device_state, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

/* ---- on the bus -------------------------------------------------------------------------------- */

/*
 * Each VM and each device has a vtable of its own at its path, added when it
 * appears and removed when it goes: sd-bus finds an object's userdata by its
 * path in a hash table, and GetManagedObjects walks the registered nodes.
 * (A fallback vtable needs a find callback for every object of every call,
 * and a node enumerator copying every path: at 256 VMs x 4 devices about a
 * tenth of the daemon's CPU per GetManagedObjects; docs/performance.md.)
 */
static int vm_object_add_vtable(struct vm_object *o) {
        return sd_bus_add_object_vtable(o->daemon->bus, &o->slot, o->path, VHOSTMIG_VM_INTERFACE, vm_vtable, o);
}
