/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The migration engine (migrate/migration.h) in one process: a source VM
 * whose synthetic guest runs traffic through DPDK testpmd, paused and
 * migrated (stop-and-copy) to a destination VM with its own memory, whose
 * incoming device sits on testpmd's second vhost port; the engine's two ends
 * run on two threads over a socketpair or a unix: transport.  The destination
 * guest then attaches to the migrated memory and goes on with the same
 * sequence numbers: equal checksums, nothing corrupted or duplicated, no more
 * lost than was in flight at the pause, exactly one RARP.
 *
 * Then the rollbacks, each leaving the source guest's traffic running: a
 * wrong token, another memory layout, a destination back-end (the project's
 * test back-end) lacking a feature the guest acked, the channel cut in the
 * middle of PAGES, a cancel in setup and in active; and a destination that
 * never answers END, which leaves the source stopped (postmigrate-unknown).
 *
 * Then two devices in one VM (one on testpmd with traffic, one on the test
 * back-end carrying its own state), the destination's back-end killed in
 * the middle of the stream, GUEST_ANNOUNCE (no RARP), the back-end's state
 * (BACKEND_STATE) between two test back-ends and the fs blocker, and the
 * VMM-carried variant: device state saved into a memfd and loaded by
 * another VM.  No test leaves an fd behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "migrate/device.h"
#include "migrate/logging.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "migrate/transport.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"
#include "proto/vhost-user.h"
#include "tests/common/check.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "tests/common/real-backends.h"
#include "daemon/guest/guest.h"

#define GUEST_MEM      (32ull << 20)
#define RUN_TIMEOUT_MS 60000
#define FRAMES_BEFORE  20000u
#define FRAMES_AFTER   20000u
#define TOKEN          "00112233445566778899aabbccddeeff"
#define OTHER_TOKEN    "ffeeddccbbaa99887766554433221100"

/* ---- the two VMs ------------------------------------------------------------------ */

struct side {
        struct vhm_guest *g;
        struct vhm_vm *vm;
        struct vhm_device *dev;
        struct vhm_device *dev2; /* a second device: the guest's queue pair 1 */
        int memfd;               /* destination: its own (empty) memory */
        struct vhm_logging *lg;  /* source, live: the VM's logging */
        int bitmap_fd;           /* source, live: the VMM's dirty bitmap */
        uint8_t *bitmap;         /* its mapping, where the test plays the VMM */
        size_t bitmap_len;
        int efd[2 * VHM_DEVICE_MAX_QUEUES];
        unsigned nqp;
};

/* Test back-ends of the tests that need two, each with a record. */
struct tbe {
        pid_t pid;
        char dir[64], socket[96], record[96];
};

static struct real_backend be;
static struct tbe tbs[2];
static pid_t tb_pid;
static char tb_dir[64];
static struct side src, dst;

static void side_init(struct side *s) {
        memset(s, 0, sizeof(*s));
        s->memfd = -1;
        s->bitmap_fd = -1;
        for (unsigned i = 0; i < 2 * VHM_DEVICE_MAX_QUEUES; i++)
                s->efd[i] = -1;
}

static void side_free(struct side *s) {
        vhm_logging_free(s->lg);
        if (s->bitmap)
                munmap(s->bitmap, s->bitmap_len);
        if (s->bitmap_fd >= 0)
                close(s->bitmap_fd);
        vhm_device_free(s->dev2);
        vhm_device_free(s->dev);
        vhm_vm_free(s->vm);
        vhm_guest_free(s->g);
        if (s->memfd >= 0)
                close(s->memfd);
        for (unsigned i = 0; i < 2 * VHM_DEVICE_MAX_QUEUES; i++)
                if (s->efd[i] >= 0)
                        close(s->efd[i]);
        side_init(s);
}

static uint64_t net_features(unsigned nqp) {
        uint64_t f = vhm_guest_driver_features();
        if (nqp > 1)
                f |= VHU_BIT(VHU_VF_NET_MQ);
        return f;
}

static struct vhm_guest_stats stats_of(const struct vhm_guest *g) {
        struct vhm_guest_stats s;
        assert_int_equal(vhm_guest_get_stats(g, VHM_GUEST_ALL_QPS, &s), 0);
        return s;
}

static uint64_t accounted(const struct vhm_guest_stats *s) {
        return s->received + s->lost + s->corrupted;
}

static void print_stats(const char *what, const struct vhm_guest_stats *s) {
        printf("  %-18s sent %" PRIu64 " received %" PRIu64 " lost %" PRIu64 " corrupted %" PRIu64
               " duplicated %" PRIu64 " rarp %" PRIu64 " other %" PRIu64 " bad_used %" PRIu64 "\n",
               what, s->sent, s->received, s->lost, s->corrupted, s->duplicated, s->rarp_seen, s->other, s->bad_used);
}

/* A net device's configuration: what the tests change (type, features) they change in a copy. */
static struct vhm_device_config net_config(unsigned nqp) {
        return (struct vhm_device_config){ .features = net_features(nqp), .queue_pairs = nqp, .timeout_ms = 5000 };
}

/* The source: a guest with traffic on a running device at `socket`, configured as base says. */
static void source_start_cfg(const char *socket, const struct vhm_device_config *base) {
        unsigned nqp = base->queue_pairs;
        src.nqp = nqp;
        struct vhm_guest_config gc = { .mem_size = GUEST_MEM, .queue_pairs = nqp };
        GD_CHECK(guest_vm_new("source", &gc, &src.g, &src.vm));
        struct vhm_device_config cfg = *base;
        cfg.socket = socket;
        GD_CHECK(guest_device_new(src.vm, src.g, &cfg, &src.dev, NULL));
        DEV_CHECK(src.dev, vhm_device_connect(src.dev));
        DEV_CHECK(src.dev, vhm_device_start(src.dev));
        assert_int_equal(vhm_guest_set_features(src.g, vhm_device_acked_features(src.dev)), 0);
        for (unsigned qp = 0; qp < nqp; qp++)
                assert_true(vhm_guest_post_rx(src.g, qp) > 0);
}

static void source_start(unsigned nqp, const char *socket) {
        struct vhm_device_config cfg = net_config(nqp);
        source_start_cfg(socket, &cfg);
}

/*
 * The destination: empty memory of mem_size (sealed, as the VM model wants a
 * memfd), and an incoming device at `socket` whose queues have fresh eventfds
 * and, as placeholders, the source guest's ring addresses (the DEVICE record
 * brings the real ones).
 */
