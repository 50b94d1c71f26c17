/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The org.vhostmig1.Vm and org.vhostmig1.Device objects.
 *
 * Threads: each VM's vhm_* objects belong to its worker.  A method call is
 * checked on the event loop, turned into a job, run on the worker, and
 * answered on the event loop when the job completes.  The worker refreshes a
 * snapshot after every job; property getters read the snapshot; the loop
 * compares it with what it last published and emits PropertiesChanged for
 * what differs.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "daemon/vhostmigd/daemon.h"
#include "proto/vhost-user.h"
#include "proto/vhost-user-transport.h"

/* ---- jobs ---------------------------------------------------------------------- */

enum job_kind {
        JOB_ADD_DEVICE,
        JOB_REMOVE_DEVICE,
        JOB_START_LOGGING,
        JOB_STOP_LOGGING,
        JOB_HARVEST,
        JOB_ANNOUNCE_VM,
        JOB_ANNOUNCE_DEVICE,
        JOB_RECONNECT_DEVICE,
        JOB_SET_MTU,
        JOB_MONITOR,
        JOB_DESTROY,
};

struct vm_job {
        struct worker_job base;
        enum job_kind kind;
        struct vm_object *vm;
        struct device_object *device;
        sd_bus_message *call;           /* answered when the job completes */
        int result;
        const char *error_name;         /* D-Bus error for a failure */
        uint32_t request;               /* the vhost-user request that failed, if one did */
        char error[512];

        /* JOB_ADD_DEVICE */
        struct vhm_device_config config;
        struct vhm_queue_spec queues[VHM_DEVICE_MAX_QUEUES];
        /* JOB_ADD_DEVICE, JOB_REMOVE_DEVICE: the device object is the job's to free */
        bool free_device;
        /* JOB_HARVEST, JOB_ANNOUNCE_* */
        uint64_t new_pages, dirty_pages;
        unsigned sent;
        uint16_t mtu;
};

static void job_done(struct worker_job *base);
static void job_run(struct worker_job *base);

static struct vm_job *job_new(struct vm_object *o, enum job_kind kind, sd_bus_message *call) {
        struct vm_job *j = calloc(1, sizeof(*j));
        if (!j)
                return NULL;
        j->base.run = job_run;
        j->base.done = job_done;
        j->kind = kind;
        j->vm = o;
        j->call = call ? sd_bus_message_ref(call) : NULL;
        return j;
}

static void job_submit(struct vm_job *j) {
        worker_submit(&j->vm->worker, &j->base);
}

__attribute__((format(printf, 4, 5)))
static int job_fail(struct vm_job *j, int err, const char *error_name, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->error, sizeof(j->error), fmt, ap);
        va_end(ap);
        j->result = err;
        j->error_name = error_name;
        return err;
}

/* ---- snapshots (worker side) ------------------------------------------------------ */

static void device_snapshot_fill(struct device_object *d, struct device_snapshot *s) {
        memset(s, 0, sizeof(*s));
        struct vhm_device *dev = d->dev;
        if (!dev) {
                s->state = VHM_DEVICE_DISCONNECTED;
                return;
        }
        s->state = vhm_device_state(dev);
        s->features = vhm_device_features(dev);
        s->acked_features = vhm_device_acked_features(dev);
        s->protocol_features = vhm_device_protocol_features_offered(dev);
        s->acked_protocol_features = vhm_device_protocol_features(dev);
        s->queue_pairs = vhm_device_queue_pairs(dev);
        s->mtu = vhm_device_mtu(dev);
        s->nrings = 2 * s->queue_pairs;
        for (unsigned q = 0; q < s->nrings; q++)
                s->ring_indices[q] = vhm_device_ring_index(dev, q);
        const struct vhm_device_stats *st = vhm_device_stats(dev);
        s->reconnects = st->connects > 0 ? st->connects - 1 : 0;
        s->refused_peers = st->refused_peers;
        struct vhm_blockers b;
        vhm_device_blockers(dev, &b);
        size_t used = 0;
        for (unsigned i = 0; i < b.n && used < sizeof(s->blocker); i++)
                used += (size_t) snprintf(s->blocker + used, sizeof(s->blocker) - used, "%s%s", i ? " " : "", b.reason[i]);
        if (s->state == VHM_DEVICE_FAILED || s->state == VHM_DEVICE_DISCONNECTED)
                snprintf(s->last_error, sizeof(s->last_error), "%s", vhm_device_error(dev));
}

static void running_add(struct vm_object *o, struct device_object *d) {
        o->running[o->nrunning++] = d;
}

static void running_remove(struct vm_object *o, struct device_object *d) {
        for (unsigned i = 0; i < o->nrunning; i++)
                if (o->running[i] == d) {
                        memmove(&o->running[i], &o->running[i + 1], (o->nrunning - i - 1) * sizeof(o->running[0]));
                        o->nrunning--;
                        return;
                }
}

