/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/vhost-user-backend-channel.h"
#include "proto/vhost-user-table.h"
#include "proto/vhost-user-transport.h"

struct vhu_backend_channel {
        int fd;
        const struct vhu_backend_handlers *handlers;
        void *userdata;
        uint64_t protocol_features;
        uint64_t served, refused;
        /* Flood detection: messages seen since window_start (monotonic usec). */
        uint64_t window_start;
        unsigned window_count;
        char error[256];
};

static const struct vhu_backend_handlers no_handlers;

int vhu_backend_channel_new(const struct vhu_backend_handlers *handlers, void *userdata, uint64_t protocol_features,
                            int *backend_fd, struct vhu_backend_channel **out) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        int r = vhu_fd_prepare(sv[0]);
        struct vhu_backend_channel *ch = r < 0 ? NULL : calloc(1, sizeof(*ch));
        if (!ch) {
                close(sv[0]);
                close(sv[1]);
                return r < 0 ? r : -ENOMEM;
        }
        ch->fd = sv[0];
        ch->handlers = handlers ? handlers : &no_handlers;
        ch->userdata = userdata;
        ch->protocol_features = protocol_features;
        *backend_fd = sv[1];
        *out = ch;
        return 0;
}

int vhu_backend_channel_adopt(int fd, const struct vhu_backend_handlers *handlers, void *userdata,
                              uint64_t protocol_features, struct vhu_backend_channel **out) {
        int r = vhu_fd_prepare(fd);
        struct vhu_backend_channel *ch = r < 0 ? NULL : calloc(1, sizeof(*ch));
        if (!ch) {
                close(fd);
                return r < 0 ? r : -ENOMEM;
        }
        ch->fd = fd;
        ch->handlers = handlers ? handlers : &no_handlers;
        ch->userdata = userdata;
        ch->protocol_features = protocol_features;
        *out = ch;
        return 0;
}

void vhu_backend_channel_free(struct vhu_backend_channel *ch) {
        if (!ch)
                return;
        if (ch->fd >= 0)
                close(ch->fd);
        free(ch);
}

int vhu_backend_channel_fd(const struct vhu_backend_channel *ch) {
        return ch->fd;
}

bool vhu_backend_channel_is_open(const struct vhu_backend_channel *ch) {
        return ch && ch->fd >= 0;
}

const char *vhu_backend_channel_error(const struct vhu_backend_channel *ch) {
        return ch->error;
}

uint64_t vhu_backend_channel_served(const struct vhu_backend_channel *ch) {
        return ch->served;
}

uint64_t vhu_backend_channel_refused(const struct vhu_backend_channel *ch) {
        return ch->refused;
}

/* After an invalid message the stream cannot be trusted: close our end. */
static int channel_close(struct vhu_backend_channel *ch, int err) {
        if (ch->fd >= 0) {
                close(ch->fd);
                ch->fd = -1;
        }
        return err;
}

__attribute__((format(printf, 3, 4))) static int channel_fail(struct vhu_backend_channel *ch, int err, const char *fmt,
                                                              ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ch->error, sizeof(ch->error), fmt, ap);
        va_end(ap);
        return channel_close(ch, err);
}

/* Takes the single fd a message may carry, or -1. */
static int take_fd(struct vhu_msg *msg) {
        if (msg->nfds == 0)
                return -1;
        int fd = msg->fds[0];
        msg->nfds = 0;
        return fd;
}

