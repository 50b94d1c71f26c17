/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Synthetic guest internals: the driver-state format kept in guest memory,
 * the memory layout, and the host-side object.  Not for users of guest.h.
 */
#pragma once

#include <endian.h>
#include <linux/virtio_ring.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "daemon/guest/guest.h"

/* "VHMGUEST" read as a little-endian u64. */
#define VHM_GSTATE_MAGIC 0x54534555474d4856ull
/* Bump whenever the state format or the memory layout rule changes. */
#define VHM_GSTATE_VERSION 1u

/* Frame payload (after the 14-byte Ethernet header), little endian. */
#define VHM_FRAME_MAGIC 0x464d4856u /* "VHMF" */
#define VHM_ETH_HLEN    14u
#define VHM_PL_MAGIC    0u
#define VHM_PL_QP       4u
#define VHM_PL_LEN      6u
#define VHM_PL_SEQ      8u
#define VHM_PL_CSUM     16u
#define VHM_PL_FILL     20u

/* Per-descriptor ownership in the state area. */
#define VHM_DESC_FREE   0u /* on the free stack, driver owns it */
#define VHM_DESC_POSTED 1u /* in the avail ring, device owns it */

/* Per virtqueue driver state (guest memory). */
struct vhm_gstate_queue {
        uint16_t next_avail; /* avail idx the driver publishes next */
        uint16_t last_used;  /* next used idx the driver consumes */
        uint16_t num_free;   /* entries on this queue's free stack */
        uint16_t pad;
};

/* Per queue pair traffic state (guest memory). */
struct vhm_gstate_qp {
        uint64_t tx_seq;
        uint64_t rx_expected;
        uint64_t sent;
        uint64_t received;
        uint64_t lost;
        uint64_t corrupted;
        uint64_t corrupt_credit; /* corrupted frames not yet matched to a gap */
        uint64_t duplicated;
        uint64_t rarp_seen;
        uint64_t other;
        uint64_t bad_used;
};

/* The state area at gpa 0.  Fixed-width fields only: it is copied bytewise
 * between hosts of the same endianness. */
struct vhm_gstate {
        uint64_t magic;
        uint32_t version;
        uint32_t header_size; /* sizeof(struct vhm_gstate) */
        uint64_t mem_size;
        uint32_t queue_pairs;
        uint32_t ring_size;
        uint32_t frame_len;
        uint32_t pad0;
        uint64_t features; /* negotiated virtio features */
        uint8_t mac[6];
        uint8_t dst_mac[6];
        uint32_t pad1;
        struct vhm_gstate_queue q[VHM_GUEST_MAX_QUEUES];
        struct vhm_gstate_qp qp[VHM_GUEST_MAX_QP];
};

/* Where everything lives, as offsets (= guest-physical addresses). */
struct vhm_layout {
        uint64_t free_stack[VHM_GUEST_MAX_QUEUES]; /* uint16_t[num] */
        uint64_t owner[VHM_GUEST_MAX_QUEUES];      /* uint8_t[num] */
        uint64_t state_end;
        uint64_t desc[VHM_GUEST_MAX_QUEUES];
        uint64_t avail[VHM_GUEST_MAX_QUEUES];
        uint64_t used[VHM_GUEST_MAX_QUEUES];
        uint64_t bufs[VHM_GUEST_MAX_QUEUES];
        uint64_t total;
};

/* Host-side view of one virtqueue; pointers into guest memory. */
struct vhm_guest_vq {
        unsigned index;
        bool is_rx;
        struct vring_desc *desc;
        struct vring_avail *avail;
        struct vring_used *used;
        uint8_t *bufs;
        uint64_t desc_gpa, avail_gpa, used_gpa, buf_gpa;
        struct vhm_gstate_queue *st;
        uint16_t *free_stack;
        uint8_t *owner;
        int kick_fd;
        int call_fd;
        bool calls_off; /* busy polling: calls not wanted (host-side) */
};

struct vhm_guest {
        int memfd;
        uint64_t size;
        uint8_t *base;
        struct vhm_gstate *st;
        /* Validated copies of the immutable-or-rarely-changed config, so a
         * device scribbling on the state area cannot steer our bounds. */
        unsigned nqp;
        unsigned num;
        unsigned frame_len;
        unsigned hdr_len;
        bool event_idx;
        bool mrg_rxbuf;
        uint8_t mac[6];
        uint8_t dst_mac[6];
        struct vhm_guest_vq vq[VHM_GUEST_MAX_QUEUES];
        uint8_t *written; /* device-written page bitmap, host memory */
        size_t npages;
        /* The VMM's dirty bitmap (vhost log format), shared with the daemon:
         * NULL until vhm_guest_dirty_bitmap() made it. */
        uint64_t *dirty;
        size_t dirty_bytes;
        int dirty_fd;
};

/*
 * The driver writes guest memory only through these, so that every page it
 * writes is marked in the VMM's dirty bitmap (when there is one): a store the
 * bitmap does not see is a page a live migration would leave stale.  One
 * atomic OR per page touched, relaxed: the daemon takes each word with an
 * atomic exchange, and a locked OR also orders the store before the mark.
 */
static inline void vhm_dirty_gpa(const struct vhm_guest *g, uint64_t gpa, uint64_t len) {
        uint64_t last;

        if (!g->dirty || !len)
                return;
        last = (gpa + len - 1) / VHM_GUEST_PAGE_SIZE;
        for (uint64_t p = gpa / VHM_GUEST_PAGE_SIZE; p <= last && p < g->npages; p++)
                __atomic_fetch_or(&g->dirty[p / 64], htole64(1ull << (p % 64)), __ATOMIC_RELAXED);
}

static inline void vhm_dirty_ptr(const struct vhm_guest *g, const void *p, size_t len) {
        vhm_dirty_gpa(g, (uint64_t) ((const uint8_t *) p - g->base), len);
}

/* Store a value into guest memory and mark its page. */
#define VHM_GSET(g, lvalue, value)                           \
        do {                                                 \
                __typeof__(lvalue) *vhm_p_ = &(lvalue);      \
                *vhm_p_ = (value);                           \
                vhm_dirty_ptr((g), vhm_p_, sizeof(*vhm_p_)); \
        } while (0)

/* An atomic 16-bit store (ring indices and flags) into guest memory, marked. */
static inline void vhm_gstore16(const struct vhm_guest *g, uint16_t *p, uint16_t v, int order) {
        __atomic_store_n(p, v, order);
        vhm_dirty_ptr(g, p, sizeof(*p));
}

/* Bytes into guest memory, marked. */
static inline void vhm_gwrite(const struct vhm_guest *g, void *dst, const void *src, size_t len) {
        memcpy(dst, src, len);
        vhm_dirty_ptr(g, dst, len);
}

/* guest-mem.c */
int vhm_layout_compute(unsigned nqp, unsigned num, struct vhm_layout *lay);
bool vhm_features_ok(uint64_t features);
unsigned vhm_hdr_len(uint64_t features);

/* guest-frame.c */
uint32_t vhm_fnv1a(uint32_t h, const uint8_t *p, size_t n);
void vhm_frame_build(uint8_t *frame, unsigned len, const uint8_t dst[6], const uint8_t src[6], unsigned qp,
                     uint64_t seq);
void vhm_count_corrupted(struct vhm_guest *g, unsigned qp);
uint64_t vhm_accounted(const struct vhm_gstate_qp *s);
void vhm_rx_account(struct vhm_guest *g, unsigned qp, const uint8_t *frame, uint32_t len);

/* guest-ring.c */
void vhm_mark_written(struct vhm_guest *g, uint64_t gpa, uint64_t len);
