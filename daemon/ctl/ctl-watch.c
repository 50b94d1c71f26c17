/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl watch: PropertiesChanged, InterfacesAdded/Removed and the
 * daemon's name changing owner, one line each as they happen.  It only adds
 * matches, so it never starts vhostmigd; it waits for it instead.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-event.h>

#include "daemon/common/cli-util.h"
#include "ctl-conn.h"
#include "ctl-props.h"

static bool has_prefix(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

struct watch {
        char *vm_path; /* only this VM and its devices; NULL: everything */
        bool json;
};

static bool watch_wants(const struct watch *w, const char *path) {
        if (!w->vm_path)
                return true;
        size_t n = strlen(w->vm_path);
        return strncmp(path, w->vm_path, n) == 0 && (path[n] == 0 || path[n] == '/');
}

/* RFC 3339 local time with milliseconds: 2024-05-01T12:00:00.123+02:00 */
static void timestamp(char *buf, size_t len) {
        struct timespec ts;
        struct tm tm;
        char date[32], zone[8];

        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
        if (strftime(zone, sizeof(zone), "%z", &tm) != 5)
                snprintf(zone, sizeof(zone), "+0000");
        snprintf(buf, len, "%s.%03ld%.3s:%s", date, ts.tv_nsec / 1000000, zone, zone + 3);
}

/* A JSON event line with the time, the event and the object (with its VM and device). */
static json_object *event_json(const char *time, const char *event, const char *path) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "time", json_object_new_string(time));
        json_object_object_add(o, "event", json_object_new_string(event));
        if (!path)
                return o;
        json_object_object_add(o, "object", json_object_new_string(path));
        _cleanup_free_ char *vm = NULL;
        int dev;
        if (decode_object(path, &vm, &dev)) {
                json_object_object_add(o, "vm", json_object_new_string(vm));
                if (dev >= 0)
                        json_object_object_add(o, "device", json_object_new_int64(dev));
        }
        return o;
}

static void emit_json_line(json_object *o) {
        print_json(o);
        json_object_put(o);
        fflush(stdout);
}

static void emit_text_line(const char *time, const char *path, const char *what, const struct prop *p) {
        _cleanup_free_ char *obj = path ? short_object(path) : strdup("vhostmigd");
        printf("%s %s %s", time, obj ? obj : path, what ? what : "");
        if (p) {
                printf("%s=", p->name);
                fput_value(stdout, p->name, &p->v, true);
        }
        putchar('\n');
        fflush(stdout);
}

static void print_change(const struct watch *w, const char *path, const char *iface, const struct prop *p) {
        char time[64];
        timestamp(time, sizeof(time));
        if (!w->json) {
                emit_text_line(time, path, NULL, p);
                return;
        }
        json_object *o = event_json(time, "changed", path);
        json_object_object_add(o, "interface", json_object_new_string(iface));
        json_object_object_add(o, "property", json_object_new_string(p->name));
        json_object_object_add(o, "value", value_json(p->name, &p->v));
        json_object *names = value_names_json(p->name, &p->v);
        if (names)
                json_object_object_add(o, "names", names);
        emit_json_line(o);
}

static void print_invalidated(const struct watch *w, const char *path, const char *iface, const char *name) {
        char time[64], what[256];
        timestamp(time, sizeof(time));
        if (!w->json) {
                snprintf(what, sizeof(what), "%s (changed, value not sent)", name);
                emit_text_line(time, path, what, NULL);
                return;
        }
        json_object *o = event_json(time, "invalidated", path);
        json_object_object_add(o, "interface", json_object_new_string(iface));
        json_object_object_add(o, "property", json_object_new_string(name));
        emit_json_line(o);
}

static void watch_warn(sd_bus_message *m, int r) {
        cli_error("watch: cannot read %s from %s: %s", sd_bus_message_get_member(m), sd_bus_message_get_path(m),
                  strerror(-r));
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const struct watch *w = userdata;
        const char *path = sd_bus_message_get_path(m), *iface;
        _cleanup_(props_free) struct props changed = {};
        _cleanup_(strv_freep) char **invalidated = NULL;
        int r;

        (void) error;
        if (!path || !watch_wants(w, path))
                return 0;
        if ((r = sd_bus_message_read_basic(m, 's', &iface)) < 0 || (r = read_props(m, &changed)) < 0 ||
            (r = sd_bus_message_read_strv(m, &invalidated)) < 0) {
                watch_warn(m, r);
                return 0;
        }
        if (!has_prefix(iface, OUR_IFACE_PREFIX))
                return 0;
        for (size_t i = 0; i < changed.n; i++)
                print_change(w, path, iface, &changed.v[i]);
        for (char **s = invalidated; s && *s; s++)
                print_invalidated(w, path, iface, *s);
        return 0;
}

