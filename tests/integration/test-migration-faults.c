/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The migration fault matrix (issue 13): the engine (migrate/migration.h)
 * between a source VM in this process and a destination VM in a forked
 * child, each device on the project's test back-end, the stream through a
 * relay that parses record headers.  Each step of a migration (every
 * vhost-user request of logging start, stop, device state and restore on
 * either end, every record type of the stream) meets each fault in turn:
 *
 *   die       the back-end exits at the request (a record: the destination's
 *             back-end is killed as it passes)
 *   nack      the back-end refuses the request (a record: it arrives with an
 *             unknown type, the stream's refusal)
 *   hang      the back-end never answers (a record: the relay holds it)
 *   cut       the stream is cut
 *   cancel-s  the source's cancel fd is written (CancelMigration)
 *   cancel-d  the destination's cancel fd is written
 *   kill-d    the destination process is killed (SIGKILL)
 *
 * A back-end's request reaches the test through the back-end's notify fault
 * (SIGUSR1, the answer held 200 ms), so a cut, cancel or kill lands while
 * the front-end is at that very request.
 *
 * Every cell must end in a clean failure or rollback: the source's device
 * running again at the indices it stopped at (after a reconnect when its own
 * back-end is gone), postmigrate-unknown only once END went through,
 * completed only when the fault came after END and both ends agree, the
 * destination with no device started, fd and shared-mapping counts of both
 * processes as before.  The matrix is printed; any cell that broke an
 * expectation is marked FAIL and fails the test.  Whether the error text
 * names the step is reported per cell ("?" after the outcome when it does
 * not); VHM_FAULT_MATRIX_STRICT_ERRORS=1 makes that fatal too.
 *
 * Then corrupted pages: the relay flips one byte of a page inside a PAGES
 * record (well-formed otherwise); the destination's checksum refuses the
 * migration and the source rolls back, stop-and-copy and live.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "migrate/device.h"
#include "migrate/logging.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"
#include "proto/vhost-user.h"
#include "tests/backend/test-backend.h"
#include "tests/common/check.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "daemon/guest/guest.h"

#define GUEST_MEM (4ull << 20)
/*
 * Each vhost-user request (a hang costs this) and each stream wait: long
 * enough that a loaded machine does not time out a request before the step
 * (the fault then never fires), short enough to keep the matrix under a
 * minute.  Scaled (tests/common/clock.h): under memcheck the live rows'
 * switchover hashes the memory for longer than a second.
 */
#define DEV_TIMEOUT_MS ((unsigned) scaled_ms(800))
#define MIG_TIMEOUT_MS ((unsigned) scaled_ms(1000))
#define NOTIFY_MS      200u /* a notified request's answer waits this long */
#define STATE_SIZE     8192u
#define TOKEN          "00112233445566778899aabbccddeeff"
#define OTHER_TOKEN    "ffeeddccbbaa99887766554433221100"
#define RECORD_BAD     0x7f7fu /* an unknown type without the optional flag */

/* ---- the matrix's axes --------------------------------------------------------------- */

enum fault {
        F_DIE,
        F_NACK,
        F_HANG,
        F_CUT,
        F_CANCEL_SRC,
        F_CANCEL_DST,
        F_KILL_DST,
        F_COUNT
};

static const char *const fault_names[F_COUNT] = { "die", "nack", "hang", "cut", "cancel-s", "cancel-d", "kill-d" };

enum where {
        AT_SOURCE,
        AT_DESTINATION,
        AT_STREAM
};

struct step {
        const char *label;
        bool live;
        enum where where;
        const char *request; /* AT_SOURCE / AT_DESTINATION: a request name */
        unsigned nth;        /* its occurrence on that back-end's connection(s) */
        uint16_t record;     /* AT_STREAM */
        bool refused;        /* the destination refuses (a wrong token): ABORTED flows */
        /*
         * The request has no way to refuse: GET_VRING_BASE's reply is an
         * index, any value of which is valid; SET_LOG_BASE's reply has a
         * content the specification leaves open (DPDK sends none, virtiofsd
         * 8 bytes, rust-vmm 16), so its arrival is the acknowledgement, as
         * in QEMU.  A back-end refusing either can only close the link.
         */
        bool cannot_refuse;
        bool after_commit; /* the step comes once the destination committed: completing is right */
};

static const struct step steps[] = {
        /* stop-and-copy: the source stops and saves, the destination loads and restores */
        { "s&c src GET_VRING_BASE", false, AT_SOURCE, "GET_VRING_BASE", 1, 0, false, true, false },
        { "s&c src SET_DEVICE_STATE_FD", false, AT_SOURCE, "SET_DEVICE_STATE_FD", 1, 0, false, false, false },
        { "s&c src CHECK_DEVICE_STATE", false, AT_SOURCE, "CHECK_DEVICE_STATE", 1, 0, false, false, false },
        { "s&c dst SET_DEVICE_STATE_FD", false, AT_DESTINATION, "SET_DEVICE_STATE_FD", 1, 0, false, false, false },
        { "s&c dst CHECK_DEVICE_STATE", false, AT_DESTINATION, "CHECK_DEVICE_STATE", 1, 0, false, false, false },
        { "s&c dst SET_FEATURES", false, AT_DESTINATION, "SET_FEATURES", 1, 0, false, false, false },
        { "s&c dst SET_MEM_TABLE", false, AT_DESTINATION, "SET_MEM_TABLE", 1, 0, false, false, false },
        { "s&c dst SET_VRING_NUM", false, AT_DESTINATION, "SET_VRING_NUM", 1, 0, false, false, false },
        { "s&c dst SET_VRING_BASE", false, AT_DESTINATION, "SET_VRING_BASE", 1, 0, false, false, false },
        { "s&c dst SET_VRING_ADDR", false, AT_DESTINATION, "SET_VRING_ADDR", 1, 0, false, false, false },
        { "s&c dst SET_VRING_KICK", false, AT_DESTINATION, "SET_VRING_KICK", 1, 0, false, false, false },
        { "s&c dst SET_VRING_CALL", false, AT_DESTINATION, "SET_VRING_CALL", 1, 0, false, false, false },
        { "s&c dst SET_VRING_ENABLE", false, AT_DESTINATION, "SET_VRING_ENABLE", 1, 0, false, false, false },
        { "s&c dst SET_STATUS", false, AT_DESTINATION, "SET_STATUS", 1, 0, false, false, false },
        { "s&c dst SEND_RARP", false, AT_DESTINATION, "SEND_RARP", 1, 0, false, false, true },
        { "s&c HELLO", false, AT_STREAM, NULL, 0, VHM_REC_HELLO, false, false, false },
        { "s&c AUTH", false, AT_STREAM, NULL, 0, VHM_REC_AUTH, false, false, false },
        { "s&c PAGES", false, AT_STREAM, NULL, 0, VHM_REC_PAGES, false, false, false },
        { "s&c DEVICE", false, AT_STREAM, NULL, 0, VHM_REC_DEVICE, false, false, false },
        { "s&c BACKEND_STATE", false, AT_STREAM, NULL, 0, VHM_REC_BACKEND_STATE, false, false, false },
        { "s&c END", false, AT_STREAM, NULL, 0, VHM_REC_END, false, false, false },
        { "s&c COMMITTED", false, AT_STREAM, NULL, 0, VHM_REC_COMMITTED, false, false, true },
        { "s&c ABORTED", false, AT_STREAM, NULL, 0, VHM_REC_ABORTED, true, false, false },
        /* live: logging start on the source (the device's start made SET_FEATURES 1 and SET_VRING_ADDR 1-2) */
        { "live src SET_LOG_BASE", true, AT_SOURCE, "SET_LOG_BASE", 1, 0, false, true, false },
        { "live src SET_FEATURES (LOG_ALL)", true, AT_SOURCE, "SET_FEATURES", 2, 0, false, false, false },
        { "live src SET_VRING_ADDR (log)", true, AT_SOURCE, "SET_VRING_ADDR", 3, 0, false, false, false },
        { "live src GET_VRING_BASE", true, AT_SOURCE, "GET_VRING_BASE", 1, 0, false, true, false },
        { "live HELLO", true, AT_STREAM, NULL, 0, VHM_REC_HELLO, false, false, false },
        { "live PAGES", true, AT_STREAM, NULL, 0, VHM_REC_PAGES, false, false, false },
        { "live END", true, AT_STREAM, NULL, 0, VHM_REC_END, false, false, false },
        { "live COMMITTED", true, AT_STREAM, NULL, 0, VHM_REC_COMMITTED, false, false, true },
};

#define NSTEPS (sizeof(steps) / sizeof(steps[0]))

/* ---- a cell's world ----------------------------------------------------------------- */

struct backend {
        pid_t pid;
        char dir[64], socket[96], record[96];
};

/* What the destination process says about itself before it exits. */
struct dst_result {
        int rc;
        enum vhm_migration_state state;
        bool device_started; /* its device ran, or was left running */
        int fds_before, fds_after, maps_before, maps_after;
        char error[512];
};

enum relay_action {
        RA_NONE,
        RA_CUT,
        RA_HANG,
        RA_BAD_TYPE,
        RA_KILL_BACKEND,
        RA_CANCEL_SRC,
        RA_CANCEL_DST,
        RA_KILL_DST
};

struct relay {
        int src_fd, dst_fd; /* the relay's ends */
        pthread_t fwd, back, trigger;
        int stop_efd;
        /* What to do, and when: at the first `record`, or on SIGUSR1 (a notified request). */
        uint16_t record;
        enum relay_action action;
        bool corrupt_page; /* flip a byte of the first page with data in a PAGES record */
        /* What happened (written by the relay's threads, read after they are joined). */
        bool fired, end_at_fire, corrupted;
        int end_passed;       /* atomic: END went to the destination */
        int end_sent;         /* atomic: the source wrote END (the relay read it, forwarded or not) */
        int committed_passed; /* atomic: COMMITTED went to the source */
        int aborted_passed;
        /* Whom the actions touch. */
        int cancel_src, cancel_dst;
        pid_t dst_pid, dst_backend_pid;
        pthread_mutex_t lock;
};

struct cell {
        const struct step *step;
        enum fault fault;
        struct backend a, b; /* the source's and the destination's back-ends */
        struct vhm_guest *g;
        struct vhm_vm *vm;
        struct vhm_device *dev;
        struct vhm_logging *lg;
        struct relay relay;
        struct vhm_migration_stats st;
        struct dst_result dr;
        bool dst_reported;
        int dst_status;
        int src_rc;
        const char *outcome;
        char why[512]; /* why the cell failed, empty when it passed */
        bool names_step;
        bool missed; /* the fault never fired: something failed before the step */
};

/* ---- back-ends ---------------------------------------------------------------------- */

static int spawn_backend(struct backend *be, const char *fault_spec) {
        struct tb_config c;
        tb_config_init(&c);
        c.max_connections = 0;
        c.device_state_size = STATE_SIZE;
        c.device_state_seed = 7;
        c.record_path = be->record;
        if (fault_spec) {
                struct tb_fault f;
                assert_int_equal(tb_parse_fault(fault_spec, &f), 0);
                assert_int_equal(tb_config_add_fault(&c, &f), 0);
        }
        unlink(be->socket);
        return tb_spawn_listen(&c, be->socket, &be->pid);
}

static void backend_dirs(struct backend *be) {
        memset(be, 0, sizeof(*be));
        snprintf(be->dir, sizeof(be->dir), "/tmp/vhostmig-faults-XXXXXX");
        assert_non_null(mkdtemp(be->dir));
        snprintf(be->socket, sizeof(be->socket), "%s/sock", be->dir);
        snprintf(be->record, sizeof(be->record), "%s/record", be->dir);
}

static void backend_remove(struct backend *be) {
        if (be->pid > 0)
                (void) tb_stop(be->pid);
        be->pid = 0;
        if (be->dir[0]) {
                unlink(be->socket);
                unlink(be->record);
                rmdir(be->dir);
        }
        be->dir[0] = '\0';
}

/* The back-end's fault for a request step and a fault kind; NULL when the test acts instead. */
static void backend_fault_spec(const struct step *s, enum fault f, char *buf, size_t len) {
        const char *kind = f == F_DIE ? "die" : f == F_NACK ? "nack" : f == F_HANG ? "hang" : "notify";
        if (f == F_DIE || f == F_NACK || f == F_HANG)
                snprintf(buf, len, "%s:%s:%u", s->request, kind, s->nth);
        else
                snprintf(buf, len, "%s:notify=%u:%u", s->request, NOTIFY_MS, s->nth);
}

/* ---- the relay ---------------------------------------------------------------------- */

static bool read_full(int fd, void *buf, size_t len) {
        uint8_t *p = buf;
        while (len) {
                ssize_t k = read(fd, p, len);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return false;
                p += k;
                len -= (size_t) k;
        }
        return true;
}

static bool write_full(int fd, const void *buf, size_t len) {
        const uint8_t *p = buf;
        while (len) {
                ssize_t k = send(fd, p, len, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return false;
                p += k;
                len -= (size_t) k;
        }
        return true;
}

static void relay_cut(struct relay *r) {
        (void) shutdown(r->src_fd, SHUT_RDWR);
        (void) shutdown(r->dst_fd, SHUT_RDWR);
}

static void write_efd(int fd) {
        uint64_t one = 1;
        assert_int_equal(write(fd, &one, sizeof(one)), (ssize_t) sizeof(one));
}

/* The actions that need no record: true when the relay goes on forwarding. */
static bool act(struct relay *r) {
        switch (r->action) {
        case RA_CUT:
                relay_cut(r);
                return false;
        case RA_KILL_DST:
                (void) kill(r->dst_pid, SIGKILL);
                return true;
        case RA_KILL_BACKEND:
                (void) kill(r->dst_backend_pid, SIGKILL);
                return true;
        case RA_CANCEL_SRC:
                write_efd(r->cancel_src);
                sleep_ms(50); /* the cancel in flight while the record moves on */
                return true;
        case RA_CANCEL_DST:
                write_efd(r->cancel_dst);
                sleep_ms(50);
                return true;
        default:
                return true;
        }
}

static void mark_fired(struct relay *r) {
        pthread_mutex_lock(&r->lock);
        r->fired = true;
        r->end_at_fire = __atomic_load_n(&r->end_passed, __ATOMIC_ACQUIRE);
        pthread_mutex_unlock(&r->lock);
}

/* Flips a byte in the first page with data of a PAGES payload; false when every page is zero. */
static bool corrupt_pages(uint8_t *p, uint32_t len) {
        if (len < 4)
                return false;
        uint32_t count;
        memcpy(&count, p, 4);
        uint64_t data = 4u + 8u * (uint64_t) count;
        if (data >= len)
                return false;
        p[data + 1234] ^= 0x40;
        return true;
}

struct direction {
        struct relay *r;
        bool from_source;
};

/*
 * One direction, record by record; at the chosen record, the action.  Once
 * it stops forwarding (cut, hang, a dead peer) it still reads what the
 * sender wrote, without forwarding it: a hang as a black hole, otherwise
 * only what was queued before the cut (its end is shut down), so that the
 * test knows whether the source wrote END.
 */
static void *relay_thread(void *arg) {
        struct direction *d = arg;
        struct relay *r = d->r;
        int in = d->from_source ? r->src_fd : r->dst_fd, out = d->from_source ? r->dst_fd : r->src_fd;
        size_t cap = 0;
        uint8_t *buf = NULL;
        bool forwarding = true;
        for (;;) {
                uint8_t hdr[VHM_REC_HDR_SIZE];
                if (!read_full(in, hdr, sizeof(hdr)))
                        break;
                uint16_t type;
                uint32_t length;
                memcpy(&type, hdr, 2);
                memcpy(&length, hdr + 4, 4);
                if (length > cap) {
                        uint8_t *nb = realloc(buf, length);
                        if (!nb)
                                break;
                        buf = nb;
                        cap = length;
                }
                if (length && !read_full(in, buf, length))
                        break;
                if (d->from_source && type == VHM_REC_END)
                        __atomic_store_n(&r->end_sent, 1, __ATOMIC_RELEASE);
                if (!forwarding)
                        continue;
                if (r->corrupt_page && type == VHM_REC_PAGES && !r->corrupted)
                        r->corrupted = corrupt_pages(buf, length);
                bool ours = r->action != RA_NONE && type == r->record && !r->fired;
                if (ours) {
                        mark_fired(r);
                        if (r->action == RA_HANG) {
                                forwarding = false;
                                continue;
                        }
                        if (r->action == RA_BAD_TYPE) {
                                uint16_t bad = RECORD_BAD;
                                memcpy(hdr, &bad, 2);
                        }
                        if (!act(r)) {
                                forwarding = false;
                                continue;
                        }
                }
                if (!write_full(out, hdr, sizeof(hdr)) || (length && !write_full(out, buf, length))) {
                        /* The peer is gone: the sender sees it go too. */
                        (void) shutdown(in, SHUT_RDWR);
                        forwarding = false;
                        continue;
                }
                if (type == VHM_REC_END)
                        __atomic_store_n(&r->end_passed, 1, __ATOMIC_RELEASE);
                if (type == VHM_REC_COMMITTED)
                        __atomic_store_n(&r->committed_passed, 1, __ATOMIC_RELEASE);
                if (type == VHM_REC_ABORTED)
                        __atomic_store_n(&r->aborted_passed, 1, __ATOMIC_RELEASE);
        }
        free(buf);
        /* What one end closed, the other sees closed. */
        (void) shutdown(out, SHUT_WR);
        (void) shutdown(in, SHUT_RD);
        free(d);
        return NULL;
}

/* A notified request (SIGUSR1, blocked everywhere and taken here): the action, once. */
static void *trigger_thread(void *arg) {
        struct relay *r = arg;
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        for (;;) {
                struct pollfd p = { .fd = r->stop_efd, .events = POLLIN };
                if (poll(&p, 1, 0) > 0)
                        break;
                struct timespec ts = { .tv_nsec = 20000000L };
                if (sigtimedwait(&set, NULL, &ts) != SIGUSR1 || r->fired || r->record)
                        continue;
                mark_fired(r);
                (void) act(r);
        }
        return NULL;
}

static void relay_start(struct relay *r, int src_fd, int dst_fd) {
        r->src_fd = src_fd;
        r->dst_fd = dst_fd;
        r->stop_efd = eventfd(0, EFD_CLOEXEC);
        assert_true(r->stop_efd >= 0);
        assert_int_equal(pthread_mutex_init(&r->lock, NULL), 0);
        for (int i = 0; i < 2; i++) {
                struct direction *d = malloc(sizeof(*d));
                assert_non_null(d);
                *d = (struct direction){ .r = r, .from_source = i == 0 };
                assert_int_equal(pthread_create(i == 0 ? &r->fwd : &r->back, NULL, relay_thread, d), 0);
        }
        assert_int_equal(pthread_create(&r->trigger, NULL, trigger_thread, r), 0);
}

static void relay_stop(struct relay *r) {
        write_efd(r->stop_efd);
        relay_cut(r);
        /* A black hole's sender has returned: nothing more comes. */
        assert_int_equal(pthread_join(r->fwd, NULL), 0);
        assert_int_equal(pthread_join(r->back, NULL), 0);
        assert_int_equal(pthread_join(r->trigger, NULL), 0);
        close(r->src_fd);
        close(r->dst_fd);
        close(r->stop_efd);
        pthread_mutex_destroy(&r->lock);
}

/* ---- the two ends ------------------------------------------------------------------- */

static struct vhm_device_config net_config(const char *socket) {
        return (struct vhm_device_config){
                .socket = socket,
                .features = vhm_guest_driver_features(),
                .queue_pairs = 1,
                .timeout_ms = DEV_TIMEOUT_MS,
        };
}

/* The source: a guest with its rings on a running device (and logging, for a live row). */
static void source_new(struct cell *c) {
        struct vhm_guest_config gc = { .mem_size = GUEST_MEM, .queue_pairs = 1 };
        GD_CHECK(guest_vm_new("source", &gc, &c->g, &c->vm));
        struct vhm_device_config cfg = net_config(c->a.socket);
        GD_CHECK(guest_device_new(c->vm, c->g, &cfg, &c->dev, NULL));
        DEV_CHECK(c->dev, vhm_device_connect(c->dev));
        DEV_CHECK(c->dev, vhm_device_start(c->dev));
        assert_int_equal(vhm_guest_set_features(c->g, vhm_device_acked_features(c->dev)), 0);
        assert_true(vhm_guest_post_rx(c->g, 0) > 0);
        if (c->step->live) {
                assert_int_equal(vhm_logging_new(c->vm, &c->lg), 0);
                LOG_CHECK(c->lg, vhm_logging_add_device(c->lg, c->dev));
        }
}

static void source_free(struct cell *c) {
        vhm_logging_free(c->lg);
        vhm_device_free(c->dev);
        vhm_vm_free(c->vm);
        vhm_guest_free(c->g);
        c->lg = NULL;
        c->dev = NULL;
        c->vm = NULL;
        c->g = NULL;
}

/* Every fd but these closes: the child holds none of the source's (a back-end must see the source go). */
static void close_all_but(const int *keep, unsigned n) {
        int fds[1024];
        unsigned nfds = 0;
        DIR *d = opendir("/proc/self/fd");
        if (!d)
                _exit(90);
        struct dirent *de;
        while ((de = readdir(d)) && nfds < 1024)
                if (de->d_name[0] != '.')
                        fds[nfds++] = atoi(de->d_name);
        closedir(d);
        for (unsigned i = 0; i < nfds; i++) {
                bool kept = fds[i] <= 2;
                for (unsigned k = 0; k < n; k++)
                        kept = kept || fds[i] == keep[k];
                if (!kept)
                        close(fds[i]);
        }
}

/* The destination's memory (sealed memfd) and its incoming device; placeholder rings (DEVICE brings the real ones). */
static int destination_new(const char *socket, int *memfd, struct vhm_vm **vm, struct vhm_device **dev, int efd[4]) {
        *memfd = memfd_create("destination", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (*memfd < 0 || ftruncate(*memfd, (off_t) GUEST_MEM) < 0 || fcntl(*memfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return -errno;
        int r = vhm_vm_new("destination", vm);
        struct vhm_region_spec region = { .fd = *memfd, .guest_phys_addr = 0, .size = GUEST_MEM };
        if (r == 0)
                r = vhm_vm_add_region(*vm, &region);
        struct vhm_device_config cfg = net_config(socket);
        cfg.incoming = true;
        if (r == 0)
                r = vhm_device_new(*vm, &cfg, dev);
        for (unsigned q = 0; r == 0 && q < 2; q++) {
                efd[2 * q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                efd[2 * q + 1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                struct vhm_queue_spec spec = {
                        .size = 256,
                        .desc_gpa = 0x100000u + q * 0x10000u,
                        .avail_gpa = 0x101000u + q * 0x10000u,
                        .used_gpa = 0x102000u + q * 0x10000u,
                        .kick_fd = efd[2 * q],
                        .call_fd = efd[2 * q + 1],
                };
                r = vhm_device_set_queue(*dev, q, &spec);
        }
        if (r == 0)
                r = vhm_device_connect(*dev);
        return r;
}

/* The forked destination: its VM, the migration, a report on `report_fd`, exit. */
static void destination_main(const char *socket, int stream_fd, int report_fd, int cancel_fd, const char *token) {
        int keep[] = { stream_fd, report_fd, cancel_fd };
        close_all_but(keep, 3);
        /* The stream's fd is the engine's to close: it is not counted. */
        struct dst_result res = { .fds_before = count_open_fds() - 1, .maps_before = count_shared_mappings() };
        int memfd = -1, efd[4] = { -1, -1, -1, -1 };
        struct vhm_vm *vm = NULL;
        struct vhm_device *dev = NULL;
        struct vhm_migration_stats st;
        memset(&st, 0, sizeof(st));
        int r = destination_new(socket, &memfd, &vm, &dev, efd);
        if (r < 0) {
                snprintf(res.error, sizeof(res.error), "destination set-up: %s %s", strerror(-r),
                         dev ? vhm_device_error(dev) : "");
                close(stream_fd);
                res.rc = r;
                res.state = VHM_MIGRATION_NONE;
        } else {
                struct vhm_migrate_options o = { .timeout_ms = MIG_TIMEOUT_MS, .cancel_fd = cancel_fd };
                res.rc = vhm_migrate_incoming_opts(vm, &dev, 1, stream_fd, token, vhu_now_usec() + 10000000u, &o, &st);
                res.state = st.state;
                snprintf(res.error, sizeof(res.error), "%s", st.error);
                /* A back-end that hung at SEND_RARP lost its link: the VMM's reconnect finds it running again. */
                if (r == 0 && vhm_device_state(dev) == VHM_DEVICE_DISCONNECTED)
                        (void) vhm_device_reconnect(dev, 3000);
        }
        res.device_started = dev && vhm_device_state(dev) == VHM_DEVICE_RUNNING;
        vhm_device_free(dev);
        vhm_vm_free(vm);
        for (int i = 0; i < 4; i++)
                if (efd[i] >= 0)
                        close(efd[i]);
        if (memfd >= 0)
                close(memfd);
        res.fds_after = count_open_fds();
        res.maps_after = count_shared_mappings();
        ssize_t k = write(report_fd, &res, sizeof(res));
        _exit(k == (ssize_t) sizeof(res) ? 0 : 91);
}

/* ---- one cell ----------------------------------------------------------------------- */

static enum relay_action record_action(enum fault f) {
        static const enum relay_action a[F_COUNT] = { RA_KILL_BACKEND, RA_BAD_TYPE,   RA_HANG,    RA_CUT,
                                                      RA_CANCEL_SRC,   RA_CANCEL_DST, RA_KILL_DST };
        return a[f];
}

static enum relay_action notified_action(enum fault f) {
        return f == F_CUT          ? RA_CUT
               : f == F_CANCEL_SRC ? RA_CANCEL_SRC
               : f == F_CANCEL_DST ? RA_CANCEL_DST
                                   : RA_KILL_DST;
}

__attribute__((format(printf, 2, 3))) static void cell_fail(struct cell *c, const char *fmt, ...) {
        if (c->why[0])
                return; /* the first broken expectation is the one to read */
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->why, sizeof(c->why), fmt, ap);
        va_end(ap);
}

/* The destination's end: its report, or how it died (kill-d), within a bound. */
static void collect_destination(struct cell *c, pid_t pid, int report_fd) {
        struct pollfd p = { .fd = report_fd, .events = POLLIN };
        if (poll(&p, 1, 10000) > 0 && read(report_fd, &c->dr, sizeof(c->dr)) == (ssize_t) sizeof(c->dr))
                c->dst_reported = true;
        close(report_fd);
        int status = tb_wait_exit(pid, 5000);
        if (status == -ETIMEDOUT) {
                (void) kill(pid, SIGKILL);
                status = tb_wait_exit(pid, 5000);
                cell_fail(c, "the destination process did not end");
        }
        c->dst_status = status;
}

static bool fault_fired(const struct cell *c) {
        const struct step *s = c->step;
        if (s->where == AT_STREAM || c->fault > F_HANG)
                return c->relay.fired;
        char line[96];
        snprintf(line, sizeof(line), "FAULT %s %s", fault_names[c->fault], s->request);
        return tb_record_contains(s->where == AT_SOURCE ? c->a.record : c->b.record, line);
}

/* A source left stopped or disconnected by its own back-end must come back by reconnecting. */
static bool source_runs_again(struct cell *c, const unsigned idx[2]) {
        bool reconnected = false;
        if (vhm_device_state(c->dev) != VHM_DEVICE_RUNNING) {
                int status;
                if (waitpid(c->a.pid, &status, WNOHANG) == c->a.pid) { /* it died: a fresh one */
                        c->a.pid = 0;
                        assert_int_equal(spawn_backend(&c->a, NULL), 0);
                }
                int r = vhm_device_reconnect(c->dev, 3000);
                if (r < 0) {
                        cell_fail(c, "the source's device does not come back: %s", vhm_device_error(c->dev));
                        return false;
                }
                reconnected = true;
        }
        if (vhm_device_state(c->dev) != VHM_DEVICE_RUNNING)
                cell_fail(c, "the source's device is %s", vhm_device_state_name(vhm_device_state(c->dev)));
        for (unsigned q = 0; q < 2; q++)
                if (vhm_device_ring_index(c->dev, q) != idx[q])
                        cell_fail(c, "ring %u runs at %u, stopped at %u", q, vhm_device_ring_index(c->dev, q), idx[q]);
        if (c->lg && vhm_logging_active(c->lg))
                cell_fail(c, "logging stayed on after the rollback");
        return reconnected;
}

static void check_destination_clean(struct cell *c) {
        if (!c->dst_reported) {
                if (c->fault != F_KILL_DST)
                        cell_fail(c, "the destination died without a report (status 0x%x)", c->dst_status);
                return;
        }
        if (c->dr.state == VHM_MIGRATION_COMPLETED || c->dr.device_started)
                cell_fail(c, "the destination is %s with its device %s", vhm_migration_state_name(c->dr.state),
                          c->dr.device_started ? "started" : "not started");
}

static void check_destination_leaks(struct cell *c) {
        if (c->dst_reported && (c->dr.fds_after != c->dr.fds_before || c->dr.maps_after != c->dr.maps_before))
                cell_fail(c, "the destination kept fds %d -> %d, mappings %d -> %d", c->dr.fds_before, c->dr.fds_after,
                          c->dr.maps_before, c->dr.maps_after);
}

static bool starts_with_phase(const char *error) {
        static const char *const phases[] = { "setup: ", "active: ", "pre-switchover: ", "switchover: ", "restore: " };
        for (unsigned i = 0; i < sizeof(phases) / sizeof(phases[0]); i++)
                if (strncmp(error, phases[i], strlen(phases[i])) == 0)
                        return true;
        return false;
}

/* A request's or a record's name: where the failing end was when it noticed. */
static bool names_request_or_record(const char *error) {
        static const char *const names[] = {
                "HELLO",     "AUTH",    "PAGES", "DEVICE", "BACKEND_STATE",      "END",
                "COMMITTED", "ABORTED", "GET_",  "SET_",   "CHECK_DEVICE_STATE", "SEND_RARP"
        };
        for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (strstr(error, names[i]))
                        return true;
        return false;
}

/*
 * Each failing end's error starts with its phase and names the request or
 * record it was at; a back-end's own fault (die, nack, hang at a request)
 * is named by that request on one end or the other.  Other faults are
 * noticed where the end next touches what broke (a cut during
 * GET_VRING_BASE at the next PAGES), which is the name to give.
 */
static bool error_names_step(const struct cell *c) {
        /* VHM_MIGRATION_NONE: the test's own set-up of the destination failed, the engine never ran. */
        bool dst_failed = c->dst_reported && c->dr.state != VHM_MIGRATION_COMPLETED &&
                          c->dr.state != VHM_MIGRATION_NONE && c->dr.error[0];
        if (!starts_with_phase(c->st.error) || !names_request_or_record(c->st.error))
                return false;
        if (dst_failed && (!starts_with_phase(c->dr.error) || !names_request_or_record(c->dr.error)))
                return false;
        const struct step *s = c->step;
        if (s->where == AT_STREAM || c->fault > F_HANG)
                return true;
        return strstr(c->st.error, s->request) || (dst_failed && strstr(c->dr.error, s->request));
}

/* The outcome and every expectation of it. */
static void judge(struct cell *c, const unsigned idx[2]) {
        bool end_sent = __atomic_load_n(&c->relay.end_sent, __ATOMIC_ACQUIRE);
        bool fired = fault_fired(c);
        if (!fired)
                cell_fail(c, "the fault never fired");
        c->missed = !fired;
        switch (c->st.state) {
        case VHM_MIGRATION_FAILED:
        case VHM_MIGRATION_CANCELLED:
                c->outcome = source_runs_again(c, idx) ? "failed" : "rollback";
                check_destination_clean(c);
                break;
        case VHM_MIGRATION_POSTMIGRATE_UNKNOWN:
                c->outcome = "postmigrate-unknown";
                if (!end_sent)
                        cell_fail(c, "postmigrate-unknown, but the source never wrote END");
                if (vhm_device_state(c->dev) == VHM_DEVICE_RUNNING)
                        cell_fail(c, "postmigrate-unknown, but the source's device runs");
                if (c->dst_reported && c->dr.state != VHM_MIGRATION_COMPLETED)
                        check_destination_clean(c);
                break;
        case VHM_MIGRATION_COMPLETED:
                c->outcome = "completed";
                if (!c->step->after_commit && !(c->relay.fired && c->relay.end_at_fire))
                        cell_fail(c, "completed although the fault came before END");
                if (c->fault != F_KILL_DST && (!c->dst_reported || c->dr.state != VHM_MIGRATION_COMPLETED ||
                                               (!c->dr.device_started && c->fault != F_DIE)))
                        cell_fail(c, "the source completed, the destination did not");
                break;
        default:
                c->outcome = "?";
                cell_fail(c, "the source ended %s", vhm_migration_state_name(c->st.state));
        }
        check_destination_leaks(c);
        c->names_step = c->st.state == VHM_MIGRATION_COMPLETED || error_names_step(c);
}

static void cell_prepare(struct cell *c) {
        const struct step *s = c->step;
        char spec[96];
        backend_dirs(&c->a);
        backend_dirs(&c->b);
        bool backend_fault = s->where != AT_STREAM;
        if (backend_fault)
                backend_fault_spec(s, c->fault, spec, sizeof(spec));
        assert_int_equal(spawn_backend(&c->a, backend_fault && s->where == AT_SOURCE ? spec : NULL), 0);
        assert_int_equal(spawn_backend(&c->b, backend_fault && s->where == AT_DESTINATION ? spec : NULL), 0);
        struct relay *r = &c->relay;
        if (s->where == AT_STREAM) {
                r->record = s->record;
                r->action = record_action(c->fault);
        } else if (c->fault > F_HANG) {
                r->action = notified_action(c->fault);
        }
        r->dst_backend_pid = c->b.pid;
}

/* Runs one migration of the cell's kind; the destination forked, the stream through the relay. */
static void cell_migrate(struct cell *c) {
        int sv_src[2], sv_dst[2], report[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv_src), 0);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv_dst), 0);
        assert_int_equal(pipe2(report, O_CLOEXEC), 0);
        struct relay *r = &c->relay;
        r->cancel_src = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        r->cancel_dst = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        assert_true(r->cancel_src >= 0 && r->cancel_dst >= 0);
        const char *token = c->step->refused ? OTHER_TOKEN : TOKEN;
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                destination_main(c->b.socket, sv_dst[1], report[1], r->cancel_dst, token);
        close(sv_dst[1]);
        close(report[1]);
        r->dst_pid = pid;
        relay_start(r, sv_src[1], sv_dst[0]);

        /* A live row must reach its step: the default maximum downtime, scaled where memcheck slows the checksum. */
        struct vhm_migrate_options o = {
                .timeout_ms = MIG_TIMEOUT_MS,
                .cancel_fd = r->cancel_src,
                .live = c->step->live,
                .max_downtime_ms = scaled_downtime_ms(300),
        };
        c->src_rc = vhm_migrate_to(c->vm, c->lg, &c->dev, 1, sv_src[0], TOKEN, &o, &c->st);
        collect_destination(c, pid, report[0]);
        relay_stop(r);
        close(r->cancel_src);
        close(r->cancel_dst);
}

/* Drops a SIGUSR1 left pending by a notify that came after its cell's action. */
static void drain_usr1(void) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        struct timespec zero = { 0 };
        while (sigtimedwait(&set, NULL, &zero) == SIGUSR1)
                ;
}

static void run_cell(struct cell *c) {
        if (c->fault == F_NACK && c->step->cannot_refuse) {
                c->outcome = "n/a";
                c->names_step = true;
                return;
        }
        int fds0 = count_open_fds(), maps0 = count_shared_mappings();
        drain_usr1();
        cell_prepare(c);
        source_new(c);
        unsigned idx[2] = { vhm_device_ring_index(c->dev, 0), vhm_device_ring_index(c->dev, 1) };
        int fds1 = count_open_fds(), maps1 = count_shared_mappings();
        cell_migrate(c);
        judge(c, idx);
        /* A source that rolled back on its own connection holds what it held before. */
        if (c->outcome && strcmp(c->outcome, "rollback") == 0 &&
            (count_open_fds() != fds1 || count_shared_mappings() != maps1))
                cell_fail(c, "the source's fds %d -> %d, mappings %d -> %d across the migration", fds1,
                          count_open_fds(), maps1, count_shared_mappings());
        source_free(c);
        backend_remove(&c->a);
        backend_remove(&c->b);
        if (count_open_fds() != fds0 || count_shared_mappings() != maps0)
                cell_fail(c, "the test process kept fds %d -> %d, mappings %d -> %d", fds0, count_open_fds(), maps0,
                          count_shared_mappings());
}

/* ---- the matrix ------------------------------------------------------------------- */

static void block_usr1(void) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        assert_int_equal(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);
}

static void print_header(void) {
        printf("%-34s", "step \\ fault");
        for (unsigned f = 0; f < F_COUNT; f++)
                printf(" %-21s", fault_names[f]);
        printf("\n");
}

static void fault_matrix(void **state) {
        (void) state;
        block_usr1();
        bool strict = getenv("VHM_FAULT_MATRIX_STRICT_ERRORS") &&
                      strcmp(getenv("VHM_FAULT_MATRIX_STRICT_ERRORS"), "1") == 0;
        static struct cell cells[NSTEPS][F_COUNT];
        /* "STEP:FAULT" (indices): that cell alone, for debugging one. */
        const char *only = getenv("VHM_FAULT_MATRIX_CELL");
        unsigned failed = 0, unnamed = 0;
        for (unsigned s = 0; s < NSTEPS; s++)
                for (unsigned f = 0; f < F_COUNT; f++) {
                        struct cell *c = &cells[s][f];
                        memset(c, 0, sizeof(*c));
                        c->step = &steps[s];
                        c->fault = f;
                        c->names_step = true;
                        if (only && (strtoul(only, NULL, 10) != s || !strchr(only, ':') ||
                                     strtoul(strchr(only, ':') + 1, NULL, 10) != f)) {
                                c->outcome = "skipped";
                                continue;
                        }
                        run_cell(c);
                        if (c->missed) {
                                /*
                                 * Inconclusive, not failed: an earlier request timed out on a
                                 * loaded machine.  Once more; a second miss fails the cell.
                                 */
                                fprintf(stderr, "  %s x %s: the fault never fired (%s), once more\n", steps[s].label,
                                        fault_names[f], c->st.error);
                                memset(c, 0, sizeof(*c));
                                c->step = &steps[s];
                                c->fault = f;
                                c->names_step = true;
                                run_cell(c);
                        }
                        fprintf(stderr, "  %s x %s: %s%s%s\n    source: %s\n    destination: %s\n", steps[s].label,
                                fault_names[f], c->outcome ? c->outcome : "-", c->why[0] ? " FAIL " : "", c->why,
                                c->st.error, c->dst_reported ? c->dr.error : "(killed)");
                }
        printf("\nMigration fault matrix (source outcome; FAIL: an expectation broke; ?: the error does not name the "
               "step)\n");
        print_header();
        for (unsigned s = 0; s < NSTEPS; s++) {
                printf("%-34s", steps[s].label);
                for (unsigned f = 0; f < F_COUNT; f++) {
                        const struct cell *c = &cells[s][f];
                        char text[32];
                        snprintf(text, sizeof(text), "%s%s%s", c->why[0] ? "FAIL " : "", c->outcome ? c->outcome : "-",
                                 c->names_step ? "" : "?");
                        printf(" %-21s", text);
                }
                printf("\n");
        }
        printf("\n");
        for (unsigned s = 0; s < NSTEPS; s++)
                for (unsigned f = 0; f < F_COUNT; f++) {
                        const struct cell *c = &cells[s][f];
                        if (c->why[0]) {
                                failed++;
                                printf("FAIL %s x %s: %s\n  source: %s\n  destination: %s\n", steps[s].label,
                                       fault_names[f], c->why, c->st.error, c->dr.error);
                        }
                        if (!c->names_step) {
                                unnamed++;
                                printf("unnamed %s x %s: source \"%s\"; destination \"%s\"\n", steps[s].label,
                                       fault_names[f], c->st.error, c->dr.error);
                        }
                }
        printf("%u cells, %u failed, %u whose error does not name the phase and the step\n",
               (unsigned) (NSTEPS * F_COUNT), failed, unnamed);
        assert_int_equal(failed, 0);
        if (strict)
                assert_int_equal(unnamed, 0);
}

/*
 * A byte of a page flipped in flight inside a well-formed PAGES record: the
 * destination's checksum at END refuses the migration (ABORTED), nothing
 * runs there, and the source's device runs again at the indices it stopped
 * at, with what it held before.
 */
static void corrupted_page(bool live) {
        static const struct step kinds[2] = {
                { "s&c corrupted page", false, AT_STREAM, NULL, 0, 0, false, false, false },
                { "live corrupted page", true, AT_STREAM, NULL, 0, 0, false, false, false },
        };
        static struct cell cell;
        struct cell *c = &cell;
        memset(c, 0, sizeof(*c));
        c->step = &kinds[live];
        int fds0 = count_open_fds(), maps0 = count_shared_mappings();
        backend_dirs(&c->a);
        backend_dirs(&c->b);
        assert_int_equal(spawn_backend(&c->a, NULL), 0);
        assert_int_equal(spawn_backend(&c->b, NULL), 0);
        c->relay.corrupt_page = true;
        c->relay.dst_backend_pid = c->b.pid;
        source_new(c);
        unsigned idx[2] = { vhm_device_ring_index(c->dev, 0), vhm_device_ring_index(c->dev, 1) };
        int fds1 = count_open_fds(), maps1 = count_shared_mappings();
        cell_migrate(c);
        printf("%s: source %s: %s\n  destination %s: %s\n", c->step->label, vhm_migration_state_name(c->st.state),
               c->st.error, vhm_migration_state_name(c->dr.state), c->dr.error);
        assert_true(c->relay.corrupted);
        assert_true(__atomic_load_n(&c->relay.aborted_passed, __ATOMIC_ACQUIRE));
        assert_int_equal(c->st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(c->st.error, "the destination aborted"));
        assert_non_null(strstr(c->st.error, "checksum"));
        assert_true(c->dst_reported);
        assert_int_equal(c->dr.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(c->dr.error, "switchover: END: the memory checksum"));
        assert_false(c->dr.device_started);
        assert_false(source_runs_again(c, idx)); /* no reconnect: rolled back on its own connection */
        assert_string_equal(c->why, "");
        check_destination_leaks(c);
        assert_string_equal(c->why, "");
        assert_int_equal(count_open_fds(), fds1);
        assert_int_equal(count_shared_mappings(), maps1);
        source_free(c);
        backend_remove(&c->a);
        backend_remove(&c->b);
        assert_int_equal(count_open_fds(), fds0);
        assert_int_equal(count_shared_mappings(), maps0);
}

static void corrupted_page_stop_and_copy(void **state) {
        (void) state;
        corrupted_page(false);
}

static void corrupted_page_live(void **state) {
        (void) state;
        corrupted_page(true);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(corrupted_page_stop_and_copy),
                cmocka_unit_test(corrupted_page_live),
                cmocka_unit_test(fault_matrix),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
