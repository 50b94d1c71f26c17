/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmig-guest: the synthetic guest as a program, a small VMM that uses
 * vhostmigd as its vhost-user front-end.  It creates guest memory and
 * eventfds with the guest library (tests/guest/guest.h), hands them to the
 * daemon over D-Bus (CreateVm, AddDevice), drives sequence-numbered traffic
 * through the back-end, optionally with dirty logging on, announces the VM
 * with SEND_RARP, destroys the VM and prints a verdict.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
} arg = {
        .queue_pairs = 1,
        .ring_size = VHM_GUEST_DEFAULT_RING,
        .mem_size = VHM_GUEST_DEFAULT_MEM,
        .seconds = 5,
        .frame_len = VHM_GUEST_DEFAULT_FRAME,
        .harvest_ms = 100,
        .timeout = 60,
};

static volatile sig_atomic_t interrupted;

/* ---- run state ---------------------------------------------------------------- */

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
               "      --json             print the verdict as JSON on stdout (progress\n"
               "                         goes to stderr)\n"
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
               "Exit status: 0 when no frame was lost, corrupted or duplicated, the device\n"
               "broke no ring rule, the RARP came back when expected, the dirty log covered\n"
               "the back-end's writes (with --log) and every D-Bus call succeeded; 1\n"
               "otherwise (also when interrupted); 2 for usage errors.\n",
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

static int parse_args(int argc, char **argv) {
        enum {
                OPT_SERVER = 0x100,
                OPT_LOG,
                OPT_HARVEST_MS,
                OPT_BUS_ADDRESS,
                OPT_JSON,
                OPT_TIMEOUT,
                OPT_BUSY_POLL,
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
                                                 { "json", no_argument, NULL, OPT_JSON },
                                                 { "help", no_argument, NULL, 'h' },
                                                 {} };
        bool have_frames = false, have_seconds = false;
        int c;

        snprintf(arg.name, sizeof(arg.name), "guest-%d", (int) getpid());
        while ((c = getopt_long(argc, argv, "n:s:q:r:m:f:t:l:h", options, NULL)) >= 0) {
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
        return -1;
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
        /* StartLogging takes options (none are needed here). */
        if (rc >= 0 && strcmp(method, "StartLogging") == 0)
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

static int create_vm(struct run *r) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *path;
        int rc = sd_bus_call_method(r->bus, BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "CreateVm", &e, &reply,
                                    "sa(httt)a{sv}", arg.name, 1, vhm_guest_mem_fd(r->g), (uint64_t) 0,
                                    vhm_guest_mem_size(r->g), (uint64_t) 0, 0);
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
                rc = vhm_guest_queue_layout(r->g, q, &l);
                if (rc >= 0)
                        rc = sd_bus_message_append(m, "(uttthh)", (uint32_t) l.num, l.desc_gpa, l.avail_gpa, l.used_gpa,
                                                   l.kick_fd, l.call_fd);
        }
        return rc < 0 ? rc : sd_bus_message_close_container(m);
}

/* AddDevice with the first queues (as many as one message carries fds for) and the options. */
static int add_device_message(struct run *r, unsigned nqueues, sd_bus_message **out) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        uint8_t mac[6];
        char macs[18];
        vhm_guest_mac(r->g, mac);
        format_mac(mac, macs);
        int rc = sd_bus_message_new_method_call(r->bus, &m, BUS_NAME, r->vm_path, VM_IFACE, "AddDevice");
        if (rc >= 0)
                rc = sd_bus_message_append(m, "s", arg.socket);
        if (rc >= 0)
                rc = append_queues(r, m, 0, nqueues);
        if (rc >= 0)
                rc = sd_bus_message_append(m, "a{sv}", 4, VHOSTMIG_OPTION_SERVER, "b", (int) arg.server,
                                           VHOSTMIG_OPTION_FEATURES, "t", wanted_features(),
                                           VHOSTMIG_OPTION_QUEUE_PAIRS, "u", (uint32_t) arg.queue_pairs,
                                           VHOSTMIG_OPTION_MAC, "s", macs);
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
        fputc('\n', f);
        fflush(f);
        r->last_progress_ns = now;
        r->last_progress_sent = s.sent;
}

