/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test-only loopback device for the synthetic guest (see loopback.h).
 * Written as an independent backend would be: it trusts nothing in guest
 * memory, translates every guest-physical address with a bounds check, and
 * uses the same acquire/release discipline on the ring indices.
 */
#include <endian.h>
#include <errno.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loopback.h"

#define LB_MAX_FAULTS   32
#define ETH_HLEN        14u
#define RARP_FRAME_LEN  60u
#define PAYLOAD_SEQ_OFF (ETH_HLEN + 8u) /* see guest-frame.c */

struct lb_queue {
        struct vhm_guest_queue_layout lay;
        struct vring_desc *desc;
        struct vring_avail *avail;
        struct vring_used *used;
        uint16_t last_avail; /* next avail entry to take */
        uint16_t used_idx;   /* next used entry to write */
        uint16_t used_published;
};

struct lb_fault_entry {
        bool armed;
        unsigned qp;
        enum lb_fault fault;
        uint64_t seq;
};

struct lb_dev {
        uint8_t *base;
        uint64_t size;
        unsigned nqp;
        unsigned num;
        struct lb_config cfg;
        uint8_t mac[6];
        struct lb_queue q[VHM_GUEST_MAX_QUEUES];
        struct lb_fault_entry faults[LB_MAX_FAULTS];
        uint8_t *written;
        size_t npages;
        uint64_t calls;
        pthread_t thread;
        bool running;
        int stop;
        int error;
};

/* ---------------------------------------------------------------- memory */

static void *gpa_ptr(const struct lb_dev *d, uint64_t gpa, uint64_t len) {
        if (gpa > d->size || len > d->size - gpa)
                return NULL;
        return d->base + gpa;
}

static void mark(struct lb_dev *d, uint64_t gpa, uint64_t len) {
        for (uint64_t p = gpa / VHM_GUEST_PAGE_SIZE; len && p <= (gpa + len - 1) / VHM_GUEST_PAGE_SIZE && p < d->npages;
             p++)
                d->written[p / 8] |= (uint8_t) (1u << (p % 8));
}

