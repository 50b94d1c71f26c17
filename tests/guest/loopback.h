/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test-only in-process "backend" for the synthetic guest: it plays what DPDK
 * testpmd does in macswap/loop mode, on the same guest memory.  It takes each
 * frame from a TX ring, copies it with MACs swapped into a buffer of the same
 * queue pair's RX ring and returns both descriptors through the used rings.
 * Faults can be injected per frame.  It knows the guest only through the
 * public API (memory base, queue layouts), as a real backend would.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "daemon/guest/guest.h"

enum lb_fault {
        LB_FAULT_DROP = 1,   /* consume the TX frame, deliver nothing */
        LB_FAULT_CORRUPT,    /* flip a payload byte in the echo */
        LB_FAULT_DUP,        /* deliver the echo twice */
        LB_FAULT_RARP,       /* deliver a RARP announcement before it */
        LB_FAULT_RARP_OTHER, /* a RARP for some other MAC before it */
        LB_FAULT_BAD_ID,     /* also write an RX used entry with a bogus id */
};

struct lb_config {
        bool no_notify;        /* set VRING_USED_F_NO_NOTIFY (polling backend) */
        bool event_idx;        /* use avail_event/used_event (EVENT_IDX acked) */
        bool wait_kick;        /* thread sleeps on kick eventfds when idle */
        unsigned hdr_len;      /* virtio-net header bytes; 0 -> 12 */
        unsigned max_per_step; /* TX frames per step and queue pair; 0 = all */
};

struct lb_dev;

int lb_create(struct vhm_guest *g, const struct lb_config *cfg, struct lb_dev **out);
void lb_free(struct lb_dev *d);

/* GET_VRING_BASE / SET_VRING_BASE equivalents, for migrating the device. */
uint16_t lb_get_base(const struct lb_dev *d, unsigned queue);
void lb_set_base(struct lb_dev *d, unsigned queue, uint16_t base);

/* Apply fault to the TX frame of queue pair qp carrying sequence seq. */
int lb_inject(struct lb_dev *d, unsigned qp, enum lb_fault fault, uint64_t seq);

/* Process what is available on every queue pair; returns frames handled.
 * Signature fits vhm_guest_run_opts.step (a non-negative return). */
int lb_step(void *dev);

/* Run lb_step in a thread of its own until lb_stop. */
int lb_start(struct lb_dev *d);
void lb_stop(struct lb_dev *d);

/* Pages this device wrote (buffers, used entries, used idx) as a vhost-log
 * bitmap of npages pages; flags/avail_event writes are not included. */
void lb_written_pages(const struct lb_dev *d, uint8_t *bitmap, size_t npages);
void lb_reset_written(struct lb_dev *d);

/* First error the device thread hit (0 if none). */
int lb_error(const struct lb_dev *d);

/* Calls made on RX and TX call eventfds so far. */
uint64_t lb_calls(const struct lb_dev *d);
