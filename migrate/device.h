/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A vhost-user device of a VM: one back-end connection and its queues, with
 * the lifecycle of a careful VMM:
 *
 *   connect -> negotiate -> start (features, memory table, rings, enable,
 *   status) -> stop (disable, GET_VRING_BASE, indices kept) -> resume ...
 *
 * and reconnection when the back-end goes away: once it is back (client
 * mode: connect again; server mode: accept again) the device is negotiated
 * and resumed from the last indices without the memory owner doing anything.
 *
 * Calls block for at most the per-request timeout.  The connection's fd is
 * exposed so an event loop can watch it for hang-ups.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "migrate/blockers.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"

#define VHM_DEVICE_MAX_QUEUE_PAIRS 8
#define VHM_DEVICE_MAX_QUEUES      (2 * VHM_DEVICE_MAX_QUEUE_PAIRS)

struct vhm_device;
struct vhu_conn;

enum vhm_device_state {
        VHM_DEVICE_DISCONNECTED, /* no back-end (yet, or it went away) */
        VHM_DEVICE_READY,        /* negotiated, rings not running */
        VHM_DEVICE_RUNNING,      /* rings started and enabled */
        VHM_DEVICE_STOPPED,      /* rings stopped, indices kept */
        VHM_DEVICE_FAILED,       /* a request failed; see vhm_device_error() */
};

/* One virtqueue, as the memory owner lays it out in guest memory. */
struct vhm_queue_spec {
        unsigned size; /* power of two, 1..32768 */
        uint64_t desc_gpa, avail_gpa, used_gpa;
        int kick_fd, call_fd; /* eventfds; duplicated, the caller keeps its own */
};

struct vhm_device_config {
        const char *socket;
        bool server;          /* listen at socket; the back-end connects */
        unsigned timeout_ms;  /* per request; 0 = default */
        uint64_t features;    /* virtio features the guest driver wants (ANDed with the offer) */
        unsigned queue_pairs; /* 1..VHM_DEVICE_MAX_QUEUE_PAIRS */
        uint8_t mac[6];
        uint16_t mtu; /* 0: do not set */
        /*
         * Who may be the back-end, checked with SO_PEERCRED on every
         * connection (client and server mode) before a single request is
         * sent.  Root (uid 0) always may.  With a list (copied): the peer's
         * uid must be in it.  Without one: the uid of the first connection
         * that negotiated, and on every reconnect that same uid.  In client
         * mode the socket file must also be owned by the peer's uid or root.
         */
        const uid_t *allowed_uids;
        unsigned n_allowed_uids;
        /* Server mode: the socket file's mode (0: as the umask makes it) and group (0 or -1: unchanged). */
        struct vhu_listen_options listen;
        /*
         * The destination of a migration: connect and negotiate, but the rings
         * start only from a source's state (vhm_device_restore), never through
         * vhm_device_start() or a reconnect before that.
         */
        bool incoming;
        /*
         * What the back-end serves (default net).  fs and other keep state
         * outside the rings: a migration blocker unless the back-end
         * negotiates DEVICE_STATE (vhm_device_blockers).
         */
        enum vhm_device_type type;
};

/* Counters and observable state, for the service layer. */
struct vhm_device_stats {
        uint64_t connects; /* successful negotiations, the first included */
        uint64_t disconnects;
        uint64_t starts, stops;
        uint64_t reconnect_attempts;
        uint64_t refused_peers;    /* connections closed unserved: the peer was not the back-end's uid */
        uint64_t channel_failures; /* back-end channels closed while the device ran (flood, bad message) */
};

int vhm_device_new(struct vhm_vm *vm, const struct vhm_device_config *cfg, struct vhm_device **out);
/* Stops the rings if running (best effort), closes the connection, frees. */
void vhm_device_free(struct vhm_device *dev);

int vhm_device_set_queue(struct vhm_device *dev, unsigned index, const struct vhm_queue_spec *spec);

/*
 * Client mode: connect and negotiate.  Server mode: wait (timeout) for the
 * back-end.  A peer that is not the back-end's uid (see allowed_uids) is
 * refused with -EPERM, counted in refused_peers, and the device stays
 * DISCONNECTED for the real back-end to come (back).
 */
int vhm_device_connect(struct vhm_device *dev);
/* Server mode: the listening socket, for an event loop to watch; -1 in client mode. */
int vhm_device_listen_fd(const struct vhm_device *dev);