static uint16_t load_acquire16(const __virtio16 *p) {
        return le16toh(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}

/* ---------------------------------------------------------------- setup */

static int bind_queue(struct lb_dev *d, struct vhm_guest *g, unsigned qi) {
        struct lb_queue *q = &d->q[qi];
        int rc = vhm_guest_queue_layout(g, qi, &q->lay);

        if (rc < 0)
                return rc;
        q->desc = gpa_ptr(d, q->lay.desc_gpa, 16ull * d->num);
        q->avail = gpa_ptr(d, q->lay.avail_gpa, 6ull + 2ull * d->num);
        q->used = gpa_ptr(d, q->lay.used_gpa, q->lay.used_len);
        if (!q->desc || !q->avail || !q->used)
                return -EFAULT;
        /* Resume where the ring says the device stopped, as DPDK does. */
        q->last_avail = q->used_idx = q->used_published = le16toh(q->used->idx);
        q->used->flags = htole16(d->cfg.no_notify && !d->cfg.event_idx ? VRING_USED_F_NO_NOTIFY : 0);
        return 0;
}

static __virtio16 *avail_event(const struct lb_dev *d, struct lb_queue *q) {
        return (__virtio16 *) &q->used->ring[d->num];
}

static __virtio16 *used_event(const struct lb_dev *d, struct lb_queue *q) {
        return &q->avail->ring[d->num];
}

int lb_create(struct vhm_guest *g, const struct lb_config *cfg, struct lb_dev **out) {
        struct lb_dev *d = calloc(1, sizeof(*d));
        int rc = 0;

        if (!d)
                return -ENOMEM;
        if (cfg)
                d->cfg = *cfg;
        if (!d->cfg.hdr_len)
                d->cfg.hdr_len = 12;
        d->base = vhm_guest_mem_base(g);
        d->size = vhm_guest_mem_size(g);
        d->nqp = vhm_guest_queue_pairs(g);
        d->num = vhm_guest_ring_size(g);
        vhm_guest_mac(g, d->mac);
        d->npages = d->size / VHM_GUEST_PAGE_SIZE;
        d->written = calloc((d->npages + 7) / 8, 1);
        if (!d->written)
                rc = -ENOMEM;
        for (unsigned qi = 0; rc == 0 && qi < 2 * d->nqp; qi++)
                rc = bind_queue(d, g, qi);
        if (rc < 0) {
                lb_free(d);
                return rc;
        }
        *out = d;
        return 0;
}

void lb_free(struct lb_dev *d) {
        if (!d)
                return;
        lb_stop(d);
        free(d->written);
        free(d);
}

uint16_t lb_get_base(const struct lb_dev *d, unsigned queue) {
        return d->q[queue].last_avail;
}

void lb_set_base(struct lb_dev *d, unsigned queue, uint16_t base) {
        struct lb_queue *q = &d->q[queue];

        q->last_avail = q->used_idx = q->used_published = base;
}

int lb_inject(struct lb_dev *d, unsigned qp, enum lb_fault fault, uint64_t seq) {
        for (unsigned i = 0; i < LB_MAX_FAULTS; i++) {
                if (d->faults[i].armed)
                        continue;
                d->faults[i] = (struct lb_fault_entry){ true, qp, fault, seq };
                return 0;
        }
        return -ENOSPC;
}

static struct lb_fault_entry *find_fault(struct lb_dev *d, unsigned qp, uint64_t seq) {
        for (unsigned i = 0; i < LB_MAX_FAULTS; i++)
                if (d->faults[i].armed && d->faults[i].qp == qp && d->faults[i].seq == seq)
                        return &d->faults[i];
        return NULL;
}

/* ---------------------------------------------------------------- rings */

static void used_add(struct lb_dev *d, struct lb_queue *q, uint32_t id, uint32_t len) {
        unsigned slot = q->used_idx & (d->num - 1);

        q->used->ring[slot].id = htole32(id);
        q->used->ring[slot].len = htole32(len);
        mark(d, q->lay.used_gpa + 4 + 8ull * slot, 8);
        q->used_idx++;
}

static bool should_call(const struct lb_dev *d, struct lb_queue *q, uint16_t old_idx, uint16_t new_idx) {
        uint16_t ev;

        if (!d->cfg.event_idx)
                return !(le16toh(__atomic_load_n(&q->avail->flags, __ATOMIC_RELAXED)) & VRING_AVAIL_F_NO_INTERRUPT);
        ev = le16toh(__atomic_load_n(used_event(d, q), __ATOMIC_RELAXED));
        return (uint16_t) (new_idx - ev - 1) < (uint16_t) (new_idx - old_idx);
}

static void publish_used(struct lb_dev *d, struct lb_queue *q) {
        uint16_t old_idx = q->used_published;
        uint64_t one = 1;

        if (d->cfg.event_idx)
                __atomic_store_n(avail_event(d, q), htole16(q->last_avail), __ATOMIC_RELAXED);
        if (q->used_idx == old_idx)
                return;
        __atomic_store_n(&q->used->idx, htole16(q->used_idx), __ATOMIC_RELEASE);
        mark(d, q->lay.used_gpa + 2, 2);
        q->used_published = q->used_idx;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (should_call(d, q, old_idx, q->used_idx)) {
                if (write(q->lay.call_fd, &one, sizeof(one)) == sizeof(one))
                        __atomic_fetch_add(&d->calls, 1, __ATOMIC_RELAXED);
        }
}

static unsigned avail_count(struct lb_queue *q) {
        return (uint16_t) (load_acquire16(&q->avail->idx) - q->last_avail);
}

/* The descriptor behind the next avail entry, bounds-checked. */
static uint8_t *next_desc(struct lb_dev *d, struct lb_queue *q, uint32_t *id, uint32_t *len, uint16_t *flags) {
        const struct vring_desc *desc;

        *id = le16toh(q->avail->ring[q->last_avail & (d->num - 1)]);
        if (*id >= d->num)
                return NULL;
        desc = &q->desc[*id];
        *len = le32toh(desc->len);
        *flags = le16toh(desc->flags);
        return gpa_ptr(d, le64toh(desc->addr), *len);
}

/* Copy one frame into the next RX buffer, MACs swapped as testpmd's macswap
 * does, behind a virtio-net header with num_buffers = 1. */
static int rx_deliver(struct lb_dev *d, unsigned qp, const uint8_t *frame, uint32_t flen, bool corrupt) {
        struct lb_queue *rx = &d->q[2 * qp];
        uint32_t id, blen, total = d->cfg.hdr_len + flen;
        uint16_t flags, nb = htole16(1);
        uint8_t *buf = next_desc(d, rx, &id, &blen, &flags);

        if (!buf || !(flags & VRING_DESC_F_WRITE) || blen < total)
                return -EPROTO;
        memset(buf, 0, d->cfg.hdr_len);
        if (d->cfg.hdr_len >= 12)
                memcpy(buf + 10, &nb, sizeof(nb));
        memcpy(buf + d->cfg.hdr_len, frame + 6, 6);
        memcpy(buf + d->cfg.hdr_len + 6, frame, 6);
        memcpy(buf + d->cfg.hdr_len + 12, frame + 12, flen - 12);
        if (corrupt)
                buf[total - 1] ^= 0x5a;
        mark(d, le64toh(rx->desc[id].addr), total);
        used_add(d, rx, id, total);
        rx->last_avail++;
        return 0;
}

/* A RARP as DPDK builds it for SEND_RARP, before the MAC swap. */
static void build_rarp(uint8_t *f, const uint8_t mac[6]) {
        static const uint8_t body[8] = { 0, 1, 0x08, 0x00, 6, 4, 0, 3 };

        memset(f, 0, RARP_FRAME_LEN);
        memset(f, 0xff, 6);
        memcpy(f + 6, mac, 6);
        f[12] = 0x80;
        f[13] = 0x35;
        memcpy(f + ETH_HLEN, body, sizeof(body));
        memcpy(f + ETH_HLEN + 8, mac, 6);  /* sender hardware address */
        memcpy(f + ETH_HLEN + 18, mac, 6); /* target hardware address */
}

static unsigned rx_needed(enum lb_fault f) {
        switch (f) {
        case LB_FAULT_DROP:
                return 0;
        case LB_FAULT_DUP:
        case LB_FAULT_RARP:
        case LB_FAULT_RARP_OTHER:
                return 2;
        default:
                return 1;
        }
}

static int deliver_with_fault(struct lb_dev *d, unsigned qp, const uint8_t *frame, uint32_t flen, enum lb_fault f) {
        static const uint8_t other_mac[6] = { 0x02, 0x99, 0x99, 0x99, 0x99, 0x99 };
        uint8_t rarp[RARP_FRAME_LEN];
        int rc = 0;

        if (f == LB_FAULT_RARP || f == LB_FAULT_RARP_OTHER) {
                build_rarp(rarp, f == LB_FAULT_RARP ? d->mac : other_mac);
                rc = rx_deliver(d, qp, rarp, RARP_FRAME_LEN, false);
        }
        if (rc == 0 && f != LB_FAULT_DROP)
                rc = rx_deliver(d, qp, frame, flen, f == LB_FAULT_CORRUPT);
        if (rc == 0 && f == LB_FAULT_DUP)
                rc = rx_deliver(d, qp, frame, flen, false);
        if (rc == 0 && f == LB_FAULT_BAD_ID)
                used_add(d, &d->q[2 * qp], d->num + 5, 0);
        return rc;
}

static uint64_t frame_seq(const uint8_t *frame, uint32_t flen) {
        uint64_t v;

        if (flen < PAYLOAD_SEQ_OFF + 8)
                return UINT64_MAX;
        memcpy(&v, frame + PAYLOAD_SEQ_OFF, sizeof(v));
        return le64toh(v);
}

/* Forward one TX frame.  1 if done, 0 if nothing to do or no RX buffer yet
 * (back-pressure instead of dropping keeps unit tests deterministic). */
static int forward_one(struct lb_dev *d, unsigned qp) {
        struct lb_queue *tx = &d->q[2 * qp + 1];
        struct lb_fault_entry *fe;
        enum lb_fault f = 0;
        uint32_t id, len;
        uint16_t flags;
        uint8_t *frame;
        int rc;

        if (!avail_count(tx))
                return 0;
        frame = next_desc(d, tx, &id, &len, &flags);
        if (!frame || (flags & VRING_DESC_F_WRITE) || len < d->cfg.hdr_len + ETH_HLEN)
                return -EPROTO;
        frame += d->cfg.hdr_len;
        len -= d->cfg.hdr_len;
        fe = find_fault(d, qp, frame_seq(frame, len));
        if (fe)
                f = fe->fault;
        if (avail_count(&d->q[2 * qp]) < rx_needed(f))
                return 0;
        rc = deliver_with_fault(d, qp, frame, len, f);
        if (rc < 0)
                return rc;
        if (fe)
                fe->armed = false;
        used_add(d, tx, id, 0);
        tx->last_avail++;
        return 1;
}

static int step_qp(struct lb_dev *d, unsigned qp) {
        unsigned n = 0;
        int rc = 0;

        while (!d->cfg.max_per_step || n < d->cfg.max_per_step) {
                rc = forward_one(d, qp);
                if (rc <= 0)
                        break;
                n++;
        }
        publish_used(d, &d->q[2 * qp]);
        publish_used(d, &d->q[2 * qp + 1]);
        return rc < 0 ? rc : (int) n;
}

int lb_step(void *dev) {
        struct lb_dev *d = dev;
        int total = 0;

        for (unsigned qp = 0; qp < d->nqp; qp++) {
                int rc = step_qp(d, qp);

                if (rc < 0)
                        return rc;
                total += rc;
        }
        return total;
}

/* ---------------------------------------------------------------- thread */

static void wait_kicks(struct lb_dev *d) {
        struct pollfd pfd[VHM_GUEST_MAX_QUEUES];
        unsigned n = 0;
        uint64_t v;

        for (unsigned qi = 0; qi < 2 * d->nqp; qi++) {
                (void) !read(d->q[qi].lay.kick_fd, &v, sizeof(v));
                pfd[n].fd = d->q[qi].lay.kick_fd;
                pfd[n++].events = POLLIN;
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (unsigned qp = 0; qp < d->nqp; qp++)
                if (avail_count(&d->q[2 * qp + 1]))
                        return;
        (void) poll(pfd, n, 1);
}

static void *lb_thread(void *arg) {
        struct lb_dev *d = arg;

        while (!__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE)) {
                int rc = lb_step(d);

                if (rc < 0) {
                        __atomic_store_n(&d->error, rc, __ATOMIC_RELEASE);
                        break;
                }
                if (rc > 0)
                        continue;
                if (d->cfg.wait_kick)
                        wait_kicks(d);
                else
                        sched_yield();
        }
        return NULL;
}

int lb_start(struct lb_dev *d) {
        int rc;

        __atomic_store_n(&d->stop, 0, __ATOMIC_RELEASE);
        rc = pthread_create(&d->thread, NULL, lb_thread, d);
        if (rc)
                return -rc;
        d->running = true;
        return 0;
}

void lb_stop(struct lb_dev *d) {
        if (!d->running)
                return;
        __atomic_store_n(&d->stop, 1, __ATOMIC_RELEASE);
        pthread_join(d->thread, NULL);
        d->running = false;
}

void lb_written_pages(const struct lb_dev *d, uint8_t *bitmap, size_t npages) {
        memset(bitmap, 0, (npages + 7) / 8);
        memcpy(bitmap, d->written, ((npages < d->npages ? npages : d->npages) + 7) / 8);
}

void lb_reset_written(struct lb_dev *d) {
        memset(d->written, 0, (d->npages + 7) / 8);
}

uint64_t lb_calls(const struct lb_dev *d) {
        return __atomic_load_n(&d->calls, __ATOMIC_RELAXED);
}

int lb_error(const struct lb_dev *d) {
        return __atomic_load_n(&d->error, __ATOMIC_ACQUIRE);
}
