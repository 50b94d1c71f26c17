/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Synthetic guest: plays a guest's virtio-net driver and its VMM for a
 * vhost-user backend, so that backends and the migration code can be tested
 * without QEMU or a real guest.
 *
 * Guest memory is one memfd mapped MAP_SHARED; guest-physical address 0 is
 * its first byte, so a front-end hands it over as a single SET_MEM_TABLE
 * region {gpa 0, size, userspace_addr = base, mmap_offset 0}.
 *
 * The guest drives N virtio-net queue pairs (queue 2*i = RX, 2*i+1 = TX,
 * split rings), transmits sequence-numbered, checksummed frames and checks
 * every frame that comes back (a backend in MAC-swap loop mode echoes them).
 * ALL driver state lives in guest memory (a state area at gpa 0), so a byte
 * copy of the memory plus vhm_guest_attach() resumes the guest exactly, as a
 * migrated VM would.
 *
 * Until vhm_guest_set_features() says otherwise the driver assumes
 * VIRTIO_F_VERSION_1 only: 12-byte virtio-net header, no EVENT_IDX.
 *
 * Threading: different queue pairs may be driven from different threads at
 * the same time; one queue pair must be driven by one thread at a time, and
 * its stats are only consistent when read from that thread or when it is
 * idle.  Functions that fail return a negative errno.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VHM_GUEST_MAX_QP         8u
#define VHM_GUEST_MAX_QUEUES     (2 * VHM_GUEST_MAX_QP)
#define VHM_GUEST_PAGE_SIZE      4096u /* vhost dirty-log page size */
#define VHM_GUEST_DEFAULT_MEM    (64ull << 20)
#define VHM_GUEST_DEFAULT_RING   256u
#define VHM_GUEST_MAX_RING       32768u /* virtio split-ring maximum */
#define VHM_GUEST_DEFAULT_FRAME  128u
#define VHM_GUEST_MIN_FRAME      64u
#define VHM_GUEST_MAX_FRAME      1514u
#define VHM_GUEST_BUF_SIZE       2048u   /* one buffer per descriptor */
#define VHM_GUEST_ETHERTYPE      0x88b5u /* IEEE local experimental */
#define VHM_GUEST_ETHERTYPE_RARP 0x8035u

/* Queue-pair argument meaning "every queue pair" (run_until, stats). */
#define VHM_GUEST_ALL_QPS (~0u)

struct vhm_guest;

struct vhm_guest_config {
        uint64_t mem_size;    /* bytes, multiple of 4 KiB; 0 -> 64 MiB */
        unsigned queue_pairs; /* 1..8; 0 -> 1 */
        unsigned ring_size;   /* power of two, 2..32768; 0 -> 256 */
        unsigned frame_len;   /* 64..1514 bytes, no FCS; 0 -> 128 */
        uint8_t mac[6];       /* all zero -> 02:76:68:6d:00:01 */
        uint8_t dst_mac[6];   /* all zero -> 02:76:68:6d:00:02 */
};

/* One virtqueue, as a front-end needs it for SET_VRING_* requests. */
struct vhm_guest_queue_layout {
        unsigned index; /* vhost-user queue index (2*qp RX, 2*qp+1 TX) */
        unsigned num;   /* ring size (SET_VRING_NUM) */
        bool is_rx;
        uint64_t desc_gpa; /* guest-physical addresses */
        uint64_t avail_gpa;
        uint64_t used_gpa;   /* = log_guest_addr for SET_VRING_ADDR */
        uint64_t desc_uaddr; /* our virtual addresses (SET_VRING_ADDR) */
        uint64_t avail_uaddr;
        uint64_t used_uaddr;
        uint32_t used_len; /* used ring bytes incl. avail_event: 6 + 8*num */
        uint64_t buf_gpa;  /* packet buffers: num * buf_size bytes */
        uint32_t buf_size;
        int kick_fd; /* eventfds owned by the guest */
        int call_fd;
};

/* Counters of one queue pair (or the sum), copied out of guest memory. */
struct vhm_guest_stats {
        uint64_t tx_seq;      /* next sequence number to transmit */
        uint64_t rx_expected; /* next sequence number expected back */
        uint64_t sent;        /* data frames transmitted */
        uint64_t received;    /* data frames received intact, new sequence */
        uint64_t lost;        /* sequence numbers skipped by a later intact
                                 * frame and not explained by a corrupted one */
        uint64_t corrupted;   /* bad checksum/magic/length/MACs/queue pair,
                                 * or a sequence number never sent */
        uint64_t duplicated;  /* intact frames with an old sequence number */
        uint64_t rarp_seen;   /* RARP frames carrying our MAC */
        uint64_t other;       /* frames of any other kind */
        uint64_t bad_used;    /* device protocol violations in used rings */
};

/* Flags for vhm_guest_run_opts. */
#define VHM_GUEST_RUN_WAIT_CALL 0x1u /* sleep on the call eventfds when idle */
#define VHM_GUEST_RUN_WAKE_FD   0x2u /* ... and wake when wake_fd is readable */

