/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Synthetic guest: the split-virtqueue driver.
 *
 * The device is another process on another core, so every hand-over goes
 * through the ring indices with explicit ordering: descriptors and avail
 * entries are written before avail->idx is stored with release semantics,
 * and used->idx is loaded with acquire semantics before the used entries and
 * buffer contents it covers are read.  Indices, free stacks and counters live
 * in guest memory (the state area) so a copied image resumes exactly; each
 * value read from there is bounds-checked where it is used.
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <linux/virtio_net.h>

#include "daemon/guest/guest-internal.h"

#define DEFAULT_BURST 32u

static uint16_t load_acquire16(const __virtio16 *p) {
        return le16toh(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}

static uint16_t load_relaxed16(const __virtio16 *p) {
        return le16toh(__atomic_load_n(p, __ATOMIC_RELAXED));
}

/* With EVENT_IDX, used_event sits after the avail ring entries and
 * avail_event after the used ring entries (virtio spec, split rings). */
static __virtio16 *used_event(const struct vhm_guest *g, struct vhm_guest_vq *vq) {
        return &vq->avail->ring[g->num];
}

static __virtio16 *avail_event(const struct vhm_guest *g, struct vhm_guest_vq *vq) {
        return (__virtio16 *) &vq->used->ring[g->num];
}

static struct vhm_guest_vq *rx_vq(struct vhm_guest *g, unsigned qp) {
        return &g->vq[2 * qp];
}

static struct vhm_guest_vq *tx_vq(struct vhm_guest *g, unsigned qp) {
        return &g->vq[2 * qp + 1];
}

/* ---------------------------------------------------------------- descriptors */

/* Pop a free descriptor: its id, -ENOSPC when none, -EBADMSG when the stack
 * in guest memory no longer makes sense (someone scribbled on it). */
static int desc_get(const struct vhm_guest *g, struct vhm_guest_vq *vq) {
        unsigned n = vq->st->num_free, id;

        if (n == 0)
                return -ENOSPC;
        if (n > g->num)
                return -EBADMSG;
        id = vq->free_stack[n - 1];
        if (id >= g->num || vq->owner[id] != VHM_DESC_FREE)
                return -EBADMSG;
        VHM_GSET(g, vq->owner[id], VHM_DESC_POSTED);
        VHM_GSET(g, vq->st->num_free, (uint16_t) (n - 1));
        return (int) id;
}

/* Only a descriptor we posted may come back; anything else is a device bug. */
static bool desc_is_posted(const struct vhm_guest *g, const struct vhm_guest_vq *vq, uint32_t id) {
        return id < g->num && vq->owner[id] == VHM_DESC_POSTED;
}

static void desc_put(const struct vhm_guest *g, struct vhm_guest_vq *vq, uint32_t id) {
        unsigned n = vq->st->num_free;

        if (n >= g->num)
                return; /* cannot happen while owner bytes are sane */
        VHM_GSET(g, vq->free_stack[n], (uint16_t) id);
        VHM_GSET(g, vq->owner[id], VHM_DESC_FREE);
        VHM_GSET(g, vq->st->num_free, (uint16_t) (n + 1));
}

/* Descriptor contents are rewritten on every post, so the descriptor table
 * never has to be trusted or validated. */
static void avail_add(const struct vhm_guest *g, struct vhm_guest_vq *vq, unsigned id, uint32_t len, uint16_t flags) {
        struct vring_desc d = {
                .addr = htole64(vq->buf_gpa + (uint64_t) id * VHM_GUEST_BUF_SIZE),
                .len = htole32(len),
                .flags = htole16(flags),
        };
        uint16_t a = vq->st->next_avail;

        VHM_GSET(g, vq->desc[id], d);
        VHM_GSET(g, vq->avail->ring[a & (g->num - 1)], htole16((uint16_t) id));
        VHM_GSET(g, vq->st->next_avail, (uint16_t) (a + 1));
}

/* ---------------------------------------------------------------- notifications */

/* Did [old, new) cross the index the other side asked to be told about?
 * (virtio spec, "Driver Requirements: Virtqueue Notification Suppression"). */
static bool crossed_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
        return (uint16_t) (new_idx - event - 1) < (uint16_t) (new_idx - old_idx);
}

static bool need_kick(const struct vhm_guest *g, struct vhm_guest_vq *vq, uint16_t old_idx, uint16_t new_idx) {
        if (g->event_idx)
                return crossed_event(load_relaxed16(avail_event(g, vq)), new_idx, old_idx);
        return !(load_relaxed16(&vq->used->flags) & VRING_USED_F_NO_NOTIFY);
}

