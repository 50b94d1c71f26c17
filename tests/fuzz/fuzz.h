/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The fuzz targets, shared by the libFuzzer entry points and the smoke test. */
#pragma once

#include <stddef.h>
#include <stdint.h>

int fuzz_frontend_one(const uint8_t *data, size_t size);
int fuzz_channel_one(const uint8_t *data, size_t size);