struct vhm_guest_run_opts {
        unsigned flags;
        /* With VHM_GUEST_RUN_WAKE_FD, an fd served by step (e.g. a bus
         * connection): an idle loop wakes as soon as it is readable, so that
         * step sees its messages at once rather than after the nap. */
        int wake_fd;
        unsigned burst; /* frames per transmit call; 0 -> 32 */
        /* Frames in flight per queue pair at most; 0 (or more than a ring)
         * -> the ring size.  Less leaves RX buffers free for what the device
         * adds on its own, such as a RARP after a migration's switchover. */
        unsigned window;
        /* Called once per loop iteration (e.g. an in-process test device);
         * a negative return stops the run and is returned. */
        int (*step)(void *opaque);
        void *opaque;
};

/* --- lifetime ------------------------------------------------------------ */

/* cfg may be NULL for all defaults. */
int vhm_guest_create(const struct vhm_guest_config *cfg, struct vhm_guest **out);

/*
 * Resume a guest from existing memory (e.g. a migrated copy).  memfd is
 * duplicated, the caller keeps its own descriptor.  The memory is untrusted:
 * a state area that is not ours or is inconsistent is rejected with -EBADMSG
 * and a reason in err (if err is not NULL).  New kick/call eventfds are made
 * (vhm_guest_attach_eventfds takes given ones).
 * The guest tries to seal the memfd against shrinking (ignored if it cannot).
 */
int vhm_guest_attach(int memfd, struct vhm_guest **out, char *err, size_t errlen);

/*
 * vhm_guest_attach for the destination of a migration, with the eventfds its
 * front-end already holds: the VMM handed kick_fds[q] and call_fds[q] over
 * for every queue q < nqueues (AddDevice) before the memory arrived, and the
 * back-end restored there kicks and calls those, so the resumed driver must
 * use the same ones.  nqueues must be twice the migrated guest's queue pairs
 * (else -EBADMSG, with the reason); an fd that is not an open eventfd is
 * -EBADF.  They are duplicated: the caller keeps its own.
 */
int vhm_guest_attach_eventfds(int memfd, const int *kick_fds, const int *call_fds, unsigned nqueues,
                              struct vhm_guest **out, char *err, size_t errlen);

/*
 * Where a guest created with cfg (NULL: defaults) keeps queue `queue`: the
 * guest-physical fields of vhm_guest_queue_layout(), user addresses 0 and fds
 * -1.  An incoming VMM tells its front-end this before the memory exists.
 */
int vhm_guest_plan_queue_layout(const struct vhm_guest_config *cfg, unsigned queue, struct vhm_guest_queue_layout *out);

void vhm_guest_free(struct vhm_guest *g); /* NULL is fine */

/* --- memory and queues for the front-end ---------------------------------- */

int vhm_guest_mem_fd(const struct vhm_guest *g); /* owned by the guest */
uint64_t vhm_guest_mem_size(const struct vhm_guest *g);
void *vhm_guest_mem_base(const struct vhm_guest *g); /* gpa 0 */
unsigned vhm_guest_queue_pairs(const struct vhm_guest *g);
unsigned vhm_guest_ring_size(const struct vhm_guest *g);
void vhm_guest_mac(const struct vhm_guest *g, uint8_t mac[6]);

/* queue: vhost-user queue index, 0 .. 2*queue_pairs-1. */
int vhm_guest_queue_layout(const struct vhm_guest *g, unsigned queue, struct vhm_guest_queue_layout *out);

/* Current avail->idx and used->idx of a queue, read from the rings. */
int vhm_guest_queue_indices(const struct vhm_guest *g, unsigned queue, uint16_t *avail_idx, uint16_t *used_idx);

/*
 * Virtio features the driver wants: VERSION_1 | MRG_RXBUF | RING_EVENT_IDX.
 * A front-end acks (offered & vhm_guest_driver_features()) plus its own
 * vhost bits (PROTOCOL_FEATURES, LOG_ALL).
 */
uint64_t vhm_guest_driver_features(void);

/*
 * Tell the driver what was negotiated, before traffic starts.  Decides the
 * virtio-net header size (12 bytes with VERSION_1 or MRG_RXBUF, else 10) and
 * whether EVENT_IDX notification suppression is used.  Bits that change the
 * ring or buffer format (RING_PACKED, IN_ORDER, ACCESS_PLATFORM, GUEST_TSO*,
 * GUEST_UFO, GUEST_USO*, HASH_REPORT, RSC_EXT) are refused with -ENOTSUP.
 */
int vhm_guest_set_features(struct vhm_guest *g, uint64_t acked);

int vhm_guest_set_frame_len(struct vhm_guest *g, unsigned frame_len);

/* --- driver operations, per queue pair ------------------------------------ */

/* Make every free RX buffer available to the device; returns how many. */
int vhm_guest_post_rx(struct vhm_guest *g, unsigned qp);

