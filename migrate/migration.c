/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migrate/logging.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "migrate/transport.h"
#include "proto/vhost-user-transport.h"

#define DEFAULT_TIMEOUT_MS 10000u
/* Live defaults, as QEMU's. */
#define DEFAULT_MAX_DOWNTIME_MS  300u
#define DEFAULT_MAX_ROUNDS       30u
#define DEFAULT_PAUSE_TIMEOUT_MS 10000u
/* A round that moved less than this says little about the bandwidth: the last estimate stands. */
#define MIN_MEASURED_BYTES (1u << 20)
/* How long a failing side gives the other's last word (ABORTED, its reason). */
#define LAST_WORD_MS 1000u
#define PAGE         VHM_REC_PAGE_SIZE
#define MIB          (UINT64_C(1) << 20)
#define BATCH        VHM_REC_MAX_PAGES_PER_BATCH

const char *vhm_migration_state_name(enum vhm_migration_state s) {
        switch (s) {
        case VHM_MIGRATION_NONE:
                return "none";
        case VHM_MIGRATION_SETUP:
                return "setup";
        case VHM_MIGRATION_ACTIVE:
                return "active";
        case VHM_MIGRATION_SWITCHOVER:
                return "switchover";
        case VHM_MIGRATION_PRE_SWITCHOVER:
                return "pre-switchover";
        case VHM_MIGRATION_POSTMIGRATE_UNKNOWN:
                return "postmigrate-unknown";
        case VHM_MIGRATION_COMPLETED:
                return "completed";
        case VHM_MIGRATION_FAILED:
                return "failed";
        case VHM_MIGRATION_CANCELLED:
                return "cancelled";
        }
        return "unknown";
}

const char *vhm_migration_role_name(enum vhm_migration_role r) {
        switch (r) {
        case VHM_MIGRATION_ROLE_NONE:
                return "none";
        case VHM_MIGRATION_ROLE_SOURCE:
                return "source";
        case VHM_MIGRATION_ROLE_DESTINATION:
                return "destination";
        }
        return "unknown";
}

/* ---- DEVICE records ------------------------------------------------------------ */

void vhm_migration_device_record(const struct vhm_device_handoff *h, uint32_t index, struct vhm_rec_device *out) {
        memset(out, 0, sizeof(*out));
        out->index = index;
        out->features = h->acked_features;
        out->protocol_features = h->protocol_features;
        out->queue_pairs = h->queue_pairs;
        memcpy(out->mac, h->mac, sizeof(out->mac));
        out->mtu = h->mtu;
        out->nrings = h->nrings;
        for (unsigned q = 0; q < h->nrings && q < VHM_REC_MAX_RINGS; q++)
                out->rings[q] = (struct vhm_rec_ring){
                        .size = h->rings[q].size,
                        .desc = h->rings[q].desc_gpa,
                        .avail = h->rings[q].avail_gpa,
                        .used = h->rings[q].used_gpa,
                        .enabled = h->rings[q].enabled,
                        .last_avail = h->rings[q].last_avail,
                };
}

void vhm_migration_device_handoff(const struct vhm_rec_device *rec, struct vhm_device_handoff *out) {
        memset(out, 0, sizeof(*out));
        out->acked_features = rec->features;
        out->protocol_features = rec->protocol_features;
        out->queue_pairs = rec->queue_pairs;
        memcpy(out->mac, rec->mac, sizeof(out->mac));
        out->mtu = rec->mtu;
        out->nrings = rec->nrings;
        for (unsigned q = 0; q < rec->nrings && q < VHM_DEVICE_MAX_QUEUES; q++)
                out->rings[q] = (struct vhm_ring_handoff){
                        .size = rec->rings[q].size,
                        .desc_gpa = rec->rings[q].desc,
                        .avail_gpa = rec->rings[q].avail,
                        .used_gpa = rec->rings[q].used,
                        .enabled = rec->rings[q].enabled != 0,
                        .last_avail = rec->rings[q].last_avail,
                };
}

/* ---- what both ends share ------------------------------------------------------ */

struct engine {
        struct vhm_vm *vm;
        struct vhm_device **devs;
        unsigned n;
        struct vhm_stream *s;
        struct vhm_migrate_options o;
        struct vhm_migration_stats *st;
        uint64_t t0_usec;
        /*
         * The source's pause, where the downtime starts: the call (stop-and-copy,
         * the vCPUs are paused already), the VMM's continue or, with no VMM
         * dirty source, pre-switchover (live).  The destination: END's arrival.
         */
        uint64_t down_usec;
        uint64_t source_down_usec; /* destination: END's part, the source's pause to END */
        bool *touched;             /* source: stopped for the migration; destination: restored */
        bool ended;                /* source: END went out */
        bool answered;             /* source: the destination said ABORTED */
        int stream_err;            /* the stream's own failure, 0 while it works */
        bool vmm_carried;          /* device state through a VMM's fd: no answer, no pages */
        /*
         * Where the migration is, for the error text beside the phase: the
         * round or device at work ("round 3: ", "device 0: "); the
         * destination's restore; the last record the destination took.
         */
        char at[32];
        bool restoring;
        uint16_t last_record;
        /* Source, live. */
        struct vhm_logging *logging;
        bool started_logging;             /* switched on by the engine: switched off again at the end */
        uint64_t round_usec, round_bytes; /* the round in progress: its start, stream bytes at its start */
        uint64_t checksum_ns_per_mib;     /* the switchover's checksum pass, sampled; 0: not yet */
        /* Destination. */
        struct vhm_rec_hello hello;
        struct vhm_device_handoff *handoffs;
        bool *seen;
        bool *loaded;             /* the back-end's state (BACKEND_STATE) went in */
        struct vhm_rec_blob blob; /* the one arriving */
        /*
         * The hash of every page as it was written (in gpa order over the
         * layout), so END's checksum needs no second pass over guest memory:
         * nothing else writes it before a ring starts.  NULL: read at END.
         */
        uint64_t *page_hash;
        uint8_t *hashed; /* a bit per page: its hash is in page_hash */
};

/* The phase a failure names: the state it came in, or the destination's restore. */
static const char *phase(const struct engine *e) {
        if (e->restoring)
                return "restore";
        return e->st->state == VHM_MIGRATION_NONE ? "setup" : vhm_migration_state_name(e->st->state);
}

/* Every failure's text starts with its phase, so an operator knows how far the migration got. */
__attribute__((format(printf, 3, 4))) static int fail(struct engine *e, int r, const char *fmt, ...) {
        int used = snprintf(e->st->error, sizeof(e->st->error), "%s: ", phase(e));
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->st->error + used, sizeof(e->st->error) - (size_t) used, fmt, ap);
        va_end(ap);
        return r < 0 ? r : -EPROTO;
}

static void report(struct engine *e) {
        if (e->s)
                e->st->bytes_transferred = e->st->role == VHM_MIGRATION_ROLE_SOURCE ? vhm_stream_bytes_sent(e->s)
                                                                                    : vhm_stream_bytes_received(e->s);
        e->st->total_ms = (vhu_now_usec() - e->t0_usec) / 1000u;
        if (e->o.progress)
                e->o.progress(e->st, e->o.opaque);
}

static void set_state(struct engine *e, enum vhm_migration_state state) {
        e->st->state = state;
        report(e);
}

static bool cancelled(const struct engine *e) {
        if (e->o.cancel_fd <= 0)
                return false;
        struct pollfd pfd = { .fd = e->o.cancel_fd, .events = POLLIN };
        return poll(&pfd, 1, 0) > 0;
}

