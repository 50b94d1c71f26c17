/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl: the command-line front of vhostmig.  `probe` talks to a
 * back-end directly, without the daemon (or, with -H, through the daemon of
 * that host); every other verb drives vhostmigd over D-Bus (ctl-bus.c).
 * This file parses and validates the command line: options go anywhere
 * among a verb's arguments (GNU permutation), every verb has --help, and
 * every message starts with the program's name.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon/common/cli-util.h"
#include "daemon/common/validate.h"
#include "ctl-bus.h"
#include "ctl-props.h"
#include "migrate/probe.h"
#include "proto/vhost-user-table.h"

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))
#define NUMBER_HINT   "decimal or 0x hex, optionally with a K, M, G or T suffix"

/* Options without a short form; each verb's own follow the common ones. */
enum {
        OPT_VERSION = 0x100,
        OPT_JSON,
        OPT_NO_LEGEND,
        OPT_BUS_ADDRESS,
        OPT_SERVER,
        OPT_TIMEOUT,
        OPT_MEMORY,
        OPT_FEATURES,
        OPT_QUEUE_PAIRS,
        OPT_MAC,
        OPT_MTU,
        OPT_QUEUE,
        OPT_EVENTFDS,
        OPT_INCOMING,
        OPT_LISTEN,
        OPT_TO,
        OPT_TOKEN,
        OPT_WAIT,
        OPT_TYPE,
        OPT_LOG_SWITCH_LOCKED,
        OPT_LIVE,
        OPT_MAX_DOWNTIME,
        OPT_MAX_BANDWIDTH,
        OPT_MAX_ROUNDS,
        OPT_FORCE_SWITCHOVER,
        OPT_PAUSE_TIMEOUT,
};

/* Taken before the command and by every command, anywhere among its arguments. */
#define COMMON_OPTIONS                                                                                  \
        { "help", no_argument, NULL, 'h' }, { "json", no_argument, NULL, OPT_JSON },                    \
                { "quiet", no_argument, NULL, 'q' }, { "no-legend", no_argument, NULL, OPT_NO_LEGEND }, \
                { "host", required_argument, NULL, 'H' }, {                                             \
                "bus-address", required_argument, NULL, OPT_BUS_ADDRESS                                 \
        }
/* ':' first: a missing value is reported as ':', apart from an unknown option. */
#define COMMON_SHORT ":hqH:"

#define COMMON_HELP                                                                                  \
        "  -h --help               Show this help\n"                                                 \
        "     --json               Print one JSON document (watch, migrate start --wait: one\n"      \
        "                          object a line)\n"                                                 \
        "  -q --quiet              Print only what was asked for; no legend (implies --no-legend)\n" \
        "     --no-legend          No column headers and hints (for scripts)\n"                      \
        "  -H --host=[USER@]HOST   Talk to vhostmigd on HOST, over ssh\n"                            \
        "     --bus-address=ADDR   Talk to vhostmigd on this D-Bus address, not the system bus\n"

#define EXIT_HELP                                                                                   \
        "Exit status: 0 done; 1 the daemon or a back-end failed; 2 usage error; 4 access denied;\n" \
        "5 no such VM or device; 7 vhostmigd is not running.\n"

struct verb;

/* The parse of one command line. */
struct parse {
        struct ctl_opts *o;
        const struct verb *verb; /* NULL before the command */
        const char *name;        /* "device add", for messages */
        bool stop;               /* --help was shown or a usage error said: return `ret` */
        int ret;
};

struct verb {
        const char *name;
        const char *sub; /* the second word ("vm create"), or NULL */
        int (*run)(struct parse *p, int argc, char **argv);
        const char *synopsis; /* what follows the command's words */
        const char *summary;
        const char *help; /* its own options, as lines of --help; NULL: none */
        bool passes_fds;  /* hands file descriptors to the daemon: not with -H */
};

static void verb_help(const struct verb *v);

static int option_error(struct parse *p, int c, char **argv) {
        const char *arg = argv[optind - 1];
        if (c == ':')
                return cli_command_usage_error(p->name, "option '%s' needs a value", arg);
        if (strncmp(arg, "--", 2) == 0)
                return cli_command_usage_error(p->name, "unrecognized option '%s'", arg);
        return cli_command_usage_error(p->name, "unrecognized option '-%c'", optopt);
}

/* The common options; false when c is none of them. */
static bool common_option(struct parse *p, int c) {
        switch (c) {
        case 'h':
                if (!p->stop) {
                        verb_help(p->verb);
                        p->stop = true;
                        p->ret = EXIT_OK;
                }
                return true;
        case OPT_JSON:
                p->o->json = true;
                return true;
        case 'q':
                p->o->quiet = true;
                p->o->legend = false;
                return true;
        case OPT_NO_LEGEND:
                p->o->legend = false;
                return true;
        case 'H':
                p->o->host = optarg;
                return true;
        case OPT_BUS_ADDRESS:
                p->o->bus_address = optarg;
                return true;
        default:
                return false;
        }
}

/* What the options allow together, checked once the command's own were read. */
static int check_options(const struct parse *p) {
        const struct ctl_opts *o = p->o;

        if (o->host && o->bus_address)
                return cli_usage_error("%s", "-H/--host and --bus-address exclude each other");
        if (o->host && (!*o->host || o->host[0] == '-'))
                return cli_usage_error("invalid --host '%s' (expected [USER@]HOST)", o->host);
        if (o->bus_address && !strchr(o->bus_address, ':'))
                return cli_usage_error("--bus-address '%s' is not a D-Bus address (e.g. unix:path=/run/bus)",
                                       o->bus_address);
        if (o->host && p->verb && p->verb->passes_fds)
                return cli_command_usage_error(p->name, "file descriptors cannot cross -H (ssh): run it on %s",
                                               o->host);
        return EXIT_OK;
}

/*
 * A verb's next own option, or -1 at the end or when the parse must stop
 * (p->stop: help shown, or a usage error said).  At the end the options
 * are checked together.  optind = 0 makes glibc
 * start over, in permuting mode (main() parsed in order-preserving mode).
 */
static int next_option(struct parse *p, int argc, char **argv, const struct option *options) {
        int c;
        while (!p->stop && (c = getopt_long(argc, argv, COMMON_SHORT, options, NULL)) >= 0) {
                if (common_option(p, c))
                        continue;
                if (c == '?' || c == ':') {
                        p->ret = option_error(p, c, argv);
                        p->stop = true;
                        break;
                }
                return c;
        }
        if (!p->stop && (p->ret = check_options(p)) != EXIT_OK)
                p->stop = true;
        return -1;
}

