/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The front-end side of one vhost-user connection: negotiation and every
 * front-end request of the specification as a typed call.
 *
 * Every call returns 0 or a negative errno.  On failure vhu_conn_error()
 * says why, naming the request and the fault.  A protocol violation (bad
 * flags, wrong request echoed, bad size, unexpected fds, timeout, peer gone)
 * closes the connection: every later call fails with -ENOTCONN.  A back-end
 * that answers a REPLY_ACK with a non-zero status fails only that call
 * (-EREMOTEIO); the connection stays usable.  A request whose feature was not
 * negotiated is never sent: -ENOTSUP.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/vhost-user.h"
#include "proto/vhost-user-backend-channel.h"
#include "proto/vhost-user-transport.h"

#define VHU_DEFAULT_TIMEOUT_MS 5000u

struct vhu_conn;

struct vhu_conn_options {
        /* Per request: how long to wait for the reply.  0 = VHU_DEFAULT_TIMEOUT_MS. */
        unsigned timeout_ms;
};

/* Connects to a back-end listening at path (client mode). */
int vhu_conn_connect(const char *path, const struct vhu_conn_options *opts, struct vhu_conn **out);
/* Wraps an already connected socket (server mode, after accept); takes ownership of fd. */
int vhu_conn_new(int fd, const struct vhu_conn_options *opts, struct vhu_conn **out);
/* Closes the socket, the back-end channel and everything the connection owns. */
void vhu_conn_free(struct vhu_conn *c);

/* Why the last call failed ("" when none did). */
const char *vhu_conn_error(const struct vhu_conn *c);
/* The request the last call sent (or was about to send); VHU_REQ_NONE before any. */
uint32_t vhu_conn_last_request(const struct vhu_conn *c);
/* Requests sent on this connection (a send attempted), and of those the ones that failed. */
uint64_t vhu_conn_requests(const struct vhu_conn *c);
uint64_t vhu_conn_request_failures(const struct vhu_conn *c);
bool vhu_conn_is_connected(const struct vhu_conn *c);
int vhu_conn_fd(const struct vhu_conn *c);
void vhu_conn_set_timeout(struct vhu_conn *c, unsigned timeout_ms);

/*
 * Replaces the function that waits while a request is in flight.  The
 * default polls the socket and serves the back-end channel meanwhile (a
 * back-end may block on its own request before it answers ours).
 */
void vhu_conn_set_io(struct vhu_conn *c, const struct vhu_io *io);

/* Observer of every message sent and received, for logging. */
typedef void (*vhu_trace_fn)(void *userdata, bool sent, const struct vhu_msg *msg);
void vhu_conn_set_trace(struct vhu_conn *c, vhu_trace_fn fn, void *userdata);

struct vhu_negotiation {
        /* Protocol features to acknowledge if offered; 0 = all this library supports. */
        uint64_t protocol_features;
        /* For requests the back-end sends on its own channel; NULL refuses them all. */
        const struct vhu_backend_handlers *backend_handlers;
        void *backend_userdata;
};

/*
 * A careful front-end's opening: GET_FEATURES, GET/SET_PROTOCOL_FEATURES
 * (the intersection of offer, wish and support), GET_QUEUE_NUM with MQ,
 * GET_MAX_MEM_SLOTS with CONFIGURE_MEM_SLOTS, SET_BACKEND_REQ_FD with
 * BACKEND_REQ, SET_OWNER.
 */
int vhu_negotiate(struct vhu_conn *c, const struct vhu_negotiation *n);

/* What negotiation learnt. */
uint64_t vhu_conn_features(const struct vhu_conn *c);       /* offered by the back-end */
uint64_t vhu_conn_acked_features(const struct vhu_conn *c); /* last SET_FEATURES */
uint64_t vhu_conn_protocol_features_offered(const struct vhu_conn *c);
uint64_t vhu_conn_protocol_features(const struct vhu_conn *c); /* negotiated */
bool vhu_conn_has_protocol_feature(const struct vhu_conn *c, unsigned bit);
unsigned vhu_conn_queue_num(const struct vhu_conn *c);     /* queue pairs; 1 without MQ */
uint64_t vhu_conn_max_mem_slots(const struct vhu_conn *c); /* 0 without CONFIGURE_MEM_SLOTS */
struct vhu_backend_channel *vhu_conn_backend_channel(const struct vhu_conn *c);

/*
 * Taking over a connection another process negotiated (a restarted
 * vhostmigd; see migrate/device.h, vhm_device_adopt).  vhu_conn_negotiated
 * says what was negotiated; vhu_conn_adopt wraps the socket and our end of
 * the back-end channel as a connection in that state without sending a
 * single message, so the back-end cannot tell the owner changed.
 */
struct vhu_conn_negotiated {
        uint64_t features; /* offered by the back-end */
        uint64_t acked_features;
        uint64_t protocol_features_offered;
        uint64_t protocol_features; /* negotiated */
        unsigned queue_num;         /* 1 without MQ */
        uint64_t max_mem_slots;     /* 0 without CONFIGURE_MEM_SLOTS */
        /* Our end of the back-end channel: -1 exactly when BACKEND_REQ was not negotiated. */
        int channel_fd;
        /* For the channel's requests, as in struct vhu_negotiation; NULL refuses them all. */
        const struct vhu_backend_handlers *backend_handlers;
        void *backend_userdata;
};

/*
 * What c negotiated; out->channel_fd is the connection's own (-1 without a
 * channel): duplicate it to keep it past the connection.
 */
void vhu_conn_get_negotiated(const struct vhu_conn *c, struct vhu_conn_negotiated *out);

