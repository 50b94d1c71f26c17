/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto/vhost-user-frontend.h"
#include "proto/vhost-user-table.h"

struct vhu_conn {
        int fd;
        unsigned timeout_ms;
        struct vhu_io io; /* io.wait == NULL: the built-in wait */
        vhu_trace_fn trace;
        void *trace_userdata;

        bool features_known;
        uint64_t features; /* offered */
        uint64_t acked_features;
        uint64_t protocol_features_offered;
        uint64_t protocol_features; /* negotiated */
        unsigned queue_num;
        uint64_t max_mem_slots;
        struct vhu_backend_channel *channel;

        uint32_t last_request;
        uint64_t requests, request_failures; /* sent on this connection, and of those, failed */
        /* Why the back-end channel failed during the request in flight, or "". */
        char channel_error[192];
        char error[448];
};

/* ---- errors ---------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int fail(struct vhu_conn *c, int err, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->error, sizeof(c->error), fmt, ap);
        va_end(ap);
        return err;
}

static void disconnect(struct vhu_conn *c) {
        if (c->fd >= 0) {
                close(c->fd);
                c->fd = -1;
        }
        vhu_backend_channel_free(c->channel);
        c->channel = NULL;
}

/* A protocol violation: the stream can no longer be trusted, so it is closed. */
__attribute__((format(printf, 3, 4))) static int fail_fatal(struct vhu_conn *c, int err, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->error, sizeof(c->error), fmt, ap);
        va_end(ap);
        disconnect(c);
        return err;
}

static const char *io_error_text(int err) {
        switch (err) {
        case -ETIMEDOUT:
                return "no reply in time";
        case -ECONNRESET:
                return "connection closed by the back-end";
        case -EMSGSIZE:
                return "message carried more than 8 fds";
        default:
                return strerror(-err);
        }
}

/*
 * A request that failed on the socket (timeout, hang-up): when the back-end
 * channel was cut off meanwhile, that is likely why, so the error says both.
 */
static int fail_io(struct vhu_conn *c, int err, const char *name, const char *what) {
        if (c->channel_error[0])
                return fail_fatal(c, err, "%s: %s%s (%s)", name, what, io_error_text(err), c->channel_error);
        return fail_fatal(c, err, "%s: %s%s", name, what, io_error_text(err));
}

/* ---- lifecycle -------------------------------------------------------- */

int vhu_conn_new(int fd, const struct vhu_conn_options *opts, struct vhu_conn **out) {
        int r = vhu_fd_prepare(fd);
        if (r < 0) {
                close(fd);
                return r;
        }
        struct vhu_conn *c = calloc(1, sizeof(*c));
        if (!c) {
                close(fd);
                return -ENOMEM;
        }
        c->fd = fd;
        c->timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : VHU_DEFAULT_TIMEOUT_MS;
        c->queue_num = 1;
        *out = c;
        return 0;
}

int vhu_conn_connect(const char *path, const struct vhu_conn_options *opts, struct vhu_conn **out) {
        unsigned timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : VHU_DEFAULT_TIMEOUT_MS;
        int fd = vhu_socket_connect_until(path, vhu_deadline_after_ms(timeout_ms));
        if (fd < 0)
                return fd;
        return vhu_conn_new(fd, opts, out);
}

void vhu_conn_free(struct vhu_conn *c) {
        if (!c)
                return;
        disconnect(c);
        free(c);
}

const char *vhu_conn_error(const struct vhu_conn *c) {
        return c->error;
}
uint32_t vhu_conn_last_request(const struct vhu_conn *c) {
        return c->last_request;
}
uint64_t vhu_conn_requests(const struct vhu_conn *c) {
        return c->requests;
}
uint64_t vhu_conn_request_failures(const struct vhu_conn *c) {
        return c->request_failures;
}
bool vhu_conn_is_connected(const struct vhu_conn *c) {
        return c->fd >= 0;
}
int vhu_conn_fd(const struct vhu_conn *c) {
        return c->fd;
}
void vhu_conn_set_timeout(struct vhu_conn *c, unsigned timeout_ms) {
        c->timeout_ms = timeout_ms ? timeout_ms : VHU_DEFAULT_TIMEOUT_MS;
}
void vhu_conn_set_io(struct vhu_conn *c, const struct vhu_io *io) {
        c->io = io ? *io : (struct vhu_io){ 0 };
}
void vhu_conn_set_trace(struct vhu_conn *c, vhu_trace_fn fn, void *userdata) {
        c->trace = fn;
        c->trace_userdata = userdata;
}

uint64_t vhu_conn_features(const struct vhu_conn *c) {
        return c->features;
}
uint64_t vhu_conn_acked_features(const struct vhu_conn *c) {
        return c->acked_features;
}
uint64_t vhu_conn_protocol_features_offered(const struct vhu_conn *c) {
        return c->protocol_features_offered;
}
uint64_t vhu_conn_protocol_features(const struct vhu_conn *c) {
        return c->protocol_features;
}
bool vhu_conn_has_protocol_feature(const struct vhu_conn *c, unsigned bit) {
        return bit < 64 && (c->protocol_features & VHU_BIT(bit));
}
unsigned vhu_conn_queue_num(const struct vhu_conn *c) {
        return c->queue_num;
}
uint64_t vhu_conn_max_mem_slots(const struct vhu_conn *c) {
        return c->max_mem_slots;
}
struct vhu_backend_channel *vhu_conn_backend_channel(const struct vhu_conn *c) {
        return c->channel;
}

