/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl's verbs over D-Bus (docs/dbus-api.md).  Reading goes through
 * GetManagedObjects (list, show: one consistent snapshot) or GetAll
 * (status), never starting the daemon; changes go through the methods,
 * each with its a{sv} options.  Every verb prints one JSON document with
 * --json, changes included.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/common/cli-util.h"
#include "ctl-conn.h"
#include "ctl-props.h"
#include "ctl-progress.h"

/* ---- status, list, show ---------------------------------------------------------- */

static int status_not_running(const struct ctl_opts *o) {
        if (o->json) {
                _cleanup_(json_object_putp) json_object *j = json_object_new_object();
                json_object_object_add(j, "running", json_object_new_boolean(false));
                print_json(j);
        } else
                puts("vhostmigd is not running.");
        return EXIT_NOT_RUNNING;
}

/* The Manager's libvirt watcher, read out of the properties, which then show without it. */
struct libvirt_status {
        char *uri, *connection, *last_error;
        uint64_t last_error_usec;
};

static void libvirt_status_free(struct libvirt_status *l) {
        free(l->uri);
        free(l->connection);
        free(l->last_error);
}

static char *strdup_or_empty(const char *s) {
        return strdup(s ? s : "");
}

static int libvirt_status_take(struct props *p, struct libvirt_status *l) {
        const char *connection = prop_str(p, "LibvirtConnection");
        l->uri = strdup_or_empty(prop_str(p, "LibvirtUri"));
        /* A daemon older than the watcher has none of them: it cannot watch libvirt. */
        l->connection = strdup_or_empty(connection ? connection : "disabled");
        l->last_error = strdup_or_empty(prop_str(p, "LibvirtLastError"));
        l->last_error_usec = prop_num(p, "LibvirtLastErrorTimestamp");
        if (!l->uri || !l->connection || !l->last_error)
                return -ENOMEM;
        size_t kept = 0;
        for (size_t i = 0; i < p->n; i++) {
                if (strncmp(p->v[i].name, "Libvirt", strlen("Libvirt")) != 0) {
                        p->v[kept++] = p->v[i];
                        continue;
                }
                free(p->v[i].name);
                free(p->v[i].v.str);
                strv_free(p->v[i].v.strv);
                free(p->v[i].v.nums);
        }
        p->n = kept;
        return 0;
}

static json_object *libvirt_json(const struct libvirt_status *l) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "uri", json_object_new_string(l->uri));
        json_object_object_add(o, "connection", json_object_new_string(l->connection));
        json_object_object_add(o, "last_error", json_object_new_string(l->last_error));
        json_object_object_add(o, "last_error_timestamp", json_object_new_int64((int64_t) l->last_error_usec));
        return o;
}

/* "connected (qemu:///system)", "disabled"; the last error while it is not connected. */
static void libvirt_text(const struct libvirt_status *l) {
        printf("  %-24s %s", "Libvirt:", l->connection);
        if (l->uri[0])
                printf(" (%s)", l->uri);
        putchar('\n');
        if (!streq(l->connection, "connected") && l->last_error[0])
                printf("  %-24s %s\n", "Libvirt error:", l->last_error);
}

static void status_json(const struct props *p, const struct libvirt_status *l) {
        _cleanup_(json_object_putp) json_object *j = json_object_new_object();
        json_object_object_add(j, "running", json_object_new_boolean(true));
        (void) props_to_json(p, j, "Vms");
        json_object_object_add(j, "libvirt", libvirt_json(l));
        json_object_object_add(j, "vms", json_object_new_int64((int64_t) strv_length(prop_strv(p, "Vms"))));
        json_object *objects = json_object_new_array();
        for (char **v = prop_strv(p, "Vms"); v && *v; v++)
                json_object_array_add(objects, json_object_new_string(*v));
        json_object_object_add(j, "vm_objects", objects);
        print_json(j);
}

static void status_text(const struct props *p, const struct libvirt_status *l) {
        char **vms = prop_strv(p, "Vms");

        printf("  %-24s yes\n", "Running:");
        print_props_text(p, "Vms");
        libvirt_text(l);
        printf("  %-24s %zu", "VMs:", strv_length(vms));
        for (char **v = vms; v && *v; v++) {
                _cleanup_free_ char *name = short_object(*v);
                printf("%s%s", v == vms ? " (" : ", ", name ? name : *v);
        }
        puts(vms && *vms ? ")" : "");
}

int ctl_status(const struct ctl_opts *o) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(props_free) struct props p = {};
        int r, ret;

        if ((ret = conn_open(&c, o, "status", true)) != EXIT_OK)
                return ret;
        r = conn_new_call(&c, &m, VHOSTMIG_ROOT_PATH, "org.freedesktop.DBus.Properties", "GetAll");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", VHOSTMIG_MANAGER_INTERFACE);
        if (r < 0)
                return conn_oom(&c);
        /* "Not running" is status's answer, not an error. */
        r = sd_bus_call(c.bus, m, 0, &e, &reply);
        if (r < 0 && sd_bus_error_has_names(&e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                return status_not_running(o);
        if (r < 0)
                return conn_failed(&c, NULL, &e, r);
        if ((r = read_props(reply, &p)) < 0)
                return conn_bad_reply(&c, r);
        struct libvirt_status l = {};
        r = libvirt_status_take(&p, &l);
        if (r >= 0 && o->json)
                status_json(&p, &l);
        else if (r >= 0)
                status_text(&p, &l);
        libvirt_status_free(&l);
        return r < 0 ? conn_oom(&c) : EXIT_OK;
}

static int get_managed_objects(struct ctl_conn *c, struct objects *out) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int ret = conn_callv(c, NULL, VHOSTMIG_ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects",
                             &reply, NULL);
        if (ret != EXIT_OK)
                return ret;
        int r = read_managed_objects(reply, out);
        return r < 0 ? conn_bad_reply(c, r) : EXIT_OK;
}

