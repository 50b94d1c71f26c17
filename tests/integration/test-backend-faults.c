/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The front-end library against the project's fault-injecting test back-end:
 * every request of the protocol goes through, every fault class is detected
 * with an error naming the request and the fault, no fd is leaked, nothing
 * hangs past the timeout, and `vhostmigctl probe` turns each misbehaviour
 * into exit status 1 and one line on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proto/vhost-user-frontend.h"
#include "proto/vhost-user-table.h"
#include "tests/backend/test-backend.h"
#include "tests/common/check.h"
#include "tests/common/fd-count.h"

#define TIMEOUT_MS 500u

struct env {
        char dir[64];
        char socket[96];
        char record[96];
        pid_t pid;
        int fds_before;
};

static void env_start(struct env *e, struct tb_config *cfg) {
        e->fds_before = count_open_fds();
        snprintf(e->dir, sizeof(e->dir), "/tmp/vhostmig-tb-XXXXXX");
        assert_non_null(mkdtemp(e->dir));
        snprintf(e->socket, sizeof(e->socket), "%s/sock", e->dir);
        snprintf(e->record, sizeof(e->record), "%s/record", e->dir);
        cfg->record_path = e->record;
        int r = tb_spawn_listen(cfg, e->socket, &e->pid);
        if (r < 0)
                fail_msg("cannot start the test back-end: %s", strerror(-r));
}

static void env_stop(struct env *e) {
        tb_stop(e->pid);
        unlink(e->socket);
        unlink(e->record);
        rmdir(e->dir);
        assert_int_equal(count_open_fds(), e->fds_before);
}

static struct vhu_conn *env_connect(struct env *e) {
        struct vhu_conn *c;
        struct vhu_conn_options o = { .timeout_ms = TIMEOUT_MS };
        int r = vhu_conn_connect(e->socket, &o, &c);
        if (r < 0)
                fail_msg("connect: %s", strerror(-r));
        return c;
}

/* The test back-end started with cfg, connected to, and negotiated with. */
static struct vhu_conn *env_start_negotiated(struct env *e, struct tb_config *cfg) {
        env_start(e, cfg);
        struct vhu_conn *c = env_connect(e);
        CONN_CHECK(c, vhu_negotiate(c, NULL));
        return c;
}

/* A default configuration with one fault (a tb_parse_fault spec). */
static void config_with_fault(struct tb_config *cfg, const char *spec) {
        tb_config_init(cfg);
        struct tb_fault f;
        assert_int_equal(tb_parse_fault(spec, &f), 0);
        assert_int_equal(tb_config_add_fault(cfg, &f), 0);
}

/* The request a fault spec names: what comes before its first ':'. */
static const char *spec_request(const char *spec, char name[64]) {
        snprintf(name, 64, "%.*s", (int) strcspn(spec, ":"), spec);
        return name;
}

static void assert_no_violation(const struct env *e) {
        if (tb_record_count(e->record, "VIOLATION") != 0) {
                char *text = tb_record_read(e->record);
                fail_msg("the back-end recorded violations:\n%s", text ? text : "");
        }
}

/* ---- every request ---------------------------------------------------------------- */

