/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The request table: every per-request fact of the protocol in one place.
 * Encoding, reply validation, logging, the test backend and the probe's
 * output all read these entries; nothing else repeats them.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "proto/vhost-user.h"

/*
 * Allowed payload sizes: min..max in steps of `step` (so a fixed size has
 * min == max, a memory table grows by one region at a time, and SET_LOG_BASE
 * replies may be 0, 8 or 16 bytes).
 */
struct vhu_size_rule {
        uint16_t min;
        uint16_t max;
        uint16_t step;
};

enum vhu_reply_kind {
        /* No reply body; a u64 status comes back only for NEED_REPLY. */
        VHU_REPLY_ACK_ONLY,
        /* The back-end always answers, with a body described by reply_size. */
        VHU_REPLY_ALWAYS,
        /* SET_LOG_BASE: a reply only when LOG_SHMFD is negotiated. */
        VHU_REPLY_IF_LOG_SHMFD,
        /* Postcopy: NEED_REPLY is always set and a u64 status always comes back. */
        VHU_REPLY_STATUS_ALWAYS,
};

/* A gate of -1 means "none". */
struct vhu_request_info {
        uint32_t request;
        const char *name;
        struct vhu_size_rule size; /* request payload */
        uint8_t fds_min, fds_max;  /* fds sent with the request */
        enum vhu_reply_kind reply;
        struct vhu_size_rule reply_size; /* reply payload, when one comes */
        uint8_t reply_fds_max;           /* fds a reply may carry */
        int8_t protocol_feature;         /* protocol feature that must be negotiated */
        int8_t virtio_feature;           /* virtio feature the back-end must offer */
        bool per_device;                 /* concerns the device, not one queue: send once */
        bool changes_state;              /* ask for REPLY_ACK when negotiated */
        bool deprecated;
};

struct vhu_backend_request_info {
        uint32_t request;
        const char *name;
        struct vhu_size_rule size;
        uint8_t fds_max;
        int8_t protocol_feature; /* what the back-end needs to send it */
};

/* NULL for numbers outside the table. */
const struct vhu_request_info *vhu_request_info(uint32_t request);
const struct vhu_backend_request_info *vhu_backend_request_info(uint32_t request);

/* Never NULL: unknown numbers print as "REQUEST_<n>". Uses a static buffer only for unknowns. */
const char *vhu_request_name(uint32_t request);
const char *vhu_backend_request_name(uint32_t request);

bool vhu_size_allowed(const struct vhu_size_rule *rule, uint32_t size);

/* Feature names for display; NULL for bits with no name. */
const char *vhu_protocol_feature_name(unsigned bit);
const char *vhu_virtio_feature_name(unsigned bit);

/* Protocol features this front-end implements (and so may acknowledge). */
uint64_t vhu_supported_protocol_features(void);

/*
 * Drops the protocol features whose prerequisites are missing from `bits`
 * (in-band notifications need REPLY_ACK and BACKEND_REQ; back-end fds need
 * BACKEND_REQ; host notifiers need BACKEND_SEND_FD), so that a front-end
 * never acknowledges a combination a back-end must reject.
 */
uint64_t vhu_protocol_features_consistent(uint64_t bits);

/*
 * Writes the names of the bits set in `bits`, separated by `sep`, into buf
 * (unnamed bits as "bit<n>").  Returns the length it needed, like snprintf.
 */
int vhu_format_features(char *buf, size_t len, uint64_t bits, bool protocol, const char *sep);