static int compare_vm_names(const void *a, const void *b) {
        const struct object *x = *(const struct object *const *) a, *y = *(const struct object *const *) b;
        return strcmp(prop_str(&x->props, "Name"), prop_str(&y->props, "Name"));
}

/* The VM objects, sorted by name; the array points into `all`. */
static const struct object **vm_objects(const struct objects *all, size_t *n) {
        const struct object **vms = calloc(all->n + 1, sizeof(*vms));
        if (!vms)
                return NULL;
        *n = 0;
        for (size_t i = 0; i < all->n; i++)
                if (streq(all->v[i].iface, VHOSTMIG_VM_INTERFACE))
                        vms[(*n)++] = &all->v[i];
        qsort(vms, *n, sizeof(*vms), compare_vm_names);
        return vms;
}

static void print_list_json(const struct object **vms, size_t n) {
        _cleanup_(json_object_putp) json_object *a = json_object_new_array();
        for (size_t i = 0; i < n; i++) {
                const struct props *p = &vms[i]->props;
                json_object *o = json_object_new_object();
                json_object_object_add(o, "name", json_object_new_string(prop_str(p, "Name")));
                json_object_object_add(o, "object", json_object_new_string(vms[i]->path));
                json_object_object_add(o, "memory_size", json_object_new_uint64(prop_num(p, "MemorySize")));
                json_object_object_add(o, "devices",
                                       json_object_new_int64((int64_t) strv_length(prop_strv(p, "Devices"))));
                json_object_object_add(o, "logging", json_object_new_boolean(prop_num(p, "Logging") != 0));
                json_object_object_add(o, "migratable", json_object_new_boolean(prop_num(p, "MigrationBlocked") == 0));
                json_object_array_add(a, o);
        }
        print_json(a);
}

/* With the legend: a header and a count at the end; without (scripts, completion): the rows only. */
static void print_list_text(const struct ctl_opts *o, const struct object **vms, size_t n) {
        int width = (int) strlen("NAME");

        if (n == 0) {
                if (o->legend)
                        puts("No VMs.");
                return;
        }
        for (size_t i = 0; i < n; i++) {
                int len = (int) strlen(prop_str(&vms[i]->props, "Name"));
                if (len > width)
                        width = len;
        }
        if (o->legend)
                printf("%-*s  %8s  %7s  %7s  %s\n", width, "NAME", "MEMORY", "DEVICES", "LOGGING", "MIGRATABLE");
        for (size_t i = 0; i < n; i++) {
                const struct props *p = &vms[i]->props;
                char size[32];
                format_bytes(size, sizeof(size), prop_num(p, "MemorySize"));
                printf("%-*s  %8s  %7zu  %7s  %s\n", width, prop_str(p, "Name"), size,
                       strv_length(prop_strv(p, "Devices")), prop_num(p, "Logging") ? "on" : "off",
                       prop_num(p, "MigrationBlocked") ? "no" : "yes");
        }
        if (o->legend)
                printf("\n%zu VM%s listed.\n", n, n == 1 ? "" : "s");
}

int ctl_list(const struct ctl_opts *o) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(objects_free) struct objects all = {};
        _cleanup_free_ const struct object **vms = NULL;
        size_t n;
        int ret;

        if ((ret = conn_open(&c, o, "list", true)) != EXIT_OK)
                return ret;
        if ((ret = get_managed_objects(&c, &all)) != EXIT_OK)
                return ret;
        if (!(vms = vm_objects(&all, &n)))
                return conn_oom(&c);
        if (o->json)
                print_list_json(vms, n);
        else
                print_list_text(o, vms, n);
        return EXIT_OK;
}

static int device_number(const char *path) {
        _cleanup_free_ char *vm = NULL;
        int dev;
        return decode_object(path, &vm, &dev) ? dev : -1;
}

static int show_json(const struct objects *all, const struct object *vm) {
        _cleanup_(json_object_putp) json_object *o = json_object_new_object();
        json_object *devices = json_object_new_array();

        json_object_object_add(o, "object", json_object_new_string(vm->path));
        json_object_object_add(o, "devices", devices);
        if (props_to_json(&vm->props, o, "Devices") < 0)
                return -ENOMEM;
        for (char **d = prop_strv(&vm->props, "Devices"); d && *d; d++) {
                const struct object *dev = objects_find(all, *d, VHOSTMIG_DEVICE_INTERFACE);
                if (!dev)
                        continue; /* removed between the two snapshots of the daemon */
                json_object *dj = json_object_new_object();
                json_object_array_add(devices, dj);
                json_object_object_add(dj, "number", json_object_new_int64(device_number(*d)));
                json_object_object_add(dj, "object", json_object_new_string(*d));
                if (props_to_json(&dev->props, dj, NULL) < 0)
                        return -ENOMEM;
        }
        print_json(o);
        return 0;
}

static void show_text(const struct objects *all, const struct object *vm) {
        printf("VM %s (%s)\n", prop_str(&vm->props, "Name"), vm->path);
        print_props_text(&vm->props, "Name");
        for (char **d = prop_strv(&vm->props, "Devices"); d && *d; d++) {
                const struct object *dev = objects_find(all, *d, VHOSTMIG_DEVICE_INTERFACE);
                if (!dev)
                        continue;
                printf("\nDevice %d (%s)\n", device_number(*d), *d);
                print_props_text(&dev->props, NULL);
        }
}

