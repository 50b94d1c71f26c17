/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl's connection to vhostmigd.  Every call goes through
 * conn_call(), the one place that decides whether the daemon may be started
 * by bus activation (not for reading: `status` must be able to say "not
 * running") and that turns an error into an exit code.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/common/cli-util.h"
#include "ctl-conn.h"

/* Calls wait this long: longer than any of the daemon's own bounds (request timeout, teardown). */
#define CALL_TIMEOUT_USEC (UINT64_C(120) * 1000000u)

static const char *bus_description(const struct ctl_opts *o, char *buf, size_t len) {
        if (o->host)
                snprintf(buf, len, "the system bus of %s (ssh)", o->host);
        else if (o->bus_address)
                snprintf(buf, len, "the bus at '%s'", o->bus_address);
        else
                snprintf(buf, len, "the system bus");
        return buf;
}

static int bus_connect(const struct ctl_opts *o, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        if (o->host)
                r = sd_bus_open_system_remote(&bus, o->host);
        else if (!o->bus_address)
                r = sd_bus_open_system(&bus);
        else {
                r = sd_bus_new(&bus);
                if (r >= 0)
                        r = sd_bus_set_address(bus, o->bus_address);
                if (r >= 0)
                        r = sd_bus_set_bus_client(bus, true);
                if (r >= 0)
                        r = sd_bus_negotiate_fds(bus, true);
                if (r >= 0)
                        r = sd_bus_start(bus);
        }
        if (r >= 0)
                r = sd_bus_set_method_call_timeout(bus, CALL_TIMEOUT_USEC);
        if (r < 0) {
                sd_bus_flush_close_unref(bus);
                return r;
        }
        *ret = bus;
        return 0;
}

int conn_open(struct ctl_conn *c, const struct ctl_opts *o, const char *verb, bool read_only) {
        char what[512];

        *c = (struct ctl_conn){ .o = o, .verb = verb, .read_only = read_only };
        int r = bus_connect(o, &c->bus);
        if (r < 0) {
                cli_error("%s: cannot connect to %s: %s", verb, bus_description(o, what, sizeof(what)), strerror(-r));
                return EXIT_FAILED;
        }
        return EXIT_OK;
}

void conn_close(struct ctl_conn *c) {
        c->bus = sd_bus_flush_close_unref(c->bus);
}

int conn_oom(struct ctl_conn *c) {
        cli_error("%s: out of memory", c->verb);
        return EXIT_FAILED;
}

int conn_bad_reply(struct ctl_conn *c, int r) {
        cli_error("%s: unexpected reply from vhostmigd: %s", c->verb, strerror(-r));
        return EXIT_FAILED;
}

char *vm_path(const char *vm) {
        char *p = NULL;
        return sd_bus_path_encode(VHOSTMIG_VM_PREFIX, vm, &p) < 0 ? NULL : p;
}

char *device_path(const char *vm, unsigned dev) {
        _cleanup_free_ char *vp = vm_path(vm);
        char *p = NULL;
        if (!vp || asprintf(&p, "%s" VHOSTMIG_DEVICE_INFIX "%u", vp, dev) < 0)
                return NULL;
        return p;
}

bool decode_object(const char *path, char **vm, int *dev) {
        _cleanup_free_ char *name = NULL, *num = NULL;

        *vm = NULL;
        *dev = -1;
        if (sd_bus_path_decode_many(path, VHOSTMIG_VM_PREFIX "/%" VHOSTMIG_DEVICE_INFIX "%", &name, &num) > 0) {
                char *end;
                errno = 0;
                unsigned long n = strtoul(num, &end, 10);
                if (errno || end == num || *end || n > INT32_MAX)
                        return false;
                *dev = (int) n;
        } else if (sd_bus_path_decode_many(path, VHOSTMIG_VM_PREFIX "/%", &name) <= 0 || strchr(name, '/'))
                return false;
        *vm = name;
        name = NULL;
        return true;
}

int conn_new_call(struct ctl_conn *c, sd_bus_message **m, const char *path, const char *iface, const char *member) {
        int r = sd_bus_message_new_method_call(c->bus, m, VHOSTMIG_BUS_NAME, path, iface, member);
        if (r >= 0 && c->read_only)
                r = sd_bus_message_set_auto_start(*m, false);
        return r;
}

int conn_call(struct ctl_conn *c, const struct target *t, sd_bus_message *m, sd_bus_message **reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_call(c->bus, m, 0, &e, reply);
        return r < 0 ? conn_failed(c, t, &e, r) : EXIT_OK;
}

int conn_callv(struct ctl_conn *c, const struct target *t, const char *path, const char *iface, const char *member,
               sd_bus_message **reply, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        va_list ap;

        int r = conn_new_call(c, &m, path, iface, member);
        if (r >= 0 && types && *types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
        }
        if (r < 0) {
                cli_error("%s: cannot build the %s call: %s", c->verb, member, strerror(-r));
                return EXIT_FAILED;
        }
        return conn_call(c, t, m, reply);
}

/* Whether the VM exists, asked without starting the daemon. */
static bool vm_exists(struct ctl_conn *c, const char *vm) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *path = vm_path(vm);
        int r = path ? sd_bus_message_new_method_call(c->bus, &m, VHOSTMIG_BUS_NAME, path,
                                                      "org.freedesktop.DBus.Properties", "Get")
                     : -ENOMEM;
        if (r >= 0)
                r = sd_bus_message_set_auto_start(m, false);
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", VHOSTMIG_VM_INTERFACE, "Name");
        if (r >= 0)
                r = sd_bus_call(c->bus, m, 0, NULL, &reply);
        return r >= 0;
}

