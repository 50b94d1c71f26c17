/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "proto/vhost-user-table.h"

#define NO_GATE (-1)

/* The table below and its shorthands are aligned by hand, a row a request. */
/* clang-format off */
#define SZ_NONE           { 0, 0, 1 }
#define SZ_FIXED(n)       { (n), (n), 1 }
#define SZ_U64            SZ_FIXED(sizeof(uint64_t))
#define SZ_STATE          SZ_FIXED(sizeof(struct vhu_vring_state))
#define SZ_MEM_TABLE      { offsetof(struct vhu_mem_table, regions) + sizeof(struct vhu_mem_region), \
                            sizeof(struct vhu_mem_table), sizeof(struct vhu_mem_region) }
#define SZ_CONFIG         { VHU_CONFIG_HDR_SIZE, sizeof(struct vhu_config), 1 }
#define SZ_CRYPTO         { sizeof(int64_t), sizeof(struct vhu_crypto_session), 1 }
/* DPDK answers SET_LOG_BASE with 0 bytes, libvhost-user with 8, rust-vmm with 16. */
/* A u64, or nothing (libvhost-user's POSTCOPY_ADVISE reply carries only the fd). */
#define SZ_OPT_U64        { 0, sizeof(uint64_t), sizeof(uint64_t) }
#define SZ_OBJECT_REPLY   { 0, sizeof(struct vhu_shared_object), sizeof(uint64_t) }
#define SZ_LOG_REPLY      { 0, sizeof(struct vhu_log), sizeof(uint64_t) }

/* Shorthands that keep each table row on one readable line. */
#define ACK          VHU_REPLY_ACK_ONLY
#define ALWAYS       VHU_REPLY_ALWAYS
#define STATUS       VHU_REPLY_STATUS_ALWAYS
#define PF(x)        VHU_PF_##x
#define VF(x)        VHU_VF_##x