static int engine_init(struct engine *e, struct vhm_vm *vm, struct vhm_device **devs, unsigned n,
                       const struct vhm_migrate_options *o, struct vhm_migration_stats *st,
                       enum vhm_migration_role role) {
        memset(e, 0, sizeof(*e));
        memset(st, 0, sizeof(*st));
        e->t0_usec = vhu_now_usec();
        e->vm = vm;
        e->devs = devs;
        e->n = n;
        e->st = st;
        if (o)
                e->o = *o;
        if (!e->o.timeout_ms)
                e->o.timeout_ms = DEFAULT_TIMEOUT_MS;
        if (!e->o.max_downtime_ms)
                e->o.max_downtime_ms = DEFAULT_MAX_DOWNTIME_MS;
        if (!e->o.max_rounds)
                e->o.max_rounds = DEFAULT_MAX_ROUNDS;
        if (!e->o.pause_timeout_ms)
                e->o.pause_timeout_ms = DEFAULT_PAUSE_TIMEOUT_MS;
        st->role = role;
        st->state = VHM_MIGRATION_SETUP;
        st->pages_total = vhm_vm_memory_size(vm) / PAGE;
        e->touched = calloc(n ? n : 1, sizeof(*e->touched));
        if (!e->touched)
                return fail(e, -ENOMEM, "out of memory");
        return 0;
}

static void engine_free(struct engine *e) {
        vhm_stream_free(e->s);
        e->s = NULL;
        free(e->touched);
        free(e->handoffs);
        free(e->seen);
        free(e->loaded);
        free(e->page_hash);
        free(e->hashed);
        vhm_rec_blob_free(&e->blob);
}

static int engine_open(struct engine *e, int fd) {
        /* The stream takes the fd whatever happens. */
        int r = vhm_stream_new(fd, e->o.timeout_ms, &e->s);
        if (r < 0)
                return fail(e, r, "cannot set up the migration stream: %s", strerror(-r));
        if (e->o.cancel_fd > 0)
                vhm_stream_set_cancel_fd(e->s, e->o.cancel_fd);
        return 0;
}

/*
 * A wait on the stream failed: named by what it waited for, then the
 * stream's reason.  A cancel says so.
 */
static int stream_failed(struct engine *e, int r, const char *step) {
        e->stream_err = r;
        if (r == -ECANCELED)
                return fail(e, r, "%s%s: cancelled", e->at, step);
        return fail(e, r, "%s%s: %s", e->at, step, vhm_stream_error(e->s));
}

/* A record did not go out: the stream's reason names it ("PAGES: sending: ...", "PAGES: cancelled"). */
static int send_failed(struct engine *e, int r) {
        e->stream_err = r;
        return fail(e, r, "%s%s", e->at, vhm_stream_error(e->s));
}

/* ---- source -------------------------------------------------------------------- */

static int check_source_devices(struct engine *e) {
        for (unsigned i = 0; i < e->n; i++) {
                enum vhm_device_state ds = vhm_device_state(e->devs[i]);
                if (ds != VHM_DEVICE_RUNNING && ds != VHM_DEVICE_STOPPED)
                        return fail(e, -EBUSY, "device %u (%s) is %s: its rings have no state to migrate", i,
                                    vhm_device_socket(e->devs[i]), vhm_device_state_name(ds));
                char why[VHM_BLOCKER_LEN];
                if (vhm_device_state_blocker(vhm_device_type(e->devs[i]), vhm_device_protocol_features(e->devs[i]), why,
                                             sizeof(why)))
                        return fail(e, -ENOTSUP, "device %u (%s): %s", i, vhm_device_socket(e->devs[i]), why);
        }
        return 0;
}

/* GET_VRING_BASE on every ring: from here the back-ends write no guest memory. */
static int stop_devices(struct engine *e) {
        if (cancelled(e))
                return fail(e, -ECANCELED, "cancelled before stopping the rings (GET_VRING_BASE)");
        if (!e->down_usec)
                e->down_usec = vhu_now_usec();
        for (unsigned i = 0; i < e->n; i++) {
                if (vhm_device_state(e->devs[i]) != VHM_DEVICE_RUNNING)
                        continue;
                e->touched[i] = true; /* even half stopped, it is ours to resume */
                int r = vhm_device_stop(e->devs[i]);
                if (r < 0)
                        return fail(e, r, "stopping device %u: %s", i, vhm_device_error(e->devs[i]));
        }
        return 0;
}

/*
 * A tcp: stream becomes TLS 1.3 with the one-time token as pre-shared key (a
 * peer without the token fails the handshake, nothing crosses in clear);
 * vhm_stream_secure leaves any other stream as it is.
 */
static int secure_stream(struct engine *e, bool server, const char *token) {
        int r = vhm_stream_secure(e->s, server, token, NULL);
        if (r < 0) {
                e->stream_err = r;
                return fail(e, r, "%s", vhm_stream_error(e->s));
        }
        return 0;
}

static int send_hello_auth(struct engine *e, const char *token) {
        int r = check_source_devices(e);
        if (r < 0)
                return r;
        struct vhm_rec_hello hello;
        r = vhm_rec_hello_from_vm(e->vm, &hello);
        if (r < 0)
                return fail(e, r, "HELLO: the VM's memory layout cannot be described (%u regions)",
                            vhm_vm_region_count(e->vm));
        /* Over tcp: TLS 1.3 keyed by the token before anything else goes out; unix: stays plain. */
        r = secure_stream(e, false, token);
        if (r < 0)
                return r;
        r = vhm_stream_send_hello(e->s, &hello);
        if (r < 0)
                return send_failed(e, r);
        r = vhm_stream_send_auth(e->s, token);
        if (r < 0)
                return send_failed(e, r);
        return 0;
}

static int source_setup(struct engine *e, const char *token) {
        int r = send_hello_auth(e, token);
        return r < 0 ? r : stop_devices(e);
}

static int cmp_region_gpa(const void *a, const void *b) {
        const struct vhm_region *x = *(const struct vhm_region *const *) a, *y = *(const struct vhm_region *const *) b;
        return (x->guest_phys_addr > y->guest_phys_addr) - (x->guest_phys_addr < y->guest_phys_addr);
}

/* What one pass over a batch of guest memory finds, page by page. */
struct batch_scan {
        bool hash; /* stop-and-copy: each page's hash as well */
        bool zero[BATCH];
        uint64_t hashes[BATCH];
};

/* Under the guard (vhm_vm_visit): reads only, so a fault can cut it anywhere. */
static void scan_pages(const void *p, size_t len, void *arg) {
        struct batch_scan *b = arg;
        const uint8_t *page = p;
        for (size_t k = 0; k < len / PAGE; k++, page += PAGE) {
                if (b->hash)
                        b->hashes[k] = vhm_checksum_page(page, &b->zero[k]);
                else
                        b->zero[k] = vhm_page_is_zero(page);
        }
}

/* Under the guard (vhm_vm_visit): the hashes of a run of pages, in order. */
static void hash_run(const void *p, size_t len, void *arg) {
        uint64_t *out = arg;
        for (size_t off = 0; off < len; off += PAGE)
                *out++ = vhm_checksum_page((const uint8_t *) p + off, NULL);
}

/*
 * One batch of up to 256 pages from [gpa, gpa + bytes), without a copy in
 * user space: one guarded pass over guest memory in place, then the kernel
 * copies the data pages from the mapping into the socket (the stream).
 * Stop-and-copy: that pass gives each page's hash (folded into the checksum)
 * and whether it is zero (sent as a flag).  Live: the checksum is taken over
 * the whole memory at the switchover, so the rounds only test for zero,
 * which stops at a data page's first non-zero byte.
 */
