/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd: the vhost-user front-end as a service.  An sd-event loop, the
 * org.vhostmig1 D-Bus API (sd-bus), one worker thread per VM for the
 * blocking vhost-user requests.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "daemon/vhostmigd/daemon.h"
#include "daemon/vhostmigd/libvirt-glue.h"
#include "daemon/vhostmigd/restart.h"

/* ---- the probe pool ------------------------------------------------------------------ */

/*
 * Probe workers 0..nprobe_workers-1 take new probes (manager.c).  A pool
 * shrunk by a reload keeps the workers above that until their probe is done:
 * stopping one joins its thread, which a hung back-end would hold for up to
 * the probe's timeout.
 */
static int grow_probe_pool(struct daemon *d, unsigned want) {
        int r = 0;
        while (d->nprobe_workers < want) {
                unsigned i = d->nprobe_workers;
                if (!d->probe_worker_started[i]) {
                        char name[16];
                        snprintf(name, sizeof(name), "probe-%u", i % CONFIG_MAX_PROBES);
                        r = worker_start(&d->probe_workers[i], d->event, name);
                        if (r < 0) {
                                daemon_log(LOG_ERR, NULL, NULL, "cannot start probe worker %u: %s", i, strerror(-r));
                                return r;
                        }
                        d->probe_worker_started[i] = true;
                        daemon_log(LOG_DEBUG, NULL, NULL, "probe worker %u started", i);
                }
                d->nprobe_workers++;
        }
        return 0;
}

static void retire_idle_probe_workers(struct daemon *d) {
        for (unsigned i = d->nprobe_workers; i < CONFIG_MAX_PROBES; i++) {
                if (!d->probe_worker_started[i] || worker_pending(&d->probe_workers[i]) != 0)
                        continue;
                worker_stop(&d->probe_workers[i]);
                d->probe_worker_started[i] = false;
                daemon_log(LOG_DEBUG, NULL, NULL, "probe worker %u retired (max_probes %u)", i, d->cfg.max_probes);
        }
}

static int resize_probe_pool(struct daemon *d, unsigned want) {
        if (want < d->nprobe_workers)
                d->nprobe_workers = want;
        int r = grow_probe_pool(d, want);
        retire_idle_probe_workers(d);
        return r;
}

static void stop_probe_pool(struct daemon *d) {
        d->nprobe_workers = 0;
        for (unsigned i = 0; i < CONFIG_MAX_PROBES; i++)
                if (d->probe_worker_started[i]) {
                        worker_stop(&d->probe_workers[i]);
                        d->probe_worker_started[i] = false;
                }
}

/* ---- loop plumbing ------------------------------------------------------------------ */

static int on_monitor(sd_event_source *s, uint64_t usec, void *userdata) {
        struct daemon *d = userdata;
        for (struct vm_object *o = d->vms; o; o = o->next)
                vm_object_queue_monitor(o);
        retire_idle_probe_workers(d);
        return sd_event_source_set_time(s, usec + (uint64_t) d->cfg.monitor_interval_ms * 1000u);
}

static int on_shutdown_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) s;
        (void) usec;
        struct daemon *d = userdata;
        daemon_log(LOG_WARNING, NULL, NULL, "shutting down: %u VM teardown(s) did not finish in time, exiting anyway",
                   d->vms_tearing_down);
        return sd_event_exit(d->event, 1);
}

/*
 * How long shutdown waits for teardowns: a hung back-end costs one request
 * timeout, after which its connection is closed and the rest of its teardown
 * fails fast; a job the worker was running when the signal came may cost one
 * more.
 */
static uint64_t shutdown_budget_usec(const struct daemon *d) {
        return (2 * (uint64_t) d->cfg.request_timeout_ms + 1000) * 1000;
}

/*
 * SIGTERM with the fd store in use: the VMs stay as they are (rings running,
 * logging on) for the next process, which takes them over from the store.
 */
static int hand_over(struct daemon *d) {
        sd_notify(false, "STOPPING=1\nSTATUS=Handing every VM over to the next start");
        daemon_libvirt_stop();
        daemon_log(LOG_INFO, NULL, NULL, "shutting down: %u VM(s) kept in the fd store for the next start", d->nvms);
        restart_handover(d);
        return sd_event_exit(d->event, 0);
}

