/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A device's record in the restart state (state-store.h's body): what a new
 * vhostmigd needs, beside the fds, to take over a back-end connection
 * without a request: what the connection negotiated (vhu_conn_adopt) and
 * where the device and its rings were (vhm_device_adopt).
 *
 * As JSON (json-c), every field required and checked on the way back:
 *   {"state": "ready" | "running" | "stopped",
 *    "features_offered", "acked_features" (the device's),
 *    "conn_acked_features" (the connection's last SET_FEATURES), "protocol_features",
 *    "protocol_features_offered": "0x..." (64-bit, as hex strings: JSON
 *        numbers are not exact past 2^53),
 *    "queue_num", "max_mem_slots", "queue_pairs", "backend_uid", "mtu": numbers,
 *    "logging", "log_acknowledged", "stop_complete", "channel": booleans,
 *    "last_avail": [one ring index per queue, 2 * queue_pairs of them]}
 * "channel" says a back-end channel fd is stored with it.  The connection's
 * protocol features are the device's own (one negotiation), so they are
 * kept once.
 */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "migrate/device.h"
#include "proto/vhost-user-frontend.h"

struct restart_device_record {
        struct vhm_device_saved saved;
        /* Negotiated; channel_fd and the handlers are not part of the record. */
        struct vhu_conn_negotiated negotiated;
        bool channel;
};

/* From a device (vhm_device_save) and its connection: 0, or -EBUSY when it has nothing worth keeping. */
int restart_record_from_device(const struct vhm_device *dev, struct restart_device_record *out);

/* The record as JSON; -ENOMEM. */
int restart_record_to_json(const struct restart_device_record *r, json_object **out);

/*
 * Back from JSON, every field present, of its type and in range; -EINVAL with
 * `why` naming the first field that is not (the record is then not used).
 */
int restart_record_from_json(json_object *o, struct restart_device_record *out, char *why, size_t why_len);