static void every_request_goes_through(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        /* Offer what every request needs: postcopy and an IOMMU too. */
        cfg.protocol_features |= VHU_BIT(VHU_PF_PAGEFAULT);
        cfg.features |= VHU_BIT(VHU_VF_ACCESS_PLATFORM);
        struct env e;
        struct vhu_conn *c = env_start_negotiated(&e, &cfg);
        assert_int_equal(vhu_conn_queue_num(c), TB_DEFAULT_QUEUES);
        assert_int_equal(vhu_conn_max_mem_slots(c), TB_DEFAULT_MAX_MEM_SLOTS);

        int mem = memfd_create("mem", MFD_CLOEXEC);
        assert_int_equal(ftruncate(mem, 1 << 20), 0);
        void *map = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
        uint64_t base = (uint64_t) (uintptr_t) map;
        struct vhu_region reg = { mem, 0, 1 << 20, base, 0 };
        int efd = eventfd(0, EFD_CLOEXEC);
        int log = memfd_create("log", MFD_CLOEXEC);
        assert_int_equal(ftruncate(log, 4096), 0);

        CONN_CHECK(c, vhu_set_features(c, VHU_BIT(VHU_VF_VERSION_1) | VHU_BIT(VHU_VF_ACCESS_PLATFORM)));
        CONN_CHECK(c, vhu_set_mem_table(c, &reg, 1));
        CONN_CHECK(c, vhu_set_log_base(c, log, 4096, 0));
        CONN_CHECK(c, vhu_set_log_fd(c, efd));
        CONN_CHECK(c, vhu_set_vring_num(c, 0, 256));
        CONN_CHECK(c, vhu_set_vring_base(c, 0, 7));
        struct vhu_vring_addr a = { .index = 0,
                                    .desc_user_addr = base,
                                    .avail_user_addr = base + 0x1000,
                                    .used_user_addr = base + 0x2000,
                                    .log_guest_addr = 0x2000 };
        CONN_CHECK(c, vhu_set_vring_addr(c, &a));
        CONN_CHECK(c, vhu_set_vring_kick(c, 0, efd));
        CONN_CHECK(c, vhu_set_vring_call(c, 0, efd));
        CONN_CHECK(c, vhu_set_vring_err(c, 0, efd));
        CONN_CHECK(c, vhu_set_vring_enable(c, 0, true));
        const uint8_t mac[6] = { 2, 0, 0, 0, 0, 1 };
        CONN_CHECK(c, vhu_send_rarp(c, mac));
        CONN_CHECK(c, vhu_net_set_mtu(c, 1500));
        struct vhu_iotlb iotlb = {
                .iova = 0, .size = 4096, .uaddr = base, .perm = VHU_ACCESS_RW, .type = VHU_IOTLB_UPDATE
        };
        CONN_CHECK(c, vhu_iotlb_msg(c, &iotlb));
        CONN_CHECK(c, vhu_set_vring_endian(c, 0, false));
        uint8_t cfgbuf[16], cfgin[16] = { 1, 2, 3 };
        CONN_CHECK(c, vhu_get_config(c, 0, sizeof(cfgbuf), 0, cfgbuf));
        CONN_CHECK(c, vhu_set_config(c, 0, sizeof(cfgin), VHU_CONFIG_FLAG_WRITABLE, cfgin));
        uint8_t session[64] = { 0 };
        int64_t sid = -1;
        CONN_CHECK(c, vhu_create_crypto_session(c, session, sizeof(session), &sid));
        assert_true(sid >= 0);
        CONN_CHECK(c, vhu_close_crypto_session(c, sid));
        int ufd = -1;
        CONN_CHECK(c, vhu_postcopy_advise(c, &ufd));
        assert_true(ufd >= 0);
        close(ufd);
        CONN_CHECK(c, vhu_postcopy_listen(c));
        CONN_CHECK(c, vhu_postcopy_end(c));
        struct vhu_inflight inflight;
        int ifd = -1;
        CONN_CHECK(c, vhu_get_inflight_fd(c, 2, 256, &inflight, &ifd));
        assert_true(inflight.mmap_size > 0 && ifd >= 0);
        CONN_CHECK(c, vhu_set_inflight_fd(c, &inflight, ifd));
        close(ifd);
        CONN_CHECK(c, vhu_gpu_set_socket(c, efd));
        CONN_CHECK(c, vhu_vring_kick(c, 0));
        struct vhu_region hot = { mem, 0x100000000, 1 << 20, base, 0 };
        CONN_CHECK(c, vhu_add_mem_reg(c, &hot));
        CONN_CHECK(c, vhu_rem_mem_reg(c, &hot));
        CONN_CHECK(c, vhu_set_status(c, 0xf));
        uint8_t status = 0;
        CONN_CHECK(c, vhu_get_status(c, &status));
        assert_int_equal(status, 0xf);
        uint8_t uuid[16] = { 0x42 };
        int sfd;
        assert_int_equal(vhu_get_shared_object(c, uuid, &sfd), -ENOENT); /* the back-end has none */
        int pipefd[2];
        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        int reply_fd = 0;
        CONN_CHECK(c, vhu_set_device_state_fd(c, VHU_TRANSFER_SAVE, VHU_TRANSFER_STOPPED, pipefd[1], &reply_fd));
        assert_int_equal(reply_fd, -1);
        close(pipefd[0]);
        close(pipefd[1]);
        CONN_CHECK(c, vhu_check_device_state(c));
        unsigned vbase = 0;
        CONN_CHECK(c, vhu_get_vring_base(c, 0, &vbase));
        assert_int_equal(vbase, 7);
        CONN_CHECK(c, vhu_reset_device(c));
        CONN_CHECK(c, vhu_reset_owner(c));
        CONN_CHECK(c, vhu_barrier(c));
        vhu_conn_free(c);
        close(efd);
        close(log);
        munmap(map, 1 << 20);
        close(mem);

        /* The back-end saw every front-end request at least once. */
        for (uint32_t r = 1; r < VHU_REQ_MAX; r++) {
                char needle[64];
                snprintf(needle, sizeof(needle), "\n%s ", vhu_request_name(r));
                char *text = tb_record_read(e.record);
                bool seen = text && (strstr(text, needle) || strncmp(text, needle + 1, strlen(needle + 1)) == 0);
                free(text);
                if (!seen)
                        fail_msg("%s never reached the back-end", vhu_request_name(r));
        }
        assert_no_violation(&e);
        env_stop(&e);
}

