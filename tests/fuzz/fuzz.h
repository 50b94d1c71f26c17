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

/*
 * The back-end channel alone, every handler installed, fds on the messages
 * (three bytes of flags first: see fuzz-backend-channel.c).  Returns how
 * many requests reached a handler.
 */
int fuzz_backend_channel_one(const uint8_t *data, size_t size);

/*
 * A destination that answers anything, to a migration source (the first
 * byte: when it answers, see fuzz-stream-source.c).  Returns
 * vhm_migrate_to()'s result (0: committed), *st its stats.
 */
struct vhm_migration_stats;
int fuzz_stream_source_one(const uint8_t *data, size_t size, struct vhm_migration_stats *st);
enum fuzz_answer {
        FUZZ_ANSWER_COMMITTED, /* COMMITTED after END */
        FUZZ_ANSWER_ABORTED,   /* ABORTED with a reason after END */
        FUZZ_ANSWER_EARLY,     /* ABORTED at once, then the socket closed */
};
/* A destination's answer of that kind (flags byte included); its length, at most cap. */
size_t fuzz_stream_source_sample(uint8_t *buf, size_t cap, enum fuzz_answer kind);

/*
 * vhostmigd's configuration from the input, parsed as text and loaded as a
 * file: refused with a reason and left at the defaults, or accepted and
 * printed back as JSON that parses to the same configuration.  Returns 1
 * when accepted, 0 when refused.
 */
int fuzz_config_one(const uint8_t *data, size_t size);

/*
 * An a{sv} options argument built from the input, read by
 * bus_read_options() with AddDevice's option table.  Returns 1 when
 * accepted, 0 when refused (InvalidArgs naming the key), -1 when the input
 * does not make a message.
 */
int fuzz_bus_options_one(const uint8_t *data, size_t size);