int ctl_show(const struct ctl_opts *o, const char *name) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(objects_free) struct objects all = {};
        _cleanup_free_ char *path = vm_path(name);
        int ret;

        if ((ret = conn_open(&c, o, "show", true)) != EXIT_OK)
                return ret;
        if (!path)
                return conn_oom(&c);
        if ((ret = get_managed_objects(&c, &all)) != EXIT_OK)
                return ret;
        const struct object *vm = objects_find(&all, path, VHOSTMIG_VM_INTERFACE);
        if (!vm) {
                cli_error("show: no such VM '%s'", name);
                return EXIT_NOT_FOUND;
        }
        if (!o->json)
                show_text(&all, vm);
        else if (show_json(&all, vm) < 0)
                return conn_oom(&c);
        return EXIT_OK;
}

/* ---- probe through the daemon ------------------------------------------------------- */

static int read_probe_reply(sd_bus_message *reply, struct vhm_probe_result *res) {
        uint32_t queue_pairs;
        int migratable, r;

        *res = (struct vhm_probe_result){};
        r = sd_bus_message_read(reply, "tttutb", &res->features, &res->protocol_features,
                                &res->protocol_features_negotiated, &queue_pairs, &res->max_mem_slots, &migratable);
        if (r < 0)
                return r;
        res->queue_pairs = queue_pairs;
        res->migratable = migratable;
        if ((r = sd_bus_message_enter_container(reply, 'a', "s")) < 0)
                return r;
        const char *s;
        while ((r = sd_bus_message_read_basic(reply, 's', &s)) > 0)
                if (res->blockers.n < VHM_BLOCKERS_MAX)
                        snprintf(res->blockers.reason[res->blockers.n++], VHM_BLOCKER_LEN, "%s", s);
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(reply);
}

int ctl_probe_remote(const struct ctl_opts *o, const char *socket, bool server, unsigned timeout_ms) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct vhm_probe_result res;
        int r, ret;

        if ((ret = conn_open(&c, o, "probe", false)) != EXIT_OK)
                return ret;
        ret = conn_callv(&c, NULL, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "Probe", &reply, "sbu", socket,
                         server, timeout_ms);
        if (ret != EXIT_OK)
                return ret;
        if ((r = read_probe_reply(reply, &res)) < 0)
                return conn_bad_reply(&c, r);
        print_probe(o->json, socket, &res);
        return EXIT_OK;
}

/* ---- replies of the changing verbs ---------------------------------------------------- */

/* {"vm": NAME, ["device": N,] KEY: true} for --json; nothing in text (the change is the answer). */
static void print_done(const struct ctl_opts *o, const char *vm, int dev, const char *key) {
        if (!o->json)
                return;
        _cleanup_(json_object_putp) json_object *j = json_object_new_object();
        json_object_object_add(j, "vm", json_object_new_string(vm));
        if (dev >= 0)
                json_object_object_add(j, "device", json_object_new_int64(dev));
        json_object_object_add(j, key, json_object_new_boolean(true));
        print_json(j);
}

/*
 * The fd limit of a stock system bus, checked before anything is sent: a
 * message with more is refused by the bus, which says only that the
 * message was too large and drops the connection.
 */
static int check_fds(struct ctl_conn *c, unsigned n_fds) {
        if (n_fds <= (unsigned) VHOSTMIG_BUS_MAX_FDS)
                return EXIT_OK;
        cli_error("%s: one call would carry %u file descriptors, but a stock system bus passes at most %u a "
                  "message: give fewer (at most %u queues, %u queue pairs, per call; 'device add' adds the rest "
                  "with AddQueues), or raise max_message_unix_fds in the bus configuration",
                  c->verb, n_fds, (unsigned) VHOSTMIG_BUS_MAX_FDS, CTL_QUEUES_PER_CALL, CTL_QUEUES_PER_CALL / 2);
        return EXIT_USAGE;
}

static int build_failed(struct ctl_conn *c, const char *method, int r) {
        cli_error("%s: cannot build the %s call: %s", c->verb, method, strerror(-r));
        return EXIT_FAILED;
}

/* ---- VMs --------------------------------------------------------------------------- */

static int append_regions(sd_bus_message *m, const char *vm, const struct ctl_region *regions, unsigned n) {
        int r = sd_bus_message_append(m, "s", vm);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(httt)");
        for (unsigned i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append(m, "(httt)", regions[i].fd, regions[i].gpa, regions[i].size,
                                          regions[i].offset);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0) /* options: none yet */
                r = sd_bus_message_append(m, "a{sv}", 0);
        return r;
}

int ctl_vm_create(const struct ctl_opts *o, const char *vm, const struct ctl_region *regions, unsigned n) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *path;
        int r, ret;

        if ((ret = conn_open(&c, o, "vm create", false)) != EXIT_OK)
                return ret;
        if ((ret = check_fds(&c, n)) != EXIT_OK)
                return ret;
        r = conn_new_call(&c, &m, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "CreateVm");
        if (r >= 0)
                r = append_regions(m, vm, regions, n);
        if (r < 0)
                return build_failed(&c, "CreateVm", r);
        if ((ret = conn_call(&c, NULL, m, &reply)) != EXIT_OK)
                return ret;
        if ((r = sd_bus_message_read(reply, "o", &path)) < 0)
                return conn_bad_reply(&c, r);

        if (o->json) {
                _cleanup_(json_object_putp) json_object *j = json_object_new_object();
                json_object_object_add(j, "vm", json_object_new_string(vm));
                json_object_object_add(j, "object", json_object_new_string(path));
                json_object_object_add(j, "created", json_object_new_boolean(true));
                print_json(j);
        } else if (!o->quiet)
                printf("VM %s created (%s).\n", vm, path);
        return EXIT_OK;
}

