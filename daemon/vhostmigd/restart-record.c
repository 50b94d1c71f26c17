/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/vhostmigd/restart-record.h"

static const struct {
        enum vhm_device_state state;
        const char *name;
} states[] = {
        { VHM_DEVICE_READY, "ready" },
        { VHM_DEVICE_RUNNING, "running" },
        { VHM_DEVICE_STOPPED, "stopped" },
};

int restart_record_from_device(const struct vhm_device *dev, struct restart_device_record *out) {
        struct vhu_conn *conn = vhm_device_conn(dev);
        memset(out, 0, sizeof(*out));
        if (!conn)
                return -EBUSY;
        int r = vhm_device_save(dev, &out->saved);
        if (r < 0)
                return r;
        vhu_conn_get_negotiated(conn, &out->negotiated);
        out->channel = out->negotiated.channel_fd >= 0;
        out->negotiated.channel_fd = -1;
        return 0;
}

/* ---- to JSON ------------------------------------------------------------------ */

static int add(json_object *o, const char *key, json_object *v) {
        if (!v || json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

static int add_hex(json_object *o, const char *key, uint64_t v) {
        char buf[24];
        snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
        return add(o, key, json_object_new_string(buf));
}

static const char *state_name(enum vhm_device_state s) {
        for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
                if (states[i].state == s)
                        return states[i].name;
        return "?";
}

static json_object *ring_indices(const struct restart_device_record *r) {
        json_object *a = json_object_new_array();
        for (unsigned q = 0; a && q < 2 * r->saved.queue_pairs && q < VHM_DEVICE_MAX_QUEUES; q++)
                if (json_object_array_add(a, json_object_new_int64(r->saved.last_avail[q])) < 0) {
                        json_object_put(a);
                        return NULL;
                }
        return a;
}

int restart_record_to_json(const struct restart_device_record *r, json_object **out) {
        const struct vhm_device_saved *s = &r->saved;
        const struct vhu_conn_negotiated *n = &r->negotiated;
        json_object *o = json_object_new_object();
        if (!o)
                return -ENOMEM;
        int e = add(o, "state", json_object_new_string(state_name(s->state)));
        e = e ?: add_hex(o, "features_offered", s->features_offered);
        e = e ?: add_hex(o, "acked_features", s->acked_features);
        e = e ?: add_hex(o, "conn_acked_features", n->acked_features);
        e = e ?: add_hex(o, "protocol_features", s->protocol_features);
        e = e ?: add_hex(o, "protocol_features_offered", s->protocol_features_offered);
        e = e ?: add(o, "queue_num", json_object_new_int64(n->queue_num));
        e = e ?: add(o, "max_mem_slots", json_object_new_int64((int64_t) n->max_mem_slots));
        e = e ?: add(o, "queue_pairs", json_object_new_int64(s->queue_pairs));
        e = e
                    ?: add(o, "backend_uid",
                           json_object_new_int64(s->backend_uid == (uid_t) -1 ? -1 : (int64_t) s->backend_uid));
        e = e ?: add(o, "mtu", json_object_new_int64(s->mtu));
        e = e ?: add(o, "logging", json_object_new_boolean(s->logging));
        e = e ?: add(o, "log_acknowledged", json_object_new_boolean(s->log_acknowledged));
        e = e ?: add(o, "stop_complete", json_object_new_boolean(s->stop_complete));
        e = e ?: add(o, "channel", json_object_new_boolean(r->channel));
        e = e ?: add(o, "last_avail", ring_indices(r));
        if (e < 0) {
                json_object_put(o);
                return e;
        }
        *out = o;
        return 0;
}

/* ---- from JSON ---------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int bad(char *why, size_t len, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
        return -EINVAL;
}

static json_object *field(json_object *o, const char *key, json_type type) {
        json_object *v;
        return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, type) ? v : NULL;
}

static int get_hex(json_object *o, const char *key, uint64_t *out, char *why, size_t len) {
        json_object *v = field(o, key, json_type_string);
        const char *s = v ? json_object_get_string(v) : "";
        char *end;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 16);
        if (strncmp(s, "0x", 2) != 0 || end == s + 2 || *end || errno)
                return bad(why, len, "device record: \"%s\" is not a hexadecimal string (0x...)", key);
        *out = x;
        return 0;
}

static int get_num(json_object *o, const char *key, int64_t min, int64_t max, int64_t *out, char *why, size_t len) {
        json_object *v = field(o, key, json_type_int);
        int64_t x = v ? json_object_get_int64(v) : min - 1;
        if (!v || x < min || x > max)
                return bad(why, len, "device record: \"%s\" is not a number from %" PRId64 " to %" PRId64, key, min,
                           max);
        *out = x;
        return 0;
}

static int get_bool(json_object *o, const char *key, bool *out, char *why, size_t len) {
        json_object *v = field(o, key, json_type_boolean);
        if (!v)
                return bad(why, len, "device record: \"%s\" is not a boolean", key);
        *out = json_object_get_boolean(v);
        return 0;
}

static int get_state(json_object *o, enum vhm_device_state *out, char *why, size_t len) {
        json_object *v = field(o, "state", json_type_string);
        for (size_t i = 0; v && i < sizeof(states) / sizeof(states[0]); i++)
                if (strcmp(json_object_get_string(v), states[i].name) == 0) {
                        *out = states[i].state;
                        return 0;
                }
        return bad(why, len, "device record: \"state\" is not ready, running or stopped");
}

static int get_rings(json_object *o, struct vhm_device_saved *s, char *why, size_t len) {
        json_object *a = field(o, "last_avail", json_type_array);
        if (!a || json_object_array_length(a) != 2 * s->queue_pairs)
                return bad(why, len, "device record: \"last_avail\" is not an array of %u ring indices",
                           2 * s->queue_pairs);
        for (unsigned q = 0; q < 2 * s->queue_pairs; q++) {
                json_object *v = json_object_array_get_idx(a, q);
                int64_t x = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
                if (x < 0 || x > UINT16_MAX)
                        return bad(why, len, "device record: \"last_avail\"[%u] is not a ring index", q);
                s->last_avail[q] = (unsigned) x;
        }
        return 0;
}

int restart_record_from_json(json_object *o, struct restart_device_record *out, char *why, size_t why_len) {
        struct restart_device_record r = { .negotiated.channel_fd = -1 };
        struct vhm_device_saved *s = &r.saved;
        int64_t queue_num = 0, slots = 0, pairs = 0, uid = 0, mtu = 0;
        uint64_t conn_acked = 0;
        if (!json_object_is_type(o, json_type_object))
                return bad(why, why_len, "device record: not a JSON object");
        int e = get_state(o, &s->state, why, why_len);
        e = e ?: get_hex(o, "features_offered", &s->features_offered, why, why_len);
        e = e ?: get_hex(o, "acked_features", &s->acked_features, why, why_len);
        e = e ?: get_hex(o, "conn_acked_features", &conn_acked, why, why_len);
        e = e ?: get_hex(o, "protocol_features", &s->protocol_features, why, why_len);
        e = e ?: get_hex(o, "protocol_features_offered", &s->protocol_features_offered, why, why_len);
        e = e ?: get_num(o, "queue_num", 1, UINT16_MAX, &queue_num, why, why_len);
        e = e ?: get_num(o, "max_mem_slots", 0, UINT32_MAX, &slots, why, why_len);
        e = e ?: get_num(o, "queue_pairs", 1, VHM_DEVICE_MAX_QUEUE_PAIRS, &pairs, why, why_len);
        e = e ?: get_num(o, "backend_uid", -1, UINT32_MAX - 1, &uid, why, why_len);
        e = e ?: get_num(o, "mtu", 0, UINT16_MAX, &mtu, why, why_len);
        e = e ?: get_bool(o, "logging", &s->logging, why, why_len);
        e = e ?: get_bool(o, "log_acknowledged", &s->log_acknowledged, why, why_len);
        e = e ?: get_bool(o, "stop_complete", &s->stop_complete, why, why_len);
        e = e ?: get_bool(o, "channel", &r.channel, why, why_len);
        if (e < 0)
                return e;
        s->queue_pairs = (unsigned) pairs;
        s->backend_uid = uid < 0 ? (uid_t) -1 : (uid_t) uid;
        s->mtu = (uint16_t) mtu;
        e = get_rings(o, s, why, why_len);
        if (e < 0)
                return e;
        r.negotiated = (struct vhu_conn_negotiated){
                .features = s->features_offered,
                .acked_features = conn_acked,
                .protocol_features_offered = s->protocol_features_offered,
                .protocol_features = s->protocol_features,
                .queue_num = (unsigned) queue_num,
                .max_mem_slots = (uint64_t) slots,
                .channel_fd = -1,
        };
        *out = r;
        return 0;
}
