/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "migrate/migration.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct vhm_migration_stats st;
        fuzz_stream_source_one(data, size, &st);
        return 0;
}