/* ---- waiting ----------------------------------------------------------- */

/*
 * The built-in wait serves the back-end channel while a reply is pending:
 * a back-end may send its own request and block on our answer before it
 * answers ours, and neither side must wait for the other for ever.
 */
/*
 * Serves a bounded number of the back-end's requests.  When the channel
 * fails (a flood, garbage, a stalled message) it is closed and the main
 * connection goes on; why is kept, for the request's error should it fail.
 */
static void serve_channel(struct vhu_conn *c, uint64_t deadline_usec) {
        int r = vhu_backend_channel_serve(c->channel, VHU_BACKEND_CHANNEL_BUDGET, deadline_usec);
        if (r < 0 && !c->channel_error[0])
                snprintf(c->channel_error, sizeof(c->channel_error), "%s", vhu_backend_channel_error(c->channel));
}

static int wait_serving_channel(void *userdata, int fd, short events, uint64_t deadline_usec) {
        struct vhu_conn *c = userdata;

        for (;;) {
                /*
                 * Checked on every round: a back-end that keeps its channel
                 * readable would otherwise keep poll() returning at once.
                 */
                if (vhu_now_usec() >= deadline_usec)
                        return -ETIMEDOUT;
                struct pollfd pfd[2] = { { .fd = fd, .events = events } };
                unsigned n = 1;
                if (c->channel && vhu_backend_channel_is_open(c->channel))
                        pfd[n++] = (struct pollfd){ .fd = vhu_backend_channel_fd(c->channel), .events = POLLIN };

                int r = vhu_poll_until(pfd, n, deadline_usec);
                if (r < 0)
                        return r;
                if (n > 1 && pfd[1].revents)
                        serve_channel(c, deadline_usec);
                if (pfd[0].revents)
                        return 0;
        }
}

static struct vhu_io conn_io(struct vhu_conn *c) {
        if (c->io.wait)
                return c->io;
        return (struct vhu_io){ .wait = wait_serving_channel, .userdata = c };
}

/* ---- the one place where requests go out and replies come back --------- */

static int check_gate(struct vhu_conn *c, const struct vhu_request_info *info) {
        if (info->protocol_feature >= 0 && !(c->protocol_features & VHU_BIT(info->protocol_feature)))
                return fail(c, -ENOTSUP, "%s: protocol feature %s not negotiated", info->name,
                            vhu_protocol_feature_name((unsigned) info->protocol_feature));
        if (info->virtio_feature >= 0) {
                if (!c->features_known)
                        return fail(c, -ENOTSUP, "%s: back-end features not known yet (GET_FEATURES first)",
                                    info->name);
                if (!(c->features & VHU_BIT(info->virtio_feature)))
                        return fail(c, -ENOTSUP, "%s: back-end does not offer feature %s", info->name,
                                    vhu_virtio_feature_name((unsigned) info->virtio_feature));
        }
        return 0;
}

static bool wants_ack(const struct vhu_conn *c, const struct vhu_request_info *info) {
        if (info->reply == VHU_REPLY_STATUS_ALWAYS)
                return true;
        return info->changes_state && info->reply == VHU_REPLY_ACK_ONLY &&
               (c->protocol_features & VHU_BIT(VHU_PF_REPLY_ACK));
}

static void describe_rule(char *buf, size_t len, const struct vhu_size_rule *rule) {
        if (rule->min == rule->max)
                snprintf(buf, len, "%u", rule->min);
        else
                snprintf(buf, len, "%u..%u", rule->min, rule->max);
}

static const struct vhu_size_rule ack_size = { sizeof(uint64_t), sizeof(uint64_t), 1 };

static int receive_reply(struct vhu_conn *c, const struct vhu_request_info *info, bool ack, const struct vhu_io *io,
                         uint64_t deadline, struct vhu_msg *reply) {
        int r = vhu_recv_hdr(c->fd, reply, io, deadline);
        if (r < 0)
                return fail_io(c, r, info->name, "");

        const char *fault = NULL;
        char detail[96] = "";
        const struct vhu_size_rule *rule = ack ? &ack_size : &info->reply_size;
        unsigned fds_allowed = ack ? 0 : info->reply_fds_max;

        if (reply->hdr.flags != VHU_REPLY_FLAGS) {
                fault = "reply flags";
                snprintf(detail, sizeof(detail), "0x%x, expected 0x%x", reply->hdr.flags, VHU_REPLY_FLAGS);
        } else if (reply->hdr.request != info->request) {
                fault = "reply is for another request";
                snprintf(detail, sizeof(detail), "%s", vhu_request_name(reply->hdr.request));
        } else if (!vhu_size_allowed(rule, reply->hdr.size)) {
                char want[32];
                describe_rule(want, sizeof(want), rule);
                fault = "reply payload size";
                snprintf(detail, sizeof(detail), "%u bytes, expected %s", reply->hdr.size, want);
        }
        if (fault) {
                vhu_msg_close_fds(reply);
                return fail_fatal(c, -EPROTO, "%s: %s %s", info->name, fault, detail);
        }

        r = vhu_recv_payload(c->fd, reply, io, deadline);
        if (r < 0)
                return fail_io(c, r, info->name, "reply payload: ");
        if (reply->nfds > fds_allowed) {
                unsigned n = reply->nfds;
                vhu_msg_close_fds(reply);
                return fail_fatal(c, -EPROTO, "%s: reply carried %u fds, expected at most %u", info->name, n,
                                  fds_allowed);
        }
        if (c->trace)
                c->trace(c->trace_userdata, false, reply);
        return 0;
}

