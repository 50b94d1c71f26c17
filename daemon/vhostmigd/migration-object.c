/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Migration on org.vhostmig1.Vm: PrepareIncoming (destination), MigrateTo
 * (source), CancelMigration, SaveDeviceState and LoadDeviceState (the
 * device state of a VMM that migrates guest memory itself), and the
 * migration properties.
 *
 * A migration is one long job on the VM's worker (migrate/migration.h does
 * the work).  PrepareIncoming and MigrateTo answer as soon as the job is
 * queued, since a migration may take longer than any D-Bus call may wait;
 * the outcome is MigrationState and MigrationError.  Save/LoadDeviceState
 * move only the devices' records through an fd, which is quick, and answer
 * when the job is done: the VMM must know the state is complete (or
 * loaded) before it carries on.  While the job runs, the engine's
 * progress goes straight into the VM's migration view (under snap_lock) and
 * a timer on the loop publishes it, since the snapshot refresh that follows
 * every job comes only at the end.  CancelMigration never queues behind the
 * job: it writes the job's cancel eventfd from the loop, which every
 * blocking step of the transport and the stream watches.  MigrateContinue
 * (the VMM paused its vCPUs in pre-switchover) writes the job's continue
 * eventfd the same way.
 *
 * Throttle: the migration figures change after every batch of pages, far
 * more often than any client wants PropertiesChanged.  They are published
 * at most once per PROGRESS_INTERVAL_USEC; a change of MigrationState wakes
 * the loop through an eventfd and is published at once when the interval
 * allows it, else by the timer when the interval ends, so a state (the VMM
 * waits for "pre-switchover") reaches the bus within one interval.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "daemon/common/cleanup.h"
#include "daemon/vhostmigd/bus-util.h"
#include "daemon/vhostmigd/jobs.h"
#include "daemon/vhostmigd/restart.h"
#include "migrate/stream.h" /* before migration.h, whose prototypes name its records */
#include "migrate/migration.h"
#include "migrate/transport.h"
#include "proto/vhost-user-transport.h"

/* PropertiesChanged for a running migration: at most once per interval (10 a second). */
#define PROGRESS_INTERVAL_USEC 100000u
/* Defaults: how long a token is good for, and how long the peer may stall the stream. */
#define DEFAULT_TOKEN_TIMEOUT_MS  300000u
#define DEFAULT_STREAM_TIMEOUT_MS 30000u
#define MAX_TIMEOUT_MS            3600000u
#define MAX_ROUNDS                10000u

/* ---- the view ----------------------------------------------------------------------------- */

void migration_view_init(struct vm_object *o) {
        memset(&o->migration, 0, sizeof(o->migration));
        snprintf(o->migration.state, sizeof(o->migration.state), "%s", VHOSTMIG_MIGRATION_STATE_NONE);
        snprintf(o->migration.role, sizeof(o->migration.role), "%s", VHOSTMIG_ROLE_NONE);
}

/* Loop: a migration begins; the previous one's figures go. */
static void view_begin(struct vm_object *o, const char *role) {
        pthread_mutex_lock(&o->snap_lock);
        migration_view_init(o);
        snprintf(o->migration.state, sizeof(o->migration.state), "%s", VHOSTMIG_MIGRATION_STATE_SETUP);
        snprintf(o->migration.role, sizeof(o->migration.role), "%s", role);
        pthread_mutex_unlock(&o->snap_lock);
}

/* Worker: the engine's figures, as they are now. */
static void view_update(struct vm_object *o, const struct vhm_migration_stats *st) {
        pthread_mutex_lock(&o->snap_lock);
        struct vm_migration_view *v = &o->migration;
        snprintf(v->state, sizeof(v->state), "%s", vhm_migration_state_name(st->state));
        v->pages_total = st->pages_total;
        v->pages_transferred = st->pages_transferred;
        v->zero_pages = st->zero_pages;
        v->bytes_transferred = st->bytes_transferred;
        v->downtime_ms = st->downtime_ms;
        v->total_ms = st->total_ms;
        v->rarp_sent = (uint32_t) st->rarp_sent;
        v->checksum = st->checksum;
        v->round = st->round;
        v->pages_remaining = st->pages_remaining;
        v->dirty_rate = st->dirty_rate;
        v->bandwidth = st->bandwidth;
        v->expected_downtime_ms = st->expected_downtime_ms;
        v->setup_ms = st->setup_ms;
        snprintf(v->error, sizeof(v->error), "%s", st->error);
        pthread_mutex_unlock(&o->snap_lock);
}

