/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "daemon/vhostmigd/daemon.h"
#include "daemon/vhostmigd/jobs.h"
#include "daemon/vhostmigd/libvirt-glue.h"

#if VHOSTMIG_HAVE_LIBVIRT
#include "daemon/vhostmigd/libvirt-watch.h"
#endif

/* How long stopping waits for libvirt's thread; longer only when it is stuck in a call to libvirtd. */
#define LIBVIRT_STOP_TIMEOUT_MS 2000

static struct {
        struct daemon *d;
        char uri[CONFIG_LIBVIRT_URI_MAX];
        /* Set when the watcher could not start, or was built out. */
        char error[512];
        uint64_t error_usec;
#if VHOSTMIG_HAVE_LIBVIRT
        struct libvirt_watch *watch;
        enum libvirt_watch_state logged; /* the state last logged */
        char logged_error[512];          /* and the error: a failure repeated by every retry is logged once */
#endif
} lv;

static uint64_t realtime_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static void set_error(const char *error) {
        snprintf(lv.error, sizeof(lv.error), "%s", error);
        lv.error_usec = realtime_usec();
        daemon_log(LOG_ERR, NULL, NULL, "%s", error);
}

#if VHOSTMIG_HAVE_LIBVIRT

/* ---- events ---------------------------------------------------------------------------- */

/* Every message about an event names the domain both ways, as the operator may know it either way. */
#define EV_FMT            "libvirt: domain %s (%s): %s: "
#define EV_ARGS(ev, what) (ev)->name, (ev)->uuid, (what)

static bool migration_is(struct vm_object *o, const char *role, const char *state) {
        pthread_mutex_lock(&o->snap_lock);
        bool is = strcmp(o->migration.role, role) == 0 && (!state || strcmp(o->migration.state, state) == 0);
        pthread_mutex_unlock(&o->snap_lock);
        return is;
}

/* SUSPENDED_MIGRATED on the source: libvirt paused the vCPUs, which is what pre-switchover waits for. */
static void react_continue(struct vm_object *o, const struct libvirt_watch_event *ev, const char *what) {
        char why[256];
        if (migration_continue(o, why, sizeof(why)) < 0) {
                daemon_log(LOG_INFO, o, NULL, EV_FMT "nothing to continue: %s", EV_ARGS(ev, what), why);
                return;
        }
        daemon_log(LOG_NOTICE, o, NULL, EV_FMT "the guest is paused: switching over (MigrateContinue)",
                   EV_ARGS(ev, what));
}

/* RESUMED_MIGRATED on the destination: the guest runs here now; the switches learn it unless told already. */
static void react_announce(struct vm_object *o, const struct libvirt_watch_event *ev, const char *what) {
        pthread_mutex_lock(&o->snap_lock);
        uint32_t rarp_sent = o->migration.rarp_sent;
        uint64_t checksum = o->migration.checksum;
        pthread_mutex_unlock(&o->snap_lock);
        if (rarp_sent > 0 || (o->announced_after_migration && o->announced_checksum == checksum)) {
                daemon_log(LOG_INFO, o, NULL, EV_FMT "no announcement: already sent since the migration (RarpSent %u)",
                           EV_ARGS(ev, what), rarp_sent);
                return;
        }
        int r = vm_object_announce(o);
        daemon_log(r < 0 ? LOG_WARNING : LOG_NOTICE, o, NULL, EV_FMT "%s%s", EV_ARGS(ev, what),
                   r < 0 ? "cannot announce: " : "announcing (SEND_RARP)", r < 0 ? strerror(-r) : "");
}

/*
 * STOPPED_MIGRATED, STOPPED_FAILED, CRASHED: the guest is gone from this
 * host, so are its devices (DestroyVm).  A destination whose incoming
 * migration failed is left alone: its devices never ran the guest.
 */
static void react_release(struct vm_object *o, const struct libvirt_watch_event *ev, const char *what) {
        daemon_log(LOG_NOTICE, o, NULL, EV_FMT "releasing the VM's devices (as DestroyVm)", EV_ARGS(ev, what));
        vm_object_destroy(o, NULL);
}