/* A busy-polling driver needs no calls; saying so spares the device an
 * eventfd write per burst.  Without EVENT_IDX the avail flag says it (with
 * EVENT_IDX the flag must stay 0); with EVENT_IDX used_event is just left
 * behind, which costs at most one call per 2^16 used entries. */
static void set_calls(const struct vhm_guest *g, struct vhm_guest_vq *vq, bool on) {
        uint16_t flags = on || g->event_idx ? 0 : VRING_AVAIL_F_NO_INTERRUPT;

        vq->calls_off = !on;
        vhm_gstore16(g, &vq->avail->flags, htole16(flags), __ATOMIC_RELAXED);
        if (on && g->event_idx)
                vhm_gstore16(g, used_event(g, vq), htole16(vq->st->last_used), __ATOMIC_RELAXED);
}

static void set_calls_qps(struct vhm_guest *g, unsigned first, unsigned last, bool on) {
        for (unsigned q = 2 * first; q < 2 * last; q++)
                set_calls(g, &g->vq[q], on);
}

static void kick(const struct vhm_guest_vq *vq) {
        uint64_t one = 1;
        ssize_t n = write(vq->kick_fd, &one, sizeof(one));

        /* Nothing to do on failure: EAGAIN means the counter is saturated, so
         * a kick is pending anyway, and an eventfd write fails no other way. */
        (void) n;
}

