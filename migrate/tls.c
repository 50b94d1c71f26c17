/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * TLS 1.3 with the one-time token as pre-shared key (GnuTLS 3.7).  The facts
 * this relies on were measured on GnuTLS 3.7.9: NORMAL has no PSK key
 * exchange; AES-256-GCM cannot be used with an external PSK (the binder hash
 * is SHA-256); without a named group the FFDHE groups sort first (a 10 ms
 * handshake); the default handshake timeout is none.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "migrate/tls.h"
#include "proto/vhost-user-transport.h"

#define KEY_LEN    16u    /* the token's 32 hex characters */
#define RECORD_MAX 16384u /* TLS's largest plaintext record */
/* What one recv takes from the socket: many records, where gnutls would make two calls a record. */
#define PULL_BUF (256u << 10)
/* What one send puts on the wire: many sealed records, where gnutls would send each alone. */
#define PUSH_BUF (256u << 10)

const char vhm_tls_priority[] = "NONE:+VERS-TLS1.3:+ECDHE-PSK:+GROUP-X25519:+AES-128-GCM:+AEAD:+SIGN-ALL:+COMP-NULL";

struct vhm_tls {
        gnutls_session_t session;
        gnutls_psk_client_credentials_t ccred;
        gnutls_psk_server_credentials_t scred;
        uint8_t key[KEY_LEN];
        char peer_id[VHM_TLS_ID_MAX + 1];
        short events;
        bool in_flight; /* a record was queued by a send that returned AGAIN */
        bool gather;    /* a writev is taking bytes: sealed records gather in `out` */
        uint8_t *out;   /* sealed records not yet sent: [out_pos, out_len) */
        size_t out_pos, out_len;
        size_t staged;
        uint8_t stage[RECORD_MAX];
        int fd;
        uint8_t *pull; /* bytes received, not yet taken by gnutls */
        size_t pull_pos, pull_len;
        gnutls_packet_t packet; /* a decrypted record being read in place: its bytes from packet_pos */
        size_t packet_pos;
};

static int tfail(char *err, size_t errlen, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int tfail(char *err, size_t errlen, int r, const char *fmt, ...) {
        if (err && errlen) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return r;
}

bool vhm_tls_fd_is_tcp(int fd) {
        int domain = 0, type = 0;
        socklen_t l1 = sizeof(domain), l2 = sizeof(type);
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l1) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l2) < 0)
                return false;
        return (domain == AF_INET || domain == AF_INET6) && type == SOCK_STREAM;
}

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