/* MIGRATION_ITERATION: libvirt starts a new pass over memory; the dirty log is harvested with it. */
static void react_harvest(struct vm_object *o, const struct libvirt_watch_event *ev, const char *what) {
        if (!o->published.w.logging) {
                daemon_log(LOG_INFO, o, NULL, EV_FMT "no harvest: dirty logging is off", EV_ARGS(ev, what));
                return;
        }
        int r = vm_object_harvest(o);
        daemon_log(r < 0 ? LOG_WARNING : LOG_INFO, o, NULL, EV_FMT "%s%s", EV_ARGS(ev, what),
                   r < 0 ? "cannot harvest: " : "harvesting the dirty log", r < 0 ? strerror(-r) : "");
}

/* JOB_COMPLETED: the downtime libvirt measured becomes LibvirtDowntimeMs. */
static void react_downtime(struct vm_object *o, const struct libvirt_watch_event *ev, const char *what) {
        if (!ev->has_downtime) {
                daemon_log(LOG_INFO, o, NULL, EV_FMT "no downtime reported", EV_ARGS(ev, what));
                return;
        }
        o->loop.libvirt_downtime_ms = ev->downtime_ms;
        vm_publish(o);
        daemon_log(LOG_NOTICE, o, NULL, EV_FMT "downtime %llu ms recorded", EV_ARGS(ev, what),
                   (unsigned long long) ev->downtime_ms);
}

static void react(struct vm_object *o, enum libvirt_watch_action action, const struct libvirt_watch_event *ev,
                  const char *what) {
        switch (action) {
        case LIBVIRT_WATCH_ACTION_CONTINUE:
                if (migration_is(o, VHOSTMIG_ROLE_SOURCE, NULL))
                        react_continue(o, ev, what);
                else
                        daemon_log(LOG_INFO, o, NULL, EV_FMT "nothing to continue: no migration from here",
                                   EV_ARGS(ev, what));
                return;
        case LIBVIRT_WATCH_ACTION_ANNOUNCE:
                react_announce(o, ev, what);
                return;
        case LIBVIRT_WATCH_ACTION_RELEASE:
                if (migration_is(o, VHOSTMIG_ROLE_DESTINATION, NULL) &&
                    !migration_is(o, VHOSTMIG_ROLE_DESTINATION, VHOSTMIG_MIGRATION_STATE_COMPLETED))
                        daemon_log(LOG_INFO, o, NULL, EV_FMT "kept: an incoming migration's devices",
                                   EV_ARGS(ev, what));
                else
                        react_release(o, ev, what);
                return;
        case LIBVIRT_WATCH_ACTION_HARVEST:
                react_harvest(o, ev, what);
                return;
        case LIBVIRT_WATCH_ACTION_DOWNTIME:
                react_downtime(o, ev, what);
                return;
        case LIBVIRT_WATCH_ACTION_NONE:
                daemon_log(LOG_INFO, o, NULL, EV_FMT "nothing to do", EV_ARGS(ev, what));
                return;
        }
}

static void on_event(void *userdata, const struct libvirt_watch_event *ev) {
        struct daemon *d = userdata;
        char what[128];
        libvirt_watch_event_describe(ev, what, sizeof(what));
        enum libvirt_watch_action action = libvirt_watch_action_for(ev);
        unsigned bound = 0;
        /* A release takes the VM off the list: the next one is read first. */
        for (struct vm_object *o = d->vms, *next; o; o = next) {
                next = o->next;
                if (!vm_object_bound_to(o, ev->uuid, ev->name))
                        continue;
                bound++;
                react(o, action, ev, what);
        }
        if (!bound)
                daemon_log(LOG_INFO, NULL, NULL, EV_FMT "no VM is bound to it (would %s)", EV_ARGS(ev, what),
                           libvirt_watch_action_name(action));
}

/* ---- the connection ----------------------------------------------------------------------- */

