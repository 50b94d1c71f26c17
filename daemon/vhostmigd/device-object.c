/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The org.vhostmig1.Device objects: a VM's vhost-user devices, their
 * properties and methods, and the Vm methods that add and remove them.
 *
 * A device is added in one AddDevice call, or, when it needs more queues
 * than one message can carry fds for (a stock bus carries 16: 4 queue
 * pairs), in an AddDevice with "QueuePairs" larger than the queues given and
 * AddQueues calls with the rest.  Between the two it is "configuring": the
 * object exists, its queues are set as they come, and the last AddQueues
 * connects and starts it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "daemon/common/cleanup.h"
#include "daemon/common/validate.h"
#include "daemon/vhostmigd/bus-util.h"
#include "daemon/vhostmigd/jobs.h"
#include "daemon/vhostmigd/restart.h"

/* ---- properties ------------------------------------------------------------------------ */

/* The table of org.vhostmig1.Device's properties: name, D-Bus type, field of struct device_view, const or not. */
#define DEVICE_PROPERTIES(X)                                           \
        X(Socket, S, l.socket, CONST)                                  \
        X(Server, B, l.server, CONST)                                  \
        X(Type, S, l.type, CONST)                                      \
        X(LogSwitchLocked, B, l.log_switch_locked, CONST)              \
        X(State, S, w.state, CHANGE)                                   \
        X(Features, T, w.features, CHANGE)                             \
        X(AckedFeatures, T, w.acked_features, CHANGE)                  \
        X(ProtocolFeatures, T, w.protocol_features, CHANGE)            \
        X(AckedProtocolFeatures, T, w.acked_protocol_features, CHANGE) \
        X(QueuePairs, U, w.queue_pairs, CHANGE)                        \
        X(Mac, S, l.mac, CONST)                                        \
        X(Mtu, Q, w.mtu, CHANGE)                                       \
        X(MigrationBlockers, AS, w.blockers, CHANGE)                   \
        X(RingIndices, AU, w.ring_indices, CHANGE)                     \
        X(Reconnects, T, w.reconnects, CHANGE)                         \
        X(RefusedPeers, T, w.refused_peers, CHANGE)                    \
        X(Requests, T, w.requests, CHANGE)                             \
        X(RequestFailures, T, w.request_failures, CHANGE)              \
        X(CreatedTimestamp, T, l.created_usec, CHANGE)                 \
        X(StateChangeTimestamp, T, l.state_change_usec, CHANGE)        \
        X(LastError, S, l.last_error, CHANGE)                          \
        X(LastErrorTimestamp, T, l.last_error_usec, CHANGE)

#define PROPS_VIEW struct device_view
static const struct prop_def device_props[] = { DEVICE_PROPERTIES(PROPS_DEF) };
DEVICE_PROPERTIES(PROPS_CHECK)
#undef PROPS_VIEW

static void device_read_view(const void *object, void *out) {
        const struct device_object *d = object;
        struct device_view *v = out;
        pthread_mutex_t *lock = &d->vm->snap_lock;
        pthread_mutex_lock(lock);
        PROPS_COPY_EXCEPT(&v->w, &d->snap, blockers);
        prop_strv_copy(&v->w.blockers, &d->snap.blockers);
        pthread_mutex_unlock(lock);
        v->l = d->loop;
}

const struct prop_iface device_iface = {
        .interface = VHOSTMIG_DEVICE_INTERFACE,
        .props = device_props,
        .n = sizeof(device_props) / sizeof(device_props[0]),
        .view_size = sizeof(struct device_view),
        .read_view = device_read_view,
};

/* ---- snapshots (worker side) and publishing (loop side) ------------------------------------ */

