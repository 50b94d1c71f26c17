/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Synthetic guest: guest memory, layout, creation, attachment (resume from a
 * copied memory image) and the host-side record of device-written pages.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_config.h>
#include <linux/virtio_net.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/guest/guest-internal.h"
#include "migrate/stream.h"

#define PAGE VHM_GUEST_PAGE_SIZE

/* Bits that change the ring or buffer format this driver implements. */
#define VHM_FEATURES_REFUSED                                                                                        \
        ((1ull << VIRTIO_F_RING_PACKED) | (1ull << VIRTIO_F_IN_ORDER) | (1ull << VIRTIO_F_ACCESS_PLATFORM) |        \
         (1ull << VIRTIO_NET_F_GUEST_TSO4) | (1ull << VIRTIO_NET_F_GUEST_TSO6) | (1ull << VIRTIO_NET_F_GUEST_ECN) | \
         (1ull << VIRTIO_NET_F_GUEST_UFO) | (1ull << 54) /* GUEST_USO4 */ | (1ull << 55) /* GUEST_USO6 */ |         \
         (1ull << VIRTIO_NET_F_HASH_REPORT) | (1ull << VIRTIO_NET_F_RSC_EXT))

static const uint8_t default_mac[6] = { 0x02, 0x76, 0x68, 0x6d, 0x00, 0x01 };
static const uint8_t default_dst[6] = { 0x02, 0x76, 0x68, 0x6d, 0x00, 0x02 };

static uint64_t align_up(uint64_t v, uint64_t a) {
        return (v + a - 1) & ~(a - 1);
}

static bool is_pow2(unsigned v) {
        return v && !(v & (v - 1));
}

static bool mac_is_zero(const uint8_t mac[6]) {
        static const uint8_t zero[6];

        return memcmp(mac, zero, 6) == 0;
}

/*
 * The layout is a pure function of (queue pairs, ring size) so that attach
 * can recompute it instead of trusting offsets stored in guest memory.
 * State area first (gpa 0), then per queue: descriptor table, avail ring,
 * used ring and buffers, each page-aligned; the used ring gets pages of its
 * own so the dirty log of used-ring writes never mixes with driver writes.
 */
int vhm_layout_compute(unsigned nqp, unsigned num, struct vhm_layout *lay) {
        uint64_t off = align_up(sizeof(struct vhm_gstate), 8);
        unsigned nq = 2 * nqp;

        if (nqp < 1 || nqp > VHM_GUEST_MAX_QP || num < 2 || num > VHM_GUEST_MAX_RING || !is_pow2(num))
                return -EINVAL;
        memset(lay, 0, sizeof(*lay));
        for (unsigned q = 0; q < nq; q++) {
                lay->free_stack[q] = off;
                off = align_up(off + 2ull * num, 8);
                lay->owner[q] = off;
                off = align_up(off + num, 8);
        }
        off = align_up(off, PAGE);
        lay->state_end = off;
        for (unsigned q = 0; q < nq; q++) {
                lay->desc[q] = off;
                off = align_up(off + 16ull * num, PAGE);
                lay->avail[q] = off;
                off = align_up(off + 6ull + 2ull * num, PAGE);
                lay->used[q] = off;
                off = align_up(off + 6ull + 8ull * num, PAGE);
                lay->bufs[q] = off;
                off = align_up(off + (uint64_t) VHM_GUEST_BUF_SIZE * num, PAGE);
        }
        lay->total = off;
        return 0;
}

bool vhm_features_ok(uint64_t features) {
        return !(features & VHM_FEATURES_REFUSED);
}

/* VERSION_1 always uses the 12-byte header; legacy uses it only with
 * MRG_RXBUF (virtio spec, "Device Operation" of the network device). */
unsigned vhm_hdr_len(uint64_t features) {
        if (features & ((1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_NET_F_MRG_RXBUF)))
                return sizeof(struct virtio_net_hdr_mrg_rxbuf);
        return sizeof(struct virtio_net_hdr);
}

uint64_t vhm_guest_driver_features(void) {
        return (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_NET_F_MRG_RXBUF) | (1ull << VIRTIO_RING_F_EVENT_IDX);
}