/* Worker: the migration failed before the engine could start (no peer, a bad address). */
static void view_fail(struct vm_object *o, bool cancelled, const char *error) {
        pthread_mutex_lock(&o->snap_lock);
        snprintf(o->migration.state, sizeof(o->migration.state), "%s",
                 cancelled ? VHOSTMIG_MIGRATION_STATE_CANCELLED : VHOSTMIG_MIGRATION_STATE_FAILED);
        snprintf(o->migration.error, sizeof(o->migration.error), "%s", error);
        pthread_mutex_unlock(&o->snap_lock);
}

/* Worker, from inside the engine: progress reaches D-Bus while the job runs; a new state at once. */
static void on_progress(const struct vhm_migration_stats *st, void *opaque) {
        struct vm_object *o = opaque;
        pthread_mutex_lock(&o->snap_lock);
        bool new_state = strcmp(o->migration.state, vhm_migration_state_name(st->state)) != 0;
        pthread_mutex_unlock(&o->snap_lock);
        view_update(o, st);
        /* What the engine did to logging and the devices (a live migration switches logging on) shows too. */
        if (new_state)
                vm_refresh(o);
        /* Set before the job was queued and closed only after it is done: the worker may write it. */
        uint64_t one = 1;
        if (new_state && o->migration_wake_fd >= 0 && write(o->migration_wake_fd, &one, sizeof(one)) < 0 &&
            errno != EAGAIN)
                daemon_log(LOG_DEBUG, o, NULL, "cannot wake the loop for a migration state: %m");
}

/* ---- the loop's part: progress timer, cancel eventfd ---------------------------------------------- */

static uint64_t loop_now(struct vm_object *o) {
        uint64_t now = 0;
        (void) sd_event_now(o->daemon->event, CLOCK_MONOTONIC, &now);
        return now;
}

/* The next tick one interval after this publish: two progress publishes are never closer. */
static void progress_publish(struct vm_object *o) {
        uint64_t now = loop_now(o);
        vm_publish(o);
        o->migration_published_usec = now;
        if (o->migration_timer) {
                (void) sd_event_source_set_time(o->migration_timer, now + PROGRESS_INTERVAL_USEC);
                (void) sd_event_source_set_enabled(o->migration_timer, SD_EVENT_ONESHOT);
        }
}

static int on_progress_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) s;
        (void) usec;
        progress_publish(userdata);
        return 0;
}

/* A new MigrationState: now if the throttle allows it, else the pending tick carries it. */
static int on_migration_wake(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        (void) s;
        (void) revents;
        struct vm_object *o = userdata;
        uint64_t v;
        if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                daemon_log(LOG_DEBUG, o, NULL, "migration wake-up: %m");
        if (loop_now(o) >= o->migration_published_usec + PROGRESS_INTERVAL_USEC)
                progress_publish(o);
        return 0;
}

static void progress_watch_stop(struct vm_object *o) {
        o->migration_timer = sd_event_source_disable_unref(o->migration_timer);
        o->migration_wake = sd_event_source_disable_unref(o->migration_wake);
        if (o->migration_wake_fd >= 0)
                close(o->migration_wake_fd);
        o->migration_wake_fd = -1;
}

/*
 * Without the timer the figures still arrive at the end, and without the
 * wake-up a new state at the next tick: neither is worth failing the
 * migration for.
 */
static void progress_watch_start(struct vm_object *o) {
        if (o->migration_timer)
                return;
        o->migration_published_usec = loop_now(o);
        /* Accuracy 1 ms: sd-event's default (0: 250 ms) would stretch the interval as it likes. */
        (void) sd_event_add_time_relative(o->daemon->event, &o->migration_timer, CLOCK_MONOTONIC,
                                          PROGRESS_INTERVAL_USEC, 1000, on_progress_timer, o);
        o->migration_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (o->migration_wake_fd >= 0 && sd_event_add_io(o->daemon->event, &o->migration_wake, o->migration_wake_fd,
                                                         EPOLLIN, on_migration_wake, o) < 0) {
                close(o->migration_wake_fd);
                o->migration_wake_fd = -1;
        }
}

/* Loop: the migration job is over (or never ran). */
static void migration_end(struct vm_object *o) {
        o->migrating = false;
        o->migration_cancel_fd = -1;   /* the job's own, closed with it */
        o->migration_continue_fd = -1; /* the same */
        progress_watch_stop(o);
}

void migration_object_free(struct vm_object *o) {
        progress_watch_stop(o);
}

