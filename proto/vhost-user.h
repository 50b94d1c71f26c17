/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhost-user wire format: request numbers, flags, feature bits and payload
 * layouts, as the specification (QEMU docs/interop/vhost-user.rst) defines
 * them.  Everything here is plain data shared by the front-end library, the
 * project's test backend and the tests; behaviour lives in the request table
 * (vhost-user-table.c) and the connection code.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Header flags. */
#define VHU_VERSION         0x1u
#define VHU_VERSION_MASK    0x3u
#define VHU_FLAG_REPLY      0x4u
#define VHU_FLAG_NEED_REPLY 0x8u
#define VHU_REPLY_FLAGS     (VHU_VERSION | VHU_FLAG_REPLY)

/* At most this many fds travel in one message (8 regions, 8 back-end fds). */
#define VHU_MAX_FDS 8
/* SET_MEM_TABLE carries at most this many regions. */
#define VHU_MAX_MEM_REGIONS 8
/* Device config space carried by GET/SET_CONFIG. */
#define VHU_MAX_CONFIG_SIZE 256

/* KICK/CALL/ERR payload: queue index in bits 0-7, NOFD flag in bit 8. */
#define VHU_VRING_IDX_MASK  0xffu
#define VHU_VRING_NOFD_MASK 0x100u

/* SET_VRING_ADDR flags. */
#define VHU_VRING_F_LOG 0x1u

/* Front-end requests. */
enum vhu_request {
        VHU_REQ_NONE = 0,
        VHU_REQ_GET_FEATURES = 1,
        VHU_REQ_SET_FEATURES = 2,
        VHU_REQ_SET_OWNER = 3,
        VHU_REQ_RESET_OWNER = 4,
        VHU_REQ_SET_MEM_TABLE = 5,
        VHU_REQ_SET_LOG_BASE = 6,
        VHU_REQ_SET_LOG_FD = 7,
        VHU_REQ_SET_VRING_NUM = 8,
        VHU_REQ_SET_VRING_ADDR = 9,
        VHU_REQ_SET_VRING_BASE = 10,
        VHU_REQ_GET_VRING_BASE = 11,
        VHU_REQ_SET_VRING_KICK = 12,
        VHU_REQ_SET_VRING_CALL = 13,
        VHU_REQ_SET_VRING_ERR = 14,
        VHU_REQ_GET_PROTOCOL_FEATURES = 15,
        VHU_REQ_SET_PROTOCOL_FEATURES = 16,
        VHU_REQ_GET_QUEUE_NUM = 17,
        VHU_REQ_SET_VRING_ENABLE = 18,
        VHU_REQ_SEND_RARP = 19,
        VHU_REQ_NET_SET_MTU = 20,
        VHU_REQ_SET_BACKEND_REQ_FD = 21,
        VHU_REQ_IOTLB_MSG = 22,
        VHU_REQ_SET_VRING_ENDIAN = 23,
        VHU_REQ_GET_CONFIG = 24,
        VHU_REQ_SET_CONFIG = 25,
        VHU_REQ_CREATE_CRYPTO_SESSION = 26,
        VHU_REQ_CLOSE_CRYPTO_SESSION = 27,
        VHU_REQ_POSTCOPY_ADVISE = 28,
        VHU_REQ_POSTCOPY_LISTEN = 29,
        VHU_REQ_POSTCOPY_END = 30,
        VHU_REQ_GET_INFLIGHT_FD = 31,
        VHU_REQ_SET_INFLIGHT_FD = 32,
        VHU_REQ_GPU_SET_SOCKET = 33,
        VHU_REQ_RESET_DEVICE = 34,
        VHU_REQ_VRING_KICK = 35,
        VHU_REQ_GET_MAX_MEM_SLOTS = 36,
        VHU_REQ_ADD_MEM_REG = 37,
        VHU_REQ_REM_MEM_REG = 38,
        VHU_REQ_SET_STATUS = 39,
        VHU_REQ_GET_STATUS = 40,
        VHU_REQ_GET_SHARED_OBJECT = 41,
        VHU_REQ_SET_DEVICE_STATE_FD = 42,
        VHU_REQ_CHECK_DEVICE_STATE = 43,
        VHU_REQ_MAX
};

/* Back-end requests, on the channel set up with SET_BACKEND_REQ_FD. */
enum vhu_backend_request {
        VHU_BREQ_NONE = 0,
        VHU_BREQ_IOTLB_MSG = 1,
        VHU_BREQ_CONFIG_CHANGE_MSG = 2,
        VHU_BREQ_VRING_HOST_NOTIFIER_MSG = 3,
        VHU_BREQ_VRING_CALL = 4,
        VHU_BREQ_VRING_ERR = 5,
        VHU_BREQ_SHARED_OBJECT_ADD = 6,
        VHU_BREQ_SHARED_OBJECT_REMOVE = 7,
        VHU_BREQ_SHARED_OBJECT_LOOKUP = 8,
        VHU_BREQ_MAX
};

/* Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
enum vhu_protocol_feature {
        VHU_PF_MQ = 0,
        VHU_PF_LOG_SHMFD = 1,
        VHU_PF_RARP = 2,
        VHU_PF_REPLY_ACK = 3,
        VHU_PF_NET_MTU = 4,
        VHU_PF_BACKEND_REQ = 5,
        VHU_PF_CROSS_ENDIAN = 6,
        VHU_PF_CRYPTO_SESSION = 7,
        VHU_PF_PAGEFAULT = 8,
        VHU_PF_CONFIG = 9,
        VHU_PF_BACKEND_SEND_FD = 10,
        VHU_PF_HOST_NOTIFIER = 11,
        VHU_PF_INFLIGHT_SHMFD = 12,
        VHU_PF_RESET_DEVICE = 13,
        VHU_PF_INBAND_NOTIFICATIONS = 14,
        VHU_PF_CONFIGURE_MEM_SLOTS = 15,
        VHU_PF_STATUS = 16,
        VHU_PF_XEN_MMAP = 17,
        VHU_PF_SHARED_OBJECT = 18,
        VHU_PF_DEVICE_STATE = 19,
        VHU_PF_COUNT
};

/* Virtio / vhost feature bits the front-end cares about by name. */
enum vhu_virtio_feature {
        VHU_VF_NET_CSUM = 0,
        VHU_VF_NET_GUEST_CSUM = 1,
        VHU_VF_NET_CTRL_GUEST_OFFLOADS = 2,
        VHU_VF_NET_MTU = 3,
        VHU_VF_NET_MAC = 5,
        VHU_VF_NET_GSO = 6,
        VHU_VF_NET_GUEST_TSO4 = 7,
        VHU_VF_NET_GUEST_TSO6 = 8,
        VHU_VF_NET_GUEST_ECN = 9,
        VHU_VF_NET_GUEST_UFO = 10,
        VHU_VF_NET_HOST_TSO4 = 11,
        VHU_VF_NET_HOST_TSO6 = 12,
        VHU_VF_NET_HOST_ECN = 13,
        VHU_VF_NET_HOST_UFO = 14,
        VHU_VF_NET_MRG_RXBUF = 15,
        VHU_VF_NET_STATUS = 16,
        VHU_VF_NET_CTRL_VQ = 17,
        VHU_VF_NET_CTRL_RX = 18,
        VHU_VF_NET_CTRL_VLAN = 19,
        VHU_VF_NET_GUEST_ANNOUNCE = 21,
        VHU_VF_NET_MQ = 22,
        VHU_VF_NET_CTRL_MAC_ADDR = 23,
        VHU_VF_NOTIFY_ON_EMPTY = 24,
        VHU_VF_ANY_LAYOUT = 27,
        VHU_VF_LOG_ALL = 26,
        VHU_VF_RING_INDIRECT_DESC = 28,
        VHU_VF_RING_EVENT_IDX = 29,
        VHU_VF_PROTOCOL_FEATURES = 30,
        VHU_VF_VERSION_1 = 32,
        VHU_VF_ACCESS_PLATFORM = 33,
        VHU_VF_RING_PACKED = 34,
        VHU_VF_IN_ORDER = 35,
        VHU_VF_ORDER_PLATFORM = 36,
        VHU_VF_SR_IOV = 37,
        VHU_VF_NOTIFICATION_DATA = 38,
        VHU_VF_RING_RESET = 40,
        VHU_VF_NET_RSS = 60,
        VHU_VF_NET_SPEED_DUPLEX = 63,
};

#define VHU_BIT(n) (UINT64_C(1) << (n))

/* Payloads.  Layouts are fixed by the spec; sizes are checked below. */
struct vhu_hdr {
        uint32_t request;
        uint32_t flags;
        uint32_t size;
};

struct vhu_vring_state {
        uint32_t index;
        uint32_t num;
};

struct vhu_vring_addr {
        uint32_t index;
        uint32_t flags;
        uint64_t desc_user_addr;
        uint64_t used_user_addr;
        uint64_t avail_user_addr;
        uint64_t log_guest_addr;
};

struct vhu_mem_region {
        uint64_t guest_phys_addr;
        uint64_t memory_size;
        uint64_t userspace_addr;
        uint64_t mmap_offset;
};