static void destination_new_cfg(const char *socket, uint64_t mem_size, const struct vhm_device_config *base) {
        unsigned nqp = base->queue_pairs;
        dst.nqp = nqp;
        dst.memfd = memfd_create("destination", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(dst.memfd >= 0);
        assert_int_equal(ftruncate(dst.memfd, (off_t) mem_size), 0);
        assert_int_equal(fcntl(dst.memfd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        assert_int_equal(vhm_vm_new("destination", &dst.vm), 0);
        struct vhm_region_spec region = { .fd = dst.memfd, .guest_phys_addr = 0, .size = mem_size };
        if (vhm_vm_add_region(dst.vm, &region) < 0)
                fail_msg("destination region: %s", vhm_vm_error(dst.vm));
        struct vhm_device_config cfg = *base;
        cfg.socket = socket;
        cfg.incoming = true;
        assert_int_equal(vhm_device_new(dst.vm, &cfg, &dst.dev), 0);
        for (unsigned q = 0; q < 2 * nqp; q++) {
                struct vhm_guest_queue_layout l;
                assert_int_equal(vhm_guest_queue_layout(src.g, q, &l), 0);
                dst.efd[2 * q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                dst.efd[2 * q + 1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                struct vhm_queue_spec spec = {
                        .size = l.num,
                        .desc_gpa = l.desc_gpa,
                        .avail_gpa = l.avail_gpa,
                        .used_gpa = l.used_gpa,
                        .kick_fd = dst.efd[2 * q],
                        .call_fd = dst.efd[2 * q + 1],
                };
                DEV_CHECK(dst.dev, vhm_device_set_queue(dst.dev, q, &spec));
        }
        DEV_CHECK(dst.dev, vhm_device_connect(dst.dev));
        assert_int_equal(vhm_device_state(dst.dev), VHM_DEVICE_READY);
        /* Incoming: nothing starts it but a restore. */
        assert_int_equal(vhm_device_start(dst.dev), -EBUSY);
        assert_true(vhm_device_awaiting_restore(dst.dev));
}

static void destination_new(unsigned nqp, const char *socket, uint64_t mem_size) {
        struct vhm_device_config cfg = net_config(nqp);
        destination_new_cfg(socket, mem_size, &cfg);
}

/* ---- guest traffic ------------------------------------------------------------------ */

/*
 * Transmit until `total` frames were sent on every queue pair, receiving
 * meanwhile, with at most `window` frames in flight per queue pair: returns
 * with frames still in flight, as a guest paused at any moment would have.
 * Half a ring leaves room for a RARP among the echoes.
 */
static void drive_to(struct vhm_guest *g, unsigned nqp, uint64_t total_per_qp, unsigned window) {
        uint64_t deadline = now_ns() + scaled_ms(RUN_TIMEOUT_MS) * 1000000u;
        for (;;) {
                bool done = true;
                for (unsigned qp = 0; qp < nqp; qp++) {
                        assert_true(vhm_guest_reclaim_tx(g, qp) >= 0);
                        assert_true(vhm_guest_poll_rx(g, qp, 0) >= 0);
                        struct vhm_guest_stats s;
                        assert_int_equal(vhm_guest_get_stats(g, qp, &s), 0);
                        if (s.sent >= total_per_qp)
                                continue;
                        done = false;
                        uint64_t inflight = s.sent - accounted(&s);
                        if (inflight >= window)
                                continue;
                        uint64_t want = total_per_qp - s.sent;
                        if (want > window - inflight)
                                want = window - inflight;
                        assert_true(vhm_guest_tx(g, qp, want > 32 ? 32 : (unsigned) want) >= 0);
                }
                if (done)
                        return;
                if (now_ns() > deadline)
                        fail_msg("drive_to(%" PRIu64 "): stuck", total_per_qp);
        }
}

/* Receive until every frame sent is accounted for (or the time is up), then ms more. */
static void settle(struct vhm_guest *g, unsigned nqp, unsigned ms) {
        uint64_t deadline = now_ns() + scaled_ms(10000) * 1000000u;
        uint64_t end = 0;
        for (;;) {
                for (unsigned qp = 0; qp < nqp; qp++) {
                        assert_true(vhm_guest_reclaim_tx(g, qp) >= 0);
                        assert_true(vhm_guest_poll_rx(g, qp, 0) >= 0);
                }
                struct vhm_guest_stats s = stats_of(g);
                if (!end && accounted(&s) >= s.sent)
                        end = now_ns() + (uint64_t) ms * 1000000u;
                if ((end && now_ns() > end) || now_ns() > deadline)
                        return;
        }
}

static uint64_t per_qp_sent(const struct vhm_guest *g, unsigned qp) {
        struct vhm_guest_stats s;
        assert_int_equal(vhm_guest_get_stats(g, qp, &s), 0);
        return s.sent;
}

/*
 * `frames` more frames on every queue pair, then settled.  The window is
 * wider than the pause's (half a ring): when every frame in flight at the
 * pause was lost, new frames still go out and their echoes reveal the loss,
 * where the same window would wait on them for ever.  16 RX buffers stay
 * free for a RARP.
 */
static void more_traffic(struct vhm_guest *g, unsigned nqp, uint64_t frames) {
        uint64_t target = 0;
        for (unsigned qp = 0; qp < nqp; qp++)
                if (per_qp_sent(g, qp) > target)
                        target = per_qp_sent(g, qp);
        drive_to(g, nqp, target + frames, vhm_guest_ring_size(g) - 16);
        settle(g, nqp, 200);
}

/* What a rollback must leave: the source guest's traffic running, intact. */
static void assert_source_runs_again(const struct vhm_guest_stats *at_pause) {
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_RUNNING);
        more_traffic(src.g, src.nqp, 5000);
        struct vhm_guest_stats s = stats_of(src.g);
        print_stats("source after:", &s);
        assert_true(s.received >= at_pause->received + 5000u * src.nqp);
        assert_true(s.lost - at_pause->lost <= at_pause->sent - accounted(at_pause));
        assert_int_equal(s.corrupted, 0);
        assert_int_equal(s.duplicated, 0);
        assert_int_equal(s.bad_used, 0);
        assert_int_equal(s.other, 0);
        assert_int_equal(s.rarp_seen, 0);
        assert_int_equal(accounted(&s), s.sent);
}

/* ---- the engine's two ends ------------------------------------------------------------ */

struct incoming_job {
        pthread_t thread;
        int fd;        /* connected; or -1 with listen_fd */
        int listen_fd; /* unix: transport: accept first */
        const char *token;
        const struct vhm_migrate_options *o; /* NULL: the defaults */
        struct vhm_migration_stats st;
        int rc;
};

static void *incoming_thread(void *arg) {
        struct incoming_job *j = arg;
        if (j->fd < 0) {
                j->rc = vhm_transport_accept(j->listen_fd, vhu_now_usec() + scaled_ms(10000) * 1000u, -1, &j->fd);
                if (j->rc < 0) {
                        snprintf(j->st.error, sizeof(j->st.error), "accept: %s", strerror(-j->rc));
                        return NULL;
                }
        }
        struct vhm_device *devs[] = { dst.dev, dst.dev2 };
        /* The engine's wait for each record (10 s), scaled: a slow run's switchover hashes for longer. */
        struct vhm_migrate_options scaled = { .timeout_ms = (unsigned) scaled_ms(10000) };
        j->rc = vhm_migrate_incoming_opts(dst.vm, devs, dst.dev2 ? 2 : 1, j->fd, j->token,
                                          vhu_now_usec() + scaled_ms(30000) * 1000u, j->o ? j->o : &scaled, &j->st);
        return NULL;
}

/* `o` (NULL: the defaults) is set before the thread starts: it reads it at once. */
static void incoming_start(struct incoming_job *j, int fd, int listen_fd, const char *token,
                           const struct vhm_migrate_options *o) {
        memset(j, 0, sizeof(*j));
        j->fd = fd;
        j->listen_fd = listen_fd;
        j->token = token;
        j->o = o;
        assert_int_equal(pthread_create(&j->thread, NULL, incoming_thread, j), 0);
}

/* A stand-in destination: reads (up to cut_after bytes, 0: until EOF), answers nothing, closes. */
struct silent_peer {
        pthread_t thread;
        int fd;
        uint64_t cut_after, bytes;
};

static void *silent_thread(void *arg) {
        struct silent_peer *p = arg;
        static _Thread_local char buf[1 << 16];
        for (;;) {
                ssize_t k = read(p->fd, buf, sizeof(buf));
                if (k <= 0)
                        break;
                p->bytes += (uint64_t) k;
                if (p->cut_after && p->bytes >= p->cut_after)
                        break;
        }
        close(p->fd);
        return NULL;
}

static void silent_start(struct silent_peer *p, int fd, uint64_t cut_after) {
        memset(p, 0, sizeof(*p));
        p->fd = fd;
        p->cut_after = cut_after;
        assert_int_equal(pthread_create(&p->thread, NULL, silent_thread, p), 0);
}

static void make_pair(int sv[2]) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static int migrate_source(int fd, const char *token, const struct vhm_migrate_options *o,
                          struct vhm_migration_stats *st) {
        struct vhm_device *devs[] = { src.dev, src.dev2 };
        int r = vhm_migrate_to(src.vm, NULL, devs, src.dev2 ? 2 : 1, fd, token, o, st);
        printf("  source: %s (%d) in %" PRIu64 " ms, %" PRIu64 " pages (%" PRIu64 " zero), %" PRIu64 " bytes%s%s\n",
               vhm_migration_state_name(st->state), r, st->total_ms, st->pages_transferred, st->zero_pages,
               st->bytes_transferred, st->error[0] ? ": " : "", st->error);
        return r;
}

static void print_incoming(const struct incoming_job *j) {
        printf("  destination: %s (%d), downtime %" PRIu64 " ms, rarp %" PRIu64 "%s%s\n",
               vhm_migration_state_name(j->st.state), j->rc, j->st.downtime_ms, j->st.rarp_sent,
               j->st.error[0] ? ": " : "", j->st.error);
}

/* ---- set-up and tear-down ----------------------------------------------------------- */

static int setup(void **state) {
        (void) state;
        real_backend_init(&be);
        memset(tbs, 0, sizeof(tbs));
        tb_pid = 0;
        tb_dir[0] = '\0';
        side_init(&src);
        side_init(&dst);
        return 0;
}

static void stop_test_backend(void) {
        if (tb_pid > 0)
                (void) tb_stop(tb_pid);
        tb_pid = 0;
        if (tb_dir[0]) {
                char path[96];
                snprintf(path, sizeof(path), "%s/sock", tb_dir);
                unlink(path);
                rmdir(tb_dir);
                tb_dir[0] = '\0';
        }
}

static void tbe_start(struct tbe *t, struct tb_config *c) {
        memset(t, 0, sizeof(*t));
        snprintf(t->dir, sizeof(t->dir), "/tmp/vhostmig-migtb-XXXXXX");
        assert_non_null(mkdtemp(t->dir));
        snprintf(t->socket, sizeof(t->socket), "%s/sock", t->dir);
        snprintf(t->record, sizeof(t->record), "%s/record", t->dir);
        c->record_path = t->record;
        c->max_connections = 0;
        assert_int_equal(tb_spawn_listen(c, t->socket, &t->pid), 0);
}

static void tbe_stop(struct tbe *t) {
        if (t->pid > 0)
                (void) tb_stop(t->pid);
        if (t->dir[0]) {
                unlink(t->socket);
                unlink(t->record);
                rmdir(t->dir);
        }
        memset(t, 0, sizeof(*t));
}

static void stop_all(void) {
        (void) testpmd_cpus_restore();
        side_free(&dst);
        side_free(&src);
        stop_backend(&be);
        stop_test_backend();
        tbe_stop(&tbs[0]);
        tbe_stop(&tbs[1]);
}

static int teardown(void **state) {
        (void) state;
        stop_all();
        return 0;
}

/* What a test must give back: fds, and the mappings of guest memory and logs. */
struct baseline {
        int fds, mappings;
};

static struct baseline baseline_now(void) {
        return (struct baseline){ .fds = count_open_fds(), .mappings = count_shared_mappings() };
}

static void finish(struct baseline before) {
        stop_all();
        assert_int_equal(count_open_fds(), before.fds);
        assert_int_equal(count_shared_mappings(), before.mappings);
}

static void start_dpdk(unsigned nqp, unsigned flags) {
        assert_true(backend_available(TESTPMD_BIN));
        assert_int_equal(testpmd_cpus_restore(), 0);
        assert_int_equal(start_testpmd(&be, nqp, flags), 0);
        assert_int_equal(testpmd_cpus_avoid_worker(), 0);
}

/* The project's test back-end, offering `features`, with a fault ("REQ:KIND", NULL: none). */
static void start_test_backend_with(uint64_t features, const char *fault, char *socket, size_t len) {
        snprintf(tb_dir, sizeof(tb_dir), "/tmp/vhostmig-migtb-XXXXXX");
        assert_non_null(mkdtemp(tb_dir));
        snprintf(socket, len, "%s/sock", tb_dir);
        struct tb_config c;
        tb_config_init(&c);
        c.features = features;
        c.max_connections = 0;
        if (fault) {
                struct tb_fault f;
                assert_int_equal(tb_parse_fault(fault, &f), 0);
                assert_int_equal(tb_config_add_fault(&c, &f), 0);
        }
        assert_int_equal(tb_spawn_listen(&c, socket, &tb_pid), 0);
}

static void start_test_backend(uint64_t features, char *socket, size_t len) {
        start_test_backend_with(features, NULL, socket, len);
}

/* Source traffic up to the pause; returns the guest's counters at the pause. */
static struct vhm_guest_stats run_then_pause(void) {
        drive_to(src.g, src.nqp, FRAMES_BEFORE, vhm_guest_ring_size(src.g) / 2);
        struct vhm_guest_stats s = stats_of(src.g);
        printf("  paused with %" PRIu64 " of %" PRIu64 " frames in flight\n", s.sent - accounted(&s), s.sent);
        return s;
}

/* ---- migrations with traffic ------------------------------------------------- */

static bool log_mentions(const char *path, const char *needle) {
        FILE *f = fopen(path, "re");
        if (!f)
                return false;
        char line[512];
        bool found = false;
        while (!found && fgets(line, sizeof(line), f))
                found = strstr(line, needle) != NULL;
        fclose(f);
        return found;
}

/* The guest, attached to the migrated memory, goes on where it paused: nothing corrupted, one RARP. */
static void assert_destination_goes_on(const struct vhm_guest_stats *at_pause, unsigned nqp) {
        char err[256];
        assert_int_equal(vhm_guest_attach(dst.memfd, &dst.g, err, sizeof(err)), 0);
        struct vhm_guest_stats resumed = stats_of(dst.g);
        assert_int_equal(resumed.tx_seq, at_pause->tx_seq);
        assert_int_equal(resumed.sent, at_pause->sent);
        more_traffic(dst.g, nqp, FRAMES_AFTER);
        struct vhm_guest_stats s = stats_of(dst.g);
        print_stats("destination guest:", &s);
        uint64_t inflight = at_pause->sent - accounted(at_pause);
        printf("  %" PRIu64 " frames in flight at the pause, %" PRIu64 " lost\n", inflight, s.lost - at_pause->lost);
        assert_true(s.received >= at_pause->received + (uint64_t) FRAMES_AFTER * nqp - inflight);
        assert_true(s.lost - at_pause->lost <= inflight);
        assert_int_equal(s.corrupted, 0);
        assert_int_equal(s.duplicated, 0);
        assert_int_equal(s.bad_used, 0);
        assert_int_equal(s.other, 0);
        assert_int_equal(s.rarp_seen, 1);
        assert_int_equal(accounted(&s), s.sent);
}

/* How the two ends meet: a socketpair (NULL), or "unix" / "tcp" (TLS): a listener and a connection. */
struct link {
        int listen_fd;
        char bound[VHM_TRANSPORT_ADDRESS_MAX];
};

/* Starts the destination on its end of the link; returns the source's fd. */
static int link_up(struct link *l, const char *transport, struct incoming_job *in) {
        *l = (struct link){ .listen_fd = -1 };
        if (!transport) {
                int sv[2];
                make_pair(sv);
                incoming_start(in, sv[1], -1, TOKEN, NULL);
                return sv[0];
        }
        char address[160];
        if (strcmp(transport, "unix") == 0)
                snprintf(address, sizeof(address), "unix:%s/migration", be.dir);
        else
                snprintf(address, sizeof(address), "tcp:127.0.0.1:0");
        assert_int_equal(vhm_transport_listen(address, &l->listen_fd, l->bound, sizeof(l->bound)), 0);
        incoming_start(in, -1, l->listen_fd, TOKEN, NULL);
        int fd = -1;
        assert_int_equal(vhm_transport_connect(l->bound, vhu_now_usec() + 5000000u, -1, &fd), 0);
        return fd;
}

static void link_down(struct link *l) {
        if (l->listen_fd >= 0)
                vhm_transport_listen_close(l->listen_fd, l->bound);
        l->listen_fd = -1;
}

static void migrate_with_traffic(unsigned nqp, const char *transport) {
        struct baseline before = baseline_now();
        start_dpdk(nqp, TESTPMD_TWO_PORTS);
        source_start(nqp, be.socket);
        destination_new(nqp, be.socket2, GUEST_MEM);
        struct vhm_guest_stats at_pause = run_then_pause();

        struct incoming_job in;
        struct link link;
        int fd = link_up(&link, transport, &in);
        struct vhm_migration_stats st;
        uint64_t t0 = now_ns();
        int r = migrate_source(fd, TOKEN, NULL, &st);
        assert_int_equal(pthread_join(in.thread, NULL), 0);
        double ms = (double) (now_ns() - t0) / 1e6;
        print_incoming(&in);
        link_down(&link);
        assert_int_equal(r, 0);
        assert_int_equal(in.rc, 0);
        printf("  %u queue pair(s): %.1f ms from the pause to the destination running\n", nqp, ms);

        /* Both ends agree on what moved, and the source's image is what was checked. */
        assert_int_equal(st.state, VHM_MIGRATION_COMPLETED);
        assert_int_equal(in.st.state, VHM_MIGRATION_COMPLETED);
        assert_int_equal(st.role, VHM_MIGRATION_ROLE_SOURCE);
        assert_int_equal(in.st.role, VHM_MIGRATION_ROLE_DESTINATION);
        assert_int_equal(st.pages_total, GUEST_MEM / 4096);
        assert_int_equal(st.pages_transferred, st.pages_total);
        assert_int_equal(in.st.pages_transferred, st.pages_total);
        assert_int_equal(in.st.zero_pages, st.zero_pages);
        assert_true(st.zero_pages > 0);
        assert_int_equal(in.st.bytes_transferred, st.bytes_transferred);
        assert_true(st.checksum == in.st.checksum);
        uint64_t sum;
        assert_int_equal(vhm_memory_checksum(src.vm, &sum), 0);
        assert_true(sum == st.checksum);
        assert_int_equal(in.st.rarp_sent, 1);

        /* The source's device is gone from its back-end; the destination's runs. */
        assert_true(vhm_device_released(src.dev));
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_DISCONNECTED);
        assert_null(vhm_device_conn(src.dev));
        assert_int_equal(vhm_device_reconnect(src.dev, 100), -ESHUTDOWN);
        assert_int_equal(vhm_device_state(dst.dev), VHM_DEVICE_RUNNING);
        assert_false(vhm_device_awaiting_restore(dst.dev));
        for (unsigned q = 0; q < 2 * nqp; q++)
                assert_int_equal(vhm_device_ring_index(dst.dev, q), vhm_device_ring_index(src.dev, q));

        assert_destination_goes_on(&at_pause, nqp);

        /* testpmd saw the source's device go. */
        assert_true(log_mentions(be.log, "vhost peer closed"));
        finish(before);
}

static void migrate_one_queue_pair_unix(void **state) {
        (void) state;
        migrate_with_traffic(1, "unix");
}

/* tcp: runs TLS 1.3 keyed by the token; the migration is the same. */
static void migrate_one_queue_pair_tcp_tls(void **state) {
        (void) state;
        migrate_with_traffic(1, "tcp");
}

static void migrate_four_queue_pairs(void **state) {
        (void) state;
        migrate_with_traffic(4, NULL);
}

/* ---- live migration (pre-copy) ---------------------------------------------------- */

/*
 * The test plays the source guest's VMM: its vCPUs (the synthetic driver,
 * driven on this thread while the engine's rounds run on another) write the
 * state area, the rings and the TX buffers, and the VMM marks those pages in
 * its dirty bitmap; RX buffers are the back-end's to log.  A "workload" may
 * write (and mark) more.
 */
#define WORKLOAD_GPA  (20ull << 20)
#define FORGOTTEN_GPA (GUEST_MEM - 4096)

struct live_run {
        pthread_t thread;
        struct vhm_migrate_options o;
        struct vhm_migration_stats st;
        int rc;
        int state; /* atomic: the engine's last state */
        int continue_fd;
        uint64_t workload_bytes; /* written and marked on every step (heavy dirtying) */
        uint64_t burst_bytes;    /* written and marked once in round 0 */
        bool burst_done;
        bool never_continue;  /* a VMM that never calls MigrateContinue */
        bool forget_one_page; /* a VMM that writes a page at the pause without marking it */
        int fd;
        const char *transport; /* NULL: a socketpair; "unix", "tcp" (TLS) */
        bool silent;           /* the destination reads everything and never answers */
        /* The operator's cancel: written once the engine reports cancel_when with cancel_after_pages sent. */
        int cancel_fd;
        enum vhm_migration_state cancel_when;
        uint64_t cancel_after_pages;
        bool cancel_fired;
        bool timed_out; /* the drive's deadline passed: the link was cut to end both ends */
        /* Non-zero: the maximum downtime is this plus twice the checksum pass as timed here before the start. */
        unsigned downtime_over_checksum_ms;
};

static void vmm_mark(uint64_t gpa, uint64_t len) {
        for (uint64_t p = gpa / 4096; p <= (gpa + len - 1) / 4096; p++)
                __atomic_fetch_or(&src.bitmap[p / 8], (uint8_t) (1u << (p % 8)), __ATOMIC_RELEASE);
}

/* Every page the driver writes: everything below the first ring (its state), the rings, the TX buffers. */
static void vmm_mark_driver(void) {
        uint64_t lowest = GUEST_MEM;
        for (unsigned q = 0; q < 2 * src.nqp; q++) {
                struct vhm_guest_queue_layout l;
                assert_int_equal(vhm_guest_queue_layout(src.g, q, &l), 0);
                lowest = l.desc_gpa < lowest ? l.desc_gpa : lowest;
                vmm_mark(l.desc_gpa, 16u * l.num);
                vmm_mark(l.avail_gpa, 6u + 2u * l.num);
                vmm_mark(l.used_gpa, l.used_len);
                if (!l.is_rx)
                        vmm_mark(l.buf_gpa, (uint64_t) l.num * l.buf_size);
        }
        vmm_mark(0, lowest);
}

static void vmm_write(uint64_t gpa, uint64_t len, uint8_t seed, bool mark) {
        static uint8_t chunk[1 << 16];
        for (uint64_t off = 0; off < len; off += sizeof(chunk)) {
                memset(chunk, seed + (uint8_t) (off >> 16), sizeof(chunk));
                uint64_t k = len - off < sizeof(chunk) ? len - off : sizeof(chunk);
                assert_int_equal(vhm_vm_write(src.vm, gpa + off, chunk, k), 0);
        }
        if (mark)
                vmm_mark(gpa, len);
}

/* One step of full-speed traffic on every queue pair, at most half a ring in flight. */
static void traffic_step(unsigned window) {
        for (unsigned qp = 0; qp < src.nqp; qp++) {
                assert_true(vhm_guest_reclaim_tx(src.g, qp) >= 0);
                assert_true(vhm_guest_poll_rx(src.g, qp, 0) >= 0);
                struct vhm_guest_stats s;
                assert_int_equal(vhm_guest_get_stats(src.g, qp, &s), 0);
                uint64_t inflight = s.sent - accounted(&s);
                if (inflight < window)
                        assert_true(vhm_guest_tx(src.g, qp,
                                                 window - inflight > 32 ? 32 : (unsigned) (window - inflight)) >= 0);
        }
}

static void live_progress(const struct vhm_migration_stats *st, void *opaque) {
        struct live_run *run = opaque;
        __atomic_store_n(&run->state, (int) st->state, __ATOMIC_RELEASE);
        if (run->cancel_fd > 0 && !run->cancel_fired && st->state == run->cancel_when &&
            st->pages_transferred >= run->cancel_after_pages) {
                uint64_t one = 1;
                assert_int_equal(write(run->cancel_fd, &one, sizeof(one)), (ssize_t) sizeof(one));
                run->cancel_fired = true;
        }
}

static void *live_thread(void *arg) {
        struct live_run *run = arg;
        struct vhm_device *devs[] = { src.dev };
        run->rc = vhm_migrate_to(src.vm, src.lg, devs, 1, run->fd, TOKEN, &run->o, &run->st);
        __atomic_store_n(&run->state, -1, __ATOMIC_RELEASE);
        return NULL;
}

/* Logging for the source VM, and the VMM's dirty bitmap registered with it. */
static void source_live_logging(void) {
        assert_int_equal(vhm_logging_new(src.vm, &src.lg), 0);
        assert_int_equal(vhm_logging_add_device(src.lg, src.dev), 0);
        src.bitmap_len = GUEST_MEM / 4096 / 8;
        src.bitmap_fd = memfd_create("vmm-dirty", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(src.bitmap_fd >= 0);
        assert_int_equal(ftruncate(src.bitmap_fd, (off_t) src.bitmap_len), 0);
        /* Refused until sealed: the VMM could shrink it under the harvest. */
        assert_int_equal(vhm_logging_add_bitmap(src.lg, src.bitmap_fd), -EPERM);
        assert_non_null(strstr(vhm_logging_error(src.lg), "F_SEAL_SHRINK"));
        assert_int_equal(fcntl(src.bitmap_fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        src.bitmap = mmap(NULL, src.bitmap_len, PROT_READ | PROT_WRITE, MAP_SHARED, src.bitmap_fd, 0);
        assert_true(src.bitmap != MAP_FAILED);
        LOG_CHECK(src.lg, vhm_logging_add_bitmap(src.lg, src.bitmap_fd));
        assert_int_equal(vhm_logging_bitmap_sources(src.lg), 1);
}

/*
 * The guest runs at full speed while the engine copies; at pre-switchover the
 * VMM pauses it (the counters at that moment are returned) and continues.
 */
static struct vhm_guest_stats live_drive(struct live_run *run) {
        unsigned window = vhm_guest_ring_size(src.g) / 2;
        uint64_t deadline = now_ns() + scaled_ms(RUN_TIMEOUT_MS) * 1000000u;
        struct vhm_guest_stats at_pause = { 0 };
        bool paused = false;
        for (int state; (state = __atomic_load_n(&run->state, __ATOMIC_ACQUIRE)) != -1;) {
                /*
                 * Failing here would leave both ends' threads writing into
                 * the VMs teardown frees: cut the link so that they fail at
                 * once, and fail when live_migrate() has joined them.
                 */
                if (!run->timed_out && now_ns() >= deadline) {
                        run->timed_out = true;
                        shutdown(run->fd, SHUT_RDWR);
                }
                if (paused)
                        continue;
                if (state == VHM_MIGRATION_PRE_SWITCHOVER && !run->never_continue) {
                        vmm_mark_driver();
                        at_pause = stats_of(src.g);
                        if (run->forget_one_page)
                                vmm_write(FORGOTTEN_GPA, 8, 0x5a, false);
                        uint64_t one = 1;
                        assert_int_equal(write(run->continue_fd, &one, sizeof(one)), (ssize_t) sizeof(one));
                        paused = true;
                        continue;
                }
                traffic_step(window);
                vmm_mark_driver();
                if (state == VHM_MIGRATION_ACTIVE && run->burst_bytes && !run->burst_done) {
                        vmm_write(WORKLOAD_GPA, run->burst_bytes, 0x11, true);
                        run->burst_done = true;
                }
                if (state == VHM_MIGRATION_ACTIVE && run->workload_bytes)
                        vmm_write(WORKLOAD_GPA, run->workload_bytes, (uint8_t) now_ns(), true);
        }
        assert_int_equal(pthread_join(run->thread, NULL), 0);
        printf("  source: %s (%d) round %" PRIu64 ", %" PRIu64 " pages (%" PRIu64 " zero), %" PRIu64
               " pages/s dirtied, %" PRIu64 " B/s, expected downtime %" PRIu64 " ms, setup %" PRIu64
               " ms, downtime %" PRIu64 " ms%s%s\n",
               vhm_migration_state_name(run->st.state), run->rc, run->st.round, run->st.pages_transferred,
               run->st.zero_pages, run->st.dirty_rate, run->st.bandwidth, run->st.expected_downtime_ms,
               run->st.setup_ms, run->st.downtime_ms, run->st.error[0] ? ": " : "", run->st.error);
        return paused ? at_pause : stats_of(src.g);
}

/*
 * The switchover's pass over the source's memory, timed here (memcheck slows
 * it 40 times, a wait 10): the fastest of three, as the engine keeps its
 * fastest sample (a slow one is the machine's load).
 */
static unsigned checksum_pass_ms(void) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        uint64_t best = UINT64_MAX;
        for (unsigned i = 0; i < 3; i++) {
                uint64_t h, t0 = vhu_now_usec();
                assert_int_equal(vhm_memory_checksum_threads(src.vm, cpus > 1 ? (unsigned) cpus : 1u, &h), 0);
                uint64_t us = vhu_now_usec() - t0;
                best = us < best ? us : best;
        }
        return (unsigned) ((best + 999) / 1000);
}

/* A source with traffic, logging and a VMM bitmap; a destination; the live migration between them. */
static struct vhm_guest_stats live_migrate(unsigned nqp, struct live_run *run, struct incoming_job *in) {
        start_dpdk(nqp, TESTPMD_TWO_PORTS);
        source_start(nqp, be.socket);
        source_live_logging();
        destination_new(nqp, be.socket2, GUEST_MEM);
        more_traffic(src.g, nqp, 2000);
        struct link link = { .listen_fd = -1 };
        struct silent_peer peer;
        if (run->silent) {
                int sv[2];
                make_pair(sv);
                silent_start(&peer, sv[1], 0);
                run->fd = sv[0];
        } else {
                run->fd = link_up(&link, run->transport, in);
        }
        run->continue_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        assert_true(run->continue_fd >= 0);
        run->o.live = true;
        /*
         * The rounds here share two CPUs with testpmd's busy-polling core and
         * the guest's traffic, which stop at the pause: the bandwidth a late
         * round measures (a few hundred scattered pages) is a fraction of what
         * the switchover gets.  These tests are about the protocol, not the
         * bound (bench-migration measures the downtime), so unless a test sets
         * its own, a loaded machine gets 1 s of slack instead of 300 ms.
         */
        if (run->downtime_over_checksum_ms)
                run->o.max_downtime_ms = run->downtime_over_checksum_ms + 2 * checksum_pass_ms();
        else if (!run->o.max_downtime_ms)
                run->o.max_downtime_ms = scaled_downtime_ms(1000);
        /* The engine's wait for each record or answer (10 s), scaled: a slow run's switchover hashes for longer. */
        if (!run->o.timeout_ms)
                run->o.timeout_ms = (unsigned) scaled_ms(10000);
        run->o.cancel_fd = run->cancel_fd;
        run->o.continue_fd = run->continue_fd;
        run->o.progress = live_progress;
        run->o.opaque = run;
        run->state = VHM_MIGRATION_SETUP;
        assert_int_equal(pthread_create(&run->thread, NULL, live_thread, run), 0);
        struct vhm_guest_stats at_pause = live_drive(run);
        if (run->silent) {
                assert_int_equal(pthread_join(peer.thread, NULL), 0);
                memset(in, 0, sizeof(*in));
        } else {
                assert_int_equal(pthread_join(in->thread, NULL), 0);
                print_incoming(in);
        }
        link_down(&link);
        close(run->continue_fd);
        if (run->timed_out)
                fail_msg("the live migration had not ended after %" PRIu64 " ms (source: %s, destination: %s)",
                         scaled_ms(RUN_TIMEOUT_MS), run->st.error, in->st.error);
        return at_pause;
}

static void assert_live_completed(const struct live_run *run, const struct incoming_job *in,
                                  const struct vhm_guest_stats *at_pause, unsigned nqp) {
        assert_int_equal(run->rc, 0);
        assert_int_equal(in->rc, 0);
        assert_int_equal(run->st.state, VHM_MIGRATION_COMPLETED);
        assert_true(run->st.checksum == in->st.checksum);
        assert_int_equal(in->st.pages_transferred, run->st.pages_transferred);
        /* Round 0 alone is every page: the rounds after it and the last pages come on top. */
        assert_true(run->st.pages_transferred > run->st.pages_total);
        assert_true(run->st.bandwidth > 0);
        assert_int_equal(in->st.rarp_sent, 1);
        assert_false(vhm_logging_active(src.lg));
        assert_int_equal(vhm_device_state(dst.dev), VHM_DEVICE_RUNNING);
        assert_destination_goes_on(at_pause, nqp);
}

/* What a failed or cancelled live migration leaves: the source's rings running, logging off. */
static void assert_live_ended(const struct live_run *run, const struct incoming_job *in,
                              const struct vhm_guest_stats *at_pause, enum vhm_migration_state state, const char *why) {
        assert_true(run->rc < 0);
        assert_true(in->rc < 0);
        assert_int_equal(run->st.state, state);
        /* The destination tore down: nothing of it runs. */
        assert_int_not_equal(in->st.state, VHM_MIGRATION_COMPLETED);
        assert_int_not_equal(vhm_device_state(dst.dev), VHM_DEVICE_RUNNING);
        if (!strstr(run->st.error, why))
                fail_msg("the reason \"%s\" does not say \"%s\"", run->st.error, why);
        assert_false(vhm_logging_active(src.lg));
        assert_source_runs_again(at_pause);
}

static void assert_live_rolled_back(const struct live_run *run, const struct incoming_job *in,
                                    const struct vhm_guest_stats *at_pause, const char *why) {
        assert_live_ended(run, in, at_pause, VHM_MIGRATION_FAILED, why);
}

static void live_converges(unsigned nqp) {
        struct baseline before = baseline_now();
        struct live_run run = { 0 };
        struct incoming_job in;
        struct vhm_guest_stats at_pause = live_migrate(nqp, &run, &in);
        assert_live_completed(&run, &in, &at_pause, nqp);
        finish(before);
}

static void live_one_queue_pair(void **state) {
        (void) state;
        live_converges(1);
}

static void live_four_queue_pairs(void **state) {
        (void) state;
        live_converges(4);
}

/*
 * A limited bandwidth and 4 MiB the guest wrote during round 0: 500 ms at
 * 8 MiB/s (5 s under memcheck, whose limit is a tenth), more than the 300 ms
 * the maximum downtime leaves beside the checksum pass: round 1 is needed.
 */
static void live_limited_bandwidth_needs_rounds(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        uint64_t limit = (UINT64_C(8) << 20) / test_time_scale();
        struct live_run run = { .o.max_bandwidth = limit, .downtime_over_checksum_ms = 300, .burst_bytes = 4u << 20 };
        struct incoming_job in;
        struct vhm_guest_stats at_pause = live_migrate(1, &run, &in);
        assert_live_completed(&run, &in, &at_pause, 1);
        assert_true(run.st.round >= 1);
        /* Throttled: no round moved much faster than the limit. */
        assert_true(run.st.bandwidth <= limit / 8 * 9);
        /*
         * Both ends count the downtime from the source's pause (the rounds took
         * seconds before it): they differ only by END's and COMMITTED's transit
         * and the RARP.
         */
        printf("  downtime: source %" PRIu64 " ms, destination %" PRIu64 " ms, total %" PRIu64 " ms\n",
               run.st.downtime_ms, in.st.downtime_ms, run.st.total_ms);
        assert_true(run.st.total_ms > run.st.downtime_ms + 500);
        assert_true(in.st.downtime_ms + scaled_ms(100) >= run.st.downtime_ms &&
                    in.st.downtime_ms <= run.st.downtime_ms + scaled_ms(100));
        finish(before);
}

/* 8 MiB rewritten on every step at 4 MiB/s: two rounds cannot converge. */
static void live_does_not_converge(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct live_run run = {
                .o.max_bandwidth = 4u << 20, .o.max_rounds = 2, .o.max_downtime_ms = 1000, .workload_bytes = 8u << 20
        };
        struct incoming_job in;
        struct vhm_guest_stats at_pause = live_migrate(1, &run, &in);
        assert_live_rolled_back(&run, &in, &at_pause, "did not converge in 2 rounds");
        assert_non_null(strstr(run.st.error, "pages/s"));
        assert_non_null(strstr(run.st.error, "MB/s"));
        assert_true(run.st.dirty_rate > 0);
        assert_int_equal(run.st.round, 1);
        finish(before);
}

/*
 * A maximum downtime shorter than the switchover's checksum of the 32 MiB:
 * the estimate counts that pass, so no round converges, and the reason says
 * how much of the estimate it is.
 */
static void live_checksum_counts_in_the_estimate(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct live_run run = { .o.max_downtime_ms = 1, .o.max_rounds = 3 };
        struct incoming_job in;
        struct vhm_guest_stats at_pause = live_migrate(1, &run, &in);
        assert_live_rolled_back(&run, &in, &at_pause, "did not converge in 3 rounds");
        const char *part = strstr(run.st.error, "the checksum of the whole memory at the switchover (");
        assert_non_null(part);
        unsigned long long checksum_ms = strtoull(part + strlen("the checksum of the whole memory at the switchover ("),
                                                  NULL, 10);
        printf("  checksum part of the estimate: %llu ms of %" PRIu64 " ms\n", checksum_ms,
               run.st.expected_downtime_ms);
        assert_true(checksum_ms >= 1);
        assert_true(run.st.expected_downtime_ms >= checksum_ms);
        finish(before);
}

static void live_forced_switchover(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct live_run run = { .o.max_bandwidth = 4u << 20,
                                .o.max_rounds = 2,
                                .o.max_downtime_ms = 1000,
                                .o.force_switchover = true,
                                .workload_bytes = 8u << 20 };
        struct incoming_job in;
        struct vhm_guest_stats at_pause = live_migrate(1, &run, &in);
        assert_true(run.st.expected_downtime_ms > run.o.max_downtime_ms);
        assert_live_completed(&run, &in, &at_pause, 1);
        finish(before);
}

static void live_vmm_never_continues(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct live_run run = { .o.pause_timeout_ms = 500, .never_continue = true };
        struct incoming_job in;
        struct vhm_guest_stats at_pause = live_migrate(1, &run, &in);
        assert_live_rolled_back(&run, &in, &at_pause, "did not pause its vCPUs within 500 ms");
        finish(before);
}

/* The VMM writes a page at the pause and forgets to mark it: END's checksum refuses the migration. */
static void live_unmarked_page_is_caught(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct live_run run = { .forget_one_page = true };
        struct incoming_job in;
        struct vhm_guest_stats at_pause = live_migrate(1, &run, &in);
        assert_live_rolled_back(&run, &in, &at_pause, "checksum");
        assert_non_null(strstr(in.st.error, "checksum"));
        finish(before);
}

/* Live over tcp: (TLS 1.3 keyed by the token) with traffic through DPDK. */
static void live_tcp_tls(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct live_run run = { .transport = "tcp" };
        struct incoming_job in;
        struct vhm_guest_stats at_pause = live_migrate(1, &run, &in);
        assert_live_completed(&run, &in, &at_pause, 1);
        finish(before);
}

/* A cancel in a phase of a live migration; the rounds last (4 MiB/s for 32 MiB), the VMM may never continue. */
static void live_cancelled_in(enum vhm_migration_state when, uint64_t after_pages, bool never_continue) {
        struct baseline before = baseline_now();
        struct live_run run = { .cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                                .cancel_when = when,
                                .cancel_after_pages = after_pages,
                                .never_continue = never_continue };
        assert_true(run.cancel_fd >= 0);
        if (when == VHM_MIGRATION_ACTIVE)
                run.o.max_bandwidth = 4u << 20;
        struct incoming_job in;
        uint64_t t0 = now_ms();
        struct vhm_guest_stats at_pause = live_migrate(1, &run, &in);
        close(run.cancel_fd);
        assert_true(run.cancel_fired);
        assert_int_equal(run.rc, -ECANCELED);
        /* Not the pause's timeout (10 s) nor the whole round: the cancel ended it. */
        assert_true(now_ms() - t0 < scaled_ms(6000));
        assert_non_null(strstr(run.st.error, "cancelled"));
        if (when == VHM_MIGRATION_ACTIVE)
                assert_true(run.st.pages_transferred >= after_pages && run.st.pages_transferred < run.st.pages_total);
        assert_live_ended(&run, &in, &at_pause, VHM_MIGRATION_CANCELLED, "cancelled");
        finish(before);
}

static void live_cancel_in_rounds(void **state) {
        (void) state;
        live_cancelled_in(VHM_MIGRATION_ACTIVE, 1024, false);
}

static void live_cancel_in_pre_switchover(void **state) {
        (void) state;
        live_cancelled_in(VHM_MIGRATION_PRE_SWITCHOVER, 0, true);
}

/* END went out and no answer came: the rings stay stopped and the engine's logging is off all the same. */
static void live_no_answer_after_end_logging_off(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        /* The wait for the answer, scaled: a slow run also writes the last pages to the silent peer slower. */
        struct live_run run = { .silent = true, .o.timeout_ms = (unsigned) scaled_ms(1000) };
        struct incoming_job in;
        (void) live_migrate(1, &run, &in);
        assert_int_equal(run.rc, -ETIMEDOUT);
        assert_int_equal(run.st.state, VHM_MIGRATION_POSTMIGRATE_UNKNOWN);
        assert_false(vhm_logging_active(src.lg));
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_STOPPED);
        assert_false(vhm_device_released(src.dev));
        finish(before);
}

/* ---- the destination refuses ---------------------------------------------------- */

/* A source on testpmd, a destination on the test back-end, a refusal, the source runs on. */
/* A refused migration over a socketpair, or over tcp: (then TLS) when `tcp`. */
static void refused_over(bool tcp, uint64_t dst_features, uint64_t dst_mem, const char *src_token, const char *why) {
        struct baseline before = baseline_now();
        start_dpdk(1, 0);
        source_start(1, be.socket);
        char socket[96];
        start_test_backend(dst_features, socket, sizeof(socket));
        destination_new(1, socket, dst_mem);
        struct vhm_guest_stats at_pause = run_then_pause();

        struct incoming_job in;
        struct link link;
        int fd = link_up(&link, tcp ? "tcp" : NULL, &in);
        struct vhm_migration_stats st;
        int r = migrate_source(fd, src_token, NULL, &st);
        assert_int_equal(pthread_join(in.thread, NULL), 0);
        print_incoming(&in);
        link_down(&link);

        assert_true(in.rc < 0);
        assert_int_equal(in.st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(in.st.error, why));
        assert_true(r < 0);
        assert_int_equal(st.state, VHM_MIGRATION_FAILED);
        /* The source learnt why. */
        assert_non_null(strstr(st.error, why));
        /* Nothing started at the destination: the device still waits, connected. */
        assert_int_equal(vhm_device_state(dst.dev), VHM_DEVICE_READY);
        assert_true(vhm_device_awaiting_restore(dst.dev));
        assert_int_equal(vhm_device_stats(dst.dev)->starts, 0);

        assert_source_runs_again(&at_pause);
        finish(before);
}

static void refused(uint64_t dst_features, uint64_t dst_mem, const char *src_token, const char *why) {
        refused_over(false, dst_features, dst_mem, src_token, why);
}

static void rollback_wrong_token(void **state) {
        (void) state;
        refused(TB_DEFAULT_FEATURES, GUEST_MEM, OTHER_TOKEN, "wrong token");
}

/* Over tcp: the token is TLS's pre-shared key: a source without it fails the handshake, before HELLO. */
static void rollback_wrong_token_tls(void **state) {
        (void) state;
        refused_over(true, TB_DEFAULT_FEATURES, GUEST_MEM, OTHER_TOKEN, "does not hold the token");
}

static void rollback_layout_mismatch(void **state) {
        (void) state;
        refused(TB_DEFAULT_FEATURES, 2 * GUEST_MEM, TOKEN, "memory layout");
}

static void rollback_missing_feature(void **state) {
        (void) state;
        refused(TB_DEFAULT_FEATURES & ~VHU_BIT(VHU_VF_RING_EVENT_IDX), GUEST_MEM, TOKEN, "RING_EVENT_IDX");
}

/*
 * The destination's back-end closes the connection in the middle of the
 * restore: the destination aborts and nothing stays started there (the
 * device is connected again, waiting); the source runs again.
 */
static void rollback_restore_fails(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        start_dpdk(1, 0);
        source_start(1, be.socket);
        char socket[96];
        start_test_backend_with(TB_DEFAULT_FEATURES, "SET_VRING_KICK:close", socket, sizeof(socket));
        destination_new(1, socket, GUEST_MEM);
        struct vhm_guest_stats at_pause = run_then_pause();

        int sv[2];
        make_pair(sv);
        struct incoming_job in;
        incoming_start(&in, sv[1], -1, TOKEN, NULL);
        struct vhm_migration_stats st;
        int r = migrate_source(sv[0], TOKEN, NULL, &st);
        assert_int_equal(pthread_join(in.thread, NULL), 0);
        print_incoming(&in);
        assert_true(in.rc < 0);
        assert_int_equal(in.st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(in.st.error, "restoring device 0"));
        assert_true(r < 0);
        assert_int_equal(st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(st.error, "restoring device 0"));

        assert_int_equal(vhm_device_state(dst.dev), VHM_DEVICE_READY);
        assert_true(vhm_device_awaiting_restore(dst.dev));
        assert_int_equal(vhm_device_stats(dst.dev)->starts, 0);
        assert_int_equal(vhm_device_stats(dst.dev)->connects, 2);
        assert_int_equal(vhm_device_start(dst.dev), -EBUSY);

        assert_source_runs_again(&at_pause);
        finish(before);
}

/*
 * The source's back-end goes away as its rings are stopped: the migration
 * fails, and the device resumes from the guest's used rings once its
 * back-end is back (the test back-end serves the next connection).
 */
static void rollback_source_backend_lost_at_stop(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        char socket[96];
        start_test_backend_with(TB_DEFAULT_FEATURES, "GET_VRING_BASE:close", socket, sizeof(socket));
        source_start(1, socket);
        int sv[2];
        make_pair(sv);
        struct silent_peer peer;
        silent_start(&peer, sv[1], 0);
        struct vhm_migration_stats st;
        int r = migrate_source(sv[0], TOKEN, NULL, &st);
        assert_int_equal(pthread_join(peer.thread, NULL), 0);
        assert_true(r < 0);
        assert_int_equal(st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(st.error, "stopping device 0"));
        assert_int_equal(st.pages_transferred, 0);
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_DISCONNECTED);
        DEV_CHECK(src.dev, vhm_device_reconnect(src.dev, 2000));
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_stats(src.dev)->starts, 2);
        finish(before);
}

/* ---- the channel, cancels, no answer --------------------------------------------- */

struct canceller {
        int efd;
        enum vhm_migration_state when;
        uint64_t after_pages;
        bool fired;
};

static void cancel_on_progress(const struct vhm_migration_stats *st, void *opaque) {
        struct canceller *c = opaque;
        if (c->fired || st->state != c->when || st->pages_transferred < c->after_pages)
                return;
        uint64_t one = 1;
        assert_int_equal(write(c->efd, &one, sizeof(one)), sizeof(one));
        c->fired = true;
}

/*
 * A source migrating to a stand-in destination that reads (cut_after bytes,
 * or everything) and never answers, with options o; returns the source's rc.
 */
static int against_silent_peer(uint64_t cut_after, const struct vhm_migrate_options *o, struct vhm_migration_stats *st,
                               struct vhm_guest_stats *at_pause) {
        start_dpdk(1, 0);
        source_start(1, be.socket);
        *at_pause = run_then_pause();
        int sv[2];
        make_pair(sv);
        struct silent_peer peer;
        silent_start(&peer, sv[1], cut_after);
        int r = migrate_source(sv[0], TOKEN, o, st);
        assert_int_equal(pthread_join(peer.thread, NULL), 0);
        printf("  the stand-in destination read %" PRIu64 " bytes\n", peer.bytes);
        return r;
}

static void rollback_channel_cut_mid_pages(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct vhm_migration_stats st;
        struct vhm_guest_stats at_pause;
        int r = against_silent_peer(256u << 10, NULL, &st, &at_pause);
        assert_true(r < 0);
        assert_int_equal(st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(st.error, "PAGES"));
        assert_true(st.pages_transferred < st.pages_total);
        assert_source_runs_again(&at_pause);
        finish(before);
}

static void cancelled_in(enum vhm_migration_state when, uint64_t after_pages) {
        struct baseline before = baseline_now();
        struct canceller c = { .efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                               .when = when,
                               .after_pages = after_pages };
        assert_true(c.efd >= 0);
        struct vhm_migrate_options o = { .cancel_fd = c.efd, .progress = cancel_on_progress, .opaque = &c };
        struct vhm_migration_stats st;
        struct vhm_guest_stats at_pause;
        int r = against_silent_peer(0, &o, &st, &at_pause);
        close(c.efd);
        assert_true(c.fired);
        assert_int_equal(r, -ECANCELED);
        assert_int_equal(st.state, VHM_MIGRATION_CANCELLED);
        assert_non_null(strstr(st.error, "cancelled"));
        if (when == VHM_MIGRATION_ACTIVE)
                assert_true(st.pages_transferred >= after_pages && st.pages_transferred < st.pages_total);
        else
                assert_int_equal(st.pages_transferred, 0);
        assert_source_runs_again(&at_pause);
        finish(before);
}

static void rollback_cancel_in_setup(void **state) {
        (void) state;
        cancelled_in(VHM_MIGRATION_SETUP, 0);
}

static void rollback_cancel_in_active(void **state) {
        (void) state;
        cancelled_in(VHM_MIGRATION_ACTIVE, 2048);
}

static void no_answer_after_end(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct vhm_migrate_options o = { .timeout_ms = 1000 };
        struct vhm_migration_stats st;
        struct vhm_guest_stats at_pause;
        uint64_t t0 = now_ms();
        int r = against_silent_peer(0, &o, &st, &at_pause);
        assert_true(now_ms() - t0 < 30000);
        assert_int_equal(r, -ETIMEDOUT);
        assert_int_equal(st.state, VHM_MIGRATION_POSTMIGRATE_UNKNOWN);
        assert_int_equal(st.pages_transferred, st.pages_total);

        /* Never resumed on its own: what the guest sends now stays in its ring. */
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_STOPPED);
        assert_false(vhm_device_released(src.dev));
        uint16_t avail, used_before, used_after;
        assert_int_equal(vhm_guest_queue_indices(src.g, 1, &avail, &used_before), 0);
        assert_int_equal(vhm_guest_tx(src.g, 0, 8), 8);
        sleep_ms(200);
        assert_int_equal(vhm_guest_queue_indices(src.g, 1, &avail, &used_after), 0);
        assert_int_equal(used_after, used_before);
        finish(before);
}

/* ---- two devices, a killed back-end, announcements ------------------------------------ */

/*
 * A device of vm on the guest's queue pair `qp` (the layout of `layout`'s
 * rings), with the guest's own eventfds, or fresh ones kept in efd[0..3].
 */
static struct vhm_device *device_on(struct vhm_vm *vm, const struct vhm_guest *layout, unsigned qp, const char *socket,
                                    const struct vhm_device_config *base, int *efd) {
        struct vhm_device_config cfg = *base;
        cfg.socket = socket;
        cfg.queue_pairs = 1;
        struct vhm_device *dev;
        assert_int_equal(vhm_device_new(vm, &cfg, &dev), 0);
        for (unsigned q = 0; q < 2; q++) {
                struct vhm_guest_queue_layout l;
                assert_int_equal(vhm_guest_queue_layout(layout, 2 * qp + q, &l), 0);
                if (efd) {
                        l.kick_fd = efd[2 * q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                        l.call_fd = efd[2 * q + 1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                }
                struct vhm_queue_spec spec = {
                        .size = l.num,
                        .desc_gpa = l.desc_gpa,
                        .avail_gpa = l.avail_gpa,
                        .used_gpa = l.used_gpa,
                        .kick_fd = l.kick_fd,
                        .call_fd = l.call_fd,
                };
                DEV_CHECK(dev, vhm_device_set_queue(dev, q, &spec));
        }
        return dev;
}

/* A source guest of two queue pairs: a net device with traffic on pair 0 at socket1, another (cfg2) on pair 1. */
static void source_two_devices(const char *socket1, const char *socket2, const struct vhm_device_config *cfg2) {
        src.nqp = 1; /* the pair with traffic */
        struct vhm_guest_config gc = { .mem_size = GUEST_MEM, .queue_pairs = 2 };
        GD_CHECK(guest_vm_new("source", &gc, &src.g, &src.vm));
        struct vhm_device_config cfg = net_config(1);
        cfg.socket = socket1;
        GD_CHECK(guest_device_new(src.vm, src.g, &cfg, &src.dev, NULL));
        src.dev2 = device_on(src.vm, src.g, 1, socket2, cfg2, NULL);
        DEV_CHECK(src.dev, vhm_device_connect(src.dev));
        DEV_CHECK(src.dev, vhm_device_start(src.dev));
        DEV_CHECK(src.dev2, vhm_device_connect(src.dev2));
        DEV_CHECK(src.dev2, vhm_device_start(src.dev2));
        assert_int_equal(vhm_guest_set_features(src.g, vhm_device_acked_features(src.dev)), 0);
        assert_true(vhm_guest_post_rx(src.g, 0) > 0);
}

static void destination_two_devices(const char *socket1, const char *socket2, const struct vhm_device_config *cfg2) {
        destination_new(1, socket1, GUEST_MEM);
        struct vhm_device_config c = *cfg2;
        c.incoming = true;
        dst.dev2 = device_on(dst.vm, src.g, 1, socket2, &c, &dst.efd[2 * VHM_DEVICE_MAX_QUEUES - 4]);
        DEV_CHECK(dst.dev2, vhm_device_connect(dst.dev2));
}

/* One migration over a socketpair; both ends' results. */
static void migrate_pair(struct incoming_job *in, const struct vhm_migrate_options *dst_o,
                         struct vhm_migration_stats *st, int *r) {
        int sv[2];
        make_pair(sv);
        incoming_start(in, sv[1], -1, TOKEN, dst_o);
        *r = migrate_source(sv[0], TOKEN, NULL, st);
        assert_int_equal(pthread_join(in->thread, NULL), 0);
        print_incoming(in);
}

/* The record line a test back-end writes for a blob of `len` bytes made from `seed`. */
static void state_line(char *buf, size_t size, const char *what, uint32_t seed, size_t len) {
        uint8_t *blob = malloc(len ? len : 1);
        assert_non_null(blob);
        tb_device_state_fill(seed, blob, len);
        snprintf(buf, size, "DEVICE_STATE %s bytes=%zu hash=0x%016" PRIx64, what, len, tb_device_state_hash(blob, len));
        free(blob);
}

/* The source's back-end saved the blob of (seed, len) and the destination's loaded it, byte for byte. */
static void assert_state_moved(const struct tbe *from, const struct tbe *to, uint32_t seed, size_t len) {
        char line[128];
        state_line(line, sizeof(line), "saved", seed, len);
        assert_true(tb_record_contains(from->record, line));
        state_line(line, sizeof(line), "loaded", seed, len);
        assert_true(tb_record_contains(to->record, line));
        assert_int_equal(tb_record_count(to->record, "VIOLATION"), 0);
        assert_int_equal(tb_record_count(from->record, "VIOLATION"), 0);
}

static struct vhm_device_config fs_config(void) {
        struct vhm_device_config c = net_config(1);
        c.type = VHM_DEVICE_TYPE_FS;
        return c;
}

static void start_state_backends(uint32_t seed, size_t len) {
        struct tb_config c;
        tb_config_init(&c);
        c.device_state_size = len;
        c.device_state_seed = seed;
        tbe_start(&tbs[0], &c);
        tb_config_init(&c);
        tbe_start(&tbs[1], &c);
}

/*
 * Two devices in one VM: a net device with traffic through testpmd and an
 * fs device on the test back-end whose state (3 MiB, several BACKEND_STATE
 * chunks) moves to the destination's test back-end.
 */
static void migrate_two_devices_with_traffic(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        const size_t blob_len = (3u << 20) + 5;
        start_dpdk(1, TESTPMD_TWO_PORTS);
        start_state_backends(7, blob_len);
        struct vhm_device_config fs = fs_config();
        source_two_devices(be.socket, tbs[0].socket, &fs);
        destination_two_devices(be.socket2, tbs[1].socket, &fs);
        struct vhm_guest_stats at_pause = run_then_pause();

        struct incoming_job in;
        struct vhm_migration_stats st;
        int r;
        migrate_pair(&in, NULL, &st, &r);
        assert_int_equal(r, 0);
        assert_int_equal(in.rc, 0);
        assert_int_equal(st.state, VHM_MIGRATION_COMPLETED);
        assert_int_equal(in.st.state, VHM_MIGRATION_COMPLETED);
        assert_true(st.checksum == in.st.checksum);
        /* The net device is announced; the fs device has nothing to announce. */
        assert_int_equal(in.st.rarp_sent, 1);
        assert_int_equal(tb_record_count(tbs[1].record, "SEND_RARP"), 0);
        assert_state_moved(&tbs[0], &tbs[1], 7, blob_len);

        struct vhm_device *s[] = { src.dev, src.dev2 }, *d[] = { dst.dev, dst.dev2 };
        for (unsigned i = 0; i < 2; i++) {
                assert_true(vhm_device_released(s[i]));
                assert_int_equal(vhm_device_state(d[i]), VHM_DEVICE_RUNNING);
                for (unsigned q = 0; q < 2; q++)
                        assert_int_equal(vhm_device_ring_index(d[i], q), vhm_device_ring_index(s[i], q));
        }

        char err[256];
        assert_int_equal(vhm_guest_attach(dst.memfd, &dst.g, err, sizeof(err)), 0);
        more_traffic(dst.g, 1, FRAMES_AFTER);
        struct vhm_guest_stats g = stats_of(dst.g);
        print_stats("destination guest:", &g);
        uint64_t inflight = at_pause.sent - accounted(&at_pause);
        assert_true(g.received >= at_pause.received + FRAMES_AFTER - inflight);
        assert_true(g.lost - at_pause.lost <= inflight);
        assert_int_equal(g.corrupted, 0);
        assert_int_equal(g.duplicated, 0);
        assert_int_equal(g.bad_used, 0);
        assert_int_equal(g.rarp_seen, 1);
        assert_int_equal(accounted(&g), g.sent);
        finish(before);
}

struct killer {
        pid_t pid;
        uint64_t after_pages;
        bool fired;
};

static void kill_on_progress(const struct vhm_migration_stats *st, void *opaque) {
        struct killer *k = opaque;
        if (k->fired || st->state != VHM_MIGRATION_ACTIVE || st->pages_transferred < k->after_pages)
                return;
        assert_int_equal(kill(k->pid, SIGKILL), 0);
        k->fired = true;
}

/*
 * The destination's back-end is killed while the pages arrive: the
 * destination cannot restore its device and aborts, nothing stays started
 * there, and the source's traffic goes on.
 */
static void rollback_destination_backend_killed(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        start_dpdk(1, 0);
        source_start(1, be.socket);
        struct tb_config c;
        tb_config_init(&c);
        tbe_start(&tbs[0], &c);
        destination_new(1, tbs[0].socket, GUEST_MEM);
        struct vhm_guest_stats at_pause = run_then_pause();

        struct killer k = { .pid = tbs[0].pid, .after_pages = 2048 };
        struct vhm_migrate_options o = { .progress = kill_on_progress, .opaque = &k };
        struct incoming_job in;
        struct vhm_migration_stats st;
        int r;
        migrate_pair(&in, &o, &st, &r);
        assert_true(k.fired);
        assert_true(in.rc < 0);
        assert_int_equal(in.st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(in.st.error, "device 0"));
        assert_true(r < 0);
        assert_int_equal(st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(st.error, "the destination aborted"));
        assert_int_equal(vhm_device_stats(dst.dev)->starts, 0);
        assert_true(vhm_device_awaiting_restore(dst.dev));
        assert_int_equal(vhm_device_state(dst.dev), VHM_DEVICE_DISCONNECTED);
        assert_source_runs_again(&at_pause);
        finish(before);
}

/* A guest that announces itself (GUEST_ANNOUNCE acked) gets no RARP at the destination. */
static void guest_announce_means_no_rarp(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct tb_config c;
        tb_config_init(&c);
        c.features |= VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE);
        tbe_start(&tbs[0], &c);
        tb_config_init(&c);
        c.features |= VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE);
        tbe_start(&tbs[1], &c);
        struct vhm_device_config cfg = net_config(1);
        cfg.features |= VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE);
        source_start_cfg(tbs[0].socket, &cfg);
        assert_true(vhm_device_acked_features(src.dev) & VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE));
        destination_new_cfg(tbs[1].socket, GUEST_MEM, &cfg);

        struct incoming_job in;
        struct vhm_migration_stats st;
        int r;
        migrate_pair(&in, NULL, &st, &r);
        assert_int_equal(r, 0);
        assert_int_equal(in.rc, 0);
        assert_int_equal(in.st.state, VHM_MIGRATION_COMPLETED);
        assert_true(vhm_device_acked_features(dst.dev) & VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE));
        assert_false(vhm_device_needs_rarp(dst.dev));
        assert_int_equal(in.st.rarp_sent, 0);
        assert_int_equal(tb_record_count(tbs[1].record, "SEND_RARP"), 0);
        /* RARP itself was negotiated: only the guest's announcing kept it back. */
        assert_true(vhm_device_protocol_features(dst.dev) & VHU_BIT(VHU_PF_RARP));
        finish(before);
}

