/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmig-libvirt-hook: libvirt's qemu hook, installed as
 * /etc/libvirt/hooks/qemu.d/vhostmig (docs/vhostmig-libvirt-hook.8).
 *
 * libvirtd runs it as `HOOK DOMAIN OPERATION SUB-OPERATION EXTRA` with the
 * domain XML on stdin, and waits for it without a timeout, holding the
 * domain's job: so everything here runs against one deadline (timeout_ms of
 * the config), the D-Bus calls' timeouts and Probe's own come from what is
 * left of it, and a timer ends the process should anything still overrun.
 *
 * `migrate begin` (on the destination, before QEMU starts) checks that guest
 * memory is shared and asks vhostmigd's Manager.Probe about every vhost-user
 * back-end that already listens; each refusal is one line on stderr, which
 * libvirt shows the operator, and the exit status 1 stops the migration.
 * `release end` asks vhostmigd to release the VMs bound to the domain.
 * Nothing goes to stdout: for `migrate` libvirt would take it as new XML.
 * It never calls libvirt (libvirtd waits for us: a deadlock).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "daemon/common/bus-api.h"
#include "daemon/common/cleanup.h"
#include "daemon/libvirt/domain-xml.h"
#include "migrate/blockers.h"

#define DEFAULT_CONFIG     "/etc/vhostmig/libvirt-hook.json"
#define DEFAULT_TIMEOUT_MS 5000u
#define MAX_TIMEOUT_MS     600000u /* Probe's own limit */
#define MAX_CONFIG_SIZE    65536
/* vhostmigd's default max_probes: more at once would only be refused Busy. */
#define MAX_INFLIGHT                  4u
#define BUSY_RETRY_USEC               100000u
#define PROTOCOL_FEATURE_DEVICE_STATE 19

#define ERROR_SERVICE_UNKNOWN   "org.freedesktop.DBus.Error.ServiceUnknown"
#define ERROR_NAME_HAS_NO_OWNER "org.freedesktop.DBus.Error.NameHasNoOwner"
#define ERROR_NO_REPLY          "org.freedesktop.DBus.Error.NoReply"

struct hook_config {
        unsigned timeout_ms;
        bool refuse_when_down; /* "daemon_down": "refuse" */
        char *bus;             /* D-Bus address; NULL: the system bus */
};

static const char *domain_arg = "?";
static uint64_t deadline_us;

static uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static uint64_t left_us(void) {
        uint64_t now = now_us();
        return now < deadline_us ? deadline_us - now : 0;
}

/* Strings from the XML go on one stderr line: nothing in them may break it. */
static void put_safe(const char *s) {
        for (; *s; s++)
                fputc((unsigned char) *s < 0x20 || *s == 0x7f ? '?' : *s, stderr);
}

/* One line on stderr, "vhostmig: " first: libvirt logs it and shows it with a refusal. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
        va_list ap;
        fputs("vhostmig: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

/* "interface 52:54:00:3b:83:1b (socket /run/vhu0.sock)": the device as the operator wrote it. */
static void put_device(const struct vhm_dx_device *d) {
        fprintf(stderr, "%s ", vhm_dx_kind_name(d->kind));
        const char *id = d->kind == VHM_DX_INTERFACE ? d->mac : d->target;
        put_safe(id ? id : "(unnamed)");
        fputs(" (socket ", stderr);
        put_safe(d->socket ? d->socket : "none");
        fputc(')', stderr);
}

/* "vhostmig: <what> of domain D: <device>: <reason>" on one line. */
static void say_device(const char *what, const struct vhm_dx_device *d, const char *reason) {
        fprintf(stderr, "vhostmig: %s ", what);
        put_safe(domain_arg);
        fputs(": ", stderr);
        put_device(d);
        fputs(": ", stderr);
        put_safe(reason);
        fputc('\n', stderr);
}

/* ---- the bound ------------------------------------------------------------------------- */

static void overrun(int sig) {
        (void) sig;
        static const char msg[] = "vhostmig: the hook ran past its time bound (timeout_ms); giving up\n";
        (void) !write(STDERR_FILENO, msg, sizeof(msg) - 1);
        _exit(1);
}

