/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl: the command-line front of vhostmig.  `probe` talks to a
 * back-end directly, without the daemon.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "migrate/probe.h"
#include "proto/vhost-user-table.h"

/* Exit codes, documented in vhostmigctl(1). */
enum {
        EXIT_OK = 0,
        EXIT_BACKEND = 1,
        EXIT_USAGE = 2,
};

struct verb {
        const char *name;
        int (*run)(int argc, char **argv);
        const char *usage;
};

static bool arg_json;

__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "vhostmigctl: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\nTry 'vhostmigctl --help'.\n");
        va_end(ap);
        return EXIT_USAGE;
}

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

static json_object *feature_names_json(uint64_t bits, bool protocol) {
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

static json_object *hex_json(uint64_t v) {
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
                                return usage_error("invalid timeout '%s' (seconds, > 0, at most 3600)", optarg);
                        break;
                default:
                        return EXIT_USAGE;
                }
        }
        if (argc - optind != 1)
                return usage_error("%s", "probe takes exactly one SOCKET");
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

static const struct verb verbs[] = {
        { "probe", verb_probe, "probe SOCKET [--server] [--timeout SEC]   Negotiate with a back-end and report" },
};

static void help(void) {
        printf("Usage: vhostmigctl [--json] COMMAND ...\n\n"
               "Drive vhostmig and inspect vhost-user back-ends.\n\nCommands:\n");
        for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
                printf("  %s\n", verbs[i].usage);
        printf("\nOptions:\n"
               "  -h --help       Show this help\n"
               "     --version    Show the version\n"
               "     --json       Print one JSON object instead of text\n"
               "\nExit status: 0 done, 1 back-end unreachable or misbehaving, 2 usage error.\n");
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { "json", no_argument, NULL, 'j' },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "+h", options, NULL)) >= 0) {
                switch (c) {
                case 'h': help(); return EXIT_OK;
                case 'V': puts("vhostmigctl " VHOSTMIG_VERSION); return EXIT_OK;
                case 'j': arg_json = true; break;
                default: return EXIT_USAGE;
                }
        }
        if (optind >= argc)
                return usage_error("%s", "missing command");

        for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
                if (strcmp(argv[optind], verbs[i].name) == 0)
                        return verbs[i].run(argc - optind, argv + optind);
        return usage_error("unknown command '%s'", argv[optind]);
}
