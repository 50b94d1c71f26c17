/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmig-guest: the synthetic guest as a program, a small VMM that uses
 * vhostmigd as its vhost-user front-end.  It creates guest memory and
 * eventfds with the guest library (tests/guest/guest.h), hands them to the
 * daemon over D-Bus (CreateVm, AddDevice), drives sequence-numbered traffic
 * through the back-end, optionally with dirty logging on, announces the VM
 * with SEND_RARP, destroys the VM and prints a verdict.
 *
 * It also migrates: --migrate-to pauses the guest after some traffic and has
 * the daemon send it (Vm.MigrateTo); --incoming makes empty memory, has the
 * daemon wait for it (Vm.PrepareIncoming) and resumes the guest on what
 * arrived, with the same sequence numbers.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "daemon/common/bus-api.h"
#include "daemon/common/cleanup.h"
#include "daemon/common/cli-util.h"
#include "daemon/guest/guest.h"
#include "proto/vhost-user.h"

#define BUS_NAME      VHOSTMIG_BUS_NAME
#define MANAGER_PATH  VHOSTMIG_ROOT_PATH
#define MANAGER_IFACE VHOSTMIG_MANAGER_INTERFACE
#define VM_IFACE      VHOSTMIG_VM_INTERFACE
#define DEVICE_IFACE  VHOSTMIG_DEVICE_INTERFACE
/* Queues whose fds fit one message on a stock bus; AddQueues carries the rest. */
#define QUEUES_PER_MESSAGE (VHOSTMIG_BUS_MAX_FDS / VHOSTMIG_FDS_PER_QUEUE)

#define CHUNK_FRAMES 8192u /* frames per queue pair per run_until() */
#define STALL_MS     10000 /* no progress for this long: the back-end stalled */
#define RARP_WAIT_MS 3000
#define DRAIN_MS     1000
#define POLL_MS      20    /* how often a running migration's state is read */
#define CANCEL_MS    10000 /* after CancelMigration, how long for a final state */
/* Frames per queue pair sent just before the pause, so that some are in flight. */
#define PAUSE_BURST 32u
#define LIVE_MAX_S  86400.0 /* a live migration's traffic ends with the migration, not a clock */
#define LIVE_BUS_NS 500000u /* the bus is served this often from a busy traffic loop */

/* The live-migration contract's names (org.vhostmig1, docs/dbus-api.md). */
#define MIG_STATE_PRE_SWITCHOVER "pre-switchover"
#define KEY_LIVE                 "Live"
#define KEY_MAX_DOWNTIME_MS      "MaxDowntimeMs"
#define KEY_MAX_BANDWIDTH        "MaxBandwidth"
#define KEY_MAX_ROUNDS           "MaxRounds"
#define KEY_FORCE_SWITCHOVER     "ForceSwitchover"
#define KEY_PAUSE_TIMEOUT_MS     "PauseTimeoutMs"

enum {
        EXIT_PASS = 0,
        EXIT_FAIL = 1,
        EXIT_USAGE = 2,
};

/* ---- options ----------------------------------------------------------------- */

static struct {
        char name[64];
        const char *socket;
        bool server;
        unsigned queue_pairs;
        unsigned ring_size;
        uint64_t mem_size;
        uint64_t frames; /* per queue pair; 0: run for `seconds` */
        double seconds;
        unsigned frame_len;
        bool log;
        unsigned harvest_ms;
        const char *bus_address;
        bool json;
        double timeout; /* seconds, for each D-Bus method call */
        bool busy_poll;
        bool log_switch_locked; /* AddDevice's LogSwitchLocked */
        /* migration */
        bool incoming;
        const char *listen;
        const char *migrate_to;
        const char *token;
        double migrate_after;
        /* live migration (MigrateTo "Live" and its tuning; 0: the daemon's default) */
        bool live;
        unsigned max_downtime_ms;
        uint64_t max_bandwidth;
        bool have_max_bandwidth;
        unsigned max_rounds;
        bool force_switchover;
        unsigned pause_timeout_ms;
} arg = {
        .queue_pairs = 1,
        .ring_size = VHM_GUEST_DEFAULT_RING,
        .mem_size = VHM_GUEST_DEFAULT_MEM,
        .seconds = 5,
        .frame_len = VHM_GUEST_DEFAULT_FRAME,
        .harvest_ms = 100,
        .timeout = 60,
        .migrate_after = 2,
};

static volatile sig_atomic_t interrupted;

/* ---- run state ---------------------------------------------------------------- */

/* A migration of this guest, as the daemon reports it (the VM's properties). */
struct migration {
        bool started;          /* MigrateTo accepted, or PrepareIncoming answered */
        char *address, *token; /* incoming: PrepareIncoming's answer */
        char *state, *role, *error;
        uint64_t pages_total, pages, zero_pages, bytes, downtime_ms, total_ms, checksum;
        uint32_t rarp_sent;
        /* The guest's own view: its statistics at the switchover (the source's
         * pause, the destination's attach) and checksums of its memory. */
        bool have_switch;
        struct vhm_guest_stats at_switch;
        bool have_memory_checksum; /* source: the whole image, after it left */
        uint64_t memory_checksum;
        bool have_driver_checksum; /* both: the driver's image at the switchover */
        uint64_t driver_checksum;
        char *device_state; /* source: its device once the guest left */
        /* Live: the pre-copy figures (final properties) and the pause. */
        uint64_t round, pages_remaining, dirty_rate, bandwidth, expected_downtime_ms, setup_ms;
        uint32_t dirty_bitmaps;
        bool paused;         /* the guest paused at pre-switchover */
        bool continued;      /* MigrateContinue answered */
        uint64_t pause_ns;   /* when it paused */
        uint64_t resumed_ns; /* source: when a failed migration let it run again */
};

/* What the bus told the traffic loop while a live migration runs. */
struct live {
        sd_bus_slot *match;
        sd_bus_slot *call;    /* MigrateTo, while it is answered */
        char *state;          /* the latest MigrationState */
        bool state_stale;     /* invalidated: read it again */
        bool call_failed;     /* MigrateTo refused (the error is in the run's) */
        bool over;            /* the migration ended: the loop no longer watches it */
        uint64_t next_bus_ns; /* when the traffic loop serves the bus next */
        uint64_t round, pages_remaining, dirty_rate, bandwidth, expected_downtime_ms;
};

/* What an incoming guest's front-end is given before the memory arrives. */
struct incoming {
        int memfd;
        int kick[VHM_GUEST_MAX_QUEUES];
        int call[VHM_GUEST_MAX_QUEUES];
};

struct run {
        sd_bus *bus;
        struct vhm_guest *g;
        char *vm_path;
        char *dev_path;
        bool vm_created;
        bool logging;

        uint64_t acked_features;
        uint64_t acked_protocol_features;

        /* traffic */
        uint64_t t_start_ns;
        uint64_t t_end_ns;
        uint64_t next_progress_ns;
        uint64_t last_progress_ns;
        uint64_t last_progress_sent;
        uint64_t next_harvest_ns;
        uint64_t stall_frames; /* frames not back when the run stalled */

        /* dirty log */
        uint64_t harvests;      /* Harvest() calls we made */
        uint64_t new_pages;     /* sum of their new_pages */
        uint64_t dirty_pages;   /* DirtyPages once logging stopped */
        uint64_t vm_harvests;   /* the VM's Harvests property at the end */
        uint64_t written_pages; /* pages the guest saw the back-end write */
        bool log_checked;

        /* announce */
        bool rarp_expected;
        bool announced;
        uint32_t rarp_sent;

        struct incoming in;
        struct migration m;
        struct live live;

        /* failures, in words; the verdict fails when there is any */
        char *errors[16];
        unsigned n_errors;
};

static FILE *progress_out(void) {
        return arg.json ? stderr : stdout;
}

__attribute__((format(printf, 2, 3))) static void add_error(struct run *r, const char *fmt, ...) {
        char *s = NULL;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        if (!s)
                return;
        fprintf(stderr, "vhostmig-guest: %s\n", s);
        if (r->n_errors < sizeof(r->errors) / sizeof(r->errors[0]))
                r->errors[r->n_errors++] = s;
        else
                free(s);
}

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static uint64_t call_timeout_usec(void) {
        return (uint64_t) (arg.timeout * 1e6);
}

/* ---- usage -------------------------------------------------------------------- */

static void help(void) {
        printf("Usage: vhostmig-guest [OPTIONS] --socket PATH\n"
               "\n"
               "A synthetic guest and a small VMM using vhostmigd as its vhost-user front-end.\n"
               "It creates guest memory (a memfd) with virtio-net split rings and eventfds,\n"
               "registers it with vhostmigd (CreateVm), adds one vhost-user net device on the\n"
               "back-end at PATH (AddDevice), then transmits sequence-numbered, checksummed\n"
               "frames on every queue pair and checks every frame that comes back.  The\n"
               "back-end must echo frames, e.g. DPDK testpmd with --forward-mode=macswap\n"
               "--port-topology=loop on a net_vhost port.\n"
               "\n"
               "With --log, dirty logging is switched on (StartLogging) before traffic, the\n"
               "log is harvested every --harvest-ms during traffic and logging is switched\n"
               "off (StopLogging) after it; the VM's dirty-page count must then be at least\n"
               "the number of pages the guest saw the back-end write.  When the device\n"
               "negotiated RARP (and the guest does not announce itself) the VM is announced\n"
               "(Announce) and the RARP frame must come back.  The VM is destroyed at the\n"
               "end, also on SIGINT or SIGTERM.  Progress is printed once a second.\n"
               "\n"
               "Options:\n"
               "  -n, --name NAME        VM name, 1..63 of [A-Za-z0-9_.-] (default guest-PID)\n"
               "  -s, --socket PATH      the back-end's vhost-user socket (required)\n"
               "      --server           vhostmigd listens at PATH and waits for the back-end\n"
               "  -q, --queue-pairs N    queue pairs, 1..%u (default 1)\n"
               "  -r, --ring-size N      ring size, a power of two 2..%u (default %u)\n"
               "  -m, --memory SIZE      guest memory, bytes with optional K/M/G suffix,\n"
               "                         a multiple of 4K (default 64M)\n"
               "  -f, --frames N         transmit N frames per queue pair, then stop\n"
               "  -t, --seconds S        transmit for S seconds (default 5)\n"
               "  -l, --frame-len N      frame length without FCS, %u..%u (default %u)\n"
               "      --log              dirty logging on during traffic\n"
               "      --harvest-ms MS    harvest the log every MS milliseconds (default 100)\n"
               "      --bus-address ADDR D-Bus address of the bus vhostmigd is on (default:\n"
               "                         the system bus, or $DBUS_SYSTEM_BUS_ADDRESS)\n"
               "      --timeout S        timeout of each D-Bus method call (default 60)\n"
               "      --busy-poll        never sleep on the call eventfds\n"
               "      --log-switch-locked\n"
               "                         declare the back-end to switch logs under its queue\n"
               "                         locks (AddDevice's LogSwitchLocked): harvests hand it\n"
               "                         a fresh log; DPDK only, never libvhost-user\n"
               "      --json             print the verdict as JSON on stdout (progress\n"
               "                         goes to stderr)\n"
               "\n"
               "Migration (stop-and-copy through vhostmigd, Vm.PrepareIncoming and Vm.MigrateTo):\n"
               "      --incoming         destination: empty memory and eventfds, the VM and its\n"
               "                         device in incoming mode; prints the address and token\n"
               "                         to give the source (one JSON line with --json), waits\n"
               "                         for the migration, then resumes the guest on the memory\n"
               "                         that arrived with the same sequence numbers, --seconds\n"
               "      --listen ADDR      where the destination listens: unix:PATH or\n"
               "                         tcp:HOST:PORT (default: the daemon's choice)\n"
               "      --migrate-to ADDR  source: traffic for --migrate-after seconds, pause the\n"
               "                         guest with frames in flight, MigrateTo, wait for the end\n"
               "      --token TOKEN      the token the destination printed\n"
               "      --migrate-after S  seconds of traffic before the pause (default 2)\n"
               "\n"
               "Live migration (the source; MigrateTo with \"Live\"):\n"
               "      --live             register a dirty bitmap (AddDirtyBitmap) and mark every\n"
               "                         page the driver writes; after --migrate-after seconds\n"
               "                         MigrateTo runs live while traffic goes on at full\n"
               "                         speed; at \"pre-switchover\" the guest pauses (no TX,\n"
               "                         no RX, no memory writes), calls MigrateContinue and\n"
               "                         waits for the end\n"
               "      --max-downtime MS  switch over when the rest fits MS (daemon default 300)\n"
               "      --max-bandwidth B  bytes/s during the rounds, K/M/G suffix; 0 unlimited\n"
               "      --max-rounds N     rounds before giving up (daemon default 30)\n"
               "      --force-switchover switch over after --max-rounds anyway\n"
               "      --pause-timeout MS how long the daemon waits for MigrateContinue\n"
               "  -h, --help             this text\n"
               "\n"
               "With more than one queue pair, VIRTIO_NET_F_MQ is requested as well as the\n"
               "driver's features (VERSION_1, MRG_RXBUF, RING_EVENT_IDX).  The back-end must\n"
               "serve at least that many queue pairs (testpmd: queues=N, --rxq=N --txq=N).\n"
               "Each queue pair brings 4 file descriptors and a stock system bus carries 16\n"
               "per message: beyond 4 queue pairs, AddDevice carries the first 4 and\n"
               "Device.AddQueues the rest.\n"
               "\n"
               "The verdict lists frames sent, received, lost (skipped by a later frame, or\n"
               "never back at the end), corrupted, duplicated, the RARP seen, harvests and\n"
               "dirty pages.\n"
               "\n"
               "With a migration the verdict adds its state, downtime, pages, zero pages and\n"
               "the memory checksum.  The source passes when the migration completed and its\n"
               "memory's checksum is the migration's; frames in flight at the pause left\n"
               "with the guest.  If the migration failed the source resumes here for\n"
               "--seconds.  The destination passes when the migration completed, no more\n"
               "frames were lost than were in flight at the switchover, and exactly one RARP\n"
               "came back if the device negotiated RARP (none otherwise).  Both print the\n"
               "checksum of the driver's image at the switchover (memory without the used\n"
               "rings and RX buffers, which a restored back-end writes at once): equal at\n"
               "both ends.  An interrupted wait cancels the migration.\n"
               "\n"
               "Exit status: 0 when no frame was lost, corrupted or duplicated, the device\n"
               "broke no ring rule, the RARP came back when expected, the dirty log covered\n"
               "the back-end's writes (with --log), a migration completed (with --incoming or\n"
               "--migrate-to) and every D-Bus call succeeded; 1 otherwise (also when\n"
               "interrupted); 2 for usage errors.\n",
               VHM_GUEST_MAX_QP, VHM_GUEST_MAX_RING, VHM_GUEST_DEFAULT_RING, VHM_GUEST_MIN_FRAME, VHM_GUEST_MAX_FRAME,
               VHM_GUEST_DEFAULT_FRAME);
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out) {
        uint64_t v;
        if (cli_parse_u64(s, false, &v) < 0 || v < min || v > max)
                return -EINVAL;
        *out = v;
        return 0;
}