static void vm_refresh(struct vm_object *o, struct vm_job *j) {
        struct vm_snapshot s = { 0 };
        struct vhm_blockers b;

        if (o->vm)
                s.memory_size = vhm_vm_memory_size(o->vm);
        if (o->logging) {
                vhm_logging_blockers(o->logging, &b);
                s.nblockers = b.n;
                memcpy(s.blockers, b.reason, sizeof(b.reason));
                s.blocked = b.n > 0;
                s.logging = vhm_logging_active(o->logging);
                s.log_incomplete = vhm_logging_incomplete(o->logging);
                s.log_size = vhm_logging_log_size(o->logging);
                struct vhm_bitmap *bm = vhm_logging_bitmap(o->logging);
                s.dirty_pages = bm ? vhm_bitmap_count(bm) : 0;
        }
        pthread_mutex_lock(&o->snap_lock);
        s.harvests = o->snap.harvests + (j && j->kind == JOB_HARVEST && j->result == 0);
        snprintf(s.last_error, sizeof(s.last_error), "%s", j && j->result < 0 ? j->error : o->snap.last_error);
        pthread_mutex_unlock(&o->snap_lock);

        unsigned n = o->nrunning;
        struct device_snapshot ds[VHM_LOGGING_MAX_DEVICES];
        for (unsigned i = 0; i < n; i++)
                device_snapshot_fill(o->running[i], &ds[i]);

        pthread_mutex_lock(&o->snap_lock);
        o->snap = s;
        for (unsigned i = 0; i < n; i++)
                o->running[i]->snap = ds[i];
        pthread_mutex_unlock(&o->snap_lock);
}

/* ---- the work itself (worker side) --------------------------------------------------- */

static void run_add_device(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct vhm_device *dev;
        int r = vhm_device_new(o->vm, &j->config, &dev);
        if (r < 0) {
                job_fail(j, r, SD_BUS_ERROR_INVALID_ARGS, "cannot create the device: %s", strerror(-r));
                return;
        }
        for (unsigned q = 0; q < 2 * j->config.queue_pairs && r == 0; q++)
                r = vhm_device_set_queue(dev, q, &j->queues[q]);
        if (r < 0) {
                job_fail(j, r, SD_BUS_ERROR_INVALID_ARGS, "%s", vhm_device_error(dev));
                vhm_device_free(dev);
                return;
        }
        r = vhm_device_connect(dev);
        /* While logging, the device joins the log before its rings start. */
        if (r == 0 && (r = vhm_logging_add_device(o->logging, dev)) < 0)
                job_fail(j, r, VHOSTMIG_ERROR("Backend"), "%s", vhm_logging_error(o->logging));
        else if (r == 0 && (r = vhm_device_start(dev)) < 0)
                vhm_logging_remove_device(o->logging, dev);
        if (r < 0) {
                if (!j->error[0])
                        job_fail(j, r, VHOSTMIG_ERROR("Backend"), "%s", vhm_device_error(dev));
                j->request = vhm_device_error_request(dev);
                vhm_device_free(dev);
                return;
        }
        j->device->dev = dev;
        running_add(o, j->device);
        daemon_log(LOG_INFO, o, j->device->socket, "device running");
}

static void run_remove_device(struct vm_job *j) {
        struct device_object *d = j->device;
        running_remove(j->vm, d);
        vhm_logging_remove_device(j->vm->logging, d->dev);
        vhm_device_free(d->dev);
        d->dev = NULL;
}

static void run_start_logging(struct vm_job *j) {
        int r = vhm_logging_start(j->vm->logging);
        if (r == -EPERM)
                job_fail(j, r, VHOSTMIG_ERROR("MigrationBlocked"), "%s", vhm_logging_error(j->vm->logging));
        else if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR("Backend"), "%s", vhm_logging_error(j->vm->logging));
}

static void run_stop_logging(struct vm_job *j) {
        int r = vhm_logging_stop(j->vm->logging);
        if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR("Backend"), "%s", vhm_logging_error(j->vm->logging));
}

static void run_harvest(struct vm_job *j) {
        int r = vhm_logging_harvest(j->vm->logging, &j->new_pages);
        if (r == -ENODATA) {
                job_fail(j, r, VHOSTMIG_ERROR("NotSupported"), "logging is off: call StartLogging first");
                return;
        }
        if (r < 0) {
                job_fail(j, r, VHOSTMIG_ERROR("Backend"), "%s", vhm_logging_error(j->vm->logging));
                return;
        }
        j->dirty_pages = vhm_bitmap_count(vhm_logging_bitmap(j->vm->logging));
}

static void run_announce_vm(struct vm_job *j) {
        for (unsigned i = 0; i < j->vm->nrunning; i++) {
                struct vhm_device *dev = j->vm->running[i]->dev;
                if (!dev || !vhm_device_needs_rarp(dev))
                        continue;
                if (vhm_device_announce(dev) < 0) {
                        job_fail(j, -EIO, VHOSTMIG_ERROR("Backend"), "%s", vhm_device_error(dev));
                        j->request = vhm_device_error_request(dev);
                        return;
                }
                j->sent++;
        }
}

static void run_device_call(struct vm_job *j) {
        struct vhm_device *dev = j->device->dev;
        int r;
        if (!dev) {
                job_fail(j, -ENODEV, VHOSTMIG_ERROR("NoSuchDevice"), "the device is being removed");
                return;
        }
        switch (j->kind) {
        case JOB_ANNOUNCE_DEVICE:
                r = vhm_device_announce(dev);
                break;
        case JOB_SET_MTU:
                r = vhm_device_set_mtu(dev, j->mtu);
                break;
        default:
                vhm_device_disconnect(dev);
                r = vhm_device_reconnect(dev, j->vm->daemon->cfg.request_timeout_ms);
                break;
        }
        if (r < 0) {
                job_fail(j, r, r == -ENOTSUP ? VHOSTMIG_ERROR("NotSupported") : VHOSTMIG_ERROR("Backend"),
                         "%s", vhm_device_error(dev));
                j->request = vhm_device_error_request(dev);
        }
}

