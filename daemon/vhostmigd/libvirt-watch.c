/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The libvirt event watcher (libvirt-watch.h).
 *
 * Why a thread and not virEventRegisterImpl onto sd-event: libvirt's client
 * calls are synchronous.  Opening a connection, registering the event
 * callbacks and closing a dead connection are RPCs that wait for libvirtd;
 * on the sd-event loop a libvirtd that accepts but never answers would hold
 * every D-Bus call behind them.  On a thread of their own they wait alone,
 * and the loop sees only an eventfd and a short mutex.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/virterror.h>

#include "daemon/vhostmigd/libvirt-watch.h"

struct queued_event {
        struct queued_event *next;
        struct libvirt_watch_event ev;
};

enum {
        CB_LIFECYCLE,
        CB_ITERATION,
        CB_JOB_COMPLETED,
        CB_COUNT
};

struct libvirt_watch {
        /* Set by libvirt_watch_start(), read-only afterwards. */
        char *uri;
        struct libvirt_watch_options opts;
        struct libvirt_watch_callbacks cb;
        void *userdata;
        sd_event_source *source;
        int efd; /* the thread writes it when events or a state change wait */
        pthread_t thread;

        /* libvirt's thread only. */
        virConnectPtr conn;
        int callback_id[CB_COUNT];
        int timer;           /* the (re)connect timer: disabled while connected */
        unsigned retry_ms;   /* the next attempt's delay, doubled by each failure */
        bool close_callback; /* registered on conn */

        atomic_bool quit;

        pthread_mutex_t lock; /* for what follows; never held across a libvirt call */
        struct queued_event *head, **tail;
        bool state_dirty;
        struct libvirt_watch_status status;
};

/* ---- words ---------------------------------------------------------------------------- */

const char *libvirt_watch_state_name(enum libvirt_watch_state s) {
        switch (s) {
        case LIBVIRT_WATCH_DISABLED:
                return "disabled";
        case LIBVIRT_WATCH_CONNECTING:
                return "connecting";
        case LIBVIRT_WATCH_CONNECTED:
                return "connected";
        case LIBVIRT_WATCH_DISCONNECTED:
                return "disconnected";
        }
        return "unknown";
}

const char *libvirt_watch_action_name(enum libvirt_watch_action a) {
        switch (a) {
        case LIBVIRT_WATCH_ACTION_NONE:
                return "none";
        case LIBVIRT_WATCH_ACTION_CONTINUE:
                return "continue";
        case LIBVIRT_WATCH_ACTION_ANNOUNCE:
                return "announce";
        case LIBVIRT_WATCH_ACTION_RELEASE:
                return "release";
        case LIBVIRT_WATCH_ACTION_HARVEST:
                return "harvest";
        case LIBVIRT_WATCH_ACTION_DOWNTIME:
                return "downtime";
        }
        return "unknown";
}

/* clang-format off */
static const char *const event_names[] = {
        [VIR_DOMAIN_EVENT_DEFINED] = "defined",     [VIR_DOMAIN_EVENT_UNDEFINED] = "undefined",
        [VIR_DOMAIN_EVENT_STARTED] = "started",     [VIR_DOMAIN_EVENT_SUSPENDED] = "suspended",
        [VIR_DOMAIN_EVENT_RESUMED] = "resumed",     [VIR_DOMAIN_EVENT_STOPPED] = "stopped",
        [VIR_DOMAIN_EVENT_SHUTDOWN] = "shutdown",   [VIR_DOMAIN_EVENT_PMSUSPENDED] = "pmsuspended",
        [VIR_DOMAIN_EVENT_CRASHED] = "crashed",
};
/* clang-format on */

