/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Synthetic guest: the test frame format and the checks applied to every
 * frame that comes back.
 *
 * Frame: Ethernet header (dst, src, ethertype 0x88b5), then a little-endian
 * payload: u32 magic, u16 queue pair, u16 frame length, u64 sequence number,
 * u32 FNV-1a checksum, then fill bytes derived from the sequence number (so
 * that two frames never carry the same bytes).  The checksum covers the whole
 * payload except its own field, and not the MACs, which the echoing backend
 * swaps.
 */
#include <endian.h>
#include <string.h>

#include "daemon/guest/guest-internal.h"

#define FNV_OFFSET 0x811c9dc5u
#define FNV_PRIME  0x01000193u

/* RARP (RFC 903) body: htype(2) ptype(2) hlen(1) plen(1) op(2) sha(6) ... */
#define RARP_SHA_OFF 8u
#define RARP_MIN_LEN (RARP_SHA_OFF + 6u)

uint32_t vhm_fnv1a(uint32_t h, const uint8_t *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                h ^= p[i];
                h *= FNV_PRIME;
        }
        return h;
}

static uint32_t payload_csum(const uint8_t *pl, size_t pl_len) {
        uint32_t h = vhm_fnv1a(FNV_OFFSET, pl, VHM_PL_CSUM);

        return vhm_fnv1a(h, pl + VHM_PL_FILL, pl_len - VHM_PL_FILL);
}

static void put16(uint8_t *p, uint16_t v) {
        v = htole16(v);
        memcpy(p, &v, sizeof(v));
}

static void put32(uint8_t *p, uint32_t v) {
        v = htole32(v);
        memcpy(p, &v, sizeof(v));
}

static void put64(uint8_t *p, uint64_t v) {
        v = htole64(v);
        memcpy(p, &v, sizeof(v));
}

static uint16_t get16(const uint8_t *p) {
        uint16_t v;

        memcpy(&v, p, sizeof(v));
        return le16toh(v);
}

static uint32_t get32(const uint8_t *p) {
        uint32_t v;

        memcpy(&v, p, sizeof(v));
        return le32toh(v);
}

static uint64_t get64(const uint8_t *p) {
        uint64_t v;

        memcpy(&v, p, sizeof(v));
        return le64toh(v);
}

void vhm_frame_build(uint8_t *frame, unsigned len, const uint8_t dst[6], const uint8_t src[6], unsigned qp,
                     uint64_t seq) {
        uint8_t *pl = frame + VHM_ETH_HLEN;
        size_t pl_len = len - VHM_ETH_HLEN;
        uint8_t fill = (uint8_t) (seq * 131u + qp);

        memcpy(frame, dst, 6);
        memcpy(frame + 6, src, 6);
        frame[12] = VHM_GUEST_ETHERTYPE >> 8;
        frame[13] = VHM_GUEST_ETHERTYPE & 0xff;
        put32(pl + VHM_PL_MAGIC, VHM_FRAME_MAGIC);
        put16(pl + VHM_PL_QP, (uint16_t) qp);
        put16(pl + VHM_PL_LEN, (uint16_t) len);
        put64(pl + VHM_PL_SEQ, seq);
        for (size_t i = VHM_PL_FILL; i < pl_len; i++)
                pl[i] = (uint8_t) (fill + i);
        put32(pl + VHM_PL_CSUM, payload_csum(pl, pl_len));
}

static uint16_t ethertype(const uint8_t *frame) {
        return (uint16_t) (frame[12] << 8 | frame[13]);
}

/* The backend's announcement after switchover carries the guest's MAC as
 * sender hardware address; after a MAC swap it is no longer the Ethernet
 * source, so both places are accepted. */
static bool is_our_rarp(const struct vhm_guest *g, const uint8_t *frame, uint32_t len) {
        const uint8_t *body = frame + VHM_ETH_HLEN;

        if (memcmp(frame + 6, g->mac, 6) == 0)
                return true;
        return len >= VHM_ETH_HLEN + RARP_MIN_LEN && memcmp(body + RARP_SHA_OFF, g->mac, 6) == 0;
}