static int on_terminate(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) s;
        (void) si;
        struct daemon *d = userdata;
        if (d->shutting_down)
                return 0;
        d->shutting_down = true;
        if (restart_keeps_vms(d))
                return hand_over(d);
        sd_notify(false, "STOPPING=1\nSTATUS=Releasing every device");
        /* No domain event may act on a VM while every VM is being released. */
        daemon_libvirt_stop();
        daemon_log(LOG_INFO, NULL, NULL, "shutting down: stopping logging and releasing %u VM(s)",
                   d->nvms + d->vms_tearing_down);
        /* Each VM's worker stops logging and releases its devices; the last one ends the loop. */
        while (d->vms)
                vm_object_destroy(d->vms, NULL);
        /* Teardowns already under way (DestroyVm calls) are waited for as well. */
        if (d->vms_tearing_down == 0)
                return sd_event_exit(d->event, 0);
        int r = sd_event_add_time_relative(d->event, &d->shutdown_timer, CLOCK_MONOTONIC, shutdown_budget_usec(d), 0,
                                           on_shutdown_timeout, d);
        if (r < 0)
                daemon_log(LOG_WARNING, NULL, NULL, "shutting down without a time limit: %s", strerror(-r));
        return 0;
}

/* ---- reload (SIGHUP) ----------------------------------------------------------------- */

static bool libvirt_changed(const struct config_libvirt *a, const struct config_libvirt *b) {
        return strcmp(a->uri, b->uri) != 0 || a->keepalive_interval_s != b->keepalive_interval_s ||
               a->keepalive_count != b->keepalive_count || a->reconnect_min_ms != b->reconnect_min_ms ||
               a->reconnect_max_ms != b->reconnect_max_ms;
}

/*
 * What a reload changes: limits and defaults for what comes next.  Running
 * VMs and devices keep what they were created with (their request timeout,
 * socket mode, back-end uids); a smaller max_vms refuses new VMs only.
 */
static void apply_config(struct daemon *d, const struct vhostmigd_config *next) {
        char *diff = config_diff(&d->cfg, next);
        /* The file's level wins only when the file changed it: a level set over D-Bus survives other edits. */
        if (next->log_level != d->cfg.log_level)
                daemon_log_set_level(next->log_level);
        bool interval_changed = next->monitor_interval_ms != d->cfg.monitor_interval_ms;
        /* The watcher's connection outlives reloads: restarting it could wait on libvirtd from the loop. */
        if (libvirt_changed(&d->cfg.libvirt, &next->libvirt))
                daemon_log(LOG_NOTICE, NULL, NULL,
                           "reload: the \"libvirt\" settings changed; they take effect when vhostmigd restarts");
        d->cfg = *next;
        if (interval_changed) {
                int r = sd_event_source_set_time_relative(d->monitor, (uint64_t) d->cfg.monitor_interval_ms * 1000u);
                if (r < 0)
                        daemon_log(LOG_WARNING, NULL, NULL,
                                   "reload: monitor interval not changed until the next "
                                   "check: %s",
                                   strerror(-r));
        }
        int r = resize_probe_pool(d, d->cfg.max_probes);
        if (r < 0)
                daemon_log(LOG_WARNING, NULL, NULL, "reload: %u probe worker(s) instead of max_probes %u",
                           d->nprobe_workers, d->cfg.max_probes);
        if (d->nvms > d->cfg.max_vms)
                daemon_log(LOG_NOTICE, NULL, NULL,
                           "reload: %u VMs exist, more than max_vms %u; they stay, new ones "
                           "are refused",
                           d->nvms, d->cfg.max_vms);
        daemon_log(LOG_INFO, NULL, NULL, "configuration reloaded from %s: %s",
                   d->config_path ? d->config_path : VHOSTMIGD_DEFAULT_CONFIG,
                   !diff   ? "(changes not listed: out of memory)"
                   : *diff ? diff
                           : "nothing changed");
        free(diff);
}