static int parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *out) {
        uint64_t v;
        int r = parse_u64(s, min, max, &v);
        if (r < 0)
                return r;
        *out = (unsigned) v;
        return 0;
}

/* Bytes with an optional binary K/M/G/T suffix. */
static int parse_size(const char *s, uint64_t *out) {
        return cli_parse_u64(s, true, out);
}

static int parse_seconds(const char *s, double *out) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > 86400 * 365)
                return -EINVAL;
        *out = v;
        return 0;
}

static bool vm_name_valid(const char *s) {
        size_t n = strlen(s);
        if (n < 1 || n > 63)
                return false;
        return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

static bool is_pow2(unsigned v) {
        return v && !(v & (v - 1));
}

static bool migration_address_valid(const char *s) {
        return (strncmp(s, "unix:", 5) == 0 && s[5]) || (strncmp(s, "tcp:", 4) == 0 && s[4]);
}

/* The migration options' rules; -1 when they hold, as parse_args returns. */
static int check_live_args(bool have_tuning) {
        if (arg.live && !arg.migrate_to)
                return cli_usage_error("--live goes with --migrate-to");
        if (have_tuning && !arg.live)
                return cli_usage_error("--max-downtime, --max-bandwidth, --max-rounds, --force-switchover and "
                                       "--pause-timeout need --live");
        return -1;
}

static int check_migration_args(bool have_frames, bool have_after, bool have_tuning) {
        if (arg.incoming && arg.migrate_to)
                return cli_usage_error("--incoming and --migrate-to exclude each other");
        if (arg.listen && !arg.incoming)
                return cli_usage_error("--listen goes with --incoming");
        if ((arg.token || have_after) && !arg.migrate_to)
                return cli_usage_error("--token and --migrate-after go with --migrate-to");
        if (arg.migrate_to && !arg.token)
                return cli_usage_error("--migrate-to needs --token (PrepareIncoming's, printed by the destination)");
        if ((arg.incoming || arg.migrate_to) && (arg.log || have_frames))
                return cli_usage_error("--log and --frames do not go with a migration");
        return check_live_args(have_tuning);
}

/* getopt values of the live options. */
enum {
        OPT_LIVE = 0x200,
        OPT_MAX_DOWNTIME,
        OPT_MAX_BANDWIDTH,
        OPT_MAX_ROUNDS,
        OPT_FORCE_SWITCHOVER,
        OPT_PAUSE_TIMEOUT,
};

/* The live options; 1 when c was one of them, 0 when not, -1 on a usage error. */
static int parse_live_option(int c, const char *v, bool *have_tuning) {
        switch (c) {
        case OPT_LIVE:
                arg.live = true;
                return 1;
        case OPT_MAX_DOWNTIME:
                if (parse_unsigned(v, 1, 3600000, &arg.max_downtime_ms) < 0)
                        return cli_usage_error("invalid --max-downtime '%s': 1..3600000 ms", v), -1;
                break;
        case OPT_MAX_BANDWIDTH:
                if (parse_size(v, &arg.max_bandwidth) < 0)
                        return cli_usage_error("invalid --max-bandwidth '%s': bytes/s with K/M/G", v), -1;
                arg.have_max_bandwidth = true;
                break;
        case OPT_MAX_ROUNDS:
                if (parse_unsigned(v, 1, 10000, &arg.max_rounds) < 0)
                        return cli_usage_error("invalid --max-rounds '%s': 1..10000", v), -1;
                break;
        case OPT_FORCE_SWITCHOVER:
                arg.force_switchover = true;
                break;
        case OPT_PAUSE_TIMEOUT:
                if (parse_unsigned(v, 1, 3600000, &arg.pause_timeout_ms) < 0)
                        return cli_usage_error("invalid --pause-timeout '%s': 1..3600000 ms", v), -1;
                break;
        default:
                return 0;
        }
        *have_tuning = true;
        return 1;
}

static int parse_args(int argc, char **argv) {
        enum {
                OPT_SERVER = 0x100,
                OPT_LOG,
                OPT_HARVEST_MS,
                OPT_BUS_ADDRESS,
                OPT_JSON,
                OPT_TIMEOUT,
                OPT_BUSY_POLL,
                OPT_INCOMING,
                OPT_LISTEN,
                OPT_MIGRATE_TO,
                OPT_TOKEN,
                OPT_MIGRATE_AFTER,
                OPT_LOG_SWITCH_LOCKED,
        };
        static const struct option options[] = { { "name", required_argument, NULL, 'n' },
                                                 { "socket", required_argument, NULL, 's' },
                                                 { "server", no_argument, NULL, OPT_SERVER },
                                                 { "queue-pairs", required_argument, NULL, 'q' },
                                                 { "ring-size", required_argument, NULL, 'r' },
                                                 { "memory", required_argument, NULL, 'm' },
                                                 { "frames", required_argument, NULL, 'f' },
                                                 { "seconds", required_argument, NULL, 't' },
                                                 { "frame-len", required_argument, NULL, 'l' },
                                                 { "log", no_argument, NULL, OPT_LOG },
                                                 { "harvest-ms", required_argument, NULL, OPT_HARVEST_MS },
                                                 { "bus-address", required_argument, NULL, OPT_BUS_ADDRESS },
                                                 { "timeout", required_argument, NULL, OPT_TIMEOUT },
                                                 { "busy-poll", no_argument, NULL, OPT_BUSY_POLL },
                                                 { "log-switch-locked", no_argument, NULL, OPT_LOG_SWITCH_LOCKED },
                                                 { "json", no_argument, NULL, OPT_JSON },
                                                 { "incoming", no_argument, NULL, OPT_INCOMING },
                                                 { "listen", required_argument, NULL, OPT_LISTEN },
                                                 { "migrate-to", required_argument, NULL, OPT_MIGRATE_TO },
                                                 { "token", required_argument, NULL, OPT_TOKEN },
                                                 { "migrate-after", required_argument, NULL, OPT_MIGRATE_AFTER },
                                                 { "live", no_argument, NULL, OPT_LIVE },
                                                 { "max-downtime", required_argument, NULL, OPT_MAX_DOWNTIME },
                                                 { "max-bandwidth", required_argument, NULL, OPT_MAX_BANDWIDTH },
                                                 { "max-rounds", required_argument, NULL, OPT_MAX_ROUNDS },
                                                 { "force-switchover", no_argument, NULL, OPT_FORCE_SWITCHOVER },
                                                 { "pause-timeout", required_argument, NULL, OPT_PAUSE_TIMEOUT },
                                                 { "help", no_argument, NULL, 'h' },
                                                 {} };
        bool have_frames = false, have_seconds = false, have_after = false, have_tuning = false;
        int c, live;

        snprintf(arg.name, sizeof(arg.name), "guest-%d", (int) getpid());
        while ((c = getopt_long(argc, argv, "n:s:q:r:m:f:t:l:h", options, NULL)) >= 0) {
                if ((live = parse_live_option(c, optarg, &have_tuning)) != 0) {
                        if (live < 0)
                                return EXIT_USAGE;
                        continue;
                }
                switch (c) {
                case 'n':
                        if (!vm_name_valid(optarg))
                                return cli_usage_error("invalid VM name '%s': 1..63 of [A-Za-z0-9_.-]", optarg);
                        snprintf(arg.name, sizeof(arg.name), "%s", optarg);
                        break;
                case 's':
                        if (arg.socket)
                                return cli_usage_error("only one --socket (one device) is supported");
                        if (!optarg[0])
                                return cli_usage_error("empty socket path");
                        arg.socket = optarg;
                        break;
                case OPT_SERVER:
                        arg.server = true;
                        break;
                case 'q':
                        if (parse_unsigned(optarg, 1, VHM_GUEST_MAX_QP, &arg.queue_pairs) < 0)
                                return cli_usage_error("invalid --queue-pairs '%s': 1..%u", optarg, VHM_GUEST_MAX_QP);
                        break;
                case 'r':
                        if (parse_unsigned(optarg, 2, VHM_GUEST_MAX_RING, &arg.ring_size) < 0 ||
                            !is_pow2(arg.ring_size))
                                return cli_usage_error("invalid --ring-size '%s': a power of two, 2..%u", optarg,
                                                       VHM_GUEST_MAX_RING);
                        break;
                case 'm':
                        if (parse_size(optarg, &arg.mem_size) < 0 || arg.mem_size == 0 ||
                            arg.mem_size % VHM_GUEST_PAGE_SIZE)
                                return cli_usage_error("invalid --memory '%s': a non-zero multiple of 4K", optarg);
                        break;
                case 'f':
                        if (parse_u64(optarg, 1, UINT64_MAX / 2, &arg.frames) < 0)
                                return cli_usage_error("invalid --frames '%s'", optarg);
                        have_frames = true;
                        break;
                case 't':
                        if (parse_seconds(optarg, &arg.seconds) < 0)
                                return cli_usage_error("invalid --seconds '%s'", optarg);
                        have_seconds = true;
                        break;
                case 'l':
                        if (parse_unsigned(optarg, VHM_GUEST_MIN_FRAME, VHM_GUEST_MAX_FRAME, &arg.frame_len) < 0)
                                return cli_usage_error("invalid --frame-len '%s': %u..%u", optarg, VHM_GUEST_MIN_FRAME,
                                                       VHM_GUEST_MAX_FRAME);
                        break;
                case OPT_LOG:
                        arg.log = true;
                        break;
                case OPT_HARVEST_MS:
                        if (parse_unsigned(optarg, 1, 3600000, &arg.harvest_ms) < 0)
                                return cli_usage_error("invalid --harvest-ms '%s'", optarg);
                        break;
                case OPT_BUS_ADDRESS:
                        if (!optarg[0])
                                return cli_usage_error("empty bus address");
                        arg.bus_address = optarg;
                        break;
                case OPT_TIMEOUT:
                        if (parse_seconds(optarg, &arg.timeout) < 0 || arg.timeout > 3600)
                                return cli_usage_error("invalid --timeout '%s'", optarg);
                        break;
                case OPT_BUSY_POLL:
                        arg.busy_poll = true;
                        break;
                case OPT_JSON:
                        arg.json = true;
                        break;
                case OPT_INCOMING:
                        arg.incoming = true;
                        break;
                case OPT_LOG_SWITCH_LOCKED:
                        arg.log_switch_locked = true;
                        break;
                case OPT_LISTEN:
                        if (!migration_address_valid(optarg))
                                return cli_usage_error("invalid --listen '%s': unix:PATH or tcp:HOST:PORT", optarg);
                        arg.listen = optarg;
                        break;
                case OPT_MIGRATE_TO:
                        if (!migration_address_valid(optarg))
                                return cli_usage_error("invalid --migrate-to '%s': unix:PATH or tcp:HOST:PORT", optarg);
                        arg.migrate_to = optarg;
                        break;
                case OPT_TOKEN:
                        if (strlen(optarg) != 32 || strspn(optarg, "0123456789abcdef") != 32)
                                return cli_usage_error("invalid --token: the 32 lowercase hex digits the "
                                                       "destination printed");
                        arg.token = optarg;
                        break;
                case OPT_MIGRATE_AFTER:
                        if (parse_seconds(optarg, &arg.migrate_after) < 0)
                                return cli_usage_error("invalid --migrate-after '%s'", optarg);
                        have_after = true;
                        break;
                case 'h':
                        help();
                        exit(EXIT_PASS);
                default:
                        return cli_usage_error("unknown option");
                }
        }
        if (optind < argc)
                return cli_usage_error("unexpected argument '%s'", argv[optind]);
        if (!arg.socket)
                return cli_usage_error("--socket PATH is required");
        if (have_frames && have_seconds)
                return cli_usage_error("--frames and --seconds exclude each other");
        if (have_frames)
                arg.seconds = 0;
        return check_migration_args(have_frames, have_after, have_tuning);
}

/* ---- D-Bus helpers ------------------------------------------------------------ */

static void bus_error(struct run *r, const char *what, const sd_bus_error *e, int rc) {
        if (e && sd_bus_error_is_set(e))
                add_error(r, "%s: %s: %s", what, e->name, e->message ? e->message : "");
        else
                add_error(r, "%s: %s", what, strerror(-rc));
}

static int bus_connect(struct run *r) {
        int rc;
        if (!arg.bus_address) {
                rc = sd_bus_open_system_with_description(&r->bus, "vhostmig-guest");
                if (rc < 0)
                        add_error(r, "cannot connect to the system bus: %s", strerror(-rc));
                return rc;
        }
        rc = sd_bus_new(&r->bus);
        if (rc >= 0) {
                (void) sd_bus_set_description(r->bus, "vhostmig-guest");
                rc = sd_bus_set_address(r->bus, arg.bus_address);
        }
        if (rc >= 0)
                rc = sd_bus_set_bus_client(r->bus, 1);
        if (rc >= 0)
                rc = sd_bus_negotiate_fds(r->bus, 1);
        if (rc >= 0)
                rc = sd_bus_start(r->bus);
        if (rc < 0) {
                add_error(r, "cannot connect to the bus at %s: %s", arg.bus_address, strerror(-rc));
                r->bus = sd_bus_unref(r->bus);
        }
        return rc;
}

/* Reports a failed property read (and frees the error); returns rc. */
static int property_failed(struct run *r, const char *iface, const char *prop, sd_bus_error *e, int rc) {
        char what[128];
        snprintf(what, sizeof(what), "reading %s.%s", iface, prop);
        bus_error(r, what, e, rc);
        sd_bus_error_free(e);
        return rc;
}

static int get_u64(struct run *r, const char *path, const char *iface, const char *prop, uint64_t *out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int rc = sd_bus_get_property_trivial(r->bus, BUS_NAME, path, iface, prop, &e, 't', out);
        return rc < 0 ? property_failed(r, iface, prop, &e, rc) : rc;
}

static int get_bool(struct run *r, const char *path, const char *iface, const char *prop, bool *out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int v = 0;
        int rc = sd_bus_get_property_trivial(r->bus, BUS_NAME, path, iface, prop, &e, 'b', &v);
        if (rc < 0)
                return property_failed(r, iface, prop, &e, rc);
        *out = v;
        return rc;
}

static int get_string(struct run *r, const char *path, const char *iface, const char *prop, char **out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int rc = sd_bus_get_property_string(r->bus, BUS_NAME, path, iface, prop, &e, out);
        return rc < 0 ? property_failed(r, iface, prop, &e, rc) : rc;
}

/* A method without arguments (StartLogging: no options) on the VM; the reply is returned when wanted. */
static int vm_call(struct run *r, const char *method, sd_bus_message **reply) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL, *rep = NULL;
        int rc = sd_bus_message_new_method_call(r->bus, &m, BUS_NAME, r->vm_path, VM_IFACE, method);
        /* StartLogging and MigrateContinue take options (none are needed here). */
        if (rc >= 0 && (strcmp(method, "StartLogging") == 0 || strcmp(method, "MigrateContinue") == 0))
                rc = sd_bus_message_append(m, "a{sv}", 0);
        if (rc >= 0)
                rc = sd_bus_call(r->bus, m, call_timeout_usec(), &e, &rep);
        if (rc < 0)
                bus_error(r, method, &e, rc);
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
        if (reply && rc >= 0)
                *reply = rep;
        else
                sd_bus_message_unref(rep);
        return rc;
}