static void options_begin(void) {
        optind = 0;
        opterr = 0;
}

/* For verbs with only the common options; leaves the positional arguments at argv[optind...]. */
static int parse_common_only(struct parse *p, int argc, char **argv) {
        static const struct option options[] = { COMMON_OPTIONS, {} };
        int c;
        options_begin();
        while ((c = next_option(p, argc, argv, options)) >= 0) {
                p->ret = option_error(p, c, argv);
                p->stop = true;
        }
        return p->stop ? p->ret : EXIT_OK;
}

/* Parses the options and checks there are min..max positional arguments. */
static int parse_positional(struct parse *p, int argc, char **argv, int min, int max, const char *what) {
        if (parse_common_only(p, argc, argv) != EXIT_OK || p->stop)
                return p->ret;
        int n = argc - optind;
        if (n < min || n > max)
                return cli_command_usage_error(p->name, "takes %s", what);
        return EXIT_OK;
}

/* The daemon's rule (validate.h), told before anything is sent. */
static int check_vm_name(const char *verb, const char *name) {
        char why[128];
        if (validate_vm_name(name, why, sizeof(why)) < 0)
                return cli_command_usage_error(verb, "invalid VM name: %s", why);
        return EXIT_OK;
}

/* ---- probe ------------------------------------------------------------------------ */

/* Seconds (fractions allowed) to milliseconds; rejects junk, zero and negatives. */
static int parse_timeout(const char *s, unsigned *ms) {
        char *end;
        errno = 0;
        double sec = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(sec) || sec <= 0 || sec > 3600)
                return -EINVAL;
        *ms = (unsigned) ceil(sec * 1000.0);
        return 0;
}

static int probe_here(const struct ctl_opts *o, const struct vhm_probe_options *opts) {
        struct vhm_probe_result result;
        char error[512];
        if (vhm_probe(opts, &result, error, sizeof(error)) < 0) {
                cli_error("probe %s: %s", opts->socket, error);
                return EXIT_FAILED;
        }
        print_probe(o->json, opts->socket, &result);
        return EXIT_OK;
}

static int verb_probe(struct parse *p, int argc, char **argv) {
        static const struct option options[] = { COMMON_OPTIONS,
                                                 { "server", no_argument, NULL, OPT_SERVER },
                                                 { "timeout", required_argument, NULL, OPT_TIMEOUT },
                                                 {} };
        struct vhm_probe_options opts = { .timeout_ms = 5000 };
        int c;

        options_begin();
        while ((c = next_option(p, argc, argv, options)) >= 0) {
                if (c == OPT_SERVER)
                        opts.server = true;
                else if (parse_timeout(optarg, &opts.timeout_ms) < 0)
                        return cli_command_usage_error("probe", "invalid timeout '%s' (seconds, > 0, at most 3600)",
                                                       optarg);
        }
        if (p->stop)
                return p->ret;
        if (argc - optind != 1)
                return cli_command_usage_error("probe", "%s", "takes exactly one SOCKET");
        opts.socket = argv[optind];
        /* On another host the socket is that host's: its daemon probes it. */
        if (p->o->host)
                return ctl_probe_remote(p->o, opts.socket, opts.server, opts.timeout_ms);
        return probe_here(p->o, &opts);
}

static int parse_u32_range(const char *s, uint32_t min, uint32_t max, uint32_t *ret) {
        uint64_t v;
        int r = cli_parse_u64(s, false, &v);
        if (r < 0)
                return r;
        if (v < min || v > max)
                return -ERANGE;
        *ret = (uint32_t) v;
        return 0;
}

static int parse_device_number(const char *verb, const char *s, unsigned *ret) {
        uint32_t v;
        if (!isdigit((unsigned char) s[0]) || parse_u32_range(s, 0, INT32_MAX, &v) < 0)
                return cli_command_usage_error(verb, "invalid device number '%s' (0, 1, ... as 'show' lists them)", s);
        *ret = v;
        return EXIT_OK;
}

/* Splits s (modified) at ':' into at most max fields; returns how many there were, max + 1 if more. */
static unsigned split_fields(char *s, char **fields, unsigned max) {
        unsigned n = 0;
        for (char *p = s;; p++) {
                if (n == max)
                        return max + 1;
                fields[n++] = p;
                p = strchr(p, ':');
                if (!p)
                        return n;
                *p = 0;
        }
}

/* ---- vm create ---------------------------------------------------------------- */

#define PAGE_4K 4096u

struct regions {
        struct ctl_region v[VHM_VM_MAX_REGIONS];
        char *text[VHM_VM_MAX_REGIONS]; /* the FILE:GPA:SIZE[:OFFSET] given, split in place */
        unsigned n;
};

static void regions_done(struct regions *r) {
        for (unsigned i = 0; i < r->n; i++) {
                if (r->v[i].fd >= 0)
                        close(r->v[i].fd);
                free(r->text[i]);
        }
}

static int region_number(const char *spec, const char *what, const char *s, uint64_t *ret) {
        if (cli_parse_u64(s, true, ret) < 0)
                return cli_command_usage_error("vm create", "--memory '%s': %s '%s' is not a number (" NUMBER_HINT ")",
                                               spec, what, s);
        return EXIT_OK;
}