/* The details an operator needs to tell migration from the rest; others are shown as numbers. */
static const char *detail_name(int event, int detail) {
        switch (event) {
        case VIR_DOMAIN_EVENT_STARTED:
                return detail == VIR_DOMAIN_EVENT_STARTED_MIGRATED ? "migrated"
                       : detail == VIR_DOMAIN_EVENT_STARTED_BOOTED ? "booted"
                                                                   : NULL;
        case VIR_DOMAIN_EVENT_SUSPENDED:
                return detail == VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED   ? "migrated"
                       : detail == VIR_DOMAIN_EVENT_SUSPENDED_PAUSED   ? "paused"
                       : detail == VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY ? "postcopy"
                                                                       : NULL;
        case VIR_DOMAIN_EVENT_RESUMED:
                return detail == VIR_DOMAIN_EVENT_RESUMED_MIGRATED   ? "migrated"
                       : detail == VIR_DOMAIN_EVENT_RESUMED_UNPAUSED ? "unpaused"
                       : detail == VIR_DOMAIN_EVENT_RESUMED_POSTCOPY ? "postcopy"
                                                                     : NULL;
        case VIR_DOMAIN_EVENT_STOPPED:
                return detail == VIR_DOMAIN_EVENT_STOPPED_MIGRATED    ? "migrated"
                       : detail == VIR_DOMAIN_EVENT_STOPPED_FAILED    ? "failed"
                       : detail == VIR_DOMAIN_EVENT_STOPPED_DESTROYED ? "destroyed"
                       : detail == VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN  ? "shutdown"
                       : detail == VIR_DOMAIN_EVENT_STOPPED_CRASHED   ? "crashed"
                                                                      : NULL;
        default:
                return NULL;
        }
}

static void describe_lifecycle(const struct libvirt_watch_event *ev, char *buf, size_t len) {
        const char *event = ev->event >= 0 && (size_t) ev->event < sizeof(event_names) / sizeof(event_names[0])
                                    ? event_names[ev->event]
                                    : NULL;
        const char *detail = detail_name(ev->event, ev->detail);
        char e[16], d[16];
        snprintf(e, sizeof(e), "%d", ev->event);
        snprintf(d, sizeof(d), "%d", ev->detail);
        snprintf(buf, len, "lifecycle %s (%s)", event ? event : e, detail ? detail : d);
}

void libvirt_watch_event_describe(const struct libvirt_watch_event *ev, char *buf, size_t len) {
        switch (ev->kind) {
        case LIBVIRT_WATCH_EVENT_LIFECYCLE:
                describe_lifecycle(ev, buf, len);
                return;
        case LIBVIRT_WATCH_EVENT_MIGRATION_ITERATION:
                snprintf(buf, len, "migration iteration %d", ev->iteration);
                return;
        case LIBVIRT_WATCH_EVENT_JOB_COMPLETED: {
                char downtime[48] = ", downtime unknown";
                if (ev->has_downtime)
                        snprintf(downtime, sizeof(downtime), ", downtime %llu ms",
                                 (unsigned long long) ev->downtime_ms);
                snprintf(buf, len, "job completed%s%s",
                         !ev->has_success ? ""
                         : ev->success    ? ", succeeded"
                                          : ", failed",
                         downtime);
                return;
        }
        }
        snprintf(buf, len, "event %d", (int) ev->kind);
}

/* ---- what an event means ---------------------------------------------------------------- */