/* Every queue of every configured pair must have been set. */
int vhm_device_start(struct vhm_device *dev);
/* Disables the rings and collects their indices with GET_VRING_BASE. */
int vhm_device_stop(struct vhm_device *dev);
/* Starts again from the kept indices. */
int vhm_device_resume(struct vhm_device *dev);

/*
 * Non-blocking check of the connection: when the back-end closed it, the
 * device becomes DISCONNECTED and 0 is returned; 1 when still connected.
 * Serves the back-end channel's waiting messages on the way, at most
 * VHU_BACKEND_CHANNEL_FLOOD_MAX + 1 of them; a channel that fails (a flood, a
 * bad message) is closed and counted in channel_failures, the device goes on.
 */
int vhm_device_poll_connection(struct vhm_device *dev);

/*
 * One reconnection attempt: connect (or accept, within timeout_ms), negotiate
 * and, when the device was running, resume from the indices the guest's used
 * rings show (a back-end that died could not report its own).  -EAGAIN when
 * the back-end is not there yet, -EPERM when the peer was refused (someone
 * else took the socket: see vhm_device_error()); the caller retries after
 * vhm_device_reconnect_delay_ms(), which backs off exponentially.
 */
int vhm_device_reconnect(struct vhm_device *dev, unsigned timeout_ms);
unsigned vhm_device_reconnect_delay_ms(const struct vhm_device *dev);
/* The uid the back-end runs as (that of the first connection), or (uid_t) -1 before it connected. */
uid_t vhm_device_backend_uid(const struct vhm_device *dev);

/*
 * Dirty logging.  vhm_device_set_log() hands the device the VM's log (the fd
 * is duplicated) and sends SET_LOG_BASE at once when connected; a device that
 * connects or reconnects later gets it before its rings start.  SET_LOG_BASE
 * goes exactly once per connection per log (a negative fd forgets the log
 * once logging is off).  vhm_device_set_logging() then
 * switches LOG_ALL and the rings' LOG flag on or off for a running device
 * (and remembers it for the next start); each step is confirmed by REPLY_ACK,
 * or by a GET_FEATURES barrier when the back-end has no REPLY_ACK.
 */
int vhm_device_set_log(struct vhm_device *dev, int log_fd, uint64_t log_size);
int vhm_device_set_logging(struct vhm_device *dev, bool on);
/* The back-end, connected now, acknowledged SET_LOG_BASE for the log log_fd is (same file). */
bool vhm_device_log_acknowledged(const struct vhm_device *dev, int log_fd);
bool vhm_device_logging(const struct vhm_device *dev);
/* The used-ring extents the log must cover: out[i] = {gpa, bytes}; returns the count. */
unsigned vhm_device_used_ring_extents(const struct vhm_device *dev, uint64_t gpa[], uint64_t bytes[], unsigned max);
/*
 * Why this device's VM cannot migrate, from what the back-end offered (empty
 * while it never connected: nothing is known yet).
 */
void vhm_device_blockers(const struct vhm_device *dev, struct vhm_blockers *out);

/*
 * Sends the memory table again when the VM's layout changed since it was last
 * sent (a region added or removed), to a device whose rings were started.
 * While logging, grow the log first (vhm_logging_memory_changed does both in
 * that order), so the back-end never sees memory its log does not cover.
 */
int vhm_device_sync_memory(struct vhm_device *dev);

/* NET_SET_MTU now (when connected and NET_MTU was negotiated) and on every later start. */
int vhm_device_set_mtu(struct vhm_device *dev, uint16_t mtu);
uint16_t vhm_device_mtu(const struct vhm_device *dev);

/* Drops the connection on purpose (the rings resume on the next reconnect if they ran). */
void vhm_device_disconnect(struct vhm_device *dev);

/*
 * SEND_RARP with the configured MAC, when RARP was negotiated and the guest
 * does not announce itself; needs_rarp: that, and the device is a net device.
 */
int vhm_device_announce(struct vhm_device *dev);
bool vhm_device_needs_rarp(const struct vhm_device *dev);