int ctl_vm_destroy(const struct ctl_opts *o, const char *vm) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        const struct target t = { vm, -1 };
        int ret = conn_open(&c, o, "vm destroy", false);
        if (ret == EXIT_OK)
                ret = conn_callv(&c, &t, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "DestroyVm", NULL, "s", vm);
        if (ret == EXIT_OK)
                print_done(o, vm, -1, "destroyed");
        return ret;
}

/* ---- devices ------------------------------------------------------------------------ */

static int append_queues(sd_bus_message *m, const struct ctl_queue *q, unsigned n) {
        int r = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append(m, "(uttthh)", q[i].size, q[i].desc, q[i].avail, q[i].used, q[i].kick_fd,
                                          q[i].call_fd);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

/* AddDevice's options: what the command line gave, and the CLI's own defaults. */
static int append_device_options(sd_bus_message *m, const struct ctl_device *d) {
        int r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && d->server)
                r = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_SERVER, "b", 1);
        if (r >= 0)
                r = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_FEATURES, "t", d->features);
        if (r >= 0)
                r = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_QUEUE_PAIRS, "u", d->queue_pairs);
        if (r >= 0 && d->mac)
                r = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_MAC, "s", d->mac);
        if (r >= 0 && d->mtu)
                r = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_MTU, "q", d->mtu);
        if (r >= 0 && d->incoming)
                r = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_INCOMING, "b", 1);
        if (r >= 0 && d->type)
                r = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_TYPE, "s", d->type);
        if (r >= 0 && d->log_switch_locked)
                r = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_SWITCH_LOCKED, "b", 1);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

/* AddDevice with the first queues; the device path in *path (malloc'd). */
static int add_device(struct ctl_conn *c, const char *vm, const struct ctl_device *d, unsigned n, char **path) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *vpath = vm_path(vm);
        const struct target t = { vm, -1 };
        const char *p;
        int r, ret;

        if (!vpath)
                return conn_oom(c);
        if ((ret = check_fds(c, VHOSTMIG_FDS_PER_QUEUE * n)) != EXIT_OK)
                return ret;
        r = conn_new_call(c, &m, vpath, VHOSTMIG_VM_INTERFACE, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", d->socket);
        if (r >= 0)
                r = append_queues(m, d->queues, n);
        if (r >= 0)
                r = append_device_options(m, d);
        if (r < 0)
                return build_failed(c, "AddDevice", r);
        if ((ret = conn_call(c, &t, m, &reply)) != EXIT_OK)
                return ret;
        if ((r = sd_bus_message_read(reply, "o", &p)) < 0)
                return conn_bad_reply(c, r);
        if (!(*path = strdup(p)))
                return conn_oom(c);
        return EXIT_OK;
}

static int add_queues(struct ctl_conn *c, const char *vm, const char *path, const struct ctl_queue *q, unsigned n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        const struct target t = { vm, device_number(path) };
        int ret = check_fds(c, VHOSTMIG_FDS_PER_QUEUE * n);
        if (ret != EXIT_OK)
                return ret;
        int r = conn_new_call(c, &m, path, VHOSTMIG_DEVICE_INTERFACE, "AddQueues");
        if (r >= 0)
                r = append_queues(m, q, n);
        if (r < 0)
                return build_failed(c, "AddQueues", r);
        return conn_call(c, &t, m, NULL);
}

/* After a failed AddQueues: the device must not stay half-configured (it may be gone already). */
static void remove_quietly(struct ctl_conn *c, const char *vm, const char *path) {
        _cleanup_free_ char *vpath = vm_path(vm);
        if (vpath)
                (void) sd_bus_call_method(c->bus, VHOSTMIG_BUS_NAME, vpath, VHOSTMIG_VM_INTERFACE, "RemoveDevice", NULL,
                                          NULL, "o", path);
}

int ctl_device_add(const struct ctl_opts *o, const char *vm, const struct ctl_device *d) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_free_ char *path = NULL;
        unsigned first = d->n_queues < CTL_QUEUES_PER_CALL ? d->n_queues : CTL_QUEUES_PER_CALL;
        int ret;

        if ((ret = conn_open(&c, o, "device add", false)) != EXIT_OK)
                return ret;
        /* More queues than one message carries: the device waits in "configuring" for AddQueues. */
        if ((ret = add_device(&c, vm, d, first, &path)) != EXIT_OK)
                return ret;
        for (unsigned i = first; i < d->n_queues; i += CTL_QUEUES_PER_CALL) {
                unsigned n = d->n_queues - i < CTL_QUEUES_PER_CALL ? d->n_queues - i : CTL_QUEUES_PER_CALL;
                if ((ret = add_queues(&c, vm, path, d->queues + i, n)) != EXIT_OK) {
                        remove_quietly(&c, vm, path);
                        return ret;
                }
        }

        int number = device_number(path);
        if (o->json) {
                _cleanup_(json_object_putp) json_object *j = json_object_new_object();
                json_object_object_add(j, "vm", json_object_new_string(vm));
                json_object_object_add(j, "device", json_object_new_int64(number));
                json_object_object_add(j, "object", json_object_new_string(path));
                json_object_object_add(j, "queue_pairs", json_object_new_int64(d->queue_pairs));
                json_object_object_add(j, "added", json_object_new_boolean(true));
                print_json(j);
        } else if (!o->quiet)
                printf("Device %d added to VM %s (%s).\n", number, vm, path);
        return EXIT_OK;
}

