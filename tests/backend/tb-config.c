/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Test back-end configuration: defaults, switches and the textual specs. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/vhost-user-table.h"
#include "tests/backend/test-backend.h"

void tb_config_init(struct tb_config *cfg) {
        memset(cfg, 0, sizeof(*cfg));
        cfg->features = TB_DEFAULT_FEATURES;
        cfg->protocol_features = TB_DEFAULT_PROTOCOL_FEATURES;
        cfg->queues = TB_DEFAULT_QUEUES;
        cfg->max_mem_slots = TB_DEFAULT_MAX_MEM_SLOTS;
        cfg->log_reply_size = TB_DEFAULT_LOG_REPLY_SIZE;
        cfg->max_connections = 1;
        cfg->io_timeout_ms = TB_DEFAULT_IO_TIMEOUT_MS;
        cfg->reconnect_timeout_ms = TB_DEFAULT_RECONNECT_TIMEOUT_MS;
        cfg->run_as_uid = (uid_t) -1;
        cfg->run_as_gid = (gid_t) -1;
}

int tb_config_check(const struct tb_config *cfg, const char **why) {
        const char *w = NULL;
        if (cfg->queues < 1 || cfg->queues > 128)
                w = "queues must be 1..128";
        else if (cfg->max_mem_slots < 1 || cfg->max_mem_slots > TB_MAX_MEM_SLOTS)
                w = "max_mem_slots must be 1..512";
        else if (cfg->log_reply_size != 0 && cfg->log_reply_size != 8 && cfg->log_reply_size != 16)
                w = "log_reply_size must be 0, 8 or 16";
        else if (cfg->device_state_size > TB_MAX_DEVICE_STATE)
                w = "device_state_size must be at most 32 MiB";
        else if (cfg->nfaults > TB_MAX_FAULTS || cfg->nbackend_reqs > TB_MAX_BACKEND_REQS)
                w = "too many faults or back-end requests";
        if (why)
                *why = w;
        return w ? -EINVAL : 0;
}

uint64_t tb_config_features(const struct tb_config *cfg) {
        uint64_t f = cfg->features;
        if (cfg->no_protocol_features)
                f &= ~VHU_BIT(VHU_VF_PROTOCOL_FEATURES);
        if (cfg->no_log_all)
                f &= ~VHU_BIT(VHU_VF_LOG_ALL);
        return f;
}

uint64_t tb_config_protocol_features(const struct tb_config *cfg) {
        if (cfg->no_protocol_features || !(tb_config_features(cfg) & VHU_BIT(VHU_VF_PROTOCOL_FEATURES)))
                return 0;
        uint64_t f = cfg->protocol_features;
        if (cfg->no_log_shmfd)
                f &= ~VHU_BIT(VHU_PF_LOG_SHMFD);
        if (cfg->no_rarp)
                f &= ~VHU_BIT(VHU_PF_RARP);
        if (cfg->no_reply_ack)
                f &= ~VHU_BIT(VHU_PF_REPLY_ACK);
        if (cfg->no_mq)
                f &= ~VHU_BIT(VHU_PF_MQ);
        if (cfg->no_device_state)
                f &= ~VHU_BIT(VHU_PF_DEVICE_STATE);
        return f;
}

int tb_config_add_fault(struct tb_config *cfg, const struct tb_fault *fault) {
        if (!vhu_request_info(fault->request) || (unsigned) fault->kind >= TB_FAULT_KIND_COUNT)
                return -EINVAL;
        if (cfg->nfaults >= TB_MAX_FAULTS)
                return -ENOSPC;
        cfg->faults[cfg->nfaults++] = *fault;
        return 0;
}

int tb_config_add_backend_req(struct tb_config *cfg, const struct tb_backend_req *req) {
        if (req->after != 0 && !vhu_request_info(req->after))
                return -EINVAL;
        if (cfg->nbackend_reqs >= TB_MAX_BACKEND_REQS)
                return -ENOSPC;
        cfg->backend_reqs[cfg->nbackend_reqs++] = *req;
        return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
        if (!s || !*s)
                return -EINVAL;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 0);
        if (errno || *end || s[0] == '-')
                return -EINVAL;
        *out = v;
        return 0;
}

int tb_request_from_name(const char *name, uint32_t *request) {
        uint64_t n;
        if (parse_u64(name, &n) == 0) {
                if (n > UINT32_MAX || !vhu_request_info((uint32_t) n))
                        return -EINVAL;
                *request = (uint32_t) n;
                return 0;
        }
        for (uint32_t r = 0; r < VHU_REQ_MAX; r++) {
                const struct vhu_request_info *info = vhu_request_info(r);
                if (info && strcasecmp(info->name, name) == 0) {
                        *request = r;
                        return 0;
                }
        }
        return -EINVAL;
}

int tb_backend_request_from_name(const char *name, uint32_t *request) {
        uint64_t n;
        if (parse_u64(name, &n) == 0) {
                if (n > UINT32_MAX)
                        return -EINVAL;
                *request = (uint32_t) n;
                return 0;
        }
        for (uint32_t r = 0; r < VHU_BREQ_MAX; r++) {
                const struct vhu_backend_request_info *info = vhu_backend_request_info(r);
                if (info && strcasecmp(info->name, name) == 0) {
                        *request = r;
                        return 0;
                }
        }
        return -EINVAL;
}

