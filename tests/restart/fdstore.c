/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tests/restart/fdstore.h"

int fdstore_open(struct fdstore *st, const char *path) {
        memset(st, 0, sizeof(*st));
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        strcpy(st->path, path);
        st->sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (st->sock < 0)
                return -errno;
        int one = 1;
        (void) unlink(path);
        if (bind(st->sock, (struct sockaddr *) &sa, sizeof(sa)) < 0 ||
            setsockopt(st->sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0) {
                int r = -errno;
                close(st->sock);
                st->sock = -1;
                return r;
        }
        return 0;
}

static void drop(struct fdstore *st, size_t i) {
        close(st->fds[i]);
        free(st->names[i]);
        memmove(&st->fds[i], &st->fds[i + 1], (st->n - i - 1) * sizeof(st->fds[0]));
        memmove(&st->names[i], &st->names[i + 1], (st->n - i - 1) * sizeof(st->names[0]));
        st->n--;
}

void fdstore_close(struct fdstore *st) {
        while (st->n)
                drop(st, st->n - 1);
        if (st->sock >= 0) {
                close(st->sock);
                unlink(st->path);
        }
        st->sock = -1;
}

/* The value of key= on a line of its own in msg, copied to buf; false when absent. */
static bool field(const char *msg, const char *key, char *buf, size_t len) {
        size_t klen = strlen(key);
        for (const char *p = msg; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
                if (strncmp(p, key, klen) != 0)
                        continue;
                const char *v = p + klen, *end = strchr(v, '\n');
                size_t vlen = end ? (size_t) (end - v) : strlen(v);
                if (vlen >= len)
                        return false;
                memcpy(buf, v, vlen);
                buf[vlen] = '\0';
                return true;
        }
        return false;
}

/* As systemd: the same file kept twice under one name is kept once. */
static bool already_kept(const struct fdstore *st, const char *name, int fd) {
        struct stat a, b;
        if (fstat(fd, &a) < 0)
                return false;
        for (size_t i = 0; i < st->n; i++)
                if (strcmp(st->names[i], name) == 0 && fstat(st->fds[i], &b) == 0 && a.st_dev == b.st_dev &&
                    a.st_ino == b.st_ino)
                        return true;
        return false;
}

static void handle(struct fdstore *st, const char *msg, const int *fds, size_t nfds) {
        char name[256] = "stored";
        (void) field(msg, "FDNAME=", name, sizeof(name));
        if (strstr(msg, "READY=1"))
                st->ready++;
        if (strstr(msg, "FDSTOREREMOVE=1")) {
                for (size_t i = st->n; i-- > 0;)
                        if (strcmp(st->names[i], name) == 0) {
                                drop(st, i);
                                st->removed++;
                        }
        }
        for (size_t i = 0; i < nfds; i++) {
                bool keep = strstr(msg, "FDSTORE=1") && st->n < FDSTORE_MAX && !already_kept(st, name, fds[i]);
                char *copy = keep ? strdup(name) : NULL;
                if (!copy) {
                        close(fds[i]);
                        st->refused += !keep;
                        continue;
                }
                st->fds[st->n] = fds[i];
                st->names[st->n++] = copy;
                st->stored++;
        }
}

static int receive_one(struct fdstore *st) {
        char buf[4096];
        union {
                struct cmsghdr h;
                char b[CMSG_SPACE(sizeof(int) * 253) + CMSG_SPACE(sizeof(struct ucred))];
        } control;
        struct iovec iov = { buf, sizeof(buf) - 1 };
        struct msghdr mh = {
                .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof(control)
        };
        ssize_t n = recvmsg(st->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
                return errno == EAGAIN ? 0 : -errno;
        buf[n] = '\0';
        int fds[253];
        size_t nfds = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                        memcpy(&fds[nfds], CMSG_DATA(c), k * sizeof(int));
                        nfds += k;
                }
        st->messages++;
        handle(st, buf, fds, nfds);
        return 1;
}

int fdstore_receive(struct fdstore *st, unsigned timeout_ms) {
        struct pollfd pfd = { .fd = st->sock, .events = POLLIN };
        int r = poll(&pfd, 1, (int) timeout_ms);
        if (r <= 0)
                return r < 0 ? -errno : 0;
        int count = 0;
        while ((r = receive_one(st)) > 0)
                count++;
        return r < 0 ? r : count;
}

unsigned fdstore_count(const struct fdstore *st, const char *name) {
        unsigned n = 0;
        for (size_t i = 0; i < st->n; i++)
                n += strcmp(st->names[i], name) == 0;
        return n;
}

int fdstore_fd(const struct fdstore *st, const char *name) {
        for (size_t i = 0; i < st->n; i++)
                if (strcmp(st->names[i], name) == 0)
                        return st->fds[i];
        return -1;
}

int fdstore_pass(const struct fdstore *st) {
        /* Out of the way of 3..3+n first, then into place (dup2 clears CLOEXEC). */
        int high[FDSTORE_MAX];
        int base = 3 + (int) st->n + 16;
        for (size_t i = 0; i < st->n; i++) {
                high[i] = fcntl(st->fds[i], F_DUPFD, base);
                if (high[i] < 0)
                        return -errno;
        }
        for (size_t i = 0; i < st->n; i++)
                if (dup2(high[i], 3 + (int) i) < 0)
                        return -errno;
        static char names[FDSTORE_MAX * 256 + 1];
        names[0] = '\0';
        for (size_t i = 0; i < st->n; i++) {
                if (i)
                        strcat(names, ":");
                strcat(names, st->names[i]);
        }
        for (int fd = 3 + (int) st->n; fd < base + (int) st->n + 1024; fd++)
                (void) close(fd);
        char count[16], pid[16];
        snprintf(count, sizeof(count), "%zu", st->n);
        snprintf(pid, sizeof(pid), "%d", (int) getpid());
        if (st->n) {
                setenv("LISTEN_FDS", count, 1);
                setenv("LISTEN_FDNAMES", names, 1);
                setenv("LISTEN_PID", pid, 1);
        }
        setenv("NOTIFY_SOCKET", st->path, 1);
        /* As systemd 254 and later say the store's size (FileDescriptorStoreMax=). */
        setenv("FDSTORE", "1024", 1);
        return 0;
}