/* ---- the back-end's own state, the fs blocker ---------------------------------------- */

/* Where a line starting with `prefix` first appears in a record, or -1. */
static long record_offset(const char *path, const char *prefix) {
        char *text = tb_record_read(path);
        assert_non_null(text);
        long at = -1;
        for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
                if (strncmp(line, prefix, strlen(prefix)) == 0) {
                        at = line - text;
                        break;
                }
        free(text);
        return at;
}

/*
 * An fs device between two test back-ends that offer DEVICE_STATE: its
 * state (2.5 MiB) is loaded into the destination's back-end byte for byte,
 * before the first ring is started there.
 */
static void backend_state_between_test_backends(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        const size_t blob_len = (5u << 19) + 3;
        start_state_backends(11, blob_len);
        struct vhm_device_config fs = fs_config();
        source_start_cfg(tbs[0].socket, &fs);
        destination_new_cfg(tbs[1].socket, GUEST_MEM, &fs);
        assert_true(vhm_device_has_state_transfer(src.dev));
        assert_true(vhm_device_has_state_transfer(dst.dev));

        struct incoming_job in;
        struct vhm_migration_stats st;
        int r;
        migrate_pair(&in, NULL, &st, &r);
        assert_int_equal(r, 0);
        assert_int_equal(in.rc, 0);
        assert_int_equal(in.st.rarp_sent, 0);
        assert_true(in.st.bytes_transferred > blob_len);
        assert_state_moved(&tbs[0], &tbs[1], 11, blob_len);
        assert_true(
                tb_record_contains(tbs[0].record, "SET_DEVICE_STATE_FD flags=0x1 size=8 fds=1 direction=0 phase=0"));
        long loaded = record_offset(tbs[1].record, "DEVICE_STATE loaded");
        long kick = record_offset(tbs[1].record, "SET_VRING_KICK");
        assert_true(loaded >= 0 && kick > loaded);
        assert_int_equal(vhm_device_state(dst.dev), VHM_DEVICE_RUNNING);
        finish(before);
}