int ctl_device_remove(const struct ctl_opts *o, const char *vm, unsigned dev) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_free_ char *vpath = vm_path(vm), *dpath = device_path(vm, dev);
        const struct target t = { vm, (int) dev };

        int ret = conn_open(&c, o, "device remove", false);
        if (ret != EXIT_OK)
                return ret;
        if (!vpath || !dpath)
                return conn_oom(&c);
        ret = conn_callv(&c, &t, vpath, VHOSTMIG_VM_INTERFACE, "RemoveDevice", NULL, "o", dpath);
        if (ret == EXIT_OK)
                print_done(o, vm, (int) dev, "removed");
        return ret;
}

/* ---- logging, announce, reconnect ------------------------------------------------ */

/* A method of a VM (dev < 0) or of one of its devices, with arguments in sd_bus_message_append() form. */
static int call_on(struct ctl_conn *c, const char *vm, int dev, const char *method, sd_bus_message **reply,
                   const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = dev < 0 ? vm_path(vm) : device_path(vm, (unsigned) dev);
        const struct target t = { vm, dev };
        va_list ap;

        if (!path)
                return conn_oom(c);
        int r = conn_new_call(c, &m, path, dev < 0 ? VHOSTMIG_VM_INTERFACE : VHOSTMIG_DEVICE_INTERFACE, method);
        if (r >= 0 && *types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
        }
        if (r < 0)
                return build_failed(c, method, r);
        return conn_call(c, &t, m, reply);
}

static int logging_switch(const struct ctl_opts *o, const char *verb, const char *vm, bool on) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        int ret = conn_open(&c, o, verb, false);
        if (ret != EXIT_OK)
                return ret;
        ret = on ? call_on(&c, vm, -1, "StartLogging", NULL, "a{sv}", 0) : call_on(&c, vm, -1, "StopLogging", NULL, "");
        if (ret == EXIT_OK && o->json) {
                _cleanup_(json_object_putp) json_object *j = json_object_new_object();
                json_object_object_add(j, "vm", json_object_new_string(vm));
                json_object_object_add(j, "logging", json_object_new_boolean(on));
                print_json(j);
        }
        return ret;
}

int ctl_logging_start(const struct ctl_opts *o, const char *vm) {
        return logging_switch(o, "logging start", vm, true);
}

int ctl_logging_stop(const struct ctl_opts *o, const char *vm) {
        return logging_switch(o, "logging stop", vm, false);
}

int ctl_logging_harvest(const struct ctl_opts *o, const char *vm) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t new_pages, dirty_pages;
        int r, ret;

        if ((ret = conn_open(&c, o, "logging harvest", false)) != EXIT_OK ||
            (ret = call_on(&c, vm, -1, "Harvest", &reply, "")) != EXIT_OK)
                return ret;
        if ((r = sd_bus_message_read(reply, "tt", &new_pages, &dirty_pages)) < 0)
                return conn_bad_reply(&c, r);
        if (o->json) {
                _cleanup_(json_object_putp) json_object *j = json_object_new_object();
                json_object_object_add(j, "vm", json_object_new_string(vm));
                json_object_object_add(j, "new_pages", json_object_new_uint64(new_pages));
                json_object_object_add(j, "dirty_pages", json_object_new_uint64(dirty_pages));
                print_json(j);
        } else
                printf("%-12s %" PRIu64 "\n%-12s %" PRIu64 "\n", "New pages:", new_pages, "Dirty pages:", dirty_pages);
        return EXIT_OK;
}

int ctl_announce(const struct ctl_opts *o, const char *vm, int dev) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t sent = 1;
        int r, ret;

        if ((ret = conn_open(&c, o, "announce", false)) != EXIT_OK ||
            (ret = call_on(&c, vm, dev, "Announce", &reply, "")) != EXIT_OK)
                return ret;
        if (dev < 0 && (r = sd_bus_message_read(reply, "u", &sent)) < 0)
                return conn_bad_reply(&c, r);
        if (o->json) {
                _cleanup_(json_object_putp) json_object *j = json_object_new_object();
                json_object_object_add(j, "vm", json_object_new_string(vm));
                if (dev >= 0)
                        json_object_object_add(j, "device", json_object_new_int64(dev));
                json_object_object_add(j, "sent", json_object_new_int64(sent));
                print_json(j);
        } else if (!o->quiet)
                printf("%" PRIu32 " announcement%s sent.\n", sent, sent == 1 ? "" : "s");
        return EXIT_OK;
}

int ctl_reconnect(const struct ctl_opts *o, const char *vm, unsigned dev) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        int ret = conn_open(&c, o, "reconnect", false);
        if (ret == EXIT_OK)
                ret = call_on(&c, vm, (int) dev, "Reconnect", NULL, "");
        if (ret == EXIT_OK)
                print_done(o, vm, (int) dev, "reconnected");
        return ret;
}

/* ---- migration ------------------------------------------------------------------------ */

#define ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

/* The Vm's migration properties, in the order `migrate status` shows them. */
static const char *const migration_props[] = {
        "MigrationState", "Role",       "DirtyBitmaps",     "Round",     "PagesTotal",        "PagesTransferred",
        "PagesRemaining", "ZeroPages",  "BytesTransferred", "DirtyRate", "Bandwidth",         "ExpectedDowntimeMs",
        "SetupMs",        "DowntimeMs", "TotalMs",          "RarpSent",  "MigrationChecksum", "MigrationError",
};

