/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Runs the fuzz targets on many generated inputs in every build (libFuzzer
 * needs clang): a back-end's plausible reply stream, then mutated — bytes
 * flipped, messages dropped, sizes changed — so the inputs reach deep into
 * negotiation and the typed requests.  Deterministic (fixed seed); it checks
 * that no fd is left open, and the sanitizer build checks memory.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrate/migration.h"

#include "proto/vhost-user.h"
#include "proto/vhost-user-table.h"
#include "tests/common/fd-count.h"
#include "tests/fuzz/fuzz.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rnd(void) {
        /* xorshift64*: reproducible without libc's rand(). */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1du;
}

struct stream {
        uint8_t buf[16384];
        size_t len;
};

static void put_reply(struct stream *s, uint32_t request, const void *payload, uint32_t size) {
        struct vhu_hdr h = { .request = request, .flags = VHU_REPLY_FLAGS, .size = size };
        if (s->len + sizeof(h) + size > sizeof(s->buf))
                return;
        memcpy(s->buf + s->len, &h, sizeof(h));
        memcpy(s->buf + s->len + sizeof(h), payload, size);
        s->len += sizeof(h) + size;
}

static void put_u64(struct stream *s, uint32_t request, uint64_t v) {
        put_reply(s, request, &v, sizeof(v));
}

/* What a well-behaved back-end would answer to negotiation and the exercised requests. */
static void plausible_stream(struct stream *s) {
        uint64_t features = rnd() | VHU_BIT(VHU_VF_PROTOCOL_FEATURES) | VHU_BIT(VHU_VF_LOG_ALL);
        uint64_t offered = rnd() & (VHU_BIT(VHU_PF_COUNT) - 1);
        uint64_t pf = vhu_protocol_features_consistent(offered & vhu_supported_protocol_features());
        bool ack = pf & VHU_BIT(VHU_PF_REPLY_ACK);
        s->len = 0;
        put_u64(s, VHU_REQ_GET_FEATURES, features);
        put_u64(s, VHU_REQ_GET_PROTOCOL_FEATURES, offered);
        if (pf & VHU_BIT(VHU_PF_MQ))
                put_u64(s, VHU_REQ_GET_QUEUE_NUM, 1 + rnd() % 8);
        if (pf & VHU_BIT(VHU_PF_CONFIGURE_MEM_SLOTS))
                put_u64(s, VHU_REQ_GET_MAX_MEM_SLOTS, 1 + rnd() % 512);
        if ((pf & VHU_BIT(VHU_PF_BACKEND_REQ)) && ack)
                put_u64(s, VHU_REQ_SET_BACKEND_REQ_FD, 0);
        if (ack)
                put_u64(s, VHU_REQ_SET_OWNER, 0);
        /* The requests exercise() makes, in its order; gated ones only when negotiated. */
        struct vhu_vring_state st = { 0, (uint32_t) rnd() };
        put_reply(s, VHU_REQ_GET_VRING_BASE, &st, sizeof(st));
        if (pf & VHU_BIT(VHU_PF_CONFIG)) {
                struct vhu_config cfg = { .size = 32 };
                put_reply(s, VHU_REQ_GET_CONFIG, &cfg, VHU_CONFIG_HDR_SIZE + 32);
        }
        if (pf & VHU_BIT(VHU_PF_INFLIGHT_SHMFD)) {
                struct vhu_inflight inf = { 0 };
                put_reply(s, VHU_REQ_GET_INFLIGHT_FD, &inf, sizeof(inf));
        }
        if (pf & VHU_BIT(VHU_PF_STATUS))
                put_u64(s, VHU_REQ_GET_STATUS, rnd() % 256);
        if (ack)
                put_u64(s, VHU_REQ_SET_VRING_NUM, 0);
        if (pf & VHU_BIT(VHU_PF_LOG_SHMFD)) {
                struct vhu_log log_reply = { 0 }; /* 0, 8 or 16 bytes of it, as back-ends differ */
                put_reply(s, VHU_REQ_SET_LOG_BASE, &log_reply, 8 * (uint32_t) (rnd() % 3));
        }
        if (pf & VHU_BIT(VHU_PF_MQ))
                put_u64(s, VHU_REQ_GET_QUEUE_NUM, 4);
        put_u64(s, VHU_REQ_GET_FEATURES, features);
}