/* An fs device whose back-end has no DEVICE_STATE does not migrate: the source never stops it. */
static void fs_without_device_state_is_refused(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct tb_config c;
        tb_config_init(&c);
        c.no_device_state = true;
        tbe_start(&tbs[0], &c);
        struct vhm_device_config fs = fs_config();
        source_start_cfg(tbs[0].socket, &fs);
        struct vhm_blockers b;
        vhm_device_blockers(src.dev, &b);
        assert_int_equal(b.n, 1);
        assert_string_equal(
                b.reason[0],
                "vhost-user-fs: the back-end keeps state outside the rings and does not offer DEVICE_STATE");

        int sv[2];
        make_pair(sv);
        struct silent_peer peer;
        silent_start(&peer, sv[1], 0);
        struct vhm_migration_stats st;
        int r = migrate_source(sv[0], TOKEN, NULL, &st);
        assert_int_equal(pthread_join(peer.thread, NULL), 0);
        assert_int_equal(r, -ENOTSUP);
        assert_int_equal(st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(st.error, "vhost-user-fs: the back-end keeps state outside the rings"));
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_stats(src.dev)->stops, 0);
        finish(before);
}

/* The source's back-end sends its state; a destination back-end that cannot load it refuses; the source resumes. */
static void destination_without_device_state_refuses(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        struct tb_config c;
        tb_config_init(&c);
        c.device_state_size = 4096;
        tbe_start(&tbs[0], &c);
        tb_config_init(&c);
        c.no_device_state = true;
        tbe_start(&tbs[1], &c);
        struct vhm_device_config fs = fs_config();
        source_start_cfg(tbs[0].socket, &fs);
        destination_new_cfg(tbs[1].socket, GUEST_MEM, &fs);

        struct incoming_job in;
        struct vhm_migration_stats st;
        int r;
        migrate_pair(&in, NULL, &st, &r);
        assert_true(in.rc < 0);
        assert_non_null(strstr(in.st.error, "does not offer DEVICE_STATE"));
        assert_true(r < 0);
        assert_int_equal(st.state, VHM_MIGRATION_FAILED);
        assert_non_null(strstr(st.error, "does not offer DEVICE_STATE"));
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_stats(dst.dev)->starts, 0);
        assert_int_equal(tb_record_count(tbs[1].record, "SET_DEVICE_STATE_FD"), 0);
        finish(before);
}