static int send_batch(struct engine *e, uint64_t gpa, uint64_t bytes) {
        struct batch_scan scan = { .hash = !e->o.live };
        int r = vhm_vm_visit(e->vm, gpa, bytes, scan_pages, &scan);
        if (r < 0)
                return fail(e, r, "%sPAGES: reading guest memory at 0x%" PRIx64 ": %s", e->at, gpa,
                            vhm_vm_error(e->vm));
        struct vhm_rec_vm_page pages[BATCH];
        unsigned count = (unsigned) (bytes / PAGE), zero = 0;
        for (unsigned k = 0; k < count; k++) {
                if (scan.hash)
                        e->st->checksum = vhm_checksum_fold(e->st->checksum, scan.hashes[k]);
                pages[k] = (struct vhm_rec_vm_page){ .gpa = gpa + (uint64_t) k * PAGE, .zero = scan.zero[k] };
                zero += scan.zero[k];
        }
        r = vhm_stream_send_vm_pages(e->s, e->vm, pages, count);
        if (r < 0)
                return send_failed(e, r);
        e->st->pages_transferred += count;
        e->st->zero_pages += zero;
        return 0;
}

/* Every page of every region in gpa order: the order vhm_memory_checksum() folds them in. */
static int source_pages(struct engine *e) {
        set_state(e, VHM_MIGRATION_ACTIVE);
        unsigned nr = vhm_vm_region_count(e->vm);
        const struct vhm_region *regions[VHM_VM_MAX_REGIONS];
        for (unsigned i = 0; i < nr; i++)
                regions[i] = vhm_vm_region(e->vm, i);
        qsort(regions, nr, sizeof(regions[0]), cmp_region_gpa);
        e->st->checksum = VHM_CHECKSUM_INIT;
        int r = 0;
        for (unsigned i = 0; r == 0 && i < nr; i++)
                for (uint64_t off = 0; r == 0 && off < regions[i]->size; off += (uint64_t) BATCH * PAGE) {
                        uint64_t left = regions[i]->size - off;
                        r = send_batch(e, regions[i]->guest_phys_addr + off,
                                       left < (uint64_t) BATCH * PAGE ? left : (uint64_t) BATCH * PAGE);
                        /* The stream sees a cancel only when it would block. */
                        if (r == 0 && cancelled(e))
                                r = fail(e, -ECANCELED, "PAGES: cancelled");
                        report(e);
                }
        return r;
}

/* Where the back-end negotiated DEVICE_STATE, its blob follows its DEVICE record. */
static int send_backend_state(struct engine *e, unsigned i) {
        if (!vhm_device_has_state_transfer(e->devs[i]))
                return 0;
        uint8_t *blob;
        size_t len;
        int r = vhm_device_save_state(e->devs[i], &blob, &len);
        if (r < 0)
                return fail(e, r, "%sBACKEND_STATE: saving the back-end's state: %s", e->at,
                            vhm_device_error(e->devs[i]));
        r = vhm_stream_send_backend_state(e->s, i, blob, len);
        free(blob);
        return r < 0 ? send_failed(e, r) : 0;
}

static int send_devices(struct engine *e) {
        for (unsigned i = 0; i < e->n; i++) {
                snprintf(e->at, sizeof(e->at), "device %u: ", i);
                struct vhm_device_handoff h;
                int r = vhm_device_handoff_get(e->devs[i], &h);
                if (r < 0)
                        return fail(e, r, "%sDEVICE: %s", e->at, vhm_device_error(e->devs[i]));
                struct vhm_rec_device rec;
                vhm_migration_device_record(&h, i, &rec);
                r = vhm_stream_send_device(e->s, &rec);
                if (r < 0)
                        return send_failed(e, r);
                r = send_backend_state(e, i);
                if (r < 0)
                        return r;
        }
        e->at[0] = '\0';
        return 0;
}

static int await_answer(struct engine *e) {
        const void *p;
        uint32_t len;
        int type = vhm_stream_recv(e->s, &p, &len);
        if (type < 0)
                return stream_failed(e, type, "waiting for the destination's answer after END");
        if (type == VHM_REC_COMMITTED) {
                /* The destination runs the guest: the downtime ends here (its RARP follows at once). */
                e->st->downtime_ms = (vhu_now_usec() - e->down_usec) / 1000u;
                return 0;
        }
        char reason[VHM_REC_MAX_REASON + 1], err[256];
        if (type != VHM_REC_ABORTED)
                return fail(e, -EBADMSG, "the destination answered END with %s", vhm_rec_name((uint16_t) type));
        if (vhm_rec_decode_aborted(p, len, reason, err, sizeof(err)) < 0)
                return fail(e, -EBADMSG, "END: the destination aborted: %s", err);
        e->answered = true;
        return fail(e, -ECONNABORTED, "END: the destination aborted: %s", reason);
}

static int source_switchover(struct engine *e) {
        if (cancelled(e))
                return fail(e, -ECANCELED, "cancelled before the DEVICE records");
        set_state(e, VHM_MIGRATION_SWITCHOVER);
        int r = send_devices(e);
        if (r < 0)
                return r;
        struct vhm_rec_end end = {
                .pages = e->st->pages_transferred,
                .zero_pages = e->st->zero_pages,
                .checksum = e->st->checksum,
                .downtime_usec = vhu_now_usec() - e->down_usec,
        };
        r = vhm_stream_send_end(e->s, &end);
        if (r < 0)
                return send_failed(e, r);
        /* From here the destination may run the guest: the source never resumes on its own. */
        e->ended = true;
        return await_answer(e);
}

/*
 * A send failed: the destination may have said why before it hung up
 * (ABORTED: wrong token, another layout, a device it cannot take).
 */
static void fetch_destination_reason(struct engine *e) {
        if (!e->s || !e->stream_err || e->stream_err == -ECANCELED || e->answered)
                return;
        vhm_stream_set_deadline(e->s, vhu_now_usec() + LAST_WORD_MS * 1000u);
        const void *p;
        uint32_t len;
        char reason[VHM_REC_MAX_REASON + 1], err[128];
        if (vhm_stream_recv(e->s, &p, &len) != VHM_REC_ABORTED ||
            vhm_rec_decode_aborted(p, len, reason, err, sizeof(err)) < 0)
                return;
        size_t used = strlen(e->st->error);
        snprintf(e->st->error + used, sizeof(e->st->error) - used, " (the destination aborted: %s)", reason);
}

/* Devices stopped for the migration run again from where they stopped. */
static void rollback_source(struct engine *e) {
        for (unsigned i = 0; i < e->n; i++) {
                if (!e->touched[i])
                        continue;
                if (vhm_device_resume_after_migration(e->devs[i]) < 0) {
                        size_t used = strlen(e->st->error);
                        snprintf(e->st->error + used, sizeof(e->st->error) - used, "; device %u not resumed: %s", i,
                                 vhm_device_error(e->devs[i]));
                }
        }
}

/* Logging as it was before the call (best effort: the devices are stopped or about to run again). */
static void logging_back(struct engine *e) {
        if (e->started_logging && vhm_logging_stop(e->logging) < 0) {
                size_t used = strlen(e->st->error);
                snprintf(e->st->error + used, sizeof(e->st->error) - used, "%sswitching dirty logging off: %s",
                         used ? "; " : "", vhm_logging_error(e->logging));
        }
        e->started_logging = false;
}