void device_snapshot_fill(struct device_object *d, struct device_snapshot *s) {
        memset(s, 0, sizeof(*s));
        struct vhm_device *dev = d->dev;
        if (!dev || d->worker_configuring) {
                snprintf(s->state, sizeof(s->state), "%s",
                         dev ? VHOSTMIG_DEVICE_STATE_CONFIGURING : VHOSTMIG_DEVICE_STATE_DISCONNECTED);
                if (dev)
                        s->queue_pairs = vhm_device_queue_pairs(dev);
                return;
        }
        enum vhm_device_state state = vhm_device_state(dev);
        snprintf(s->state, sizeof(s->state), "%s", vhm_device_state_name(state));
        s->features = vhm_device_features(dev);
        s->acked_features = vhm_device_acked_features(dev);
        s->protocol_features = vhm_device_protocol_features_offered(dev);
        s->acked_protocol_features = vhm_device_protocol_features(dev);
        s->queue_pairs = vhm_device_queue_pairs(dev);
        s->mtu = vhm_device_mtu(dev);
        s->ring_indices.n = 2 * s->queue_pairs;
        for (unsigned q = 0; q < s->ring_indices.n; q++)
                s->ring_indices.v[q] = vhm_device_ring_index(dev, q);
        const struct vhm_device_stats *st = vhm_device_stats(dev);
        s->reconnects = st->connects > 0 ? st->connects - 1 : 0;
        s->refused_peers = st->refused_peers;
        vhm_device_request_counts(dev, &s->requests, &s->request_failures);
        struct vhm_blockers b;
        vhm_device_blockers(dev, &b);
        s->blockers.n = b.n;
        memcpy(s->blockers.v, b.reason, sizeof(b.reason));
        if (state == VHM_DEVICE_FAILED || state == VHM_DEVICE_DISCONNECTED)
                snprintf(s->error, sizeof(s->error), "%s", vhm_device_error(dev));
}

void device_set_last_error(struct device_object *d, const char *error) {
        if (!error[0] && !d->loop.last_error[0])
                return;
        snprintf(d->loop.last_error, sizeof(d->loop.last_error), "%s", error);
        d->loop.last_error_usec = error[0] ? props_now_usec() : 0;
}

/* The device's own failures (a back-end gone, a request refused) are its LastError too. */
static void note_changes(struct device_object *d, const struct device_view *was, struct device_view *now) {
        if (strcmp(was->w.state, now->w.state) != 0)
                d->loop.state_change_usec = props_now_usec();
        if (strcmp(was->w.error, now->w.error) != 0)
                device_set_last_error(d, now->w.error);
        now->l = d->loop;
}

void device_publish(struct device_object *d, struct device_view *now) {
        if (!d->path[0])
                return; /* not on the bus yet */
        note_changes(d, &d->published, now);
        const char *changed[sizeof(device_props) / sizeof(device_props[0]) + 1];
        unsigned n = props_diff(&device_iface, &d->published, now, changed);
        d->published = *now;
        if (n > 0 && !d->removed)
                (void) sd_bus_emit_properties_changed_strv(d->vm->daemon->bus, d->path, VHOSTMIG_DEVICE_INTERFACE,
                                                           (char **) changed);
}

/* ---- the device objects ---------------------------------------------------------------------- */

void device_object_free(struct device_object *d) {
        if (!d)
                return;
        sd_bus_slot_unref(d->slot);
        job_free(d->release_job);
        free(d->socket);
        free(d);
}

/* Its own vtable at its path (vm-object.c says why not a fallback); the object is on the bus from now on. */
static int device_object_add_vtable(struct device_object *d) {
        return sd_bus_add_object_vtable(d->vm->daemon->bus, &d->slot, d->path, VHOSTMIG_DEVICE_INTERFACE, device_vtable,
                                        d);
}

void device_array_add(struct vm_object *o, struct device_object *d) {
        pthread_mutex_lock(&o->snap_lock);
        o->devices[o->ndevices++] = d;
        pthread_mutex_unlock(&o->snap_lock);
}

void device_array_remove(struct vm_object *o, struct device_object *d) {
        pthread_mutex_lock(&o->snap_lock);
        for (unsigned i = 0; i < o->ndevices; i++)
                if (o->devices[i] == d) {
                        memmove(&o->devices[i], &o->devices[i + 1], (o->ndevices - i - 1) * sizeof(o->devices[0]));
                        o->ndevices--;
                        break;
                }
        pthread_mutex_unlock(&o->snap_lock);
}

struct device_object *device_of_vm(struct vm_object *o, const char *path) {
        for (unsigned i = 0; i < o->ndevices; i++)
                if (strcmp(o->devices[i]->path, path) == 0)
                        return o->devices[i];
        return NULL;
}