/* Runs the handler for one validated request; returns 0 or a negative errno (refusal). */
static int dispatch(struct vhu_backend_channel *ch, struct vhu_msg *msg, int *reply_fd) {
        const struct vhu_backend_handlers *h = ch->handlers;
        void *ud = ch->userdata;
        union vhu_payload *p = &msg->payload;

        switch (msg->hdr.request) {
        case VHU_BREQ_IOTLB_MSG:
                return h->iotlb_msg ? h->iotlb_msg(ud, &p->iotlb) : -ENOTSUP;
        case VHU_BREQ_CONFIG_CHANGE_MSG:
                return h->config_change ? h->config_change(ud) : -ENOTSUP;
        case VHU_BREQ_VRING_HOST_NOTIFIER_MSG: {
                int fd = take_fd(msg);
                if (!h->host_notifier) {
                        if (fd >= 0)
                                close(fd);
                        return -ENOTSUP;
                }
                return h->host_notifier(ud, &p->area, fd);
        }
        case VHU_BREQ_VRING_CALL:
                return h->vring_call ? h->vring_call(ud, p->state.index) : -ENOTSUP;
        case VHU_BREQ_VRING_ERR:
                return h->vring_err ? h->vring_err(ud, p->state.index) : -ENOTSUP;
        case VHU_BREQ_SHARED_OBJECT_ADD:
                return h->shared_object_add ? h->shared_object_add(ud, p->object.uuid) : -ENOTSUP;
        case VHU_BREQ_SHARED_OBJECT_REMOVE:
                return h->shared_object_remove ? h->shared_object_remove(ud, p->object.uuid) : -ENOTSUP;
        case VHU_BREQ_SHARED_OBJECT_LOOKUP:
                return h->shared_object_lookup ? h->shared_object_lookup(ud, p->object.uuid, reply_fd) : -ENOTSUP;
        default:
                return -ENOTSUP;
        }
}

/* A message's deadline: its own limit, or the caller's when that comes first. */
static uint64_t message_deadline(uint64_t caller_deadline_usec) {
        uint64_t own = vhu_deadline_after_ms(VHU_BACKEND_CHANNEL_MESSAGE_TIMEOUT_MS);
        return own < caller_deadline_usec ? own : caller_deadline_usec;
}

/* Counts one more message; false once the back-end sends more than a real one ever would. */
static bool within_rate(struct vhu_backend_channel *ch) {
        uint64_t now = vhu_now_usec();
        if (ch->window_count == 0 || now - ch->window_start >= (uint64_t) VHU_BACKEND_CHANNEL_FLOOD_WINDOW_MS * 1000u) {
                ch->window_start = now;
                ch->window_count = 0;
        }
        return ++ch->window_count <= VHU_BACKEND_CHANNEL_FLOOD_MAX;
}

static int send_status(struct vhu_backend_channel *ch, uint32_t request, uint64_t status, int fd,
                       uint64_t deadline_usec) {
        struct vhu_msg reply = {
                .hdr = { .request = request, .flags = VHU_REPLY_FLAGS, .size = sizeof(uint64_t) },
                .payload.u64 = status,
        };
        if (fd >= 0)
                reply.fds[reply.nfds++] = fd;
        return vhu_send_msg(ch->fd, &reply, NULL, message_deadline(deadline_usec));
}

/* Checks a received header against the table; returns NULL with ch->error set. */
static const struct vhu_backend_request_info *validate(struct vhu_backend_channel *ch, const struct vhu_msg *msg) {
        const struct vhu_backend_request_info *info = vhu_backend_request_info(msg->hdr.request);
        if (!info) {
                snprintf(ch->error, sizeof(ch->error), "back-end request %u: unknown request", msg->hdr.request);
                return NULL;
        }
        if ((msg->hdr.flags & VHU_VERSION_MASK) != VHU_VERSION || (msg->hdr.flags & VHU_FLAG_REPLY)) {
                snprintf(ch->error, sizeof(ch->error), "back-end request %s: invalid flags 0x%x", info->name,
                         msg->hdr.flags);
                return NULL;
        }
        if (!vhu_size_allowed(&info->size, msg->hdr.size)) {
                snprintf(ch->error, sizeof(ch->error), "back-end request %s: payload of %u bytes, expected %u",
                         info->name, msg->hdr.size, info->size.min);
                return NULL;
        }
        if (!(ch->protocol_features & VHU_BIT(info->protocol_feature))) {
                snprintf(ch->error, sizeof(ch->error), "back-end request %s: protocol feature %s not negotiated",
                         info->name, vhu_protocol_feature_name((unsigned) info->protocol_feature));
                return NULL;
        }
        return info;
}