bool migration_cancel(struct vm_object *o) {
        if (!o->migrating || o->migration_cancel_fd < 0)
                return false;
        uint64_t one = 1;
        if (write(o->migration_cancel_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
                daemon_log(LOG_WARNING, o, NULL, "cannot cancel the migration: %m");
        return true;
}

static void job_release_fds(struct vm_job *j) {
        if (j->u.migrate.listen_fd >= 0)
                vhm_transport_listen_close(j->u.migrate.listen_fd, j->u.migrate.address);
        if (j->u.migrate.cancel_fd >= 0)
                close(j->u.migrate.cancel_fd);
        if (j->u.migrate.state_fd >= 0)
                close(j->u.migrate.state_fd);
        if (j->u.migrate.continue_fd >= 0)
                close(j->u.migrate.continue_fd);
        j->u.migrate.listen_fd = j->u.migrate.cancel_fd = j->u.migrate.state_fd = j->u.migrate.continue_fd = -1;
}

/* ---- worker side ---------------------------------------------------------------------------------- */

/* The devices the engine moves, in the order they were added. */
static unsigned migration_devices(struct vm_object *o, struct vhm_device **devs) {
        unsigned n = 0;
        for (unsigned i = 0; i < o->nrunning; i++)
                if (o->running[i]->dev && !o->running[i]->worker_configuring)
                        devs[n++] = o->running[i]->dev;
        return n;
}

static uint64_t deadline_after(unsigned ms) {
        return vhu_now_usec() + (uint64_t) ms * 1000u;
}

/* The engine's options for a job: its stream timeout, eventfds and live tuning, progress into the view. */
static struct vhm_migrate_options job_options(struct vm_job *j) {
        return (struct vhm_migrate_options){
                .timeout_ms = j->u.migrate.timeout_ms,
                .cancel_fd = j->u.migrate.cancel_fd,
                .progress = on_progress,
                .opaque = j->vm,
                .live = j->u.migrate.live,
                .max_downtime_ms = j->u.migrate.max_downtime_ms,
                .max_bandwidth = j->u.migrate.max_bandwidth,
                .max_rounds = j->u.migrate.max_rounds,
                .force_switchover = j->u.migrate.force_switchover,
                .continue_fd = j->u.migrate.continue_fd,
                .pause_timeout_ms = j->u.migrate.pause_timeout_ms,
        };
}

static void run_incoming(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct vhm_device *devs[VHM_LOGGING_MAX_DEVICES];
        struct vhm_migration_stats st = { .state = VHM_MIGRATION_SETUP };
        int fd = -1;

        int r = vhm_transport_accept(j->u.migrate.listen_fd, j->u.migrate.token_deadline, j->u.migrate.cancel_fd, &fd);
        /* One peer per token: nobody else gets to connect. */
        vhm_transport_listen_close(j->u.migrate.listen_fd, j->u.migrate.address);
        j->u.migrate.listen_fd = -1;
        if (r < 0) {
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "no source connected to %s: %s", j->u.migrate.address,
                         r == -ETIMEDOUT ? "the token expired" : strerror(-r));
                view_fail(o, r == -ECANCELED, j->error);
                return;
        }
        unsigned n = migration_devices(o, devs);
        struct vhm_migrate_options opts = job_options(j);
        r = vhm_migrate_incoming_opts(o->vm, devs, n, fd, j->u.migrate.token, j->u.migrate.token_deadline, &opts, &st);
        view_update(o, &st);
        if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", st.error);
}

static void run_migrate_to(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct vhm_device *devs[VHM_LOGGING_MAX_DEVICES];
        struct vhm_migration_stats st = { .state = VHM_MIGRATION_SETUP };
        int fd = -1;

        int r = vhm_transport_connect(j->u.migrate.address, deadline_after(j->u.migrate.timeout_ms),
                                      j->u.migrate.cancel_fd, &fd);
        if (r < 0) {
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "cannot connect to %s: %s", j->u.migrate.address, strerror(-r));
                view_fail(o, r == -ECANCELED, j->error);
                return;
        }
        unsigned n = migration_devices(o, devs);
        struct vhm_migrate_options opts = job_options(j);
        r = vhm_migrate_to(o->vm, o->logging, devs, n, fd, j->u.migrate.token, &opts, &st);
        view_update(o, &st);
        /* Released (completed) or left stopped (postmigrate-unknown): never reconnected or resumed here. */
        if (st.state == VHM_MIGRATION_COMPLETED || st.state == VHM_MIGRATION_POSTMIGRATE_UNKNOWN)
                o->migrated_away = true;
        if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", st.error);
}

/*
 * VMM-carried device state.  The fd is the engine's (it closes it); the
 * stats' figures go to the view as for a migration.
 */
static void run_save_state(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct vhm_device *devs[VHM_LOGGING_MAX_DEVICES];
        struct vhm_migration_stats st = { .state = VHM_MIGRATION_SETUP, .role = VHM_MIGRATION_ROLE_SOURCE };
        unsigned n = migration_devices(o, devs);
        struct vhm_migrate_options opts = job_options(j);
        int fd = j->u.migrate.state_fd;
        j->u.migrate.state_fd = -1;
        int r = vhm_migration_save_device_state(devs, n, fd, &opts, &st);
        view_update(o, &st);
        if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", st.error);
}