/* ---- fault classes ------------------------------------------------------------------- */

struct fault_case {
        const char *fault;    /* tb_parse_fault spec */
        int expected;         /* errno of the failing call */
        const char *mentions; /* the error names this */
        bool connection_survives;
};

static const struct fault_case fault_cases[] = {
        { "GET_FEATURES:close", -ECONNRESET, "closed by the back-end", false },
        { "GET_FEATURES:bad-flags=0x1", -EPROTO, "reply flags 0x1", false },
        { "GET_FEATURES:bad-flags=0xd", -EPROTO, "reply flags 0xd", false },
        { "GET_FEATURES:oversize", -EPROTO, "reply payload size", false },
        { "GET_FEATURES:undersize", -EPROTO, "reply payload size", false },
        { "GET_FEATURES:wrong-request", -EPROTO, "another request", false },
        { "GET_FEATURES:extra-fds", -EPROTO, "fds", false },
        { "GET_FEATURES:garbage", -EPROTO, "4294967295 bytes", false },
        { "GET_FEATURES:hang", -ETIMEDOUT, "no reply in time", false },
        { "GET_PROTOCOL_FEATURES:hang", -ETIMEDOUT, "GET_PROTOCOL_FEATURES", false },
        { "GET_QUEUE_NUM:extra-fds=3", -EPROTO, "3 fds", false },
        { "SET_OWNER:nack", -EREMOTEIO, "refused", true },
        { "SET_BACKEND_REQ_FD:close", -ECONNRESET, "SET_BACKEND_REQ_FD", false },
};

static void each_fault_is_detected(void **state) {
        (void) state;
        for (size_t i = 0; i < sizeof(fault_cases) / sizeof(fault_cases[0]); i++) {
                const struct fault_case *fc = &fault_cases[i];
                struct tb_config cfg;
                config_with_fault(&cfg, fc->fault);
                struct env e;
                env_start(&e, &cfg);
                struct vhu_conn *c = env_connect(&e);

                uint64_t t0 = vhu_now_usec();
                int r = vhu_negotiate(c, NULL);
                uint64_t ms = (vhu_now_usec() - t0) / 1000;
                if (r != fc->expected)
                        fail_msg("%s: negotiate returned %d (%s), expected %d", fc->fault, r, vhu_conn_error(c),
                                 fc->expected);
                if (!strstr(vhu_conn_error(c), fc->mentions))
                        fail_msg("%s: error \"%s\" does not mention \"%s\"", fc->fault, vhu_conn_error(c),
                                 fc->mentions);
                /* The request that failed is named too. */
                char name[64];
                if (!strstr(vhu_conn_error(c), spec_request(fc->fault, name)))
                        fail_msg("%s: error \"%s\" does not name %s", fc->fault, vhu_conn_error(c), name);
                assert_int_equal(vhu_conn_is_connected(c), fc->connection_survives);
                assert_true(ms < TIMEOUT_MS + 1000); /* never past the timeout */
                assert_int_equal(tb_record_count(e.record, "FAULT"), 1);
                vhu_conn_free(c);
                env_stop(&e);
        }
}

static void nack_fails_only_that_request(void **state) {
        (void) state;
        struct tb_config cfg;
        config_with_fault(&cfg, "SET_VRING_NUM:nack=22:2");
        struct env e;
        struct vhu_conn *c = env_start_negotiated(&e, &cfg);
        CONN_CHECK(c, vhu_set_vring_num(c, 0, 256));
        assert_int_equal(vhu_set_vring_num(c, 1, 256), -EREMOTEIO);
        assert_non_null(strstr(vhu_conn_error(c), "SET_VRING_NUM: back-end refused the request (status 22)"));
        CONN_CHECK(c, vhu_set_vring_num(c, 1, 256));
        vhu_conn_free(c);
        assert_no_violation(&e);
        env_stop(&e);
}

static void bad_replies_to_typed_requests(void **state) {
        (void) state;
        static const char *const specs[] = {
                "GET_VRING_BASE:oversize", "SET_LOG_BASE:undersize",      "GET_STATUS:wrong-request",
                "GET_CONFIG:undersize",    "SET_MEM_TABLE:bad-flags=0x9", "GET_INFLIGHT_FD:close",
        };
        for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
                struct tb_config cfg;
                config_with_fault(&cfg, specs[i]);
                struct env e;
                struct vhu_conn *c = env_start_negotiated(&e, &cfg);
                CONN_CHECK(c, vhu_get_features(c, &(uint64_t){ 0 }));

                int mem = memfd_create("mem", MFD_CLOEXEC);
                assert_int_equal(ftruncate(mem, 4096), 0);
                int r;
                unsigned base;
                uint8_t buf[8];
                uint8_t st;
                struct vhu_inflight inf;
                int fd;
                struct vhu_region reg = { mem, 0, 4096, 0x10000, 0 };
                switch (i) {
                case 0:
                        r = vhu_get_vring_base(c, 0, &base);
                        break;
                case 1:
                        r = vhu_set_log_base(c, mem, 4096, 0);
                        break;
                case 2:
                        r = vhu_get_status(c, &st);
                        break;
                case 3:
                        r = vhu_get_config(c, 0, sizeof(buf), 0, buf);
                        break;
                case 4:
                        r = vhu_set_mem_table(c, &reg, 1);
                        break;
                default:
                        r = vhu_get_inflight_fd(c, 1, 256, &inf, &fd);
                        break;
                }
                close(mem);
                char name[64];
                if (r >= 0 || !strstr(vhu_conn_error(c), spec_request(specs[i], name)))
                        fail_msg("%s: returned %d, error \"%s\"", specs[i], r, vhu_conn_error(c));
                assert_false(vhu_conn_is_connected(c));
                vhu_conn_free(c);
                env_stop(&e);
        }
}