static int decode_token(const char *token, uint8_t key[KEY_LEN]) {
        if (!token || strnlen(token, 2 * KEY_LEN + 1) != 2 * KEY_LEN)
                return -EINVAL;
        for (unsigned i = 0; i < KEY_LEN; i++) {
                int hi = hexval(token[2 * i]), lo = hexval(token[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                key[i] = (uint8_t) (hi << 4 | lo);
        }
        return 0;
}

static bool valid_id(const char *id) {
        size_t n = strnlen(id, VHM_TLS_ID_MAX + 1);
        if (n == 0 || n > VHM_TLS_ID_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (id[i] <= ' ' || id[i] > '~')
                        return false;
        return true;
}

/* The server's key for whatever identity the client named: the token. */
static int server_key(gnutls_session_t session, const gnutls_datum_t *username, gnutls_datum_t *key) {
        struct vhm_tls *t = gnutls_session_get_ptr(session);
        size_t n = username->size < VHM_TLS_ID_MAX ? username->size : VHM_TLS_ID_MAX;
        for (size_t i = 0; i < n; i++) {
                char c = (char) username->data[i];
                t->peer_id[i] = c > ' ' && c <= '~' ? c : '?';
        }
        t->peer_id[n] = '\0';
        key->data = gnutls_malloc(KEY_LEN);
        if (!key->data)
                return -1;
        memcpy(key->data, t->key, KEY_LEN);
        key->size = KEY_LEN;
        return 0;
}

/*
 * gnutls reads a record's header, then its body: two recv calls a 16 KiB
 * record.  This takes what the socket holds in one call and serves gnutls
 * from it.  gnutls reports EAGAIN only once this buffer is empty, so a
 * caller that polls the socket after EAGAIN never waits on bytes held here.
 */
static ssize_t pull(gnutls_transport_ptr_t ptr, void *data, size_t len) {
        struct vhm_tls *t = ptr;
        if (t->pull_pos == t->pull_len) {
                ssize_t n = recv(t->fd, t->pull, PULL_BUF, 0);
                if (n < 0) {
                        gnutls_transport_set_errno(t->session, errno);
                        return -1;
                }
                if (n == 0)
                        return 0;
                t->pull_pos = 0;
                t->pull_len = (size_t) n;
        }
        size_t k = t->pull_len - t->pull_pos < len ? t->pull_len - t->pull_pos : len;
        memcpy(data, t->pull + t->pull_pos, k);
        t->pull_pos += k;
        return (ssize_t) k;
}

/* gnutls's own wait (its handshake timeout): what is held here counts as readable. */
static int pull_timeout(gnutls_transport_ptr_t ptr, unsigned ms) {
        struct vhm_tls *t = ptr;
        if (t->pull_pos < t->pull_len)
                return 1;
        struct pollfd p = { .fd = t->fd, .events = POLLIN };
        int r = poll(&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int) ms);
        if (r < 0)
                gnutls_transport_set_errno(t->session, errno);
        return r;
}

/* Sends what the out buffer holds; 0 once it is empty, -1 with errno (EAGAIN: try again later). */
static int out_drain(struct vhm_tls *t) {
        while (t->out_pos < t->out_len) {
                ssize_t w = send(t->fd, t->out + t->out_pos, t->out_len - t->out_pos, MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        return -1;
                t->out_pos += (size_t) w;
        }
        t->out_pos = t->out_len = 0;
        return 0;
}

/*
 * gnutls pushes each record (16 KiB at most) as it seals it: one send a
 * record, and under TCP_NODELAY one segment a record on the wire.  While a
 * writev is taking bytes, sealed records are gathered here instead and go
 * out PUSH_BUF at a time; anything else (the handshake, a flush, close_notify)
 * sends them first, then its own.  A record counts as pushed once it is in
 * the buffer: vhm_tls_flush() is what puts it on the wire.
 */
static ssize_t push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int n) {
        struct vhm_tls *t = ptr;
        size_t total = 0;
        for (int i = 0; i < n; i++)
                total += iov[i].iov_len;
        if (t->gather && total > PUSH_BUF - t->out_len && out_drain(t) < 0)
                goto failed;
        if (t->gather && total <= PUSH_BUF - t->out_len) {
                for (int i = 0; i < n; i++) {
                        memcpy(t->out + t->out_len, iov[i].iov_base, iov[i].iov_len);
                        t->out_len += iov[i].iov_len;
                }
                return (ssize_t) total;
        }
        if (out_drain(t) < 0)
                goto failed;
        struct msghdr mh = { .msg_iov = (struct iovec *) iov, .msg_iovlen = (size_t) n };
        ssize_t w = sendmsg(t->fd, &mh, MSG_NOSIGNAL);
        if (w >= 0)
                return w;
failed:
        gnutls_transport_set_errno(t->session, errno);
        return -1;
}

static int make_client(struct vhm_tls *t, const char *id) {
        char rnd[VHM_TLS_ID_MAX + 1];
        if (!id) {
                uint8_t r[8];
                if (gnutls_rnd(GNUTLS_RND_NONCE, r, sizeof(r)) < 0)
                        return -EIO;
                snprintf(rnd, sizeof(rnd), "mig-%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5],
                         r[6], r[7]);
                id = rnd;
        }
        snprintf(t->peer_id, sizeof(t->peer_id), "%s", id);
        const gnutls_datum_t key = { t->key, KEY_LEN };
        if (gnutls_psk_allocate_client_credentials(&t->ccred) < 0)
                return -ENOMEM;
        if (gnutls_psk_set_client_credentials(t->ccred, id, &key, GNUTLS_PSK_KEY_RAW) < 0)
                return -EINVAL;
        if (gnutls_init(&t->session, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL) < 0)
                return -ENOMEM;
        return gnutls_credentials_set(t->session, GNUTLS_CRD_PSK, t->ccred) < 0 ? -EINVAL : 0;
}

static int make_server(struct vhm_tls *t) {
        if (gnutls_psk_allocate_server_credentials(&t->scred) < 0)
                return -ENOMEM;
        gnutls_psk_set_server_credentials_function2(t->scred, server_key);
        if (gnutls_init(&t->session, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL) < 0)
                return -ENOMEM;
        return gnutls_credentials_set(t->session, GNUTLS_CRD_PSK, t->scred) < 0 ? -EINVAL : 0;
}

void vhm_tls_free(struct vhm_tls *t) {
        if (!t)
                return;
        if (t->session) {
                /* The peer reads a clean end rather than a cut; never waited for. */
                (void) gnutls_bye(t->session, GNUTLS_SHUT_WR);
                gnutls_deinit(t->session);
        }
        if (t->ccred)
                gnutls_psk_free_client_credentials(t->ccred);
        if (t->scred)
                gnutls_psk_free_server_credentials(t->scred);
        gnutls_memset(t->key, 0, sizeof(t->key));
        gnutls_memset(t->stage, 0, t->staged);
        if (t->packet)
                gnutls_packet_deinit(t->packet);
        free(t->pull);
        free(t->out);
        free(t);
}

/* A failed handshake in words: what the operator can act on first, GnuTLS's name after. */
static int handshake_error(gnutls_session_t s, int rc, char *err, size_t errlen) {
        const char *what = gnutls_strerror_name(rc) ? gnutls_strerror_name(rc) : "unknown";
        if (rc == GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER ||
            (rc == GNUTLS_E_FATAL_ALERT_RECEIVED && gnutls_alert_get(s) == GNUTLS_A_ILLEGAL_PARAMETER))
                return tfail(err, errlen, -EACCES, "TLS: the peer does not hold the token (illegal parameter)");
        if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED)
                return tfail(err, errlen, -EPROTO, "TLS: the peer refused the handshake (alert: %s)",
                             gnutls_alert_get_name(gnutls_alert_get(s)));
        if (rc == GNUTLS_E_TIMEDOUT)
                return tfail(err, errlen, -ETIMEDOUT, "TLS: handshake timed out");
        if (rc == GNUTLS_E_PREMATURE_TERMINATION || rc == GNUTLS_E_PUSH_ERROR || rc == GNUTLS_E_PULL_ERROR)
                return tfail(err, errlen, -ECONNRESET, "TLS: the peer closed the connection in the handshake (%s)",
                             what);
        if (rc == GNUTLS_E_UNEXPECTED_PACKET || rc == GNUTLS_E_UNEXPECTED_PACKET_LENGTH ||
            rc == GNUTLS_E_UNEXPECTED_HANDSHAKE_PACKET || rc == GNUTLS_E_UNSUPPORTED_VERSION_PACKET ||
            rc == GNUTLS_E_RECORD_OVERFLOW)
                return tfail(err, errlen, -EPROTO, "TLS: the peer does not speak TLS 1.3 (%s)", what);
        if (rc == GNUTLS_E_INSUFFICIENT_CREDENTIALS || rc == GNUTLS_E_NO_CIPHER_SUITES ||
            rc == GNUTLS_E_NO_COMMON_KEY_SHARE)
                return tfail(err, errlen, -EPROTO,
                             "TLS: the peer offers no TLS 1.3 PSK with X25519 and AES-128-GCM (%s)", what);
        return tfail(err, errlen, -EPROTO, "TLS: handshake failed: %s (%s)", gnutls_strerror(rc), what);
}

/* Waits for what the session wants, the cancel fd or the deadline. */
static int handshake_wait(struct vhm_tls *t, int fd, uint64_t deadline, int cancel_fd, char *err, size_t errlen) {
        short ev = gnutls_record_get_direction(t->session) ? POLLOUT : POLLIN;
        struct pollfd p[2] = { { .fd = fd, .events = ev }, { .fd = cancel_fd, .events = POLLIN } };
        int r = vhu_poll_until(p, cancel_fd >= 0 ? 2 : 1, deadline ? deadline : UINT64_MAX);
        if (r == -ETIMEDOUT)
                return tfail(err, errlen, r, "TLS: handshake timed out");
        if (r < 0)
                return tfail(err, errlen, r, "TLS: handshake: poll: %s", strerror(-r));
        if (cancel_fd >= 0 && (p[1].revents & POLLIN))
                return tfail(err, errlen, -ECANCELED, "TLS: handshake cancelled");
        return 0;
}

static int run_handshake(struct vhm_tls *t, int fd, uint64_t deadline, int cancel_fd, char *err, size_t errlen) {
        for (;;) {
                int rc = gnutls_handshake(t->session);
                if (rc == GNUTLS_E_SUCCESS)
                        return 0;
                if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED && gnutls_error_is_fatal(rc)) {
                        /* The peer learns why at once instead of waiting for its own timeout. */
                        (void) gnutls_alert_send_appropriate(t->session, rc);
                        return handshake_error(t->session, rc, err, errlen);
                }
                if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED)
                        continue; /* a warning alert: go on */
                int r = handshake_wait(t, fd, deadline, cancel_fd, err, errlen);
                if (r < 0)
                        return r;
        }
}