/* Transmit up to count frames, as many as free descriptors allow; returns
 * how many were sent.  Kicks unless the device suppressed notifications. */
int vhm_guest_tx(struct vhm_guest *g, unsigned qp, unsigned count);

/* Take back transmitted descriptors the device has used; returns how many. */
int vhm_guest_reclaim_tx(struct vhm_guest *g, unsigned qp);

/* Check up to budget received frames (0 = all available), re-post their
 * buffers; returns how many used entries were consumed. */
int vhm_guest_poll_rx(struct vhm_guest *g, unsigned qp, unsigned budget);

/*
 * Drive queue pair qp (or VHM_GUEST_ALL_QPS) until target_frames more frames
 * per queue pair have been sent and all of them are accounted for: came back
 * intact, came back corrupted, or were skipped by a later frame (lost).  A
 * drop among the very last frames therefore ends in -ETIMEDOUT (nothing
 * tells it from a slow backend); the counters still say what happened.
 * At most one RX ring of frames is kept in flight so that an echoing backend
 * never lacks a buffer.  timeout_ms < 0 waits forever.  Without
 * VHM_GUEST_RUN_WAIT_CALL it busy-polls and asks the device for no calls
 * (VRING_AVAIL_F_NO_INTERRUPT, or a stale used_event with EVENT_IDX); on
 * return calls are wanted again, the default for callers driving by hand.
 * Returns 0, -ETIMEDOUT, -EPROTO (device broke the ring protocol), or
 * another negative errno.  opts may be NULL.
 */
int vhm_guest_run_until(struct vhm_guest *g, unsigned qp, uint64_t target_frames, int timeout_ms,
                        const struct vhm_guest_run_opts *opts);

int vhm_guest_get_stats(const struct vhm_guest *g, unsigned qp, struct vhm_guest_stats *out);

/* --- the memory image's checksum ------------------------------------------ */

/*
 * The checksum of the whole guest memory exactly as the migration stream
 * computes it for a VM of one region at gpa 0 (vhm_memory_checksum: each
 * page's little-endian 8-byte words keyed by position through two Feistel
 * rounds of 32-bit squares into eight summed lanes, the page hashes folded
 * in order by a 64-bit multiply-xor, migrate/stream.h), so it compares
 * with a VM's MigrationChecksum while nothing writes the memory.
 *
 * With VHM_GUEST_CHECKSUM_DRIVER the bytes a device may write (every used
 * ring's pages and the RX buffers) count as zeroes: the image of what only
 * the driver writes.  A destination back-end runs (and writes) before the
 * guest learns that its migration completed; this image still equals the
 * source's after the switchover, until the driver itself runs again.
 */
#define VHM_GUEST_CHECKSUM_DRIVER 0x1u
int vhm_guest_checksum(const struct vhm_guest *g, unsigned flags, uint64_t *out);

/* --- pages the device must have written (host-side record) ---------------- */

/*
 * Every used entry the driver consumes proves device writes: the used ring
 * entry and used->idx, and for RX the first used.len bytes of the buffer.
 * Their 4 KiB guest pages are recorded here, outside guest memory, so a dirty
 * log can be checked to be a superset.
 */
size_t vhm_guest_npages(const struct vhm_guest *g);

/* Copy the record as a vhost-log-style bitmap (byte page/8, bit page%8)
 * covering npages pages; pages beyond guest memory are cleared. */
int vhm_guest_device_written_pages(const struct vhm_guest *g, uint8_t *bitmap, size_t npages);

/* Call cb for every recorded page (ascending); a non-zero return stops the
 * walk and is returned. */
int vhm_guest_for_each_device_written_page(const struct vhm_guest *g, int (*cb)(uint64_t page, void *opaque),
                                           void *opaque);

void vhm_guest_reset_device_written_pages(struct vhm_guest *g);

/* --- the VMM's dirty bitmap (pages the driver writes) ---------------------- */

/*
 * The bitmap a VMM registers with Vm.AddDirtyBitmap for a live migration:
 * a memfd in the vhost log format (bit N of the little-endian u64 words =
 * guest page N of 4 KiB), ceil(pages / 64) words, sealed against shrinking
 * and growing.  Made on the first call; returns its fd (owned by the guest,
 * the same one every call) or a negative errno.  From then on every store
 * the driver makes into guest memory (buffers, descriptors, avail rings,
 * its state area) sets its page's bit with an atomic OR; the daemon clears
 * them.  Pages the device writes (used rings, RX buffers) are the device's
 * dirty log's business, not this bitmap's.
 */
int vhm_guest_dirty_bitmap(struct vhm_guest *g);

/* Whether page's bit is set (false without a bitmap). */
bool vhm_guest_page_dirty(const struct vhm_guest *g, uint64_t page);

/* Clear every bit, as a harvest would (tests). */
void vhm_guest_clear_dirty(struct vhm_guest *g);