static int not_found(struct ctl_conn *c, const struct target *t) {
        if (t->dev >= 0 && vm_exists(c, t->vm))
                cli_error("%s: VM '%s' has no device %d", c->verb, t->vm, t->dev);
        else
                cli_error("%s: no such VM '%s'", c->verb, t->vm);
        return EXIT_NOT_FOUND;
}

/* The connection itself failed (ssh could not reach the host, the bus went away): no D-Bus error name. */
static int connection_failed(struct ctl_conn *c, int r) {
        char what[512];
        bus_description(c->o, what, sizeof(what));
        if (c->o->host)
                cli_error("%s: cannot reach %s: %s (is the host reachable with 'ssh %s', and does it run "
                          "systemd-stdio-bridge?)",
                          c->verb, what, strerror(-r), c->o->host);
        else
                cli_error("%s: lost the connection to %s: %s", c->verb, what, strerror(-r));
        return EXIT_FAILED;
}

int conn_failed(struct ctl_conn *c, const struct target *t, const sd_bus_error *e, int r) {
        const char *msg = sd_bus_error_is_set(e) && e->message && *e->message ? e->message : strerror(-r);

        /* sd-bus words a local failure (errno) as System.Error.E...: nothing the daemon said. */
        if (!sd_bus_error_is_set(e) || strncmp(e->name, "System.Error.", strlen("System.Error.")) == 0)
                return connection_failed(c, r);
        if (sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER)) {
                cli_error("%s: vhostmigd is not running (nothing owns %s on the bus)", c->verb, VHOSTMIG_BUS_NAME);
                return EXIT_NOT_RUNNING;
        }
        if (sd_bus_error_has_name(e, SD_BUS_ERROR_ACCESS_DENIED)) {
                cli_error("%s: access denied: %s", c->verb, msg);
                return EXIT_DENIED;
        }
        if (t && t->vm && sd_bus_error_has_name(e, SD_BUS_ERROR_UNKNOWN_OBJECT))
                return not_found(c, t);
        cli_error("%s: %s", c->verb, msg);
        if (sd_bus_error_has_names(e, VHOSTMIG_ERROR_NO_SUCH_VM, VHOSTMIG_ERROR_NO_SUCH_DEVICE))
                return EXIT_NOT_FOUND;
        if (sd_bus_error_has_name(e, SD_BUS_ERROR_INVALID_ARGS))
                return EXIT_USAGE;
        return EXIT_FAILED;
}
