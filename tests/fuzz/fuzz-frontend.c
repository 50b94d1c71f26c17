/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: a hostile back-end.  The input is everything the back-end
 * sends, on the main socket (replies) and on the back-end channel (its own
 * requests), split at the first 0xff 0xff 0xff 0xff marker.  The front-end
 * negotiates and issues requests against it; whatever the bytes, it must
 * fail cleanly: no crash, no hang, no leaked fd or memory (ASan/LSan).
 * fuzz_frontend_one() returns how far the input got (1 + requests that
 * succeeded, +100 when the connection survived), for the smoke test.
 *
 * fuzz_frontend_peer_one() is the same with a peer that does more than
 * answer: the first input byte chooses whether every message it sends
 * carries an fd (SCM_RIGHTS), and whether, once negotiation gave it the
 * back-end channel, it floods that channel with the input's channel part
 * (repeated until the socket takes no more) while the requests go on.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
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

/* Sends one message's bytes with an eventfd attached; false when the socket takes no more. */
static bool send_with_fd(int fd, const uint8_t *data, size_t len) {
        int efd = eventfd(0, EFD_CLOEXEC);
        union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
        } control = { 0 };
        struct iovec iov = { .iov_base = (void *) data, .iov_len = len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        if (efd >= 0) {
                mh.msg_control = control.buf;
                mh.msg_controllen = sizeof(control.buf);
                struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cm), &efd, sizeof(int));
        }
        ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (efd >= 0)
                close(efd); /* the receiver has its own copy */
        if (n > 0 && (size_t) n < len)
                feed(fd, data + n, len - (size_t) n);
        return n > 0;
}

/* Sends a stream message by message (framed by each header's size), each with an fd. */
static void feed_with_fds(int fd, const uint8_t *data, size_t size) {
        while (size > 0) {
                size_t len = sizeof(struct vhu_hdr);
                if (size >= len) {
                        struct vhu_hdr h;
                        memcpy(&h, data, sizeof(h));
                        len += h.size < size - len ? h.size : size - len;
                } else {
                        len = size;
                }
                if (!send_with_fd(fd, data, len))
                        return;
                data += len;
                size -= len;
        }
}

/* The back-end's end of the channel, from the SET_BACKEND_REQ_FD the front-end sent; -1 when none. */
static int take_channel_fd(int peer) {
        int channel = -1;
        for (;;) {
                struct vhu_msg m;
                if (vhu_recv_hdr(peer, &m, NULL, 0) < 0)
                        return channel;
                if (m.hdr.size <= sizeof(m.payload) && vhu_recv_payload(peer, &m, NULL, 0) < 0)
                        return channel;
                if (m.hdr.request == VHU_REQ_SET_BACKEND_REQ_FD && m.nfds == 1 && channel < 0) {
                        channel = m.fds[0];
                        m.nfds = 0;
                }
                vhu_msg_close_fds(&m);
        }
}

/* Fills the channel with copies of its part of the input until the socket takes no more. */
static void flood_channel(int channel, const uint8_t *data, size_t size, bool with_fds) {
        static const struct vhu_hdr config_change = { .request = VHU_BREQ_CONFIG_CHANGE_MSG, .flags = VHU_VERSION };
        if (size == 0) {
                data = (const uint8_t *) &config_change;
                size = sizeof(config_change);
        }
        for (unsigned round = 0; round < 4096; round++) {
                if (with_fds) {
                        if (!send_with_fd(channel, data, size))
                                return;
                } else if (send(channel, data, size, MSG_DONTWAIT | MSG_NOSIGNAL) <= 0) {
                        return;
                }
        }
}

static int run_frontend(const uint8_t *data, size_t size, uint8_t flags) {
        if (size > MAX_INPUT)
                size = MAX_INPUT;
        static const uint8_t marker[4] = { 0xff, 0xff, 0xff, 0xff };
        const uint8_t *split = memmem(data, size, marker, sizeof(marker));
        size_t main_len = split ? (size_t) (split - data) : size;
        const uint8_t *channel_part = split ? split + sizeof(marker) : data + size;
        size_t channel_len = (size_t) (data + size - channel_part);
        bool with_fds = flags & FUZZ_PEER_FDS, flood = flags & FUZZ_PEER_FLOOD;

        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return 0;
        if (vhu_fd_prepare(sv[1]) < 0) {
                close(sv[0]);
                close(sv[1]);
                return 0;
        }
        if (with_fds)
                feed_with_fds(sv[1], data, main_len);
        else
                feed(sv[1], data, main_len);
        shutdown(sv[1], SHUT_WR);

        struct vhu_conn *c;
        struct vhu_conn_options o = { .timeout_ms = 20 };
        if (vhu_conn_new(sv[0], &o, &c) < 0) {
                close(sv[1]);
                return 0;
        }
        int depth = 0;
        if (vhu_negotiate(c, NULL) == 0) {
                int channel = flood ? take_channel_fd(sv[1]) : -1;
                if (channel >= 0) {
                        (void) vhu_fd_prepare(channel);
                        flood_channel(channel, channel_part, channel_len, with_fds);
                }
                depth = 1 + exercise(c);
                if (channel >= 0)
                        close(channel);
        }
        /* A connection still up after all that must have answered the last barrier. */
        if (vhu_conn_is_connected(c))
                depth += 100;
        vhu_conn_free(c);
        close(sv[1]);
        return depth;
}

int fuzz_frontend_one(const uint8_t *data, size_t size) {
        return run_frontend(data, size, 0);
}

int fuzz_frontend_peer_one(const uint8_t *data, size_t size) {
        if (size == 0)
                return 0;
        return run_frontend(data + 1, size - 1, data[0]);
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
