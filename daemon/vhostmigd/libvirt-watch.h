/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The libvirt event watcher: one connection to libvirtd, kept alive and
 * reconnected with back-off, whose domain events (lifecycle, migration
 * iteration, job completed) are handed to an sd-event loop.
 *
 * libvirt runs on a thread of its own (virEventRegisterDefaultImpl and
 * virEventRunDefaultImpl): connecting, the keepalive and every event
 * callback happen there; the loop only reads an eventfd and takes the
 * queued events and the connection state under a mutex that is never held
 * across a libvirt call.  So a slow or dead libvirtd never delays the loop.
 *
 * Nothing here knows D-Bus or the daemon's objects: the owner gets events
 * and state changes through struct libvirt_watch_callbacks, on the loop.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libvirt/libvirt.h>
#include <systemd/sd-event.h>

enum libvirt_watch_state {
        LIBVIRT_WATCH_DISABLED,
        LIBVIRT_WATCH_CONNECTING,
        LIBVIRT_WATCH_CONNECTED,
        LIBVIRT_WATCH_DISCONNECTED,
};

/* "disabled", "connecting", "connected", "disconnected" (the Manager's LibvirtConnection). */
const char *libvirt_watch_state_name(enum libvirt_watch_state s);

enum libvirt_watch_event_kind {
        LIBVIRT_WATCH_EVENT_LIFECYCLE,
        LIBVIRT_WATCH_EVENT_MIGRATION_ITERATION,
        LIBVIRT_WATCH_EVENT_JOB_COMPLETED,
};

#define LIBVIRT_WATCH_NAME_MAX 256
#define LIBVIRT_WATCH_UUID_LEN 37 /* VIR_UUID_STRING_BUFLEN */

struct libvirt_watch_event {
        enum libvirt_watch_event_kind kind;
        char name[LIBVIRT_WATCH_NAME_MAX];
        char uuid[LIBVIRT_WATCH_UUID_LEN]; /* canonical lowercase */
        int event, detail;                 /* LIFECYCLE: virDomainEventType and its detail */
        int iteration;                     /* MIGRATION_ITERATION */
        bool has_downtime;                 /* JOB_COMPLETED: VIR_DOMAIN_JOB_DOWNTIME was given */
        uint64_t downtime_ms;
        bool has_success; /* JOB_COMPLETED: VIR_DOMAIN_JOB_SUCCESS */
        bool success;
};

/* What vhostmigd does for an event of a bound VM (issue 12, "Events of bound VMs"). */
enum libvirt_watch_action {
        LIBVIRT_WATCH_ACTION_NONE,
        LIBVIRT_WATCH_ACTION_CONTINUE, /* SUSPENDED_MIGRATED, source: leave pre-switchover */
        LIBVIRT_WATCH_ACTION_ANNOUNCE, /* RESUMED_MIGRATED, destination: SEND_RARP unless sent */
        LIBVIRT_WATCH_ACTION_RELEASE,  /* STOPPED_MIGRATED, STOPPED_FAILED, CRASHED: the devices go */
        LIBVIRT_WATCH_ACTION_HARVEST,  /* MIGRATION_ITERATION */
        LIBVIRT_WATCH_ACTION_DOWNTIME, /* JOB_COMPLETED: record the downtime */
};

enum libvirt_watch_action libvirt_watch_action_for(const struct libvirt_watch_event *ev);
const char *libvirt_watch_action_name(enum libvirt_watch_action a);

/* The event in words ("lifecycle suspended (migrated)", "migration iteration 3", "job completed, downtime 42 ms"). */
void libvirt_watch_event_describe(const struct libvirt_watch_event *ev, char *buf, size_t len);

struct libvirt_watch_callbacks {
        /* An event, in the order libvirt delivered them. */
        void (*event)(void *userdata, const struct libvirt_watch_event *ev);
        /* The connection state or the last error changed: libvirt_watch_status() has the new ones. */
        void (*state_changed)(void *userdata);
};

struct libvirt_watch_options {
        const char *uri;
        unsigned keepalive_interval_s, keepalive_count;
        unsigned reconnect_min_ms, reconnect_max_ms;
};

struct libvirt_watch;

/*
 * Starts the thread, which connects at once and then keeps reconnecting.
 * 0 with *out set, or a negative errno with `error` saying what failed.
 */
int libvirt_watch_start(sd_event *event, const struct libvirt_watch_options *opts,
                        const struct libvirt_watch_callbacks *cb, void *userdata, struct libvirt_watch **out,
                        char *error, size_t error_len);

/*
 * Stops the thread and closes the connection.  A thread stuck in a libvirt
 * call for more than `timeout_ms` is left behind (with the watcher's memory)
 * rather than holding up the caller: it returns -ETIMEDOUT then.  NULL is fine.
 */
int libvirt_watch_stop(struct libvirt_watch *w, unsigned timeout_ms);

struct libvirt_watch_status {
        enum libvirt_watch_state state;
        char last_error[512];
        uint64_t last_error_usec; /* CLOCK_REALTIME; 0: none yet */
        uint64_t connects;        /* successful connections so far */
};

void libvirt_watch_status(struct libvirt_watch *w, struct libvirt_watch_status *out);

/*
 * libvirt's callbacks, exported so that tests can deliver what the test
 * driver cannot produce (MIGRATED details): they run on the caller's thread
 * and queue the event exactly as libvirt's thread does.  `opaque` is the watcher.
 */
int libvirt_watch_on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque);
void libvirt_watch_on_migration_iteration(virConnectPtr conn, virDomainPtr dom, int iteration, void *opaque);
void libvirt_watch_on_job_completed(virConnectPtr conn, virDomainPtr dom, virTypedParameterPtr params, int nparams,
                                    void *opaque);
