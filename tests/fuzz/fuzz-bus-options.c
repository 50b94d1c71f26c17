/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: the a{sv} options any local D-Bus client may pass to
 * vhostmigd (daemon/vhostmigd/bus-util.c, bus_read_options), read with
 * AddDevice's option table (every type the reader knows: b, t, u, s, q).
 * The table is a copy: device-object.c keeps its own static.
 *
 * The input builds one method call's a{sv}, entry by entry: a byte choosing
 * a known key (or, from 0xe0 up, a key of the input's own bytes), a byte
 * choosing the variant's type (basic, fd, array, dict, struct, nested
 * variant), then the value's bytes.  sd-bus refuses what D-Bus forbids (a
 * key that is not UTF-8, say); such inputs make no message.  The message is
 * sealed and read back as the daemon reads it.
 *
 * The oracle is a model of the rules: accepted exactly when every key is
 * known, given once and of its type, then with every value as sent and a
 * bit per key given; refused otherwise, with InvalidArgs naming the first
 * offending key.  Whatever the bytes: no crash, no leak.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "daemon/common/bus-api.h"
#include "daemon/vhostmigd/bus-util.h"
#include "daemon/vhostmigd/quote.h"
#include "tests/fuzz/fuzz.h"

#define MAX_ENTRIES 40u
#define KEY_MAX     64u

struct add_device_options {
        bool server;
        uint64_t features;
        uint32_t queue_pairs;
        const char *mac;
        uint16_t mtu;
        bool incoming;
        const char *type;
};

static const struct bus_option options[] = {
        { VHOSTMIG_OPTION_SERVER, 'b', offsetof(struct add_device_options, server) },
        { VHOSTMIG_OPTION_FEATURES, 't', offsetof(struct add_device_options, features) },
        { VHOSTMIG_OPTION_QUEUE_PAIRS, 'u', offsetof(struct add_device_options, queue_pairs) },
        { VHOSTMIG_OPTION_MAC, 's', offsetof(struct add_device_options, mac) },
        { VHOSTMIG_OPTION_MTU, 'q', offsetof(struct add_device_options, mtu) },
        { VHOSTMIG_OPTION_INCOMING, 'b', offsetof(struct add_device_options, incoming) },
        { VHOSTMIG_OPTION_TYPE, 's', offsetof(struct add_device_options, type) },
};
#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

/* Variant types the input chooses from: the reader's own, and what no key takes. */
static const char *const types[] = { "b", "t", "u", "s", "q",  "y",  "n",     "i",    "x",
                                     "d", "o", "g", "h", "as", "ay", "a{sv}", "(su)", "v" };
#define N_TYPES (sizeof(types) / sizeof(types[0]))

struct input {
        const uint8_t *p;
        size_t n;
};

/* The next k bytes into buf, zeros once the input runs out. */
static void take(struct input *in, void *buf, size_t k) {
        size_t have = in->n < k ? in->n : k;
        memcpy(buf, in->p, have);
        memset((uint8_t *) buf + have, 0, k - have);
        in->p += have;
        in->n -= have;
}

static uint8_t take_byte(struct input *in) {
        uint8_t b;
        take(in, &b, 1);
        return b;
}

/* A string of the input's bytes (length byte first, at most max - 1), NUL-terminated. */
static void take_string(struct input *in, char *buf, size_t max) {
        size_t len = take_byte(in) % max;
        take(in, buf, len);
        buf[len] = '\0';
}

/* What the model expects of one entry, and what was sent in it. */
struct sent {
        char key[KEY_MAX];
        const char *type;
        uint64_t u; /* b, q, u, t */
        char s[KEY_MAX];
};

static int append_value(sd_bus_message *m, struct input *in, struct sent *e) {
        const char *t = e->type;
        switch (t[0]) {
        case 'b':
                e->u = take_byte(in) & 1;
                return sd_bus_message_append_basic(m, 'b', &(int){ (int) e->u });
        case 'y':
        case 'n':
        case 'q':
        case 'i':
        case 'u':
        case 'x':
        case 't':
        case 'd': {
                uint64_t v;
                take(in, &v, sizeof(v));
                e->u = t[0] == 'q' ? (uint16_t) v : t[0] == 'u' ? (uint32_t) v : v;
                if (t[0] == 'd')
                        return sd_bus_message_append_basic(m, 'd', &(double){ (double) v });
                return sd_bus_message_append_basic(m, t[0], &v); /* little-endian: the low bytes */
        }
        case 's':
        case 'o':
        case 'g':
                take_string(in, e->s, sizeof(e->s));
                return sd_bus_message_append_basic(m, t[0], e->s);
        case 'h': {
                int fd = eventfd(0, EFD_CLOEXEC);
                int r = fd < 0 ? -errno : sd_bus_message_append_basic(m, 'h', &fd); /* the message keeps a copy */
                if (fd >= 0)
                        close(fd);
                return r;
        }
        case 'v': {
                take_string(in, e->s, sizeof(e->s));
                return sd_bus_message_append(m, "v", "s", e->s);
        }
        default:
                if (strcmp(t, "as") == 0) {
                        take_string(in, e->s, sizeof(e->s));
                        return sd_bus_message_append(m, "as", 2, e->s, "x");
                }
                if (strcmp(t, "ay") == 0) {
                        uint8_t bytes[16];
                        take(in, bytes, sizeof(bytes));
                        return sd_bus_message_append_array(m, 'y', bytes, take_byte(in) % sizeof(bytes));
                }
                if (strcmp(t, "a{sv}") == 0)
                        return sd_bus_message_append(m, "a{sv}", 1, "Server", "b", 1);
                return sd_bus_message_append(m, "(su)", "x", 1u);
        }
}