static void mutate(struct stream *s) {
        unsigned n = (unsigned) (rnd() % 6);
        for (unsigned i = 0; i < n && s->len > 0; i++) {
                size_t at = rnd() % s->len;
                switch (rnd() % 4) {
                case 0:
                        s->buf[at] ^= (uint8_t) (1u << (rnd() % 8));
                        break; /* flip a bit */
                case 1:
                        s->buf[at] = (uint8_t) rnd();
                        break; /* any byte */
                case 2:
                        s->len = at;
                        break; /* cut short */
                default:       /* a 32-bit field */
                        if (at + 4 <= s->len) {
                                uint32_t v = (uint32_t) rnd();
                                memcpy(s->buf + at, &v, 4);
                        }
                        break;
                }
        }
}

static void hostile_backends(void **state) {
        (void) state;
        int before = count_open_fds();
        struct stream s;
        unsigned survived = 0;
        for (unsigned i = 0; i < 4000; i++) {
                plausible_stream(&s);
                int depth;
                if (i % 8) {
                        mutate(&s);
                        depth = fuzz_frontend_one(s.buf, s.len);
                } else {
                        /* Unmutated, the stream is a good back-end: everything goes through. */
                        depth = fuzz_frontend_one(s.buf, s.len);
                        if (depth < 100)
                                fail_msg("input %u: a well-behaved stream stopped at depth %d", i, depth);
                }
                survived += depth >= 100;
        }
        /* Mutations hit payload values as well as framing: some streams stay valid. */
        assert_true(survived > 500 && survived < 4000);
        assert_int_equal(count_open_fds(), before);
}

static void hostile_backend_requests(void **state) {
        (void) state;
        int before = count_open_fds();
        struct stream s;
        for (unsigned i = 0; i < 4000; i++) {
                s.len = 0;
                for (unsigned k = 0; k < 6; k++) {
                        uint8_t payload[24] = { 0 };
                        uint32_t req = 1 + (uint32_t) (rnd() % 9);
                        uint32_t size = (uint32_t) (rnd() % 4) * 8;
                        struct vhu_hdr h = { req, VHU_VERSION | ((rnd() & 1) ? VHU_FLAG_NEED_REPLY : 0), size };
                        memcpy(s.buf + s.len, &h, sizeof(h));
                        memcpy(s.buf + s.len + sizeof(h), payload, size);
                        s.len += sizeof(h) + size;
                }
                mutate(&s);
                fuzz_channel_one(s.buf, s.len);
        }
        assert_int_equal(count_open_fds(), before);
}

/* The same streams from a peer that attaches an fd to every message, floods its channel, or both. */
static void hostile_peers(void **state) {
        (void) state;
        int before = count_open_fds();
        struct stream s;
        unsigned flooded_and_through = 0;
        for (unsigned i = 0; i < 1500; i++) {
                plausible_stream(&s);
                uint8_t flags = (uint8_t) (1 + i % 3);
                bool clean = i % 6 < 3;
                if (!clean)
                        mutate(&s);
                /* The peer's flags byte, then the stream, then a marker and its channel traffic. */
                static uint8_t input[1 + sizeof(s.buf) + 4 + 64];
                input[0] = flags;
                memcpy(input + 1, s.buf, s.len);
                size_t len = 1 + s.len;
                /* A stream that holds the marker floods with the default message instead. */
                static const uint8_t marker[4] = { 0xff, 0xff, 0xff, 0xff };
                if (!memmem(s.buf, s.len, marker, sizeof(marker))) {
                        memcpy(input + len, marker, sizeof(marker));
                        len += sizeof(marker);
                        struct vhu_hdr h = { VHU_BREQ_CONFIG_CHANGE_MSG,
                                             VHU_VERSION | ((i & 8) ? VHU_FLAG_NEED_REPLY : 0), 0 };
                        memcpy(input + len, &h, sizeof(h));
                        len += sizeof(h);
                        /* The stream's last bytes and the marker may form an earlier one. */
                        if (memmem(input + 1, len - 1, marker, sizeof(marker)) != input + 1 + s.len)
                                len = 1 + s.len;
                }
                int depth = fuzz_frontend_peer_one(input, len);
                /* A flood on the channel alone must not stop a good back-end's requests. */
                if (clean && flags == FUZZ_PEER_FLOOD) {
                        if (depth < 100)
                                fail_msg("input %u: a flooded channel stopped a good stream at depth %d", i, depth);
                        flooded_and_through++;
                }
                /* fds on every reply: refused at the first one. */
                if (flags & FUZZ_PEER_FDS)
                        assert_true(depth < 100);
        }
        assert_true(flooded_and_through > 0);
        assert_int_equal(count_open_fds(), before);
}

