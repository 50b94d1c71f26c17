/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Migration transports (unix:PATH, tcp:HOST:PORT) and one-time tokens.  No
 * call waits without a deadline, and every wait also watches the cancel fd.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "migrate/transport.h"
#include "proto/vhost-user-transport.h"

enum kind {
        KIND_UNIX,
        KIND_TCP
};

struct address {
        enum kind kind;
        char path[sizeof(((struct sockaddr_un *) 0)->sun_path)];
        char host[VHM_TRANSPORT_ADDRESS_MAX];
        char port[8];
};

static bool all_digits(const char *s) {
        if (!*s)
                return false;
        for (; *s; s++)
                if (*s < '0' || *s > '9')
                        return false;
        return true;
}

static int parse_tcp(const char *rest, struct address *a) {
        const char *colon = strrchr(rest, ':');
        if (!colon || colon == rest || !all_digits(colon + 1) || strlen(colon + 1) > 5 || atoi(colon + 1) > 65535)
                return -EINVAL;
        size_t hlen = (size_t) (colon - rest);
        /* [v6]: the brackets go; a bare host must not hold a colon (an IPv6 address without brackets). */
        if (rest[0] == '[') {
                if (hlen < 3 || rest[hlen - 1] != ']')
                        return -EINVAL;
                rest++;
                hlen -= 2;
        } else if (memchr(rest, ':', hlen)) {
                return -EINVAL;
        }
        if (hlen == 0 || hlen >= sizeof(a->host))
                return -EINVAL;
        memcpy(a->host, rest, hlen);
        a->host[hlen] = '\0';
        snprintf(a->port, sizeof(a->port), "%s", colon + 1);
        a->kind = KIND_TCP;
        return 0;
}

static int parse_address(const char *address, struct address *a) {
        memset(a, 0, sizeof(*a));
        if (!address)
                return -EINVAL;
        if (strncmp(address, "unix:", 5) == 0) {
                const char *path = address + 5;
                if (!*path || strlen(path) >= sizeof(a->path))
                        return -EINVAL;
                snprintf(a->path, sizeof(a->path), "%s", path);
                a->kind = KIND_UNIX;
                return 0;
        }
        if (strncmp(address, "tcp:", 4) == 0)
                return parse_tcp(address + 4, a);
        return -EINVAL;
}

static int resolve(const struct address *a, bool passive, struct addrinfo **res) {
        struct addrinfo hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0),
        };
        int r = getaddrinfo(a->host, a->port, &hints, res);
        if (r == EAI_SYSTEM)
                return -errno;
        return r ? -EHOSTUNREACH : 0;
}

static void set_nodelay(int fd) {
        /* COMMITTED and ABORTED are small and end the downtime: no Nagle delay. */
        int one = 1;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int format_bound(int fd, char *bound, size_t bound_len) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char host[INET6_ADDRSTRLEN], port[8];
        if (getsockname(fd, (struct sockaddr *) &ss, &sl) < 0)
                return -errno;
        if (getnameinfo((struct sockaddr *) &ss, sl, host, sizeof(host), port, sizeof(port),
                        NI_NUMERICHOST | NI_NUMERICSERV))
                return -EINVAL;
        int n = snprintf(bound, bound_len, ss.ss_family == AF_INET6 ? "tcp:[%s]:%s" : "tcp:%s:%s", host, port);
        return n < 0 || (size_t) n >= bound_len ? -ENAMETOOLONG : 0;
}

static int listen_tcp(const struct address *a, int *listen_fd) {
        struct addrinfo *res;
        int r = resolve(a, true, &res);
        if (r < 0)
                return r;
        r = -EADDRNOTAVAIL;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
                if (fd < 0) {
                        r = -errno;
                        continue;
                }
                int one = 1;
                (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4) == 0) {
                        *listen_fd = fd;
                        r = 0;
                        break;
                }
                r = -errno;
                close(fd);
        }
        freeaddrinfo(res);
        return r;
}

int vhm_transport_listen(const char *address, int *listen_fd, char *bound, size_t bound_len) {
        struct address a;
        if (parse_address(address, &a) < 0)
                return -EINVAL;
        if (a.kind == KIND_UNIX) {
                const struct vhu_listen_options opts = { .mode = 0600, .gid = (gid_t) -1 };
                int fd = vhu_socket_listen_ex(a.path, &opts, NULL);
                if (fd < 0)
                        return fd;
                if (bound && bound_len && snprintf(bound, bound_len, "unix:%s", a.path) >= (int) bound_len) {
                        vhm_transport_listen_close(fd, address);
                        return -ENAMETOOLONG;
                }
                *listen_fd = fd;
                return 0;
        }
        int fd = -1;
        int r = listen_tcp(&a, &fd);
        if (r < 0)
                return r;
        if (bound && bound_len && (r = format_bound(fd, bound, bound_len)) < 0) {
                close(fd);
                return r;
        }
        *listen_fd = fd;
        return 0;
}

void vhm_transport_listen_close(int listen_fd, const char *bound) {
        struct address a;
        if (listen_fd >= 0)
                close(listen_fd);
        if (bound && parse_address(bound, &a) == 0 && a.kind == KIND_UNIX)
                (void) unlink(a.path);
}

