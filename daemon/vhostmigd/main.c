/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd: the vhost-user front-end as a service.  An sd-event loop, the
 * org.vhostmig1 D-Bus API (sd-bus), one worker thread per VM for the
 * blocking vhost-user requests.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "daemon/vhostmigd/daemon.h"

/* ---- loop plumbing ------------------------------------------------------------------ */

static int on_monitor(sd_event_source *s, uint64_t usec, void *userdata) {
        struct daemon *d = userdata;
        for (struct vm_object *o = d->vms; o; o = o->next)
                vm_object_queue_monitor(o);
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

static int on_terminate(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) s;
        (void) si;
        struct daemon *d = userdata;
        if (d->shutting_down)
                return 0;
        d->shutting_down = true;
        sd_notify(false, "STOPPING=1\nSTATUS=Releasing every device");
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

static int setup_bus(struct daemon *d) {
        int r = sd_bus_default_system(&d->bus);
        if (r < 0) {
                daemon_log(LOG_ERR, NULL, NULL, "cannot connect to the system bus: %s", strerror(-r));
                return r;
        }
        r = manager_register(d);
        if (r >= 0)
                r = sd_bus_add_object_manager(d->bus, NULL, VHOSTMIG_ROOT_PATH);
        if (r >= 0)
                r = vm_objects_register(d);
        if (r >= 0)
                r = sd_bus_attach_event(d->bus, d->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0) {
                daemon_log(LOG_ERR, NULL, NULL, "cannot set up the D-Bus objects: %s", strerror(-r));
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
        sigprocmask(SIG_BLOCK, &mask, NULL);
        /* A back-end that closes its socket must not kill us with SIGPIPE. */
        signal(SIGPIPE, SIG_IGN);

        int r = sd_event_default(&d->event);
        if (r >= 0)
                r = sd_event_add_signal(d->event, NULL, SIGTERM, on_terminate, d);
        if (r >= 0)
                r = sd_event_add_signal(d->event, NULL, SIGINT, on_terminate, d);
        if (r >= 0)
                r = sd_event_add_time_relative(d->event, &d->monitor, CLOCK_MONOTONIC,
                                               (uint64_t) d->cfg.monitor_interval_ms * 1000u, 0, on_monitor, d);
        if (r >= 0)
                r = sd_event_source_set_enabled(d->monitor, SD_EVENT_ON);
        for (unsigned i = 0; r >= 0 && i < d->cfg.max_probes; i++) {
                char name[16];
                snprintf(name, sizeof(name), "probe-%u", i % CONFIG_MAX_PROBES);
                r = worker_start(&d->probe_workers[i], d->event, name);
                if (r >= 0)
                        d->nprobe_workers++;
        }
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
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, 'C' },
                {}
        };
        int c;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h': help(); return 0;
                case 'V': puts("vhostmigd " VHOSTMIG_VERSION); return 0;
                case 'c': *config = optarg; break;
                case 'C': *check_only = true; break;
                default: return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "vhostmigd: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

int main(int argc, char **argv) {
        const char *config_path = NULL;
        bool check_only = false;
        int r = parse_args(argc, argv, &config_path, &check_only);
        if (r <= 0)
                return r < 0 ? 2 : 0;

        static struct daemon d;
        char error[512];
        r = config_load(&d.cfg, config_path ? config_path : VHOSTMIGD_DEFAULT_CONFIG, !config_path, error, sizeof(error));
        if (r < 0) {
                fprintf(stderr, "vhostmigd: configuration: %s\n", error);
                return 1;
        }
        if (check_only) {
                char *json = config_to_json(&d.cfg);
                puts(json ? json : "{}");
                free(json);
                return 0;
        }
        daemon_log_init(&d);

        r = setup_loop(&d);
        if (r >= 0)
                r = setup_bus(&d);
        if (r < 0)
                return 1;
        sd_notify(false, "READY=1");
        daemon_update_status(&d);
        daemon_log(LOG_INFO, NULL, NULL, "vhostmigd %s ready on %s", VHOSTMIG_VERSION, VHOSTMIG_BUS_NAME);

        r = sd_event_loop(d.event);

        /* A forced exit leaves hung workers behind: the process ends with them. */
        for (unsigned i = 0; r == 0 && i < d.nprobe_workers; i++)
                worker_stop(&d.probe_workers[i]);
        sd_event_source_unref(d.shutdown_timer);
        sd_event_source_unref(d.monitor);
        sd_bus_flush_close_unref(d.bus);
        sd_event_unref(d.event);
        return r < 0 ? 1 : 0;
}