/* A script: ops and features (24 bytes), then reply modes, mostly well-behaved. */
static size_t device_script(uint8_t *buf, size_t max, bool clean) {
        size_t len = 24 + (size_t) (rnd() % (max - 24));
        for (size_t i = 0; i < 24; i++)
                buf[i] = (uint8_t) rnd();
        /* Offers that let the device go deep: DPDK's features, LOG_ALL, the protocol features it supports. */
        uint64_t features = UINT64_C(0xd7c66e7cb) | VHU_BIT(VHU_VF_LOG_ALL) | (rnd() & VHU_BIT(VHU_VF_RING_PACKED));
        uint64_t pf = vhu_supported_protocol_features() &
                      (rnd() | VHU_BIT(VHU_PF_LOG_SHMFD) | VHU_BIT(VHU_PF_REPLY_ACK));
        memcpy(buf + 8, &features, 8);
        memcpy(buf + 16, &pf, 8);
        for (size_t i = 24; i < len; i++)
                buf[i] = clean || rnd() % 4 ? 0 : (uint8_t) (200 + rnd() % 56);
        return len;
}

static void hostile_device_backends(void **state) {
        (void) state;
        int before = count_open_fds();
        uint8_t buf[96];
        /* No script: a good back-end, a good VMM; every operation succeeds. */
        assert_int_equal(fuzz_device_one(NULL, 0), 8);
        unsigned all_ops = 0, some_failed = 0;
        for (unsigned i = 0; i < 300; i++) {
                size_t len = device_script(buf, sizeof(buf), false);
                int ok = fuzz_device_one(buf, len);
                all_ops += ok == 8;
                some_failed += ok < 8;
        }
        /* The scripts reach every operation, and the faults in them are felt. */
        assert_true(all_ops > 0);
        assert_true(some_failed > 30);
        assert_int_equal(count_open_fds(), before);
}

/* A migration source's stream, well-behaved (committed) or mutated (refused cleanly, or still valid). */
static void hostile_migration_sources(void **state) {
        (void) state;
        int before = count_open_fds();
        static uint8_t buf[1u << 18];
        unsigned refused = 0;
        for (unsigned i = 0; i < 600; i++) {
                size_t len = fuzz_stream_sample(buf, sizeof(buf), 0x5eed + i);
                if (i % 6 == 0) {
                        int r = fuzz_stream_one(buf, len);
                        if (r < FUZZ_STREAM_COMMITTED)
                                fail_msg("input %u: a well-behaved source was not committed (%d)", i, r);
                        continue;
                }
                unsigned n = 1 + (unsigned) (rnd() % 4);
                for (unsigned k = 0; k < n && len > 1; k++) {
                        size_t at = 1 + rnd() % (len - 1);
                        switch (rnd() % 4) {
                        case 0:
                                buf[at] ^= (uint8_t) (1u << (rnd() % 8));
                                break;
                        case 1:
                                len = at; /* cut short */
                                break;
                        case 2:
                                buf[at] = (uint8_t) rnd();
                                break;
                        default: /* a 32-bit field: a length, a count, a size */
                                if (at + 4 <= len) {
                                        uint32_t v = (uint32_t) rnd();
                                        memcpy(buf + at, &v, 4);
                                }
                                break;
                        }
                }
                refused += fuzz_stream_one(buf, len) < FUZZ_STREAM_COMMITTED;
        }
        assert_true(refused > 300);
        /* The wrong token stops a stream that is otherwise perfect. */
        size_t len = fuzz_stream_sample(buf, sizeof(buf), 42);
        uint8_t *tok = memmem(buf, len, "0123456789abcdef", 16);
        assert_non_null(tok);
        tok[3] = 'f';
        assert_int_equal(fuzz_stream_one(buf, len), 1);
        assert_int_equal(count_open_fds(), before);
}