static int setup(struct vhm_tls *t, int fd, enum vhm_tls_role role, const char *id, uint64_t deadline) {
        int r = role == VHM_TLS_CLIENT ? make_client(t, id) : make_server(t);
        if (r < 0)
                return r;
        gnutls_session_set_ptr(t->session, t);
        if (gnutls_priority_set_direct(t->session, vhm_tls_priority, NULL) < 0)
                return -EINVAL;
        t->fd = fd;
        t->pull = malloc(PULL_BUF);
        t->out = malloc(PUSH_BUF);
        if (!t->pull || !t->out)
                return -ENOMEM;
        gnutls_transport_set_ptr(t->session, t);
        gnutls_transport_set_pull_function(t->session, pull);
        gnutls_transport_set_pull_timeout_function(t->session, pull_timeout);
        gnutls_transport_set_vec_push_function(t->session, push);
        /* GnuTLS's own bound as well (its default is none); ours is the poll's deadline. */
        uint64_t now = vhu_now_usec(), left_ms = deadline > now ? (deadline - now) / 1000u + 1 : 1;
        bool bounded = deadline && deadline != UINT64_MAX && left_ms < UINT32_MAX;
        gnutls_handshake_set_timeout(t->session, bounded ? (unsigned) left_ms : GNUTLS_DEFAULT_HANDSHAKE_TIMEOUT);
        return 0;
}