static void run_load_state(struct vm_job *j) {
        struct vm_object *o = j->vm;
        struct vhm_device *devs[VHM_LOGGING_MAX_DEVICES];
        struct vhm_migration_stats st = { .state = VHM_MIGRATION_SETUP, .role = VHM_MIGRATION_ROLE_DESTINATION };
        unsigned n = migration_devices(o, devs);
        struct vhm_migrate_options opts = job_options(j);
        int fd = j->u.migrate.state_fd;
        j->u.migrate.state_fd = -1;
        int r = vhm_migration_load_device_state(devs, n, fd, &opts, &st);
        view_update(o, &st);
        if (r < 0)
                job_fail(j, r, VHOSTMIG_ERROR_BACKEND, "%s", st.error);
}

/* ---- loop side: the outcome ------------------------------------------------------------------------ */

static bool state_is(const struct vm_migration_view *v, const char *state) {
        return strcmp(v->state, state) == 0;
}

/* Every kind: the fds go, the destination's devices are no longer incoming once it completed. */
static void migration_job_done(struct vm_job *j, struct vm_migration_view *v) {
        struct vm_object *o = j->vm;
        job_release_fds(j);
        migration_end(o);
        pthread_mutex_lock(&o->snap_lock);
        *v = o->migration;
        pthread_mutex_unlock(&o->snap_lock);
        if (j->u.migrate.destination && state_is(v, VHOSTMIG_MIGRATION_STATE_COMPLETED))
                for (unsigned i = 0; i < o->ndevices; i++)
                        o->devices[i]->incoming = false;
        daemon_log(state_is(v, VHOSTMIG_MIGRATION_STATE_COMPLETED) ? LOG_NOTICE : LOG_WARNING, o, NULL, "%s %s%s%s",
                   j->ops->name, v->state, v->error[0] ? ": " : "", v->error);
}

static void done_migration(struct vm_job *j) {
        struct vm_migration_view v;
        migration_job_done(j, &v);
        /* The devices are the destination's now, or may be: no second migration from here. */
        if (!j->u.migrate.destination && (state_is(&v, VHOSTMIG_MIGRATION_STATE_COMPLETED) ||
                                          state_is(&v, VHOSTMIG_MIGRATION_STATE_POSTMIGRATE_UNKNOWN)))
                j->vm->departed = true;
        /* The outcome is MigrationState and MigrationError; the call was answered when it began. */
        j->result = 0;
}

/* Save/LoadDeviceState: the call's answer is the outcome (jobs.c answers with the job's error). */
static void done_device_state(struct vm_job *j) {
        struct vm_migration_view v;
        migration_job_done(j, &v);
}

static const struct job_ops job_incoming = {
        .name = "PrepareIncoming",
        .run = run_incoming,
        .done = done_migration,
};

static const struct job_ops job_migrate_to = {
        .name = "MigrateTo",
        .run = run_migrate_to,
        .done = done_migration,
};

static const struct job_ops job_save_state = {
        .name = "SaveDeviceState",
        .run = run_save_state,
        .done = done_device_state,
};

static const struct job_ops job_load_state = {
        .name = "LoadDeviceState",
        .run = run_load_state,
        .done = done_device_state,
};

/* ---- methods ---------------------------------------------------------------------------------------- */

static int check_can_migrate(struct vm_object *o, sd_bus_error *error) {
        if (o->migrating)
                return bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE, "a migration of VM %s is already running",
                                o->name);
        if (o->departed)
                return bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE,
                                "VM %s migrated away: its devices are the destination's, or may be", o->name);
        if (o->ndevices == 0)
                return bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE, "VM %s has no devices to migrate", o->name);
        for (unsigned i = 0; i < o->ndevices; i++)
                if (o->devices[i]->configuring)
                        return bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE,
                                        "device %u is configuring: AddQueues first", o->devices[i]->number);
        return 0;
}