/* ---- VMM-carried device state --------------------------------------------------------- */

/* What a VMM that migrates memory itself does with it: the same bytes in the destination's memory. */
static void copy_guest_memory(void) {
        int from = vhm_guest_mem_fd(src.g);
        static uint8_t buf[1 << 20];
        for (off_t off = 0; off < (off_t) GUEST_MEM; off += (off_t) sizeof(buf)) {
                assert_int_equal(pread(from, buf, sizeof(buf), off), sizeof(buf));
                assert_int_equal(pwrite(dst.memfd, buf, sizeof(buf), off), sizeof(buf));
        }
}

/*
 * Save/LoadDeviceState through a memfd between two VMs: DEVICE and
 * BACKEND_STATE records out of the source, into the destination's incoming
 * device, then SEND_RARP.
 */
static void device_state_through_memfd(void **state) {
        (void) state;
        struct baseline before = baseline_now();
        const size_t blob_len = 100000;
        start_state_backends(5, blob_len);
        source_start(1, tbs[0].socket);
        destination_new(1, tbs[1].socket, GUEST_MEM);
        int m = memfd_create("device-state", MFD_CLOEXEC);
        assert_true(m >= 0);

        struct vhm_device *s[] = { src.dev }, *d[] = { dst.dev };
        struct vhm_migration_stats saved, loaded;
        assert_int_equal(vhm_migration_save_device_state(s, 1, fcntl(m, F_DUPFD_CLOEXEC, 3), NULL, &saved), 0);
        printf("  saved %" PRIu64 " bytes: %s\n", saved.bytes_transferred, vhm_migration_state_name(saved.state));
        assert_int_equal(saved.state, VHM_MIGRATION_COMPLETED);
        assert_int_equal(saved.role, VHM_MIGRATION_ROLE_SOURCE);
        assert_int_equal(saved.pages_transferred, 0);
        assert_true(saved.bytes_transferred > blob_len);
        /* Stopped with its indices, not released: the VMM decides what becomes of it. */
        assert_int_equal(vhm_device_state(src.dev), VHM_DEVICE_STOPPED);
        assert_false(vhm_device_released(src.dev));
        /* The stream's own records: a DEVICE record first. */
        uint8_t hdr[VHM_REC_HDR_SIZE];
        assert_int_equal(pread(m, hdr, sizeof(hdr), 0), sizeof(hdr));
        assert_int_equal(hdr[0] | hdr[1] << 8, VHM_REC_DEVICE);

        copy_guest_memory();
        assert_int_equal(lseek(m, 0, SEEK_SET), 0);
        assert_int_equal(vhm_migration_load_device_state(d, 1, fcntl(m, F_DUPFD_CLOEXEC, 3), NULL, &loaded), 0);
        close(m);
        printf("  loaded %" PRIu64 " bytes: %s%s%s\n", loaded.bytes_transferred, vhm_migration_state_name(loaded.state),
               loaded.error[0] ? ": " : "", loaded.error);
        assert_int_equal(loaded.state, VHM_MIGRATION_COMPLETED);
        assert_int_equal(loaded.role, VHM_MIGRATION_ROLE_DESTINATION);
        assert_int_equal(loaded.bytes_transferred, saved.bytes_transferred);
        assert_int_equal(loaded.rarp_sent, 1);
        assert_int_equal(tb_record_count(tbs[1].record, "SEND_RARP"), 1);
        assert_state_moved(&tbs[0], &tbs[1], 5, blob_len);
        assert_int_equal(vhm_device_state(dst.dev), VHM_DEVICE_RUNNING);
        for (unsigned q = 0; q < 2; q++)
                assert_int_equal(vhm_device_ring_index(dst.dev, q), vhm_device_ring_index(src.dev, q));
        finish(before);
}