/* Called by vhm_guest_run_until() on every loop iteration. */
static int step(void *opaque) {
        struct run *r = opaque;
        uint64_t now;

        if (interrupted)
                return -EINTR;
        now = now_ns();
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
static int traffic(struct run *r) {
        struct vhm_guest_run_opts opts = {
                .flags = arg.busy_poll ? 0 : VHM_GUEST_RUN_WAIT_CALL,
                .step = step,
                .opaque = r,
        };
        uint64_t deadline = r->t_start_ns + (uint64_t) (arg.seconds * 1e9);
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

/* ---- verdict -------------------------------------------------------------------------- */

struct verdict {
        struct vhm_guest_stats s;
        uint64_t missing; /* sent, never back, not written off */
        uint64_t lost;    /* s.lost + missing */
        double seconds;
        double rate;
        bool rarp_ok;
        bool pass;
};

static struct verdict verdict(const struct run *r) {
        struct verdict v = { .s = stats(r) };
        uint64_t acc = accounted(&v.s);
        v.missing = v.s.sent > acc ? v.s.sent - acc : 0;
        v.lost = v.s.lost + v.missing;
        v.seconds = r->t_end_ns > r->t_start_ns ? (double) (r->t_end_ns - r->t_start_ns) / 1e9 : 0;
        v.rate = v.seconds > 0 ? (double) v.s.received / v.seconds : 0;
        v.rarp_ok = !r->rarp_expected || v.s.rarp_seen > 0;
        v.pass = !interrupted && r->n_errors == 0 && v.lost == 0 && v.s.corrupted == 0 && v.s.duplicated == 0 &&
                 v.s.bad_used == 0 && v.rarp_ok;
        return v;
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
        if (v->missing)
                printf(" (%" PRIu64 " never came back)", v->missing);
        printf("\n%-22s %" PRIu64 "\n", "Frames corrupted:", v->s.corrupted);
        printf("%-22s %" PRIu64 "\n", "Frames duplicated:", v->s.duplicated);
        if (v->s.bad_used || v->s.other)
                printf("%-22s %" PRIu64 " bad used entries, %" PRIu64 " other frames\n", "Also:", v->s.bad_used,
                       v->s.other);
        if (!r->announced)
                printf("%-22s %" PRIu64 " (not announced)\n", "RARP seen:", v->s.rarp_seen);
        else if (r->rarp_expected)
                printf("%-22s %" PRIu64 " (%" PRIu32 " sent by Announce)\n", "RARP seen:", v->s.rarp_seen,
                       r->rarp_sent);
        else
                printf("%-22s %" PRIu64 " (not expected: the device has no RARP or the guest announces itself)\n",
                       "RARP seen:", v->s.rarp_seen);
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
static void run_steps(struct run *r) {
        if (bus_connect(r) < 0 || interrupted)
                return;
        if (create_vm(r) < 0 || interrupted)
                return;
        if (!arg.json)
                printf("VM %s created: %s, %" PRIu64 " MiB of guest memory\n", arg.name, r->vm_path,
                       vhm_guest_mem_size(r->g) >> 20);
        if (add_device(r) < 0 || interrupted)
                return;
        if (configure_driver(r) < 0 || interrupted)
                return;
        if (!arg.json)
                printf("Device %s running on %s: features 0x%" PRIx64 ", protocol features 0x%" PRIx64 "\n",
                       r->dev_path, arg.socket, r->acked_features, r->acked_protocol_features);

        if (arg.log && start_logging(r) < 0)
                return;

        r->t_start_ns = now_ns();
        r->last_progress_ns = r->t_start_ns;
        r->next_progress_ns = r->t_start_ns + 1000000000u;
        r->next_harvest_ns = r->t_start_ns + (uint64_t) arg.harvest_ms * 1000000u;
        if (arg.frames)
                fprintf(progress_out(), "Traffic: %" PRIu64 " frames per queue pair on %u queue pair(s)%s\n",
                        arg.frames, arg.queue_pairs, arg.log ? ", dirty logging on" : "");
        else
                fprintf(progress_out(), "Traffic: %.1f s on %u queue pair(s)%s\n", arg.seconds, arg.queue_pairs,
                        arg.log ? ", dirty logging on" : "");
        int rc = traffic(r);
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

        struct vhm_guest_config gc = {
                .mem_size = arg.mem_size,
                .queue_pairs = arg.queue_pairs,
                .ring_size = arg.ring_size,
                .frame_len = arg.frame_len,
        };
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
        sd_bus_flush_close_unref(r.bus);
        vhm_guest_free(r.g);
        return v.pass ? EXIT_PASS : EXIT_FAIL;
}