static bool is_migration_prop(const char *name) {
        for (size_t i = 0; i < ELEMENTS(migration_props); i++)
                if (streq(name, migration_props[i]))
                        return true;
        return false;
}

static bool is_final_state(const char *state) {
        return streq(state, VHOSTMIG_MIGRATION_STATE_NONE) || streq(state, VHOSTMIG_MIGRATION_STATE_COMPLETED) ||
               streq(state, VHOSTMIG_MIGRATION_STATE_FAILED) || streq(state, VHOSTMIG_MIGRATION_STATE_CANCELLED) ||
               streq(state, VHOSTMIG_MIGRATION_STATE_POSTMIGRATE_UNKNOWN);
}

/* GetAll of the VM (no activation: it reads). */
static int get_vm_props(struct ctl_conn *c, const char *vm, struct props *p) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *path = vm_path(vm);
        const struct target t = { vm, -1 };
        if (!path)
                return conn_oom(c);
        int ret = conn_callv(c, &t, path, "org.freedesktop.DBus.Properties", "GetAll", &reply, "s",
                             VHOSTMIG_VM_INTERFACE);
        if (ret != EXIT_OK)
                return ret;
        int r = read_props(reply, p);
        return r < 0 ? conn_bad_reply(c, r) : EXIT_OK;
}

/* {"vm": VM, ["event": EVENT,] and the migration properties present}, one line. */
static void print_migration_json(const char *vm, const char *event, const struct props *p) {
        _cleanup_(json_object_putp) json_object *j = json_object_new_object();
        json_object_object_add(j, "vm", json_object_new_string(vm));
        if (event)
                json_object_object_add(j, "event", json_object_new_string(event));
        for (size_t i = 0; i < ELEMENTS(migration_props); i++)
                for (size_t k = 0; k < p->n; k++)
                        if (streq(p->v[k].name, migration_props[i])) {
                                _cleanup_free_ char *label = prop_json_key(migration_props[i]);
                                if (label)
                                        json_object_object_add(j, label, value_json(p->v[k].name, &p->v[k].v));
                        }
        print_json(j);
        fflush(stdout);
}

static void print_migration(const struct ctl_opts *o, const char *vm, const struct props *p) {
        if (o->json) {
                print_migration_json(vm, NULL, p);
                return;
        }
        for (size_t i = 0; i < ELEMENTS(migration_props); i++)
                for (size_t k = 0; k < p->n; k++)
                        if (streq(p->v[k].name, migration_props[i])) {
                                _cleanup_free_ char *label = prop_label(migration_props[i]);
                                char text[64];
                                snprintf(text, sizeof(text), "%s:", label ? label : migration_props[i]);
                                printf("  %-24s ", text);
                                fput_value(stdout, p->v[k].name, &p->v[k].v, false);
                                putchar('\n');
                        }
}

int ctl_migrate_status(const struct ctl_opts *o, const char *vm) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(props_free) struct props p = {};
        int ret = conn_open(&c, o, "migrate status", true);
        if (ret == EXIT_OK)
                ret = get_vm_props(&c, vm, &p);
        if (ret == EXIT_OK)
                print_migration(o, vm, &p);
        return ret;
}

int ctl_migrate_incoming(const struct ctl_opts *o, const char *vm, const char *listen) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *address, *token;
        int r, ret;

        if ((ret = conn_open(&c, o, "migrate incoming", false)) != EXIT_OK)
                return ret;
        ret = listen ? call_on(&c, vm, -1, "PrepareIncoming", &reply, "a{sv}", 1, VHOSTMIG_OPTION_LISTEN, "s", listen)
                     : call_on(&c, vm, -1, "PrepareIncoming", &reply, "a{sv}", 0);
        if (ret != EXIT_OK)
                return ret;
        if ((r = sd_bus_message_read(reply, "ss", &address, &token)) < 0)
                return conn_bad_reply(&c, r);
        if (o->json) {
                _cleanup_(json_object_putp) json_object *j = json_object_new_object();
                json_object_object_add(j, "address", json_object_new_string(address));
                json_object_object_add(j, "token", json_object_new_string(token));
                print_json(j);
        } else if (o->quiet)
                printf("%s %s\n", address, token);
        else
                printf("%-9s %s\n%-9s %s\n", "Address:", address, "Token:", token);
        return EXIT_OK;
}

/* ---- migrate start --wait: progress from PropertiesChanged ------------------------------- */

/* What the wait knows and how it prints; the callbacks' userdata. */
struct waiter {
        const struct ctl_opts *o;
        struct ctl_conn *c;
        const char *vm;
        bool live;
        bool tty;            /* stdout is a terminal: one line redrawn in place */
        struct props props;  /* the VM's, as the last GetAll and the signals since say */
        bool refresh;        /* a property was invalidated: GetAll again */
        bool daemon_gone;    /* vhostmigd left the bus */
        bool drawn;          /* a progress line is on the terminal, the cursor at its end */
        char last_state[32]; /* of the last line printed (not a terminal) */
};