/* ---- missing features -------------------------------------------------------------- */

static void missing_features_are_never_used(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.no_rarp = true;
        cfg.no_log_shmfd = true;
        cfg.no_mq = true;
        cfg.no_reply_ack = true;
        struct env e;
        struct vhu_conn *c = env_start_negotiated(&e, &cfg);
        assert_int_equal(vhu_conn_queue_num(c), 1);
        const uint8_t mac[6] = { 2, 0, 0, 0, 0, 1 };
        assert_int_equal(vhu_send_rarp(c, mac), -ENOTSUP);
        assert_int_equal(vhu_set_log_base(c, 0, 4096, 0), -ENOTSUP);
        assert_int_equal(vhu_get_queue_num(c, &(uint64_t){ 0 }), -ENOTSUP);
        CONN_CHECK(c, vhu_set_vring_num(c, 0, 256));
        CONN_CHECK(c, vhu_barrier(c));
        vhu_conn_free(c);
        assert_false(tb_record_contains(e.record, "SEND_RARP"));
        assert_false(tb_record_contains(e.record, "SET_LOG_BASE"));
        assert_false(tb_record_contains(e.record, "GET_QUEUE_NUM"));
        /* Without REPLY_ACK nothing asks for one. */
        assert_true(tb_record_contains(e.record, "SET_VRING_NUM flags=0x1 "));
        assert_no_violation(&e);
        env_stop(&e);
}

static void no_protocol_features_at_all(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.no_protocol_features = true;
        struct env e;
        struct vhu_conn *c = env_start_negotiated(&e, &cfg);
        assert_int_equal(vhu_conn_protocol_features(c), 0);
        assert_int_equal(vhu_set_vring_enable(c, 0, true), -ENOTSUP);
        vhu_conn_free(c);
        assert_false(tb_record_contains(e.record, "GET_PROTOCOL_FEATURES"));
        assert_no_violation(&e);
        env_stop(&e);
}

/* ---- back-end channel -------------------------------------------------------------- */

static int count_config_changes(void *ud) {
        (*(int *) ud)++;
        return 0;
}

static void backend_requests_are_answered(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        struct tb_backend_req br;
        /* One blocks the back-end until we answer, before it answers SET_OWNER: no deadlock. */
        assert_int_equal(tb_parse_backend_req("CONFIG_CHANGE_MSG:need-reply:block", &br), 0);
        tb_config_add_backend_req(&cfg, &br);
        assert_int_equal(tb_parse_backend_req("VRING_CALL:need-reply", &br), 0);
        tb_config_add_backend_req(&cfg, &br);
        struct env e;
        env_start(&e, &cfg);
        struct vhu_conn *c = env_connect(&e);
        int changes = 0;
        const struct vhu_backend_handlers h = { .config_change = count_config_changes };
        struct vhu_negotiation n = { .backend_handlers = &h, .backend_userdata = &changes };
        CONN_CHECK(c, vhu_negotiate(c, &n));
        CONN_CHECK(c, vhu_barrier(c));
        /* Serve whatever came after SET_OWNER's reply. */
        struct vhu_backend_channel *ch = vhu_conn_backend_channel(c);
        for (int i = 0; i < 50 && tb_record_count(e.record, "BACKEND_REPLY") < 2; i++) {
                vhu_backend_channel_process(ch);
                usleep(10000);
        }
        assert_int_equal(changes, 1);
        vhu_conn_free(c);
        /* Handled: 0.  No handler for VRING_CALL: refused with a non-zero status. */
        assert_true(tb_record_contains(e.record, "BACKEND_REPLY CONFIG_CHANGE_MSG 0"));
        assert_true(tb_record_contains(e.record, "BACKEND_REPLY VRING_CALL "));
        assert_false(tb_record_contains(e.record, "BACKEND_REPLY VRING_CALL 0"));
        env_stop(&e);
}