static const char *read_error_text(int err) {
        switch (err) {
        case -ECONNRESET:
                return "closed by the back-end";
        case -ETIMEDOUT:
                return "a message began but did not arrive whole in time";
        case -EMSGSIZE:
                return "message carried more than 8 fds";
        default:
                return strerror(-err);
        }
}

/* Serves one waiting request; nothing read after deadline_usec. */
static int process_one(struct vhu_backend_channel *ch, uint64_t deadline_usec) {
        if (ch->fd < 0)
                return -ENOTCONN;

        /* Nothing waiting is not an error; a message once started must arrive whole. */
        struct pollfd pfd = { .fd = ch->fd, .events = POLLIN };
        if (poll(&pfd, 1, 0) == 0)
                return 0;
        if (!within_rate(ch))
                return channel_fail(ch, -ECONNABORTED, "back-end channel: flooded, more than %u messages within %u ms",
                                    VHU_BACKEND_CHANNEL_FLOOD_MAX, VHU_BACKEND_CHANNEL_FLOOD_WINDOW_MS);

        struct vhu_msg msg = { 0 };
        int r = vhu_recv_hdr(ch->fd, &msg, NULL, message_deadline(deadline_usec));
        if (r < 0)
                return channel_fail(ch, r, "back-end channel: %s", read_error_text(r));

        const struct vhu_backend_request_info *info = validate(ch, &msg);
        if (!info || msg.hdr.size > sizeof(msg.payload)) {
                vhu_msg_close_fds(&msg);
                return channel_close(ch, -EPROTO); /* validate() said why */
        }
        r = vhu_recv_payload(ch->fd, &msg, NULL, message_deadline(deadline_usec));
        if (r < 0)
                return channel_fail(ch, r, "back-end request %s: payload: %s", info->name, read_error_text(r));
        /* fds are legal only where the table says so, and only with BACKEND_SEND_FD. */
        bool may_send_fds = ch->protocol_features & VHU_BIT(VHU_PF_BACKEND_SEND_FD);
        if (msg.nfds > (may_send_fds ? info->fds_max : 0)) {
                unsigned n = msg.nfds;
                vhu_msg_close_fds(&msg);
                return channel_fail(ch, -EPROTO, "back-end request %s: %u unexpected fds", info->name, n);
        }

        int reply_fd = -1;
        int status = dispatch(ch, &msg, &reply_fd);
        if (status < 0 && reply_fd >= 0) {
                close(reply_fd);
                reply_fd = -1;
        }
        vhu_msg_close_fds(&msg); /* a handler that kept its fd took it out of msg */
        if (status < 0)
                ch->refused++;
        else
                ch->served++;

        r = 0;
        if (msg.hdr.flags & VHU_FLAG_NEED_REPLY)
                r = send_status(ch, msg.hdr.request, status < 0 ? (uint64_t) -status : 0, reply_fd, deadline_usec);
        /* sendmsg passed a duplicate; our copy goes either way. */
        if (reply_fd >= 0)
                close(reply_fd);
        if (r < 0)
                return channel_fail(ch, r, "back-end request %s: reply: %s", info->name, strerror(-r));
        return 1;
}

int vhu_backend_channel_process(struct vhu_backend_channel *ch) {
        return process_one(ch, UINT64_MAX);
}

int vhu_backend_channel_serve(struct vhu_backend_channel *ch, unsigned max_messages, uint64_t deadline_usec) {
        if (ch->fd < 0)
                return -ENOTCONN;
        int served = 0;
        for (unsigned i = 0; i < max_messages && vhu_now_usec() < deadline_usec; i++) {
                int r = process_one(ch, deadline_usec);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                served++;
        }
        return served;
}