/* Host-side copies of negotiated values, derived in one place. */
static void apply_features(struct vhm_guest *g, uint64_t features) {
        g->hdr_len = vhm_hdr_len(features);
        g->event_idx = features & (1ull << VIRTIO_RING_F_EVENT_IDX);
        g->mrg_rxbuf = features & (1ull << VIRTIO_NET_F_MRG_RXBUF);
}

int vhm_guest_set_features(struct vhm_guest *g, uint64_t acked) {
        if (!vhm_features_ok(acked))
                return -ENOTSUP;
        VHM_GSET(g, g->st->features, acked);
        apply_features(g, acked);
        return 0;
}

int vhm_guest_set_frame_len(struct vhm_guest *g, unsigned frame_len) {
        if (frame_len < VHM_GUEST_MIN_FRAME || frame_len > VHM_GUEST_MAX_FRAME)
                return -EINVAL;
        VHM_GSET(g, g->st->frame_len, frame_len);
        g->frame_len = frame_len;
        return 0;
}

static struct vhm_guest *guest_alloc(void) {
        struct vhm_guest *g = calloc(1, sizeof(*g));

        if (!g)
                return NULL;
        g->memfd = -1;
        g->dirty_fd = -1;
        for (unsigned q = 0; q < VHM_GUEST_MAX_QUEUES; q++) {
                g->vq[q].kick_fd = -1;
                g->vq[q].call_fd = -1;
        }
        return g;
}

void vhm_guest_free(struct vhm_guest *g) {
        if (!g)
                return;
        for (unsigned q = 0; q < VHM_GUEST_MAX_QUEUES; q++) {
                if (g->vq[q].kick_fd >= 0)
                        close(g->vq[q].kick_fd);
                if (g->vq[q].call_fd >= 0)
                        close(g->vq[q].call_fd);
        }
        if (g->base)
                munmap(g->base, g->size);
        if (g->dirty)
                munmap(g->dirty, g->dirty_bytes);
        if (g->dirty_fd >= 0)
                close(g->dirty_fd);
        if (g->memfd >= 0)
                close(g->memfd);
        free(g->written);
        free(g);
}

/* Point the host-side queue views at guest memory. */
static void bind_queues(struct vhm_guest *g, const struct vhm_layout *lay) {
        for (unsigned q = 0; q < 2 * g->nqp; q++) {
                struct vhm_guest_vq *vq = &g->vq[q];

                vq->index = q;
                vq->is_rx = !(q & 1);
                vq->desc_gpa = lay->desc[q];
                vq->avail_gpa = lay->avail[q];
                vq->used_gpa = lay->used[q];
                vq->buf_gpa = lay->bufs[q];
                vq->desc = (struct vring_desc *) (g->base + lay->desc[q]);
                vq->avail = (struct vring_avail *) (g->base + lay->avail[q]);
                vq->used = (struct vring_used *) (g->base + lay->used[q]);
                vq->bufs = g->base + lay->bufs[q];
                vq->st = &g->st->q[q];
                vq->free_stack = (uint16_t *) (g->base + lay->free_stack[q]);
                vq->owner = g->base + lay->owner[q];
        }
}

/* Eventfds are host-side, not in guest memory: made fresh on create and on
 * a plain attach; an incoming VMM's attach takes the ones its front-end has. */
static int make_eventfds(struct vhm_guest *g) {
        for (unsigned q = 0; q < 2 * g->nqp; q++) {
                g->vq[q].kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                if (g->vq[q].kick_fd < 0)
                        return -errno;
                g->vq[q].call_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                if (g->vq[q].call_fd < 0)
                        return -errno;
        }
        return 0;
}

/* An fd the caller says is an eventfd: /proc names what it really is (when
 * /proc is there to ask). */
static int check_eventfd(int fd) {
        char link[32], target[64];
        ssize_t n;

        if (fd < 0 || fcntl(fd, F_GETFD) < 0)
                return -EBADF;
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return 0;
        target[n] = '\0';
        return strcmp(target, "anon_inode:[eventfd]") == 0 ? 0 : -EBADF;
}

