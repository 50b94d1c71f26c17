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

/*
 * A migration source that sends anything, to a destination's receive loop
 * (the first byte's bit 0: the AUTH token is checked).  Returns the records
 * accepted, plus FUZZ_STREAM_COMMITTED when the stream was committed.
 */
#define FUZZ_STREAM_COMMITTED 1000
int fuzz_stream_one(const uint8_t *data, size_t size);
/* A well-behaved source's stream (flags byte included) for seed; its length, at most cap. */
size_t fuzz_stream_sample(uint8_t *buf, size_t cap, uint64_t seed);