/* The file must hold the region; vhostmigd checks again, but a person gets told here. */
static int open_region_file(const char *spec, struct ctl_region *r) {
        struct stat st;

        r->fd = open(r->file, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (r->fd < 0)
                return cli_command_usage_error("vm create", "--memory '%s': cannot open '%s' read-write: %s", spec,
                                               r->file, strerror(errno));
        if (fstat(r->fd, &st) < 0 || !S_ISREG(st.st_mode))
                return cli_command_usage_error("vm create",
                                               "--memory '%s': '%s' is not a memory file (memfd, hugetlbfs or tmpfs)",
                                               spec, r->file);
        if (r->offset + r->size > (uint64_t) st.st_size)
                return cli_command_usage_error(
                        "vm create", "--memory '%s': OFFSET + SIZE is 0x%" PRIx64 " but '%s' holds 0x%" PRIx64 " bytes",
                        spec, r->offset + r->size, r->file, (uint64_t) st.st_size);
        return EXIT_OK;
}

static int parse_region(const char *spec, struct regions *rs) {
        if (rs->n == VHM_VM_MAX_REGIONS)
                return cli_command_usage_error("vm create", "at most %d --memory regions", VHM_VM_MAX_REGIONS);
        unsigned i = rs->n++;
        struct ctl_region *r = &rs->v[i];
        char *fields[4];
        int ret;

        *r = (struct ctl_region){ .fd = -1 };
        if (!(rs->text[i] = strdup(spec))) {
                cli_error("vm create: out of memory");
                return EXIT_FAILED;
        }
        unsigned n = split_fields(rs->text[i], fields, 4);
        if (n < 3 || n > 4 || !*fields[0])
                return cli_command_usage_error("vm create", "--memory '%s': expected FILE:GPA:SIZE[:OFFSET]", spec);
        r->file = fields[0];
        if ((ret = region_number(spec, "GPA", fields[1], &r->gpa)) != EXIT_OK ||
            (ret = region_number(spec, "SIZE", fields[2], &r->size)) != EXIT_OK ||
            (n == 4 && (ret = region_number(spec, "OFFSET", fields[3], &r->offset)) != EXIT_OK))
                return ret;
        if (r->size == 0)
                return cli_command_usage_error("vm create", "--memory '%s': SIZE must not be 0", spec);
        if ((r->gpa | r->size | r->offset) % PAGE_4K)
                return cli_command_usage_error("vm create",
                                               "--memory '%s': GPA, SIZE and OFFSET must be multiples of 4K", spec);
        if (r->gpa + r->size < r->gpa || r->offset + r->size < r->offset)
                return cli_command_usage_error("vm create", "--memory '%s': the region wraps around", spec);
        return open_region_file(spec, r);
}

static int check_overlaps(const struct regions *rs) {
        for (unsigned i = 0; i < rs->n; i++)
                for (unsigned j = 0; j < i; j++) {
                        const struct ctl_region *a = &rs->v[i], *b = &rs->v[j];
                        if (a->gpa < b->gpa + b->size && b->gpa < a->gpa + a->size)
                                return cli_command_usage_error(
                                        "vm create", "the regions at GPA 0x%" PRIx64 " and 0x%" PRIx64 " overlap",
                                        b->gpa, a->gpa);
                }
        return EXIT_OK;
}

static int verb_vm_create(struct parse *p, int argc, char **argv) {
        static const struct option options[] = { COMMON_OPTIONS,
                                                 { "memory", required_argument, NULL, OPT_MEMORY },
                                                 {} };
        struct regions rs = {};
        int c, ret = EXIT_OK;

        options_begin();
        while (ret == EXIT_OK && (c = next_option(p, argc, argv, options)) >= 0)
                ret = parse_region(optarg, &rs);
        if (p->stop)
                ret = p->ret;
        else if (ret == EXIT_OK && argc - optind != 1)
                ret = cli_command_usage_error("vm create", "%s", "takes exactly one NAME");
        if (ret == EXIT_OK && !p->stop)
                ret = check_vm_name("vm create", argv[optind]);
        if (ret == EXIT_OK && !p->stop && rs.n == 0)
                ret = cli_command_usage_error("vm create", "%s",
                                              "give the guest memory with --memory FILE:GPA:SIZE[:OFFSET]");
        if (ret == EXIT_OK && !p->stop)
                ret = check_overlaps(&rs);
        if (ret == EXIT_OK && !p->stop)
                ret = ctl_vm_create(p->o, argv[optind], rs.v, rs.n);
        regions_done(&rs);
        return ret;
}

/* ---- device add ---------------------------------------------------------------- */

struct device_args {
        struct ctl_device dev;
        char socket[sizeof(((struct sockaddr_un *) 0)->sun_path)];
        char mac[18];
        const char *queue_text[VHM_DEVICE_MAX_QUEUES];
        unsigned n_queue_text;
        bool eventfds;
        int own_fds[2 * VHM_DEVICE_MAX_QUEUES];
        unsigned n_own_fds;
};

static void device_args_done(struct device_args *a) {
        for (unsigned i = 0; i < a->n_own_fds; i++)
                close(a->own_fds[i]);
}

/*
 * Without --features: whatever the back-end offers, except what the queues
 * given here cannot be (they are split rings at guest-physical addresses).
 */
#define DEFAULT_FEATURES (UINT64_MAX & ~(VHU_BIT(VHU_VF_RING_PACKED) | VHU_BIT(VHU_VF_ACCESS_PLATFORM)))

static int parse_mac(const char *s, char *out, size_t len) {
        uint8_t b[6];
        char why[128];
        if (validate_mac(s, b, why, sizeof(why)) < 0)
                return cli_command_usage_error("device add", "invalid --mac: %s", why);
        snprintf(out, len, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
        return EXIT_OK;
}

static int parse_features(const char *s, uint64_t *ret) {
        const char *digits = strncasecmp(s, "0x", 2) == 0 ? s + 2 : s;
        size_t n = strspn(digits, "0123456789abcdefABCDEF");
        if (n == 0 || n > 16 || digits[n])
                return cli_command_usage_error("device add",
                                               "invalid --features '%s' (a hexadecimal mask of virtio features)", s);
        *ret = strtoull(digits, NULL, 16);
        return EXIT_OK;
}

/* The socket as an absolute path: vhostmigd does not run in our directory. */
static int parse_socket(const char *s, char *out, size_t len) {
        char cwd[PATH_MAX];
        int n;

        if (!*s)
                return cli_command_usage_error("device add", "%s", "the SOCKET path is empty");
        if (s[0] == '/')
                n = snprintf(out, len, "%s", s);
        else if (!getcwd(cwd, sizeof(cwd)))
                return cli_command_usage_error("device add", "cannot make '%s' absolute: %s", s, strerror(errno));
        else
                n = snprintf(out, len, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, s);
        char why[128];
        if (n < 0 || (size_t) n >= len || validate_socket_path(out, why, sizeof(why)) < 0)
                return cli_command_usage_error("device add",
                                               "socket path '%s' is too long (at most %u bytes, absolute)", s,
                                               VALIDATE_SOCKET_MAX);
        return EXIT_OK;
}

static int check_eventfd(const char *spec, const char *what, const char *s, int *fd) {
        char why[160];
        uint32_t v;

        if (!isdigit((unsigned char) s[0]) || parse_u32_range(s, 0, INT_MAX, &v) < 0)
                return cli_command_usage_error("device add", "--queue '%s': %s '%s' is not a file descriptor number",
                                               spec, what, s);
        if (validate_eventfd((int) v, why, sizeof(why)) < 0)
                return cli_command_usage_error("device add", "--queue '%s': %s: %s", spec, what, why);
        *fd = (int) v;
        return EXIT_OK;
}

static int new_eventfd(struct device_args *a, int *fd) {
        *fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (*fd < 0) {
                cli_error("device add: cannot create an eventfd: %s", strerror(errno));
                return EXIT_FAILED;
        }
        a->own_fds[a->n_own_fds++] = *fd;
        return EXIT_OK;
}

static int queue_address(const char *spec, const char *what, const char *s, uint64_t *ret) {
        if (cli_parse_u64(s, true, ret) < 0)
                return cli_command_usage_error(
                        "device add", "--queue '%s': %s '%s' is not a guest-physical address (" NUMBER_HINT ")", spec,
                        what, s);
        return EXIT_OK;
}

/* SIZE:DESC:AVAIL:USED:KICKFD:CALLFD, or SIZE:DESC:AVAIL:USED with --eventfds. */
static int parse_queue(struct device_args *a, const char *spec, struct ctl_queue *q) {
        char buf[256], *f[6];
        unsigned want = a->eventfds ? 4 : 6;
        int ret;

        if (snprintf(buf, sizeof(buf), "%s", spec) >= (int) sizeof(buf))
                return cli_command_usage_error("device add", "--queue '%s' is too long", spec);
        if (split_fields(buf, f, 6) != want)
                return cli_command_usage_error("device add", "--queue '%s': expected %s", spec,
                                               a->eventfds ? "SIZE:DESC:AVAIL:USED (with --eventfds)"
                                                           : "SIZE:DESC:AVAIL:USED:KICKFD:CALLFD");
        if (!isdigit((unsigned char) f[0][0]) || parse_u32_range(f[0], 1, 32768, &q->size) < 0 ||
            (q->size & (q->size - 1)))
                return cli_command_usage_error(
                        "device add", "--queue '%s': ring SIZE '%s' must be a power of two up to 32768", spec, f[0]);
        if ((ret = queue_address(spec, "DESC", f[1], &q->desc)) != EXIT_OK ||
            (ret = queue_address(spec, "AVAIL", f[2], &q->avail)) != EXIT_OK ||
            (ret = queue_address(spec, "USED", f[3], &q->used)) != EXIT_OK)
                return ret;
        if (a->eventfds) {
                if ((ret = new_eventfd(a, &q->kick_fd)) != EXIT_OK)
                        return ret;
                return new_eventfd(a, &q->call_fd);
        }
        if ((ret = check_eventfd(spec, "KICKFD", f[4], &q->kick_fd)) != EXIT_OK)
                return ret;
        return check_eventfd(spec, "CALLFD", f[5], &q->call_fd);
}

/* What the daemon checks too (AddDevice's "Type"), told before anything is sent. */
static int parse_device_type(const char *s, const char **type) {
        static const char *const types[] = { VHOSTMIG_DEVICE_TYPE_NET, VHOSTMIG_DEVICE_TYPE_FS,
                                             VHOSTMIG_DEVICE_TYPE_BLK, VHOSTMIG_DEVICE_TYPE_OTHER };
        for (size_t i = 0; i < ELEMENTSOF(types); i++)
                if (strcmp(s, types[i]) == 0) {
                        *type = types[i];
                        return EXIT_OK;
                }
        return cli_command_usage_error("device add", "invalid --type '%s' (net, fs, blk or other)", s);
}

static int device_add_option(struct parse *p, struct device_args *a, int c, char **argv) {
        struct ctl_device *d = &a->dev;
        uint32_t v;

        switch (c) {
        case OPT_SERVER:
                d->server = true;
                return EXIT_OK;
        case OPT_FEATURES:
                return parse_features(optarg, &d->features);
        case OPT_QUEUE_PAIRS:
                if (!isdigit((unsigned char) optarg[0]) ||
                    parse_u32_range(optarg, 1, VHM_DEVICE_MAX_QUEUE_PAIRS, &v) < 0)
                        return cli_command_usage_error("device add", "invalid --queue-pairs '%s' (1..%d)", optarg,
                                                       VHM_DEVICE_MAX_QUEUE_PAIRS);
                d->queue_pairs = v;
                return EXIT_OK;
        case OPT_MAC:
                return parse_mac(optarg, a->mac, sizeof(a->mac));
        case OPT_MTU:
                if (!isdigit((unsigned char) optarg[0]) || parse_u32_range(optarg, 0, 65535, &v) < 0 ||
                    validate_mtu(v, NULL, 0) < 0)
                        return cli_command_usage_error("device add", "invalid --mtu '%s' (%u..65535)", optarg,
                                                       VALIDATE_MTU_MIN);
                d->mtu = (uint16_t) v;
                return EXIT_OK;
        case OPT_QUEUE:
                if (a->n_queue_text == VHM_DEVICE_MAX_QUEUES)
                        return cli_command_usage_error("device add", "at most %d --queue options (%d queue pairs)",
                                                       VHM_DEVICE_MAX_QUEUES, VHM_DEVICE_MAX_QUEUE_PAIRS);
                a->queue_text[a->n_queue_text++] = optarg;
                return EXIT_OK;
        case OPT_EVENTFDS:
                a->eventfds = true;
                return EXIT_OK;
        case OPT_INCOMING:
                d->incoming = true;
                return EXIT_OK;
        case OPT_TYPE:
                return parse_device_type(optarg, &d->type);
        case OPT_LOG_SWITCH_LOCKED:
                d->log_switch_locked = true;
                return EXIT_OK;
        default:
                return option_error(p, c, argv);
        }
}

static int device_add_finish(struct device_args *a, int argc, char **argv) {
        struct ctl_device *d = &a->dev;
        int ret;

        if (argc - optind != 2)
                return cli_command_usage_error("device add", "%s", "takes a VM and a SOCKET");
        if ((ret = check_vm_name("device add", argv[optind])) != EXIT_OK ||
            (ret = parse_socket(argv[optind + 1], a->socket, sizeof(a->socket))) != EXIT_OK)
                return ret;
        d->socket = a->socket;
        d->mac = a->mac[0] ? a->mac : NULL;
        d->n_queues = 2 * d->queue_pairs;
        if (a->n_queue_text != d->n_queues)
                return cli_command_usage_error("device add",
                                               "%u queue pair%s %u --queue options (RX 0, TX 0, RX 1, ...), "
                                               "%u given",
                                               d->queue_pairs, d->queue_pairs == 1 ? " needs" : "s need", d->n_queues,
                                               a->n_queue_text);
        for (unsigned i = 0; i < d->n_queues; i++)
                if ((ret = parse_queue(a, a->queue_text[i], &d->queues[i])) != EXIT_OK)
                        return ret;
        return EXIT_OK;
}

static int verb_device_add(struct parse *p, int argc, char **argv) {
        static const struct option options[] = { COMMON_OPTIONS,
                                                 { "server", no_argument, NULL, OPT_SERVER },
                                                 { "features", required_argument, NULL, OPT_FEATURES },
                                                 { "queue-pairs", required_argument, NULL, OPT_QUEUE_PAIRS },
                                                 { "mac", required_argument, NULL, OPT_MAC },
                                                 { "mtu", required_argument, NULL, OPT_MTU },
                                                 { "queue", required_argument, NULL, OPT_QUEUE },
                                                 { "eventfds", no_argument, NULL, OPT_EVENTFDS },
                                                 { "incoming", no_argument, NULL, OPT_INCOMING },
                                                 { "type", required_argument, NULL, OPT_TYPE },
                                                 { "log-switch-locked", no_argument, NULL, OPT_LOG_SWITCH_LOCKED },
                                                 {} };
        struct device_args a = { .dev = { .features = DEFAULT_FEATURES, .queue_pairs = 1 } };
        int c, ret = EXIT_OK;

        options_begin();
        while (ret == EXIT_OK && (c = next_option(p, argc, argv, options)) >= 0)
                ret = device_add_option(p, &a, c, argv);
        if (p->stop)
                ret = p->ret;
        if (ret == EXIT_OK && !p->stop)
                ret = device_add_finish(&a, argc, argv);
        if (ret == EXIT_OK && !p->stop)
                ret = ctl_device_add(p->o, argv[optind], &a.dev);
        device_args_done(&a);
        return ret;
}

/* ---- the other daemon verbs ------------------------------------------------------ */

static int verb_status(struct parse *p, int argc, char **argv) {
        int ret = parse_positional(p, argc, argv, 0, 0, "no arguments");
        return ret != EXIT_OK || p->stop ? ret : ctl_status(p->o);
}

static int verb_list(struct parse *p, int argc, char **argv) {
        int ret = parse_positional(p, argc, argv, 0, 0, "no arguments");
        return ret != EXIT_OK || p->stop ? ret : ctl_list(p->o);
}

/* Verbs of the form "VERB VM": parses, validates the name, runs `run`. */
static int run_on_vm(struct parse *p, int argc, char **argv, int (*run)(const struct ctl_opts *o, const char *vm)) {
        int ret = parse_positional(p, argc, argv, 1, 1, "exactly one VM");
        if (ret != EXIT_OK || p->stop)
                return ret;
        ret = check_vm_name(p->name, argv[optind]);
        return ret != EXIT_OK ? ret : run(p->o, argv[optind]);
}

/* Verbs of the form "VERB VM N". */
static int run_on_device(struct parse *p, int argc, char **argv,
                         int (*run)(const struct ctl_opts *o, const char *vm, unsigned dev)) {
        unsigned dev;
        int ret = parse_positional(p, argc, argv, 2, 2, "a VM and a device number");
        if (ret != EXIT_OK || p->stop)
                return ret;
        ret = check_vm_name(p->name, argv[optind]);
        if (ret == EXIT_OK)
                ret = parse_device_number(p->name, argv[optind + 1], &dev);
        return ret != EXIT_OK ? ret : run(p->o, argv[optind], dev);
}

static int verb_show(struct parse *p, int argc, char **argv) {
        return run_on_vm(p, argc, argv, ctl_show);
}
static int verb_vm_destroy(struct parse *p, int argc, char **argv) {
        return run_on_vm(p, argc, argv, ctl_vm_destroy);
}
static int verb_device_remove(struct parse *p, int argc, char **argv) {
        return run_on_device(p, argc, argv, ctl_device_remove);
}
static int verb_logging_start(struct parse *p, int argc, char **argv) {
        return run_on_vm(p, argc, argv, ctl_logging_start);
}
static int verb_logging_stop(struct parse *p, int argc, char **argv) {
        return run_on_vm(p, argc, argv, ctl_logging_stop);
}
static int verb_logging_harvest(struct parse *p, int argc, char **argv) {
        return run_on_vm(p, argc, argv, ctl_logging_harvest);
}
static int verb_reconnect(struct parse *p, int argc, char **argv) {
        return run_on_device(p, argc, argv, ctl_reconnect);
}

static int verb_announce(struct parse *p, int argc, char **argv) {
        unsigned dev;
        int ret = parse_positional(p, argc, argv, 1, 2, "a VM and optionally a device number");
        if (ret != EXIT_OK || p->stop)
                return ret;
        if ((ret = check_vm_name("announce", argv[optind])) != EXIT_OK)
                return ret;
        if (argc - optind == 1)
                return ctl_announce(p->o, argv[optind], -1);
        if ((ret = parse_device_number("announce", argv[optind + 1], &dev)) != EXIT_OK)
                return ret;
        return ctl_announce(p->o, argv[optind], (int) dev);
}

static int verb_watch(struct parse *p, int argc, char **argv) {
        int ret = parse_positional(p, argc, argv, 0, 1, "at most one VM");
        if (ret != EXIT_OK || p->stop)
                return ret;
        if (argc - optind == 1 && (ret = check_vm_name("watch", argv[optind])) != EXIT_OK)
                return ret;
        return ctl_watch(p->o, argc - optind == 1 ? argv[optind] : NULL);
}

/* ---- migrate ---------------------------------------------------------------------- */

/* What the daemon checks too, told before anything is sent. */
static int check_migrate_address(const char *verb, const char *option, const char *address) {
        if (strncmp(address, "unix:", 5) != 0 && strncmp(address, "tcp:", 4) != 0)
                return cli_command_usage_error(verb, "%s '%s' is neither unix:PATH nor tcp:HOST:PORT", option, address);
        return EXIT_OK;
}

static int verb_migrate_incoming(struct parse *p, int argc, char **argv) {
        static const struct option options[] = { COMMON_OPTIONS,
                                                 { "listen", required_argument, NULL, OPT_LISTEN },
                                                 {} };
        const char *listen = NULL;
        int c, ret = EXIT_OK;

        options_begin();
        while ((c = next_option(p, argc, argv, options)) >= 0)
                listen = optarg;
        if (p->stop)
                return p->ret;
        if (argc - optind != 1)
                return cli_command_usage_error(p->name, "%s", "takes exactly one VM");
        if (listen && (ret = check_migrate_address(p->name, "--listen", listen)) != EXIT_OK)
                return ret;
        if ((ret = check_vm_name(p->name, argv[optind])) != EXIT_OK)
                return ret;
        return ctl_migrate_incoming(p->o, argv[optind], listen);
}

/* The limits of MigrateTo's options (docs/dbus-api.md), told before anything is sent. */
#define MAX_DOWNTIME_MS_MAX  3600000u
#define MAX_ROUNDS_MAX       10000u
#define PAUSE_TIMEOUT_MS_MAX 3600000u

static int parse_migrate_u32(const char *verb, const char *option, const char *s, uint32_t max, uint32_t *ret) {
        if (!isdigit((unsigned char) s[0]) || parse_u32_range(s, 1, max, ret) < 0)
                return cli_command_usage_error(verb, "invalid %s '%s' (1..%" PRIu32 ")", option, s, max);
        return EXIT_OK;
}

/*
 * One option of migrate start.  *live_only names the first option that
 * needs --live, checked once all are read (the order on the line is free).
 */
static int migrate_start_option(struct parse *p, struct ctl_migrate *m, int c, char **argv, const char **live_only) {
        const char *opt = NULL;
        int ret = EXIT_OK;

        switch (c) {
        case OPT_TO:
                m->to = optarg;
                return EXIT_OK;
        case OPT_TOKEN:
                m->token = optarg;
                return EXIT_OK;
        case OPT_WAIT:
                m->wait = true;
                return EXIT_OK;
        case OPT_LIVE:
                m->live = true;
                return EXIT_OK;
        case OPT_MAX_DOWNTIME:
                opt = "--max-downtime";
                m->has_max_downtime = true;
                ret = parse_migrate_u32(p->name, opt, optarg, MAX_DOWNTIME_MS_MAX, &m->max_downtime_ms);
                break;
        case OPT_MAX_BANDWIDTH:
                opt = "--max-bandwidth";
                m->has_max_bandwidth = true;
                if (cli_parse_u64(optarg, true, &m->max_bandwidth) < 0)
                        ret = cli_command_usage_error(
                                p->name, "invalid --max-bandwidth '%s' (bytes/s, with K, M or G: powers of 1024)",
                                optarg);
                break;
        case OPT_MAX_ROUNDS:
                opt = "--max-rounds";
                m->has_max_rounds = true;
                ret = parse_migrate_u32(p->name, opt, optarg, MAX_ROUNDS_MAX, &m->max_rounds);
                break;
        case OPT_FORCE_SWITCHOVER:
                opt = "--force-switchover";
                m->force_switchover = true;
                break;
        case OPT_PAUSE_TIMEOUT:
                opt = "--pause-timeout";
                m->has_pause_timeout = true;
                ret = parse_migrate_u32(p->name, opt, optarg, PAUSE_TIMEOUT_MS_MAX, &m->pause_timeout_ms);
                break;
        default:
                return option_error(p, c, argv);
        }
        if (!*live_only)
                *live_only = opt;
        return ret;
}

static int verb_migrate_start(struct parse *p, int argc, char **argv) {
        static const struct option options[] = { COMMON_OPTIONS,
                                                 { "to", required_argument, NULL, OPT_TO },
                                                 { "token", required_argument, NULL, OPT_TOKEN },
                                                 { "wait", no_argument, NULL, OPT_WAIT },
                                                 { "live", no_argument, NULL, OPT_LIVE },
                                                 { "max-downtime", required_argument, NULL, OPT_MAX_DOWNTIME },
                                                 { "max-bandwidth", required_argument, NULL, OPT_MAX_BANDWIDTH },
                                                 { "max-rounds", required_argument, NULL, OPT_MAX_ROUNDS },
                                                 { "force-switchover", no_argument, NULL, OPT_FORCE_SWITCHOVER },
                                                 { "pause-timeout", required_argument, NULL, OPT_PAUSE_TIMEOUT },
                                                 {} };
        struct ctl_migrate m = {};
        const char *live_only = NULL;
        int c, ret = EXIT_OK;

        options_begin();
        while (ret == EXIT_OK && (c = next_option(p, argc, argv, options)) >= 0)
                ret = migrate_start_option(p, &m, c, argv, &live_only);
        if (p->stop)
                return p->ret;
        if (ret != EXIT_OK)
                return ret;
        if (argc - optind != 1)
                return cli_command_usage_error(p->name, "%s", "takes exactly one VM");
        if (!m.to || !m.token)
                return cli_command_usage_error(p->name, "%s",
                                               "give the destination with --to ADDR and --token TOKEN, as "
                                               "'migrate incoming' printed them there");
        if (live_only && !m.live)
                return cli_command_usage_error(p->name, "%s tunes a live migration: it needs --live", live_only);
        if ((ret = check_migrate_address(p->name, "--to", m.to)) != EXIT_OK)
                return ret;
        if (strlen(m.token) != 32 || strspn(m.token, "0123456789abcdef") != 32)
                return cli_command_usage_error(p->name, "invalid --token '%s' (32 lowercase hex digits)", m.token);
        if ((ret = check_vm_name(p->name, argv[optind])) != EXIT_OK)
                return ret;
        return ctl_migrate_start(p->o, argv[optind], &m);
}

static int verb_migrate_continue(struct parse *p, int argc, char **argv) {
        return run_on_vm(p, argc, argv, ctl_migrate_continue);
}

static int verb_migrate_status(struct parse *p, int argc, char **argv) {
        return run_on_vm(p, argc, argv, ctl_migrate_status);
}
static int verb_migrate_cancel(struct parse *p, int argc, char **argv) {
        return run_on_vm(p, argc, argv, ctl_migrate_cancel);
}

/* "migrate save-state VM FILE", "migrate load-state VM FILE". */
static int run_on_state_file(struct parse *p, int argc, char **argv,
                             int (*run)(const struct ctl_opts *o, const char *vm, const char *file)) {
        int ret = parse_positional(p, argc, argv, 2, 2, "a VM and a FILE");
        if (ret != EXIT_OK || p->stop)
                return ret;
        if (!*argv[optind + 1])
                return cli_command_usage_error(p->name, "%s", "the FILE name is empty");
        ret = check_vm_name(p->name, argv[optind]);
        return ret != EXIT_OK ? ret : run(p->o, argv[optind], argv[optind + 1]);
}
static int verb_migrate_save_state(struct parse *p, int argc, char **argv) {
        return run_on_state_file(p, argc, argv, ctl_migrate_save_state);
}
static int verb_migrate_load_state(struct parse *p, int argc, char **argv) {
        return run_on_state_file(p, argc, argv, ctl_migrate_load_state);
}

static int verb_help_cmd(struct parse *p, int argc, char **argv);

/* ---- the verbs --------------------------------------------------------------------- */

static const struct verb verbs[] = {
        { "probe", NULL, verb_probe, "SOCKET [--server] [--timeout SEC]",
          "Negotiate with a back-end and report (without the daemon)",
          "     --server             Listen at SOCKET and wait for the back-end to connect\n"
          "     --timeout=SEC        Bound each request and the wait (default 5, fractions allowed)\n"
          "With -H, the daemon on that host probes the SOCKET there (Manager.Probe).\n" },
        { "status", NULL, verb_status, "", "Show whether vhostmigd runs, its version and its VMs",
          "Exits with 7 and says \"not running\" when vhostmigd is not running; never starts it.\n" },
        { "list", NULL, verb_list, "", "List the VMs",
          "With --no-legend or -q: the rows only, no header and no count.\n" },
        { "show", NULL, verb_show, "VM", "Show a VM and its devices", NULL },
        { "vm", "create", verb_vm_create, "NAME --memory FILE:GPA:SIZE[:OFFSET]...",
          "Create a VM from its guest memory",
          "     --memory=FILE:GPA:SIZE[:OFFSET]\n"
          "                          One region of guest memory (at most 8): SIZE bytes of FILE\n"
          "                          from OFFSET at guest-physical address GPA; numbers decimal\n"
          "                          or 0x hex, with an optional K, M, G or T suffix\n",
          true },
        { "vm", "destroy", verb_vm_destroy, "NAME", "Stop a VM's devices and forget it", NULL },
        { "device", "add", verb_device_add,
          "VM SOCKET [OPTIONS] --queue SIZE:DESC:AVAIL:USED:KICKFD:CALLFD...\n"
          "       vhostmigctl [OPTIONS] device add VM SOCKET [OPTIONS] --eventfds --queue SIZE:DESC:AVAIL:USED...",
          "Connect, negotiate and start a vhost-user device",
          "     --server             Listen at SOCKET and wait for the back-end\n"
          "     --features=HEX       Virtio features the driver wants (default: all offered but\n"
          "                          RING_PACKED and ACCESS_PLATFORM)\n"
          "     --queue-pairs=N      Queue pairs, 1..8 (default 1): give 2*N --queue options;\n"
          "                          more than 4 are sent in a second call (AddQueues), as a\n"
          "                          stock system bus carries at most 16 fds a message\n"
          "     --mac=MAC            xx:xx:xx:xx:xx:xx for RARP announcements (default: none,\n"
          "                          and announce skips the device)\n"
          "     --mtu=N              Set the MTU, 68..65535 (default: unset)\n"
          "     --queue=QUEUE        One queue, in order RX 0, TX 0, RX 1, ...: ring SIZE, the\n"
          "                          guest-physical DESC, AVAIL and USED addresses, and the\n"
          "                          numbers of two inherited eventfds KICKFD and CALLFD\n"
          "     --eventfds           Make fresh eventfds (QUEUE without KICKFD:CALLFD); the device\n"
          "                          runs but nothing kicks it: for trying a back-end only\n"
          "     --incoming           Connect and negotiate only: the rings start when an incoming\n"
          "                          migration restores them ('migrate incoming', 'migrate\n"
          "                          load-state')\n"
          "     --type=TYPE          What the back-end serves: net (default), fs, blk or other; fs\n"
          "                          and other migrate only if the back-end offers DEVICE_STATE\n"
          "     --log-switch-locked  The back-end takes SET_LOG_BASE under its queue locks (DPDK,\n"
          "                          OVS-DPDK): harvests switch logs, no atomics. Never for\n"
          "                          libvhost-user back-ends: they would lose dirty pages\n",
          true },
        { "device", "remove", verb_device_remove, "VM N", "Stop and disconnect a device", NULL },
        { "logging", "start", verb_logging_start, "VM", "Switch dirty logging on", NULL },
        { "logging", "stop", verb_logging_stop, "VM", "Switch dirty logging off", NULL },
        { "logging", "harvest", verb_logging_harvest, "VM", "Collect the dirty log into the migration bitmap", NULL },
        { "announce", NULL, verb_announce, "VM [N]", "Send RARP announcements (SEND_RARP)", NULL },
        { "reconnect", NULL, verb_reconnect, "VM N", "Reconnect a device to its back-end now", NULL },
        { "migrate", "incoming", verb_migrate_incoming, "VM [--listen ADDR]",
          "Wait for a migration into VM; print the address and token",
          "     --listen=ADDR        unix:PATH or tcp:HOST:PORT (PORT 0: any) (default: a unix\n"
          "                          socket the daemon picks)\n"
          "The VM's devices must have been added with 'device add --incoming'.\n" },
        { "migrate", "start", verb_migrate_start, "VM --to ADDR --token TOKEN [--live [LIVE OPTIONS]] [--wait]",
          "Migrate VM to the vhostmigd at ADDR",
          "     --to=ADDR            The address 'migrate incoming' printed at the destination\n"
          "     --token=TOKEN        The token it printed\n"
          "     --live               Pre-copy while the guest runs (default: stop-and-copy, the\n"
          "                          VMM paused the vCPUs before)\n"
          "     --wait               Show the progress until the migration ends, then a summary;\n"
          "                          exit 1 unless it completed (--json: one object a line)\n"
          "Live options (only with --live):\n"
          "     --max-downtime=MS    Switch over once the rest fits MS at the measured bandwidth\n"
          "                          (1..3600000, default 300)\n"
          "     --max-bandwidth=BYTES\n"
          "                          Bytes/s during the rounds, K, M or G binary (default 0:\n"
          "                          unlimited)\n"
          "     --max-rounds=N       Rounds, the full pass included (1..10000, default 30)\n"
          "     --force-switchover   Switch over after N rounds anyway (default: fail, naming\n"
          "                          the dirty rate and the bandwidth)\n"
          "     --pause-timeout=MS   How long pre-switchover waits for the VMM's 'migrate\n"
          "                          continue' (1..3600000, default 10000)\n" },
        { "migrate", "continue", verb_migrate_continue, "VM",
          "The VMM paused the vCPUs: leave pre-switchover (MigrateContinue)", NULL },
        { "migrate", "status", verb_migrate_status, "VM", "Show the state and figures of VM's migration", NULL },
        { "migrate", "cancel", verb_migrate_cancel, "VM", "Cancel VM's migration (any phase before END)", NULL },
        { "migrate", "save-state", verb_migrate_save_state, "VM FILE",
          "Stop VM's devices and write their state to FILE (the VMM migrates the memory)",
          "FILE is created (mode 0600) or truncated. The devices stay stopped: the VMM\n"
          "releases them (vm destroy) once the destination runs.\n",
          true },
        { "migrate", "load-state", verb_migrate_load_state, "VM FILE",
          "Restore VM's devices from a state FILE and start them",
          "The VM's memory must hold the migrated guest and its devices must have been added\n"
          "with 'device add --incoming'. SEND_RARP follows where the guest needs it.\n",
          true },
        { "watch", NULL, verb_watch, "[VM]", "Print changes as they happen, until interrupted", NULL },
        { "help", NULL, verb_help_cmd, "[COMMAND]", "Show the help of vhostmigctl or of one command", NULL },
};

static void print_command(const struct verb *v, char *buf, size_t len) {
        snprintf(buf, len, "%s%s%s", v->name, v->sub ? " " : "", v->sub ? v->sub : "");
}

static void help(void) {
        char cmd[64], line[160];

        printf("Usage: vhostmigctl [OPTIONS] COMMAND ...\n\n"
               "Drive vhostmigd and inspect vhost-user back-ends.\n\nCommands:\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                const struct verb *v = &verbs[i];
                print_command(v, cmd, sizeof(cmd));
                size_t first = strcspn(v->synopsis, "\n");
                snprintf(line, sizeof(line), "%s%s%.*s", cmd, *v->synopsis ? " " : "", (int) first, v->synopsis);
                if (strlen(line) <= 34)
                        printf("  %-34s %s\n", line, v->summary);
                else
                        printf("  %s\n  %-34s %s\n", line, "", v->summary);
        }
        printf("\nOptions (before or after the command):\n" COMMON_HELP "     --version            Show the version\n"
               "\n" EXIT_HELP "'vhostmigctl COMMAND --help' or 'vhostmigctl help COMMAND' shows a command's options.\n"
               "See vhostmigctl(1).\n");
}

static void verb_help(const struct verb *v) {
        char cmd[64];

        if (!v) {
                help();
                return;
        }
        print_command(v, cmd, sizeof(cmd));
        printf("Usage: vhostmigctl [OPTIONS] %s%s%s\n\n%s.\n", cmd, *v->synopsis ? " " : "", v->synopsis, v->summary);
        if (v->help && strncmp(v->help, "  ", 2) == 0)
                printf("\nOptions:\n%s", v->help);
        else if (v->help)
                printf("\n%s", v->help);
        printf("\nCommon options:\n" COMMON_HELP "\n" EXIT_HELP "See vhostmigctl(1).\n");
}

/* The verb named by argv[0] (and argv[1]); NULL after saying why (*ret: the exit code). */
static const struct verb *find_verb(int argc, char **argv, int *ret) {
        const char *name = argv[0], *sub = argc > 1 ? argv[1] : NULL;
        bool known = false;

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                if (strcmp(name, verbs[i].name) != 0)
                        continue;
                known = true;
                if (!verbs[i].sub || (sub && strcmp(sub, verbs[i].sub) == 0))
                        return &verbs[i];
        }
        if (!known)
                *ret = cli_usage_error("unknown command '%s'", name);
        else if (!sub)
                *ret = cli_usage_error("missing %s command (%s)", name,
                                       strcmp(name, "vm") == 0       ? "create, destroy"
                                       : strcmp(name, "device") == 0 ? "add, remove"
                                       : strcmp(name, "migrate") == 0
                                               ? "incoming, start, continue, status, cancel, save-state, load-state"
                                               : "start, stop, harvest");
        else
                *ret = cli_usage_error("unknown command '%s %s'", name, sub);
        return NULL;
}

static int verb_help_cmd(struct parse *p, int argc, char **argv) {
        int ret = parse_positional(p, argc, argv, 0, 2, "at most a COMMAND");
        if (ret != EXIT_OK || p->stop)
                return ret;
        if (argc == optind) {
                help();
                return EXIT_OK;
        }
        const struct verb *v = find_verb(argc - optind, argv + optind, &ret);
        if (!v)
                return ret;
        verb_help(v);
        return EXIT_OK;
}

/* ---- main ------------------------------------------------------------------------ */

/* The top level: the common options and --version, in order (the command's own come after it). */
static int parse_top(struct parse *p, int argc, char **argv) {
        static const struct option options[] = { COMMON_OPTIONS, { "version", no_argument, NULL, OPT_VERSION }, {} };
        int c;

        opterr = 0;
        while (!p->stop && (c = getopt_long(argc, argv, "+" COMMON_SHORT, options, NULL)) >= 0) {
                if (common_option(p, c))
                        continue;
                if (c == OPT_VERSION) {
                        puts("vhostmigctl " VHOSTMIG_VERSION);
                        p->stop = true;
                        p->ret = EXIT_OK;
                } else if (c == ':')
                        return cli_usage_error("option '%s' needs a value", argv[optind - 1]);
                else if (strncmp(argv[optind - 1], "--", 2) == 0)
                        return cli_usage_error("unrecognized option '%s'", argv[optind - 1]);
                else
                        return cli_usage_error("unrecognized option '-%c'", optopt);
        }
        return EXIT_OK;
}

int main(int argc, char **argv) {
        struct ctl_opts o = { .legend = true };
        struct parse p = { .o = &o, .name = "vhostmigctl" };
        char name[64];
        int ret;

        if ((ret = parse_top(&p, argc, argv)) != EXIT_OK || p.stop)
                return p.stop ? p.ret : ret;
        if (optind >= argc)
                return cli_usage_error("%s", "missing command");

        int first = optind;
        const struct verb *v = find_verb(argc - first, argv + first, &ret);
        if (!v)
                return ret;
        int skip = v->sub ? 1 : 0;
        print_command(v, name, sizeof(name));
        p.verb = v;
        p.name = name;
        /* The command's own parse sees argv[0] = its (last) word. */
        argc -= first + skip;
        argv += first + skip;
        return v->run(&p, argc, argv);
}
