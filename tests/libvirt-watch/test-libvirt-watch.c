/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The libvirt watcher (daemon/vhostmigd/libvirt-watch.c) against a real
 * libvirtd on the test driver: it connects, hears lifecycle events that
 * virsh causes from another process, keeps the loop free while libvirtd is
 * gone, reconnects when it is back; the MIGRATED details, which the test
 * driver cannot produce, through libvirt's callbacks called directly; what
 * each event means.  A recording dispatcher stands in for the daemon.
 *
 * Skipped, saying so, when libvirtd (libvirt-daemon) or virsh
 * (libvirt-clients) is not installed.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "daemon/vhostmigd/libvirt-watch.h"
#include "tests/libvirt-watch/libvirtd-fixture.h"

#define MAX_EVENTS 64

struct recorder {
        struct libvirt_watch_event events[MAX_EVENTS];
        unsigned nevents;
        unsigned state_changes;
};

static void record_event(void *userdata, const struct libvirt_watch_event *ev) {
        struct recorder *rec = userdata;
        if (rec->nevents < MAX_EVENTS)
                rec->events[rec->nevents++] = *ev;
}

static void record_state(void *userdata) {
        struct recorder *rec = userdata;
        rec->state_changes++;
}

static const struct libvirt_watch_callbacks callbacks = { .event = record_event, .state_changed = record_state };

struct fixture {
        struct libvirtd_fixture libvirtd;
        sd_event *event;
        struct libvirt_watch *watch;
        struct recorder rec;
};

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static int setup(void **state) {
        if (!libvirtd_fixture_binary() || !libvirtd_fixture_virsh()) {
                print_message("libvirtd or virsh is not installed (Debian: libvirt-daemon, libvirt-clients): "
                              "skipping the tests against a real libvirtd\n");
                *state = NULL;
                return 0;
        }
        struct fixture *f = calloc(1, sizeof(*f));
        if (!f || libvirtd_fixture_start(&f->libvirtd) < 0 || sd_event_new(&f->event) < 0) {
                if (f)
                        libvirtd_fixture_cleanup(&f->libvirtd);
                free(f);
                return -1;
        }
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fixture *f = *state;
        if (!f)
                return 0;
        libvirt_watch_stop(f->watch, 5000);
        sd_event_unref(f->event);
        libvirtd_fixture_cleanup(&f->libvirtd);
        free(f);
        return 0;
}

static struct fixture *fixture_or_skip(void **state) {
        if (!*state)
                skip();
        return *state;
}

static void start_watch(struct fixture *f, const char *uri, unsigned reconnect_min_ms) {
        const struct libvirt_watch_options opts = {
                .uri = uri,
                .keepalive_interval_s = 1,
                .keepalive_count = 2,
                .reconnect_min_ms = reconnect_min_ms,
                .reconnect_max_ms = 400,
        };
        char error[512] = "";
        if (libvirt_watch_start(f->event, &opts, &callbacks, &f->rec, &f->watch, error, sizeof(error)) < 0)
                fail_msg("libvirt_watch_start: %s", error);
}

static enum libvirt_watch_state watch_state(struct fixture *f) {
        struct libvirt_watch_status s;
        libvirt_watch_status(f->watch, &s);
        return s.state;
}

/* Runs the loop until the watcher is in `want` or timeout_ms passed; fails naming both. */
static void run_until_state(struct fixture *f, enum libvirt_watch_state want, unsigned timeout_ms) {
        uint64_t end = now_ms() + timeout_ms;
        while (watch_state(f) != want && now_ms() < end)
                assert_true(sd_event_run(f->event, 50 * 1000) >= 0);
        struct libvirt_watch_status s;
        libvirt_watch_status(f->watch, &s);
        if (s.state != want)
                fail_msg("watcher %s, expected %s within %u ms (last error: %s)", libvirt_watch_state_name(s.state),
                         libvirt_watch_state_name(want), timeout_ms, s.last_error);
}

/* The first recorded event of `name` at or after index `from` matching kind/event/detail, within timeout_ms. */
static const struct libvirt_watch_event *wait_event(struct fixture *f, unsigned from, const char *name,
                                                    enum libvirt_watch_event_kind kind, int event, int detail,
                                                    unsigned timeout_ms) {
        uint64_t end = now_ms() + timeout_ms;
        for (;;) {
                for (unsigned i = from; i < f->rec.nevents; i++) {
                        const struct libvirt_watch_event *ev = &f->rec.events[i];
                        if (ev->kind == kind && strcmp(ev->name, name) == 0 &&
                            (kind != LIBVIRT_WATCH_EVENT_LIFECYCLE || (ev->event == event && ev->detail == detail)))
                                return ev;
                }
                if (now_ms() >= end)
                        fail_msg("no event kind %d (%d, %d) of domain %s within %u ms (%u recorded)", kind, event,
                                 detail, name, timeout_ms, f->rec.nevents);
                assert_true(sd_event_run(f->event, 50 * 1000) >= 0);
        }
}

