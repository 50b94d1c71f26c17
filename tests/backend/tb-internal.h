/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Shared between the test back-end's files; not for its users. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto/vhost-user.h"
#include "tests/backend/test-backend.h"

/* What outlives one connection: the record and the fault counters. */
struct tb_server {
        const struct tb_config *cfg;
        FILE *rec;
        unsigned counts[VHU_REQ_MAX];
        bool fired[TB_MAX_FAULTS];
        unsigned connections;
        /* The back-end's own state (DEVICE_STATE): it outlives connections, as a device's would. */
        uint8_t *state;
        size_t state_len;
};

int tb_server_init(struct tb_server *srv, const struct tb_config *cfg);
void tb_server_fini(struct tb_server *srv);

/* Serves one connected socket until it ends; always closes fd. */
void tb_server_serve(struct tb_server *srv, int fd);

void tb_record(struct tb_server *srv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