/* ---- vhostmigctl probe ------------------------------------------------------------ */

static int run_probe(const char *socket, char *err, size_t errlen, uint64_t *ms) {
        const char *ctl = getenv("VHOSTMIGCTL");
        assert_non_null(ctl);
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "%s probe --timeout 0.5 %s 2>&1 >/dev/null", ctl, socket);
        uint64_t t0 = vhu_now_usec();
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        size_t n = fread(err, 1, errlen - 1, p);
        err[n] = '\0';
        int status = pclose(p);
        *ms = (vhu_now_usec() - t0) / 1000;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void probe_reports_each_misbehaviour(void **state) {
        (void) state;
        static const char *const specs[] = {
                "GET_FEATURES:close",      "GET_FEATURES:bad-flags=0x1",
                "GET_FEATURES:oversize",   "GET_FEATURES:wrong-request",
                "GET_FEATURES:extra-fds",  "GET_FEATURES:hang",
                "GET_FEATURES:garbage",    "SET_PROTOCOL_FEATURES:nack",
                "GET_QUEUE_NUM:undersize", "SET_OWNER:hang",
        };
        for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
                struct tb_config cfg;
                config_with_fault(&cfg, specs[i]);
                struct env e;
                env_start(&e, &cfg);
                char err[1024];
                uint64_t ms;
                int rc = run_probe(e.socket, err, sizeof(err), &ms);
                if (rc != 1)
                        fail_msg("%s: exit %d, expected 1 (stderr: %s)", specs[i], rc, err);
                /* Exactly one line, naming the request. */
                char name[64];
                if (!strstr(err, spec_request(specs[i], name)) || strchr(err, '\n') != err + strlen(err) - 1)
                        fail_msg("%s: stderr \"%s\"", specs[i], err);
                assert_true(ms < 3000);
                env_stop(&e);
        }
}

static void probe_reports_blockers(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.no_log_shmfd = true;
        struct env e;
        env_start(&e, &cfg);
        const char *ctl = getenv("VHOSTMIGCTL");
        char cmd[512], out[4096];
        snprintf(cmd, sizeof(cmd), "%s probe --json %s", ctl, e.socket);
        FILE *p = popen(cmd, "r");
        size_t n = fread(out, 1, sizeof(out) - 1, p);
        out[n] = '\0';
        assert_int_equal(pclose(p), 0);
        assert_non_null(strstr(out, "\"migratable\":false"));
        assert_non_null(strstr(out, "lacks VHOST_USER_PROTOCOL_F_LOG_SHMFD feature."));
        env_stop(&e);
}

/* ---- a hostile back-end (issue 8) --------------------------------------------------- */

/*
 * Against these faults today's front-end may block without end; each
 * measured call therefore runs in a child process, and a child still running
 * after BOUND_MS fails the test instead of hanging the suite.
 */
#define HOSTILE_TIMEOUT_MS 300u
#define BOUND_MS           10000u

struct outcome {
        int result;      /* the call's return value */
        uint64_t ms;     /* how long it took */
        char error[400]; /* vhu_conn_error() after it */
};

typedef void (*hostile_fn)(const char *socket, struct outcome *out);

/* Runs fn in a child; fails the test when the child does not finish within BOUND_MS. */
static void run_bounded(const char *what, hostile_fn fn, const char *socket, struct outcome *out) {
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                struct outcome o = { 0 };
                close(p[0]);
                uint64_t t0 = vhu_now_usec();
                fn(socket, &o);
                o.ms = (vhu_now_usec() - t0) / 1000;
                _exit(write(p[1], &o, sizeof(o)) == (ssize_t) sizeof(o) ? 0 : 1);
        }
        close(p[1]);
        int status = tb_wait_exit(pid, BOUND_MS);
        if (status == -ETIMEDOUT) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                close(p[0]);
                fail_msg("%s: still running after %u ms", what, BOUND_MS);
        }
        ssize_t n = read(p[0], out, sizeof(*out));
        close(p[0]);
        if (n != (ssize_t) sizeof(*out))
                fail_msg("%s: the child died (wait status 0x%x)", what, (unsigned) status);
}

/* Connect and negotiate, then one round trip that the back-end's fault stalls. */
static void connect_negotiate_barrier(const char *socket, struct outcome *out) {
        struct vhu_conn *c;
        struct vhu_conn_options o = { .timeout_ms = HOSTILE_TIMEOUT_MS };
        out->result = vhu_conn_connect(socket, &o, &c);
        if (out->result < 0) {
                snprintf(out->error, sizeof(out->error), "connect: %s", strerror(-out->result));
                return;
        }
        out->result = vhu_negotiate(c, NULL);
        if (out->result == 0)
                out->result = vhu_barrier(c);
        snprintf(out->error, sizeof(out->error), "%s", vhu_conn_error(c));
        vhu_conn_free(c);
}

