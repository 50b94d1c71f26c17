/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: a hostile back-end.  The input is everything the back-end
 * sends, on the main socket (replies) and on the back-end channel (its own
 * requests), split at the first 0xff 0xff 0xff 0xff marker.  The front-end
 * negotiates and issues requests against it; whatever the bytes, it must
 * fail cleanly: no crash, no hang, no leaked fd or memory (ASan/LSan).
 * fuzz_frontend_one() returns how far the input got (1 + requests that
 * succeeded, +100 when the connection survived), for the smoke test.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/vhost-user-frontend.h"
#include "tests/fuzz/fuzz.h"

/* Socket buffers hold this much without a reader; larger inputs are cut. */
#define MAX_INPUT (48 * 1024)

static void feed(int fd, const uint8_t *data, size_t size) {
        while (size > 0) {
                ssize_t n = write(fd, data, size);
                if (n <= 0)
                        return;
                data += n;
                size -= (size_t) n;
        }
}

/* Returns how many requests succeeded, so a test can see how deep an input went. */
static int exercise(struct vhu_conn *c) {
        uint64_t u64;
        unsigned base;
        uint8_t cfg[32], status;
        struct vhu_inflight inflight;
        int fd = -1, ok = 0;

        ok += vhu_get_vring_base(c, 0, &base) == 0;
        ok += vhu_get_config(c, 0, sizeof(cfg), 0, cfg) == 0;
        if (vhu_get_inflight_fd(c, 1, 256, &inflight, &fd) == 0) {
                ok++;
                if (fd >= 0)
                        close(fd);
        }
        ok += vhu_get_status(c, &status) == 0;
        ok += vhu_set_vring_num(c, 0, 256) == 0;
        ok += vhu_set_log_base(c, 0, 4096, 0) == 0;
        ok += vhu_get_queue_num(c, &u64) == 0;
        ok += vhu_barrier(c) == 0;
        /* The back-end channel, with whatever it was sent. */
        struct vhu_backend_channel *ch = vhu_conn_backend_channel(c);
        for (int i = 0; ch && i < 64 && vhu_backend_channel_process(ch) > 0; i++)
                ;
        return ok;
}

int fuzz_frontend_one(const uint8_t *data, size_t size) {
        if (size > MAX_INPUT)
                size = MAX_INPUT;
        static const uint8_t marker[4] = { 0xff, 0xff, 0xff, 0xff };
        const uint8_t *split = memmem(data, size, marker, sizeof(marker));
        size_t main_len = split ? (size_t) (split - data) : size;

        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return 0;
        feed(sv[1], data, main_len);
        shutdown(sv[1], SHUT_WR);

        struct vhu_conn *c;
        struct vhu_conn_options o = { .timeout_ms = 20 };
        if (vhu_conn_new(sv[0], &o, &c) < 0) {
                close(sv[1]);
                return 0;
        }
        int depth = 0;
        if (vhu_negotiate(c, NULL) == 0)
                depth = 1 + exercise(c);
        /* A connection still up after all that must have answered the last barrier. */
        if (vhu_conn_is_connected(c))
                depth += 100;
        vhu_conn_free(c);
        close(sv[1]);
        return depth;
}

int fuzz_channel_one(const uint8_t *data, size_t size) {
        if (size > MAX_INPUT)
                size = MAX_INPUT;
        uint64_t pf = ~UINT64_C(0); /* every back-end request allowed, fds too */
        struct vhu_backend_channel *ch;
        int peer;
        if (vhu_backend_channel_new(NULL, NULL, pf, &peer, &ch) < 0)
                return 0;
        feed(peer, data, size);
        shutdown(peer, SHUT_WR);
        for (int i = 0; i < 256 && vhu_backend_channel_process(ch) > 0; i++)
                ;
        vhu_backend_channel_free(ch);
        close(peer);
        return 0;
}