static int alloc_written(struct vhm_guest *g) {
        g->npages = g->size / PAGE;
        g->written = calloc((g->npages + 7) / 8, 1);
        return g->written ? 0 : -ENOMEM;
}

static int map_memory(struct vhm_guest *g) {
        void *p = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, g->memfd, 0);

        if (p == MAP_FAILED)
                return -errno;
        g->base = p;
        g->st = p;
        return 0;
}

/* ---------------------------------------------------------------- create */

static int config_defaults(const struct vhm_guest_config *in, struct vhm_guest_config *c) {
        if (in)
                *c = *in;
        else
                memset(c, 0, sizeof(*c));
        if (!c->mem_size)
                c->mem_size = VHM_GUEST_DEFAULT_MEM;
        if (!c->queue_pairs)
                c->queue_pairs = 1;
        if (!c->ring_size)
                c->ring_size = VHM_GUEST_DEFAULT_RING;
        if (!c->frame_len)
                c->frame_len = VHM_GUEST_DEFAULT_FRAME;
        if (mac_is_zero(c->mac))
                memcpy(c->mac, default_mac, 6);
        if (mac_is_zero(c->dst_mac))
                memcpy(c->dst_mac, default_dst, 6);
        if (c->mem_size % PAGE || c->queue_pairs > VHM_GUEST_MAX_QP || c->ring_size < 2 ||
            c->ring_size > VHM_GUEST_MAX_RING || !is_pow2(c->ring_size) || c->frame_len < VHM_GUEST_MIN_FRAME ||
            c->frame_len > VHM_GUEST_MAX_FRAME || (c->mac[0] & 1))
                return -EINVAL;
        return 0;
}

/* Sealing protects every mapping (ours and the backend's) from SIGBUS by
 * a truncation; growth is sealed too so the size the state records stays
 * the size of the file. */
static void seal_memfd(int fd) {
        (void) fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
}

