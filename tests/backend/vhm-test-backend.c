/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vhm-test-backend: the test back-end as a program, for scripts and manual tests. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/backend/test-backend.h"

static const char *volatile socket_to_remove;

static void on_term(int sig) {
        (void) sig;
        if (socket_to_remove)
                unlink(socket_to_remove);
        _exit(0);
}

static void usage(FILE *out) {
        fprintf(out,
                "Usage: vhm-test-backend --socket PATH [OPTIONS]\n"
                "A scriptable, recording, fault-injecting vhost-user back-end for tests.\n"
                "\n"
                "  --socket PATH              listen on PATH (or connect to it with --client)\n"
                "  --client                   connect to a listening front-end (reconnects after each connection)\n"
                "  --once                     exit after the first connection closes\n"
                "  --connections N            exit after N connections (default: serve until killed)\n"
                "  --record FILE              append one line per message, fault and violation to FILE\n"
                "  --fault REQ:KIND[=VAL][:N] at the Nth (default 1st) REQ: close, bad-flags, oversize, undersize,\n"
                "                             wrong-request, extra-fds, nack, hang, garbage (repeatable);\n"
                "                             flood-channel (stream back-end requests, no reply, until the\n"
                "                             front-end hangs up), channel-half-header (6 bytes of a header on\n"
                "                             the back-end channel, then no reply), truncate-memory (truncate\n"
                "                             the guest-memory fds to 0, then close), die (exit at once,\n"
                "                             status VAL, default 1), notify (SIGUSR1 to the parent, then\n"
                "                             answer VAL ms later, default 200)\n"
                "  --send-backend REQ[:need-reply][:block][:after=REQ][:index=N]\n"
                "                             send a back-end request after SET_OWNER (or REQ) (repeatable)\n"
                "  --features HEX             virtio features offered (default 0x%llx)\n"
                "  --protocol-features HEX    protocol features offered (default 0x%llx)\n"
                "  --no-protocol-features --no-log-shmfd --no-rarp --no-reply-ack --no-mq --no-log-all\n"
                "  --no-device-state\n"
                "  --device-state-size N      the back-end's own state (DEVICE_STATE): N bytes (default 0)\n"
                "  --device-state-seed N      ... made from this seed (default 0)\n"
                "  --queues N                 GET_QUEUE_NUM (default %u)\n"
                "  --max-mem-slots N          GET_MAX_MEM_SLOTS (default %u)\n"
                "  --log-reply-size N         SET_LOG_BASE reply payload: 0, 8 or 16 (default %u)\n"
                "  --timeout MS               message, connect and back-end reply timeout (default %u)\n"
                "  --reconnect-timeout MS     --client: give up reconnecting after MS, 0 = never (default %u)\n"
                "  --no-accept                listen with a full backlog (our own connections) and never accept\n"
                "  --uid USER, --gid GROUP    drop to this user / group (name or number) before the socket exists\n"
                "  --fds-always               an extra fd (/dev/null) on every reply and back-end request\n"
                "  --verbose                  copy the record to stderr\n"
                "  --help\n",
                (unsigned long long) TB_DEFAULT_FEATURES, (unsigned long long) TB_DEFAULT_PROTOCOL_FEATURES,
                TB_DEFAULT_QUEUES, TB_DEFAULT_MAX_MEM_SLOTS, TB_DEFAULT_LOG_REPLY_SIZE, TB_DEFAULT_IO_TIMEOUT_MS,
                TB_DEFAULT_RECONNECT_TIMEOUT_MS);
}

static int parse_number(const char *opt, const char *s, unsigned long long max, unsigned long long *out) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 0);
        if (errno || end == s || *end || s[0] == '-' || v > max) {
                fprintf(stderr, "vhm-test-backend: invalid value for --%s: %s\n", opt, s);
                return -EINVAL;
        }
        *out = v;
        return 0;
}

static int parse_hex(const char *opt, const char *s, unsigned long long *out) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 16);
        if (errno || end == s || *end || s[0] == '-') {
                fprintf(stderr, "vhm-test-backend: invalid value for --%s: %s\n", opt, s);
                return -EINVAL;
        }
        *out = v;
        return 0;
}

/* A user or group by name, else by number below (id_t) -1. */
static int parse_id(const char *opt, const char *s, bool group, unsigned long long *out) {
        if (group) {
                const struct group *g = getgrnam(s);
                if (g) {
                        *out = g->gr_gid;
                        return 0;
                }
        } else {
                const struct passwd *p = getpwnam(s);
                if (p) {
                        *out = p->pw_uid;
                        return 0;
                }
        }
        return parse_number(opt, s, UINT32_MAX - 1, out);
}

