/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl: the command-line front of vhostmig.  `probe` talks to a
 * back-end directly, without the daemon; every other verb drives vhostmigd
 * over D-Bus (ctl-bus.c).  This file parses and validates the command line.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include "daemon/common/cli-util.h"
#include "ctl-bus.h"
#include "migrate/probe.h"
#include "proto/vhost-user-table.h"

struct verb {
        const char *name;
        const char *sub;           /* the second word ("vm create"), or NULL */
        int (*run)(int argc, char **argv);
        const char *synopsis;
        const char *summary;
};

bool arg_json;
const char *arg_bus_address;


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

json_object *feature_names_json(uint64_t bits, bool protocol) {
        json_object *arr = json_object_new_array();
        for (unsigned bit = 0; bit < 64; bit++) {
                if (!(bits & VHU_BIT(bit)))
                        continue;
                char buf[32];
                vhu_format_features(buf, sizeof(buf), VHU_BIT(bit), protocol, "");
                json_object_array_add(arr, json_object_new_string(buf));
        }
        return arr;
}

json_object *hex_json(uint64_t v) {
        char buf[24];
        snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
        return json_object_new_string(buf);
}

static void print_probe_json(const char *socket, const struct vhm_probe_result *r) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "socket", json_object_new_string(socket));
        json_object_object_add(o, "features", hex_json(r->features));
        json_object_object_add(o, "feature_names", feature_names_json(r->features, false));
        json_object_object_add(o, "protocol_features", hex_json(r->protocol_features));
        json_object_object_add(o, "protocol_feature_names", feature_names_json(r->protocol_features, true));
        json_object_object_add(o, "protocol_features_negotiated", hex_json(r->protocol_features_negotiated));
        json_object_object_add(o, "queue_pairs", json_object_new_int64(r->queue_pairs));
        json_object_object_add(o, "max_mem_slots", json_object_new_int64((int64_t) r->max_mem_slots));
        json_object_object_add(o, "migratable", json_object_new_boolean(r->migratable));
        json_object *blockers = json_object_new_array();
        for (unsigned i = 0; i < r->blockers.n; i++)
                json_object_array_add(blockers, json_object_new_string(r->blockers.reason[i]));
        json_object_object_add(o, "blockers", blockers);
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
}

static void print_features_text(const char *label, uint64_t bits, bool protocol) {
        char names[1024];
        vhu_format_features(names, sizeof(names), bits, protocol, " ");
        printf("%-19s 0x%" PRIx64 "\n%-19s %s\n", label, bits, "", names[0] ? names : "(none)");
}

static void print_probe_text(const char *socket, const struct vhm_probe_result *r) {
        printf("%-19s %s\n", "Socket:", socket);
        print_features_text("Features:", r->features, false);
        print_features_text("Protocol features:", r->protocol_features, true);
        print_features_text("Negotiated:", r->protocol_features_negotiated, true);
        printf("%-19s %u\n", "Queue pairs:", r->queue_pairs);
        if (r->max_mem_slots)
                printf("%-19s %" PRIu64 "\n", "Memory slots:", r->max_mem_slots);
        else
                printf("%-19s 8 (SET_MEM_TABLE only)\n", "Memory slots:");
        printf("%-19s %s\n", "Migratable:", r->migratable ? "yes" : "no");
        for (unsigned i = 0; i < r->blockers.n; i++)
                printf("%-19s %s\n", i == 0 ? "Blocked by:" : "", r->blockers.reason[i]);
}

static int verb_probe(int argc, char **argv) {
        static const struct option options[] = {
                { "json", no_argument, NULL, 'j' },
                { "server", no_argument, NULL, 's' },
                { "timeout", required_argument, NULL, 't' },
                {}
        };
        struct vhm_probe_options opts = { .timeout_ms = 5000 };
        int c;

        optind = 1;
        while ((c = getopt_long(argc, argv, "+", options, NULL)) >= 0) {
                switch (c) {
                case 'j': arg_json = true; break;
                case 's': opts.server = true; break;
                case 't':
                        if (parse_timeout(optarg, &opts.timeout_ms) < 0)
                                return cli_usage_error("invalid timeout '%s' (seconds, > 0, at most 3600)", optarg);
                        break;
                default:
                        return EXIT_USAGE;
                }
        }
        if (argc - optind != 1)
                return cli_usage_error("%s", "probe takes exactly one SOCKET");
        opts.socket = argv[optind];

        struct vhm_probe_result result;
        char error[512];
        if (vhm_probe(&opts, &result, error, sizeof(error)) < 0) {
                fprintf(stderr, "vhostmigctl: probe %s: %s\n", opts.socket, error);
                return EXIT_BACKEND;
        }
        if (arg_json)
                print_probe_json(opts.socket, &result);
        else
                print_probe_text(opts.socket, &result);
        return EXIT_OK;
}

