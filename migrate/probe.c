/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "migrate/probe.h"
#include "proto/vhost-user-frontend.h"

static int open_connection(const struct vhm_probe_options *opts, struct vhu_conn **conn, char *error,
                           size_t error_len) {
        struct vhu_conn_options copts = { .timeout_ms = opts->timeout_ms };

        if (!opts->server) {
                int r = vhu_conn_connect(opts->socket, &copts, conn);
                if (r < 0)
                        snprintf(error, error_len, "cannot connect to %s: %s", opts->socket, strerror(-r));
                return r;
        }

        int lfd = vhu_socket_listen(opts->socket);
        if (lfd < 0) {
                snprintf(error, error_len, "cannot listen on %s: %s", opts->socket, strerror(-lfd));
                return lfd;
        }
        int fd = vhu_socket_accept(lfd, NULL,
                                   vhu_deadline_after_ms(copts.timeout_ms ? copts.timeout_ms : VHU_DEFAULT_TIMEOUT_MS));
        close(lfd);
        unlink(opts->socket);
        if (fd < 0) {
                snprintf(error, error_len, "no back-end connected to %s: %s", opts->socket,
                         fd == -ETIMEDOUT ? "timed out" : strerror(-fd));
                return fd;
        }
        int r = vhu_conn_new(fd, &copts, conn);
        if (r < 0)
                snprintf(error, error_len, "%s: %s", opts->socket, strerror(-r));
        return r;
}

int vhm_probe(const struct vhm_probe_options *opts, struct vhm_probe_result *result, char *error, size_t error_len) {
        struct vhu_conn *conn = NULL;

        memset(result, 0, sizeof(*result));
        int r = open_connection(opts, &conn, error, error_len);
        if (r < 0)
                return r;

        r = vhu_negotiate(conn, NULL);
        if (r < 0) {
                snprintf(error, error_len, "%s", vhu_conn_error(conn));
                vhu_conn_free(conn);
                return r;
        }
        result->features = vhu_conn_features(conn);
        result->protocol_features = vhu_conn_protocol_features_offered(conn);
        result->protocol_features_negotiated = vhu_conn_protocol_features(conn);
        result->queue_pairs = vhu_conn_queue_num(conn);
        result->max_mem_slots = vhu_conn_max_mem_slots(conn);
        vhm_backend_blockers(result->features, result->protocol_features_negotiated, &result->blockers);
        result->migratable = result->blockers.n == 0;
        vhu_conn_free(conn);
        return 0;
}
