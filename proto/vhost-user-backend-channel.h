/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The back-end request channel (SET_BACKEND_REQ_FD): requests the back-end
 * sends to the front-end.  Each one is validated against the back-end
 * request table, handed to a handler, and answered with a u64 status when
 * the back-end asked for a reply (0 = handled).  A request without a handler
 * is refused with a non-zero status; an invalid message closes the channel.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "proto/vhost-user.h"

struct vhu_backend_channel;

/*
 * Handlers return 0 when handled or a negative errno to refuse.  A handler
 * that receives an fd owns it (on success and failure alike).
 */
struct vhu_backend_handlers {
        int (*iotlb_msg)(void *userdata, const struct vhu_iotlb *msg);
        int (*config_change)(void *userdata);
        int (*host_notifier)(void *userdata, const struct vhu_vring_area *area, int fd);
        int (*vring_call)(void *userdata, unsigned index);
        int (*vring_err)(void *userdata, unsigned index);
        int (*shared_object_add)(void *userdata, const uint8_t uuid[16]);
        int (*shared_object_remove)(void *userdata, const uint8_t uuid[16]);
        /* On success *fd is the object's fd to send back; the channel closes it after sending. */
        int (*shared_object_lookup)(void *userdata, const uint8_t uuid[16], int *fd);
};

/*
 * Creates the channel: a socketpair whose other end (*backend_fd, owned by
 * the caller, to be sent with SET_BACKEND_REQ_FD and then closed) goes to the
 * back-end.  `protocol_features` are the negotiated ones: a request whose
 * feature was not negotiated is a protocol error.
 */
/*
 * The same over our end of a channel that exists already (a restart taking
 * a connection over): fd is taken in every case, closed on failure.
 */
int vhu_backend_channel_adopt(int fd, const struct vhu_backend_handlers *handlers, void *userdata,
                              uint64_t protocol_features, struct vhu_backend_channel **out);
int vhu_backend_channel_new(const struct vhu_backend_handlers *handlers, void *userdata, uint64_t protocol_features,
                            int *backend_fd, struct vhu_backend_channel **out);
void vhu_backend_channel_free(struct vhu_backend_channel *ch);

/* Our end, for an event loop: readable when a request is waiting. */
int vhu_backend_channel_fd(const struct vhu_backend_channel *ch);

/*
 * Limits against a hostile back-end.  Real back-ends send a handful of
 * requests (a config change, a host notifier per ring, an IOTLB miss now and
 * then), so more than VHU_BACKEND_CHANNEL_FLOOD_MAX messages within
 * VHU_BACKEND_CHANNEL_FLOOD_WINDOW_MS is a flood: the channel is closed with
 * the error "back-end channel: flooded, more than 256 messages within
 * 1000 ms" (-ECONNABORTED).  The main connection stays up.
 *
 * A message once started must arrive whole within
 * VHU_BACKEND_CHANNEL_MESSAGE_TIMEOUT_MS, or by the caller's deadline when
 * that comes first; else the channel is closed (the stream lost its framing).
 *
 * VHU_BACKEND_CHANNEL_BUDGET is how many messages the front-end serves per
 * wakeup while it waits for a reply, so that one wakeup is bounded work.
 */
#define VHU_BACKEND_CHANNEL_FLOOD_MAX          256u
#define VHU_BACKEND_CHANNEL_FLOOD_WINDOW_MS    1000u
#define VHU_BACKEND_CHANNEL_MESSAGE_TIMEOUT_MS 1000u
#define VHU_BACKEND_CHANNEL_BUDGET             16u

/*
 * Reads and serves one request.  Returns 1 when one was served, 0 when none
 * was waiting, or a negative errno (-ECONNRESET when the back-end closed,
 * -EPROTO for an invalid message, -ECONNABORTED for a flood); after an error
 * the channel is closed.
 */
int vhu_backend_channel_process(struct vhu_backend_channel *ch);

/*
 * Serves at most `max_messages` requests that are already waiting, none
 * after `deadline_usec` (UINT64_MAX: none), and never waits for a request
 * to come.  For a caller that polls a running device's channel outside of a
 * request.  Returns how many were served (0..max_messages), or a negative
 * errno when the channel failed or was cut off now or earlier (-ENOTCONN);
 * vhu_backend_channel_error() says why.
 */
int vhu_backend_channel_serve(struct vhu_backend_channel *ch, unsigned max_messages, uint64_t deadline_usec);

bool vhu_backend_channel_is_open(const struct vhu_backend_channel *ch);
const char *vhu_backend_channel_error(const struct vhu_backend_channel *ch);

/* Requests served, and refused, since creation: observable state for the daemon. */
uint64_t vhu_backend_channel_served(const struct vhu_backend_channel *ch);
uint64_t vhu_backend_channel_refused(const struct vhu_backend_channel *ch);
