/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* org.vhostmig1.Manager: creating and destroying VMs, probing back-ends; who may call what. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "daemon/common/cleanup.h"
#include "daemon/common/validate.h"
#include "daemon/vhostmigd/bus-util.h"
#include "daemon/vhostmigd/daemon.h"
#include "daemon/vhostmigd/libvirt-glue.h"
#include "migrate/probe.h"

/* ---- access ---------------------------------------------------------------------- */

int daemon_check_root(sd_bus_message *m, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t euid;
        int r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &euid);
        if (r < 0)
                return bus_fail(error, SD_BUS_ERROR_ACCESS_DENIED, "cannot determine the caller's user: %s",
                                strerror(-r));
        /* The bus policy says the same; this holds even on a bus configured to allow more. */
        if (euid != 0)
                return bus_fail(error, SD_BUS_ERROR_ACCESS_DENIED, "only root may change vhostmig state");
        return 0;
}

/* ---- org.vhostmig1.Manager -------------------------------------------------------- */

static int read_regions(sd_bus_message *m, struct vhm_vm *vm, sd_bus_error *error) {
        int r = sd_bus_message_enter_container(m, 'a', "(httt)");
        if (r < 0)
                return r;
        for (unsigned i = 0;; i++) {
                struct vhm_region_spec spec = { .fd = -1 }; /* uaddr 0: a new region, its address ours */
                r = sd_bus_message_read(m, "(httt)", &spec.fd, &spec.guest_phys_addr, &spec.size, &spec.offset);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = vhm_vm_add_region(vm, &spec);
                if (r < 0)
                        return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "region %u: %s%s", i, vhm_vm_error(vm),
                                        r == -ERANGE ? " (max_guest_phys_addr)" : "");
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if (vhm_vm_region_count(vm) == 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "regions: a VM needs guest memory");
        return 0;
}

/* The checks that need no memory mapped: who may, the name, the limits. */
static int check_create(struct daemon *d, const char *name, sd_bus_error *error) {
        char why[128];
        if (d->shutting_down)
                return bus_fail(error, VHOSTMIG_ERROR_BUSY, "the daemon is shutting down");
        if (validate_vm_name(name, why, sizeof(why)) < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "name: %s", why);
        if (vm_object_by_name(d, name))
                return bus_fail(error, VHOSTMIG_ERROR_VM_EXISTS, "a VM named \"%s\" exists", name);
        if (d->nvms >= d->cfg.max_vms)
                return bus_fail(error, VHOSTMIG_ERROR_LIMITS_EXCEEDED, "at most %u VMs (max_vms)", d->cfg.max_vms);
        return 0;
}

/* ---- libvirt domains --------------------------------------------------------------------- */

#define UUID_LEN 36

static bool uuid_dash_at(size_t i) {
        return i == 8 || i == 13 || i == 18 || i == 23;
}

/* Only hex digits and dashes, 32 or more: meant as a UUID, so it must be one. */
static bool looks_like_uuid(const char *s) {
        size_t n = strlen(s);
        return n >= 32 && strspn(s, "0123456789abcdefABCDEF-") == n;
}

static int canonical_uuid(const char *s, char *out, char *why, size_t len) {
        if (strlen(s) != UUID_LEN) {
                snprintf(why, len, "\"%s\" is not a UUID (8-4-4-4-12 hex digits)", s);
                return -EINVAL;
        }
        for (size_t i = 0; i < UUID_LEN; i++) {
                if (uuid_dash_at(i) != (s[i] == '-')) {
                        snprintf(why, len, "\"%s\" is not a UUID (8-4-4-4-12 hex digits)", s);
                        return -EINVAL;
                }
                out[i] = (char) (s[i] >= 'A' && s[i] <= 'F' ? s[i] - 'A' + 'a' : s[i]);
        }
        out[UUID_LEN] = '\0';
        return 0;
}

/*
 * A libvirt domain as CreateVm and ReleaseDomain take it: a UUID (stored in
 * lowercase, libvirt's form, so that events match whatever case was given)
 * or a name (1..255 bytes, no control characters).
 */
static int canonical_domain(const char *s, char out[256], char *why, size_t len) {
        if (looks_like_uuid(s))
                return canonical_uuid(s, out, why, len);
        size_t n = strlen(s);
        if (n == 0 || n > 255) {
                snprintf(why, len, "a domain name is 1..255 bytes, got %zu", n);
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f) {
                        snprintf(why, len, "a domain name is printable: byte %zu is 0x%02x", i, (unsigned char) s[i]);
                        return -EINVAL;
                }
        memcpy(out, s, n + 1);
        return 0;
}

struct create_options {
        const char *libvirt_domain;
};

static const struct bus_option create_options[] = {
        { VHOSTMIG_OPTION_LIBVIRT_DOMAIN, 's', offsetof(struct create_options, libvirt_domain) },
};