int main(void) {
        setvbuf(stdout, NULL, _IONBF, 0);
        if (testpmd_cpus_init() < 0)
                return 1;
#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)
        const struct CMUnitTest tests[] = {
                TEST(migrate_one_queue_pair_unix),
                TEST(migrate_one_queue_pair_tcp_tls),
                TEST(migrate_four_queue_pairs),
                TEST(live_one_queue_pair),
                TEST(live_four_queue_pairs),
                TEST(live_limited_bandwidth_needs_rounds),
                TEST(live_does_not_converge),
                TEST(live_checksum_counts_in_the_estimate),
                TEST(live_forced_switchover),
                TEST(live_vmm_never_continues),
                TEST(live_unmarked_page_is_caught),
                TEST(live_tcp_tls),
                TEST(live_cancel_in_rounds),
                TEST(live_cancel_in_pre_switchover),
                TEST(live_no_answer_after_end_logging_off),
                TEST(rollback_wrong_token),
                TEST(rollback_wrong_token_tls),
                TEST(rollback_layout_mismatch),
                TEST(rollback_missing_feature),
                TEST(rollback_channel_cut_mid_pages),
                TEST(rollback_cancel_in_setup),
                TEST(rollback_cancel_in_active),
                TEST(rollback_restore_fails),
                TEST(rollback_source_backend_lost_at_stop),
                TEST(no_answer_after_end),
                TEST(migrate_two_devices_with_traffic),
                TEST(rollback_destination_backend_killed),
                TEST(guest_announce_means_no_rarp),
                TEST(backend_state_between_test_backends),
                TEST(fs_without_device_state_is_refused),
                TEST(destination_without_device_state_refuses),
                TEST(device_state_through_memfd),
        };
#undef TEST
        return cmocka_run_group_tests(tests, NULL, NULL);
}