/* Connection checks and reconnection attempts with each device's back-off. */
static void run_monitor(struct vm_job *j) {
        uint64_t now = vhu_now_usec();
        for (unsigned i = 0; i < j->vm->nrunning; i++) {
                struct device_object *d = j->vm->running[i];
                if (!d->dev)
                        continue;
                uint64_t channel_failures = vhm_device_stats(d->dev)->channel_failures;
                bool connected = vhm_device_state(d->dev) != VHM_DEVICE_DISCONNECTED &&
                                 vhm_device_poll_connection(d->dev) > 0;
                if (vhm_device_stats(d->dev)->channel_failures != channel_failures)
                        daemon_log(LOG_WARNING, j->vm, d->socket, "back-end channel closed: %s",
                                   vhm_device_error(d->dev));
                if (connected)
                        continue;
                if (vhm_device_state(d->dev) != VHM_DEVICE_DISCONNECTED)
                        continue;
                if (now < d->next_reconnect_usec)
                        continue;
                /* Server mode waits briefly for the back-end; client mode fails fast. */
                int r = vhm_device_reconnect(d->dev, 10);
                if (r == 0)
                        daemon_log(LOG_NOTICE, j->vm, d->socket, "back-end reconnected");
                else if (r == -EPERM)
                        daemon_log(LOG_WARNING, j->vm, d->socket, "refused a back-end peer: %s",
                                   vhm_device_error(d->dev));
                else if (r != -EAGAIN)
                        daemon_log_full(LOG_WARNING, NULL, j->vm, d->socket, vhm_device_error_request(d->dev),
                                        "reconnection failed: %s", vhm_device_error(d->dev));
                d->next_reconnect_usec = now + (uint64_t) vhm_device_reconnect_delay_ms(d->dev) * 1000u;
        }
}

static void run_destroy(struct vm_job *j) {
        struct vm_object *o = j->vm;
        vhm_logging_free(o->logging);   /* stops logging first */
        o->logging = NULL;
        for (unsigned i = 0; i < o->nrunning; i++) {
                vhm_device_free(o->running[i]->dev);
                o->running[i]->dev = NULL;
        }
        o->nrunning = 0;
        vhm_vm_free(o->vm);
        o->vm = NULL;
}

static void job_run(struct worker_job *base) {
        struct vm_job *j = (struct vm_job *) base;
        switch (j->kind) {
        case JOB_ADD_DEVICE: run_add_device(j); break;
        case JOB_REMOVE_DEVICE: run_remove_device(j); break;
        case JOB_START_LOGGING: run_start_logging(j); break;
        case JOB_STOP_LOGGING: run_stop_logging(j); break;
        case JOB_HARVEST: run_harvest(j); break;
        case JOB_ANNOUNCE_VM: run_announce_vm(j); break;
        case JOB_ANNOUNCE_DEVICE:
        case JOB_RECONNECT_DEVICE:
        case JOB_SET_MTU: run_device_call(j); break;
        case JOB_MONITOR: run_monitor(j); break;
        case JOB_DESTROY: run_destroy(j); return;   /* nothing left to snapshot */
        }
        vm_refresh(j->vm, j);
}

/* ---- publishing (loop side) ------------------------------------------------------------- */

static void publish_device(struct device_object *d, const struct device_snapshot *now) {
        const struct device_snapshot *was = &d->published;
        const char *changed[16];
        unsigned n = 0;
#define CHANGED(field, name) if (memcmp(&was->field, &now->field, sizeof(now->field))) changed[n++] = name
        CHANGED(state, "State");
        CHANGED(features, "Features");
        CHANGED(acked_features, "AckedFeatures");
        CHANGED(protocol_features, "ProtocolFeatures");
        CHANGED(acked_protocol_features, "AckedProtocolFeatures");
        CHANGED(queue_pairs, "QueuePairs");
        CHANGED(mtu, "Mtu");
        CHANGED(ring_indices, "RingIndices");
        CHANGED(reconnects, "Reconnects");
        CHANGED(refused_peers, "RefusedPeers");
        CHANGED(blocker, "MigrationBlocker");
        CHANGED(last_error, "LastError");
#undef CHANGED
        changed[n] = NULL;
        d->published = *now;
        if (n > 0 && !d->removed)
                (void) sd_bus_emit_properties_changed_strv(d->vm->daemon->bus, d->path, "org.vhostmig1.Device",
                                                           (char **) changed);
}