struct vhu_mem_table {
        uint32_t nregions;
        uint32_t padding;
        struct vhu_mem_region regions[VHU_MAX_MEM_REGIONS];
};

struct vhu_mem_reg {
        uint64_t padding;
        struct vhu_mem_region region;
};

struct vhu_log {
        uint64_t mmap_size;
        uint64_t mmap_offset;
};

enum vhu_iotlb_type {
        VHU_IOTLB_MISS = 1,
        VHU_IOTLB_UPDATE = 2,
        VHU_IOTLB_INVALIDATE = 3,
        VHU_IOTLB_ACCESS_FAIL = 4,
};

enum vhu_iotlb_perm {
        VHU_ACCESS_RO = 1,
        VHU_ACCESS_WO = 2,
        VHU_ACCESS_RW = 3,
};

struct vhu_iotlb {
        uint64_t iova;
        uint64_t size;
        uint64_t uaddr;
        uint8_t perm;
        uint8_t type;
        uint8_t pad[6];
};

/* SET_CONFIG flags. */
#define VHU_CONFIG_FLAG_WRITABLE  0x0u
#define VHU_CONFIG_FLAG_MIGRATION 0x1u

struct vhu_config {
        uint32_t offset;
        uint32_t size;
        uint32_t flags;
        uint8_t region[VHU_MAX_CONFIG_SIZE];
};
#define VHU_CONFIG_HDR_SIZE offsetof(struct vhu_config, region)

/*
 * Crypto sessions are opaque to a generic front-end: the layout belongs to
 * the virtio-crypto device model.  The front-end passes the bytes through and
 * reads back the session id the back-end put first.
 */
#define VHU_CRYPTO_SESSION_MAX 4096
struct vhu_crypto_session {
        int64_t session_id;
        uint8_t body[VHU_CRYPTO_SESSION_MAX - sizeof(int64_t)];
};

struct vhu_inflight {
        uint64_t mmap_size;
        uint64_t mmap_offset;
        uint16_t num_queues;
        uint16_t queue_size;
        uint8_t pad[4];
};

struct vhu_shared_object {
        uint8_t uuid[16];
};

enum vhu_transfer_direction {
        VHU_TRANSFER_SAVE = 0,
        VHU_TRANSFER_LOAD = 1,
};

enum vhu_transfer_phase {
        VHU_TRANSFER_STOPPED = 0,
};

struct vhu_device_state {
        uint32_t direction;
        uint32_t phase;
};

/* SET_DEVICE_STATE_FD reply: low byte error, bit 8 "no fd returned". */
#define VHU_DEVICE_STATE_ERR_MASK  0xffu
#define VHU_DEVICE_STATE_NOFD_MASK 0x100u

struct vhu_vring_area {
        uint64_t u64;
        uint64_t size;
        uint64_t offset;
};

union vhu_payload {
        uint64_t u64;
        struct vhu_vring_state state;
        struct vhu_vring_addr addr;
        struct vhu_mem_table mem;
        struct vhu_mem_reg mem_reg;
        struct vhu_log log;
        struct vhu_iotlb iotlb;
        struct vhu_config config;
        struct vhu_crypto_session crypto;
        struct vhu_inflight inflight;
        struct vhu_shared_object object;
        struct vhu_device_state device_state;
        struct vhu_vring_area area;
};

/* One message as it travels, with the fds that came or go with it. */
struct vhu_msg {
        struct vhu_hdr hdr;
        union vhu_payload payload;
        int fds[VHU_MAX_FDS];
        unsigned nfds;
};

_Static_assert(sizeof(struct vhu_hdr) == 12, "header layout");
_Static_assert(sizeof(struct vhu_vring_state) == 8, "vring state layout");
_Static_assert(sizeof(struct vhu_vring_addr) == 40, "vring addr layout");
_Static_assert(sizeof(struct vhu_mem_region) == 32, "region layout");
_Static_assert(sizeof(struct vhu_mem_table) == 8 + 8 * 32, "mem table layout");
_Static_assert(sizeof(struct vhu_mem_reg) == 40, "mem reg layout");
_Static_assert(sizeof(struct vhu_log) == 16, "log layout");
_Static_assert(sizeof(struct vhu_iotlb) == 32, "iotlb layout");
_Static_assert(sizeof(struct vhu_inflight) == 24, "inflight layout");
_Static_assert(sizeof(struct vhu_vring_area) == 24, "vring area layout");

/* Size of a SET_MEM_TABLE payload carrying n regions. */
static inline size_t vhu_mem_table_size(unsigned nregions) {
        return offsetof(struct vhu_mem_table, regions) + (size_t) nregions * sizeof(struct vhu_mem_region);
}