/* ---- the VM and its device ------------------------------------------------------ */

static struct vhm_guest_config guest_config(void) {
        return (struct vhm_guest_config){
                .mem_size = arg.mem_size,
                .queue_pairs = arg.queue_pairs,
                .ring_size = arg.ring_size,
                .frame_len = arg.frame_len,
        };
}

/* Until an incoming guest arrives, its memory and eventfds are the VMM's alone. */
static int guest_mem_fd(const struct run *r) {
        return r->g ? vhm_guest_mem_fd(r->g) : r->in.memfd;
}

static uint64_t guest_mem_size(const struct run *r) {
        return r->g ? vhm_guest_mem_size(r->g) : arg.mem_size;
}

static int guest_queue_layout(const struct run *r, unsigned q, struct vhm_guest_queue_layout *l) {
        if (r->g)
                return vhm_guest_queue_layout(r->g, q, l);
        struct vhm_guest_config c = guest_config();
        int rc = vhm_guest_plan_queue_layout(&c, q, l);
        if (rc >= 0) {
                l->kick_fd = r->in.kick[q];
                l->call_fd = r->in.call[q];
        }
        return rc;
}

static int create_vm(struct run *r) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;
        int rc = sd_bus_call_method(r->bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "CreateVm", &e, &reply,
                                    "sa(httt)a{sv}", arg.name, 1, guest_mem_fd(r), (uint64_t) 0, guest_mem_size(r),
                                    (uint64_t) 0, 0);
        if (rc < 0) {
                bus_error(r, "CreateVm", &e, rc);
                return rc;
        }
        rc = sd_bus_message_read(reply, "o", &path);
        if (rc < 0) {
                add_error(r, "CreateVm: bad reply: %s", strerror(-rc));
                return rc;
        }
        r->vm_created = true;
        r->vm_path = strdup(path);
        return r->vm_path ? 0 : -ENOMEM;
}

static void format_mac(const uint8_t mac[6], char out[18]) {
        snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

static uint64_t wanted_features(void) {
        uint64_t f = vhm_guest_driver_features();
        if (arg.queue_pairs > 1)
                f |= VHU_BIT(VHU_VF_NET_MQ);
        return f;
}

/* Queues first..first+n-1 as an a(uttthh). */
static int append_queues(struct run *r, sd_bus_message *m, unsigned first, unsigned n) {
        int rc = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned q = first; rc >= 0 && q < first + n; q++) {
                struct vhm_guest_queue_layout l;
                rc = guest_queue_layout(r, q, &l);
                if (rc >= 0)
                        rc = sd_bus_message_append(m, "(uttthh)", (uint32_t) l.num, l.desc_gpa, l.avail_gpa, l.used_gpa,
                                                   l.kick_fd, l.call_fd);
        }
        return rc < 0 ? rc : sd_bus_message_close_container(m);
}

/* The options: an incoming device gets its MAC from the source's DEVICE record. */
static int append_device_options(struct run *r, sd_bus_message *m) {
        uint8_t mac[6];
        char macs[18];
        int rc = sd_bus_message_open_container(m, 'a', "{sv}");
        if (rc >= 0)
                rc = sd_bus_message_append(m, "{sv}{sv}{sv}", VHOSTMIG_OPTION_SERVER, "b", (int) arg.server,
                                           VHOSTMIG_OPTION_FEATURES, "t", wanted_features(),
                                           VHOSTMIG_OPTION_QUEUE_PAIRS, "u", (uint32_t) arg.queue_pairs);
        if (rc >= 0 && arg.incoming)
                rc = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_INCOMING, "b", 1);
        if (rc >= 0 && !arg.incoming) {
                vhm_guest_mac(r->g, mac);
                format_mac(mac, macs);
                rc = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_MAC, "s", macs);
        }
        if (rc >= 0 && arg.log_switch_locked)
                rc = sd_bus_message_append(m, "{sv}", VHOSTMIG_OPTION_SWITCH_LOCKED, "b", 1);
        return rc < 0 ? rc : sd_bus_message_close_container(m);
}

/* AddDevice with the first queues (as many as one message carries fds for) and the options. */
static int add_device_message(struct run *r, unsigned nqueues, sd_bus_message **out) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int rc = sd_bus_message_new_method_call(r->bus, &m, BUS_NAME, r->vm_path, VM_IFACE, "AddDevice");
        if (rc >= 0)
                rc = sd_bus_message_append(m, "s", arg.socket);
        if (rc >= 0)
                rc = append_queues(r, m, 0, nqueues);
        if (rc >= 0)
                rc = append_device_options(r, m);
        if (rc >= 0)
                *out = TAKE_PTR(m);
        return rc;
}

/* A method call that must succeed; its reply when wanted. */
static int call_checked(struct run *r, const char *what, sd_bus_message *m, sd_bus_message **reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int rc = sd_bus_call(r->bus, m, call_timeout_usec(), &e, reply);
        if (rc < 0)
                bus_error(r, what, &e, rc);
        return rc;
}

/* The queues AddDevice had no room for. */
static int add_queues(struct run *r, unsigned first) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        unsigned total = 2 * arg.queue_pairs;
        int rc = 0;
        for (; rc >= 0 && first < total; first += QUEUES_PER_MESSAGE) {
                unsigned n = total - first < QUEUES_PER_MESSAGE ? total - first : QUEUES_PER_MESSAGE;
                m = sd_bus_message_unref(m);
                rc = sd_bus_message_new_method_call(r->bus, &m, BUS_NAME, r->dev_path, DEVICE_IFACE, "AddQueues");
                if (rc >= 0)
                        rc = append_queues(r, m, first, n);
                if (rc < 0)
                        add_error(r, "AddQueues: %s", strerror(-rc));
                else
                        rc = call_checked(r, "AddQueues", m, NULL);
        }
        return rc;
}