static void vm_publish(struct vm_object *o) {
        struct vm_snapshot now;
        struct device_object *devs[VHM_LOGGING_MAX_DEVICES];
        struct device_snapshot dnow[VHM_LOGGING_MAX_DEVICES];

        pthread_mutex_lock(&o->snap_lock);
        now = o->snap;
        unsigned n = o->ndevices;
        for (unsigned i = 0; i < n; i++) {
                devs[i] = o->devices[i];
                dnow[i] = devs[i]->snap;
        }
        pthread_mutex_unlock(&o->snap_lock);

        const struct vm_snapshot *was = &o->published;
        const char *changed[12];
        unsigned c = 0;
        if (was->memory_size != now.memory_size) changed[c++] = "MemorySize";
        if (was->blocked != now.blocked) changed[c++] = "MigrationBlocked";
        if (was->nblockers != now.nblockers || memcmp(was->blockers, now.blockers, sizeof(now.blockers)))
                changed[c++] = "MigrationBlockers";
        if (was->logging != now.logging) changed[c++] = "Logging";
        if (was->log_incomplete != now.log_incomplete) changed[c++] = "LogIncomplete";
        if (was->log_size != now.log_size) changed[c++] = "LogSize";
        if (was->dirty_pages != now.dirty_pages) changed[c++] = "DirtyPages";
        if (was->harvests != now.harvests) changed[c++] = "Harvests";
        if (strcmp(was->last_error, now.last_error)) changed[c++] = "LastError";
        changed[c] = NULL;
        o->published = now;
        if (c > 0 && !o->destroying)
                (void) sd_bus_emit_properties_changed_strv(o->daemon->bus, o->path, "org.vhostmig1.Vm", (char **) changed);
        for (unsigned i = 0; i < n; i++)
                publish_device(devs[i], &dnow[i]);
}

static void emit_devices_changed(struct vm_object *o) {
        (void) sd_bus_emit_properties_changed(o->daemon->bus, o->path, "org.vhostmig1.Vm", "Devices", NULL);
}

/* ---- completing (loop side) ---------------------------------------------------------------- */

static void device_object_free(struct device_object *d) {
        if (!d)
                return;
        free(d->socket);
        free(d);
}

static void add_to_array(struct vm_object *o, struct device_object *d) {
        pthread_mutex_lock(&o->snap_lock);
        o->devices[o->ndevices++] = d;
        pthread_mutex_unlock(&o->snap_lock);
}

static void remove_from_array(struct vm_object *o, struct device_object *d) {
        pthread_mutex_lock(&o->snap_lock);
        for (unsigned i = 0; i < o->ndevices; i++)
                if (o->devices[i] == d) {
                        memmove(&o->devices[i], &o->devices[i + 1], (o->ndevices - i - 1) * sizeof(o->devices[0]));
                        o->ndevices--;
                        break;
                }
        pthread_mutex_unlock(&o->snap_lock);
}

static void reply_success(struct vm_job *j) {
        switch (j->kind) {
        case JOB_ADD_DEVICE:
                (void) sd_bus_reply_method_return(j->call, "o", j->device->path);
                break;
        case JOB_HARVEST:
                (void) sd_bus_reply_method_return(j->call, "tt", j->new_pages, j->dirty_pages);
                break;
        case JOB_ANNOUNCE_VM:
                (void) sd_bus_reply_method_return(j->call, "u", j->sent);
                break;
        default:
                (void) sd_bus_reply_method_return(j->call, NULL);
                break;
        }
}

static void finish_add(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct device_object *d = j->device;
        if (j->result < 0) {
                /* Numbers go to devices that exist: a failed AddDevice uses none. */
                j->free_device = true;
                return;
        }
        if (o->destroying) {
                /* The worker released it (or will); teardown frees the object once the worker is gone. */
                job_fail(j, -ESHUTDOWN, VHOSTMIG_ERROR("Busy"), "the VM is being destroyed");
                d->removed = true;
                add_to_array(o, d);
                return;
        }
        d->number = o->next_device_number++;
        snprintf(d->path, sizeof(d->path), "%s/dev/%u", o->path, d->number);
        /* InterfacesAdded carries the state: nothing to repeat in PropertiesChanged. */
        pthread_mutex_lock(&o->snap_lock);
        d->published = d->snap;
        pthread_mutex_unlock(&o->snap_lock);
        add_to_array(o, d);
        (void) sd_bus_emit_object_added(o->daemon->bus, d->path);
        emit_devices_changed(o);
}

static int teardown_vm(sd_event_source *s, void *userdata);

static void job_done(struct worker_job *base) {
        struct vm_job *j = (struct vm_job *) base;
        struct vm_object *o = j->vm;

        if (j->kind == JOB_ADD_DEVICE)
                finish_add(j);
        if (j->kind == JOB_MONITOR)
                o->monitor_queued = false;
        if (j->result < 0)
                daemon_log_full(LOG_WARNING, NULL, o, j->device ? j->device->socket : NULL, j->request, "%s", j->error);
        /* Only now: the message above still names the device. */
        if (j->free_device) {
                device_object_free(j->device);
                j->device = NULL;
        }

        if (j->call) {
                if (j->result < 0)
                        (void) sd_bus_reply_method_errorf(j->call, j->error_name, "%s", j->error);
                else
                        reply_success(j);
                sd_bus_message_unref(j->call);
        }
        if (j->kind == JOB_DESTROY)
                /* The worker's own completion is still on the stack: free it after this callback. */
                (void) sd_event_add_defer(o->daemon->event, NULL, teardown_vm, o);
        else
                vm_publish(o);
        free(j);
}

/* ---- lifecycle of a VM object ------------------------------------------------------------------ */

struct vm_object *vm_object_by_name(struct daemon *d, const char *name) {
        for (struct vm_object *o = d->vms; o; o = o->next)
                if (strcmp(o->name, name) == 0 && !o->destroying)
                        return o;
        return NULL;
}