static int request_once(struct vhu_conn *c, uint32_t request, const void *payload, uint32_t size, const int *fds,
                        unsigned nfds, struct vhu_msg *reply, bool *sent);

/* Counts what goes on the wire: a request refused before sending is the caller's mistake, not the back-end's. */
int vhu_request(struct vhu_conn *c, uint32_t request, const void *payload, uint32_t size, const int *fds, unsigned nfds,
                struct vhu_msg *reply) {
        bool sent = false;
        int r = request_once(c, request, payload, size, fds, nfds, reply, &sent);
        if (sent) {
                c->requests++;
                if (r < 0)
                        c->request_failures++;
        }
        return r;
}

static int request_once(struct vhu_conn *c, uint32_t request, const void *payload, uint32_t size, const int *fds,
                        unsigned nfds, struct vhu_msg *reply, bool *sent) {
        const struct vhu_request_info *info = vhu_request_info(request);
        c->last_request = request;
        if (!info)
                return fail(c, -EINVAL, "%s: not a front-end request", vhu_request_name(request));
        if (!vhu_size_allowed(&info->size, size) || size > sizeof(union vhu_payload))
                return fail(c, -EINVAL, "%s: payload of %u bytes is not valid for this request", info->name, size);
        if (nfds < info->fds_min || nfds > info->fds_max)
                return fail(c, -EINVAL, "%s: %u fds given, %u..%u expected", info->name, nfds, info->fds_min,
                            info->fds_max);
        if (c->fd < 0)
                return fail(c, -ENOTCONN, "%s: not connected (the connection was closed after an earlier failure)",
                            info->name);
        int r = check_gate(c, info);
        if (r < 0)
                return r;

        bool ack = wants_ack(c, info);
        struct vhu_msg msg = {
                .hdr = { .request = request, .flags = VHU_VERSION | (ack ? VHU_FLAG_NEED_REPLY : 0), .size = size },
                .nfds = nfds,
        };
        if (size)
                memcpy(&msg.payload, payload, size);
        for (unsigned i = 0; i < nfds; i++)
                msg.fds[i] = fds[i];

        struct vhu_io io = conn_io(c);
        uint64_t deadline = vhu_deadline_after_ms(c->timeout_ms);
        if (c->trace)
                c->trace(c->trace_userdata, true, &msg);
        c->channel_error[0] = '\0';
        *sent = true;
        r = vhu_send_msg(c->fd, &msg, &io, deadline);
        if (r < 0)
                return fail_io(c, r, info->name, "send: ");

        bool expect_reply = ack || info->reply == VHU_REPLY_ALWAYS ||
                            (info->reply == VHU_REPLY_IF_LOG_SHMFD &&
                             (c->protocol_features & VHU_BIT(VHU_PF_LOG_SHMFD)));
        if (!expect_reply)
                return 0;

        struct vhu_msg local;
        struct vhu_msg *rep = reply ? reply : &local;
        r = receive_reply(c, info, ack, &io, deadline, rep);
        if (r < 0)
                return r;
        if (ack && rep->payload.u64 != 0)
                return fail(c, -EREMOTEIO, "%s: back-end refused the request (status %" PRIu64 ")", info->name,
                            rep->payload.u64);
        if (!reply)
                vhu_msg_close_fds(&local);
        return 0;
}

/* ---- small helpers for the typed calls --------------------------------- */

static int request_none(struct vhu_conn *c, uint32_t request) {
        return vhu_request(c, request, NULL, 0, NULL, 0, NULL);
}

static int request_u64(struct vhu_conn *c, uint32_t request, uint64_t value) {
        return vhu_request(c, request, &value, sizeof(value), NULL, 0, NULL);
}

static int request_state(struct vhu_conn *c, uint32_t request, unsigned index, unsigned num) {
        struct vhu_vring_state s = { .index = index, .num = num };
        return vhu_request(c, request, &s, sizeof(s), NULL, 0, NULL);
}

static int request_fd(struct vhu_conn *c, uint32_t request, int fd) {
        if (fd < 0)
                return fail(c, -EBADF, "%s: no fd given", vhu_request_name(request));
        return vhu_request(c, request, NULL, 0, &fd, 1, NULL);
}

/* A request answered with a u64 and no fd. */
static int query_u64(struct vhu_conn *c, uint32_t request, uint64_t *value) {
        struct vhu_msg reply;
        int r = vhu_request(c, request, NULL, 0, NULL, 0, &reply);
        if (r < 0)
                return r;
        *value = reply.payload.u64;
        vhu_msg_close_fds(&reply);
        return 0;
}

static int check_ring_index(struct vhu_conn *c, uint32_t request, unsigned index) {
        if (index > VHU_VRING_IDX_MASK)
                return fail(c, -EINVAL, "%s: queue index %u out of range", vhu_request_name(request), index);
        return 0;
}

/* Reply fds: exactly `want` of them, or a protocol violation. */
static int expect_reply_fds(struct vhu_conn *c, uint32_t request, struct vhu_msg *reply, unsigned want) {
        if (reply->nfds == want)
                return 0;
        unsigned got = reply->nfds;
        vhu_msg_close_fds(reply);
        return fail_fatal(c, -EPROTO, "%s: reply carried %u fds, expected %u", vhu_request_name(request), got, want);
}

/* ---- requests ---------------------------------------------------------- */

