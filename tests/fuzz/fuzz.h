/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The fuzz targets, shared by the libFuzzer entry points and the smoke test. */
#pragma once

#include <stddef.h>
#include <stdint.h>

int fuzz_frontend_one(const uint8_t *data, size_t size);
int fuzz_channel_one(const uint8_t *data, size_t size);

/* fuzz_frontend_peer_one(): the first byte's flags, then fuzz_frontend_one's input. */
#define FUZZ_PEER_FDS   0x01 /* every message the back-end sends carries an fd */
#define FUZZ_PEER_FLOOD 0x02 /* the back-end floods its channel after negotiation */
int fuzz_frontend_peer_one(const uint8_t *data, size_t size);

/*
 * The device layer (start, stop, resume, logging, reconnect) against a
 * back-end that answers by script.  Returns how many device operations
 * succeeded.
 */
int fuzz_device_one(const uint8_t *data, size_t size);