enum vhm_device_state vhm_device_state(const struct vhm_device *dev);
const char *vhm_device_state_name(enum vhm_device_state s);
const char *vhm_device_error(const struct vhm_device *dev);
/* The vhost-user request behind the last error (VHU_REQ_NONE when it was not a request). */
uint32_t vhm_device_error_request(const struct vhm_device *dev);
const char *vhm_device_socket(const struct vhm_device *dev);
uint64_t vhm_device_features(const struct vhm_device *dev); /* offered */
uint64_t vhm_device_acked_features(const struct vhm_device *dev);
uint64_t vhm_device_protocol_features(const struct vhm_device *dev); /* negotiated */
uint64_t vhm_device_protocol_features_offered(const struct vhm_device *dev);
unsigned vhm_device_queue_pairs(const struct vhm_device *dev);
/* Last avail index known for a queue (from GET_VRING_BASE, or what it was started from). */
unsigned vhm_device_ring_index(const struct vhm_device *dev, unsigned queue);
const struct vhm_device_stats *vhm_device_stats(const struct vhm_device *dev);
/* vhost-user requests sent to the back-end over every connection, and of those the ones that failed. */
void vhm_device_request_counts(const struct vhm_device *dev, uint64_t *requests, uint64_t *failures);
/* The live connection, or NULL while disconnected (for the dirty-log layer). */
struct vhu_conn *vhm_device_conn(const struct vhm_device *dev);

/*
 * Migration: the state of a device that the rings and guest memory do not
 * carry.  The source takes it from a stopped device (vhm_device_handoff_get);
 * the destination, an incoming device, starts its rings from it
 * (vhm_device_restore).
 */
struct vhm_ring_handoff {
        unsigned size;
        uint64_t desc_gpa, avail_gpa, used_gpa;
        bool enabled;
        uint32_t last_avail; /* GET_VRING_BASE's answer: where the back-end resumes */
};

struct vhm_device_handoff {
        uint64_t acked_features;    /* virtio features the guest driver acked (LOG_ALL never) */
        uint64_t protocol_features; /* negotiated with the source's back-end (informative) */
        unsigned queue_pairs;
        uint8_t mac[6];
        uint16_t mtu;
        unsigned nrings; /* 2 * queue_pairs */
        struct vhm_ring_handoff rings[VHM_DEVICE_MAX_QUEUES];
};

/* From a device stopped with every ring's index collected (-EBUSY otherwise). */
int vhm_device_handoff_get(struct vhm_device *dev, struct vhm_device_handoff *out);

/*
 * Can this (connected, incoming) device take `h`: every acked feature offered
 * by its back-end, the same number of queue pairs, rings that are valid and
 * inside guest memory.  -ENOTSUP or -EINVAL with the reason in
 * vhm_device_error(); the device is left as it was.
 */
int vhm_device_handoff_check(struct vhm_device *dev, const struct vhm_device_handoff *h);

/*
 * An incoming device, READY: starts its rings from `h` in the order DPDK
 * needs (SET_FEATURES, memory table, per ring NUM, BASE = last_avail, ADDR,
 * KICK, CALL, then ENABLE, STATUS).  The guest memory must be final: the
 * back-end reads the used rings at KICK.  The queues keep their kick and call
 * fds and take the rings' addresses and sizes from `h`; the MAC and MTU
 * become the source's.  On failure nothing is left half started: the
 * connection is dropped and the device waits to be restored again.
 */
int vhm_device_restore(struct vhm_device *dev, const struct vhm_device_handoff *h);

/*
 * Takes back a restore whose migration failed later (before it committed):
 * the connection is dropped, one reconnect is tried (within timeout_ms), and
 * the device is incoming again, rings not started.
 */
void vhm_device_unrestore(struct vhm_device *dev, unsigned timeout_ms);

/* An incoming device not restored yet. */
bool vhm_device_awaiting_restore(const struct vhm_device *dev);

/*
 * The source after a migration that did not commit: a device stopped for it
 * runs again from the indices it stopped at; one whose back-end went away
 * meanwhile resumes from the used rings on its next reconnect.
 */
int vhm_device_resume_after_migration(struct vhm_device *dev);

/*
 * The source after a committed migration: the connection is closed (the
 * back-end sees the device go), a listening socket closed and removed, and
 * the device never connects again (vhm_device_reconnect: -ESHUTDOWN).
 */
void vhm_device_release(struct vhm_device *dev);
bool vhm_device_released(const struct vhm_device *dev);

/*
 * Restart without disturbing the back-ends.  What a connection negotiated and
 * where its rings are, beyond what the device's configuration and queues
 * (vhm_device_set_queue) say: enough for a new process to adopt the same
 * connection (vhm_device_adopt) without sending the back-end one request.
 */
struct vhm_device_saved {
        enum vhm_device_state state; /* READY, RUNNING or STOPPED */
        uint64_t features_offered, acked_features;
        uint64_t protocol_features, protocol_features_offered;
        unsigned queue_pairs;
        uid_t backend_uid;
        bool logging;          /* LOG_ALL and the rings' LOG flag are on */
        bool log_acknowledged; /* the back-end answered SET_LOG_BASE for the VM's current log */
        bool stop_complete;    /* STOPPED: every index came from GET_VRING_BASE */
        uint16_t mtu;
        unsigned last_avail[VHM_DEVICE_MAX_QUEUES];
};