int vhu_get_features(struct vhu_conn *c, uint64_t *features) {
        int r = query_u64(c, VHU_REQ_GET_FEATURES, features);
        if (r < 0)
                return r;
        c->features = *features;
        c->features_known = true;
        return 0;
}

int vhu_set_features(struct vhu_conn *c, uint64_t features) {
        if (!c->features_known)
                return fail(c, -ENOTSUP, "SET_FEATURES: back-end features not known yet (GET_FEATURES first)");
        if (features & ~c->features)
                return fail(c, -EINVAL, "SET_FEATURES: 0x%" PRIx64 " not offered by the back-end",
                            features & ~c->features);
        /* Dropping PROTOCOL_FEATURES would take away the protocol features already negotiated. */
        features |= c->features & VHU_BIT(VHU_VF_PROTOCOL_FEATURES);
        int r = request_u64(c, VHU_REQ_SET_FEATURES, features);
        if (r == 0)
                c->acked_features = features;
        return r;
}

int vhu_set_owner(struct vhu_conn *c) {
        return request_none(c, VHU_REQ_SET_OWNER);
}
int vhu_reset_owner(struct vhu_conn *c) {
        return request_none(c, VHU_REQ_RESET_OWNER);
}

static int check_region(struct vhu_conn *c, const char *name, const struct vhu_region *reg) {
        if (reg->fd < 0)
                return fail(c, -EBADF, "%s: region at 0x%" PRIx64 " has no fd", name, reg->guest_phys_addr);
        if (reg->memory_size == 0)
                return fail(c, -EINVAL, "%s: region at 0x%" PRIx64 " is empty", name, reg->guest_phys_addr);
        if (reg->guest_phys_addr + reg->memory_size < reg->guest_phys_addr ||
            reg->userspace_addr + reg->memory_size < reg->userspace_addr)
                return fail(c, -EINVAL, "%s: region at 0x%" PRIx64 " wraps around", name, reg->guest_phys_addr);
        return 0;
}

static bool regions_overlap(const struct vhu_region *a, const struct vhu_region *b) {
        return a->guest_phys_addr < b->guest_phys_addr + b->memory_size &&
               b->guest_phys_addr < a->guest_phys_addr + a->memory_size;
}

static void fill_region(struct vhu_mem_region *out, const struct vhu_region *in) {
        *out = (struct vhu_mem_region){
                .guest_phys_addr = in->guest_phys_addr,
                .memory_size = in->memory_size,
                .userspace_addr = in->userspace_addr,
                .mmap_offset = in->mmap_offset,
        };
}

int vhu_set_mem_table(struct vhu_conn *c, const struct vhu_region *regions, unsigned n) {
        if (n == 0 || n > VHU_MAX_MEM_REGIONS)
                return fail(c, -EINVAL, "SET_MEM_TABLE: %u regions, 1..%u allowed", n, VHU_MAX_MEM_REGIONS);

        struct vhu_mem_table table = { .nregions = n };
        int fds[VHU_MAX_MEM_REGIONS];
        for (unsigned i = 0; i < n; i++) {
                int r = check_region(c, "SET_MEM_TABLE", &regions[i]);
                if (r < 0)
                        return r;
                for (unsigned j = 0; j < i; j++)
                        if (regions_overlap(&regions[i], &regions[j]))
                                return fail(c, -EINVAL, "SET_MEM_TABLE: regions %u and %u overlap", j, i);
                fill_region(&table.regions[i], &regions[i]);
                fds[i] = regions[i].fd;
        }
        return vhu_request(c, VHU_REQ_SET_MEM_TABLE, &table, (uint32_t) vhu_mem_table_size(n), fds, n, NULL);
}

int vhu_set_log_base(struct vhu_conn *c, int log_fd, uint64_t mmap_size, uint64_t mmap_offset) {
        if (log_fd < 0)
                return fail(c, -EBADF, "SET_LOG_BASE: no log fd given");
        if (mmap_size == 0)
                return fail(c, -EINVAL, "SET_LOG_BASE: empty log");
        struct vhu_log log = { .mmap_size = mmap_size, .mmap_offset = mmap_offset };
        struct vhu_msg reply;
        int r = vhu_request(c, VHU_REQ_SET_LOG_BASE, &log, sizeof(log), &log_fd, 1, &reply);
        if (r < 0)
                return r;
        /* The spec leaves the reply's content open: only its arrival matters. */
        vhu_msg_close_fds(&reply);
        return 0;
}

int vhu_set_log_fd(struct vhu_conn *c, int eventfd) {
        return request_fd(c, VHU_REQ_SET_LOG_FD, eventfd);
}

int vhu_set_vring_num(struct vhu_conn *c, unsigned index, unsigned num) {
        return request_state(c, VHU_REQ_SET_VRING_NUM, index, num);
}

int vhu_set_vring_addr(struct vhu_conn *c, const struct vhu_vring_addr *addr) {
        return vhu_request(c, VHU_REQ_SET_VRING_ADDR, addr, sizeof(*addr), NULL, 0, NULL);
}

int vhu_set_vring_base(struct vhu_conn *c, unsigned index, unsigned base) {
        return request_state(c, VHU_REQ_SET_VRING_BASE, index, base);
}