/*
 * fd (a connected Unix stream socket) and n->channel_fd as a connection that
 * negotiated *n.  Takes both fds in every case: on refusal (-EINVAL, -ENOTSOCK,
 * -ENOTCONN, with why in `why` when not NULL) both are closed, so the
 * back-end sees its connection end rather than a half-used one.
 */
int vhu_conn_adopt(int fd, const struct vhu_conn_negotiated *n, const struct vhu_conn_options *opts,
                   struct vhu_conn **out, char *why, size_t why_len);

/*
 * Round trip that proves the back-end processed everything sent before it:
 * GET_FEATURES, whose answer must not have changed.
 */
int vhu_barrier(struct vhu_conn *c);

/* A guest memory region as the front-end describes it to the back-end. */
struct vhu_region {
        int fd; /* not consumed; the caller keeps it */
        uint64_t guest_phys_addr;
        uint64_t memory_size;
        uint64_t userspace_addr; /* the front-end's (memory owner's) mapping */
        uint64_t mmap_offset;
};

/* Requests, one call each, in table order. */
int vhu_get_features(struct vhu_conn *c, uint64_t *features);
int vhu_set_features(struct vhu_conn *c, uint64_t features);
int vhu_set_owner(struct vhu_conn *c);
int vhu_reset_owner(struct vhu_conn *c);
int vhu_set_mem_table(struct vhu_conn *c, const struct vhu_region *regions, unsigned n);
int vhu_set_log_base(struct vhu_conn *c, int log_fd, uint64_t mmap_size, uint64_t mmap_offset);
int vhu_set_log_fd(struct vhu_conn *c, int eventfd);
int vhu_set_vring_num(struct vhu_conn *c, unsigned index, unsigned num);
int vhu_set_vring_addr(struct vhu_conn *c, const struct vhu_vring_addr *addr);
int vhu_set_vring_base(struct vhu_conn *c, unsigned index, unsigned base);
int vhu_get_vring_base(struct vhu_conn *c, unsigned index, unsigned *base);
/* fd < 0 sends the NOFD flag (polling mode / in-band notifications). */
int vhu_set_vring_kick(struct vhu_conn *c, unsigned index, int fd);
int vhu_set_vring_call(struct vhu_conn *c, unsigned index, int fd);
int vhu_set_vring_err(struct vhu_conn *c, unsigned index, int fd);
int vhu_get_protocol_features(struct vhu_conn *c, uint64_t *features);
int vhu_set_protocol_features(struct vhu_conn *c, uint64_t features);
int vhu_get_queue_num(struct vhu_conn *c, uint64_t *num);
int vhu_set_vring_enable(struct vhu_conn *c, unsigned index, bool enable);
int vhu_send_rarp(struct vhu_conn *c, const uint8_t mac[6]);
int vhu_net_set_mtu(struct vhu_conn *c, uint16_t mtu);
int vhu_set_backend_req_fd(struct vhu_conn *c, int fd);
int vhu_iotlb_msg(struct vhu_conn *c, const struct vhu_iotlb *msg);
int vhu_set_vring_endian(struct vhu_conn *c, unsigned index, bool big_endian);
/* Reads `size` bytes of config space at `offset` into buf. */
int vhu_get_config(struct vhu_conn *c, uint32_t offset, uint32_t size, uint32_t flags, void *buf);
int vhu_set_config(struct vhu_conn *c, uint32_t offset, uint32_t size, uint32_t flags, const void *buf);
/* The session description is device specific and passes through as bytes. */
int vhu_create_crypto_session(struct vhu_conn *c, const void *session, uint32_t size, int64_t *session_id);
int vhu_close_crypto_session(struct vhu_conn *c, int64_t session_id);
/* Returns the back-end's userfaultfd in *ufd (the caller owns it). */
int vhu_postcopy_advise(struct vhu_conn *c, int *ufd);
int vhu_postcopy_listen(struct vhu_conn *c);
int vhu_postcopy_end(struct vhu_conn *c);
/* *fd is the inflight area the back-end allocated (caller owns it), or -1. */
int vhu_get_inflight_fd(struct vhu_conn *c, uint16_t num_queues, uint16_t queue_size, struct vhu_inflight *inflight,
                        int *fd);
int vhu_set_inflight_fd(struct vhu_conn *c, const struct vhu_inflight *inflight, int fd);
int vhu_gpu_set_socket(struct vhu_conn *c, int fd);
int vhu_reset_device(struct vhu_conn *c);
int vhu_vring_kick(struct vhu_conn *c, unsigned index);
int vhu_get_max_mem_slots(struct vhu_conn *c, uint64_t *slots);
int vhu_add_mem_reg(struct vhu_conn *c, const struct vhu_region *region);
int vhu_rem_mem_reg(struct vhu_conn *c, const struct vhu_region *region);
int vhu_set_status(struct vhu_conn *c, uint8_t status);
int vhu_get_status(struct vhu_conn *c, uint8_t *status);
/* *fd is the object's dma-buf (caller owns it). */
int vhu_get_shared_object(struct vhu_conn *c, const uint8_t uuid[16], int *fd);
/*
 * Hands the back-end one end of a pipe for device state transfer.  When the
 * back-end prefers to provide its own fd, *reply_fd receives it; else -1.
 */
int vhu_set_device_state_fd(struct vhu_conn *c, uint32_t direction, uint32_t phase, int fd, int *reply_fd);
int vhu_check_device_state(struct vhu_conn *c);

/*
 * Low level: one request with an arbitrary payload, validated against the
 * table like every typed call.  `reply` (optional) receives the reply and owns
 * its fds.  Exposed for tests and tools; the typed calls are built on it.
 */
int vhu_request(struct vhu_conn *c, uint32_t request, const void *payload, uint32_t size, const int *fds, unsigned nfds,
                struct vhu_msg *reply);
