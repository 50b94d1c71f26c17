/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: the back-end channel alone (SET_BACKEND_REQ_FD), with every
 * handler installed and fds on the messages, which fuzz-frontend reaches
 * only through negotiation and without handlers.  The input:
 *
 *   byte 0   bit n set: the handler of back-end request n+1 refuses (-EINVAL)
 *            instead of accepting; bit 7: served with
 *            vhu_backend_channel_serve() instead of _process()
 *   byte 1   bit k % 8: the k-th message carries an fd (SCM_RIGHTS)
 *   byte 2   bit k % 8: ... and a second one
 *   then     the back-end's messages, framed by each header's size
 *
 * Whatever the bytes: no crash, no fd left open (a handler owns the fd it is
 * given and must get a valid one), no memory leaked.  The peer reads the
 * channel's replies, SHARED_OBJECT_LOOKUP's fd included, and closes them.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/vhost-user-backend-channel.h"
#include "tests/fuzz/fuzz.h"

/* What the socket buffer takes without a reader; longer inputs are cut. */
#define MAX_INPUT (32 * 1024)

struct verdicts {
        uint8_t refuse; /* bit n: request n+1 is refused */
        unsigned calls;
};

static int verdict(void *userdata, unsigned request) {
        struct verdicts *v = userdata;
        v->calls++;
        return (v->refuse >> (request - 1)) & 1 ? -22 /* -EINVAL */ : 0;
}

/* An fd handed to a handler must be open: a closed or reused number would be a double close. */
static void own_fd(int fd) {
        if (fd >= 0 && fcntl(fd, F_GETFD) < 0)
                abort();
        if (fd >= 0)
                close(fd);
}

static int on_iotlb(void *u, const struct vhu_iotlb *msg) {
        (void) msg;
        return verdict(u, VHU_BREQ_IOTLB_MSG);
}
static int on_config_change(void *u) {
        return verdict(u, VHU_BREQ_CONFIG_CHANGE_MSG);
}
static int on_host_notifier(void *u, const struct vhu_vring_area *area, int fd) {
        (void) area;
        own_fd(fd);
        return verdict(u, VHU_BREQ_VRING_HOST_NOTIFIER_MSG);
}
static int on_vring_call(void *u, unsigned index) {
        (void) index;
        return verdict(u, VHU_BREQ_VRING_CALL);
}
static int on_vring_err(void *u, unsigned index) {
        (void) index;
        return verdict(u, VHU_BREQ_VRING_ERR);
}
static int on_object_add(void *u, const uint8_t uuid[16]) {
        (void) uuid;
        return verdict(u, VHU_BREQ_SHARED_OBJECT_ADD);
}
static int on_object_remove(void *u, const uint8_t uuid[16]) {
        (void) uuid;
        return verdict(u, VHU_BREQ_SHARED_OBJECT_REMOVE);
}
static int on_object_lookup(void *u, const uint8_t uuid[16], int *fd) {
        (void) uuid;
        int r = verdict(u, VHU_BREQ_SHARED_OBJECT_LOOKUP);
        if (r == 0)
                *fd = eventfd(0, EFD_CLOEXEC); /* the channel sends it and closes it */
        return r;
}

static const struct vhu_backend_handlers handlers = {
        .iotlb_msg = on_iotlb,
        .config_change = on_config_change,
        .host_notifier = on_host_notifier,
        .vring_call = on_vring_call,
        .vring_err = on_vring_err,
        .shared_object_add = on_object_add,
        .shared_object_remove = on_object_remove,
        .shared_object_lookup = on_object_lookup,
};

/* One message's bytes with nfds eventfds attached; false when the socket takes no more. */
static bool send_message(int fd, const uint8_t *data, size_t len, unsigned nfds) {
        int fds[2] = { -1, -1 };
        union {
                char buf[CMSG_SPACE(sizeof(fds))];
                struct cmsghdr align;
        } control = { 0 };
        struct iovec iov = { .iov_base = (void *) data, .iov_len = len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        for (unsigned i = 0; i < nfds; i++)
                fds[i] = eventfd(0, EFD_CLOEXEC);
        if (nfds > 0 && fds[0] >= 0 && (nfds == 1 || fds[1] >= 0)) {
                mh.msg_control = control.buf;
                mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
                struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
                memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
        }
        ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        for (unsigned i = 0; i < 2; i++)
                if (fds[i] >= 0)
                        close(fds[i]); /* the receiver has its own copies */
        return n == (ssize_t) len;
}

/* Sends the messages, framed by their headers' sizes, with fds as bytes 1 and 2 say. */
static void send_messages(int fd, uint8_t one_fd, uint8_t two_fds, const uint8_t *data, size_t size) {
        for (unsigned k = 0; size > 0; k++) {
                size_t len = sizeof(struct vhu_hdr);
                if (size >= len) {
                        struct vhu_hdr h;
                        memcpy(&h, data, sizeof(h));
                        len += h.size < size - len ? h.size : size - len;
                } else {
                        len = size;
                }
                unsigned nfds = ((one_fd >> (k % 8)) & 1) + ((two_fds >> (k % 8)) & 1);
                if (!send_message(fd, data, len, nfds))
                        return;
                data += len;
                size -= len;
        }
}

/* The channel's replies, and the fds they carry, read and dropped. */
static void drain_replies(int fd) {
        for (;;) {
                char buf[256];
                union {
                        char buf[CMSG_SPACE(4 * sizeof(int))];
                        struct cmsghdr align;
                } control;
                struct iovec iov = { buf, sizeof(buf) };
                struct msghdr mh = { .msg_iov = &iov,
                                     .msg_iovlen = 1,
                                     .msg_control = control.buf,
                                     .msg_controllen = sizeof(control.buf) };
                if (recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) <= 0)
                        return;
                for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
                        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                                continue;
                        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                        for (size_t i = 0; i < n; i++) {
                                int rfd;
                                memcpy(&rfd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                                close(rfd);
                        }
                }
        }
}

int fuzz_backend_channel_one(const uint8_t *data, size_t size) {
        if (size < 3)
                return 0;
        struct verdicts v = { .refuse = data[0] & 0x7f };
        bool serve = data[0] & 0x80;
        uint8_t one_fd = data[1], two_fds = data[2];
        data += 3;
        size -= 3;
        if (size > MAX_INPUT)
                size = MAX_INPUT;

        struct vhu_backend_channel *ch;
        int peer;
        if (vhu_backend_channel_new(&handlers, &v, ~UINT64_C(0), &peer, &ch) < 0)
                return 0;
        send_messages(peer, one_fd, two_fds, data, size);
        shutdown(peer, SHUT_WR);
        int r = 1;
        for (int i = 0; i < 64 && r > 0; i++) {
                r = serve ? vhu_backend_channel_serve(ch, VHU_BACKEND_CHANNEL_BUDGET, UINT64_MAX)
                          : vhu_backend_channel_process(ch);
                drain_replies(peer);
        }
        /* A channel that failed is closed and says why. */
        if (r < 0 && (vhu_backend_channel_is_open(ch) || vhu_backend_channel_error(ch)[0] == '\0'))
                abort();
        drain_replies(peer);
        vhu_backend_channel_free(ch);
        close(peer);
        return (int) v.calls;
}