/* The VM's memory from the regions; the options after them. */
static int read_vm(sd_bus_message *m, struct daemon *d, struct vhm_vm *vm, char libvirt_domain[256],
                   sd_bus_error *error) {
        /* The configuration checked the limit: this cannot fail, but say so if it does. */
        int r = vhm_vm_set_gpa_limit(vm, d->cfg.max_guest_phys_addr);
        if (r < 0)
                return bus_fail(error, SD_BUS_ERROR_FAILED, "max_guest_phys_addr: %s", vhm_vm_error(vm));
        r = read_regions(m, vm, error);
        struct create_options opt = { 0 };
        if (r >= 0)
                r = bus_read_options(m, create_options, 1, &opt, NULL, error);
        char why[160];
        libvirt_domain[0] = '\0';
        if (r >= 0 && opt.libvirt_domain && canonical_domain(opt.libvirt_domain, libvirt_domain, why, sizeof(why)) < 0)
                r = bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "options: \"%s\": %s", VHOSTMIG_OPTION_LIBVIRT_DOMAIN,
                             why);
        return r;
}

static int method_create_vm(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct daemon *d = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        const char *name;
        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        r = check_create(d, name, error);
        if (r < 0)
                return r;
        struct vhm_vm *vm;
        r = vhm_vm_new(name, &vm);
        if (r < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "name: \"%s\": %s", name, strerror(-r));
        struct vm_object *o = NULL;
        char domain[256];
        r = read_vm(m, d, vm, domain, error);
        if (r >= 0)
                r = vm_object_create(d, name, domain, vm, &o);
        if (r < 0) {
                vhm_vm_free(vm);
                return r;
        }
        vm_object_queue_capture(o);
        daemon_log_event(LOG_INFO, VHOSTMIG_MESSAGE_VM_CREATED, o, NULL, "VM created with %u region(s), %llu bytes%s%s",
                         vhm_vm_region_count(vm), (unsigned long long) vhm_vm_memory_size(vm),
                         domain[0] ? ", bound to libvirt domain " : "", domain);
        return sd_bus_reply_method_return(m, "o", o->path);
}

static int method_destroy_vm(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct daemon *d = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        const char *name;
        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        struct vm_object *o = vm_object_by_name(d, name);
        if (!o)
                return bus_fail(error, VHOSTMIG_ERROR_NO_SUCH_VM, "no VM named \"%s\"", name);
        vm_object_destroy(o, m);
        return 1;
}

/*
 * libvirt's hook on "release end": every VM bound to that domain goes, as
 * with DestroyVm.  The VMs leave the bus at once; their devices are
 * released behind whatever their workers are doing.
 */
static int method_release_domain(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct daemon *d = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        const char *domain;
        r = sd_bus_message_read(m, "s", &domain);
        if (r >= 0)
                r = bus_read_options(m, NULL, 0, NULL, NULL, error);
        if (r < 0)
                return r;
        char canonical[256], why[160];
        if (canonical_domain(domain, canonical, why, sizeof(why)) < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "domain: %s", why);
        uint32_t released = 0;
        for (struct vm_object *o = d->vms, *next; o; o = next) {
                next = o->next;
                if (!vm_object_bound_to(o, canonical, canonical))
                        continue;
                daemon_log(LOG_NOTICE, o, NULL, "released: libvirt domain %s is gone (ReleaseDomain)", canonical);
                vm_object_destroy(o, NULL);
                released++;
        }
        return sd_bus_reply_method_return(m, "u", released);
}

/* Open to everyone, like the properties: the path of a VM by its name. */
static int method_get_vm(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct daemon *d = userdata;
        const char *name;
        int r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        struct vm_object *o = vm_object_by_name(d, name);
        if (!o)
                return bus_fail(error, VHOSTMIG_ERROR_NO_SUCH_VM, "no VM named \"%s\"", name);
        return sd_bus_reply_method_return(m, "o", o->path);
}

struct probe_job {
        struct worker_job base;
        sd_bus_message *call;
        struct vhm_probe_options opts;
        char *socket;
        struct vhm_probe_result result;
        int r;
        char error[512];
};

static void probe_run(struct worker_job *base) {
        struct probe_job *p = (struct probe_job *) base;
        p->r = vhm_probe(&p->opts, &p->result, p->error, sizeof(p->error));
}

static int append_probe_result(sd_bus_message *reply, const struct vhm_probe_result *res) {
        int r = sd_bus_message_append(reply, "tttutb", res->features, res->protocol_features,
                                      res->protocol_features_negotiated, (uint32_t) res->queue_pairs,
                                      res->max_mem_slots, (int) res->migratable);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "s");
        for (unsigned i = 0; r >= 0 && i < res->blockers.n; i++)
                r = sd_bus_message_append(reply, "s", res->blockers.reason[i]);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