enum {
        OPT_SOCKET = 256,
        OPT_CLIENT,
        OPT_ONCE,
        OPT_CONNECTIONS,
        OPT_RECORD,
        OPT_FAULT,
        OPT_SEND_BACKEND,
        OPT_FEATURES,
        OPT_PROTOCOL_FEATURES,
        OPT_NO_PROTOCOL_FEATURES,
        OPT_NO_LOG_SHMFD,
        OPT_NO_RARP,
        OPT_NO_REPLY_ACK,
        OPT_NO_MQ,
        OPT_NO_LOG_ALL,
        OPT_NO_DEVICE_STATE,
        OPT_DEVICE_STATE_SIZE,
        OPT_DEVICE_STATE_SEED,
        OPT_QUEUES,
        OPT_MAX_MEM_SLOTS,
        OPT_LOG_REPLY_SIZE,
        OPT_TIMEOUT,
        OPT_RECONNECT_TIMEOUT,
        OPT_NO_ACCEPT,
        OPT_UID,
        OPT_GID,
        OPT_FDS_ALWAYS,
        OPT_VERBOSE,
        OPT_HELP,
};

static const struct option options[] = {
        { "socket", required_argument, NULL, OPT_SOCKET },
        { "client", no_argument, NULL, OPT_CLIENT },
        { "once", no_argument, NULL, OPT_ONCE },
        { "connections", required_argument, NULL, OPT_CONNECTIONS },
        { "record", required_argument, NULL, OPT_RECORD },
        { "fault", required_argument, NULL, OPT_FAULT },
        { "send-backend", required_argument, NULL, OPT_SEND_BACKEND },
        { "features", required_argument, NULL, OPT_FEATURES },
        { "protocol-features", required_argument, NULL, OPT_PROTOCOL_FEATURES },
        { "no-protocol-features", no_argument, NULL, OPT_NO_PROTOCOL_FEATURES },
        { "no-log-shmfd", no_argument, NULL, OPT_NO_LOG_SHMFD },
        { "no-rarp", no_argument, NULL, OPT_NO_RARP },
        { "no-reply-ack", no_argument, NULL, OPT_NO_REPLY_ACK },
        { "no-mq", no_argument, NULL, OPT_NO_MQ },
        { "no-log-all", no_argument, NULL, OPT_NO_LOG_ALL },
        { "no-device-state", no_argument, NULL, OPT_NO_DEVICE_STATE },
        { "device-state-size", required_argument, NULL, OPT_DEVICE_STATE_SIZE },
        { "device-state-seed", required_argument, NULL, OPT_DEVICE_STATE_SEED },
        { "queues", required_argument, NULL, OPT_QUEUES },
        { "max-mem-slots", required_argument, NULL, OPT_MAX_MEM_SLOTS },
        { "log-reply-size", required_argument, NULL, OPT_LOG_REPLY_SIZE },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "reconnect-timeout", required_argument, NULL, OPT_RECONNECT_TIMEOUT },
        { "no-accept", no_argument, NULL, OPT_NO_ACCEPT },
        { "uid", required_argument, NULL, OPT_UID },
        { "gid", required_argument, NULL, OPT_GID },
        { "fds-always", no_argument, NULL, OPT_FDS_ALWAYS },
        { "verbose", no_argument, NULL, OPT_VERBOSE },
        { "help", no_argument, NULL, OPT_HELP },
        {},
};