static void suspend_resume_arrive(struct fixture *f, const char *name, const char *uuid) {
        unsigned from = f->rec.nevents;
        assert_int_equal(libvirtd_fixture_virsh_run(&f->libvirtd, "suspend", name, NULL), 0);
        const struct libvirt_watch_event *ev = wait_event(f, from, name, LIBVIRT_WATCH_EVENT_LIFECYCLE,
                                                          VIR_DOMAIN_EVENT_SUSPENDED, VIR_DOMAIN_EVENT_SUSPENDED_PAUSED,
                                                          5000);
        assert_string_equal(ev->uuid, uuid);
        assert_int_equal(libvirt_watch_action_for(ev), LIBVIRT_WATCH_ACTION_NONE);
        assert_int_equal(libvirtd_fixture_virsh_run(&f->libvirtd, "resume", name, NULL), 0);
        ev = wait_event(f, from, name, LIBVIRT_WATCH_EVENT_LIFECYCLE, VIR_DOMAIN_EVENT_RESUMED,
                        VIR_DOMAIN_EVENT_RESUMED_UNPAUSED, 5000);
        assert_string_equal(ev->uuid, uuid);
        char words[128];
        libvirt_watch_event_describe(ev, words, sizeof(words));
        assert_string_equal(words, "lifecycle resumed (unpaused)");
}

static void connects_and_hears_virsh(void **state) {
        struct fixture *f = fixture_or_skip(state);
        start_watch(f, f->libvirtd.uri, 100);
        run_until_state(f, LIBVIRT_WATCH_CONNECTED, 10000);
        assert_true(f->rec.state_changes >= 1);
        char uuid[VIR_UUID_STRING_BUFLEN];
        assert_int_equal(libvirtd_fixture_define_vhostuser_domain(&f->libvirtd, "vhm-lv-a", uuid), 0);
        /* The domain's own start is an event too. */
        wait_event(f, 0, "vhm-lv-a", LIBVIRT_WATCH_EVENT_LIFECYCLE, VIR_DOMAIN_EVENT_STARTED,
                   VIR_DOMAIN_EVENT_STARTED_BOOTED, 5000);
        suspend_resume_arrive(f, "vhm-lv-a", uuid);
        assert_int_equal(libvirt_watch_stop(f->watch, 5000), 0);
        f->watch = NULL;
}

/* A timer of the loop keeps firing on time while libvirtd is gone: the watcher never holds the loop. */
struct ticker {
        uint64_t last_ms, worst_gap_ms;
        unsigned ticks;
};

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        struct ticker *t = userdata;
        uint64_t now = now_ms();
        if (t->ticks++ && now - t->last_ms > t->worst_gap_ms)
                t->worst_gap_ms = now - t->last_ms;
        t->last_ms = now;
        int r = sd_event_source_set_time(s, usec + 10 * 1000);
        return r < 0 ? r : sd_event_source_set_enabled(s, SD_EVENT_ON);
}