int vm_object_create(struct daemon *d, const char *name, struct vhm_vm *vm, struct vm_object **out) {
        struct vm_object *o = calloc(1, sizeof(*o));
        if (!o)
                return -ENOMEM;
        o->daemon = d;
        o->name = strdup(name);
        int r = o->name ? sd_bus_path_encode(VHOSTMIG_VM_PREFIX, name, &o->path) : -ENOMEM;
        if (r >= 0)
                r = vhm_logging_new(vm, &o->logging);
        if (r >= 0 && !(o->destroy_job = job_new(o, JOB_DESTROY, NULL)))
                r = -ENOMEM;
        if (r >= 0) {
                pthread_mutex_init(&o->snap_lock, NULL);
                char thread_name[16];
                snprintf(thread_name, sizeof(thread_name), "vm-%.12s", name);
                r = worker_start(&o->worker, d->event, thread_name);
                if (r < 0)
                        pthread_mutex_destroy(&o->snap_lock);
        }
        if (r < 0) {
                free(o->destroy_job);
                vhm_logging_free(o->logging);
                free(o->path);
                free(o->name);
                free(o);
                return r;
        }
        o->vm = vm;
        o->snap.memory_size = o->published.memory_size = vhm_vm_memory_size(vm);
        o->next = d->vms;
        d->vms = o;
        d->nvms++;
        *out = o;
        (void) sd_bus_emit_object_added(d->bus, o->path);
        (void) sd_bus_emit_properties_changed(d->bus, VHOSTMIG_ROOT_PATH, "org.vhostmig1.Manager", "Vms", NULL);
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
        daemon_log(LOG_INFO, o, NULL, "VM destroyed");
        free(o->path);
        free(o->name);
        free(o);
        daemon_update_status(d);
        /* Exit once the last VM is released, not the first. */
        if (d->shutting_down && !d->vms && d->vms_tearing_down == 0)
                sd_event_exit(d->event, 0);
        return 0;
}

void vm_object_destroy(struct vm_object *o, sd_bus_message *reply_to) {
        struct daemon *d = o->daemon;
        /* Signal while the objects can still be found, so the signals name their interfaces. */
        for (unsigned i = 0; i < o->ndevices; i++) {
                (void) sd_bus_emit_object_removed(d->bus, o->devices[i]->path);
                o->devices[i]->removed = true;
        }
        (void) sd_bus_emit_object_removed(d->bus, o->path);
        o->destroying = true;
        d->vms_tearing_down++;
        for (struct vm_object **p = &d->vms; *p; p = &(*p)->next)
                if (*p == o) {
                        *p = o->next;
                        break;
                }
        d->nvms--;
        (void) sd_bus_emit_properties_changed(d->bus, VHOSTMIG_ROOT_PATH, "org.vhostmig1.Manager", "Vms", NULL);
        /* Behind whatever the worker is doing: the teardown never races a running job. */
        struct vm_job *j = o->destroy_job;
        o->destroy_job = NULL;
        j->call = reply_to ? sd_bus_message_ref(reply_to) : NULL;
        job_submit(j);
}

void vm_object_queue_monitor(struct vm_object *o) {
        if (o->destroying || o->monitor_queued || worker_pending(&o->worker) > 0)
                return;
        struct vm_job *j = job_new(o, JOB_MONITOR, NULL);
        if (!j)
                return;
        o->monitor_queued = true;
        job_submit(j);
}

/* ---- finding objects from paths -------------------------------------------------------------- */

static struct vm_object *vm_from_path(struct daemon *d, const char *path) {
        char *name = NULL;
        if (sd_bus_path_decode(path, VHOSTMIG_VM_PREFIX, &name) <= 0)
                return NULL;
        struct vm_object *o = vm_object_by_name(d, name);
        free(name);
        return o;
}

static struct device_object *device_from_path(struct daemon *d, const char *path) {
        /* /org/vhostmig1/vm/NAME/dev/N */
        size_t prefix_len = strlen(VHOSTMIG_VM_PREFIX "/");
        if (strncmp(path, VHOSTMIG_VM_PREFIX "/", prefix_len) != 0)
                return NULL;
        const char *dev = strstr(path + prefix_len, "/dev/");
        if (!dev)
                return NULL;
        char *vm_path = strndup(path, (size_t) (dev - path));
        if (!vm_path)
                return NULL;
        struct vm_object *o = vm_from_path(d, vm_path);
        free(vm_path);
        if (!o)
                return NULL;
        for (unsigned i = 0; i < o->ndevices; i++)
                if (strcmp(o->devices[i]->path, path) == 0)
                        return o->devices[i];
        return NULL;
}

static int vm_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                   sd_bus_error *error) {
        (void) bus;
        (void) interface;
        (void) error;
        struct vm_object *o = vm_from_path(userdata, path);
        if (!o)
                return 0;
        *found = o;
        return 1;
}

static int device_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                       sd_bus_error *error) {
        (void) bus;
        (void) interface;
        (void) error;
        struct device_object *d = device_from_path(userdata, path);
        if (!d)
                return 0;
        *found = d;
        return 1;
}

static int enumerate_nodes(sd_bus *bus, const char *prefix, void *userdata, char ***nodes, sd_bus_error *error) {
        (void) bus;
        (void) prefix;
        (void) error;
        struct daemon *d = userdata;
        size_t n = 0, cap = 1;
        for (struct vm_object *o = d->vms; o; o = o->next)
                cap += 1 + o->ndevices;
        char **list = calloc(cap, sizeof(char *));
        if (!list)
                return -ENOMEM;
        for (struct vm_object *o = d->vms; o; o = o->next) {
                list[n++] = strdup(o->path);
                for (unsigned i = 0; i < o->ndevices; i++)
                        list[n++] = strdup(o->devices[i]->path);
        }
        for (size_t i = 0; i < n; i++)
                if (!list[i]) {
                        for (size_t k = 0; k < n; k++)
                                free(list[k]);
                        free(list);
                        return -ENOMEM;
                }
        *nodes = list;
        return 1;
}

