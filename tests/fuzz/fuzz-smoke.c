/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Runs the fuzz targets on many generated inputs in every build (libFuzzer
 * needs clang): a back-end's plausible reply stream, then mutated — bytes
 * flipped, messages dropped, sizes changed — so the inputs reach deep into
 * negotiation and the typed requests.  Deterministic (fixed seed); it checks
 * that no fd is left open, and the sanitizer build checks memory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(hostile_backends),
                cmocka_unit_test(hostile_backend_requests),
                cmocka_unit_test(hostile_peers),
                cmocka_unit_test(hostile_device_backends),
                cmocka_unit_test(hostile_migration_sources),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