/* A stalled request on a negotiated connection fails with its timeout, however the channel misbehaves. */
static void stalled_call_times_out(const char *spec) {
        struct tb_config cfg;
        config_with_fault(&cfg, spec);
        struct env e;
        env_start(&e, &cfg);
        struct outcome out;
        run_bounded(spec, connect_negotiate_barrier, e.socket, &out);
        if (out.result >= 0 || out.ms > 5 * HOSTILE_TIMEOUT_MS)
                fail_msg("%s: returned %d after %llu ms (%s), expected a failure within %u ms", spec, out.result,
                         (unsigned long long) out.ms, out.error, 5 * HOSTILE_TIMEOUT_MS);
        /* The barrier (the second GET_FEATURES) is the request that failed. */
        if (!strstr(out.error, "GET_FEATURES"))
                fail_msg("%s: error \"%s\" does not name GET_FEATURES", spec, out.error);
        assert_int_equal(tb_record_count(e.record, "FAULT"), 1);
        env_stop(&e);
}

static void flooding_channel_cannot_defeat_the_timeout(void **state) {
        (void) state;
        stalled_call_times_out("GET_FEATURES:flood-channel:2");
}

static void half_header_on_channel_cannot_defeat_the_timeout(void **state) {
        (void) state;
        stalled_call_times_out("GET_FEATURES:channel-half-header:2");
}

/* vhostmigctl, its exit status and stderr; killed (and the test failed) after BOUND_MS. */
static int run_ctl_bounded(const char *what, const char *const *args, char *err, size_t errlen, uint64_t *ms) {
        const char *ctl = getenv("VHOSTMIGCTL");
        const char *argv[16] = { ctl };
        size_t n = 1;
        assert_non_null(ctl);
        for (; args[n - 1] && n < 15; n++)
                argv[n] = args[n - 1];
        argv[n] = NULL;
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        uint64_t t0 = vhu_now_usec();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int devnull = open("/dev/null", O_WRONLY);
                dup2(devnull, STDOUT_FILENO);
                dup2(p[1], STDERR_FILENO);
                execv(ctl, (char *const *) argv);
                _exit(127);
        }
        close(p[1]);
        int status = tb_wait_exit(pid, BOUND_MS);
        *ms = (vhu_now_usec() - t0) / 1000;
        if (status == -ETIMEDOUT) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                close(p[0]);
                fail_msg("%s: vhostmigctl %s still running after %u ms", what, args[0], BOUND_MS);
        }
        ssize_t got = read(p[0], err, errlen - 1);
        err[got > 0 ? got : 0] = '\0';
        close(p[0]);
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* `probe --timeout 1` ends with exit status 1 within 3 s, whatever the back-end does. */
static void probe_is_bounded(struct tb_config *cfg, const char *what) {
        struct env e;
        env_start(&e, cfg);
        char err[1024];
        uint64_t ms;
        const char *args[] = { "probe", "--timeout", "1", e.socket, NULL };
        int rc = run_ctl_bounded(what, args, err, sizeof(err), &ms);
        if (rc != 1 || ms >= 3000)
                fail_msg("%s: probe exit %d after %llu ms, expected 1 within 3000 ms (stderr: %s)", what, rc,
                         (unsigned long long) ms, err);
        if (strchr(err, '\n') != err + strlen(err) - 1)
                fail_msg("%s: stderr is not one line: \"%s\"", what, err);
        env_stop(&e);
}

static void probe_against_a_flooding_channel(void **state) {
        (void) state;
        struct tb_config cfg;
        config_with_fault(&cfg, "SET_OWNER:flood-channel");
        probe_is_bounded(&cfg, "SET_OWNER:flood-channel");
        config_with_fault(&cfg, "SET_OWNER:channel-half-header");
        probe_is_bounded(&cfg, "SET_OWNER:channel-half-header");
}

static void connect_only(const char *socket, struct outcome *out) {
        struct vhu_conn *c;
        struct vhu_conn_options o = { .timeout_ms = HOSTILE_TIMEOUT_MS };
        out->result = vhu_conn_connect(socket, &o, &c);
        if (out->result == 0)
                vhu_conn_free(c);
}

/* A listener with a full backlog that never accepts: connect gives up with the timeout. */
static void connect_to_a_full_backlog_is_bounded(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.no_accept = true;
        struct env e;
        env_start(&e, &cfg);
        struct outcome out;
        run_bounded("connect to a full backlog", connect_only, e.socket, &out);
        if (out.result != -ETIMEDOUT || out.ms > 2 * HOSTILE_TIMEOUT_MS + 200)
                fail_msg("connect returned %d (%s) after %llu ms, expected -ETIMEDOUT within about %u ms", out.result,
                         strerror(-out.result), (unsigned long long) out.ms, 2 * HOSTILE_TIMEOUT_MS);
        assert_true(tb_record_contains(e.record, "NO_ACCEPT backlog="));
        env_stop(&e);

        tb_config_init(&cfg);
        cfg.no_accept = true;
        probe_is_bounded(&cfg, "no-accept");
}

