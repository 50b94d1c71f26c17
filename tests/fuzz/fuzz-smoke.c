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
                struct vhu_log log_reply = { 0 };   /* 0, 8 or 16 bytes of it, as back-ends differ */
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
                case 0: s->buf[at] ^= (uint8_t) (1u << (rnd() % 8)); break;    /* flip a bit */
                case 1: s->buf[at] = (uint8_t) rnd(); break;                   /* any byte */
                case 2: s->len = at; break;                                    /* cut short */
                default:                                                       /* a 32-bit field */
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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(hostile_backends),
                cmocka_unit_test(hostile_backend_requests),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