int vhu_get_vring_base(struct vhu_conn *c, unsigned index, unsigned *base) {
        struct vhu_vring_state s = { .index = index };
        struct vhu_msg reply;
        int r = vhu_request(c, VHU_REQ_GET_VRING_BASE, &s, sizeof(s), NULL, 0, &reply);
        if (r < 0)
                return r;
        if (reply.payload.state.index != index)
                return fail_fatal(c, -EPROTO, "GET_VRING_BASE: reply for ring %u, asked for ring %u",
                                  reply.payload.state.index, index);
        *base = reply.payload.state.num;
        return 0;
}

static int set_vring_fd(struct vhu_conn *c, uint32_t request, unsigned index, int fd) {
        int r = check_ring_index(c, request, index);
        if (r < 0)
                return r;
        uint64_t value = index | (fd < 0 ? VHU_VRING_NOFD_MASK : 0);
        return vhu_request(c, request, &value, sizeof(value), fd < 0 ? NULL : &fd, fd < 0 ? 0 : 1, NULL);
}

int vhu_set_vring_kick(struct vhu_conn *c, unsigned index, int fd) {
        return set_vring_fd(c, VHU_REQ_SET_VRING_KICK, index, fd);
}
int vhu_set_vring_call(struct vhu_conn *c, unsigned index, int fd) {
        return set_vring_fd(c, VHU_REQ_SET_VRING_CALL, index, fd);
}
int vhu_set_vring_err(struct vhu_conn *c, unsigned index, int fd) {
        return set_vring_fd(c, VHU_REQ_SET_VRING_ERR, index, fd);
}

int vhu_get_protocol_features(struct vhu_conn *c, uint64_t *features) {
        int r = query_u64(c, VHU_REQ_GET_PROTOCOL_FEATURES, features);
        if (r == 0)
                c->protocol_features_offered = *features;
        return r;
}

int vhu_set_protocol_features(struct vhu_conn *c, uint64_t features) {
        if (features & ~c->protocol_features_offered)
                return fail(c, -EINVAL, "SET_PROTOCOL_FEATURES: 0x%" PRIx64 " not offered by the back-end",
                            features & ~c->protocol_features_offered);
        if (features & ~vhu_supported_protocol_features())
                return fail(c, -EINVAL, "SET_PROTOCOL_FEATURES: 0x%" PRIx64 " not supported by this front-end",
                            features & ~vhu_supported_protocol_features());
        int r = request_u64(c, VHU_REQ_SET_PROTOCOL_FEATURES, features);
        if (r == 0)
                c->protocol_features = features;
        return r;
}

int vhu_get_queue_num(struct vhu_conn *c, uint64_t *num) {
        int r = query_u64(c, VHU_REQ_GET_QUEUE_NUM, num);
        if (r < 0)
                return r;
        if (*num == 0 || *num > VHU_VRING_IDX_MASK / 2 + 1)
                return fail_fatal(c, -EPROTO, "GET_QUEUE_NUM: back-end reports %" PRIu64 " queue pairs", *num);
        c->queue_num = (unsigned) *num;
        return 0;
}

int vhu_set_vring_enable(struct vhu_conn *c, unsigned index, bool enable) {
        return request_state(c, VHU_REQ_SET_VRING_ENABLE, index, enable ? 1 : 0);
}

int vhu_send_rarp(struct vhu_conn *c, const uint8_t mac[6]) {
        uint64_t value = 0;
        memcpy(&value, mac, 6);
        return request_u64(c, VHU_REQ_SEND_RARP, value);
}

int vhu_net_set_mtu(struct vhu_conn *c, uint16_t mtu) {
        if (mtu < 68)
                return fail(c, -EINVAL, "NET_SET_MTU: MTU %u below the IPv4 minimum of 68", mtu);
        return request_u64(c, VHU_REQ_NET_SET_MTU, mtu);
}

int vhu_set_backend_req_fd(struct vhu_conn *c, int fd) {
        return request_fd(c, VHU_REQ_SET_BACKEND_REQ_FD, fd);
}

int vhu_iotlb_msg(struct vhu_conn *c, const struct vhu_iotlb *msg) {
        if (msg->type < VHU_IOTLB_MISS || msg->type > VHU_IOTLB_ACCESS_FAIL)
                return fail(c, -EINVAL, "IOTLB_MSG: unknown type %u", msg->type);
        return vhu_request(c, VHU_REQ_IOTLB_MSG, msg, sizeof(*msg), NULL, 0, NULL);
}

int vhu_set_vring_endian(struct vhu_conn *c, unsigned index, bool big_endian) {
        return request_state(c, VHU_REQ_SET_VRING_ENDIAN, index, big_endian ? 1 : 0);
}

static int config_size_ok(struct vhu_conn *c, const char *name, uint32_t offset, uint32_t size) {
        if (size == 0 || size > VHU_MAX_CONFIG_SIZE || offset > VHU_MAX_CONFIG_SIZE - size)
                return fail(c, -EINVAL, "%s: %u bytes at offset %u exceed the %u-byte config space", name, size, offset,
                            VHU_MAX_CONFIG_SIZE);
        return 0;
}

int vhu_get_config(struct vhu_conn *c, uint32_t offset, uint32_t size, uint32_t flags, void *buf) {
        int r = config_size_ok(c, "GET_CONFIG", offset, size);
        if (r < 0)
                return r;
        struct vhu_config cfg = { .offset = offset, .size = size, .flags = flags };
        struct vhu_msg reply;
        r = vhu_request(c, VHU_REQ_GET_CONFIG, &cfg, (uint32_t) VHU_CONFIG_HDR_SIZE + size, NULL, 0, &reply);
        if (r < 0)
                return r;
        if (reply.hdr.size != VHU_CONFIG_HDR_SIZE + size || reply.payload.config.size != size)
                return fail_fatal(c, -EPROTO, "GET_CONFIG: reply holds %u bytes of config, asked for %u",
                                  reply.payload.config.size, size);
        memcpy(buf, reply.payload.config.region, size);
        return 0;
}