/* An fd on every reply: each call fails as a protocol error naming its request, and nothing leaks. */
static void fds_on_every_reply_are_refused(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.fds_on_every_message = true;
        cfg.max_connections = 0;
        struct env e;
        env_start(&e, &cfg);

        struct vhu_conn *c = env_connect(&e);
        assert_int_equal(vhu_negotiate(c, NULL), -EPROTO);
        assert_non_null(strstr(vhu_conn_error(c), "GET_FEATURES"));
        assert_non_null(strstr(vhu_conn_error(c), "fd"));
        assert_false(vhu_conn_is_connected(c));
        assert_int_equal(vhu_get_features(c, &(uint64_t){ 0 }), -ENOTCONN);
        vhu_conn_free(c);

        /* A call on its own, on a fresh connection. */
        c = env_connect(&e);
        uint64_t v;
        assert_int_equal(vhu_get_features(c, &v), -EPROTO);
        assert_non_null(strstr(vhu_conn_error(c), "GET_FEATURES"));
        vhu_conn_free(c);

        char err[1024];
        uint64_t ms;
        const char *args[] = { "probe", "--timeout", "1", e.socket, NULL };
        assert_int_equal(run_ctl_bounded("fds-always", args, err, sizeof(err), &ms), 1);
        assert_non_null(strstr(err, "GET_FEATURES"));
        env_stop(&e); /* no fd left open */
}

static int count_calls(void *ud) {
        (*(int *) ud)++;
        return 0;
}

/* Sends one request without NEED_REPLY (no reply comes back). */
static void send_plain(int fd, uint32_t request, const void *payload, uint32_t size, int passed_fd) {
        struct vhu_msg m;
        memset(&m, 0, sizeof(m));
        m.hdr.request = request;
        m.hdr.flags = VHU_VERSION;
        m.hdr.size = size;
        if (size)
                memcpy(&m.payload, payload, size);
        if (passed_fd >= 0) {
                m.fds[0] = passed_fd;
                m.nfds = 1;
        }
        assert_int_equal(vhu_send_msg(fd, &m, NULL, vhu_deadline_after_ms(TIMEOUT_MS)), 0);
}

/*
 * An fd on a back-end request that may carry none: the front-end's channel
 * refuses the message, does not call the handler, closes the fd and the
 * channel.  The main connection is driven raw, without replies, so that only
 * the channel's message carries the extra fd.
 */
static void fds_on_channel_messages_are_refused(void **state) {
        (void) state;
        struct tb_config cfg;
        struct tb_backend_req br;
        tb_config_init(&cfg);
        cfg.fds_on_every_message = true;
        assert_int_equal(tb_parse_backend_req("CONFIG_CHANGE_MSG", &br), 0);
        assert_int_equal(tb_config_add_backend_req(&cfg, &br), 0);
        struct env e;
        env_start(&e, &cfg);

        int calls = 0;
        const struct vhu_backend_handlers h = { .config_change = count_calls };
        uint64_t pf = VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_CONFIG);
        struct vhu_backend_channel *ch;
        int backend_end;
        assert_int_equal(vhu_backend_channel_new(&h, &calls, pf, &backend_end, &ch), 0);
        int fd = vhu_socket_connect(e.socket);
        assert_true(fd >= 0);
        uint64_t features = VHU_BIT(VHU_VF_VERSION_1) | VHU_BIT(VHU_VF_PROTOCOL_FEATURES);
        send_plain(fd, VHU_REQ_SET_FEATURES, &features, sizeof(features), -1);
        send_plain(fd, VHU_REQ_SET_PROTOCOL_FEATURES, &pf, sizeof(pf), -1);
        send_plain(fd, VHU_REQ_SET_BACKEND_REQ_FD, NULL, 0, backend_end);
        close(backend_end);
        send_plain(fd, VHU_REQ_SET_OWNER, NULL, 0, -1);

        struct pollfd p = { .fd = vhu_backend_channel_fd(ch), .events = POLLIN };
        assert_int_equal(poll(&p, 1, (int) TIMEOUT_MS * 4), 1);
        int r = vhu_backend_channel_process(ch);
        if (r != -EPROTO || !strstr(vhu_backend_channel_error(ch), "fd"))
                fail_msg("process returned %d (%s), expected -EPROTO about the fd", r, vhu_backend_channel_error(ch));
        assert_int_equal(calls, 0);
        assert_false(vhu_backend_channel_is_open(ch));
        vhu_backend_channel_free(ch);
        close(fd);
        /* The back-end records the message once its write returned. */
        uint64_t deadline = vhu_deadline_after_ms(TIMEOUT_MS * 4);
        while (!tb_record_contains(e.record, "BACKEND_SENT CONFIG_CHANGE_MSG flags=0x1 size=0 fds=1") &&
               vhu_now_usec() < deadline)
                usleep(5000);
        assert_true(tb_record_contains(e.record, "BACKEND_SENT CONFIG_CHANGE_MSG flags=0x1 size=0 fds=1"));
        env_stop(&e); /* the refused fd was closed */
}