static enum libvirt_watch_action lifecycle_action(int event, int detail) {
        if (event == VIR_DOMAIN_EVENT_SUSPENDED && detail == VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED)
                return LIBVIRT_WATCH_ACTION_CONTINUE;
        if (event == VIR_DOMAIN_EVENT_RESUMED && detail == VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
                return LIBVIRT_WATCH_ACTION_ANNOUNCE;
        if (event == VIR_DOMAIN_EVENT_STOPPED &&
            (detail == VIR_DOMAIN_EVENT_STOPPED_MIGRATED || detail == VIR_DOMAIN_EVENT_STOPPED_FAILED))
                return LIBVIRT_WATCH_ACTION_RELEASE;
        if (event == VIR_DOMAIN_EVENT_CRASHED)
                return LIBVIRT_WATCH_ACTION_RELEASE;
        return LIBVIRT_WATCH_ACTION_NONE;
}

enum libvirt_watch_action libvirt_watch_action_for(const struct libvirt_watch_event *ev) {
        switch (ev->kind) {
        case LIBVIRT_WATCH_EVENT_LIFECYCLE:
                return lifecycle_action(ev->event, ev->detail);
        case LIBVIRT_WATCH_EVENT_MIGRATION_ITERATION:
                return LIBVIRT_WATCH_ACTION_HARVEST;
        case LIBVIRT_WATCH_EVENT_JOB_COMPLETED:
                return LIBVIRT_WATCH_ACTION_DOWNTIME;
        }
        return LIBVIRT_WATCH_ACTION_NONE;
}

/* ---- the hand-over to the loop (either thread) ---------------------------------------- */

static uint64_t realtime_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static void wake_loop(struct libvirt_watch *w) {
        uint64_t one = 1;
        /* EAGAIN: the counter is full, so the loop is woken already. */
        (void) !write(w->efd, &one, sizeof(one));
}

/* A new state and/or a new last error (NULL: the error stays). */
static void set_state(struct libvirt_watch *w, enum libvirt_watch_state state, const char *error) {
        pthread_mutex_lock(&w->lock);
        if (w->status.state != state)
                w->state_dirty = true;
        w->status.state = state;
        if (error) {
                snprintf(w->status.last_error, sizeof(w->status.last_error), "%s", error);
                w->status.last_error_usec = realtime_usec();
                w->state_dirty = true;
        }
        if (state == LIBVIRT_WATCH_CONNECTED)
                w->status.connects++;
        bool wake = w->state_dirty;
        pthread_mutex_unlock(&w->lock);
        if (wake)
                wake_loop(w);
}

static void queue_event(struct libvirt_watch *w, const struct libvirt_watch_event *ev) {
        struct queued_event *q = malloc(sizeof(*q));
        if (!q) {
                set_state(w, w->status.state, "out of memory: a libvirt event was lost");
                return;
        }
        q->next = NULL;
        q->ev = *ev;
        pthread_mutex_lock(&w->lock);
        *w->tail = q;
        w->tail = &q->next;
        pthread_mutex_unlock(&w->lock);
        wake_loop(w);
}

/* The loop's side: the state change first (a reconnection precedes its events), then the events in order. */
static int on_wakeup(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        (void) s;
        (void) revents;
        struct libvirt_watch *w = userdata;
        uint64_t n;
        (void) !read(fd, &n, sizeof(n));
        pthread_mutex_lock(&w->lock);
        struct queued_event *q = w->head;
        w->head = NULL;
        w->tail = &w->head;
        bool dirty = w->state_dirty;
        w->state_dirty = false;
        pthread_mutex_unlock(&w->lock);
        if (dirty && w->cb.state_changed)
                w->cb.state_changed(w->userdata);
        while (q) {
                struct queued_event *next = q->next;
                if (w->cb.event)
                        w->cb.event(w->userdata, &q->ev);
                free(q);
                q = next;
        }
        return 0;
}

/* ---- libvirt's callbacks (libvirt's thread, or a test's) ------------------------------- */

static void event_from_domain(virDomainPtr dom, enum libvirt_watch_event_kind kind, struct libvirt_watch_event *ev) {
        memset(ev, 0, sizeof(*ev));
        ev->kind = kind;
        const char *name = virDomainGetName(dom);
        snprintf(ev->name, sizeof(ev->name), "%s", name ? name : "");
        char uuid[VIR_UUID_STRING_BUFLEN];
        if (virDomainGetUUIDString(dom, uuid) == 0)
                snprintf(ev->uuid, sizeof(ev->uuid), "%s", uuid);
}

int libvirt_watch_on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque) {
        (void) conn;
        struct libvirt_watch_event ev;
        event_from_domain(dom, LIBVIRT_WATCH_EVENT_LIFECYCLE, &ev);
        ev.event = event;
        ev.detail = detail;
        queue_event(opaque, &ev);
        return 0;
}