/* One {sv} entry; a negative errno when sd-bus refuses what the input asked for. */
static int append_entry(sd_bus_message *m, struct input *in, struct sent *e) {
        uint8_t k = take_byte(in);
        if (k < 0xe0)
                snprintf(e->key, sizeof(e->key), "%s", options[k % N_OPTIONS].key);
        else
                take_string(in, e->key, sizeof(e->key));
        e->type = types[take_byte(in) % N_TYPES];
        int r = sd_bus_message_open_container(m, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append_basic(m, 's', e->key);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'v', e->type);
        if (r >= 0)
                r = append_value(m, in, e);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

static const struct bus_option *find(const char *key) {
        for (unsigned i = 0; i < N_OPTIONS; i++)
                if (strcmp(options[i].key, key) == 0)
                        return &options[i];
        return NULL;
}

/* The rules, applied to what was sent: the index of the first offending entry, or -1. */
static int first_offence(const struct sent *e, unsigned n, uint32_t *given) {
        *given = 0;
        for (unsigned i = 0; i < n; i++) {
                const struct bus_option *o = find(e[i].key);
                if (!o)
                        return (int) i;
                uint32_t bit = UINT32_C(1) << (o - options);
                if ((*given & bit) || strlen(e[i].type) != 1 || e[i].type[0] != o->type)
                        return (int) i;
                *given |= bit;
        }
        return -1;
}

/* The last value given for a key, as the struct field should hold it. */
static bool value_matches(const struct bus_option *o, const struct sent *e, const struct add_device_options *out) {
        const char *field = (const char *) out + o->offset;
        switch (o->type) {
        case 'b':
                return *(const bool *) field == (bool) e->u;
        case 'q':
                return *(const uint16_t *) field == e->u;
        case 'u':
                return *(const uint32_t *) field == e->u;
        case 't':
                return *(const uint64_t *) field == e->u;
        default:
                return strcmp(*(const char *const *) field, e->s) == 0;
        }
}

static void check(int r, const sd_bus_error *error, const struct sent *e, unsigned n, uint32_t given,
                  const struct add_device_options *out) {
        uint32_t expected_given;
        int bad = first_offence(e, n, &expected_given);
        if (bad < 0) {
                if (r < 0 || given != expected_given)
                        abort();
                for (unsigned i = 0; i < n; i++)
                        if (!value_matches(find(e[i].key), &e[i], out))
                                abort();
                return;
        }
        /*
         * Refused, as InvalidArgs with the key in the reason: a known key as
         * it is, an unknown one (the caller's own string) escaped, so that
         * the reason never holds a control character.
         */
        char q[QUOTED_MAX];
        const char *named = find(e[bad].key) ? e[bad].key : quoted(e[bad].key, q);
        if (r >= 0 || !sd_bus_error_has_name(error, SD_BUS_ERROR_INVALID_ARGS) || !error->message ||
            !strstr(error->message, named))
                abort();
        for (const char *c = error->message; *c; c++)
                if ((unsigned char) *c < 0x20)
                        abort();
}

/* A bus that is never connected: enough to build and seal messages (sd-bus wants one past its start). */
static sd_bus *offline_bus(int *peer) {
        int sv[2];
        sd_bus *bus = NULL;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || sd_bus_new(&bus) < 0 ||
            sd_bus_set_fd(bus, sv[0], sv[0]) < 0 || sd_bus_start(bus) < 0)
                abort();
        *peer = sv[1];
        return bus;
}

int fuzz_bus_options_one(const uint8_t *data, size_t size) {
        struct input in = { data, size };
        static struct sent sent[MAX_ENTRIES];
        unsigned n = 0;
        int peer, r;
        sd_bus *bus = offline_bus(&peer);
        sd_bus_message *m = NULL;
        r = sd_bus_message_new_method_call(bus, &m, VHOSTMIG_BUS_NAME, "/org/vhostmig1/vm/fuzz", VHOSTMIG_VM_INTERFACE,
                                           "AddDevice");
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        while (r >= 0 && in.n > 0 && n < MAX_ENTRIES)
                r = append_entry(m, &in, &sent[n++]);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_seal(m, 1, 0);
        if (r >= 0)
                r = sd_bus_message_rewind(m, true);
        int result = -1;
        if (r >= 0) {
                struct add_device_options out = { 0 };
                sd_bus_error error = SD_BUS_ERROR_NULL;
                uint32_t given = 0;
                r = bus_read_options(m, options, N_OPTIONS, &out, &given, &error);
                check(r, &error, sent, n, given, &out);
                sd_bus_error_free(&error);
                result = r >= 0;
        }
        sd_bus_message_unref(m);
        sd_bus_close_unref(bus);
        close(peer);
        return result;
}