/* Takes the device off the bus (loop); the caller frees it once no job refers to it. */
static void device_unpublish(struct device_object *d) {
        struct vm_object *o = d->vm;
        /* Signal while the object can still be found, so the signal names its interface. */
        (void) sd_bus_emit_object_removed(o->daemon->bus, d->path);
        d->slot = sd_bus_slot_unref(d->slot);
        d->removed = true;
        device_array_remove(o, d);
        vm_publish(o);
}

/* ---- worker side: creating, completing and releasing a vhm_device ----------------------------- */

static int set_queues(struct vm_job *j) {
        struct device_object *d = j->device;
        for (unsigned i = 0; i < j->u.add.n; i++) {
                int r = vhm_device_set_queue(d->dev, j->u.add.first + i, &j->u.add.queues[i]);
                if (r < 0)
                        return job_fail(j, r, SD_BUS_ERROR_INVALID_ARGS, "%s", vhm_device_error(d->dev));
                d->worker_queues_set++;
        }
        return 0;
}

/* Every queue is there: connect, join the log (while logging, before the rings start), start. */
static int connect_and_start(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct vhm_device *dev = j->device->dev;
        int r = vhm_device_connect(dev);
        if (r == 0 && (r = vhm_logging_add_device(o->logging, dev)) < 0)
                return job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", vhm_logging_error(o->logging));
        /* Joining the logging declares nothing: the operator's word comes after it. */
        if (r == 0)
                (void) vhm_logging_set_log_switch_locked(o->logging, dev, j->device->loop.log_switch_locked);
        /* Incoming: connected and negotiated; the migration restores and starts the rings. */
        if (r == 0 && !j->device->incoming && (r = vhm_device_start(dev)) < 0)
                vhm_logging_remove_device(o->logging, dev);
        if (r < 0) {
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", vhm_device_error(dev));
                j->request = vhm_device_error_request(dev);
                return r;
        }
        j->device->worker_configuring = false;
        daemon_log_event(LOG_INFO, VHOSTMIG_MESSAGE_DEVICE_CONNECTED, o, j->device->socket, "%s",
                         j->device->incoming ? "device connected, waiting for an incoming migration"
                                             : "device running");
        return 0;
}

static void release_device(struct vm_object *o, struct device_object *d) {
        running_remove(o, d);
        if (d->dev)
                vhm_logging_remove_device(o->logging, d->dev);
        vhm_device_free(d->dev);
        d->dev = NULL;
}

static void run_add_device(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct device_object *d = j->device;
        int r = vhm_device_new(o->vm, &j->u.add.config, &d->dev);
        if (r < 0) {
                job_fail(j, r, SD_BUS_ERROR_INVALID_ARGS, "cannot create the device: %s", strerror(-r));
                return;
        }
        d->worker_configuring = true;
        if (set_queues(j) == 0 && (!j->u.add.last || connect_and_start(j) == 0)) {
                running_add(o, d);
                return;
        }
        vhm_device_free(d->dev);
        d->dev = NULL;
}

static void run_add_queues(struct vm_job *j) {
        struct device_object *d = j->device;
        if (!d->dev) {
                job_fail(j, -ENODEV, VHOSTMIG_ERROR_NO_SUCH_DEVICE, "the device is being removed");
                return;
        }
        if (set_queues(j) == 0 && (!j->u.add.last || connect_and_start(j) == 0))
                return;
        /* A device that cannot be completed is removed: there is nothing to retry. */
        release_device(j->vm, d);
}

static void run_remove_device(struct vm_job *j) {
        release_device(j->vm, j->device);
}

/* ---- loop side: publishing or discarding what the jobs made ------------------------------------ */

static int publish_new_device(struct vm_object *o, struct device_object *d) {
        snprintf(d->path, sizeof(d->path), "%s" VHOSTMIG_DEVICE_INFIX "%u", o->path, o->next_device_number);
        int r = device_object_add_vtable(d);
        if (r < 0) {
                d->path[0] = '\0';
                return r;
        }
        d->number = o->next_device_number++;
        d->loop.created_usec = d->loop.state_change_usec = props_now_usec();
        /* InterfacesAdded carries the state: nothing to repeat in PropertiesChanged. */
        device_read_view(d, &d->published);
        device_array_add(o, d);
        (void) sd_bus_emit_object_added(o->daemon->bus, d->path);
        return 0;
}