static void on_state_changed(void *userdata) {
        struct daemon *d = userdata;
        struct libvirt_watch_status s;
        libvirt_watch_status(lv.watch, &s);
        (void) sd_bus_emit_properties_changed(d->bus, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE,
                                              "LibvirtConnection", "LibvirtLastError", "LibvirtLastErrorTimestamp",
                                              NULL);
        if (s.state == lv.logged)
                return;
        lv.logged = s.state;
        if (s.state == LIBVIRT_WATCH_CONNECTED)
                lv.logged_error[0] = '\0';
        if (s.state == LIBVIRT_WATCH_CONNECTED)
                daemon_log(LOG_INFO, NULL, NULL, "libvirt: connected to %s (connection %llu)", lv.uri,
                           (unsigned long long) s.connects);
        else if (s.state == LIBVIRT_WATCH_DISCONNECTED) {
                bool repeated = strcmp(s.last_error, lv.logged_error) == 0;
                daemon_log(repeated ? LOG_DEBUG : LOG_WARNING, NULL, NULL, "libvirt: disconnected: %s", s.last_error);
                snprintf(lv.logged_error, sizeof(lv.logged_error), "%s", s.last_error);
        } else
                daemon_log(LOG_DEBUG, NULL, NULL, "libvirt: %s", libvirt_watch_state_name(s.state));
}

void daemon_libvirt_start(struct daemon *d) {
        lv.d = d;
        const struct config_libvirt *c = &d->cfg.libvirt;
        if (!c->uri[0])
                return;
        snprintf(lv.uri, sizeof(lv.uri), "%s", c->uri);
        const struct libvirt_watch_options opts = {
                .uri = c->uri,
                .keepalive_interval_s = c->keepalive_interval_s,
                .keepalive_count = c->keepalive_count,
                .reconnect_min_ms = c->reconnect_min_ms,
                .reconnect_max_ms = c->reconnect_max_ms,
        };
        static const struct libvirt_watch_callbacks cb = { .event = on_event, .state_changed = on_state_changed };
        char error[512];
        lv.logged = LIBVIRT_WATCH_CONNECTING;
        if (libvirt_watch_start(d->event, &opts, &cb, d, &lv.watch, error, sizeof(error)) < 0) {
                set_error(error);
                return;
        }
        daemon_log(LOG_INFO, NULL, NULL, "libvirt: watching %s", lv.uri);
}

void daemon_libvirt_stop(void) {
        if (!lv.watch)
                return;
        int r = libvirt_watch_stop(lv.watch, LIBVIRT_STOP_TIMEOUT_MS);
        lv.watch = NULL;
        if (r < 0)
                daemon_log(LOG_WARNING, NULL, NULL,
                           "libvirt: the watcher is stuck in a call to libvirtd: left behind (%s)", strerror(-r));
}

void daemon_libvirt_status(struct daemon_libvirt_status *out) {
        *out = (struct daemon_libvirt_status){ .uri = lv.uri, .connection = "disabled" };
        snprintf(out->last_error, sizeof(out->last_error), "%s", lv.error);
        out->last_error_usec = lv.error_usec;
        if (!lv.watch)
                return;
        struct libvirt_watch_status s;
        libvirt_watch_status(lv.watch, &s);
        out->connection = libvirt_watch_state_name(s.state);
        if (s.last_error_usec) {
                snprintf(out->last_error, sizeof(out->last_error), "%s", s.last_error);
                out->last_error_usec = s.last_error_usec;
        }
}

#else /* !VHOSTMIG_HAVE_LIBVIRT */

void daemon_libvirt_start(struct daemon *d) {
        lv.d = d;
        if (d->cfg.libvirt.uri[0])
                set_error("libvirt: vhostmigd was built without libvirt: \"libvirt.uri\" is ignored");
}

void daemon_libvirt_stop(void) {}

void daemon_libvirt_status(struct daemon_libvirt_status *out) {
        *out = (struct daemon_libvirt_status){ .uri = "", .connection = "disabled" };
        snprintf(out->last_error, sizeof(out->last_error), "%s", lv.error);
        out->last_error_usec = lv.error_usec;
}

#endif