/* Make everything added since old_idx visible, then kick if wanted. */
static void publish(const struct vhm_guest *g, struct vhm_guest_vq *vq, uint16_t old_idx) {
        uint16_t new_idx = vq->st->next_avail;

        if (new_idx == old_idx)
                return;
        vhm_gstore16(g, &vq->avail->idx, htole16(new_idx), __ATOMIC_RELEASE);
        /* Store-load ordering: the device must see the new idx or we must see
         * its request for a kick; a release store alone does not order it
         * before the following load of used->flags / avail_event. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (need_kick(g, vq, old_idx, new_idx))
                kick(vq);
}

/* ---------------------------------------------------------------- used ring */

static void count_bad_used(struct vhm_guest *g, unsigned qp) {
        VHM_GSET(g, g->st->qp[qp].bad_used, g->st->qp[qp].bad_used + 1);
}

typedef void (*used_fn)(struct vhm_guest *g, unsigned qp, struct vhm_guest_vq *vq, uint32_t id, uint32_t len);

static void record_used_entry(struct vhm_guest *g, const struct vhm_guest_vq *vq, unsigned slot) {
        vhm_mark_written(
                g, vq->used_gpa + offsetof(struct vring_used, ring) + (uint64_t) slot * sizeof(struct vring_used_elem),
                sizeof(struct vring_used_elem));
}

/* Consume up to budget (0 = all) used entries.  Returns the number consumed,
 * or -EPROTO if the device claims to have used more than was available. */
static int used_consume(struct vhm_guest *g, unsigned qp, struct vhm_guest_vq *vq, unsigned budget, used_fn fn) {
        uint16_t last = vq->st->last_used;
        uint16_t used_idx = load_acquire16(&vq->used->idx);
        unsigned pending = (uint16_t) (used_idx - last);
        unsigned inflight = (uint16_t) (vq->st->next_avail - last);

        if (pending > inflight) {
                count_bad_used(g, qp);
                return -EPROTO;
        }
        if (budget && pending > budget)
                pending = budget;
        for (unsigned i = 0; i < pending; i++) {
                unsigned slot = (uint16_t) (last + i) & (g->num - 1);
                struct vring_used_elem e = vq->used->ring[slot];

                record_used_entry(g, vq, slot);
                fn(g, qp, vq, le32toh(e.id), le32toh(e.len));
        }
        if (pending) {
                vhm_mark_written(g, vq->used_gpa + offsetof(struct vring_used, idx), 2);
                VHM_GSET(g, vq->st->last_used, (uint16_t) (last + pending));
                /* Ask for a call on the next entry, unless busy polling. */
                if (g->event_idx && !vq->calls_off)
                        vhm_gstore16(g, used_event(g, vq), htole16(vq->st->last_used), __ATOMIC_RELAXED);
        }
        return (int) pending;
}

static void tx_done(struct vhm_guest *g, unsigned qp, struct vhm_guest_vq *vq, uint32_t id, uint32_t len) {
        (void) len; /* the device writes nothing into a TX buffer */
        if (!desc_is_posted(g, vq, id)) {
                count_bad_used(g, qp);
                return;
        }
        desc_put(g, vq, id);
}

/* num_buffers only means something with MRG_RXBUF; our buffers always hold
 * a whole frame, so a frame spread over several is not one we sent. */
static bool rx_header_ok(const struct vhm_guest *g, const uint8_t *buf) {
        struct virtio_net_hdr_mrg_rxbuf h;

        if (!g->mrg_rxbuf)
                return true;
        memcpy(&h, buf, sizeof(h));
        return le16toh(h.num_buffers) == 1;
}

static void rx_done(struct vhm_guest *g, unsigned qp, struct vhm_guest_vq *vq, uint32_t id, uint32_t len) {
        const uint8_t *buf;

        if (!desc_is_posted(g, vq, id)) {
                count_bad_used(g, qp);
                return;
        }
        buf = vq->bufs + (uint64_t) id * VHM_GUEST_BUF_SIZE;
        if (len > VHM_GUEST_BUF_SIZE || len < g->hdr_len) {
                count_bad_used(g, qp);
        } else {
                vhm_mark_written(g, vq->buf_gpa + (uint64_t) id * VHM_GUEST_BUF_SIZE, len);
                if (rx_header_ok(g, buf))
                        vhm_rx_account(g, qp, buf + g->hdr_len, len - g->hdr_len);
                else
                        vhm_count_corrupted(g, qp);
        }
        desc_put(g, vq, id);
}

/* ---------------------------------------------------------------- operations */

static int post_rx(struct vhm_guest *g, unsigned qp) {
        struct vhm_guest_vq *vq = rx_vq(g, qp);
        uint16_t old_idx = vq->st->next_avail;
        int n = 0, id;

        while ((id = desc_get(g, vq)) >= 0) {
                avail_add(g, vq, (unsigned) id, VHM_GUEST_BUF_SIZE, VRING_DESC_F_WRITE);
                n++;
        }
        publish(g, vq, old_idx);
        return id == -ENOSPC ? n : id;
}

int vhm_guest_post_rx(struct vhm_guest *g, unsigned qp) {
        if (qp >= g->nqp)
                return -EINVAL;
        return post_rx(g, qp);
}

int vhm_guest_tx(struct vhm_guest *g, unsigned qp, unsigned count) {
        struct vhm_guest_vq *vq;
        struct vhm_gstate_qp *s;
        uint16_t old_idx;
        unsigned sent = 0;
        int id = 0;

        if (qp >= g->nqp)
                return -EINVAL;
        vq = tx_vq(g, qp);
        s = &g->st->qp[qp];
        old_idx = vq->st->next_avail;
        while (sent < count && (id = desc_get(g, vq)) >= 0) {
                uint8_t *buf = vq->bufs + (uint64_t) id * VHM_GUEST_BUF_SIZE;

                memset(buf, 0, g->hdr_len); /* no offloads requested */
                vhm_frame_build(buf + g->hdr_len, g->frame_len, g->dst_mac, g->mac, qp, s->tx_seq);
                vhm_dirty_ptr(g, buf, g->hdr_len + g->frame_len);
                VHM_GSET(g, s->tx_seq, s->tx_seq + 1);
                VHM_GSET(g, s->sent, s->sent + 1);
                avail_add(g, vq, (unsigned) id, g->hdr_len + g->frame_len, 0);
                sent++;
        }
        publish(g, vq, old_idx);
        return id == -EBADMSG ? id : (int) sent;
}

int vhm_guest_reclaim_tx(struct vhm_guest *g, unsigned qp) {
        if (qp >= g->nqp)
                return -EINVAL;
        return used_consume(g, qp, tx_vq(g, qp), 0, tx_done);
}

int vhm_guest_poll_rx(struct vhm_guest *g, unsigned qp, unsigned budget) {
        int n, rc;

        if (qp >= g->nqp)
                return -EINVAL;
        n = used_consume(g, qp, rx_vq(g, qp), budget, rx_done);
        if (n <= 0)
                return n;
        rc = post_rx(g, qp);
        return rc < 0 ? rc : n;
}

static void add_stats(struct vhm_guest_stats *o, const struct vhm_gstate_qp *s) {
        o->tx_seq += s->tx_seq;
        o->rx_expected += s->rx_expected;
        o->sent += s->sent;
        o->received += s->received;
        o->lost += s->lost;
        o->corrupted += s->corrupted;
        o->duplicated += s->duplicated;
        o->rarp_seen += s->rarp_seen;
        o->other += s->other;
        o->bad_used += s->bad_used;
}

int vhm_guest_get_stats(const struct vhm_guest *g, unsigned qp, struct vhm_guest_stats *out) {
        if (qp != VHM_GUEST_ALL_QPS && qp >= g->nqp)
                return -EINVAL;
        memset(out, 0, sizeof(*out));
        for (unsigned i = 0; i < g->nqp; i++)
                if (qp == VHM_GUEST_ALL_QPS || qp == i)
                        add_stats(out, &g->st->qp[i]);
        return 0;
}

/* ---------------------------------------------------------------- run loop */

static int64_t now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool has_used(struct vhm_guest_vq *vq) {
        return load_acquire16(&vq->used->idx) != vq->st->last_used;
}

/* Sleep until a call eventfd (or the caller's wake fd) fires (1 ms at most,
 * so a device that never signals only slows us down).  Drain first, then
 * re-check the rings: a used entry published before the drain would
 * otherwise be slept through. */
static void wait_calls(struct vhm_guest *g, unsigned first, unsigned last, int wake_fd) {
        struct pollfd pfd[VHM_GUEST_MAX_QUEUES + 1];
        unsigned n = 0;
        uint64_t v;

        for (unsigned q = 2 * first; q < 2 * last; q++) {
                if (read(g->vq[q].call_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                        return; /* never sleep on a broken fd */
                pfd[n].fd = g->vq[q].call_fd;
                pfd[n++].events = POLLIN;
        }
        if (wake_fd >= 0) {
                pfd[n].fd = wake_fd;
                pfd[n++].events = POLLIN;
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (unsigned q = 2 * first; q < 2 * last; q++)
                if (has_used(&g->vq[q]))
                        return;
        (void) poll(pfd, n, 1);
}

/* One round on one queue pair: reclaim, receive, then transmit while fewer
 * than a ring of frames is in flight.  Returns the work done. */
static int run_once(struct vhm_guest *g, unsigned qp, uint64_t goal, unsigned burst, unsigned window) {
        struct vhm_gstate_qp *s = &g->st->qp[qp];
        uint64_t inflight, want;
        int done, rx, tx = 0;

        done = vhm_guest_reclaim_tx(g, qp);
        if (done < 0)
                return done;
        rx = vhm_guest_poll_rx(g, qp, 0);
        if (rx < 0)
                return rx;
        inflight = s->tx_seq - vhm_accounted(s);
        if (s->tx_seq < goal && inflight < window) {
                want = goal - s->tx_seq;
                if (want > window - inflight)
                        want = window - inflight;
                if (want > burst)
                        want = burst;
                tx = vhm_guest_tx(g, qp, (unsigned) want);
                if (tx < 0)
                        return tx;
        }
        return done + rx + tx;
}

static int run_round(struct vhm_guest *g, unsigned first, unsigned last, const uint64_t *goal, unsigned burst,
                     unsigned window, bool *finished) {
        int work = 0;

        *finished = true;
        for (unsigned qp = first; qp < last; qp++) {
                int rc = run_once(g, qp, goal[qp], burst, window);

                if (rc < 0)
                        return rc;
                work += rc;
                if (vhm_accounted(&g->st->qp[qp]) < goal[qp])
                        *finished = false;
        }
        return work;
}

static int run_loop(struct vhm_guest *g, unsigned first, unsigned last, const uint64_t *goal, int timeout_ms,
                    const struct vhm_guest_run_opts *opts) {
        unsigned burst = opts->burst ? opts->burst : DEFAULT_BURST;
        unsigned window = opts->window && opts->window < g->num ? opts->window : g->num;
        int64_t deadline = now_ms() + timeout_ms;

        for (;;) {
                bool finished;
                int work = run_round(g, first, last, goal, burst, window, &finished);

                if (work < 0)
                        return work;
                if (finished)
                        return 0;
                if (opts->step) {
                        int rc = opts->step(opts->opaque);

                        if (rc < 0)
                                return rc;
                }
                if (timeout_ms >= 0 && now_ms() >= deadline)
                        return -ETIMEDOUT;
                if (!work && (opts->flags & VHM_GUEST_RUN_WAIT_CALL))
                        wait_calls(g, first, last, opts->flags & VHM_GUEST_RUN_WAKE_FD ? opts->wake_fd : -1);
        }
}

int vhm_guest_run_until(struct vhm_guest *g, unsigned qp, uint64_t target_frames, int timeout_ms,
                        const struct vhm_guest_run_opts *opts) {
        static const struct vhm_guest_run_opts defaults;
        unsigned first = qp, last = qp + 1;
        uint64_t goal[VHM_GUEST_MAX_QP];
        int rc = 0;

        if (!opts)
                opts = &defaults;
        if (qp == VHM_GUEST_ALL_QPS) {
                first = 0;
                last = g->nqp;
        } else if (qp >= g->nqp) {
                return -EINVAL;
        }
        set_calls_qps(g, first, last, opts->flags & VHM_GUEST_RUN_WAIT_CALL);
        for (unsigned i = first; i < last && rc >= 0; i++) {
                rc = post_rx(g, i);
                goal[i] = g->st->qp[i].tx_seq + target_frames;
        }
        if (rc >= 0)
                rc = run_loop(g, first, last, goal, timeout_ms, opts);
        /* Back to the default (calls wanted) for callers driving by hand. */
        set_calls_qps(g, first, last, true);
        return rc < 0 ? rc : 0;
}