/* A migration job with its cancel eventfd; the caller fills the rest. */
static int new_migration_job(struct vm_object *o, const struct job_ops *ops, unsigned timeout_ms, struct vm_job **out,
                             sd_bus_error *error) {
        struct vm_job *j = job_new(o, ops, NULL);
        if (!j)
                return -ENOMEM;
        j->u.migrate.listen_fd = j->u.migrate.state_fd = j->u.migrate.continue_fd = -1;
        j->u.migrate.destination = ops == &job_incoming || ops == &job_load_state;
        j->u.migrate.timeout_ms = timeout_ms ? timeout_ms : DEFAULT_STREAM_TIMEOUT_MS;
        j->u.migrate.cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (j->u.migrate.cancel_fd < 0) {
                int r = -errno;
                job_free(j);
                return bus_fail(error, SD_BUS_ERROR_NO_MEMORY, "cannot create an eventfd: %s", strerror(-r));
        }
        /* Only a source has a VMM to wait for; the engine reads it only when live. */
        if (ops == &job_migrate_to && (j->u.migrate.continue_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
                int r = -errno;
                job_release_fds(j);
                job_free(j);
                return bus_fail(error, SD_BUS_ERROR_NO_MEMORY, "cannot create an eventfd: %s", strerror(-r));
        }
        *out = j;
        return 0;
}

static void start_migration(struct vm_object *o, struct vm_job *j, const char *role) {
        o->migrating = true;
        o->migration_cancel_fd = j->u.migrate.cancel_fd;
        o->migration_continue_fd = j->u.migrate.continue_fd;
        view_begin(o, role);
        progress_watch_start(o);
        job_submit(j);
        vm_publish(o);
        /* A restart while it runs ends it failed: the state says it was under way. */
        restart_changed(o->daemon);
}

struct incoming_options {
        const char *listen;
        uint32_t token_timeout_ms, timeout_ms;
};

static const struct bus_option incoming_options[] = {
        { VHOSTMIG_OPTION_LISTEN, 's', offsetof(struct incoming_options, listen) },
        { VHOSTMIG_OPTION_TOKEN_TIMEOUT_MS, 'u', offsetof(struct incoming_options, token_timeout_ms) },
        { VHOSTMIG_OPTION_TIMEOUT_MS, 'u', offsetof(struct incoming_options, timeout_ms) },
};

/* unix: in the daemon's runtime directory (systemd's RuntimeDirectory=), else the temporary one. */
static int default_listen_address(struct vm_object *o, char *out, size_t len, sd_bus_error *error) {
        static unsigned counter;
        const char *dir = getenv("RUNTIME_DIRECTORY");
        if (!dir || !*dir)
                dir = getenv("TMPDIR");
        if (!dir || !*dir)
                dir = "/tmp";
        int n = snprintf(out, len, "unix:%s/vhostmig-incoming-%s-%d-%u.sock", dir, o->name, (int) getpid(), counter++);
        if (n < 0 || (size_t) n >= len || (size_t) n - 5 >= 108)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS,
                                "no room for a socket path under %s: give the option \"Listen\"", dir);
        return 0;
}

static int check_timeout(const char *key, uint32_t ms, sd_bus_error *error) {
        if (ms > MAX_TIMEOUT_MS)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "%s: %u ms is more than an hour", key, ms);
        return 0;
}

static int check_address(const char *what, const char *address, sd_bus_error *error) {
        if (strncmp(address, "unix:", 5) != 0 && strncmp(address, "tcp:", 4) != 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "%s: \"%s\" is neither unix:PATH nor tcp:HOST:PORT",
                                what, address);
        if (strlen(address) >= sizeof(((struct vm_job *) 0)->u.migrate.address))
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "%s: longer than %zu bytes", what,
                                sizeof(((struct vm_job *) 0)->u.migrate.address) - 1);
        return 0;
}

static int read_incoming_options(sd_bus_message *m, struct vm_object *o, struct incoming_options *opt, char *address,
                                 size_t len, sd_bus_error *error) {
        int r = bus_read_options(m, incoming_options, sizeof(incoming_options) / sizeof(incoming_options[0]), opt, NULL,
                                 error);
        if (r >= 0)
                r = check_timeout(VHOSTMIG_OPTION_TOKEN_TIMEOUT_MS, opt->token_timeout_ms, error);
        if (r >= 0)
                r = check_timeout(VHOSTMIG_OPTION_TIMEOUT_MS, opt->timeout_ms, error);
        if (r < 0)
                return r;
        if (!opt->listen || !*opt->listen)
                return default_listen_address(o, address, len, error);
        if ((r = check_address(VHOSTMIG_OPTION_LISTEN, opt->listen, error)) < 0)
                return r;
        snprintf(address, len, "%s", opt->listen);
        return 0;
}

