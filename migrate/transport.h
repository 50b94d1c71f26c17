/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Where a migration stream travels: "unix:PATH" or "tcp:HOST:PORT" (HOST an
 * IPv4 address, a name, or an IPv6 address in brackets), and the one-time
 * token that authenticates the source.  Every wait is bounded by a deadline
 * (vhu_now_usec() clock, 0: none) and ends early with -ECANCELED when the
 * cancel fd (an eventfd, -1: none) becomes readable.  Sockets returned are
 * non-blocking and close-on-exec.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VHM_TRANSPORT_ADDRESS_MAX 128u /* room for any address `bound` gets */

/*
 * Listens at `address`: a Unix socket file (mode 0600; a stale socket is
 * replaced, a live one refused with -EADDRINUSE) or a TCP port (0: any, the
 * real one is in `bound`).  `bound` (may be NULL) gets the address to give
 * the source.  -EINVAL for anything but unix:/tcp: or a malformed address.
 */
int vhm_transport_listen(const char *address, int *listen_fd, char *bound, size_t bound_len);
/* Closes a listener and, for unix:PATH, removes its socket file. */
void vhm_transport_listen_close(int listen_fd, const char *bound);
/*
 * One connection within the deadline: -ETIMEDOUT, -ECANCELED.  On a Unix
 * listener a peer whose uid (SO_PEERCRED) is neither the daemon's nor root
 * is closed unheard and the wait goes on.  A TCP connection still needs
 * vhm_stream_secure() (TLS with the token) before its first record.
 */
int vhm_transport_accept(int listen_fd, uint64_t deadline_usec, int cancel_fd, int *fd);
/* A non-blocking connect bounded by the deadline: -ECONNREFUSED / -ENOENT when nobody listens. */
int vhm_transport_connect(const char *address, uint64_t deadline_usec, int cancel_fd, int *fd);

/* Tokens: 16 bytes of getrandom() as 32 lowercase hex characters and a NUL. */
#define VHM_TOKEN_LEN 32u
int vhm_token_new(char out[VHM_TOKEN_LEN + 1]);
/* Constant time over the 32 characters; false when either is not exactly 32 long. */
bool vhm_token_equal(const char *a, const char *b);