static void source_finish(struct engine *e, int r) {
        if (r == 0) {
                /* The rings are stopped: logging goes off with no request, before the devices go. */
                logging_back(e);
                for (unsigned i = 0; i < e->n; i++)
                        vhm_device_release(e->devs[i]);
                set_state(e, VHM_MIGRATION_COMPLETED);
                return;
        }
        if (e->ended && !e->answered) {
                /* The rings stay stopped, nothing can dirty a page: logging goes off as in every outcome. */
                logging_back(e);
                set_state(e, VHM_MIGRATION_POSTMIGRATE_UNKNOWN);
                return;
        }
        if (!e->ended)
                fetch_destination_reason(e);
        /* Resumed first, then logging off on running rings: the path a running VM's logging takes. */
        rollback_source(e);
        logging_back(e);
        set_state(e, r == -ECANCELED ? VHM_MIGRATION_CANCELLED : VHM_MIGRATION_FAILED);
}

/* ---- source, live (pre-copy) ----------------------------------------------------------- */

static uint64_t per_second(uint64_t amount, uint64_t usec) {
        return (uint64_t) ((unsigned __int128) amount * 1000000u / (usec ? usec : 1));
}

/* Sleeps until the round's bytes fit max_bandwidth; a cancel ends the wait. */
static int throttle(struct engine *e) {
        uint64_t sent = vhm_stream_bytes_sent(e->s) - e->round_bytes;
        uint64_t due = e->round_usec + (uint64_t) ((unsigned __int128) sent * 1000000u / e->o.max_bandwidth);
        uint64_t now = vhu_now_usec();
        if (now >= due)
                return 0;
        struct pollfd pfd = { .fd = e->o.cancel_fd > 0 ? e->o.cancel_fd : -1, .events = POLLIN };
        if (poll(&pfd, 1, (int) ((due - now + 999) / 1000)) > 0)
                return fail(e, -ECANCELED, "%sPAGES: cancelled", e->at);
        return 0;
}

/* After each batch: the cancel (the stream sees one only when it would block), the limit, the progress. */
static int batch_done(struct engine *e, uint64_t pages, bool limited) {
        e->st->pages_remaining -= pages < e->st->pages_remaining ? pages : e->st->pages_remaining;
        if (cancelled(e))
                return fail(e, -ECANCELED, "%sPAGES: cancelled", e->at);
        int r = limited && e->o.max_bandwidth ? throttle(e) : 0;
        report(e);
        return r;
}

/* The pages of [first, first + count) that lie in guest memory; gaps and ring logs past memory are no pages. */
static int send_range(struct engine *e, uint64_t first, uint64_t count, bool limited) {
        for (unsigned i = 0; i < vhm_vm_region_count(e->vm); i++) {
                const struct vhm_region *rg = vhm_vm_region(e->vm, i);
                uint64_t lo = rg->guest_phys_addr / PAGE, hi = (rg->guest_phys_addr + rg->size) / PAGE;
                lo = lo > first ? lo : first;
                hi = hi < first + count ? hi : first + count;
                for (uint64_t p = lo; p < hi;) {
                        uint64_t k = hi - p < BATCH ? hi - p : BATCH;
                        int r = send_batch(e, p * PAGE, k * PAGE);
                        if (r == 0)
                                r = batch_done(e, k, limited);
                        if (r < 0)
                                return r;
                        p += k;
                }
        }
        return 0;
}