/* A backstop half a second after the deadline, for whatever might block past it. */
static int arm_backstop(unsigned timeout_ms) {
        struct sigaction sa = { .sa_handler = overrun };
        if (sigaction(SIGALRM, &sa, NULL) < 0)
                return -errno;
        uint64_t ms = (uint64_t) timeout_ms + 500;
        struct itimerval it = { .it_value = { (time_t) (ms / 1000), (suseconds_t) (ms % 1000) * 1000 } };
        return setitimer(ITIMER_REAL, &it, NULL) < 0 ? -errno : 0;
}

/* ---- config ---------------------------------------------------------------------------- */

static int config_key(struct hook_config *cfg, const char *key, json_object *v, char *why, size_t len) {
        if (strcmp(key, "timeout_ms") == 0) {
                int64_t ms = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
                if (ms < 100 || ms > MAX_TIMEOUT_MS) {
                        snprintf(why, len, "\"timeout_ms\" must be an integer from 100 to %u", MAX_TIMEOUT_MS);
                        return -EINVAL;
                }
                cfg->timeout_ms = (unsigned) ms;
        } else if (strcmp(key, "daemon_down") == 0) {
                const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
                if (strcmp(s, "allow") != 0 && strcmp(s, "refuse") != 0) {
                        snprintf(why, len, "\"daemon_down\" must be \"allow\" or \"refuse\"");
                        return -EINVAL;
                }
                cfg->refuse_when_down = strcmp(s, "refuse") == 0;
        } else if (strcmp(key, "bus") == 0) {
                if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0) {
                        snprintf(why, len, "\"bus\" must be a D-Bus address");
                        return -EINVAL;
                }
                free(cfg->bus);
                if (!(cfg->bus = strdup(json_object_get_string(v))))
                        return -ENOMEM;
        } else {
                snprintf(why, len, "unknown key \"%s\"", key);
                return -EINVAL;
        }
        return 0;
}

static int config_parse(struct hook_config *cfg, const char *text, char *why, size_t len) {
        enum json_tokener_error jerr;
        json_object *root = json_tokener_parse_verbose(text, &jerr);
        if (!root) {
                snprintf(why, len, "not JSON: %s", json_tokener_error_desc(jerr));
                return -EINVAL;
        }
        int r = 0;
        if (!json_object_is_type(root, json_type_object)) {
                snprintf(why, len, "not a JSON object");
                r = -EINVAL;
        } else {
                json_object_object_foreach(root, key, v) {
                        r = config_key(cfg, key, v, why, len);
                        if (r < 0)
                                break;
                }
        }
        json_object_put(root);
        return r;
}

/* The config file, absent = defaults; strict: an unknown key or a wrong type is an error. */
static int config_load(struct hook_config *cfg, const char *path, char *why, size_t len) {
        *cfg = (struct hook_config){ .timeout_ms = DEFAULT_TIMEOUT_MS };
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                if (errno == ENOENT)
                        return 0;
                snprintf(why, len, "%m");
                return -errno;
        }
        _cleanup_free_ char *text = malloc(MAX_CONFIG_SIZE + 1);
        if (!text)
                return -ENOMEM;
        ssize_t n = read(fd, text, MAX_CONFIG_SIZE + 1);
        if (n < 0) {
                snprintf(why, len, "%m");
                return -errno;
        }
        if (n > MAX_CONFIG_SIZE) {
                snprintf(why, len, "larger than %d bytes", MAX_CONFIG_SIZE);
                return -EFBIG;
        }
        text[n] = '\0';
        return config_parse(cfg, text, why, len);
}

/* ---- stdin ----------------------------------------------------------------------------- */