/* Flips, overwrites or cuts a few bytes past the first `keep` (flag bytes the caller chose). */
static size_t mutate_bytes(uint8_t *buf, size_t len, size_t keep) {
        unsigned n = 1 + (unsigned) (rnd() % 4);
        for (unsigned k = 0; k < n && len > keep; k++) {
                size_t at = keep + rnd() % (len - keep);
                switch (rnd() % 3) {
                case 0:
                        buf[at] ^= (uint8_t) (1u << (rnd() % 8));
                        break;
                case 1:
                        buf[at] = (uint8_t) rnd();
                        break;
                default:
                        len = at;
                        break;
                }
        }
        return len;
}

/* A destination that answers a source: its word is taken for what it says, garbage is refused. */
static void hostile_destinations(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_migration_stats st;
        uint8_t buf[256];
        size_t len = fuzz_stream_source_sample(buf, sizeof(buf), FUZZ_ANSWER_COMMITTED);
        assert_int_equal(fuzz_stream_source_one(buf, len, &st), 0);
        assert_int_equal(st.state, VHM_MIGRATION_COMPLETED);
        assert_true(st.pages_transferred == 24);

        len = fuzz_stream_source_sample(buf, sizeof(buf), FUZZ_ANSWER_ABORTED);
        assert_int_equal(fuzz_stream_source_one(buf, len, &st), -ECONNABORTED);
        assert_non_null(strstr(st.error, "fewer queue pairs"));

        /* ABORTED before anything arrived, then gone: the source fails in setup and says why. */
        len = fuzz_stream_source_sample(buf, sizeof(buf), FUZZ_ANSWER_EARLY);
        assert_true(fuzz_stream_source_one(buf, len, &st) < 0);
        assert_int_equal(st.state, VHM_MIGRATION_FAILED);

        /* No answer at all after END: the source cannot know, and does not resume. */
        uint8_t silent = 0;
        assert_true(fuzz_stream_source_one(&silent, 1, &st) < 0);
        assert_int_equal(st.state, VHM_MIGRATION_POSTMIGRATE_UNKNOWN);

        unsigned committed = 0, refused = 0;
        for (unsigned i = 0; i < 300; i++) {
                len = fuzz_stream_source_sample(buf, sizeof(buf), (enum fuzz_answer)(i % 3));
                len = mutate_bytes(buf, len, 0); /* the flags byte too: when the answer comes */
                int r = fuzz_stream_source_one(buf, len, &st);
                committed += r == 0;
                refused += r < 0;
        }
        assert_true(committed > 0 && refused > 100);
        assert_int_equal(count_open_fds(), before);
}

static size_t put_breq(uint8_t *buf, size_t at, uint32_t request, uint32_t flags, uint32_t size) {
        struct vhu_hdr h = { request, flags, size };
        memcpy(buf + at, &h, sizeof(h));
        memset(buf + at + sizeof(h), 0, size);
        return at + sizeof(h) + size;
}

/* Every back-end request once, answered, a host notifier with its fd. */
static size_t channel_script(uint8_t *buf) {
        static const uint32_t sizes[] = { 0, 32, 0, 24, 8, 8, 16, 16, 16 };
        size_t len = 3;
        buf[0] = 0;    /* every handler accepts */
        buf[1] = 0x04; /* the third message (the host notifier) carries an fd */
        buf[2] = 0;
        for (uint32_t req = 1; req < VHU_BREQ_MAX; req++)
                len = put_breq(buf, len, req, VHU_VERSION | VHU_FLAG_NEED_REPLY, sizes[req]);
        return len;
}

static void hostile_backend_channels(void **state) {
        (void) state;
        int before = count_open_fds();
        uint8_t buf[512];
        size_t len = channel_script(buf);
        assert_int_equal(fuzz_backend_channel_one(buf, len), VHU_BREQ_MAX - 1);
        /* Served in budgets instead of one by one: the same. */
        buf[0] = 0x80;
        assert_int_equal(fuzz_backend_channel_one(buf, len), VHU_BREQ_MAX - 1);
        /* An fd on a request that takes none closes the channel before any handler sees it. */
        buf[0] = 0;
        buf[1] = 0x01;
        assert_int_equal(fuzz_backend_channel_one(buf, len), 0);
        unsigned deep = 0;
        for (unsigned i = 0; i < 3000; i++) {
                len = channel_script(buf);
                buf[0] = (uint8_t) rnd();
                buf[1] = (uint8_t) rnd();
                buf[2] = (uint8_t) rnd() & (uint8_t) rnd();
                len = mutate_bytes(buf, len, 3);
                deep += fuzz_backend_channel_one(buf, len) > 2;
        }
        assert_true(deep > 0);
        assert_int_equal(count_open_fds(), before);
}