/* Published it could not be: the worker lets it go (with the job allocated for that), the call fails. */
static void release_unpublished(struct vm_job *j, int r) {
        struct device_object *d = j->device;
        struct vm_job *release = d->release_job;
        d->release_job = NULL;
        job_fail(j, r, SD_BUS_ERROR_NO_MEMORY, "cannot put the device on the bus: %s", strerror(-r));
        release->device = d;
        release->free_device = true;
        job_submit(release);
}

static void done_add_device(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct device_object *d = j->device;
        o->devices_adding--;
        if (j->result < 0) {
                /* Numbers go to devices that exist: a failed AddDevice uses none. */
                j->free_device = true;
                return;
        }
        if (o->destroying) {
                /* The worker released it (or will); teardown frees the object once the worker is gone. */
                job_fail(j, -ESHUTDOWN, VHOSTMIG_ERROR_BUSY, "the VM is being destroyed");
                d->removed = true;
                device_array_add(o, d);
                return;
        }
        d->configuring = !j->u.add.last;
        int r = publish_new_device(o, d);
        if (r < 0) {
                release_unpublished(j, r);
                return;
        }
        job_free(d->release_job);
        d->release_job = NULL;
}

static int reply_add_device(struct vm_job *j) {
        return sd_bus_reply_method_return(j->call, "o", j->device->path);
}

static const struct job_ops job_add_device = {
        .name = "AddDevice",
        .run = run_add_device,
        .done = done_add_device,
        .reply = reply_add_device,
};

static void done_add_queues(struct vm_job *j) {
        struct device_object *d = j->device;
        if (j->result >= 0 || d->removed)
                return; /* a RemoveDevice behind this job frees it */
        /* The device is gone: its failure is the VM's news. */
        vm_set_last_error(j->vm, j->error);
        device_unpublish(d);
        j->free_device = true;
}

static const struct job_ops job_add_queues = {
        .name = "AddQueues",
        .run = run_add_queues,
        .done = done_add_queues,
        .device_method = true,
};

static const struct job_ops job_remove_device = {
        .name = "RemoveDevice",
        .run = run_remove_device,
};

/* Reconnect, Announce, SetMtu: one call on a device that exists on the worker. */
static struct vhm_device *job_device(struct vm_job *j) {
        struct device_object *d = j->device;
        if (d->dev && !d->worker_configuring)
                return d->dev;
        job_fail(j, -ENODEV, d->dev ? VHOSTMIG_ERROR_INVALID_STATE : VHOSTMIG_ERROR_NO_SUCH_DEVICE,
                 d->dev ? "the device is configuring: AddQueues first" : "the device is being removed");
        return NULL;
}

static void device_call_result(struct vm_job *j, struct vhm_device *dev, int r) {
        if (r >= 0)
                return;
        job_fail(j, r, r == -ENOTSUP ? VHOSTMIG_ERROR_NOT_SUPPORTED : VHOSTMIG_ERROR_BACKEND, "%s",
                 vhm_device_error(dev));
        j->request = vhm_device_error_request(dev);
}

static void run_reconnect(struct vm_job *j) {
        struct vhm_device *dev = job_device(j);
        if (!dev)
                return;
        restart_device_dropping_connection(j->vm, j->device);
        vhm_device_disconnect(dev);
        device_call_result(j, dev, vhm_device_reconnect(dev, j->timeout_ms));
}

static void run_device_announce(struct vm_job *j) {
        struct vhm_device *dev = job_device(j);
        if (dev)
                device_call_result(j, dev, vhm_device_announce(dev));
}

static void run_set_mtu(struct vm_job *j) {
        struct vhm_device *dev = job_device(j);
        if (dev)
                device_call_result(j, dev, vhm_device_set_mtu(dev, j->u.mtu));
}