static void probe_done(struct worker_job *base) {
        struct probe_job *p = (struct probe_job *) base;
        if (p->r < 0) {
                (void) sd_bus_reply_method_errorf(p->call, VHOSTMIG_ERROR_BACKEND, "%s", p->error);
        } else {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                int r = sd_bus_message_new_method_return(p->call, &reply);
                if (r >= 0)
                        r = append_probe_result(reply, &p->result);
                if (r >= 0)
                        r = sd_bus_send(NULL, reply, NULL);
                if (r < 0)
                        (void) sd_bus_reply_method_errno(p->call, r, NULL);
        }
        sd_bus_message_unref(p->call);
        free(p->socket);
        free(p);
}

static struct worker *idle_probe_worker(struct daemon *d) {
        for (unsigned i = 0; i < d->nprobe_workers; i++)
                if (worker_pending(&d->probe_workers[i]) == 0)
                        return &d->probe_workers[i];
        return NULL;
}

static int method_probe(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct daemon *d = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        const char *socket;
        int server;
        uint32_t timeout_ms;
        r = sd_bus_message_read(m, "sbu", &socket, &server, &timeout_ms);
        if (r < 0)
                return r;
        char why[128];
        if (validate_socket_path(socket, why, sizeof(why)) < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "socket: %s", why);
        if (timeout_ms > 600000)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "timeout_ms: at most 600000");
        /* A probe of a hung back-end holds its worker until its timeout: never queue behind it. */
        struct worker *w = idle_probe_worker(d);
        if (!w)
                return bus_fail(error, VHOSTMIG_ERROR_BUSY,
                                "%u probes are already running (max_probes); try again later", d->nprobe_workers);
        struct probe_job *p = calloc(1, sizeof(*p));
        if (!p || !(p->socket = strdup(socket))) {
                free(p);
                return -ENOMEM;
        }
        p->base.run = probe_run;
        p->base.done = probe_done;
        p->call = sd_bus_message_ref(m);
        p->opts = (struct vhm_probe_options){
                .socket = p->socket,
                .server = server,
                .timeout_ms = timeout_ms ? timeout_ms : d->cfg.request_timeout_ms,
        };
        worker_submit(w, &p->base);
        return 1;
}

static int prop_version(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u,
                        sd_bus_error *e) {
        (void) b;
        (void) p;
        (void) i;
        (void) prop;
        (void) u;
        (void) e;
        return sd_bus_message_append(reply, "s", VHOSTMIG_VERSION);
}

static int prop_vms(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u,
                    sd_bus_error *e) {
        (void) b;
        (void) p;
        (void) i;
        (void) prop;
        (void) e;
        struct daemon *d = u;
        int r = sd_bus_message_open_container(reply, 'a', "o");
        for (struct vm_object *o = d->vms; r >= 0 && o; o = o->next)
                r = sd_bus_message_append(reply, "o", o->path);
        return r < 0 ? r : sd_bus_message_close_container(reply);
}

/* The libvirt watcher's connection (libvirt-glue.c), read afresh on every get. */
static int prop_libvirt(sd_bus *b, const char *p, const char *i, const char *prop, sd_bus_message *reply, void *u,
                        sd_bus_error *e) {
        (void) b;
        (void) p;
        (void) i;
        (void) u;
        (void) e;
        struct daemon_libvirt_status s;
        daemon_libvirt_status(&s);
        if (strcmp(prop, "LibvirtUri") == 0)
                return sd_bus_message_append(reply, "s", s.uri);
        if (strcmp(prop, "LibvirtConnection") == 0)
                return sd_bus_message_append(reply, "s", s.connection);
        if (strcmp(prop, "LibvirtLastError") == 0)
                return sd_bus_message_append(reply, "s", s.last_error);
        return sd_bus_message_append(reply, "t", s.last_error_usec);
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", prop_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Vms", "ao", prop_vms, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LibvirtUri", "s", prop_libvirt, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("LibvirtConnection", "s", prop_libvirt, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LibvirtLastError", "s", prop_libvirt, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LibvirtLastErrorTimestamp", "t", prop_libvirt, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("CreateVm", SD_BUS_ARGS("s", name, "a(httt)", regions, "a{sv}", options),
                                SD_BUS_RESULT("o", vm), method_create_vm, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DestroyVm", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT, method_destroy_vm,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetVm", SD_BUS_ARGS("s", name), SD_BUS_RESULT("o", vm), method_get_vm,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ReleaseDomain", SD_BUS_ARGS("s", domain, "a{sv}", options),
                                SD_BUS_RESULT("u", released), method_release_domain, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Probe", SD_BUS_ARGS("s", socket, "b", server, "u", timeout_ms),
                                SD_BUS_RESULT("t", features, "t", protocol_features, "t", negotiated_protocol_features,
                                              "u", queue_pairs, "t", max_mem_slots, "b", migratable, "as", blockers),
                                method_probe, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

int manager_register(struct daemon *d) {
        return sd_bus_add_object_vtable(d->bus, NULL, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, manager_vtable,
                                        d);
}