int vhm_tls_handshake(int fd, enum vhm_tls_role role, const char *token, const char *id, uint64_t deadline_usec,
                      int cancel_fd, struct vhm_tls **out, char *err, size_t errlen) {
        if (id && role == VHM_TLS_CLIENT && !valid_id(id))
                return tfail(err, errlen, -EINVAL, "TLS: the migration id must be 1..%u printable characters",
                             VHM_TLS_ID_MAX);
        struct vhm_tls *t = calloc(1, sizeof(*t));
        if (!t)
                return tfail(err, errlen, -ENOMEM, "TLS: out of memory");
        int r = decode_token(token, t->key);
        if (r < 0) {
                vhm_tls_free(t);
                return tfail(err, errlen, r, "TLS: the token is not 32 hex characters");
        }
        r = setup(t, fd, role, id, deadline_usec);
        if (r < 0) {
                vhm_tls_free(t);
                return tfail(err, errlen, r, "TLS: cannot set up the session: %s", strerror(-r));
        }
        r = run_handshake(t, fd, deadline_usec, cancel_fd, err, errlen);
        if (r < 0) {
                gnutls_deinit(t->session); /* no close_notify after a failed handshake */
                t->session = NULL;
                vhm_tls_free(t);
                return r;
        }
        *out = t;
        return 0;
}