void libvirt_watch_on_migration_iteration(virConnectPtr conn, virDomainPtr dom, int iteration, void *opaque) {
        (void) conn;
        struct libvirt_watch_event ev;
        event_from_domain(dom, LIBVIRT_WATCH_EVENT_MIGRATION_ITERATION, &ev);
        ev.iteration = iteration;
        queue_event(opaque, &ev);
}

void libvirt_watch_on_job_completed(virConnectPtr conn, virDomainPtr dom, virTypedParameterPtr params, int nparams,
                                    void *opaque) {
        (void) conn;
        struct libvirt_watch_event ev;
        event_from_domain(dom, LIBVIRT_WATCH_EVENT_JOB_COMPLETED, &ev);
        unsigned long long downtime;
        ev.has_downtime = virTypedParamsGetULLong(params, nparams, VIR_DOMAIN_JOB_DOWNTIME, &downtime) == 1;
        ev.downtime_ms = ev.has_downtime ? downtime : 0;
        int success;
        ev.has_success = virTypedParamsGetBoolean(params, nparams, VIR_DOMAIN_JOB_SUCCESS, &success) == 1;
        ev.success = ev.has_success && success;
        queue_event(opaque, &ev);
}

/* ---- the connection (libvirt's thread) ------------------------------------------------- */

static const char *libvirt_error(void) {
        const char *m = virGetLastErrorMessage();
        return m && *m ? m : "unknown libvirt error";
}

static void schedule_retry(struct libvirt_watch *w) {
        virEventUpdateTimeout(w->timer, (int) w->retry_ms);
        w->retry_ms = w->retry_ms * 2 > w->opts.reconnect_max_ms ? w->opts.reconnect_max_ms : w->retry_ms * 2;
}

static const char *close_reason(int reason) {
        switch (reason) {
        case VIR_CONNECT_CLOSE_REASON_EOF:
                return "libvirtd closed the connection";
        case VIR_CONNECT_CLOSE_REASON_KEEPALIVE:
                return "libvirtd stopped answering keepalives";
        case VIR_CONNECT_CLOSE_REASON_ERROR:
                return "I/O error on the connection to libvirtd";
        default:
                return "the connection to libvirtd was closed";
        }
}

/* libvirt calls it from its event loop: the connection is dropped by the retry timer, never here. */
static void on_close(virConnectPtr conn, int reason, void *opaque) {
        (void) conn;
        struct libvirt_watch *w = opaque;
        char error[768];
        snprintf(error, sizeof(error), "%s: %s", w->uri, close_reason(reason));
        set_state(w, LIBVIRT_WATCH_DISCONNECTED, error);
        w->retry_ms = w->opts.reconnect_min_ms;
        schedule_retry(w);
}

/* Closing a dead connection fails in parts; what is left to free, libvirt frees on its next loop turns. */
static void drop_connection(struct libvirt_watch *w) {
        if (!w->conn)
                return;
        for (int i = 0; i < CB_COUNT; i++)
                if (w->callback_id[i] >= 0) {
                        (void) virConnectDomainEventDeregisterAny(w->conn, w->callback_id[i]);
                        w->callback_id[i] = -1;
                }
        if (w->close_callback)
                (void) virConnectUnregisterCloseCallback(w->conn, on_close);
        w->close_callback = false;
        (void) virConnectClose(w->conn);
        w->conn = NULL;
        virResetLastError();
}

static int register_events(struct libvirt_watch *w) {
        static const int ids[CB_COUNT] = {
                [CB_LIFECYCLE] = VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                [CB_ITERATION] = VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION,
                [CB_JOB_COMPLETED] = VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
        };
        const virConnectDomainEventGenericCallback cbs[CB_COUNT] = {
                [CB_LIFECYCLE] = VIR_DOMAIN_EVENT_CALLBACK(libvirt_watch_on_lifecycle),
                [CB_ITERATION] = VIR_DOMAIN_EVENT_CALLBACK(libvirt_watch_on_migration_iteration),
                [CB_JOB_COMPLETED] = VIR_DOMAIN_EVENT_CALLBACK(libvirt_watch_on_job_completed),
        };
        for (int i = 0; i < CB_COUNT; i++) {
                w->callback_id[i] = virConnectDomainEventRegisterAny(w->conn, NULL, ids[i], cbs[i], w, NULL);
                if (w->callback_id[i] < 0)
                        return -1;
        }
        return 0;
}