/* ---- org.vhostmig1.Vm methods ------------------------------------------------------------------ */

static bool is_eventfd(int fd) {
        char link[64], target[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return false;
        target[n] = '\0';
        return strcmp(target, "anon_inode:[eventfd]") == 0;
}

static int parse_mac(const char *s, uint8_t mac[6]) {
        unsigned v[6];
        char tail;
        if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6)
                return -EINVAL;
        for (int i = 0; i < 6; i++)
                mac[i] = (uint8_t) v[i];
        return strlen(s) == 17 ? 0 : -EINVAL;
}

static int read_queues(sd_bus_message *m, struct vm_job *j, unsigned expected, sd_bus_error *error) {
        int r = sd_bus_message_enter_container(m, 'a', "(uttthh)");
        if (r < 0)
                return r;
        unsigned n = 0;
        for (;;) {
                struct vhm_queue_spec q;
                uint32_t size;
                r = sd_bus_message_read(m, "(uttthh)", &size, &q.desc_gpa, &q.avail_gpa, &q.used_gpa,
                                        &q.kick_fd, &q.call_fd);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (n >= VHM_DEVICE_MAX_QUEUES)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "more than %u queues",
                                                 VHM_DEVICE_MAX_QUEUES);
                if (!is_eventfd(q.kick_fd) || !is_eventfd(q.call_fd))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "queue %u: kick and call fds must be eventfds", n);
                q.size = size;
                j->queues[n++] = q;
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if (n != expected)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "%u queue pairs need %u queues, %u given", expected / 2, expected, n);
        return 0;
}

static int method_add_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        const char *socket, *mac;
        int server;
        uint64_t features;
        uint32_t queue_pairs;
        uint16_t mtu;
        r = sd_bus_message_read(m, "sbtusq", &socket, &server, &features, &queue_pairs, &mac, &mtu);
        if (r < 0)
                return r;
        if (socket[0] != '/' || strlen(socket) >= 108)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "socket: expected an absolute path shorter than 108 bytes");
        if (queue_pairs < 1 || queue_pairs > VHM_DEVICE_MAX_QUEUE_PAIRS)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "queue_pairs: %u is not in 1..%u",
                                         queue_pairs, VHM_DEVICE_MAX_QUEUE_PAIRS);
        if (mtu != 0 && mtu < 68)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "mtu: %u is below 68", mtu);
        if (o->ndevices >= VHM_LOGGING_MAX_DEVICES)
                return sd_bus_error_setf(error, SD_BUS_ERROR_LIMITS_EXCEEDED, "a VM has at most %u devices",
                                         VHM_LOGGING_MAX_DEVICES);

        uint8_t mac_bytes[6];
        if (parse_mac(mac, mac_bytes) < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "mac: \"%s\" is not xx:xx:xx:xx:xx:xx", mac);

        struct vm_job *j = job_new(o, JOB_ADD_DEVICE, m);
        struct device_object *d = calloc(1, sizeof(*d));
        if (!j || !d) {
                free(d);
                sd_bus_message_unref(j ? j->call : NULL);
                free(j);
                return -ENOMEM;
        }
        j->device = d;
        r = read_queues(m, j, 2 * queue_pairs, error);
        if (r < 0)
                goto fail;
        d->vm = o;
        d->server = server;
        snprintf(d->mac, sizeof(d->mac), "%s", mac);
        d->socket = strdup(socket);
        if (!d->socket) {
                r = -ENOMEM;
                goto fail;
        }
        const struct vhostmigd_config *cfg = &o->daemon->cfg;
        const struct config_uid_list *uids = config_backend_uids(cfg, o->name);
        j->config = (struct vhm_device_config) {
                .socket = d->socket, .server = server, .timeout_ms = cfg->request_timeout_ms,
                .features = features, .queue_pairs = queue_pairs, .mtu = mtu,
                .allowed_uids = uids->uid, .n_allowed_uids = uids->n,
                .listen = { .mode = cfg->server_socket_mode, .gid = cfg->server_socket_group },
        };
        memcpy(j->config.mac, mac_bytes, sizeof(mac_bytes));
        job_submit(j);
        return 1;
fail:
        device_object_free(d);
        sd_bus_message_unref(j->call);
        free(j);
        return r;
}

static struct device_object *device_of_vm(struct vm_object *o, const char *path) {
        for (unsigned i = 0; i < o->ndevices; i++)
                if (strcmp(o->devices[i]->path, path) == 0)
                        return o->devices[i];
        return NULL;
}

static int method_remove_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        const char *path;
        r = sd_bus_message_read(m, "o", &path);
        if (r < 0)
                return r;
        struct device_object *d = device_of_vm(o, path);
        if (!d)
                return sd_bus_error_setf(error, VHOSTMIG_ERROR("NoSuchDevice"), "%s is not a device of VM %s", path, o->name);
        struct vm_job *j = job_new(o, JOB_REMOVE_DEVICE, m);
        if (!j)
                return -ENOMEM;
        /* Signal while the object can still be found, so the signal names its interface. */
        (void) sd_bus_emit_object_removed(o->daemon->bus, d->path);
        d->removed = true;
        remove_from_array(o, d);
        emit_devices_changed(o);
        j->device = d;
        j->free_device = true;
        job_submit(j);
        return 1;
}