/* The XML libvirt writes on stdin, to EOF, bounded in size and by the deadline. */
static int read_stdin(char **out, size_t *out_len) {
        size_t cap = 65536, len = 0;
        _cleanup_free_ char *buf = malloc(cap);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
                int r = poll(&p, 1, (int) ((left_us() + 999) / 1000));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return -errno;
                if (r == 0)
                        return -ETIMEDOUT;
                if (len == cap) {
                        if (cap > VHM_DX_MAX_INPUT)
                                return -E2BIG;
                        char *n = realloc(buf, cap * 2);
                        if (!n)
                                return -ENOMEM;
                        buf = n;
                        cap *= 2;
                }
                ssize_t k = read(STDIN_FILENO, buf + len, cap - len);
                if (k < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        break;
                len += (size_t) k;
        }
        *out = TAKE_PTR(buf);
        *out_len = len;
        return 0;
}

static int read_domain(struct vhm_domain_xml **dx) {
        _cleanup_free_ char *xml = NULL;
        size_t len = 0;
        int r = read_stdin(&xml, &len);
        if (r == -E2BIG) {
                say("cannot check domain %s: the domain XML on stdin is larger than %u bytes", domain_arg,
                    VHM_DX_MAX_INPUT);
                return r;
        }
        if (r < 0) {
                say("cannot check domain %s: reading the domain XML on stdin: %s", domain_arg, strerror(-r));
                return r;
        }
        char why[512];
        r = vhm_domain_xml_parse(xml, len, dx, why, sizeof(why));
        if (r < 0)
                say("cannot check domain %s: bad domain XML on stdin: %s", domain_arg, why);
        return r;
}

/* ---- D-Bus ----------------------------------------------------------------------------- */

/* A bus client on cfg->bus or the system bus; its errors mean "vhostmigd is not running". */
static int bus_connect(const struct hook_config *cfg, sd_bus **out) {
        if (!cfg->bus)
                return sd_bus_open_system(out);
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *b = NULL;
        int r = sd_bus_new(&b);
        if (r >= 0)
                r = sd_bus_set_address(b, cfg->bus);
        if (r >= 0)
                r = sd_bus_set_bus_client(b, 1);
        if (r >= 0)
                r = sd_bus_start(b);
        if (r < 0)
                return r;
        *out = TAKE_PTR(b);
        return 0;
}

static bool error_is_daemon_down(const sd_bus_error *e) {
        return sd_bus_error_has_names(e, ERROR_SERVICE_UNKNOWN, ERROR_NAME_HAS_NO_OWNER);
}

/* A Manager method call that never starts vhostmigd through bus activation. */
static int manager_call(sd_bus *bus, const char *method, sd_bus_message **out) {
        int r = sd_bus_message_new_method_call(bus, out, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH,
                                               VHOSTMIG_MANAGER_INTERFACE, method);
        if (r >= 0)
                r = sd_bus_message_set_auto_start(*out, 0);
        return r;
}

/* ---- migrate begin: the probes -------------------------------------------------------- */

struct probes;

struct probe {
        const struct vhm_dx_device *dev;
        struct probes *owner;
        sd_bus_slot *slot;
        bool in_flight, done, daemon_down;
        uint64_t not_before_us; /* after a Busy answer */
        char reason[768];       /* when done: "" = can migrate, else why not */
};

struct probes {
        struct probe *p;
        unsigned n, in_flight;
};

/* The answer's blockers, and for a filesystem the state its back-end must carry. */
static int read_probe_reply(sd_bus_message *m, struct probe *p) {
        uint64_t features, offered, negotiated, slots;
        uint32_t pairs;
        int migratable;
        int r = sd_bus_message_read(m, "tttutb", &features, &offered, &negotiated, &pairs, &slots, &migratable);
        if (r >= 0)
                r = sd_bus_message_enter_container(m, 'a', "s");
        size_t used = 0;
        const char *s;
        while (r >= 0 && (r = sd_bus_message_read(m, "s", &s)) > 0)
                used += (size_t) snprintf(p->reason + used, used < sizeof(p->reason) ? sizeof(p->reason) - used : 0,
                                          "%s%s", used ? "; " : "", s);
        if (r < 0)
                return r;
        char why[VHM_BLOCKER_LEN];
        if (p->dev->kind == VHM_DX_FS && vhm_device_state_blocker(VHM_DEVICE_TYPE_FS, negotiated, why, sizeof(why)))
                used += (size_t) snprintf(p->reason + used, used < sizeof(p->reason) ? sizeof(p->reason) - used : 0,
                                          "%s%s", used ? "; " : "", why);
        if (!used && !migratable)
                snprintf(p->reason, sizeof(p->reason), "vhostmigd says it cannot migrate (no reason given)");
        return 0;
}