static int add_device(struct run *r) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        unsigned total = 2 * arg.queue_pairs;
        unsigned first = total < QUEUES_PER_MESSAGE ? total : QUEUES_PER_MESSAGE;
        const char *path;
        int rc = add_device_message(r, first, &m);
        if (rc < 0) {
                add_error(r, "AddDevice: %s", strerror(-rc));
                return rc;
        }
        rc = call_checked(r, "AddDevice", m, &reply);
        if (rc < 0)
                return rc;
        rc = sd_bus_message_read(reply, "o", &path);
        if (rc >= 0 && !(r->dev_path = strdup(path)))
                rc = -ENOMEM;
        if (rc < 0) {
                add_error(r, "AddDevice: %s", strerror(-rc));
                return rc;
        }
        return add_queues(r, first);
}

/* Read what was negotiated and tell the guest driver. */
static int configure_driver(struct run *r) {
        char *state = NULL;
        int rc;

        if (get_string(r, r->dev_path, DEVICE_IFACE, "State", &state) < 0 ||
            get_u64(r, r->dev_path, DEVICE_IFACE, "AckedFeatures", &r->acked_features) < 0 ||
            get_u64(r, r->dev_path, DEVICE_IFACE, "AckedProtocolFeatures", &r->acked_protocol_features) < 0) {
                free(state);
                return -EIO;
        }
        if (strcmp(state, "running") != 0) {
                add_error(r, "device %s is '%s' after AddDevice, not 'running'", r->dev_path, state);
                free(state);
                return -EIO;
        }
        free(state);
        if (arg.queue_pairs > 1 && !(r->acked_features & VHU_BIT(VHU_VF_NET_MQ))) {
                add_error(r, "%u queue pairs requested but VIRTIO_NET_F_MQ was not acknowledged", arg.queue_pairs);
                return -EIO;
        }
        rc = vhm_guest_set_features(r->g, r->acked_features);
        if (rc < 0) {
                add_error(r, "the guest driver cannot use the acknowledged features 0x%" PRIx64 ": %s",
                          r->acked_features, strerror(-rc));
                return rc;
        }
        r->rarp_expected = (r->acked_protocol_features & VHU_BIT(VHU_PF_RARP)) &&
                           !(r->acked_features & VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE));
        return 0;
}

/* ---- dirty logging ---------------------------------------------------------------- */

static int harvest(struct run *r) {
        sd_bus_message *reply = NULL;
        uint64_t new_pages, dirty;
        int rc = vm_call(r, "Harvest", &reply);
        if (rc < 0)
                return rc;
        rc = sd_bus_message_read(reply, "tt", &new_pages, &dirty);
        sd_bus_message_unref(reply);
        if (rc < 0) {
                add_error(r, "Harvest: bad reply: %s", strerror(-rc));
                return rc;
        }
        r->harvests++;
        r->new_pages += new_pages;
        r->dirty_pages = dirty;
        return 0;
}

static int count_page(uint64_t page, void *opaque) {
        (void) page;
        (*(uint64_t *) opaque)++;
        return 0;
}

static int start_logging(struct run *r) {
        bool on = false;
        uint64_t log_size = 0;

        /* Only what the back-end writes from now on must be in the log. */
        vhm_guest_reset_device_written_pages(r->g);
        if (vm_call(r, "StartLogging", NULL) < 0)
                return -EIO;
        r->logging = true;
        if (get_bool(r, r->vm_path, VM_IFACE, "Logging", &on) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "LogSize", &log_size) < 0)
                return -EIO;
        if (!on || log_size == 0) {
                add_error(r, "after StartLogging the VM says Logging=%s LogSize=%" PRIu64, on ? "true" : "false",
                          log_size);
                return -EIO;
        }
        return 0;
}

/* Traffic is quiescent: every page the back-end wrote was written while logging. */
static int stop_logging(struct run *r) {
        bool on = true;
        int rc;

        r->logging = false;
        if (vm_call(r, "StopLogging", NULL) < 0)
                return -EIO;
        if (get_bool(r, r->vm_path, VM_IFACE, "Logging", &on) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "DirtyPages", &r->dirty_pages) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "Harvests", &r->vm_harvests) < 0)
                return -EIO;
        if (on)
                add_error(r, "after StopLogging the VM still says Logging=true");
        r->written_pages = 0;
        rc = vhm_guest_for_each_device_written_page(r->g, count_page, &r->written_pages);
        if (rc < 0)
                return rc;
        r->log_checked = true;
        if (r->dirty_pages < r->written_pages)
                add_error(r, "the dirty log missed pages: %" PRIu64 " dirty, but the back-end wrote %" PRIu64,
                          r->dirty_pages, r->written_pages);
        if (r->vm_harvests < r->harvests)
                add_error(r, "the VM counts %" PRIu64 " harvests, %" PRIu64 " were made", r->vm_harvests, r->harvests);
        return 0;
}

/* ---- traffic ------------------------------------------------------------------------ */

static struct vhm_guest_stats stats(const struct run *r) {
        struct vhm_guest_stats s = { 0 };
        if (r->g) /* an incoming guest that never arrived has none */
                (void) vhm_guest_get_stats(r->g, VHM_GUEST_ALL_QPS, &s);
        return s;
}

static uint64_t accounted(const struct vhm_guest_stats *s) {
        return s->received + s->lost + s->corrupted;
}

static void print_progress(struct run *r, uint64_t now) {
        struct vhm_guest_stats s = stats(r);
        double dt = (double) (now - r->last_progress_ns) / 1e9;
        double rate = dt > 0 ? (double) (s.sent - r->last_progress_sent) / dt : 0;
        FILE *f = progress_out();

        fprintf(f, "[%6.1fs] sent %" PRIu64 " received %" PRIu64 " (%.0f frames/s)",
                (double) (now - r->t_start_ns) / 1e9, s.sent, s.received, rate);
        if (s.lost || s.corrupted || s.duplicated)
                fprintf(f, " lost %" PRIu64 " corrupted %" PRIu64 " duplicated %" PRIu64, s.lost, s.corrupted,
                        s.duplicated);
        if (r->logging)
                fprintf(f, " harvests %" PRIu64 " dirty pages %" PRIu64, r->harvests, r->dirty_pages);
        if (r->live.state)
                fprintf(f,
                        "; migration %s round %" PRIu64 ", %" PRIu64 " pages to go, dirty %" PRIu64
                        " pages/s, %.1f MB/s",
                        r->live.state, r->live.round, r->live.pages_remaining, r->live.dirty_rate,
                        (double) r->live.bandwidth / 1e6);
        fputc('\n', f);
        fflush(f);
        r->last_progress_ns = now;
        r->last_progress_sent = s.sent;
}

/* Live migration: the bus served from the traffic loop (below). */
#define LIVE_STOP (-EALREADY) /* step's return: the guest must stop for the migration */
static int live_step(struct run *r, uint64_t now);

/* Called by vhm_guest_run_until() on every loop iteration. */
static int step(void *opaque) {
        struct run *r = opaque;
        uint64_t now;

        if (interrupted)
                return -EINTR;
        now = now_ns();
        if (arg.live) {
                int rc = live_step(r, now);

                if (rc < 0)
                        return rc;
        }
        if (r->logging && now >= r->next_harvest_ns) {
                if (harvest(r) < 0)
                        return -EIO;
                now = now_ns();
                r->next_harvest_ns = now + (uint64_t) arg.harvest_ms * 1000000u;
        }
        if (now >= r->next_progress_ns) {
                print_progress(r, now);
                r->next_progress_ns += 1000000000u;
        }
        return 0;
}

/* Receive (and reclaim) without transmitting until everything sent is accounted for. */
static void drain(struct run *r, unsigned ms) {
        uint64_t end = now_ns() + (uint64_t) ms * 1000000u;
        for (;;) {
                for (unsigned qp = 0; qp < arg.queue_pairs; qp++) {
                        (void) vhm_guest_reclaim_tx(r->g, qp);
                        (void) vhm_guest_poll_rx(r->g, qp, 0);
                }
                struct vhm_guest_stats s = stats(r);
                if (accounted(&s) >= s.sent || now_ns() >= end)
                        return;
                usleep(200);
        }
}

/* run_until() in chunks, so that time-limited runs stop at a chunk boundary
 * with nothing in flight. */
static int traffic(struct run *r, double seconds) {
        struct vhm_guest_run_opts opts = {
                .flags = arg.busy_poll ? 0 : VHM_GUEST_RUN_WAIT_CALL,
                .step = step,
                .opaque = r,
        };
        /* A live source pauses with frames in flight, and the destination's
         * back-end adds a RARP to their echoes: leave it RX buffers. */
        if (arg.live)
                opts.window = arg.ring_size - arg.ring_size / 8;
        /* A live source also wakes for the bus: pre-switchover cannot wait. */
        if (arg.live && !arg.busy_poll) {
                opts.flags |= VHM_GUEST_RUN_WAKE_FD;
                opts.wake_fd = sd_bus_get_fd(r->bus);
        }
        uint64_t deadline = r->t_start_ns + (uint64_t) (seconds * 1e9);
        uint64_t done = 0; /* per queue pair */
        int rc = 0;

        while (!interrupted) {
                uint64_t chunk = CHUNK_FRAMES;
                if (arg.frames) {
                        if (done >= arg.frames)
                                break;
                        if (chunk > arg.frames - done)
                                chunk = arg.frames - done;
                } else if (now_ns() >= deadline) {
                        break;
                }
                rc = vhm_guest_run_until(r->g, VHM_GUEST_ALL_QPS, chunk, STALL_MS, &opts);
                if (rc < 0)
                        break;
                done += chunk;
        }
        /* Only frames transmitted during the run count for the rate. */
        r->t_end_ns = now_ns();
        /* Paused for the migration: a vCPU that stopped writes nothing more. */
        if (rc == LIVE_STOP)
                return rc;
        if (rc == -EINTR || interrupted) {
                drain(r, DRAIN_MS);
                return -EINTR;
        }
        if (rc == -ETIMEDOUT) {
                struct vhm_guest_stats s = stats(r);
                sd_bus_error e = SD_BUS_ERROR_NULL;
                char *state = NULL, *last_error = NULL;
                r->stall_frames = s.sent - accounted(&s);
                /* What the daemon thinks of the device, for the reader. */
                if (sd_bus_get_property_string(r->bus, BUS_NAME, r->dev_path, DEVICE_IFACE, "State", &e, &state) >= 0)
                        (void) sd_bus_get_property_string(r->bus, BUS_NAME, r->dev_path, DEVICE_IFACE, "LastError",
                                                          NULL, &last_error);
                add_error(r, "traffic stalled: %" PRIu64 " frame(s) not back after %d ms; device %s%s%s",
                          r->stall_frames, STALL_MS, state ? state : (e.name ? "gone: " : "state unknown"),
                          state ? (last_error && last_error[0] ? ": " : "") : (e.message ? e.message : ""),
                          state && last_error ? last_error : "");
                free(state);
                free(last_error);
                sd_bus_error_free(&e);
        } else if (rc == -EPROTO) {
                add_error(r, "the back-end broke the ring protocol (bad used entries)");
        } else if (rc == -EIO) {
                /* a harvest failed; already reported */
        } else if (rc < 0) {
                add_error(r, "traffic: %s", strerror(-rc));
        }
        /* The used entries of the last transmissions: reclaim them, so that the
         * record of device-written pages is complete before logging stops. */
        for (unsigned qp = 0; qp < arg.queue_pairs; qp++)
                (void) vhm_guest_reclaim_tx(r->g, qp);
        return rc;
}

/* Announce the VM and wait for the RARP to come back; the back-end injects it
 * into its next dequeue, so a few frames are transmitted to carry it. */