int vhu_set_config(struct vhu_conn *c, uint32_t offset, uint32_t size, uint32_t flags, const void *buf) {
        int r = config_size_ok(c, "SET_CONFIG", offset, size);
        if (r < 0)
                return r;
        if (flags > VHU_CONFIG_FLAG_MIGRATION)
                return fail(c, -EINVAL, "SET_CONFIG: unknown flags 0x%x", flags);
        struct vhu_config cfg = { .offset = offset, .size = size, .flags = flags };
        memcpy(cfg.region, buf, size);
        return vhu_request(c, VHU_REQ_SET_CONFIG, &cfg, (uint32_t) VHU_CONFIG_HDR_SIZE + size, NULL, 0, NULL);
}

int vhu_create_crypto_session(struct vhu_conn *c, const void *session, uint32_t size, int64_t *session_id) {
        if (size < sizeof(int64_t) || size > sizeof(struct vhu_crypto_session))
                return fail(c, -EINVAL, "CREATE_CRYPTO_SESSION: session description of %u bytes", size);
        struct vhu_msg reply;
        int r = vhu_request(c, VHU_REQ_CREATE_CRYPTO_SESSION, session, size, NULL, 0, &reply);
        if (r < 0)
                return r;
        if (reply.payload.crypto.session_id < 0)
                return fail(c, -EREMOTEIO, "CREATE_CRYPTO_SESSION: back-end refused (session id %" PRId64 ")",
                            reply.payload.crypto.session_id);
        *session_id = reply.payload.crypto.session_id;
        return 0;
}

int vhu_close_crypto_session(struct vhu_conn *c, int64_t session_id) {
        return request_u64(c, VHU_REQ_CLOSE_CRYPTO_SESSION, (uint64_t) session_id);
}

int vhu_postcopy_advise(struct vhu_conn *c, int *ufd) {
        struct vhu_msg reply;
        int r = vhu_request(c, VHU_REQ_POSTCOPY_ADVISE, NULL, 0, NULL, 0, &reply);
        if (r < 0)
                return r;
        r = expect_reply_fds(c, VHU_REQ_POSTCOPY_ADVISE, &reply, 1);
        if (r < 0)
                return r;
        *ufd = reply.fds[0];
        return 0;
}

int vhu_postcopy_listen(struct vhu_conn *c) {
        return request_none(c, VHU_REQ_POSTCOPY_LISTEN);
}

int vhu_postcopy_end(struct vhu_conn *c) {
        return request_none(c, VHU_REQ_POSTCOPY_END);
}

int vhu_get_inflight_fd(struct vhu_conn *c, uint16_t num_queues, uint16_t queue_size, struct vhu_inflight *inflight,
                        int *fd) {
        struct vhu_inflight req = { .num_queues = num_queues, .queue_size = queue_size };
        struct vhu_msg reply;
        int r = vhu_request(c, VHU_REQ_GET_INFLIGHT_FD, &req, sizeof(req), NULL, 0, &reply);
        if (r < 0)
                return r;
        /* An area of size 0 means the back-end has no inflight tracking to offer. */
        r = expect_reply_fds(c, VHU_REQ_GET_INFLIGHT_FD, &reply, reply.payload.inflight.mmap_size ? 1 : 0);
        if (r < 0)
                return r;
        *inflight = reply.payload.inflight;
        *fd = reply.nfds ? reply.fds[0] : -1;
        return 0;
}

int vhu_set_inflight_fd(struct vhu_conn *c, const struct vhu_inflight *inflight, int fd) {
        if (fd < 0)
                return fail(c, -EBADF, "SET_INFLIGHT_FD: no fd given");
        return vhu_request(c, VHU_REQ_SET_INFLIGHT_FD, inflight, sizeof(*inflight), &fd, 1, NULL);
}

int vhu_gpu_set_socket(struct vhu_conn *c, int fd) {
        return request_fd(c, VHU_REQ_GPU_SET_SOCKET, fd);
}
int vhu_reset_device(struct vhu_conn *c) {
        return request_none(c, VHU_REQ_RESET_DEVICE);
}

int vhu_vring_kick(struct vhu_conn *c, unsigned index) {
        return request_state(c, VHU_REQ_VRING_KICK, index, 0);
}

int vhu_get_max_mem_slots(struct vhu_conn *c, uint64_t *slots) {
        int r = query_u64(c, VHU_REQ_GET_MAX_MEM_SLOTS, slots);
        if (r < 0)
                return r;
        if (*slots == 0)
                return fail_fatal(c, -EPROTO, "GET_MAX_MEM_SLOTS: back-end reports no memory slots");
        c->max_mem_slots = *slots;
        return 0;
}

static int mem_reg_request(struct vhu_conn *c, uint32_t request, const struct vhu_region *region, bool send_fd) {
        int r = check_region(c, vhu_request_name(request), region);
        if (r < 0)
                return r;
        struct vhu_mem_reg reg = { 0 };
        fill_region(&reg.region, region);
        return vhu_request(c, request, &reg, sizeof(reg), &region->fd, send_fd ? 1 : 0, NULL);
}