static int on_probe_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        (void) ret_error;
        struct probe *p = userdata;
        struct probes *ps = p->owner;
        p->in_flight = false;
        ps->in_flight--;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        if (sd_bus_error_has_name(e, VHOSTMIG_ERROR_BUSY)) {
                /* Other probes hold vhostmigd's slots: ask again shortly, within the bound. */
                p->not_before_us = now_us() + BUSY_RETRY_USEC;
                return 0;
        }
        p->done = true;
        if (error_is_daemon_down(e))
                p->daemon_down = true;
        else if (sd_bus_error_has_name(e, ERROR_NO_REPLY))
                snprintf(p->reason, sizeof(p->reason),
                         "timed out: the back-end's probe did not end within the "
                         "hook's bound");
        else if (e)
                snprintf(p->reason, sizeof(p->reason), "the back-end could not be probed: %s",
                         e->message ? e->message : e->name);
        else if (read_probe_reply(m, p) < 0)
                snprintf(p->reason, sizeof(p->reason), "vhostmigd's Probe answer could not be read");
        return 0;
}

static int send_probe(sd_bus *bus, struct probes *ps, struct probe *p) {
        uint64_t left = left_us();
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r = manager_call(bus, "Probe", &m);
        /* The daemon's per-request timeout is all that is left: our own call's timeout fires first. */
        if (r >= 0)
                r = sd_bus_message_append(m, "sbu", p->dev->socket, 0, (uint32_t) ((left + 999) / 1000));
        p->slot = sd_bus_slot_unref(p->slot);
        if (r >= 0)
                r = sd_bus_call_async(bus, &p->slot, m, on_probe_reply, p, left ? left : 1);
        if (r < 0)
                return r;
        p->in_flight = true;
        ps->in_flight++;
        return 0;
}

static bool probes_done(const struct probes *ps) {
        for (unsigned i = 0; i < ps->n; i++)
                if (!ps->p[i].done)
                        return false;
        return true;
}