static int announce(struct run *r) {
        sd_bus_message *reply = NULL;
        struct vhm_guest_run_opts opts = { .flags = arg.busy_poll ? 0 : VHM_GUEST_RUN_WAIT_CALL };
        uint64_t before = stats(r).rarp_seen;
        int rc = vm_call(r, "Announce", &reply);
        if (rc < 0)
                return rc;
        rc = sd_bus_message_read(reply, "u", &r->rarp_sent);
        sd_bus_message_unref(reply);
        if (rc < 0) {
                add_error(r, "Announce: bad reply: %s", strerror(-rc));
                return rc;
        }
        r->announced = true;
        if (!r->rarp_expected)
                return 0;
        if (r->rarp_sent == 0) {
                add_error(r, "Announce sent no RARP although the device negotiated RARP");
                return -EIO;
        }
        uint64_t end = now_ns() + (uint64_t) RARP_WAIT_MS * 1000000u;
        while (!interrupted && stats(r).rarp_seen == before && now_ns() < end) {
                rc = vhm_guest_run_until(r->g, VHM_GUEST_ALL_QPS, 8, STALL_MS, &opts);
                if (rc < 0) {
                        add_error(r, "traffic after Announce: %s", strerror(-rc));
                        return rc;
                }
                usleep(10000);
        }
        if (stats(r).rarp_seen == before)
                add_error(r, "no RARP came back within %d ms of Announce", RARP_WAIT_MS);
        return 0;
}

/* The VM must not outlive us in the daemon: when the bus dropped our
 * connection (e.g. a message over its limits), connect again to destroy it. */
static void destroy_vm(struct run *r) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int rc;
        if (!r->vm_created)
                return;
        if (!sd_bus_is_open(r->bus)) {
                r->bus = sd_bus_flush_close_unref(r->bus);
                if (bus_connect(r) < 0)
                        return;
        }
        rc = sd_bus_call_method(r->bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "DestroyVm", &e, NULL, "s", arg.name);
        if (rc < 0)
                bus_error(r, "DestroyVm", &e, rc);
        else
                r->vm_created = false;
        sd_bus_error_free(&e);
}

/* ---- migration ------------------------------------------------------------------------ */

static bool final_state(const char *s) {
        return strcmp(s, VHOSTMIG_MIGRATION_STATE_COMPLETED) == 0 || strcmp(s, VHOSTMIG_MIGRATION_STATE_FAILED) == 0 ||
               strcmp(s, VHOSTMIG_MIGRATION_STATE_CANCELLED) == 0 ||
               strcmp(s, VHOSTMIG_MIGRATION_STATE_POSTMIGRATE_UNKNOWN) == 0;
}

static bool migration_completed(const struct run *r) {
        return r->m.state && strcmp(r->m.state, VHOSTMIG_MIGRATION_STATE_COMPLETED) == 0;
}

static int get_u32(struct run *r, const char *path, const char *iface, const char *prop, uint32_t *out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int rc = sd_bus_get_property_trivial(r->bus, BUS_NAME, path, iface, prop, &e, 'u', out);
        return rc < 0 ? property_failed(r, iface, prop, &e, rc) : rc;
}

/* Every migration property of the VM, into r->m. */
static int read_migration(struct run *r) {
        struct migration *m = &r->m;
        free(m->state);
        free(m->role);
        free(m->error);
        m->state = m->role = m->error = NULL;
        if (get_string(r, r->vm_path, VM_IFACE, "MigrationState", &m->state) < 0 ||
            get_string(r, r->vm_path, VM_IFACE, "Role", &m->role) < 0 ||
            get_string(r, r->vm_path, VM_IFACE, "MigrationError", &m->error) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "PagesTotal", &m->pages_total) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "PagesTransferred", &m->pages) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "ZeroPages", &m->zero_pages) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "BytesTransferred", &m->bytes) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "DowntimeMs", &m->downtime_ms) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "TotalMs", &m->total_ms) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "MigrationChecksum", &m->checksum) < 0 ||
            get_u32(r, r->vm_path, VM_IFACE, "RarpSent", &m->rarp_sent) < 0)
                return -EIO;
        return 0;
}

static void print_migration_progress(struct run *r, const char *state, uint64_t t0) {
        uint64_t done = 0, total = 0;
        (void) sd_bus_get_property_trivial(r->bus, BUS_NAME, r->vm_path, VM_IFACE, "PagesTransferred", NULL, 't',
                                           &done);
        (void) sd_bus_get_property_trivial(r->bus, BUS_NAME, r->vm_path, VM_IFACE, "PagesTotal", NULL, 't', &total);
        if (arg.incoming && strcmp(state, VHOSTMIG_MIGRATION_STATE_SETUP) == 0)
                fprintf(progress_out(), "[%6.1fs] migration %s: waiting for the source at %s\n",
                        (double) (now_ns() - t0) / 1e9, state, r->m.address);
        else
                fprintf(progress_out(), "[%6.1fs] migration %s: %" PRIu64 " of %" PRIu64 " pages\n",
                        (double) (now_ns() - t0) / 1e9, state, done, total);
        fflush(progress_out());
}

/* An interrupted wait cancels the migration (before END it rolls back) and waits for its end. */
static void cancel_migration(struct run *r, uint64_t *deadline_ns) {
        if (*deadline_ns)
                return;
        fprintf(stderr, "vhostmig-guest: interrupted: CancelMigration\n");
        (void) vm_call(r, "CancelMigration", NULL);
        *deadline_ns = now_ns() + (uint64_t) CANCEL_MS * 1000000u;
}

/* Polls MigrationState until it is final; progress once a second. */
static int wait_migration(struct run *r) {
        uint64_t t0 = now_ns(), next = t0 + 1000000000u, cancel_deadline = 0;
        for (;;) {
                char *state = NULL;
                if (get_string(r, r->vm_path, VM_IFACE, "MigrationState", &state) < 0)
                        return -EIO;
                bool done = final_state(state);
                if (!done && now_ns() >= next) {
                        print_migration_progress(r, state, t0);
                        next += 1000000000u;
                }
                free(state);
                if (done)
                        return read_migration(r);
                if (interrupted)
                        cancel_migration(r, &cancel_deadline);
                if (cancel_deadline && now_ns() >= cancel_deadline) {
                        add_error(r, "the migration did not end within %d ms of CancelMigration", CANCEL_MS);
                        return -ETIMEDOUT;
                }
                usleep(POLL_MS * 1000);
        }
}

static void migration_free(struct migration *m) {
        free(m->address);
        free(m->token);
        free(m->state);
        free(m->role);
        free(m->error);
        free(m->device_state);
}

static void report_unfinished(struct run *r) {
        add_error(r, "migration %s%s%s", r->m.state ? r->m.state : "unknown", r->m.error && r->m.error[0] ? ": " : "",
                  r->m.error ? r->m.error : "");
}

/* The vCPU pauses mid-stream: a last burst goes out and nothing waits for it. */
static void pause_with_frames_in_flight(struct run *r) {
        for (unsigned qp = 0; qp < arg.queue_pairs; qp++) {
                (void) vhm_guest_reclaim_tx(r->g, qp);
                (void) vhm_guest_poll_rx(r->g, qp, 0);
                (void) vhm_guest_post_rx(r->g, qp);
                (void) vhm_guest_tx(r->g, qp, PAUSE_BURST < arg.ring_size / 2 ? PAUSE_BURST : arg.ring_size / 2);
        }
        r->t_end_ns = now_ns();
        r->m.at_switch = stats(r);
        r->m.have_switch = true;
}

static int migrate_to(struct run *r) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int rc = sd_bus_message_new_method_call(r->bus, &m, BUS_NAME, r->vm_path, VM_IFACE, "MigrateTo");
        if (rc >= 0)
                rc = sd_bus_message_append(m, "ssa{sv}", arg.migrate_to, arg.token, 0);
        if (rc < 0) {
                add_error(r, "MigrateTo: %s", strerror(-rc));
                return rc;
        }
        if ((rc = call_checked(r, "MigrateTo", m, NULL)) < 0)
                return rc;
        r->m.started = true;
        return 0;
}

/* The source's memory no longer changes: its whole image is what END carried. */
static void source_checksums(struct run *r) {
        struct migration *m = &r->m;
        if (vhm_guest_checksum(r->g, 0, &m->memory_checksum) < 0 ||
            vhm_guest_checksum(r->g, VHM_GUEST_CHECKSUM_DRIVER, &m->driver_checksum) < 0)
                return;
        m->have_memory_checksum = m->have_driver_checksum = true;
        if (m->memory_checksum != m->checksum)
                add_error(r, "the guest's memory checksum 0x%016" PRIx64 " is not the migration's 0x%016" PRIx64,
                          m->memory_checksum, m->checksum);
}

/* Released: the source back-end saw the device go.  The device's snapshot
 * follows the migration's end by a moment, so the state is polled briefly. */
static void check_source_released(struct run *r) {
        uint64_t end = now_ns() + (uint64_t) RARP_WAIT_MS * 1000000u;
        for (;;) {
                free(r->m.device_state);
                r->m.device_state = NULL;
                if (get_string(r, r->dev_path, DEVICE_IFACE, "State", &r->m.device_state) < 0)
                        return;
                if (strcmp(r->m.device_state, "disconnected") == 0)
                        return;
                if (now_ns() >= end)
                        break;
                usleep(POLL_MS * 1000);
        }
        add_error(r, "after the migration the source's device is '%s', not released ('disconnected')",
                  r->m.device_state);
}

/* ---- live migration -------------------------------------------------------------------- */

/* One entry of a PropertiesChanged's a{sv}: the ones the loop follows. */
static int live_read_entry(struct live *l, sd_bus_message *m) {
        static const struct {
                const char *name;
                size_t off;
        } figures[] = {
                { "Round", offsetof(struct live, round) },
                { "PagesRemaining", offsetof(struct live, pages_remaining) },
                { "DirtyRate", offsetof(struct live, dirty_rate) },
                { "Bandwidth", offsetof(struct live, bandwidth) },
                { "ExpectedDowntimeMs", offsetof(struct live, expected_downtime_ms) },
        };
        const char *name, *v;
        int rc = sd_bus_message_read(m, "s", &name);

        if (rc < 0)
                return rc;
        if (strcmp(name, "MigrationState") == 0) {
                if ((rc = sd_bus_message_read(m, "v", "s", &v)) < 0)
                        return rc;
                free(l->state);
                l->state = strdup(v);
                l->state_stale = !l->state;
                return 0;
        }
        for (size_t i = 0; i < sizeof(figures) / sizeof(figures[0]); i++)
                if (strcmp(name, figures[i].name) == 0)
                        return sd_bus_message_read(m, "v", "t", (uint64_t *) ((char *) l + figures[i].off));
        return sd_bus_message_skip(m, "v");
}

static int live_read_invalidated(struct live *l, sd_bus_message *m) {
        const char *name;
        int rc = sd_bus_message_enter_container(m, 'a', "s");

        while (rc > 0 && (rc = sd_bus_message_read(m, "s", &name)) > 0)
                if (strcmp(name, "MigrationState") == 0)
                        l->state_stale = true;
        return rc < 0 ? rc : sd_bus_message_exit_container(m);
}

/* PropertiesChanged of the VM: the migration's state and figures, as they happen. */
static int on_vm_properties(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct live *l = &((struct run *) userdata)->live;
        const char *iface;
        int rc = sd_bus_message_read(m, "s", &iface);

        (void) ret_error;
        if (rc < 0 || strcmp(iface, VM_IFACE) != 0)
                return 0;
        rc = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (rc > 0 && (rc = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                rc = live_read_entry(l, m);
                if (rc >= 0)
                        rc = sd_bus_message_exit_container(m);
        }
        if (rc >= 0)
                rc = sd_bus_message_exit_container(m);
        if (rc >= 0)
                rc = live_read_invalidated(l, m);
        /* A signal we cannot read: ask for the state instead of guessing it. */
        if (rc < 0)
                l->state_stale = true;
        return 0;
}

static int live_watch(struct run *r) {
        int rc = sd_bus_match_signal(r->bus, &r->live.match, BUS_NAME, r->vm_path, "org.freedesktop.DBus.Properties",
                                     "PropertiesChanged", on_vm_properties, r);
        if (rc < 0)
                add_error(r, "cannot watch %s's properties: %s", r->vm_path, strerror(-rc));
        return rc;
}

/* The guest's dirty bitmap, registered once: from here on the daemon merges it. */
static int add_dirty_bitmap(struct run *r) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int fd = vhm_guest_dirty_bitmap(r->g), rc;

        if (fd < 0) {
                add_error(r, "cannot make the dirty bitmap: %s", strerror(-fd));
                return fd;
        }
        rc = sd_bus_call_method(r->bus, BUS_NAME, r->vm_path, VM_IFACE, "AddDirtyBitmap", &e, NULL, "ha{sv}", fd, 0);
        if (rc < 0) {
                bus_error(r, "AddDirtyBitmap", &e, rc);
                return rc;
        }
        if ((rc = get_u32(r, r->vm_path, VM_IFACE, "DirtyBitmaps", &r->m.dirty_bitmaps)) < 0)
                return rc;
        if (r->m.dirty_bitmaps != 1) {
                add_error(r, "after AddDirtyBitmap the VM has %" PRIu32 " dirty bitmaps, not 1", r->m.dirty_bitmaps);
                return -EIO;
        }
        return 0;
}