static struct ctl_progress progress_of(const struct waiter *w) {
        const struct props *p = &w->props;
        return (struct ctl_progress){
                .state = prop_str(p, "MigrationState"),
                .live = w->live,
                .page_size = prop_num(p, "PageSize"),
                .round = prop_num(p, "Round"),
                .pages_total = prop_num(p, "PagesTotal"),
                .pages_transferred = prop_num(p, "PagesTransferred"),
                .pages_remaining = prop_num(p, "PagesRemaining"),
                .zero_pages = prop_num(p, "ZeroPages"),
                .dirty_rate = prop_num(p, "DirtyRate"),
                .bandwidth = prop_num(p, "Bandwidth"),
                .expected_downtime_ms = prop_num(p, "ExpectedDowntimeMs"),
                .downtime_ms = prop_num(p, "DowntimeMs"),
                .total_ms = prop_num(p, "TotalMs"),
                .rarp_sent = prop_num(p, "RarpSent"),
                .checksum = prop_num(p, "MigrationChecksum"),
        };
}

/* One update: a JSON line, the terminal's line redrawn, or a line when the state changed. */
static void show_progress(struct waiter *w) {
        struct ctl_progress pr = progress_of(w);
        char line[512];

        if (w->o->json) {
                print_migration_json(w->vm, "progress", &w->props);
                return;
        }
        if (w->o->quiet)
                return;
        if (w->tty) {
                /* One column spare: a line that fills the last one wraps on some terminals. */
                ctl_progress_line(line, sizeof(line), &pr, cli_columns() - 1);
                printf("\r%s\033[K", line);
                w->drawn = true;
        } else if (!streq(w->last_state, pr.state)) {
                ctl_progress_line(line, sizeof(line), &pr, 0);
                puts(line);
                snprintf(w->last_state, sizeof(w->last_state), "%s", pr.state);
        }
        fflush(stdout);
}

/* The end: the result object, or the summary line (after the progress line on a terminal). */
static void show_result(struct waiter *w) {
        struct ctl_progress pr = progress_of(w);
        char line[512];

        if (w->o->json) {
                print_migration_json(w->vm, "result", &w->props);
                return;
        }
        if (w->drawn)
                putchar('\n');
        ctl_progress_summary(line, sizeof(line), &pr);
        puts(line);
        fflush(stdout);
}

static int on_vm_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct waiter *w = userdata;
        _cleanup_(props_free) struct props changed = {};
        _cleanup_(strv_freep) char **invalidated = NULL;
        const char *iface;
        bool migration = false;
        int r;

        (void) error;
        if ((r = sd_bus_message_read_basic(m, 's', &iface)) < 0 || (r = read_props(m, &changed)) < 0 ||
            (r = sd_bus_message_read_strv(m, &invalidated)) < 0) {
                /* Not as documented: read everything again rather than show a half-read change. */
                w->refresh = true;
                return 0;
        }
        if (!streq(iface, VHOSTMIG_VM_INTERFACE))
                return 0;
        for (size_t i = 0; i < changed.n; i++)
                migration = migration || is_migration_prop(changed.v[i].name);
        if (props_merge(&w->props, &changed) < 0 || (invalidated && *invalidated))
                w->refresh = true;
        else if (migration)
                show_progress(w);
        return 0;
}

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct waiter *w = userdata;
        const char *name, *old_owner, *new_owner;

        (void) error;
        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) >= 0 && streq(name, VHOSTMIG_BUS_NAME) &&
            !*new_owner)
                w->daemon_gone = true;
        return 0;
}

/* The matches, in place before MigrateTo so that no change of the migration is missed. */
static int wait_subscribe(struct waiter *w, sd_bus_slot **changed, sd_bus_slot **owner) {
        _cleanup_free_ char *path = vm_path(w->vm);
        if (!path)
                return -ENOMEM;
        int r = sd_bus_match_signal(w->c->bus, changed, VHOSTMIG_BUS_NAME, path, "org.freedesktop.DBus.Properties",
                                    "PropertiesChanged", on_vm_changed, w);
        if (r >= 0)
                r = sd_bus_add_match(w->c->bus, owner,
                                     "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                                     "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                                     "arg0='" VHOSTMIG_BUS_NAME "'",
                                     on_owner_changed, w);
        return r;
}

static int wait_refresh(struct waiter *w) {
        props_free(&w->props);
        w->refresh = false;
        int ret = get_vm_props(w->c, w->vm, &w->props);
        if (ret == EXIT_OK)
                show_progress(w);
        return ret;
}

/*
 * Until MigrationState is final: GetAll once (after MigrateTo answered, so
 * that the state is this migration's), then every PropertiesChanged the
 * daemon sends, dispatched as they come; no polling.
 */
static int wait_migration(struct waiter *w) {
        int ret = wait_refresh(w), r = 0;

        while (ret == EXIT_OK && !is_final_state(prop_str(&w->props, "MigrationState"))) {
                if (w->daemon_gone) {
                        cli_error("%s: vhostmigd left the bus while the migration ran", w->c->verb);
                        return EXIT_FAILED;
                }
                if (w->refresh) {
                        ret = wait_refresh(w);
                        continue;
                }
                r = sd_bus_process(w->c->bus, NULL);
                if (r == 0)
                        r = sd_bus_wait(w->c->bus, UINT64_MAX);
                if (r < 0 && r != -EINTR) {
                        cli_error("%s: lost the bus: %s", w->c->verb, strerror(-r));
                        return EXIT_FAILED;
                }
        }
        return ret;
}

/* ---- migrate start, continue ------------------------------------------------------------ */

