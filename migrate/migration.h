/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The migration engine: both ends of a stop-and-copy migration of a VM's
 * memory and vhost-user devices over a migration stream (migrate/stream.h).
 *
 * Source (vhm_migrate_to), with the VMM's vCPUs already paused:
 *   setup       HELLO (the memory layout), AUTH (the destination's token),
 *               every ring stopped with GET_VRING_BASE;
 *   active      every page (zero pages as flags);
 *   switchover  a DEVICE record per device, each followed by the back-end's
 *               own state (BACKEND_STATE) where it negotiated DEVICE_STATE,
 *               END (counts and the checksum of the image sent), then the
 *               destination's answer.
 * A device whose type keeps state outside the rings (fs, other) without
 * DEVICE_STATE is refused before anything stops (vhm_device_state_blocker).
 * COMMITTED: the devices are released (their back-ends see them go) and the
 * state is completed.  A failure or a cancel before END, or an ABORTED
 * answer: every device stopped for the migration runs again from the indices
 * it stopped at (failed, cancelled).  END sent and no answer: the devices
 * stay stopped and the state is postmigrate-unknown; the engine never
 * resumes them, since the destination may be running the guest.
 *
 * Destination (vhm_migrate_incoming), its devices added incoming (connected,
 * negotiated, rings not started): HELLO's layout must be the VM's, AUTH the
 * token and in time; pages go into guest memory through vhm_vm_write; each
 * DEVICE is checked against what its back-end offers (and its type's need
 * for DEVICE_STATE); a BACKEND_STATE is loaded into the device's back-end as
 * soon as it is complete, before any ring starts; at END the checksum of
 * guest memory is verified *before* any ring starts (a started back-end
 * writes into guest memory), then every device is restored, COMMITTED is
 * answered, and SEND_RARP goes to every device that needs it.  Any failure
 * answers ABORTED with the reason (when the channel still works) and leaves
 * no device started.
 *
 * Live (options' live): logging is switched on (and off again at the end
 * when the engine switched it on), HELLO and AUTH go out, then pre-copy
 * rounds run while the guest and its back-ends keep writing: round 0 sends
 * every page, each later round harvests the dirty sources (the vhost log
 * and the VMM's bitmaps) and sends what became dirty, throttled to
 * max_bandwidth.  Once the dirty rest fits max_downtime_ms at the bandwidth
 * the last round measured, the source enters pre-switchover (and waits for
 * the VMM's pause on continue_fd where the VMM has a dirty bitmap), then
 * stops the rings, harvests a last time, sends the last pages, and END with
 * the checksum of the whole memory: a page written but never marked dirty
 * makes the destination's checksum differ and the migration fail.  After
 * max_rounds without converging the migration fails with the dirty rate and
 * the bandwidth in the reason (or switches over with force_switchover).  A
 * failure or a cancel in any phase before END leaves the rings running as
 * they were and logging as it was before the call; postmigrate-unknown
 * leaves the rings stopped and logging off where the engine switched it on.
 *
 * Each call blocks until the migration ends, each wait bounded by the
 * options' timeout; run it on the VM's worker thread.  Errors are negative
 * errnos with the reason in the stats' error text.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "migrate/device.h"
#include "migrate/stream.h"
#include "migrate/vm.h"

struct vhm_logging;

enum vhm_migration_state {
        VHM_MIGRATION_NONE,
        VHM_MIGRATION_SETUP,
        VHM_MIGRATION_ACTIVE,
        VHM_MIGRATION_SWITCHOVER,
        /* Live: the engine waits for the VMM to pause its vCPUs (continue_fd). */
        VHM_MIGRATION_PRE_SWITCHOVER,
        VHM_MIGRATION_POSTMIGRATE_UNKNOWN,
        VHM_MIGRATION_COMPLETED,
        VHM_MIGRATION_FAILED,
        VHM_MIGRATION_CANCELLED,
};

enum vhm_migration_role {
        VHM_MIGRATION_ROLE_NONE,
        VHM_MIGRATION_ROLE_SOURCE,
        VHM_MIGRATION_ROLE_DESTINATION,
};

/*
 * "none", "setup", "active", "switchover", "pre-switchover", "postmigrate-unknown", "completed", "failed",
 * "cancelled".
 */
const char *vhm_migration_state_name(enum vhm_migration_state s);
/* "none", "source", "destination". */
const char *vhm_migration_role_name(enum vhm_migration_role r);

struct vhm_migration_stats {
        uint64_t pages_total;       /* pages of guest memory */
        uint64_t pages_transferred; /* sent (source) or received (destination), zero pages included */
        uint64_t zero_pages;        /* of those, sent as a flag */
        uint64_t bytes_transferred; /* stream bytes sent (source) or received (destination) */
        /*
         * From the source's pause (stop-and-copy: the call; live: the VMM's
         * continue, or pre-switchover without a VMM bitmap) to the guest
         * running on the destination: the source counts to COMMITTED, the
         * destination adds END's to-END part and its own, to running plus RARP.
         */
        uint64_t downtime_ms;
        uint64_t total_ms;  /* the whole call */
        uint64_t rarp_sent; /* destination: devices announced with SEND_RARP */
        uint64_t checksum;  /* of the memory image (END's) */
        /* Live (pre-copy) only; 0 otherwise. */
        uint64_t round;                /* the pre-copy round in progress or last done (0: every page) */
        uint64_t pages_remaining;      /* dirty pages still to send */
        uint64_t dirty_rate;           /* pages/s the guest and back-ends dirtied during the last round */
        uint64_t bandwidth;            /* bytes/s the stream moved during the last round that measured it */
        uint64_t expected_downtime_ms; /* pages_remaining at that bandwidth */
        uint64_t setup_ms;             /* the call's start to the first page */
        enum vhm_migration_state state;
        enum vhm_migration_role role;
        char error[512];
};

struct vhm_migrate_options {
        /* Each send and receive (0: 10 s); also how long the source waits for the answer after END. */
        unsigned timeout_ms;
        /*
         * An eventfd: once readable, the migration is cancelled in any phase
         * before END (state cancelled, -ECANCELED).  0 or negative: none
         * (stdin is never a cancel fd, so a zeroed struct means none).
         */
        int cancel_fd;
        /*
         * Called on the engine's thread at every state change and after every
         * batch of pages, with the stats as they are (a copy for the caller to
         * publish; the engine does not lock).  NULL: none.
         */
        void (*progress)(const struct vhm_migration_stats *st, void *opaque);
        void *opaque;

        /*
         * Source only.  live: pre-copy while the guest runs (needs the VM's
         * logging); false: stop-and-copy, the fields below unused.
         */
        bool live;
        unsigned max_downtime_ms; /* switch over once the rest fits this (0: 300) */
        uint64_t max_bandwidth;   /* bytes/s during the rounds (0: unlimited); the switchover is not limited */
        unsigned max_rounds;      /* pre-copy rounds, round 0 included (0: 30) */
        bool force_switchover;    /* after max_rounds switch over anyway instead of failing */
        /*
         * An eventfd the daemon writes when the VMM has paused its vCPUs
         * (MigrateContinue).  Waited for in pre-switchover when the VM has a
         * VMM dirty bitmap (vhm_logging_add_bitmap), at most pause_timeout_ms
         * (0: 10 s); the wait timing out fails the migration and the source
         * runs on.  Required then; unused otherwise.
         */
        int continue_fd;
        unsigned pause_timeout_ms;
};

/*
 * Source.  fd is a connected stream to the destination (taken, closed when
 * the call returns); token the destination's.  The devices must be running
 * (or stopped with their indices), the VMM's vCPUs paused.  `logging` may be
 * NULL (stop-and-copy needs no dirty log).  o may be NULL for the defaults.
 * Returns 0 when the destination committed; otherwise a negative errno and
 * st->state says what became of the source.
 */
int vhm_migrate_to(struct vhm_vm *vm, struct vhm_logging *logging, struct vhm_device **devs, unsigned n, int fd,
                   const char *token, const struct vhm_migrate_options *o, struct vhm_migration_stats *st);

/*
 * Destination.  fd is the connection accepted from the source (taken);
 * token is the one handed out, valid until token_deadline_usec
 * (vhu_now_usec() clock; 0: no expiry), which also bounds the wait for HELLO
 * and AUTH.  devs[i] is the device the source's device i moves to.
 */
int vhm_migrate_incoming(struct vhm_vm *vm, struct vhm_device **devs, unsigned n, int fd, const char *token,
                         uint64_t token_deadline_usec, struct vhm_migration_stats *st);
/* The same with options (cancel fd, progress, timeout); o may be NULL. */
int vhm_migrate_incoming_opts(struct vhm_vm *vm, struct vhm_device **devs, unsigned n, int fd, const char *token,
                              uint64_t token_deadline_usec, const struct vhm_migrate_options *o,
                              struct vhm_migration_stats *st);

/*
 * VMM-carried device state, for a VMM that migrates guest memory itself: the
 * same DEVICE and BACKEND_STATE records as the daemon-to-daemon stream
 * (stream mode VHM_STREAM_DEVICE_STATE), closed by an END with no pages, into
 * and out of an fd the VMM gives (a pipe, socket, file or memfd; taken,
 * closed when the call returns; a file is written and read from its offset).
 *
 * Save, the VMM's vCPUs paused: every running device is stopped
 * (GET_VRING_BASE), then DEVICE (and BACKEND_STATE where the back-end
 * negotiated DEVICE_STATE) per device, then END.  On success the devices stay
 * stopped with their indices (the VMM may still resume them with
 * vhm_device_resume_after_migration, or release them once the destination
 * runs); on failure those it stopped run again.  State completed or failed,
 * role source.
 *
 * Load, devices added incoming and guest memory final: every device's DEVICE
 * record is checked against its back-end's offer, its BACKEND_STATE loaded,
 * then every device restored and SEND_RARP sent where needed (rarp_sent).
 * The records end with END or at the end of the fd.  On failure no device is
 * left started.  Role destination.
 */
int vhm_migration_save_device_state(struct vhm_device **devs, unsigned n, int fd, const struct vhm_migrate_options *o,
                                    struct vhm_migration_stats *st);
int vhm_migration_load_device_state(struct vhm_device **devs, unsigned n, int fd, const struct vhm_migrate_options *o,
                                    struct vhm_migration_stats *st);

/* A device's handoff as a DEVICE record (index: its place in the VM) and back. */
void vhm_migration_device_record(const struct vhm_device_handoff *h, uint32_t index, struct vhm_rec_device *out);
void vhm_migration_device_handoff(const struct vhm_rec_device *rec, struct vhm_device_handoff *out);