static uint64_t now_usec(clockid_t clock) {
        struct timespec ts;
        clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/*
 * RELOADING=1 ... READY=1 around the reload, with MONOTONIC_USEC as
 * Type=notify-reload (systemd 253) requires; systemd 252 shows the unit
 * "reloading" meanwhile.  A bad file is refused whole: the running
 * configuration stays, and the error names the key.
 */
static int on_reload(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) s;
        struct daemon *d = userdata;
        if (d->shutting_down)
                return 0;
        const char *path = d->config_path ? d->config_path : VHOSTMIGD_DEFAULT_CONFIG;
        sd_notifyf(false, "RELOADING=1\nSTATUS=Reloading %s\nMONOTONIC_USEC=%" PRIu64, path, now_usec(CLOCK_MONOTONIC));
        daemon_log(LOG_DEBUG, NULL, NULL, "SIGHUP from pid %u: reloading %s", si->ssi_pid, path);
        struct vhostmigd_config next;
        char error[512];
        int r = config_load(&next, path, !d->config_path, error, sizeof(error));
        if (r < 0)
                daemon_log(LOG_ERR, NULL, NULL, "reload refused, the running configuration stays: %s", error);
        else
                apply_config(d, &next);
        sd_notify(false, "READY=1");
        daemon_update_status(d);
        return 0;
}

static int setup_bus(struct daemon *d) {
        int r = sd_bus_default_system(&d->bus);
        if (r < 0) {
                daemon_log(LOG_ERR, NULL, NULL, "cannot connect to the system bus: %s", strerror(-r));
                return r;
        }
        r = manager_register(d);
        if (r >= 0)
                r = log_control_register(d);
        if (r >= 0)
                r = object_manager_register(d);
        if (r >= 0)
                r = sd_bus_attach_event(d->bus, d->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0) {
                daemon_log(LOG_ERR, NULL, NULL, "cannot set up the D-Bus objects: %s", strerror(-r));
                return r;
        }
        /* The VMs a previous process left are there before anyone can call. */
        r = restart_restore(d);
        if (r < 0) {
                daemon_log(LOG_ERR, NULL, NULL, "cannot restore the saved state: %s", strerror(-r));
                return r;
        }
        r = sd_bus_request_name(d->bus, VHOSTMIG_BUS_NAME, 0);
        if (r < 0)
                daemon_log(LOG_ERR, NULL, NULL, "cannot own %s: %s", VHOSTMIG_BUS_NAME, strerror(-r));
        return r;
}

static int setup_loop(struct daemon *d) {
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        /* A back-end that closes its socket must not kill us with SIGPIPE. */
        signal(SIGPIPE, SIG_IGN);

        int r = sd_event_default(&d->event);
        if (r >= 0)
                r = sd_event_add_signal(d->event, NULL, SIGTERM, on_terminate, d);
        if (r >= 0)
                r = sd_event_add_signal(d->event, NULL, SIGINT, on_terminate, d);
        if (r >= 0)
                r = sd_event_add_signal(d->event, NULL, SIGHUP, on_reload, d);
        /* WATCHDOG=1 at half of WatchdogSec= while the loop turns; nothing when the unit sets none. */
        if (r >= 0)
                r = sd_event_set_watchdog(d->event, true);
        if (r > 0)
                daemon_log(LOG_DEBUG, NULL, NULL, "watchdog on");
        if (r >= 0)
                r = sd_event_add_time_relative(d->event, &d->monitor, CLOCK_MONOTONIC,
                                               (uint64_t) d->cfg.monitor_interval_ms * 1000u, 0, on_monitor, d);
        if (r >= 0)
                r = sd_event_source_set_enabled(d->monitor, SD_EVENT_ON);
        if (r >= 0)
                r = grow_probe_pool(d, d->cfg.max_probes);
        if (r < 0)
                daemon_log(LOG_ERR, NULL, NULL, "cannot set up the event loop: %s", strerror(-r));
        return r;
}

/* ---- main ------------------------------------------------------------------------------ */

static void help(void) {
        printf("Usage: vhostmigd [OPTIONS]\n\n"
               "The vhost-user front-end and dirty-log service (D-Bus name %s).\n\n"
               "  -h --help            Show this help\n"
               "     --version         Show the version\n"
               "     --config PATH     Configuration file (default %s; optional)\n"
               "     --check-config    Validate the configuration, print the effective one, exit\n",
               VHOSTMIG_BUS_NAME, VHOSTMIGD_DEFAULT_CONFIG);
}