int vhu_add_mem_reg(struct vhu_conn *c, const struct vhu_region *region) {
        return mem_reg_request(c, VHU_REQ_ADD_MEM_REG, region, true);
}

int vhu_rem_mem_reg(struct vhu_conn *c, const struct vhu_region *region) {
        /* The region is identified by its addresses; its fd is not needed to remove it. */
        return mem_reg_request(c, VHU_REQ_REM_MEM_REG, region, false);
}

int vhu_set_status(struct vhu_conn *c, uint8_t status) {
        return request_u64(c, VHU_REQ_SET_STATUS, status);
}

int vhu_get_status(struct vhu_conn *c, uint8_t *status) {
        uint64_t value;
        int r = query_u64(c, VHU_REQ_GET_STATUS, &value);
        if (r < 0)
                return r;
        if (value > UINT8_MAX)
                return fail_fatal(c, -EPROTO, "GET_STATUS: status 0x%" PRIx64 " does not fit a byte", value);
        *status = (uint8_t) value;
        return 0;
}

int vhu_get_shared_object(struct vhu_conn *c, const uint8_t uuid[16], int *fd) {
        struct vhu_shared_object obj;
        memcpy(obj.uuid, uuid, sizeof(obj.uuid));
        struct vhu_msg reply;
        int r = vhu_request(c, VHU_REQ_GET_SHARED_OBJECT, &obj, sizeof(obj), NULL, 0, &reply);
        if (r < 0)
                return r;
        /* Only the fd says whether the object was found. */
        if (reply.nfds == 0)
                return fail(c, -ENOENT, "GET_SHARED_OBJECT: back-end has no such object");
        *fd = reply.fds[0];
        return 0;
}

int vhu_set_device_state_fd(struct vhu_conn *c, uint32_t direction, uint32_t phase, int fd, int *reply_fd) {
        if (direction > VHU_TRANSFER_LOAD || phase != VHU_TRANSFER_STOPPED)
                return fail(c, -EINVAL, "SET_DEVICE_STATE_FD: direction %u / phase %u not defined", direction, phase);
        if (fd < 0)
                return fail(c, -EBADF, "SET_DEVICE_STATE_FD: no fd given");
        struct vhu_device_state st = { .direction = direction, .phase = phase };
        struct vhu_msg reply;
        int r = vhu_request(c, VHU_REQ_SET_DEVICE_STATE_FD, &st, sizeof(st), &fd, 1, &reply);
        if (r < 0)
                return r;
        uint64_t status = reply.payload.u64;
        if (status & VHU_DEVICE_STATE_ERR_MASK) {
                vhu_msg_close_fds(&reply);
                return fail(c, -EREMOTEIO, "SET_DEVICE_STATE_FD: back-end refused (status %" PRIu64 ")",
                            status & VHU_DEVICE_STATE_ERR_MASK);
        }
        bool has_fd = !(status & VHU_DEVICE_STATE_NOFD_MASK);
        r = expect_reply_fds(c, VHU_REQ_SET_DEVICE_STATE_FD, &reply, has_fd ? 1 : 0);
        if (r < 0)
                return r;
        *reply_fd = has_fd ? reply.fds[0] : -1;
        return 0;
}

int vhu_check_device_state(struct vhu_conn *c) {
        uint64_t status;
        int r = query_u64(c, VHU_REQ_CHECK_DEVICE_STATE, &status);
        if (r == 0 && status != 0)
                return fail(c, -EREMOTEIO, "CHECK_DEVICE_STATE: device state transfer failed (status %" PRIu64 ")",
                            status);
        return r;
}

/* ---- negotiation ------------------------------------------------------- */

int vhu_barrier(struct vhu_conn *c) {
        uint64_t before = c->features, now;
        int r = query_u64(c, VHU_REQ_GET_FEATURES, &now);
        if (r < 0)
                return r;
        if (c->features_known && now != before)
                return fail_fatal(c, -EPROTO, "GET_FEATURES: features changed from 0x%" PRIx64 " to 0x%" PRIx64, before,
                                  now);
        return 0;
}

static int open_backend_channel(struct vhu_conn *c, const struct vhu_negotiation *n) {
        int backend_fd;
        int r = vhu_backend_channel_new(n ? n->backend_handlers : NULL, n ? n->backend_userdata : NULL,
                                        c->protocol_features, &backend_fd, &c->channel);
        if (r < 0)
                return fail(c, r, "SET_BACKEND_REQ_FD: cannot create the channel: %s", strerror(-r));
        r = vhu_set_backend_req_fd(c, backend_fd);
        close(backend_fd);
        if (r < 0 && c->channel) {
                vhu_backend_channel_free(c->channel);
                c->channel = NULL;
        }
        return r;
}

int vhu_negotiate(struct vhu_conn *c, const struct vhu_negotiation *n) {
        uint64_t features, value;
        int r = vhu_get_features(c, &features);
        if (r < 0)
                return r;

        if (features & VHU_BIT(VHU_VF_PROTOCOL_FEATURES)) {
                r = vhu_get_protocol_features(c, &value);
                if (r < 0)
                        return r;
                uint64_t wanted = n && n->protocol_features ? n->protocol_features : vhu_supported_protocol_features();
                r = vhu_set_protocol_features(
                        c, vhu_protocol_features_consistent(value & wanted & vhu_supported_protocol_features()));
                if (r < 0)
                        return r;
        }
        if (vhu_conn_has_protocol_feature(c, VHU_PF_MQ)) {
                r = vhu_get_queue_num(c, &value);
                if (r < 0)
                        return r;
        }
        if (vhu_conn_has_protocol_feature(c, VHU_PF_CONFIGURE_MEM_SLOTS)) {
                r = vhu_get_max_mem_slots(c, &value);
                if (r < 0)
                        return r;
        }
        if (vhu_conn_has_protocol_feature(c, VHU_PF_BACKEND_REQ)) {
                r = open_backend_channel(c, n);
                if (r < 0)
                        return r;
        }
        return vhu_set_owner(c);
}