static void reconnects_after_libvirtd_restarts(void **state) {
        struct fixture *f = fixture_or_skip(state);
        start_watch(f, f->libvirtd.uri, 50);
        run_until_state(f, LIBVIRT_WATCH_CONNECTED, 10000);
        struct ticker t = { 0 };
        sd_event_source *tick;
        assert_int_equal(sd_event_add_time_relative(f->event, &tick, CLOCK_MONOTONIC, 10 * 1000, 0, on_tick, &t), 0);

        assert_int_equal(libvirtd_fixture_kill(&f->libvirtd, SIGKILL), 0);
        run_until_state(f, LIBVIRT_WATCH_DISCONNECTED, 5000);
        struct libvirt_watch_status s;
        libvirt_watch_status(f->watch, &s);
        assert_non_null(strstr(s.last_error, f->libvirtd.uri));
        assert_true(s.last_error_usec > 0);
        /* Retries fail for a while (back-off up to 400 ms); the loop runs meanwhile. */
        uint64_t end = now_ms() + 1500;
        while (now_ms() < end)
                assert_true(sd_event_run(f->event, 50 * 1000) >= 0);
        assert_int_not_equal(watch_state(f), LIBVIRT_WATCH_CONNECTED);
        libvirt_watch_status(f->watch, &s);
        assert_non_null(strstr(s.last_error, "cannot connect"));
        assert_true(t.ticks > 50);
        if (t.worst_gap_ms > 200)
                fail_msg("the loop was held %llu ms while libvirtd was gone", (unsigned long long) t.worst_gap_ms);

        assert_int_equal(libvirtd_fixture_restart(&f->libvirtd), 0);
        run_until_state(f, LIBVIRT_WATCH_CONNECTED, 5000);
        libvirt_watch_status(f->watch, &s);
        assert_int_equal(s.connects, 2);
        /* The test driver's state went with the old libvirtd: a new domain, and its events. */
        char uuid[VIR_UUID_STRING_BUFLEN];
        assert_int_equal(libvirtd_fixture_define_vhostuser_domain(&f->libvirtd, "vhm-lv-b", uuid), 0);
        suspend_resume_arrive(f, "vhm-lv-b", uuid);
        sd_event_source_unref(tick);
}

/* Typed parameters as JOB_COMPLETED carries them. */
static void deliver_job_completed(struct fixture *f, virConnectPtr c, virDomainPtr dom, unsigned long long downtime) {
        virTypedParameterPtr params = NULL;
        int n = 0, max = 0;
        assert_int_equal(virTypedParamsAddULLong(&params, &n, &max, VIR_DOMAIN_JOB_DOWNTIME, downtime), 0);
        assert_int_equal(virTypedParamsAddBoolean(&params, &n, &max, VIR_DOMAIN_JOB_SUCCESS, 1), 0);
        libvirt_watch_on_job_completed(c, dom, params, n, f->watch);
        virTypedParamsFree(params, n);
}

/* The test driver cannot migrate: the MIGRATED details go through libvirt's callbacks, called directly. */
static void migrated_details_reach_the_loop(void **state) {
        struct fixture *f = fixture_or_skip(state);
        start_watch(f, f->libvirtd.uri, 100);
        run_until_state(f, LIBVIRT_WATCH_CONNECTED, 10000);
        char uuid[VIR_UUID_STRING_BUFLEN];
        assert_int_equal(libvirtd_fixture_define_vhostuser_domain(&f->libvirtd, "vhm-lv-c", uuid), 0);
        /* The domain's real start comes first: what follows must be only the delivered events. */
        wait_event(f, 0, "vhm-lv-c", LIBVIRT_WATCH_EVENT_LIFECYCLE, VIR_DOMAIN_EVENT_STARTED,
                   VIR_DOMAIN_EVENT_STARTED_BOOTED, 5000);
        virConnectPtr c = virConnectOpen(f->libvirtd.uri);
        assert_non_null(c);
        virDomainPtr dom = virDomainLookupByName(c, "vhm-lv-c");
        assert_non_null(dom);
        static const struct {
                int event, detail;
                enum libvirt_watch_action action;
                const char *words;
        } cases[] = {
                { VIR_DOMAIN_EVENT_SUSPENDED, VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED, LIBVIRT_WATCH_ACTION_CONTINUE,
                  "lifecycle suspended (migrated)" },
                { VIR_DOMAIN_EVENT_RESUMED, VIR_DOMAIN_EVENT_RESUMED_MIGRATED, LIBVIRT_WATCH_ACTION_ANNOUNCE,
                  "lifecycle resumed (migrated)" },
                { VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_MIGRATED, LIBVIRT_WATCH_ACTION_RELEASE,
                  "lifecycle stopped (migrated)" },
                { VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_FAILED, LIBVIRT_WATCH_ACTION_RELEASE,
                  "lifecycle stopped (failed)" },
                { VIR_DOMAIN_EVENT_CRASHED, VIR_DOMAIN_EVENT_CRASHED_PANICKED, LIBVIRT_WATCH_ACTION_RELEASE,
                  "lifecycle crashed (0)" },
                { VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_DESTROYED, LIBVIRT_WATCH_ACTION_NONE,
                  "lifecycle stopped (destroyed)" },
                { VIR_DOMAIN_EVENT_STARTED, VIR_DOMAIN_EVENT_STARTED_MIGRATED, LIBVIRT_WATCH_ACTION_NONE,
                  "lifecycle started (migrated)" },
        };
        unsigned from = f->rec.nevents;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                libvirt_watch_on_lifecycle(c, dom, cases[i].event, cases[i].detail, f->watch);
        libvirt_watch_on_migration_iteration(c, dom, 3, f->watch);
        deliver_job_completed(f, c, dom, 42);
        /* In order, each once, with the domain's name and UUID. */
        wait_event(f, from, "vhm-lv-c", LIBVIRT_WATCH_EVENT_JOB_COMPLETED, 0, 0, 5000);
        const struct libvirt_watch_event *ev = &f->rec.events[from];
        char words[128];
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++, ev++) {
                assert_int_equal(ev->kind, LIBVIRT_WATCH_EVENT_LIFECYCLE);
                assert_string_equal(ev->name, "vhm-lv-c");
                assert_string_equal(ev->uuid, uuid);
                assert_int_equal(libvirt_watch_action_for(ev), cases[i].action);
                libvirt_watch_event_describe(ev, words, sizeof(words));
                assert_string_equal(words, cases[i].words);
        }
        assert_int_equal(ev->kind, LIBVIRT_WATCH_EVENT_MIGRATION_ITERATION);
        assert_int_equal(ev->iteration, 3);
        assert_int_equal(libvirt_watch_action_for(ev), LIBVIRT_WATCH_ACTION_HARVEST);
        ev++;
        assert_int_equal(ev->kind, LIBVIRT_WATCH_EVENT_JOB_COMPLETED);
        assert_true(ev->has_downtime);
        assert_int_equal(ev->downtime_ms, 42);
        assert_int_equal(libvirt_watch_action_for(ev), LIBVIRT_WATCH_ACTION_DOWNTIME);
        libvirt_watch_event_describe(ev, words, sizeof(words));
        assert_string_equal(words, "job completed, succeeded, downtime 42 ms");
        virDomainFree(dom);
        virConnectClose(c);
}