/* Waits for `events` on fd, or the cancel fd, or the deadline. */
static int wait_or_cancel(int fd, short events, uint64_t deadline_usec, int cancel_fd) {
        struct pollfd p[2] = { { .fd = fd, .events = events }, { .fd = cancel_fd, .events = POLLIN } };
        int r = vhu_poll_until(p, cancel_fd >= 0 ? 2 : 1, deadline_usec ? deadline_usec : UINT64_MAX);
        if (r < 0)
                return r;
        if (cancel_fd >= 0 && (p[1].revents & POLLIN))
                return -ECANCELED;
        return 0;
}

/*
 * A Unix peer must run as the daemon's uid or as root: the socket file's
 * mode keeps others out, and this holds even where the directory does not.
 */
static bool peer_allowed(int fd) {
        int domain = 0;
        socklen_t dl = sizeof(domain);
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) < 0 || domain != AF_UNIX)
                return true; /* tcp: the TLS handshake proves the token instead */
        uid_t uid;
        gid_t gid;
        pid_t pid;
        if (vhu_socket_peer_cred(fd, &uid, &gid, &pid) < 0)
                return false;
        return uid == 0 || uid == geteuid();
}

int vhm_transport_accept(int listen_fd, uint64_t deadline_usec, int cancel_fd, int *fd) {
        for (;;) {
                int r = wait_or_cancel(listen_fd, POLLIN, deadline_usec, cancel_fd);
                if (r < 0)
                        return r;
                int c = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c < 0 && (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED))
                        continue;
                if (c < 0)
                        return -errno;
                if (!peer_allowed(c)) {
                        /* Dropped unheard; the wait goes on for the real source until the deadline. */
                        close(c);
                        continue;
                }
                set_nodelay(c); /* fails harmlessly on a Unix socket */
                *fd = c;
                return 0;
        }
}

static int connect_unix(const struct address *a, uint64_t deadline_usec, int cancel_fd, int *out) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        memcpy(sa.sun_path, a->path, strlen(a->path) + 1);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        for (;;) {
                if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0) {
                        *out = fd;
                        return 0;
                }
                int e = errno;
                if (e != EAGAIN && e != EINTR) {
                        close(fd);
                        return -e;
                }
                /* A full backlog: try again shortly, until the deadline or a cancel. */
                uint64_t now = vhu_now_usec(), retry = now + 10000;
                uint64_t until = deadline_usec && deadline_usec < retry ? deadline_usec : retry;
                struct pollfd p = { .fd = cancel_fd, .events = POLLIN };
                int r = vhu_poll_until(&p, cancel_fd >= 0 ? 1 : 0, until);
                if (r > 0) {
                        close(fd);
                        return -ECANCELED;
                }
                if (deadline_usec && vhu_now_usec() >= deadline_usec) {
                        close(fd);
                        return -ETIMEDOUT;
                }
        }
}

static int connect_one(const struct addrinfo *ai, uint64_t deadline_usec, int cancel_fd, int *out) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
                return -errno;
        int r = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
                r = errno == EINPROGRESS ? wait_or_cancel(fd, POLLOUT, deadline_usec, cancel_fd) : -errno;
                int soerr = 0;
                socklen_t sl = sizeof(soerr);
                if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                        r = -errno;
                else if (r == 0 && soerr)
                        r = -soerr;
        }
        if (r < 0) {
                close(fd);
                return r;
        }
        set_nodelay(fd);
        *out = fd;
        return 0;
}

int vhm_transport_connect(const char *address, uint64_t deadline_usec, int cancel_fd, int *fd) {
        struct address a;
        if (parse_address(address, &a) < 0)
                return -EINVAL;
        if (a.kind == KIND_UNIX)
                return connect_unix(&a, deadline_usec, cancel_fd, fd);
        struct addrinfo *res;
        int r = resolve(&a, false, &res);
        if (r < 0)
                return r;
        r = -EHOSTUNREACH;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                r = connect_one(ai, deadline_usec, cancel_fd, fd);
                if (r == 0 || r == -ECANCELED || r == -ETIMEDOUT)
                        break;
        }
        freeaddrinfo(res);
        return r;
}

int vhm_token_new(char out[VHM_TOKEN_LEN + 1]) {
        uint8_t raw[VHM_TOKEN_LEN / 2];
        size_t got = 0;
        while (got < sizeof(raw)) {
                ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                got += (size_t) n;
        }
        static const char hex[] = "0123456789abcdef";
        for (size_t i = 0; i < sizeof(raw); i++) {
                out[2 * i] = hex[raw[i] >> 4];
                out[2 * i + 1] = hex[raw[i] & 0xf];
        }
        out[VHM_TOKEN_LEN] = '\0';
        explicit_bzero(raw, sizeof(raw));
        return 0;
}

bool vhm_token_equal(const char *a, const char *b) {
        if (!a || !b || strnlen(a, VHM_TOKEN_LEN + 1) != VHM_TOKEN_LEN ||
            strnlen(b, VHM_TOKEN_LEN + 1) != VHM_TOKEN_LEN)
                return false;
        /* Every character is compared whatever differs first: the time says nothing about the token. */
        volatile unsigned char diff = 0;
        for (size_t i = 0; i < VHM_TOKEN_LEN; i++)
                diff |= (unsigned char) (a[i] ^ b[i]);
        return diff == 0;
}