/* Every page the migration bitmap holds, each taken out before it is read. */
static int send_dirty(struct engine *e, bool limited) {
        struct vhm_bitmap *bm = vhm_logging_bitmap(e->logging);
        struct vhm_bitmap_iter it;
        uint64_t first, count;
        vhm_bitmap_iter_init(&it, bm, 0);
        while (vhm_bitmap_iter_next(&it, &first, &count)) {
                /* A write after the read below is in a dirty source, for the next harvest. */
                (void) vhm_bitmap_clear_range(bm, first, count);
                int r = send_range(e, first, count, limited);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int harvest(struct engine *e, uint64_t *fresh) {
        int r = vhm_logging_harvest(e->logging, fresh);
        if (r < 0)
                return fail(e, r, "%sharvesting the dirty sources: %s", e->at, vhm_logging_error(e->logging));
        e->st->pages_remaining = vhm_bitmap_count(vhm_logging_bitmap(e->logging));
        return 0;
}

/* The threads the switchover's checksum pass runs on: every CPU there is, as the pause is the VM's downtime. */
static unsigned checksum_threads(void) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        return cpus > 1 ? (unsigned) cpus : 1u;
}

/*
 * The switchover hashes the whole memory inside the downtime (the safety net
 * for a page written and never marked), so the convergence test counts it: a
 * sample of 16 MiB hashed the same way, the fastest kept (a slow one is this
 * machine's load, not the pass's cost).  Taken after round 0, and again in a
 * round whose pages alone would fit the downtime, where it decides: a sample
 * every round would stretch the rounds and with them the pages dirtied.  A
 * sample that cannot be read changes nothing: the next round reports the
 * memory.
 */
#define CHECKSUM_SAMPLE_PAGES 4096u
static void sample_checksum_speed(struct engine *e) {
        uint64_t pages = CHECKSUM_SAMPLE_PAGES, t0 = vhu_now_usec();
        if (vhm_memory_hash_sample(e->vm, checksum_threads(), &pages) < 0 || !pages)
                return;
        uint64_t ns_per_mib = (vhu_now_usec() - t0) * 1000u * (MIB / PAGE) / pages;
        if (!e->checksum_ns_per_mib || ns_per_mib < e->checksum_ns_per_mib)
                e->checksum_ns_per_mib = ns_per_mib ? ns_per_mib : 1;
}

static uint64_t checksum_ms(const struct engine *e) {
        uint64_t mib = (e->st->pages_total * PAGE + MIB - 1) / MIB;
        return (uint64_t) (((unsigned __int128) mib * e->checksum_ns_per_mib + 999999u) / 1000000u);
}

/* The pages left at the measured bandwidth; UINT64_MAX when nothing was measured. */
static uint64_t sending_ms(const struct engine *e) {
        uint64_t left = e->st->pages_remaining * PAGE;
        return !left               ? 0
               : !e->st->bandwidth ? UINT64_MAX
                                   : (uint64_t) ((unsigned __int128) left * 1000u / e->st->bandwidth);
}

/* The round's bandwidth and dirty rate, what is left, and what sending it and the checksum would take. */
static int round_end(struct engine *e) {
        uint64_t usec = vhu_now_usec() - e->round_usec, bytes = vhm_stream_bytes_sent(e->s) - e->round_bytes, fresh;
        if (bytes >= MIN_MEASURED_BYTES || !e->st->bandwidth)
                e->st->bandwidth = per_second(bytes, usec);
        int r = harvest(e, &fresh);
        if (r < 0)
                return r;
        e->st->dirty_rate = per_second(fresh, usec);
        uint64_t ms = sending_ms(e);
        if (e->st->round == 0 || ms <= e->o.max_downtime_ms)
                sample_checksum_speed(e);
        e->st->expected_downtime_ms = ms == UINT64_MAX ? ms : ms + checksum_ms(e);
        report(e);
        return 0;
}

static int not_converged(struct engine *e) {
        return fail(e, -ETIMEDOUT,
                    "pre-copy did not converge in %u rounds: the guest and its back-ends dirty %" PRIu64
                    " pages/s (%.1f MB/s) and the migration moves %.1f MB/s, so the %" PRIu64
                    " pages left and the checksum of the whole memory at the switchover (%" PRIu64
                    " ms of it) would take %" PRIu64 " ms, more than the maximum downtime of %u ms",
                    e->o.max_rounds, e->st->dirty_rate, (double) e->st->dirty_rate * PAGE / 1e6,
                    (double) e->st->bandwidth / 1e6, e->st->pages_remaining, checksum_ms(e),
                    e->st->expected_downtime_ms, e->o.max_downtime_ms);
}

/* Round 0 sends every page, each later one what became dirty, until the rest fits the downtime. */
static int precopy_rounds(struct engine *e) {
        for (unsigned round = 0;; round++) {
                e->st->round = round;
                snprintf(e->at, sizeof(e->at), "round %u: ", round);
                e->round_usec = vhu_now_usec();
                e->round_bytes = vhm_stream_bytes_sent(e->s);
                int r = round ? send_dirty(e, true) : send_range(e, 0, (vhm_vm_top_gpa(e->vm) + PAGE - 1) / PAGE, true);
                if (r == 0)
                        r = round_end(e);
                if (r < 0)
                        return r;
                if (e->st->expected_downtime_ms <= e->o.max_downtime_ms)
                        break;
                if (round + 1 >= e->o.max_rounds) {
                        if (!e->o.force_switchover)
                                return not_converged(e);
                        break;
                }
        }
        e->at[0] = '\0';
        return 0;
}

static int precopy(struct engine *e) {
        /* Whatever was logged before round 0 is read by it anyway. */
        uint64_t fresh;
        int r = harvest(e, &fresh);
        if (r < 0)
                return r;
        vhm_bitmap_clear_all(vhm_logging_bitmap(e->logging));
        e->st->pages_remaining = e->st->pages_total;
        set_state(e, VHM_MIGRATION_ACTIVE);
        return precopy_rounds(e);
}

/* A MigrateContinue left from an earlier migration must not count as this one's pause. */
static void drain_continue(struct engine *e) {
        uint64_t v;
        struct pollfd pfd = { .fd = e->o.continue_fd, .events = POLLIN };
        if (e->o.continue_fd > 0 && poll(&pfd, 1, 0) > 0 && read(e->o.continue_fd, &v, sizeof(v)) < 0)
                v = 0;
}

static int live_setup(struct engine *e, const char *token) {
        if (!e->logging)
                return fail(e, -EINVAL, "a live migration needs the VM's dirty logging");
        if (vhm_logging_bitmap_sources(e->logging) && e->o.continue_fd <= 0)
                return fail(
                        e, -EINVAL,
                        "the VM has a VMM dirty bitmap: a live migration needs the continue fd for the VMM's pause");
        int r = send_hello_auth(e, token);
        if (r < 0)
                return r;
        drain_continue(e);
        if (!vhm_logging_active(e->logging)) {
                r = vhm_logging_start(e->logging);
                if (r < 0)
                        return fail(e, r, "switching dirty logging on: %s", vhm_logging_error(e->logging));
                e->started_logging = true;
        }
        e->st->setup_ms = (vhu_now_usec() - e->t0_usec) / 1000u;
        return 0;
}

/*
 * The VMM pauses its vCPUs (they write memory no back-end logs) and says so
 * on continue_fd; without a VMM dirty source only the back-ends write, and
 * stopping their rings is the pause.
 */
static int await_pause(struct engine *e) {
        set_state(e, VHM_MIGRATION_PRE_SWITCHOVER);
        if (!vhm_logging_bitmap_sources(e->logging)) {
                e->down_usec = vhu_now_usec(); /* stopping the rings is the pause */
                return 0;
        }
        uint64_t deadline = vhu_now_usec() + (uint64_t) e->o.pause_timeout_ms * 1000u;
        struct pollfd pfd[2] = {
                { .fd = e->o.cancel_fd > 0 ? e->o.cancel_fd : -1, .events = POLLIN },
                { .fd = e->o.continue_fd, .events = POLLIN },
        };
        for (;;) {
                uint64_t now = vhu_now_usec();
                if (now >= deadline)
                        return fail(e, -ETIMEDOUT, "the VMM did not pause its vCPUs within %u ms (no MigrateContinue)",
                                    e->o.pause_timeout_ms);
                int k = poll(pfd, 2, (int) ((deadline - now + 999) / 1000));
                if (k < 0 && errno != EINTR)
                        return fail(e, -errno, "waiting for the VMM's pause: %s", strerror(errno));
                if (k > 0 && pfd[0].revents)
                        return fail(e, -ECANCELED, "waiting for the VMM's pause: cancelled");
                if (k > 0 && (pfd[1].revents & POLLIN)) {
                        drain_continue(e);
                        e->down_usec = vhu_now_usec(); /* the VMM has paused its vCPUs */
                        return 0;
                }
                if (k > 0 && pfd[1].revents)
                        return fail(e, -EBADF, "the continue fd failed (revents 0x%x)", pfd[1].revents);
        }
}

/* Rings stopped, a last harvest, the last pages unthrottled, and the checksum of the whole image. */
static int live_last_pages(struct engine *e) {
        int r = stop_devices(e);
        if (r < 0)
                return r;
        set_state(e, VHM_MIGRATION_SWITCHOVER);
        snprintf(e->at, sizeof(e->at), "the last pages: ");
        uint64_t fresh;
        r = harvest(e, &fresh);
        if (r < 0)
                return r;
        /*
         * Over the whole memory: a page written and never marked dirty makes the
         * destination's differ.  Inside the downtime, so on every CPU there is,
         * and beside the last pages: nothing writes the memory any more.
         */
        struct vhm_checksum_job *job = NULL;
        if (vhm_memory_checksum_start(e->vm, checksum_threads(), &job) < 0)
                job = NULL; /* then after the pages, on this thread */
        r = send_dirty(e, false);
        int rc = job ? vhm_memory_checksum_finish(job, &e->st->checksum) : 0;
        if (r < 0)
                return r;
        e->at[0] = '\0';
        if (!job)
                rc = vhm_memory_checksum_threads(e->vm, checksum_threads(), &e->st->checksum);
        if (rc < 0)
                return fail(e, rc, "END: cannot read guest memory: %s", vhm_vm_error(e->vm));
        return 0;
}

static int source_live(struct engine *e, const char *token) {
        int r = live_setup(e, token);
        if (r == 0)
                r = precopy(e);
        if (r == 0)
                r = await_pause(e);
        if (r == 0)
                r = live_last_pages(e);
        return r;
}

static int source_stop_and_copy(struct engine *e, const char *token) {
        int r = source_setup(e, token);
        if (r == 0)
                r = source_pages(e);
        return r;
}

int vhm_migrate_to(struct vhm_vm *vm, struct vhm_logging *logging, struct vhm_device **devs, unsigned n, int fd,
                   const char *token, const struct vhm_migrate_options *o, struct vhm_migration_stats *st) {
        struct engine e;
        int r = engine_init(&e, vm, devs, n, o, st, VHM_MIGRATION_ROLE_SOURCE);
        /* Stop-and-copy stops the rings before the pages go: no page needs the dirty log. */
        e.logging = e.o.live ? logging : NULL;
        if (r == 0 && (!token || (n && !devs)))
                r = fail(&e, -EINVAL, "no token or no devices given");
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                engine_free(&e);
                st->state = VHM_MIGRATION_FAILED;
                return r;
        }
        report(&e);
        if (!e.o.live)
                e.down_usec = e.t0_usec; /* the VMM paused its vCPUs before the call */
        r = engine_open(&e, fd);
        if (r == 0 && cancelled(&e))
                r = fail(&e, -ECANCELED, "cancelled before HELLO");
        if (r == 0)
                r = e.o.live ? source_live(&e, token) : source_stop_and_copy(&e, token);
        if (r == 0)
                r = source_switchover(&e);
        source_finish(&e, r);
        engine_free(&e);
        return r;
}

