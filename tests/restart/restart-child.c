/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A service that lives across restarts through the state store
 * (daemon/vhostmigd/state-store.h), for tests/restart/test-restart.c: its
 * first run makes an eventfd and a sealed memfd and keeps them; every run
 * takes them back from LISTEN_FDS, counts itself in both (the eventfd's
 * counter and the page), publishes its state, says READY=1 and waits to be
 * killed (SIGKILL) or stopped (SIGTERM: exits 0, as an upgrade's old binary
 * does).  A state it cannot trust: the refusal line on stderr, exit 3.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "daemon/vhostmigd/state-store.h"

static int fail(const char *what, int r) {
        fprintf(stderr, "restart-child: %s: %s\n", what, strerror(-r));
        return 1;
}

static int first_run(int *counter, int *page) {
        *counter = eventfd(0, EFD_CLOEXEC);
        *page = memfd_create("page", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (*counter < 0 || *page < 0 || ftruncate(*page, 4096) < 0 || fcntl(*page, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return -errno;
        return 0;
}

static json_object *state_body(uint64_t runs) {
        json_object *body = json_object_new_object(), *fds = json_object_new_object();
        json_object_object_add(fds, "counter", json_object_new_string(STATE_STORE_KIND_EVENTFD));
        json_object_object_add(fds, "page", json_object_new_string(STATE_STORE_KIND_MEMFD));
        json_object_object_add(body, "fds", fds);
        json_object_object_add(body, "runs", json_object_new_uint64(runs));
        return body;
}

int main(void) {
        struct state_store *s;
        struct state_restored *restored;
        char why[512];
        int counter, page, r = state_store_new(&s);
        if (r < 0)
                return fail("state_store_new", r);
        r = state_store_restore(s, &restored, why, sizeof(why));
        if (r < 0) {
                fprintf(stderr, "restart-child: the stored state is refused: %s\n", why);
                state_store_free(s);
                return 3;
        }
        uint64_t runs = 0;
        if (restored) {
                runs = json_object_get_uint64(json_object_object_get(state_restored_body(restored), "runs"));
                counter = state_restored_take_fd(restored, "counter");
                page = state_restored_take_fd(restored, "page");
                state_restored_free(s, restored);
        } else if ((r = first_run(&counter, &page)) < 0)
                return fail("first run", r);
        /* What the last run counted is what the fds hold: nothing lost, nothing counted twice. */
        uint64_t in_page = 0;
        if (pread(page, &in_page, sizeof(in_page), 0) != sizeof(in_page) || in_page != runs) {
                fprintf(stderr, "restart-child: the page says %" PRIu64 " runs, the state %" PRIu64 "\n", in_page,
                        runs);
                return 4;
        }
        runs++;
        uint64_t one = 1;
        if (pwrite(page, &runs, sizeof(runs), 0) != sizeof(runs) || write(counter, &one, sizeof(one)) != sizeof(one))
                return fail("counting", -errno);
        json_object *body = state_body(runs);
        if ((r = state_store_keep_fd(s, "counter", counter)) < 0 || (r = state_store_keep_fd(s, "page", page)) < 0 ||
            (r = state_store_publish(s, body)) < 0)
                return fail("keeping", r);
        json_object_put(body);
        printf("run %" PRIu64 "\n", runs);
        fflush(stdout);
        sd_notify(false, "READY=1");
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigprocmask(SIG_BLOCK, &set, NULL);
        int sig;
        sigwait(&set, &sig);
        close(counter);
        close(page);
        state_store_free(s);
        return 0;
}