/* ---- adoption ---------------------------------------------------------- */

void vhu_conn_get_negotiated(const struct vhu_conn *c, struct vhu_conn_negotiated *out) {
        *out = (struct vhu_conn_negotiated){
                .features = c->features,
                .acked_features = c->acked_features,
                .protocol_features_offered = c->protocol_features_offered,
                .protocol_features = c->protocol_features,
                .queue_num = c->queue_num,
                .max_mem_slots = c->max_mem_slots,
                .channel_fd = vhu_backend_channel_is_open(c->channel) ? vhu_backend_channel_fd(c->channel) : -1,
        };
}

__attribute__((format(printf, 3, 4))) static int refuse(char *why, size_t len, const char *fmt, ...) {
        if (why && len) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(why, len, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* A connected Unix stream socket, or why not. */
static int check_stream_socket(int fd, const char *what, char *why, size_t len) {
        int domain = 0, type = 0;
        socklen_t sl = sizeof(domain), tl = sizeof(type);
        struct sockaddr_un peer;
        socklen_t pl = sizeof(peer);
        if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &sl) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || domain != AF_UNIX || type != SOCK_STREAM) {
                refuse(why, len, "%s: not a Unix stream socket", what);
                return -ENOTSOCK;
        }
        if (getpeername(fd, (struct sockaddr *) &peer, &pl) < 0) {
                refuse(why, len, "%s: not connected", what);
                return -ENOTCONN;
        }
        return 0;
}

/* What a real negotiation could have produced (vhu_negotiate's rules). */
static int check_negotiated(const struct vhu_conn_negotiated *n, char *why, size_t len) {
        bool has_pf = n->features & VHU_BIT(VHU_VF_PROTOCOL_FEATURES);
        if (n->acked_features & ~n->features)
                return refuse(why, len, "acked features 0x%" PRIx64 " were not offered (0x%" PRIx64 ")",
                              n->acked_features, n->features);
        if (!has_pf && (n->protocol_features_offered || n->protocol_features))
                return refuse(why, len, "protocol features without PROTOCOL_FEATURES offered");
        if (n->protocol_features & ~(n->protocol_features_offered & vhu_supported_protocol_features()))
                return refuse(why, len, "protocol features 0x%" PRIx64 " were not offered (0x%" PRIx64 ") or supported",
                              n->protocol_features, n->protocol_features_offered);
        if (n->queue_num == 0 || (n->queue_num > 1 && !(n->protocol_features & VHU_BIT(VHU_PF_MQ))))
                return refuse(why, len, "%u queue pairs without MQ", n->queue_num);
        if (n->max_mem_slots && !(n->protocol_features & VHU_BIT(VHU_PF_CONFIGURE_MEM_SLOTS)))
                return refuse(why, len, "memory slots without CONFIGURE_MEM_SLOTS");
        if ((n->channel_fd >= 0) != !!(n->protocol_features & VHU_BIT(VHU_PF_BACKEND_REQ)))
                return refuse(why, len, "a back-end channel %s BACKEND_REQ negotiated",
                              n->channel_fd >= 0 ? "without" : "missing with");
        return 0;
}

/* Our end of the channel back as a vhu_backend_channel (n->channel_fd taken). */
static int adopt_channel(struct vhu_conn *c, const struct vhu_conn_negotiated *n) {
        return vhu_backend_channel_adopt(n->channel_fd, n->backend_handlers, n->backend_userdata, n->protocol_features,
                                         &c->channel);
}

int vhu_conn_adopt(int fd, const struct vhu_conn_negotiated *n, const struct vhu_conn_options *opts,
                   struct vhu_conn **out, char *why, size_t why_len) {
        int channel_fd = n ? n->channel_fd : -1;
        int r = n ? check_stream_socket(fd, "the connection", why, why_len) : -EINVAL;
        if (r == 0 && channel_fd >= 0)
                r = check_stream_socket(channel_fd, "the back-end channel", why, why_len);
        if (r == 0)
                r = check_negotiated(n, why, why_len);
        if (r == 0)
                r = vhu_conn_new(fd, opts, out);
        else if (fd >= 0)
                close(fd);
        if (r == 0 && channel_fd >= 0) {
                /* adopt_channel takes the fd whatever happens. */
                r = adopt_channel(*out, n);
                channel_fd = -1;
                if (r < 0) {
                        refuse(why, why_len, "the back-end channel: %s", strerror(-r));
                        vhu_conn_free(*out);
                        *out = NULL;
                }
        }
        if (r < 0) {
                /* A failure before adopt_channel left the channel's fd open. */
                if (channel_fd >= 0)
                        close(channel_fd);
                return r;
        }
        struct vhu_conn *c = *out;
        c->features_known = true;
        c->features = n->features;
        c->acked_features = n->acked_features;
        c->protocol_features_offered = n->protocol_features_offered;
        c->protocol_features = n->protocol_features;
        c->queue_num = n->queue_num;
        c->max_mem_slots = n->max_mem_slots;
        return 0;
}