/*
 * Read-only is enough to receive events, and all the watcher needs: it
 * never changes a domain.  Keepalive makes a hung libvirtd a closed
 * connection (interval x count seconds) rather than a silent one.
 */
static int open_connection(struct libvirt_watch *w, char *error, size_t len) {
        const char *step = "cannot connect";
        w->conn = virConnectOpenReadOnly(w->uri);
        if (w->conn) {
                step = "cannot turn keepalive on";
                if (virConnectSetKeepAlive(w->conn, (int) w->opts.keepalive_interval_s, w->opts.keepalive_count) == 0) {
                        step = "cannot watch the connection";
                        w->close_callback = virConnectRegisterCloseCallback(w->conn, on_close, w, NULL) == 0;
                }
                if (w->close_callback) {
                        step = "cannot register for domain events";
                        if (register_events(w) == 0)
                                return 0;
                }
        }
        snprintf(error, len, "%s: %s: %s", w->uri, step, libvirt_error());
        drop_connection(w);
        return -1;
}

static void on_timer(int timer, void *opaque) {
        struct libvirt_watch *w = opaque;
        virEventUpdateTimeout(timer, -1);
        if (atomic_load(&w->quit))
                return;
        drop_connection(w);
        set_state(w, LIBVIRT_WATCH_CONNECTING, NULL);
        char error[768];
        if (open_connection(w, error, sizeof(error)) < 0) {
                set_state(w, LIBVIRT_WATCH_DISCONNECTED, error);
                schedule_retry(w);
                return;
        }
        w->retry_ms = w->opts.reconnect_min_ms;
        set_state(w, LIBVIRT_WATCH_CONNECTED, NULL);
}

/* Turns of the loop with nothing to wait for, so that libvirt runs the frees it deferred. */
static void flush_deferred_frees(struct libvirt_watch *w) {
        for (int i = 0; i < 2; i++) {
                virEventUpdateTimeout(w->timer, 0);
                (void) virEventRunDefaultImpl();
        }
}

static void *watch_thread(void *arg) {
        struct libvirt_watch *w = arg;
        while (!atomic_load(&w->quit))
                if (virEventRunDefaultImpl() < 0) {
                        char error[256];
                        snprintf(error, sizeof(error), "libvirt's event loop failed: %s", libvirt_error());
                        set_state(w, w->status.state, error);
                        usleep(100 * 1000);
                }
        drop_connection(w);
        flush_deferred_frees(w);
        virEventRemoveTimeout(w->timer);
        return NULL;
}

/* ---- start and stop (the loop) ------------------------------------------------------- */

/* libvirt reports errors through its own calls; its default handler would print them all to stderr too. */
static void quiet_errors(void *userdata, virErrorPtr error) {
        (void) userdata;
        (void) error;
}

static pthread_once_t libvirt_once = PTHREAD_ONCE_INIT;
static int libvirt_once_result;

/* libvirt's event implementation is process-wide and must be in place before any connection. */
static void libvirt_init_once(void) {
        virSetErrorFunc(NULL, quiet_errors);
        libvirt_once_result = virInitialize() < 0 || virEventRegisterDefaultImpl() < 0 ? -EIO : 0;
}

static void watch_free(struct libvirt_watch *w) {
        if (!w)
                return;
        struct queued_event *q = w->head;
        while (q) {
                struct queued_event *next = q->next;
                free(q);
                q = next;
        }
        sd_event_source_unref(w->source);
        if (w->efd >= 0)
                close(w->efd);
        pthread_mutex_destroy(&w->lock);
        free(w->uri);
        free(w);
}