static int prepare_incoming(sd_bus_message *m, struct vm_object *o, sd_bus_error *error) {
        struct incoming_options opt = { 0 };
        char address[sizeof(((struct vm_job *) 0)->u.migrate.address)];
        char bound[sizeof(address)];
        struct vm_job *j;

        int r = read_incoming_options(m, o, &opt, address, sizeof(address), error);
        if (r >= 0)
                r = check_can_migrate(o, error);
        for (unsigned i = 0; r >= 0 && i < o->ndevices; i++)
                if (!o->devices[i]->incoming)
                        r = bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE,
                                     "device %u was not added for an incoming migration (AddDevice option \"%s\")",
                                     o->devices[i]->number, VHOSTMIG_OPTION_INCOMING);
        if (r < 0)
                return r;
        if ((r = new_migration_job(o, &job_incoming, opt.timeout_ms, &j, error)) < 0)
                return r;
        /* Listening is quick and its failure is the caller's answer: done here, on the loop. */
        r = vhm_transport_listen(address, &j->u.migrate.listen_fd, bound, sizeof(bound));
        if (r < 0) {
                j->u.migrate.listen_fd = -1;
                job_release_fds(j);
                job_free(j);
                return bus_fail(error, r == -EINVAL ? SD_BUS_ERROR_INVALID_ARGS : VHOSTMIG_ERROR_BACKEND,
                                "cannot listen at %s: %s", address, strerror(-r));
        }
        snprintf(j->u.migrate.address, sizeof(j->u.migrate.address), "%s", bound);
        r = vhm_token_new(j->u.migrate.token);
        if (r < 0) {
                job_release_fds(j);
                job_free(j);
                return bus_fail(error, VHOSTMIG_ERROR_BACKEND, "cannot make a token: %s", strerror(-r));
        }
        j->u.migrate.token_deadline = deadline_after(opt.token_timeout_ms ? opt.token_timeout_ms
                                                                          : DEFAULT_TOKEN_TIMEOUT_MS);
        r = sd_bus_reply_method_return(m, "ss", j->u.migrate.address, j->u.migrate.token);
        if (r < 0) {
                job_release_fds(j);
                job_free(j);
                return r;
        }
        daemon_log(LOG_INFO, o, NULL, "waiting for an incoming migration at %s", j->u.migrate.address);
        start_migration(o, j, VHOSTMIG_ROLE_DESTINATION);
        return 1;
}

int method_prepare_incoming(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        r = prepare_incoming(m, o, error);
        return r < 0 ? vm_refused(o, error, r) : r;
}

struct migrate_to_options {
        uint32_t timeout_ms;
        bool live, force_switchover;
        uint32_t max_downtime_ms, max_rounds, pause_timeout_ms;
        uint64_t max_bandwidth;
};

/* The rows from OPT_MAX_DOWNTIME on tune a live migration: they need "Live" true. */
enum {
        OPT_TIMEOUT,
        OPT_LIVE,
        OPT_MAX_DOWNTIME,
        OPT_MAX_BANDWIDTH,
        OPT_MAX_ROUNDS,
        OPT_FORCE,
        OPT_PAUSE_TIMEOUT
};
#define OPT(row, key, type, field) [row] = { key, type, offsetof(struct migrate_to_options, field) }
static const struct bus_option migrate_to_options[] = {
        OPT(OPT_TIMEOUT, VHOSTMIG_OPTION_TIMEOUT_MS, 'u', timeout_ms),
        OPT(OPT_LIVE, VHOSTMIG_OPTION_LIVE, 'b', live),
        OPT(OPT_MAX_DOWNTIME, VHOSTMIG_OPTION_MAX_DOWNTIME_MS, 'u', max_downtime_ms),
        OPT(OPT_MAX_BANDWIDTH, VHOSTMIG_OPTION_MAX_BANDWIDTH, 't', max_bandwidth),
        OPT(OPT_MAX_ROUNDS, VHOSTMIG_OPTION_MAX_ROUNDS, 'u', max_rounds),
        OPT(OPT_FORCE, VHOSTMIG_OPTION_FORCE_SWITCHOVER, 'b', force_switchover),
        OPT(OPT_PAUSE_TIMEOUT, VHOSTMIG_OPTION_PAUSE_TIMEOUT_MS, 'u', pause_timeout_ms),
};
#undef OPT
#define N_MIGRATE_TO_OPTIONS (sizeof(migrate_to_options) / sizeof(migrate_to_options[0]))

static int check_range(const char *key, uint32_t given, uint32_t v, uint32_t min, uint32_t max, sd_bus_error *error) {
        if (given && (v < min || v > max))
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "options: \"%s\" must be %u..%u, not %u", key, min,
                                max, v);
        return 0;
}

static int read_migrate_to_options(sd_bus_message *m, struct migrate_to_options *opt, sd_bus_error *error) {
        uint32_t given = 0;
        int r = bus_read_options(m, migrate_to_options, N_MIGRATE_TO_OPTIONS, opt, &given, error);
        if (r < 0)
                return r;
        /* Tuning a stop-and-copy would be silently ignored: the caller meant something else. */
        for (unsigned i = OPT_MAX_DOWNTIME; i < N_MIGRATE_TO_OPTIONS && !opt->live; i++)
                if (given & (1u << i))
                        return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "options: \"%s\" needs \"%s\"",
                                        migrate_to_options[i].key, VHOSTMIG_OPTION_LIVE);