static int on_interfaces_added(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const struct watch *w = userdata;
        _cleanup_(objects_free) struct objects added = {};
        const char *path;
        char time[64];
        int r;

        (void) error;
        if ((r = sd_bus_message_read_basic(m, 'o', &path)) < 0 || (r = read_interfaces(m, path, &added)) < 0) {
                watch_warn(m, r);
                return 0;
        }
        if (!watch_wants(w, path) || added.n == 0)
                return 0;
        timestamp(time, sizeof(time));
        if (!w->json) {
                emit_text_line(time, path, "added", NULL);
                return 0;
        }
        json_object *o = event_json(time, "added", path), *props = json_object_new_object();
        json_object_object_add(o, "interface", json_object_new_string(added.v[0].iface));
        json_object_object_add(o, "properties", props);
        for (size_t i = 0; i < added.n; i++)
                (void) props_to_json(&added.v[i].props, props, NULL);
        emit_json_line(o);
        return 0;
}

static int on_interfaces_removed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const struct watch *w = userdata;
        _cleanup_(strv_freep) char **ifaces = NULL;
        const char *path;
        char time[64];
        int r;

        (void) error;
        if ((r = sd_bus_message_read_basic(m, 'o', &path)) < 0 || (r = sd_bus_message_read_strv(m, &ifaces)) < 0) {
                watch_warn(m, r);
                return 0;
        }
        if (!watch_wants(w, path))
                return 0;
        /*
         * Our interfaces, or any object in our VM namespace: an object that
         * is already gone when the signal is sent is listed with the
         * standard interfaces only.
         */
        _cleanup_free_ char *vm = NULL;
        int dev;
        bool ours = decode_object(path, &vm, &dev);
        for (char **i = ifaces; i && *i; i++)
                ours = ours || has_prefix(*i, OUR_IFACE_PREFIX);
        if (!ours)
                return 0;
        timestamp(time, sizeof(time));
        if (!w->json)
                emit_text_line(time, path, "removed", NULL);
        else
                emit_json_line(event_json(time, "removed", path));
        return 0;
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const struct watch *w = userdata;
        const char *name, *old_owner, *new_owner;
        char time[64];
        int r;

        (void) error;
        if ((r = sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner)) < 0) {
                watch_warn(m, r);
                return 0;
        }
        if (!streq(name, VHOSTMIG_BUS_NAME))
                return 0;
        timestamp(time, sizeof(time));
        if (!w->json) {
                emit_text_line(time, NULL, *new_owner ? "started" : "stopped", NULL);
                return 0;
        }
        json_object *o = event_json(time, "daemon", NULL);
        json_object_object_add(o, "running", json_object_new_boolean(*new_owner != 0));
        emit_json_line(o);
        return 0;
}

static int on_exit_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) si;
        (void) userdata;
        return sd_event_exit(sd_event_source_get_event(s), EXIT_OK);
}

static int watch_subscribe(sd_bus *bus, struct watch *w) {
        int r = sd_bus_match_signal(bus, NULL, VHOSTMIG_BUS_NAME, NULL, "org.freedesktop.DBus.Properties",
                                    "PropertiesChanged", on_properties_changed, w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH,
                                        "org.freedesktop.DBus.ObjectManager", "InterfacesAdded", on_interfaces_added,
                                        w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH,
                                        "org.freedesktop.DBus.ObjectManager", "InterfacesRemoved",
                                        on_interfaces_removed, w);
        if (r >= 0)
                r = sd_bus_add_match(bus, NULL,
                                     "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                                     "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                                     "arg0='" VHOSTMIG_BUS_NAME "'",
                                     on_name_owner_changed, w);
        return r;
}

static int watch_loop(sd_bus *bus, struct watch *w) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        sigset_t mask;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return -errno;
        if ((r = sd_event_default(&event)) < 0 ||
            (r = sd_event_add_signal(event, NULL, SIGINT, on_exit_signal, NULL)) < 0 ||
            (r = sd_event_add_signal(event, NULL, SIGTERM, on_exit_signal, NULL)) < 0 ||
            (r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL)) < 0 ||
            (r = sd_bus_set_exit_on_disconnect(bus, true)) < 0 || (r = watch_subscribe(bus, w)) < 0)
                return r;
        return sd_event_loop(event);
}

int ctl_watch(const struct ctl_opts *o, const char *vm) {
        struct ctl_conn c;
        struct watch w = { .json = o->json };
        int ret, r;

        if (vm && !(w.vm_path = vm_path(vm))) {
                cli_error("watch: out of memory");
                return EXIT_FAILED;
        }
        ret = conn_open(&c, o, "watch", true);
        if (ret == EXIT_OK) {
                r = watch_loop(c.bus, &w);
                if (r < 0)
                        cli_error("watch: %s", strerror(-r));
                else if (r > 0)
                        cli_error("watch: the connection to the bus was lost");
                ret = r == 0 ? EXIT_OK : EXIT_FAILED;
                conn_close(&c);
        }
        free(w.vm_path);
        return ret;
}
