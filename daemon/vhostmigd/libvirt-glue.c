/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "daemon/vhostmigd/daemon.h"
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

static void on_event(void *userdata, const struct libvirt_watch_event *ev) {
        (void) userdata;
        char what[128];
        libvirt_watch_event_describe(ev, what, sizeof(what));
        enum libvirt_watch_action action = libvirt_watch_action_for(ev);
        daemon_log(LOG_INFO, NULL, NULL, "libvirt: domain %s (%s): %s: no VM is bound to it (would %s)", ev->name,
                   ev->uuid, what, libvirt_watch_action_name(action));
}

/* ---- the connection ----------------------------------------------------------------------- */

static void on_state_changed(void *userdata) {
        (void) userdata;
        struct libvirt_watch_status s;
        libvirt_watch_status(lv.watch, &s);
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