static const struct job_ops job_reconnect = { .name = "Reconnect", .run = run_reconnect, .device_method = true };
static const struct job_ops job_device_announce = {
        .name = "Announce",
        .run = run_device_announce,
        .device_method = true,
};
static const struct job_ops job_set_mtu = { .name = "SetMtu", .run = run_set_mtu, .device_method = true };

/* ---- restart (restart.c) -------------------------------------------------------------------------- */

int device_object_restore(struct vm_object *o, const struct vhm_device_config *cfg, unsigned sid, unsigned number,
                          uint64_t created_usec, struct device_object **out) {
        struct device_object *d = calloc(1, sizeof(*d));
        if (!d || !(d->socket = strdup(cfg->socket))) {
                free(d);
                return -ENOMEM;
        }
        d->iface = &device_iface;
        d->vm = o;
        d->sid = sid;
        d->number = number;
        memcpy(d->mac, cfg->mac, sizeof(d->mac));
        d->has_mac = memcmp(cfg->mac, (const uint8_t[6]){ 0 }, 6) != 0;
        d->incoming = cfg->incoming;
        d->queues_given = d->queues_expected = 2 * cfg->queue_pairs;
        snprintf(d->loop.socket, sizeof(d->loop.socket), "%s", cfg->socket);
        d->loop.server = cfg->server;
        snprintf(d->loop.type, sizeof(d->loop.type), "%s", vhm_device_type_name(cfg->type));
        if (d->has_mac)
                snprintf(d->loop.mac, sizeof(d->loop.mac), "%02x:%02x:%02x:%02x:%02x:%02x", cfg->mac[0], cfg->mac[1],
                         cfg->mac[2], cfg->mac[3], cfg->mac[4], cfg->mac[5]);
        d->loop.created_usec = d->loop.state_change_usec = created_usec;
        struct vhm_device_config c = *cfg;
        c.socket = d->socket;
        snprintf(d->path, sizeof(d->path), "%s" VHOSTMIG_DEVICE_INFIX "%u", o->path, d->number);
        int r = device_object_add_vtable(d);
        if (r >= 0)
                r = vhm_device_new(o->vm, &c, &d->dev);
        if (r < 0) {
                device_object_free(d);
                return r;
        }
        *out = d;
        return 0;
}

void device_object_restored(struct vm_object *o, struct device_object *d, bool ok) {
        if (!ok) {
                vhm_logging_remove_device(o->logging, d->dev);
                vhm_device_free_for_handover(d->dev);
                device_object_free(d);
                return;
        }
        running_add(o, d);
        device_array_add(o, d);
}

/* A source resumes its devices from the used rings, as after a back-end reconnect. */
static void run_resume_after_restart(struct vm_job *j) {
        struct vm_object *o = j->vm;
        for (unsigned i = 0; i < o->nrunning; i++) {
                struct device_object *d = o->running[i];
                restart_device_dropping_connection(o, d);
                vhm_device_disconnect(d->dev);
                if (vhm_device_reconnect(d->dev, j->timeout_ms) < 0)
                        daemon_log(LOG_WARNING, o, d->socket, "restart: resuming after the migration: %s",
                                   vhm_device_error(d->dev));
        }
}

static const struct job_ops job_resume_after_restart = {
        .name = "restart",
        .run = run_resume_after_restart,
};

void vm_object_after_failed_migration(struct vm_object *o, bool destination) {
        if (!destination) {
                struct vm_job *j = job_new(o, &job_resume_after_restart, NULL);
                if (j)
                        job_submit(j);
                return;
        }
        /* The incoming devices go, as RemoveDevice takes them. */
        for (unsigned i = o->ndevices; i-- > 0;) {
                struct device_object *d = o->devices[i];
                struct vm_job *j = d->incoming ? job_new(o, &job_remove_device, NULL) : NULL;
                if (!j)
                        continue;
                device_unpublish(d);
                j->device = d;
                j->free_device = true;
                job_submit(j);
        }
}

/* ---- AddDevice ------------------------------------------------------------------------------------ */

struct add_device_options {
        bool server;
        uint64_t features;
        uint32_t queue_pairs;
        const char *mac;
        uint16_t mtu;
        bool incoming;
        const char *type;
        bool log_switch_locked;
};