#define GIVEN(row) (given & (1u << (row)))
        r = check_timeout(VHOSTMIG_OPTION_TIMEOUT_MS, opt->timeout_ms, error);
        if (r >= 0)
                r = check_range(VHOSTMIG_OPTION_MAX_DOWNTIME_MS, GIVEN(OPT_MAX_DOWNTIME), opt->max_downtime_ms, 1,
                                MAX_TIMEOUT_MS, error);
        if (r >= 0)
                r = check_range(VHOSTMIG_OPTION_MAX_ROUNDS, GIVEN(OPT_MAX_ROUNDS), opt->max_rounds, 1, MAX_ROUNDS,
                                error);
        if (r >= 0)
                r = check_range(VHOSTMIG_OPTION_PAUSE_TIMEOUT_MS, GIVEN(OPT_PAUSE_TIMEOUT), opt->pause_timeout_ms, 1,
                                MAX_TIMEOUT_MS, error);
#undef GIVEN
        return r;
}

/* Live pre-copy needs the dirty log, which a blocked VM cannot have: say why, as StartLogging does. */
static int check_can_log(struct vm_object *o, sd_bus_error *error) {
        pthread_mutex_lock(&o->snap_lock);
        bool blocked = o->snap.blocked;
        char reasons[1024] = "";
        size_t used = 0;
        for (unsigned i = 0; i < o->snap.blockers.n && used < sizeof(reasons); i++)
                used += (size_t) snprintf(reasons + used, sizeof(reasons) - used, "%s%s", i ? "; " : "",
                                          o->snap.blockers.v[i]);
        pthread_mutex_unlock(&o->snap_lock);
        if (blocked)
                return bus_fail(error, VHOSTMIG_ERROR_MIGRATION_BLOCKED,
                                "a live migration needs dirty logging, and VM %s cannot log: %s", o->name, reasons);
        return 0;
}

static int check_token(const char *token, sd_bus_error *error) {
        size_t n = strlen(token);
        if (n != 32 || strspn(token, "0123456789abcdef") != n)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS,
                                "token: 32 lowercase hexadecimal digits expected, as PrepareIncoming returns");
        return 0;
}

static int migrate_to(sd_bus_message *m, struct vm_object *o, sd_bus_error *error) {
        const char *address, *token;
        struct migrate_to_options opt = { 0 };
        struct vm_job *j;

        int r = sd_bus_message_read(m, "ss", &address, &token);
        if (r < 0)
                return r;
        r = read_migrate_to_options(m, &opt, error);
        if (r >= 0)
                r = check_address("address", address, error);
        if (r >= 0)
                r = check_token(token, error);
        if (r >= 0)
                r = check_can_migrate(o, error);
        for (unsigned i = 0; r >= 0 && i < o->ndevices; i++)
                if (o->devices[i]->incoming)
                        r = bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE,
                                     "device %u waits for an incoming migration: it has nothing to send",
                                     o->devices[i]->number);
        if (r >= 0 && opt.live)
                r = check_can_log(o, error);
        if (r < 0)
                return r;
        if ((r = new_migration_job(o, &job_migrate_to, opt.timeout_ms, &j, error)) < 0)
                return r;
        snprintf(j->u.migrate.address, sizeof(j->u.migrate.address), "%s", address);
        snprintf(j->u.migrate.token, sizeof(j->u.migrate.token), "%s", token);
        j->u.migrate.live = opt.live;
        j->u.migrate.max_downtime_ms = opt.max_downtime_ms;
        j->u.migrate.max_bandwidth = opt.max_bandwidth;
        j->u.migrate.max_rounds = opt.max_rounds;
        j->u.migrate.force_switchover = opt.force_switchover;
        j->u.migrate.pause_timeout_ms = opt.pause_timeout_ms;
        r = sd_bus_reply_method_return(m, NULL);
        if (r < 0) {
                job_release_fds(j);
                job_free(j);
                return r;
        }
        daemon_log(LOG_INFO, o, NULL, "migrating to %s%s", address, opt.live ? " (live)" : "");
        start_migration(o, j, VHOSTMIG_ROLE_SOURCE);
        return 1;
}

int method_migrate_to(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        r = migrate_to(m, o, error);
        return r < 0 ? vm_refused(o, error, r) : r;
}

int method_cancel_migration(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        if (!migration_cancel(o))
                return vm_refused(
                        o, error,
                        bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE, "no migration of VM %s is running", o->name));
        daemon_log(LOG_INFO, o, NULL, "migration cancelled by request");
        return sd_bus_reply_method_return(m, NULL);
}

/*
 * The VMM paused its vCPUs: the engine may leave pre-switchover.  Written
 * from the loop like a cancel, never queued behind the migration job, which
 * is the one waiting for it.
 */