int main(int argc, char **argv) {
        struct tb_config cfg;
        const char *path = NULL;
        bool client = false;
        unsigned long long v;
        int opt;

        tb_config_init(&cfg);
        cfg.max_connections = 0;

        while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
                switch (opt) {
                case OPT_SOCKET:
                        path = optarg;
                        break;
                case OPT_CLIENT:
                        client = true;
                        break;
                case OPT_ONCE:
                        cfg.max_connections = 1;
                        break;
                case OPT_CONNECTIONS:
                        if (parse_number("connections", optarg, UINT32_MAX, &v) < 0)
                                return 2;
                        cfg.max_connections = (unsigned) v;
                        break;
                case OPT_RECORD:
                        cfg.record_path = optarg;
                        break;
                case OPT_FAULT: {
                        struct tb_fault f;
                        if (tb_parse_fault(optarg, &f) < 0 || tb_config_add_fault(&cfg, &f) < 0) {
                                fprintf(stderr, "vhm-test-backend: invalid or too many --fault: %s\n", optarg);
                                return 2;
                        }
                        break;
                }
                case OPT_SEND_BACKEND: {
                        struct tb_backend_req b;
                        if (tb_parse_backend_req(optarg, &b) < 0 || tb_config_add_backend_req(&cfg, &b) < 0) {
                                fprintf(stderr, "vhm-test-backend: invalid or too many --send-backend: %s\n", optarg);
                                return 2;
                        }
                        break;
                }
                case OPT_FEATURES:
                        if (parse_hex("features", optarg, &v) < 0)
                                return 2;
                        cfg.features = v;
                        break;
                case OPT_PROTOCOL_FEATURES:
                        if (parse_hex("protocol-features", optarg, &v) < 0)
                                return 2;
                        cfg.protocol_features = v;
                        break;
                case OPT_NO_PROTOCOL_FEATURES:
                        cfg.no_protocol_features = true;
                        break;
                case OPT_NO_LOG_SHMFD:
                        cfg.no_log_shmfd = true;
                        break;
                case OPT_NO_RARP:
                        cfg.no_rarp = true;
                        break;
                case OPT_NO_REPLY_ACK:
                        cfg.no_reply_ack = true;
                        break;
                case OPT_NO_MQ:
                        cfg.no_mq = true;
                        break;
                case OPT_NO_LOG_ALL:
                        cfg.no_log_all = true;
                        break;
                case OPT_NO_DEVICE_STATE:
                        cfg.no_device_state = true;
                        break;
                case OPT_DEVICE_STATE_SIZE:
                        if (parse_number("device-state-size", optarg, TB_MAX_DEVICE_STATE, &v) < 0)
                                return 2;
                        cfg.device_state_size = (size_t) v;
                        break;
                case OPT_DEVICE_STATE_SEED:
                        if (parse_number("device-state-seed", optarg, UINT32_MAX, &v) < 0)
                                return 2;
                        cfg.device_state_seed = (uint32_t) v;
                        break;
                case OPT_QUEUES:
                        if (parse_number("queues", optarg, 128, &v) < 0)
                                return 2;
                        cfg.queues = (unsigned) v;
                        break;
                case OPT_MAX_MEM_SLOTS:
                        if (parse_number("max-mem-slots", optarg, TB_MAX_MEM_SLOTS, &v) < 0)
                                return 2;
                        cfg.max_mem_slots = (unsigned) v;
                        break;
                case OPT_LOG_REPLY_SIZE:
                        if (parse_number("log-reply-size", optarg, 16, &v) < 0)
                                return 2;
                        cfg.log_reply_size = (unsigned) v;
                        break;
                case OPT_TIMEOUT:
                        if (parse_number("timeout", optarg, UINT32_MAX, &v) < 0)
                                return 2;
                        cfg.io_timeout_ms = (unsigned) v;
                        break;
                case OPT_RECONNECT_TIMEOUT:
                        if (parse_number("reconnect-timeout", optarg, UINT32_MAX, &v) < 0)
                                return 2;
                        cfg.reconnect_timeout_ms = (unsigned) v;
                        break;
                case OPT_NO_ACCEPT:
                        cfg.no_accept = true;
                        break;
                case OPT_UID:
                        if (parse_id("uid", optarg, false, &v) < 0)
                                return 2;
                        cfg.run_as_uid = (uid_t) v;
                        break;
                case OPT_GID:
                        if (parse_id("gid", optarg, true, &v) < 0)
                                return 2;
                        cfg.run_as_gid = (gid_t) v;
                        break;
                case OPT_FDS_ALWAYS:
                        cfg.fds_on_every_message = true;
                        break;
                case OPT_VERBOSE:
                        cfg.verbose = true;
                        break;
                case OPT_HELP:
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "vhm-test-backend: unexpected argument: %s\n", argv[optind]);
                return 2;
        }
        if (!path) {
                fprintf(stderr, "vhm-test-backend: --socket is required\n");
                usage(stderr);
                return 2;
        }
        if (client && cfg.no_accept) {
                fprintf(stderr, "vhm-test-backend: --no-accept needs a listening socket, not --client\n");
                return 2;
        }
        const char *why;
        if (tb_config_check(&cfg, &why) < 0) {
                fprintf(stderr, "vhm-test-backend: %s\n", why);
                return 2;
        }

        struct sigaction sa = { .sa_handler = on_term };
        sigemptyset(&sa.sa_mask);
        socket_to_remove = client ? NULL : path;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        int r = client ? tb_run_connect(&cfg, path, NULL, NULL) : tb_run_listen(&cfg, path, NULL, NULL);
        if (r < 0) {
                fprintf(stderr, "vhm-test-backend: %s: %s\n", path, strerror(-r));
                return 1;
        }
        return 0;
}