const char *vhm_tls_peer_id(const struct vhm_tls *t) {
        return t->peer_id;
}

void vhm_tls_describe(const struct vhm_tls *t, char *buf, size_t len) {
        snprintf(buf, len, "%s %s %s %s", gnutls_protocol_get_name(gnutls_protocol_get_version(t->session)),
                 gnutls_kx_get_name(gnutls_kx_get(t->session)),
                 gnutls_group_get_name(gnutls_group_get(t->session))
                         ? gnutls_group_get_name(gnutls_group_get(t->session))
                         : "none",
                 gnutls_cipher_get_name(gnutls_cipher_get(t->session)));
}

short vhm_tls_events(const struct vhm_tls *t) {
        return t->events;
}

size_t vhm_tls_pending(const struct vhm_tls *t) {
        gnutls_datum_t d = { NULL, 0 };
        if (t->packet)
                gnutls_packet_get(t->packet, &d, NULL);
        return gnutls_record_check_pending(t->session) + (d.size - t->packet_pos);
}

static int io_error(struct vhm_tls *t, ssize_t rc, const char *dir, char *err, size_t errlen) {
        if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
                t->events = gnutls_record_get_direction(t->session) ? POLLOUT : POLLIN;
                return -EAGAIN;
        }
        if (rc == GNUTLS_E_PREMATURE_TERMINATION || rc == GNUTLS_E_PUSH_ERROR || rc == GNUTLS_E_PULL_ERROR)
                return tfail(err, errlen, -ECONNRESET, "TLS: %s: the connection was cut (%s)", dir,
                             gnutls_strerror_name((int) rc));
        if (rc == GNUTLS_E_DECRYPTION_FAILED)
                return tfail(err, errlen, -EBADMSG, "TLS: %s: a record failed authentication (tampered with)", dir);
        return tfail(err, errlen, -EPROTO, "TLS: %s: %s", dir, gnutls_strerror((int) rc));
}

/* Pushes the staged (or queued) record; 0 when it is on its way. */
static int push_stage(struct vhm_tls *t, char *err, size_t errlen) {
        ssize_t rc = t->in_flight ? gnutls_record_send(t->session, NULL, 0)
                                  : gnutls_record_send(t->session, t->stage, t->staged);
        if (rc < 0) {
                /* gnutls holds the record now: the next call sends it with NULL, 0. */
                t->in_flight = rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED;
                return io_error(t, rc, "sending", err, errlen);
        }
        t->in_flight = false;
        t->staged = 0;
        return 0;
}

static ssize_t writev_more(struct vhm_tls *t, const struct iovec *iov, unsigned n, char *err, size_t errlen);

ssize_t vhm_tls_writev(struct vhm_tls *t, const struct iovec *iov, unsigned n, char *err, size_t errlen) {
        t->gather = true;
        ssize_t w = writev_more(t, iov, n, err, errlen);
        t->gather = false;
        return w;
}