static int on_migrate_to_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct run *r = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);

        (void) ret_error;
        if (e) {
                bus_error(r, "MigrateTo", e, -sd_bus_message_get_errno(m));
                r->live.call_failed = true;
        }
        return 0;
}

/* "Live" and the tuning the user gave (the rest are the daemon's defaults). */
static int append_live_options(sd_bus_message *m) {
        int rc = sd_bus_message_open_container(m, 'a', "{sv}");

        if (rc >= 0)
                rc = sd_bus_message_append(m, "{sv}", KEY_LIVE, "b", 1);
        if (rc >= 0 && arg.max_downtime_ms)
                rc = sd_bus_message_append(m, "{sv}", KEY_MAX_DOWNTIME_MS, "u", (uint32_t) arg.max_downtime_ms);
        if (rc >= 0 && arg.have_max_bandwidth)
                rc = sd_bus_message_append(m, "{sv}", KEY_MAX_BANDWIDTH, "t", arg.max_bandwidth);
        if (rc >= 0 && arg.max_rounds)
                rc = sd_bus_message_append(m, "{sv}", KEY_MAX_ROUNDS, "u", (uint32_t) arg.max_rounds);
        if (rc >= 0 && arg.force_switchover)
                rc = sd_bus_message_append(m, "{sv}", KEY_FORCE_SWITCHOVER, "b", 1);
        if (rc >= 0 && arg.pause_timeout_ms)
                rc = sd_bus_message_append(m, "{sv}", KEY_PAUSE_TIMEOUT_MS, "u", (uint32_t) arg.pause_timeout_ms);
        return rc < 0 ? rc : sd_bus_message_close_container(m);
}

/* MigrateTo without waiting for its answer: the traffic loop must not stop for it. */
static int migrate_to_live(struct run *r) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int rc = sd_bus_message_new_method_call(r->bus, &m, BUS_NAME, r->vm_path, VM_IFACE, "MigrateTo");

        if (rc >= 0)
                rc = sd_bus_message_append(m, "ss", arg.migrate_to, arg.token);
        if (rc >= 0)
                rc = append_live_options(m);
        if (rc >= 0)
                rc = sd_bus_call_async(r->bus, &r->live.call, m, on_migrate_to_reply, r, call_timeout_usec());
        if (rc < 0) {
                add_error(r, "MigrateTo: %s", strerror(-rc));
                return rc;
        }
        r->m.started = true;
        fprintf(progress_out(), "[%6.1fs] MigrateTo %s, live, traffic goes on\n",
                (double) (now_ns() - r->t_start_ns) / 1e9, arg.migrate_to);
        fflush(progress_out());
        return 0;
}

/* The state the signals said, or (invalidated, or once a second in case a
 * signal went missing) the property itself. */
static int live_refresh_state(struct run *r) {
        char *state = NULL;

        if (get_string(r, r->vm_path, VM_IFACE, "MigrationState", &state) < 0)
                return -EIO;
        free(r->live.state);
        r->live.state = state;
        r->live.state_stale = false;
        return 0;
}

/* The guest stops for the migration: the VMM must pause, or it is over. */
static bool live_must_stop(const struct run *r) {
        const char *st = r->live.state;

        if (r->live.call_failed)
                return true;
        return r->m.started && st && (strcmp(st, MIG_STATE_PRE_SWITCHOVER) == 0 || final_state(st));
}

static int live_step(struct run *r, uint64_t now) {
        int rc;

        if (r->live.over)
                return 0;
        if (!r->m.started && now >= r->t_start_ns + (uint64_t) (arg.migrate_after * 1e9) && migrate_to_live(r) < 0)
                return -EIO;
        /* A read attempt per loop turn would cost the traffic a syscall per burst. */
        if (now < r->live.next_bus_ns)
                return 0;
        r->live.next_bus_ns = now + LIVE_BUS_NS;
        while ((rc = sd_bus_process(r->bus, NULL)) > 0)
                ;
        if (rc < 0) {
                add_error(r, "the bus connection failed: %s", strerror(-rc));
                return -EIO;
        }
        if (r->m.started && (r->live.state_stale || now >= r->next_progress_ns) && live_refresh_state(r) < 0)
                return -EIO;
        return live_must_stop(r) ? LIVE_STOP : 0;
}

/* What a paused vCPU leaves behind: its counters, frames still out. Then the daemon may switch over. */
static int live_pause(struct run *r) {
        struct vhm_guest_stats *p = &r->m.at_switch;

        r->m.pause_ns = now_ns();
        *p = stats(r);
        r->m.have_switch = r->m.paused = true;
        fprintf(progress_out(),
                "[%6.1fs] Paused at pre-switchover (round %" PRIu64 "): sent %" PRIu64 " received %" PRIu64 ", %" PRIu64
                " in flight; MigrateContinue\n",
                (double) (r->m.pause_ns - r->t_start_ns) / 1e9, r->live.round, p->sent, p->received,
                p->sent - accounted(p));
        fflush(progress_out());
        if (vm_call(r, "MigrateContinue", NULL) < 0)
                return -EIO;
        r->m.continued = true;
        return 0;
}

/* The pre-copy figures as the daemon left them: the final properties. */
static int read_live_figures(struct run *r) {
        struct migration *m = &r->m;

        if (get_u64(r, r->vm_path, VM_IFACE, "Round", &m->round) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "PagesRemaining", &m->pages_remaining) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "DirtyRate", &m->dirty_rate) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "Bandwidth", &m->bandwidth) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "ExpectedDowntimeMs", &m->expected_downtime_ms) < 0 ||
            get_u64(r, r->vm_path, VM_IFACE, "SetupMs", &m->setup_ms) < 0)
                return -EIO;
        return 0;
}

static void live_free(struct live *l) {
        sd_bus_slot_unref(l->match);
        sd_bus_slot_unref(l->call);
        free(l->state);
        memset(l, 0, sizeof(*l));
}

/*
 * Source: traffic, the pause, MigrateTo, its end.  Completed: the guest lives
 * on at the destination.  Failed or cancelled: the daemon resumed the devices
 * where they stopped and the guest runs on here for --seconds, which shows
 * that nothing beyond what was in flight got lost.
 */
static int run_source_stop_and_copy(struct run *r) {
        fprintf(progress_out(), "Traffic: %.1f s on %u queue pair(s), then migration to %s\n", arg.migrate_after,
                arg.queue_pairs, arg.migrate_to);
        int rc = traffic(r, arg.migrate_after);
        if (rc < 0)
                return rc;
        pause_with_frames_in_flight(r);
        struct vhm_guest_stats *p = &r->m.at_switch;
        fprintf(progress_out(), "Paused: sent %" PRIu64 " received %" PRIu64 ", %" PRIu64 " in flight; MigrateTo %s\n",
                p->sent, p->received, p->sent - accounted(p), arg.migrate_to);
        fflush(progress_out());
        if ((rc = migrate_to(r)) < 0)
                return rc;
        return wait_migration(r);
}

/*
 * Live: the bitmap registered, traffic at full speed with the bus served in
 * the same loop, MigrateTo after --migrate-after seconds, and the pause only
 * when the daemon reaches pre-switchover.  The migration may also end before
 * that (no convergence, a cancel): then the guest never paused.
 */
static int run_source_live(struct run *r) {
        int rc;

        if ((rc = add_dirty_bitmap(r)) < 0 || (rc = live_watch(r)) < 0)
                return rc;
        fprintf(progress_out(),
                "Traffic: %u queue pair(s), dirty bitmap registered; live migration to %s after %.1f s\n",
                arg.queue_pairs, arg.migrate_to, arg.migrate_after);
        rc = traffic(r, LIVE_MAX_S);
        if (rc != LIVE_STOP && !r->m.started)
                return rc < 0 ? rc : -EIO;
        if (rc == LIVE_STOP && r->live.call_failed)
                return -EIO;
        /* The guest broke down mid-migration (a stalled back-end): no point going on. */
        if (rc != LIVE_STOP && !interrupted)
                (void) vm_call(r, "CancelMigration", NULL);
        if (rc == LIVE_STOP && strcmp(r->live.state, MIG_STATE_PRE_SWITCHOVER) == 0 && (rc = live_pause(r)) < 0)
                return rc;
        rc = wait_migration(r);
        r->live.over = true;
        if (rc >= 0)
                rc = read_live_figures(r);
        return rc;
}

static int run_source(struct run *r) {
        int rc = arg.live ? run_source_live(r) : run_source_stop_and_copy(r);

        if (rc < 0)
                return rc;
        if (migration_completed(r)) {
                source_checksums(r);
                check_source_released(r);
                return 0;
        }
        report_unfinished(r);
        if (strcmp(r->m.state, VHOSTMIG_MIGRATION_STATE_POSTMIGRATE_UNKNOWN) == 0 || interrupted)
                return -EIO;
        fprintf(progress_out(), "%s here: %.1f s of traffic\n", arg.live && !r->m.paused ? "Going on" : "Resumed",
                arg.seconds);
        fflush(progress_out());
        r->m.resumed_ns = now_ns();
        /* The rate is over the whole run, the attempt included. */
        uint64_t t0 = r->t_start_ns;
        r->t_start_ns = now_ns();
        rc = traffic(r, arg.seconds);
        r->t_start_ns = t0;
        drain(r, DRAIN_MS);
        return rc;
}

/* ---- incoming ------------------------------------------------------------------------- */

static void incoming_init(struct incoming *in) {
        in->memfd = -1;
        for (unsigned q = 0; q < VHM_GUEST_MAX_QUEUES; q++)
                in->kick[q] = in->call[q] = -1;
}

static void incoming_close(struct incoming *in) {
        if (in->memfd >= 0)
                close(in->memfd);
        for (unsigned q = 0; q < VHM_GUEST_MAX_QUEUES; q++) {
                if (in->kick[q] >= 0)
                        close(in->kick[q]);
                if (in->call[q] >= 0)
                        close(in->call[q]);
        }
        incoming_init(in);
}

/* Empty memory (sealed against shrinking, as CreateVm wants) and the eventfds. */
static int incoming_new(struct incoming *in) {
        incoming_init(in);
        in->memfd = memfd_create("vhm-guest-incoming", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (in->memfd < 0 || ftruncate(in->memfd, (off_t) arg.mem_size) < 0 ||
            fcntl(in->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
                return -errno;
        for (unsigned q = 0; q < 2 * arg.queue_pairs; q++) {
                in->kick[q] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                in->call[q] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                if (in->kick[q] < 0 || in->call[q] < 0)
                        return -errno;
        }
        return 0;
}

static int prepare_incoming(struct run *r) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *address, *token;
        int rc = sd_bus_message_new_method_call(r->bus, &m, BUS_NAME, r->vm_path, VM_IFACE, "PrepareIncoming");
        if (rc >= 0)
                rc = arg.listen ? sd_bus_message_append(m, "a{sv}", 1, VHOSTMIG_OPTION_LISTEN, "s", arg.listen)
                                : sd_bus_message_append(m, "a{sv}", 0);
        if (rc < 0) {
                add_error(r, "PrepareIncoming: %s", strerror(-rc));
                return rc;
        }
        if ((rc = call_checked(r, "PrepareIncoming", m, &reply)) < 0)
                return rc;
        rc = sd_bus_message_read(reply, "ss", &address, &token);
        if (rc >= 0 && (!(r->m.address = strdup(address)) || !(r->m.token = strdup(token))))
                rc = -ENOMEM;
        if (rc < 0) {
                add_error(r, "PrepareIncoming: bad reply: %s", strerror(-rc));
                return rc;
        }
        r->m.started = true;
        return 0;
}

/* The source needs these two: one line, JSON with --json. */
static void print_incoming(const struct run *r) {
        if (arg.json) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "vm", json_object_new_string(r->vm_path));
                json_object_object_add(o, "address", json_object_new_string(r->m.address));
                json_object_object_add(o, "token", json_object_new_string(r->m.token));
                puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
        } else {
                printf("Incoming migration: address %s token %s\n", r->m.address, r->m.token);
        }
        fflush(stdout);
}