static int create_memfd(struct vhm_guest *g) {
        g->memfd = memfd_create("vhm-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (g->memfd < 0)
                return -errno;
        if (ftruncate(g->memfd, (off_t) g->size) < 0)
                return -errno;
        seal_memfd(g->memfd);
        return 0;
}

/* Every descriptor starts free; the stack is filled so id 0 pops first.
 * Creation writes memory directly: no dirty bitmap exists before the guest
 * does, and a migration's first round sends every page anyway. */
static void init_queue(struct vhm_guest *g, struct vhm_guest_vq *vq) {
        for (unsigned i = 0; i < g->num; i++) {
                vq->free_stack[i] = (uint16_t) (g->num - 1 - i);
                vq->owner[i] = VHM_DESC_FREE;
                vq->desc[i].addr = htole64(vq->buf_gpa + (uint64_t) i * VHM_GUEST_BUF_SIZE);
        }
        vq->st->num_free = (uint16_t) g->num;
        vq->st->next_avail = 0;
        vq->st->last_used = 0;
}

static void init_state(struct vhm_guest *g, const struct vhm_guest_config *c) {
        struct vhm_gstate *st = g->st;

        st->version = VHM_GSTATE_VERSION;
        st->header_size = sizeof(*st);
        st->mem_size = g->size;
        st->queue_pairs = g->nqp;
        st->ring_size = g->num;
        st->frame_len = c->frame_len;
        st->features = 1ull << VIRTIO_F_VERSION_1;
        memcpy(st->mac, c->mac, 6);
        memcpy(st->dst_mac, c->dst_mac, 6);
        for (unsigned q = 0; q < 2 * g->nqp; q++)
                init_queue(g, &g->vq[q]);
        /* The magic goes last: a half-initialised area is never "ours". */
        __atomic_store_n(&st->magic, VHM_GSTATE_MAGIC, __ATOMIC_RELEASE);
}

static void cache_config(struct vhm_guest *g) {
        g->frame_len = g->st->frame_len;
        memcpy(g->mac, g->st->mac, 6);
        memcpy(g->dst_mac, g->st->dst_mac, 6);
        apply_features(g, g->st->features);
}

int vhm_guest_create(const struct vhm_guest_config *cfg, struct vhm_guest **out) {
        struct vhm_guest_config c;
        struct vhm_layout lay;
        struct vhm_guest *g;
        int rc;

        rc = config_defaults(cfg, &c);
        if (rc < 0)
                return rc;
        rc = vhm_layout_compute(c.queue_pairs, c.ring_size, &lay);
        if (rc < 0)
                return rc;
        if (lay.total > c.mem_size)
                return -ENOSPC;
        g = guest_alloc();
        if (!g)
                return -ENOMEM;
        g->size = c.mem_size;
        g->nqp = c.queue_pairs;
        g->num = c.ring_size;
        rc = create_memfd(g);
        if (rc >= 0)
                rc = map_memory(g);
        if (rc >= 0) {
                bind_queues(g, &lay);
                init_state(g, &c);
                cache_config(g);
                rc = make_eventfds(g);
        }
        if (rc >= 0)
                rc = alloc_written(g);
        if (rc < 0) {
                vhm_guest_free(g);
                return rc;
        }
        *out = g;
        return 0;
}

/* ---------------------------------------------------------------- attach */

__attribute__((format(printf, 4, 5))) static int reject(char *err, size_t errlen, int rc, const char *fmt, ...) {
        va_list ap;

        if (err && errlen) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return rc;
}

static int open_copy(int memfd, struct vhm_guest *g, char *err, size_t errlen) {
        struct stat sb;

        g->memfd = fcntl(memfd, F_DUPFD_CLOEXEC, 0);
        if (g->memfd < 0)
                return reject(err, errlen, -errno, "cannot duplicate memfd: %s", strerror(errno));
        if (fstat(g->memfd, &sb) < 0)
                return reject(err, errlen, -errno, "fstat: %s", strerror(errno));
        if (!S_ISREG(sb.st_mode) || sb.st_size < (off_t) PAGE || sb.st_size % PAGE)
                return reject(err, errlen, -EBADMSG, "memory is %lld bytes, not a positive multiple of %u",
                              (long long) sb.st_size, PAGE);
        g->size = (uint64_t) sb.st_size;
        seal_memfd(g->memfd);
        return 0;
}

/* Header fields first: everything else is located through them. */
static int check_header(struct vhm_guest *g, struct vhm_layout *lay, char *err, size_t errlen) {
        const struct vhm_gstate *st = g->st;

        if (g->size < sizeof(*st) || st->magic != VHM_GSTATE_MAGIC)
                return reject(err, errlen, -EBADMSG, "no synthetic guest state at gpa 0 (bad magic)");
        if (st->version != VHM_GSTATE_VERSION || st->header_size != sizeof(*st))
                return reject(err, errlen, -EBADMSG, "state version %u size %u, expected %u size %zu", st->version,
                              st->header_size, VHM_GSTATE_VERSION, sizeof(*st));
        if (st->mem_size != g->size)
                return reject(err, errlen, -EBADMSG, "state says %llu bytes of memory, memfd has %llu",
                              (unsigned long long) st->mem_size, (unsigned long long) g->size);
        if (vhm_layout_compute(st->queue_pairs, st->ring_size, lay) < 0)
                return reject(err, errlen, -EBADMSG, "bad geometry: %u queue pairs, ring size %u", st->queue_pairs,
                              st->ring_size);
        if (lay->total > g->size)
                return reject(err, errlen, -EBADMSG, "layout needs %llu bytes, memory has %llu",
                              (unsigned long long) lay->total, (unsigned long long) g->size);
        if (st->frame_len < VHM_GUEST_MIN_FRAME || st->frame_len > VHM_GUEST_MAX_FRAME)
                return reject(err, errlen, -EBADMSG, "frame length %u out of range", st->frame_len);
        if (!vhm_features_ok(st->features))
                return reject(err, errlen, -EBADMSG, "unsupported features 0x%llx", (unsigned long long) st->features);
        g->nqp = st->queue_pairs;
        g->num = st->ring_size;
        return 0;
}

/* The free stack must hold distinct, in-range ids, exactly the ones whose
 * owner byte says free; anything else would let us post a descriptor twice. */
static int check_free_stack(const struct vhm_guest *g, const struct vhm_guest_vq *vq, char *err, size_t errlen) {
        unsigned num_free = vq->st->num_free, nfree_owner = 0;
        uint8_t *seen;
        int rc = 0;

        if (num_free > g->num)
                return reject(err, errlen, -EBADMSG, "queue %u: %u free descriptors of %u", vq->index, num_free,
                              g->num);
        for (unsigned i = 0; i < g->num; i++) {
                if (vq->owner[i] > VHM_DESC_POSTED)
                        return reject(err, errlen, -EBADMSG, "queue %u: descriptor %u owner %u", vq->index, i,
                                      vq->owner[i]);
                nfree_owner += vq->owner[i] == VHM_DESC_FREE;
        }
        if (nfree_owner != num_free)
                return reject(err, errlen, -EBADMSG, "queue %u: %u descriptors marked free, stack holds %u", vq->index,
                              nfree_owner, num_free);
        seen = calloc(g->num, 1);
        if (!seen)
                return reject(err, errlen, -ENOMEM, "out of memory");
        for (unsigned i = 0; i < num_free && rc == 0; i++) {
                unsigned id = vq->free_stack[i];

                if (id >= g->num || seen[id] || vq->owner[id] != VHM_DESC_FREE)
                        rc = reject(err, errlen, -EBADMSG, "queue %u: free stack entry %u (id %u) invalid", vq->index,
                                    i, id);
                else
                        seen[id] = 1;
        }
        free(seen);
        return rc;
}

/* Ring indices: what we published must be what the ring shows, and neither
 * the driver's nor the device's progress may exceed one ring. */
static int check_indices(const struct vhm_guest *g, const struct vhm_guest_vq *vq, char *err, size_t errlen) {
        uint16_t next_avail = vq->st->next_avail, last_used = vq->st->last_used;
        uint16_t avail_idx = le16toh(vq->avail->idx), used_idx = le16toh(vq->used->idx);
        unsigned inflight = (uint16_t) (next_avail - last_used);
        unsigned posted = g->num - vq->st->num_free;

        if (avail_idx != next_avail)
                return reject(err, errlen, -EBADMSG, "queue %u: avail idx %u, driver state %u", vq->index, avail_idx,
                              next_avail);
        if (inflight > posted)
                return reject(err, errlen, -EBADMSG, "queue %u: %u entries in flight, %u descriptors posted", vq->index,
                              inflight, posted);
        if ((uint16_t) (used_idx - last_used) > inflight)
                return reject(err, errlen, -EBADMSG, "queue %u: used idx %u beyond avail (last used %u, %u in flight)",
                              vq->index, used_idx, last_used, inflight);
        return 0;
}

static int check_queues(struct vhm_guest *g, char *err, size_t errlen) {
        for (unsigned q = 0; q < 2 * g->nqp; q++) {
                int rc = check_free_stack(g, &g->vq[q], err, errlen);

                if (rc == 0)
                        rc = check_indices(g, &g->vq[q], err, errlen);
                if (rc < 0)
                        return rc;
        }
        for (unsigned i = 0; i < g->nqp; i++) {
                const struct vhm_gstate_qp *s = &g->st->qp[i];

                if (s->rx_expected > s->tx_seq)
                        return reject(err, errlen, -EBADMSG, "queue pair %u expects sequence %llu, only %llu sent", i,
                                      (unsigned long long) s->rx_expected, (unsigned long long) s->tx_seq);
                if (s->corrupt_credit > s->corrupted)
                        return reject(err, errlen, -EBADMSG,
                                      "queue pair %u: corrupt credit %llu exceeds corrupted %llu", i,
                                      (unsigned long long) s->corrupt_credit, (unsigned long long) s->corrupted);
        }
        return 0;
}

/* The front-end's eventfds, duplicated, in place of new ones. */
static int dup_eventfds(struct vhm_guest *g, const int *kick_fds, const int *call_fds, char *err, size_t errlen) {
        for (unsigned q = 0; q < 2 * g->nqp; q++) {
                if (check_eventfd(kick_fds[q]) < 0 || check_eventfd(call_fds[q]) < 0)
                        return reject(err, errlen, -EBADF, "queue %u: kick fd %d or call fd %d is not an eventfd", q,
                                      kick_fds[q], call_fds[q]);
                g->vq[q].kick_fd = fcntl(kick_fds[q], F_DUPFD_CLOEXEC, 0);
                if (g->vq[q].kick_fd < 0)
                        return reject(err, errlen, -errno, "cannot duplicate eventfds: %s", strerror(errno));
                g->vq[q].call_fd = fcntl(call_fds[q], F_DUPFD_CLOEXEC, 0);
                if (g->vq[q].call_fd < 0)
                        return reject(err, errlen, -errno, "cannot duplicate eventfds: %s", strerror(errno));
        }
        return 0;
}

/* What the guest needs beyond its memory: eventfds (given or new) and the page record. */
static int attach_host_side(struct vhm_guest *g, const int *kick_fds, const int *call_fds, unsigned nqueues, char *err,
                            size_t errlen) {
        int rc;

        if (kick_fds && nqueues != 2 * g->nqp)
                return reject(err, errlen, -EBADMSG, "the migrated guest has %u queues, %u eventfd pairs were given",
                              2 * g->nqp, nqueues);
        if (kick_fds)
                rc = dup_eventfds(g, kick_fds, call_fds, err, errlen);
        else if ((rc = make_eventfds(g)) < 0)
                reject(err, errlen, rc, "eventfd: %s", strerror(-rc));
        if (rc >= 0 && (rc = alloc_written(g)) < 0)
                reject(err, errlen, rc, "%s", strerror(-rc));
        return rc;
}

int vhm_guest_attach(int memfd, struct vhm_guest **out, char *err, size_t errlen) {
        return vhm_guest_attach_eventfds(memfd, NULL, NULL, 0, out, err, errlen);
}

int vhm_guest_attach_eventfds(int memfd, const int *kick_fds, const int *call_fds, unsigned nqueues,
                              struct vhm_guest **out, char *err, size_t errlen) {
        struct vhm_layout lay;
        struct vhm_guest *g;
        int rc;

        if (err && errlen)
                err[0] = '\0';
        if (memfd < 0)
                return reject(err, errlen, -EBADF, "invalid memfd");
        if (!kick_fds != !call_fds)
                return reject(err, errlen, -EINVAL, "kick and call eventfds go together");
        g = guest_alloc();
        if (!g)
                return reject(err, errlen, -ENOMEM, "out of memory");
        rc = open_copy(memfd, g, err, errlen);
        if (rc >= 0 && (rc = map_memory(g)) < 0)
                reject(err, errlen, rc, "mmap: %s", strerror(-rc));
        if (rc >= 0)
                rc = check_header(g, &lay, err, errlen);
        if (rc >= 0) {
                bind_queues(g, &lay);
                rc = check_queues(g, err, errlen);
        }
        if (rc >= 0) {
                cache_config(g);
                rc = attach_host_side(g, kick_fds, call_fds, nqueues, err, errlen);
        }
        if (rc < 0) {
                vhm_guest_free(g);
                return rc;
        }
        *out = g;
        return 0;
}

/* ---------------------------------------------------------------- planning */

int vhm_guest_plan_queue_layout(const struct vhm_guest_config *cfg, unsigned queue,
                                struct vhm_guest_queue_layout *out) {
        struct vhm_guest_config c;
        struct vhm_layout lay;
        int rc = config_defaults(cfg, &c);

        if (rc == 0)
                rc = vhm_layout_compute(c.queue_pairs, c.ring_size, &lay);
        if (rc < 0)
                return rc;
        if (lay.total > c.mem_size)
                return -ENOSPC;
        if (queue >= 2 * c.queue_pairs)
                return -EINVAL;
        memset(out, 0, sizeof(*out));
        out->index = queue;
        out->num = c.ring_size;
        out->is_rx = !(queue & 1);
        out->desc_gpa = lay.desc[queue];
        out->avail_gpa = lay.avail[queue];
        out->used_gpa = lay.used[queue];
        out->used_len = 6 + 8 * c.ring_size;
        out->buf_gpa = lay.bufs[queue];
        out->buf_size = VHM_GUEST_BUF_SIZE;
        out->kick_fd = -1;
        out->call_fd = -1;
        return 0;
}

/* ---------------------------------------------------------------- checksum */

struct span {
        uint64_t start, end;
};

static int cmp_span(const void *a, const void *b) {
        const struct span *x = a, *y = b;

        return x->start < y->start ? -1 : x->start > y->start;
}

/* The device's pages: each used ring (pages of its own, up to the buffers)
 * and the RX buffers right after it; sorted, page-aligned, disjoint. */
static unsigned device_spans(const struct vhm_guest *g, struct span *sp) {
        uint64_t bufs_len = align_up((uint64_t) VHM_GUEST_BUF_SIZE * g->num, PAGE);
        unsigned n = 0;

        for (unsigned q = 0; q < 2 * g->nqp; q++) {
                const struct vhm_guest_vq *vq = &g->vq[q];

                sp[n].start = vq->used_gpa;
                sp[n++].end = vq->is_rx ? vq->buf_gpa + bufs_len : vq->buf_gpa;
        }
        qsort(sp, n, sizeof(*sp), cmp_span);
        return n;
}

static uint64_t fold_zeroes(uint64_t h, uint64_t len) {
        static const uint8_t zero[PAGE];

        for (uint64_t off = 0; off < len; off += PAGE)
                h = vhm_checksum_update(h, zero, len - off < PAGE ? (size_t) (len - off) : PAGE);
        return h;
}

int vhm_guest_checksum(const struct vhm_guest *g, unsigned flags, uint64_t *out) {
        struct span sp[VHM_GUEST_MAX_QUEUES];
        unsigned n = 0;
        uint64_t h = VHM_CHECKSUM_INIT, pos = 0;

        if (flags & ~VHM_GUEST_CHECKSUM_DRIVER)
                return -EINVAL;
        if (flags & VHM_GUEST_CHECKSUM_DRIVER)
                n = device_spans(g, sp);
        for (unsigned i = 0; i <= n; i++) {
                uint64_t next = i < n ? sp[i].start : g->size;

                h = vhm_checksum_update(h, g->base + pos, (size_t) (next - pos));
                if (i < n) {
                        h = fold_zeroes(h, sp[i].end - sp[i].start);
                        pos = sp[i].end;
                }
        }
        *out = h;
        return 0;
}

/* ---------------------------------------------------------------- getters */

int vhm_guest_mem_fd(const struct vhm_guest *g) {
        return g->memfd;
}

uint64_t vhm_guest_mem_size(const struct vhm_guest *g) {
        return g->size;
}

void *vhm_guest_mem_base(const struct vhm_guest *g) {
        return g->base;
}

unsigned vhm_guest_queue_pairs(const struct vhm_guest *g) {
        return g->nqp;
}

unsigned vhm_guest_ring_size(const struct vhm_guest *g) {
        return g->num;
}

void vhm_guest_mac(const struct vhm_guest *g, uint8_t mac[6]) {
        memcpy(mac, g->mac, 6);
}

int vhm_guest_queue_layout(const struct vhm_guest *g, unsigned queue, struct vhm_guest_queue_layout *out) {
        const struct vhm_guest_vq *vq;

        if (queue >= 2 * g->nqp)
                return -EINVAL;
        vq = &g->vq[queue];
        memset(out, 0, sizeof(*out));
        out->index = queue;
        out->num = g->num;
        out->is_rx = vq->is_rx;
        out->desc_gpa = vq->desc_gpa;
        out->avail_gpa = vq->avail_gpa;
        out->used_gpa = vq->used_gpa;
        out->desc_uaddr = (uint64_t) (uintptr_t) vq->desc;
        out->avail_uaddr = (uint64_t) (uintptr_t) vq->avail;
        out->used_uaddr = (uint64_t) (uintptr_t) vq->used;
        out->used_len = 6 + 8 * g->num;
        out->buf_gpa = vq->buf_gpa;
        out->buf_size = VHM_GUEST_BUF_SIZE;
        out->kick_fd = vq->kick_fd;
        out->call_fd = vq->call_fd;
        return 0;
}

int vhm_guest_queue_indices(const struct vhm_guest *g, unsigned queue, uint16_t *avail_idx, uint16_t *used_idx) {
        if (queue >= 2 * g->nqp)
                return -EINVAL;
        if (avail_idx)
                *avail_idx = le16toh(__atomic_load_n(&g->vq[queue].avail->idx, __ATOMIC_ACQUIRE));
        if (used_idx)
                *used_idx = le16toh(__atomic_load_n(&g->vq[queue].used->idx, __ATOMIC_ACQUIRE));
        return 0;
}

/* ---------------------------------------------------------------- written pages */

void vhm_mark_written(struct vhm_guest *g, uint64_t gpa, uint64_t len) {
        uint64_t last;

        if (!len)
                return;
        last = (gpa + len - 1) / PAGE;
        for (uint64_t p = gpa / PAGE; p <= last && p < g->npages; p++)
                __atomic_fetch_or(&g->written[p / 8], (uint8_t) (1u << (p % 8)), __ATOMIC_RELAXED);
}

size_t vhm_guest_npages(const struct vhm_guest *g) {
        return g->npages;
}

static bool page_written(const struct vhm_guest *g, uint64_t p) {
        return __atomic_load_n(&g->written[p / 8], __ATOMIC_RELAXED) & (1u << (p % 8));
}

int vhm_guest_device_written_pages(const struct vhm_guest *g, uint8_t *bitmap, size_t npages) {
        if (!bitmap)
                return -EINVAL;
        memset(bitmap, 0, (npages + 7) / 8);
        for (size_t p = 0; p < npages && p < g->npages; p++)
                if (page_written(g, p))
                        bitmap[p / 8] |= (uint8_t) (1u << (p % 8));
        return 0;
}

int vhm_guest_for_each_device_written_page(const struct vhm_guest *g, int (*cb)(uint64_t page, void *opaque),
                                           void *opaque) {
        for (size_t p = 0; p < g->npages; p++) {
                int rc;

                if (!page_written(g, p))
                        continue;
                rc = cb(p, opaque);
                if (rc)
                        return rc;
        }
        return 0;
}

void vhm_guest_reset_device_written_pages(struct vhm_guest *g) {
        for (size_t i = 0; i < (g->npages + 7) / 8; i++)
                __atomic_store_n(&g->written[i], 0, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- dirty bitmap */

/* One bit per page in u64 words, as AddDirtyBitmap wants it: sealed against
 * shrinking so the daemon's mapping can never fault, and growing so its size
 * stays the one both sides mapped. */
static int dirty_bitmap_make(struct vhm_guest *g) {
        size_t bytes = (g->npages + 63) / 64 * 8;
        void *p;
        int fd;

        fd = memfd_create("vhm-guest-dirty", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -errno;
        if (ftruncate(fd, (off_t) bytes) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
                int rc = -errno;

                close(fd);
                return rc;
        }
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
                int rc = -errno;

                close(fd);
                return rc;
        }
        g->dirty_fd = fd;
        g->dirty_bytes = bytes;
        /* Published last: a marker sees either no bitmap or a whole one. */
        __atomic_store_n(&g->dirty, (uint64_t *) p, __ATOMIC_RELEASE);
        return 0;
}

int vhm_guest_dirty_bitmap(struct vhm_guest *g) {
        if (!g->dirty) {
                int rc = dirty_bitmap_make(g);

                if (rc < 0)
                        return rc;
        }
        return g->dirty_fd;
}

bool vhm_guest_page_dirty(const struct vhm_guest *g, uint64_t page) {
        if (!g->dirty || page >= g->npages)
                return false;
        return le64toh(__atomic_load_n(&g->dirty[page / 64], __ATOMIC_RELAXED)) & (1ull << (page % 64));
}

void vhm_guest_clear_dirty(struct vhm_guest *g) {
        for (size_t i = 0; g->dirty && i < g->dirty_bytes / 8; i++)
                __atomic_store_n(&g->dirty[i], 0, __ATOMIC_RELAXED);
}
