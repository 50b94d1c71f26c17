/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd's side of restart survival (restart.h): saving after every job,
 * restoring on start, handing over on SIGTERM.  The state's body:
 *
 *   {"next_id": "0x..", "fds": {name: kind},
 *    "vms": [{"name", "libvirt_domain", "created_usec", "state_change_usec",
 *             "next_device_number", "next_sid", "migrating", "role",
 *             "devices": [{"sid", "number", "created_usec"}]   (the loop's)
 *             "w": {"gpa_limit", "regions": [{"gpa", "size", "offset", "uaddr", "fd"}],
 *                   "logging", "log": {"fd", "size", "bitmap", "bitmap_pages"}, "pages_lost",
 *                   "bitmaps": [fd name],
 *                   "devices": [{"sid", "config": {...}, "queues": [{"size",
 *                                "desc", "avail", "used", "kick", "call"}],
 *                                "record": restart-record.h's (when connected),
 *                                "conn", "channel", "listen": fd names}]}}]}
 *
 * "w" is what the VM's worker captured after its last job; the rest is the
 * loop's.  64-bit values are hex strings (JSON numbers are inexact past 2^53).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "daemon/common/cleanup.h"
#include "daemon/vhostmigd/jobs.h"
#include "daemon/vhostmigd/restart-record.h"
#include "daemon/vhostmigd/restart.h"
#include "daemon/vhostmigd/state-store.h"
#include "migrate/logging.h"
#include "proto/vhost-user-frontend.h"

#define NAME_MAX_LEN (STATE_STORE_NAME_MAX + 1)

struct restart {
        struct state_store *store;
        sd_event_source *publish; /* deferred, one shot: one publish per loop iteration */
        uint64_t next_id;         /* the number that makes every fd name unique; atomic */
        char **forget;            /* loop: names to remove from the store once the next state is published */
        size_t nforget, forget_cap;
};

/* An fd the VM kept in the store: under `name`, known to the capture as `base`. */
struct stored_fd {
        char base[NAME_MAX_LEN];
        char name[NAME_MAX_LEN];
        int fd; /* the object's own fd, not ours: identifies it with dev and ino */
        dev_t dev;
        ino_t ino;
        bool seen;
};

struct restart_vm {
        /* Worker. */
        struct stored_fd *stored;
        size_t nstored, stored_cap;
        int bitmap_fds[VHM_LOGGING_MAX_BITMAPS]; /* the VMM bitmaps' memfds, our duplicates */
        unsigned nbitmaps;
        uint64_t last_hash; /* of the last state handed over */
        ino_t log_ino;      /* the log's at the last capture (0: none): for the test builds' fault point */
        /* Under the VM's snap_lock. */
        json_object *pending;
        char **forget;
        size_t nforget, forget_cap;
        /* Loop. */
        json_object *current;
        unsigned next_sid;
};

/* ---- small helpers ------------------------------------------------------------------ */

static int strv_push(char ***v, size_t *n, size_t *cap, const char *s) {
        if (*n == *cap) {
                size_t c = *cap ? 2 * *cap : 16;
                char **nv = realloc(*v, c * sizeof(char *));
                if (!nv)
                        return -ENOMEM;
                *v = nv;
                *cap = c;
        }
        char *copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        (*v)[(*n)++] = copy;
        return 0;
}

static void strv_clear(char **v, size_t *n) {
        for (size_t i = 0; i < *n; i++)
                free(v[i]);
        *n = 0;
}

static int add(json_object *o, const char *key, json_object *v) {
        if (!v || json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

static int add_hex(json_object *o, const char *key, uint64_t v) {
        char buf[24];
        snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
        return add(o, key, json_object_new_string(buf));
}

static int push(json_object *a, json_object *v) {
        if (!v || json_object_array_add(a, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

static uint64_t fnv(const char *p) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);
        for (; *p; p++) {
                h ^= (unsigned char) *p;
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

/* ---- reading the body back: the first bad field named ----------------------------- */

struct rd {
        char why[256];
};

static json_object *rd_get(struct rd *rd, json_object *o, const char *key, json_type type) {
        json_object *v = NULL;
        if (rd->why[0])
                return NULL;
        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, type)) {
                snprintf(rd->why, sizeof(rd->why), "\"%s\" missing or not a %s", key, json_type_to_name(type));
                return NULL;
        }
        return v;
}

static uint64_t rd_hex(struct rd *rd, json_object *o, const char *key) {
        json_object *v = rd_get(rd, o, key, json_type_string);
        if (!v)
                return 0;
        const char *s = json_object_get_string(v);
        char *end = NULL;
        errno = 0;
        uint64_t x = strncmp(s, "0x", 2) == 0 ? strtoull(s + 2, &end, 16) : 0;
        if (!end || end == s + 2 || *end || errno)
                snprintf(rd->why, sizeof(rd->why), "\"%s\": \"%.40s\" is not a hex number", key, s);
        return x;
}

static unsigned rd_uint(struct rd *rd, json_object *o, const char *key, unsigned max) {
        json_object *v = rd_get(rd, o, key, json_type_int);
        if (!v)
                return 0;
        int64_t x = json_object_get_int64(v);
        if (x < 0 || (uint64_t) x > max) {
                snprintf(rd->why, sizeof(rd->why), "\"%s\": %" PRId64 " out of range", key, x);
                return 0;
        }
        return (unsigned) x;
}

static bool rd_bool(struct rd *rd, json_object *o, const char *key) {
        json_object *v = rd_get(rd, o, key, json_type_boolean);
        return v && json_object_get_boolean(v);
}

static const char *rd_str(struct rd *rd, json_object *o, const char *key) {
        json_object *v = rd_get(rd, o, key, json_type_string);
        return v ? json_object_get_string(v) : "";
}

/* An optional fd name: NULL when absent. */
static const char *rd_fdname(json_object *o, const char *key) {
        json_object *v = NULL;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

/* ---- the daemon's store ------------------------------------------------------------- */

static int on_publish(sd_event_source *s, void *userdata) {
        (void) s;
        restart_flush(userdata);
        return 0;
}

int restart_new(struct daemon *d) {
        struct restart *rs = calloc(1, sizeof(*rs));
        if (!rs)
                return -ENOMEM;
        int r = state_store_new(&rs->store);
        if (r >= 0 && state_store_enabled(rs->store)) {
                r = sd_event_add_defer(d->event, &rs->publish, on_publish, d);
                if (r >= 0)
                        r = sd_event_source_set_enabled(rs->publish, SD_EVENT_OFF);
        }
        if (r < 0) {
                sd_event_source_unref(rs->publish);
                state_store_free(rs->store);
                free(rs);
                return r;
        }
        d->restart = rs;
        return 0;
}

void restart_free(struct daemon *d) {
        struct restart *rs = d->restart;
        if (!rs)
                return;
        sd_event_source_unref(rs->publish);
        strv_clear(rs->forget, &rs->nforget);
        free(rs->forget);
        state_store_free(rs->store);
        free(rs);
        d->restart = NULL;
}

bool restart_enabled(const struct daemon *d) {
        return d->restart && state_store_enabled(d->restart->store);
}

void restart_changed(struct daemon *d) {
        if (restart_enabled(d))
                (void) sd_event_source_set_enabled(d->restart->publish, SD_EVENT_ONESHOT);
}

/* ---- a VM's part ---------------------------------------------------------------------- */

int restart_vm_new(struct vm_object *o) {
        o->restart = calloc(1, sizeof(*o->restart));
        return o->restart ? 0 : -ENOMEM;
}

void restart_vm_free(struct vm_object *o) {
        struct restart_vm *rv = o->restart;
        if (!rv)
                return;
        for (unsigned i = 0; i < rv->nbitmaps; i++)
                close(rv->bitmap_fds[i]);
        free(rv->stored);
        json_object_put(rv->pending);
        json_object_put(rv->current);
        strv_clear(rv->forget, &rv->nforget);
        free(rv->forget);
        free(rv);
        o->restart = NULL;
}

/* Worker: `name` is to leave the store once a state without it is published. */
static void forget_later(struct vm_object *o, const char *name) {
        struct restart_vm *rv = o->restart;
        pthread_mutex_lock(&o->snap_lock);
        int r = strv_push(&rv->forget, &rv->nforget, &rv->forget_cap, name);
        pthread_mutex_unlock(&o->snap_lock);
        if (r < 0) /* the store keeps one fd too many until the service stops; nothing refers to it */
                daemon_log(LOG_WARNING, o, NULL, "restart: cannot remember to remove %s from the fd store", name);
}

void restart_bitmap_added(struct vm_object *o, int fd) {
        struct restart_vm *rv = o->restart;
        if (!restart_enabled(o->daemon) || rv->nbitmaps >= VHM_LOGGING_MAX_BITMAPS) {
                close(fd);
                return;
        }
        rv->bitmap_fds[rv->nbitmaps++] = fd;
}

/* ---- capture (worker) ------------------------------------------------------------------ */

struct capture {
        struct vm_object *o;
        json_object *fds;  /* name: kind */
        json_object *ofds; /* the same for fds a successor can do without (connections) */
        bool failed;
};

/*
 * The entry keeping fd (of stat st) as base: the same file, held as that fd
 * (or taken back on start, -1).  A base may have several (the VM's logs).
 */
static ssize_t stored_find(const struct restart_vm *rv, const char *base, int fd, const struct stat *st) {
        for (size_t i = 0; i < rv->nstored; i++) {
                const struct stored_fd *e = &rv->stored[i];
                if (strcmp(e->base, base) == 0 && (e->fd == fd || e->fd == -1) && e->dev == st->st_dev &&
                    e->ino == st->st_ino)
                        return (ssize_t) i;
        }
        return -1;
}

static struct stored_fd *stored_append(struct restart_vm *rv) {
        if (rv->nstored == rv->stored_cap) {
                size_t c = rv->stored_cap ? 2 * rv->stored_cap : 32;
                struct stored_fd *v = realloc(rv->stored, c * sizeof(*v));
                if (!v)
                        return NULL;
                rv->stored = v;
                rv->stored_cap = c;
        }
        return &rv->stored[rv->nstored++];
}

/*
 * Keeps fd under a new unique name (base.N) in a new entry; the entry it
 * replaces (unseen by this capture) leaves the store once a state without
 * it is published.
 */
static const char *keep_new(struct capture *c, const char *base, int fd, const struct stat *st) {
        struct vm_object *o = c->o;
        struct restart *rs = o->daemon->restart;
        struct restart_vm *rv = o->restart;
        char name[NAME_MAX_LEN];
        uint64_t id = __atomic_fetch_add(&rs->next_id, 1, __ATOMIC_RELAXED);
        int r = state_store_fd_name(name, sizeof(name), "%s.%" PRIu64, base, id);
        if (r >= 0)
                r = state_store_keep_fd(rs->store, name, fd);
        if (r < 0) {
                daemon_log(LOG_WARNING, o, NULL, "restart: cannot keep %s in the fd store: %s", base, strerror(-r));
                c->failed = true;
                return NULL;
        }
        struct stored_fd *e = stored_append(rv);
        if (!e) {
                (void) state_store_forget_fd(rs->store, name);
                c->failed = true;
                return NULL;
        }
        snprintf(e->base, sizeof(e->base), "%s", base);
        snprintf(e->name, sizeof(e->name), "%s", name);
        e->fd = fd;
        e->dev = st->st_dev;
        e->ino = st->st_ino;
        e->seen = true;
        return e->name;
}

/*
 * The stored name of the object's fd `fd` known as `base`, keeping it first
 * when it is new; NULL on failure.  optional: a successor can do without it
 * (a back-end connection: the device connects again).
 */
static const char *capture_fd(struct capture *c, const char *base, int fd, const char *kind, bool optional) {
        struct restart_vm *rv = c->o->restart;
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0)
                return NULL;
        /* fd -1: taken back on start; the object holds a duplicate of it now. */
        ssize_t i = stored_find(rv, base, fd, &st);
        const char *name = NULL;
        if (i >= 0) {
                rv->stored[i].fd = fd;
                rv->stored[i].seen = true;
                name = rv->stored[i].name;
        } else
                name = keep_new(c, base, fd, &st);
        if (name && add(optional ? c->ofds : c->fds, name, json_object_new_string(kind)) < 0)
                c->failed = true;
        return name;
}

static int add_fd(struct capture *c, json_object *o, const char *key, const char *base, int fd, const char *kind) {
        const char *name = capture_fd(c, base, fd, kind, false);
        return name ? add(o, key, json_object_new_string(name)) : 0;
}

static int add_optional_fd(struct capture *c, json_object *o, const char *key, const char *base, int fd,
                           const char *kind) {
        const char *name = capture_fd(c, base, fd, kind, true);
        return name ? add(o, key, json_object_new_string(name)) : 0;
}

static const char *memory_kind(int fd) {
        int seals = fcntl(fd, F_GET_SEALS);
        return seals >= 0 && (seals & F_SEAL_SHRINK) ? STATE_STORE_KIND_MEMFD : STATE_STORE_KIND_FILE;
}

static json_object *capture_regions(struct capture *c) {
        struct vm_object *o = c->o;
        json_object *a = json_object_new_array();
        for (unsigned i = 0; a && i < vhm_vm_region_count(o->vm); i++) {
                const struct vhm_region *reg = vhm_vm_region(o->vm, i);
                char base[NAME_MAX_LEN];
                json_object *j = json_object_new_object();
                int r = j ? state_store_fd_name(base, sizeof(base), "vm.%s.mem.%u", o->name, i) : -ENOMEM;
                if (r >= 0)
                        r = add_hex(j, "gpa", reg->guest_phys_addr);
                if (r >= 0)
                        r = add_hex(j, "size", reg->size);
                if (r >= 0)
                        r = add_hex(j, "offset", reg->offset);
                /* The back-ends translate ring addresses by it: our successor maps elsewhere and must say the same. */
                if (r >= 0)
                        r = add_hex(j, "uaddr", reg->uaddr);
                if (r >= 0)
                        r = add_fd(c, j, "fd", base, reg->fd, memory_kind(reg->fd));
                if (r < 0 || push(a, j) < 0) {
                        json_object_put(r < 0 ? j : NULL);
                        c->failed = true;
                }
        }
        return a;
}

static json_object *capture_config(const struct device_object *d, const struct vhm_device_config *cfg) {
        json_object *j = json_object_new_object();
        json_object *uids = json_object_new_array();
        json_object *mac = json_object_new_array();
        int r = j && uids && mac ? 0 : -ENOMEM;
        for (unsigned i = 0; r >= 0 && i < cfg->n_allowed_uids; i++)
                r = push(uids, json_object_new_int64(cfg->allowed_uids[i]));
        for (unsigned i = 0; r >= 0 && i < 6; i++)
                r = push(mac, json_object_new_int(cfg->mac[i]));
        if (r >= 0)
                r = add(j, "uids", uids);
        else
                json_object_put(uids);
        if (r >= 0)
                r = add(j, "mac", mac);
        else
                json_object_put(mac);
        if (r >= 0)
                r = add(j, "socket", json_object_new_string(d->socket));
        if (r >= 0)
                r = add(j, "server", json_object_new_boolean(cfg->server));
        if (r >= 0)
                r = add(j, "timeout_ms", json_object_new_int64(cfg->timeout_ms));
        if (r >= 0)
                r = add_hex(j, "features", cfg->features);
        if (r >= 0)
                r = add(j, "queue_pairs", json_object_new_int(cfg->queue_pairs));
        if (r >= 0)
                r = add(j, "mtu", json_object_new_int(cfg->mtu));
        if (r >= 0)
                r = add(j, "mode", json_object_new_int64(cfg->listen.mode));
        if (r >= 0)
                r = add(j, "gid",
                        json_object_new_int64(cfg->listen.gid == (gid_t) -1 ? -1 : (int64_t) cfg->listen.gid));
        if (r >= 0)
                r = add(j, "incoming", json_object_new_boolean(cfg->incoming));
        if (r >= 0)
                r = add(j, "type", json_object_new_int(cfg->type));
        if (r < 0) {
                json_object_put(j);
                return NULL;
        }
        return j;
}

static json_object *capture_queues(struct capture *c, const struct device_object *d) {
        json_object *a = json_object_new_array();
        for (unsigned q = 0; a && q < 2 * vhm_device_queue_pairs(d->dev); q++) {
                struct vhm_queue_spec s;
                char kick[NAME_MAX_LEN], call[NAME_MAX_LEN];
                json_object *j = json_object_new_object();
                int r = j ? vhm_device_get_queue(d->dev, q, &s) : -ENOMEM;
                if (r >= 0)
                        r = state_store_fd_name(kick, sizeof(kick), "vm.%s.dev.%u.q.%u.kick", c->o->name, d->sid, q);
                if (r >= 0)
                        r = state_store_fd_name(call, sizeof(call), "vm.%s.dev.%u.q.%u.call", c->o->name, d->sid, q);
                if (r >= 0)
                        r = add(j, "size", json_object_new_int(s.size));
                if (r >= 0)
                        r = add_hex(j, "desc", s.desc_gpa);
                if (r >= 0)
                        r = add_hex(j, "avail", s.avail_gpa);
                if (r >= 0)
                        r = add_hex(j, "used", s.used_gpa);
                if (r >= 0)
                        r = add_fd(c, j, "kick", kick, s.kick_fd, STATE_STORE_KIND_EVENTFD);
                if (r >= 0)
                        r = add_fd(c, j, "call", call, s.call_fd, STATE_STORE_KIND_EVENTFD);
                if (r < 0 || push(a, j) < 0) {
                        json_object_put(r < 0 ? j : NULL);
                        c->failed = true;
                }
        }
        return a;
}

/* The record and the connection's fds, when the device is connected in a state a successor can adopt. */
static int capture_connection(struct capture *c, const struct device_object *d, json_object *j) {
        struct restart_device_record rec;
        json_object *rj = NULL;
        if (restart_record_from_device(d->dev, &rec) < 0)
                return 0; /* disconnected or failed: a successor connects again */
        struct vhu_conn_negotiated n;
        struct vhu_conn *conn = vhm_device_conn(d->dev);
        vhu_conn_get_negotiated(conn, &n);
        char base[NAME_MAX_LEN];
        int r = restart_record_to_json(&rec, &rj);
        if (r >= 0)
                r = add(j, "record", rj);
        if (r >= 0)
                r = state_store_fd_name(base, sizeof(base), "vm.%s.dev.%u.conn", c->o->name, d->sid);
        if (r >= 0)
                r = add_optional_fd(c, j, "conn", base, vhu_conn_fd(conn), STATE_STORE_KIND_UNIX);
        if (r >= 0 && n.channel_fd >= 0 &&
            (r = state_store_fd_name(base, sizeof(base), "vm.%s.dev.%u.channel", c->o->name, d->sid)) >= 0)
                r = add_optional_fd(c, j, "channel", base, n.channel_fd, STATE_STORE_KIND_UNIX);
        return r;
}

static json_object *capture_device(struct capture *c, const struct device_object *d) {
        json_object *j = json_object_new_object();
        json_object *cfg = capture_config(d, vhm_device_get_config(d->dev));
        int r = j && cfg ? add(j, "config", cfg) : -ENOMEM;
        if (r < 0)
                json_object_put(cfg);
        if (r >= 0)
                r = add(j, "sid", json_object_new_int64(d->sid));
        if (r >= 0)
                r = add(j, "log_switch_locked",
                        json_object_new_boolean(vhm_logging_log_switch_locked(c->o->logging, d->dev)));
        if (r >= 0)
                r = add(j, "queues", capture_queues(c, d));
        if (r >= 0)
                r = capture_connection(c, d, j);
        char base[NAME_MAX_LEN];
        int lfd = vhm_device_listen_fd(d->dev);
        if (r >= 0 && lfd >= 0 &&
            (r = state_store_fd_name(base, sizeof(base), "vm.%s.dev.%u.listen", c->o->name, d->sid)) >= 0)
                r = add_optional_fd(c, j, "listen", base, lfd, STATE_STORE_KIND_UNIX);
        if (r < 0) {
                json_object_put(j);
                c->failed = true;
                return NULL;
        }
        return j;
}

static json_object *capture_devices(struct capture *c) {
        struct vm_object *o = c->o;
        json_object *a = json_object_new_array();
        for (unsigned i = 0; a && i < o->nrunning; i++) {
                const struct device_object *d = o->running[i];
                /* A device still waiting for its queues is not there yet: its caller adds it again. */
                if (!d->dev || d->worker_configuring)
                        continue;
                if (push(a, capture_device(c, d)) < 0)
                        c->failed = true;
        }
        return a;
}

/* The VMM bitmaps the logging still reads; the rest (logging start clears them) closed. */
static json_object *capture_bitmaps(struct capture *c) {
        struct vm_object *o = c->o;
        struct restart_vm *rv = o->restart;
        unsigned live = vhm_logging_bitmap_sources(o->logging);
        while (rv->nbitmaps > live)
                close(rv->bitmap_fds[--rv->nbitmaps]);
        json_object *a = json_object_new_array();
        for (unsigned i = 0; a && i < rv->nbitmaps; i++) {
                char base[NAME_MAX_LEN];
                const char *name = NULL;
                if (state_store_fd_name(base, sizeof(base), "vm.%s.bitmap.%u", o->name, i) >= 0)
                        name = capture_fd(c, base, rv->bitmap_fds[i], STATE_STORE_KIND_MEMFD, false);
                if (!name || push(a, json_object_new_string(name)) < 0)
                        c->failed = true;
        }
        return a;
}

/* The pages harvested and not yet sent: their memfd, so that a restart keeps them. */
static int capture_migration_bitmap(struct capture *c, json_object *log) {
        struct vm_object *o = c->o;
        int fd = vhm_logging_bitmap_fd(o->logging);
        char base[NAME_MAX_LEN];
        if (fd < 0)
                return 0;
        int r = state_store_fd_name(base, sizeof(base), "vm.%s.dirty", o->name);
        if (r >= 0)
                r = add_hex(log, "bitmap_pages", vhm_bitmap_npages(vhm_logging_bitmap(o->logging)));
        if (r >= 0)
                r = add_fd(c, log, "bitmap", base, fd, STATE_STORE_KIND_MEMFD);
        return r;
}

/* Logs a device may still write, harvested until every device takes the current one: kept as the log is. */
static json_object *capture_retired(struct capture *c, const char *base) {
        int fds[VHM_LOGGING_MAX_KEPT];
        unsigned n = vhm_logging_retired_fds(c->o->logging, fds, VHM_LOGGING_MAX_KEPT);
        json_object *a = json_object_new_array();
        for (unsigned i = 0; a && i < n && i < VHM_LOGGING_MAX_KEPT; i++) {
                const char *name = capture_fd(c, base, fds[i], STATE_STORE_KIND_MEMFD, false);
                if (!name || push(a, json_object_new_string(name)) < 0)
                        c->failed = true;
        }
        return a;
}

static int capture_logging(struct capture *c, json_object *w) {
        struct vm_object *o = c->o;
        bool on = vhm_logging_active(o->logging) && vhm_logging_log_fd(o->logging) >= 0;
        int r = add(w, "logging", json_object_new_boolean(on));
        if (r >= 0)
                r = add(w, "pages_lost", json_object_new_boolean(vhm_logging_holds_pages(o->logging)));
        if (r >= 0)
                r = add(w, "bitmaps", capture_bitmaps(c));
        if (r < 0 || !on)
                return r;
        json_object *log = json_object_new_object();
        char base[NAME_MAX_LEN];
        r = log ? state_store_fd_name(base, sizeof(base), "vm.%s.log", o->name) : -ENOMEM;
        if (r >= 0)
                r = add_hex(log, "size", vhm_logging_log_size(o->logging));
        if (r >= 0)
                r = add_fd(c, log, "fd", base, vhm_logging_log_fd(o->logging), STATE_STORE_KIND_MEMFD);
        if (r >= 0)
                r = add(log, "retired", capture_retired(c, base));
        if (r >= 0)
                r = capture_migration_bitmap(c, log);
        if (r >= 0)
                return add(w, "log", log);
        json_object_put(log);
        return r;
}

static json_object *capture_vm(struct capture *c) {
        struct vm_object *o = c->o;
        json_object *w = json_object_new_object();
        c->fds = json_object_new_object();
        c->ofds = json_object_new_object();
        int r = w && c->fds && c->ofds ? add_hex(w, "gpa_limit", vhm_vm_gpa_limit(o->vm)) : -ENOMEM;
        if (r >= 0)
                r = add(w, "regions", capture_regions(c));
        if (r >= 0)
                r = capture_logging(c, w);
        if (r >= 0)
                r = add(w, "devices", capture_devices(c));
        if (r >= 0)
                r = add(w, "fds", json_object_get(c->fds));
        if (r >= 0)
                r = add(w, "optional_fds", json_object_get(c->ofds));
        json_object_put(c->fds);
        json_object_put(c->ofds);
        if (r < 0) {
                json_object_put(w);
                return NULL;
        }
        return w;
}

/* Fds the VM no longer has leave the store once a state without them is published. */
static void drop_unseen(struct vm_object *o) {
        struct restart_vm *rv = o->restart;
        size_t kept = 0;
        for (size_t i = 0; i < rv->nstored; i++) {
                if (!rv->stored[i].seen) {
                        forget_later(o, rv->stored[i].name);
                        continue;
                }
                rv->stored[kept++] = rv->stored[i];
        }
        rv->nstored = kept;
}

/* The fd kept under base unless it is already: for a write-ahead, which replaces nothing yet. */
static void keep_ahead_fd(struct capture *c, const char *kind, int fd) {
        struct restart_vm *rv = c->o->restart;
        char base[NAME_MAX_LEN];
        struct stat st;
        if (fd < 0)
                return;
        if (state_store_fd_name(base, sizeof(base), "vm.%s.%s", c->o->name, kind) < 0 || fstat(fd, &st) < 0) {
                c->failed = true;
                return;
        }
        if (stored_find(rv, base, fd, &st) < 0)
                (void) keep_new(c, base, fd, &st);
}

/*
 * Worker, inside a job: a log about to be handed to the devices and the
 * migration bitmap (vhm_logging_set_keep_ahead) go into the store before
 * any back-end is told of them.  No state names them until the job's
 * capture: a successor finds them by name (vm.NAME.log.N, vm.NAME.dirty.N)
 * and harvests them with the log the state names.
 */
static int keep_ahead(void *userdata, int log_fd, int bitmap_fd) {
        struct capture c = { .o = userdata };
        if (!restart_enabled(c.o->daemon))
                return 0;
        keep_ahead_fd(&c, "log", log_fd);
        keep_ahead_fd(&c, "dirty", bitmap_fd);
        return c.failed ? -EIO : 0;
}

/* The current log's inode, 0 when not logging. */
static ino_t log_inode(const struct vm_object *o) {
        struct stat st;
        int fd = vhm_logging_log_fd(o->logging);
        return fd >= 0 && fstat(fd, &st) == 0 ? st.st_ino : 0;
}

/*
 * Test builds only (meson -Dtests=true): VHOSTMIGD_TEST_FAULT=log-replaced
 * kills the process at the first capture after a job replaced a VM's log
 * (a double-buffered harvest, a resize), the window a write-ahead must
 * cover: the back-ends write the new log, no state names it yet.
 */
static void fault_point(const struct vm_object *o) {
#if VHOSTMIG_FAULT_POINTS
        const char *f = getenv("VHOSTMIGD_TEST_FAULT");
        ino_t ino = f && strcmp(f, "log-replaced") == 0 ? log_inode(o) : 0;
        if (ino && o->restart->log_ino && ino != o->restart->log_ino) {
                daemon_log(LOG_WARNING, o, NULL, "restart: fault point log-replaced: killed before the capture");
                raise(SIGKILL);
        }
#else
        (void) o;
#endif
}

void restart_capture(struct vm_object *o) {
        struct restart_vm *rv = o->restart;
        if (!restart_enabled(o->daemon) || !o->vm || !o->logging)
                return;
        fault_point(o);
        rv->log_ino = log_inode(o);
        /* Before the first resize or switched harvest: only a job that turned logging on makes either. */
        vhm_logging_set_keep_ahead(o->logging, keep_ahead, o);
        for (size_t i = 0; i < rv->nstored; i++)
                rv->stored[i].seen = false;
        struct capture c = { .o = o };
        json_object *w = capture_vm(&c);
        if (!w || c.failed) {
                /*
                 * An fd not kept (the store refused it, no memory): the state
                 * published stays, naming what is stored; the next job tries again.
                 */
                json_object_put(w);
                return;
        }
        drop_unseen(o);
        uint64_t h = fnv(json_object_to_json_string_ext(w, JSON_C_TO_STRING_PLAIN));
        pthread_mutex_lock(&o->snap_lock);
        bool changed = h != rv->last_hash || rv->nforget > 0;
        if (changed) {
                json_object_put(rv->pending);
                rv->pending = w;
                w = NULL;
        }
        pthread_mutex_unlock(&o->snap_lock);
        json_object_put(w);
        if (changed)
                rv->last_hash = h;
}

void restart_vm_released(struct vm_object *o) {
        struct restart_vm *rv = o->restart;
        for (size_t i = 0; i < rv->nstored; i++)
                forget_later(o, rv->stored[i].name);
        rv->nstored = 0;
        while (rv->nbitmaps > 0)
                close(rv->bitmap_fds[--rv->nbitmaps]);
}

/* ---- publishing (loop) --------------------------------------------------------------------- */

static void take_forgets(struct restart *rs, struct vm_object *o) {
        struct restart_vm *rv = o->restart;
        for (size_t i = 0; i < rv->nforget; i++)
                if (strv_push(&rs->forget, &rs->nforget, &rs->forget_cap, rv->forget[i]) < 0)
                        daemon_log(LOG_WARNING, o, NULL, "restart: cannot remember to remove %s from the fd store",
                                   rv->forget[i]);
        strv_clear(rv->forget, &rv->nforget);
}

void restart_vm_gone(struct vm_object *o) {
        if (!restart_enabled(o->daemon) || !o->restart)
                return;
        take_forgets(o->daemon->restart, o);
        restart_changed(o->daemon);
}

static json_object *loop_devices(const struct vm_object *o) {
        json_object *a = json_object_new_array();
        for (unsigned i = 0; a && i < o->ndevices; i++) {
                const struct device_object *d = o->devices[i];
                json_object *j = json_object_new_object();
                int r = j ? add(j, "sid", json_object_new_int64(d->sid)) : -ENOMEM;
                if (r >= 0)
                        r = add(j, "number", json_object_new_int64(d->number));
                if (r >= 0)
                        r = add_hex(j, "created_usec", d->loop.created_usec);
                if (r < 0 || push(a, j) < 0) {
                        json_object_put(r < 0 ? j : NULL);
                        json_object_put(a);
                        return NULL;
                }
        }
        return a;
}

static json_object *loop_vm(struct vm_object *o) {
        struct restart_vm *rv = o->restart;
        pthread_mutex_lock(&o->snap_lock);
        char role[16];
        snprintf(role, sizeof(role), "%s", o->migration.role);
        pthread_mutex_unlock(&o->snap_lock);
        json_object *j = json_object_new_object();
        int r = j ? add(j, "name", json_object_new_string(o->name)) : -ENOMEM;
        if (r >= 0)
                r = add(j, "libvirt_domain", json_object_new_string(o->loop.libvirt_domain));
        if (r >= 0)
                r = add_hex(j, "created_usec", o->loop.created_usec);
        if (r >= 0)
                r = add_hex(j, "state_change_usec", o->loop.state_change_usec);
        if (r >= 0)
                r = add(j, "next_device_number", json_object_new_int64(o->next_device_number));
        if (r >= 0)
                r = add(j, "next_sid", json_object_new_int64(rv->next_sid));
        if (r >= 0)
                r = add(j, "migrating", json_object_new_boolean(o->migrating));
        if (r >= 0)
                r = add(j, "role", json_object_new_string(role));
        if (r >= 0)
                r = add(j, "devices", loop_devices(o));
        if (r >= 0)
                r = add(j, "w", json_object_get(rv->current));
        if (r < 0) {
                json_object_put(j);
                return NULL;
        }
        return j;
}

static int merge_fds(json_object *into, json_object *w, const char *key) {
        json_object *fds = NULL;
        if (!json_object_object_get_ex(w, key, &fds))
                return 0;
        json_object_object_foreach(fds, name, kind) {
                if (add(into, name, json_object_get(kind)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

static json_object *compose(struct daemon *d) {
        struct restart *rs = d->restart;
        json_object *body = json_object_new_object();
        json_object *vms = json_object_new_array();
        json_object *fds = json_object_new_object();
        json_object *ofds = json_object_new_object();
        int r = body && vms && fds && ofds ? 0 : -ENOMEM;
        for (struct vm_object *o = d->vms; r >= 0 && o; o = o->next) {
                struct restart_vm *rv = o->restart;
                pthread_mutex_lock(&o->snap_lock);
                if (rv->pending) {
                        json_object_put(rv->current);
                        rv->current = rv->pending;
                        rv->pending = NULL;
                }
                take_forgets(rs, o);
                pthread_mutex_unlock(&o->snap_lock);
                if (!rv->current)
                        continue; /* its worker has not captured it yet */
                r = push(vms, loop_vm(o));
                if (r >= 0)
                        r = merge_fds(fds, rv->current, "fds");
                if (r >= 0)
                        r = merge_fds(ofds, rv->current, "optional_fds");
        }
        if (r >= 0)
                r = add_hex(body, "next_id", __atomic_load_n(&rs->next_id, __ATOMIC_RELAXED));
        if (r >= 0)
                r = add(body, "vms", vms);
        else
                json_object_put(vms);
        if (r >= 0)
                r = add(body, "fds", fds);
        else
                json_object_put(fds);
        if (r >= 0)
                r = add(body, "optional_fds", ofds);
        else
                json_object_put(ofds);
        if (r < 0) {
                json_object_put(body);
                return NULL;
        }
        return body;
}

void restart_flush(struct daemon *d) {
        struct restart *rs = d->restart;
        if (!restart_enabled(d))
                return;
        (void) sd_event_source_set_enabled(rs->publish, SD_EVENT_OFF);
        json_object *body = compose(d);
        int r = body ? state_store_publish(rs->store, body) : -ENOMEM;
        json_object_put(body);
        if (r < 0) {
                /* The previous state stays, naming fds still stored: the names waiting go next time. */
                daemon_log(LOG_WARNING, NULL, NULL, "restart: cannot publish the state: %s", strerror(-r));
                return;
        }
        for (size_t i = 0; i < rs->nforget; i++)
                (void) state_store_forget_fd(rs->store, rs->forget[i]);
        strv_clear(rs->forget, &rs->nforget);
}

/* ---- restoring (loop, on start) ---------------------------------------------------------------- */

struct restoring {
        struct daemon *d;
        struct state_restored *st;
        struct rd rd;
        /* The fds the VM being restored took, as stored: its capture goes on from them. */
        struct restart_vm taken;
};

/* fd, taken from the store as `name`, noted as stored there: the first capture finds it. */
static int note_taken(struct restoring *x, int fd, const char *name) {
        struct stat st;
        struct stored_fd *e = fstat(fd, &st) == 0 ? stored_append(&x->taken) : NULL;
        if (!e)
                return fd; /* not known as stored: the next capture keeps it again, under a new name */
        *e = (struct stored_fd){ .fd = -1, .dev = st.st_dev, .ino = st.st_ino };
        snprintf(e->name, sizeof(e->name), "%s", name);
        /* The name without its unique number is what the capture knows it as. */
        snprintf(e->base, sizeof(e->base), "%s", name);
        char *dot = strrchr(e->base, '.');
        if (dot)
                *dot = '\0';
        return fd;
}

/* A VM's logging as the previous process kept it. */
struct restored_logs {
        bool on;
        struct vhm_logging_kept k;
        /* The log handed to the devices (one of k's) and its size; uncertain: more than one log kept. */
        int dev_log_fd;
        uint64_t dev_log_size;
        bool uncertain;
};

/* The fd stored as `name` (NULL: none): ours now, or -1. */
static int take(struct restoring *x, const char *name) {
        if (!name)
                return -1;
        int fd = state_restored_take_fd(x->st, name);
        return fd < 0 ? -1 : note_taken(x, fd, name);
}

/* Any fd stored as the VM's `kind` followed by a number only (kept ahead of the state): ours now, or -1. */
static int take_numbered(struct restoring *x, const char *vm, const char *kind) {
        char prefix[NAME_MAX_LEN], name[NAME_MAX_LEN];
        if (state_store_fd_name(prefix, sizeof(prefix), "vm.%s.%s.", vm, kind) < 0)
                return -1;
        int fd = state_restored_take_numbered(x->st, prefix, name, sizeof(name));
        return fd < 0 ? -1 : note_taken(x, fd, name);
}

static void close_fd(int fd) {
        if (fd >= 0)
                close(fd);
}

static int restore_regions(struct restoring *x, json_object *w, struct vhm_vm *vm) {
        json_object *regions = rd_get(&x->rd, w, "regions", json_type_array);
        int r = vhm_vm_set_gpa_limit(vm, rd_hex(&x->rd, w, "gpa_limit"));
        for (size_t i = 0; !x->rd.why[0] && r >= 0 && i < json_object_array_length(regions); i++) {
                json_object *j = json_object_array_get_idx(regions, i);
                struct vhm_region_spec s = {
                        .guest_phys_addr = rd_hex(&x->rd, j, "gpa"),
                        .size = rd_hex(&x->rd, j, "size"),
                        .offset = rd_hex(&x->rd, j, "offset"),
                        .uaddr = rd_hex(&x->rd, j, "uaddr"),
                };
                s.fd = take(x, rd_str(&x->rd, j, "fd"));
                if (x->rd.why[0])
                        break;
                r = vhm_vm_add_region(vm, &s);
                close_fd(s.fd);
        }
        if (r < 0 && !x->rd.why[0])
                snprintf(x->rd.why, sizeof(x->rd.why), "guest memory: %s", vhm_vm_error(vm));
        return x->rd.why[0] ? -EINVAL : 0;
}

static void restore_config(struct rd *rd, json_object *c, struct vhm_device_config *cfg, uid_t uids[],
                           unsigned max_uids) {
        json_object *u = rd_get(rd, c, "uids", json_type_array);
        json_object *mac = rd_get(rd, c, "mac", json_type_array);
        *cfg = (struct vhm_device_config){
                .socket = rd_str(rd, c, "socket"),
                .server = rd_bool(rd, c, "server"),
                .timeout_ms = rd_uint(rd, c, "timeout_ms", 3600000),
                .features = rd_hex(rd, c, "features"),
                .queue_pairs = rd_uint(rd, c, "queue_pairs", VHM_DEVICE_MAX_QUEUE_PAIRS),
                .mtu = (uint16_t) rd_uint(rd, c, "mtu", UINT16_MAX),
                .incoming = rd_bool(rd, c, "incoming"),
                .type = (enum vhm_device_type) rd_uint(rd, c, "type", VHM_DEVICE_TYPE_MAX - 1),
                .listen = { .mode = (mode_t) rd_uint(rd, c, "mode", 07777) },
                .allowed_uids = uids,
        };
        json_object *gid = rd_get(rd, c, "gid", json_type_int);
        cfg->listen.gid = gid && json_object_get_int64(gid) >= 0 ? (gid_t) json_object_get_int64(gid) : (gid_t) -1;
        for (size_t i = 0; u && i < json_object_array_length(u) && i < max_uids; i++)
                uids[cfg->n_allowed_uids++] = (uid_t) json_object_get_int64(json_object_array_get_idx(u, i));
        for (size_t i = 0; mac && i < 6 && i < json_object_array_length(mac); i++)
                cfg->mac[i] = (uint8_t) json_object_get_int(json_object_array_get_idx(mac, i));
}

static int restore_queues(struct restoring *x, json_object *dj, struct vhm_device *dev) {
        json_object *queues = rd_get(&x->rd, dj, "queues", json_type_array);
        int r = 0;
        for (size_t q = 0; !x->rd.why[0] && r >= 0 && q < json_object_array_length(queues); q++) {
                json_object *j = json_object_array_get_idx(queues, q);
                struct vhm_queue_spec s = {
                        .size = rd_uint(&x->rd, j, "size", 32768),
                        .desc_gpa = rd_hex(&x->rd, j, "desc"),
                        .avail_gpa = rd_hex(&x->rd, j, "avail"),
                        .used_gpa = rd_hex(&x->rd, j, "used"),
                };
                s.kick_fd = take(x, rd_fdname(j, "kick"));
                s.call_fd = take(x, rd_fdname(j, "call"));
                r = x->rd.why[0] ? -EINVAL : vhm_device_set_queue(dev, (unsigned) q, &s);
                close_fd(s.kick_fd);
                close_fd(s.call_fd);
        }
        if (r < 0 && !x->rd.why[0])
                snprintf(x->rd.why, sizeof(x->rd.why), "queues: %s", vhm_device_error(dev));
        return x->rd.why[0] ? -EINVAL : 0;
}

/*
 * The connection taken over as it was: not a request.  A connection that
 * does not fit its record is closed (the back-end sees it end) and the device
 * stays disconnected: the monitor connects it again.
 */
static void adopt_connection(struct restoring *x, struct vm_object *o, struct device_object *d, json_object *dj,
                             const struct restored_logs *logs) {
        int vm_log_fd = logs->dev_log_fd;
        uint64_t log_size = logs->dev_log_size;
        json_object *rj = NULL;
        int conn_fd = take(x, rd_fdname(dj, "conn"));
        int channel_fd = take(x, rd_fdname(dj, "channel"));
        int listen_fd = take(x, rd_fdname(dj, "listen"));
        struct restart_device_record rec;
        char why[256] = "";
        int r = json_object_object_get_ex(dj, "record", &rj) && conn_fd >= 0
                        ? restart_record_from_json(rj, &rec, why, sizeof(why))
                        : -ENOTCONN;
        if (r == -ENOTCONN) {
                close_fd(conn_fd);
                close_fd(channel_fd);
                /* Disconnected at the capture: a back-end connecting meanwhile waits in the backlog. */
                if (listen_fd >= 0 && vhm_device_adopt_listener(d->dev, listen_fd) < 0)
                        daemon_log(LOG_WARNING, o, d->socket, "restart: the listening socket cannot be taken over: %s",
                                   vhm_device_error(d->dev));
                return;
        }
        struct vhu_conn *conn = NULL;
        /* More than one log kept: which one the back-end writes is not known; the first harvest settles it. */
        if (r >= 0 && logs->uncertain)
                rec.saved.log_acknowledged = false;
        if (r >= 0) {
                rec.negotiated.channel_fd = channel_fd;
                channel_fd = -1;
                struct vhu_conn_options opts = { .timeout_ms = vhm_device_get_config(d->dev)->timeout_ms };
                r = vhu_conn_adopt(conn_fd, &rec.negotiated, &opts, &conn, why, sizeof(why));
                conn_fd = -1;
        }
        if (r >= 0) {
                /* The device takes a duplicate of the VM's log; the logging takes the fd itself. */
                struct vhm_device_adoption a = { .conn = conn,
                                                 .listen_fd = listen_fd,
                                                 .log_fd = vm_log_fd,
                                                 .log_size = vm_log_fd >= 0 ? log_size : 0 };
                listen_fd = -1;
                r = vhm_device_adopt(d->dev, &a, &rec.saved);
                if (r < 0)
                        snprintf(why, sizeof(why), "%s", vhm_device_error(d->dev));
        }
        close_fd(conn_fd);
        close_fd(channel_fd);
        close_fd(listen_fd);
        if (r < 0)
                daemon_log(LOG_WARNING, o, d->socket,
                           "restart: the back-end connection cannot be taken over, closed: %s", why);
}

static json_object *find_sid(json_object *devices, int64_t sid) {
        for (size_t i = 0; i < json_object_array_length(devices); i++) {
                json_object *j = json_object_array_get_idx(devices, i), *s = NULL;
                if (json_object_object_get_ex(j, "sid", &s) && json_object_get_int64(s) == sid)
                        return j;
        }
        return NULL;
}

/* One device: made as AddDevice made it, its queues set, its connection adopted. */
static int restore_device(struct restoring *x, struct vm_object *o, json_object *lj, json_object *wdevices,
                          const struct restored_logs *logs) {
        unsigned sid = rd_uint(&x->rd, lj, "sid", UINT32_MAX - 1);
        unsigned number = rd_uint(&x->rd, lj, "number", UINT32_MAX - 1);
        uint64_t created = rd_hex(&x->rd, lj, "created_usec");
        json_object *dj = x->rd.why[0] ? NULL : find_sid(wdevices, sid);
        if (!dj)
                return x->rd.why[0] ? -EINVAL : 0; /* it was still being added: its caller adds it again */
        uid_t uids[CONFIG_MAX_UIDS];
        struct vhm_device_config cfg;
        restore_config(&x->rd, rd_get(&x->rd, dj, "config", json_type_object), &cfg, uids, CONFIG_MAX_UIDS);
        if (x->rd.why[0])
                return -EINVAL;
        struct device_object *d = NULL;
        int r = device_object_restore(o, &cfg, sid, number, created, &d);
        if (r < 0) {
                snprintf(x->rd.why, sizeof(x->rd.why), "device %u: %s", number, strerror(-r));
                return r;
        }
        r = restore_queues(x, dj, d->dev);
        if (r >= 0) {
                adopt_connection(x, o, d, dj, logs);
                r = vhm_logging_add_device(o->logging, d->dev);
                if (r < 0)
                        snprintf(x->rd.why, sizeof(x->rd.why), "device %u: %s", number, vhm_logging_error(o->logging));
        }
        /* The operator's declaration (AddDevice's LogSwitchLocked); a state without it had none. */
        json_object *locked = NULL;
        if (r >= 0 && json_object_object_get_ex(dj, "log_switch_locked", &locked)) {
                d->loop.log_switch_locked = json_object_get_boolean(locked);
                (void) vhm_logging_set_log_switch_locked(o->logging, d->dev, d->loop.log_switch_locked);
        }
        device_object_restored(o, d, r >= 0);
        return r;
}

static void close_logs(struct restored_logs *l) {
        struct vhm_logging_kept *k = &l->k;
        close_fd(k->log_fd);
        close_fd(k->bitmap_fd);
        for (unsigned i = 0; i < k->nother_logs; i++)
                close_fd(k->other_logs[i]);
        for (unsigned i = 0; i < k->nother_bitmaps; i++)
                close_fd(k->other_bitmaps[i]);
        *k = (struct vhm_logging_kept){ .log_fd = -1, .bitmap_fd = -1 };
}

/* One more log or bitmap copy (fd taken) for the adoption; past the room for them, its pages are lost. */
static void add_other(struct restored_logs *l, int *fds, unsigned *n, int fd) {
        if (fd < 0)
                return;
        if (*n < VHM_LOGGING_MAX_KEPT) {
                fds[(*n)++] = fd;
                return;
        }
        close(fd);
        l->k.pages_lost = true;
}

/*
 * The devices are handed the largest log (vhm_logging_adopt_kept makes it
 * the current one); with more than one, none is known to be on it.
 */
static void choose_device_log(struct restored_logs *l) {
        struct stat st;
        l->dev_log_fd = l->k.log_fd;
        l->dev_log_size = l->k.top_gpa / (8 * VHOSTMIG_PAGE_SIZE);
        for (unsigned i = 0; i < l->k.nother_logs; i++)
                if (fstat(l->k.other_logs[i], &st) == 0 && (uint64_t) st.st_size > l->dev_log_size) {
                        l->dev_log_fd = l->k.other_logs[i];
                        l->dev_log_size = (uint64_t) st.st_size;
                }
        l->uncertain = l->k.nother_logs > 0;
}

/*
 * Every log and copy of the migration bitmap the previous process kept: those
 * the state names ("fd", "retired", "bitmap"), and those it kept ahead of a
 * state naming them (a resize's new log and moved bitmap, a double-buffered
 * harvest's next log: vm.NAME.log.N, vm.NAME.dirty.N), which some device
 * may write or which hold harvested bits.  A state without the bitmap (an
 * older daemon's) said in "pages_lost" whether harvested pages died with it.
 */
static void take_logs(struct restoring *x, const char *vm, json_object *w, struct restored_logs *l) {
        json_object *log = NULL, *retired = NULL;
        *l = (struct restored_logs){ .k = { .log_fd = -1, .bitmap_fd = -1 }, .dev_log_fd = -1 };
        l->on = rd_bool(&x->rd, w, "logging");
        if (!l->on || !json_object_object_get_ex(w, "log", &log))
                return;
        l->k.log_fd = take(x, rd_fdname(log, "fd"));
        l->k.top_gpa = rd_hex(&x->rd, log, "size") * 8 * VHOSTMIG_PAGE_SIZE;
        l->k.pages_lost = rd_bool(&x->rd, w, "pages_lost");
        bool kept = json_object_object_get_ex(log, "bitmap", NULL);
        l->k.bitmap_fd = kept ? take(x, rd_fdname(log, "bitmap")) : -1;
        l->k.bitmap_pages = kept ? rd_hex(&x->rd, log, "bitmap_pages") : 0;
        const char *missing = l->k.log_fd < 0              ? "the log is missing"
                              : kept && l->k.bitmap_fd < 0 ? "the migration bitmap is missing"
                                                           : NULL;
        if (missing && !x->rd.why[0])
                snprintf(x->rd.why, sizeof(x->rd.why), "logging: %s", missing);
        if (json_object_object_get_ex(log, "retired", &retired) && json_object_is_type(retired, json_type_array))
                for (size_t i = 0; i < json_object_array_length(retired); i++)
                        add_other(l, l->k.other_logs, &l->k.nother_logs,
                                  take(x, json_object_get_string(json_object_array_get_idx(retired, i))));
        for (int fd; (fd = take_numbered(x, vm, "log")) >= 0;)
                add_other(l, l->k.other_logs, &l->k.nother_logs, fd);
        for (int fd; (fd = take_numbered(x, vm, "dirty")) >= 0;)
                add_other(l, l->k.other_bitmaps, &l->k.nother_bitmaps, fd);
        if (!x->rd.why[0])
                choose_device_log(l);
}

/* Logging goes on where it was on (the logs taken), the VMM bitmaps added back. */
static int restore_logging(struct restoring *x, struct vm_object *o, json_object *w, struct restored_logs *l) {
        if (!l->on || x->rd.why[0])
                close_logs(l);
        else if (vhm_logging_adopt_kept(o->logging, &l->k) < 0 && !x->rd.why[0])
                snprintf(x->rd.why, sizeof(x->rd.why), "logging: %s", vhm_logging_error(o->logging));
        vhm_logging_set_keep_ahead(o->logging, keep_ahead, o);
        json_object *bitmaps = rd_get(&x->rd, w, "bitmaps", json_type_array);
        for (size_t i = 0; !x->rd.why[0] && i < json_object_array_length(bitmaps); i++) {
                int bfd = take(x, json_object_get_string(json_object_array_get_idx(bitmaps, i)));
                if (bfd < 0 || vhm_logging_add_bitmap(o->logging, bfd) < 0) {
                        snprintf(x->rd.why, sizeof(x->rd.why), "VMM bitmap %zu: %s", i,
                                 bfd < 0 ? "missing" : vhm_logging_error(o->logging));
                        close_fd(bfd);
                        break;
                }
                restart_bitmap_added(o, bfd);
        }
        return x->rd.why[0] ? -EINVAL : 0;
}

/*
 * The fds the VM's objects hold now are those taken back, still stored under
 * their names: the first capture finds them there (a name taken but no
 * longer held, a connection refused say, leaves the store with the first
 * publish).
 */
static void restore_stored(struct restoring *x, struct vm_object *o) {
        struct restart_vm *rv = o->restart;
        free(rv->stored);
        rv->stored = x->taken.stored;
        rv->nstored = x->taken.nstored;
        rv->stored_cap = x->taken.stored_cap;
        x->taken.stored = NULL;
        x->taken.nstored = x->taken.stored_cap = 0;
        for (size_t i = 0; i < rv->nstored; i++)
                rv->stored[i].seen = false;
        struct capture c = { .o = o };
        json_object *w = capture_vm(&c);
        drop_unseen(o);
        rv->pending = w;
        rv->last_hash = w ? fnv(json_object_to_json_string_ext(w, JSON_C_TO_STRING_PLAIN)) : 0;
        rv->log_ino = log_inode(o);
}

/* A migration the previous process was running ended with it. */
static void restore_migration(struct vm_object *o, json_object *vj, struct rd *rd) {
        if (!rd_bool(rd, vj, "migrating"))
                return;
        const char *role = rd_str(rd, vj, "role");
        bool destination = strcmp(role, VHOSTMIG_ROLE_DESTINATION) == 0;
        pthread_mutex_lock(&o->snap_lock);
        snprintf(o->migration.role, sizeof(o->migration.role), "%s", role);
        snprintf(o->migration.state, sizeof(o->migration.state), "%s", VHOSTMIG_MIGRATION_STATE_FAILED);
        snprintf(o->migration.error, sizeof(o->migration.error), "vhostmigd restarted during the migration");
        pthread_mutex_unlock(&o->snap_lock);
        daemon_log(LOG_WARNING, o, NULL, "restart: the %s migration under way ended with the previous process",
                   destination ? "incoming" : "outgoing");
        vm_object_after_failed_migration(o, destination);
}

static int restore_vm(struct restoring *x, json_object *vj) {
        struct daemon *d = x->d;
        const char *name = rd_str(&x->rd, vj, "name");
        json_object *w = rd_get(&x->rd, vj, "w", json_type_object);
        json_object *ldevices = rd_get(&x->rd, vj, "devices", json_type_array);
        json_object *wdevices = rd_get(&x->rd, w, "devices", json_type_array);
        struct vhm_vm *vm = NULL;
        if (x->rd.why[0])
                return -EINVAL;
        int r = vhm_vm_new(name, &vm);
        if (r < 0) {
                snprintf(x->rd.why, sizeof(x->rd.why), "VM name \"%.64s\": %s", name, strerror(-r));
                return r;
        }
        r = restore_regions(x, w, vm);
        struct vm_object *o = NULL;
        if (r >= 0 && (r = vm_object_create(d, name, rd_str(&x->rd, vj, "libvirt_domain"), vm, &o)) < 0)
                snprintf(x->rd.why, sizeof(x->rd.why), "VM %s: %s", name, strerror(-r));
        if (r < 0) {
                vhm_vm_free(vm);
                return r;
        }
        o->loop.created_usec = rd_hex(&x->rd, vj, "created_usec");
        o->loop.state_change_usec = rd_hex(&x->rd, vj, "state_change_usec");
        o->next_device_number = rd_uint(&x->rd, vj, "next_device_number", UINT32_MAX - 1);
        o->restart->next_sid = rd_uint(&x->rd, vj, "next_sid", UINT32_MAX - 1);
        struct restored_logs logs;
        take_logs(x, name, w, &logs);
        for (size_t i = 0; r >= 0 && !x->rd.why[0] && i < json_object_array_length(ldevices); i++)
                r = restore_device(x, o, json_object_array_get_idx(ldevices, i), wdevices, &logs);
        if (r >= 0 && !x->rd.why[0])
                r = restore_logging(x, o, w, &logs);
        else
                close_logs(&logs);
        if (x->rd.why[0])
                return -EINVAL;
        vm_object_restored(o);
        restore_stored(x, o);
        restore_migration(o, vj, &x->rd);
        daemon_log_event(LOG_NOTICE, VHOSTMIG_MESSAGE_VM_CREATED, o, NULL,
                         "VM restored after a restart: %u device(s), logging %s", o->ndevices,
                         o->snap.logging ? "on" : "off");
        return 0;
}

/* A state that cannot be rebuilt is let go whole: the VMs made so far as well. */
static void abandon(struct restoring *x) {
        struct daemon *d = x->d;
        daemon_log(LOG_ERR, NULL, NULL, "restart: the saved state cannot be used, starting without VMs: %s", x->rd.why);
        while (d->vms) {
                struct vm_object *o = d->vms;
                restart_vm_released(o);
                vm_object_hand_over(o);
        }
        strv_clear(d->restart->forget, &d->restart->nforget);
        state_restored_abandon(d->restart->store, x->st);
}

int restart_restore(struct daemon *d) {
        if (!restart_enabled(d))
                return 0;
        struct restoring x = { .d = d };
        char why[512];
        int r = state_store_restore(d->restart->store, &x.st, why, sizeof(why));
        if (r < 0) {
                daemon_log(LOG_ERR, NULL, NULL, "restart: the saved state is refused, starting without VMs: %s", why);
                return r == -ENOMEM ? r : 0;
        }
        if (!x.st)
                return 0;
        json_object *body = state_restored_body(x.st);
        d->restart->next_id = rd_hex(&x.rd, body, "next_id");
        json_object *vms = rd_get(&x.rd, body, "vms", json_type_array);
        /* The daemon's list is newest first, as the state: made oldest first, each put in front. */
        for (size_t i = json_object_array_length(vms); !x.rd.why[0] && i-- > 0;) {
                x.taken.nstored = 0;
                (void) restore_vm(&x, json_object_array_get_idx(vms, i));
        }
        free(x.taken.stored);
        if (x.rd.why[0]) {
                abandon(&x);
                return 0;
        }
        daemon_log(LOG_NOTICE, NULL, NULL, "restart: %u VM(s) taken over from the previous process (state %" PRIu64 ")",
                   d->nvms, state_restored_generation(x.st));
        state_restored_free(d->restart->store, x.st);
        restart_changed(d);
        return 0;
}

/* ---- SIGTERM ------------------------------------------------------------------------------- */

bool restart_keeps_vms(const struct daemon *d) {
        return restart_enabled(d) && d->vms;
}

void restart_handover(struct daemon *d) {
        for (struct vm_object *o = d->vms; o; o = o->next) {
                /* A running migration ends first (a source resumes its devices): its outcome is saved. */
                migration_cancel(o);
                worker_stop(&o->worker);
                o->worker_stopped = true;
        }
        restart_flush(d);
        while (d->vms)
                vm_object_hand_over(d->vms);
}

unsigned restart_vm_next_sid(struct vm_object *o) {
        return o->restart->next_sid++;
}

void restart_vm_changed(struct vm_object *o) {
        struct restart_vm *rv = o->restart;
        if (!restart_enabled(o->daemon) || !rv)
                return;
        pthread_mutex_lock(&o->snap_lock);
        bool changed = rv->pending || rv->nforget > 0;
        pthread_mutex_unlock(&o->snap_lock);
        if (changed)
                restart_changed(o->daemon);
}

/*
 * The store's copy of a connection would keep it open for the back-end
 * after the device drops it, and a back-end serving one connection at a
 * time would never take the next: it goes now.  The published state may
 * still name it; a successor finding it gone connects again.
 */
void restart_device_dropping_connection(struct vm_object *o, const struct device_object *d) {
        struct restart_vm *rv = o->restart;
        if (!restart_enabled(o->daemon))
                return;
        char conn[NAME_MAX_LEN], channel[NAME_MAX_LEN];
        if (state_store_fd_name(conn, sizeof(conn), "vm.%s.dev.%u.conn", o->name, d->sid) < 0 ||
            state_store_fd_name(channel, sizeof(channel), "vm.%s.dev.%u.channel", o->name, d->sid) < 0)
                return;
        size_t kept = 0;
        for (size_t i = 0; i < rv->nstored; i++) {
                struct stored_fd *e = &rv->stored[i];
                if (strcmp(e->base, conn) == 0 || strcmp(e->base, channel) == 0) {
                        (void) state_store_forget_fd(o->daemon->restart->store, e->name);
                        continue;
                }
                rv->stored[kept++] = *e;
        }
        rv->nstored = kept;
}