/* The migrated guest, on the memory that arrived and the eventfds the device already has. */
static int attach_migrated(struct run *r) {
        char err[256];
        int rc = vhm_guest_attach_eventfds(r->in.memfd, r->in.kick, r->in.call, 2 * arg.queue_pairs, &r->g, err,
                                           sizeof(err));
        if (rc < 0) {
                add_error(r, "cannot resume the migrated guest: %s", err);
                return rc;
        }
        /* Before the driver runs: the device may have written since the switchover, the driver not. */
        if (vhm_guest_checksum(r->g, VHM_GUEST_CHECKSUM_DRIVER, &r->m.driver_checksum) >= 0)
                r->m.have_driver_checksum = true;
        r->m.at_switch = stats(r);
        r->m.have_switch = true;
        if (vhm_guest_queue_pairs(r->g) != arg.queue_pairs || vhm_guest_ring_size(r->g) != arg.ring_size) {
                add_error(r, "the migrated guest has %u queue pair(s) of %u, this one was prepared for %u of %u",
                          vhm_guest_queue_pairs(r->g), vhm_guest_ring_size(r->g), arg.queue_pairs, arg.ring_size);
                return -EBADMSG;
        }
        return 0;
}

/*
 * Destination: PrepareIncoming, the wait, then the guest where it paused:
 * the same sequence numbers, for --seconds.  Frames in flight at the pause
 * come back or count as lost at the switchover.
 */
static int run_incoming(struct run *r) {
        int rc = prepare_incoming(r);
        if (rc < 0)
                return rc;
        print_incoming(r);
        if ((rc = wait_migration(r)) < 0)
                return rc;
        if (!migration_completed(r)) {
                report_unfinished(r);
                return -EIO;
        }
        if ((rc = attach_migrated(r)) < 0 || (rc = configure_driver(r)) < 0)
                return rc;
        struct vhm_guest_stats *p = &r->m.at_switch;
        fprintf(progress_out(),
                "Resumed: sent %" PRIu64 " received %" PRIu64 ", %" PRIu64 " in flight; traffic %.1f s on %u queue "
                "pair(s)\n",
                p->sent, p->received, p->sent - accounted(p), arg.seconds, arg.queue_pairs);
        fflush(progress_out());
        r->t_start_ns = r->last_progress_ns = now_ns();
        r->next_progress_ns = r->t_start_ns + 1000000000u;
        r->last_progress_sent = p->sent;
        rc = traffic(r, arg.seconds);
        if (rc >= 0)
                drain(r, DRAIN_MS);
        return rc;
}

/* ---- verdict -------------------------------------------------------------------------- */

struct verdict {
        struct vhm_guest_stats s;
        uint64_t missing; /* sent, never back, not written off */
        uint64_t lost;    /* s.lost + missing */
        double seconds;
        double rate;
        bool rarp_ok;
        /* migration: frames in flight at the switchover, and the RARPs seen after it */
        uint64_t in_flight;
        uint64_t rarp_after;
        bool pass;
};

/*
 * With a migration the guest's life spans two VMMs.  The source's frames in
 * flight at the pause left with the guest: not missing here.  The
 * destination counts every frame since the guest began: at most those in
 * flight at the switchover may be lost, and exactly one RARP (the daemon's
 * SEND_RARP) must come back when the device negotiated it, none otherwise.
 */
static void verdict_migration(const struct run *r, struct verdict *v) {
        const struct vhm_guest_stats *p = &r->m.at_switch;
        bool completed = migration_completed(r);
        if (!r->m.have_switch)
                return;
        v->in_flight = p->sent - accounted(p);
        if (arg.migrate_to) {
                if (completed)
                        v->lost = v->s.lost;
                v->rarp_ok = true;
                return;
        }
        v->rarp_after = v->s.rarp_seen - p->rarp_seen;
        v->rarp_ok = v->rarp_after == (r->rarp_expected ? 1u : 0u);
        v->rate = v->seconds > 0 ? (double) (v->s.received - p->received) / v->seconds : 0;
}

static struct verdict verdict(const struct run *r) {
        struct verdict v = { .s = stats(r) };
        uint64_t acc = accounted(&v.s);
        bool migrating = arg.incoming || arg.migrate_to;
        v.missing = v.s.sent > acc ? v.s.sent - acc : 0;
        v.lost = v.s.lost + v.missing;
        v.seconds = r->t_end_ns > r->t_start_ns ? (double) (r->t_end_ns - r->t_start_ns) / 1e9 : 0;
        v.rate = v.seconds > 0 ? (double) v.s.received / v.seconds : 0;
        v.rarp_ok = !r->rarp_expected || v.s.rarp_seen > 0;
        verdict_migration(r, &v);
        v.pass = !interrupted && r->n_errors == 0 && v.lost <= (arg.incoming ? v.in_flight : 0) && v.s.corrupted == 0 &&
                 v.s.duplicated == 0 && v.s.bad_used == 0 && v.rarp_ok && (!migrating || migration_completed(r));
        return v;
}

/* The pre-copy as the daemon measured it, and the guest's pause. */
static void print_live_text(const struct migration *m) {
        printf("%-22s %" PRIu64 " round(s) after the full pass, %" PRIu64 " pages remaining at the end, setup %" PRIu64
               " ms\n",
               "Pre-copy:", m->round, m->pages_remaining, m->setup_ms);
        printf("%-22s dirty rate %" PRIu64 " pages/s, bandwidth %.1f MB/s, expected downtime %" PRIu64 " ms\n", "",
               m->dirty_rate, (double) m->bandwidth / 1e6, m->expected_downtime_ms);
        if (m->paused)
                printf("%-22s at pre-switchover, MigrateContinue %s\n",
                       "Guest paused:", m->continued ? "answered" : "FAILED");
        else
                printf("%-22s never (the migration ended before pre-switchover)\n", "Guest paused:");
        if (m->resumed_ns)
                printf("%-22s here, after the migration failed\n", "Guest resumed:");
}

static void print_migration_text(const struct run *r, const struct verdict *v) {
        const struct migration *m = &r->m;
        printf("%-22s %s, %s", "Migration:", m->state ? m->state : "not started",
               arg.incoming ? "destination" : "source");
        if (arg.incoming && m->address)
                printf(", listened at %s", m->address);
        else if (arg.migrate_to)
                printf(", to %s", arg.migrate_to);
        printf("\n");
        if (m->error && m->error[0])
                printf("%-22s %s\n", "Migration error:", m->error);
        if (!m->state)
                return;
        printf("%-22s %" PRIu64 " ms (total %" PRIu64 " ms)\n", "Downtime:", m->downtime_ms, m->total_ms);
        printf("%-22s %" PRIu64 " of %" PRIu64 " (%" PRIu64 " zero), %" PRIu64 " bytes\n", "Pages:", m->pages,
               m->pages_total, m->zero_pages, m->bytes);
        if (arg.live)
                print_live_text(m);
        printf("%-22s 0x%016" PRIx64, "Checksum:", m->checksum);
        if (m->have_memory_checksum)
                printf(" (the guest's memory: 0x%016" PRIx64 ", %s)", m->memory_checksum,
                       m->memory_checksum == m->checksum ? "equal" : "DIFFERENT");
        printf("\n");
        if (m->have_driver_checksum)
                printf("%-22s 0x%016" PRIx64 " (the driver's image at the switchover)\n",
                       "Driver checksum:", m->driver_checksum);
        if (m->have_switch)
                printf("%-22s %" PRIu64 " frames in flight%s\n", "Switchover:", v->in_flight,
                       arg.incoming ? ", at most these may be lost" : "");
        if (arg.incoming)
                printf("%-22s %" PRIu32 "\n", "RARP sent:", m->rarp_sent);
        if (m->device_state)
                printf("%-22s %s\n", "Source device:", m->device_state);
}

static void print_text(const struct run *r, const struct verdict *v) {
        printf("\n== vhostmig-guest %s: %s\n", arg.name, v->pass ? "PASS" : "FAIL");
        printf("%-22s %s%s\n", "Back-end:", arg.socket, arg.server ? " (vhostmigd listens)" : "");
        if (r->dev_path) {
                printf("%-22s %s\n", "Device:", r->dev_path);
                printf("%-22s 0x%" PRIx64 ", protocol 0x%" PRIx64 "\n", "Acked features:", r->acked_features,
                       r->acked_protocol_features);
        }
        printf("%-22s %u x %u descriptors, %u-byte frames\n", "Queue pairs:", arg.queue_pairs, arg.ring_size,
               arg.frame_len);
        printf("%-22s %.2f s, %.0f frames/s echoed\n", "Traffic:", v->seconds, v->rate);
        printf("%-22s %" PRIu64 "\n", "Frames sent:", v->s.sent);
        printf("%-22s %" PRIu64 "\n", "Frames received:", v->s.received);
        printf("%-22s %" PRIu64, "Frames lost:", v->lost);
        if (v->missing && arg.migrate_to && migration_completed(r))
                printf(" (%" PRIu64 " in flight left with the guest)", v->missing);
        else if (v->missing)
                printf(" (%" PRIu64 " never came back)", v->missing);
        printf("\n%-22s %" PRIu64 "\n", "Frames corrupted:", v->s.corrupted);
        printf("%-22s %" PRIu64 "\n", "Frames duplicated:", v->s.duplicated);
        if (v->s.bad_used || v->s.other)
                printf("%-22s %" PRIu64 " bad used entries, %" PRIu64 " other frames\n", "Also:", v->s.bad_used,
                       v->s.other);
        if (arg.incoming && r->m.have_switch)
                printf("%-22s %" PRIu64 " after the switchover (%s)\n", "RARP seen:", v->rarp_after,
                       r->rarp_expected ? "exactly 1 expected"
                                        : "none expected: no RARP or the guest announces itself");
        else if (arg.migrate_to)
                printf("%-22s %" PRIu64 " (a migration's RARP is the destination's)\n", "RARP seen:", v->s.rarp_seen);
        else if (!r->announced)
                printf("%-22s %" PRIu64 " (not announced)\n", "RARP seen:", v->s.rarp_seen);
        else if (r->rarp_expected)
                printf("%-22s %" PRIu64 " (%" PRIu32 " sent by Announce)\n", "RARP seen:", v->s.rarp_seen,
                       r->rarp_sent);
        else
                printf("%-22s %" PRIu64 " (not expected: the device has no RARP or the guest announces itself)\n",
                       "RARP seen:", v->s.rarp_seen);
        if (arg.incoming || arg.migrate_to)
                print_migration_text(r, v);
        if (arg.log) {
                printf("%-22s %" PRIu64 " (the VM counts %" PRIu64 "), %" PRIu64 " new pages found\n",
                       "Harvests:", r->harvests, r->vm_harvests, r->new_pages);
                if (r->log_checked)
                        printf("%-22s %" PRIu64 " (the back-end wrote %" PRIu64 " pages the guest saw)\n",
                               "Dirty pages:", r->dirty_pages, r->written_pages);
                else
                        printf("%-22s %" PRIu64 " (not checked)\n", "Dirty pages:", r->dirty_pages);
        } else if (r->vm_harvests || r->dirty_pages) {
                printf("%-22s off here; the VM was harvested %" PRIu64 " times, %" PRIu64 " dirty pages\n",
                       "Dirty logging:", r->vm_harvests, r->dirty_pages);
        } else {
                printf("%-22s off\n", "Dirty logging:");
        }
        if (interrupted)
                printf("%-22s yes\n", "Interrupted:");
        for (unsigned i = 0; i < r->n_errors; i++)
                printf("%-22s %s\n", i == 0 ? "Errors:" : "", r->errors[i]);
        fflush(stdout);
}