static const char *const fault_names[TB_FAULT_KIND_COUNT] = {
        [TB_FAULT_CLOSE] = "close",
        [TB_FAULT_BAD_FLAGS] = "bad-flags",
        [TB_FAULT_OVERSIZE] = "oversize",
        [TB_FAULT_UNDERSIZE] = "undersize",
        [TB_FAULT_WRONG_REQUEST] = "wrong-request",
        [TB_FAULT_EXTRA_FDS] = "extra-fds",
        [TB_FAULT_NACK] = "nack",
        [TB_FAULT_HANG] = "hang",
        [TB_FAULT_GARBAGE] = "garbage",
        [TB_FAULT_FLOOD_CHANNEL] = "flood-channel",
        [TB_FAULT_CHANNEL_HALF_HEADER] = "channel-half-header",
        [TB_FAULT_TRUNCATE_MEMORY] = "truncate-memory",
        [TB_FAULT_DIE] = "die",
        [TB_FAULT_NOTIFY] = "notify",
};

const char *tb_fault_kind_name(enum tb_fault_kind kind) {
        return (unsigned) kind < TB_FAULT_KIND_COUNT ? fault_names[kind] : "unknown";
}

int tb_fault_kind_from_name(const char *name, enum tb_fault_kind *kind) {
        for (unsigned k = 0; k < TB_FAULT_KIND_COUNT; k++)
                if (strcasecmp(fault_names[k], name) == 0) {
                        *kind = (enum tb_fault_kind) k;
                        return 0;
                }
        return -EINVAL;
}

/* Splits a copy of spec at ':' into at most max fields; returns the count or -EINVAL. */
static int split_fields(char *copy, char **fields, int max) {
        int n = 0;
        char *save = NULL;
        for (char *tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
                if (n == max)
                        return -EINVAL;
                fields[n++] = tok;
        }
        return n;
}

int tb_parse_fault(const char *spec, struct tb_fault *fault) {
        char copy[256];
        char *fields[3];

        if (!spec || strlen(spec) >= sizeof(copy))
                return -EINVAL;
        strcpy(copy, spec);
        int n = split_fields(copy, fields, 3);
        if (n < 2)
                return -EINVAL;

        struct tb_fault f = { .nth = 1 };
        if (tb_request_from_name(fields[0], &f.request) < 0)
                return -EINVAL;
        char *eq = strchr(fields[1], '=');
        if (eq) {
                *eq = '\0';
                if (parse_u64(eq + 1, &f.value) < 0)
                        return -EINVAL;
                f.has_value = true;
        }
        if (tb_fault_kind_from_name(fields[1], &f.kind) < 0)
                return -EINVAL;
        if (n == 3) {
                uint64_t nth;
                if (parse_u64(fields[2], &nth) < 0 || nth == 0 || nth > UINT32_MAX)
                        return -EINVAL;
                f.nth = (unsigned) nth;
        }
        *fault = f;
        return 0;
}

int tb_parse_backend_req(const char *spec, struct tb_backend_req *req) {
        char copy[256];
        char *fields[6];

        if (!spec || strlen(spec) >= sizeof(copy))
                return -EINVAL;
        strcpy(copy, spec);
        int n = split_fields(copy, fields, 6);
        if (n < 1)
                return -EINVAL;

        struct tb_backend_req r = { .timing = TB_BACKEND_AFTER_REPLY };
        if (tb_backend_request_from_name(fields[0], &r.request) < 0)
                return -EINVAL;
        for (int i = 1; i < n; i++) {
                uint64_t v;
                if (strcasecmp(fields[i], "need-reply") == 0)
                        r.need_reply = true;
                else if (strcasecmp(fields[i], "block") == 0)
                        r.timing = TB_BACKEND_BEFORE_REPLY;
                else if (strncasecmp(fields[i], "after=", 6) == 0) {
                        if (tb_request_from_name(fields[i] + 6, &r.after) < 0)
                                return -EINVAL;
                } else if (strncasecmp(fields[i], "index=", 6) == 0) {
                        if (parse_u64(fields[i] + 6, &v) < 0 || v > 0xff)
                                return -EINVAL;
                        r.index = (uint32_t) v;
                } else
                        return -EINVAL;
        }
        *req = r;
        return 0;
}

/* xorshift32: every byte depends on the seed and the position, so a shifted or cut blob shows. */
void tb_device_state_fill(uint32_t seed, void *buf, size_t len) {
        uint32_t x = seed ? seed : 0x9e3779b9u;
        uint8_t *p = buf;
        for (size_t i = 0; i < len; i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                p[i] = (uint8_t) x;
        }
}

uint64_t tb_device_state_hash(const void *buf, size_t len) {
        const uint8_t *p = buf;
        uint64_t h = UINT64_C(0xcbf29ce484222325);
        for (size_t i = 0; i < len; i++) {
                h ^= p[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}
