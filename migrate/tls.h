/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * TLS 1.3 between two vhostmigd over TCP, keyed by the migration's one-time
 * token (a pre-shared key: no certificates).  ECDHE-PSK over X25519 with
 * AES-128-GCM, pinned on both ends (docs/migration.md says why those).  The
 * PSK identity, sent in clear, is a migration id, never the token.
 *
 * The session runs over a non-blocking socket: send and receive never wait
 * and return -EAGAIN with vhm_tls_events() naming what to poll for, so the
 * caller keeps its own deadlines and cancel fd.  The handshake waits itself,
 * bounded by a deadline and a cancel fd.  Errors are negative errnos with a
 * text that starts with "TLS: " and names the cause.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct vhm_tls;

enum vhm_tls_role {
        VHM_TLS_CLIENT, /* the source: connects, names the migration id */
        VHM_TLS_SERVER, /* the destination: accepts, holds the token */
};

#define VHM_TLS_ID_MAX 64u

/* The priority string both ends use: TLS 1.3 only, ECDHE-PSK, X25519, AES-128-GCM. */
extern const char vhm_tls_priority[];

/* True for a TCP socket (IPv4 or IPv6): the streams that must run TLS. */
bool vhm_tls_fd_is_tcp(int fd);

/*
 * Runs the handshake on fd (non-blocking; not taken: the caller still closes
 * it after vhm_tls_free).  token: the 32 hex characters of the one-time
 * token, the key.  id: the client's PSK identity (NULL: a random
 * "mig-<16 hex>"); ignored by the server, which reports the peer's in
 * vhm_tls_peer_id().  Bounded by deadline_usec (vhu_now_usec() clock, 0:
 * none) and the cancel fd (-1: none).
 *
 * -EACCES: the peer does not hold the token; -ETIMEDOUT; -ECANCELED;
 * -ECONNRESET: the peer closed; -EPROTO: the peer does not speak TLS 1.3
 * with a PSK, or refused; -EINVAL: a malformed token or id.
 */
int vhm_tls_handshake(int fd, enum vhm_tls_role role, const char *token, const char *id, uint64_t deadline_usec,
                      int cancel_fd, struct vhm_tls **out, char *err, size_t errlen);
/* Sends close_notify when it can without waiting, frees the session; the fd stays open. */
void vhm_tls_free(struct vhm_tls *t);

/* The PSK identity the client named. */
const char *vhm_tls_peer_id(const struct vhm_tls *t);
/* "TLS1.3 ECDHE-PSK X25519 AES-128-GCM": what was negotiated. */
void vhm_tls_describe(const struct vhm_tls *t, char *buf, size_t len);

/*
 * Takes bytes from iov into 16 KiB records: how many it took (>0), or
 * -EAGAIN (poll vhm_tls_events()), or another error.  Taken bytes may sit in
 * the session until vhm_tls_flush() returns 0.
 */
ssize_t vhm_tls_writev(struct vhm_tls *t, const struct iovec *iov, unsigned n, char *err, size_t errlen);
/* 0 when everything taken is on the wire, -EAGAIN, or an error. */
int vhm_tls_flush(struct vhm_tls *t, char *err, size_t errlen);
/* Bytes received (>0), 0 at the peer's close_notify, -EAGAIN, -ECONNRESET when cut without one. */
ssize_t vhm_tls_read(struct vhm_tls *t, void *buf, size_t len, char *err, size_t errlen);
/*
 * The next decrypted bytes in place, without a copy: *p points at them and
 * stays valid until vhm_tls_consume() or any other call on the session.
 * Their count (>0), 0 at the peer's close_notify, -EAGAIN, or an error as
 * vhm_tls_read's.
 */
ssize_t vhm_tls_peek(struct vhm_tls *t, const void **p, char *err, size_t errlen);
/* Marks n of the bytes vhm_tls_peek() showed as read (at most those it showed). */
void vhm_tls_consume(struct vhm_tls *t, size_t n);
/* POLLIN or POLLOUT: what the last -EAGAIN waits for. */
short vhm_tls_events(const struct vhm_tls *t);
/* Decrypted bytes already inside the session (poll cannot see them). */
size_t vhm_tls_pending(const struct vhm_tls *t);