/* The fault the reconnect tests build on: the record says what was truncated. */
static void truncate_memory_truncates_and_closes(void **state) {
        (void) state;
        struct tb_config cfg;
        config_with_fault(&cfg, "GET_VRING_BASE:truncate-memory");
        struct env e;
        struct vhu_conn *c = env_start_negotiated(&e, &cfg);
        int mem = memfd_create("mem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        int sealed = memfd_create("sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_int_equal(ftruncate(mem, 1 << 20), 0);
        assert_int_equal(ftruncate(sealed, 1 << 20), 0);
        assert_int_equal(fcntl(sealed, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        struct vhu_region regs[2] = { { mem, 0, 1 << 20, 0x10000000, 0 }, { sealed, 1 << 20, 1 << 20, 0x20000000, 0 } };
        CONN_CHECK(c, vhu_set_mem_table(c, regs, 2));
        unsigned base;
        assert_int_equal(vhu_get_vring_base(c, 0, &base), -ECONNRESET);
        vhu_conn_free(c);
        struct stat st;
        assert_int_equal(fstat(mem, &st), 0);
        assert_int_equal(st.st_size, 0);
        assert_int_equal(fstat(sealed, &st), 0);
        assert_int_equal(st.st_size, 1 << 20);
        close(mem);
        close(sealed);
        assert_true(tb_record_contains(e.record, "FAULT truncate-memory GET_VRING_BASE\n"));
        assert_true(tb_record_contains(e.record, "TRUNCATED gpa=0x0 size=0x100000 ok\n"));
        assert_true(tb_record_contains(e.record, "TRUNCATED gpa=0x100000 size=0x100000 Operation not permitted\n"));
        env_stop(&e);
}

/* The other building block: a back-end that runs as another user, as SO_PEERCRED shows. */
static void backend_runs_as_another_uid(void **state) {
        (void) state;
        if (geteuid() != 0) {
                skip();
                return;
        }
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.run_as_uid = 65534;
        cfg.run_as_gid = 65534;
        struct env e;
        e.fds_before = count_open_fds();
        snprintf(e.dir, sizeof(e.dir), "/tmp/vhostmig-tb-XXXXXX");
        assert_non_null(mkdtemp(e.dir));
        /* A world-writable directory, where any user may bind a path. */
        assert_int_equal(chmod(e.dir, 01777), 0);
        snprintf(e.socket, sizeof(e.socket), "%s/sock", e.dir);
        snprintf(e.record, sizeof(e.record), "%s/record", e.dir);
        cfg.record_path = e.record;
        assert_int_equal(tb_spawn_listen(&cfg, e.socket, &e.pid), 0);
        struct vhu_conn *c = env_connect(&e);
        struct ucred cred;
        socklen_t len = sizeof(cred);
        assert_int_equal(getsockopt(vhu_conn_fd(c), SOL_SOCKET, SO_PEERCRED, &cred, &len), 0);
        assert_int_equal(cred.pid, e.pid);
        assert_int_equal(cred.uid, 65534);
        assert_int_equal(cred.gid, 65534);
        struct stat st;
        assert_int_equal(stat(e.socket, &st), 0);
        assert_int_equal(st.st_uid, 65534);
        CONN_CHECK(c, vhu_negotiate(c, NULL));
        vhu_conn_free(c);
        env_stop(&e);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(every_request_goes_through),
                cmocka_unit_test(each_fault_is_detected),
                cmocka_unit_test(nack_fails_only_that_request),
                cmocka_unit_test(bad_replies_to_typed_requests),
                cmocka_unit_test(missing_features_are_never_used),
                cmocka_unit_test(no_protocol_features_at_all),
                cmocka_unit_test(backend_requests_are_answered),
                cmocka_unit_test(probe_reports_each_misbehaviour),
                cmocka_unit_test(probe_reports_blockers),
                cmocka_unit_test(flooding_channel_cannot_defeat_the_timeout),
                cmocka_unit_test(half_header_on_channel_cannot_defeat_the_timeout),
                cmocka_unit_test(probe_against_a_flooding_channel),
                cmocka_unit_test(connect_to_a_full_backlog_is_bounded),
                cmocka_unit_test(fds_on_every_reply_are_refused),
                cmocka_unit_test(fds_on_channel_messages_are_refused),
                cmocka_unit_test(truncate_memory_truncates_and_closes),
                cmocka_unit_test(backend_runs_as_another_uid),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