/* Methods without arguments that become one job. */
static int queue_simple(sd_bus_message *m, struct vm_object *o, enum job_kind kind, sd_bus_error *error) {
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        struct vm_job *j = job_new(o, kind, m);
        if (!j)
                return -ENOMEM;
        job_submit(j);
        return 1;
}

static int method_start_logging(sd_bus_message *m, void *u, sd_bus_error *e) { return queue_simple(m, u, JOB_START_LOGGING, e); }
static int method_stop_logging(sd_bus_message *m, void *u, sd_bus_error *e) { return queue_simple(m, u, JOB_STOP_LOGGING, e); }
static int method_harvest(sd_bus_message *m, void *u, sd_bus_error *e) { return queue_simple(m, u, JOB_HARVEST, e); }
static int method_announce_vm(sd_bus_message *m, void *u, sd_bus_error *e) { return queue_simple(m, u, JOB_ANNOUNCE_VM, e); }

/* ---- org.vhostmig1.Device methods ------------------------------------------------------------- */

static int queue_device(sd_bus_message *m, struct device_object *d, enum job_kind kind, uint16_t mtu,
                        sd_bus_error *error) {
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        struct vm_job *j = job_new(d->vm, kind, m);
        if (!j)
                return -ENOMEM;
        j->device = d;
        j->mtu = mtu;
        job_submit(j);
        return 1;
}

static int method_device_reconnect(sd_bus_message *m, void *u, sd_bus_error *e) {
        return queue_device(m, u, JOB_RECONNECT_DEVICE, 0, e);
}

static int method_device_announce(sd_bus_message *m, void *u, sd_bus_error *e) {
        return queue_device(m, u, JOB_ANNOUNCE_DEVICE, 0, e);
}

static int method_device_set_mtu(sd_bus_message *m, void *u, sd_bus_error *e) {
        uint16_t mtu;
        int r = sd_bus_message_read(m, "q", &mtu);
        if (r < 0)
                return r;
        if (mtu < 68)
                return sd_bus_error_setf(e, SD_BUS_ERROR_INVALID_ARGS, "mtu: %u is below 68", mtu);
        return queue_device(m, u, JOB_SET_MTU, mtu, e);
}

/* ---- properties ------------------------------------------------------------------------------------ */

/* Reads one snapshot field under the lock into a local copy. */
#define SNAP_VM(o, field) ({ pthread_mutex_lock(&(o)->snap_lock); __typeof__((o)->snap.field) v_ = (o)->snap.field; \
                             pthread_mutex_unlock(&(o)->snap_lock); v_; })
#define SNAP_DEV(d, field) ({ pthread_mutex_lock(&(d)->vm->snap_lock); __typeof__((d)->snap.field) v_ = (d)->snap.field; \
                              pthread_mutex_unlock(&(d)->vm->snap_lock); v_; })

static int prop_vm_name(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) prop; (void) e;
        return sd_bus_message_append(reply, "s", ((struct vm_object *) u)->name);
}

#define VM_U64_PROP(fn, field) \
        static int fn(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) { \
                (void) b; (void) p; (void) i; (void) prop; (void) e; \
                return sd_bus_message_append(reply, "t", (uint64_t) SNAP_VM((struct vm_object *) u, field)); \
        }
VM_U64_PROP(prop_vm_memory_size, memory_size)
VM_U64_PROP(prop_vm_log_size, log_size)
VM_U64_PROP(prop_vm_dirty_pages, dirty_pages)
VM_U64_PROP(prop_vm_harvests, harvests)

static int prop_vm_bool(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) e;
        struct vm_object *o = u;
        int v = strcmp(prop, "Logging") == 0         ? SNAP_VM(o, logging)
                : strcmp(prop, "LogIncomplete") == 0 ? SNAP_VM(o, log_incomplete)
                                                     : SNAP_VM(o, blocked);
        return sd_bus_message_append(reply, "b", v);
}

static int prop_vm_blockers(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) prop; (void) e;
        struct vm_object *o = u;
        struct vm_snapshot s;
        pthread_mutex_lock(&o->snap_lock);
        s = o->snap;
        pthread_mutex_unlock(&o->snap_lock);
        int r = sd_bus_message_open_container(reply, 'a', "s");
        for (unsigned k = 0; r >= 0 && k < s.nblockers; k++)
                r = sd_bus_message_append(reply, "s", s.blockers[k]);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

static int prop_vm_last_error(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) prop; (void) e;
        struct vm_object *o = u;
        char buf[sizeof(o->snap.last_error)];
        pthread_mutex_lock(&o->snap_lock);
        memcpy(buf, o->snap.last_error, sizeof(buf));
        pthread_mutex_unlock(&o->snap_lock);
        return sd_bus_message_append(reply, "s", buf);
}

static int prop_vm_devices(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) prop; (void) e;
        struct vm_object *o = u;
        int r = sd_bus_message_open_container(reply, 'a', "o");
        for (unsigned k = 0; r >= 0 && k < o->ndevices; k++)
                r = sd_bus_message_append(reply, "o", o->devices[k]->path);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

static int prop_dev_socket(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) e;
        struct device_object *d = u;
        if (strcmp(prop, "Mac") == 0)
                return sd_bus_message_append(reply, "s", d->mac);
        return sd_bus_message_append(reply, "s", d->socket);
}

