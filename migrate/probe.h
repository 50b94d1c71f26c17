/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Probing a back-end: connect (or wait for it to connect), negotiate like a
 * real front-end, record what it offers, disconnect.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "migrate/blockers.h"

struct vhm_probe_options {
        const char *socket;
        bool server;         /* listen at socket and wait for the back-end */
        unsigned timeout_ms; /* per request, and for the back-end to connect */
};

struct vhm_probe_result {
        uint64_t features;
        uint64_t protocol_features; /* offered */
        uint64_t protocol_features_negotiated;
        unsigned queue_pairs;
        uint64_t max_mem_slots; /* 0 when CONFIGURE_MEM_SLOTS is missing */
        bool migratable;
        struct vhm_blockers blockers;
};

/* 0, or a negative errno with the reason in `error`. */
int vhm_probe(const struct vhm_probe_options *opts, struct vhm_probe_result *result, char *error, size_t error_len);