enum {
        OPT_SERVER,
        OPT_FEATURES,
        OPT_QUEUE_PAIRS,
        OPT_MAC,
        OPT_MTU,
        OPT_INCOMING,
        OPT_TYPE,
        OPT_LOG_SWITCH_LOCKED
};
static const struct bus_option add_device_options[] = {
        [OPT_SERVER] = { VHOSTMIG_OPTION_SERVER, 'b', offsetof(struct add_device_options, server) },
        [OPT_FEATURES] = { VHOSTMIG_OPTION_FEATURES, 't', offsetof(struct add_device_options, features) },
        [OPT_QUEUE_PAIRS] = { VHOSTMIG_OPTION_QUEUE_PAIRS, 'u', offsetof(struct add_device_options, queue_pairs) },
        [OPT_MAC] = { VHOSTMIG_OPTION_MAC, 's', offsetof(struct add_device_options, mac) },
        [OPT_MTU] = { VHOSTMIG_OPTION_MTU, 'q', offsetof(struct add_device_options, mtu) },
        [OPT_INCOMING] = { VHOSTMIG_OPTION_INCOMING, 'b', offsetof(struct add_device_options, incoming) },
        [OPT_TYPE] = { VHOSTMIG_OPTION_TYPE, 's', offsetof(struct add_device_options, type) },
        [OPT_LOG_SWITCH_LOCKED] = { VHOSTMIG_OPTION_SWITCH_LOCKED, 'b',
                                    offsetof(struct add_device_options, log_switch_locked) },
};

/* An a(uttthh) of queues into j's add.queues after `have` of them; `room` more at most. */
static int read_queues(sd_bus_message *m, struct vm_job *j, unsigned room, sd_bus_error *error) {
        int r = sd_bus_message_enter_container(m, 'a', "(uttthh)");
        if (r < 0)
                return r;
        for (unsigned n = 0;; n++) {
                struct vhm_queue_spec q;
                uint32_t size;
                char why[128];
                r = sd_bus_message_read(m, "(uttthh)", &size, &q.desc_gpa, &q.avail_gpa, &q.used_gpa, &q.kick_fd,
                                        &q.call_fd);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (n >= room)
                        return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS,
                                        "queues: more than the %u the device has room for", room);
                if (validate_eventfd(q.kick_fd, why, sizeof(why)) < 0 ||
                    validate_eventfd(q.call_fd, why, sizeof(why)) < 0)
                        return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS,
                                        "queue %u: kick and call fds must be eventfds: %s", j->u.add.first + n, why);
                q.size = size;
                j->u.add.queues[j->u.add.n++] = q;
        }
        return sd_bus_message_exit_container(m);
}

/* The options, checked; `nqueues` given decide QueuePairs when the options do not. */
static int check_add_options(struct add_device_options *opt, uint32_t given, unsigned nqueues, uint8_t mac[6],
                             enum vhm_device_type *type, sd_bus_error *error) {
        char why[128];
        if (!(given & (1u << OPT_QUEUE_PAIRS))) {
                if (nqueues % 2)
                        return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS,
                                        "queues: %u given, an even number is needed (or the option \"QueuePairs\")",
                                        nqueues);
                opt->queue_pairs = nqueues / 2;
        }
        if (opt->queue_pairs < 1 || opt->queue_pairs > VHM_DEVICE_MAX_QUEUE_PAIRS)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "QueuePairs: %u is not in 1..%u", opt->queue_pairs,
                                VHM_DEVICE_MAX_QUEUE_PAIRS);
        if (nqueues > 2 * opt->queue_pairs)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "queues: %u queue pairs need %u queues, %u given",
                                opt->queue_pairs, 2 * opt->queue_pairs, nqueues);
        if ((given & (1u << OPT_MTU)) && validate_mtu(opt->mtu, why, sizeof(why)) < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "Mtu: %s", why);
        if ((given & (1u << OPT_MAC)) && validate_mac(opt->mac, mac, why, sizeof(why)) < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "Mac: %s", why);
        *type = VHM_DEVICE_TYPE_NET;
        if ((given & (1u << OPT_TYPE)) && vhm_device_type_from_name(opt->type, type) < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS,
                                "%s: \"%s\" is none of \"net\", \"fs\", \"blk\", \"other\"", VHOSTMIG_OPTION_TYPE,
                                opt->type);
        return 0;
}