static int parse_args(int argc, char **argv, const char **config, bool *check_only) {
        static const struct option options[] = { { "help", no_argument, NULL, 'h' },
                                                 { "version", no_argument, NULL, 'V' },
                                                 { "config", required_argument, NULL, 'c' },
                                                 { "check-config", no_argument, NULL, 'C' },
                                                 {} };
        int c;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case 'V':
                        puts("vhostmigd " VHOSTMIG_VERSION);
                        return 0;
                case 'c':
                        *config = optarg;
                        break;
                case 'C':
                        *check_only = true;
                        break;
                default:
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "vhostmigd: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

static struct daemon *daemon_new(const char *config_path) {
        struct daemon *d = calloc(1, sizeof(*d));
        if (d)
                d->config_path = config_path;
        return d;
}

/*
 * After a forced exit (shutdown gave up on a teardown) a hung worker may
 * still hold a VM, and through it the daemon: then the threads and the
 * daemon are left to the process's end.
 */
static void daemon_free(struct daemon *d) {
        if (!d)
                return;
        bool clean = !d->vms && d->vms_tearing_down == 0;
        daemon_libvirt_stop();
        if (clean)
                stop_probe_pool(d);
        d->shutdown_timer = sd_event_source_unref(d->shutdown_timer);
        d->monitor = sd_event_source_unref(d->monitor);
        restart_free(d);
        d->bus = sd_bus_flush_close_unref(d->bus);
        d->event = sd_event_unref(d->event);
        if (clean)
                free(d);
}

static int check_config(const char *config_path) {
        struct vhostmigd_config cfg;
        char error[512];
        if (config_load(&cfg, config_path ? config_path : VHOSTMIGD_DEFAULT_CONFIG, !config_path, error,
                        sizeof(error)) < 0) {
                fprintf(stderr, "vhostmigd: configuration: %s\n", error);
                return 1;
        }
        char *json = config_to_json(&cfg);
        puts(json ? json : "{}");
        free(json);
        return 0;
}

static int run(struct daemon *d) {
        char error[512];
        int r = config_load(&d->cfg, d->config_path ? d->config_path : VHOSTMIGD_DEFAULT_CONFIG, !d->config_path, error,
                            sizeof(error));
        if (r < 0) {
                fprintf(stderr, "vhostmigd: configuration: %s\n", error);
                return r;
        }
        daemon_log_init(d->cfg.log_level);
        daemon_log(LOG_DEBUG, NULL, NULL, "configuration from %s%s",
                   d->config_path ? d->config_path : VHOSTMIGD_DEFAULT_CONFIG,
                   !d->config_path && access(VHOSTMIGD_DEFAULT_CONFIG, F_OK) < 0 ? " (missing: built-in defaults)"
                                                                                 : "");

        r = setup_loop(d);
        if (r >= 0 && (r = restart_new(d)) < 0)
                daemon_log(LOG_ERR, NULL, NULL, "cannot set up the fd store: %s", strerror(-r));
        if (r >= 0)
                r = setup_bus(d);
        if (r < 0)
                return r;
        daemon_libvirt_start(d);
        sd_notify(false, "READY=1");
        daemon_update_status(d);
        daemon_log(LOG_INFO, NULL, NULL, "vhostmigd %s ready on %s", VHOSTMIG_VERSION, VHOSTMIG_BUS_NAME);
        return sd_event_loop(d->event);
}

int main(int argc, char **argv) {
        const char *config_path = NULL;
        bool check_only = false;
        int r = parse_args(argc, argv, &config_path, &check_only);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        if (check_only)
                return check_config(config_path);

        struct daemon *d = daemon_new(config_path);
        if (!d) {
                fprintf(stderr, "vhostmigd: out of memory\n");
                return 1;
        }
        r = run(d);
        /* sd_event_loop() returns the exit code: 1 after the shutdown timer gave up on a teardown. */
        daemon_free(d);
        return r == 0 ? 0 : 1;
}