/* Starts what may start now; the earliest time a Busy probe may be sent again, or UINT64_MAX. */
static int probes_send(sd_bus *bus, struct probes *ps, uint64_t *next_us) {
        uint64_t now = now_us();
        *next_us = UINT64_MAX;
        for (unsigned i = 0; i < ps->n && ps->in_flight < MAX_INFLIGHT; i++) {
                struct probe *p = &ps->p[i];
                if (p->done || p->in_flight)
                        continue;
                if (p->not_before_us > now) {
                        if (p->not_before_us < *next_us)
                                *next_us = p->not_before_us;
                        continue;
                }
                int r = send_probe(bus, ps, p);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Whatever has no answer when the deadline passes, or when the bus fails, ends with `why`. */
static void probes_abandon(struct probes *ps, const char *why) {
        for (unsigned i = 0; i < ps->n; i++)
                if (!ps->p[i].done) {
                        ps->p[i].done = true;
                        snprintf(ps->p[i].reason, sizeof(ps->p[i].reason), "%s", why);
                }
}

/* All probes concurrently (at most MAX_INFLIGHT at once), until answered or the deadline. */
static void probes_run(sd_bus *bus, struct probes *ps) {
        char why[256];
        while (!probes_done(ps)) {
                uint64_t next_us;
                int r = probes_send(bus, ps, &next_us);
                if (r >= 0)
                        while ((r = sd_bus_process(bus, NULL)) > 0)
                                ;
                if (r < 0) {
                        snprintf(why, sizeof(why), "the D-Bus connection to vhostmigd failed: %s", strerror(-r));
                        probes_abandon(ps, why);
                        return;
                }
                if (probes_done(ps))
                        return;
                uint64_t now = now_us();
                if (now >= deadline_us) {
                        probes_abandon(ps, "timed out: still waiting for a probe slot in vhostmigd (Busy) at the "
                                           "hook's bound");
                        return;
                }
                uint64_t until = next_us < deadline_us ? next_us : deadline_us;
                r = sd_bus_wait(bus, until > now ? until - now : 1);
                if (r < 0 && r != -EINTR) {
                        snprintf(why, sizeof(why), "the D-Bus connection to vhostmigd failed: %s", strerror(-r));
                        probes_abandon(ps, why);
                        return;
                }
        }
}

static void probes_free(struct probes *ps) {
        for (unsigned i = 0; i < ps->n; i++)
                sd_bus_slot_unref(ps->p[i].slot);
        free(ps->p);
}

/* The devices nothing can be asked about yet: said, not refused ("do not guess"). */
static void note_unprobed(const struct vhm_domain_xml *dx) {
        for (unsigned i = 0; i < dx->ndevices; i++) {
                const struct vhm_dx_device *d = &dx->devices[i];
                if (d->listener == VHM_DX_QEMU_LISTENS)
                        say_device("not checked for domain", d,
                                   "QEMU listens on this socket (mode='server'), so no back-end is there "
                                   "until QEMU starts");
                else if (d->listener == VHM_DX_UNKNOWN || !d->socket)
                        say_device("not checked for domain", d,
                                   d->kind == VHM_DX_FS ? "libvirt starts this virtiofsd itself, so nothing listens "
                                                          "yet"
                                                        : "no socket path and mode='client' to probe");
        }
}

/* Refusals for the probed back-ends, and what to do when vhostmigd is not running: the refusal count. */
static unsigned report_probes(const struct probes *ps, bool daemon_down, const struct hook_config *cfg) {
        unsigned refused = 0;
        if (daemon_down && !cfg->refuse_when_down) {
                say("vhostmigd is not running: %u vhost-user back-end(s) of domain %s not checked "
                    "(daemon_down=allow)",
                    ps->n, domain_arg);
                return 0;
        }
        for (unsigned i = 0; i < ps->n; i++) {
                const struct probe *p = &ps->p[i];
                const char *reason = daemon_down ? "vhostmigd is not running (daemon_down=refuse)" : p->reason;
                if (*reason) {
                        say_device("refusing migration of domain", p->dev, reason);
                        refused++;
                }
        }
        return refused;
}

static unsigned check_backends(const struct vhm_domain_xml *dx, const struct hook_config *cfg) {
        struct probes ps = { 0 };
        ps.p = calloc(dx->ndevices, sizeof(*ps.p));
        if (!ps.p) {
                say("refusing migration of domain %s: out of memory", domain_arg);
                return 1;
        }
        for (unsigned i = 0; i < dx->ndevices; i++)
                if (dx->devices[i].listener == VHM_DX_BACKEND_LISTENS && dx->devices[i].socket)
                        ps.p[ps.n++] = (struct probe){ .dev = &dx->devices[i], .owner = &ps };
        unsigned refused = 0;
        if (ps.n > 0) {
                _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
                bool down = bus_connect(cfg, &bus) < 0;
                if (!down)
                        probes_run(bus, &ps);
                for (unsigned i = 0; i < ps.n; i++)
                        down = down || ps.p[i].daemon_down;
                refused = report_probes(&ps, down, cfg);
                probes_free(&ps);
        } else {
                free(ps.p);
        }
        return refused;
}

static int migrate_begin(const struct hook_config *cfg) {
        struct vhm_domain_xml *dx = NULL;
        if (read_domain(&dx) < 0)
                return 1;
        unsigned refused = 0;
        if (dx->ndevices > 0 && !dx->memory_shared) {
                fprintf(stderr, "vhostmig: refusing migration of domain ");
                put_safe(domain_arg);
                fprintf(stderr, ": guest memory is not shared, which every vhost-user back-end needs (first: ");
                put_device(&dx->devices[0]);
                fprintf(stderr, "): %s\n", dx->memory_why);
                refused++;
        }
        if (dx->ndevices > 0) {
                note_unprobed(dx);
                refused += check_backends(dx, cfg);
        }
        vhm_domain_xml_free(dx);
        return refused ? 1 : 0;
}

/* ---- release end ------------------------------------------------------------------------ */

/* Manager.ReleaseDomain(domain): VMs released, 0 when vhostmigd is not running, or a negative errno (said). */
static int release_one(sd_bus *bus, const char *domain, uint32_t *released) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = manager_call(bus, "ReleaseDomain", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "sa{sv}", domain, 0);
        if (r >= 0)
                r = sd_bus_call(bus, m, left_us() ? left_us() : 1, &e, &reply);
        if (r < 0 && error_is_daemon_down(&e))
                return 0;
        if (r >= 0)
                r = sd_bus_message_read(reply, "u", released);
        if (r < 0) {
                fprintf(stderr, "vhostmig: releasing domain ");
                put_safe(domain);
                fprintf(stderr, " in vhostmigd failed: %s\n", e.message ? e.message : strerror(-r));
        }
        return r;
}

/*
 * A VM is bound to its domain by UUID or by name: both are asked, since a VM
 * released under one is gone before the other is asked.
 */
static int release_end(const struct hook_config *cfg) {
        struct vhm_domain_xml *dx = NULL;
        if (read_domain(&dx) < 0)
                return 1;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r = 0;
        if (bus_connect(cfg, &bus) >= 0) {
                uint32_t by_uuid = 0, by_name = 0;
                if (dx->uuid)
                        r = release_one(bus, dx->uuid, &by_uuid);
                if (r >= 0)
                        r = release_one(bus, domain_arg, &by_name);
                if (r >= 0 && by_uuid + by_name > 0)
                        say("released %u VM(s) of domain %s", by_uuid + by_name, domain_arg);
        }
        vhm_domain_xml_free(dx);
        return r < 0 ? 1 : 0;
}

/* ---- main ------------------------------------------------------------------------------- */

/* libvirt's qemu hook operations (docs/hooks.rst). */
static bool known_operation(const char *op) {
        static const char *const ops[] = { "prepare", "start",   "started",   "stopped", "release",
                                           "migrate", "restore", "reconnect", "attach" };
        for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
                if (strcmp(op, ops[i]) == 0)
                        return true;
        return false;
}

int main(int argc, char *argv[]) {
        deadline_us = now_us();
        if (argc < 5) {
                fprintf(stderr,
                        "vhostmig: usage: %s DOMAIN OPERATION SUB-OPERATION EXTRA (the domain XML on stdin; "
                        "libvirtd runs it as a qemu hook)\n",
                        argc > 0 ? argv[0] : "vhostmig-libvirt-hook");
                return 1;
        }
        domain_arg = argv[1];
        const char *op = argv[2], *subop = argv[3];
        if (!known_operation(op)) {
                fprintf(stderr, "vhostmig: unknown hook operation \"");
                put_safe(op);
                fprintf(stderr, "\" for domain ");
                put_safe(domain_arg);
                fputc('\n', stderr);
                return 1;
        }
        bool begin = strcmp(op, "migrate") == 0 && strcmp(subop, "begin") == 0;
        bool release = strcmp(op, "release") == 0 && strcmp(subop, "end") == 0;
        if (!begin && !release)
                return 0;

        const char *path = getenv("VHOSTMIG_HOOK_CONFIG");
        path = path && *path ? path : DEFAULT_CONFIG;
        struct hook_config cfg;
        char why[256] = "";
        int r = config_load(&cfg, path, why, sizeof(why));
        if (r < 0) {
                say("cannot check domain %s: config %s: %s", domain_arg, path, why[0] ? why : strerror(-r));
                free(cfg.bus);
                return 1;
        }
        deadline_us += (uint64_t) cfg.timeout_ms * 1000u;
        r = arm_backstop(cfg.timeout_ms);
        if (r < 0)
                say("the hook's time bound has no backstop timer: %s", strerror(-r));
        int status = begin ? migrate_begin(&cfg) : release_end(&cfg);
        free(cfg.bus);
        return status;
}