static int new_device_object(struct vm_object *o, const char *socket, const struct add_device_options *opt,
                             bool has_mac, enum vhm_device_type type, struct device_object **out) {
        struct device_object *d = calloc(1, sizeof(*d));
        if (!d || !(d->socket = strdup(socket))) {
                free(d);
                return -ENOMEM;
        }
        d->iface = &device_iface;
        d->vm = o;
        d->sid = restart_vm_next_sid(o);
        d->has_mac = has_mac;
        d->incoming = opt->incoming;
        d->queues_expected = 2 * opt->queue_pairs;
        snprintf(d->loop.socket, sizeof(d->loop.socket), "%s", socket);
        d->loop.server = opt->server;
        d->loop.log_switch_locked = opt->log_switch_locked;
        snprintf(d->loop.type, sizeof(d->loop.type), "%s", vhm_device_type_name(type));
        if (has_mac)
                snprintf(d->loop.mac, sizeof(d->loop.mac), "%s", opt->mac);
        snprintf(d->snap.state, sizeof(d->snap.state), "%s", VHOSTMIG_DEVICE_STATE_DISCONNECTED);
        *out = d;
        return 0;
}

static void fill_device_config(struct vm_job *j, const struct add_device_options *opt, enum vhm_device_type type) {
        struct vm_object *o = j->vm;
        struct device_object *d = j->device;
        const struct vhostmigd_config *cfg = &o->daemon->cfg;
        /* A copy: a reload may replace the configuration before the worker creates the device. */
        j->u.add.uids = *config_backend_uids(cfg, o->name);
        j->u.add.config = (struct vhm_device_config){
                .socket = d->socket,
                .server = opt->server,
                .timeout_ms = j->timeout_ms,
                .features = opt->features,
                .queue_pairs = opt->queue_pairs,
                .mtu = opt->mtu,
                .incoming = opt->incoming,
                .type = type,
                .allowed_uids = j->u.add.uids.uid,
                .n_allowed_uids = j->u.add.uids.n,
                .listen = { .mode = cfg->server_socket_mode, .gid = cfg->server_socket_group },
        };
        memcpy(j->u.add.config.mac, d->mac, sizeof(d->mac));
}

/* Reads and checks everything, then queues the job; refusals are the caller's answer. */
static int add_device(sd_bus_message *m, struct vm_object *o, sd_bus_error *error) {
        const char *socket;
        char why[128];
        int r = sd_bus_message_read(m, "s", &socket);
        if (r < 0)
                return r;
        if (validate_socket_path(socket, why, sizeof(why)) < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "socket: %s", why);
        /* Devices still being added count: the worker's array has room for the limit, no more. */
        if (o->ndevices + o->devices_adding >= VHM_LOGGING_MAX_DEVICES)
                return bus_fail(error, VHOSTMIG_ERROR_LIMITS_EXCEEDED, "a VM has at most %u devices",
                                VHM_LOGGING_MAX_DEVICES);
        struct vm_job *j = job_new(o, &job_add_device, m);
        if (!j)
                return -ENOMEM;
        r = read_queues(m, j, VHM_DEVICE_MAX_QUEUES, error);
        struct add_device_options opt = { .features = UINT64_MAX };
        uint32_t given = 0;
        uint8_t mac[6] = { 0 };
        enum vhm_device_type type = VHM_DEVICE_TYPE_NET;
        if (r >= 0)
                r = bus_read_options(m, add_device_options, sizeof(add_device_options) / sizeof(add_device_options[0]),
                                     &opt, &given, error);
        if (r >= 0)
                r = check_add_options(&opt, given, j->u.add.n, mac, &type, error);
        if (r >= 0)
                r = new_device_object(o, socket, &opt, given & (1u << OPT_MAC), type, &j->device);
        if (r >= 0 && !(j->device->release_job = job_new(o, &job_remove_device, NULL))) {
                device_object_free(j->device);
                r = -ENOMEM;
        }
        if (r < 0) {
                job_free(j);
                return r;
        }
        memcpy(j->device->mac, mac, sizeof(mac));
        fill_device_config(j, &opt, type);
        j->device->queues_given = j->u.add.n;
        j->u.add.last = j->u.add.n == j->device->queues_expected;
        o->devices_adding++;
        job_submit(j);
        return 1;
}