/* Everything but the sequence number: format, integrity, addressing. */
static bool data_frame_intact(const struct vhm_guest *g, unsigned qp, const uint8_t *frame, uint32_t len) {
        const uint8_t *pl = frame + VHM_ETH_HLEN;

        if (len < VHM_ETH_HLEN + VHM_PL_FILL)
                return false;
        if (get32(pl + VHM_PL_MAGIC) != VHM_FRAME_MAGIC || get16(pl + VHM_PL_LEN) != len)
                return false;
        if (get32(pl + VHM_PL_CSUM) != payload_csum(pl, len - VHM_ETH_HLEN))
                return false;
        /* An echo has its MACs swapped: addressed to us, from our peer. */
        if (memcmp(frame, g->mac, 6) != 0 || memcmp(frame + 6, g->dst_mac, 6) != 0)
                return false;
        return get16(pl + VHM_PL_QP) == qp;
}

static void count_corrupted(struct vhm_gstate_qp *s) {
        s->corrupted++;
        s->corrupt_credit++;
}

/* The counters are one struct in the state area: marked as one. */
void vhm_count_corrupted(struct vhm_guest *g, unsigned qp) {
        count_corrupted(&g->st->qp[qp]);
        vhm_dirty_ptr(g, &g->st->qp[qp], sizeof(g->st->qp[qp]));
}

/* Sequence numbers skipped by an intact frame.  A corrupted frame came back
 * damaged, its number unreadable, so it also leaves a gap; each such frame
 * explains one skipped number, and only the rest were lost on the way. */
static void count_gap(struct vhm_gstate_qp *s, uint64_t gap) {
        uint64_t explained = gap < s->corrupt_credit ? gap : s->corrupt_credit;

        s->corrupt_credit -= explained;
        s->lost += gap - explained;
}

/* In order is the rule: a jump forward means the skipped frames were lost
 * (or came back corrupted), a step back means this one was seen before. */
static void account_seq(struct vhm_gstate_qp *s, uint64_t seq) {
        if (seq >= s->tx_seq) {
                count_corrupted(s); /* never sent: not ours */
        } else if (seq >= s->rx_expected) {
                count_gap(s, seq - s->rx_expected);
                s->received++;
                s->rx_expected = seq + 1;
        } else {
                s->duplicated++;
        }
}

static void rx_classify(const struct vhm_guest *g, struct vhm_gstate_qp *s, unsigned qp, const uint8_t *frame,
                        uint32_t len) {
        uint16_t type;

        if (len < VHM_ETH_HLEN) {
                count_corrupted(s);
                return;
        }
        type = ethertype(frame);
        if (type == VHM_GUEST_ETHERTYPE_RARP) {
                if (is_our_rarp(g, frame, len))
                        s->rarp_seen++;
                else
                        s->other++;
                return;
        }
        if (type != VHM_GUEST_ETHERTYPE) {
                s->other++;
                return;
        }
        if (!data_frame_intact(g, qp, frame, len)) {
                count_corrupted(s);
                return;
        }
        account_seq(s, get64(frame + VHM_ETH_HLEN + VHM_PL_SEQ));
}

/* Every frame changes some counter of its queue pair: one mark for them all. */
void vhm_rx_account(struct vhm_guest *g, unsigned qp, const uint8_t *frame, uint32_t len) {
        struct vhm_gstate_qp *s = &g->st->qp[qp];

        rx_classify(g, s, qp, frame, len);
        vhm_dirty_ptr(g, s, sizeof(*s));
}

/* Sequence numbers that have come back one way or another: intact, written
 * off as lost, or (trailing) corrupted frames not yet matched to a gap. */
uint64_t vhm_accounted(const struct vhm_gstate_qp *s) {
        if (s->rx_expected >= s->tx_seq || s->corrupt_credit >= s->tx_seq - s->rx_expected)
                return s->tx_seq;
        return s->rx_expected + s->corrupt_credit;
}