static int prop_dev_server(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) prop; (void) e;
        return sd_bus_message_append(reply, "b", ((struct device_object *) u)->server);
}

static int prop_dev_state(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) prop; (void) e;
        return sd_bus_message_append(reply, "s", vhm_device_state_name(SNAP_DEV((struct device_object *) u, state)));
}

#define DEV_PROP(fn, sig, type, field) \
        static int fn(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) { \
                (void) b; (void) p; (void) i; (void) prop; (void) e; \
                return sd_bus_message_append(reply, sig, (type) SNAP_DEV((struct device_object *) u, field)); \
        }
DEV_PROP(prop_dev_features, "t", uint64_t, features)
DEV_PROP(prop_dev_acked_features, "t", uint64_t, acked_features)
DEV_PROP(prop_dev_protocol_features, "t", uint64_t, protocol_features)
DEV_PROP(prop_dev_acked_protocol_features, "t", uint64_t, acked_protocol_features)
DEV_PROP(prop_dev_queue_pairs, "u", uint32_t, queue_pairs)
DEV_PROP(prop_dev_mtu, "q", unsigned, mtu)
DEV_PROP(prop_dev_reconnects, "t", uint64_t, reconnects)
DEV_PROP(prop_dev_refused_peers, "t", uint64_t, refused_peers)

static int prop_dev_text(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) e;
        struct device_object *d = u;
        struct device_snapshot s;
        pthread_mutex_lock(&d->vm->snap_lock);
        s = d->snap;
        pthread_mutex_unlock(&d->vm->snap_lock);
        return sd_bus_message_append(reply, "s", strcmp(prop, "LastError") == 0 ? s.last_error : s.blocker);
}

static int prop_dev_rings(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u, sd_bus_error *e) {
        (void) b; (void) p; (void) i; (void) prop; (void) e;
        struct device_object *d = u;
        struct device_snapshot s;
        pthread_mutex_lock(&d->vm->snap_lock);
        s = d->snap;
        pthread_mutex_unlock(&d->vm->snap_lock);
        uint32_t v[VHM_DEVICE_MAX_QUEUES];
        for (unsigned k = 0; k < s.nrings; k++)
                v[k] = s.ring_indices[k];
        return sd_bus_message_append_array(reply, 'u', v, s.nrings * sizeof(uint32_t));
}

static const sd_bus_vtable vm_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Name", "s", prop_vm_name, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MemorySize", "t", prop_vm_memory_size, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Devices", "ao", prop_vm_devices, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("MigrationBlocked", "b", prop_vm_bool, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("MigrationBlockers", "as", prop_vm_blockers, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Logging", "b", prop_vm_bool, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LogIncomplete", "b", prop_vm_bool, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LogSize", "t", prop_vm_log_size, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("DirtyPages", "t", prop_vm_dirty_pages, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Harvests", "t", prop_vm_harvests, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LastError", "s", prop_vm_last_error, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("AddDevice",
                                SD_BUS_ARGS("s", socket, "b", server, "t", features, "u", queue_pairs, "s", mac,
                                            "q", mtu, "a(uttthh)", queues),
                                SD_BUS_RESULT("o", device), method_add_device, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("RemoveDevice", SD_BUS_ARGS("o", device), SD_BUS_NO_RESULT,
                                method_remove_device, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("StartLogging", NULL, NULL, method_start_logging, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("StopLogging", NULL, NULL, method_stop_logging, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Harvest", SD_BUS_NO_ARGS, SD_BUS_RESULT("t", new_pages, "t", dirty_pages),
                                method_harvest, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Announce", SD_BUS_NO_ARGS, SD_BUS_RESULT("u", sent),
                                method_announce_vm, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

static const sd_bus_vtable device_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Socket", "s", prop_dev_socket, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Server", "b", prop_dev_server, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", prop_dev_state, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Features", "t", prop_dev_features, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("AckedFeatures", "t", prop_dev_acked_features, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ProtocolFeatures", "t", prop_dev_protocol_features, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("AckedProtocolFeatures", "t", prop_dev_acked_protocol_features, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("QueuePairs", "u", prop_dev_queue_pairs, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Mac", "s", prop_dev_socket, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Mtu", "q", prop_dev_mtu, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("MigrationBlocker", "s", prop_dev_text, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("RingIndices", "au", prop_dev_rings, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Reconnects", "t", prop_dev_reconnects, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("RefusedPeers", "t", prop_dev_refused_peers, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LastError", "s", prop_dev_text, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD("Reconnect", NULL, NULL, method_device_reconnect, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Announce", NULL, NULL, method_device_announce, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetMtu", SD_BUS_ARGS("q", mtu), SD_BUS_NO_RESULT, method_device_set_mtu,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

int vm_objects_register(struct daemon *d) {
        int r = sd_bus_add_fallback_vtable(d->bus, NULL, VHOSTMIG_VM_PREFIX, "org.vhostmig1.Vm", vm_vtable, vm_find, d);
        if (r >= 0)
                r = sd_bus_add_fallback_vtable(d->bus, NULL, VHOSTMIG_VM_PREFIX, "org.vhostmig1.Device", device_vtable,
                                               device_find, d);
        if (r >= 0)
                r = sd_bus_add_node_enumerator(d->bus, NULL, VHOSTMIG_VM_PREFIX, enumerate_nodes, d);
        return r;
}