/* ---- arguments of the daemon verbs ----------------------------------------------- */

#define JSON_OPTION { "json", no_argument, NULL, 'j' }
#define NUMBER_HINT "decimal or 0x hex, optionally with a K, M, G or T suffix"

/*
 * A verb's options go anywhere among its arguments.  optind = 0 makes glibc
 * start over (main() parsed in order-preserving mode); errors are reported
 * by option_error(), naming the verb.
 */
static void options_begin(void) {
        optind = 0;
        opterr = 0;
}

static int next_option(int argc, char **argv, const struct option *options) {
        int c = getopt_long(argc, argv, ":", options, NULL);
        if (c == 'j')
                arg_json = true;
        return c;
}

static int option_error(const char *verb, int c, char **argv) {
        const char *arg = argv[optind - 1];
        if (c == ':')
                return cli_usage_error("%s: option '%s' needs a value", verb, arg);
        if (strncmp(arg, "--", 2) == 0)
                return cli_usage_error("%s: unrecognized option '%s'", verb, arg);
        return cli_usage_error("%s: unrecognized option '-%c'", verb, optopt);
}

/* For verbs whose only option is --json; leaves the positional arguments at argv[optind...]. */
static int parse_json_only(const char *verb, int argc, char **argv) {
        static const struct option options[] = { JSON_OPTION, {} };
        int c;
        options_begin();
        while ((c = next_option(argc, argv, options)) >= 0)
                if (c != 'j')
                        return option_error(verb, c, argv);
        return EXIT_OK;
}

/* Parses the options and checks there are min..max positional arguments. */
static int parse_positional(const char *verb, int argc, char **argv, int min, int max, const char *what) {
        int ret = parse_json_only(verb, argc, argv);
        if (ret != EXIT_OK)
                return ret;
        int n = argc - optind;
        if (n < min || n > max)
                return cli_usage_error("%s takes %s", verb, what);
        return EXIT_OK;
}

/* 1..63 characters of [A-Za-z0-9_.-], as vhostmigd wants them. */
static int check_vm_name(const char *verb, const char *name) {
        size_t len = strlen(name);
        bool ok = len > 0 && len < VHM_VM_NAME_MAX;
        for (size_t i = 0; ok && i < len; i++)
                ok = isascii(name[i]) && (isalnum(name[i]) || strchr("_.-", name[i]));
        if (!ok)
                return cli_usage_error("%s: invalid VM name '%s' (1..%d characters of A-Z a-z 0-9 _ . -)",
                                   verb, name, VHM_VM_NAME_MAX - 1);
        return EXIT_OK;
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
                return cli_usage_error("%s: invalid device number '%s' (0, 1, ... as 'show' lists them)", verb, s);
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
        char *text[VHM_VM_MAX_REGIONS];      /* the FILE:GPA:SIZE[:OFFSET] given, split in place */
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
                return cli_usage_error("vm create: --memory '%s': %s '%s' is not a number (" NUMBER_HINT ")",
                                   spec, what, s);
        return EXIT_OK;
}