#define REQ(num, sz, fmin, fmax, rep, rsz, rfds, pf, vf, dev, chg) \
        [VHU_REQ_##num] = { VHU_REQ_##num, #num, sz, fmin, fmax, rep, rsz, rfds, pf, vf, dev, chg, false }

static const struct vhu_request_info request_table[VHU_REQ_MAX] = {
        /*   request               payload       fds   reply   reply size   rfds gate (protocol)      gate (virtio)          device state */
        REQ(GET_FEATURES,          SZ_NONE,      0, 0, ALWAYS, SZ_U64,       0, NO_GATE,              NO_GATE,               true,  false),
        REQ(SET_FEATURES,          SZ_U64,       0, 0, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               true,  true),
        REQ(SET_OWNER,             SZ_NONE,      0, 0, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               true,  true),
        [VHU_REQ_RESET_OWNER] = { VHU_REQ_RESET_OWNER, "RESET_OWNER", SZ_NONE, 0, 0, ACK, SZ_NONE, 0,
                                  NO_GATE, NO_GATE, true, true, true },
        REQ(SET_MEM_TABLE,         SZ_MEM_TABLE, 1, 8, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               true,  true),
        REQ(SET_LOG_BASE,          SZ_FIXED(sizeof(struct vhu_log)),
                                                 1, 1, VHU_REPLY_IF_LOG_SHMFD, SZ_LOG_REPLY,
                                                                             0, PF(LOG_SHMFD),        VF(LOG_ALL),           true,  false),
        REQ(SET_LOG_FD,            SZ_NONE,      1, 1, ACK,    SZ_NONE,      0, NO_GATE,              VF(LOG_ALL),           true,  true),
        REQ(SET_VRING_NUM,         SZ_STATE,     0, 0, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               false, true),
        REQ(SET_VRING_ADDR,        SZ_FIXED(sizeof(struct vhu_vring_addr)),
                                                 0, 0, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               false, true),
        REQ(SET_VRING_BASE,        SZ_STATE,     0, 0, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               false, true),
        REQ(GET_VRING_BASE,        SZ_STATE,     0, 0, ALWAYS, SZ_STATE,     0, NO_GATE,              NO_GATE,               false, false),
        REQ(SET_VRING_KICK,        SZ_U64,       0, 1, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               false, true),
        REQ(SET_VRING_CALL,        SZ_U64,       0, 1, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               false, true),
        REQ(SET_VRING_ERR,         SZ_U64,       0, 1, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               false, true),
        REQ(GET_PROTOCOL_FEATURES, SZ_NONE,      0, 0, ALWAYS, SZ_U64,       0, NO_GATE,              VF(PROTOCOL_FEATURES), true,  false),
        REQ(SET_PROTOCOL_FEATURES, SZ_U64,       0, 0, ACK,    SZ_NONE,      0, NO_GATE,              VF(PROTOCOL_FEATURES), true,  true),
        REQ(GET_QUEUE_NUM,         SZ_NONE,      0, 0, ALWAYS, SZ_U64,       0, PF(MQ),               NO_GATE,               true,  false),
        REQ(SET_VRING_ENABLE,      SZ_STATE,     0, 0, ACK,    SZ_NONE,      0, NO_GATE,              VF(PROTOCOL_FEATURES), false, true),
        REQ(SEND_RARP,             SZ_U64,       0, 0, ACK,    SZ_NONE,      0, PF(RARP),             NO_GATE,               true,  true),
        REQ(NET_SET_MTU,           SZ_U64,       0, 0, ACK,    SZ_NONE,      0, PF(NET_MTU),          NO_GATE,               true,  true),
        REQ(SET_BACKEND_REQ_FD,    SZ_NONE,      1, 1, ACK,    SZ_NONE,      0, PF(BACKEND_REQ),      NO_GATE,               true,  true),
        REQ(IOTLB_MSG,             SZ_FIXED(sizeof(struct vhu_iotlb)),
                                                 0, 0, ACK,    SZ_NONE,      0, NO_GATE,              VF(ACCESS_PLATFORM),   true,  true),
        REQ(SET_VRING_ENDIAN,      SZ_STATE,     0, 0, ACK,    SZ_NONE,      0, PF(CROSS_ENDIAN),     NO_GATE,               false, true),
        REQ(GET_CONFIG,            SZ_CONFIG,    0, 0, ALWAYS, SZ_CONFIG,    0, PF(CONFIG),           NO_GATE,               true,  false),
        REQ(SET_CONFIG,            SZ_CONFIG,    0, 0, ACK,    SZ_NONE,      0, PF(CONFIG),           NO_GATE,               true,  true),
        REQ(CREATE_CRYPTO_SESSION, SZ_CRYPTO,    0, 0, ALWAYS, SZ_CRYPTO,    0, PF(CRYPTO_SESSION),   NO_GATE,               true,  false),
        REQ(CLOSE_CRYPTO_SESSION,  SZ_U64,       0, 0, ACK,    SZ_NONE,      0, PF(CRYPTO_SESSION),   NO_GATE,               true,  true),
        REQ(POSTCOPY_ADVISE,       SZ_NONE,      0, 0, ALWAYS, SZ_OPT_U64,   1, PF(PAGEFAULT),        NO_GATE,               true,  false),
        REQ(POSTCOPY_LISTEN,       SZ_NONE,      0, 0, STATUS, SZ_U64,       0, PF(PAGEFAULT),        NO_GATE,               true,  true),
        REQ(POSTCOPY_END,          SZ_NONE,      0, 0, STATUS, SZ_U64,       0, PF(PAGEFAULT),        NO_GATE,               true,  true),
        REQ(GET_INFLIGHT_FD,       SZ_FIXED(sizeof(struct vhu_inflight)),
                                                 0, 0, ALWAYS, SZ_FIXED(sizeof(struct vhu_inflight)),
                                                                             1, PF(INFLIGHT_SHMFD),   NO_GATE,               true,  false),
        REQ(SET_INFLIGHT_FD,       SZ_FIXED(sizeof(struct vhu_inflight)),
                                                 1, 1, ACK,    SZ_NONE,      0, PF(INFLIGHT_SHMFD),   NO_GATE,               true,  true),
        REQ(GPU_SET_SOCKET,        SZ_NONE,      1, 1, ACK,    SZ_NONE,      0, NO_GATE,              NO_GATE,               true,  true),
        REQ(RESET_DEVICE,          SZ_NONE,      0, 0, ACK,    SZ_NONE,      0, PF(RESET_DEVICE),     NO_GATE,               true,  true),
        REQ(VRING_KICK,            SZ_STATE,     0, 0, ACK,    SZ_NONE,      0, PF(INBAND_NOTIFICATIONS), NO_GATE,           false, true),
        REQ(GET_MAX_MEM_SLOTS,     SZ_NONE,      0, 0, ALWAYS, SZ_U64,       0, PF(CONFIGURE_MEM_SLOTS), NO_GATE,            true,  false),
        REQ(ADD_MEM_REG,           SZ_FIXED(sizeof(struct vhu_mem_reg)),
                                                 1, 1, ACK,    SZ_NONE,      0, PF(CONFIGURE_MEM_SLOTS), NO_GATE,            true,  true),
        REQ(REM_MEM_REG,           SZ_FIXED(sizeof(struct vhu_mem_reg)),
                                                 0, 1, ACK,    SZ_NONE,      0, PF(CONFIGURE_MEM_SLOTS), NO_GATE,            true,  true),
        REQ(SET_STATUS,            SZ_U64,       0, 0, ACK,    SZ_NONE,      0, PF(STATUS),           NO_GATE,               true,  true),
        REQ(GET_STATUS,            SZ_NONE,      0, 0, ALWAYS, SZ_U64,       0, PF(STATUS),           NO_GATE,               true,  false),
        /* The spec defines no reply payload; libvhost-user echoes the uuid, others a u64. */
        REQ(GET_SHARED_OBJECT,     SZ_FIXED(sizeof(struct vhu_shared_object)),
                                                 0, 0, ALWAYS, SZ_OBJECT_REPLY, 1, PF(SHARED_OBJECT), NO_GATE,               true,  false),
        REQ(SET_DEVICE_STATE_FD,   SZ_FIXED(sizeof(struct vhu_device_state)),
                                                 1, 1, ALWAYS, SZ_U64,       1, PF(DEVICE_STATE),     NO_GATE,               true,  false),
        REQ(CHECK_DEVICE_STATE,    SZ_NONE,      0, 0, ALWAYS, SZ_U64,       0, PF(DEVICE_STATE),     NO_GATE,               true,  false),
};

#define BREQ(num, sz, fds, pf) [VHU_BREQ_##num] = { VHU_BREQ_##num, #num, sz, fds, pf }

static const struct vhu_backend_request_info backend_request_table[VHU_BREQ_MAX] = {
        BREQ(IOTLB_MSG,               SZ_FIXED(sizeof(struct vhu_iotlb)),         0, PF(BACKEND_REQ)),
        BREQ(CONFIG_CHANGE_MSG,       SZ_NONE,                                    0, PF(CONFIG)),
        BREQ(VRING_HOST_NOTIFIER_MSG, SZ_FIXED(sizeof(struct vhu_vring_area)),    1, PF(HOST_NOTIFIER)),
        BREQ(VRING_CALL,              SZ_STATE,                                   0, PF(INBAND_NOTIFICATIONS)),
        BREQ(VRING_ERR,               SZ_STATE,                                   0, PF(INBAND_NOTIFICATIONS)),
        BREQ(SHARED_OBJECT_ADD,       SZ_FIXED(sizeof(struct vhu_shared_object)), 0, PF(SHARED_OBJECT)),
        BREQ(SHARED_OBJECT_REMOVE,    SZ_FIXED(sizeof(struct vhu_shared_object)), 0, PF(SHARED_OBJECT)),
        BREQ(SHARED_OBJECT_LOOKUP,    SZ_FIXED(sizeof(struct vhu_shared_object)), 0, PF(SHARED_OBJECT)),
};
/* clang-format on */

static const char *const protocol_feature_names[VHU_PF_COUNT] = {
        [VHU_PF_MQ] = "MQ",
        [VHU_PF_LOG_SHMFD] = "LOG_SHMFD",
        [VHU_PF_RARP] = "RARP",
        [VHU_PF_REPLY_ACK] = "REPLY_ACK",
        [VHU_PF_NET_MTU] = "NET_MTU",
        [VHU_PF_BACKEND_REQ] = "BACKEND_REQ",
        [VHU_PF_CROSS_ENDIAN] = "CROSS_ENDIAN",
        [VHU_PF_CRYPTO_SESSION] = "CRYPTO_SESSION",
        [VHU_PF_PAGEFAULT] = "PAGEFAULT",
        [VHU_PF_CONFIG] = "CONFIG",
        [VHU_PF_BACKEND_SEND_FD] = "BACKEND_SEND_FD",
        [VHU_PF_HOST_NOTIFIER] = "HOST_NOTIFIER",
        [VHU_PF_INFLIGHT_SHMFD] = "INFLIGHT_SHMFD",
        [VHU_PF_RESET_DEVICE] = "RESET_DEVICE",
        [VHU_PF_INBAND_NOTIFICATIONS] = "INBAND_NOTIFICATIONS",
        [VHU_PF_CONFIGURE_MEM_SLOTS] = "CONFIGURE_MEM_SLOTS",
        [VHU_PF_STATUS] = "STATUS",
        [VHU_PF_XEN_MMAP] = "XEN_MMAP",
        [VHU_PF_SHARED_OBJECT] = "SHARED_OBJECT",
        [VHU_PF_DEVICE_STATE] = "DEVICE_STATE",
};

static const char *const virtio_feature_names[64] = {
        [VHU_VF_NET_CSUM] = "NET_CSUM",
        [VHU_VF_NET_GUEST_CSUM] = "NET_GUEST_CSUM",
        [VHU_VF_NET_CTRL_GUEST_OFFLOADS] = "NET_CTRL_GUEST_OFFLOADS",
        [VHU_VF_NET_MTU] = "NET_MTU",
        [VHU_VF_NET_MAC] = "NET_MAC",
        [VHU_VF_NET_GSO] = "NET_GSO",
        [VHU_VF_NET_GUEST_TSO4] = "NET_GUEST_TSO4",
        [VHU_VF_NET_GUEST_TSO6] = "NET_GUEST_TSO6",
        [VHU_VF_NET_GUEST_ECN] = "NET_GUEST_ECN",
        [VHU_VF_NET_GUEST_UFO] = "NET_GUEST_UFO",
        [VHU_VF_NET_HOST_TSO4] = "NET_HOST_TSO4",
        [VHU_VF_NET_HOST_TSO6] = "NET_HOST_TSO6",
        [VHU_VF_NET_HOST_ECN] = "NET_HOST_ECN",
        [VHU_VF_NET_HOST_UFO] = "NET_HOST_UFO",
        [VHU_VF_NET_MRG_RXBUF] = "NET_MRG_RXBUF",
        [VHU_VF_NET_STATUS] = "NET_STATUS",
        [VHU_VF_NET_CTRL_VQ] = "NET_CTRL_VQ",
        [VHU_VF_NET_CTRL_RX] = "NET_CTRL_RX",
        [VHU_VF_NET_CTRL_VLAN] = "NET_CTRL_VLAN",
        [VHU_VF_NET_GUEST_ANNOUNCE] = "NET_GUEST_ANNOUNCE",
        [VHU_VF_NET_MQ] = "NET_MQ",
        [VHU_VF_NET_CTRL_MAC_ADDR] = "NET_CTRL_MAC_ADDR",
        [VHU_VF_NOTIFY_ON_EMPTY] = "NOTIFY_ON_EMPTY",
        [VHU_VF_LOG_ALL] = "LOG_ALL",
        [VHU_VF_ANY_LAYOUT] = "ANY_LAYOUT",
        [VHU_VF_RING_INDIRECT_DESC] = "RING_INDIRECT_DESC",
        [VHU_VF_RING_EVENT_IDX] = "RING_EVENT_IDX",
        [VHU_VF_PROTOCOL_FEATURES] = "PROTOCOL_FEATURES",
        [VHU_VF_VERSION_1] = "VERSION_1",
        [VHU_VF_ACCESS_PLATFORM] = "ACCESS_PLATFORM",
        [VHU_VF_RING_PACKED] = "RING_PACKED",
        [VHU_VF_IN_ORDER] = "IN_ORDER",
        [VHU_VF_ORDER_PLATFORM] = "ORDER_PLATFORM",
        [VHU_VF_SR_IOV] = "SR_IOV",
        [VHU_VF_NOTIFICATION_DATA] = "NOTIFICATION_DATA",
        [VHU_VF_RING_RESET] = "RING_RESET",
        [VHU_VF_NET_RSS] = "NET_RSS",
        [VHU_VF_NET_SPEED_DUPLEX] = "NET_SPEED_DUPLEX",
};

const struct vhu_request_info *vhu_request_info(uint32_t request) {
        if (request >= VHU_REQ_MAX || request_table[request].name == NULL)
                return NULL;
        return &request_table[request];
}

const struct vhu_backend_request_info *vhu_backend_request_info(uint32_t request) {
        if (request >= VHU_BREQ_MAX || backend_request_table[request].name == NULL)
                return NULL;
        return &backend_request_table[request];
}

static const char *unknown_name(uint32_t request) {
        static __thread char buf[32];
        snprintf(buf, sizeof(buf), "REQUEST_%u", request);
        return buf;
}

const char *vhu_request_name(uint32_t request) {
        const struct vhu_request_info *info = vhu_request_info(request);
        return info ? info->name : unknown_name(request);
}

const char *vhu_backend_request_name(uint32_t request) {
        const struct vhu_backend_request_info *info = vhu_backend_request_info(request);
        return info ? info->name : unknown_name(request);
}

bool vhu_size_allowed(const struct vhu_size_rule *rule, uint32_t size) {
        if (size < rule->min || size > rule->max)
                return false;
        return (size - rule->min) % rule->step == 0;
}

const char *vhu_protocol_feature_name(unsigned bit) {
        return bit < VHU_PF_COUNT ? protocol_feature_names[bit] : NULL;
}

const char *vhu_virtio_feature_name(unsigned bit) {
        return bit < 64 ? virtio_feature_names[bit] : NULL;
}

uint64_t vhu_supported_protocol_features(void) {
        /* Everything of the current spec except Xen's foreign mappings. */
        return (VHU_BIT(VHU_PF_COUNT) - 1) & ~VHU_BIT(VHU_PF_XEN_MMAP);
}

uint64_t vhu_protocol_features_consistent(uint64_t bits) {
        static const struct {
                unsigned feature;
                uint64_t needs;
        } prerequisites[] = {
                { VHU_PF_BACKEND_SEND_FD, VHU_BIT(VHU_PF_BACKEND_REQ) },
                { VHU_PF_HOST_NOTIFIER, VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_BACKEND_SEND_FD) },
                { VHU_PF_INBAND_NOTIFICATIONS, VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_REPLY_ACK) },
        };
        /* In order: a feature dropped early can take a later dependant with it. */
        for (size_t i = 0; i < sizeof(prerequisites) / sizeof(prerequisites[0]); i++)
                if ((bits & prerequisites[i].needs) != prerequisites[i].needs)
                        bits &= ~VHU_BIT(prerequisites[i].feature);
        return bits;
}

int vhu_format_features(char *buf, size_t len, uint64_t bits, bool protocol, const char *sep) {
        size_t used = 0;
        bool first = true;

        if (len > 0)
                buf[0] = '\0';
        for (unsigned bit = 0; bit < 64; bit++) {
                if (!(bits & VHU_BIT(bit)))
                        continue;
                const char *name = protocol ? vhu_protocol_feature_name(bit) : vhu_virtio_feature_name(bit);
                char unnamed[16];
                if (!name) {
                        snprintf(unnamed, sizeof(unnamed), "bit%u", bit);
                        name = unnamed;
                }
                int n = snprintf(used < len ? buf + used : NULL, used < len ? len - used : 0, "%s%s", first ? "" : sep,
                                 name);
                if (n < 0)
                        return n;
                used += (size_t) n;
                first = false;
        }
        return (int) used;
}