int migration_continue(struct vm_object *o, char *why, size_t len) {
        pthread_mutex_lock(&o->snap_lock);
        char state[sizeof(o->migration.state)];
        memcpy(state, o->migration.state, sizeof(state));
        pthread_mutex_unlock(&o->snap_lock);
        if (!o->migrating || o->migration_continue_fd < 0 ||
            strcmp(state, VHOSTMIG_MIGRATION_STATE_PRE_SWITCHOVER) != 0) {
                snprintf(why, len, "VM %s is not in pre-switchover (MigrationState \"%s\"): nothing waits for the VMM",
                         o->name, state);
                return -ESRCH;
        }
        uint64_t one = 1;
        if (write(o->migration_continue_fd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
                int r = -errno;
                snprintf(why, len, "cannot signal the migration: %s", strerror(-r));
                return r;
        }
        return 0;
}

static int migrate_continue(sd_bus_message *m, struct vm_object *o, sd_bus_error *error) {
        int r = bus_read_options(m, NULL, 0, NULL, NULL, error);
        if (r < 0)
                return r;
        char why[256];
        r = migration_continue(o, why, sizeof(why));
        if (r == -ESRCH)
                return bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE, "%s", why);
        if (r < 0)
                return bus_fail(error, SD_BUS_ERROR_FAILED, "%s", why);
        daemon_log(LOG_INFO, o, NULL, "the VMM paused: switching over");
        return sd_bus_reply_method_return(m, NULL);
}

int method_migrate_continue(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        r = migrate_continue(m, o, error);
        return r < 0 ? vm_refused(o, error, r) : r;
}

/* ---- SaveDeviceState, LoadDeviceState --------------------------------------------------------------- */

struct state_options {
        uint32_t timeout_ms;
};

static const struct bus_option state_options[] = {
        { VHOSTMIG_OPTION_TIMEOUT_MS, 'u', offsetof(struct state_options, timeout_ms) },
};

/*
 * The caller's fd, a copy of our own (the message's goes with it, the
 * engine closes what it is given): open for writing (save) or reading (load).
 */
static int read_state_fd(sd_bus_message *m, bool save, int *out, sd_bus_error *error) {
        int fd;
        int r = sd_bus_message_read(m, "h", &fd);
        if (r < 0)
                return r;
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "fd: %s", strerror(errno));
        if (save && (flags & O_ACCMODE) == O_RDONLY)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "fd: open read-only, the state is written into it");
        if (!save && (flags & O_ACCMODE) == O_WRONLY)
                return bus_fail(error, SD_BUS_ERROR_INVALID_ARGS, "fd: open write-only, the state is read from it");
        *out = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (*out < 0)
                return bus_fail(error, SD_BUS_ERROR_LIMITS_EXCEEDED, "fd: cannot keep a copy: %s", strerror(errno));
        return 0;
}

/* Save: devices that run (or stopped for a migration); load: devices waiting for one. */
static int check_state_devices(struct vm_object *o, bool save, sd_bus_error *error) {
        for (unsigned i = 0; i < o->ndevices; i++) {
                struct device_object *d = o->devices[i];
                if (save && d->incoming)
                        return bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE,
                                        "device %u waits for an incoming migration: it has no state to save",
                                        d->number);
                if (!save && !d->incoming)
                        return bus_fail(error, VHOSTMIG_ERROR_INVALID_STATE,
                                        "device %u was not added for an incoming migration (AddDevice option \"%s\")",
                                        d->number, VHOSTMIG_OPTION_INCOMING);
        }
        return 0;
}

static int device_state(sd_bus_message *m, struct vm_object *o, bool save, sd_bus_error *error) {
        struct state_options opt = { 0 };
        int fd = -1;
        struct vm_job *j;

        int r = read_state_fd(m, save, &fd, error);
        if (r >= 0)
                r = bus_read_options(m, state_options, sizeof(state_options) / sizeof(state_options[0]), &opt, NULL,
                                     error);
        if (r >= 0)
                r = check_timeout(VHOSTMIG_OPTION_TIMEOUT_MS, opt.timeout_ms, error);
        if (r >= 0)
                r = check_can_migrate(o, error);
        if (r >= 0)
                r = check_state_devices(o, save, error);
        if (r >= 0)
                r = new_migration_job(o, save ? &job_save_state : &job_load_state, opt.timeout_ms, &j, error);
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                return r;
        }
        j->u.migrate.state_fd = fd;
        j->call = sd_bus_message_ref(m);
        daemon_log(LOG_INFO, o, NULL, "%s the device state", save ? "saving" : "loading");
        start_migration(o, j, save ? VHOSTMIG_ROLE_SOURCE : VHOSTMIG_ROLE_DESTINATION);
        return 1;
}

int method_save_device_state(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        r = device_state(m, o, true, error);
        return r < 0 ? vm_refused(o, error, r) : r;
}

int method_load_device_state(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct vm_object *o = userdata;
        int r = daemon_check_root(m, error);
        if (r < 0)
                return r;
        r = device_state(m, o, false, error);
        return r < 0 ? vm_refused(o, error, r) : r;
}