int method_add_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        r = add_device(m, o, error);
        return r < 0 ? vm_refused(o, error, r) : r;
}

int method_remove_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
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
                return vm_refused(
                        o, error,
                        bus_fail(error, VHOSTMIG_ERROR_NO_SUCH_DEVICE, "%s is not a device of VM %s", path, o->name));
        struct vm_job *j = job_new(o, &job_remove_device, m);
        if (!j)
                return -ENOMEM;
        device_unpublish(d);
        j->device = d;
        j->free_device = true;
        job_submit(j);
        return 1;
}

/* ---- org.vhostmig1.Device methods ------------------------------------------------------------- */

/* A method refused on the loop: `error` (when set) becomes the device's LastError. */
static int device_refused(struct device_object *d, const sd_bus_error *error, int r) {
        if (sd_bus_error_is_set(error)) {
                device_set_last_error(d, error->message ? error->message : error->name);
                vm_publish(d->vm);
        }
        return r;
}

static int add_queues(sd_bus_message *m, struct device_object *d, sd_bus_error *error) {
        if (!d->configuring)
                return bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE,
                                "the device has all its queues: AddQueues is for a device that is configuring");
        struct vm_job *j = job_new(d->vm, &job_add_queues, m);
        if (!j)
                return -ENOMEM;
        j->device = d;
        j->u.add.first = d->queues_given;
        int r = read_queues(m, j, d->queues_expected - d->queues_given, error);
        if (r >= 0 && j->u.add.n == 0)
                r = bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "queues: none given, %u missing",
                             d->queues_expected - d->queues_given);
        if (r < 0) {
                job_free(j);
                return r;
        }
        /* Counted now: the next AddQueues, queued behind this one, continues where it ends. */
        d->queues_given += j->u.add.n;
        j->u.add.last = d->queues_given == d->queues_expected;
        d->configuring = !j->u.add.last;
        job_submit(j);
        return 1;
}

static int method_add_queues(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct device_object *d = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        r = add_queues(m, d, error);
        return r < 0 ? device_refused(d, error, r) : r;
}

static int queue_device_job(sd_bus_message *m, struct device_object *d, const struct job_ops *ops, uint16_t mtu) {
        struct vm_job *j = job_new(d->vm, ops, m);
        if (!j)
                return -ENOMEM;
        j->device = d;
        j->u.mtu = mtu;
        job_submit(j);
        return 1;
}

static int method_reconnect(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        int r = daemon_check_root(m, error);
        return r < 0 ? r : queue_device_job(m, userdata, &job_reconnect, 0);
}

static int method_announce(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct device_object *d = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        if (!d->has_mac)
                return device_refused(d, error,
                                      bus_fail(error, VHOSTMIG_ERROR_NOT_SUPPORTED,
                                               "the device has no MAC address (AddDevice option \"Mac\")"));
        return queue_device_job(m, d, &job_device_announce, 0);
}

static int method_set_mtu(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct device_object *d = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        uint16_t mtu;
        char why[64];
        r = sd_bus_message_read(m, "q", &mtu);
        if (r < 0)
                return r;
        if (validate_mtu(mtu, why, sizeof(why)) < 0)
                return device_refused(d, error, bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "mtu: %s", why));
        return queue_device_job(m, d, &job_set_mtu, mtu);
}

const sd_bus_vtable device_vtable[] = {
        SD_BUS_VTABLE_START(0),
        DEVICE_PROPERTIES(PROPS_VTABLE)
                SD_BUS_METHOD_WITH_ARGS("AddQueues", SD_BUS_ARGS("a(uttthh)", queues), SD_BUS_NO_RESULT,
                                        method_add_queues, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Reconnect", NULL, NULL, method_reconnect, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Announce", NULL, NULL, method_announce, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetMtu", SD_BUS_ARGS("q", mtu), SD_BUS_NO_RESULT, method_set_mtu,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};