/* No libvirtd behind the URI: disconnected with the reason, retried, and stopped at once. */
static void unreachable_libvirtd(void **state) {
        struct fixture *f = fixture_or_skip(state);
        char uri[600];
        snprintf(uri, sizeof(uri), "test+unix:///default?socket=%s/nobody-here", f->libvirtd.dir);
        start_watch(f, uri, 20);
        run_until_state(f, LIBVIRT_WATCH_DISCONNECTED, 5000);
        struct libvirt_watch_status s;
        libvirt_watch_status(f->watch, &s);
        assert_non_null(strstr(s.last_error, uri));
        assert_non_null(strstr(s.last_error, "cannot connect"));
        uint64_t first = s.last_error_usec;
        uint64_t end = now_ms() + 1000;
        while (now_ms() < end)
                assert_true(sd_event_run(f->event, 50 * 1000) >= 0);
        libvirt_watch_status(f->watch, &s);
        assert_true(s.last_error_usec > first); /* tried again */
        assert_int_equal(s.connects, 0);
        uint64_t t0 = now_ms();
        assert_int_equal(libvirt_watch_stop(f->watch, 5000), 0);
        f->watch = NULL;
        assert_true(now_ms() - t0 < 1000);
}

static void bad_options_are_refused(void **state) {
        (void) state;
        sd_event *e;
        assert_int_equal(sd_event_new(&e), 0);
        struct libvirt_watch *w = NULL;
        char error[256] = "";
        struct libvirt_watch_options o = { .uri = "",
                                           .keepalive_interval_s = 5,
                                           .keepalive_count = 5,
                                           .reconnect_min_ms = 10,
                                           .reconnect_max_ms = 20 };
        assert_int_equal(libvirt_watch_start(e, &o, &callbacks, NULL, &w, error, sizeof(error)), -EINVAL);
        assert_non_null(strstr(error, "no URI"));
        o.uri = "test:///default";
        o.reconnect_min_ms = 30;
        assert_int_equal(libvirt_watch_start(e, &o, &callbacks, NULL, &w, error, sizeof(error)), -EINVAL);
        assert_non_null(strstr(error, "min <= max"));
        assert_null(w);
        sd_event_unref(e);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(bad_options_are_refused),
                cmocka_unit_test_setup_teardown(connects_and_hears_virsh, setup, teardown),
                cmocka_unit_test_setup_teardown(migrated_details_reach_the_loop, setup, teardown),
                cmocka_unit_test_setup_teardown(reconnects_after_libvirtd_restarts, setup, teardown),
                cmocka_unit_test_setup_teardown(unreachable_libvirtd, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