/* The file must hold the region; vhostmigd checks again, but a person gets told here. */
static int open_region_file(const char *spec, struct ctl_region *r) {
        struct stat st;

        r->fd = open(r->file, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (r->fd < 0)
                return cli_usage_error("vm create: --memory '%s': cannot open '%s' read-write: %s", spec, r->file,
                                   strerror(errno));
        if (fstat(r->fd, &st) < 0 || !S_ISREG(st.st_mode))
                return cli_usage_error("vm create: --memory '%s': '%s' is not a memory file (memfd, hugetlbfs or tmpfs)",
                                   spec, r->file);
        if (r->offset + r->size > (uint64_t) st.st_size)
                return cli_usage_error("vm create: --memory '%s': OFFSET + SIZE is 0x%" PRIx64 " but '%s' holds 0x%"
                                   PRIx64 " bytes", spec, r->offset + r->size, r->file, (uint64_t) st.st_size);
        return EXIT_OK;
}

static int parse_region(const char *spec, struct regions *rs) {
        if (rs->n == VHM_VM_MAX_REGIONS)
                return cli_usage_error("vm create: at most %d --memory regions", VHM_VM_MAX_REGIONS);
        unsigned i = rs->n++;
        struct ctl_region *r = &rs->v[i];
        char *fields[4];
        int ret;

        *r = (struct ctl_region) { .fd = -1 };
        if (!(rs->text[i] = strdup(spec))) {
                fputs("vhostmigctl: vm create: out of memory\n", stderr);
                return EXIT_BACKEND;
        }
        unsigned n = split_fields(rs->text[i], fields, 4);
        if (n < 3 || n > 4 || !*fields[0])
                return cli_usage_error("vm create: --memory '%s': expected FILE:GPA:SIZE[:OFFSET]", spec);
        r->file = fields[0];
        if ((ret = region_number(spec, "GPA", fields[1], &r->gpa)) != EXIT_OK ||
            (ret = region_number(spec, "SIZE", fields[2], &r->size)) != EXIT_OK ||
            (n == 4 && (ret = region_number(spec, "OFFSET", fields[3], &r->offset)) != EXIT_OK))
                return ret;
        if (r->size == 0)
                return cli_usage_error("vm create: --memory '%s': SIZE must not be 0", spec);
        if ((r->gpa | r->size | r->offset) % PAGE_4K)
                return cli_usage_error("vm create: --memory '%s': GPA, SIZE and OFFSET must be multiples of 4K", spec);
        if (r->gpa + r->size < r->gpa || r->offset + r->size < r->offset)
                return cli_usage_error("vm create: --memory '%s': the region wraps around", spec);
        return open_region_file(spec, r);
}

static int check_overlaps(const struct regions *rs) {
        for (unsigned i = 0; i < rs->n; i++)
                for (unsigned j = 0; j < i; j++) {
                        const struct ctl_region *a = &rs->v[i], *b = &rs->v[j];
                        if (a->gpa < b->gpa + b->size && b->gpa < a->gpa + a->size)
                                return cli_usage_error("vm create: the regions at GPA 0x%" PRIx64 " and 0x%" PRIx64
                                                   " overlap", b->gpa, a->gpa);
                }
        return EXIT_OK;
}

static int verb_vm_create(int argc, char **argv) {
        static const struct option options[] = {
                JSON_OPTION,
                { "memory", required_argument, NULL, 'm' },
                {}
        };
        struct regions rs = {};
        int c, ret = EXIT_OK;

        options_begin();
        while (ret == EXIT_OK && (c = next_option(argc, argv, options)) >= 0) {
                if (c == 'm')
                        ret = parse_region(optarg, &rs);
                else if (c != 'j')
                        ret = option_error("vm create", c, argv);
        }
        if (ret == EXIT_OK && argc - optind != 1)
                ret = cli_usage_error("%s", "vm create takes exactly one NAME");
        if (ret == EXIT_OK)
                ret = check_vm_name("vm create", argv[optind]);
        if (ret == EXIT_OK && rs.n == 0)
                ret = cli_usage_error("%s", "vm create: give the guest memory with --memory FILE:GPA:SIZE[:OFFSET]");
        if (ret == EXIT_OK)
                ret = check_overlaps(&rs);
        if (ret == EXIT_OK)
                ret = ctl_vm_create(argv[optind], rs.v, rs.n);
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

/* Without --mac: a random locally administered unicast address. */
static void random_mac(char *out, size_t len) {
        uint8_t b[6] = { 0, 0, 0, 0, 0, 1 };   /* if the kernel has no randomness yet */
        (void) getrandom(b, sizeof(b), GRND_NONBLOCK);
        b[0] = (uint8_t) ((b[0] & 0xfc) | 0x02);
        snprintf(out, len, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
}

static int parse_mac(const char *s, char *out, size_t len) {
        unsigned char b[6];
        int n = -1;
        if (sscanf(s, "%2hhx:%2hhx:%2hhx:%2hhx:%2hhx:%2hhx%n", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &n) != 6 ||
            n != 17 || s[n] || strspn(s, "0123456789abcdefABCDEF:") != 17)
                return cli_usage_error("device add: invalid --mac '%s' (expected xx:xx:xx:xx:xx:xx)", s);
        snprintf(out, len, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
        return EXIT_OK;
}

static int parse_features(const char *s, uint64_t *ret) {
        const char *digits = strncasecmp(s, "0x", 2) == 0 ? s + 2 : s;
        size_t n = strspn(digits, "0123456789abcdefABCDEF");
        if (n == 0 || n > 16 || digits[n])
                return cli_usage_error("device add: invalid --features '%s' (a hexadecimal mask of virtio features)", s);
        *ret = strtoull(digits, NULL, 16);
        return EXIT_OK;
}

/* The socket as an absolute path: vhostmigd does not run in our directory. */
static int parse_socket(const char *s, char *out, size_t len) {
        char cwd[PATH_MAX];
        int n;

        if (!*s)
                return cli_usage_error("%s", "device add: the SOCKET path is empty");
        if (s[0] == '/')
                n = snprintf(out, len, "%s", s);
        else if (!getcwd(cwd, sizeof(cwd)))
                return cli_usage_error("device add: cannot make '%s' absolute: %s", s, strerror(errno));
        else
                n = snprintf(out, len, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, s);
        if (n < 0 || (size_t) n >= len)
                return cli_usage_error("device add: socket path '%s' is too long (at most %zu bytes, absolute)", s, len - 1);
        return EXIT_OK;
}

static int check_eventfd(const char *spec, const char *what, const char *s, int *fd) {
        char link[64], target[64];
        uint32_t v;
        ssize_t n;

        if (!isdigit((unsigned char) s[0]) || parse_u32_range(s, 0, INT_MAX, &v) < 0)
                return cli_usage_error("device add: --queue '%s': %s '%s' is not a file descriptor number", spec, what, s);
        snprintf(link, sizeof(link), "/proc/self/fd/%" PRIu32, v);
        n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return cli_usage_error("device add: --queue '%s': %s %s is not an open file descriptor", spec, what, s);
        target[n] = 0;
        if (strcmp(target, "anon_inode:[eventfd]") != 0)
                return cli_usage_error("device add: --queue '%s': %s %s is not an eventfd (%s)", spec, what, s, target);
        *fd = (int) v;
        return EXIT_OK;
}

static int new_eventfd(struct device_args *a, int *fd) {
        *fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (*fd < 0) {
                fprintf(stderr, "vhostmigctl: device add: cannot create an eventfd: %s\n", strerror(errno));
                return EXIT_BACKEND;
        }
        a->own_fds[a->n_own_fds++] = *fd;
        return EXIT_OK;
}

static int queue_address(const char *spec, const char *what, const char *s, uint64_t *ret) {
        if (cli_parse_u64(s, true, ret) < 0)
                return cli_usage_error("device add: --queue '%s': %s '%s' is not a guest-physical address (" NUMBER_HINT ")",
                                   spec, what, s);
        return EXIT_OK;
}

/* SIZE:DESC:AVAIL:USED:KICKFD:CALLFD, or SIZE:DESC:AVAIL:USED with --eventfds. */
static int parse_queue(struct device_args *a, const char *spec, struct ctl_queue *q) {
        char buf[256], *f[6];
        unsigned want = a->eventfds ? 4 : 6;
        int ret;

        if (snprintf(buf, sizeof(buf), "%s", spec) >= (int) sizeof(buf))
                return cli_usage_error("device add: --queue '%s' is too long", spec);
        if (split_fields(buf, f, 6) != want)
                return cli_usage_error("device add: --queue '%s': expected %s", spec,
                                   a->eventfds ? "SIZE:DESC:AVAIL:USED (with --eventfds)" : "SIZE:DESC:AVAIL:USED:KICKFD:CALLFD");
        if (!isdigit((unsigned char) f[0][0]) || parse_u32_range(f[0], 1, 32768, &q->size) < 0 ||
            (q->size & (q->size - 1)))
                return cli_usage_error("device add: --queue '%s': ring SIZE '%s' must be a power of two up to 32768",
                                   spec, f[0]);
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

static int device_add_option(struct device_args *a, int c, char **argv) {
        struct ctl_device *d = &a->dev;
        uint32_t v;

        switch (c) {
        case 'j':
                return EXIT_OK;
        case 's':
                d->server = true;
                return EXIT_OK;
        case 'f':
                return parse_features(optarg, &d->features);
        case 'p':
                if (!isdigit((unsigned char) optarg[0]) || parse_u32_range(optarg, 1, VHM_DEVICE_MAX_QUEUE_PAIRS, &v) < 0)
                        return cli_usage_error("device add: invalid --queue-pairs '%s' (1..%d)", optarg,
                                           VHM_DEVICE_MAX_QUEUE_PAIRS);
                d->queue_pairs = v;
                return EXIT_OK;
        case 'm':
                return parse_mac(optarg, a->mac, sizeof(a->mac));
        case 'M':
                if (!isdigit((unsigned char) optarg[0]) || parse_u32_range(optarg, 68, 65535, &v) < 0)
                        return cli_usage_error("device add: invalid --mtu '%s' (68..65535)", optarg);
                d->mtu = (uint16_t) v;
                return EXIT_OK;
        case 'q':
                if (a->n_queue_text == VHM_DEVICE_MAX_QUEUES)
                        return cli_usage_error("device add: at most %d --queue options (%d queue pairs)",
                                           VHM_DEVICE_MAX_QUEUES, VHM_DEVICE_MAX_QUEUE_PAIRS);
                a->queue_text[a->n_queue_text++] = optarg;
                return EXIT_OK;
        case 'e':
                a->eventfds = true;
                return EXIT_OK;
        default:
                return option_error("device add", c, argv);
        }
}

static int device_add_finish(struct device_args *a, int argc, char **argv) {
        struct ctl_device *d = &a->dev;
        int ret;

        if (argc - optind != 2)
                return cli_usage_error("%s", "device add takes a VM and a SOCKET");
        if ((ret = check_vm_name("device add", argv[optind])) != EXIT_OK ||
            (ret = parse_socket(argv[optind + 1], a->socket, sizeof(a->socket))) != EXIT_OK)
                return ret;
        d->socket = a->socket;
        d->mac = a->mac;
        d->n_queues = 2 * d->queue_pairs;
        if (a->n_queue_text != d->n_queues)
                return cli_usage_error("device add: %u queue pair%s %u --queue options (RX 0, TX 0, RX 1, ...), "
                                   "%u given", d->queue_pairs, d->queue_pairs == 1 ? " needs" : "s need", d->n_queues,
                                   a->n_queue_text);
        for (unsigned i = 0; i < d->n_queues; i++)
                if ((ret = parse_queue(a, a->queue_text[i], &d->queues[i])) != EXIT_OK)
                        return ret;
        return EXIT_OK;
}

static int verb_device_add(int argc, char **argv) {
        static const struct option options[] = {
                JSON_OPTION,
                { "server", no_argument, NULL, 's' },
                { "features", required_argument, NULL, 'f' },
                { "queue-pairs", required_argument, NULL, 'p' },
                { "mac", required_argument, NULL, 'm' },
                { "mtu", required_argument, NULL, 'M' },
                { "queue", required_argument, NULL, 'q' },
                { "eventfds", no_argument, NULL, 'e' },
                {}
        };
        struct device_args a = { .dev = { .features = DEFAULT_FEATURES, .queue_pairs = 1 } };
        int c, ret = EXIT_OK;

        random_mac(a.mac, sizeof(a.mac));
        options_begin();
        while (ret == EXIT_OK && (c = next_option(argc, argv, options)) >= 0)
                ret = device_add_option(&a, c, argv);
        if (ret == EXIT_OK)
                ret = device_add_finish(&a, argc, argv);
        if (ret == EXIT_OK)
                ret = ctl_device_add(argv[optind], &a.dev);
        device_args_done(&a);
        return ret;
}

/* ---- the other daemon verbs ------------------------------------------------------ */

static int verb_status(int argc, char **argv) {
        int ret = parse_positional("status", argc, argv, 0, 0, "no arguments");
        return ret != EXIT_OK ? ret : ctl_status();
}

static int verb_list(int argc, char **argv) {
        int ret = parse_positional("list", argc, argv, 0, 0, "no arguments");
        return ret != EXIT_OK ? ret : ctl_list();
}

/* Verbs of the form "VERB VM": parses, validates the name, runs `run`. */
static int run_on_vm(const char *verb, int argc, char **argv, int (*run)(const char *vm)) {
        int ret = parse_positional(verb, argc, argv, 1, 1, "exactly one VM");
        if (ret == EXIT_OK)
                ret = check_vm_name(verb, argv[optind]);
        return ret != EXIT_OK ? ret : run(argv[optind]);
}

/* Verbs of the form "VERB VM N". */
static int run_on_device(const char *verb, int argc, char **argv, int (*run)(const char *vm, unsigned dev)) {
        unsigned dev;
        int ret = parse_positional(verb, argc, argv, 2, 2, "a VM and a device number");
        if (ret == EXIT_OK)
                ret = check_vm_name(verb, argv[optind]);
        if (ret == EXIT_OK)
                ret = parse_device_number(verb, argv[optind + 1], &dev);
        return ret != EXIT_OK ? ret : run(argv[optind], dev);
}

static int verb_show(int argc, char **argv) { return run_on_vm("show", argc, argv, ctl_show); }
static int verb_vm_destroy(int argc, char **argv) { return run_on_vm("vm destroy", argc, argv, ctl_vm_destroy); }
static int verb_device_remove(int argc, char **argv) {
        return run_on_device("device remove", argc, argv, ctl_device_remove);
}
static int verb_logging_start(int argc, char **argv) {
        return run_on_vm("logging start", argc, argv, ctl_logging_start);
}
static int verb_logging_stop(int argc, char **argv) { return run_on_vm("logging stop", argc, argv, ctl_logging_stop); }
static int verb_logging_harvest(int argc, char **argv) {
        return run_on_vm("logging harvest", argc, argv, ctl_logging_harvest);
}
static int verb_reconnect(int argc, char **argv) { return run_on_device("reconnect", argc, argv, ctl_reconnect); }

static int verb_announce(int argc, char **argv) {
        unsigned dev;
        int ret = parse_positional("announce", argc, argv, 1, 2, "a VM and optionally a device number");
        if (ret == EXIT_OK)
                ret = check_vm_name("announce", argv[optind]);
        if (ret != EXIT_OK)
                return ret;
        if (argc - optind == 1)
                return ctl_announce(argv[optind], -1);
        if ((ret = parse_device_number("announce", argv[optind + 1], &dev)) != EXIT_OK)
                return ret;
        return ctl_announce(argv[optind], (int) dev);
}

static int verb_watch(int argc, char **argv) {
        int ret = parse_positional("watch", argc, argv, 0, 1, "at most one VM");
        if (ret == EXIT_OK && argc - optind == 1)
                ret = check_vm_name("watch", argv[optind]);
        return ret != EXIT_OK ? ret : ctl_watch(argc - optind == 1 ? argv[optind] : NULL);
}

/* ---- main ------------------------------------------------------------------------ */

static const struct verb verbs[] = {
        { "probe", NULL, verb_probe, "probe SOCKET [--server] [--timeout SEC]",
          "Negotiate with a back-end and report (without the daemon)" },
        { "status", NULL, verb_status, "status", "Show the daemon's version and how many VMs it has" },
        { "list", NULL, verb_list, "list", "List the VMs" },
        { "show", NULL, verb_show, "show VM", "Show a VM and its devices" },
        { "vm", "create", verb_vm_create, "vm create NAME --memory FILE:GPA:SIZE[:OFFSET]...",
          "Create a VM from its guest memory" },
        { "vm", "destroy", verb_vm_destroy, "vm destroy NAME", "Stop a VM's devices and forget it" },
        { "device", "add", verb_device_add,
          "device add VM SOCKET [--server] [--features HEX] [--queue-pairs N]\n"
          "           [--mac MAC] [--mtu N] --queue SIZE:DESC:AVAIL:USED:KICKFD:CALLFD...\n"
          "device add VM SOCKET [OPTIONS] --eventfds --queue SIZE:DESC:AVAIL:USED...",
          "Connect, negotiate and start a vhost-user device" },
        { "device", "remove", verb_device_remove, "device remove VM N", "Stop and disconnect a device" },
        { "logging", "start", verb_logging_start, "logging start VM", "Switch dirty logging on" },
        { "logging", "stop", verb_logging_stop, "logging stop VM", "Switch dirty logging off" },
        { "logging", "harvest", verb_logging_harvest, "logging harvest VM",
          "Collect the dirty log into the migration bitmap" },
        { "announce", NULL, verb_announce, "announce VM [N]", "Send RARP announcements (SEND_RARP)" },
        { "reconnect", NULL, verb_reconnect, "reconnect VM N", "Reconnect a device to its back-end now" },
        { "watch", NULL, verb_watch, "watch [VM]", "Print changes as they happen, until interrupted" },
};

static void help(void) {
        printf("Usage: vhostmigctl [OPTIONS] COMMAND ...\n\n"
               "Drive vhostmigd and inspect vhost-user back-ends.\n\nCommands:\n");
        for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
                const char *s = verbs[i].synopsis;
                if (strlen(s) <= 34 && !strchr(s, '\n')) {
                        printf("  %-34s %s\n", s, verbs[i].summary);
                        continue;
                }
                for (const char *line = s, *nl; line; line = nl ? nl + 1 : NULL) {
                        nl = strchr(line, '\n');
                        printf("  %.*s\n", nl ? (int) (nl - line) : (int) strlen(line), line);
                }
                printf("  %-34s %s\n", "", verbs[i].summary);
        }
        printf("\nOptions:\n"
               "  -h --help               Show this help\n"
               "     --version            Show the version\n"
               "     --json               Print JSON instead of text (watch: one object a line)\n"
               "     --bus-address ADDR   Talk to vhostmigd on this D-Bus address, not the system bus\n"
               "\nExit status: 0 done, 1 the daemon or a back-end failed (or the daemon is not running),\n"
               "2 usage error, 3 access denied, 4 no such VM or device.\n"
               "See vhostmigctl(1).\n");
}

static const struct verb *find_verb(int argc, char **argv, int *ret) {
        const char *name = argv[0], *sub = argc > 1 ? argv[1] : NULL;
        bool known = false;

        for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
                if (strcmp(name, verbs[i].name) != 0)
                        continue;
                known = true;
                if (!verbs[i].sub || (sub && strcmp(sub, verbs[i].sub) == 0))
                        return &verbs[i];
        }
        if (!known)
                *ret = cli_usage_error("unknown command '%s'", name);
        else if (!sub)
                *ret = cli_usage_error("missing %s command", name);
        else
                *ret = cli_usage_error("unknown command '%s %s'", name, sub);
        return NULL;
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { "json", no_argument, NULL, 'j' },
                { "bus-address", required_argument, NULL, 'b' },
                {}
        };
        int c, ret;

        while ((c = getopt_long(argc, argv, "+h", options, NULL)) >= 0) {
                switch (c) {
                case 'h': help(); return EXIT_OK;
                case 'V': puts("vhostmigctl " VHOSTMIG_VERSION); return EXIT_OK;
                case 'j': arg_json = true; break;
                case 'b':
                        if (!strchr(optarg, ':'))
                                return cli_usage_error("--bus-address '%s' is not a D-Bus address (e.g. unix:path=/run/bus)",
                                                   optarg);
                        arg_bus_address = optarg;
                        break;
                default: return EXIT_USAGE;
                }
        }
        if (optind >= argc)
                return cli_usage_error("%s", "missing command");

        const struct verb *v = find_verb(argc - optind, argv + optind, &ret);
        if (!v)
                return ret;
        int skip = v->sub ? 1 : 0;
        return v->run(argc - optind - skip, argv + optind + skip);
}