static ssize_t writev_more(struct vhm_tls *t, const struct iovec *iov, unsigned n, char *err, size_t errlen) {
        if (t->in_flight) {
                int r = push_stage(t, err, errlen);
                if (r < 0)
                        return r;
        }
        /* Pages are 4 KiB pieces: gathered into full records, 22 bytes of overhead per 16 KiB. */
        size_t taken = 0;
        for (unsigned i = 0; i < n; i++) {
                const uint8_t *p = iov[i].iov_base;
                size_t left = iov[i].iov_len;
                while (left > 0) {
                        if (t->staged == 0 && left >= RECORD_MAX) {
                                /* A whole record straight from the caller's memory: no staging copy. */
                                ssize_t rc = gnutls_record_send(t->session, p, RECORD_MAX);
                                if (rc < 0 && rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED)
                                        return taken > 0 ? (ssize_t) taken : io_error(t, rc, "sending", err, errlen);
                                p += RECORD_MAX;
                                left -= RECORD_MAX;
                                taken += RECORD_MAX;
                                if (rc < 0) {
                                        /* Encrypted and queued in gnutls: the next call sends it with NULL, 0. */
                                        t->in_flight = true;
                                        (void) io_error(t, rc, "sending", err, errlen);
                                        return (ssize_t) taken;
                                }
                                continue;
                        }
                        if (t->staged == RECORD_MAX) {
                                int r = push_stage(t, err, errlen);
                                if (r < 0)
                                        return taken > 0 && r == -EAGAIN ? (ssize_t) taken : r;
                        }
                        size_t k = RECORD_MAX - t->staged < left ? RECORD_MAX - t->staged : left;
                        memcpy(t->stage + t->staged, p, k);
                        t->staged += k;
                        p += k;
                        left -= k;
                        taken += k;
                }
        }
        return (ssize_t) taken;
}

int vhm_tls_flush(struct vhm_tls *t, char *err, size_t errlen) {
        if (t->in_flight || t->staged)
                return push_stage(t, err, errlen); /* its push sends the gathered records first */
        if (out_drain(t) == 0)
                return 0;
        if (errno == EAGAIN || errno == EINTR) {
                t->events = POLLOUT;
                return -EAGAIN;
        }
        return tfail(err, errlen, -ECONNRESET, "TLS: sending: the connection was cut (%s)", strerror(errno));
}

/*
 * The next decrypted bytes where gnutls holds them: a record's plaintext,
 * handed out in place instead of copied into the caller's buffer first.
 */
ssize_t vhm_tls_peek(struct vhm_tls *t, const void **p, char *err, size_t errlen) {
        if (!t->packet) {
                ssize_t rc = gnutls_record_recv_packet(t->session, &t->packet);
                if (rc < 0)
                        return io_error(t, rc, "receiving", err, errlen);
                if (rc == 0 || !t->packet) {
                        if (t->packet)
                                gnutls_packet_deinit(t->packet);
                        t->packet = NULL;
                        return 0; /* close_notify */
                }
                t->packet_pos = 0;
        }
        gnutls_datum_t d;
        gnutls_packet_get(t->packet, &d, NULL);
        *p = d.data + t->packet_pos;
        return (ssize_t) (d.size - t->packet_pos);
}

void vhm_tls_consume(struct vhm_tls *t, size_t n) {
        gnutls_datum_t d;
        if (!t->packet)
                return;
        gnutls_packet_get(t->packet, &d, NULL);
        t->packet_pos += n < d.size - t->packet_pos ? n : d.size - t->packet_pos;
        if (t->packet_pos == d.size) {
                gnutls_packet_deinit(t->packet);
                t->packet = NULL;
        }
}

ssize_t vhm_tls_read(struct vhm_tls *t, void *buf, size_t len, char *err, size_t errlen) {
        if (t->packet) {
                /* What a peek left of its record comes first. */
                const void *p;
                ssize_t k = vhm_tls_peek(t, &p, err, errlen);
                k = (size_t) k < len ? k : (ssize_t) len;
                memcpy(buf, p, (size_t) k);
                vhm_tls_consume(t, (size_t) k);
                return k;
        }
        ssize_t rc = gnutls_record_recv(t->session, buf, len);
        if (rc >= 0)
                return rc;
        return io_error(t, rc, "receiving", err, errlen);
}
