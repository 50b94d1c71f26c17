/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The request table and feature names: complete, self-consistent, as the spec says. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "proto/vhost-user-table.h"

static void every_frontend_request_has_an_entry(void **state) {
        (void) state;
        for (uint32_t r = 1; r < VHU_REQ_MAX; r++) {
                const struct vhu_request_info *info = vhu_request_info(r);
                assert_non_null(info);
                assert_int_equal(info->request, r);
                assert_non_null(info->name);
                assert_true(info->size.min <= info->size.max);
                assert_true(info->size.step > 0);
                assert_true(info->size.max <= sizeof(union vhu_payload));
                assert_true(info->fds_min <= info->fds_max);
                assert_true(info->fds_max <= VHU_MAX_FDS);
                assert_true(info->reply_size.max <= sizeof(union vhu_payload));
                /* A request either changes state (and may be acked) or gets a real reply, not both. */
                if (info->reply == VHU_REPLY_ALWAYS)
                        assert_false(info->changes_state);
                for (uint32_t o = 1; o < r; o++)
                        assert_string_not_equal(info->name, vhu_request_info(o)->name);
        }
        assert_null(vhu_request_info(0));
        assert_null(vhu_request_info(VHU_REQ_MAX));
        assert_null(vhu_request_info(UINT32_MAX));
}

static void every_backend_request_has_an_entry(void **state) {
        (void) state;
        for (uint32_t r = 1; r < VHU_BREQ_MAX; r++) {
                const struct vhu_backend_request_info *info = vhu_backend_request_info(r);
                assert_non_null(info);
                assert_int_equal(info->request, r);
                assert_true(info->protocol_feature >= 0);
        }
        assert_null(vhu_backend_request_info(VHU_BREQ_MAX));
}

static void facts_from_the_spec(void **state) {
        (void) state;
        const struct vhu_request_info *i;

        i = vhu_request_info(VHU_REQ_SET_MEM_TABLE);
        assert_int_equal(i->size.min, 8 + 32);
        assert_int_equal(i->size.max, 8 + 8 * 32);
        assert_true(vhu_size_allowed(&i->size, 8 + 3 * 32));
        assert_false(vhu_size_allowed(&i->size, 8 + 3 * 32 + 1));
        assert_int_equal(i->fds_max, 8);
        assert_true(i->per_device);

        i = vhu_request_info(VHU_REQ_SET_LOG_BASE);
        assert_int_equal(i->protocol_feature, VHU_PF_LOG_SHMFD);
        assert_int_equal(i->reply, VHU_REPLY_IF_LOG_SHMFD);
        /* DPDK answers with 0 bytes, libvhost-user with 8, rust-vmm with 16. */
        assert_true(vhu_size_allowed(&i->reply_size, 0));
        assert_true(vhu_size_allowed(&i->reply_size, 8));
        assert_true(vhu_size_allowed(&i->reply_size, 16));
        assert_false(vhu_size_allowed(&i->reply_size, 4));
        assert_false(vhu_size_allowed(&i->reply_size, 24));
        assert_true(i->per_device);

        i = vhu_request_info(VHU_REQ_SEND_RARP);
        assert_int_equal(i->protocol_feature, VHU_PF_RARP);
        i = vhu_request_info(VHU_REQ_SET_VRING_ENABLE);
        assert_int_equal(i->virtio_feature, VHU_VF_PROTOCOL_FEATURES);
        assert_false(i->per_device);
        i = vhu_request_info(VHU_REQ_GET_VRING_BASE);
        assert_int_equal(i->reply, VHU_REPLY_ALWAYS);
        assert_int_equal(i->reply_size.min, 8);
        i = vhu_request_info(VHU_REQ_GET_INFLIGHT_FD);
        assert_int_equal(i->reply_fds_max, 1);
        i = vhu_request_info(VHU_REQ_POSTCOPY_LISTEN);
        assert_int_equal(i->reply, VHU_REPLY_STATUS_ALWAYS);
        i = vhu_request_info(VHU_REQ_GET_CONFIG);
        assert_int_equal(i->size.min, 12);
        assert_int_equal(i->size.max, 12 + 256);
}

static void names(void **state) {
        (void) state;
        assert_string_equal(vhu_request_name(VHU_REQ_GET_FEATURES), "GET_FEATURES");
        assert_string_equal(vhu_request_name(VHU_REQ_CHECK_DEVICE_STATE), "CHECK_DEVICE_STATE");
        assert_string_equal(vhu_request_name(99), "REQUEST_99");
        assert_string_equal(vhu_backend_request_name(VHU_BREQ_SHARED_OBJECT_LOOKUP), "SHARED_OBJECT_LOOKUP");
        for (unsigned bit = 0; bit < VHU_PF_COUNT; bit++)
                assert_non_null(vhu_protocol_feature_name(bit));
        assert_null(vhu_protocol_feature_name(VHU_PF_COUNT));
        assert_string_equal(vhu_virtio_feature_name(VHU_VF_LOG_ALL), "LOG_ALL");

        char buf[256];
        int n = vhu_format_features(buf, sizeof(buf), 0x10cbf, true, ",");
        assert_string_equal(buf, "MQ,LOG_SHMFD,RARP,REPLY_ACK,NET_MTU,BACKEND_REQ,CRYPTO_SESSION,"
                                 "BACKEND_SEND_FD,HOST_NOTIFIER,STATUS");
        assert_int_equal(n, (int) strlen(buf));
        vhu_format_features(buf, sizeof(buf), VHU_BIT(50), true, ",");
        assert_string_equal(buf, "bit50");
        /* Truncation reports the length needed, like snprintf. */
        n = vhu_format_features(buf, 4, 0x3, true, ",");
        assert_int_equal(n, (int) strlen("MQ,LOG_SHMFD"));
        assert_int_equal(strlen(buf), 3);
}

static void supported_and_consistent(void **state) {
        (void) state;
        uint64_t s = vhu_supported_protocol_features();
        assert_true(s & VHU_BIT(VHU_PF_LOG_SHMFD));
        assert_false(s & VHU_BIT(VHU_PF_XEN_MMAP));
        assert_false(s >> VHU_PF_COUNT);

        assert_int_equal(vhu_protocol_features_consistent(s), s);
        uint64_t no_backend_req = s & ~VHU_BIT(VHU_PF_BACKEND_REQ);
        uint64_t c = vhu_protocol_features_consistent(no_backend_req);
        assert_false(c & VHU_BIT(VHU_PF_BACKEND_SEND_FD));
        assert_false(c & VHU_BIT(VHU_PF_HOST_NOTIFIER));
        assert_false(c & VHU_BIT(VHU_PF_INBAND_NOTIFICATIONS));
        assert_true(c & VHU_BIT(VHU_PF_LOG_SHMFD));
        c = vhu_protocol_features_consistent(s & ~VHU_BIT(VHU_PF_REPLY_ACK));
        assert_false(c & VHU_BIT(VHU_PF_INBAND_NOTIFICATIONS));
        assert_true(c & VHU_BIT(VHU_PF_HOST_NOTIFIER));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(every_frontend_request_has_an_entry),
                cmocka_unit_test(every_backend_request_has_an_entry),
                cmocka_unit_test(facts_from_the_spec),
                cmocka_unit_test(names),
                cmocka_unit_test(supported_and_consistent),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