/* ---- destination --------------------------------------------------------------- */

/* A page's place in the layout's order (the decoder checked it lies inside). */
static uint64_t page_index(const struct vhm_rec_hello *layout, uint64_t gpa) {
        uint64_t base = 0;
        for (uint32_t i = 0; i < layout->nregions; i++) {
                const struct vhm_rec_region *r = &layout->regions[i];
                if (gpa >= r->gpa && gpa - r->gpa < r->size)
                        return base + (gpa - r->gpa) / PAGE;
                base += r->size / PAGE;
        }
        return base;
}

/* Without memory for the table (8 bytes a page) END reads guest memory instead. */
static void dest_hash_alloc(struct engine *e) {
        uint64_t n = e->st->pages_total;
        e->page_hash = n ? malloc(n * sizeof(*e->page_hash)) : NULL;
        e->hashed = n ? calloc((n + 7) / 8, 1) : NULL;
        if (!e->page_hash || !e->hashed) {
                free(e->page_hash);
                free(e->hashed);
                e->page_hash = NULL;
                e->hashed = NULL;
        }
}

/*
 * Each piece of PAGES data as it lands in guest memory (the stream's landed
 * hook, in the record's order, zero pages too): its hashes read back while
 * it is still in cache, so END needs no second pass.  What guest memory now
 * holds.
 */
static int dest_landed(uint64_t gpa, size_t len, void *arg) {
        struct engine *e = arg;
        uint64_t k = page_index(&e->hello, gpa);
        int r = vhm_vm_visit(e->vm, gpa, len, hash_run, &e->page_hash[k]);
        if (r < 0)
                return fail(e, r, "PAGES: reading back guest memory at 0x%" PRIx64 ": %s", gpa, vhm_vm_error(e->vm));
        for (uint64_t j = k; j < k + len / PAGE; j++)
                e->hashed[j / 8] |= (uint8_t) (1u << (j % 8));
        return 0;
}

/* The checksum of guest memory from the table; a page that never arrived is read. */
static int dest_checksum(struct engine *e, uint64_t *out) {
        if (!e->page_hash)
                return vhm_memory_checksum(e->vm, out);
        uint8_t page[PAGE];
        uint64_t h = VHM_CHECKSUM_INIT, k = 0;
        for (uint32_t i = 0; i < e->hello.nregions; i++) {
                const struct vhm_rec_region *rg = &e->hello.regions[i];
                for (uint64_t off = 0; off < rg->size; off += PAGE, k++) {
                        uint64_t ph = e->page_hash[k];
                        if (!(e->hashed[k / 8] & (1u << (k % 8)))) {
                                int r = vhm_vm_read(e->vm, rg->gpa + off, page, PAGE);
                                if (r < 0)
                                        return r;
                                ph = vhm_checksum_page(page, NULL);
                        }
                        h = vhm_checksum_fold(h, ph);
                }
        }
        *out = h;
        return 0;
}

/* The next record, of the type wanted. */
static int recv_record(struct engine *e, uint16_t want, const void **p, uint32_t *len) {
        char step[64];
        snprintf(step, sizeof(step), "waiting for %s", vhm_rec_name(want));
        int type = vhm_stream_recv(e->s, p, len);
        if (type < 0)
                return stream_failed(e, type, step);
        if (type != want)
                return fail(e, -EBADMSG, "%s: got %s", step, vhm_rec_name((uint16_t) type));
        e->last_record = want;
        return 0;
}

static int dest_hello(struct engine *e) {
        const void *p;
        uint32_t len;
        char err[256];
        int r = recv_record(e, VHM_REC_HELLO, &p, &len);
        if (r < 0)
                return r;
        r = vhm_rec_decode_hello(p, len, &e->hello, err, sizeof(err));
        if (r < 0)
                return fail(e, r, "%s", err);
        r = vhm_rec_hello_matches_vm(&e->hello, e->vm, err, sizeof(err));
        if (r < 0)
                return fail(e, r, "HELLO: the source's memory layout is not this VM's: %s", err);
        dest_hash_alloc(e);
        if (e->page_hash)
                vhm_stream_set_landed_hook(e->s, dest_landed, e);
        return 0;
}

static int dest_auth(struct engine *e, const char *token, uint64_t token_deadline_usec) {
        const void *p;
        uint32_t len;
        char got[VHM_REC_TOKEN_LEN + 1], err[256];
        int r = recv_record(e, VHM_REC_AUTH, &p, &len);
        if (r < 0)
                return r;
        r = vhm_rec_decode_auth(p, len, got, err, sizeof(err));
        if (r < 0)
                return fail(e, r, "%s", err);
        bool in_time = !token_deadline_usec || vhu_now_usec() <= token_deadline_usec;
        bool equal = vhm_token_equal(got, token);
        if (!equal)
                return fail(e, -EACCES, "AUTH: wrong token");
        if (!in_time)
                return fail(e, -EACCES, "AUTH: the token expired");
        return 0;
}

static int dest_setup(struct engine *e, const char *token, uint64_t token_deadline_usec) {
        /* A source that does not show up with the token in its lifetime is not waited for. */
        vhm_stream_set_deadline(e->s, token_deadline_usec);
        int r = secure_stream(e, true, token);
        if (r == 0)
                r = dest_hello(e);
        if (r == 0)
                r = dest_auth(e, token, token_deadline_usec);
        vhm_stream_set_deadline(e->s, 0);
        return r;
}

/* A batch the stream checked and read into guest memory (vhm_stream_recv_vm). */
static int dest_pages(struct engine *e, const struct vhm_rec_pages *pg) {
        e->st->pages_transferred += pg->count;
        e->st->zero_pages += pg->zero;
        report(e);
        return 0;
}

/*
 * A back-end that keeps its own state needs it from the source's back-end: a
 * device of such a type migrates only where both negotiated DEVICE_STATE,
 * and a state the source sends must have somewhere to go.
 */
static int dest_state_check(struct engine *e, uint32_t index, const struct vhm_rec_device *rec) {
        struct vhm_device *dev = e->devs[index];
        char why[VHM_BLOCKER_LEN];
        if (vhm_device_state_blocker(vhm_device_type(dev), vhm_device_protocol_features(dev), why, sizeof(why)))
                return fail(e, -ENOTSUP, "device %" PRIu32 " (%s): %s", index, vhm_device_socket(dev), why);
        bool source_state = rec->protocol_features & VHU_BIT(VHU_PF_DEVICE_STATE);
        if (vhm_device_type_needs_state(vhm_device_type(dev)) && !source_state)
                return fail(e, -ENOTSUP,
                            "device %" PRIu32 " (%s): %s: the source's back-end did not negotiate DEVICE_STATE", index,
                            vhm_device_socket(dev), vhm_device_type_name(vhm_device_type(dev)));
        if (source_state && !vhm_device_has_state_transfer(dev))
                return fail(e, -ENOTSUP,
                            "device %" PRIu32 " (%s): the source's back-end sends its own state (DEVICE_STATE) and "
                            "this back-end does not offer DEVICE_STATE to load it",
                            index, vhm_device_socket(dev));
        return 0;
}