static int check_options(const struct libvirt_watch_options *o, char *error, size_t len) {
        if (!o->uri || !*o->uri) {
                snprintf(error, len, "libvirt: no URI");
                return -EINVAL;
        }
        if (o->keepalive_interval_s == 0 || o->reconnect_min_ms == 0 || o->reconnect_min_ms > o->reconnect_max_ms ||
            o->reconnect_max_ms > INT32_MAX) {
                snprintf(error, len, "libvirt: keepalive interval and reconnect delays must be positive, min <= max");
                return -EINVAL;
        }
        return 0;
}

static struct libvirt_watch *watch_new(const struct libvirt_watch_options *opts,
                                       const struct libvirt_watch_callbacks *cb, void *userdata) {
        struct libvirt_watch *w = calloc(1, sizeof(*w));
        if (!w)
                return NULL;
        w->efd = -1;
        w->timer = -1;
        pthread_mutex_init(&w->lock, NULL);
        w->uri = strdup(opts->uri);
        if (!w->uri) {
                watch_free(w);
                return NULL;
        }
        w->opts = *opts;
        w->opts.uri = w->uri;
        w->cb = *cb;
        w->userdata = userdata;
        w->tail = &w->head;
        w->retry_ms = opts->reconnect_min_ms;
        w->status.state = LIBVIRT_WATCH_CONNECTING;
        for (int i = 0; i < CB_COUNT; i++)
                w->callback_id[i] = -1;
        return w;
}

int libvirt_watch_start(sd_event *event, const struct libvirt_watch_options *opts,
                        const struct libvirt_watch_callbacks *cb, void *userdata, struct libvirt_watch **out,
                        char *error, size_t error_len) {
        int r = check_options(opts, error, error_len);
        if (r < 0)
                return r;
        pthread_once(&libvirt_once, libvirt_init_once);
        if (libvirt_once_result < 0) {
                snprintf(error, error_len, "libvirt: cannot initialize its event loop: %s", libvirt_error());
                return libvirt_once_result;
        }
        struct libvirt_watch *w = watch_new(opts, cb, userdata);
        if (!w) {
                snprintf(error, error_len, "libvirt: out of memory");
                return -ENOMEM;
        }
        const char *what = "eventfd";
        w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        r = w->efd < 0 ? -errno : 0;
        if (r >= 0) {
                what = "sd-event";
                r = sd_event_add_io(event, &w->source, w->efd, EPOLLIN, on_wakeup, w);
        }
        if (r >= 0) {
                what = "the connect timer";
                w->timer = virEventAddTimeout(0, on_timer, w, NULL);
                r = w->timer < 0 ? -EIO : 0;
        }
        if (r >= 0) {
                what = "the thread";
                r = -pthread_create(&w->thread, NULL, watch_thread, w);
                if (r < 0)
                        virEventRemoveTimeout(w->timer);
        }
        if (r < 0) {
                snprintf(error, error_len, "libvirt: cannot set up %s: %s", what, strerror(-r));
                watch_free(w);
                return r;
        }
        *out = w;
        return 0;
}

int libvirt_watch_stop(struct libvirt_watch *w, unsigned timeout_ms) {
        if (!w)
                return 0;
        atomic_store(&w->quit, true);
        /* Updating a timer interrupts libvirt's poll from any thread. */
        virEventUpdateTimeout(w->timer, 0);
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long) (timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
        }
        int r = pthread_timedjoin_np(w->thread, NULL, &deadline);
        if (r != 0) {
                /* Stuck in a call to libvirtd: it keeps the watcher; the loop no longer hears from it. */
                w->source = sd_event_source_disable_unref(w->source);
                pthread_detach(w->thread);
                return -r;
        }
        watch_free(w);
        return 0;
}

void libvirt_watch_status(struct libvirt_watch *w, struct libvirt_watch_status *out) {
        pthread_mutex_lock(&w->lock);
        *out = w->status;
        pthread_mutex_unlock(&w->lock);
}