/* The example configuration, then mutations of it: accepted or refused, never half-applied. */
static void hostile_configs(void **state) {
        (void) state;
        int before = count_open_fds();
        const char *path = getenv("VHOSTMIGD_EXAMPLE");
        assert_non_null(path);
        static uint8_t example[16384], buf[16384];
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        size_t len = fread(example, 1, sizeof(example), f);
        fclose(f);
        assert_int_equal(fuzz_config_one(example, len), 1);
        unsigned accepted = 0, refused = 0;
        for (unsigned i = 0; i < 1500; i++) {
                memcpy(buf, example, len);
                size_t n = mutate_bytes(buf, len, 0);
                if (fuzz_config_one(buf, n))
                        accepted++;
                else
                        refused++;
        }
        /* Comments and strings take many mutations and stay valid; the rest are refused. */
        assert_true(accepted > 50 && refused > 50);
        assert_int_equal(count_open_fds(), before);
}

static size_t put_option(uint8_t *buf, size_t at, uint8_t key, uint8_t type, const void *value, size_t vlen) {
        buf[at] = key;
        buf[at + 1] = type;
        memcpy(buf + at + 2, value, vlen);
        return at + 2 + vlen;
}

/* AddDevice's options: a good a{sv} read whole, every rule broken refused, random ones either. */
static void hostile_bus_options(void **state) {
        (void) state;
        int before = count_open_fds();
        uint8_t buf[256];
        uint64_t qp = 4, features = UINT64_C(1) << 32;
        uint8_t mac[] = "\x11"
                        "52:54:00:00:00:01";
        /* Key and type indices as fuzz-bus-options.c numbers them: QueuePairs u, Features t, Mac s. */
        size_t len = put_option(buf, 0, 2, 2, &qp, 8);
        len = put_option(buf, len, 1, 1, &features, 8);
        len = put_option(buf, len, 3, 3, mac, sizeof(mac) - 1);
        assert_int_equal(fuzz_bus_options_one(buf, len), 1);
        /* The same key twice, and QueuePairs as a t. */
        size_t twice = put_option(buf, len, 2, 2, &qp, 8);
        assert_int_equal(fuzz_bus_options_one(buf, twice), 0);
        assert_int_equal(fuzz_bus_options_one((const uint8_t *) "\x02\x01"
                                                                "abcdefgh",
                                              10),
                         0);
        /* An unknown key. */
        assert_int_equal(fuzz_bus_options_one((const uint8_t *) "\xe0\x04Nope\x02"
                                                                "abcdefgh",
                                              15),
                         0);
        unsigned outcome[3] = { 0 };
        for (unsigned i = 0; i < 3000; i++) {
                size_t n = 1 + rnd() % 48;
                for (size_t k = 0; k < n; k++)
                        buf[k] = (uint8_t) rnd();
                /* Mostly known keys and their own types, so that some inputs are accepted. */
                if (i % 2)
                        for (size_t k = 0; k + 1 < n; k += 10) {
                                buf[k] %= 7;
                                buf[k + 1] = (uint8_t) "\x00\x01\x02\x03\x04\x00\x03"[buf[k]];
                        }
                outcome[fuzz_bus_options_one(buf, n) + 1]++;
        }
        assert_true(outcome[1] > 0 && outcome[2] > 0);
        assert_int_equal(count_open_fds(), before);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(hostile_backends),
                cmocka_unit_test(hostile_backend_requests),
                cmocka_unit_test(hostile_peers),
                cmocka_unit_test(hostile_device_backends),
                cmocka_unit_test(hostile_migration_sources),
                cmocka_unit_test(hostile_destinations),
                cmocka_unit_test(hostile_backend_channels),
                cmocka_unit_test(hostile_configs),
                cmocka_unit_test(hostile_bus_options),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