static json_object *hex_json(uint64_t v) {
        char buf[24];
        snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
        return json_object_new_string(buf);
}

static json_object *u64_json(uint64_t v) {
        return json_object_new_int64(v > INT64_MAX ? INT64_MAX : (int64_t) v);
}

/* The pre-copy figures (final properties) and the pause; null when not live. */
static json_object *live_json(const struct migration *m) {
        if (!arg.live)
                return NULL;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "rounds", u64_json(m->round));
        json_object_object_add(o, "pages_remaining", u64_json(m->pages_remaining));
        json_object_object_add(o, "dirty_rate", u64_json(m->dirty_rate));
        json_object_object_add(o, "bandwidth", u64_json(m->bandwidth));
        json_object_object_add(o, "expected_downtime_ms", u64_json(m->expected_downtime_ms));
        json_object_object_add(o, "setup_ms", u64_json(m->setup_ms));
        json_object_object_add(o, "dirty_bitmaps", u64_json(m->dirty_bitmaps));
        json_object_object_add(o, "paused", json_object_new_boolean(m->paused));
        json_object_object_add(o, "continued", json_object_new_boolean(m->continued));
        json_object_object_add(o, "resumed", json_object_new_boolean(m->resumed_ns != 0));
        return o;
}

static json_object *migration_json(const struct run *r, const struct verdict *v) {
        const struct migration *m = &r->m;
        if (!arg.incoming && !arg.migrate_to)
                return NULL;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "state", m->state ? json_object_new_string(m->state) : NULL);
        json_object_object_add(o, "role", json_object_new_string(arg.incoming ? "destination" : "source"));
        json_object_object_add(o, "address",
                               json_object_new_string(arg.incoming ? (m->address ? m->address : "") : arg.migrate_to));
        json_object_object_add(o, "error", json_object_new_string(m->error ? m->error : ""));
        json_object_object_add(o, "downtime_ms", u64_json(m->downtime_ms));
        json_object_object_add(o, "total_ms", u64_json(m->total_ms));
        json_object_object_add(o, "pages", u64_json(m->pages));
        json_object_object_add(o, "pages_total", u64_json(m->pages_total));
        json_object_object_add(o, "zero_pages", u64_json(m->zero_pages));
        json_object_object_add(o, "bytes", u64_json(m->bytes));
        json_object_object_add(o, "checksum", m->state ? hex_json(m->checksum) : NULL);
        json_object_object_add(o, "memory_checksum", m->have_memory_checksum ? hex_json(m->memory_checksum) : NULL);
        json_object_object_add(o, "driver_checksum", m->have_driver_checksum ? hex_json(m->driver_checksum) : NULL);
        json_object_object_add(o, "frames_in_flight", u64_json(v->in_flight));
        json_object_object_add(o, "rarp_sent", u64_json(m->rarp_sent));
        json_object_object_add(o, "rarp_seen_after", u64_json(v->rarp_after));
        json_object_object_add(o, "source_device_state",
                               m->device_state ? json_object_new_string(m->device_state) : NULL);
        json_object_object_add(o, "live", live_json(m));
        return o;
}

static void print_json(const struct run *r, const struct verdict *v) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(arg.name));
        json_object_object_add(o, "socket", json_object_new_string(arg.socket));
        json_object_object_add(o, "server", json_object_new_boolean(arg.server));
        json_object_object_add(o, "vm", r->vm_path ? json_object_new_string(r->vm_path) : NULL);
        json_object_object_add(o, "device", r->dev_path ? json_object_new_string(r->dev_path) : NULL);
        json_object_object_add(o, "acked_features", hex_json(r->acked_features));
        json_object_object_add(o, "acked_protocol_features", hex_json(r->acked_protocol_features));
        json_object_object_add(o, "queue_pairs", json_object_new_int64(arg.queue_pairs));
        json_object_object_add(o, "ring_size", json_object_new_int64(arg.ring_size));
        json_object_object_add(o, "frame_len", json_object_new_int64(arg.frame_len));
        char secs[32];
        snprintf(secs, sizeof(secs), "%.3f", v->seconds);
        json_object_object_add(o, "seconds", json_object_new_double_s(v->seconds, secs));
        json_object_object_add(o, "frames_per_second", u64_json((uint64_t) llround(v->rate)));

        json_object *f = json_object_new_object();
        json_object_object_add(f, "sent", u64_json(v->s.sent));
        json_object_object_add(f, "received", u64_json(v->s.received));
        json_object_object_add(f, "lost", u64_json(v->lost));
        json_object_object_add(f, "never_came_back", u64_json(v->missing));
        json_object_object_add(f, "corrupted", u64_json(v->s.corrupted));
        json_object_object_add(f, "duplicated", u64_json(v->s.duplicated));
        json_object_object_add(f, "bad_used", u64_json(v->s.bad_used));
        json_object_object_add(f, "other", u64_json(v->s.other));
        json_object_object_add(o, "frames", f);

        json_object *a = json_object_new_object();
        json_object_object_add(a, "expected", json_object_new_boolean(r->rarp_expected));
        json_object_object_add(a, "announced", json_object_new_boolean(r->announced));
        json_object_object_add(a, "sent", u64_json(r->rarp_sent));
        json_object_object_add(a, "seen", u64_json(v->s.rarp_seen));
        json_object_object_add(o, "rarp", a);

        json_object *l = json_object_new_object();
        json_object_object_add(l, "enabled", json_object_new_boolean(arg.log));
        json_object_object_add(l, "harvests", u64_json(r->harvests));
        json_object_object_add(l, "vm_harvests", u64_json(r->vm_harvests));
        json_object_object_add(l, "new_pages", u64_json(r->new_pages));
        json_object_object_add(l, "dirty_pages", u64_json(r->dirty_pages));
        json_object_object_add(l, "device_written_pages", u64_json(r->written_pages));
        json_object_object_add(l, "checked", json_object_new_boolean(r->log_checked));
        json_object_object_add(o, "log", l);
        json_object_object_add(o, "migration", migration_json(r, v));

        json_object *e = json_object_new_array();
        for (unsigned i = 0; i < r->n_errors; i++)
                json_object_array_add(e, json_object_new_string(r->errors[i]));
        json_object_object_add(o, "errors", e);
        json_object_object_add(o, "interrupted", json_object_new_boolean(interrupted));
        json_object_object_add(o, "pass", json_object_new_boolean(v->pass));
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        fflush(stdout);
        json_object_put(o);
}

/* ---- main --------------------------------------------------------------------------- */

static void on_signal(int sig) {
        (void) sig;
        interrupted = 1;
}

static int install_signals(void) {
        /* No SA_RESTART: a blocking call returns early.  SA_RESETHAND: a second
         * signal ends the program at once, without cleaning up. */
        struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESETHAND };
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
                return -errno;
        return 0;
}

/*
 * Everything up to the teardown, which main does whatever happened here: the
 * first step that fails (or an interruption) ends it; the failure is in r's
 * errors, which the verdict reports.
 */
static void start_clock(struct run *r) {
        r->t_start_ns = now_ns();
        r->last_progress_ns = r->t_start_ns;
        r->next_progress_ns = r->t_start_ns + 1000000000u;
        r->next_harvest_ns = r->t_start_ns + (uint64_t) arg.harvest_ms * 1000000u;
}

static void run_steps(struct run *r) {
        if (bus_connect(r) < 0 || interrupted)
                return;
        if (create_vm(r) < 0 || interrupted)
                return;
        if (!arg.json)
                printf("VM %s created: %s, %" PRIu64 " MiB of %sguest memory\n", arg.name, r->vm_path,
                       guest_mem_size(r) >> 20, arg.incoming ? "empty " : "");
        if (add_device(r) < 0 || interrupted)
                return;
        if (arg.incoming) {
                (void) run_incoming(r);
                return;
        }
        if (configure_driver(r) < 0 || interrupted)
                return;
        if (!arg.json)
                printf("Device %s running on %s: features 0x%" PRIx64 ", protocol features 0x%" PRIx64 "\n",
                       r->dev_path, arg.socket, r->acked_features, r->acked_protocol_features);
        if (arg.migrate_to) {
                start_clock(r);
                (void) run_source(r);
                return;
        }

        if (arg.log && start_logging(r) < 0)
                return;

        start_clock(r);
        if (arg.frames)
                fprintf(progress_out(), "Traffic: %" PRIu64 " frames per queue pair on %u queue pair(s)%s\n",
                        arg.frames, arg.queue_pairs, arg.log ? ", dirty logging on" : "");
        else
                fprintf(progress_out(), "Traffic: %.1f s on %u queue pair(s)%s\n", arg.seconds, arg.queue_pairs,
                        arg.log ? ", dirty logging on" : "");
        int rc = traffic(r, arg.seconds);
        /* The last partial second, unless it was a short run's only output. */
        if (now_ns() - r->last_progress_ns > 200000000u || r->last_progress_ns == r->t_start_ns)
                print_progress(r, now_ns());

        if (r->logging) {
                if (rc >= 0 && harvest(r) < 0)
                        return;
                if (stop_logging(r) < 0)
                        return;
        }
        if (rc >= 0 && !interrupted)
                (void) announce(r);
}

int main(int argc, char **argv) {
        struct run r = { 0 };
        int rc = parse_args(argc, argv);
        if (rc >= 0)
                return rc;

        if (install_signals() < 0) {
                fprintf(stderr, "vhostmig-guest: sigaction: %m\n");
                return EXIT_FAIL;
        }

        struct vhm_guest_config gc = guest_config();
        struct vhm_guest_queue_layout plan;
        incoming_init(&r.in);
        /* An incoming guest exists once it arrived; the layout it will have must fit already. */
        if (arg.incoming && (rc = vhm_guest_plan_queue_layout(&gc, 0, &plan)) >= 0 && (rc = incoming_new(&r.in)) < 0) {
                fprintf(stderr, "vhostmig-guest: cannot make the incoming memory and eventfds: %s\n", strerror(-rc));
                incoming_close(&r.in);
                return EXIT_FAIL;
        }
        if (!arg.incoming)
                rc = vhm_guest_create(&gc, &r.g);
        if (rc < 0) {
                /* Memory too small for the rings, most likely. */
                fprintf(stderr,
                        "vhostmig-guest: cannot create the guest (%u queue pairs of %u, %" PRIu64
                        " bytes of memory): %s\n",
                        arg.queue_pairs, arg.ring_size, arg.mem_size, strerror(-rc));
                return rc == -EINVAL || rc == -ENOSPC ? EXIT_USAGE : EXIT_FAIL;
        }

        run_steps(&r);
        /* Without --log, someone else may have logged this VM: say so. */
        if (!arg.log && r.dev_path && sd_bus_is_open(r.bus)) {
                (void) sd_bus_get_property_trivial(r.bus, BUS_NAME, r.vm_path, VM_IFACE, "Harvests", NULL, 't',
                                                   &r.vm_harvests);
                (void) sd_bus_get_property_trivial(r.bus, BUS_NAME, r.vm_path, VM_IFACE, "DirtyPages", NULL, 't',
                                                   &r.dirty_pages);
        }
        /* After an interruption, the rest still runs: logging off, VM gone. */
        if (r.logging)
                (void) vm_call(&r, "StopLogging", NULL);
        if (r.bus)
                destroy_vm(&r);

        struct verdict v = verdict(&r);
        if (arg.json)
                print_json(&r, &v);
        else
                print_text(&r, &v);

        for (unsigned i = 0; i < r.n_errors; i++)
                free(r.errors[i]);
        free(r.vm_path);
        free(r.dev_path);
        live_free(&r.live);
        sd_bus_flush_close_unref(r.bus);
        vhm_guest_free(r.g);
        incoming_close(&r.in);
        migration_free(&r.m);
        return v.pass ? EXIT_PASS : EXIT_FAIL;
}