/* Can the device here take the source's?  Checked now, before anything starts. */
static int dest_device(struct engine *e, const void *p, uint32_t len) {
        struct vhm_rec_device rec;
        char err[256];
        int r = vhm_rec_decode_device(p, len, &rec, err, sizeof(err));
        if (r < 0)
                return fail(e, r, "%s", err);
        if (rec.index >= e->n)
                return fail(e, -EBADMSG, "DEVICE: device %" PRIu32 ", but the VM here has %u devices", rec.index, e->n);
        if (e->seen[rec.index])
                return fail(e, -EBADMSG, "DEVICE: device %" PRIu32 " twice", rec.index);
        struct vhm_device *dev = e->devs[rec.index];
        if (!vhm_device_awaiting_restore(dev) || vhm_device_state(dev) != VHM_DEVICE_READY)
                return fail(e, -EBUSY, "device %" PRIu32 " (%s) is %s, not incoming and ready", rec.index,
                            vhm_device_socket(dev), vhm_device_state_name(vhm_device_state(dev)));
        struct vhm_device_handoff *h = &e->handoffs[rec.index];
        vhm_migration_device_handoff(&rec, h);
        r = vhm_device_handoff_check(dev, h);
        if (r < 0)
                return fail(e, r, "device %" PRIu32 " cannot take the source's: %s", rec.index, vhm_device_error(dev));
        r = dest_state_check(e, rec.index, &rec);
        if (r < 0)
                return r;
        e->seen[rec.index] = true;
        return 0;
}

/* One chunk of a device's BACKEND_STATE; the whole blob goes into its back-end at once. */
static int dest_backend_state(struct engine *e, const void *p, uint32_t len) {
        uint32_t index, chunk_len;
        const void *chunk;
        char err[256];
        int r = vhm_rec_decode_backend_state(p, len, &index, &chunk, &chunk_len, err, sizeof(err));
        if (r == 0)
                r = vhm_rec_blob_append(&e->blob, index, chunk, chunk_len, err, sizeof(err));
        if (r < 0)
                return fail(e, r, "%s", err);
        if (index >= e->n || !e->seen[index] || e->loaded[index])
                return fail(e, -EBADMSG, "BACKEND_STATE %" PRIu32 ": %s", index,
                            index >= e->n     ? "no such device here"
                            : !e->seen[index] ? "before the device's DEVICE record"
                                              : "the device's state came twice");
        if (!(e->handoffs[index].protocol_features & VHU_BIT(VHU_PF_DEVICE_STATE)))
                return fail(e, -EBADMSG,
                            "BACKEND_STATE %" PRIu32 ": the source's back-end did not negotiate DEVICE_STATE", index);
        if (!e->blob.complete)
                return 0;
        /* Loaded before any ring starts; a failed migration takes the device back (unrestore). */
        e->touched[index] = true;
        r = vhm_device_load_state(e->devs[index], e->blob.data, e->blob.len);
        if (r < 0)
                return fail(e, r, "BACKEND_STATE %" PRIu32 ": loading device %" PRIu32 "'s state: %s", index, index,
                            vhm_device_error(e->devs[index]));
        e->loaded[index] = true;
        vhm_rec_blob_free(&e->blob);
        return 0;
}

/* PAGES and DEVICE records until END. */
static int dest_receive(struct engine *e, struct vhm_rec_end *end) {
        set_state(e, VHM_MIGRATION_ACTIVE);
        for (;;) {
                const void *p;
                uint32_t len;
                char err[256];
                char step[64];
                snprintf(step, sizeof(step), "waiting for a record after %s", vhm_rec_name(e->last_record));
                struct vhm_rec_pages pg;
                int type = vhm_stream_recv_vm(e->s, e->vm, &e->hello, &p, &len, &pg), r;
                if (type < 0)
                        return stream_failed(e, type, step);
                e->last_record = (uint16_t) type;
                switch (type) {
                case VHM_REC_PAGES:
                        r = dest_pages(e, &pg);
                        break;
                case VHM_REC_DEVICE:
                        r = dest_device(e, p, len);
                        break;
                case VHM_REC_END:
                        e->down_usec = vhu_now_usec();
                        r = vhm_rec_decode_end(p, len, end, err, sizeof(err));
                        e->source_down_usec = end->downtime_usec;
                        return r < 0 ? fail(e, r, "%s", err) : 0;
                case VHM_REC_BACKEND_STATE:
                        r = dest_backend_state(e, p, len);
                        break;
                default:
                        return fail(e, -EBADMSG, "unexpected %s record", vhm_rec_name((uint16_t) type));
                }
                if (r < 0)
                        return r;
                if (cancelled(e))
                        return fail(e, -ECANCELED, "after %s: cancelled", vhm_rec_name((uint16_t) type));
        }
}

/* What END says must be what arrived: every device, every page, the same image. */
/* Every device's DEVICE record came, and its back-end's state where the source has one. */
static int dest_check_devices(struct engine *e) {
        if (e->blob.started)
                return fail(e, -EBADMSG, "END: device %" PRIu32 "'s BACKEND_STATE is not complete", e->blob.index);
        for (unsigned i = 0; i < e->n; i++) {
                if (!e->seen[i])
                        return fail(e, -EBADMSG, "END: no DEVICE record for device %u", i);
                if ((e->handoffs[i].protocol_features & VHU_BIT(VHU_PF_DEVICE_STATE)) && !e->loaded[i])
                        return fail(e, -EBADMSG, "END: no BACKEND_STATE for device %u, whose back-end has one", i);
        }
        return 0;
}

static int dest_check_end(struct engine *e, const struct vhm_rec_end *end) {
        int r = dest_check_devices(e);
        if (r < 0)
                return r;
        if (end->pages != e->st->pages_transferred || end->zero_pages != e->st->zero_pages)
                return fail(e, -EBADMSG,
                            "END: the source sent %" PRIu64 " pages (%" PRIu64 " zero), %" PRIu64 " (%" PRIu64
                            " zero) arrived",
                            end->pages, end->zero_pages, e->st->pages_transferred, e->st->zero_pages);
        r = dest_checksum(e, &e->st->checksum);
        if (r < 0)
                return fail(e, r, "END: cannot read guest memory: %s", vhm_vm_error(e->vm));
        if (e->st->checksum != end->checksum)
                return fail(e, -EBADMSG, "END: the memory checksum 0x%016" PRIx64 " is not the source's 0x%016" PRIx64,
                            e->st->checksum, end->checksum);
        return 0;
}

static int dest_restore(struct engine *e) {
        e->restoring = true;
        for (unsigned i = 0; i < e->n; i++) {
                /* Even a restore that failed half-way is taken back (its connection is gone). */
                e->touched[i] = true;
                int r = vhm_device_restore(e->devs[i], &e->handoffs[i]);
                if (r < 0)
                        return fail(e, r, "restoring device %u: %s", i, vhm_device_error(e->devs[i]));
        }
        e->restoring = false;
        return 0;
}

static int dest_switchover(struct engine *e, const struct vhm_rec_end *end) {
        set_state(e, VHM_MIGRATION_SWITCHOVER);
        /* Before any ring starts: a running back-end writes guest memory. */
        int r = dest_check_end(e, end);
        if (r == 0)
                r = dest_restore(e);
        if (r < 0)
                return r;
        r = vhm_stream_send_committed(e->s);
        if (r < 0)
                return send_failed(e, r);
        return 0;
}

/* After the commit: a failed announcement is reported, the migration stands. */
static void dest_announce(struct engine *e) {
        for (unsigned i = 0; i < e->n; i++) {
                if (!vhm_device_needs_rarp(e->devs[i]))
                        continue;
                if (vhm_device_announce(e->devs[i]) == 0)
                        e->st->rarp_sent++;
                else
                        snprintf(e->st->error, sizeof(e->st->error), "SEND_RARP on device %u: %s", i,
                                 vhm_device_error(e->devs[i]));
        }
}