/* The a{sv} of MigrateTo: only what was given, so that the daemon's defaults apply to the rest. */
static int append_migrate_options(sd_bus_message *m, const struct ctl_migrate *mo) {
        int r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && mo->live)
                r = sd_bus_message_append(m, "{sv}", "Live", "b", 1);
        if (r >= 0 && mo->has_max_downtime)
                r = sd_bus_message_append(m, "{sv}", "MaxDowntimeMs", "u", mo->max_downtime_ms);
        if (r >= 0 && mo->has_max_bandwidth)
                r = sd_bus_message_append(m, "{sv}", "MaxBandwidth", "t", mo->max_bandwidth);
        if (r >= 0 && mo->has_max_rounds)
                r = sd_bus_message_append(m, "{sv}", "MaxRounds", "u", mo->max_rounds);
        if (r >= 0 && mo->force_switchover)
                r = sd_bus_message_append(m, "{sv}", "ForceSwitchover", "b", 1);
        if (r >= 0 && mo->has_pause_timeout)
                r = sd_bus_message_append(m, "{sv}", "PauseTimeoutMs", "u", mo->pause_timeout_ms);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

static int call_migrate_to(struct ctl_conn *c, const char *vm, const struct ctl_migrate *mo) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = vm_path(vm);
        const struct target t = { vm, -1 };

        if (!path)
                return conn_oom(c);
        int r = conn_new_call(c, &m, path, VHOSTMIG_VM_INTERFACE, "MigrateTo");
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", mo->to, mo->token);
        if (r >= 0)
                r = append_migrate_options(m, mo);
        if (r < 0)
                return build_failed(c, "MigrateTo", r);
        return conn_call(c, &t, m, NULL);
}

int ctl_migrate_start(const struct ctl_opts *o, const char *vm, const struct ctl_migrate *mo) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *changed = NULL, *owner = NULL;
        struct waiter w = { .o = o, .c = &c, .vm = vm, .live = mo->live, .tty = isatty(STDOUT_FILENO) == 1 };
        int r, ret = conn_open(&c, o, "migrate start", false);

        if (ret == EXIT_OK && mo->wait && (r = wait_subscribe(&w, &changed, &owner)) < 0) {
                cli_error("migrate start: cannot watch the VM: %s", strerror(-r));
                ret = EXIT_FAILED;
        }
        if (ret == EXIT_OK)
                ret = call_migrate_to(&c, vm, mo);
        if (ret == EXIT_OK && !mo->wait)
                print_done(o, vm, -1, "started");
        if (ret != EXIT_OK || !mo->wait)
                return ret;
        ret = wait_migration(&w);
        if (ret == EXIT_OK) {
                show_result(&w);
                const char *state = prop_str(&w.props, "MigrationState"), *error = prop_str(&w.props, "MigrationError");
                if (!streq(state, VHOSTMIG_MIGRATION_STATE_COMPLETED)) {
                        cli_error("migrate start: migration %s%s%s", state, *error ? ": " : "", error);
                        ret = EXIT_FAILED;
                }
        } else if (w.drawn)
                putchar('\n');
        props_free(&w.props);
        return ret;
}

int ctl_migrate_continue(const struct ctl_opts *o, const char *vm) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        int ret = conn_open(&c, o, "migrate continue", false);
        if (ret == EXIT_OK)
                ret = call_on(&c, vm, -1, "MigrateContinue", NULL, "a{sv}", 0);
        if (ret == EXIT_OK)
                print_done(o, vm, -1, "continued");
        return ret;
}

int ctl_migrate_cancel(const struct ctl_opts *o, const char *vm) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        int ret = conn_open(&c, o, "migrate cancel", false);
        if (ret == EXIT_OK)
                ret = call_on(&c, vm, -1, "CancelMigration", NULL, "");
        if (ret == EXIT_OK)
                print_done(o, vm, -1, "cancelled");
        return ret;
}

/*
 * The state file: created (0600) or truncated for a save, read for a load.
 * *created: a save made it, so that a failed save leaves nothing behind.
 */
static int open_state_file(const char *verb, const char *file, bool save, int *fd, bool *created) {
        *created = false;
        if (save) {
                *fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
                *created = *fd >= 0;
                if (*fd < 0 && errno == EEXIST)
                        *fd = open(file, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY);
        } else
                *fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (*fd < 0) {
                cli_error("%s: cannot open %s: %s", verb, file, strerror(errno));
                return EXIT_FAILED;
        }
        return EXIT_OK;
}

/* SaveDeviceState / LoadDeviceState: the call returns when the state is written or loaded. */
static int device_state(const struct ctl_opts *o, const char *verb, const char *method, bool save, const char *vm,
                        const char *file) {
        _cleanup_(conn_close) struct ctl_conn c = {};
        _cleanup_(props_free) struct props p = {};
        _cleanup_close_ int fd = -1;
        bool created = false;
        const struct target t = { vm, -1 };
        /* The daemon and the VM first: "not running" and "not found" touch no file. */
        int ret = conn_open(&c, o, verb, false);
        if (ret == EXIT_OK)
                ret = conn_callv(&c, &t, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "GetVm", NULL, "s", vm);
        if (ret == EXIT_OK)
                ret = open_state_file(verb, file, save, &fd, &created);
        if (ret == EXIT_OK)
                ret = call_on(&c, vm, -1, method, NULL, "ha{sv}", fd, 0);
        if (ret != EXIT_OK && created)
                (void) unlink(file);
        if (ret == EXIT_OK)
                ret = get_vm_props(&c, vm, &p);
        if (ret == EXIT_OK && (o->json || !o->quiet))
                print_migration(o, vm, &p);
        return ret;
}

int ctl_migrate_save_state(const struct ctl_opts *o, const char *vm, const char *file) {
        return device_state(o, "migrate save-state", "SaveDeviceState", true, vm, file);
}

int ctl_migrate_load_state(const struct ctl_opts *o, const char *vm, const char *file) {
        return device_state(o, "migrate load-state", "LoadDeviceState", false, vm, file);
}