/*
 * The saved form of a connected device that is READY, RUNNING or STOPPED
 * (-EBUSY with the reason otherwise: a device in the middle of a failure or
 * without a back-end has no connection worth keeping).
 */
int vhm_device_save(const struct vhm_device *dev, struct vhm_device_saved *out);

/*
 * Hands the live connection to the caller without a word to the back-end
 * (for a process that takes over, or a test playing one): the device becomes
 * DISCONNECTED and forgets the rings were running, so freeing it sends
 * nothing.  NULL when not connected.
 */
struct vhu_conn *vhm_device_take_conn(struct vhm_device *dev);

/*
 * A new device (same configuration, every queue set with the same layout and
 * eventfds) adopts `conn`, a connection its previous owner negotiated, in the
 * state `saved` describes: no request is sent; the back-end goes on as if
 * nothing happened.  `conn` must agree with `saved` (features, protocol
 * features, acked features), its peer must be the saved back-end's uid, and
 * logging needs the log it was acknowledged for (log_fd, duplicated; -1
 * without).  The listening socket of a server-mode device is adopted too
 * (listen_fd, taken; -1 in client mode or to listen again later).
 *
 * Takes conn and listen_fd in every case: on refusal (-EINVAL, -EPERM,
 * -EBUSY, with the reason in vhm_device_error()) both are closed, so the
 * back-end sees the connection end rather than a half-used one, and the
 * device stays DISCONNECTED, untouched otherwise.
 */
struct vhm_device_adoption {
        struct vhu_conn *conn;
        int listen_fd;
        int log_fd;
        uint64_t log_size;
};
int vhm_device_adopt(struct vhm_device *dev, const struct vhm_device_adoption *a, const struct vhm_device_saved *saved);
/*
 * A disconnected server-mode device takes its listening socket back (a
 * restart's): a back-end that connected while no daemon ran waits in its
 * backlog and is accepted, not reset.  The fd is the device's, or closed when
 * refused (-EINVAL: a client-mode device, or not bound at the device's path;
 * -ENOENT: the socket file is gone; -EBUSY: the device listens already).
 */
int vhm_device_adopt_listener(struct vhm_device *dev, int fd);

/*
 * What a restart keeps of a device besides its record: the configuration it
 * was made with (socket, allowed_uids: the device's own copies) and queue
 * `index` as vhm_device_set_queue took it, its kick and call fds the
 * device's own (-1 when the queue was not set; -EINVAL past the last queue).
 */
const struct vhm_device_config *vhm_device_get_config(const struct vhm_device *dev);
int vhm_device_get_queue(const struct vhm_device *dev, unsigned index, struct vhm_queue_spec *out);
/*
 * A process handing the device over to its successor (a restart): frees it
 * without a request, and leaves the listening socket's file in place (the
 * successor adopts the listener kept in the fd store).
 */
void vhm_device_free_for_handover(struct vhm_device *dev);

enum vhm_device_type vhm_device_type(const struct vhm_device *dev);
struct vhm_vm *vhm_device_vm(const struct vhm_device *dev);

/*
 * The back-end's own state (DEVICE_STATE protocol feature, negotiated now):
 * what the rings do not carry, as an opaque blob of at most VHM_DEVICE_STATE_MAX
 * bytes.
 */
#define VHM_DEVICE_STATE_MAX (16u << 20)
bool vhm_device_has_state_transfer(const struct vhm_device *dev);

/*
 * Source, a device stopped with every ring's index collected:
 * SET_DEVICE_STATE_FD (save, stopped) with a pipe's write end (or the fd the
 * back-end returns), the blob read to EOF within the request timeout, then
 * CHECK_DEVICE_STATE.  *blob is malloc'd (NULL when empty).  The device stays
 * stopped and may still resume.
 */
int vhm_device_save_state(struct vhm_device *dev, uint8_t **blob, size_t *len);

/*
 * Destination, an incoming device not restored yet: SET_DEVICE_STATE_FD
 * (load, stopped), the blob written and the pipe closed, CHECK_DEVICE_STATE.
 * Before vhm_device_restore(), as the specification wants the state in
 * before the rings start.
 */
int vhm_device_load_state(struct vhm_device *dev, const void *blob, size_t len);