/* The source is told why (when the channel still works); nothing here stays started. */
static void dest_abort(struct engine *e, int r) {
        /* A source that hung up or stalls hears nothing more; one that sent a bad record is told. */
        bool channel_works = e->stream_err != -ECONNRESET && e->stream_err != -EPIPE && e->stream_err != -ETIMEDOUT;
        if (e->s && channel_works && !e->vmm_carried) {
                vhm_stream_set_cancel_fd(e->s, -1);
                vhm_stream_set_deadline(e->s, vhu_now_usec() + LAST_WORD_MS * 1000u);
                (void) vhm_stream_send_aborted(e->s, e->st->error);
        }
        for (unsigned i = 0; i < e->n; i++)
                if (e->touched[i])
                        vhm_device_unrestore(e->devs[i], LAST_WORD_MS);
        set_state(e, r == -ECANCELED ? VHM_MIGRATION_CANCELLED : VHM_MIGRATION_FAILED);
}

static int dest_alloc(struct engine *e) {
        unsigned k = e->n ? e->n : 1;
        e->handoffs = calloc(k, sizeof(*e->handoffs));
        e->seen = calloc(k, sizeof(*e->seen));
        e->loaded = calloc(k, sizeof(*e->loaded));
        if (!e->handoffs || !e->seen || !e->loaded)
                return fail(e, -ENOMEM, "out of memory");
        return 0;
}

int vhm_migrate_incoming_opts(struct vhm_vm *vm, struct vhm_device **devs, unsigned n, int fd, const char *token,
                              uint64_t token_deadline_usec, const struct vhm_migrate_options *o,
                              struct vhm_migration_stats *st) {
        struct engine e;
        int r = engine_init(&e, vm, devs, n, o, st, VHM_MIGRATION_ROLE_DESTINATION);
        if (r == 0)
                r = dest_alloc(&e);
        if (r == 0 && (!token || (n && !devs)))
                r = fail(&e, -EINVAL, "no token or no devices given");
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                engine_free(&e);
                st->state = VHM_MIGRATION_FAILED;
                return r;
        }
        report(&e);
        struct vhm_rec_end end;
        r = engine_open(&e, fd);
        if (r == 0)
                r = dest_setup(&e, token, token_deadline_usec);
        if (r == 0)
                r = dest_receive(&e, &end);
        if (r == 0)
                r = dest_switchover(&e, &end);
        if (r == 0) {
                dest_announce(&e);
                /* The source's part (its pause to END) and this end's (END to running and RARP). */
                e.st->downtime_ms = (e.source_down_usec + vhu_now_usec() - e.down_usec) / 1000u;
                set_state(&e, VHM_MIGRATION_COMPLETED);
        } else {
                dest_abort(&e, r);
        }
        engine_free(&e);
        return r;
}

int vhm_migrate_incoming(struct vhm_vm *vm, struct vhm_device **devs, unsigned n, int fd, const char *token,
                         uint64_t token_deadline_usec, struct vhm_migration_stats *st) {
        return vhm_migrate_incoming_opts(vm, devs, n, fd, token, token_deadline_usec, NULL, st);
}

/* ---- VMM-carried device state ------------------------------------------------------ */

static int carried_begin(struct engine *e, struct vhm_device **devs, unsigned n, int fd,
                         const struct vhm_migrate_options *o, struct vhm_migration_stats *st,
                         enum vhm_migration_role role) {
        memset(e, 0, sizeof(*e));
        e->st = st;
        int r;
        if (!n || !devs) {
                memset(st, 0, sizeof(*st));
                st->role = role;
                r = fail(e, -EINVAL, "no devices given");
        } else {
                /* The devices' VM, for the engine's bookkeeping: guest memory is the VMM's to carry. */
                r = engine_init(e, vhm_device_vm(devs[0]), devs, n, o, st, role);
                st->pages_total = 0;
        }
        e->vmm_carried = true;
        if (r == 0 && role == VHM_MIGRATION_ROLE_DESTINATION)
                r = dest_alloc(e);
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                return r;
        }
        r = engine_open(e, fd);
        if (r == 0)
                vhm_stream_set_mode(e->s, VHM_STREAM_DEVICE_STATE);
        return r;
}

int vhm_migration_save_device_state(struct vhm_device **devs, unsigned n, int fd, const struct vhm_migrate_options *o,
                                    struct vhm_migration_stats *st) {
        struct engine e;
        int r = carried_begin(&e, devs, n, fd, o, st, VHM_MIGRATION_ROLE_SOURCE);
        if (r == 0)
                report(&e);
        if (r == 0)
                r = check_source_devices(&e);
        if (r == 0)
                r = stop_devices(&e);
        if (r == 0) {
                set_state(&e, VHM_MIGRATION_SWITCHOVER);
                r = send_devices(&e);
        }
        if (r == 0) {
                /* No pages: the VMM carries guest memory.  END says the records are complete. */
                struct vhm_rec_end end = { 0 };
                r = vhm_stream_send_end(e.s, &end);
                if (r < 0)
                        r = send_failed(&e, r);
        }
        if (r == 0) {
                /* Stopped with their indices: the VMM decides whether they run here again. */
                e.st->downtime_ms = e.down_usec ? (vhu_now_usec() - e.down_usec) / 1000u : 0;
                set_state(&e, VHM_MIGRATION_COMPLETED);
        } else {
                rollback_source(&e);
                set_state(&e, r == -ECANCELED ? VHM_MIGRATION_CANCELLED : VHM_MIGRATION_FAILED);
        }
        engine_free(&e);
        return r;
}

/* DEVICE and BACKEND_STATE records until END, or the end of the fd once everything came. */
static int carried_receive(struct engine *e) {
        for (;;) {
                const void *p;
                uint32_t len;
                char err[256];
                int type = vhm_stream_recv(e->s, &p, &len), r;
                if (type == -ECONNRESET)
                        return 0;
                if (type < 0)
                        return stream_failed(e, type, "reading the device state");
                struct vhm_rec_end end;
                switch (type) {
                case VHM_REC_DEVICE:
                        r = dest_device(e, p, len);
                        break;
                case VHM_REC_BACKEND_STATE:
                        r = dest_backend_state(e, p, len);
                        break;
                case VHM_REC_END:
                        r = vhm_rec_decode_end(p, len, &end, err, sizeof(err));
                        if (r < 0)
                                return fail(e, r, "%s", err);
                        if (end.pages)
                                return fail(e, -EBADMSG, "END: %" PRIu64 " pages in a device state stream", end.pages);
                        return 0;
                default:
                        return fail(e, -EBADMSG, "unexpected %s record", vhm_rec_name((uint16_t) type));
                }
                if (r < 0)
                        return r;
                report(e);
        }
}

int vhm_migration_load_device_state(struct vhm_device **devs, unsigned n, int fd, const struct vhm_migrate_options *o,
                                    struct vhm_migration_stats *st) {
        struct engine e;
        int r = carried_begin(&e, devs, n, fd, o, st, VHM_MIGRATION_ROLE_DESTINATION);
        if (r == 0) {
                e.down_usec = vhu_now_usec();
                report(&e);
                r = carried_receive(&e);
        }
        if (r == 0) {
                set_state(&e, VHM_MIGRATION_SWITCHOVER);
                r = dest_check_devices(&e);
        }
        if (r == 0)
                r = dest_restore(&e);
        if (r == 0) {
                dest_announce(&e);
                e.st->downtime_ms = (vhu_now_usec() - e.down_usec) / 1000u;
                set_state(&e, VHM_MIGRATION_COMPLETED);
        } else {
                dest_abort(&e, r);
        }
        engine_free(&e);
        return r;
}
